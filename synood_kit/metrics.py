"""OOD detection metrics, exact with tied scores, with both FPR-at-TPR conventions named apart.

Scores are higher = more in-distribution. Two positive-class conventions exist and both are offered:

* **ID-positive** (MCM, NegLabel, SynOOD papers): ``fpr_at_tpr_id_positive`` is the share of OOD samples
  accepted as ID at the threshold that accepts ``tpr`` of the ID samples. Columns: ``FPR95_IDpos``.
* **OOD-positive** (OpenOOD, pytorch-ood): ``fpr_at_tpr_ood_positive`` is the share of ID samples flagged
  as OOD at the threshold that flags ``tpr`` of the OOD samples. Columns: ``FPR95_OODpos``.

AUROC is the same in both. ``AUPR_In`` takes ID as positive, ``AUPR_Out`` takes OOD as positive. Two AUPR
definitions exist too, and both are offered: ``AUPR_In``/``AUPR_Out`` are **average precision**
(scikit-learn's ``average_precision_score``, a step sum); ``AUPR_In_trapz``/``AUPR_Out_trapz`` integrate the
precision-recall curve with the **trapezoid rule** (``auc(recall, precision)`` over ``precision_recall_curve``),
as OpenOOD reports AUPR. Each metric agrees with scikit-learn to float precision; this module does not import
scikit-learn or any model code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "AUPR_DEFINITION",
    "METRIC_COLUMNS",
    "aupr_in",
    "aupr_out",
    "auroc",
    "bootstrap_ci",
    "fpr_at_tpr_id_positive",
    "fpr_at_tpr_ood_positive",
    "ood_metrics",
    "roc_points",
    "summarize",
]

METRIC_COLUMNS = ("AUROC", "AUPR_In", "AUPR_Out", "FPR95_IDpos", "FPR95_OODpos", "AUPR_In_trapz", "AUPR_Out_trapz")
AUPR_DEFINITION = (
    "AUPR_In/AUPR_Out: average precision (scikit-learn's average_precision_score); AUPR_In_trapz/AUPR_Out_trapz: "
    "the trapezoid rule over the precision-recall curve, as OpenOOD reports AUPR."
)


def _as_scores(x, name: str) -> np.ndarray:
    arr = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name} is empty: at least one score is needed")
    if not np.all(np.isfinite(arr)):
        bad = int(np.sum(~np.isfinite(arr)))
        raise ValueError(f"{name} holds {bad} NaN or infinite score(s); metrics need finite scores")
    return arr


def _roc_counts(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return integer (tps, fps, thresholds) of "positive if score >= threshold", one point per distinct score."""
    scores = np.concatenate([pos, neg])
    labels = np.concatenate([np.ones(pos.size, dtype=np.int64), np.zeros(neg.size, dtype=np.int64)])
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    # The last index of every run of equal scores: a threshold admits the whole run or none of it.
    last_of_run = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tps = np.r_[0, np.cumsum(labels)[last_of_run]]
    fps = np.r_[0, (last_of_run + 1) - tps[1:]]
    return tps, fps, np.r_[np.inf, scores[last_of_run]]


def roc_points(positive_scores, negative_scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the ROC curve ``(fpr, tpr, thresholds)`` of "positive if score >= threshold".

    One point per distinct score (ties move together), plus the origin; the same points as
    ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``.

    Args:
        positive_scores: ``(P,)`` scores of the positive class.
        negative_scores: ``(Q,)`` scores of the negative class.

    Returns:
        ``fpr`` and ``tpr`` rising from 0 to 1, and the decreasing thresholds (the first is ``inf``).
    """
    pos = _as_scores(positive_scores, "positive_scores")
    neg = _as_scores(negative_scores, "negative_scores")
    tps, fps, thresholds = _roc_counts(pos, neg)
    return fps / neg.size, tps / pos.size, thresholds


def _average_precision(tps: np.ndarray, fps: np.ndarray) -> float:
    precision = tps[1:] / (tps[1:] + fps[1:])
    return float(np.sum(np.diff(tps) / tps[-1] * precision))


def _trapezoid_precision(tps: np.ndarray, fps: np.ndarray) -> float:
    """The area under the precision-recall curve by the trapezoid rule, over the points scikit-learn's
    ``precision_recall_curve`` returns: every distinct threshold from the highest down to the first that reaches
    full recall, plus (recall 0, precision 1)."""
    last = int(np.searchsorted(tps, tps[-1]))  # the first point of full recall
    k = np.arange(1, last + 1)
    precision = np.r_[1.0, tps[k] / (tps[k] + fps[k])]
    recall = np.r_[0.0, tps[k] / tps[-1]]
    return float(np.trapezoid(precision, recall))


def _fpr_at(tps: np.ndarray, fps: np.ndarray, tpr: float) -> float:
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    # The first ROC point (largest threshold) whose TPR reaches the target; ties are never split.
    k = int(np.searchsorted(tps, tpr * tps[-1] - 1e-9, side="left"))
    return float(fps[k] / fps[-1])


def _all_metrics(id_arr: np.ndarray, ood_arr: np.ndarray, tpr: float) -> dict[str, float]:
    tps, fps, _ = _roc_counts(id_arr, ood_arr)
    # The OOD-positive curve ("OOD if score <= t") visits the same points in reverse, complemented.
    tps_out, fps_out = (fps[-1] - fps)[::-1], (tps[-1] - tps)[::-1]
    return {
        "AUROC": float(np.trapezoid(tps / tps[-1], fps / fps[-1])),
        "AUPR_In": _average_precision(tps, fps),
        "AUPR_Out": _average_precision(tps_out, fps_out),
        "FPR95_IDpos": _fpr_at(tps, fps, tpr),
        "FPR95_OODpos": _fpr_at(tps_out, fps_out, tpr),
        "AUPR_In_trapz": _trapezoid_precision(tps, fps),
        "AUPR_Out_trapz": _trapezoid_precision(tps_out, fps_out),
    }


def _pair(id_scores, ood_scores) -> tuple[np.ndarray, np.ndarray]:
    return _as_scores(id_scores, "id_scores"), _as_scores(ood_scores, "ood_scores")


def auroc(id_scores, ood_scores) -> float:
    """Return the area under the ROC curve (ties count one half); the same for either positive class.

    Args:
        id_scores: ``(N,)`` scores of ID samples, higher = more in-distribution.
        ood_scores: ``(M,)`` scores of OOD samples.

    Returns:
        AUROC in ``[0, 1]``; 1 means every ID sample scores above every OOD sample.
    """
    return _all_metrics(*_pair(id_scores, ood_scores), 0.95)["AUROC"]


def aupr_in(id_scores, ood_scores) -> float:
    """Return the average precision with ID as the positive class (``AUPR_In``).

    Args:
        id_scores: ``(N,)`` scores of ID samples, higher = more in-distribution.
        ood_scores: ``(M,)`` scores of OOD samples.

    Returns:
        ``sklearn.metrics.average_precision_score`` with ID labelled 1.
    """
    return _all_metrics(*_pair(id_scores, ood_scores), 0.95)["AUPR_In"]


def aupr_out(id_scores, ood_scores) -> float:
    """Return the average precision with OOD as the positive class (``AUPR_Out``), ranking by ``-score``.

    Args:
        id_scores: ``(N,)`` scores of ID samples, higher = more in-distribution.
        ood_scores: ``(M,)`` scores of OOD samples.

    Returns:
        ``sklearn.metrics.average_precision_score`` with OOD labelled 1 and ``-score`` as its score.
    """
    return _all_metrics(*_pair(id_scores, ood_scores), 0.95)["AUPR_Out"]


def fpr_at_tpr_id_positive(id_scores, ood_scores, tpr: float = 0.95) -> float:
    """Return the FPR at ``tpr`` with **ID as the positive class** (MCM/NegLabel/SynOOD papers' FPR95).

    The threshold is the largest score that accepts at least ``tpr`` of the ID samples; the result is the
    share of OOD samples it also accepts. Tied scores are accepted or rejected together.

    Args:
        id_scores: ``(N,)`` scores of ID samples, higher = more in-distribution.
        ood_scores: ``(M,)`` scores of OOD samples.
        tpr: target true-positive rate on ID, in ``(0, 1]``.

    Returns:
        FPR in ``[0, 1]``; lower is better.
    """
    return _all_metrics(*_pair(id_scores, ood_scores), tpr)["FPR95_IDpos"]


def fpr_at_tpr_ood_positive(id_scores, ood_scores, tpr: float = 0.95) -> float:
    """Return the FPR at ``tpr`` with **OOD as the positive class** (OpenOOD/pytorch-ood's FPR95).

    The threshold flags at least ``tpr`` of the OOD samples as OOD (lowest scores first); the result is the
    share of ID samples it also flags. Tied scores are flagged together.

    Args:
        id_scores: ``(N,)`` scores of ID samples, higher = more in-distribution.
        ood_scores: ``(M,)`` scores of OOD samples.
        tpr: target true-positive rate on OOD, in ``(0, 1]``.

    Returns:
        FPR in ``[0, 1]``; lower is better.
    """
    return _all_metrics(*_pair(id_scores, ood_scores), tpr)["FPR95_OODpos"]


def ood_metrics(id_scores, ood_scores, tpr: float = 0.95) -> dict[str, float]:
    """Return every metric of :data:`METRIC_COLUMNS` for one ID/OOD pair, from one sort.

    Args:
        id_scores: ``(N,)`` scores of ID samples, higher = more in-distribution.
        ood_scores: ``(M,)`` scores of OOD samples.
        tpr: the TPR of both FPR columns (0.95 gives FPR95).

    Returns:
        ``{"AUROC", "AUPR_In", "AUPR_Out", "FPR95_IDpos", "FPR95_OODpos"}`` as fractions in ``[0, 1]``.
    """
    return _all_metrics(*_pair(id_scores, ood_scores), tpr)


@dataclass(frozen=True)
class Interval:
    """A bootstrap percentile interval."""

    low: float  # lower bound, same unit as the metric
    high: float  # upper bound
    level: float  # coverage, e.g. 0.95


def bootstrap_ci(
    metric: Callable[[np.ndarray, np.ndarray], float],
    id_scores,
    ood_scores,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Return a percentile bootstrap interval of ``metric(id_scores, ood_scores)``.

    ID and OOD samples are resampled separately (a stratified bootstrap), so every replicate keeps both
    set sizes.

    Args:
        metric: a function of ``(id_scores, ood_scores)``, e.g. :func:`auroc`.
        id_scores: ``(N,)`` ID scores.
        ood_scores: ``(M,)`` OOD scores.
        n_boot: number of bootstrap replicates (>= 10).
        level: interval coverage in ``(0, 1)``.
        seed: seed of the resampling (``numpy.random.default_rng``).

    Returns:
        The :class:`Interval` between the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles.
    """
    if n_boot < 10:
        raise ValueError(f"n_boot must be >= 10, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    id_arr = _as_scores(id_scores, "id_scores")
    ood_arr = _as_scores(ood_scores, "ood_scores")
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot)
    for b in range(n_boot):
        values[b] = metric(
            id_arr[rng.integers(0, id_arr.size, id_arr.size)],
            ood_arr[rng.integers(0, ood_arr.size, ood_arr.size)],
        )
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(low), float(high), level)


def summarize(
    id_scores,
    ood_scores: Mapping[str, Sequence[float]],
    tpr: float = 0.95,
    n_boot: int = 0,
    level: float = 0.95,
    seed: int = 0,
):
    """Return a table of every metric per OOD set, plus a ``mean`` row (the unweighted mean over sets).

    Intervals (``n_boot > 0``) come from one stratified bootstrap shared by all rows: each replicate
    resamples the ID set once and every OOD set once, so the ``mean`` row's interval is the interval of the
    mean, not a mean of intervals.

    Args:
        id_scores: ``(N,)`` ID scores, higher = more in-distribution.
        ood_scores: ``{set name: (M_k,) scores}``; at least one set.
        tpr: the TPR of both FPR columns.
        n_boot: bootstrap replicates for ``<metric>_low``/``<metric>_high`` columns; 0 for none.
        level: the intervals' coverage in ``(0, 1)``.
        seed: bootstrap seed.

    Returns:
        A ``pandas.DataFrame`` indexed by OOD set name (the last row is ``mean``), with the columns of
        :data:`METRIC_COLUMNS` as fractions, ``n_id`` and ``n_ood``, and interval columns when ``n_boot``.
        ``df.attrs["fpr_convention"]`` spells out both FPR conventions.
    """
    import pandas as pd

    if not ood_scores:
        raise ValueError("ood_scores is empty: pass at least one {name: scores} OOD set")
    if "mean" in ood_scores:
        raise ValueError("an OOD set may not be named 'mean': that row holds the mean over sets")
    id_arr = _as_scores(id_scores, "id_scores")
    sets = {name: _as_scores(s, f"ood_scores[{name!r}]") for name, s in ood_scores.items()}
    rows = {
        name: {**_all_metrics(id_arr, arr, tpr), "n_id": id_arr.size, "n_ood": arr.size} for name, arr in sets.items()
    }
    table = pd.DataFrame.from_dict(rows, orient="index")
    mean = table.mean(numeric_only=True)
    mean["n_ood"] = table["n_ood"].sum()
    table.loc["mean"] = mean
    table[["n_id", "n_ood"]] = table[["n_id", "n_ood"]].astype(int)
    if n_boot:
        if n_boot < 10 or not 0.0 < level < 1.0:
            raise ValueError(f"need n_boot >= 10 and 0 < level < 1, got n_boot={n_boot}, level={level}")
        rng = np.random.default_rng(seed)
        reps = np.empty((n_boot, len(sets) + 1, len(METRIC_COLUMNS)))
        for b in range(n_boot):
            id_b = id_arr[rng.integers(0, id_arr.size, id_arr.size)]
            for k, arr in enumerate(sets.values()):
                m = _all_metrics(id_b, arr[rng.integers(0, arr.size, arr.size)], tpr)
                reps[b, k] = [m[c] for c in METRIC_COLUMNS]
            reps[b, -1] = reps[b, :-1].mean(axis=0)
        low, high = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2], axis=0)
        for j, col in enumerate(METRIC_COLUMNS):
            table[f"{col}_low"], table[f"{col}_high"] = low[:, j], high[:, j]
    pct = round(tpr * 100)
    table.attrs["fpr_convention"] = (
        f"FPR95_IDpos = FPR at {pct}% TPR with ID positive: the share of OOD accepted when {pct}% of ID is "
        f"accepted (MCM/NegLabel/SynOOD papers). FPR95_OODpos = FPR at {pct}% TPR with OOD positive: the "
        f"share of ID rejected when {pct}% of OOD is rejected (OpenOOD/pytorch-ood)."
    )
    return table
