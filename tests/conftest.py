"""Shared fixtures: tiny seeded models built locally (never from a hub), offline everywhere.

The expensive objects are built once per session and shared by every module that needs them: the tiny CLIP, the
smoke in-painting pipeline's folder, a scaled mini-world benchmark and a random classifier over its ID classes.
Folders are shared read-only: a test that damages or extends one copies it first.
"""

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
MINI_BENCHMARK_SCALE = 0.03  # of every split: 12 x (12 + 3) ID, 4 x 8 near-OOD and 3 x 30 far-OOD images
TINY_PREPROCESS = {"size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A random, seeded open_clip CLIP saved as a ``local-dir:`` folder (config + safetensors)."""
    import open_clip
    import torch

    from synood_kit.models import save_clip_folder

    torch.manual_seed(0)
    model = open_clip.model.CLIP(**TINY_CLIP_CFG)
    folder = tmp_path_factory.mktemp("tiny_clip")
    save_clip_folder(model, TINY_CLIP_CFG, folder, TINY_PREPROCESS)
    return folder


@pytest.fixture(scope="session")
def tiny_clip(tiny_clip_dir):
    from synood_kit.models import load_clip

    return load_clip(str(tiny_clip_dir))


@pytest.fixture(scope="session")
def tiny_inpaint_dir(tmp_path_factory):
    """The mini-world in-painting model's ``smoke`` preset, untrained and seeded, exported once as a diffusers
    ``StableDiffusionInpaintPipeline`` folder (float32). Each module loads its own pipeline from it (~0.1 s)."""
    from synood_kit.miniworld.train_inpaint import PRESETS, build_components, build_tokenizer, export_pipeline

    tok = build_tokenizer()
    model = build_components(PRESETS["smoke"], vocab_size=len(tok), seed=0)
    return export_pipeline(model, tok, tmp_path_factory.mktemp("tiny_inpaint"), fp16=False)


@pytest.fixture(scope="session")
def mini_benchmark(tmp_path_factory):
    """The mini-world benchmark scaled to ``MINI_BENCHMARK_SCALE`` of every split, built once (~1 s)."""
    from synood_kit.miniworld.benchmark import BENCHMARK_SPEC, build_benchmark

    root = tmp_path_factory.mktemp("mini_benchmark")
    build_benchmark(root, BENCHMARK_SPEC.scaled(MINI_BENCHMARK_SCALE), progress=False)
    return root


@pytest.fixture(scope="session")
def mini_classifier_dir(tmp_path_factory):
    """A random, seeded ResNet (one basic block per stage) over the mini-world's 12 ID classes, as a folder."""
    import torch

    from synood_kit.classifier import build_classifier, save_classifier_folder
    from synood_kit.miniworld.benchmark import BENCHMARK_SPEC

    torch.manual_seed(0)
    kw = {"block": "basic", "layers": [1, 1, 1, 1], "num_classes": len(BENCHMARK_SPEC.id_classes)}
    folder = tmp_path_factory.mktemp("mini_classifier")
    save_classifier_folder(
        build_classifier("resnet", kw), "resnet", kw, list(BENCHMARK_SPEC.id_classes), folder, TINY_PREPROCESS
    )
    return folder


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("SYNOOD_CACHE", str(root))
    return root
