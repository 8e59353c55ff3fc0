"""Measure the mini-world models' quality on the benchmark (the numbers in their model cards).

- CLIP: zero-shot top-1 with ``"a photo of a {}."`` on ``id_test`` over the 12 ID classes, and over all 16
  categories on ``id_test`` + ``near_ood`` (every category's images, none seen in training).
- Classifier: top-1 on ``id_test``.
- MLLM: the share of context elements named exactly, on ``id_test`` scenes.

    python -m synood_kit.miniworld.quality [--models clip classifier mllm] [--out quality.json]
    python -m synood_kit.miniworld.quality --models mllm --mllm runs/repro/mllm   # a reproduction's export
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

__all__ = ["classifier_quality", "clip_quality", "mllm_quality"]

PROMPT = "a photo of a {}."


def _root(root):
    from .benchmark import build_benchmark, default_benchmark_root

    root = Path(root) if root else default_benchmark_root()
    build_benchmark(root, progress=False)
    return root


def clip_quality(clip="miniworld", root=None, progress: bool = False) -> dict:
    """Return zero-shot top-1 of a CLIP on the ID classes (``id_test``) and on all 16 categories."""
    from ..evaluation import zero_shot_accuracy
    from ..features import image_features, text_features
    from ..models import load_clip
    from .benchmark import read_manifest, split_image_set
    from .shapes import CATEGORIES

    root = _root(root)
    clip = load_clip(clip) if isinstance(clip, str) else clip
    id_set = split_image_set(root, "id_test")
    id_feats = image_features(clip, id_set, progress=progress)
    id_text = text_features(clip, [PROMPT.format(c) for c in id_set.class_names], progress=False)
    names = [c.name for c in CATEGORIES]
    all_text = text_features(clip, [PROMPT.format(c) for c in names], progress=False)
    near = split_image_set(root, "near_ood")
    near_feats = image_features(clip, near, progress=progress)
    # ImageFolder ids are "<class folder>/<file stem>"
    by_id = {
        str(Path(r["path"]).relative_to("near_ood").with_suffix("").as_posix()): r["class_name"]
        for r in read_manifest(root, "near_ood")
    }
    labels_all = [names.index(id_set.class_names[y]) for y in id_feats.labels] + [
        names.index(by_id[i]) for i in near_feats.ids
    ]
    import torch

    feats_all = torch.cat([id_feats.features, near_feats.features])
    per_class = {}
    sims = torch.nn.functional.normalize(feats_all, dim=-1) @ torch.nn.functional.normalize(all_text, dim=-1).T
    pred = sims.argmax(1).numpy()
    labels_arr = np.asarray(labels_all)
    for k, name in enumerate(names):
        per_class[name] = round(float((pred[labels_arr == k] == k).mean()), 4)
    return {
        "model": clip.name,
        "zero_shot_id_test_12": zero_shot_accuracy(id_feats.features, id_feats.labels, id_text),
        "zero_shot_all_16": zero_shot_accuracy(feats_all, labels_arr, all_text),
        "zero_shot_all_16_per_class": per_class,
        "prompt": PROMPT,
        "n_images": {"id_test": len(id_feats), "near_ood": len(near_feats)},
    }


def classifier_quality(classifier="miniworld", root=None, progress: bool = False) -> dict:
    """Return the classifier's top-1 on ``id_test`` (and per class)."""
    from ..classifier import classifier_logits, load_classifier
    from .benchmark import split_image_set

    root = _root(root)
    clf = load_classifier(classifier) if isinstance(classifier, str) else classifier
    id_set = split_image_set(root, "id_test")
    if tuple(clf.class_names) != tuple(id_set.class_names):
        raise ValueError(f"classifier classes {clf.class_names} differ from the benchmark's {id_set.class_names}")
    logits = classifier_logits(clf, id_set, progress=progress)
    pred = logits.features.argmax(1).numpy()
    per_class = {n: round(float((pred[logits.labels == k] == k).mean()), 4) for k, n in enumerate(id_set.class_names)}
    return {
        "model": clf.name,
        "top1_id_test": float((pred == logits.labels).mean()),
        "per_class": per_class,
        "n": len(pred),
    }


def mllm_quality(mllm="miniworld", root=None, n: int = 300, progress: bool = False) -> dict:
    """Return the MLLM's context naming quality on ``n`` ``id_test`` scenes (see :func:`synood_kit.mllm`)."""
    from ..data import load_image
    from ..mllm import describe_context, load_mllm, parse_context
    from .benchmark import read_manifest

    root = _root(root)
    model = load_mllm(mllm) if isinstance(mllm, str) else mllm
    records = read_manifest(root, "id_test")
    step = max(1, len(records) // n)
    records = records[::step][:n]
    import torch

    images = torch.stack([load_image(root / r["path"]) for r in records])
    answers = []
    for i in range(0, len(images), 32):
        answers += describe_context(model, images[i : i + 32])
    named = total = false = exact = 0
    for r, answer in zip(records, answers, strict=True):
        said = parse_context(answer)
        truth = set(r["context"])
        named += len(truth & set(said))
        total += len(truth)
        false += len(set(said) - truth)
        exact += set(said) == truth
    return {
        "model": model.name,
        "elements_named_exactly": named / total,
        "false_elements_per_image": false / len(records),
        "exact_lists": exact / len(records),
        "n": len(records),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["clip", "classifier", "mllm"])
    parser.add_argument("--out", default=None, help="also write the results as JSON")
    for name in ("clip", "classifier", "mllm"):
        parser.add_argument(f"--{name}", default="miniworld", help=f"the {name} to measure: 'miniworld' or a folder")
    args = parser.parse_args(argv)
    fns = {"clip": clip_quality, "classifier": classifier_quality, "mllm": mllm_quality}
    unknown = sorted(set(args.models) - set(fns))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {sorted(fns)}")
    results = {}
    for name in args.models:
        t = time.time()
        results[name] = fns[name](getattr(args, name))
        results[name]["seconds"] = round(time.time() - t, 1)
        print(name, json.dumps({k: v for k, v in results[name].items() if not k.endswith("per_class")}))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
