"""Guidance scorers for the refinement loop: differentiable ``(B, 3, H, W) [0, 1] -> (B,)`` scores, higher = more
in-distribution, and the reachable boundary target.

* :func:`classifier_scorer`: the official code's scorer, a torchvision classifier's logits ``g``, in the official
  form ``mean(g) - logsumexp(g)`` (bounded above by ``-log C``) or as the negative free energy ``logsumexp(g)``.
* :func:`clip_scorer`: the CLIP model being fine-tuned, as the paper's framing suggests: MCM, NegLabel, or CLIP
  energy (``logsumexp`` of the ID logits).
* :func:`boundary_target`: the scorer's value at the ID boundary (a low quantile of ID scores), a target the
  loss ``(target - s)^2`` can reach.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "OFFICIAL_MARGIN",
    "boundary_target",
    "classifier_score",
    "classifier_scorer",
    "clip_scorer",
    "score_quantile",
]

OFFICIAL_MARGIN = -5.0  # the official code's target m; unreachable for mean(g) - logsumexp(g) with 1000 classes

Scorer = Callable[[torch.Tensor], torch.Tensor]


def classifier_score(logits: torch.Tensor, form: str = "energy", temperature: float = 1.0) -> torch.Tensor:
    """Return the guidance score of classifier ``logits`` ``(B, C)``: ``"official"`` ``mean(g) - logsumexp(g)`` or
    ``"energy"`` ``T * logsumexp(g / T)`` (see :func:`classifier_scorer`)."""
    if form == "official":
        return logits.mean(dim=1) - torch.logsumexp(logits, dim=1)
    if form == "energy":
        return temperature * torch.logsumexp(logits / temperature, dim=1)
    raise ValueError(f"form must be 'official' or 'energy', got {form!r}")


def classifier_scorer(classifier, form: str = "energy", temperature: float = 1.0) -> Scorer:
    """Return a scorer from an ID classifier (:class:`~synood_kit.classifier.ClassifierModel`).

    Args:
        classifier: has ``logits(images) -> (B, C)``, differentiable in the images.
        form: ``"official"``: ``mean(g) - logsumexp(g)`` (the official code's score, ``<= -log C``);
            ``"energy"``: ``T * logsumexp(g / T)`` (negative free energy, Liu et al. 2020).
        temperature: energy temperature ``T``.
    """
    if form not in ("official", "energy"):
        raise ValueError(f"form must be 'official' or 'energy', got {form!r}")

    def score(images: torch.Tensor) -> torch.Tensor:
        return classifier_score(classifier.logits(images), form, temperature)

    return score


def clip_scorer(
    clip,
    id_text_features: torch.Tensor,
    kind: str = "mcm",
    neg_text_features: torch.Tensor | None = None,
    temperature: float | None = None,
    n_groups: int | None = 100,
    seed: int = 0,
) -> Scorer:
    """Return a scorer from a CLIP model (:class:`~synood_kit.models.ClipModel`) and its label features.

    Args:
        clip: has ``encode_images(images) -> (B, D)``, differentiable in the images.
        id_text_features: ``(C, D)`` ID label features.
        kind: ``"mcm"`` (max softmax of cos / T, T = 1), ``"energy"`` (``logsumexp`` of 100 x cos over ID labels)
            or ``"neglabel"`` (needs ``neg_text_features``; tau = 0.01, grouped).
        neg_text_features: ``(M, D)`` negative label features for ``"neglabel"``.
        temperature: overrides the kind's default temperature.
        n_groups, seed: NegLabel grouping.
    """
    from .scores import mcm_score, neglabel_score

    if kind not in ("mcm", "energy", "neglabel"):
        raise ValueError(f"kind must be 'mcm', 'energy' or 'neglabel', got {kind!r}")
    if kind == "neglabel" and neg_text_features is None:
        raise ValueError("kind='neglabel' needs neg_text_features")
    id_text = id_text_features.detach().to(clip.device)
    neg_text = None if neg_text_features is None else neg_text_features.detach().to(clip.device)

    def score(images: torch.Tensor) -> torch.Tensor:
        feats = clip.encode_images(images)
        if kind == "mcm":
            return mcm_score(feats, id_text, temperature or 1.0)
        if kind == "energy":
            cos = F.normalize(feats, dim=-1) @ F.normalize(id_text, dim=-1).T
            t = temperature or 0.01
            return t * torch.logsumexp(cos / t, dim=1)
        return neglabel_score(feats, id_text, neg_text, temperature or 0.01, n_groups, seed)

    return score


@torch.no_grad()
def boundary_target(scorer: Scorer, id_images: torch.Tensor, quantile: float = 0.05, batch_size: int = 64) -> float:
    """Return the scorer's ``quantile`` over ID images: at 0.05, the threshold that keeps 95% of ID (FPR95's).

    Args:
        scorer: a guidance scorer.
        id_images: ``(N, 3, H, W)`` ID images in ``[0, 1]``.
        quantile: in ``(0, 1)``.
        batch_size: images scored at once.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    if len(id_images) == 0:
        raise ValueError("id_images is empty")
    scores = torch.cat(
        [scorer(id_images[i : i + batch_size]).float().cpu() for i in range(0, len(id_images), batch_size)]
    )
    return score_quantile(scores, quantile)


def score_quantile(scores: torch.Tensor, quantile: float = 0.05) -> float:
    """Return the ``quantile`` of ID images' guidance scores (:func:`boundary_target` from scores computed
    elsewhere, e.g. streamed batch by batch over a dataset too large to hold).

    Args:
        scores: ``(N,)`` scores of ID images.
        quantile: in ``(0, 1)``.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    if scores.numel() == 0:
        raise ValueError("no scores: the quantile of an empty set is undefined")
    return float(torch.quantile(scores.float().flatten(), quantile))
