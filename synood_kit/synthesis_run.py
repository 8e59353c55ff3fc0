"""The synthesis workflow over a benchmark (docs/method.md, stages 1-5), as one library call.

:func:`run_synthesis` chooses ID training images of a :class:`~synood_kit.benchmark.Benchmark`, asks for each
image's context through a prompting backend and :func:`~synood_kit.prompting.parse_reply`, fixes the boundary
target from the guidance scores of those training images, in-paints with energy-gradient refinement and ties every
synthetic image to its argmax negative label. The command line (``synood synthesize``) and the notebooks call it
with a :class:`~synood_kit.preset.Preset`; its errors reach the caller as exceptions.

Sources stream through memory: one pass of 64 images at a time finds the readable sources, scores them for the
target and asks for the context of this shard's sources; then synthesis reads this shard's batches a chunk at a
time. Memory holds one chunk whatever the dataset's size. The output folder is resumable and shardable exactly as
:func:`synood_kit.synthesis.synthesize` describes; its ``synthesis.json`` records the benchmark, the sources, the
models and the target, and a folder made with other settings is refused.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .inpainting import GuidanceConfig, InpaintConfig
from .prompting import PromptingConfig

__all__ = [
    "SCORERS",
    "SourcesConfig",
    "SynthesisResult",
    "SynthesisSettings",
    "choose_sources",
    "context_backend",
    "guidance_config",
    "guidance_scorer",
    "guidance_target",
    "load_scorer",
    "native_size",
    "read_sources",
    "run_synthesis",
    "score_images",
    "shard_from_env",
    "synthesis_size",
]

SCORERS = ("classifier-energy", "clip-mcm", "clip-energy", "clip-neglabel")
SELECTIONS = ("first", "jpeg_bytes_per_pixel")


def _positive_int(value, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class SourcesConfig:
    """Stage 1: which ID training images are synthesised from (docs/method.md, stage 1)."""

    per_class: int = 4  # source images per ID class (official 50)
    selection: str = "first"  # "first" in the split's order, or "jpeg_bytes_per_pixel" (official: the largest)
    size: int | None = None  # side the sources are resized to (short side, centre crop); None: the pipeline's own
    allow_below_native: bool = False  # let a size below the pipeline's native resolution through (e.g. 32 px on SD-2)

    def __post_init__(self) -> None:
        _positive_int(self.per_class, "SourcesConfig.per_class")
        if self.selection not in SELECTIONS:
            raise ValueError(f"SourcesConfig.selection must be one of {SELECTIONS}, got {self.selection!r}")
        if self.size is not None:
            _positive_int(self.size, "SourcesConfig.size")
            if self.size < 8:
                raise ValueError(f"SourcesConfig.size must be at least 8 pixels, got {self.size}")


# The mini-world's refinement recipe, chosen by measurement (docs/synthesis_cost.md): of the recipes whose placement
# of the guidance score lies inside the full recipe's 95% bootstrap interval on both measures (share in the target
# band, median gap to the target), at 48 and at 120 sources, re-running the last 2 denoising steps per round (with
# the per-image step raised to 20) is the cheapest: 36 UNet evaluations per image, 1.5x unguided, against 96 for
# the full recipe (GuidanceConfig's own default, kept by the paper and official presets with the official step).
MINIWORLD_GUIDANCE = GuidanceConfig(step_size=20.0, recipe="last_steps", rerun_steps=2)


@dataclass(frozen=True)
class SynthesisSettings:
    """Stages 1-5 of a synthesis run (defaults: the kit's mini-world recipe; presets hold the paper's)."""

    sources: SourcesConfig = field(default_factory=SourcesConfig)  # stage 1
    context: str = "truth"  # stage 2: "truth" (the benchmark's annotations) or "mllm" (the preset's MLLM)
    prompting: PromptingConfig = field(default_factory=PromptingConfig)  # question, parser fallback, truncation
    inpaint: InpaintConfig = field(default_factory=InpaintConfig)  # stage 3 (official: strength 0.6, 20 steps, CFG 8)
    guidance: GuidanceConfig = field(default_factory=lambda: MINIWORLD_GUIDANCE)  # stage 4 (the run sets its target)
    scorer: str = "classifier-energy"  # guidance scorer: the official classifier energy, or the CLIP's own score
    target: str = "boundary"  # "boundary": a quantile of the scorer over the run's ID training sources; "official": -5
    target_quantile: float = 0.05  # the boundary quantile (0.05: the threshold that keeps 95% of ID, FPR95's)
    mask: str = "full"  # "full" (official: the whole image), or "box"/"subject" where the benchmark knows them
    seed: int = 0  # base seed; each image's noise is seeded by (seed, source id)
    batch_size: int = 8  # images per refinement call (official 2); the unit of resumption
    chunk_images: int = 512  # source images held in memory at once (rounded down to whole batches)
    label_parts_of_speech: tuple[str, ...] = ("noun", "adj")  # stage 5: which negatives an image may get

    def __post_init__(self) -> None:
        if self.context not in ("truth", "mllm"):
            raise ValueError(f"SynthesisSettings.context must be 'truth' or 'mllm', got {self.context!r}")
        if self.scorer not in SCORERS:
            raise ValueError(f"SynthesisSettings.scorer must be one of {SCORERS}, got {self.scorer!r}")
        if self.target not in ("boundary", "official"):
            raise ValueError(f"SynthesisSettings.target must be 'boundary' or 'official', got {self.target!r}")
        if self.target == "official" and not self.scorer.startswith("classifier"):
            raise ValueError(
                "target 'official' is the classifier's margin -5; use target 'boundary' with a CLIP scorer"
            )
        if not (isinstance(self.target_quantile, float) and 0.0 < self.target_quantile < 1.0):
            raise ValueError(f"SynthesisSettings.target_quantile must be in (0, 1), got {self.target_quantile!r}")
        if self.mask not in ("full", "box", "subject"):
            raise ValueError(f"SynthesisSettings.mask must be 'full', 'box' or 'subject', got {self.mask!r}")
        _positive_int(self.batch_size, "SynthesisSettings.batch_size")
        _positive_int(self.chunk_images, "SynthesisSettings.chunk_images")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"SynthesisSettings.seed must be an integer, got {self.seed!r}")
        if self.guidance.target is not None or self.guidance.official_rounds:
            raise ValueError(
                "SynthesisSettings.guidance.target and .official_rounds are set by the run from `target` "
                "('boundary': a quantile of the ID training sources' scores; 'official': margin -5, official rounds)"
            )
        steps, strength = self.inpaint.num_inference_steps, self.inpaint.strength
        if int(steps * strength) < 1:  # diffusers denoises int(steps * strength) steps: none would be an IndexError
            raise ValueError(
                f"inpaint.num_inference_steps x inpaint.strength = {steps} x {strength} leaves no denoising step; "
                f"need num_inference_steps >= {math.ceil(1 / strength)} at strength {strength}"
            )
        if not self.label_parts_of_speech or not set(self.label_parts_of_speech) <= {"noun", "adj"}:
            raise ValueError(
                f"label_parts_of_speech must be a non-empty subset of noun, adj: {self.label_parts_of_speech}"
            )


@dataclass
class SynthesisResult:
    """What :func:`run_synthesis` did."""

    out_dir: Path
    written: int  # images this call wrote (0 when everything was already done)
    sources: int  # readable sources in the run (all shards)
    skipped: dict  # {source id: reason} of the chosen sources that could not be read
    target: float  # the guidance target
    size: int  # the side the sources were synthesised at, pixels
    seconds: float  # wall time of this call


def shard_from_env() -> tuple[int, int]:
    """Return ``(rank, world_size)`` as set by ``accelerate launch`` / ``torchrun`` (``(0, 1)`` otherwise)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def native_size(pipe) -> int:
    """Return an in-painting pipeline's native resolution: the UNet's latent side times the VAE's downsampling
    (512 for Stable Diffusion 2, 32 for the mini-world)."""
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    sample = pipe.unet.config.sample_size
    return int((sample[0] if isinstance(sample, (list, tuple)) else sample) * factor)


def synthesis_size(pipe, config: SourcesConfig, pipeline: str = "the pipeline") -> int:
    """Return the side the sources are synthesised at: ``config.size``, or the pipeline's native resolution.

    Raises:
        ValueError: for a size below the pipeline's native resolution unless ``config.allow_below_native``.
    """
    native = native_size(pipe)
    size = config.size or native
    if size < native and not config.allow_below_native:
        raise ValueError(
            f"sources at {size} px are below the in-painting pipeline's native {native} px ({pipeline}): its latents "
            f"would be {size * 8 // native}x{size * 8 // native} of a model trained at 8x that. Use size {native}, or "
            "allow_below_native (--allow-below-native) if that is what you want"
        )
    return size


def guidance_target(scores, settings: SynthesisSettings) -> float:
    """Return the refinement's target (docs/method.md, defect 1): the official margin -5, or the
    ``target_quantile`` of the guidance scores of ID **training** images (the run's sources; never a test split).

    Args:
        scores: ``(N,)`` guidance scores of the ID training images the run synthesises from (unused for the
            official target).
        settings: the run's ``target`` and ``target_quantile``.
    """
    from .guidance import OFFICIAL_MARGIN, score_quantile

    if settings.target == "official":
        return OFFICIAL_MARGIN
    return score_quantile(scores, settings.target_quantile)


def guidance_config(settings: SynthesisSettings, target: float) -> GuidanceConfig:
    """Return the refinement's :class:`~synood_kit.inpainting.GuidanceConfig`: the settings' guidance with the
    run's target, and the official round count where the target is the official one."""
    return dataclasses.replace(settings.guidance, target=float(target), official_rounds=settings.target == "official")


def load_scorer(benchmark, preset, negatives: str | Path | None = None) -> tuple[object, str]:
    """Return ``(scorer, name)`` of ``preset.synthesis.scorer`` for ``benchmark``, loading what it needs (the
    classifier; or the CLIP, and for ``clip-neglabel`` the negatives: the given file, else mined)."""
    from .models import load_clip
    from .negatives import NegativeLabels, mine_negative_labels

    models = preset.models
    loaded: dict = {}

    def clip_model():
        if "clip" not in loaded:
            loaded["clip"] = load_clip(models.clip, models.pretrained, device=models.device)
        return loaded["clip"]

    def negative_labels():
        if negatives is not None:
            return NegativeLabels.load(negatives)
        config = preset.mining_for(benchmark)
        return mine_negative_labels(clip_model(), list(benchmark.class_names), config, progress=False).labels

    return guidance_scorer(preset.synthesis, models, clip_model, negative_labels, benchmark.class_names)


def score_images(scorer, items: list, size: int, device: str = "cpu", batch_size: int = 64):
    """Return the guidance scorer's values on images (``(N,)`` float tensor; unreadable images are left out).

    Args:
        scorer: a guidance scorer (:func:`guidance_scorer`).
        items: :class:`~synood_kit.data.ImageItem` s, or an :class:`~synood_kit.data.ImageSet`.
        size: the side the images are resized to (the synthesis size).
        device: where the scorer runs.
        batch_size: images per call.
    """
    import torch

    items = list(getattr(items, "items", items))
    out = []
    with torch.no_grad():
        for _, images in read_sources(items, size, batch_size):
            out.append(scorer(images.to(device)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def choose_sources(image_set, config: SourcesConfig) -> list:
    """Return the ID training images a run synthesises from: ``per_class`` of each class, in the set's order.

    ``selection="first"`` takes each class's first images; ``"jpeg_bytes_per_pixel"`` (the official choice) the
    ones with the most file bytes per pixel (read from each image's header), ties in the set's order.

    Raises:
        ValueError: if the set has unlabelled images.
    """
    from .data import ImageLoadError, read_image_header

    items = list(image_set.items)
    if any(it.label < 0 for it in items):
        raise ValueError(f"{image_set.name}: every source image needs a class label")
    if config.selection == "jpeg_bytes_per_pixel":

        def density(item) -> float:
            try:
                header = read_image_header(item.path)
                return os.path.getsize(item.path) / max(1, header.width * header.height)
            except (ImageLoadError, OSError):
                return -1.0  # unreadable: last; the streaming pass skips and records it

        order = sorted(range(len(items)), key=lambda i: (-density(items[i]), i))
        items = [items[i] for i in order]
    taken: dict[int, int] = {}
    chosen = []
    for item in items:
        if taken.get(item.label, 0) < config.per_class:
            taken[item.label] = taken.get(item.label, 0) + 1
            chosen.append(item)
    index = {it.id: i for i, it in enumerate(image_set.items)}
    return sorted(chosen, key=lambda it: index[it.id])


def read_sources(items: list, size: int | None, n: int, on_skip=None) -> Iterator[tuple[list, object]]:
    """Yield ``(items, images)`` of ``n`` readable sources at a time (the last batch may be shorter), each image
    resized so that its short side is ``size`` and centre-cropped to ``size x size`` (bicubic, antialiased).

    Args:
        items: :class:`~synood_kit.data.ImageItem` s, in run order.
        size: the side, pixels; ``None`` keeps the files' size, which must then be the same for every image.
        n: images per yielded batch.
        on_skip: ``f(item, reason)`` for an unreadable image (it is left out and the stream goes on).

    Raises:
        ValueError: with ``size=None``, when two images differ in size.
    """
    import torch

    from .data import ImageLoadError, load_image
    from .models import ImageTransform

    resize = ImageTransform(size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)) if size else None
    batch, images, first = [], [], None
    for item in items:
        try:
            image = load_image(item.path)
        except (ImageLoadError, FileNotFoundError) as e:
            if on_skip is not None:
                on_skip(item, f"unreadable image: {e}")
            continue
        image = resize(image[None])[0] if resize else image
        first = first or tuple(image.shape[-2:])
        if tuple(image.shape[-2:]) != first:
            raise ValueError(
                f"images differ in size ({first} and {tuple(image.shape[-2:])} at {item.id}): give a size to resize them to"
            )
        batch.append(item)
        images.append(image)
        if len(batch) == n:
            yield batch, torch.stack(images)
            batch, images = [], []
    if batch:
        yield batch, torch.stack(images)


def guidance_scorer(settings: SynthesisSettings, models, clip_model, negatives, class_names) -> tuple[object, str]:
    """Return ``(scorer, name)`` for ``settings.scorer``: the official classifier energy or the CLIP's own score.

    Args:
        settings: the run's settings (scorer and target).
        models: the preset's :class:`~synood_kit.preset.ModelsConfig`.
        clip_model: ``() -> ClipModel``, the run's one CLIP (loaded on first use).
        negatives: ``() -> NegativeLabels``, the run's negative labels (mined or read on first use).
        class_names: the ID class names of the CLIP's prompts.
    """
    from .guidance import classifier_scorer, clip_scorer

    if settings.scorer.startswith("classifier"):
        from .classifier import load_classifier

        if models.classifier == "none":
            raise ValueError(
                "the classifier-energy scorer needs a classifier; the preset's models.classifier is 'none'"
            )
        form = "official" if settings.target == "official" else "energy"
        clf = load_classifier(models.classifier, weights=models.classifier_weights, device=models.device)
        return classifier_scorer(clf, form=form), f"classifier-{form}"
    from .features import text_features

    clip = clip_model()
    kind = settings.scorer.split("-", 1)[1]
    prompt = "a photo of a {}." if kind == "mcm" else "the nice {}"
    id_text = text_features(clip, [prompt.format(c) for c in class_names], progress=False)
    neg_text = negatives().text_features(clip, progress=False) if kind == "neglabel" else None
    return clip_scorer(clip, id_text, kind, neg_text), settings.scorer


def context_backend(settings: SynthesisSettings, models, benchmark):
    """Return stage 2's prompting backend: the benchmark's ground-truth context (``context="truth"``), the
    preset's MLLM at an OpenAI-compatible endpoint (``models.mllm_endpoint``), or run locally.

    Raises:
        ValueError: for ``"truth"`` on a benchmark that has no ground-truth context.
    """
    from .prompting import AnnotationBackend, OpenAIBackend, TransformersBackend

    if settings.context == "truth":
        if not benchmark.annotations.context:
            raise ValueError(
                f"benchmark {benchmark.name!r} has no ground-truth context; set the synthesis context to 'mllm' "
                "(--context mllm) to ask the preset's MLLM"
            )
        return AnnotationBackend(benchmark.annotations.context, name=f"annotations:{benchmark.name}")
    if models.mllm_endpoint:
        return OpenAIBackend(models.mllm_endpoint, models.mllm, max_tokens=settings.prompting.max_new_tokens)
    return TransformersBackend(models.mllm, device=models.device, max_new_tokens=settings.prompting.max_new_tokens)


def run_synthesis(
    out_dir: str | Path,
    benchmark,
    preset,
    negatives: str | Path | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
) -> SynthesisResult:
    """Synthesise near-boundary OOD images from a benchmark's ID training images into ``out_dir``.

    Args:
        out_dir: the output folder (see :mod:`synood_kit.synthesis`; ``contexts-<rank>.jsonl`` holds stage 2's
            rows, one per source of that shard). Run the same call again to resume.
        benchmark: a :class:`~synood_kit.benchmark.Benchmark` with an ``id_train`` split.
        preset: a :class:`~synood_kit.preset.Preset` (models, ``synthesis`` settings, mining for the negatives).
        negatives: a saved negative-label list; ``None`` mines one with ``preset.mining`` for the benchmark's
            class names (saved as ``negatives.json`` in the folder).
        rank, world_size: this process's shard; default from ``accelerate launch`` (:func:`shard_from_env`).
        progress: show progress bars.

    Returns:
        A :class:`SynthesisResult`.

    Raises:
        ValueError: for settings the benchmark cannot serve (ground-truth context or masks it does not have, a
            size below the pipeline's native resolution unless allowed, no readable source), or a folder holding
            another run.
        WeightsNotFoundError: when a model's weights are not available offline.
        OutputError: when the folder is in use by another run or cannot be written.
    """
    import torch

    from .inpainting import load_inpaint_pipeline
    from .models import check_device, refuse_pickled_weights
    from .negatives import NegativeLabels, mine_negative_labels
    from .prompting import prompt_contexts
    from .storage import append_jsonl, claim_output
    from .synthesis import (
        SynthesisConfig,
        SynthesisSource,
        check_config,
        negative_labeler,
        read_skipped,
        synthesize_batches,
    )

    settings, models = preset.synthesis, preset.models
    env_rank, env_world = shard_from_env()
    rank, world_size = (env_rank if rank is None else rank), (env_world if world_size is None else world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if settings.mask != "full" and benchmark.annotations.masks is None:
        raise ValueError(
            f"mask {settings.mask!r} needs the benchmark's subject annotations, which {benchmark.name!r} does not "
            "have; use the official full-image mask ('full')"
        )
    if negatives is not None and not Path(negatives).is_file():
        raise FileNotFoundError(f"negative-label file not found: {negatives}")
    check_device(models.device)
    image_set = benchmark.id_train
    chosen = choose_sources(image_set, settings.sources)
    backend = context_backend(settings, models, benchmark)
    out = Path(out_dir)
    t_start = time.time()
    refuse_pickled_weights(_pipeline_folder(models.pipeline), "in-painting pipeline")
    pipe = load_inpaint_pipeline(models.pipeline, device=models.device)
    pipe.set_progress_bar_config(disable=True)
    size = synthesis_size(pipe, settings.sources, models.pipeline)  # refused before anything is written
    loaded: dict = {}

    def clip_model():  # the run's one CLIP: scorer and labeler share it
        if "clip" not in loaded:
            from .models import load_clip

            loaded["clip"] = load_clip(models.clip, models.pretrained, device=models.device)
        return loaded["clip"]

    def negative_labels():  # the given list, or mined once for the benchmark's classes
        if "negatives" not in loaded:
            if negatives is not None:
                loaded["negatives"] = NegativeLabels.load(negatives)
            else:
                config = preset.mining_for(benchmark)
                result = mine_negative_labels(clip_model(), list(benchmark.class_names), config, progress=False)
                loaded["negatives"] = result.labels
        return loaded["negatives"]

    scorer, scorer_name = guidance_scorer(settings, models, clip_model, negative_labels, benchmark.class_names)
    # the folder is locked, and checked to hold no other run (settings and sources), before its first write
    run = _run_record(benchmark, preset, size, chosen, backend.name, negatives)
    fixed = {k: v for k, v in dataclasses.asdict(settings).items() if k != "chunk_images"}  # streaming: not a setting
    with claim_output(out, "synthesis", {"run": run, "synthesis": fixed}, lock_folder=out / "locks" / f"rank-{rank}"):
        known_skips = read_skipped(out) if rank == 0 else {}
        skipped: dict[str, str] = {}

        def on_skip(item, reason: str) -> None:
            skipped[item.id] = reason
            if rank == 0 and item.id not in known_skips:
                append_jsonl(out / "skipped.jsonl", {"id": item.id, "path": str(item.path), "reason": reason})

        # pass 1, 64 images at a time: readable sources, their guidance scores, this shard's contexts
        bs = settings.batch_size
        kept, scores, contexts = [], [], {}
        for items, images in read_sources(chosen, size, 64, on_skip):
            mine = []
            for item, image in zip(items, images, strict=True):
                if (len(kept) // bs) % world_size == rank:
                    mine.append((item.id, image))
                kept.append(item)
            if settings.target == "boundary":
                with torch.no_grad():
                    scores.append(scorer(images.to(models.device)).float().cpu())
            if mine:
                rows = prompt_contexts(
                    backend,
                    mine,
                    out / f"contexts-{rank}.jsonl",
                    settings.prompting,
                    progress=False,
                    inpaint=settings.inpaint,
                )
                contexts.update({row["id"]: row for row in rows})
        if not kept:
            raise ValueError(f"none of the {len(chosen)} chosen source images of {image_set.root} could be read")
        target = guidance_target(torch.cat(scores) if scores else torch.zeros(0), settings)
        guidance = guidance_config(settings, target)
        config = SynthesisConfig(
            inpaint=settings.inpaint,
            guidance=guidance,
            scorer=scorer_name,
            seed=settings.seed,
            batch_size=bs,
            run={
                **run,
                "sources": {**run["sources"], "n": len(kept)},
                "target_rule": _target_rule(settings, len(kept)),
            },
        )
        check_config(out, config)  # every shard computes the same configuration; the first to come writes it
        labeler = None
        if models.clip != "none":
            labeler = negative_labeler(
                clip_model(), negative_labels(), out if rank == 0 else None, settings.label_parts_of_speech
            )
        # pass 2: this shard's batches, a chunk of whole batches at a time
        mine_items = [it for i, it in enumerate(kept) if (i // bs) % world_size == rank]
        chunk = bs * max(1, settings.chunk_images // bs)
        written = 0
        for items, images in read_sources(mine_items, size, chunk):
            sources = [
                SynthesisSource(
                    item.id,
                    image,
                    contexts[item.id]["prompt"],
                    {
                        "class_name": benchmark.class_names[item.label],
                        "label": int(item.label),
                        "source": str(item.path),
                        "context_answer": contexts[item.id]["answer"],
                        "context": contexts[item.id]["context"],
                        "fallback": contexts[item.id]["fallback"],
                        "mask": settings.mask,
                    },
                    None if settings.mask == "full" else benchmark.annotations.masks(item.id, settings.mask),
                )
                for item, image in zip(items, images, strict=True)
            ]
            batches = [sources[i : i + bs] for i in range(0, len(sources), bs)]
            written += sum(
                1 for _ in synthesize_batches(pipe, batches, scorer, out, config, rank, world_size, progress, labeler)
            )
    return SynthesisResult(out, written, len(kept), skipped, float(target), size, round(time.time() - t_start, 1))


def _pipeline_folder(source: str) -> str:
    """Return the folder (or hub id) :func:`~synood_kit.inpainting.load_inpaint_pipeline` reads for ``source``."""
    from .config import assets_dir

    return str(assets_dir() / "miniworld" / "inpaint") if source == "miniworld" else source


def sources_fingerprint(items) -> str:
    """Return a hash of the sources a run synthesises from: ids, labels and file sizes (not paths or times, so a
    moved or copied data folder is the same sources; another split, class or render is not)."""
    from .storage import sha256_text

    def size(path) -> int:
        try:
            return os.path.getsize(path)
        except OSError:
            return -1

    return sha256_text("".join(f"{it.id}\t{it.label}\t{size(it.path)}\n" for it in items))


def _target_rule(settings: SynthesisSettings, n_sources: int) -> str:
    if settings.target == "official":
        return "official margin -5 on mean(g) - logsumexp(g)"
    return (
        f"{settings.target_quantile} quantile of the {settings.scorer} score over the run's {n_sources} ID training "
        "sources"
    )


def _run_record(benchmark, preset, size: int, chosen: list, backend: str, negatives) -> dict:
    """Return what fixes a synthesis folder beyond the in-painting call: the benchmark and its classes, the
    sources (the chosen images' fingerprint), the context backend, the models and the boundary target's rule."""
    from .storage import sha256_text

    settings = preset.synthesis
    sources = dataclasses.asdict(settings.sources)
    sources.update(split="id_train", size=size, chosen=len(chosen), fingerprint=sources_fingerprint(chosen))
    return {
        "benchmark": benchmark.identity(),
        "sources": sources,
        "context": {"backend": backend, **dataclasses.asdict(settings.prompting)},
        "models": {k: v for k, v in dataclasses.asdict(preset.models).items() if k != "device"},
        "target_rule": settings.target if settings.target == "official" else f"{settings.target_quantile} quantile",
        "mask": settings.mask,
        "label_parts_of_speech": list(settings.label_parts_of_speech),
        "negatives": None if negatives is None else sha256_text(Path(negatives).read_text(encoding="utf-8")),
    }
