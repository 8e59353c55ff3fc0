"""OOD metrics agree with scikit-learn, name their FPR conventions apart, and refuse bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from synood_kit.metrics import (
    METRIC_COLUMNS,
    aupr_in,
    aupr_out,
    auroc,
    bootstrap_ci,
    fpr_at_tpr_id_positive,
    fpr_at_tpr_ood_positive,
    ood_metrics,
    roc_points,
    summarize,
)


def _tied_scores(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """ID and overlapping OOD scores rounded to one decimal, so that many scores tie across classes."""
    rng = np.random.default_rng(seed)
    n_id, n_ood = rng.integers(20, 300, size=2)
    return np.round(rng.normal(1.0, 1.0, n_id), 1), np.round(rng.normal(0.0, 1.2, n_ood), 1)


def _sk_fpr_at_tpr(labels: np.ndarray, scores: np.ndarray, tpr: float) -> float:
    """FPR at the first ROC point (highest threshold) whose TPR reaches ``tpr``, from sklearn's roc_curve."""
    fpr_curve, tpr_curve, _ = roc_curve(labels, scores, drop_intermediate=False)
    return float(fpr_curve[np.argmax(tpr_curve >= tpr)])


@pytest.mark.parametrize("seed", range(6))
def test_metrics_agree_with_sklearn_on_tied_scores(seed):
    id_s, ood_s = _tied_scores(seed)
    scores = np.r_[id_s, ood_s]
    y_id = np.r_[np.ones(id_s.size), np.zeros(ood_s.size)]  # ID positive
    y_ood = 1 - y_id  # OOD positive, ranked by -score
    assert len(np.unique(scores)) < scores.size / 2  # the ties are real

    assert auroc(id_s, ood_s) == pytest.approx(roc_auc_score(y_id, scores), abs=1e-6)
    assert aupr_in(id_s, ood_s) == pytest.approx(average_precision_score(y_id, scores), abs=1e-6)
    assert aupr_out(id_s, ood_s) == pytest.approx(average_precision_score(y_ood, -scores), abs=1e-6)
    for tpr in (0.8, 0.95):
        assert fpr_at_tpr_id_positive(id_s, ood_s, tpr) == pytest.approx(_sk_fpr_at_tpr(y_id, scores, tpr), abs=1e-6)
        assert fpr_at_tpr_ood_positive(id_s, ood_s, tpr) == pytest.approx(_sk_fpr_at_tpr(y_ood, -scores, tpr), abs=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_ood_metrics_equals_the_single_metric_functions(seed):
    id_s, ood_s = _tied_scores(seed)
    m = ood_metrics(id_s, ood_s)
    assert tuple(m) == METRIC_COLUMNS
    assert m["AUROC"] == auroc(id_s, ood_s)
    assert m["AUPR_In"] == aupr_in(id_s, ood_s)
    assert m["AUPR_Out"] == aupr_out(id_s, ood_s)
    assert m["FPR95_IDpos"] == fpr_at_tpr_id_positive(id_s, ood_s)
    assert m["FPR95_OODpos"] == fpr_at_tpr_ood_positive(id_s, ood_s)


def test_roc_points_match_sklearn_roc_curve():
    id_s, ood_s = _tied_scores(11)
    fpr, tpr, thr = roc_points(id_s, ood_s)
    sk_fpr, sk_tpr, sk_thr = roc_curve(
        np.r_[np.ones(id_s.size), np.zeros(ood_s.size)], np.r_[id_s, ood_s], drop_intermediate=False
    )
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thr[1:], sk_thr[1:])
    assert thr[0] == np.inf


def test_fpr_conventions_differ_on_a_worked_example():
    # Sorted by score, highest first (I = ID, O = OOD):
    #   0.9 I, 0.8 I, 0.7 I, 0.6 I, 0.5 O, 0.4 O, 0.3 I, 0.2 O, 0.1 O, 0.05 O
    id_s = np.array([0.9, 0.8, 0.7, 0.6, 0.3])
    ood_s = np.array([0.5, 0.4, 0.2, 0.1, 0.05])
    # ID positive at TPR 0.8: accept score >= 0.6 (4 of 5 ID). OOD accepted: none -> FPR 0/5 = 0.0.
    assert fpr_at_tpr_id_positive(id_s, ood_s, tpr=0.8) == 0.0
    # OOD positive at TPR 0.8: flag score <= 0.4 (0.05, 0.1, 0.2, 0.4 = 4 of 5 OOD). ID flagged: 0.3 -> 1/5.
    assert fpr_at_tpr_ood_positive(id_s, ood_s, tpr=0.8) == pytest.approx(0.2)
    # At TPR 1.0: ID positive accepts score >= 0.3, so OOD 0.5 and 0.4 pass -> 2/5;
    # OOD positive flags score <= 0.5, so ID 0.3 is flagged -> 1/5.
    assert fpr_at_tpr_id_positive(id_s, ood_s, tpr=1.0) == pytest.approx(0.4)
    assert fpr_at_tpr_ood_positive(id_s, ood_s, tpr=1.0) == pytest.approx(0.2)


def test_fpr_never_splits_ties():
    # The threshold 0.9 accepts 1/4 of ID; the next one, 0.5, accepts all four ID and the tied OOD 0.5.
    # A 50% TPR therefore costs FPR 1/2: the tie is taken whole, not interpolated to FPR 0.
    id_s = np.array([0.9, 0.5, 0.5, 0.5])
    ood_s = np.array([0.5, 0.1])
    assert fpr_at_tpr_id_positive(id_s, ood_s, tpr=0.5) == pytest.approx(0.5)
    # AUROC counts each ID/OOD tie as one half: pairs won = 4 (vs 0.1) + 1 (0.9 vs 0.5) + 3 * 0.5 ties.
    assert auroc(id_s, ood_s) == pytest.approx((4 + 1 + 1.5) / 8)


def test_perfect_and_reversed_separation():
    id_s, ood_s = np.array([3.0, 4.0, 5.0]), np.array([0.0, 1.0, 2.0])
    assert auroc(id_s, ood_s) == 1.0
    assert fpr_at_tpr_id_positive(id_s, ood_s) == 0.0
    assert fpr_at_tpr_ood_positive(id_s, ood_s) == 0.0
    assert auroc(ood_s, id_s) == 0.0
    assert fpr_at_tpr_id_positive(ood_s, id_s) == 1.0


def test_metrics_accept_torch_tensors_and_lists():
    id_s, ood_s = _tied_scores(4)
    expected = ood_metrics(id_s, ood_s)
    assert ood_metrics(torch.tensor(id_s), torch.tensor(ood_s)) == pytest.approx(expected)
    assert ood_metrics(id_s.tolist(), ood_s.tolist()) == pytest.approx(expected)


def test_bad_input_raises_clear_value_errors():
    good = np.array([0.1, 0.2])
    with pytest.raises(ValueError, match="id_scores is empty"):
        auroc(np.array([]), good)
    with pytest.raises(ValueError, match="ood_scores is empty"):
        fpr_at_tpr_id_positive(good, [])
    with pytest.raises(ValueError, match=r"ood_scores holds 1 NaN"):
        aupr_in(good, np.array([0.3, np.nan]))
    with pytest.raises(ValueError, match=r"id_scores holds 2 NaN or infinite"):
        ood_metrics(np.array([np.inf, np.nan, 1.0]), good)
    for bad_tpr in (0.0, 1.5):
        with pytest.raises(ValueError, match="tpr must be in"):
            fpr_at_tpr_ood_positive(good, good, tpr=bad_tpr)
    with pytest.raises(ValueError, match="ood_scores is empty"):
        summarize(good, {})
    with pytest.raises(ValueError, match=r"ood_scores\['far'\] holds 1 NaN"):
        summarize(good, {"far": [np.nan, 0.0]})


# ---------------------------------------------------------------- summary table and bootstrap


@pytest.fixture(scope="module")
def three_sets():
    rng = np.random.default_rng(7)
    id_s = rng.normal(1.5, 1.0, 400)
    sets = {
        "near": rng.normal(0.8, 1.0, 300),
        "far": rng.normal(-1.0, 1.0, 200),
        "mid": rng.normal(0.0, 1.0, 250),
    }
    return id_s, sets


def test_summarize_has_a_row_per_set_and_the_mean_row(three_sets):
    id_s, sets = three_sets
    table = summarize(id_s, sets)
    assert list(table.index) == ["near", "far", "mid", "mean"]
    for name, ood in sets.items():
        row = table.loc[name]
        for col, value in ood_metrics(id_s, ood).items():
            assert row[col] == pytest.approx(value)
        assert row["n_id"] == 400 and row["n_ood"] == ood.size
    cols = list(METRIC_COLUMNS)
    np.testing.assert_allclose(table.loc["mean", cols].to_numpy(float), table.loc[list(sets), cols].mean().to_numpy())
    assert table.loc["mean", "n_ood"] == 750
    assert not any(c.endswith(("_low", "_high")) for c in table.columns)
    convention = table.attrs["fpr_convention"]
    assert "FPR95_IDpos" in convention and "ID positive" in convention
    assert "FPR95_OODpos" in convention and "OOD positive" in convention


def test_summarize_bootstrap_intervals_bracket_the_point_estimates(three_sets):
    id_s, sets = three_sets
    table = summarize(id_s, sets, n_boot=200, seed=0)
    for col in METRIC_COLUMNS:
        low, point, high = table[f"{col}_low"], table[col], table[f"{col}_high"]
        assert (low <= point).all() and (point <= high).all(), col
        assert (high - low > 0).all(), col  # the resampling really varies
    # Same seed, same table; another seed moves the bounds.
    again = summarize(id_s, sets, n_boot=200, seed=0)
    assert again.equals(table)
    other = summarize(id_s, sets, n_boot=200, seed=1)
    assert not np.allclose(other["AUROC_low"], table["AUROC_low"])


def test_bootstrap_ci_is_deterministic_by_seed_and_brackets_the_estimate(three_sets):
    id_s, sets = three_sets
    ood = sets["near"]
    a = bootstrap_ci(auroc, id_s, ood, n_boot=200, seed=3)
    assert a == bootstrap_ci(auroc, id_s, ood, n_boot=200, seed=3)
    assert a != bootstrap_ci(auroc, id_s, ood, n_boot=200, seed=4)
    assert a.low <= auroc(id_s, ood) <= a.high and a.level == 0.95
    narrow = bootstrap_ci(auroc, id_s, ood, n_boot=200, level=0.5, seed=3)
    assert a.low <= narrow.low <= narrow.high <= a.high
    with pytest.raises(ValueError, match="n_boot must be >= 10"):
        bootstrap_ci(auroc, id_s, ood, n_boot=5)
    with pytest.raises(ValueError, match="level must be in"):
        bootstrap_ci(auroc, id_s, ood, level=1.0)


@pytest.mark.parametrize("seed", range(6))
def test_trapezoid_aupr_agrees_with_openood_s_sklearn_form(seed):
    """AUPR_*_trapz is OpenOOD's AUPR: ``auc(recall, precision)`` over ``precision_recall_curve``; on tied,
    continuous and tiny sets, and it differs from average precision (the kit's AUPR_In/AUPR_Out)."""
    from sklearn.metrics import auc, precision_recall_curve

    from synood_kit.metrics import ood_metrics

    rng = np.random.default_rng(seed)
    n, m = (3, 2) if seed == 5 else (200 + 37 * seed, 150)
    id_s = rng.normal(1.0, 1.0, n)
    ood_s = rng.normal(0.0, 1.0, m)
    if seed % 2:
        id_s, ood_s = np.round(id_s, 1), np.round(ood_s, 1)  # ties
    scores = np.r_[id_s, ood_s]
    y_id = np.r_[np.ones(n), np.zeros(m)]
    got = ood_metrics(id_s, ood_s)
    p, r, _ = precision_recall_curve(y_id, scores)
    assert got["AUPR_In_trapz"] == pytest.approx(auc(r, p), abs=1e-12)
    p, r, _ = precision_recall_curve(1 - y_id, -scores)
    assert got["AUPR_Out_trapz"] == pytest.approx(auc(r, p), abs=1e-12)
    if seed == 0:
        assert abs(got["AUPR_In_trapz"] - got["AUPR_In"]) > 1e-4  # two definitions, two numbers
