"""Batch synthesis: run the refinement loop over many source images, resumably and in shards.

Layout of an output folder::

    images/<source id>.png        the synthetic image (the refinement's last generation)
    records-<rank>.jsonl          one provenance record per image, written after its image
    skipped.jsonl                 one record per source that cannot be synthesised (id, reason)
    synthesis.json                the run's configuration (a rerun must match it)

Guarantees:

* **Deterministic per image.** Every image's noise comes from a generator seeded by ``(seed, source id)``, and
  batches are fixed by position (batch ``k`` is sources ``[k*B, (k+1)*B)``), so an image does not depend on
  which process made it or when.
* **Resumable, exactly once.** A batch is done when all its records are on disk; a rerun skips done batches
  and redoes a partly written one (images are written atomically, so a half-written PNG is never read as
  whole; records are read back deduplicated by id). Killed at any moment and run again, the folder ends
  with every image once, byte-identical to an uninterrupted run.
* **Bad sources are skipped, not fatal.** A source whose image is not ``(3, H, W)`` in ``[0, 1]`` at the run's
  size (the most common one), holds NaN/Inf, or whose mask does not match is left out (before batches are
  formed, so the choice is the same in every process) and recorded with its reason in ``skipped.jsonl``; the
  rest goes on.
* **Sharded.** ``rank``/``world_size`` (e.g. from ``accelerate launch``) take batches ``k`` with
  ``k % world_size == rank``; the union of the shards equals a one-process run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .inpainting import GuidanceConfig, InpaintConfig, refine_steps

__all__ = [
    "SynthesisConfig",
    "SynthesisSource",
    "check_config",
    "image_name",
    "item_seed",
    "label_summary",
    "negative_labeler",
    "read_records",
    "read_skipped",
    "source_problem",
    "synthesize",
    "synthesize_batches",
]


@dataclass(frozen=True)
class SynthesisSource:
    """One source image and its diffusion prompt."""

    id: str  # unique id (becomes the file name)
    image: torch.Tensor  # (3, H, W) in [0, 1]
    prompt: str  # e.g. context_prompt(MLLM answer)
    meta: dict = field(default_factory=dict)  # carried into the record (label, class name, context ...)
    mask: torch.Tensor | None = None  # (1, H, W) in [0, 1], 1 = repaint; None: the official full-image mask


@dataclass(frozen=True)
class SynthesisConfig:
    """A batch synthesis run (recorded in ``synthesis.json``)."""

    inpaint: InpaintConfig = field(default_factory=InpaintConfig)  # the in-painting call
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)  # the refinement
    scorer: str = "classifier-energy"  # a name for the record (the scorer itself is passed in)
    seed: int = 0  # base seed; each image's seed is item_seed(seed, id)
    batch_size: int = 8  # images per refinement call (the unit of resumption)
    run: dict = field(default_factory=dict)  # what else fixes the folder: benchmark, sources, models, target rule

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")


def item_seed(seed: int, item_id: str) -> int:
    """Return the seed of one image: a hash of ``(seed, id)``, independent of order, process and device."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{item_id}".encode()).digest()[:7], "big")


def read_records(out_dir: str | Path) -> dict[str, dict]:
    """Return ``{id: record}`` from every ``records-*.jsonl`` of a folder (a truncated last line is skipped)."""
    from .storage import read_jsonl

    records: dict[str, dict] = {}
    for path in sorted(Path(out_dir).glob("records-*.jsonl")):
        for rec in read_jsonl(path)[0]:
            if isinstance(rec.get("id"), str):
                records.setdefault(rec["id"], rec)
    return records


def read_skipped(out_dir: str | Path) -> dict[str, str]:
    """Return ``{id: reason}`` of the sources a synthesis run left out (``skipped.jsonl``)."""
    from .storage import read_jsonl

    rows = read_jsonl(Path(out_dir) / "skipped.jsonl")[0]
    return {r["id"]: str(r.get("reason", "")) for r in rows if isinstance(r.get("id"), str)}


def source_problem(source: SynthesisSource, size: tuple[int, int] | None = None) -> str | None:
    """Return why ``source`` cannot be synthesised (naming the bad value and what was expected), or ``None``.

    Args:
        source: the source.
        size: the run's ``(H, W)``; ``None`` accepts any size.
    """
    image, mask = source.image, source.mask
    if not isinstance(source.prompt, str) or not source.prompt.strip():
        return f"prompt must be non-empty text, got {source.prompt!r}"
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3 or not image.is_floating_point():
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        return f"image must be a float (3, H, W) tensor in [0, 1], got {shape}"
    if size is not None and tuple(image.shape[-2:]) != tuple(size):
        return f"image is {image.shape[-2]}x{image.shape[-1]}, the run's images are {size[0]}x{size[1]}"
    if not torch.isfinite(image).all():
        return "image holds NaN or Inf values"
    if image.min() < 0 or image.max() > 1:
        return f"image values must lie in [0, 1], got [{float(image.min()):.3g}, {float(image.max()):.3g}]"
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (1, *image.shape[-2:]):
            shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            return f"mask must be (1, {image.shape[-2]}, {image.shape[-1]}) like its image, got {shape}"
        if not torch.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
            return "mask values must be finite and lie in [0, 1]"
    return None


def _usable_sources(sources: Sequence[SynthesisSource]) -> tuple[list[SynthesisSource], dict[str, str]]:
    """Split sources into those that can be synthesised and ``{id: reason}`` of the others."""
    sizes = Counter(tuple(s.image.shape[-2:]) for s in sources if source_problem(s) is None)
    size = sizes.most_common(1)[0][0] if sizes else None  # the run's size: the most common (ties: the first)
    usable, skipped = [], {}
    for s in sources:
        problem = source_problem(s, size)
        if problem is None:
            usable.append(s)
        else:
            skipped[s.id] = problem
    return usable, skipped


def _config_json(config: SynthesisConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def check_config(out: Path, config: SynthesisConfig) -> None:
    """Write ``synthesis.json`` for a new folder, or refuse a folder holding a run of another configuration.

    Raises:
        ValueError: naming each setting that differs (dotted keys) and both values of the first few.
    """
    from .storage import atomic_write_json, setting_differences, value_at

    path = Path(out) / "synthesis.json"
    want = _config_json(config)
    if path.is_file():
        have = json.loads(path.read_text())
        if have != want:
            diff = setting_differences(have, want)
            shown = "; ".join(f"{k}: {value_at(have, k)!r} there, {value_at(want, k)!r} now" for k in diff[:3])
            raise ValueError(
                f"{out} holds a synthesis run with another configuration (differs in {diff}: {shown}); use a new "
                "folder, or the same settings to resume"
            )
    else:
        atomic_write_json(path, want)


def synthesize(
    pipe,
    sources: Sequence[SynthesisSource],
    scorer: Callable[[torch.Tensor], torch.Tensor],
    out_dir: str | Path,
    config: SynthesisConfig | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    labeler: Callable[[torch.Tensor], list[dict]] | None = None,
) -> Iterator[dict]:
    """Synthesise every source of this shard not yet done; yield each new record as it is written.

    Args:
        pipe: a diffusers ``StableDiffusionInpaintPipeline``.
        sources: all sources of the run, in a fixed order (every process passes the same list).
        scorer: the guidance scorer (see :mod:`synood_kit.guidance`).
        out_dir: output folder (created).
        config: the run's settings; must equal the folder's ``synthesis.json`` if it exists.
        rank, world_size: this process's shard.
        progress: show a progress bar.
        labeler: ``(B, 3, H, W) images -> one dict per image`` stored as the record's ``negative_label``
            (see :func:`negative_labeler`).

    Yields:
        The provenance record of each image written by this call.

    Raises:
        ValueError: on duplicate source ids, a bad shard, a folder holding another configuration, or when no
            source can be synthesised. Single bad sources are skipped and recorded (see the module docstring).
    """
    from .storage import OutputLock, append_jsonl

    config = config or SynthesisConfig()
    if not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    ids = [s.id for s in sources]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"duplicate source ids {dup}")
    sources, bad = _usable_sources(sources)
    if bad and not sources:
        raise ValueError(f"no source can be synthesised; first problems: {dict(list(bad.items())[:3])}")
    out = Path(out_dir)
    with OutputLock(out / "locks" / f"rank-{rank}", purpose="synthesis"):
        if rank == 0:
            check_config(out, config)
            known = read_skipped(out)
            for source_id, reason in bad.items():
                if source_id not in known:
                    append_jsonl(out / "skipped.jsonl", {"id": source_id, "reason": reason})
        bs = config.batch_size
        mine = [k for k in range(0, (len(sources) + bs - 1) // bs) if k % world_size == rank]
        batches = [list(sources[k * bs : (k + 1) * bs]) for k in mine]
        yield from synthesize_batches(pipe, batches, scorer, out, config, rank, world_size, progress, labeler)


def synthesize_batches(
    pipe,
    batches: Sequence[Sequence[SynthesisSource]],
    scorer: Callable[[torch.Tensor], torch.Tensor],
    out_dir: str | Path,
    config: SynthesisConfig,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    labeler: Callable[[torch.Tensor], list[dict]] | None = None,
) -> Iterator[dict]:
    """Synthesise the given batches of this shard that are not done yet; yield each new record as it is written.

    The caller fixes the batches (batch ``k`` of a run is its sources ``[k*B, (k+1)*B)``; shard ``rank`` owns
    ``k % world_size == rank``), holds the folder's lock for ``rank`` and has checked its configuration
    (:func:`synthesize` does all three). A batch is done when every image of it has a record.
    """
    from PIL import Image
    from tqdm.auto import tqdm

    from .storage import append_jsonl, atomic_path

    out = Path(out_dir)
    done = read_records(out)
    todo = [batch for batch in batches if not all(s.id in done for s in batch)]
    bar = tqdm(
        total=sum(len(b) for b in batches),
        initial=sum(s.id in done for b in batches for s in b),
        unit="img",
        desc=f"synthesis [{rank}/{world_size}]",
        disable=not progress,
    )  # images done, rate, time left
    for batch in todo:
        images = torch.stack([s.image for s in batch])
        # per image, from its own seed: the initial noise, then the noise that samples its VAE latent
        draws = [_image_noise(pipe, images, item_seed(config.seed, s.id)) for s in batch]
        noise = torch.stack([d[0] for d in draws])
        source_noise = torch.stack([d[1] for d in draws])
        start = time.perf_counter()
        masks = torch.stack([s.mask if s.mask is not None else torch.ones(1, *s.image.shape[-2:]) for s in batch])
        steps = list(
            refine_steps(
                pipe,
                images,
                [s.prompt for s in batch],
                scorer,
                config.guidance,
                config.inpaint,
                masks=masks,
                noise=noise,
                source_noise=source_noise,
                generator=torch.Generator().manual_seed(item_seed(config.seed, batch[0].id)),
            )
        )
        last = steps[-1]
        labels = labeler(last.image) if labeler is not None else [None] * len(batch)
        seconds = time.perf_counter() - start
        written_now = []
        for j, s in enumerate(batch):
            if s.id in done:
                continue
            written_now.append(s.id)
            name = image_name(s.id)
            array = (last.image[j].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            with atomic_path(out / name) as tmp:
                Image.fromarray(array).save(tmp, format="PNG")
            record = {
                "id": s.id,
                "image": name,
                "prompt": s.prompt,
                "seed": item_seed(config.seed, s.id),
                "scorer": config.scorer,
                "scores": [float(st.score[j]) for st in steps],
                "losses": [float(st.loss[j]) for st in steps],
                "rejected": [bool(st.rejected[j]) if st.rejected else False for st in steps],
                "cost": {  # per image, over the whole refinement (GuidanceConfig.recipe sets them)
                    "unet_evals": sum(st.unet_evals for st in steps),
                    "vae_decodes": sum(st.vae_decodes for st in steps),
                    "backward_passes": sum(st.backward_passes for st in steps),
                    "seconds": round(seconds / len(batch), 3),
                },
                "config": _config_json(config),
                "meta": s.meta,
                "negative_label": labels[j],
                "rank": rank,
            }
            append_jsonl(out / f"records-{rank}.jsonl", record)
            done[s.id] = record
            yield record
        bar.update(len(written_now))
    bar.close()


_SAFE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*")


def image_name(source_id: str) -> str:
    """Return where a source's synthetic image goes inside the output folder: ``images/<id>.png`` for an id made of
    plain path segments (``n01440764/n01440764_10026``), else ``images/id-<hash>.png`` (an id from a list or
    manifest can hold anything; it never leaves the folder)."""
    if _SAFE_ID.fullmatch(source_id) and len(source_id) <= 200:
        return f"images/{source_id}.png"
    return f"images/id-{hashlib.sha256(source_id.encode()).hexdigest()[:24]}.png"


def negative_labeler(
    clip, negatives, out_dir: str | Path | None = None, parts_of_speech: tuple[str, ...] = ("noun", "adj")
) -> Callable[[torch.Tensor], list[dict]]:
    """Return a labeler that gives each synthetic image its argmax negative label (docs/method.md, stage 5).

    Args:
        clip: a :class:`~synood_kit.models.ClipModel`.
        negatives: the ordered :class:`~synood_kit.negatives.NegativeLabels`.
        out_dir: if given, the list is saved there as ``negatives.json`` (indices in records refer to it).
        parts_of_speech: labels that may be assigned; the official code uses both, and about half of its
            synthetic images map to adjective prompts (docs/method.md, defect 6): ``("noun",)`` restricts to nouns.
    """
    from .negatives import assign_negative_labels

    allowed = torch.tensor([p in parts_of_speech for p in negatives.pos])
    if not allowed.any():
        raise ValueError(f"no negative label has a part of speech in {parts_of_speech}")
    rows = torch.nonzero(allowed).flatten()
    neg_text = negatives.text_features(clip, progress=False)[rows].to(clip.device)  # text features come on the CPU
    if out_dir is not None:
        negatives.save(Path(out_dir) / "negatives.json")

    def label(images: torch.Tensor) -> list[dict]:
        with torch.no_grad():
            feats = clip.encode_images(images)
        index, prob = assign_negative_labels(feats, neg_text)
        out = []
        for i, p in zip(index.tolist(), prob.tolist(), strict=True):
            k = int(rows[i])
            out.append({"index": k, "word": negatives.words[k], "pos": negatives.pos[k], "probability": round(p, 5)})
        return out

    return label


def _image_noise(pipe, images: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return one image's initial noise and VAE-sampling noise, both drawn from a generator seeded by ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    shape = _latent_shape(pipe, images)
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


def _latent_shape(pipe, images: torch.Tensor) -> tuple[int, ...]:
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    return (pipe.vae.config.latent_channels, images.shape[-2] // factor, images.shape[-1] // factor)


def label_summary(records: dict[str, dict] | list[dict], top: int = 12) -> dict:
    """Return which negative labels a synthesis folder's images got (docs/method.md, stage 5).

    Returns:
        ``n`` (labelled images), ``distinct`` labels, the ``top`` most common ``(word, count)`` and the share of
        each part of speech (the official code gives about half of the images an adjective, defect 6).
    """
    rows = [r for r in (records.values() if isinstance(records, dict) else records) if r.get("negative_label")]
    words = Counter(r["negative_label"]["word"] for r in rows)
    pos = Counter(r["negative_label"]["pos"] for r in rows)
    return {
        "n": len(rows),
        "distinct": len(words),
        "most_common": words.most_common(top),
        "pos_share": {p: c / max(len(rows), 1) for p, c in sorted(pos.items())},
    }
