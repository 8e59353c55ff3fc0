"""Figures. Every function takes data (and an optional ``ax``) and returns the Figure; none shows or saves."""

from __future__ import annotations

import numpy as np

__all__ = ["boundary_map", "image_grid", "refinement_figure", "roc_curves", "score_histograms", "score_trajectories"]


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
