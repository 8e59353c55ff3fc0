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
# # 00 · Quickstart: SynOOD end to end in four cells
#
# The whole method on one benchmark: the zero-shot baselines, near-boundary synthesis (context prompt ->
# in-painting -> energy-gradient refinement -> a mined negative label per image), fine-tuning CLIP (an adapter and
# tuned negative labels) and the evaluation against NegLabel, with the ID-only control beside it. Notebooks 01-08
# open each stage up.
#
# Everything comes from the parameters: `benchmark` and `data_roots` say which data (the offline mini-world by
# default; `imagenet-mos` or `openood-v1.5-imagenet` with your data roots; or a `benchmark.toml`), `preset` every
# hyper-parameter and model (`miniworld`, `paper`, `official`, or a file). The same cells run on ImageNet on a GPU.
#
# **Run time**, mini-world, 2 CPU cores: about 1 minute on a fresh clone (most of it one CLIP pass over the
# benchmark, cached afterwards).

# %% tags=["parameters"]
out_dir = "outputs/notebooks/00_quickstart"  # where every stage writes
benchmark = "miniworld"  # miniworld, a built-in (imagenet-mos, openood-v1.5-imagenet) or a benchmark.toml
data_roots = ""  # data roots of the benchmark: one base folder holding them, or named roots (see README)
preset = ""  # miniworld, paper, official or a preset .toml; empty: the default of the benchmark
overrides = {}  # preset fields by dotted name, e.g. {models.device: cuda:1}
per_class = 1  # ID source images per class synthesised here
sample = None  # score at most this many images per split (None: all)

# %%
from pathlib import Path

import pandas as pd
import torch
from IPython.display import Markdown, display

from synood_kit.data import load_image
from synood_kit.evaluation import group_metrics
from synood_kit.experiments import run_evaluation, run_synood
from synood_kit.plotting import image_grid
from synood_kit.registry import load_run
from synood_kit.storage import atomic_write_json
from synood_kit.synthesis import read_records
from synood_kit.synthesis_run import run_synthesis

out = Path(out_dir)
bench, config = load_run(
    benchmark, data_roots, preset, {**overrides, "synthesis.sources.per_class": per_class, "n_boot": 0}
)
zero_shot = run_evaluation(out / "zero_shot", bench, config, sample=sample)
display(Markdown((out / "zero_shot" / "evaluation.md").read_text()))

# %% [markdown]
# Near-boundary synthesis from the ID training images, each image labelled with its argmax negative label.

# %%
synthesis = run_synthesis(out / "synthetic", bench, config)
every_record = read_records(out / "synthetic")
records = sorted(every_record.values(), key=lambda r: r["id"])[:12]
images = torch.stack([load_image(out / "synthetic" / r["image"]) for r in records])
titles = [f"{r['meta']['class_name']} -> {r['negative_label']['word']}"[:32] for r in records]
image_grid(images, titles, ncols=6, scale=1.6)
# %% [markdown]
# Fine-tuning on cached features, and SynOOD against zero-shot NegLabel and the ID-only control, averaged over
# each group of OOD splits (near and far where the benchmark has them).

# %%
result = run_synood(out / "finetune", bench, config, out / "synthetic")
shown = ["NegLabel (zero-shot)", "control: adapter on ID images only", "SynOOD (adapter + tuned labels)"]
summary = group_metrics(result.table, bench.groups)
display(
    pd.DataFrame(
        {m: {f"{g} {k}": 100 * v for g, row in summary[m].items() for k, v in row.items()} for m in shown}
    ).round(1)
)

# %% [markdown]
# ## What the test suite reads
#
# `metrics.json`: the benchmark, the number of synthetic images, and each method's FPR95 and AUROC per group of
# OOD splits (fractions).

# %%
atomic_write_json(out / "metrics.json", {"benchmark": bench.name, "n_synthetic": len(every_record), "groups": summary})
