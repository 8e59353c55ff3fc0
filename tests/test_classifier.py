"""ID classifier folders: save/load round trip, differentiable logits, clear errors for missing weights."""

from __future__ import annotations

import pytest
import torch

from synood_kit.classifier import build_classifier, load_classifier, save_classifier_folder
from synood_kit.models import WeightsNotFoundError

KW = {"block": "basic", "layers": [1, 1, 1, 1], "num_classes": 3}
PRE = {"size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}


@pytest.fixture(scope="module")
def clf_folder(tmp_path_factory):
    torch.manual_seed(0)
    model = build_classifier("resnet", KW).eval()
    folder = tmp_path_factory.mktemp("clf")
    save_classifier_folder(model, "resnet", KW, ["a", "b", "c"], folder, PRE)
    return folder, model


def test_round_trip_gives_the_same_logits(clf_folder):
    folder, model = clf_folder
    clf = load_classifier(str(folder))
    x = torch.rand(4, 3, 32, 32)
    expected = model(clf.transform(x))
    assert clf.class_names == ("a", "b", "c")
    torch.testing.assert_close(clf.logits(x), expected)


def test_logits_are_differentiable_in_the_image(clf_folder):
    clf = load_classifier(str(clf_folder[0]))
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    clf.logits(x).logsumexp(1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_fp16_storage_loads_as_float32(tmp_path, clf_folder):
    _, model = clf_folder
    save_classifier_folder(model, "resnet", KW, ["a", "b", "c"], tmp_path, PRE, dtype=torch.float16)
    clf = load_classifier(str(tmp_path))
    assert all(p.dtype == torch.float32 for p in clf.model.parameters())


def test_fingerprint_changes_with_weights(tmp_path, clf_folder):
    folder, model = clf_folder
    other = build_classifier("resnet", KW)
    save_classifier_folder(other, "resnet", KW, ["a", "b", "c"], tmp_path, PRE)
    assert load_classifier(str(tmp_path)).fingerprint != load_classifier(str(folder)).fingerprint


def test_missing_folder_names_what_was_looked_for(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="classifier_config.json"):
        load_classifier(str(tmp_path / "nope"))


def test_torchvision_name_needs_weights_and_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ValueError, match="needs weights"):
        load_classifier("resnet50")
    with pytest.raises(ValueError, match="unknown weights"):
        load_classifier("resnet50", weights="NOPE")
    with pytest.raises(WeightsNotFoundError, match="resnet50/IMAGENET1K_V2"):
        load_classifier("resnet50", weights="IMAGENET1K_V2")
