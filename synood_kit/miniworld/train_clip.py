"""Train the mini-world CLIP (open_clip format) from scratch on the world's pretraining data.

Recipe (from the pilots in ``MINIWORLD_NOTES.md``): an open_clip CLIP with a convolutional image tower
(``ModifiedResNet``) and a small text transformer over open_clip's own BPE tokenizer; a supervised warm-up of
the image tower with subject, colour, background, pattern and extras heads together (a shape-only warm-up
crowds out context), then a multi-positive contrastive loss in which every caption that is true of an image
counts as its positive, with the heads kept at a small weight.

Usage::

    python -m synood_kit.miniworld.train_clip --run runs/clip --out assets/miniworld/clip
    python -m synood_kit.miniworld.train_clip --smoke --run /tmp/clip-smoke --out /tmp/clip-smoke/model

Running the same command again resumes from ``<run>/checkpoint``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .pretraining import HEAD_SIZES, build_pool, caption_truth, head_targets, image_attributes, sample_caption
from .training import load_checkpoint, log_step, save_checkpoint, set_threads, trainer_parser

CLIP_CFG = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 24, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}
PREPROCESS_CFG = {"size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bicubic"}


class ClipWithHeads(torch.nn.Module):
    """The CLIP being trained plus the warm-up heads on its image embedding (dropped at export)."""

    def __init__(self, cfg: dict):
        super().__init__()
        import open_clip

        self.clip = open_clip.model.CLIP(**cfg)
        self.heads = torch.nn.ModuleDict({k: torch.nn.Linear(cfg["embed_dim"], n) for k, n in HEAD_SIZES.items()})


def _normalise(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(PREPROCESS_CFG["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(PREPROCESS_CFG["std"]).view(1, 3, 1, 1)
    return (images - mean) / std


def _head_loss(model: ClipWithHeads, emb: torch.Tensor, scenes: list) -> torch.Tensor:
    targets = head_targets(scenes)
    loss = emb.new_zeros(())
    for name, head in model.heads.items():
        out = head(emb)
        if name == "extras":
            loss = loss + F.binary_cross_entropy_with_logits(out, targets[name].float())
        else:
            loss = loss + F.cross_entropy(out, targets[name])
    return loss


def _multi_positive_loss(logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    masked = logits.masked_fill(~truth, float("-inf"))
    i2t = torch.logsumexp(logits, 1) - torch.logsumexp(masked, 1)
    t2i = torch.logsumexp(logits, 0) - torch.logsumexp(masked, 0)
    return 0.5 * (i2t.mean() + t2i.mean())


@torch.no_grad()
def quick_zero_shot(clip, tokenizer, n_per_class: int = 25, seed: int = 123) -> float:
    """Return zero-shot top-1 over the 16 categories with "a photo of a {}." (a training-time monitor)."""
    from .shapes import CATEGORIES
    from .world import render, sample_scene

    names = [c.name for c in CATEGORIES]
    imgs, labels = [], []
    for c, name in enumerate(names):
        for i in range(n_per_class):
            imgs.append(render(sample_scene(np.random.default_rng([seed, c, i]), categories=(name,))))
            labels.append(c)
    x = _normalise(torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255)
    clip.eval()
    img = F.normalize(clip.encode_image(x), dim=-1)
    txt = F.normalize(clip.encode_text(tokenizer([f"a photo of a {n}." for n in names])), dim=-1)
    clip.train()
    return float(((img @ txt.T).argmax(1) == torch.tensor(labels)).float().mean())


def train(
    run_dir: str | Path,
    out_dir: str | Path | None,
    steps: int = 2500,
    warmup_steps: int = 800,
    batch_size: int = 256,
    pool_size: int = 60000,
    lr: float = 2e-3,
    head_weight: float = 0.3,
    seed: int = 0,
    checkpoint_every: int = 250,
    eval_every: int = 250,
    progress: bool = True,
) -> dict:
    """Train (or resume) the mini-world CLIP and export it as an open_clip ``local-dir`` folder.

    Args:
        run_dir: run folder (checkpoint and ``log.jsonl``).
        out_dir: where the final model is exported (``open_clip_config.json`` + safetensors); ``None`` to skip.
        steps: total optimisation steps.
        warmup_steps: steps of supervised head training before the contrastive loss starts.
        batch_size: images per step.
        pool_size: pretraining images rendered once and sampled from.
        lr: peak AdamW learning rate (linear warm-up, cosine decay).
        head_weight: weight of the head loss during the contrastive phase.
        seed: seed of initialisation, pool and batches.
        checkpoint_every: steps between checkpoints.
        eval_every: steps between zero-shot monitors (logged).
        progress: show a progress bar.

    Returns:
        The last log record.
    """
    import open_clip
    from tqdm.auto import tqdm

    from ..models import save_clip_folder

    set_threads()
    torch.manual_seed(seed)
    run_dir = Path(run_dir)
    model = ClipWithHeads(CLIP_CFG)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    state = load_checkpoint(run_dir, model, optimizer)
    start = state["step"] if state else 0
    pool = build_pool(pool_size, seed=seed, progress=progress)
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=CLIP_CFG["text_cfg"]["context_length"])
    attrs = [image_attributes(s) for s in pool.scenes]
    record: dict = {"step": start}
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="train clip", disable=not progress)
    t0 = time.time()
    model.train()
    for step in bar:
        rng = np.random.default_rng([seed, 7, step])
        idx = rng.choice(len(pool), size=batch_size, replace=False)
        scenes = [pool.scenes[i] for i in idx]
        for group in optimizer.param_groups:
            warm = min(1.0, (step + 1) / 200)
            group["lr"] = lr * warm * 0.5 * (1 + math.cos(math.pi * step / steps))
        emb = model.clip.encode_image(_normalise(pool.tensor(idx)))
        loss_heads = _head_loss(model, emb, scenes)
        loss = loss_heads
        loss_clip = torch.zeros(())
        if step >= warmup_steps:
            caps = [sample_caption(s, rng) for s in scenes]
            txt = model.clip.encode_text(tokenizer([c[0] for c in caps]))
            logits = model.clip.logit_scale.exp().clamp(max=100) * F.normalize(emb, dim=-1) @ F.normalize(txt, dim=-1).T
            loss_clip = _multi_positive_loss(logits, caption_truth([attrs[i] for i in idx], [c[1] for c in caps]))
            loss = loss_clip + head_weight * loss_heads
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.clip.logit_scale.clamp_(0, math.log(100))
        record = {
            "step": step + 1,
            "loss_heads": round(float(loss_heads.detach()), 4),
            "loss_clip": round(float(loss_clip.detach()), 4),
            "seconds": round(time.time() - t0, 1),
        }
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            record["zero_shot_16"] = quick_zero_shot(model.clip, tokenizer)
            bar.set_postfix(zs=f"{record['zero_shot_16']:.3f}", loss=f"{float(loss.detach()):.3f}")
            log_step(run_dir, record)
        if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
            save_checkpoint(run_dir, model, optimizer, step + 1)
    if out_dir is not None:
        save_clip_folder(model.clip, CLIP_CFG, out_dir, PREPROCESS_CFG, dtype=torch.float16)
    return record


def main(argv: list[str] | None = None) -> None:
    parser = trainer_parser(__doc__, "clip", steps=2500, batch_size=256, pool_size=60000, lr=2e-3)
    parser.add_argument("--warmup-steps", type=int, default=800)
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.warmup_steps, args.batch_size, args.pool_size = 4, 2, 16, 64
    record = train(
        args.run,
        args.out,
        steps=args.steps,
        warmup_steps=args.warmup_steps,
        batch_size=args.batch_size,
        pool_size=args.pool_size,
        lr=args.lr,
        seed=args.seed,
        checkpoint_every=2 if args.smoke else 250,
        eval_every=2 if args.smoke else 250,
    )
    print(record)


if __name__ == "__main__":
    main()
