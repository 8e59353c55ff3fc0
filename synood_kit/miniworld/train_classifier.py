"""Train the mini-world ID classifier: a torchvision ResNet (BasicBlock, one block per stage) on the 12 ID
categories, for the MSP/energy baselines and the official recipe's classifier-energy guidance.

Training images are fresh ID scenes from their own random stream (never benchmark images), as an ImageNet
classifier is trained on ImageNet-train; inputs are resized from 32 to 64 pixels by the model's own
transform so that the stock ResNet stem (stride 4) keeps enough resolution for the shapes.

Usage::

    python -m synood_kit.miniworld.train_classifier --run runs/miniworld_classifier --out assets/miniworld/classifier
    python -m synood_kit.miniworld.train_classifier --smoke --run /tmp/clf --out /tmp/clf/model

Running the same command again resumes from ``<run>/checkpoint``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..models import ImageTransform
from .benchmark import BENCHMARK_SPEC
from .training import load_checkpoint, log_step, save_checkpoint, set_threads, trainer_parser
from .world import render, sample_scene

ARCH = "resnet"
ARCH_KWARGS = {"block": "basic", "layers": [1, 1, 1, 1], "num_classes": len(BENCHMARK_SPEC.id_classes)}
PREPROCESS = {"size": 64, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
_STREAM = 31  # random-stream code of the classifier's training scenes (benchmark streams use 2025 + split)


def render_id_pool(n: int, seed: int = 0, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Render ``n`` ID training scenes, balanced over the ID classes.

    Returns:
        ``(images (n, 3, 32, 32) uint8, labels (n,) int64)``.
    """
    from tqdm.auto import tqdm

    classes = BENCHMARK_SPEC.id_classes
    images = np.empty((n, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(n) % len(classes)
    for i in tqdm(range(n), desc="classifier pool", disable=not progress):
        rng = np.random.default_rng([seed, _STREAM, i])
        images[i] = render(sample_scene(rng, categories=(classes[labels[i]],)))
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels).long()


def _augment(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Random horizontal flips and shifts of up to 2 pixels (reflect-padded), per batch half."""
    if rng.random() < 0.5:
        x = x.flip(-1)
    dx, dy = rng.integers(-2, 3, size=2)
    x = F.pad(x, (2, 2, 2, 2), mode="reflect")
    return x[..., 2 + dy : 2 + dy + 32, 2 + dx : 2 + dx + 32]


def train(
    run_dir: str | Path,
    out_dir: str | Path | None,
    steps: int = 750,
    batch_size: int = 128,
    pool_size: int = 24000,
    lr: float = 2e-3,
    seed: int = 0,
    image_size: int = PREPROCESS["size"],
    checkpoint_every: int = 250,
    eval_every: int = 250,
    progress: bool = True,
) -> dict:
    """Train (or resume) the classifier and export it as a classifier folder.

    Args:
        run_dir: run folder (checkpoint and ``log.jsonl``).
        out_dir: export folder (``classifier_config.json`` + ``model.safetensors``); ``None`` to skip.
        steps: optimisation steps.
        batch_size: images per step.
        pool_size: training scenes rendered once.
        lr: peak AdamW learning rate (linear warm-up over 100 steps, cosine decay).
        seed: seed of initialisation, pool and batches.
        image_size: input side the 32x32 renders are resized to.
        checkpoint_every: steps between checkpoints.
        eval_every: steps between held-out accuracy monitors (logged).
        progress: show progress bars.

    Returns:
        The last log record.
    """
    from tqdm.auto import tqdm

    from ..classifier import build_classifier, save_classifier_folder

    set_threads()
    torch.manual_seed(seed)
    run_dir = Path(run_dir)
    model = build_classifier(ARCH, ARCH_KWARGS)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    state = load_checkpoint(run_dir, model, optimizer)
    start = state["step"] if state else 0
    images, labels = render_id_pool(pool_size, seed, progress)
    held_x, held_y = render_id_pool(max(24, pool_size // 20), seed + 1000, progress=False)
    preprocess = {**PREPROCESS, "size": image_size}
    transform = ImageTransform(image_size, tuple(preprocess["mean"]), tuple(preprocess["std"]))
    record: dict = {"step": start}
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="train classifier", disable=not progress)
    t0 = time.time()
    model.train()
    for step in bar:
        rng = np.random.default_rng([seed, 7, step])
        idx = rng.choice(len(images), size=min(batch_size, len(images)), replace=False)
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / steps))
        x = transform(_augment(images[idx].float() / 255, rng))
        loss = F.cross_entropy(model(x), labels[idx], label_smoothing=0.05)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        record = {"step": step + 1, "loss": round(float(loss.detach()), 4), "seconds": round(time.time() - t0, 1)}
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            model.eval()
            with torch.no_grad():
                pred = torch.cat(
                    [model(transform(held_x[i : i + 256].float() / 255)).argmax(1) for i in range(0, len(held_x), 256)]
                )
            model.train()
            record["held_out_accuracy"] = round(float((pred == held_y).float().mean()), 4)
            bar.set_postfix(acc=record["held_out_accuracy"], loss=f"{float(loss.detach()):.3f}")
            log_step(run_dir, record)
        if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
            save_checkpoint(run_dir, model, optimizer, step + 1)
    if out_dir is not None:
        save_classifier_folder(
            model.eval(),
            ARCH,
            ARCH_KWARGS,
            list(BENCHMARK_SPEC.id_classes),
            out_dir,
            preprocess,
            dtype=torch.float16,
            extra={"trained_by": "python -m synood_kit.miniworld.train_classifier", "steps": steps},
        )
    return record


def main(argv: list[str] | None = None) -> None:
    parser = trainer_parser(__doc__, "classifier", steps=750, batch_size=128, pool_size=24000, lr=2e-3)
    parser.add_argument("--image-size", type=int, default=PREPROCESS["size"])
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.batch_size, args.pool_size = 4, 8, 48
    record = train(
        args.run,
        args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        pool_size=args.pool_size,
        lr=args.lr,
        seed=args.seed,
        image_size=args.image_size,
        checkpoint_every=2 if args.smoke else 250,
        eval_every=2 if args.smoke else 250,
    )
    print(record)


if __name__ == "__main__":
    main()
