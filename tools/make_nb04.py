from nbbuild import write_notebook

write_notebook(
    "notebooks/04_negative_labels.ipynb",
    [
        (
            "md",
            """
# 04 · Negative labels: mining and assignment

**Question.** Which words does NegLabel keep as negative labels, and which of them do the synthetic images
get? (NegLabel Sec. 3.2; SynOOD stage 5.) Every WordNet 3.0 noun and adjective (plus the world's own
vocabulary) is scored by the 95th percentile of its similarity to the ID labels; the lowest 15% of each part of
speech are kept, as an ordered list. Each synthetic image is then tied to its argmax negative label.

**Run time** on 2 CPU cores: under a minute with cached text features (about 1 minute the first time), plus a
small synthesis run when no synthesis folder is given.
""",
        ),
        (
            "params",
            """
out_dir = "outputs/notebooks/04_negative_labels"  # where figures and metrics.json go
clip = "miniworld"  # open_clip name, folder, or "miniworld"
synthetic_dir = ""  # a `synood synthesize` folder; empty: synthesise a small one into out_dir
per_class = 2  # source images per class when synthesising here
""",
        ),
        (
            "code",
            """
import json
from collections import Counter
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from synood_kit.cli import main as synood
from synood_kit.experiments import miniworld_mining_config
from synood_kit.miniworld.benchmark import BENCHMARK_SPEC
from synood_kit.models import load_clip
from synood_kit.negatives import NegativeLabels, mine_negative_labels
from synood_kit.synthesis import read_records

out = Path(out_dir)
out.mkdir(parents=True, exist_ok=True)
""",
        ),
        (
            "code",
            """
model = load_clip(clip)
result = mine_negative_labels(model, list(BENCHMARK_SPEC.id_classes), miniworld_mining_config())
labels = result.labels
print({pos: c for pos, c in labels.provenance["counts"].items()})
""",
        ),
        ("md", "The mining statistic per part of speech; the dashed line is the largest value kept (the 15% cut)."),
        (
            "code",
            """
fig, axes = plt.subplots(1, 2, figsize=(9, 3))
pos_arr = np.array(result.candidate_pos)
for ax, pos in zip(axes, ("noun", "adj")):
    ax.hist(result.candidate_similarity[pos_arr == pos], bins=60, color="tab:gray")
    ax.axvline(result.thresholds[pos], color="tab:red", linestyle="--", label="kept below")
    ax.set_title(f"{pos}: 95th-percentile similarity to the ID labels")
    ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig(out / "percentile_distribution.png", dpi=110)
""",
        ),
        (
            "md",
            "The list is ordered: nouns then adjectives, each from the farthest word on. The first and the last kept words:",
        ),
        (
            "code",
            """
for pos in ("noun", "adj"):
    words = [w for w, p in zip(labels.words, labels.pos) if p == pos]
    print(f"{pos} (farthest): {words[:12]}")
    print(f"{pos} (nearest kept): {words[-12:]}")
""",
        ),
        ("md", "## Labels assigned to synthetic images"),
        (
            "code",
            """
syn = Path(synthetic_dir) if synthetic_dir else out / "synthetic"
if not synthetic_dir:
    synood(["synthesize", "--out", str(syn), "--per-class", str(per_class), "--rounds", "1", "--clip", clip])
records = list(read_records(syn).values())
assigned = Counter(r["negative_label"]["word"] for r in records)
print(f"{len(records)} synthetic images -> {len(assigned)} distinct negative labels")
print(assigned.most_common(12))
pos_share = Counter(r["negative_label"]["pos"] for r in records)
print("parts of speech of the assigned labels:", dict(pos_share))
""",
        ),
        (
            "code",
            """
metrics = {
    "counts": labels.provenance["counts"],
    "n_negatives": len(labels),
    "thresholds": result.thresholds,
    "n_synthetic": len(records),
    "distinct_assigned": len(assigned),
    "assigned_adjective_share": pos_share.get("adj", 0) / max(len(records), 1),
    "ordered": all(a <= b for a, b, p, q in zip(labels.percentile_similarity, labels.percentile_similarity[1:],
                                                  labels.pos, labels.pos[1:]) if p == q),
}
(out / "metrics.json").write_text(json.dumps(metrics, indent=2))
metrics
""",
        ),
    ],
)
