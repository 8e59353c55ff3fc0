"""Image sets: ImageFolder trees, OpenOOD-style file lists and JSONL manifests, read the same way for
ImageNet-scale data and the mini-world benchmark.

An :class:`ImageSet` is an ordered list of ``(id, path, label)`` items under a root. ``label`` is a class
index for ID data and ``-1`` for OOD or unlabelled data. Paths from file lists and manifests are resolved
inside their root; a path that would leave it (``../``, absolute paths, symlinks out) is refused.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import io
import json
import os
import re
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "ACCEPTED_MODES",
    "IMAGE_EXTENSIONS",
    "ImageHeader",
    "ImageItem",
    "ImageSet",
    "ImageLoadError",
    "load_image",
    "read_image_header",
    "read_text_file",
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


# Modes the reader converts, and how: everything else is refused by name.
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "P", "PA")  # composited over white
_COLOUR_MODES = ("1", "L", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")  # PIL's colour conversion to RGB
_INTEGER_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")  # scaled by their range
_FLOAT_MODES = ("F",)  # must lie in [0, 1]
ACCEPTED_MODES = (*_COLOUR_MODES, *_ALPHA_MODES, *_INTEGER_MODES, *_FLOAT_MODES)
_ORIENTATION = 0x0112  # the EXIF orientation tag; 5-8 turn the image by 90 degrees
_PIL_LIMIT = threading.Lock()  # PIL's pixel limit is a module global: set it to the kit's under this lock


@dataclass(frozen=True)
class ImageHeader:
    """What an image file declares before any pixel is decoded."""

    width: int  # as shown (after the orientation tag), pixels
    height: int  # as shown, pixels
    mode: str  # PIL mode, e.g. "RGB", "I;16", "F"
    format: str  # PIL format name, e.g. "PNG", "JPEG"
    orientation: int  # EXIF orientation tag (1: as stored)


@contextlib.contextmanager
def _opened(source: str | Path | bytes, max_pixels: int) -> Iterator[tuple[object, ImageHeader, str]]:
    """Open an image's header under the kit's pixel limit (nothing decoded yet) and yield ``(image, header, name)``.

    Raises:
        FileNotFoundError: if a path does not exist or is not a file.
        ImageLoadError: if it is not an image PIL can open, its declared size is above ``max_pixels`` or its short
            side below ``MIN_SIDE``, or its mode is not one of :data:`ACCEPTED_MODES`.
    """
    from PIL import Image

    if isinstance(source, (bytes, bytearray)):
        name, opener = "<image bytes>", lambda: Image.open(io.BytesIO(bytes(source)))
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
        name, opener = str(path), lambda: Image.open(path)
    try:
        with _PIL_LIMIT, warnings.catch_warnings():
            # PIL warns above its limit and refuses above twice it; with the kit's limit set, a refusal is ours
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            before, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_pixels
            try:
                im = opener()
            finally:
                Image.MAX_IMAGE_PIXELS = before
    except Image.DecompressionBombError as e:
        declared = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{declared.group(1)} pixels" if declared else "its declared size"
        raise ImageLoadError(f"{name}: {size} (from its header) is above the limit of {max_pixels}") from None
    except Exception as e:  # PIL's header parsers raise many types on a damaged file; none may end a batch
        raise ImageLoadError(f"{name}: not a readable image ({type(e).__name__}: {e})") from e
    with im:
        try:
            w, h = im.size
            orientation = int(im.getexif().get(_ORIENTATION, 1) or 1)
        except Exception as e:
            raise ImageLoadError(f"{name}: not a readable image ({type(e).__name__}: {e})") from e
        if orientation in (5, 6, 7, 8):
            w, h = h, w
        if w * h > max_pixels:
            raise ImageLoadError(f"{name}: {w}x{h} pixels is above the limit of {max_pixels}")
        if min(w, h) < MIN_SIDE:
            raise ImageLoadError(f"{name}: {w}x{h} is too small (the short side must be >= {MIN_SIDE})")
        if im.mode not in ACCEPTED_MODES:
            raise ImageLoadError(
                f"{name}: image mode {im.mode!r} is not supported; accepted: {', '.join(ACCEPTED_MODES)}"
            )
        yield im, ImageHeader(w, h, im.mode, str(im.format or ""), orientation), name


def read_image_header(path: str | Path, max_pixels: int = MAX_PIXELS) -> ImageHeader:
    """Return what an image file declares (size as shown, mode, format), checked as :func:`load_image` checks it,
    without decoding its pixels.

    Raises:
        FileNotFoundError: if the file does not exist.
        ImageLoadError: as :func:`load_image`, for everything a header shows.
    """
    with _opened(path, max_pixels) as (_, header, _name):
        return header


def load_image(path: str | Path | bytes, max_pixels: int = MAX_PIXELS):
    """Return an image (a file, or its bytes) as a ``(3, H, W)`` float32 tensor in ``[0, 1]``, as it is shown.

    The one image reader of the kit. The declared size is checked against ``max_pixels`` before any pixel is
    decoded; the EXIF orientation tag is applied; greyscale becomes RGB; RGBA, LA, palette and premultiplied
    images are composited over white; CMYK, YCbCr, LAB and HSV are converted to RGB; integer images are scaled by
    their range (16-bit from ``[0, 65535]``, so a dark image stays dark; 32-bit ``I`` by the largest range its
    values fit: 255, 65535 or 2**31 - 1); float images must lie in ``[0, 1]``. Any other mode is refused by name.

    Raises:
        FileNotFoundError: if the file does not exist.
        ImageLoadError: if it is not a readable image, is truncated, is smaller than 8 or larger than
            ``max_pixels`` pixels, has a mode the kit does not accept, holds negative integers, or is a float
            image with values outside ``[0, 1]`` (or NaN).
    """
    import torch
    from PIL import Image, ImageOps

    with _opened(path, max_pixels) as (im, header, name):
        try:
            im.load()
            if header.orientation != 1:
                im = ImageOps.exif_transpose(im)
            mode = im.mode
            if mode in _INTEGER_MODES or mode in _FLOAT_MODES:
                arr = np.asarray(im, dtype=np.float64)
            elif mode in _ALPHA_MODES:
                rgba = im.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                arr = np.asarray(Image.alpha_composite(background, rgba).convert("RGB"), dtype=np.float32) / 255.0
            else:
                arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        except Exception as e:  # truncated data, a damaged chunk, an oversized text chunk ...
            raise ImageLoadError(f"{name}: not a readable image ({type(e).__name__}: {e})") from e
    if mode in _INTEGER_MODES or mode in _FLOAT_MODES:
        arr = np.repeat(_scaled(arr, mode, name)[..., None], 3, axis=2).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).clamp_(0.0, 1.0)


def _scaled(arr: np.ndarray, mode: str, name: str) -> np.ndarray:
    """Return a one-channel integer or float image in ``[0, 1]`` (see :func:`load_image`)."""
    if not np.isfinite(arr).all():
        raise ImageLoadError(f"{name}: a float image holding NaN or Inf values")
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if mode in _FLOAT_MODES:
        if lo < 0.0 or hi > 1.0:
            raise ImageLoadError(
                f"{name}: a float image with values in [{lo:.4g}, {hi:.4g}]; float images must lie in [0, 1]"
            )
        return arr
    if lo < 0:
        raise ImageLoadError(f"{name}: a {mode} image holding negative values (down to {lo:.0f}); expected >= 0")
    if mode.startswith("I;16"):
        return arr / 65535.0  # 16-bit by definition: a dark image stays dark
    # mode "I" (32-bit) says nothing of the bit depth: the smallest of 8, 16 and 31 bits that holds the values
    return arr / next(r for r in (255.0, 65535.0, 2147483647.0) if hi <= r)


def read_text_file(path: str | Path, what: str = "text file") -> str:
    """Return a text file's contents as editors save it: UTF-8 with or without a byte-order mark, or UTF-16/32 with
    one (Windows editors' "Unicode"); line endings are left to ``str.splitlines``.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: naming the file and line, for text in another encoding (or binary data).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    data = path.read_bytes()
    encoding = next(
        (enc for bom, enc in _BOMS if data.startswith(bom)),
        "utf-8-sig",
    )
    if encoding == "utf-8-sig" and b"\x00" in data:
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        raise ValueError(
            f"{path} is not UTF-8 text: line {line} holds NUL bytes (a {what} in UTF-16 without a byte-order mark, "
            "or a binary file?); save it as UTF-8"
        )
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ValueError(
            f"{path} is not {encoding.removesuffix('-sig').upper()} text: line {line} holds byte "
            f"{data[e.start]:#04x}; save the {what} as UTF-8"
        ) from None


_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16 LE, whose mark is its prefix
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


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
    def from_file_list(
        cls, list_path: str | Path, data_root: str | Path, name: str | None = None, n_classes: int | None = None
    ) -> ImageSet:
        """Read an OpenOOD-style image list: one ``<relative path> <label>`` per line (label optional).

        Paths may contain spaces: a line whose last word is not an integer is a path without a label (label -1)
        when that whole path is a file, and an error when the line without its last word is one (a label that is
        not an integer). The list may be UTF-8 with or without a byte-order mark, or UTF-16 with one, with any line
        endings (:func:`read_text_file`); blank lines and lines starting with ``#`` are skipped.

        Args:
            list_path: the text file, e.g. OpenOOD v1.5's ``benchmark_imglist/imagenet/test_ssb_hard.txt``.
            data_root: the folder the relative paths start from.
            name: the set's name; default the list's file stem.
            n_classes: for an ID list, the number of class names: every line must then carry a label in
                ``[0, n_classes)``.

        Raises:
            FileNotFoundError: if the list does not exist.
            ValueError: naming the list and line, for a label that is not an integer or (with ``n_classes``) not a
                class index, an ID line without a label, an escaping path; or an empty list.
        """
        list_path = Path(list_path)
        text = read_text_file(list_path, "image list")
        root = Path(data_root).resolve()
        items = []
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                rel, label = _list_entry(root, line, n_classes)
                path = safe_join(root, rel)
                items.append(ImageItem(Path(rel).with_suffix("").as_posix(), path, label))
            except ValueError as e:
                raise ValueError(f"{list_path}:{number}: {e}") from None
        if not items:
            raise ValueError(f"image list {list_path} has no entries")
        return cls(name or list_path.stem, root, tuple(items))

    @classmethod
    def from_manifest(
        cls, manifest: str | Path, split: str, name: str | None = None, n_classes: int | None = None
    ) -> ImageSet:
        """Read one split of a JSONL manifest (the mini-world benchmark's ``manifest.jsonl``).

        Each line is an object with at least ``id``, ``path`` (relative to the manifest's folder), ``split``
        and ``label``; ``class_name`` fills the class list. A byte-order mark is allowed.

        Args:
            manifest: the JSONL file.
            split: the records' ``split`` to read.
            name: the set's name; default ``split``.
            n_classes: for an ID split, the number of class names: every label must be in ``[0, n_classes)``.

        Raises:
            FileNotFoundError: if the manifest does not exist.
            ValueError: naming the file and line, for malformed lines, missing keys, labels out of range, escaping
                paths; or an empty split.
        """
        manifest = Path(manifest)
        if not manifest.is_file():
            raise FileNotFoundError(f"manifest not found: {manifest}")
        root = manifest.parent.resolve()
        items = []
        names: dict[int, str] = {}
        text = read_text_file(manifest, "manifest")
        for number, line in enumerate(text.split("\n"), 1):  # JSON strings may hold other line breaks
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if rec["split"] != split:
                    continue
                path = safe_join(root, rec["path"])
                label = _checked_label(rec["label"], n_classes)
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


def _list_entry(root: Path, line: str, n_classes: int | None) -> tuple[str, int]:
    """Return ``(relative path, label)`` of an image-list line (see :meth:`ImageSet.from_file_list`)."""
    parts = line.rsplit(maxsplit=1)
    if len(parts) == 2 and _is_int(parts[1]):
        return parts[0], _checked_label(parts[1], n_classes)
    if len(parts) == 2 and not _is_file(root, line) and _is_file(root, parts[0]):
        raise ValueError(f"label {parts[1]!r} of {parts[0]!r} is not an integer")
    if n_classes is not None:
        raise ValueError(
            f"{line!r} has no label: an ID image list needs '<path> <label>' with a class index in [0, {n_classes})"
        )
    return line, -1


def _is_file(root: Path, relative: str) -> bool:
    try:
        return safe_join(root, relative).is_file()
    except (ValueError, OSError):
        return False


def _checked_label(value, n_classes: int | None = None) -> int:
    """Return ``value`` as a class label: an integer (or integral text) in ``[-1, MAX_LABEL]``, or with
    ``n_classes`` a class index in ``[0, n_classes)``."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON writers may store 3 as 3.0
    if isinstance(value, bool) or not isinstance(value, (int, str)) or (isinstance(value, str) and not _is_int(value)):
        raise ValueError(f"label {value!r} is not an integer")
    label = int(value)
    if n_classes is not None and not 0 <= label < n_classes:
        raise ValueError(f"label {label} is not a class index in [0, {n_classes}) of the {n_classes} class names")
    if not -1 <= label <= MAX_LABEL:
        raise ValueError(
            f"label {label} is out of range: expected -1 (OOD / unlabelled) or a class index in [0, {MAX_LABEL}]"
        )
    return label
