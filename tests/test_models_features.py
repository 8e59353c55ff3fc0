"""CLIP loading (local folders, offline errors) and the text / image feature caches."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from synood_kit.data import ImageSet, load_image
from synood_kit.features import image_features, text_features
from synood_kit.models import (
    ClipModel,
    ImageTransform,
    WeightsNotFoundError,
    load_clip,
    resolve_clip_source,
    save_clip_folder,
)

# ---------------------------------------------------------------- loading


def test_load_clip_from_a_local_folder(tiny_clip, tiny_clip_dir):
    assert isinstance(tiny_clip, ClipModel)
    assert tiny_clip.name == f"local-dir:{tiny_clip_dir.resolve()}"
    assert tiny_clip.image_size == 32
    assert tiny_clip.mean == (0.5, 0.5, 0.5) and tiny_clip.std == (0.25, 0.25, 0.25)
    assert not tiny_clip.model.training
    assert tiny_clip.device == torch.device("cpu")
    assert tiny_clip.embed_dim == 32
    text = tiny_clip.encode_text(["the nice dog", "the nice cat", "This is a blue photo"], progress=False)
    assert text.shape == (3, 32) and text.dtype == torch.float32 and torch.isfinite(text).all()
    images = torch.rand(2, 3, 40, 50, generator=torch.Generator().manual_seed(0))
    feats = tiny_clip.encode_images(images)
    assert feats.shape == (2, 32) and torch.isfinite(feats).all()


def test_load_clip_is_reproducible_and_fingerprints_the_weights(tiny_clip, tiny_clip_dir, tmp_path):
    again = load_clip(f"local-dir:{tiny_clip_dir}")
    assert again.fingerprint == tiny_clip.fingerprint
    for (k, a), b in zip(tiny_clip.model.state_dict().items(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    # Other weights under the same architecture: another fingerprint, so caches cannot be mixed up.
    model_cfg = json.loads((tiny_clip_dir / "open_clip_config.json").read_text())["model_cfg"]
    torch.manual_seed(1)
    other = open_clip.model.CLIP(**model_cfg)
    folder = save_clip_folder(other, model_cfg, tmp_path / tiny_clip_dir.name, {"size": 32})
    assert load_clip(str(folder)).fingerprint != tiny_clip.fingerprint


def test_encode_text_rejects_a_single_string_and_empty_lists(tiny_clip):
    with pytest.raises(TypeError, match="list of strings"):
        tiny_clip.encode_text("the nice dog")
    with pytest.raises(ValueError, match="empty"):
        tiny_clip.encode_text([], progress=False)


@pytest.mark.parametrize("spec", ["folder", "local-dir"])
def test_load_clip_missing_folder_names_what_was_looked_for(tmp_path, spec):
    missing = tmp_path / "no_such_clip"
    model = str(missing) if spec == "folder" else f"local-dir:{missing}"
    with pytest.raises(WeightsNotFoundError) as info:
        load_clip(model)
    message = str(info.value)
    assert str(missing) in message
    assert "open_clip_config.json" in message  # what was looked for
    assert "local-dir:<folder>" in message and "pretrained=<path" in message  # how to provide it
    assert isinstance(info.value, FileNotFoundError)


def test_load_clip_folder_without_config_is_missing_weights(tmp_path):
    (tmp_path / "open_clip_model.safetensors").write_bytes(b"")
    with pytest.raises(WeightsNotFoundError, match="open_clip_config.json"):
        load_clip(str(tmp_path))


def test_load_clip_unknown_names_raise_value_errors():
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-Q-99'"):
        load_clip("ViT-Q-99", "openai")
    with pytest.raises(ValueError, match=r"pretrained='no_such_tag'.*tags: \[.*'openai'"):
        load_clip("ViT-B-16", "no_such_tag")
    with pytest.raises(ValueError, match="refusing random weights"):
        load_clip("ViT-B-16", None)


def test_load_clip_known_tag_offline_raises_weights_not_found(tmp_path, monkeypatch):
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        pytest.skip("HF_HUB_OFFLINE is not set: this test would download real weights")
    # An empty Hugging Face cache: the weights cannot be found there either.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(WeightsNotFoundError) as info:
        load_clip("ViT-B-16", "openai")
    message = str(info.value)
    assert "model='ViT-B-16'" in message and "pretrained='openai'" in message
    assert "not available offline" in message
    assert "pretrained=<path" in message and "local-dir:<folder>" in message


def test_resolve_clip_source(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNOOD_ASSETS", str(tmp_path / "assets"))
    assert resolve_clip_source("miniworld", None) == (
        f"local-dir:{tmp_path / 'assets' / 'miniworld' / 'clip'}",
        None,
    )
    # An existing folder becomes a resolved local-dir, whatever tag was passed.
    (tmp_path / "clip").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_clip_source("clip", "openai") == (f"local-dir:{(tmp_path / 'clip').resolve()}", None)
    assert resolve_clip_source(str(tmp_path / "clip"), None) == (f"local-dir:{tmp_path / 'clip'}", None)
    # Everything else passes through unchanged.
    assert resolve_clip_source("ViT-B-16", "openai") == ("ViT-B-16", "openai")
    assert resolve_clip_source("hf-hub:org/repo", None) == ("hf-hub:org/repo", None)
    assert resolve_clip_source("local-dir:/x/y", None) == ("local-dir:/x/y", None)
    assert resolve_clip_source("no_such_folder", "tag") == ("no_such_folder", "tag")


def test_image_transform_resizes_crops_and_normalises():
    t = ImageTransform(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    flat = torch.full((2, 3, 24, 40), 0.75)
    out = t(flat)
    assert out.shape == (2, 3, 16, 16)
    torch.testing.assert_close(out, torch.full_like(out, (0.75 - 0.5) / 0.25))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        t(torch.zeros(3, 16, 16))


# ---------------------------------------------------------------- text feature cache


class _TextEncoder:
    """Delegates to a ClipModel and counts text-encoder calls."""

    def __init__(self, clip, fingerprint: str | None = None):
        self._clip, self.name = clip, clip.name
        self.fingerprint = fingerprint or clip.fingerprint
        self.calls = 0

    def encode_text(self, texts, batch_size=1024, progress=True):
        self.calls += 1
        return self._clip.encode_text(texts, batch_size=batch_size, progress=progress)


def test_text_features_are_cached_per_model_and_prompts(tiny_clip, cache_root):
    enc = _TextEncoder(tiny_clip)
    prompts = ["the nice dog", "the nice cat"]
    first = text_features(enc, prompts, progress=False)
    torch.testing.assert_close(first, tiny_clip.encode_text(prompts, progress=False))
    files = list((cache_root / "text_features").iterdir())
    assert len(files) == 1 and files[0].name.startswith(tiny_clip.fingerprint)
    second = text_features(enc, prompts, progress=False)
    assert enc.calls == 1
    torch.testing.assert_close(second, first)
    # Another prompt list or another model fingerprint is another entry.
    text_features(enc, ["the nice cat", "the nice dog"], progress=False)
    text_features(_TextEncoder(tiny_clip, fingerprint="other-model"), prompts, progress=False)
    assert len(list((cache_root / "text_features").iterdir())) == 3
    # use_cache=False neither reads nor writes.
    text_features(enc, ["a new prompt"], progress=False, use_cache=False)
    assert enc.calls == 3 and len(list((cache_root / "text_features").iterdir())) == 3


# ---------------------------------------------------------------- image feature cache


class _ImageEncoder:
    """The feature-cache interface (fingerprint, transform, model, encode_inputs) around a ClipModel, counting
    the images it encodes."""

    def __init__(self, clip, transform: ImageTransform | None = None):
        self._clip, self.model, self.fingerprint = clip, clip.model, clip.fingerprint
        self.transform = transform or clip.transform
        self.encoded = 0

    def encode_inputs(self, inputs):
        self.encoded += len(inputs)
        return self._clip.encode_inputs(inputs)


def _write_png(path, h, w, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)


@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "images"
    for k, (cls, h, w) in enumerate(
        [("cat", 40, 48), ("cat", 32, 32), ("dog", 50, 36), ("dog", 33, 60), ("dog", 32, 40)]
    ):
        _write_png(root / cls / f"img{k}.png", h, w, seed=k)
    return root


def _cache_folders(cache_root):
    return sorted(p for p in (cache_root / "image_features").glob("*/*") if p.is_dir())


def test_image_features_are_computed_in_order_and_cached(tiny_clip, image_folder, cache_root):
    image_set = ImageSet.from_folder(image_folder)
    enc = _ImageEncoder(tiny_clip)
    fs = image_features(enc, image_set, progress=False)
    assert enc.encoded == 5 and len(fs) == 5
    assert fs.ids == [it.id for it in image_set.items]
    np.testing.assert_array_equal(fs.labels, [0, 0, 1, 1, 1])
    assert fs.skipped == [] and fs.cache_path is not None and fs.cache_path.is_dir()
    expected = torch.cat([tiny_clip.encode_images(load_image(it.path)[None]) for it in image_set.items])
    torch.testing.assert_close(fs.features, expected, rtol=1e-4, atol=1e-5)
    # The second call reads the cache and never calls the encoder.
    again = image_features(enc, image_set, progress=False)
    assert enc.encoded == 5
    torch.testing.assert_close(again.features, fs.features)
    assert again.ids == fs.ids and again.cache_path == fs.cache_path
    assert len(_cache_folders(cache_root)) == 1


def test_image_feature_cache_key_follows_transform_and_image_set(tiny_clip, image_folder, cache_root):
    image_set = ImageSet.from_folder(image_folder)
    enc = _ImageEncoder(tiny_clip)
    image_features(enc, image_set, progress=False)
    # Another preprocessing: another key, so everything is recomputed.
    other_t = _ImageEncoder(tiny_clip, dataclasses.replace(tiny_clip.transform, mean=(0.4, 0.4, 0.4)))
    image_features(other_t, image_set, progress=False)
    assert other_t.encoded == 5 and len(_cache_folders(cache_root)) == 2
    # A new image: another image-set fingerprint.
    _write_png(image_folder / "dog" / "img9.png", 36, 36, seed=9)
    grown = ImageSet.from_folder(image_folder)
    grown_fingerprint = grown.fingerprint()
    fs = image_features(enc, grown, progress=False)
    assert len(fs) == 6 and enc.encoded == 5 + 6 and len(_cache_folders(cache_root)) == 3
    # An edited file (new content, size and time stamp): another fingerprint again.
    _write_png(image_folder / "cat" / "img0.png", 44, 44, seed=10)
    os.utime(image_folder / "cat" / "img0.png", ns=(1, 1))
    edited = ImageSet.from_folder(image_folder)
    assert edited.fingerprint() != grown_fingerprint
    image_features(enc, edited, progress=False)
    assert enc.encoded == 5 + 6 + 6 and len(_cache_folders(cache_root)) == 4


def test_image_features_resume_at_the_missing_shard(tiny_clip, image_folder, cache_root):
    image_set = ImageSet.from_folder(image_folder)
    enc = _ImageEncoder(tiny_clip)
    fs = image_features(enc, image_set, shard_size=2, batch_size=1, progress=False)
    shards = sorted(fs.cache_path.glob("shard-*.safetensors"))
    assert [p.name for p in shards] == [
        "shard-00000.safetensors",
        "shard-00001.safetensors",
        "shard-00002.safetensors",
    ]
    shards[1].unlink()  # as if the run had been killed before writing it
    (fs.cache_path / ".shard-00001.safetensors.tmp-999").write_bytes(b"partial")
    again = image_features(enc, image_set, shard_size=2, batch_size=1, progress=False)
    assert enc.encoded == 5 + 2  # only the two images of the missing shard
    torch.testing.assert_close(again.features, fs.features)
    assert not list(fs.cache_path.glob(".*.tmp-*"))  # the stale temporary was cleaned up


def test_image_features_without_cache_write_nothing(tiny_clip, image_folder, cache_root):
    fs = image_features(_ImageEncoder(tiny_clip), ImageSet.from_folder(image_folder), use_cache=False, progress=False)
    assert len(fs) == 5 and fs.cache_path is None
    assert not (cache_root / "image_features").exists()


def test_unreadable_images_are_skipped_and_recorded(tiny_clip, image_folder, cache_root):
    (image_folder / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    _write_png(image_folder / "dog" / "speck.png", 4, 4, seed=3)  # below the minimum side
    image_set = ImageSet.from_folder(image_folder)
    assert len(image_set) == 7
    enc = _ImageEncoder(tiny_clip)
    fs = image_features(enc, image_set, progress=False)
    assert len(fs) == 5 and enc.encoded == 5
    assert "cat/broken" not in fs.ids and "dog/speck" not in fs.ids
    skipped = {rec["id"]: rec for rec in fs.skipped}
    assert set(skipped) == {"cat/broken", "dog/speck"}
    assert "not a readable image" in skipped["cat/broken"]["reason"]
    assert "too small" in skipped["dog/speck"]["reason"]
    assert skipped["dog/speck"]["path"] == str(image_folder.resolve() / "dog" / "speck.png")
    # The record survives the cache: a cached run reports the same skipped images.
    again = image_features(enc, image_set, progress=False)
    assert enc.encoded == 5 and again.skipped == fs.skipped and again.ids == fs.ids


def test_a_set_without_readable_images_is_an_error(tiny_clip, tmp_path, cache_root):
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"nope")
    (folder / "b.jpg").write_bytes(b"nope")
    with pytest.raises(ValueError, match="no image of 'junk' could be read"):
        image_features(_ImageEncoder(tiny_clip), ImageSet.from_folder(folder, labelled=False), progress=False)
