"""Cost and boundary placement of each refinement recipe against unguided synthesis, measured in one run.

For each guidance scorer the same sources, prompts and seeds (the preset's sources, in-painting call, rounds, step
and batch) are synthesised by every recipe (``GuidanceConfig.recipe``; docs in :mod:`synood_kit.inpainting`):

* ``unguided``: one generation (rounds 0), the cost unit;
* ``full``: the kit's default, every round a full regeneration (``rounds`` updates + the final generation);
* ``official_rounds``: the full recipe with the official round count (the last gradient is thrown away);
* ``one_step``: the one-step (Tweedie) clean-latent estimate at the first denoising step for every update round;
* ``last_steps:K``: a full first generation, then rounds that re-run only its last K denoising steps.

``@STEP`` after a recipe overrides its step size (in the preset's ``step_unit``), e.g. ``one_step@20``; ``--step-size``
sets the step of every recipe without one (default: the preset's, 20 for the mini-world's ``last_steps`` recipe).

Printed per recipe: UNet evaluations, VAE decodes and backward passes per image (counted by ``refine_steps``), wall
time per image and its ratio to the unguided run measured here, and boundary placement of the final guidance
scores (``placement`` of ``benchmarks/guidance_step.py``: the share within the target band, target +- a quarter of
the sources' score IQR, and the median |gap| to the target). The full recipe's placement gets a bootstrap interval
over images (95%); ``within`` says whether a recipe's placement lies inside it (both measures).

    python benchmarks/synthesis_cost.py [--per-class 4] [--recipes unguided,full,one_step,last_steps:3]
        [--scorers classifier-energy,clip-neglabel] [--device cpu] [--n-boot 1000]

Threads: ``SYNOOD_THREADS`` (default: torch's). The script runs unchanged on a GPU (``--device cuda``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from guidance_step import placement  # the placement measure of benchmarks/guidance_step.py (same folder)

from synood_kit.inpainting import GuidanceConfig, load_inpaint_pipeline, refine_steps
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


def recipe_guidance(spec: str, base: GuidanceConfig) -> GuidanceConfig:
    """Return the guidance of a recipe spec ``name[:K][@STEP]`` (see the module docstring) from the run's ``base``.

    Raises:
        ValueError: for an unknown recipe name.
    """
    name, _, step = spec.partition("@")
    name, _, k = name.partition(":")
    changes: dict = {"step_size": float(step)} if step else {}
    if name == "unguided":
        changes["rounds"] = 0
    elif name == "official_rounds":
        changes.update(recipe="full", official_rounds=True)
    elif name == "last_steps":
        changes.update(recipe="last_steps", rerun_steps=int(k or base.rerun_steps))
    elif name in ("full", "one_step"):
        changes["recipe"] = name
    else:
        raise ValueError(f"unknown recipe {spec!r}: expected unguided, full, official_rounds, one_step, last_steps:K")
    return dataclasses.replace(base, **changes)


def bootstrap_placement(final: np.ndarray, target: float, source_scores: np.ndarray, n_boot: int, seed: int = 0):
    """Return 95% percentile intervals of ``placement``'s ``in_band`` and ``median_gap`` over images resampled with
    replacement (the band stays the sources': it fixes the measure, not the sample)."""
    rng = np.random.default_rng(seed)
    draws = [placement(final[rng.integers(0, len(final), len(final))], target, source_scores) for _ in range(n_boot)]
    return {
        key: tuple(float(q) for q in np.quantile([d[key] for d in draws], [0.025, 0.975]))
        for key in ("in_band", "median_gap")
    }


def run_recipe(pipe, images, prompts, scorer, guidance, settings) -> dict:
    """Synthesise every source with ``guidance``; return final scores, per-image costs and seconds per image."""
    bs = settings.batch_size
    final, unet, decodes, backward = [], 0, 0, 0
    start = time.perf_counter()
    for i in range(0, len(images), bs):
        generator = torch.Generator().manual_seed(settings.seed + i)
        steps = list(
            refine_steps(
                pipe, images[i : i + bs], prompts[i : i + bs], scorer, guidance, settings.inpaint, generator=generator
            )
        )
        n = len(steps[-1].score)
        final.append(steps[-1].score.numpy())
        unet += n * sum(s.unet_evals for s in steps)
        decodes += n * sum(s.vae_decodes for s in steps)
        backward += n * sum(s.backward_passes for s in steps)
    seconds = time.perf_counter() - start
    n_images = len(images)
    return {
        "final": np.concatenate(final),
        "unet": unet / n_images,
        "decodes": decodes / n_images,
        "backward": backward / n_images,
        "seconds": seconds / n_images,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", default="miniworld")
    parser.add_argument("--data-root", default="")
    parser.add_argument("--config", default="", help="preset (default: the benchmark's)")
    parser.add_argument("--per-class", type=int, default=4, help="source images per ID class")
    parser.add_argument("--recipes", default="unguided,full,official_rounds,one_step,last_steps:2,last_steps:4")
    parser.add_argument(
        "--scorers", default="classifier-energy,clip-neglabel", help="guidance scorers, comma-separated"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="images per refinement call (preset's)")
    parser.add_argument("--step-size", type=float, default=None, help="step of recipes without @STEP (preset's)")
    parser.add_argument("--device", default=None, help="device (default: the preset's)")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates of the full recipe's placement")
    args = parser.parse_args()
    if os.environ.get("SYNOOD_THREADS"):
        torch.set_num_threads(int(os.environ["SYNOOD_THREADS"]))
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    if "unguided" not in recipes:
        recipes.insert(0, "unguided")  # the cost unit
    overrides = {
        "synthesis.sources.per_class": args.per_class,
        "synthesis.batch_size": args.batch_size,
        "synthesis.guidance.step_size": args.step_size,
        "models.device": args.device,
    }
    bench, preset = load_run(args.benchmark, args.data_root or None, args.config or None, overrides, progress=False)
    settings, models = preset.synthesis, preset.models
    pipe = load_inpaint_pipeline(models.pipeline, device=models.device)
    pipe.set_progress_bar_config(disable=True)
    size = synthesis_size(pipe, settings.sources, models.pipeline)
    items = choose_sources(bench.id_train, settings.sources)
    kept, images = next(read_sources(items, size, len(items)))
    with tempfile.TemporaryDirectory() as tmp:
        rows = prompt_contexts(
            context_backend(settings, models, bench),
            list(zip([it.id for it in kept], images, strict=True)),
            Path(tmp) / "contexts.jsonl",
            settings.prompting,
            progress=False,
            inpaint=settings.inpaint,
        )
    prompts = [r["prompt"] for r in rows]
    print(
        f"{bench.name}: {len(kept)} sources at {size} px, batch {settings.batch_size}, device {models.device}, "
        f"{torch.get_num_threads()} threads; rounds {settings.guidance.rounds}, step {settings.guidance.step_size} "
        f"({settings.guidance.step_unit}), {settings.inpaint.num_inference_steps} steps x strength "
        f"{settings.inpaint.strength}, CFG {settings.inpaint.guidance_scale}"
    )
    for scorer_name in [s.strip() for s in args.scorers.split(",") if s.strip()]:
        run_preset = preset.override({"synthesis.scorer": scorer_name})
        scorer, name = load_scorer(bench, run_preset)
        with torch.no_grad():
            source_scores = torch.cat([scorer(images[i : i + 64]) for i in range(0, len(images), 64)]).cpu().numpy()
        target = guidance_target(torch.as_tensor(source_scores), run_preset.synthesis)
        base = guidance_config(run_preset.synthesis, target)
        bs = settings.batch_size
        list(
            refine_steps(pipe, images[:bs], prompts[:bs], scorer, dataclasses.replace(base, rounds=0), settings.inpaint)
        )
        results = {
            spec: run_recipe(pipe, images, prompts, scorer, recipe_guidance(spec, base), settings) for spec in recipes
        }
        band = placement(results["unguided"]["final"], target, source_scores)["band"]
        print(f"\n{name}: target {target:.4f} (band +-{band:.4f})")
        interval = None
        if "full" in results and args.n_boot > 0:
            interval = bootstrap_placement(results["full"]["final"], target, source_scores, args.n_boot)
            print(
                f"full recipe, 95% bootstrap over {len(images)} images ({args.n_boot} replicates): in band "
                f"[{interval['in_band'][0]:.2f}, {interval['in_band'][1]:.2f}], median |gap| "
                f"[{interval['median_gap'][0]:.4f}, {interval['median_gap'][1]:.4f}]"
            )
        print(
            "recipe             | UNet/img | decodes/img | backward/img | s/img  | x unguided | in band | med |gap| | within"
        )
        unit = results["unguided"]["seconds"]
        for spec, r in results.items():
            p = placement(r["final"], target, source_scores)
            within = "-"
            if interval is not None:
                ok = [interval[k][0] <= p[k] <= interval[k][1] for k in ("in_band", "median_gap")]
                within = "both" if all(ok) else ("band" if ok[0] else ("gap" if ok[1] else "no"))
            print(
                f"{spec:18s} | {r['unet']:8.0f} | {r['decodes']:11.0f} | {r['backward']:12.0f} | "
                f"{r['seconds']:6.3f} | {r['seconds'] / unit:10.2f} | {p['in_band']:7.2f} | {p['median_gap']:10.4f} | "
                f"{within}"
            )


if __name__ == "__main__":
    main()
