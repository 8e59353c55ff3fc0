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
# # 07 · Feature-space boundaries: where do the synthetic samples sit?
#
# **Question.** SynOOD's claim is that its synthetic images lie *near the ID/OOD boundary* (paper Sec. 3.3,
# Fig. 1). Is that true in CLIP's feature space, for which guidance, and what does fine-tuning do to the boundary?
#
# The detector (zero-shot NegLabel; after fine-tuning, SynOOD) accepts an image when its score is above the
# threshold that keeps 95% of ID test images. Its **decision boundary** in feature space is that score's level set.
# We measure each sample's first-order distance to it, `|log s(f) - log t| / ||grad log s(f)||` on the unit sphere
# (`synood_kit.feature_space.boundary_table`), for the ID and OOD splits and for synthetic images made three ways
# from the same sources and seeds:
#
# * **CLIP-guided**: energy-gradient refinement with CLIP's own NegLabel score as the scorer (`clip-neglabel`,
#   unit-normalised gradients), toward the boundary target, with the full recipe at step 10 (the recipe measured
#   for this scorer; the preset's cheaper recipe was measured for the classifier's energy, docs/synthesis_cost.md);
# * **unguided**: the same in-painting and prompts, no noise updates (`rounds = 0`);
# * optionally **classifier-guided**: the preset's classifier energy (the official recipe), from a folder given.
#
# UMAP (umap-learn, fixed seed, cached) then shows the same samples in 2-D, with the log-score as a colour field,
# the boundary as a black line and the negative labels' text features as anchors, before and after fine-tuning.
# Distances are measured in the full feature space; UMAP is only the picture.
#
# **Run time**, mini-world, 2 CPU cores: about 1.5 minutes (synthesis of 2 x 24 images, two UMAP fits).

# %% tags=["parameters"]
out_dir = "outputs/notebooks/07_feature_space_umap"  # where figures, the cached embeddings and metrics.json go
benchmark = "miniworld"  # miniworld, a built-in (imagenet-mos, openood-v1.5-imagenet) or a benchmark.toml
data_roots = ""  # data roots of the benchmark: one base folder holding them, or named roots (see README)
preset = ""  # miniworld, paper, official or a preset .toml; empty: the default of the benchmark
overrides = {}  # preset fields by dotted name, e.g. {models.device: cuda:1}
guided_dir = ""  # CLIP-guided synthesis folder; empty: synthesise one here
unguided_dir = ""  # unguided synthesis folder (same sources, rounds 0); empty: synthesise one here
classifier_guided_dir = ""  # optional classifier-energy-guided folder (the official recipe); empty: skip
per_class = 2  # source images per class when synthesising here
n_per_set = 200  # points per image set in the UMAP (a fixed-seed sample)
n_neighbors = 15  # UMAP neighbourhood
min_dist = 0.1  # UMAP spread
seed = 0  # sampling, synthesis and UMAP seed

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display

from synood_kit.experiments import finetune_inputs
from synood_kit.feature_space import boundary_table, embedding_panel
from synood_kit.finetune import substitute_rows, train_adapter, tune_labels
from synood_kit.models import load_clip
from synood_kit.plotting import boundary_map
from synood_kit.registry import load_run
from synood_kit.storage import atomic_write_json
from synood_kit.synthesis_run import run_synthesis

out = Path(out_dir)
out.mkdir(parents=True, exist_ok=True)
bench, config = load_run(
    benchmark, data_roots, preset, {**overrides, "synthesis.sources.per_class": per_class, "synthesis.seed": seed}
)
recipes = {
    "CLIP-guided": (
        {
            "synthesis.scorer": "clip-neglabel",
            "synthesis.guidance.normalize": "unit",
            "synthesis.guidance.recipe": "full",
            "synthesis.guidance.step_size": 10.0,
        },
        guided_dir,
    ),
    "unguided": ({"synthesis.guidance.rounds": 0}, unguided_dir),
}
folders = {}
for name, (changes, given) in recipes.items():
    folders[name] = Path(given) if given else out / f"synthetic_{name.lower().replace('-', '_')}"
    if not given:
        run_synthesis(folders[name], bench, config.override(changes))
if classifier_guided_dir:
    folders["classifier-guided"] = Path(classifier_guided_dir)

# %% [markdown]
# Features of every set, from the feature cache (one CLIP pass per image set, ever).

# %%
model = load_clip(config.models.clip, config.models.pretrained, device=config.models.device)
inputs = {name: finetune_inputs(folder, model, bench, config) for name, folder in folders.items()}
base = inputs["CLIP-guided"]
features = {split: f.features for split, f in base.sets.items()}
features.update({f"synthetic: {name}": inp.syn.features for name, inp in inputs.items()})
{name: len(f) for name, f in features.items()}

# %% [markdown]
# ## Before fine-tuning: distance to zero-shot NegLabel's boundary
#
# The threshold `t` is the ID test images' 5% score quantile. A sample on the ID side has a score above it.

# %%
nl = config.scores.neglabel
kw = {"temperature": nl.temperature, "n_groups": nl.n_groups, "seed": nl.seed}
before, log_t_before, log_scores_before = boundary_table(features, base.data.id_text, base.data.neg_text, **kw)
display(before.round(3))

# %% [markdown]
# ## Fine-tuning (stages A and B on the CLIP-guided set), then the same distances
#
# The adapter and the tuned negative rows are trained as in notebook 05; the boundary is now SynOOD's.

# %%
adapter, _ = train_adapter(base.data, config.adapter)
tuned, _ = tune_labels(base.data, config.labels)
neg_after = substitute_rows(base.data.neg_text, tuned)
after, log_t_after, log_scores_after = boundary_table(features, base.data.id_text, neg_after, adapter, **kw)
display(after.round(3))

# %% [markdown]
# ## UMAP before and after fine-tuning
#
# Each set is sampled to at most `n_per_set` points (fixed seed). The anchors are the text features of the negative
# labels assigned to the CLIP-guided images. Colour: each image's log-score, interpolated over the plane; black
# line: the decision threshold.

# %%
rng = np.random.default_rng(seed)
picked = {name: np.sort(rng.choice(len(f), min(n_per_set, len(f)), replace=False)) for name, f in features.items()}
anchor_rows = torch.unique(base.data.syn_index)[:40]
panels = [
    ("before", None, base.data.neg_text, log_scores_before, log_t_before, "zero-shot NegLabel"),
    ("after", adapter, neg_after, log_scores_after, log_t_after, "after fine-tuning (SynOOD)"),
]
fig, axes = plt.subplots(1, 2, figsize=(15, 6))
for ax, (tag, adapter_, negs, scores, log_t, title) in zip(axes, panels):
    xy, groups, anchors, field = embedding_panel(
        features, picked, scores, negs[anchor_rows], adapter_, out / "umap_cache", n_neighbors, min_dist, seed
    )
    np.save(out / f"umap_{tag}.npy", xy)
    boundary_map(xy, groups, field, log_t, anchors, title=title, ax=ax)
fig.tight_layout()
fig.savefig(out / "umap_boundary.png", dpi=110)

# %% [markdown]
# ## What the test suite reads
#
# `metrics.json`: every set's median distance to the boundary and share on the ID side, before and after
# fine-tuning, the number of synthetic images per kind, and the claim measured in the full feature space:
# CLIP-guided samples nearer the zero-shot detector's boundary than unguided ones from the same sources and seeds.

# %%
distance = dict(zip(before["set"], before["median distance to boundary"]))
metrics = {
    "distance_before": distance,
    "distance_after": dict(zip(after["set"], after["median distance to boundary"])),
    "id_side_share_before": dict(zip(before["set"], before["share on the ID side"])),
    "n_synthetic": {name: len(inp.syn) for name, inp in inputs.items()},
    "guided_distance": distance["synthetic: CLIP-guided"],
    "unguided_distance": distance["synthetic: unguided"],
    "figure": str(out / "umap_boundary.png"),
}
atomic_write_json(out / "metrics.json", metrics)
