"""The procedural world and its benchmark: determinism, captions, subject removal, splits on disk."""

from __future__ import annotations

import json

import numpy as np
import pytest

from synood_kit.miniworld.benchmark import (
    BENCHMARK_SPEC,
    FAR_OOD_SPLITS,
    OOD_SPLITS,
    build_benchmark,
    pretraining_digit_rows,
    split_image_set,
)
from synood_kit.miniworld.shapes import CATEGORIES, FAMILIES
from synood_kit.miniworld.world import Scene, render, sample_scene, subject_mask, world_vocabulary


def test_rendering_is_a_pure_function_of_the_seed():
    a = render(sample_scene(np.random.default_rng([1, 2, 3])))
    b = render(sample_scene(np.random.default_rng([1, 2, 3])))
    c = render(sample_scene(np.random.default_rng([1, 2, 4])))
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_caption_names_subject_and_every_context_element():
    rng = np.random.default_rng(0)
    for _ in range(50):
        scene = sample_scene(rng)
        caption = scene.caption()
        assert scene.subject_name in caption
        assert scene.background in caption
        for element in scene.context()[1:]:
            assert element in caption


def test_without_subject_changes_exactly_the_subject_pixels_region():
    rng = np.random.default_rng(5)
    scene = sample_scene(rng, categories=("square",))
    full, empty = render(scene), render(scene.without_subject())
    mask = subject_mask(scene) > 0
    differs = np.any(full != empty, axis=-1)
    assert differs.any(), "removing the subject must change the image"
    # outside a one-pixel border around the subject, nothing changes
    grown = np.zeros_like(mask)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            grown |= np.roll(np.roll(mask, dy, 0), dx, 1)
    assert not differs[~grown].any()
    assert scene.without_subject().context() == scene.context()


def test_scene_round_trips_through_its_dict():
    scene = sample_scene(np.random.default_rng(9))
    again = Scene.from_dict(json.loads(json.dumps(scene.to_dict())))
    assert again == scene
    np.testing.assert_array_equal(render(again), render(scene))


def test_unknown_subject_kind_is_refused():
    with pytest.raises(ValueError, match="subject must be"):
        sample_scene(np.random.default_rng(0), subject="cat")


def test_spec_splits_families_into_id_and_one_near_sibling_each():
    for family, names in FAMILIES.items():
        near = [n for n in names if n in BENCHMARK_SPEC.near_ood_classes]
        assert len(near) == 1, family
        assert set(names) - set(near) <= set(BENCHMARK_SPEC.id_classes)
    assert len(CATEGORIES) == len(BENCHMARK_SPEC.id_classes) + len(BENCHMARK_SPEC.near_ood_classes)


def test_world_vocabulary_has_every_category_once():
    words = [w for w, _ in world_vocabulary()]
    assert len(words) == len(set(words))
    assert {c.name for c in CATEGORIES} <= set(words)


@pytest.fixture(scope="module")
def small_benchmark(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    spec = BENCHMARK_SPEC.scaled(0.02)
    build_benchmark(root, spec, progress=False)
    return root, spec


def test_benchmark_writes_imagefolder_trees_and_a_manifest(small_benchmark):
    root, spec = small_benchmark
    info = json.loads((root / "benchmark.json").read_text())
    lines = [json.loads(x) for x in (root / "manifest.jsonl").read_text().splitlines()]
    assert info["counts"]["id_train"] == len(spec.id_classes) * spec.n_train_per_class
    assert info["counts"]["near_ood"] == len(spec.near_ood_classes) * spec.n_near_per_class
    assert len(lines) == sum(info["counts"].values())
    assert all((root / r["path"]).is_file() for r in lines)
    assert len({r["id"] for r in lines}) == len(lines)
    id_test = split_image_set(root, "id_test")
    assert id_test.class_names == spec.id_classes
    assert sorted(set(id_test.labels.tolist())) == list(range(len(spec.id_classes)))
    for split in OOD_SPLITS:
        assert (split_image_set(root, split).labels == -1).all()
    near_names = {r["class_name"] for r in lines if r["split"] == "near_ood"}
    assert near_names == set(spec.near_ood_classes)


def test_benchmark_is_reproducible_and_reused(small_benchmark, tmp_path):
    root, spec = small_benchmark
    manifest_before = (root / "manifest.jsonl").stat().st_mtime_ns
    build_benchmark(root, spec, progress=False)  # same spec: reused, not rewritten
    assert (root / "manifest.jsonl").stat().st_mtime_ns == manifest_before
    other = tmp_path / "again"
    build_benchmark(other, spec, progress=False)
    assert (other / "manifest.jsonl").read_bytes() == (root / "manifest.jsonl").read_bytes()
    first = sorted((root / "near_ood").rglob("*.png"))[0]
    assert (other / first.relative_to(root)).read_bytes() == first.read_bytes()


def test_world_build_seed_rerenders_the_same_splits_from_new_streams(small_benchmark, tmp_path, capsys):
    from synood_kit.cli import main

    root, spec = small_benchmark
    assert main(["world", "build", "--root", str(tmp_path / "s7"), "--scale", "0.02", "--seed", "7"]) == 0
    info = json.loads((tmp_path / "s7" / "benchmark.json").read_text())
    assert info["spec"]["seed"] == 7 and json.loads((root / "benchmark.json").read_text())["spec"]["seed"] == 2025
    assert info["counts"] == json.loads((root / "benchmark.json").read_text())["counts"]
    files = sorted(p.relative_to(root) for p in (root / "id_test").rglob("*.png"))
    assert files == sorted(p.relative_to(tmp_path / "s7") for p in (tmp_path / "s7" / "id_test").rglob("*.png"))
    changed = sum((root / f).read_bytes() != (tmp_path / "s7" / f).read_bytes() for f in files)
    assert changed == len(files)  # every image re-rendered
    assert main(["world", "build", "--root", str(tmp_path / "bad"), "--seed", "-1"]) == 2
    assert "--seed" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_benchmark_digits_are_disjoint_from_pretraining_digits(small_benchmark):
    root, _ = small_benchmark
    lines = [json.loads(x) for x in (root / "manifest.jsonl").read_text().splitlines()]
    rows = {r["meta"]["digit_index"] for r in lines if r["split"] == "far_digits"}
    assert rows and not rows & set(pretraining_digit_rows().tolist())
    assert "far_digits" in FAR_OOD_SPLITS


def test_unknown_split_is_refused(small_benchmark):
    with pytest.raises(ValueError, match="unknown split"):
        split_image_set(small_benchmark[0], "id_val")
