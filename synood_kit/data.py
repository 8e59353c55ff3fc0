"""Image sets: ImageFolder trees, OpenOOD-style file lists and JSONL manifests, read the same way for
ImageNet-scale data and the mini-world benchmark.

An :class:`ImageSet` is an ordered list of ``(id, path, label)`` items under a root. ``label`` is a class
index for ID data and ``-1`` for OOD or unlabelled data. Paths from file lists and manifests are resolved
inside their root; a path that would leave it (``../``, absolute paths, symlinks out) is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageItem",
    "ImageSet",
    "ImageLoadError",
    "load_image",
    "safe_join",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
MAX_PIXELS = 40_000_000  # larger images are refused rather than decoded (decompression-bomb guard)
MIN_SIDE = 8  # smaller images carry no usable content
MAX_LABEL = 1_000_000  # labels above are refused: a corrupt list would otherwise allocate a huge class list


class ImageLoadError(ValueError):
    """Raised when an image file cannot be read as an RGB image."""


def safe_join(root: str | Path, relative: str) -> Path:
    """Return ``root / relative`` resolved, refusing paths that escape ``root``.

    Raises:
        ValueError: for absolute paths, ``..`` escapes, or symlinks that resolve outside ``root``.
    """
    root = Path(root).resolve()
    if not isinstance(relative, str) or not relative.strip():
        raise ValueError(f"empty or non-string path {relative!r} in a list under {root}")
    if Path(relative).is_absolute():
        raise ValueError(f"absolute path {relative!r} refused: paths in lists and manifests are relative to {root}")
    path = (root / relative).resolve()
    if path != root and root not in path.parents:
        raise ValueError(f"path {relative!r} leaves its root {root}: refused (path traversal)")
    return path


def load_image(path: str | Path, max_pixels: int = MAX_PIXELS):
    """Return an image file as a ``(3, H, W)`` float32 tensor in ``[0, 1]``.

    Greyscale becomes RGB, RGBA and palette images are composited over white, 16-bit images are scaled
    from ``[0, 65535]``.

    Raises:
        FileNotFoundError: if the file does not exist.
        ImageLoadError: if it is not a readable image, is truncated, or is smaller than 8 or larger than
            ``max_pixels`` pixels.
    """
    import torch
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageLoadError(f"{path}: {w}x{h} pixels is above the limit of {max_pixels}")
            if min(w, h) < MIN_SIDE:
                raise ImageLoadError(f"{path}: {w}x{h} is too small (the short side must be >= {MIN_SIDE})")
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float32)
                # I;16 is 16-bit by definition (a dark image stays dark); mode "I" may hold 8-bit data.
                sixteen_bit = im.mode.startswith("I;16") or arr.max() > 255
                arr = arr / (65535.0 if sixteen_bit else 255.0)
                arr = np.repeat(arr[..., None], 3, axis=2)
            else:
                if im.mode in ("RGBA", "LA", "P", "PA"):
                    im = im.convert("RGBA")
                    background = Image.new("RGBA", im.size, (255, 255, 255, 255))
                    im = Image.alpha_composite(background, im)
                arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ImageLoadError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).clamp_(0.0, 1.0)


@dataclass(frozen=True)
class ImageItem:
    """One image of a set."""

    id: str  # unique within its set
    path: Path  # absolute path
    label: int  # class index, or -1 for OOD / unlabelled


@dataclass(frozen=True)
class ImageSet:
    """An ordered, immutable list of images with class names.

    Build one with :meth:`from_folder`, :meth:`from_file_list` or :meth:`from_manifest`.
    """

    name: str  # e.g. "imagenet_val", "near_ood"
    root: Path  # folder the item paths live under
    items: tuple[ImageItem, ...]
    class_names: tuple[str, ...] = ()  # index -> name for labelled sets

    def __len__(self) -> int:
        return len(self.items)

    def __post_init__(self) -> None:
        ids = [it.id for it in self.items]
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            dupes = sorted({i for i in ids if i in seen or seen.add(i)})
            raise ValueError(f"image set {self.name!r} has duplicate ids, e.g. {dupes[:5]}")

    @property
    def labels(self) -> np.ndarray:
        """Return ``(N,)`` int64 labels."""
        return np.array([it.label for it in self.items], dtype=np.int64)

    def fingerprint(self) -> str:
        """Return a hash of ids, relative paths, labels, file sizes and modification times.

        It is the dataset part of feature-cache keys: editing, adding or removing a file changes it, without
        reading image bytes (which would cost as much as extracting features).
        """
        digest = hashlib.sha256(self.name.encode())
        root = str(self.root).rstrip(os.sep) + os.sep
        lines = []
        for it in self.items:
            path = str(it.path)  # plain strings: Path methods dominated the cost on large sets
            try:
                st = os.stat(path)
                stamp = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                stamp = "missing"
            rel = path[len(root) :] if path.startswith(root) else path
            lines.append(f"{it.id}\t{rel}\t{it.label}\t{stamp}\n")
        digest.update("".join(lines).encode())
        return digest.hexdigest()[:16]

    def subset(self, indices, name: str | None = None) -> ImageSet:
        """Return the items at ``indices`` (in that order) as a new set."""
        return ImageSet(name or self.name, self.root, tuple(self.items[i] for i in indices), self.class_names)

    def sample(self, n: int | None, seed: int = 0) -> ImageSet:
        """Return ``n`` images drawn without replacement with a fixed seed, in the set's order (all of them when
        ``n`` is ``None`` or at least the set's size); the name says so, so feature caches keep them apart.

        Raises:
            ValueError: if ``n`` is below 1.
        """
        if n is None or n >= len(self.items):
            return self
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"a sample needs n >= 1 images, got {n!r}")
        picked = np.sort(np.random.default_rng(seed).choice(len(self.items), n, replace=False))
        return self.subset(picked.tolist(), name=f"{self.name}-sample{n}-seed{seed}")

    @classmethod
    def from_folder(
        cls,
        root: str | Path,
        name: str | None = None,
        labelled: bool = True,
        class_names: list[str] | None = None,
    ) -> ImageSet:
        """Read an ImageFolder tree (``root/<class>/<image>``), or any folder of images when unlabelled.

        Args:
            root: the folder.
            name: the set's name; default the folder name.
            labelled: classes are the sub-folders (sorted, as torchvision's ``ImageFolder``); if ``False``,
                every image below ``root`` gets label -1 (OOD sets such as iNaturalist or Textures).
            class_names: for labelled sets, the expected sub-folder names in label order (e.g. the 1000
                ImageNet wnids); a missing one is an error.

        Raises:
            FileNotFoundError: if ``root`` is not a folder.
            ValueError: if it holds no images, or expected classes are missing.
        """
        root = Path(root).resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"image folder not found: {root}")
        name = name or root.name
        items: list[ImageItem] = []
        if labelled:
            folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
            if class_names is not None:
                missing = [c for c in class_names if c not in folders]
                if missing:
                    raise ValueError(f"{root}: {len(missing)} class folder(s) missing, e.g. {missing[:5]}")
                folders = list(class_names)
            if not folders:
                raise ValueError(f"{root} has no class sub-folders; pass labelled=False for a flat OOD folder")
            for label, cls_name in enumerate(folders):
                for p in sorted((root / cls_name).rglob("*")):
                    if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
                        items.append(ImageItem(p.relative_to(root).with_suffix("").as_posix(), p, label))
        else:
            folders = []
            for p in sorted(root.rglob("*")):
                if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
                    items.append(ImageItem(p.relative_to(root).with_suffix("").as_posix(), p, -1))
        if not items:
            raise ValueError(f"{root} holds no images with extensions {IMAGE_EXTENSIONS}")
        return cls(name, root, tuple(items), tuple(folders))

    @classmethod
    def from_file_list(cls, list_path: str | Path, data_root: str | Path, name: str | None = None) -> ImageSet:
        """Read an OpenOOD-style image list: one ``<relative path> <label>`` per line (label optional).

        A line whose last word is not an integer is read as a path without a label (paths may contain
        spaces); such images get label -1.

        Args:
            list_path: the text file, e.g. OpenOOD v1.5's ``benchmark_imglist/imagenet/test_ssb_hard.txt``.
            data_root: the folder the relative paths start from.
            name: the set's name; default the list's file stem.

        Raises:
            FileNotFoundError: if the list does not exist.
            ValueError: for malformed lines, escaping paths or an empty list.
        """
        list_path = Path(list_path)
        if not list_path.is_file():
            raise FileNotFoundError(f"image list not found: {list_path}")
        root = Path(data_root).resolve()
        items = []
        for number, line in enumerate(list_path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = line.rsplit(maxsplit=1)
            rel, label = (parts[0], parts[1]) if len(parts) == 2 and _is_int(parts[1]) else (line.strip(), "-1")
            try:
                path = safe_join(root, rel)
                items.append(ImageItem(Path(rel).with_suffix("").as_posix(), path, _checked_label(label)))
            except ValueError as e:
                raise ValueError(f"{list_path}:{number}: {e}") from None
        if not items:
            raise ValueError(f"image list {list_path} has no entries")
        return cls(name or list_path.stem, root, tuple(items))

    @classmethod
    def from_manifest(cls, manifest: str | Path, split: str, name: str | None = None) -> ImageSet:
        """Read one split of a JSONL manifest (the mini-world benchmark's ``manifest.jsonl``).

        Each line is an object with at least ``id``, ``path`` (relative to the manifest's folder), ``split``
        and ``label``; ``class_name`` fills the class list.

        Raises:
            FileNotFoundError: if the manifest does not exist.
            ValueError: for malformed lines, missing keys, escaping paths or an empty split.
        """
        manifest = Path(manifest)
        if not manifest.is_file():
            raise FileNotFoundError(f"manifest not found: {manifest}")
        root = manifest.parent.resolve()
        items = []
        names: dict[int, str] = {}
        try:
            text = manifest.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{manifest} is not UTF-8 text ({e})") from None
        for number, line in enumerate(text.split("\n"), 1):  # JSON strings may hold other line breaks
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if rec["split"] != split:
                    continue
                path = safe_join(root, rec["path"])
                label = _checked_label(rec["label"])
                item = ImageItem(str(rec["id"]), path, label)
                if label >= 0 and "class_name" in rec and not isinstance(rec["class_name"], str):
                    raise TypeError(f"class_name must be a string, got {rec['class_name']!r}")
            except (ValueError, KeyError, TypeError, RecursionError) as e:
                raise ValueError(f"{manifest}:{number}: malformed manifest record ({type(e).__name__}: {e})") from None
            items.append(item)
            if label >= 0 and "class_name" in rec:
                names[label] = rec["class_name"]
        if not items:
            raise ValueError(f"{manifest} has no records of split {split!r}")
        class_names = tuple(names.get(i, str(i)) for i in range(max(names) + 1)) if names else ()
        return cls(name or split, root, tuple(items), class_names)


def _is_int(text: str) -> bool:
    return text.isascii() and text.lstrip("+-").isdigit()


def _checked_label(value) -> int:
    """Return ``value`` as a class label: an integer (or integral text) in ``[-1, MAX_LABEL]``."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON writers may store 3 as 3.0
    if isinstance(value, bool) or not isinstance(value, (int, str)) or (isinstance(value, str) and not _is_int(value)):
        raise ValueError(f"label {value!r} is not an integer")
    label = int(value)
    if not -1 <= label <= MAX_LABEL:
        raise ValueError(
            f"label {label} is out of range: expected -1 (OOD / unlabelled) or a class index in [0, {MAX_LABEL}]"
        )
    return label
