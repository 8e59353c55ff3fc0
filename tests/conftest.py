"""Shared fixtures: tiny seeded models built locally (never from a hub), offline everywhere."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402

TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A random, seeded open_clip CLIP saved as a ``local-dir:`` folder (config + safetensors)."""
    import open_clip
    import torch

    from synood_kit.models import save_clip_folder

    torch.manual_seed(0)
    model = open_clip.model.CLIP(**TINY_CLIP_CFG)
    folder = tmp_path_factory.mktemp("tiny_clip")
    save_clip_folder(model, TINY_CLIP_CFG, folder, {"size": 32, "mean": [0.5] * 3, "std": [0.25] * 3})
    return folder


@pytest.fixture(scope="session")
def tiny_clip(tiny_clip_dir):
    from synood_kit.models import load_clip

    return load_clip(str(tiny_clip_dir))


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("SYNOOD_CACHE", str(root))
    return root
