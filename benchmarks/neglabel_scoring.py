"""Time NegLabel scoring against one plain matrix product of the same shape, in the same run.

NegLabel's cost should be the product ``(N, D) @ (D, C + M)`` plus one pass of exp over its result; the
ratio printed here says how close :func:`synood_kit.scores.neglabel_score` gets (target: under 3).

    python benchmarks/neglabel_scoring.py                  # 50,000 x 512 vs 1,000 ID + 10,000 negatives
    python benchmarks/neglabel_scoring.py --n 5000         # a quicker look
"""

from __future__ import annotations

import argparse
import time

import torch

from synood_kit.scores import neglabel_score


def _best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50_000, help="image feature vectors")
    parser.add_argument("--dim", type=int, default=512, help="feature dimension")
    parser.add_argument("--n-id", type=int, default=1_000, help="ID labels")
    parser.add_argument("--n-neg", type=int, default=10_000, help="negative labels")
    parser.add_argument("--groups", type=int, default=100, help="NegLabel groups")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (best is reported)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.n, args.dim, generator=g).to(args.device)
    id_t = torch.randn(args.n_id, args.dim, generator=g).to(args.device)
    neg_t = torch.randn(args.n_neg, args.dim, generator=g).to(args.device)
    text = torch.cat([id_t, neg_t])
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def plain():
        out = x @ text.T
        sync()
        return out

    def neglabel():
        out = neglabel_score(x, id_t, neg_t, n_groups=args.groups)
        sync()
        return out

    neglabel()  # warm-up (allocator, threads)
    t_plain = _best_of(plain, args.repeats)
    t_neg = _best_of(neglabel, args.repeats)

    def ungrouped():
        out = neglabel_score(x, id_t, neg_t, n_groups=None)
        sync()
        return out

    t_ungrouped = _best_of(ungrouped, args.repeats)
    print(
        f"shape: ({args.n} x {args.dim}) @ ({args.dim} x {args.n_id} + {args.n_neg}); device {args.device}; "
        f"{torch.get_num_threads()} threads; best of {args.repeats}"
    )
    print(f"plain matmul          {t_plain:8.3f} s")
    print(f"NegLabel, {args.groups} groups  {t_neg:8.3f} s   ratio {t_neg / t_plain:.2f}")
    print(f"NegLabel, ungrouped   {t_ungrouped:8.3f} s   ratio {t_ungrouped / t_plain:.2f}")


if __name__ == "__main__":
    main()
