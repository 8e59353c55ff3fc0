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
# # 01 · The benchmark and its zero-shot baselines
#
# **Question.** What data does a run see, and how hard is it before any fine-tuning? This notebook shows a
# benchmark: its ID class names, its splits (ID training and test images, and OOD splits grouped as near and far),
# a sample of each split, and how the zero-shot baselines fare on every OOD split: MCM and NegLabel with the
# preset's CLIP, MSP and energy with its classifier. It mirrors the paper's setting (Sec. 4.1: ImageNet-1k against
# iNaturalist, SUN, Places and Textures; OpenOOD's near and far splits).
#
# The default benchmark is the offline **mini-world**: ID shapes against held-out sibling shapes (near-OOD),
# subject-free scenes, textures and real MNIST digits (far-OOD), rendered procedurally, with tiny models trained on
# it. Every image is a pure function of `(seed, split, class, index)`, so it is rebuilt byte-identically anywhere
# as ImageFolder trees plus a `manifest.jsonl`, read by the same code that reads ImageNet.
#
# **Run time**, mini-world, 2 CPU cores: about 2-3 minutes the first time (rendering the benchmark, mining
# negatives, encoding 5,200 images), seconds afterwards (everything is cached).

# %% tags=["parameters"]
out_dir = "outputs/notebooks/01_benchmark"  # where figures and metrics.json go
benchmark = "miniworld"  # miniworld, a built-in (imagenet-mos, openood-v1.5-imagenet) or a benchmark.toml
data_roots = ""  # data roots of the benchmark: one base folder holding them, or named roots (see README)
preset = ""  # miniworld, paper, official or a preset .toml; empty: the default of the benchmark
overrides = {}  # preset fields by dotted name, e.g. {models.device: cuda:1}
sample = None  # score at most this many images per split (None: all)
samples_per_split = 8  # images shown per split
seed = 0  # sampling seed

# %%
from pathlib import Path

import pandas as pd
from IPython.display import Image, Markdown, display

from synood_kit.evaluation import group_metrics
from synood_kit.experiments import run_evaluation
from synood_kit.plotting import benchmark_samples
from synood_kit.registry import load_run
from synood_kit.storage import atomic_write_json

out = Path(out_dir)
out.mkdir(parents=True, exist_ok=True)
bench, config = load_run(benchmark, data_roots, preset, overrides)
description = bench.describe()
print(f"{bench.name}: {len(bench.class_names)} ID classes, e.g. {', '.join(bench.class_names[:6])}")
display(pd.DataFrame(description["splits"]).T)

# %% [markdown]
# One row per split: ID images first, then the OOD splits in report order (near before far).

# %%
fig = benchmark_samples(bench, samples_per_split, seed=seed)
fig.savefig(out / "samples_per_split.png", dpi=110, bbox_inches="tight")

# %% [markdown]
# ## What the MLLM is asked for
#
# SynOOD's stage 2 asks an MLLM for everything in an ID image except its main subject. A benchmark that knows
# each image's context (the mini-world does; ImageNet does not) lets notebook 02 score the answers. A few of them:

# %%
known = bench.annotations.context
for item in bench.id_test.sample(6, seed).items:
    print(f"{bench.class_names[item.label]:>18} | context: {', '.join(known.get(item.id, ('(not annotated)',)))}")

# %% [markdown]
# ## Zero-shot baselines
#
# MCM (the softmax over ID label similarities, Ming et al. 2022) and NegLabel (Jiang et al. 2024, negatives mined
# from WordNet 3.0 plus the benchmark's own words) with the CLIP; MSP and energy with the classifier. Both FPR95
# conventions: `FPR95_IDpos` (the share of OOD accepted at 95% ID acceptance, as in the CLIP papers) and
# `FPR95_OODpos` (the share of ID rejected at 95% OOD detection, as in OpenOOD). Brackets: 95% bootstrap intervals
# over the test images. Where the benchmark has a ledger (ImageNet), the published numbers follow.

# %%
result = run_evaluation(out / "zero_shot", bench, config, sample=sample)
print({k: round(v, 4) for k, v in result.accuracy.items()})
display(Markdown((out / "zero_shot" / "evaluation.md").read_text()))
if result.ledger is not None:
    display(result.ledger)

# %% [markdown]
# Near-OOD is the hard group, as in OpenOOD: near-OOD images share their ID neighbours' look and context, far-OOD
# images do not. This headroom is what near-boundary synthesis (notebooks 02-05) aims at.

# %%
display(Image(filename=str(out / "zero_shot" / "score_histograms.png")))

# %% [markdown]
# ## What the test suite reads
#
# `metrics.json`: the benchmark's description, ID accuracy, the zero-shot table and each method's metrics per group.

# %%
atomic_write_json(
    out / "metrics.json",
    {
        "benchmark": description,
        "accuracy": result.accuracy,
        "table": result.table.to_dict(orient="records"),
        "groups": group_metrics(result.table, bench.groups),
        "samples_figure": str(out / "samples_per_split.png"),
    },
)
