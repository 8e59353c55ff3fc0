"""Benchmarks as data: the ID training and test splits, named OOD splits with their grouping (near / far), the ID
class names, and where every split's files live.

Every stage takes a :class:`Benchmark`: synthesis reads its ID training split, fine-tuning and evaluation read all
of it, and every table names its OOD splits. A benchmark is built by :func:`synood_kit.registry.load_benchmark`
from the offline mini-world, from a built-in description of a layout researchers already have on disk
(``imagenet-mos``, ``openood-v1.5-imagenet``: only the data roots are given), or from a small description file
beside the user's data (:func:`read_description`)::

    name = "my-imagenet-subset"
    class_names = "auto"            # wnid folders -> ImageNet names; other folders -> their names
    [splits.id_train]
    folder = "${imagenet}/train"     # an ImageFolder tree (class sub-folders)
    [splits.id_test]
    list = "lists/val.txt"           # an OpenOOD-style image list '<path> <label>', paths under data_root
    data_root = "${imagenet}"
    [splits.inaturalist]
    folder = "${inaturalist}"        # any folder of images: an OOD split
    group = "far"
    [splits.ninco]
    manifest = "ninco.jsonl"         # a JSONL manifest (id, path, split, label)
    group = "near"

Paths are relative to the description's folder; ``${name}`` is a data root given by the caller (or the file's
``[roots]`` table). Splits are read lazily, on first use, so a command that needs one split never lists the
others.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from .data import ImageSet, read_text_file
from .storage import sha256_text

__all__ = [
    "ID_SPLITS",
    "Annotations",
    "Benchmark",
    "Split",
    "benchmark_from_sources",
    "imagenet_class_names",
    "imagenet_wnids",
    "parse_roots",
    "read_description",
]

ID_SPLITS = ("id_train", "id_test")
_WNID = re.compile(r"^n\d{8}$")
_ROOT_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_-]*)\}")
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def imagenet_wnids() -> tuple[str, ...]:
    """Return the 1,000 ImageNet-1k WordNet ids in label order (the sorted wnids; read from timm's data files,
    which ship with open_clip's dependency timm, without importing timm)."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("timm is not installed: the ImageNet wnid list comes from timm's data files")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "_info" / "imagenet_synsets.txt"
    wnids = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if len(wnids) != 1000:
        raise ValueError(f"{path} holds {len(wnids)} wnids, expected the 1000 of ImageNet-1k")
    return wnids


def imagenet_class_names() -> tuple[str, ...]:
    """Return the 1,000 ImageNet-1k class names in label order (open_clip's zero-shot names, as CLIP papers use)."""
    import open_clip

    return tuple(open_clip.IMAGENET_CLASSNAMES)


@dataclass(frozen=True)
class Annotations:
    """What a benchmark knows about its images beyond files and labels (the mini-world's ground truth)."""

    context: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # image id -> true context elements
    masks: Callable[[str, str], object] | None = None  # (image id, "box"|"subject") -> (1, H, W) mask tensor
    vocabulary: tuple[tuple[str, str], ...] = ()  # (word, "noun"|"adj"): domain words added to the NegLabel corpus


@dataclass(frozen=True)
class Split:
    """One split of a benchmark: where its images are and, for OOD splits, its group."""

    name: str  # "id_train", "id_test", or the OOD split's name (e.g. "inaturalist", "ssb_hard")
    kind: str  # "folder", "list", "manifest" or "builtin"
    location: str  # the folder, list (and its data root) or manifest, for messages and `benchmark describe`
    group: str | None  # OOD splits: "near", "far" or another label; ID splits: None
    load: Callable[[], ImageSet] = field(compare=False, repr=False)  # reads the split's ImageSet


@dataclass(frozen=True)
class Benchmark:
    """An OOD benchmark: ID class names, ID splits and named OOD splits (see the module docstring)."""

    name: str  # e.g. "miniworld", "imagenet-mos", or the description's name
    class_names: tuple[str, ...]  # ID class names in label order: the text of CLIP's ID prompts
    splits: tuple[Split, ...]  # id_train (optional), id_test, then the OOD splits in report order
    source: str  # where it was described: a file, a built-in name with its roots, or the mini-world folder
    preset: str | None = None  # the preset its commands default to ("miniworld", "paper"); None: no default
    annotations: Annotations = field(default_factory=Annotations, compare=False, repr=False)
    _sets: dict = field(default_factory=dict, compare=False, repr=False)  # split name -> loaded ImageSet

    def __post_init__(self) -> None:
        names = [s.name for s in self.splits]
        if len(set(names)) != len(names):
            raise ValueError(f"benchmark {self.name!r}: duplicate split names in {names}")
        if "id_test" not in names:
            raise ValueError(f"benchmark {self.name!r} has no id_test split (its splits: {names})")
        if not self.ood_splits:
            raise ValueError(f"benchmark {self.name!r} has no OOD split (its splits: {names})")
        if not self.class_names or not all(isinstance(c, str) and c.strip() for c in self.class_names):
            raise ValueError(f"benchmark {self.name!r} needs non-empty ID class names")

    @property
    def ood_splits(self) -> tuple[str, ...]:
        """Return the OOD split names in report order."""
        return tuple(s.name for s in self.splits if s.name not in ID_SPLITS)

    @property
    def groups(self) -> dict[str, tuple[str, ...]]:
        """Return ``{group: OOD split names}`` in report order (``"ood"`` for splits without a group)."""
        out: dict[str, tuple[str, ...]] = {}
        for s in self.splits:
            if s.name not in ID_SPLITS:
                out[s.group or "ood"] = (*out.get(s.group or "ood", ()), s.name)
        return out

    @property
    def classes_fingerprint(self) -> str:
        """Return a hash of the ordered ID class names: what a synthesis folder and a checkpoint are made for."""
        return sha256_text("\n".join(self.class_names))

    def identity(self) -> dict:
        """Return what identifies the benchmark in a run's records: name, number of classes, class fingerprint."""
        return {"name": self.name, "n_classes": len(self.class_names), "classes": self.classes_fingerprint}

    def spec(self, name: str) -> Split:
        """Return the :class:`Split` called ``name``.

        Raises:
            ValueError: if the benchmark has no such split, naming the ones it has.
        """
        for s in self.splits:
            if s.name == name:
                return s
        known = [s.name for s in self.splits]
        hint = " (synthesis and fine-tuning need ID training images)" if name == "id_train" else ""
        raise ValueError(f"benchmark {self.name!r} has no split {name!r}{hint}; its splits: {known}")

    def split(self, name: str) -> ImageSet:
        """Return the :class:`~synood_kit.data.ImageSet` of split ``name`` (read on first use, then kept)."""
        if name not in self._sets:
            spec = self.spec(name)
            try:
                image_set = spec.load()
            except ValueError as e:  # a list's or manifest's own error names its file and line
                raise ValueError(f"benchmark {self.name!r}, split {name} ({spec.location}): {e}") from None
            if name in ID_SPLITS:
                bad = image_set.labels[(image_set.labels < 0) | (image_set.labels >= len(self.class_names))]
                if len(bad):
                    raise ValueError(
                        f"benchmark {self.name!r}, split {name} ({spec.location}): label {int(bad[0])} is not a "
                        f"class index in [0, {len(self.class_names)}) of its {len(self.class_names)} class names"
                    )
            self._sets[name] = image_set
        return self._sets[name]

    @property
    def id_train(self) -> ImageSet:
        return self.split("id_train")

    @property
    def id_test(self) -> ImageSet:
        return self.split("id_test")

    def evaluation_splits(self) -> tuple[str, ...]:
        """Return ``("id_test", *ood_splits)``: the splits every table scores."""
        return ("id_test", *self.ood_splits)

    def describe(self) -> dict:
        """Return the benchmark's description with the number of images per split (reads every split's list)."""
        return {
            "name": self.name,
            "source": self.source,
            "preset": self.preset,
            "classes": len(self.class_names),
            "class_names": list(self.class_names[:5]) + (["..."] if len(self.class_names) > 5 else []),
            "splits": {
                s.name: {"kind": s.kind, "location": s.location, "group": s.group, "images": len(self.split(s.name))}
                for s in self.splits
            },
        }

    def check(self, sample: int | None = None, progress: bool = True) -> dict:
        """Read every split and open each image's header (or ``sample`` images per split); refuse bad data.

        Checks that every split has images, ID labels index the class names (done when a split is read), OOD
        splits share no file with the ID splits, and every checked file's header is one the kit reads (a size
        within the pixel limits, an accepted mode; :func:`synood_kit.data.read_image_header`).

        Returns:
            ``{split: {"images": n, "checked": k}}``.

        Raises:
            ValueError: naming every problem found (up to 10 unreadable files per split).
        """
        from tqdm.auto import tqdm

        from .data import ImageLoadError, read_image_header

        problems, report = [], {}
        id_paths = set()
        for s in self.splits:
            try:
                image_set = self.split(s.name)
            except (ValueError, FileNotFoundError) as e:
                problems.append(f"{s.name}: {e}")
                continue
            paths = [it.path for it in image_set.items]
            if s.name in ID_SPLITS:
                id_paths.update(paths)
            else:
                shared = [p for p in paths if p in id_paths]
                if shared:
                    problems.append(f"{s.name}: {len(shared)} image(s) are also ID images, e.g. {shared[0]}")
            chosen = paths if sample is None else paths[:: max(1, len(paths) // sample)][:sample]
            unreadable = []
            for path in tqdm(chosen, desc=f"check {s.name}", unit="img", disable=not progress):
                try:
                    read_image_header(path)  # the kit's one reader: size limits and mode, nothing decoded
                except (ImageLoadError, FileNotFoundError) as e:
                    unreadable.append(f"{path} ({type(e).__name__}: {e})")
            if unreadable:
                listed = "; ".join(unreadable[:10])
                problems.append(f"{s.name}: {len(unreadable)} unreadable image(s) of {len(chosen)} checked: {listed}")
            report[s.name] = {"images": len(paths), "checked": len(chosen)}
        if problems:
            raise ValueError(f"benchmark {self.name!r} ({self.source}) has problems:\n  " + "\n  ".join(problems))
        return report


def parse_roots(roots: str | Mapping[str, str] | None) -> dict[str, str]:
    """Return data roots as ``{name: path}`` from a mapping, ``"name=path,name=path"`` or one base folder
    (returned as ``{"": path}``; built-in descriptions place their default sub-folders under it).

    Raises:
        ValueError: for an entry without a name or a path.
    """
    if roots is None or roots == "":
        return {}
    if isinstance(roots, Mapping):
        return {str(k): str(v) for k, v in roots.items()}
    out: dict[str, str] = {}
    for part in (p.strip() for p in str(roots).split(",")):
        if not part:
            continue
        name, sep, path = part.partition("=")
        if not sep:
            if out.get(""):
                raise ValueError(f"data roots: two base folders given ({out['']!r} and {part!r}); name them NAME=PATH")
            out[""] = part
            continue
        if not name.strip() or not path.strip():
            raise ValueError(f"data roots expect NAME=PATH or one base folder, got {part!r}")
        out[name.strip()] = path.strip()
    return out


def read_description(path: str | Path, roots: str | Mapping[str, str] | None = None) -> Benchmark:
    """Return the :class:`Benchmark` a description file (``.toml`` or ``.json``) describes.

    Args:
        path: the description file.
        roots: data roots that fill ``${name}`` in its paths (see :func:`parse_roots`); they override the file's
            ``[roots]`` table. A base folder (``{"": path}``) fills every root the file names with
            ``<base>/<sub-folder>``: the file's ``[layout]`` table gives each root's sub-folder (else its name).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it is not valid TOML/JSON, lacks a required key, names an unknown key or root, or a
            split's files are missing.
    """
    from .config import read_table

    path = Path(path)
    data = read_table(path)
    where = str(path)
    known = {"name", "preset", "class_names", "roots", "layout", "splits", "description"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; a benchmark description has {sorted(known)}")
    if not isinstance(data.get("name"), str) or not data["name"].strip():
        raise ValueError(f'{where}: needs a name = "..."')
    given = parse_roots(roots)
    file_roots, layout = data.get("roots", {}), data.get("layout", {})
    for key, table in (("roots", file_roots), ("layout", layout)):
        if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
            raise ValueError(f'{where}: [{key}] must be a table of name = "path"')
    base = given.pop("", None)
    resolved = {k: str(_expand(v, path.parent, {}, where)) for k, v in file_roots.items()}
    if base is not None:
        names = set(resolved) | set(layout) | _root_names(data.get("splits", {}))
        resolved.update({n: str(Path(base).expanduser() / layout.get(n, n)) for n in names})
    resolved.update({k: str(Path(v).expanduser()) for k, v in given.items()})
    splits_table = data.get("splits")
    if not isinstance(splits_table, dict) or not splits_table:
        raise ValueError(f"{where}: needs [splits.id_test] and at least one OOD split")
    if "id_test" not in splits_table or len(set(splits_table) - set(ID_SPLITS)) == 0:
        raise ValueError(
            f"{where}: has no id_test split or no OOD split (its splits: {list(splits_table)}); a benchmark needs "
            "[splits.id_test] and at least one OOD split"
        )
    folder = path.parent
    splits = tuple(_split(name, spec, folder, resolved, where) for name, spec in splits_table.items())
    splits, folder_names = _bind_id_folders(splits, where)
    class_names = _class_names(data.get("class_names", "auto"), folder_names, folder, resolved, where)
    splits = _bind_id_labels(splits, len(class_names))
    described = f"{path}" + (f" with roots {resolved}" if resolved else "")
    return Benchmark(data["name"].strip(), class_names, splits, described, data.get("preset"))


def benchmark_from_sources(
    id_test: str,
    ood: list[tuple[str, str]] | tuple[tuple[str, str], ...],
    class_names: str | list[str] = "auto",
    id_train: str | None = None,
    data_root: str | None = None,
    name: str = "folders",
    preset: str | None = None,
) -> Benchmark:
    """Return a benchmark from folders or image lists given directly (``synood evaluate --id ... --ood ...``).

    Args:
        id_test: ID test images: an ImageFolder tree or an image list (``<path> <label>`` per line).
        ood: ``(name, folder or image list)`` per OOD split.
        class_names: ``"auto"``, ``"imagenet"``, a file of names, or a list.
        id_train: ID training images, the same way (optional: only synthesis and fine-tuning need them).
        data_root: the folder image lists' paths start from (default: each list's folder).
        name: the benchmark's name.
        preset: the preset its commands default to.
    """
    entries: dict[str, dict] = {}
    for split, source in (("id_train", id_train), ("id_test", id_test), *ood):
        if source is None:
            continue
        p = Path(source)
        entry = (
            {"list": str(p.resolve()), "data_root": str(Path(data_root or p.parent).resolve())}
            if p.is_file()
            else {"folder": str(p.resolve())}
        )
        entries[split] = entry
    splits = tuple(_split(n, e, Path.cwd(), {}, "--id/--ood") for n, e in entries.items())
    splits, folder_names = _bind_id_folders(splits, "--id")
    if not isinstance(class_names, (list, tuple)) and class_names not in ("auto", "imagenet"):
        class_names = {"file": str(Path(class_names).resolve())}
    names = _class_names(class_names, folder_names, Path.cwd(), {}, "--class-names")
    splits = _bind_id_labels(splits, len(names))
    return Benchmark(name, names, splits, f"--id {id_test} " + " ".join(f"--ood {n}={p}" for n, p in ood), preset)


def _root_names(splits_table) -> set[str]:
    return {
        m
        for spec in (splits_table or {}).values()
        if isinstance(spec, dict)
        for v in spec.values()
        if isinstance(v, str)
        for m in _ROOT_REF.findall(v)
    }


def _expand(value: str, folder: Path, roots: Mapping[str, str], where: str) -> Path:
    """Return a description path with ``${root}`` filled in, relative to the description's folder."""

    def fill(match: re.Match) -> str:
        name = match.group(1)
        if name not in roots:
            raise ValueError(
                f"{where}: {value!r} names the data root ${{{name}}}, which was not given; pass it as "
                f"--data-root {name}=PATH (or a base folder)"
            )
        return str(roots[name])

    text = _ROOT_REF.sub(fill, value)
    path = Path(text).expanduser()
    return path if path.is_absolute() else folder / path


def _split(name: str, spec, folder: Path, roots: Mapping[str, str], where: str) -> Split:
    if not isinstance(name, str) or not _SPLIT_NAME.match(name):
        raise ValueError(f"{where}: split name {name!r} must be letters, digits, '_', '-' or '.'")
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: splits.{name} must be a table with folder, list or manifest")
    kinds = [k for k in ("folder", "list", "manifest") if k in spec]
    if len(kinds) != 1:
        raise ValueError(f"{where}: splits.{name} needs exactly one of folder, list, manifest; got {sorted(spec)}")
    allowed = {"folder", "list", "manifest", "data_root", "split", "group"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ValueError(f"{where}: splits.{name} has unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    kind = kinds[0]
    is_id = name in ID_SPLITS
    group = spec.get("group")
    if is_id and group is not None:
        raise ValueError(f"{where}: splits.{name} is an ID split and takes no group")
    if group is not None and (not isinstance(group, str) or not group.strip()):
        raise ValueError(f"{where}: splits.{name}.group must be a name such as 'near' or 'far', got {group!r}")
    location = _expand(str(spec[kind]), folder, roots, where)
    if kind == "folder":
        if not location.is_dir():
            raise FileNotFoundError(f"{where}: splits.{name}: folder {location} does not exist")
        text = str(location)

        def load(location=location) -> ImageSet:
            return ImageSet.from_folder(location, name=name, labelled=is_id)
    elif kind == "list":
        if not location.is_file():
            raise FileNotFoundError(f"{where}: splits.{name}: image list {location} does not exist")
        data_root = _expand(str(spec["data_root"]), folder, roots, where) if "data_root" in spec else location.parent
        if not data_root.is_dir():
            raise FileNotFoundError(f"{where}: splits.{name}: data_root {data_root} does not exist")
        text = f"{location} (paths under {data_root})"

        def load(location=location, data_root=data_root, n_classes=None) -> ImageSet:
            s = ImageSet.from_file_list(location, data_root, name=name, n_classes=n_classes)
            return s if is_id else _unlabelled(s)
    else:
        if not location.is_file():
            raise FileNotFoundError(f"{where}: splits.{name}: manifest {location} does not exist")
        manifest_split = str(spec.get("split", name))
        text = f"{location} (split {manifest_split})"

        def load(location=location, manifest_split=manifest_split, n_classes=None) -> ImageSet:
            s = ImageSet.from_manifest(location, manifest_split, name=name, n_classes=n_classes)
            return s if is_id else _unlabelled(s)

    return Split(name, kind, text, None if is_id else (group.strip() if group else None), load)


def _unlabelled(image_set: ImageSet) -> ImageSet:
    """Return an OOD split with every label -1, whatever its list said (OpenOOD lists give OOD images labels)."""
    from .data import ImageItem

    items = tuple(ImageItem(it.id, it.path, -1) for it in image_set.items)
    return ImageSet(image_set.name, image_set.root, items)


def _bind_id_folders(splits: tuple[Split, ...], where: str) -> tuple[tuple[Split, ...], list[str] | None]:
    """Return the splits with every ID folder split reading one shared, sorted list of class folders (the first
    ID folder's), so that a label means the same class in both, and that list (``None`` without ID folders)."""
    id_folders = [s for s in splits if s.name in ID_SPLITS and s.kind == "folder"]
    if not id_folders:
        return splits, None
    first = Path(id_folders[0].location)
    folders = sorted(p.name for p in first.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"{where}: ID folder {first} has no class sub-folders")

    def bound(s: Split) -> Split:
        if s.name not in ID_SPLITS or s.kind != "folder":
            return s
        return replace(
            s, load=partial(ImageSet.from_folder, s.location, name=s.name, labelled=True, class_names=folders)
        )

    return tuple(bound(s) for s in splits), folders


def _bind_id_labels(splits: tuple[Split, ...], n_classes: int) -> tuple[Split, ...]:
    """Return the splits with every ID list and manifest read against the class count, so that a label that is no
    class index is refused naming its file and line (a folder's labels are its class folders)."""

    def bound(s: Split) -> Split:
        if s.name not in ID_SPLITS or s.kind not in ("list", "manifest"):
            return s
        return replace(s, load=partial(s.load, n_classes=n_classes))

    return tuple(bound(s) for s in splits)


def _class_names(spec, folder_names: list[str] | None, folder: Path, roots, where: str) -> tuple[str, ...]:
    """Resolve a description's ``class_names`` (``"auto"``, ``"imagenet"``, a list or ``{file = ...}``)."""
    if isinstance(spec, dict) and set(spec) == {"file"}:
        names_file = _expand(str(spec["file"]), folder, roots, where)
        if not names_file.is_file():
            raise FileNotFoundError(f"{where}: class names file {names_file} does not exist")
        names = [x.strip() for x in read_text_file(names_file, "class-names file").splitlines() if x.strip()]
    elif isinstance(spec, (list, tuple)):
        names = [str(x) for x in spec]
    elif spec == "imagenet":
        if folder_names is not None:
            raise ValueError(
                f"{where}: class_names = 'imagenet' gives the 1000 names in label order, but the ID splits are "
                "folders, labelled by their sorted sub-folders; use class_names = 'auto' (wnid folders get their "
                "ImageNet names)"
            )
        names = list(imagenet_class_names())
    elif spec == "auto":
        if folder_names is None:
            raise ValueError(
                f"{where}: class_names = 'auto' reads the ID folders' names, but the ID splits are image lists or "
                "manifests; give class_names = 'imagenet' (labels are ImageNet-1k indices), a list, or "
                "{file = 'classes.txt'}"
            )
        names = _folder_class_names(folder_names)
    else:
        raise ValueError(
            f"{where}: class_names must be 'auto', 'imagenet', a list of names or {{file = ...}}, got {spec!r}"
        )
    if not names or not all(str(n).strip() for n in names):
        raise ValueError(f"{where}: the ID class names are empty, or hold an empty name (one name per line or item)")
    if folder_names is not None and len(names) != len(folder_names):
        raise ValueError(f"{where}: {len(names)} class names for {len(folder_names)} ID class folders")
    return tuple(names)


def _folder_class_names(folders: list[str]) -> list[str]:
    """Return CLIP class names for ImageFolder class folders: a wnid folder gets its ImageNet-1k name, any other
    folder its own name with ``_`` read as a space.

    Raises:
        ValueError: if some folders are wnids and others not, or a wnid is not one of ImageNet-1k's.
    """
    wnid = [bool(_WNID.match(f)) for f in folders]
    if not any(wnid):
        return [f.replace("_", " ") for f in folders]
    if not all(wnid):
        mixed = [f for f, w in zip(folders, wnid, strict=True) if not w][:3]
        raise ValueError(f"class folders mix WordNet ids and other names (e.g. {mixed}); name them all one way")
    index = {w: i for i, w in enumerate(imagenet_wnids())}
    unknown = [f for f in folders if f not in index]
    if unknown:
        raise ValueError(f"class folders {unknown[:5]} are WordNet ids but not ImageNet-1k classes; give class_names")
    names = imagenet_class_names()
    return [names[index[f]] for f in folders]
