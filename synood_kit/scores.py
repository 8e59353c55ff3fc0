"""OOD scores on logits and features. Every ``*_score`` returns higher = more in-distribution.

Classifier scores (MSP, max-logit, energy) take logits ``(N, C)``. CLIP scores (MCM, NegLabel) take image
features ``(N, D)`` and label text features ``(C, D)``; features are L2-normalised here, so raw encoder
outputs can be passed. All functions are batched over rows (``batch_size``) so that 50,000 x 11,000
similarity matrices never have to be held at once, and they run on whatever device their inputs are on.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "CHUNK_BYTES",
    "energy",
    "energy_score",
    "grouped_id_probability",
    "max_logit_score",
    "mcm_score",
    "msp_score",
    "neglabel_group_permutation",
    "neglabel_score",
]

# Logits neglabel_score holds at once when batch_size=None. On CPU (measured on a 2-core EPYC, 1 MiB L2 per core,
# 32 MiB L3) chunks of 0.5-2k rows x 11k labels cost the least: smaller ones repack the label matrix too often for
# the product, larger ones fall out of cache for the reduction; on accelerators larger chunks mean fewer launches.
CHUNK_BYTES = {"cpu": 64 * 2**20, "other": 2**30}


def _check_logits(logits: torch.Tensor, name: str = "logits") -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, C), got {type(logits).__name__}")
    if logits.ndim != 2 or logits.shape[1] == 0:
        raise ValueError(f"{name} must have shape (N, C) with C >= 1, got {tuple(logits.shape)}")


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def msp_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Return the maximum softmax probability (Hendrycks & Gimpel, 2017).

    Args:
        logits: ``(N, C)`` classifier logits.
        temperature: softmax temperature (> 0).

    Returns:
        ``(N,)`` float tensor in ``(0, 1]``; higher = more in-distribution.
    """
    _check_logits(logits)
    _check_temperature(temperature)
    return torch.softmax(logits.float() / temperature, dim=1).amax(dim=1)


def max_logit_score(logits: torch.Tensor) -> torch.Tensor:
    """Return the largest logit (Hendrycks et al., 2022, "MaxLogit").

    Args:
        logits: ``(N, C)`` classifier logits.

    Returns:
        ``(N,)``; higher = more in-distribution.
    """
    _check_logits(logits)
    return logits.float().amax(dim=1)


def energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Return the free energy ``E(x) = -T * logsumexp(f(x) / T)`` (Liu et al., 2020), physics sign.

    Low energy = in-distribution. Use :func:`energy_score` for the higher-is-ID score.

    Args:
        logits: ``(N, C)`` classifier logits.
        temperature: ``T`` (> 0).

    Returns:
        ``(N,)`` energies.
    """
    _check_logits(logits)
    _check_temperature(temperature)
    return -temperature * torch.logsumexp(logits.float() / temperature, dim=1)


def energy_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Return the negative free energy ``T * logsumexp(f(x) / T)``; higher = more in-distribution.

    Args:
        logits: ``(N, C)`` classifier logits.
        temperature: ``T`` (> 0).

    Returns:
        ``(N,)`` scores, equal to ``-energy(logits, temperature)``.
    """
    return -energy(logits, temperature)


def _row_batches(n: int, batch_size: int) -> range:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return range(0, n, batch_size)


def _check_features(image_features: torch.Tensor, text_features: torch.Tensor, text_name: str) -> None:
    for name, t in (("image_features", image_features), (text_name, text_features)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 2:
            raise ValueError(f"{name} must have shape (rows, D), got {tuple(t.shape)}")
    if image_features.shape[1] != text_features.shape[1]:
        raise ValueError(
            f"feature dimensions differ: image_features has D={image_features.shape[1]}, "
            f"{text_name} has D={text_features.shape[1]}"
        )


def _batched(fn: Callable[[torch.Tensor], torch.Tensor], image_features: torch.Tensor, batch_size: int) -> torch.Tensor:
    parts = [fn(image_features[i : i + batch_size]) for i in _row_batches(len(image_features), batch_size)]
    if not parts:
        return image_features.new_zeros((0,), dtype=torch.float32)
    return torch.cat(parts)


def mcm_score(
    image_features: torch.Tensor,
    id_text_features: torch.Tensor,
    temperature: float = 1.0,
    batch_size: int = 4096,
) -> torch.Tensor:
    """Return the Maximum Concept Matching score (Ming et al., NeurIPS 2022, Eq. 2).

    ``max_i softmax_i(cos(x, t_i) / temperature)`` over the ID labels. MCM's paper uses ``temperature = 1``.

    Args:
        image_features: ``(N, D)`` image embeddings (normalised here).
        id_text_features: ``(C, D)`` ID label embeddings (normalised here).
        temperature: softmax temperature on cosine similarities (> 0).
        batch_size: rows of ``image_features`` scored at once.

    Returns:
        ``(N,)`` float32 scores in ``(1/C, 1]``; higher = more in-distribution.
    """
    _check_features(image_features, id_text_features, "id_text_features")
    _check_temperature(temperature)
    text = F.normalize(id_text_features.float(), dim=-1)

    def one(x: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(x.float(), dim=-1) @ text.T
        return torch.softmax(cos / temperature, dim=1).amax(dim=1)

    return _batched(one, image_features, batch_size)


def neglabel_group_permutation(n_negatives: int, n_groups: int, seed: int = 0) -> torch.Tensor:
    """Return the negative-label indices used by grouped NegLabel, shaped ``(n_groups, group_size)``.

    NegLabel's official grouping (Jiang et al., ICLR 2024, Sec. 3.3; docs/method.md, "NegLabel"): drop the **last**
    ``n_negatives % n_groups`` negatives of the saved order, then permute the remaining ones with a fixed-seed
    generator and split the permutation into ``n_groups`` contiguous groups of equal size.

    Args:
        n_negatives: number of negative labels ``M``.
        n_groups: number of groups ``G`` (1 <= G <= M).
        seed: seed of the permutation (a ``torch.Generator`` on the CPU, so it is the same on every device).

    Returns:
        ``(G, M // G)`` int64 index tensor on the CPU.
    """
    if n_groups < 1 or n_groups > n_negatives:
        raise ValueError(f"n_groups must be in [1, n_negatives={n_negatives}], got {n_groups}")
    kept = n_negatives - n_negatives % n_groups  # the tail of the saved order is dropped before the shuffle
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(kept, generator=generator).reshape(n_groups, kept // n_groups)


def grouped_id_probability(
    id_logits: torch.Tensor, neg_logits: torch.Tensor, n_groups: int | None = None
) -> torch.Tensor:
    """Return the probability mass on the ID labels, averaged over groups of negative labels.

    For each group ``g``: ``p_g = sum_i exp(l_i) / (sum_i exp(l_i) + sum_{j in g} exp(l_j))`` over ID logits
    ``l_i`` and the group's negative logits ``l_j``, computed stably as
    ``sigmoid(logsumexp(id) - logsumexp(group))``. The negatives' columns must already be in group order
    (group 0's columns first, and so on), as :func:`neglabel_score` arranges them, so the grouping is a
    reshape rather than a gather.

    Args:
        id_logits: ``(N, C)`` logits against the ID labels (already divided by the temperature).
        neg_logits: ``(N, G * K)`` logits against the negative labels, grouped contiguously.
        n_groups: number of groups ``G``; ``None`` or 1 for one group (ungrouped NegLabel, Eq. 4).

    Returns:
        ``(N,)`` scores in ``[0, 1]``; higher = more in-distribution.
    """
    if n_groups is not None and n_groups < 1:
        raise ValueError(f"n_groups must be None or >= 1, got {n_groups}")
    lse_id = torch.logsumexp(id_logits, dim=1, keepdim=True)
    groups = n_groups or 1
    if neg_logits.shape[1] % groups:
        raise ValueError(f"{neg_logits.shape[1]} negative columns do not split into {groups} equal groups")
    lse_neg = torch.logsumexp(neg_logits.reshape(len(neg_logits), groups, -1), dim=2)
    return torch.sigmoid(lse_id - lse_neg).mean(dim=1)


def neglabel_score(
    image_features: torch.Tensor,
    id_text_features: torch.Tensor,
    neg_text_features: torch.Tensor,
    temperature: float = 0.01,
    n_groups: int | None = 100,
    seed: int = 0,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Return the NegLabel score (Jiang et al., ICLR 2024, Eq. 4 and the grouping of Sec. 3.3).

    Logits are ``cos / temperature`` (the official ``tau = 0.01`` gives 100 x cosine). For each group of
    negatives, the softmax over ``[ID labels, group negatives]`` puts some mass on the ID labels; the score is
    that mass averaged over groups. ``n_groups=None`` (or 1) is the ungrouped score.

    Cost: one matrix product against ``[ID; negatives]`` plus one pass of exp. Without autograd the product of each
    chunk of rows goes into one reused buffer, and the reduction (segment maxima, ``exp``, segment sums) runs in
    place on it, so no chunk-sized tensor is allocated or written twice (``benchmarks/neglabel_scoring.py``: about
    1.1x a plain matrix product of the same shape on CPU); with autograd the same formula runs out of place
    (:func:`grouped_id_probability`). Both give the same float32 numbers.

    Args:
        image_features: ``(N, D)`` image embeddings (normalised here).
        id_text_features: ``(C, D)`` ID label embeddings (normalised here).
        neg_text_features: ``(M, D)`` negative label embeddings (normalised here), in their saved order.
        temperature: ``tau`` (> 0); official 0.01.
        n_groups: number of groups ``G``; official 100 (capped at the number of negatives); ``None`` for the
            ungrouped score.
        seed: seed of the group permutation (official: fixed); see :func:`neglabel_group_permutation`.
        batch_size: rows of ``image_features`` scored at once; ``None``: as many as keep a chunk of logits near
            :data:`CHUNK_BYTES` (64 MiB on CPU, where larger chunks fall out of cache; 1 GiB on accelerators).

    Returns:
        ``(N,)`` float32 scores in ``[0, 1]``; higher = more in-distribution.

    Raises:
        ValueError: on mismatched feature dimensions, a non-positive temperature, too many groups or a
            ``batch_size`` below 1.
    """
    _check_features(image_features, id_text_features, "id_text_features")
    _check_features(image_features, neg_text_features, "neg_text_features")
    _check_temperature(temperature)
    if n_groups is not None and n_groups < 1:
        raise ValueError(f"n_groups must be None or >= 1, got {n_groups}")
    if len(neg_text_features) == 0:
        raise ValueError("neg_text_features is empty: NegLabel needs at least one negative label")
    if n_groups is not None:
        n_groups = min(n_groups, len(neg_text_features))  # a list shorter than G: one negative per group
    n_id = len(id_text_features)
    if n_groups is not None and n_groups > 1:
        # Reorder the negatives' rows once so that every group is a contiguous block of columns.
        order = neglabel_group_permutation(len(neg_text_features), n_groups, seed).reshape(-1)
        neg_text_features = neg_text_features[order.to(neg_text_features.device)]
    # One matrix product against [ID; negatives]: the cost is that product plus one pass of exp.
    text = F.normalize(torch.cat([id_text_features, neg_text_features]).float(), dim=-1) / temperature
    if batch_size is None:
        budget = CHUNK_BYTES["cpu"] if image_features.device.type == "cpu" else CHUNK_BYTES["other"]
        batch_size = min(max(budget // (4 * len(text)), 64), 16384)
    inputs = (image_features, id_text_features, neg_text_features)
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in inputs)):
        return _neglabel_in_place(image_features, text, n_id, n_groups or 1, batch_size)

    def one(x: torch.Tensor) -> torch.Tensor:
        logits = F.normalize(x.float(), dim=-1) @ text.T
        return grouped_id_probability(logits[:, :n_id], logits[:, n_id:], n_groups)

    return _batched(one, image_features, batch_size)


def _neglabel_in_place(
    image_features: torch.Tensor, text: torch.Tensor, n_id: int, n_groups: int, batch_size: int
) -> torch.Tensor:
    """Return :func:`grouped_id_probability` of ``normalize(image_features) @ text.T`` without autograd: each
    chunk's logits go into one reused buffer and are reduced in place (max, subtract, exp, sum per segment)."""
    rows = _row_batches(len(image_features), batch_size)
    out = torch.empty(len(image_features), dtype=torch.float32, device=image_features.device)
    text_t = text.T.contiguous()
    buffer = torch.empty(min(batch_size, len(image_features)), len(text), device=text.device)
    with torch.no_grad():
        for start in rows:
            x = F.normalize(image_features[start : start + batch_size].float(), dim=-1)
            logits = torch.mm(x, text_t, out=buffer[: len(x)])
            ids, negs = logits[:, :n_id], logits[:, n_id:].view(len(x), n_groups, -1)
            id_max, neg_max = ids.amax(dim=1, keepdim=True), negs.amax(dim=2, keepdim=True)
            ids.sub_(id_max)
            negs.sub_(neg_max)
            logits.exp_()
            lse_id = ids.sum(dim=1, keepdim=True).log_().add_(id_max)
            lse_neg = negs.sum(dim=2).log_().add_(neg_max.squeeze(2))
            out[start : start + len(x)] = torch.sigmoid(lse_id - lse_neg).mean(dim=1)
    return out
