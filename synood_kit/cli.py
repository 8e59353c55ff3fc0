"""The ``synood`` command line: the same runs the notebooks make, headless.

synood demo --out outputs/demo            # the main job on the offline default (mini-world)
synood world build [--root DIR]           # render the mini-world benchmark
synood mine --out negatives.json          # NegLabel negative labels (WordNet 3.0 [+ world vocabulary])
synood evaluate --out DIR                 # zero-shot baselines per OOD split, both FPR95 conventions
synood synthesize --out DIR               # near-boundary OOD synthesis (resumable, shardable)
synood finetune --synthetic DIR --out DIR # stages A and B, SynOOD vs NegLabel and the ID-only control
synood ablate --synthetic NAME=DIR ... --out DIR   # the ablation grid as one tidy table
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

__all__ = ["main"]

CHUNK_IMAGES = 512  # source images `synood synthesize` holds in memory at once (rounded to whole batches)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clip", default="miniworld", help="open_clip name (ViT-B-16), local folder, or 'miniworld'")
    p.add_argument("--pretrained", default=None, help="open_clip pretrained tag or checkpoint file (e.g. openai)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, mps)")


def _pairs(items: list[str], option: str, form: str, empty_value: bool = False) -> list[tuple[str, str]]:
    """Split ``NAME=VALUE`` option values; refuse one without a name, an ``=`` or (unless allowed) a value."""
    out = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not (value or empty_value):
            raise ValueError(f"{option} expects {form}, got {item!r}")
        out.append((name, value))
    return out


def _cmd_world_build(args) -> int:
    from .miniworld.benchmark import BENCHMARK_SPEC, build_benchmark, default_benchmark_root

    spec = BENCHMARK_SPEC.scaled(args.scale) if args.scale != 1.0 else BENCHMARK_SPEC
    root = Path(args.root) if args.root else default_benchmark_root(spec)
    manifest = build_benchmark(root, spec)
    info = json.loads((root / "benchmark.json").read_text())
    print(f"benchmark at {root}\n  manifest: {manifest}\n  counts: {info['counts']}")
    return 0


def _cmd_mine(args) -> int:
    import open_clip

    from .config import CorpusConfig, MiningConfig
    from .miniworld.benchmark import BENCHMARK_SPEC
    from .models import load_clip
    from .negatives import mine_negative_labels

    if args.id_classes == "imagenet":
        names = list(open_clip.IMAGENET_CLASSNAMES)
    elif args.id_classes == "miniworld":
        names = list(BENCHMARK_SPEC.id_classes)
    else:
        path = Path(args.id_classes)
        if not path.is_file():
            raise FileNotFoundError(
                f"--id-classes {args.id_classes!r} is neither 'imagenet', 'miniworld' nor a file of names"
            )
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    extra = ()
    if args.world_vocabulary:
        from .miniworld.world import world_vocabulary

        extra = tuple(world_vocabulary())
    exclude = ("noun.animal", "noun.food") if args.official_filter else ()
    config = MiningConfig(corpus=CorpusConfig(lemmas=args.lemmas, exclude_lexnames=exclude, extra_words=extra))
    clip = load_clip(args.clip, args.pretrained, device=args.device)
    result = mine_negative_labels(clip, names, config)
    result.labels.save(args.out)
    counts = result.labels.provenance["counts"]
    print(f"{len(result.labels)} negative labels -> {args.out}")
    for pos, c in counts.items():
        print(f"  {pos}: kept {c['kept']} of {c['candidates']} (threshold {result.thresholds[pos]:.4f})")
    return 0


def _cmd_evaluate_folders(args) -> int:
    from .experiments import EvaluationRun, run_evaluation

    run = EvaluationRun(
        id_source=args.id,
        ood_sources=tuple(_pairs(args.ood, "--ood", "NAME=PATH")),
        class_names=args.class_names,
        data_root=args.data_root,
        clip=args.clip,
        pretrained=args.pretrained,
        negatives=args.negatives,
        finetune=args.finetune,
        classifier=None if args.classifier in (None, "none") else args.classifier,
        classifier_weights=args.classifier_weights,
        ledger_benchmark=args.ledger,
        n_boot=args.n_boot,
        device=args.device,
    )
    result = run_evaluation(args.out, run)
    print((Path(args.out) / "evaluation.md").read_text())
    if "ledger" in result:
        print(result["ledger"].to_string(index=False))
    return 0


def _cmd_evaluate(args) -> int:
    from .experiments import ZeroShotRun, run_zero_shot

    if args.id:
        return _cmd_evaluate_folders(args)
    run = ZeroShotRun(
        clip=args.clip,
        pretrained=args.pretrained,
        classifier=None if args.classifier == "none" else (args.classifier or "miniworld"),
        benchmark_root=args.benchmark,
        negatives=args.negatives,
        n_boot=args.n_boot,
        device=args.device,
    )
    t = time.time()
    result = run_zero_shot(args.out, run)
    print((result.out_dir / "zero_shot.md").read_text())
    acc = ", ".join(f"{k} {100 * v:.1f}%" for k, v in result.accuracy.items())
    print(
        f"ID top-1: {acc}\nFPR95_IDpos: FPR on OOD at 95% TPR on ID (MCM/NegLabel papers); "
        f"FPR95_OODpos: FPR on ID at 95% TPR on OOD (OpenOOD)."
    )
    print(f"wrote {result.out_dir} in {time.time() - t:.0f} s")
    return 0


def _shard_from_env() -> tuple[int, int]:
    """Return ``(rank, world_size)`` as set by ``accelerate launch`` / ``torchrun`` (``(0, 1)`` otherwise)."""
    import os

    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _mask_of(record: dict, kind: str):
    """Return a mini-world source's mask: None (official full image), its subject box or its subject silhouette."""
    import torch

    if kind == "full":
        return None
    from .miniworld.world import Scene, subject_box, subject_mask

    scene = Scene.from_dict(record["meta"])
    if kind == "subject":
        return torch.from_numpy((subject_mask(scene) > 0.05).astype("float32"))[None]
    x0, y0, x1, y1 = subject_box(scene, grow=2)
    mask = torch.zeros(1, 32, 32)
    mask[:, y0:y1, x0:x1] = 1.0
    return mask


def _guidance_scorer(args, clip_model, negatives, id_names: list[str]):
    """Return ``(scorer, name)`` for ``--scorer``: the official classifier energy or the CLIP's own scores.
    ``clip_model()`` and ``negatives()`` give the command's one CLIP and negative-label list (loaded once);
    ``id_names`` are the ID class names of the CLIP's prompts."""
    from .guidance import classifier_scorer, clip_scorer

    if args.scorer.startswith("classifier"):
        from .classifier import load_classifier

        form = "official" if args.target == "official" else "energy"
        clf = load_classifier(args.classifier, weights=args.classifier_weights, device=args.device)
        return classifier_scorer(clf, form=form), f"classifier-{form}"
    from .features import text_features

    if args.target == "official":
        raise ValueError("--target official is the classifier's margin -5; use --target boundary with a CLIP scorer")
    clip = clip_model()
    kind = args.scorer.split("-", 1)[1]
    prompt = "a photo of a {}." if kind == "mcm" else "the nice {}"
    id_text = text_features(clip, [prompt.format(c) for c in id_names], progress=False)
    neg_text = negatives().text_features(clip, progress=False) if kind == "neglabel" else None
    return clip_scorer(clip, id_text, kind, neg_text), args.scorer


def _readable_batches(chosen: list[dict], root: Path, n: int, size: int | None = None, skipped_to: Path | None = None):
    """Yield ``(records, images)`` of ``n`` readable sources at a time (the last batch may be shorter), loading
    the images lazily, so a dataset of any size streams through in memory for ``n`` images.

    An unreadable image is skipped with a warning and, with ``skipped_to``, a ``skipped.jsonl`` line there.
    ``size``: resize the short side to ``size`` and centre-crop (bicubic, antialiased); ``None`` keeps the
    files' size, which must then be the same for every image.
    """
    import torch

    from .data import ImageLoadError, load_image
    from .models import ImageTransform
    from .storage import append_jsonl
    from .synthesis import read_skipped

    resize = ImageTransform(size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)) if size else None
    known = read_skipped(skipped_to) if skipped_to is not None else {}
    records, images, first_size = [], [], None
    for r in chosen:
        try:
            image = load_image(root / r["path"])
        except (ImageLoadError, FileNotFoundError) as e:
            if skipped_to is not None:
                print(f"synood synthesize: skipping source {r['id']}: {e}", file=sys.stderr)
                if r["id"] not in known:
                    append_jsonl(skipped_to / "skipped.jsonl", {"id": r["id"], "reason": f"unreadable image: {e}"})
            continue
        image = resize(image[None])[0] if resize else image
        first_size = first_size or tuple(image.shape[-2:])
        if tuple(image.shape[-2:]) != first_size:
            raise ValueError(
                f"the source images differ in size ({first_size} and {tuple(image.shape[-2:])} at {r['id']}); pass "
                "--size N to resize them to N x N (the in-painting model's resolution: 512 for Stable Diffusion 2, "
                "32 for the mini-world)"
            )
        records.append(r)
        images.append(image)
        if len(records) == n:
            yield records, torch.stack(images)
            records, images = [], []
    if records:
        yield records, torch.stack(images)


def _chosen_sources(args) -> tuple[list[dict], Path, list[str]]:
    """Return ``(source records, the folder their paths start from, ID class names)``: the first ``--per-class``
    images of each class, from ``--sources`` (an ImageFolder tree or an image list) or the mini-world benchmark."""
    if args.sources:
        from .experiments import id_class_names, image_set

        if args.context == "truth":
            raise ValueError("--context truth needs the mini-world's captions; with --sources use --context mllm")
        if args.mask != "full":
            raise ValueError(
                f"--mask {args.mask} needs the mini-world's scene metadata; with --sources use --mask full"
            )
        sources = image_set(args.sources, "sources", True, args.data_root)
        labels = sources.labels
        if (labels < 0).any():
            raise ValueError(
                f"{args.sources}: every source image needs a class label (an ImageFolder tree or a list with labels)"
            )
        names = id_class_names(sources, args.class_names)
        if labels.max() >= len(names):
            raise ValueError(
                f"{args.sources} has label {labels.max()} but --class-names {args.class_names!r} gives {len(names)} "
                "names (an image list has no folder names: pass 'imagenet' or a file of names)"
            )
        root = sources.root
        records = [
            {"id": it.id, "path": str(it.path), "label": int(it.label), "class_name": names[it.label]}
            for it in sources.items
        ]
    else:
        from .miniworld.benchmark import BENCHMARK_SPEC, open_benchmark, read_manifest

        root = open_benchmark(args.benchmark)
        records = read_manifest(root, args.split)
        names = list(BENCHMARK_SPEC.id_classes)
    per_class: dict[str, int] = {}
    chosen = []
    for r in records:
        if per_class.get(r["class_name"], 0) < args.per_class:
            per_class[r["class_name"]] = per_class.get(r["class_name"], 0) + 1
            chosen.append(r)
    if not chosen:
        raise ValueError(f"no source images in {args.sources or root}")
    return chosen, root, names


def _cmd_synthesize(args) -> int:
    """Stream the sources twice: once for the MLLM's context answers and the guidance scores that fix the boundary
    target, once to synthesise, chunk by chunk; memory holds one chunk of images, whatever the dataset's size."""
    import torch

    from .guidance import OFFICIAL_MARGIN, score_quantile
    from .inpainting import GuidanceConfig, InpaintConfig, context_prompt, load_inpaint_pipeline
    from .synthesis import SynthesisConfig, SynthesisSource, synthesize

    chosen, root, id_names = _chosen_sources(args)
    rank, world = _shard_from_env()
    out = Path(args.out)
    loaded: dict = {}

    def clip_model():  # the one CLIP of the command: scorer and labeler share it
        if "clip" not in loaded:
            from .models import load_clip

            loaded["clip"] = load_clip(
                args.clip if args.clip != "none" else "miniworld", args.pretrained, device=args.device
            )
        return loaded["clip"]

    def negatives():  # --negatives, or mined once for the ID classes
        if "negatives" not in loaded:
            from .negatives import NegativeLabels

            if args.negatives:
                loaded["negatives"] = NegativeLabels.load(args.negatives)
            else:  # WordNet 3.0, plus the world's own words for the mini-world
                from .config import MiningConfig
                from .experiments import miniworld_mining_config
                from .negatives import mine_negative_labels

                config = MiningConfig() if args.sources else miniworld_mining_config()
                loaded["negatives"] = mine_negative_labels(clip_model(), id_names, config, progress=False).labels
        return loaded["negatives"]

    scorer, form = _guidance_scorer(args, clip_model, negatives, id_names)
    mllm = None
    if args.context == "mllm":
        from .mllm import describe_context, load_mllm

        mllm = load_mllm(args.mllm, device=args.device)
    # pass 1, 64 images at a time: which sources are readable, their context answers, their guidance scores
    kept, answers, scores = [], {}, []
    skipped_to = out if rank == 0 else None
    if skipped_to is not None:
        out.mkdir(parents=True, exist_ok=True)
    for records, images in _readable_batches(chosen, root, 64, args.size, skipped_to):
        kept += records
        if mllm is not None:
            said = [a for i in range(0, len(images), 32) for a in describe_context(mllm, images[i : i + 32])]
        else:
            said = [", ".join(r["context"]) for r in records]
        answers.update({r["id"]: a for r, a in zip(records, said, strict=True)})
        if args.target != "official":
            with torch.no_grad():
                scores.append(scorer(images.to(args.device)).float().cpu())
    if not kept:
        raise ValueError(f"none of the {len(chosen)} chosen source images of {args.sources or root} could be read")
    target = OFFICIAL_MARGIN if args.target == "official" else score_quantile(torch.cat(scores))
    inpaint = InpaintConfig(num_inference_steps=args.steps, strength=args.strength, guidance_scale=args.cfg)
    guidance = GuidanceConfig(
        rounds=args.rounds,
        step_size=args.step_size,
        target=target,
        normalize=args.normalize,
        official_rounds=args.target == "official",
    )
    config = SynthesisConfig(
        inpaint=inpaint, guidance=guidance, scorer=form, seed=args.seed, batch_size=args.batch_size
    )
    pipe = load_inpaint_pipeline(args.pipeline, device=args.device)
    pipe.set_progress_bar_config(disable=True)
    labeler = None
    if args.clip != "none":
        from .synthesis import negative_labeler

        labeler = negative_labeler(clip_model(), negatives(), args.out if rank == 0 else None)
    # pass 2: synthesise chunk by chunk; a chunk is whole batches, so the batches are those of one long list
    chunk = args.batch_size * max(1, CHUNK_IMAGES // args.batch_size)
    t, written = time.time(), 0
    for records, images in _readable_batches(kept, root, chunk, args.size):
        sources = [
            SynthesisSource(
                r["id"],
                img,
                context_prompt(answers[r["id"]], inpaint),
                {
                    "class_name": r["class_name"],
                    "label": r["label"],
                    "context_answer": answers[r["id"]],
                    "mask": args.mask,
                },
                _mask_of(r, args.mask),
            )
            for r, img in zip(records, images, strict=True)
        ]
        written += sum(1 for _ in synthesize(pipe, sources, scorer, out, config, rank, world, labeler=labeler))
    print(
        f"rank {rank}/{world}: wrote {written} images to {args.out} in {time.time() - t:.0f} s "
        f"(target {target:.3f}, {len(kept)} sources in the run)"
    )
    return 0


def _training_settings(args) -> dict:
    """Return the settings `synood finetune` and `synood ablate` share, as run-dataclass fields."""
    names = ("clip", "pretrained", "adapter_epochs", "label_epochs", "n_boot", "device")
    return {"benchmark_root": args.benchmark, **{name: getattr(args, name) for name in names}}


def _cmd_finetune(args) -> int:
    from .experiments import SynoodRun, run_synood

    run = SynoodRun(synthetic=args.synthetic, **_training_settings(args))
    t = time.time()
    result = run_synood(args.out, run)
    print((Path(args.out) / "synood.md").read_text())
    print(
        f"wrote {args.out} in {time.time() - t:.0f} s ({len(result['logs']['adapter'])} adapter steps, "
        f"{len(result['logs']['labels'])} label steps)"
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
        **_training_settings(args),
    )
    t = time.time()
    run_ablations(args.out, run)
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
    only = [x.strip() for x in args.only.split(",")] if args.only else None
    print(f"SynOOD kit main job: every notebook in order with papermill, then an HTML report in {args.out}/index.html")
    report = run_report(args.out, only=only, parameters=parameters)
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    """Return the ``synood`` argument parser."""
    parser = argparse.ArgumentParser(prog="synood", description="SynOOD research kit")
    sub = parser.add_subparsers(dest="command", required=True)

    world = sub.add_parser("world", help="the offline mini-world")
    world_sub = world.add_subparsers(dest="world_command", required=True)
    build = world_sub.add_parser("build", help="render the benchmark (ImageFolder trees + manifest)")
    build.add_argument("--root", default=None, help="output folder (default: the cache location)")
    build.add_argument("--scale", type=float, default=1.0, help="scale every split's size (quick looks)")
    build.set_defaults(func=_cmd_world_build)

    mine = sub.add_parser("mine", help="mine NegLabel negative labels")
    _add_model_args(mine)
    mine.add_argument("--id-classes", default="miniworld", help="'imagenet', 'miniworld', or a text file of names")
    mine.add_argument("--official-filter", action="store_true", help="drop noun.animal/noun.food (official files)")
    mine.add_argument("--lemmas", default="first", choices=("first", "all"), help="lemmas per synset")
    mine.add_argument("--world-vocabulary", action="store_true", help="add the mini-world's own words")
    mine.add_argument("--out", required=True, help="output JSON (ordered list with provenance)")
    mine.set_defaults(func=_cmd_mine)

    syn = sub.add_parser("synthesize", help="near-boundary OOD synthesis (resumable; shards under accelerate launch)")
    syn.add_argument("--out", required=True, help="output folder (rerun the same command to resume)")
    syn.add_argument("--pipeline", default="miniworld", help="in-painting pipeline folder, hub id, or 'miniworld'")
    syn.add_argument(
        "--classifier", default="miniworld", help="guidance classifier: folder, 'miniworld' or a torchvision name"
    )
    syn.add_argument("--classifier-weights", default=None, help="torchvision weights name, e.g. IMAGENET1K_V2")
    syn.add_argument("--benchmark", default=None, help="built benchmark folder (default: the cache location)")
    syn.add_argument("--split", default="id_train", help="source split")
    syn.add_argument(
        "--sources",
        default=None,
        help="source images instead of the mini-world benchmark: an ImageFolder tree (ImageNet train) or an image "
        "list '<path> <label>' per line; needs --context mllm",
    )
    syn.add_argument("--data-root", default=None, help="folder an image list's paths start from (default: its folder)")
    syn.add_argument(
        "--class-names",
        default="folders",
        help="ID class names with --sources: 'folders', 'imagenet' (open_clip's names) or a file of names",
    )
    syn.add_argument("--size", type=int, default=None, help="resize sources: short side to N, centre crop N x N")
    syn.add_argument("--per-class", type=int, default=4, help="source images per class")
    syn.add_argument("--context", default="truth", choices=("truth", "mllm"), help="prompt context source")
    syn.add_argument("--mllm", default="miniworld", help="MLLM folder, hub id or 'miniworld' (with --context mllm)")
    syn.add_argument(
        "--target",
        default="boundary",
        choices=("boundary", "official"),
        help="boundary: the 5%% quantile of the guidance score over this run's source images (ID images; "
        "reachable, the same on every shard); official: margin -5 (the official code's, unreachable)",
    )
    syn.add_argument(
        "--scorer",
        default="classifier-energy",
        choices=("classifier-energy", "clip-mcm", "clip-energy", "clip-neglabel"),
        help="guidance scorer: the official classifier energy, or the CLIP's own score",
    )
    syn.add_argument(
        "--mask",
        default="full",
        choices=("full", "box", "subject"),
        help="full: the official full-image mask; box / subject: the source's subject box or silhouette",
    )
    syn.add_argument("--rounds", type=int, default=3, help="noise updates")
    syn.add_argument("--step-size", type=float, default=10.0, help="lr on the initial noise")
    syn.add_argument("--normalize", default="none", choices=("none", "unit", "clip"), help="gradient normalisation")
    syn.add_argument("--steps", type=int, default=20, help="scheduler steps")
    syn.add_argument("--strength", type=float, default=0.6, help="in-painting strength in (0, 1]")
    syn.add_argument("--cfg", type=float, default=8.0, help="classifier-free guidance scale")
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--batch-size", type=int, default=8, help="images per refinement call")
    syn.add_argument("--clip", default="miniworld", help="CLIP that assigns negative labels ('none': skip)")
    syn.add_argument("--pretrained", default=None, help="open_clip pretrained tag with an architecture name")
    syn.add_argument("--negatives", default=None, help="saved negative labels (default: mine for the mini-world)")
    syn.add_argument("--device", default="cpu")
    syn.set_defaults(func=_cmd_synthesize)

    ft = sub.add_parser("finetune", help="SynOOD fine-tuning (stages A and B) and evaluation vs NegLabel")
    _add_model_args(ft)
    ft.add_argument("--synthetic", required=True, help="a `synood synthesize` output folder")
    ft.add_argument("--benchmark", default=None, help="built benchmark folder (default: the cache location)")
    ft.add_argument("--adapter-epochs", type=int, default=3)
    ft.add_argument("--label-epochs", type=int, default=5)
    ft.add_argument("--n-boot", type=int, default=200)
    ft.add_argument("--out", required=True, help="output folder")
    ft.set_defaults(func=_cmd_finetune)

    abl = sub.add_parser("ablate", help="the fine-tuning ablation grid (with the ID-only control) as one table")
    _add_model_args(abl)
    abl.add_argument(
        "--synthetic",
        action="append",
        required=True,
        help="NAME=FOLDER of a `synood synthesize` output (repeat: guided, unguided, CLIP scorer...)",
    )
    abl.add_argument("--n-negatives", default="all", help="comma-separated numbers of negatives kept, or 'all'")
    abl.add_argument(
        "--trainings",
        default="adapter,labels,adapter + labels,joint",
        help="comma-separated: adapter, labels, adapter + labels, joint",
    )
    abl.add_argument("--benchmark", default=None, help="built benchmark folder (default: the cache location)")
    abl.add_argument("--adapter-epochs", type=int, default=3)
    abl.add_argument("--label-epochs", type=int, default=5)
    abl.add_argument("--n-boot", type=int, default=0, help="bootstrap replicates for intervals (0: none)")
    abl.add_argument("--out", required=True, help="output folder")
    abl.set_defaults(func=_cmd_ablate)

    demo = sub.add_parser("demo", help="the main job: run every notebook with papermill and render an HTML report")
    demo.add_argument("--out", default="outputs/demo", help="output folder (index.html is the summary page)")
    demo.add_argument("--only", default="", help="comma-separated notebook names or NN prefixes (default: all)")
    demo.add_argument(
        "--param",
        action="append",
        default=[],
        help="KEY=VALUE papermill parameter for every notebook that declares it (repeat)",
    )
    demo.set_defaults(func=_cmd_demo)

    p = sub.add_parser("evaluate", help="OOD evaluation: the mini-world benchmark, or any ID/OOD folders and lists")
    _add_model_args(p)
    p.add_argument(
        "--classifier",
        default=None,
        help="classifier folder, torchvision name, or 'none' (mini-world default: 'miniworld')",
    )
    p.add_argument("--benchmark", default=None, help="built benchmark folder (default: build in the cache)")
    p.add_argument("--negatives", default=None, help="saved negative labels (default: mine, cached)")
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap replicates for intervals (0: none)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--id", default=None, help="ID ImageFolder root or image list (instead of the mini-world)")
    p.add_argument("--ood", action="append", default=[], help="NAME=PATH of an OOD folder or image list")
    p.add_argument("--class-names", default="folders", help="'folders', 'imagenet', or a file of names")
    p.add_argument("--data-root", default=None, help="root of the paths in image-list files")
    p.add_argument("--finetune", default=None, help="SynOOD checkpoint (adds the SynOOD score)")
    p.add_argument("--classifier-weights", default=None, help="torchvision weights name (IMAGENET1K_V2)")
    p.add_argument(
        "--ledger", default=None, help="reported-numbers benchmark to print beside, e.g. 'ImageNet-1k (MOS)'"
    )
    p.set_defaults(func=_cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``synood`` command line; return the exit status."""
    from .models import WeightsNotFoundError
    from .storage import OutputError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (WeightsNotFoundError, FileNotFoundError, ValueError, OutputError) as e:
        print(f"synood {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
