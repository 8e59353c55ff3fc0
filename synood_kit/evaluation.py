"""OOD evaluation: score every split with every method and tabulate the metrics in both FPR conventions.

The unit of work is ``scores[method][split] -> (N,) array`` (higher = more in-distribution); :func:`ood_table`
turns it into one long table (a row per method and OOD set, plus each method's mean), and
:func:`format_markdown` into the table the README and model cards quote. Scoring functions take cached
features, never images, so every method on every split costs one encoder pass per split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import NegLabelConfig
from .metrics import AUPR_DEFINITION, summarize
from .scores import energy_score, mcm_score, msp_score, neglabel_score

MARKDOWN_COLUMNS = ("AUROC", "AUPR_In", "AUPR_Out", "FPR95_IDpos", "FPR95_OODpos")  # trapezoid AUPRs: CSV and JSON

__all__ = [
    "ZeroShotConfig",
    "classifier_scores",
    "clip_scores",
    "format_markdown",
    "group_metrics",
    "ood_table",
    "skipped_markdown",
    "skipped_summary",
    "table_value",
    "zero_shot_accuracy",
]


@dataclass(frozen=True)
class ZeroShotConfig:
    """Settings of the zero-shot baselines (defaults: each method's paper)."""

    mcm_prompt: str = "a photo of a {}."  # MCM (Ming et al., NeurIPS 2022) ID-label prompt
    mcm_temperature: float = 1.0  # MCM's softmax temperature on cosine similarities (paper: 1)
    neglabel: NegLabelConfig = field(default_factory=NegLabelConfig)  # NegLabel score (official defaults)
    energy_temperature: float = 1.0  # temperature of the classifier's energy score (Liu et al., 2020)


def clip_scores(
    clip,
    features: dict[str, torch.Tensor],
    id_class_names: list[str],
    negatives=None,
    config: ZeroShotConfig | None = None,
    cache_root: str | Path | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Return CLIP zero-shot scores: ``{"MCM": {split: scores}, "NegLabel": {split: scores}}``.

    Args:
        clip: a :class:`~synood_kit.models.ClipModel` (its text tower encodes the labels).
        features: ``{split: (N, D) image features}`` of that model.
        id_class_names: ID label names, in label order.
        negatives: a :class:`~synood_kit.negatives.NegativeLabels`; ``None`` skips NegLabel.
        config: prompts and temperatures.
        cache_root: text-feature cache folder.

    Returns:
        Scores per method and split, float64 numpy arrays; higher = more in-distribution.
    """
    from .features import text_features

    config = config or ZeroShotConfig()
    nl = config.neglabel
    mcm_text = text_features(clip, [config.mcm_prompt.format(c) for c in id_class_names], cache_root, progress=False)
    out: dict[str, dict[str, np.ndarray]] = {"MCM": {}}
    for split, feats in features.items():
        out["MCM"][split] = mcm_score(feats, mcm_text, config.mcm_temperature).double().numpy()
    if negatives is not None:
        id_text = text_features(clip, [nl.id_prompt.format(c) for c in id_class_names], cache_root, progress=False)
        neg_text = negatives.text_features(clip, cache_root=cache_root, progress=False)
        out["NegLabel"] = {
            split: neglabel_score(feats, id_text, neg_text, nl.temperature, nl.n_groups, nl.seed).double().numpy()
            for split, feats in features.items()
        }
    return out


def classifier_scores(
    logits: dict[str, torch.Tensor], config: ZeroShotConfig | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """Return a classifier's post-hoc scores: ``{"MSP": {split: scores}, "Energy": {split: scores}}``.

    Args:
        logits: ``{split: (N, C) logits}`` of an ID classifier.
        config: the energy temperature.

    Returns:
        Scores per method and split (``Energy`` is the negative free energy, higher = more ID).
    """
    config = config or ZeroShotConfig()
    return {
        "MSP": {s: msp_score(x).double().numpy() for s, x in logits.items()},
        "Energy": {s: energy_score(x, config.energy_temperature).double().numpy() for s, x in logits.items()},
    }


def zero_shot_accuracy(features: torch.Tensor, labels, class_text_features: torch.Tensor) -> float:
    """Return top-1 accuracy of nearest-label (cosine) classification.

    Args:
        features: ``(N, D)`` image features.
        labels: ``(N,)`` integer labels indexing the rows of ``class_text_features``.
        class_text_features: ``(C, D)`` label embeddings.

    Returns:
        Accuracy in ``[0, 1]``.
    """
    labels = torch.as_tensor(np.asarray(labels))
    if len(labels) != len(features) or len(labels) == 0:
        raise ValueError(f"need one label per feature row, got {len(labels)} labels for {len(features)} rows")
    sims = (
        torch.nn.functional.normalize(features.float(), dim=-1)
        @ torch.nn.functional.normalize(class_text_features.float(), dim=-1).T
    )
    return float((sims.argmax(dim=1) == labels).float().mean())


def ood_table(
    scores: dict[str, dict[str, np.ndarray]],
    id_split: str = "id_test",
    ood_splits: list[str] | None = None,
    n_boot: int = 0,
    seed: int = 0,
):
    """Return one long table: a row per (method, OOD set) and each method's ``mean`` row.

    Args:
        scores: ``{method: {split: (N,) scores}}``; every method must have ``id_split`` and the OOD splits.
        id_split: the ID split's name.
        ood_splits: OOD splits to report, in order; default every split but ``id_split``.
        n_boot: bootstrap replicates for interval columns (0: none).
        seed: bootstrap seed.

    Returns:
        A ``pandas.DataFrame`` with columns ``method``, ``ood_set``, the :data:`~synood_kit.metrics.METRIC_COLUMNS`
        (fractions), ``n_id``, ``n_ood`` and, with ``n_boot``, ``<metric>_low``/``<metric>_high``.
    """
    import pandas as pd

    if not scores:
        raise ValueError("scores is empty: pass {method: {split: scores}}")
    parts = []
    for method, by_split in scores.items():
        if id_split not in by_split:
            raise ValueError(f"method {method!r} has no {id_split!r} scores (has {sorted(by_split)})")
        splits = ood_splits or [s for s in by_split if s != id_split]
        missing = [s for s in splits if s not in by_split]
        if missing:
            raise ValueError(f"method {method!r} lacks scores for OOD splits {missing}")
        table = summarize(by_split[id_split], {s: by_split[s] for s in splits}, n_boot=n_boot, seed=seed)
        table.insert(0, "ood_set", table.index)
        table.insert(0, "method", method)
        parts.append(table.reset_index(drop=True))
    out = pd.concat(parts, ignore_index=True)
    out.attrs["fpr_convention"] = parts[0].attrs.get("fpr_convention", "") if hasattr(parts[0], "attrs") else ""
    return out


def format_markdown(table, columns: tuple[str, ...] = MARKDOWN_COLUMNS, digits: int = 1) -> str:
    """Return a Markdown table of ``table`` (from :func:`ood_table`) with metrics in percent.

    Args:
        table: the long table.
        columns: metric columns to show.
        digits: decimals of the percentages.

    Returns:
        The Markdown text, one row per (method, OOD set).
    """
    head = ["method", "OOD set", *columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, row in table.iterrows():
        cells = [str(row["method"]), str(row["ood_set"])]
        for c in columns:
            text = f"{100 * row[c]:.{digits}f}"
            if f"{c}_low" in table.columns:
                text += f" [{100 * row[f'{c}_low']:.{digits}f}, {100 * row[f'{c}_high']:.{digits}f}]"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + AUPR_DEFINITION + " The trapezoid columns are in the CSV and metrics.json.\n"


def table_value(table, method: str, ood_set: str, metric: str = "FPR95_IDpos") -> float:
    """Return one cell of an :func:`ood_table` (a fraction).

    Raises:
        KeyError: when the table has no such row, naming the methods and sets it has.
    """
    rows = table[(table["method"] == method) & (table["ood_set"] == ood_set)]
    if len(rows) != 1:
        raise KeyError(
            f"no single row for method {method!r} and OOD set {ood_set!r}; methods {sorted(table['method'].unique())}, "
            f"sets {sorted(table['ood_set'].unique())}"
        )
    return float(rows[metric].iloc[0])


def group_metrics(
    table, groups: dict[str, tuple[str, ...]], metrics: tuple[str, ...] = ("FPR95_IDpos", "AUROC")
) -> dict[str, dict[str, dict[str, float]]]:
    """Return each method's metrics averaged over each group of OOD splits (e.g. a benchmark's near and far).

    Args:
        table: an :func:`ood_table`.
        groups: ``{group: OOD split names}``, e.g. :attr:`synood_kit.benchmark.Benchmark.groups`.
        metrics: the metrics averaged.

    Returns:
        ``{method: {group: {metric: mean over the group's splits}}}`` (fractions).
    """
    return {
        method: {
            group: {m: float(np.mean([table_value(table, method, s, m) for s in splits])) for m in metrics}
            for group, splits in groups.items()
        }
        for method in table["method"].unique()
    }


def skipped_summary(skipped: dict[str, list[dict]], examples: int = 5) -> dict[str, dict]:
    """Return how many images of each split were left out as unreadable, and why.

    Args:
        skipped: ``{split: [{"id", "path", "reason"}]}`` (:attr:`synood_kit.features.FeatureSet.skipped`).
        examples: records kept per split.

    Returns:
        ``{split: {"count": n, "reasons": {reason: n}, "examples": [...]}}``; a reason is the record's with its path
        replaced by ``<image>``, so that images skipped for one cause count together.
    """
    out = {}
    for split, records in skipped.items():
        reasons: dict[str, int] = {}
        for r in records:
            reason = str(r.get("reason", "")).replace(str(r.get("path", "")) or "\0", "<image>")
            reasons[reason] = reasons.get(reason, 0) + 1
        out[split] = {
            "count": len(records),
            "reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
            "examples": list(records[:examples]),
        }
    return out


def skipped_markdown(summary: dict[str, dict]) -> str:
    """Return a Markdown note of the images left out per split (empty when none was)."""
    lines = [
        f"- {split}: {s['count']} image(s) left out: "
        + "; ".join(f"{n} x {reason}" for reason, n in list(s["reasons"].items())[:3])
        for split, s in summary.items()
        if s["count"]
    ]
    return (
        "Unreadable images left out of the scores (all in metrics.json, `skipped`):\n\n" + "\n".join(lines) + "\n"
        if lines
        else ""
    )
