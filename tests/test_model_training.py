"""The mini-world training scripts: --smoke runs export loadable models; a resumed run equals an uninterrupted one;
the shipped models load through the public loaders."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from synood_kit.classifier import load_classifier
from synood_kit.config import assets_dir
from synood_kit.miniworld import quality, train_classifier, train_clip
from synood_kit.miniworld.benchmark import BENCHMARK_SPEC
from synood_kit.models import load_clip


def test_clip_smoke_exports_an_open_clip_folder(tmp_path):
    train_clip.main(["--smoke", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "model")])
    clip = load_clip(str(tmp_path / "model"))
    feats = clip.encode_images(torch.rand(2, 3, 32, 32))
    assert feats.shape == (2, train_clip.CLIP_CFG["embed_dim"]) and torch.isfinite(feats).all()
    assert (tmp_path / "run" / "log.jsonl").is_file()


def test_classifier_resumed_run_equals_uninterrupted_run(tmp_path, monkeypatch):
    kw = {"batch_size": 8, "pool_size": 48, "image_size": 32, "checkpoint_every": 2, "eval_every": 2, "progress": False}
    train_classifier.train(tmp_path / "full", None, steps=4, **kw)

    real_save = train_classifier.save_checkpoint

    def save_then_die(run_dir, model, optimizer, step, extra=None):
        real_save(run_dir, model, optimizer, step, extra)
        if step == 2:
            raise KeyboardInterrupt("killed after the step-2 checkpoint")

    monkeypatch.setattr(train_classifier, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_classifier.train(tmp_path / "resumed", None, steps=4, **kw)
    monkeypatch.setattr(train_classifier, "save_checkpoint", real_save)
    train_classifier.train(tmp_path / "resumed", None, steps=4, **kw)
    full = load_file(str(tmp_path / "full" / "checkpoint" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "checkpoint" / "model.safetensors"))
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], msg=k)


@pytest.fixture(scope="module")
def smoke_classifier(tmp_path_factory):
    """The classifier training script's ``--smoke`` export (a few steps on a tiny pool), run once."""
    root = tmp_path_factory.mktemp("classifier_smoke")
    train_classifier.main(["--smoke", "--run", str(root / "run"), "--out", str(root / "model")])
    return root / "model"


def test_classifier_smoke_exports_a_loadable_folder(smoke_classifier):
    clf = load_classifier(str(smoke_classifier))
    assert clf.logits(torch.rand(3, 3, 32, 32)).shape == (3, len(clf.class_names))


@pytest.mark.slow  # measures on the full benchmark's 1,200 id_test images; a cold cache first builds all 5,200
def test_quality_measures_the_folder_it_is_given(smoke_classifier, mini_classifier_dir, tmp_path, capsys):
    """``quality --classifier FOLDER`` measures a reproduction's export, not the shipped model: two folders given,
    each result names its folder and holds that folder's numbers."""
    results = {}
    for name, folder in (("smoke", smoke_classifier), ("random", mini_classifier_dir)):
        out = tmp_path / f"{name}.json"
        quality.main(["--models", "classifier", "--classifier", str(folder), "--out", str(out)])
        results[name] = result = json.loads(out.read_text())["classifier"]
        assert result["model"] == f"classifier:{folder}" and result["n"] == 1200
        assert 0.0 <= result["top1_id_test"] <= 1.0 and "classifier" in capsys.readouterr().out
    # two models, two measurements: per-class accuracies of different weights on the same images differ
    assert results["smoke"]["per_class"] != results["random"]["per_class"]
    assert set(results["smoke"]["per_class"]) == set(BENCHMARK_SPEC.id_classes)
    with pytest.raises(SystemExit):
        quality.main(["--models", "vae"])


shipped = pytest.mark.skipif(
    not (assets_dir() / "miniworld" / "clip" / "open_clip_config.json").is_file(),
    reason="the shipped mini-world models are not in assets/",
)


@shipped
def test_shipped_models_load_through_the_public_loaders():
    """The three shipped models load by name (their load time is measured by benchmarks/model_loading.py)."""
    from synood_kit.mllm import load_mllm

    clip = load_clip("miniworld")
    clf = load_classifier("miniworld")
    mllm = load_mllm("miniworld")
    assert clf.class_names == BENCHMARK_SPEC.id_classes
    assert clip.name.startswith("local-dir:") and clip.image_size == 32
    assert mllm.name == "miniworld" and mllm.processor.chat_template
