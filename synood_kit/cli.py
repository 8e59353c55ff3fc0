"""The ``synood`` command line: it parses arguments into the library's types and calls the library.

Every command that reads data takes ``--benchmark`` (``miniworld``, a built-in name with ``--data-root``, or a
description file) and ``--config`` (a preset name or file; default the benchmark's own preset). Options left out
keep the preset's values. Every option's value is checked where the parser declares it, before any command starts
(ranges, devices, files that must exist, output folders that can be created); what only the preset can tell is
checked when it is loaded (:func:`_preset`). A refusal is one line naming the option, the value and what is allowed,
and exit status 2; so is every error the library raises on bad input.

synood demo --out outputs/demo                 # the main job: every notebook, then an HTML report
synood benchmark describe|check                # a benchmark's splits and counts; check reads every image header
synood config show                             # the preset, every field
synood world build [--root DIR] [--seed N]     # render the mini-world benchmark
synood world replicates --out DIR [--seeds 2025,2026,2027]   # the headline comparison over world renders
synood mine --out negatives.json               # NegLabel negative labels (WordNet 3.0 [+ the benchmark's words])
synood features                                # cache every split's features (shards under accelerate launch)
synood evaluate --out DIR                      # zero-shot baselines (and SynOOD with --finetune) per OOD split
synood synthesize --out DIR                    # near-boundary OOD synthesis (resumable, shardable)
synood finetune --synthetic DIR --out DIR      # stages A and B, SynOOD vs NegLabel and the ID-only control
synood ablate --synthetic NAME=DIR ... --out DIR   # the ablation grid as one table
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from .ablations import TRAININGS

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (``synood <command>: error: ...``) with exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")

    def _get_values(self, action, arg_strings):
        # argparse drops a value "--" (``--sample=--``) and hands the option an empty list, past its type check
        if action.option_strings and action.nargs is None and arg_strings == ["--"]:
            raise argparse.ArgumentError(action, "expected a value, got '--'")
        return super()._get_values(action, arg_strings)


# ---------------------------------------------------------------- option values
# Every option's check, in the parser that declares it: argparse runs them before any command starts, and reports
# a refusal as "argument --option: expected ..., got 'value'".


def _option_type(parse, name: str | None = None):
    """Return an argparse type: ``parse(text)`` raising ``ValueError`` (or ``OSError``) with what is expected."""

    def convert(text: str):
        try:
            return parse(text)
        except (ValueError, OSError) as e:
            raise argparse.ArgumentTypeError(getattr(e, "strerror", None) or str(e)) from None

    convert.__name__ = name or parse.__name__.strip("_")  # argparse names the type in some messages
    return convert


def _integer(minimum: int | None = None):
    allowed = "an integer" if minimum is None else f"an integer >= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or (minimum is not None and value < minimum):
            raise ValueError(f"expected {allowed}, got {text!r}")
        return value

    return _option_type(parse, allowed)


def _number(low: float, high: float = math.inf, low_open: bool = False):
    """A finite number in ``[low, high]`` (``(low, high]`` when ``low_open``)."""
    allowed = (
        f"a number in {'(' if low_open else '['}{low:g}, {high:g}]"
        if high < math.inf
        else (f"a finite number {'>' if low_open else '>='} {low:g}")
    )

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and (value > low if low_open else value >= low) and value <= high):
            raise ValueError(f"expected {allowed}, got {text!r}")
        return value

    return _option_type(parse, allowed)


@_option_type
def _n_boot(text: str) -> int:
    value = int(text) if text.strip().lstrip("+-").isdigit() else None
    if value is None or not (value == 0 or value >= 10):
        raise ValueError(f"expected 0 (no intervals) or an integer >= 10, got {text!r}")
    return value


def _existing_file(what: str):
    def parse(text: str) -> str:
        path = Path(text).expanduser()
        if path.is_dir():
            raise ValueError(f"{text!r} is a folder; expected {what}")
        if not path.is_file():
            raise ValueError(f"file not found: {text!r} (expected {what})")
        return text

    return _option_type(parse, what)


@_option_type
def _existing_path(text: str) -> str:
    if not Path(text).expanduser().exists():
        raise ValueError(f"{text!r} does not exist (expected a folder or an image list)")
    return text


@_option_type
def _existing_folder(text: str) -> str:
    if not Path(text).expanduser().is_dir():
        raise ValueError(f"folder not found: {text!r}")
    return text


@_option_type
def _synthesis_folder(text: str) -> str:
    if not (Path(text).expanduser() / "synthesis.json").is_file():
        raise ValueError(
            f"{text!r} holds no synthesis run (no synthesis.json): give a `synood synthesize` --out folder"
        )
    return text


def _name_or_file(*names: str):
    allowed = " or ".join(repr(n) for n in names) + " or a file of names"

    def parse(text: str) -> str:
        if text not in names and not Path(text).expanduser().is_file():
            raise ValueError(f"expected {allowed} (one per line), got {text!r}")
        return text

    return _option_type(parse, allowed)


def _pair(form: str, check=None, empty_value: bool = False):
    """``NAME=VALUE`` (``form`` says which), its value checked by ``check`` (a parse function)."""

    def parse(text: str) -> tuple[str, str]:
        name, sep, value = text.partition("=")
        if not sep or not name or not (value or empty_value):
            raise ValueError(f"expected {form}, got {text!r}")
        return name, check(value) if check else value

    return _option_type(parse, form)


@_option_type
def _seeds(text: str) -> tuple[int, ...]:
    """Comma-separated distinct world seeds in [0, 2**32)."""
    try:
        seeds = tuple(int(s) for s in text.split(","))
    except ValueError:
        seeds = ()
    if not seeds or any(not 0 <= s < 2**32 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"expected comma-separated distinct integers in [0, 2**32), got {text!r}")
    return seeds


_WORLD_SCALE = _number(0, 100, low_open=True)


def _choices_list(choices: tuple[str, ...], extra: str = ""):
    """A comma-separated list of ``choices`` (each once)."""
    allowed = f"a comma-separated list of {', '.join(choices)}{extra}"

    def parse(text: str) -> tuple[str, ...]:
        items = tuple(x.strip() for x in text.split(","))
        if not items or any(x not in choices for x in items) or len(set(items)) != len(items):
            raise ValueError(f"expected {allowed}, got {text!r}")
        return items

    return _option_type(parse, allowed)


@_option_type
def _negative_counts(text: str) -> tuple[int | None, ...]:
    counts = []
    for k in (x.strip() for x in text.split(",")):
        if k == "all":
            counts.append(None)
        elif k.isascii() and k.isdigit() and int(k) >= 100:
            counts.append(int(k))
        else:
            raise ValueError(
                f"expected a comma-separated list of counts >= 100 (NegLabel's groups) or 'all', got {text!r}"
            )
    return tuple(counts)


@_option_type
def _parameter(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise ValueError(f"expected KEY=VALUE with a Python identifier as KEY, got {text!r}")
    return key, value


@_option_type
def _device(text: str) -> str:
    from .models import check_device

    check_device(text)
    return text


@_option_type
def _preset_source(text: str) -> str:
    from .preset import preset_names

    if text not in preset_names() and not Path(text).expanduser().is_file():
        raise ValueError(f"expected a shipped preset ({', '.join(preset_names())}) or a .toml/.json file, got {text!r}")
    return text


@_option_type
def _endpoint(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise ValueError(f"expected an http:// or https:// base URL, got {text!r}")
    return text


@_option_type
def _ledger(text: str) -> str:
    from .ledger import ledger_names

    if text not in ledger_names():
        raise ValueError(f"expected one of {ledger_names()}, got {text!r}")
    return text


def _output(kind: str):
    """An output folder (or file) that exists as one, or can be created: checked before any work."""

    def parse(text: str) -> str:
        from .storage import check_output_path

        check_output_path(text, kind)
        return text

    return _option_type(parse, f"an output {kind}")


@_option_type
def _benchmark_source(text: str) -> str:
    from .registry import BUILTIN_BENCHMARKS

    if text not in BUILTIN_BENCHMARKS and not Path(text).expanduser().exists():
        raise ValueError(
            f"expected a built-in ({', '.join(BUILTIN_BENCHMARKS)}), a benchmark.toml/.json or a folder holding one, "
            f"got {text!r}"
        )
    return text


@_option_type
def _data_root(text: str) -> str:
    name, sep, path = text.partition("=")
    if sep and (not name or not path):
        raise ValueError(f"expected NAME=PATH or one base folder, got {text!r}")
    if not Path(path if sep else text).expanduser().is_dir():
        raise ValueError(f"folder not found: {path if sep else text!r} (expected NAME=PATH or one base folder)")
    return text


@_option_type
def _notebooks(text: str) -> str:
    from .report import notebook_names

    names = notebook_names()
    if not text:
        return text
    unknown = [x.strip() for x in text.split(",") if x.strip() not in names and x.strip() not in {n[:2] for n in names}]
    if unknown:
        raise ValueError(f"expected comma-separated notebook names or NN prefixes of {names}, got {text!r}")
    return text


def _model_source(kind: str, *keywords: str):
    """A model name, hub id or keyword, passed to its loader as it is; a path (``/``, ``./``, ``~`` or more than one
    ``/``) must exist: a mistyped folder is refused here, not taken for a hub id."""
    allowed = f"{', '.join(repr(k) for k in keywords) + ', ' if keywords else ''}a name, a hub id or an existing {kind}"

    def parse(text: str) -> str:
        pathlike = text.startswith(("/", ".", "~")) or text.count("/") > 1 or text.startswith("local-dir:")
        path = Path(text.removeprefix("local-dir:")).expanduser()
        if not text.strip() or (text not in keywords and pathlike and not path.exists()):
            raise ValueError(f"expected {allowed}, got {text!r}, which does not exist")
        return text

    return _option_type(parse, allowed)


AT_LEAST_1 = _integer(1)


# ---------------------------------------------------------------- shared options


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--benchmark",
        default="miniworld",
        type=_benchmark_source,
        help="'miniworld' (default), a built-in (imagenet-mos, openood-v1.5-imagenet) or a benchmark.toml/.json",
    )
    p.add_argument(
        "--data-root",
        action="append",
        default=[],
        type=_data_root,
        help="NAME=PATH of a data root the benchmark names (repeat), or one base folder holding them",
    )
    p.add_argument(
        "--config",
        default=None,
        type=_preset_source,
        help="preset: miniworld, paper, official, or a .toml/.json file (default: the benchmark's)",
    )


def _add_model_args(p: argparse.ArgumentParser, *extra: str) -> None:
    p.add_argument(
        "--clip",
        default=None,
        type=_model_source("CLIP folder (open_clip_config.json, open_clip_model.safetensors)", "miniworld", "none"),
        help="open_clip name (ViT-B-16), local folder, 'miniworld', or 'none' where a command can do without",
    )
    p.add_argument(
        "--pretrained",
        default=None,
        type=_model_source("checkpoint file"),
        help="open_clip pretrained tag or checkpoint file (preset: models.pretrained)",
    )
    p.add_argument(
        "--device",
        default=None,
        type=_device,
        help="torch device this machine has: cpu, cuda, cuda:N, mps (preset: models.device)",
    )
    if "classifier" in extra:
        p.add_argument(
            "--classifier",
            default=None,
            type=_model_source("classifier folder (classifier_config.json, model.safetensors)", "miniworld", "none"),
            help="classifier folder, 'miniworld', torchvision name, or 'none'",
        )
        p.add_argument("--classifier-weights", default=None, help="torchvision weights name, e.g. IMAGENET1K_V2")
    if "pipeline" in extra:
        p.add_argument(
            "--pipeline",
            default=None,
            type=_model_source("diffusers pipeline folder (model_index.json)", "miniworld"),
            help="in-painting pipeline folder, hub id, or 'miniworld'",
        )
        p.add_argument(
            "--mllm", default=None, help="MLLM folder, hub id or 'miniworld' (the model name at an endpoint)"
        )
        p.add_argument(
            "--mllm-endpoint",
            default=None,
            type=_endpoint,
            help="OpenAI-compatible http(s) base URL of an MLLM server (vLLM, SGLang)",
        )


_MODEL_OPTIONS = {
    "clip": "models.clip",
    "pretrained": "models.pretrained",
    "device": "models.device",
    "classifier": "models.classifier",
    "classifier_weights": "models.classifier_weights",
    "pipeline": "models.pipeline",
    "mllm": "models.mllm",
    "mllm_endpoint": "models.mllm_endpoint",
}


def _benchmark(args):
    from .registry import load_benchmark

    roots = {}
    for item in args.data_root:
        name, sep, path = item.partition("=")
        if sep and (not name or not path):
            raise ValueError(f"--data-root expects NAME=PATH or one base folder, got {item!r}")
        key = name if sep else ""
        if key in roots:
            raise ValueError(f"--data-root {key or 'base folder'} given twice")
        roots[key] = path if sep else item
    return load_benchmark(args.benchmark, roots)


def _preset(args, benchmark, options: dict[str, str] | None = None):
    """Return the run's preset: ``--config`` (or the benchmark's own), with the options that were given.

    Options are checked one by one by the parser; what only the preset can tell (a combination of options and
    preset values the preset refuses, the preset's own device) is refused here, naming the options involved.
    """
    from .models import check_device
    from .preset import load_preset

    name = args.config or (benchmark.preset if benchmark is not None else None)
    if name is None:
        raise ValueError(
            f"benchmark {benchmark.name!r} names no preset: pass --config (miniworld, paper, official or a file)"
        )
    mapping = {**_MODEL_OPTIONS, **(options or {})}
    values = {key: getattr(args, dest) for dest, key in mapping.items() if hasattr(args, dest)}
    try:
        preset = load_preset(name).override(values)
    except (ValueError, TypeError) as e:
        named = [
            f"--{dest.replace('_', '-')} {getattr(args, dest)}"
            for dest, key in mapping.items()
            if getattr(args, dest, None) is not None and key.rsplit(".", 1)[-1] in str(e)
        ]
        raise type(e)(f"{', '.join(named)}: {e}" if named else str(e)) from None
    try:
        check_device(preset.models.device)
    except ValueError as e:
        raise ValueError(f"--device (preset {preset.name}: models.device): {e}") from None
    return preset


def _announce(benchmark, preset) -> None:
    """Say which benchmark and preset a command runs with (stderr), once its options are all accepted."""
    print(f"benchmark {benchmark.name} ({benchmark.source}); preset {preset.name}", file=sys.stderr)


# ---------------------------------------------------------------- commands


def _cmd_benchmark(args) -> int:
    benchmark = _benchmark(args)
    if args.action == "check":
        report = benchmark.check(sample=args.sample)
        print(json.dumps({"benchmark": benchmark.name, "source": benchmark.source, "checked": report}, indent=2))
        print(f"benchmark {benchmark.name}: every checked image is readable", file=sys.stderr)
        return 0
    print(json.dumps(benchmark.describe(), indent=2))
    return 0


def _cmd_config(args) -> int:
    from .preset import load_preset, preset_toml

    print(preset_toml(load_preset(args.config or "miniworld")), end="")
    return 0


def _cmd_world_build(args) -> int:
    from .registry import build_world

    root, counts = build_world(args.root, args.scale, seed=args.seed)
    print(f"benchmark at {root}\n  counts: {counts}")
    return 0


def _cmd_world_replicates(args) -> int:
    from .preset import load_preset
    from .replicates import ReplicateSettings, run_replicates

    settings = ReplicateSettings(seeds=args.seeds, scale=args.scale)
    values = {"synthesis.sources.per_class": args.per_class, "synthesis.batch_size": args.batch_size}
    if args.n_boot is not None:
        values["n_boot"] = args.n_boot
    preset = load_preset(args.config or "miniworld").override({k: v for k, v in values.items() if v is not None})
    t = time.time()
    result = run_replicates(args.out, preset, settings)
    print((result.out_dir / "replicates.md").read_text())
    print(f"wrote {args.out} in {time.time() - t:.0f} s")
    return 0


def _cmd_mine(args) -> int:
    import dataclasses

    from .benchmark import imagenet_class_names
    from .data import read_text_file
    from .models import load_clip
    from .negatives import mine_negative_labels
    from .storage import OutputLock

    if args.id_classes:
        if args.config is None:
            raise ValueError("--id-classes needs --config: the preset whose CLIP and mining settings to use")
        if args.id_classes == "imagenet":
            names = list(imagenet_class_names())
        else:
            text = read_text_file(args.id_classes, "--id-classes file of names")
            names = [line.strip() for line in text.splitlines() if line.strip()]
            if not names:
                raise ValueError(f"--id-classes {args.id_classes!r} holds no class names (one per line)")
        preset = _preset(args, None)
        config = preset.mining
        print(f"{len(names)} ID classes from {args.id_classes}; preset {preset.name}", file=sys.stderr)
    else:
        benchmark = _benchmark(args)
        preset = _preset(args, benchmark)
        names = list(benchmark.class_names)
        config = preset.mining_for(benchmark)
        _announce(benchmark, preset)
    corpus = config.corpus
    if args.pos:
        corpus = dataclasses.replace(corpus, parts_of_speech=args.pos)
    if args.official_filter:
        corpus = dataclasses.replace(corpus, exclude_lexnames=("noun.animal", "noun.food"))
    if args.max_words is not None or args.lemmas:
        corpus = dataclasses.replace(
            corpus, max_words=args.max_words or corpus.max_words, lemmas=args.lemmas or corpus.lemmas
        )
    config = dataclasses.replace(config, corpus=corpus, text_batch_size=args.text_batch_size or config.text_batch_size)
    out = Path(args.out)
    with OutputLock(out.parent, purpose="mining", name=f".{out.name}.lock"):  # one writer of the file at a time
        clip = load_clip(preset.models.clip, preset.models.pretrained, device=preset.models.device)
        result = mine_negative_labels(clip, names, config)
        result.labels.save(out)
    print(f"{len(result.labels)} negative labels for {len(names)} ID classes -> {args.out}")
    for pos, c in result.labels.provenance["counts"].items():
        print(f"  {pos}: kept {c['kept']} of {c['candidates']} (threshold {result.thresholds[pos]:.4f})")
    return 0


def _cmd_features(args) -> int:
    from .features import extract_features
    from .models import load_clip
    from .synthesis_run import shard_from_env

    benchmark = _benchmark(args)
    preset = _preset(args, benchmark)
    splits = [s.strip() for s in args.splits.split(",")] if args.splits else [s.name for s in benchmark.splits]
    unknown = [s for s in splits if s not in {x.name for x in benchmark.splits}]
    if unknown:
        raise ValueError(
            f"--splits {args.splits!r}: benchmark {benchmark.name!r} has no split {unknown}; its splits: "
            f"{[x.name for x in benchmark.splits]}"
        )
    _announce(benchmark, preset)
    rank, world = shard_from_env()
    encoders = [load_clip(preset.models.clip, preset.models.pretrained, device=preset.models.device)]
    if preset.models.classifier != "none" and args.classifier_logits:
        from .classifier import load_classifier

        encoders.append(
            load_classifier(preset.models.classifier, preset.models.classifier_weights, preset.models.device)
        )
    for encoder in encoders:
        for split in splits:
            done = extract_features(
                encoder, benchmark.split(split).sample(args.sample), rank, world, batch_size=args.batch_size
            )
            print(
                f"rank {rank}/{world}: {encoder.fingerprint} {split}: {done['shards']} shard(s), {done['images']} images, {done['skipped']} unreadable"
            )
    return 0


def _cmd_evaluate(args) -> int:
    from .experiments import run_evaluation

    if args.id:
        from .benchmark import benchmark_from_sources

        benchmark = benchmark_from_sources(args.id, args.ood, args.class_names, data_root=args.list_root, preset=None)
    elif args.ood:
        raise ValueError("--ood needs --id (the ID test images); or describe the benchmark in a file (--benchmark)")
    else:
        benchmark = _benchmark(args)
    preset = _preset(args, benchmark, {"n_boot": "n_boot"})
    _announce(benchmark, preset)
    t = time.time()
    result = run_evaluation(
        args.out,
        benchmark,
        preset,
        negatives=args.negatives,
        finetune=args.finetune,
        ledger=args.ledger,
        sample=args.sample,
        overwrite=args.overwrite,
    )
    print((result.out_dir / "evaluation.md").read_text())
    acc = ", ".join(f"{k} {100 * v:.1f}%" for k, v in result.accuracy.items())
    print(
        f"ID top-1: {acc}\nFPR95_IDpos: FPR on OOD at 95% TPR on ID (MCM/NegLabel papers); "
        f"FPR95_OODpos: FPR on ID at 95% TPR on OOD (OpenOOD)."
    )
    skipped = {s: len(v) for s, v in result.skipped.items() if v}
    if skipped:
        print(
            f"unreadable images left out (counted in evaluation.csv, reasons in {result.out_dir / 'metrics.json'}): "
            f"{skipped}"
        )
    if result.ledger is not None:
        print(result.ledger.to_string(index=False))
    print(f"wrote {result.out_dir} in {time.time() - t:.0f} s")
    return 0


_SYNTHESIS_OPTIONS = {
    "per_class": "synthesis.sources.per_class",
    "selection": "synthesis.sources.selection",
    "size": "synthesis.sources.size",
    "allow_below_native": "synthesis.sources.allow_below_native",
    "context": "synthesis.context",
    "scorer": "synthesis.scorer",
    "target": "synthesis.target",
    "mask": "synthesis.mask",
    "rounds": "synthesis.guidance.rounds",
    "step_size": "synthesis.guidance.step_size",
    "normalize": "synthesis.guidance.normalize",
    "step_unit": "synthesis.guidance.step_unit",
    "recipe": "synthesis.guidance.recipe",
    "rerun_steps": "synthesis.guidance.rerun_steps",
    "source_latent": "synthesis.inpaint.source_latent",
    "steps": "synthesis.inpaint.num_inference_steps",
    "strength": "synthesis.inpaint.strength",
    "cfg": "synthesis.inpaint.guidance_scale",
    "seed": "synthesis.seed",
    "batch_size": "synthesis.batch_size",
    "chunk_images": "synthesis.chunk_images",
}


def _cmd_synthesize(args) -> int:
    from .synthesis_run import run_synthesis

    benchmark = _benchmark(args)
    preset = _preset(args, benchmark, _SYNTHESIS_OPTIONS)
    _announce(benchmark, preset)
    result = run_synthesis(args.out, benchmark, preset, negatives=args.negatives)
    skipped = f", {len(result.skipped)} unreadable source(s) skipped" if result.skipped else ""
    print(
        f"wrote {result.written} images to {args.out} in {result.seconds:.0f} s (target {result.target:.3f}, "
        f"{result.sources} sources at {result.size} px in the run{skipped})"
    )
    return 0


_TRAINING_OPTIONS = {"adapter_epochs": "adapter.epochs", "label_epochs": "labels.epochs", "n_boot": "n_boot"}


def _cmd_finetune(args) -> int:
    from .experiments import run_synood

    benchmark = _benchmark(args)
    preset = _preset(args, benchmark, _TRAINING_OPTIONS)
    _announce(benchmark, preset)
    t = time.time()
    result = run_synood(args.out, benchmark, preset, args.synthetic, overwrite=args.overwrite)
    print((Path(args.out) / "synood.md").read_text())
    print(
        f"wrote {args.out} in {time.time() - t:.0f} s ({len(result.logs['adapter'])} adapter steps, "
        f"{len(result.logs['labels'])} label steps)"
    )
    return 0


def _cmd_ablate(args) -> int:
    from .ablations import AblationRun, run_ablations

    run = AblationRun(
        synthetic=tuple(args.synthetic), n_negatives=args.n_negatives, trainings=args.trainings, n_boot=args.n_boot
    )
    benchmark = _benchmark(args)
    preset = _preset(args, benchmark, {"adapter_epochs": "adapter.epochs", "label_epochs": "labels.epochs"})
    _announce(benchmark, preset)
    t = time.time()
    run_ablations(args.out, benchmark, preset, run, overwrite=args.overwrite)
    print((Path(args.out) / "ablations.md").read_text())
    print(f"wrote {args.out} in {time.time() - t:.0f} s")
    return 0


def _cmd_demo(args) -> int:
    from .report import run_report

    parameters = {}
    for key, value in args.param:
        try:
            parameters[key] = json.loads(value)
        except json.JSONDecodeError:
            parameters[key] = value
    parameters.update(benchmark=args.benchmark, data_roots=",".join(args.data_root))
    if args.config:
        parameters["preset"] = args.config
    only = [x.strip() for x in args.only.split(",")] if args.only else None
    print(f"SynOOD kit main job: every notebook in order with papermill, then an HTML report in {args.out}/index.html")
    report = run_report(args.out, only=only, parameters=parameters, overwrite=args.overwrite)
    return 0 if report.ok else 1


# ---------------------------------------------------------------- the parser


def build_parser() -> argparse.ArgumentParser:
    """Return the ``synood`` argument parser."""
    parser = _Parser(prog="synood", description="SynOOD research kit")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the main job: run every notebook with papermill and render an HTML report")
    demo.add_argument(
        "--out", default="outputs/demo", type=_output("folder"), help="output folder (index.html is the summary page)"
    )
    _add_data_args(demo)
    demo.add_argument(
        "--only", default="", type=_notebooks, help="comma-separated notebook names or NN prefixes (default: all)"
    )
    demo.add_argument(
        "--param",
        action="append",
        default=[],
        type=_parameter,
        help="KEY=VALUE papermill parameter for every notebook that declares it (KEY a Python identifier)",
    )
    demo.add_argument("--overwrite", action="store_true", help="replace a main job of other parameters in --out")
    demo.set_defaults(func=_cmd_demo)

    bench = sub.add_parser("benchmark", help="describe or check a benchmark's data")
    bench.add_argument(
        "action", choices=("describe", "check"), help="describe: splits and counts; check: read every image"
    )
    _add_data_args(bench)
    bench.add_argument("--sample", type=AT_LEAST_1, default=None, help="check: open at most N >= 1 images per split")
    bench.set_defaults(func=_cmd_benchmark)

    config = sub.add_parser("config", help="show a preset")
    config.add_argument("action", choices=("show",))
    config.add_argument("--config", default=None, type=_preset_source, help="preset name or file (default: miniworld)")
    config.set_defaults(func=_cmd_config)

    world = sub.add_parser("world", help="the offline mini-world")
    world_sub = world.add_subparsers(dest="world_command", required=True)
    build = world_sub.add_parser("build", help="render the benchmark (ImageFolder trees + manifest)")
    build.add_argument(
        "--root", default=None, type=_output("folder"), help="output folder (default: the cache location)"
    )
    build.add_argument("--scale", type=_WORLD_SCALE, default=1.0, help="scale every split's size (quick looks)")
    build.add_argument(
        "--seed",
        type=_integer(0),
        default=None,
        help="world seed (default 2025, the shipped render); another re-renders",
    )
    build.set_defaults(func=_cmd_world_build)
    rep = world_sub.add_parser(
        "replicates",
        help="the headline comparison (zero-shot, control, SynOOD guided and unguided) on several world renders",
    )
    rep.add_argument(
        "--out", required=True, type=_output("folder"), help="output folder (resumable: run again to continue)"
    )
    rep.add_argument(
        "--seeds",
        type=_seeds,
        default=(2025, 2026, 2027),
        help="comma-separated world seeds (default 2025,2026,2027; 2025: the shipped render)",
    )
    rep.add_argument(
        "--config",
        default=None,
        type=_preset_source,
        help="preset: miniworld (default) or a .toml file with mini-world models",
    )
    rep.add_argument("--per-class", type=_integer(1), default=None, help="synthesis sources per class (preset)")
    rep.add_argument("--batch-size", type=_integer(1), default=None, help="synthesis batch size (preset default)")
    rep.add_argument("--n-boot", type=_n_boot, default=None, help="bootstrap replicates of the first seed (0 or >= 10)")
    rep.add_argument("--scale", type=_WORLD_SCALE, default=1.0, help="scale every split's size (quick looks)")
    rep.set_defaults(func=_cmd_world_replicates)

    mine = sub.add_parser("mine", help="mine NegLabel negative labels for a benchmark's (or given) class names")
    _add_data_args(mine)
    _add_model_args(mine)
    mine.add_argument(
        "--id-classes",
        default=None,
        type=_name_or_file("imagenet"),
        help="'imagenet' or a file of names (one per line), instead of the benchmark's; needs --config",
    )
    mine.add_argument(
        "--pos",
        default=None,
        type=_choices_list(("noun", "adj")),
        help="parts of speech mined: noun, adj or noun,adj (preset: mining.corpus)",
    )
    mine.add_argument(
        "--max-words", type=AT_LEAST_1, default=None, help="cap the corpus at N >= 1 words per part of speech"
    )
    mine.add_argument(
        "--text-batch-size", type=AT_LEAST_1, default=None, help="prompts (>= 1) per text-encoder call (large on a GPU)"
    )
    mine.add_argument("--official-filter", action="store_true", help="drop noun.animal/noun.food (NegLabel's files)")
    mine.add_argument("--lemmas", default=None, choices=("first", "all"), help="lemmas per synset")
    mine.add_argument("--out", required=True, type=_output("file"), help="output JSON (ordered list with provenance)")
    mine.set_defaults(func=_cmd_mine)

    feats = sub.add_parser("features", help="cache every split's image features (shards under accelerate launch)")
    _add_data_args(feats)
    _add_model_args(feats, "classifier")
    feats.add_argument("--splits", default="", help="comma-separated splits (default: all)")
    feats.add_argument(
        "--sample", type=AT_LEAST_1, default=None, help="at most N >= 1 images per split (a fixed-seed sample)"
    )
    feats.add_argument("--batch-size", type=AT_LEAST_1, default=256, help="images (>= 1) per forward pass")
    feats.add_argument("--classifier-logits", action="store_true", help="also cache the preset classifier's logits")
    feats.set_defaults(func=_cmd_features)

    p = sub.add_parser("evaluate", help="OOD evaluation of every split: zero-shot baselines, SynOOD with --finetune")
    _add_data_args(p)
    _add_model_args(p, "classifier")
    p.add_argument(
        "--negatives",
        default=None,
        type=_existing_file("a negative-label list written by `synood mine`"),
        help="saved negative labels (default: mine, cached in --out)",
    )
    p.add_argument(
        "--finetune",
        default=None,
        type=_existing_file("a finetune.safetensors written by `synood finetune`"),
        help="SynOOD checkpoint (adds the SynOOD score)",
    )
    p.add_argument(
        "--ledger", default=None, type=_ledger, help="published numbers to set beside, e.g. 'ImageNet-1k (MOS)'"
    )
    p.add_argument(
        "--sample", type=AT_LEAST_1, default=None, help="at most N >= 1 images per split (a fixed-seed sample)"
    )
    p.add_argument(
        "--n-boot", type=_n_boot, default=None, help="bootstrap replicates: 0 (no intervals) or >= 10 (preset: n_boot)"
    )
    p.add_argument(
        "--id", default=None, type=_existing_path, help="ID test folder or image list, instead of --benchmark"
    )
    p.add_argument(
        "--ood",
        action="append",
        default=[],
        type=_pair("NAME=PATH", _existing_path),
        help="NAME=PATH of an OOD folder or image list (with --id)",
    )
    p.add_argument(
        "--class-names",
        default="auto",
        type=_name_or_file("auto", "imagenet"),
        help="with --id: 'auto', 'imagenet', or a file of names",
    )
    p.add_argument(
        "--list-root", default=None, type=_existing_folder, help="with --id: the folder image lists' paths start from"
    )
    p.add_argument("--out", required=True, type=_output("folder"), help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an evaluation of other settings in --out")
    p.set_defaults(func=_cmd_evaluate)

    syn = sub.add_parser("synthesize", help="near-boundary OOD synthesis (resumable; shards under accelerate launch)")
    _add_data_args(syn)
    _add_model_args(syn, "classifier", "pipeline")
    syn.add_argument(
        "--out", required=True, type=_output("folder"), help="output folder (rerun the same command to resume)"
    )
    syn.add_argument(
        "--negatives",
        default=None,
        type=_existing_file("a negative-label list written by `synood mine`"),
        help="saved negative labels (default: mine for the benchmark)",
    )
    syn.add_argument(
        "--per-class", type=AT_LEAST_1, default=None, help="source images (>= 1) per class (preset: synthesis.sources)"
    )
    syn.add_argument("--selection", default=None, choices=("first", "jpeg_bytes_per_pixel"), help="which sources")
    syn.add_argument(
        "--size",
        type=_integer(8),
        default=None,
        help="resize sources to N x N, N >= 8 (default: the pipeline's native size; below it needs the next option)",
    )
    syn.add_argument(
        "--allow-below-native", action="store_true", default=None, help="allow --size below the pipeline's"
    )
    syn.add_argument("--context", default=None, choices=("truth", "mllm"), help="context: annotations or the MLLM")
    syn.add_argument(
        "--target",
        default=None,
        choices=("boundary", "official"),
        help="boundary: a quantile of the guidance score over the run's ID training sources (reachable); "
        "official: margin -5 (the official code's, unreachable)",
    )
    syn.add_argument(
        "--scorer", default=None, choices=("classifier-energy", "clip-mcm", "clip-energy", "clip-neglabel")
    )
    syn.add_argument("--mask", default=None, choices=("full", "box", "subject"), help="full: the official mask")
    syn.add_argument("--rounds", type=_integer(0), default=None, help="noise updates, >= 0 (0: the unguided baseline)")
    syn.add_argument("--step-size", type=_number(0), default=None, help="step on the initial noise (finite, >= 0)")
    syn.add_argument("--normalize", default=None, choices=("none", "unit", "clip"), help="gradient normalisation")
    syn.add_argument(
        "--step-unit",
        default=None,
        choices=("per_image", "official"),
        help="unit of --step-size: per_image (batch-independent) or official (batch mean on z / sf); docs/method.md",
    )
    syn.add_argument(
        "--recipe",
        default=None,
        choices=("full", "one_step", "last_steps"),
        help="clean-latent estimate of an update round: full regeneration, one_step (Tweedie), last_steps",
    )
    syn.add_argument(
        "--rerun-steps", type=_integer(1), default=None, help="with --recipe last_steps: denoising steps re-run"
    )
    syn.add_argument(
        "--source-latent", default=None, choices=("sample", "mode"), help="the source's VAE latent (official: sample)"
    )
    syn.add_argument(
        "--steps",
        type=AT_LEAST_1,
        default=None,
        help="scheduler steps, >= 1; steps x strength must reach 1 (one denoising step at least)",
    )
    syn.add_argument(
        "--strength", type=_number(0, 1, low_open=True), default=None, help="in-painting strength in (0, 1]"
    )
    syn.add_argument("--cfg", type=_number(0), default=None, help="classifier-free guidance scale (finite, >= 0)")
    syn.add_argument("--seed", type=_integer(), default=None, help="base seed (an integer; preset: synthesis.seed)")
    syn.add_argument("--batch-size", type=AT_LEAST_1, default=None, help="images (>= 1) per refinement call")
    syn.add_argument(
        "--chunk-images", type=AT_LEAST_1, default=None, help="source images (>= 1) held in memory at once"
    )
    syn.set_defaults(func=_cmd_synthesize)

    ft = sub.add_parser("finetune", help="SynOOD fine-tuning (stages A and B) and evaluation vs NegLabel")
    _add_data_args(ft)
    _add_model_args(ft)
    ft.add_argument(
        "--synthetic",
        required=True,
        type=_synthesis_folder,
        help="a `synood synthesize` output folder for this benchmark",
    )
    ft.add_argument(
        "--adapter-epochs", type=AT_LEAST_1, default=None, help="stage A epochs, >= 1 (preset: adapter.epochs)"
    )
    ft.add_argument(
        "--label-epochs", type=AT_LEAST_1, default=None, help="stage B epochs, >= 1 (preset: labels.epochs)"
    )
    ft.add_argument(
        "--n-boot", type=_n_boot, default=None, help="bootstrap replicates: 0 (no intervals) or >= 10 (preset: n_boot)"
    )
    ft.add_argument("--out", required=True, type=_output("folder"), help="output folder")
    ft.add_argument("--overwrite", action="store_true", help="replace a run of other settings in --out")
    ft.set_defaults(func=_cmd_finetune)

    abl = sub.add_parser("ablate", help="the fine-tuning ablation grid (with the ID-only control) as one table")
    _add_data_args(abl)
    _add_model_args(abl)
    abl.add_argument(
        "--synthetic",
        action="append",
        required=True,
        type=_pair("NAME=FOLDER", _synthesis_folder),
        help="NAME=FOLDER of a `synood synthesize` output (repeat)",
    )
    abl.add_argument(
        "--n-negatives",
        default="all",
        type=_negative_counts,
        help="comma-separated numbers (>= 100) of negatives kept, or 'all'",
    )
    abl.add_argument(
        "--trainings",
        default="adapter,labels,adapter + labels,joint",
        type=_choices_list(TRAININGS),
        help="comma-separated: adapter, labels, adapter + labels, joint",
    )
    abl.add_argument("--adapter-epochs", type=AT_LEAST_1, default=None, help="stage A epochs, >= 1")
    abl.add_argument("--label-epochs", type=AT_LEAST_1, default=None, help="stage B epochs, >= 1")
    abl.add_argument("--n-boot", type=_n_boot, default=0, help="bootstrap replicates: 0 (no intervals) or >= 10")
    abl.add_argument("--out", required=True, type=_output("folder"), help="output folder")
    abl.add_argument("--overwrite", action="store_true", help="replace a grid of other settings in --out")
    abl.set_defaults(func=_cmd_ablate)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``synood`` command line; return the exit status."""
    from .models import WeightsNotFoundError
    from .storage import OutputError

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or an option refused by its check (one line already printed)
        return e.code if isinstance(e.code, int) else 2
    threads = os.environ.get("SYNOOD_THREADS", "").strip()
    if threads:  # torch's intra-op threads of this run (a long job beside another one: 1)
        if not threads.isdigit() or int(threads) < 1:
            print(
                f"synood {args.command}: error: SYNOOD_THREADS must be an integer >= 1, got {threads!r}",
                file=sys.stderr,
            )
            return 2
        import torch

        torch.set_num_threads(int(threads))
    try:
        return args.func(args)
    except (WeightsNotFoundError, FileNotFoundError, ValueError, TypeError, OutputError) as e:
        print(f"synood {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an input the system refuses to read (permissions, a folder where a file belongs)
        print(f"synood {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
