"""First-order distance to the detector's boundary, the cached UMAP and the score field."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from synood_kit.feature_space import (
    boundary_distance,
    boundary_geometry,
    log_score,
    score_field,
    umap_embedding,
)


def _setup():
    g = torch.Generator().manual_seed(0)
    id_text, neg_text = torch.randn(3, 16, generator=g), torch.randn(40, 16, generator=g)
    feats = torch.randn(20, 16, generator=g)
    return feats, id_text, neg_text


def test_slope_predicts_the_change_of_the_log_score_along_the_sphere():
    feats, id_text, neg_text = _setup()
    s, slope = boundary_geometry(feats, id_text, neg_text, n_groups=4, temperature=0.5)
    f = F.normalize(feats, dim=-1).requires_grad_(True)
    (grad,) = torch.autograd.grad(log_score(f, id_text, neg_text, n_groups=4, temperature=0.5).sum(), f)
    f = f.detach()
    tangent = F.normalize(grad - (grad * f).sum(1, keepdim=True) * f, dim=-1)
    step = 1e-3
    moved = log_score(F.normalize(f + step * tangent, dim=-1), id_text, neg_text, n_groups=4, temperature=0.5).detach()
    np.testing.assert_allclose((moved.double().numpy() - s) / step, slope, rtol=0.05, atol=1e-3)
    d = boundary_distance(s, slope, float(s[0]))
    assert d[0] == 0 and (d >= 0).all()
    np.testing.assert_allclose(boundary_distance(s, slope, float(s[0]) + 1.0)[0], 1.0 / slope[0])


# UMAP's first fit in a process compiles its numba kernels (fast_knn_indices ~18 s, smooth_knn_dist ~8 s on 2
# cores), whatever the number of points: 60 points cost as much as 12, so the data cannot make this test fast.
@pytest.mark.slow
def test_umap_is_cached_by_content(tmp_path):
    points = np.random.default_rng(0).normal(size=(60, 8)).astype(np.float32)
    xy = umap_embedding(points, tmp_path, n_neighbors=5)
    assert xy.shape == (60, 2) and len(list(tmp_path.glob("umap-*.npy"))) == 1
    np.testing.assert_array_equal(umap_embedding(points, tmp_path, n_neighbors=5), xy)  # read back
    umap_embedding(points + 1, tmp_path, n_neighbors=5)
    assert len(list(tmp_path.glob("umap-*.npy"))) == 2  # other points, another entry


def test_the_score_field_is_empty_far_from_points():
    corners = np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    extent, grid = score_field(corners, np.arange(4.0), resolution=21, reach=0.1)
    assert grid.shape == (21, 21) and np.isnan(grid[10, 10]) and not np.isnan(grid[0, 0])


def test_the_umap_cache_key_follows_the_points_and_the_settings(tmp_path, monkeypatch):
    """The cache logic alone, with a stand-in for ``umap.UMAP`` that counts its fits (the real one is slow above)."""
    import types

    fits = []

    class CountingUMAP:
        def __init__(self, **settings):
            self.settings = settings

        def fit_transform(self, points):
            fits.append(self.settings)
            return points[:, :2] * 2.0

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=CountingUMAP))
    points = np.random.default_rng(0).normal(size=(12, 8)).astype(np.float32)
    xy = umap_embedding(points, tmp_path, n_neighbors=5)
    np.testing.assert_array_equal(xy, points[:, :2] * 2.0)
    assert fits == [{"n_neighbors": 5, "min_dist": 0.1, "metric": "cosine", "random_state": 0}]
    np.testing.assert_array_equal(umap_embedding(points, tmp_path, n_neighbors=5), xy)
    assert len(fits) == 1  # read back, not fitted again
    umap_embedding(points + 1, tmp_path, n_neighbors=5)
    umap_embedding(points, tmp_path, n_neighbors=6)
    umap_embedding(points, tmp_path, n_neighbors=5, seed=1)
    assert len(fits) == 4 and len(list(tmp_path.glob("umap-*.npy"))) == 4  # other points or settings, new entry
    with pytest.raises(ValueError, match="more than n_neighbors=5 rows"):
        umap_embedding(points[:5], tmp_path, n_neighbors=5)
