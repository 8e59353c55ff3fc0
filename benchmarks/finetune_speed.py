"""Fine-tuning and re-scoring speed on cached features, measured in one run.

1. Stages A and B together on 20,000 cached features (half ID, half synthetic) against C ID + K negative labels.
2. Re-scoring the mini-world benchmark from cached features vs recomputing the features (one CLIP pass).

    python benchmarks/finetune_speed.py [--n 20000] [--dim 512] [--n-id 1000] [--n-neg 10000]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from synood_kit.finetune import AdapterConfig, FinetuneData, LabelTuneConfig, train_adapter, tune_labels


def finetune_seconds(n: int, dim: int, n_id: int, n_neg: int) -> float:
    g = torch.Generator().manual_seed(0)
    id_text, neg_text = torch.randn(n_id, dim, generator=g), torch.randn(n_neg, dim, generator=g)
    half = n // 2
    id_feats, id_labels = torch.randn(half, dim, generator=g), torch.randint(0, n_id, (half,), generator=g)
    syn_feats, syn_index = torch.randn(n - half, dim, generator=g), torch.randint(0, n_neg, (n - half,), generator=g)
    t = time.perf_counter()
    data = FinetuneData(id_feats, id_labels, syn_feats, syn_index, id_text, neg_text)
    train_adapter(data, AdapterConfig())
    tune_labels(data, LabelTuneConfig())
    return time.perf_counter() - t


def rescoring_speedup() -> tuple[float, float, int]:
    from synood_kit.features import image_features, text_features
    from synood_kit.miniworld.benchmark import (
        OOD_SPLITS,
        build_benchmark,
        default_benchmark_root,
        split_image_set,
    )
    from synood_kit.models import load_clip
    from synood_kit.scores import mcm_score

    root = default_benchmark_root()
    build_benchmark(root, progress=False)
    clip = load_clip("miniworld")
    sets = [split_image_set(root, s) for s in ("id_test", *OOD_SPLITS)]
    text = text_features(clip, [f"a photo of a {c}." for c in sets[0].class_names], progress=False)
    with tempfile.TemporaryDirectory() as cache:
        t = time.perf_counter()
        feats = [image_features(clip, s, cache_root=cache, progress=False).features for s in sets]
        [mcm_score(f, text) for f in feats]
        cold = time.perf_counter() - t
        t = time.perf_counter()
        feats = [image_features(clip, s, cache_root=cache, progress=False).features for s in sets]
        [mcm_score(f, text) for f in feats]
        warm = time.perf_counter() - t
    return cold, warm, sum(len(s) for s in sets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--n-id", type=int, default=1_000)
    parser.add_argument("--n-neg", type=int, default=10_000)
    args = parser.parse_args()
    seconds = finetune_seconds(args.n, args.dim, args.n_id, args.n_neg)
    print(
        f"stages A (3 epochs) + B (5 epochs) on {args.n} features, d={args.dim}, {args.n_id} ID + {args.n_neg} "
        f"negative labels: {seconds:.1f} s ({torch.get_num_threads()} threads)"
    )
    cold, warm, n = rescoring_speedup()
    print(
        f"mini-world benchmark, {n} images: features + scores {cold:.2f} s; from cache {warm:.3f} s; "
        f"speed-up {cold / warm:.0f}x"
    )


if __name__ == "__main__":
    main()
