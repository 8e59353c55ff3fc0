"""The ``synood`` command line: it parses arguments into the library's types and calls the library.

Every command that reads data takes ``--benchmark`` (``miniworld``, a built-in name with ``--data-root``, or a
description file) and ``--config`` (a preset name or file; default the benchmark's own preset). Options left out
keep the preset's values.

synood demo --out outputs/demo                 # the main job: every notebook, then an HTML report
synood benchmark describe|check                # a benchmark's splits and counts; check reads every image header
synood config show                             # the preset, every field
synood world build [--root DIR]                # render the mini-world benchmark
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
import sys
import time
from pathlib import Path

__all__ = ["build_parser", "main"]


def _pairs(items: list[str], option: str, form: str, empty_value: bool = False) -> list[tuple[str, str]]:
    """Split ``NAME=VALUE`` option values; refuse one without a name, an ``=`` or (unless allowed) a value."""
    out = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not (value or empty_value):
            raise ValueError(f"{option} expects {form}, got {item!r}")
        out.append((name, value))
    return out


# ---------------------------------------------------------------- shared options


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--benchmark",
        default="miniworld",
        help="'miniworld' (default), a built-in (imagenet-mos, openood-v1.5-imagenet) or a benchmark.toml/.json",
    )
    p.add_argument(
        "--data-root",
        action="append",
        default=[],
        help="NAME=PATH of a data root the benchmark names (repeat), or one base folder holding them",
    )
    p.add_argument(
        "--config", default=None, help="preset: miniworld, paper, official, or a .toml file (default: the benchmark's)"
    )


def _add_model_args(p: argparse.ArgumentParser, *extra: str) -> None:
    p.add_argument(
        "--clip", default=None, help="open_clip name (ViT-B-16), local folder, or 'miniworld' (preset: models.clip)"
    )
    p.add_argument(
        "--pretrained", default=None, help="open_clip pretrained tag or checkpoint file (preset: models.pretrained)"
    )
    p.add_argument("--device", default=None, help="torch device: cpu, cuda, cuda:1, mps (preset: models.device)")
    if "classifier" in extra:
        p.add_argument("--classifier", default=None, help="classifier folder, 'miniworld', torchvision name, or 'none'")
        p.add_argument("--classifier-weights", default=None, help="torchvision weights name, e.g. IMAGENET1K_V2")
    if "pipeline" in extra:
        p.add_argument("--pipeline", default=None, help="in-painting pipeline folder, hub id, or 'miniworld'")
        p.add_argument(
            "--mllm", default=None, help="MLLM folder, hub id or 'miniworld' (the model name at an endpoint)"
        )
        p.add_argument(
            "--mllm-endpoint", default=None, help="OpenAI-compatible base URL of an MLLM server (vLLM, SGLang)"
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
    """Return the run's preset: ``--config`` (or the benchmark's own), with the options that were given."""
    from .preset import load_preset

    name = args.config or benchmark.preset
    if name is None:
        raise ValueError(
            f"benchmark {benchmark.name!r} names no preset: pass --config (miniworld, paper, official or a file)"
        )
    mapping = {**_MODEL_OPTIONS, **(options or {})}
    values = {key: getattr(args, dest) for dest, key in mapping.items() if hasattr(args, dest)}
    preset = load_preset(name).override(values)
    print(f"benchmark {benchmark.name} ({benchmark.source}); preset {preset.name}", file=sys.stderr)
    return preset


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

    root, counts = build_world(args.root, args.scale)
    print(f"benchmark at {root}\n  counts: {counts}")
    return 0


def _cmd_mine(args) -> int:
    import dataclasses

    from .benchmark import imagenet_class_names
    from .models import load_clip
    from .negatives import mine_negative_labels

    if args.id_classes:
        if args.id_classes == "imagenet":
            names = list(imagenet_class_names())
        else:
            path = Path(args.id_classes)
            if not path.is_file():
                raise FileNotFoundError(f"--id-classes {args.id_classes!r} is neither 'imagenet' nor a file of names")
            names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        from .preset import load_preset

        if args.config is None:
            raise ValueError("--id-classes needs --config: the preset whose CLIP and mining settings to use")
        overrides = {key: getattr(args, dest) for dest, key in _MODEL_OPTIONS.items() if hasattr(args, dest)}
        preset = load_preset(args.config).override(overrides)
        config = preset.mining
    else:
        benchmark = _benchmark(args)
        preset = _preset(args, benchmark)
        names = list(benchmark.class_names)
        config = preset.mining_for(benchmark)
    corpus = config.corpus
    if args.pos:
        corpus = dataclasses.replace(corpus, parts_of_speech=tuple(p.strip() for p in args.pos.split(",")))
    if args.official_filter:
        corpus = dataclasses.replace(corpus, exclude_lexnames=("noun.animal", "noun.food"))
    if args.max_words is not None or args.lemmas:
        corpus = dataclasses.replace(
            corpus, max_words=args.max_words or corpus.max_words, lemmas=args.lemmas or corpus.lemmas
        )
    config = dataclasses.replace(config, corpus=corpus, text_batch_size=args.text_batch_size or config.text_batch_size)
    clip = load_clip(preset.models.clip, preset.models.pretrained, device=preset.models.device)
    result = mine_negative_labels(clip, names, config)
    result.labels.save(args.out)
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

        benchmark = benchmark_from_sources(
            args.id, _pairs(args.ood, "--ood", "NAME=PATH"), args.class_names, data_root=args.list_root, preset=None
        )
    elif args.ood:
        raise ValueError("--ood needs --id (the ID test images); or describe the benchmark in a file (--benchmark)")
    else:
        benchmark = _benchmark(args)
    preset = _preset(args, benchmark, {"n_boot": "n_boot"})
    t = time.time()
    result = run_evaluation(
        args.out,
        benchmark,
        preset,
        negatives=args.negatives,
        finetune=args.finetune,
        ledger=args.ledger,
        sample=args.sample,
    )
    print((result.out_dir / "evaluation.md").read_text())
    acc = ", ".join(f"{k} {100 * v:.1f}%" for k, v in result.accuracy.items())
    print(
        f"ID top-1: {acc}\nFPR95_IDpos: FPR on OOD at 95% TPR on ID (MCM/NegLabel papers); "
        f"FPR95_OODpos: FPR on ID at 95% TPR on OOD (OpenOOD)."
    )
    skipped = {s: len(v) for s, v in result.skipped.items() if v}
    if skipped:
        print(f"unreadable images left out (reasons in {result.out_dir / 'metrics.json'}): {skipped}")
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
    t = time.time()
    result = run_synood(args.out, benchmark, preset, args.synthetic)
    print((Path(args.out) / "synood.md").read_text())
    print(
        f"wrote {args.out} in {time.time() - t:.0f} s ({len(result.logs['adapter'])} adapter steps, "
        f"{len(result.logs['labels'])} label steps)"
    )
    return 0


def _cmd_ablate(args) -> int:
    from .ablations import AblationRun, run_ablations

    synthetic = _pairs(args.synthetic, "--synthetic", "NAME=FOLDER")
    counts = []
    for k in args.n_negatives.split(","):
        if k.strip() != "all" and not k.strip().isdigit():
            raise ValueError(
                f"--n-negatives expects a comma-separated list of counts or 'all', got {args.n_negatives!r}"
            )
        counts.append(None if k.strip() == "all" else int(k))
    run = AblationRun(
        synthetic=tuple(synthetic),
        n_negatives=tuple(counts),
        trainings=tuple(t.strip() for t in args.trainings.split(",")),
        n_boot=args.n_boot,
    )
    benchmark = _benchmark(args)
    preset = _preset(args, benchmark, {"adapter_epochs": "adapter.epochs", "label_epochs": "labels.epochs"})
    t = time.time()
    run_ablations(args.out, benchmark, preset, run)
    print((Path(args.out) / "ablations.md").read_text())
    print(f"wrote {args.out} in {time.time() - t:.0f} s")
    return 0


def _cmd_demo(args) -> int:
    from .report import run_report

    parameters = {}
    for key, value in _pairs(args.param, "--param", "KEY=VALUE with a Python identifier as KEY", empty_value=True):
        if not key.isidentifier():
            raise ValueError(f"--param expects KEY=VALUE with a Python identifier as KEY, got {key!r}")
        try:
            parameters[key] = json.loads(value)
        except json.JSONDecodeError:
            parameters[key] = value
    parameters.update(benchmark=args.benchmark, data_roots=",".join(args.data_root))
    if args.config:
        parameters["preset"] = args.config
    only = [x.strip() for x in args.only.split(",")] if args.only else None
    print(f"SynOOD kit main job: every notebook in order with papermill, then an HTML report in {args.out}/index.html")
    report = run_report(args.out, only=only, parameters=parameters)
    return 0 if report.ok else 1


# ---------------------------------------------------------------- the parser


def build_parser() -> argparse.ArgumentParser:
    """Return the ``synood`` argument parser."""
    parser = argparse.ArgumentParser(prog="synood", description="SynOOD research kit")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the main job: run every notebook with papermill and render an HTML report")
    demo.add_argument("--out", default="outputs/demo", help="output folder (index.html is the summary page)")
    _add_data_args(demo)
    demo.add_argument("--only", default="", help="comma-separated notebook names or NN prefixes (default: all)")
    demo.add_argument(
        "--param", action="append", default=[], help="KEY=VALUE papermill parameter for every notebook that declares it"
    )
    demo.set_defaults(func=_cmd_demo)

    bench = sub.add_parser("benchmark", help="describe or check a benchmark's data")
    bench.add_argument(
        "action", choices=("describe", "check"), help="describe: splits and counts; check: read every image"
    )
    _add_data_args(bench)
    bench.add_argument("--sample", type=int, default=None, help="check: open at most N images per split")
    bench.set_defaults(func=_cmd_benchmark)

    config = sub.add_parser("config", help="show a preset")
    config.add_argument("action", choices=("show",))
    config.add_argument("--config", default=None, help="preset name or file (default: miniworld)")
    config.set_defaults(func=_cmd_config)

    world = sub.add_parser("world", help="the offline mini-world")
    world_sub = world.add_subparsers(dest="world_command", required=True)
    build = world_sub.add_parser("build", help="render the benchmark (ImageFolder trees + manifest)")
    build.add_argument("--root", default=None, help="output folder (default: the cache location)")
    build.add_argument("--scale", type=float, default=1.0, help="scale every split's size (quick looks)")
    build.set_defaults(func=_cmd_world_build)

    mine = sub.add_parser("mine", help="mine NegLabel negative labels for a benchmark's (or given) class names")
    _add_data_args(mine)
    _add_model_args(mine)
    mine.add_argument("--id-classes", default=None, help="'imagenet' or a file of names, instead of the benchmark's")
    mine.add_argument(
        "--pos", default=None, help="parts of speech mined: noun, adj or noun,adj (preset: mining.corpus)"
    )
    mine.add_argument("--max-words", type=int, default=None, help="cap the corpus at N words per part of speech")
    mine.add_argument(
        "--text-batch-size", type=int, default=None, help="prompts per text-encoder call (large on a GPU)"
    )
    mine.add_argument("--official-filter", action="store_true", help="drop noun.animal/noun.food (NegLabel's files)")
    mine.add_argument("--lemmas", default=None, choices=("first", "all"), help="lemmas per synset")
    mine.add_argument("--out", required=True, help="output JSON (ordered list with provenance)")
    mine.set_defaults(func=_cmd_mine)

    feats = sub.add_parser("features", help="cache every split's image features (shards under accelerate launch)")
    _add_data_args(feats)
    _add_model_args(feats, "classifier")
    feats.add_argument("--splits", default="", help="comma-separated splits (default: all)")
    feats.add_argument("--sample", type=int, default=None, help="at most N images per split (a fixed-seed sample)")
    feats.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    feats.add_argument("--classifier-logits", action="store_true", help="also cache the preset classifier's logits")
    feats.set_defaults(func=_cmd_features)

    p = sub.add_parser("evaluate", help="OOD evaluation of every split: zero-shot baselines, SynOOD with --finetune")
    _add_data_args(p)
    _add_model_args(p, "classifier")
    p.add_argument("--negatives", default=None, help="saved negative labels (default: mine, cached in --out)")
    p.add_argument("--finetune", default=None, help="SynOOD checkpoint (adds the SynOOD score)")
    p.add_argument("--ledger", default=None, help="published numbers to set beside, e.g. 'ImageNet-1k (MOS)'")
    p.add_argument("--sample", type=int, default=None, help="at most N images per split (a fixed-seed sample)")
    p.add_argument("--n-boot", type=int, default=None, help="bootstrap replicates for intervals (preset: n_boot)")
    p.add_argument("--id", default=None, help="ID test folder or image list, instead of --benchmark")
    p.add_argument("--ood", action="append", default=[], help="NAME=PATH of an OOD folder or image list (with --id)")
    p.add_argument("--class-names", default="auto", help="with --id: 'auto', 'imagenet', or a file of names")
    p.add_argument("--list-root", default=None, help="with --id: the folder image lists' paths start from")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_cmd_evaluate)

    syn = sub.add_parser("synthesize", help="near-boundary OOD synthesis (resumable; shards under accelerate launch)")
    _add_data_args(syn)
    _add_model_args(syn, "classifier", "pipeline")
    syn.add_argument("--out", required=True, help="output folder (rerun the same command to resume)")
    syn.add_argument("--negatives", default=None, help="saved negative labels (default: mine for the benchmark)")
    syn.add_argument("--per-class", type=int, default=None, help="source images per class (preset: synthesis.sources)")
    syn.add_argument("--selection", default=None, choices=("first", "jpeg_bytes_per_pixel"), help="which sources")
    syn.add_argument(
        "--size", type=int, default=None, help="resize sources to N x N (default: the pipeline's native size)"
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
    syn.add_argument("--rounds", type=int, default=None, help="noise updates (0: the unguided baseline)")
    syn.add_argument("--step-size", type=float, default=None, help="step on the initial noise")
    syn.add_argument("--normalize", default=None, choices=("none", "unit", "clip"), help="gradient normalisation")
    syn.add_argument("--steps", type=int, default=None, help="scheduler steps")
    syn.add_argument("--strength", type=float, default=None, help="in-painting strength in (0, 1]")
    syn.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale")
    syn.add_argument("--seed", type=int, default=None)
    syn.add_argument("--batch-size", type=int, default=None, help="images per refinement call")
    syn.add_argument("--chunk-images", type=int, default=None, help="source images held in memory at once")
    syn.set_defaults(func=_cmd_synthesize)

    ft = sub.add_parser("finetune", help="SynOOD fine-tuning (stages A and B) and evaluation vs NegLabel")
    _add_data_args(ft)
    _add_model_args(ft)
    ft.add_argument("--synthetic", required=True, help="a `synood synthesize` output folder for this benchmark")
    ft.add_argument("--adapter-epochs", type=int, default=None, help="stage A epochs (preset: adapter.epochs)")
    ft.add_argument("--label-epochs", type=int, default=None, help="stage B epochs (preset: labels.epochs)")
    ft.add_argument("--n-boot", type=int, default=None, help="bootstrap replicates (preset: n_boot)")
    ft.add_argument("--out", required=True, help="output folder")
    ft.set_defaults(func=_cmd_finetune)

    abl = sub.add_parser("ablate", help="the fine-tuning ablation grid (with the ID-only control) as one table")
    _add_data_args(abl)
    _add_model_args(abl)
    abl.add_argument("--synthetic", action="append", required=True, help="NAME=FOLDER of a `synood synthesize` output")
    abl.add_argument("--n-negatives", default="all", help="comma-separated numbers of negatives kept, or 'all'")
    abl.add_argument(
        "--trainings",
        default="adapter,labels,adapter + labels,joint",
        help="comma-separated: adapter, labels, adapter + labels, joint",
    )
    abl.add_argument("--adapter-epochs", type=int, default=None)
    abl.add_argument("--label-epochs", type=int, default=None)
    abl.add_argument("--n-boot", type=int, default=0, help="bootstrap replicates for intervals (0: none)")
    abl.add_argument("--out", required=True, help="output folder")
    abl.set_defaults(func=_cmd_ablate)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``synood`` command line; return the exit status."""
    from .models import WeightsNotFoundError
    from .storage import OutputError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (WeightsNotFoundError, FileNotFoundError, ValueError, TypeError, OutputError) as e:
        print(f"synood {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
