from nbbuild import write_notebook

write_notebook(
    "notebooks/08_ablations.ipynb",
    [
        (
            "md",
            """
# 08 · Ablations: what does each part of SynOOD contribute?

**Question.** Which part of SynOOD's fine-tuning carries the gain, and does it depend on the synthetic images
being *guided* toward the boundary? (METHOD.md stage 6; ablations beyond the official code.) One tidy table:
for each synthetic set (classifier-guided as in the official recipe, unguided, CLIP-guided) and each number of
negatives, four ways of fine-tuning: **adapter** (stage A), **labels** (stage B), **adapter + labels** (SynOOD),
**joint** (one objective for both). Two rows per number of negatives need no synthetic images and anchor every
comparison: zero-shot NegLabel and the **control**, the same adapter trained on ID images alone.

The synthetic images earn their place only where a variant beats the control, not merely zero-shot NegLabel.

Regenerate the recorded table (docs/results_miniworld.md) with `synood ablate` on larger synthetic sets;
this notebook runs the same grid on whatever folders it is given.

**Run time** on 2 CPU cores: about 1 minute when it synthesises its own small sets; 20 s with folders given.
""",
        ),
        (
            "params",
            """
out_dir = "outputs/notebooks/08_ablations"  # where the table, figures and metrics.json go
clip = "miniworld"  # the CLIP being fine-tuned (the one that labelled the synthetic images)
guided_dir = ""  # classifier-guided synthesis folder (official recipe); empty: synthesise one here
unguided_dir = ""  # unguided folder (--rounds 0); empty: synthesise one here
clip_guided_dir = ""  # CLIP-guided folder (--scorer clip-neglabel --normalize unit); empty: skip
per_class = 2  # source images per class when synthesising here
n_negatives = "all,1000"  # numbers of negatives kept (the farthest from the ID labels), comma-separated
adapter_epochs = 3  # stage A / joint epochs (official 3)
label_epochs = 5  # stage B epochs (official 5)
n_boot = 0  # bootstrap replicates (0: none)
""",
        ),
        (
            "code",
            """
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

from synood_kit.ablations import AblationRun, run_ablations
from synood_kit.cli import main as synood

out = Path(out_dir)
out.mkdir(parents=True, exist_ok=True)
common = ["--per-class", str(per_class), "--clip", clip]
sets = {"classifier-guided": guided_dir or str(out / "synthetic_guided"),
        "unguided": unguided_dir or str(out / "synthetic_unguided")}
if not guided_dir:
    synood(["synthesize", "--out", sets["classifier-guided"], *common])
if not unguided_dir:
    synood(["synthesize", "--out", sets["unguided"], "--rounds", "0", *common])
if clip_guided_dir:
    sets["CLIP-guided"] = clip_guided_dir
counts = tuple(None if k.strip() == "all" else int(k) for k in n_negatives.split(","))
""",
        ),
        (
            "code",
            """
result = run_ablations(out / "grid", AblationRun(synthetic=tuple(sets.items()), n_negatives=counts, clip=clip,
                                                 adapter_epochs=adapter_epochs, label_epochs=label_epochs,
                                                 n_boot=n_boot))
table = result["table"]
near = table[table["ood_set"] == "near_ood"].pivot_table(
    index=["synthetic", "training"], columns="n_negatives", values=["FPR95_IDpos", "AUROC"], sort=False)
display((100 * near).round(1))
""",
        ),
        (
            "md",
            "Near-OOD FPR95 (ID positive) per variant; the dashed line is the control at the same number of negatives.",
        ),
        (
            "code",
            """
ks = sorted(table["n_negatives"].unique(), reverse=True)
n_rows = int((table["n_negatives"] == ks[0]).sum() / table["ood_set"].nunique())
fig, axes = plt.subplots(1, len(ks), figsize=(6 * len(ks), 1.5 + 0.32 * n_rows), squeeze=False)
for ax, k in zip(axes[0], ks):
    rows = table[(table["ood_set"] == "near_ood") & (table["n_negatives"] == k)]
    labels = [f"{s}\\n{t}" if s != "none" else t for s, t in zip(rows["synthetic"], rows["training"])]
    ax.barh(np.arange(len(rows)), 100 * rows["FPR95_IDpos"], color=["gray" if s == "none" else "C0" for s in rows["synthetic"]])
    ax.set_yticks(np.arange(len(rows)), labels, fontsize=7)
    control = float(rows.loc[rows["training"] == "control: adapter on ID only", "FPR95_IDpos"].iloc[0])
    ax.axvline(100 * control, color="k", linestyle="--", linewidth=1)
    ax.invert_yaxis()
    ax.set_xlabel("near-OOD FPR95 (%), lower is better")
    ax.set_title(f"{k} negatives")
fig.tight_layout()
fig.savefig(out / "ablations_near_fpr95.png", dpi=110)
""",
        ),
        ("md", "The whole grid, every OOD split (percent)."),
        (
            "code",
            """
display(Markdown((out / "grid" / "ablations.md").read_text()))
""",
        ),
        (
            "code",
            """
def near_fpr(synthetic, training, k):
    rows = table[(table["synthetic"] == synthetic) & (table["training"] == training) & (table["n_negatives"] == k)
                 & (table["ood_set"] == "near_ood")]
    return float(rows["FPR95_IDpos"].iloc[0])

k_all = max(ks)
synood_rows = {f"{s} / {t} / {k}": near_fpr(s, t, k) for s in sets for t in ("adapter", "labels", "adapter + labels", "joint")
               for k in ks}
best = min(synood_rows, key=synood_rows.get)
metrics = {
    "near_fpr95_zero_shot": {int(k): near_fpr("none", "zero-shot", k) for k in ks},
    "near_fpr95_control": {int(k): near_fpr("none", "control: adapter on ID only", k) for k in ks},
    "near_fpr95_synood": {name: near_fpr(name, "adapter + labels", k_all) for name in sets},
    "best_variant": best,
    "best_near_fpr95": synood_rows[best],
    "synthetic_sets": json.loads((out / "grid" / "metrics.json").read_text())["synthetic_sets"],
    "n_variants": int(table[["synthetic", "training", "n_negatives"]].drop_duplicates().shape[0]),
}
metrics["best_beats_control_by"] = metrics["near_fpr95_control"][int(best.rsplit(" / ", 1)[1])] - metrics["best_near_fpr95"]
(out / "metrics.json").write_text(json.dumps(metrics, indent=2))
metrics
""",
        ),
    ],
)
