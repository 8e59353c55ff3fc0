"""Figures. Every function takes data (and an optional ``ax``) and returns the Figure; none shows or saves."""

from __future__ import annotations

import numpy as np

__all__ = ["image_grid", "score_histograms"]


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
