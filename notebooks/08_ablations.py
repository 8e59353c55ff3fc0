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
# # 08 · Ablations: what does each part of SynOOD contribute?
#
# **Question.** Which part of SynOOD's fine-tuning carries the gain, and does it depend on the synthetic images
# being *guided* toward the boundary? (docs/method.md, stage 6; ablations beyond the official code.) One tidy
# table: for each synthetic set (classifier-guided as in the official recipe, unguided, CLIP-guided) and each number
# of negatives, four ways of fine-tuning: **adapter** (stage A), **labels** (stage B), **adapter + labels**
# (SynOOD), **joint** (one objective for both). Two rows per number of negatives need no synthetic images and
# anchor every comparison: zero-shot NegLabel and the **control**, the same adapter trained on ID images alone.
#
# The synthetic images earn their place only where a variant beats the control, not merely zero-shot NegLabel.
# The recorded grids (docs/results_miniworld.md) come from `synood ablate` on larger synthetic sets; this notebook
# runs the same grid on whatever folders it is given.
#
# **Run time**, mini-world, 2 CPU cores: about 1 minute when it synthesises its own small sets; 20 s with folders.

# %% tags=["parameters"]
out_dir = "outputs/notebooks/08_ablations"  # where the table, figures and metrics.json go
benchmark = "miniworld"  # miniworld, a built-in (imagenet-mos, openood-v1.5-imagenet) or a benchmark.toml
data_roots = ""  # data roots of the benchmark: one base folder holding them, or named roots (see README)
preset = ""  # miniworld, paper, official or a preset .toml; empty: the default of the benchmark
overrides = {}  # preset fields by dotted name, e.g. {adapter.epochs: 5}
guided_dir = ""  # classifier-guided synthesis folder (the official recipe); empty: synthesise one here
unguided_dir = ""  # unguided folder (rounds 0); empty: synthesise one here
clip_guided_dir = ""  # CLIP-guided folder (clip-neglabel scorer, unit gradients); empty: skip
per_class = 2  # source images per class when synthesising here
n_negatives = "all,1000"  # numbers of negatives kept (the farthest from the ID labels), comma-separated
n_boot = 0  # bootstrap replicates (0: none)

# %%
from pathlib import Path

from IPython.display import Markdown, display

from synood_kit.ablations import AblationRun, run_ablations
from synood_kit.evaluation import table_value
from synood_kit.plotting import ablation_bars
from synood_kit.registry import load_run
from synood_kit.storage import atomic_write_json
from synood_kit.synthesis_run import run_synthesis

out = Path(out_dir)
out.mkdir(parents=True, exist_ok=True)
bench, config = load_run(benchmark, data_roots, preset, {**overrides, "synthesis.sources.per_class": per_class})
sets = {
    "classifier-guided": guided_dir or str(out / "synthetic_guided"),
    "unguided": unguided_dir or str(out / "synthetic_unguided"),
}
if not guided_dir:
    run_synthesis(sets["classifier-guided"], bench, config)
if not unguided_dir:
    run_synthesis(sets["unguided"], bench, config.override({"synthesis.guidance.rounds": 0}))
if clip_guided_dir:
    sets["CLIP-guided"] = clip_guided_dir
counts = tuple(None if k.strip() == "all" else int(k) for k in n_negatives.split(","))

# %%
run = AblationRun(synthetic=tuple(sets.items()), n_negatives=counts, n_boot=n_boot)
table = run_ablations(out / "grid", bench, config, run)["table"]
focus = next(iter(bench.groups.values()))[0]  # the first OOD split of the first group (near, where there is one)
grid = table[table["ood_set"] == focus].pivot_table(
    index=["synthetic", "training"], columns="n_negatives", values=["FPR95_IDpos", "AUROC"], sort=False
)
display((100 * grid).round(1))

# %% [markdown]
# FPR95 (ID positive) per variant on that split; the dashed line is the control at the same number of negatives.

# %%
fig = ablation_bars(table, focus)
fig.savefig(out / "ablations_near_fpr95.png", dpi=110)

# %% [markdown]
# The whole grid, every OOD split (percent).

# %%
display(Markdown((out / "grid" / "ablations.md").read_text()))

# %% [markdown]
# ## What the test suite reads
#
# `metrics.json`: the split the figure shows, and on it FPR95 of zero-shot NegLabel, the control and each
# synthetic set's SynOOD (adapter + labels) per number of negatives, and the number of variants.

# %%
ks = sorted(int(k) for k in table["n_negatives"].unique())
variants = table[["synthetic", "training", "n_negatives"]].drop_duplicates()


def fpr(synthetic, training, k):
    return table_value(table, f"{synthetic} / {training} / {k}", focus)


atomic_write_json(
    out / "metrics.json",
    {
        "focus": focus,
        "fpr95_zero_shot": {k: fpr("none", "zero-shot", k) for k in ks},
        "fpr95_control": {k: fpr("none", "control: adapter on ID only", k) for k in ks},
        "fpr95_synood": {name: {k: fpr(name, "adapter + labels", k) for k in ks} for name in sets},
        "n_variants": len(variants),
        "n_negatives": ks,
    },
)
