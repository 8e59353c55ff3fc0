"""Replicates over world seeds: the summary's arithmetic, the settings' validation and (slow) one tiny end-to-end run."""

import json

import numpy as np
import pandas as pd
import pytest

from synood_kit.replicates import HEADLINE, ReplicateSettings, replicate_markdown, replicate_summary


def _rows(seeds, rng):
    rows = []
    for seed in seeds:
        for method in HEADLINE:
            for group in ("near", "far"):
                v = float(rng.uniform(0, 1))
                rows.append(
                    dict(
                        seed=seed, method=method, group=group, metric="FPR95_IDpos", value=v, low=v - 0.1, high=v + 0.1
                    )
                )
    return pd.DataFrame(rows)


def test_summary_is_mean_and_sample_sd_over_seeds_beside_the_first_seeds_interval():
    rows = _rows((7, 3, 5), np.random.default_rng(0))
    summary = replicate_summary(rows)
    assert len(summary) == len(HEADLINE) * 2
    for r in summary.itertuples():
        part = rows[(rows.method == r.method) & (rows.group == r.group)]
        values = part.value.to_numpy()
        assert r.values == list(values)
        assert r.mean == pytest.approx(sum(values) / 3)
        assert r.sd == pytest.approx(np.sqrt(((values - values.mean()) ** 2).sum() / 2))
        first = part[part.seed == 7].iloc[0]  # the first seed given, not the smallest
        assert (r.first_seed, r.first_low, r.first_high) == (first.value, first.low, first.high)
    text = replicate_markdown(summary, (7, 3, 5))
    assert text.count("\n") == len(summary) + 2 and "| seed 7 | seed 3 | seed 5 |" in text


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"seeds": (1,)}, "at least two distinct"),
        ({"seeds": (1, 1, 2)}, "at least two distinct"),
        ({"seeds": (1, -2)}, "integers in"),
        ({"metrics": ("FPR99",)}, "metrics must be among"),
        ({"scale": 0}, "--scale"),
    ],
)
def test_settings_refuse_what_cannot_be_replicated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ReplicateSettings(**kwargs)


def test_cli_refuses_bad_seeds_before_any_work(tmp_path, capsys):
    from synood_kit.cli import main

    assert main(["world", "replicates", "--out", str(tmp_path / "r"), "--seeds", "1,x"]) == 2
    assert "--seeds" in capsys.readouterr().err and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_replicates_run_end_to_end_on_two_tiny_renders(tmp_path):
    from synood_kit.preset import load_preset
    from synood_kit.replicates import run_replicates

    preset = load_preset("miniworld").override(
        {
            "synthesis.sources.per_class": 1,
            "synthesis.batch_size": 12,
            "n_boot": 10,
            "adapter.epochs": 1,
            "labels.epochs": 1,
        }
    )
    result = run_replicates(tmp_path / "rep", preset, ReplicateSettings(seeds=(2025, 11), scale=0.03), progress=False)
    rows = result.rows
    assert set(rows.seed) == {2025, 11} and set(rows.method) == set(HEADLINE) and set(rows.group) == {"near", "far"}
    assert rows[["value", "low", "high"]].notna().all().all()
    # two renders are two benchmarks: the zero-shot numbers differ between seeds
    zs = rows[(rows.method == "NegLabel (zero-shot)") & (rows.metric == "AUROC")].pivot(
        index="group", columns="seed", values="value"
    )
    assert (zs[2025] != zs[11]).any()
    metrics = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert metrics["seeds"] == [2025, 11] and len(metrics["summary"]) == len(HEADLINE) * 2 * 2
    for seed in (2025, 11):
        assert (tmp_path / "rep" / f"seed-{seed}" / "synood_unguided" / "synood.md").is_file()
