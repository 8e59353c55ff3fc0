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

__all__ = ["boundary_distance", "boundary_geometry", "log_score", "score_field", "umap_embedding"]


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
