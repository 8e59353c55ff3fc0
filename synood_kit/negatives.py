"""NegLabel negative-label mining (Jiang et al., ICLR 2024, Sec. 3.2), with an ordered, saved result.

For every candidate word of the corpus, take its prompt's cosine similarity to each ID label prompt and the
95th percentile of those similarities; keep, separately for nouns and adjectives, the 15% of candidates
with the lowest percentile (the words farthest from every ID class). The result is an **ordered** list
(nouns, then adjectives, each from the farthest word on) saved as JSON with its provenance, never a ``set``
(the official code's order was lost, so tuned rows could not be mapped back to words).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import MiningConfig
from .features import text_features
from .storage import atomic_write_json, sha256_text
from .wordnet import Corpus, load_wordnet_corpus

__all__ = [
    "MiningResult",
    "NegativeLabels",
    "assign_negative_labels",
    "build_corpus",
    "mine_negative_labels",
    "percentile_similarity",
]

FORMAT_VERSION = 1


@dataclass(frozen=True)
class NegativeLabels:
    """An ordered list of negative labels with their prompts and provenance."""

    words: tuple[str, ...]  # the labels, in their fixed order
    pos: tuple[str, ...]  # "noun" or "adj" per label
    prompts: tuple[str, ...]  # the text each label is encoded from
    percentile_similarity: tuple[float, ...]  # the mining statistic (lower = farther from the ID labels)
    provenance: dict  # model, corpus, ID labels, config, counts, time

    def __len__(self) -> int:
        return len(self.words)

    def save(self, path: str | Path) -> Path:
        """Write the list as JSON atomically (the order is the order of ``labels``)."""
        rows = [
            {"word": w, "pos": p, "prompt": t, "percentile_similarity": s}
            for w, p, t, s in zip(self.words, self.pos, self.prompts, self.percentile_similarity, strict=True)
        ]
        return atomic_write_json(path, {"format": FORMAT_VERSION, "provenance": self.provenance, "labels": rows})

    @classmethod
    def load(cls, path: str | Path) -> NegativeLabels:
        """Read a list written by :meth:`save`.

        Raises:
            FileNotFoundError: if the file does not exist.
            ValueError: if it is not a saved negative-label list.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"negative-label file not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            rows = data["labels"]
            words = tuple(str(r["word"]) for r in rows)
            pos = tuple(str(r["pos"]) for r in rows)
            prompts = tuple(str(r["prompt"]) for r in rows)
            stats = tuple(float(r["percentile_similarity"]) for r in rows)
            provenance = dict(data.get("provenance", {}))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"{path} is not a negative-label list written by synood_kit ({type(e).__name__}: {e})"
            ) from None
        if not words:
            raise ValueError(f"{path} holds no negative labels")
        return cls(words, pos, prompts, stats, provenance)

    @property
    def in_mining_order(self) -> bool:
        """Return whether the list is in the order mining saves: within each part of speech, ascending percentile
        similarity (the farthest word from the ID labels first)."""
        pairs = zip(self.percentile_similarity, self.percentile_similarity[1:], self.pos, self.pos[1:], strict=False)
        return all(a <= b for a, b, p, q in pairs if p == q)

    @property
    def fingerprint(self) -> str:
        """Return a hash of the ordered prompts (identifies the list in checkpoints and caches)."""
        return sha256_text("\n".join(self.prompts))

    def text_features(self, clip, **kwargs) -> torch.Tensor:
        """Return the labels' unnormalised text embeddings ``(M, D)``, in order (cached)."""
        return text_features(clip, list(self.prompts), **kwargs)


@dataclass(frozen=True)
class MiningResult:
    """Negative labels plus every candidate's statistic (for plots of the percentile distribution)."""

    labels: NegativeLabels
    candidate_words: tuple[str, ...]
    candidate_pos: tuple[str, ...]
    candidate_similarity: np.ndarray  # (M,) percentile similarity of every candidate
    thresholds: dict  # per part of speech: the largest statistic that was kept


def build_corpus(config: MiningConfig, id_class_names: list[str]) -> Corpus:
    """Return the candidate corpus: WordNet words minus the ID class names (an evenly spaced ``max_words`` of each
    part of speech when capped), plus ``extra_words``."""
    cc = config.corpus
    base = load_wordnet_corpus(cc.lemmas, tuple(cc.exclude_lexnames), tuple(cc.parts_of_speech))
    id_lower = {c.lower() for c in id_class_names}
    pairs = [(w, p) for w, p in zip(base.words, base.pos, strict=True) if w.lower() not in id_lower]
    capped = ""
    if cc.max_words is not None:
        kept = []
        for pos in cc.parts_of_speech:
            members = [x for x in pairs if x[1] == pos]
            step = max(1, len(members) / cc.max_words) if len(members) > cc.max_words else 1
            kept += [members[int(i * step)] for i in range(min(cc.max_words, len(members)))]
        pairs = kept
        capped = f"; capped at {cc.max_words} per part of speech (evenly spaced)"
    words, pos, seen = [], [], set()
    for w, p in pairs + [tuple(x) for x in cc.extra_words]:
        if p not in ("noun", "adj"):
            raise ValueError(f"extra word {w!r} has part of speech {p!r}; expected 'noun' or 'adj'")
        key = (w.lower(), p)
        if w.lower() in id_lower or key in seen:
            continue
        seen.add(key)
        words.append(w)
        pos.append(p)
    extra = f"; +{len(cc.extra_words)} extra words" if cc.extra_words else ""
    return Corpus(tuple(words), tuple(pos), base.description + capped + extra + f"; minus {len(id_lower)} ID names")


def percentile_similarity(
    candidate_features: torch.Tensor, id_features: torch.Tensor, percentile: float, batch_size: int = 8192
) -> torch.Tensor:
    """Return each candidate's ``percentile``-th percentile of cosine similarity to the ID labels.

    Args:
        candidate_features: ``(M, D)`` candidate text embeddings (normalised here).
        id_features: ``(C, D)`` ID label text embeddings (normalised here).
        percentile: in ``[0, 100]``; NegLabel uses 95. Linear interpolation, as ``numpy.percentile``.
        batch_size: candidates per matrix product.

    Returns:
        ``(M,)`` float32 on the CPU.
    """
    ids = F.normalize(id_features.float(), dim=-1)
    q = percentile / 100.0
    out = []
    for i in range(0, len(candidate_features), batch_size):
        sims = F.normalize(candidate_features[i : i + batch_size].float(), dim=-1) @ ids.T
        sims, _ = sims.sort(dim=1)
        pos = q * (sims.shape[1] - 1)
        lo, hi = int(np.floor(pos)), int(np.ceil(pos))
        out.append((sims[:, lo] + (pos - lo) * (sims[:, hi] - sims[:, lo])).cpu())
    return torch.cat(out)


def mine_negative_labels(
    clip,
    id_class_names: list[str],
    config: MiningConfig | None = None,
    corpus: Corpus | None = None,
    cache_root: str | Path | None = None,
    progress: bool = True,
) -> MiningResult:
    """Mine NegLabel negative labels for an ID label set with a CLIP model.

    Args:
        clip: a :class:`~synood_kit.models.ClipModel`.
        id_class_names: the ID class names, e.g. ``open_clip.IMAGENET_CLASSNAMES``.
        config: mining settings (official defaults).
        corpus: the candidates; default :func:`build_corpus` from ``config.corpus``.
        cache_root: text-feature cache folder.
        progress: show progress bars while encoding prompts.

    Returns:
        A :class:`MiningResult` whose ``labels`` is the ordered list to save and score with.

    Raises:
        ValueError: if there are no ID class names or no candidates of a part of speech.
    """
    config = config or MiningConfig()
    if not id_class_names:
        raise ValueError("id_class_names is empty: mining needs the ID label set")
    corpus = corpus if corpus is not None else build_corpus(config, list(id_class_names))
    kw = {"cache_root": cache_root, "batch_size": config.text_batch_size, "progress": progress}
    id_feats = text_features(clip, [config.id_prompt.format(c) for c in id_class_names], **kw)
    prompt_of = {"noun": config.noun_prompt, "adj": config.adj_prompt}
    prompts = [prompt_of[p].format(w) for w, p in zip(corpus.words, corpus.pos, strict=True)]
    cand_feats = text_features(clip, prompts, **kw)
    stat = percentile_similarity(cand_feats, id_feats, config.percentile).numpy()
    pos_arr = np.array(corpus.pos)
    chosen, thresholds, counts = [], {}, {}
    for pos in config.corpus.parts_of_speech:
        members = np.flatnonzero(pos_arr == pos)
        if members.size == 0:
            raise ValueError(f"the corpus has no {pos} candidates ({corpus.description})")
        k = max(1, int(len(members) * config.fraction))
        order = members[np.argsort(stat[members], kind="stable")[:k]]
        chosen.extend(order.tolist())
        thresholds[pos] = float(stat[order[-1]])
        counts[pos] = {"candidates": int(members.size), "kept": int(k)}
    provenance = {
        "model": clip.name,
        "model_fingerprint": clip.fingerprint,
        "corpus": corpus.description,
        "corpus_fingerprint": corpus.fingerprint,
        "id_labels": len(id_class_names),
        "id_labels_fingerprint": sha256_text("\n".join(id_class_names)),
        "config": json.loads(json.dumps(dataclasses.asdict(config))),  # tuples -> lists, as when reloaded
        "counts": counts,
        "thresholds": thresholds,
        "order": "nouns then adjectives; within each, ascending percentile similarity (farthest first)",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    labels = NegativeLabels(
        words=tuple(corpus.words[i] for i in chosen),
        pos=tuple(corpus.pos[i] for i in chosen),
        prompts=tuple(prompts[i] for i in chosen),
        percentile_similarity=tuple(float(stat[i]) for i in chosen),
        provenance=provenance,
    )
    return MiningResult(labels, corpus.words, corpus.pos, stat, thresholds)


@torch.no_grad()
def assign_negative_labels(image_features: torch.Tensor, neg_text_features: torch.Tensor, temperature: float = 0.01):
    """Return each image's NegLabel negative label: the argmax of the softmax over the negatives only
    (official stage 5: 100 x cosine, ViT-B/16), and that probability.

    Args:
        image_features: ``(N, D)`` image features (normalised here).
        neg_text_features: ``(M, D)`` negative label features in their saved order.
        temperature: softmax temperature on cosine similarities.

    Returns:
        ``(indices (N,) int64 into the saved order, probabilities (N,) float32)``.
    """
    if image_features.shape[-1] != neg_text_features.shape[-1]:
        raise ValueError(
            f"feature dims differ: images {image_features.shape[-1]}, negatives {neg_text_features.shape[-1]}"
        )
    logits = (
        F.normalize(image_features.float(), dim=-1) @ F.normalize(neg_text_features.float(), dim=-1).T / temperature
    )
    prob, index = torch.softmax(logits, dim=1).max(dim=1)
    return index.cpu(), prob.cpu()
