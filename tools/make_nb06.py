from nbbuild import write_notebook

write_notebook(
    "notebooks/06_evaluate.ipynb",
    [
        (
            "md",
            """
# 06 · Evaluating SynOOD against NegLabel

**Question.** Does fine-tuning on near-boundary synthetic images improve OOD detection, and by how much on
near- and far-OOD? (Paper Sec. 4; METHOD.md stage 7 and "Evaluation".) The table reports AUROC, AUPR-In/Out
and FPR95 in both conventions with bootstrap intervals; ROC curves show where the methods differ; the ledger
lists the published ImageNet numbers with their sources, which a GPU run with real weights is compared to
(`synood evaluate --id ... --ledger "ImageNet-1k (MOS)"`). The control (an adapter trained on ID images only)
stays in every table: it separates the synthetic images' contribution from fine-tuning as such.

**Run time** on 2 CPU cores: about 30 s with a synthesis folder and cached features.
""",
        ),
        (
            "params",
            """
out_dir = "outputs/notebooks/06_evaluate"  # where figures and metrics.json go
synthetic_dir = ""  # a `synood synthesize` folder; empty: synthesise a small one into out_dir
per_class = 2  # source images per class when synthesising here
clip = "miniworld"  # the CLIP being fine-tuned
n_boot = 200  # bootstrap replicates
""",
        ),
        (
            "code",
            """
import json
from pathlib import Path

import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from synood_kit.cli import main as synood
from synood_kit.experiments import SynoodRun, run_synood
from synood_kit.ledger import reported_numbers
from synood_kit.plotting import roc_curves

out = Path(out_dir)
out.mkdir(parents=True, exist_ok=True)
syn = Path(synthetic_dir) if synthetic_dir else out / "synthetic"
if not synthetic_dir:
    synood(["synthesize", "--out", str(syn), "--per-class", str(per_class), "--clip", clip])
result = run_synood(out / "finetune", SynoodRun(synthetic=str(syn), clip=clip, n_boot=n_boot))
table = result["table"]
display(Markdown((out / "finetune" / "synood.md").read_text()))
print(table.attrs.get("fpr_convention", ""))
""",
        ),
        ("md", "ROC curves (ID positive): zero-shot NegLabel, the ID-only control and SynOOD, per OOD split."),
        (
            "code",
            """
shown = {k: result["scores"][k] for k in ["NegLabel (zero-shot)", "control: adapter on ID images only",
                                           "SynOOD (adapter + tuned labels)"]}
splits = ["near_ood", "far_scenes", "far_textures", "far_digits"]
fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
for ax, split in zip(axes, splits):
    roc_curves(shown, split, ax=ax)
fig.tight_layout()
fig.savefig(out / "roc_curves.png", dpi=110)
""",
        ),
        (
            "md",
            "The ledger: published numbers with their sources (ImageNet-1k, CLIP ViT-B/16), for GPU runs with real weights.",
        ),
        (
            "code",
            """
display(reported_numbers())
""",
        ),
        (
            "code",
            """
def row(method, split):
    return table[(table["method"] == method) & (table["ood_set"] == split)].iloc[0]

far = ["far_scenes", "far_textures", "far_digits"]
zs, sy, ctl = "NegLabel (zero-shot)", "SynOOD (adapter + tuned labels)", "control: adapter on ID images only"
metrics = {
    "near_fpr95_zero_shot": float(row(zs, "near_ood")["FPR95_IDpos"]),
    "near_fpr95_synood": float(row(sy, "near_ood")["FPR95_IDpos"]),
    "near_fpr95_control": float(row(ctl, "near_ood")["FPR95_IDpos"]),
    "near_auroc_zero_shot": float(row(zs, "near_ood")["AUROC"]),
    "near_auroc_synood": float(row(sy, "near_ood")["AUROC"]),
    "far_fpr95_zero_shot": float(sum(row(zs, s)["FPR95_IDpos"] for s in far) / 3),
    "far_fpr95_synood": float(sum(row(sy, s)["FPR95_IDpos"] for s in far) / 3),
    "far_auroc_zero_shot": float(sum(row(zs, s)["AUROC"] for s in far) / 3),
    "far_auroc_synood": float(sum(row(sy, s)["AUROC"] for s in far) / 3),
    "n_synthetic": len(list((syn / "images").glob("*.png"))),
}
metrics["near_fpr95_relative_reduction"] = 1 - metrics["near_fpr95_synood"] / max(metrics["near_fpr95_zero_shot"], 1e-12)
(out / "metrics.json").write_text(json.dumps(metrics, indent=2))
metrics
""",
        ),
    ],
)
