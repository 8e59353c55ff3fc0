"""The reported-vs-reproduced ledger."""

from __future__ import annotations

import numpy as np
import pytest

from synood_kit.evaluation import ood_table
from synood_kit.ledger import ledger, reported_numbers


def test_every_reported_number_has_a_source_and_the_method_md_rows_are_there():
    table = reported_numbers()
    assert table["source"].str.len().min() > 10
    row = table[(table["method"] == "NegLabel") & (table["ood_set"] == "mean") & (table["metric"] == "FPR95_IDpos")]
    assert row["value"].item() == pytest.approx(25.40)


def test_ledger_puts_measured_values_beside_reported_ones():
    rng = np.random.default_rng(0)
    scores = {"NegLabel": {"id": rng.normal(1, 1, 200), "inat": rng.normal(-1, 1, 200), "sun": rng.normal(0, 1, 200)}}
    measured = ood_table(scores, "id")
    out = ledger(measured, "ImageNet-1k (MOS)", {"inat": "iNaturalist", "sun": "SUN"})
    row = out[(out["method"] == "NegLabel") & (out["ood_set"] == "iNaturalist") & (out["metric"] == "AUROC")].iloc[0]
    expected = 100 * measured[(measured["ood_set"] == "inat")]["AUROC"].item()
    assert row["reported"] == pytest.approx(99.49) and row["measured"] == pytest.approx(expected)
    assert row["difference"] == pytest.approx(expected - 99.49)
    assert out[(out["method"] == "MCM")]["measured"].isna().all()  # reported but not measured
    with pytest.raises(ValueError, match="no reported numbers"):
        ledger(measured, "CIFAR-10")
