"""Figures. Every function takes data (and an optional ``ax``) and returns the Figure; none shows or saves."""

from __future__ import annotations

import numpy as np

__all__ = [
    "ablation_bars",
    "benchmark_samples",
    "boundary_map",
    "image_grid",
    "percentile_distribution",
    "recipe_placement",
    "refinement_figure",
    "roc_curves",
    "score_histograms",
    "score_trajectories",
    "training_curves",
]


def score_histograms(
    scores: dict[str, np.ndarray],
    id_split: str = "id_test",
    title: str = "",
    bins: int = 40,
    ax=None,
):
    """Plot one histogram per split of an OOD score on shared bins (ID filled, OOD outlined).

    Args:
        scores: ``{split: (N,) scores}`` of one method (higher = more in-distribution).
        id_split: the split drawn filled.
        title: axes title (e.g. the method).
        bins: number of shared bins.
        ax: axes to draw on; a new figure if ``None``.

    Returns:
        The matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    if not scores:
        raise ValueError("scores is empty")
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.2))
    every = np.concatenate([np.asarray(s, dtype=float) for s in scores.values()])
    edges = np.histogram_bin_edges(every[np.isfinite(every)], bins=bins)
    for split, s in scores.items():
        s = np.asarray(s, dtype=float)
        if split == id_split:
            ax.hist(s, bins=edges, density=True, alpha=0.35, color="tab:blue", label=f"{split} (ID)")
        else:
            ax.hist(s, bins=edges, density=True, histtype="step", linewidth=1.4, label=split)
    ax.set_xlabel("score (higher = more in-distribution)")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return ax.figure


def image_grid(images, titles: list[str] | None = None, ncols: int = 8, scale: float = 1.1, fig=None):
    """Plot images in a grid.

    Args:
        images: ``(B, 3, H, W)`` float in ``[0, 1]`` (tensor or array), or ``(B, H, W, 3)`` uint8.
        titles: one short title per image.
        ncols: images per row.
        scale: inches per image.
        fig: figure to draw on; a new one if ``None``.

    Returns:
        The matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    arr = np.asarray(images.detach().cpu() if hasattr(images, "detach") else images)
    if arr.ndim != 4:
        raise ValueError(f"images must be 4-D, got shape {arr.shape}")
    if arr.shape[1] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(0, 2, 3, 1)
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0.0, 1.0)
    n = len(arr)
    nrows = max(1, (n + ncols - 1) // ncols)
    fig = fig or plt.figure(figsize=(ncols * scale, nrows * scale * (1.25 if titles else 1.0)))
    for i in range(n):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.imshow(arr[i], interpolation="nearest")
        ax.set_axis_off()
        if titles:
            ax.set_title(titles[i], fontsize=6)
    return fig


def refinement_figure(sources, steps, masks=None, max_images: int = 4, scale: float = 1.3):
    """Plot the refinement loop: per image, source, mask, every generation's image and gradient magnitude.

    Args:
        sources: ``(B, 3, H, W)`` source images in ``[0, 1]``.
        steps: the :class:`~synood_kit.inpainting.RefineStep` list of one refinement.
        masks: ``(B, 1, H, W)`` masks (default: full masks).
        max_images: rows drawn.
        scale: inches per panel.

    Returns:
        The matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    n = min(max_images, len(sources))
    cols = 2 + 2 * len(steps)
    fig, axes = plt.subplots(n, cols, figsize=(cols * scale, n * scale * 1.15), squeeze=False)
    for i in range(n):
        panels = [
            (sources[i].permute(1, 2, 0).clamp(0, 1), "source", None),
            ((masks[i, 0] if masks is not None else np.ones(sources.shape[-2:])), "mask", "gray"),
        ]
        for st in steps:
            panels.append((st.image[i].permute(1, 2, 0), f"gen {st.round}\ns={float(st.score[i]):.2f}", None))
            gm = st.grad_magnitude[i] if st.grad_magnitude is not None else np.zeros(sources.shape[-2:])
            panels.append((gm, f"|grad| {st.round}" if st.grad_magnitude is not None else "no update", "magma"))
        for ax, (img, title, cmap) in zip(axes[i], panels, strict=True):
            fixed = {"vmin": 0.0, "vmax": 1.0} if cmap == "gray" else {}  # a full mask is all ones: draw it white
            ax.imshow(np.asarray(img), cmap=cmap, interpolation="nearest", **fixed)
            ax.set_title(title, fontsize=6)
            ax.set_axis_off()
    fig.tight_layout()
    return fig


def score_trajectories(steps, id_scores, ood_scores, target: float | None = None, ax=None):
    """Plot each image's guidance score per generation against the ID and OOD score distributions.

    Args:
        steps: a :class:`~synood_kit.inpainting.RefineStep` list.
        id_scores, ood_scores: ``(N,)`` scorer values on real ID and OOD images.
        target: the refinement target, drawn as a line.
        ax: axes to draw on.

    Returns:
        The matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.4))
    rounds = np.arange(len(steps))
    traj = np.stack([np.asarray(st.score) for st in steps], axis=1)
    every = np.concatenate([np.asarray(id_scores), np.asarray(ood_scores), traj.ravel()])
    edges = np.histogram_bin_edges(every[np.isfinite(every)], bins=40)
    left = -0.9
    for scores, color, label in ((id_scores, "tab:blue", "ID"), (ood_scores, "tab:red", "OOD")):
        hist, _ = np.histogram(scores, bins=edges, density=True)
        width = 0.8 * hist / max(hist.max(), 1e-12)
        ax.barh(edges[:-1], width, height=np.diff(edges), left=left, color=color, alpha=0.3, label=f"{label} scores")
    for row in traj:
        ax.plot(rounds, row, "-o", color="k", alpha=0.5, markersize=3)
    if target is not None:
        ax.axhline(target, color="tab:green", linestyle="--", label="target")
    ax.set_xlabel("generation")
    ax.set_ylabel("guidance score (higher = more ID)")
    ax.set_xlim(left - 0.1, len(steps) - 0.5)
    ax.legend(fontsize=7, loc="best")
    return ax.figure


def recipe_placement(final_scores: dict, id_scores, ood_scores, target: float, ax=None):
    """Plot each recipe's final guidance scores (one row of points per recipe) against the ID and OOD score
    distributions and the target (:func:`~synood_kit.inpainting.compare_recipes`).

    Args:
        final_scores: ``{recipe: (B,) final scores}``, drawn top to bottom in order.
        id_scores, ood_scores: ``(N,)`` scorer values on real ID and OOD images.
        target: the refinement target, drawn as a line.
        ax: axes to draw on.

    Returns:
        The matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    if not final_scores:
        raise ValueError("recipe_placement needs at least one recipe's scores")
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 0.6 * len(final_scores) + 1.8))
    names = list(final_scores)
    rows = np.arange(len(names))[::-1]
    for lo, hi, color, label in (
        (*np.percentile(id_scores, [25, 75]), "tab:blue", "ID scores (IQR)"),
        (*np.percentile(ood_scores, [25, 75]), "tab:red", "OOD scores (IQR)"),
    ):
        ax.axvspan(lo, hi, color=color, alpha=0.15, label=label)
    for row, name in zip(rows, names, strict=True):
        x = np.asarray(final_scores[name], dtype=float)
        ax.plot(x, np.full_like(x, row), "o", color="k", alpha=0.6, markersize=4)
        ax.plot([np.median(x)], [row], "|", color="tab:orange", markersize=16, markeredgewidth=2)
    ax.axvline(target, color="tab:green", linestyle="--", label="target")
    ax.set_yticks(rows, names)
    ax.set_ylim(-0.7, len(names) - 0.3)
    ax.set_xlabel("final guidance score (orange: median; higher = more ID)")
    ax.legend(fontsize=7, loc="best")
    return ax.figure


def roc_curves(scores: dict[str, dict[str, np.ndarray]], ood_set: str, id_set: str = "id_test", ax=None):
    """Plot ROC curves (ID positive) of several methods on one OOD set, with the 95% TPR line.

    Args:
        scores: ``{method: {split: (N,) scores}}``, higher = more in-distribution.
        ood_set: the OOD split to draw.
        id_set: the ID split.
        ax: axes to draw on.

    Returns:
        The matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    from .metrics import auroc, roc_points

    if ax is None:
        _, ax = plt.subplots(figsize=(4, 3.6))
    for method, by_split in scores.items():
        fpr, tpr, _ = roc_points(by_split[id_set], by_split[ood_set])
        ax.plot(fpr, tpr, label=f"{method} (AUROC {100 * auroc(by_split[id_set], by_split[ood_set]):.1f})")
    ax.axhline(0.95, color="gray", linestyle=":", linewidth=1)
    ax.set_xlabel("FPR (OOD accepted)")
    ax.set_ylabel("TPR (ID accepted)")
    ax.set_title(ood_set)
    ax.legend(fontsize=6, loc="lower right")
    return ax.figure


def boundary_map(
    xy: np.ndarray,
    groups: dict[str, np.ndarray],
    field,
    level: float,
    anchors: np.ndarray | None = None,
    title: str = "",
    ax=None,
):
    """Plot a 2-D embedding with a score as a colour field, the decision boundary as a contour, and point groups.

    Args:
        xy: ``(N, 2)`` embedded points.
        groups: ``{name: index array into xy}``, drawn in order (later on top).
        field: ``(extent, grid)`` from :func:`synood_kit.feature_space.score_field` (e.g. the log-score).
        level: the decision threshold on the field's scale, drawn as a contour.
        anchors: index array of text-feature anchors (negative labels), drawn as black crosses.
        title: axes title.
        ax: axes to draw on.

    Returns:
        The matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 5))
    extent, grid = field
    image = ax.imshow(
        grid,
        extent=extent,
        origin="lower",
        cmap="RdBu",
        aspect="auto",
        alpha=0.55,
        vmin=level - 3 * max(abs(level), 1),
        vmax=level + 3 * max(abs(level), 1),
    )
    xs, ys = np.linspace(extent[0], extent[1], grid.shape[1]), np.linspace(extent[2], extent[3], grid.shape[0])
    ax.contour(xs, ys, np.nan_to_num(grid, nan=level - 1e3), levels=[level], colors="k", linewidths=1.2)
    markers = "o^sDvP*X"
    for i, (name, index) in enumerate(groups.items()):
        emphasised = name.startswith("synthetic")  # few points that the figure is about: larger, outlined
        ax.scatter(
            xy[index, 0],
            xy[index, 1],
            s=40 if emphasised else 9,
            marker=markers[i % len(markers)],
            label=name,
            alpha=0.9 if emphasised else 0.7,
            edgecolors="k" if emphasised else "none",
            linewidths=0.6,
            zorder=3 if emphasised else 2,
        )
    if anchors is not None and len(anchors):
        ax.scatter(xy[anchors, 0], xy[anchors, 1], s=30, marker="x", c="k", label="negative labels (text)", zorder=4)
    ax.figure.colorbar(image, ax=ax, label="log score (boundary: black line)")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=6, loc="best", markerscale=1.5)
    return ax.figure


def percentile_distribution(result, axes=None):
    """Plot NegLabel's mining statistic per part of speech, with the largest value kept (the cut) as a line.

    Args:
        result: a :class:`~synood_kit.negatives.MiningResult`.
        axes: one axes per part of speech; a new figure if ``None``.

    Returns:
        The matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    pos_arr = np.array(result.candidate_pos)
    kinds = [p for p in ("noun", "adj") if (pos_arr == p).any()]
    if axes is None:
        _, axes = plt.subplots(1, len(kinds), figsize=(4.5 * len(kinds), 3), squeeze=False)
        axes = axes[0]
    for ax, pos in zip(axes, kinds, strict=True):
        ax.hist(result.candidate_similarity[pos_arr == pos], bins=60, color="tab:gray")
        ax.axvline(result.thresholds[pos], color="tab:red", linestyle="--", label="kept below")
        ax.set_title(f"{pos}: percentile similarity to the ID labels", fontsize=9)
        ax.legend(fontsize=7)
    axes[0].figure.tight_layout()
    return axes[0].figure


def training_curves(logs: dict, axes=None):
    """Plot the cross-entropy of each fine-tuning stage per step.

    Args:
        logs: ``{"adapter": [TrainLog], "labels": [TrainLog]}`` (either may be missing).
        axes: one axes per stage; a new figure if ``None``.

    Returns:
        The matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    titles = {"adapter": "stage A (adapter)", "labels": "stage B (negative labels)", "joint": "joint"}
    stages = [k for k in logs if logs[k]]
    if axes is None:
        _, axes = plt.subplots(1, len(stages), figsize=(4.5 * len(stages), 3), squeeze=False)
        axes = axes[0]
    for ax, stage in zip(axes, stages, strict=True):
        ax.plot([log.step for log in logs[stage]], [log.loss for log in logs[stage]], "-o", markersize=2)
        ax.set_title(titles.get(stage, stage))
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy")
    axes[0].figure.tight_layout()
    return axes[0].figure


def ablation_bars(table, ood_set: str, metric: str = "FPR95_IDpos"):
    """Plot an ablation grid's variants on one OOD split as bars, one panel per number of negatives, with the
    ID-only control of that panel as a dashed line.

    Args:
        table: the grid from :func:`synood_kit.ablations.run_ablations` (columns ``synthetic``, ``training``,
            ``n_negatives``, ``ood_set`` and the metrics).
        ood_set: the split drawn.
        metric: the metric drawn (a fraction; shown in percent).

    Returns:
        The matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    ks = sorted(table["n_negatives"].unique(), reverse=True)
    n_rows = int(((table["n_negatives"] == ks[0]) & (table["ood_set"] == ood_set)).sum())
    fig, axes = plt.subplots(1, len(ks), figsize=(6 * len(ks), 1.5 + 0.32 * n_rows), squeeze=False)
    for ax, k in zip(axes[0], ks, strict=True):
        rows = table[(table["ood_set"] == ood_set) & (table["n_negatives"] == k)]
        labels = [f"{s}\n{t}" if s != "none" else t for s, t in zip(rows["synthetic"], rows["training"], strict=True)]
        colours = ["gray" if s == "none" else "C0" for s in rows["synthetic"]]
        ax.barh(np.arange(len(rows)), 100 * rows[metric], color=colours)
        ax.set_yticks(np.arange(len(rows)), labels, fontsize=7)
        control = rows.loc[rows["training"].str.startswith("control"), metric]
        if len(control):
            ax.axvline(100 * float(control.iloc[0]), color="k", linestyle="--", linewidth=1)
        ax.invert_yaxis()
        ax.set_xlabel(f"{ood_set} {metric} (%)")
        ax.set_title(f"{k} negatives")
    fig.tight_layout()
    return fig


def benchmark_samples(benchmark, per_split: int = 8, side: int = 64, seed: int = 0):
    """Plot a fixed-seed sample of every split of a benchmark, one row per split (images resized to ``side``).

    Args:
        benchmark: a :class:`~synood_kit.benchmark.Benchmark`.
        per_split: images per row.
        side: the side each image is shown at (short side resized, centre crop), pixels.
        seed: the sampling seed.

    Returns:
        The matplotlib Figure.
    """
    import torch
    import torch.nn.functional as F

    from .data import load_image

    images, titles = [], []
    for split in (s.name for s in benchmark.splits):
        image_set = benchmark.split(split).sample(per_split, seed)
        for item in image_set.items[:per_split]:
            x = load_image(item.path)[None]
            h, w = x.shape[-2:]
            size = (max(side, round(h * side / min(h, w))), max(side, round(w * side / min(h, w))))
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
            top, left = (x.shape[-2] - side) // 2, (x.shape[-1] - side) // 2
            images.append(x[0, :, top : top + side, left : left + side].clamp(0, 1))
            name = benchmark.class_names[item.label] if item.label >= 0 else ""
            titles.append(f"{split}\n{name}"[:40])
    return image_grid(torch.stack(images), titles, ncols=per_split)
