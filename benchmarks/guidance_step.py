"""Pick the guidance step by where the samples land: boundary placement of classifier-energy refinement on a
benchmark, for several step sizes in one unit (``--unit per_image``: the gradient of each image's own loss on the
scaled latent z, batch-independent; ``--unit official``: the gradient of the batch-mean loss on z / sf).

For each step size the same sources, prompts and seeds are refined (the preset's rounds, batch and in-painting
call), and the final generation's guidance scores are compared with the target (the preset's quantile of the
sources' own scores): the share of samples within the target band (target +- a quarter of the sources' score
interquartile range) and the median absolute gap. Step 0 is the unguided generation.

    python benchmarks/guidance_step.py [--benchmark miniworld] [--config miniworld] [--per-class 4]
        [--unit per_image] [--scorer classifier-energy] [--normalize none] [--steps 0,0.5,1,2,5,10,20,40]
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch

from synood_kit.inpainting import load_inpaint_pipeline, refine_steps
from synood_kit.prompting import prompt_contexts
from synood_kit.registry import load_run
from synood_kit.synthesis_run import (
    choose_sources,
    context_backend,
    guidance_config,
    guidance_target,
    load_scorer,
    read_sources,
    synthesis_size,
)


def placement(final: np.ndarray, target: float, source_scores: np.ndarray) -> dict:
    """Return the share of ``final`` scores within the target band and their median absolute gap to ``target``."""
    q1, q3 = np.quantile(source_scores, [0.25, 0.75])
    band = 0.25 * (q3 - q1)
    gap = np.abs(final - target)
    return {"in_band": float(np.mean(gap <= band)), "median_gap": float(np.median(gap)), "band": float(band)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", default="miniworld")
    parser.add_argument("--data-root", default="")
    parser.add_argument("--config", default="")
    parser.add_argument("--per-class", type=int, default=4)
    parser.add_argument("--steps", default="0,0.5,1,2,5,10,20,40")
    parser.add_argument("--unit", default="per_image", choices=["per_image", "official"])
    parser.add_argument("--scorer", default="", help="guidance scorer (default: the preset's)")
    parser.add_argument("--normalize", default="", help="gradient normalisation (default: the preset's)")
    args = parser.parse_args()
    bench, preset = load_run(args.benchmark, args.data_root, args.config or None)
    changes = {"synthesis.sources.per_class": args.per_class}
    if args.scorer:
        changes["synthesis.scorer"] = args.scorer
    if args.normalize:
        changes["synthesis.guidance.normalize"] = args.normalize
    preset = preset.override(changes)
    settings, models = preset.synthesis, preset.models
    pipe = load_inpaint_pipeline(models.pipeline, device=models.device)
    pipe.set_progress_bar_config(disable=True)
    size = synthesis_size(pipe, settings.sources, models.pipeline)
    scorer, name = load_scorer(bench, preset)
    items = choose_sources(bench.id_train, settings.sources)
    kept, images = next(read_sources(items, size, len(items)))
    with torch.no_grad():
        source_scores = torch.cat([scorer(images[i : i + 64]) for i in range(0, len(images), 64)]).numpy()
    target = guidance_target(torch.as_tensor(source_scores), settings)
    rows = prompt_contexts(
        context_backend(settings, models, bench),
        list(zip([it.id for it in kept], images, strict=True)),
        "/tmp/guidance_step_contexts.jsonl",
        settings.prompting,
        progress=False,
        inpaint=settings.inpaint,
    )
    prompts = [r["prompt"] for r in rows]
    bs = settings.batch_size
    print(f"{bench.name}, {name}, {len(kept)} sources at {size} px, batch {bs}, target {target:.3f}")
    other = "per_image" if args.unit == "official" else "official"
    print(f"step ({args.unit}) | {other} equivalent | in band | median |gap| | mean final score")
    for step in (float(s) for s in args.steps.split(",")):
        rounds = settings.guidance.rounds if step > 0 else 0
        guidance = dataclasses.replace(
            guidance_config(settings, target), step_size=step, rounds=rounds, step_unit=args.unit
        )
        final = []
        for i in range(0, len(kept), bs):
            generator = torch.Generator().manual_seed(settings.seed + i)
            *_, last = refine_steps(
                pipe, images[i : i + bs], prompts[i : i + bs], scorer, guidance, settings.inpaint, generator=generator
            )
            final.append(last.score.numpy())
        final = np.concatenate(final)
        p = placement(final, target, source_scores)
        sf = pipe.vae.config.scaling_factor
        equivalent = step * sf / bs if args.unit == "official" else step * bs / sf
        print(f"{step:8.2f} | {equivalent:8.3f} | {p['in_band']:.2f} | {p['median_gap']:.3f} | {final.mean():.3f}")


if __name__ == "__main__":
    main()
