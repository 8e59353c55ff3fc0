"""Where samples sit relative to the ID/OOD decision boundary in CLIP feature space, and a cached UMAP of it.

The NegLabel (or SynOOD) detector accepts an image when its score is above a threshold ``t`` (by convention the
ID 5% quantile, where 95% of ID images are accepted). Its decision boundary in feature space is the level set
``log s(f) = log t`` on the unit sphere. :func:`boundary_distance` estimates each feature's distance to that
set to first order: ``|log s(f) - log t| / ||grad_f log s(f)||`` with the gradient projected onto the sphere's
tangent plane. The log makes the score's many orders of magnitude (far-OOD images reach 1e-10) comparable.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["boundary_distance", "log_score", "score_field", "umap_embedding"]


def log_score(features: torch.Tensor, id_text: torch.Tensor, neg_text: torch.Tensor, adapter=None,
              **neglabel_kw) -> torch.Tensor:
    """Return ``log`` of the NegLabel score of ``features`` (after ``adapter`` when given), differentiable."""
    from .scores import neglabel_score

    feats = adapter(features.float()) if adapter is not None else features.float()
    return torch.log(neglabel_score(feats, id_text, neg_text, **neglabel_kw).clamp_min(1e-30))


def boundary_distance(features: torch.Tensor, id_text: torch.Tensor, neg_text: torch.Tensor, log_threshold: float,
                      adapter=None, batch_size: int = 1024, **neglabel_kw) -> np.ndarray:
    """Return each feature's first-order distance to the detector's decision boundary on the unit sphere.

    Args:
        features: ``(N, d)`` CLIP image features (normalised here).
        id_text, neg_text: ID and negative label features (rows substituted by stage B go in ``neg_text``).
        log_threshold: ``log t`` of the decision threshold (e.g. the log-score's ID 5% quantile).
        adapter: a stage-A adapter applied before scoring (``None``: zero-shot).
        batch_size: features per gradient pass.
        neglabel_kw: NegLabel settings (``temperature``, ``n_groups``, ``seed``).

    Returns:
        ``(N,)`` float64 distances in units of the unit sphere's chord (0: on the boundary).
    """
    if adapter is not None:
        adapter.eval()
    out = []
    for i in range(0, len(features), batch_size):
        f = F.normalize(features[i : i + batch_size].float(), dim=-1).requires_grad_(True)
        s = log_score(f, id_text, neg_text, adapter, **neglabel_kw)
        (grad,) = torch.autograd.grad(s.sum(), f)
        f = f.detach()
        grad = grad - (grad * f).sum(1, keepdim=True) * f  # tangent to the sphere
        out.append(((s.detach() - log_threshold).abs() / grad.norm(dim=1).clamp_min(1e-12)).double().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def umap_embedding(points: np.ndarray, cache_dir: str | Path | None = None, n_neighbors: int = 15,
                   min_dist: float = 0.1, metric: str = "cosine", seed: int = 0) -> np.ndarray:
    """Return a 2-D UMAP embedding of ``points`` (fixed seed), read from ``cache_dir`` when computed before.

    The cache key hashes the points' bytes and every setting, so a changed input never reads a stale embedding.
    """
    from .storage import atomic_path

    points = np.ascontiguousarray(points, dtype=np.float32)
    if points.ndim != 2 or len(points) <= n_neighbors:
        raise ValueError(f"UMAP needs a 2-D array with more than n_neighbors={n_neighbors} rows, got {points.shape}")
    key = hashlib.sha256(points.tobytes() + repr((points.shape, n_neighbors, min_dist, metric, seed)).encode()).hexdigest()
    path = Path(cache_dir) / f"umap-{key[:20]}.npy" if cache_dir else None
    if path is not None and path.is_file():
        return np.load(path)
    import umap

    xy = umap.UMAP(n_neighbors=n_neighbors, min_dist=min_dist, metric=metric, random_state=seed).fit_transform(points)
    if path is not None:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, xy)
    return xy


def score_field(xy: np.ndarray, values: np.ndarray, resolution: int = 120, k: int = 10, margin: float = 0.05,
                reach: float = 0.06):
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
