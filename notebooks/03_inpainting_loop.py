# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (synood-kit)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · The in-painting loop with energy-gradient noise refinement
#
# **Question.** How does SynOOD push a synthetic image to the ID/OOD boundary? (Paper Sec. 3.2-3.3;
# docs/method.md, stages 3-4.) An ID image's context prompt ("A photo only remain {context}.") drives an
# in-painting pipeline with a full-image mask at strength 0.6; the initial noise is then updated with the gradient
# of `(target - s)^2`, where `s` is a guidance score of the decoded image, taken on the final latent and applied to
# the initial noise (the official skip gradient). This notebook steps through the rounds and shows the image, the
# gradient-magnitude map and the score trajectory against the ID and OOD score distributions.
#
# The defaults fix the official code's defects: the target is reachable (the 5% quantile of the guidance score
# over the run's ID **training** images, the same rule `synood synthesize` records; never a test split) instead of
# the unreachable margin -5, and every update reaches the saved image (3 updates, then the generation they shape).
# The `official` preset restores the official recipe.
#
# **Run time**, mini-world, 2 CPU cores: about 1 minute for 8 images.

# %% tags=["parameters"]
out_dir = "outputs/notebooks/03_inpainting_loop"  # where figures and metrics.json go
benchmark = "miniworld"  # miniworld, a built-in (imagenet-mos, openood-v1.5-imagenet) or a benchmark.toml
data_roots = ""  # data roots of the benchmark: one base folder holding them, or named roots (see README)
preset = ""  # miniworld, paper, official or a preset .toml; empty: the default of the benchmark
overrides = {}  # preset fields by dotted name, e.g. {synthesis.guidance.rounds: 2}
n_images = 8  # source images refined (spread over the sources of the run)
n_score = 200  # images per split scored for the ID and OOD score distributions (a fixed-seed sample)
seed = 0  # noise and sampling seed

# %%
import dataclasses
from pathlib import Path

import numpy as np
import torch
from IPython.display import display

from synood_kit.inpainting import compare_recipes, full_masks, load_inpaint_pipeline, refine_steps, summarize_refinement
from synood_kit.plotting import recipe_placement, refinement_figure, score_trajectories
from synood_kit.prompting import prompt_contexts
from synood_kit.registry import load_run
from synood_kit.storage import atomic_write_json
from synood_kit.synthesis_run import (
    choose_sources,
    context_backend,
    guidance_config,
    guidance_target,
    load_scorer,
    read_sources,
    score_images,
    synthesis_size,
)
from synood_kit.widgets import refinement_widget

out = Path(out_dir)
out.mkdir(parents=True, exist_ok=True)
bench, config = load_run(benchmark, data_roots, preset, overrides)
settings, models = config.synthesis, config.models

# %% [markdown]
# ## Models and the score landscape
#
# The guidance scorer is the preset's (the official kind: a classifier's energy). Its values on real ID test images
# and on the nearest OOD group set the landscape the samples should land in.

# %%
pipe = load_inpaint_pipeline(models.pipeline, device=models.device)
pipe.set_progress_bar_config(disable=True)
size = synthesis_size(pipe, settings.sources, models.pipeline)
scorer, scorer_name = load_scorer(bench, config)
ood_split = next(iter(bench.groups.values()))[0]  # the first OOD split of the first group (near, where there is one)
id_scores = score_images(scorer, bench.id_test.sample(n_score, seed), size, models.device).numpy()
ood_scores = score_images(scorer, bench.split(ood_split).sample(n_score, seed), size, models.device).numpy()
print(
    f"{scorer_name} at {size} px: ID median {np.median(id_scores):.3f}, {ood_split} median {np.median(ood_scores):.3f}"
)

# %% [markdown]
# ## The target and the sources
#
# The run's sources are the preset's choice of ID training images; the target is computed from their scores by
# `guidance_target`, exactly as `run_synthesis` does. The prompts come from stage 2's backend.

# %%
training = choose_sources(bench.id_train, settings.sources)
target = guidance_target(score_images(scorer, training, size, models.device), settings)
picked = training[:: max(1, len(training) // n_images)][:n_images]
items, sources = next(read_sources(picked, size, len(picked)))
rows = prompt_contexts(
    context_backend(settings, models, bench),
    [(it.id, img) for it, img in zip(items, sources)],
    out / "contexts.jsonl",
    settings.prompting,
    progress=False,
    inpaint=settings.inpaint,
)
prompts = [row["prompt"] for row in rows]
print(f"target {target:.3f} ({settings.target}, from {len(training)} ID training images)")
for it, p in list(zip(items, prompts))[:4]:
    print(f"{bench.class_names[it.label]:>18} -> {p}")

# %% [markdown]
# ## Stepping through the rounds
#
# `refine_steps` is a generator: one frozen step per generation (noise, final latent, decoded image, score, loss,
# gradient and its per-position magnitude, time). Generation 0 is the unguided in-painting; the last one is the
# synthetic sample. The preset's recipe (`settings.guidance.recipe`; the mini-world's is `last_steps`, chosen by
# measurement, see below) says how each update round estimates the clean latent.

# %%
guidance = guidance_config(settings, target)
steps = []
generator = torch.Generator().manual_seed(seed)
for step in refine_steps(pipe, sources, prompts, scorer, guidance, settings.inpaint, generator=generator):
    steps.append(step)
    print(
        f"generation {step.round}: mean score {step.score.mean():.3f}, mean loss {step.loss.mean():.3f}, {step.seconds:.1f} s"
    )

# %% [markdown]
# Per image: the source, the mask, then each generation's image and the gradient magnitude that updated its noise.

# %%
fig = refinement_figure(sources, steps, full_masks(sources), max_images=4)
fig.savefig(out / "refinement.png", dpi=120)

# %% [markdown]
# Score trajectories against the ID (blue) and OOD (red) score distributions; dashed: the target.

# %%
fig = score_trajectories(steps, id_scores, ood_scores, target)
fig.savefig(out / "score_trajectories.png", dpi=120)

# %% [markdown]
# In JupyterLab, the slider steps through the generations of one image.

# %%
display(
    refinement_widget(
        sources, steps, index=0, masks=full_masks(sources), id_scores=id_scores, ood_scores=ood_scores, target=target
    )
)

# %% [markdown]
# ## Cheaper recipes: the same samples for fewer UNet evaluations?
#
# Each update round needs the gradient of the score with respect to the clean latent. The full recipe gets it by
# regenerating the image; `one_step` takes the one-step (Tweedie) estimate of the clean latent at the first
# denoising step (one UNet call per round); `last_steps` keeps the first generation and re-runs only its last
# `rerun_steps` denoising steps per round. Same sources, prompts and noise for all; the cost unit is the unguided
# generation. Each recipe runs at its own measured per-image step: the full recipe at 10, the cheaper ones at 20
# (their estimates move the score less per step). docs/synthesis_cost.md has the measured table at a larger scale:
# re-running the last 2 steps places samples as the full recipe does for 36 UNet evaluations per image instead of
# 96, which is why it is the mini-world's default.

# %%
recipes = {
    "one_step": {"recipe": "one_step", "step_size": 20.0},
    "last_steps (2)": {"recipe": "last_steps", "rerun_steps": 2, "step_size": 20.0},
}
full_guidance = dataclasses.replace(guidance, recipe="full", step_size=10.0)
recipe_table, recipe_scores = compare_recipes(
    pipe, sources, prompts, scorer, full_guidance, recipes, settings.inpaint, seed=seed
)
display(recipe_table.round(3))
fig = recipe_placement(recipe_scores, id_scores, ood_scores, target)
fig.savefig(out / "recipes.png", dpi=120)

# %% [markdown]
# ## What the test suite reads
#
# `metrics.json`: how far the refinement moved the samples toward the target and where they ended, beside the
# settings that made them.

# %%
summary = summarize_refinement(steps, target, id_scores, ood_scores)
summary.update(
    scorer=scorer_name,
    target_mode=settings.target,
    rounds=settings.guidance.rounds,
    step_size=settings.guidance.step_size,
    normalize=settings.guidance.normalize,
    size=size,
    n_target_images=len(training),
    refined_median=float(np.median(steps[-1].score.numpy())),
    recipes=recipe_table.set_index("recipe")[["unet_vs_unguided", "median_gap", "moved_toward_target"]].to_dict(
        "index"
    ),
)
atomic_write_json(out / "metrics.json", summary)
