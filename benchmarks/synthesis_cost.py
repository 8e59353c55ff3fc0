"""Cost of guided vs unguided synthesis per image on the mini-world, measured in one run.

Unguided: one in-painting generation (strength 0.6, 20 steps, CFG 8). Official: 3 rounds, each a generation
plus a differentiable decode and classifier backward pass, the last gradient thrown away. Kit default: 3 noise
updates then the generation they shape (4 generations, 3 backward passes).

    python benchmarks/synthesis_cost.py [--n 16] [--batch-size 8] [--pipeline miniworld] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from synood_kit.classifier import load_classifier
from synood_kit.guidance import OFFICIAL_MARGIN, boundary_target, classifier_scorer
from synood_kit.inpainting import GuidanceConfig, InpaintConfig, load_inpaint_pipeline, refine_steps
from synood_kit.miniworld.benchmark import BENCHMARK_SPEC
from synood_kit.miniworld.world import render, sample_scene


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=16, help="images per recipe")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--pipeline", default="miniworld")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    pipe = load_inpaint_pipeline(args.pipeline, device=args.device)
    pipe.set_progress_bar_config(disable=True)
    clf = load_classifier("miniworld", device=args.device)
    scenes = [
        sample_scene(np.random.default_rng([5150, i]), categories=BENCHMARK_SPEC.id_classes) for i in range(args.n)
    ]
    images = torch.from_numpy(np.stack([render(s) for s in scenes])).permute(0, 3, 1, 2).float() / 255
    prompts = [f"A photo only remain {', '.join(s.context())}." for s in scenes]
    energy = classifier_scorer(clf)
    recipes = {
        "unguided": (energy, GuidanceConfig(rounds=0)),
        "official (3 rounds, margin -5)": (
            classifier_scorer(clf, "official"),
            GuidanceConfig(rounds=3, target=OFFICIAL_MARGIN, official_rounds=True),
        ),
        "kit default (3 updates + final)": (energy, GuidanceConfig(rounds=3, target=boundary_target(energy, images))),
    }
    config = InpaintConfig()
    results = {}
    for name, (scorer, guidance) in recipes.items():
        t = time.perf_counter()
        unet = decodes = 0
        for i in range(0, args.n, args.batch_size):
            for step in refine_steps(
                pipe,
                images[i : i + args.batch_size],
                prompts[i : i + args.batch_size],
                scorer,
                guidance,
                config,
                generator=torch.Generator().manual_seed(i),
            ):
                unet += step.unet_evals * len(step.image)
                decodes += step.vae_decodes * len(step.image)
        results[name] = ((time.perf_counter() - t) / args.n, unet / args.n, decodes / args.n)
    base = results["unguided"][0]
    print(f"{args.n} images, batch {args.batch_size}, device {args.device}, {torch.get_num_threads()} threads")
    for name, (sec, unet, dec) in results.items():
        print(
            f"{name:34s} {sec:7.3f} s/image  ratio {sec / base:5.2f}  UNet evals/image {unet:5.0f}  decodes/image {dec:.0f}"
        )


if __name__ == "__main__":
    main()
