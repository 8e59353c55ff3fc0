"""Time NegLabel scoring against one plain matrix product of the same shape, in the same run.

NegLabel's cost should be the product ``(N, D) @ (D, C + M)`` plus one pass of exp over its result; the ratios
printed here say how close :func:`synood_kit.scores.neglabel_score` gets (target: at most 1.3x). For comparison the
out-of-place form (4,096-row chunks of logits reduced by ``grouped_id_probability``, the path autograd takes and the
one the kit used before) is timed too, and the largest difference between the two forms is printed. The plain
product writes its whole ``N x (C + M)`` result to memory; the product alone in neglabel_score's chunks, into one
reused buffer, is printed as well: NegLabel's floor on this machine.

    python benchmarks/neglabel_scoring.py            # 50,000 x 512 vs 1,000 ID + 10,000 negatives
    python benchmarks/neglabel_scoring.py --small    # 5,000 x 512: a quick look
    SYNOOD_THREADS=1 python benchmarks/neglabel_scoring.py --device cuda

Threads: ``SYNOOD_THREADS`` (default: torch's).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from synood_kit.scores import CHUNK_BYTES, grouped_id_probability, neglabel_group_permutation, neglabel_score


def _best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def out_of_place(x, id_t, neg_t, n_groups, temperature=0.01, rows=4096):
    """NegLabel with every chunk's logits allocated and reduced by ``grouped_id_probability`` (the kit before)."""
    if n_groups:
        neg_t = neg_t[neglabel_group_permutation(len(neg_t), n_groups).reshape(-1).to(neg_t.device)]
    text = F.normalize(torch.cat([id_t, neg_t]).float(), dim=-1) / temperature
    parts = []
    for i in range(0, len(x), rows):
        logits = F.normalize(x[i : i + rows].float(), dim=-1) @ text.T
        parts.append(grouped_id_probability(logits[:, : len(id_t)], logits[:, len(id_t) :], n_groups))
    return torch.cat(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50_000, help="image feature vectors")
    parser.add_argument("--small", action="store_true", help="5,000 feature vectors instead of --n")
    parser.add_argument("--dim", type=int, default=512, help="feature dimension")
    parser.add_argument("--n-id", type=int, default=1_000, help="ID labels")
    parser.add_argument("--n-neg", type=int, default=10_000, help="negative labels")
    parser.add_argument("--groups", type=int, default=100, help="NegLabel groups")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (best is reported)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if os.environ.get("SYNOOD_THREADS"):
        torch.set_num_threads(int(os.environ["SYNOOD_THREADS"]))
    n = 5_000 if args.small else args.n

    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, args.dim, generator=g).to(args.device)
    id_t = torch.randn(args.n_id, args.dim, generator=g).to(args.device)
    neg_t = torch.randn(args.n_neg, args.dim, generator=g).to(args.device)
    text = torch.cat([id_t, neg_t])
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def timed(fn):
        def run():
            out = fn()
            sync()
            return out

        run()  # warm-up (allocator, threads, kernels)
        return _best_of(run, args.repeats)

    t_plain = timed(lambda: x @ text.T)
    # the product alone in the chunks neglabel_score uses, into one reused buffer: its floor, without the reduction
    chunk = min(max(CHUNK_BYTES["cpu" if args.device == "cpu" else "other"] // (4 * len(text)), 64), 16384)
    buffer, text_t = torch.empty(chunk, len(text), device=args.device), text.T.contiguous()
    t_chunked = timed(
        lambda: [torch.mm(x[i : i + chunk], text_t, out=buffer[: len(x[i : i + chunk])]) for i in range(0, n, chunk)]
    )
    rows = [
        (f"NegLabel, {args.groups} groups", timed(lambda: neglabel_score(x, id_t, neg_t, n_groups=args.groups))),
        ("NegLabel, ungrouped", timed(lambda: neglabel_score(x, id_t, neg_t, n_groups=None))),
        (f"  before: out of place, {args.groups} groups", timed(lambda: out_of_place(x, id_t, neg_t, args.groups))),
        ("  before: out of place, ungrouped", timed(lambda: out_of_place(x, id_t, neg_t, None))),
    ]
    gap = max(
        float((neglabel_score(x, id_t, neg_t, n_groups=k) - out_of_place(x, id_t, neg_t, k)).abs().max())
        for k in (args.groups, None)
    )
    print(
        f"shape: ({n} x {args.dim}) @ ({args.dim} x {args.n_id} + {args.n_neg}); device {args.device}; "
        f"{torch.get_num_threads()} threads; best of {args.repeats}"
    )
    print(f"{'plain matmul':40s} {t_plain:8.3f} s")
    print(f"{f'  matmul in {chunk}-row chunks, one buffer':40s} {t_chunked:8.3f} s   ratio {t_chunked / t_plain:.2f}")
    for name, seconds in rows:
        print(f"{name:40s} {seconds:8.3f} s   ratio {seconds / t_plain:.2f}")
    print(f"largest |difference| between the two forms: {gap:.2e}")


if __name__ == "__main__":
    main()
