"""The mini-world OOD benchmark, written as ImageFolder trees plus a JSONL manifest.

It mirrors ImageNet-1k vs iNaturalist/SUN/Places/Textures and OpenOOD's near/far split:

=================  ===========================================  ==================================
split              content                                      mirrors
=================  ===========================================  ==================================
``id_train``       12 ID categories (3 per family)              ImageNet-1k train
``id_test``        the same 12 categories, fresh scenes         ImageNet-1k val
``near_ood``       the held-out sibling of each family          SSB-hard, NINCO (OpenOOD near)
``far_scenes``     scenes with context but no subject           SUN, Places
``far_textures``   procedural textures unlike any background    Textures (DTD)
``far_digits``     real MNIST digits (white on black, no world  iNaturalist (real images of other
                   context): another dataset                    things)
=================  ===========================================  ==================================

Every image is a pure function of ``(seed, split, class, index)``, so the benchmark is rebuilt byte-identically
anywhere. Pretraining data of the mini-world models come from other random streams (and MNIST rows
0-2499; the benchmark's digits are rows 2500-4999), so no benchmark image is seen in training.
The world and its splits are fixed here: later stages must not tune them.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..storage import atomic_path, atomic_write_json, atomic_write_text
from .shapes import FAMILIES
from .world import DIGIT_NAMES, render, render_mnist_digit, render_texture, sample_scene

__all__ = [
    "BENCHMARK_SPEC",
    "BenchmarkSpec",
    "build_benchmark",
    "default_benchmark_root",
    "miniworld_benchmark",
    "open_benchmark",
    "pretraining_digit_rows",
    "read_manifest",
    "split_image_set",
]

_SPLIT_CODES = {"id_train": 1, "id_test": 2, "near_ood": 3, "far_scenes": 4, "far_textures": 5, "far_digits": 6}
OOD_SPLITS = ("near_ood", "far_scenes", "far_textures", "far_digits")
FAR_OOD_SPLITS = ("far_scenes", "far_textures", "far_digits")


@dataclass(frozen=True)
class BenchmarkSpec:
    """Classes, sizes and seed of the benchmark."""

    id_classes: tuple[str, ...]  # ID categories, in label order
    near_ood_classes: tuple[str, ...]  # held-out siblings (one per family)
    n_train_per_class: int = 400  # id_train images per ID class
    n_test_per_class: int = 100  # id_test images per ID class
    n_near_per_class: int = 250  # near_ood images per held-out class
    n_far_per_split: int = 1000  # images in each far-OOD split
    seed: int = 2025  # world seed of the benchmark streams
    version: int = 2  # bump if rendering changes (2: near siblings by confusability; raw MNIST digits)

    def scaled(self, scale: float) -> BenchmarkSpec:
        """Return the same benchmark with every split scaled by ``scale`` (for quick tests)."""

        def sc(n: int) -> int:
            return max(2, int(round(n * scale)))

        return BenchmarkSpec(
            self.id_classes,
            self.near_ood_classes,
            sc(self.n_train_per_class),
            sc(self.n_test_per_class),
            sc(self.n_near_per_class),
            sc(self.n_far_per_split),
            self.seed,
            self.version,
        )


# ID: three members of each family; near-OOD: the fourth. Per family, the held-out sibling is the one that
# zero-shot NegLabel with the mini-world CLIP confuses most with the other three (measured once, 150 fresh
# renders per class, FPR95_IDpos when held out: hexagon 39%, ellipse 24%, four-point star 30%, arrow 7%; the
# alternatives scored 0-39%, 1-15%, 3-11% and 0-1%). A near-OOD split of easy siblings would leave no headroom.
BENCHMARK_SPEC = BenchmarkSpec(
    id_classes=(
        "triangle",
        "square",
        "pentagon",
        "circle",
        "ring",
        "crescent",
        "five-point star",
        "six-point star",
        "eight-point star",
        "cross",
        "plus sign",
        "heart",
    ),
    near_ood_classes=("hexagon", "ellipse", "four-point star", "arrow"),
)


def open_benchmark(root: str | Path | None = None, progress: bool = True) -> Path:
    """Return a benchmark folder ready to read.

    ``None`` is the default benchmark in the cache, built on first use. A given folder that already holds a built
    benchmark (``benchmark.json`` and ``manifest.jsonl``) is used as it is, whatever its spec (a scaled one for
    quick looks, say); an empty or missing one gets the default spec built into it.
    """
    if root is None:
        root = default_benchmark_root()
    root = Path(root)
    if not ((root / "benchmark.json").is_file() and (root / "manifest.jsonl").is_file()):
        build_benchmark(root, progress=progress)
    return root


def default_benchmark_root(spec: BenchmarkSpec = BENCHMARK_SPEC) -> Path:
    """Return where the kit builds ``spec`` by default: a cache folder named by the spec's content."""
    from ..config import cache_dir
    from ..storage import sha256_text

    digest = sha256_text(json.dumps(asdict(spec), sort_keys=True))[:12]
    return cache_dir() / "miniworld" / f"benchmark-v{spec.version}-{digest}"


def pretraining_digit_rows() -> np.ndarray:
    """Return the MNIST rows the mini-world models may train on (the benchmark uses the others)."""
    return np.arange(0, 2500)


def _benchmark_digit_rows() -> np.ndarray:
    return np.arange(2500, 5000)


def _check_spec(spec: BenchmarkSpec) -> None:
    known = {name for names in FAMILIES.values() for name in names}
    unknown = sorted((set(spec.id_classes) | set(spec.near_ood_classes)) - known)
    if unknown:
        raise ValueError(f"unknown categories {unknown} in the benchmark spec; known: {sorted(known)}")
    overlap = sorted(set(spec.id_classes) & set(spec.near_ood_classes))
    if overlap:
        raise ValueError(f"categories {overlap} are both ID and near-OOD")


def _records(spec: BenchmarkSpec):
    """Yield ``(split, folder, label, class_name, index, image, scene_meta)`` for every benchmark image."""
    for split, classes, n in (
        ("id_train", spec.id_classes, spec.n_train_per_class),
        ("id_test", spec.id_classes, spec.n_test_per_class),
        ("near_ood", spec.near_ood_classes, spec.n_near_per_class),
    ):
        for c, name in enumerate(classes):
            for i in range(n):
                rng = np.random.default_rng([spec.seed, _SPLIT_CODES[split], c, i])
                scene = sample_scene(rng, categories=(name,))
                label = c if split.startswith("id_") else -1
                yield split, f"{split}/{name.replace(' ', '_')}", label, name, i, render(scene), scene
    for split in FAR_OOD_SPLITS:
        for i in range(spec.n_far_per_split):
            rng = np.random.default_rng([spec.seed, _SPLIT_CODES[split], 0, i])
            if split == "far_textures":
                image, meta = render_texture(rng)
                yield split, f"{split}/{meta['texture']}", -1, meta["texture"] + " texture", i, image, meta
                continue
            if split == "far_digits":
                image, meta = render_mnist_digit(int(rng.choice(_benchmark_digit_rows())))
                name = f"digit {DIGIT_NAMES[meta['digit']]}"
                yield split, f"{split}/{name.replace(' ', '_')}", -1, name, i, image, meta
                continue
            scene = sample_scene(rng, subject="none")
            yield split, f"{split}/scene", -1, "scene", i, render(scene), scene


def build_benchmark(root: str | Path, spec: BenchmarkSpec = BENCHMARK_SPEC, progress: bool = True) -> Path:
    """Render the benchmark into ``root``: one ImageFolder tree per split, ``manifest.jsonl`` and
    ``benchmark.json``. An existing complete benchmark with the same spec is reused.

    Args:
        root: output folder.
        spec: classes, sizes and seed.
        progress: show a progress bar.

    Returns:
        The path of ``manifest.jsonl``.
    """
    from tqdm.auto import tqdm

    _check_spec(spec)
    root = Path(root)
    info_path = root / "benchmark.json"
    manifest = root / "manifest.jsonl"
    if info_path.is_file() and manifest.is_file():
        info = json.loads(info_path.read_text())
        if info.get("spec") == json.loads(json.dumps(asdict(spec))):
            return manifest
    total = len(spec.id_classes) * (spec.n_train_per_class + spec.n_test_per_class)
    total += len(spec.near_ood_classes) * spec.n_near_per_class + 3 * spec.n_far_per_split
    lines, counts = [], {}
    start = time.time()
    for split, folder, label, name, i, image, scene in tqdm(
        _records(spec), total=total, desc="mini-world benchmark", disable=not progress
    ):
        image_id = f"{split}-{name.replace(' ', '_')}-{i:05d}"
        rel = f"{folder}/{image_id}.png"
        with atomic_path(root / rel) as tmp:
            Image.fromarray(image).save(tmp, format="PNG")
        meta = scene if isinstance(scene, dict) else scene.to_dict()
        record = {"id": image_id, "path": rel, "split": split, "label": label, "class_name": name, "meta": meta}
        if not isinstance(scene, dict):
            record.update(caption=scene.caption(), context=scene.context())
        lines.append(json.dumps(record, separators=(",", ":")))
        counts[split] = counts.get(split, 0) + 1
    atomic_write_text(manifest, "\n".join(lines) + "\n")
    atomic_write_json(
        info_path,
        {
            "spec": asdict(spec),
            "counts": counts,
            "splits": {s: f"{s}/" for s in _SPLIT_CODES},
            "ood_splits": list(OOD_SPLITS),
            "far_ood_splits": list(FAR_OOD_SPLITS),
            "build_seconds": round(time.time() - start, 1),
        },
    )
    return manifest


def read_manifest(root: str | Path, split: str | None = None) -> list[dict]:
    """Return the benchmark's manifest records (``id``, ``path``, ``split``, ``label``, ``class_name``,
    ``meta``, and for scenes ``caption`` and ``context``), optionally of one split, in file order.

    Raises:
        FileNotFoundError: if the manifest does not exist.
        ValueError: for an unknown split, or a line that is not a record with ``id``, ``split``, ``label`` and a
            ``path`` inside ``root`` (naming the file and line).
    """
    path = Path(root) / "manifest.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no manifest.jsonl in {root}: build the benchmark first (`synood world build`)")
    if split is not None and split not in _SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; known: {list(_SPLIT_CODES)}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e})") from None
    records = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise TypeError(f"expected a JSON object, got {type(record).__name__}")
            missing = [k for k in ("id", "path", "split", "label") if k not in record]
            if missing:
                raise KeyError(f"missing key(s) {missing}")
            _check_relative(record["path"])
        except (ValueError, KeyError, TypeError, RecursionError) as e:
            raise ValueError(f"{path}:{number}: malformed manifest record ({type(e).__name__}: {e})") from None
        if split is None or record["split"] == split:
            records.append(record)
    return records


def _check_relative(rel) -> None:
    """Refuse a manifest path that is not relative or climbs out of the benchmark root (path traversal)."""
    if not isinstance(rel, str) or not rel.strip() or "\x00" in rel:
        raise ValueError(f"path {rel!r} is not a relative file path")
    parts = Path(rel).parts
    if Path(rel).is_absolute() or ".." in parts:
        raise ValueError(f"path {rel!r} refused: manifest paths stay inside the benchmark root (path traversal)")


def split_image_set(root: str | Path, split: str):
    """Return one split of a built benchmark as an :class:`~synood_kit.data.ImageSet`, read from its
    ImageFolder tree exactly as an ImageNet folder would be (ID splits in ``id_classes`` label order)."""
    from ..data import ImageSet

    root = Path(root)
    if split not in _SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; known: {list(_SPLIT_CODES)}")
    info_path = root / "benchmark.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"no benchmark.json in {root}: build the benchmark first (`synood world build`)")
    spec = json.loads(info_path.read_text())["spec"]
    if split.startswith("id_"):
        folders = [c.replace(" ", "_") for c in spec["id_classes"]]
        s = ImageSet.from_folder(root / split, name=split, labelled=True, class_names=folders)
        return ImageSet(s.name, s.root, s.items, tuple(spec["id_classes"]))
    return ImageSet.from_folder(root / split, name=split, labelled=False)


_GROUPS = {"near_ood": "near", "far_scenes": "far", "far_textures": "far", "far_digits": "far"}


def _stem_ids(image_set):
    """Return a split with each image's file stem as its id (the manifest's id, unique across the benchmark)."""
    from ..data import ImageItem, ImageSet

    items = tuple(ImageItem(Path(it.path).stem, it.path, it.label) for it in image_set.items)
    return ImageSet(image_set.name, image_set.root, items, image_set.class_names)


def miniworld_benchmark(root: str | Path | None = None, progress: bool = True):
    """Return the mini-world as a :class:`~synood_kit.benchmark.Benchmark` (built into the cache on first use).

    Splits are read from the ImageFolder trees (ids are the manifest's), OOD splits grouped as near (the held-out
    siblings) and far (scenes, textures, digits). Its annotations carry what only a procedural world knows: each
    scene's true context (the ``truth`` context backend), the subject's box and silhouette (``box`` and
    ``subject`` masks) and the world's own words for the NegLabel corpus.
    """
    from functools import partial

    import torch

    from ..benchmark import Annotations, Benchmark, Split
    from .world import Scene, subject_box, subject_mask, world_vocabulary

    root = open_benchmark(root, progress=progress)
    spec = json.loads((root / "benchmark.json").read_text())["spec"]
    records = read_manifest(root)
    context = {r["id"]: tuple(r["context"]) for r in records if "context" in r}
    scenes = {r["id"]: r["meta"] for r in records if r["split"] == "id_train"}

    def mask(image_id: str, kind: str) -> torch.Tensor:
        if image_id not in scenes:
            raise ValueError(f"no scene annotation for {image_id!r}: masks exist for the ID training images")
        scene = Scene.from_dict(scenes[image_id])
        if kind == "subject":
            return torch.from_numpy((subject_mask(scene) > 0.05).astype("float32"))[None]
        if kind != "box":
            raise ValueError(f"mask kind must be 'box' or 'subject', got {kind!r}")
        x0, y0, x1, y1 = subject_box(scene, grow=2)
        out = torch.zeros(1, 32, 32)
        out[:, y0:y1, x0:x1] = 1.0
        return out

    def load(split: str):
        return _stem_ids(split_image_set(root, split))

    splits = tuple(
        Split(name, "builtin", str(root / name), _GROUPS.get(name), partial(load, name))
        for name in ("id_train", "id_test", *OOD_SPLITS)
    )
    annotations = Annotations(context=context, masks=mask, vocabulary=tuple(world_vocabulary()))
    return Benchmark("miniworld", tuple(spec["id_classes"]), splits, f"miniworld:{root}", "miniworld", annotations)
