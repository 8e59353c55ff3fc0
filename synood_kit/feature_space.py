"""Where samples sit relative to the ID/OOD decision boundary in CLIP feature space, and a cached UMAP of it.

The NegLabel (or SynOOD) detector accepts an image when its score is above a threshold ``t`` (by convention the
ID 5% quantile, where 95% of ID images are accepted). Its decision boundary in feature space is the level set
``log s(f) = log t`` on the unit sphere. :func:`boundary_geometry` returns each feature's log-score and its
slope ``||grad_f log s(f)||`` (the gradient projected onto the sphere's tangent plane) in one pass;
:func:`boundary_distance` turns them into the first-order distance to that set, ``|log s(f) - log t| / slope``,
once the threshold is known. The log makes the score's many orders of magnitude (far-OOD images reach 1e-10) comparable.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "boundary_distance",
    "boundary_geometry",
    "boundary_table",
    "embedding_panel",
    "log_score",
    "score_field",
    "umap_embedding",
]


def log_score(
    features: torch.Tensor, id_text: torch.Tensor, neg_text: torch.Tensor, adapter=None, **neglabel_kw
) -> torch.Tensor:
    """Return ``log`` of the NegLabel score of ``features`` (after ``adapter`` when given), differentiable."""
    from .scores import neglabel_score

    feats = adapter(features.float()) if adapter is not None else features.float()
    return torch.log(neglabel_score(feats, id_text, neg_text, **neglabel_kw).clamp_min(1e-30))


def boundary_geometry(
    features: torch.Tensor,
    id_text: torch.Tensor,
    neg_text: torch.Tensor,
    adapter=None,
    batch_size: int = 1024,
    **neglabel_kw,
) -> tuple[np.ndarray, np.ndarray]:
    """Return each feature's log-score and the slope of the log-score on the unit sphere, from one gradient pass.

    Args:
        features: ``(N, d)`` CLIP image features (normalised here).
        id_text, neg_text: ID and negative label features (rows substituted by stage B go in ``neg_text``).
        adapter: a stage-A adapter applied before scoring (``None``: zero-shot).
        batch_size: features per gradient pass.
        neglabel_kw: NegLabel settings (``temperature``, ``n_groups``, ``seed``).

    Returns:
        ``(log_scores (N,), slopes (N,))``, float64.
    """
    if adapter is not None:
        adapter.eval()
    scores, slopes = [], []
    for i in range(0, len(features), batch_size):
        f = F.normalize(features[i : i + batch_size].float(), dim=-1).requires_grad_(True)
        s = log_score(f, id_text, neg_text, adapter, **neglabel_kw)
        (grad,) = torch.autograd.grad(s.sum(), f)
        f = f.detach()
        grad = grad - (grad * f).sum(1, keepdim=True) * f  # tangent to the sphere
        scores.append(s.detach().double().numpy())
        slopes.append(grad.norm(dim=1).double().numpy())
    if not scores:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(scores), np.concatenate(slopes)


def boundary_distance(log_scores: np.ndarray, slopes: np.ndarray, log_threshold: float) -> np.ndarray:
    """Return the first-order distance to the boundary ``log s = log_threshold`` (0: on it), in units of the unit
    sphere's chord, from :func:`boundary_geometry`'s output."""
    return np.abs(log_scores - log_threshold) / np.maximum(slopes, 1e-12)


def umap_embedding(
    points: np.ndarray,
    cache_dir: str | Path | None = None,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    metric: str = "cosine",
    seed: int = 0,
) -> np.ndarray:
    """Return a 2-D UMAP embedding of ``points`` (fixed seed), read from ``cache_dir`` when computed before.

    The cache key hashes the points' bytes and every setting, so a changed input never reads a stale embedding.
    """
    from .storage import atomic_path

    points = np.ascontiguousarray(points, dtype=np.float32)
    if points.ndim != 2 or len(points) <= n_neighbors:
        raise ValueError(f"UMAP needs a 2-D array with more than n_neighbors={n_neighbors} rows, got {points.shape}")
    key = hashlib.sha256(
        points.tobytes() + repr((points.shape, n_neighbors, min_dist, metric, seed)).encode()
    ).hexdigest()
    path = Path(cache_dir) / f"umap-{key[:20]}.npy" if cache_dir else None
    if path is not None and path.is_file():
        return np.load(path)
    import umap

    xy = umap.UMAP(n_neighbors=n_neighbors, min_dist=min_dist, metric=metric, random_state=seed).fit_transform(points)
    if path is not None:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, xy)
    return xy


def score_field(
    xy: np.ndarray, values: np.ndarray, resolution: int = 120, k: int = 10, margin: float = 0.05, reach: float = 0.06
):
    """Interpolate per-point ``values`` over the embedding's bounding box (distance-weighted ``k`` nearest points).

    Cells farther than ``reach`` (a fraction of the box's diagonal) from every point are left empty (NaN), so the
    field is drawn only where there are samples.

    Returns:
        ``(extent (x0, x1, y0, y1), grid (resolution, resolution))`` for ``imshow(grid, extent=extent, origin="lower")``.
    """
    from sklearn.neighbors import KNeighborsRegressor

    lo, hi = xy.min(0), xy.max(0)
    pad = (hi - lo) * margin
    lo, hi = lo - pad, hi + pad
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], resolution), np.linspace(lo[1], hi[1], resolution))
    cells = np.stack([gx.ravel(), gy.ravel()], 1)
    model = KNeighborsRegressor(n_neighbors=min(k, len(xy)), weights="distance").fit(xy, values)
    grid = model.predict(cells)
    nearest, _ = model.kneighbors(cells, n_neighbors=1)
    grid[nearest[:, 0] > reach * float(np.linalg.norm(hi - lo))] = np.nan
    return (lo[0], hi[0], lo[1], hi[1]), grid.reshape(resolution, resolution)


def boundary_table(
    features: dict[str, torch.Tensor],
    id_text: torch.Tensor,
    neg_text: torch.Tensor,
    adapter=None,
    threshold_set: str = "id_test",
    quantile: float = 0.05,
    **neglabel_kw,
):
    """Return where each set of samples sits relative to the detector's decision boundary.

    The threshold is the ``quantile`` of ``threshold_set``'s scores (0.05: the one that keeps 95% of ID test
    images, FPR95's); each sample's distance is :func:`boundary_distance` of its :func:`boundary_geometry`.

    Args:
        features: ``{set name: (N, d) CLIP image features}``; must hold ``threshold_set``.
        id_text, neg_text: ID and negative label features (stage-B rows substituted in ``neg_text``).
        adapter: a stage-A adapter (``None``: zero-shot NegLabel).
        threshold_set: the set whose score quantile is the threshold.
        quantile: that quantile.
        neglabel_kw: NegLabel settings (``temperature``, ``n_groups``, ``seed``).

    Returns:
        ``(table, log_threshold, log_scores)``: a ``pandas.DataFrame`` with one row per set (``set``, ``n``,
        ``median distance to boundary``, ``share on the ID side``, ``median log score``), the log-threshold, and
        ``{set: (N,) log-scores}``.
    """
    import pandas as pd

    if threshold_set not in features:
        raise ValueError(f"features lack the threshold set {threshold_set!r} (have {sorted(features)})")
    geometry = {name: boundary_geometry(f, id_text, neg_text, adapter, **neglabel_kw) for name, f in features.items()}
    log_t = float(np.quantile(geometry[threshold_set][0], quantile))
    rows = []
    for name, (s, slope) in geometry.items():
        d = boundary_distance(s, slope, log_t)
        rows.append(
            {
                "set": name,
                "n": len(s),
                "median distance to boundary": float(np.median(d)),
                "share on the ID side": float((s > log_t).mean()),
                "median log score": float(np.median(s)),
            }
        )
    return pd.DataFrame(rows), log_t, {name: s for name, (s, _) in geometry.items()}


def embedding_panel(
    features: dict[str, torch.Tensor],
    picked: dict[str, np.ndarray],
    log_scores: dict[str, np.ndarray],
    anchor_text: torch.Tensor,
    adapter=None,
    cache_dir: str | Path | None = None,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    seed: int = 0,
):
    """Embed chosen samples of several sets and text anchors with one UMAP, and interpolate their log-scores.

    Args:
        features: ``{set: (N, d) image features}``.
        picked: ``{set: row indices}`` drawn from each set (a fixed-seed sample).
        log_scores: ``{set: (N,) log-scores}`` (from :func:`boundary_table`), the colour field's values.
        anchor_text: ``(A, d)`` text features drawn as anchors (e.g. the assigned negative labels).
        adapter: the stage-A adapter applied to image features (``None``: unit-normalised features).
        cache_dir, n_neighbors, min_dist, seed: :func:`umap_embedding`'s.

    Returns:
        ``(xy, groups, anchors, field)`` for :func:`synood_kit.plotting.boundary_map`: the ``(N, 2)`` embedding,
        ``{set: row indices into xy}``, the anchors' rows, and :func:`score_field` over the image rows.
    """
    parts, groups, start = [], {}, 0
    with torch.no_grad():
        for name, idx in picked.items():
            f = features[name][idx].float()
            parts.append(adapter(f) if adapter is not None else F.normalize(f, dim=-1))
            groups[name] = np.arange(start, start + len(idx))
            start += len(idx)
        parts.append(F.normalize(anchor_text.float(), dim=-1))
    anchors = np.arange(start, start + len(anchor_text))
    points = torch.cat(parts).numpy()
    xy = umap_embedding(points, cache_dir, n_neighbors=n_neighbors, min_dist=min_dist, seed=seed)
    image_rows = np.concatenate(list(groups.values()))
    values = np.concatenate([log_scores[name][idx] for name, idx in picked.items()])
    return xy, groups, anchors, score_field(xy[image_rows], values)
