"""The built-in benchmarks: the one place outside ``synood_kit/miniworld/`` that knows the mini-world.

:func:`load_benchmark` turns what a user passes (``--benchmark`` and ``--data-root`` on the command line, the
``benchmark`` and ``data_roots`` parameters of a notebook) into a :class:`~synood_kit.benchmark.Benchmark`:

* ``"miniworld"``: the offline mini-world, built into the cache on first use (or a built mini-world folder);
* a built-in description of a layout researchers already have on disk, given its data roots:
  ``"imagenet-mos"`` (ImageNet-1k vs iNaturalist, SUN, Places, Textures) and ``"openood-v1.5-imagenet"``;
* a description file (``benchmark.toml`` / ``.json``), or a folder holding one.

Nothing falls back to the mini-world: a name that is none of these is an error that lists them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .benchmark import Benchmark, parse_roots, read_description

__all__ = ["BUILTIN_BENCHMARKS", "DESCRIPTIONS_DIR", "build_world", "load_benchmark", "load_run"]

DESCRIPTIONS_DIR = Path(__file__).with_name("benchmarks")
BUILTIN_BENCHMARKS = ("miniworld", *sorted(p.stem for p in DESCRIPTIONS_DIR.glob("*.toml")))


def load_benchmark(
    spec: str | Path | Benchmark = "miniworld", roots: str | Mapping[str, str] | None = None, progress: bool = True
) -> Benchmark:
    """Return the benchmark ``spec`` names (see the module docstring).

    Args:
        spec: ``"miniworld"``, a built-in name, a description file, a folder holding ``benchmark.toml`` /
            ``benchmark.json``, a built mini-world folder, or a :class:`Benchmark` (returned as it is).
        roots: data roots: ``{"imagenet": "/data/in"}``, ``"imagenet=/data/in,inaturalist=/data/inat"`` or one
            base folder; the mini-world takes ``miniworld=FOLDER`` (a built benchmark, or where to build it).
        progress: show a progress bar while the mini-world is built.

    Raises:
        FileNotFoundError: for a name that is none of these, or data roots and files that do not exist.
        ValueError: for a description with errors, or data roots given to a benchmark that takes none.
    """
    if isinstance(spec, Benchmark):
        return spec
    text = str(spec)
    given = parse_roots(roots)
    if text == "miniworld" or _is_built_miniworld(Path(text)):
        from .miniworld.benchmark import miniworld_benchmark

        root = text if text != "miniworld" else given.pop("miniworld", None) or given.pop("", None)
        if given:
            raise ValueError(f"the mini-world takes one data root, miniworld=FOLDER; got {sorted(given)}")
        return miniworld_benchmark(root, progress=progress)
    if text in BUILTIN_BENCHMARKS:
        return read_description(DESCRIPTIONS_DIR / f"{text}.toml", given)
    path = Path(text).expanduser()
    if path.is_dir():
        found = [path / n for n in ("benchmark.toml", "benchmark.json") if (path / n).is_file()]
        if not found:
            raise FileNotFoundError(f"{path} holds no benchmark.toml or benchmark.json (a benchmark description)")
        path = found[0]
    if path.is_file():
        return read_description(path, given)
    raise FileNotFoundError(
        f"benchmark {text!r} is neither a built-in ({', '.join(BUILTIN_BENCHMARKS)}) nor a description file or folder"
    )


def load_run(
    benchmark: str | Path | Benchmark = "miniworld",
    data_roots: str | Mapping[str, str] | None = None,
    preset: str | Path | None = None,
    overrides: Mapping[str, object] | None = None,
    progress: bool = True,
):
    """Return ``(Benchmark, Preset)`` as a notebook's parameters name them: the benchmark with its data roots, and
    the preset (a name or file; empty or ``None``: the benchmark's own) with ``overrides`` by dotted field name.

    Raises:
        ValueError: when no preset is given and the benchmark names none; and as :func:`load_benchmark` and
            :func:`synood_kit.preset.load_preset`.
    """
    from .preset import load_preset

    bench = load_benchmark(benchmark, data_roots, progress)
    name = preset or bench.preset
    if not name:
        raise ValueError(f"benchmark {bench.name!r} names no preset: give one (miniworld, paper, official or a file)")
    return bench, load_preset(name).override(dict(overrides or {}))


def _is_built_miniworld(folder: Path) -> bool:
    """A folder made by `synood world build`: its benchmark.json is the world's spec, next to manifest.jsonl."""
    import json

    info = folder / "benchmark.json"
    if not (folder.is_dir() and info.is_file() and (folder / "manifest.jsonl").is_file()):
        return False
    try:
        return "spec" in json.loads(info.read_text())
    except ValueError:
        return False


def build_world(
    root: str | Path | None = None, scale: float = 1.0, progress: bool = True, seed: int | None = None
) -> tuple[Path, dict]:
    """Render the mini-world benchmark into ``root`` (default: its cache folder) and return ``(root, counts)``.

    Args:
        root: output folder.
        scale: every split's size times ``scale`` (for quick looks; > 0).
        progress: show a progress bar.
        seed: world seed of the render (default: the shipped benchmark's, 2025). Another seed renders the same
            classes, sizes and splits from new random streams: a re-render, to see which results survive one.
    """
    import dataclasses
    import json
    import math

    from .miniworld.benchmark import BENCHMARK_SPEC, build_benchmark, default_benchmark_root

    if (
        isinstance(scale, bool)
        or not isinstance(scale, (int, float))
        or not (math.isfinite(scale) and 0 < scale <= 100)
    ):
        raise ValueError(f"--scale must be a number in (0, 100] (a multiple of every split's size), got {scale!r}")
    if seed is not None and not (isinstance(seed, int) and 0 <= seed < 2**32):
        raise ValueError(f"--seed must be an integer in [0, 2**32), got {seed!r}")
    spec = BENCHMARK_SPEC.scaled(scale) if scale != 1.0 else BENCHMARK_SPEC
    if seed is not None:
        spec = dataclasses.replace(spec, seed=seed)
    folder = Path(root) if root else default_benchmark_root(spec)
    build_benchmark(folder, spec, progress=progress)
    return folder, json.loads((folder / "benchmark.json").read_text())["counts"]
