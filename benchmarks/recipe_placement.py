"""Refinement recipes side by side, end to end: cost, boundary placement in CLIP space, and what fine-tuning on
their images gives downstream.

For each recipe (``GuidanceConfig.recipe``; ``benchmarks/synthesis_cost.py`` has the recipe specs) the run's sources
are synthesised with the same prompts and seeds by ``run_synthesis`` into ``OUT/synthetic_<recipe>`` (resumable;
``--reuse NAME=DIR`` takes an existing folder made with the same settings). Then, per recipe:

* **cost**: UNet evaluations and seconds per image from the synthesis records, as a ratio to unguided;
* **placement in CLIP space**: each synthetic image's first-order distance to zero-shot NegLabel's decision boundary
  (the ID test images' 5% score quantile; ``feature_space.boundary_geometry``, as notebook 07 measures it): the
  median, with a 95% bootstrap interval over images for the full recipe, and whether each recipe's median lies in it;
* **downstream**: the ablation grid's SynOOD (adapter + tuned labels) trained on the recipe's images, at
  ``--n-negatives`` negatives, against the ID-only control: FPR95 (ID positive) averaged over each group of OOD
  splits (near, far).

    python benchmarks/recipe_placement.py --out outputs/recipes [--per-class 10] [--batch-size 12]
        [--recipes unguided,full,one_step,last_steps:2] [--reuse full=DIR] [--n-negatives 1000] [--n-boot 1000]
        [--scorer clip-neglabel --normalize unit]

Threads: ``SYNOOD_THREADS``. Prints a Markdown table (docs/synthesis_cost.md holds the measured one).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from synthesis_cost import recipe_guidance  # the recipe specs of benchmarks/synthesis_cost.py (same folder)

from synood_kit.ablations import AblationRun, run_ablations
from synood_kit.experiments import finetune_inputs
from synood_kit.feature_space import boundary_distance, boundary_geometry
from synood_kit.models import load_clip
from synood_kit.registry import load_run
from synood_kit.synthesis import read_records
from synood_kit.synthesis_run import run_synthesis


def recipe_overrides(spec: str, preset) -> dict:
    """Return the preset fields (dotted names) of a recipe spec ``name[:K][@STEP]``."""
    g = recipe_guidance(spec, preset.synthesis.guidance)
    fields = ("rounds", "step_size", "recipe", "rerun_steps")
    out = {f"synthesis.guidance.{f}": getattr(g, f) for f in fields}
    if g.official_rounds:  # the run sets official_rounds from target "official"
        raise ValueError("official_rounds is set by --target official; compare it with benchmarks/synthesis_cost.py")
    return out


def record_costs(folder: Path) -> dict:
    records = list(read_records(folder).values())
    return {
        "unet": float(np.mean([r["cost"]["unet_evals"] for r in records])),
        "seconds": float(np.mean([r["cost"]["seconds"] for r in records])),
        "n": len(records),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (synthesis folders, the ablation grid)")
    parser.add_argument("--benchmark", default="miniworld")
    parser.add_argument("--data-root", default="")
    parser.add_argument("--config", default="", help="preset (default: the benchmark's)")
    parser.add_argument("--per-class", type=int, default=10, help="source images per ID class")
    parser.add_argument("--batch-size", type=int, default=12, help="synthesis batch size")
    parser.add_argument("--step-size", type=float, default=None, help="step of recipes without @STEP (preset's)")
    parser.add_argument("--scorer", default=None, help="guidance scorer (preset's: classifier-energy)")
    parser.add_argument("--normalize", default=None, help="gradient normalisation (preset's: none)")
    parser.add_argument("--recipes", default="unguided,full,one_step,last_steps:2")
    parser.add_argument("--reuse", action="append", default=[], help="NAME=DIR: an existing synthesis folder")
    parser.add_argument("--n-negatives", type=int, default=1000, help="negatives kept downstream (>= 100)")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates of the full recipe's median")
    args = parser.parse_args()
    out = Path(args.out)
    overrides = {
        "synthesis.sources.per_class": args.per_class,
        "synthesis.batch_size": args.batch_size,
        "synthesis.guidance.step_size": args.step_size,
        "synthesis.scorer": args.scorer,
        "synthesis.guidance.normalize": args.normalize,
    }
    bench, preset = load_run(args.benchmark, args.data_root or None, args.config or None, overrides, progress=False)
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    if not {"unguided", "full"} <= set(recipes):
        raise SystemExit("--recipes must include unguided (the cost unit) and full (the placement interval)")
    reuse = dict(item.split("=", 1) for item in args.reuse)
    folders = {}
    for spec in recipes:
        folder = Path(reuse.get(spec, out / f"synthetic_{spec.replace(':', '_').replace('@', '_at_')}"))
        run_synthesis(folder, bench, preset.override(recipe_overrides(spec, preset)), progress=False)
        folders[spec] = folder

    clip = load_clip(preset.models.clip, preset.models.pretrained, device=preset.models.device)
    inputs = {spec: finetune_inputs(folder, clip, bench, preset, progress=False) for spec, folder in folders.items()}
    base = inputs["full"].data
    nl = preset.scores.neglabel
    kw = {"temperature": nl.temperature, "n_groups": nl.n_groups, "seed": nl.seed}
    id_scores, _ = boundary_geometry(inputs["full"].sets["id_test"].features, base.id_text, base.neg_text, **kw)
    log_t = float(np.quantile(id_scores, 0.05))
    distances = {}
    for spec, inp in inputs.items():
        s, slope = boundary_geometry(inp.syn.features, base.id_text, base.neg_text, **kw)
        distances[spec] = boundary_distance(s, slope, log_t)
    rng = np.random.default_rng(0)
    full = distances["full"]
    boot = [np.median(full[rng.integers(0, len(full), len(full))]) for _ in range(args.n_boot)]
    low, high = (float(q) for q in np.quantile(boot, [0.025, 0.975]))

    grid = run_ablations(
        out / "ablation",
        bench,
        preset,
        AblationRun(
            synthetic=tuple((spec, str(f)) for spec, f in folders.items()),
            n_negatives=(args.n_negatives,),
            trainings=("adapter + labels",),
        ),
        progress=False,
    )["table"]
    groups = bench.groups

    def group_fpr(rows) -> dict:
        by_split = rows.set_index("ood_set")["FPR95_IDpos"]
        return {g: float(by_split[list(splits)].mean()) for g, splits in groups.items()}

    control = group_fpr(grid[grid["training"] == "control: adapter on ID only"].drop_duplicates("ood_set"))
    costs = {spec: record_costs(f) for spec, f in folders.items()}
    unit = costs["unguided"]
    head = ["recipe", "UNet / image", "x unguided (UNet)", "x unguided (time)", "median distance to boundary"]
    head += [f"{g} FPR95" for g in groups]
    print(
        f"{bench.name}: {costs['full']['n']} sources, {preset.synthesis.scorer} guidance (normalize "
        f"{preset.synthesis.guidance.normalize}, step {preset.synthesis.guidance.step_size} "
        f"{preset.synthesis.guidance.step_unit}); full recipe's median distance 95% interval [{low:.4f}, "
        f"{high:.4f}] ({args.n_boot} bootstrap replicates over images); downstream at {args.n_negatives} negatives, "
        f"FPR95 with ID positive averaged over each group's splits (percent); control: "
        + ", ".join(f"{g} {100 * v:.1f}" for g, v in control.items())
    )
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    summary = {"interval": [low, high], "control": control, "recipes": {}}
    for spec in recipes:
        med = float(np.median(distances[spec]))
        within = "in" if low <= med <= high else "out"
        fpr = group_fpr(grid[(grid["synthetic"] == spec) & (grid["training"] == "adapter + labels")])
        c = costs[spec]
        cells = [spec, f"{c['unet']:.0f}", f"{c['unet'] / unit['unet']:.2f}", f"{c['seconds'] / unit['seconds']:.2f}"]
        cells += [f"{med:.4f} ({within})", *(f"{100 * fpr[g]:.1f}" for g in groups)]
        print("| " + " | ".join(cells) + " |")
        summary["recipes"][spec] = {"cost": c, "median_distance": med, "within": within == "in", "fpr95": fpr}
    (out / "recipes.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
