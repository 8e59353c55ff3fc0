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
# # 04 · Negative labels: mining and assignment
#
# **Question.** Which words does NegLabel keep as negative labels, and which of them do the synthetic images get?
# (NegLabel Sec. 3.2; docs/method.md, stage 5.) Every WordNet 3.0 noun and adjective (plus the benchmark's own
# vocabulary, where it has one) is scored by the 95th percentile of its similarity to the ID labels; the lowest 15%
# of each part of speech are kept, as an ordered list. Each synthetic image is then tied to its argmax negative
# label.
#
# **Run time**, mini-world, 2 CPU cores: under a minute with cached text features (about 1 minute the first
# time), plus a small synthesis run when no synthesis folder is given. With a full ViT-B/16 text tower on a CPU,
# mining all of WordNet takes hours: cap the corpus (`{"mining.corpus.max_words": 2000}`) for a quick look.

# %% tags=["parameters"]
out_dir = "outputs/notebooks/04_negative_labels"  # where figures and metrics.json go
benchmark = "miniworld"  # miniworld, a built-in (imagenet-mos, openood-v1.5-imagenet) or a benchmark.toml
data_roots = ""  # data roots of the benchmark: one base folder holding them, or named roots (see README)
preset = ""  # miniworld, paper, official or a preset .toml; empty: the default of the benchmark
overrides = {}  # preset fields by dotted name, e.g. {mining.corpus.max_words: 2000}
synthetic_dir = ""  # a synthesis folder of this benchmark; empty: synthesise a small one into out_dir
per_class = 2  # source images per class when synthesising here

# %%
from pathlib import Path

from synood_kit.models import load_clip
from synood_kit.negatives import mine_negative_labels
from synood_kit.plotting import percentile_distribution
from synood_kit.registry import load_run
from synood_kit.storage import atomic_write_json
from synood_kit.synthesis import label_summary, read_records
from synood_kit.synthesis_run import run_synthesis

out = Path(out_dir)
out.mkdir(parents=True, exist_ok=True)
bench, config = load_run(benchmark, data_roots, preset, overrides)
model = load_clip(config.models.clip, config.models.pretrained, device=config.models.device)
result = mine_negative_labels(model, list(bench.class_names), config.mining_for(bench))
labels = result.labels
print({pos: c for pos, c in labels.provenance["counts"].items()})

# %% [markdown]
# The mining statistic per part of speech; the dashed line is the largest value kept (the 15% cut).

# %%
fig = percentile_distribution(result)
fig.savefig(out / "percentile_distribution.png", dpi=110)

# %% [markdown]
# The list is ordered: nouns, then adjectives, each from the word farthest from the ID labels on. The first and the
# last kept words of each:

# %%
for pos in ("noun", "adj"):
    words = [w for w, p in zip(labels.words, labels.pos) if p == pos]
    print(f"{pos} (farthest): {words[:12]}\n{pos} (nearest kept): {words[-12:]}")

# %% [markdown]
# ## Labels assigned to synthetic images
#
# A synthesis folder records each image's argmax negative label (under the same CLIP) with its probability.

# %%
syn = Path(synthetic_dir) if synthetic_dir else out / "synthetic"
if not synthetic_dir:
    run_synthesis(
        syn, bench, config.override({"synthesis.sources.per_class": per_class, "synthesis.guidance.rounds": 1})
    )
assigned = label_summary(read_records(syn))
assigned

# %% [markdown]
# ## What the test suite reads
#
# `metrics.json`: the mining counts and thresholds, whether the saved list is in mining order, and the labels the
# synthetic images got.

# %%
atomic_write_json(
    out / "metrics.json",
    {
        "counts": labels.provenance["counts"],
        "n_negatives": len(labels),
        "thresholds": result.thresholds,
        "ordered": labels.in_mining_order,
        "n_synthetic": assigned["n"],
        "distinct_assigned": assigned["distinct"],
        "assigned_pos_share": assigned["pos_share"],
    },
)
