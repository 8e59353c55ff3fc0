from nbbuild import write_notebook

write_notebook(
    "notebooks/01_miniworld.ipynb",
    [
        (
            "md",
            """
# 01 · The mini-world and its zero-shot baselines

**Question.** Is there a world, small enough for a CPU, in which SynOOD's stages mean something? This notebook
shows the offline mini-world: its procedural images, the OOD benchmark built from it (ID shapes vs held-out
sibling shapes, subject-free scenes, textures, real MNIST digits), captions and contexts (what the MLLM of
notebook 02 is asked for), and how the zero-shot baselines (MCM and NegLabel with the mini-world CLIP; MSP and
energy with its ID classifier) fare on each OOD split. It mirrors the paper's setting (Sec. 4.1: ImageNet-1k
vs iNaturalist/SUN/Places/Textures; OpenOOD near/far).

**Run time** on 2 CPU cores: about 2-3 minutes the first time (building the benchmark, mining negatives,
encoding 5,200 images), seconds afterwards (everything is cached).
""",
        ),
        (
            "params",
            """
out_dir = "outputs/notebooks/01_miniworld"  # where figures and metrics.json go
clip = "miniworld"  # open_clip name, local CLIP folder, or "miniworld"
classifier = "miniworld"  # ID classifier folder, "miniworld", or "" to skip MSP/energy
n_boot = 200  # bootstrap replicates for the 95% intervals (0: none)
samples_per_split = 8  # images shown per split
""",
        ),
        (
            "code",
            """
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display
from PIL import Image

from synood_kit.experiments import ZeroShotRun, run_zero_shot
from synood_kit.miniworld.benchmark import BENCHMARK_SPEC, open_benchmark, read_manifest
from synood_kit.plotting import image_grid

out = Path(out_dir)
out.mkdir(parents=True, exist_ok=True)
""",
        ),
        (
            "md",
            """
## The benchmark

The world and its splits are fixed by the kit (`BENCHMARK_SPEC`): later notebooks must not tune them. Every
image is a pure function of `(seed, split, class, index)`, so the benchmark is rebuilt byte-identically
anywhere, as ImageFolder trees plus a `manifest.jsonl` (the same readers load ImageNet).
""",
        ),
        (
            "code",
            """
root = open_benchmark()
records = read_manifest(root)
splits = ["id_train", "id_test", "near_ood", "far_scenes", "far_textures", "far_digits"]
counts = {s: sum(r["split"] == s for r in records) for s in splits}
print("ID classes:", ", ".join(BENCHMARK_SPEC.id_classes))
print("near-OOD classes (one held-out sibling per family):", ", ".join(BENCHMARK_SPEC.near_ood_classes))
print("images per split:", counts)
""",
        ),
        ("md", "One row per split: ID test images, then the OOD splits from hardest (near) to easiest (far)."),
        (
            "code",
            """
rng = np.random.default_rng(0)
picked = []
for split in splits:
    pool = [r for r in records if r["split"] == split]
    picked += [pool[i] for i in rng.choice(len(pool), samples_per_split, replace=False)]
images = np.stack([np.asarray(Image.open(root / r["path"]).convert("RGB")) for r in picked])
fig = image_grid(images, [f"{r['split']}\\n{r['class_name']}" for r in picked], ncols=samples_per_split)
fig.savefig(out / "samples_per_split.png", dpi=110, bbox_inches="tight")
""",
        ),
        (
            "md",
            """
## Captions and contexts

Every scene has a caption (subject + context) and a context list: everything except the main subject. The
context is what SynOOD's MLLM is asked to name, and what remains when the subject is removed.
""",
        ),
        (
            "code",
            """
for r in [r for r in records if r["split"] == "id_test"][::97][:6]:
    print(f"{r['class_name']:>16} | {r['caption']}\\n{'':>16} | context: {r['context']}")
""",
        ),
        (
            "md",
            """
## Zero-shot baselines

MCM (softmax over ID label similarities, Ming et al. 2022) and NegLabel (Jiang et al. 2024, negatives mined
from WordNet 3.0 plus the world's own vocabulary) with the mini-world CLIP; MSP and energy with the ID
classifier. Both FPR95 conventions: `FPR95_IDpos` (share of OOD accepted at 95% ID acceptance, as in the CLIP
papers) and `FPR95_OODpos` (share of ID rejected at 95% OOD detection, as in OpenOOD). Brackets: 95%
bootstrap intervals.
""",
        ),
        (
            "code",
            """
run = ZeroShotRun(clip=clip, classifier=classifier or None, n_boot=n_boot)
result = run_zero_shot(out, run)
print({k: round(v, 4) for k, v in result.accuracy.items()})
display(Markdown((out / "zero_shot.md").read_text()))
""",
        ),
        (
            "md",
            """
Near-OOD is the hard split, as in OpenOOD: the held-out siblings share their families' look and context. The
far splits are easier. This headroom on near-OOD is what near-boundary synthesis (notebooks 02-05) aims at.
""",
        ),
        (
            "code",
            """
display(Image.open(out / "score_histograms.png"))
""",
        ),
        ("md", "The last cell: `run_zero_shot` wrote `metrics.json`, the tables and the histograms into `out_dir`."),
        (
            "code",
            """
import json

metrics = json.loads((out / "metrics.json").read_text())
metrics["samples_figure"] = str(out / "samples_per_split.png")
(out / "metrics.json").write_text(json.dumps(metrics, indent=2))
print(sorted(p.name for p in out.iterdir()))
""",
        ),
    ],
)
