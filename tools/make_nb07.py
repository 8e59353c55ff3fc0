from nbbuild import write_notebook

write_notebook(
    "notebooks/07_feature_space_umap.ipynb",
    [
        (
            "md",
            """
# 07 · Feature-space boundaries: where do the synthetic samples sit?

**Question.** SynOOD's claim is that its synthetic images lie *near the ID/OOD boundary* (paper Sec. 3.3,
Fig. 1). Is that true in CLIP's feature space, for which guidance, and what does fine-tuning do to the boundary?

The detector (zero-shot NegLabel; after fine-tuning, SynOOD) accepts an image when its score is above the
threshold that keeps 95% of ID images. Its **decision boundary** in feature space is that score's level set. We
measure each sample's first-order distance to it, `|log s(f) - log t| / ||grad log s(f)||` on the unit sphere
(`synood_kit.feature_space.boundary_geometry` and `boundary_distance`), for ID, near-OOD, far-OOD and three kinds of synthetic images:

* **CLIP-guided**: energy-gradient refinement with CLIP's own NegLabel score as the scorer (`--scorer
  clip-neglabel --normalize unit`), toward the ID 5% quantile;
* **unguided**: the same in-painting, prompts and seeds, no noise updates (`--rounds 0`);
* optionally **classifier-guided**: the official recipe's classifier energy.

UMAP (umap-learn, fixed seed, cached) then shows the same samples in 2-D, with the log-score as a colour field,
the boundary as a black line and the negative labels' text features as anchors, before and after fine-tuning.
Distances are measured in the full 512-d space; UMAP is only the picture.

**Run time** on 2 CPU cores: about 1.5 minutes (synthesis of 2 x 24 images, two UMAP fits); cached reruns 30 s.
""",
        ),
        (
            "params",
            """
out_dir = "outputs/notebooks/07_feature_space_umap"  # where figures, the cached embeddings and metrics.json go
clip = "miniworld"  # open_clip name, folder, or "miniworld"
guided_dir = ""  # CLIP-guided synthesis folder; empty: synthesise one here
unguided_dir = ""  # unguided synthesis folder (same sources, --rounds 0); empty: synthesise one here
classifier_guided_dir = ""  # optional classifier-energy-guided folder (the official recipe); empty: skip
per_class = 2  # source images per class when synthesising here
n_per_set = 200  # points per image set in the UMAP (a fixed-seed sample)
n_neighbors = 15  # UMAP neighbourhood
min_dist = 0.1  # UMAP spread
seed = 0  # sampling and UMAP seed
""",
        ),
        (
            "code",
            """
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from IPython.display import display

from synood_kit.cli import main as synood
from synood_kit.experiments import finetune_inputs
from synood_kit.feature_space import boundary_distance, boundary_geometry, score_field, umap_embedding
from synood_kit.finetune import train_adapter, tune_labels
from synood_kit.miniworld.benchmark import open_benchmark
from synood_kit.models import load_clip
from synood_kit.plotting import boundary_map

out = Path(out_dir)
out.mkdir(parents=True, exist_ok=True)
common = ["--per-class", str(per_class), "--clip", clip, "--seed", str(seed)]
folders = {"CLIP-guided": Path(guided_dir) if guided_dir else out / "synthetic_clip_guided",
           "unguided": Path(unguided_dir) if unguided_dir else out / "synthetic_unguided"}
if not guided_dir:
    synood(["synthesize", "--out", str(folders["CLIP-guided"]), "--scorer", "clip-neglabel", "--normalize", "unit", *common])
if not unguided_dir:
    synood(["synthesize", "--out", str(folders["unguided"]), "--rounds", "0", *common])
if classifier_guided_dir:
    folders["classifier-guided"] = Path(classifier_guided_dir)
""",
        ),
        ("md", "Features of every set, from the feature cache (one CLIP pass per image set, ever)."),
        (
            "code",
            """
root = open_benchmark()
model = load_clip(clip)
inputs = {name: finetune_inputs(folder, model, root) for name, folder in folders.items()}
base = inputs["CLIP-guided"]
features = {split: f.features for split, f in base.sets.items()}
features.update({f"synthetic: {name}": inp.syn.features for name, inp in inputs.items()})
{name: len(f) for name, f in features.items()}
""",
        ),
        (
            "md",
            """
## Before fine-tuning: distance to zero-shot NegLabel's boundary

The threshold `t` is the ID test images' 5% score quantile. A sample on the ID side has a score above it.
""",
        ),
        (
            "code",
            """
def boundary_table(adapter=None, neg_text=base.neg_text):
    geometry = {name: boundary_geometry(f, base.id_text, neg_text, adapter) for name, f in features.items()}
    log_t = float(np.quantile(geometry["id_test"][0], 0.05))
    rows = []
    for name, (s, slope) in geometry.items():
        d = boundary_distance(s, slope, log_t)
        rows.append({"set": name, "n": len(s), "median distance to boundary": float(np.median(d)),
                     "share on the ID side": float((s > log_t).mean()), "median log score": float(np.median(s))})
    return pd.DataFrame(rows), log_t, {name: s for name, (s, _) in geometry.items()}

before, log_t_before, log_scores_before = boundary_table()
display(before.round(3))
""",
        ),
        (
            "md",
            """
## Fine-tuning (stages A and B on the CLIP-guided set), then the same distances

The adapter and the tuned negative rows are trained as in notebook 05; the boundary is now SynOOD's.
""",
        ),
        (
            "code",
            """
adapter, _ = train_adapter(base.id_text.shape[1], base.id_train.features, torch.as_tensor(base.id_train.labels),
                           base.syn.features, base.syn_index, base.id_text, base.neg_text)
tuned, _ = tune_labels(base.neg_text, base.syn.features, base.syn_index)
neg_after = base.neg_text.clone()
neg_after[:] = F.normalize(tuned, dim=-1) * base.neg_text.norm(dim=-1, keepdim=True)
after, log_t_after, log_scores_after = boundary_table(adapter, neg_after)
display(after.round(3))
""",
        ),
        (
            "md",
            """
## UMAP before and after fine-tuning

Each image set is sampled to at most `n_per_set` points (fixed seed). The anchors are the text features of the
negative labels assigned to the CLIP-guided images. Colour: each image's log-score, interpolated over the
plane; black line: the decision threshold.
""",
        ),
        (
            "code",
            """
rng = np.random.default_rng(seed)
picked = {name: np.sort(rng.choice(len(f), min(n_per_set, len(f)), replace=False)) for name, f in features.items()}
anchor_rows = torch.unique(base.syn_index)[:40]

def embed(adapter, neg_text, log_scores, tag):
    parts, groups, start = [], {}, 0
    for name, idx in picked.items():
        f = features[name][idx].float()
        f = adapter(f) if adapter is not None else F.normalize(f, dim=-1)
        parts.append(f.detach())
        groups[name] = np.arange(start, start + len(idx))
        start += len(idx)
    anchors = np.arange(start, start + len(anchor_rows))
    parts.append(F.normalize(neg_text[anchor_rows].float(), dim=-1))
    points = torch.cat(parts).numpy()
    xy = umap_embedding(points, out / "umap_cache", n_neighbors=n_neighbors, min_dist=min_dist, seed=seed)
    image_rows = np.concatenate(list(groups.values()))
    values = np.concatenate([log_scores[n][i] for n, i in picked.items()])
    np.save(out / f"umap_{tag}.npy", xy)
    return xy, groups, anchors, score_field(xy[image_rows], values)

fig, axes = plt.subplots(1, 2, figsize=(15, 6))
for ax, (tag, adapter_, negs, scores, log_t, title) in zip(axes, [
        ("before", None, base.neg_text, log_scores_before, log_t_before, "zero-shot NegLabel"),
        ("after", adapter, neg_after, log_scores_after, log_t_after, "after fine-tuning (SynOOD)")]):
    xy, groups, anchors, field = embed(adapter_, negs, scores, tag)
    boundary_map(xy, groups, field, log_t, anchors, title=title, ax=ax)
fig.tight_layout()
fig.savefig(out / "umap_boundary.png", dpi=110)
""",
        ),
        (
            "md",
            """
## The boundary claim

Measured in the 512-d feature space, not in the picture: CLIP-guided samples should sit nearer the zero-shot
detector's boundary than unguided ones made from the same sources and seeds.
""",
        ),
        (
            "code",
            """
def median(table, name):
    return float(table.loc[table["set"] == name, "median distance to boundary"].iloc[0])

metrics = {
    "distance_before": {r["set"]: r["median distance to boundary"] for _, r in before.iterrows()},
    "distance_after": {r["set"]: r["median distance to boundary"] for _, r in after.iterrows()},
    "id_side_share_before": {r["set"]: r["share on the ID side"] for _, r in before.iterrows()},
    "guided_distance": median(before, "synthetic: CLIP-guided"),
    "unguided_distance": median(before, "synthetic: unguided"),
    "near_ood_distance": median(before, "near_ood"),
    "n_synthetic": {name: len(inp.syn) for name, inp in inputs.items()},
    "figure": str(out / "umap_boundary.png"),
}
metrics["guided_nearer_than_unguided"] = metrics["guided_distance"] < metrics["unguided_distance"]
metrics["distance_ratio_guided_to_unguided"] = metrics["guided_distance"] / metrics["unguided_distance"]
(out / "metrics.json").write_text(json.dumps(metrics, indent=2))
{k: v for k, v in metrics.items() if not isinstance(v, dict)}
""",
        ),
    ],
)
