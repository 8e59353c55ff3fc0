"""End-to-end runs that the CLI and the notebooks share: each writes its tables, figures and
``metrics.json`` to an output folder and returns what it computed.

Today: the zero-shot baselines on a benchmark (MCM and NegLabel with CLIP; MSP and energy with the ID
classifier when one is given). Each stage's result is cached (features by encoder and image set,
negatives by model and corpus), so a rerun after an interruption only redoes what is missing.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import CorpusConfig, MiningConfig
from .evaluation import ZeroShotConfig

__all__ = ["ZeroShotRun", "ZeroShotResult", "miniworld_mining_config", "run_zero_shot"]


def miniworld_mining_config() -> MiningConfig:
    """Return the mining settings of the mini-world: WordNet 3.0 plus the world's own vocabulary."""
    from .miniworld.world import world_vocabulary

    return MiningConfig(corpus=CorpusConfig(extra_words=tuple(world_vocabulary())))


@dataclass(frozen=True)
class ZeroShotRun:
    """What :func:`run_zero_shot` evaluates."""

    clip: str = "miniworld"  # open_clip name, local folder, or "miniworld"
    pretrained: str | None = None  # open_clip pretrained tag or checkpoint (with an architecture name)
    classifier: str | None = "miniworld"  # ID classifier folder, "miniworld", or None to skip MSP/energy
    benchmark_root: str | None = None  # built mini-world benchmark; None: the default cache location
    negatives: str | None = None  # a saved negative-label list; None: mine (cached next to the outputs)
    mining: MiningConfig = field(default_factory=miniworld_mining_config)  # used when mining
    scores: ZeroShotConfig = field(default_factory=ZeroShotConfig)  # prompts and temperatures
    n_boot: int = 200  # bootstrap replicates for the intervals (0: none)
    device: str = "cpu"  # torch device of the encoders


@dataclass
class ZeroShotResult:
    """What :func:`run_zero_shot` computed."""

    table: object  # pandas.DataFrame from evaluation.ood_table
    scores: dict  # {method: {split: (N,) numpy scores}}
    accuracy: dict  # {"clip_zero_shot": top-1 on id_test, "classifier": top-1 on id_test}
    negatives: object  # the NegativeLabels used
    out_dir: Path
    seconds: dict  # wall time per stage


def run_zero_shot(out_dir: str | Path, run: ZeroShotRun | None = None, progress: bool = True) -> ZeroShotResult:
    """Evaluate the zero-shot baselines on the mini-world benchmark and write the results.

    Writes ``zero_shot.csv``, ``zero_shot.md``, ``negatives.json``, ``score_histograms.png`` and
    ``metrics.json`` into ``out_dir``.

    Args:
        out_dir: output folder (created).
        run: what to evaluate.
        progress: show progress bars.

    Returns:
        A :class:`ZeroShotResult`.
    """
    import matplotlib.pyplot as plt

    from .evaluation import classifier_scores, clip_scores, format_markdown, ood_table, zero_shot_accuracy
    from .features import image_features, text_features
    from .miniworld.benchmark import OOD_SPLITS, build_benchmark, default_benchmark_root, split_image_set
    from .models import load_clip
    from .negatives import NegativeLabels, mine_negative_labels
    from .plotting import score_histograms
    from .storage import atomic_path, atomic_write_json, atomic_write_text

    run = run or ZeroShotRun()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    t = time.time()
    root = Path(run.benchmark_root) if run.benchmark_root else default_benchmark_root()
    build_benchmark(root, progress=progress)
    splits = ["id_test", *OOD_SPLITS]
    sets = {s: split_image_set(root, s) for s in splits}
    id_names = list(sets["id_test"].class_names)
    seconds["benchmark"] = time.time() - t

    t = time.time()
    clip = load_clip(run.clip, run.pretrained, device=run.device)
    feats = {s: image_features(clip, sets[s], progress=progress) for s in splits}
    seconds["clip_features"] = time.time() - t

    t = time.time()
    neg_path = out / "negatives.json"
    if run.negatives:
        negatives = NegativeLabels.load(run.negatives)
    elif neg_path.is_file() and NegativeLabels.load(neg_path).provenance.get("model_fingerprint") == clip.fingerprint:
        negatives = NegativeLabels.load(neg_path)
    else:
        negatives = mine_negative_labels(clip, id_names, run.mining, progress=progress).labels
        negatives.save(neg_path)
    seconds["negatives"] = time.time() - t

    t = time.time()
    scores = clip_scores(clip, {s: f.features for s, f in feats.items()}, id_names, negatives, run.scores)
    id_text = text_features(clip, [run.scores.mcm_prompt.format(c) for c in id_names], progress=False)
    accuracy = {"clip_zero_shot": zero_shot_accuracy(feats["id_test"].features, feats["id_test"].labels, id_text)}
    if run.classifier:
        from .classifier import classifier_logits, load_classifier

        clf = load_classifier(run.classifier, device=run.device)
        logits = {s: classifier_logits(clf, sets[s], progress=progress) for s in splits}
        scores.update(classifier_scores({s: lg.features for s, lg in logits.items()}, run.scores))
        accuracy["classifier"] = float((logits["id_test"].features.argmax(1).numpy() == logits["id_test"].labels).mean())
    table = ood_table(scores, "id_test", list(OOD_SPLITS), n_boot=run.n_boot)
    seconds["scoring"] = time.time() - t

    table.to_csv(out / "zero_shot.csv", index=False)
    atomic_write_text(out / "zero_shot.md", format_markdown(table))
    fig, axes = plt.subplots(1, len(scores), figsize=(4.6 * len(scores), 3.2), squeeze=False)
    for ax, (method, by_split) in zip(axes[0], scores.items(), strict=True):
        score_histograms(by_split, title=method, ax=ax)
    fig.tight_layout()
    with atomic_path(out / "score_histograms.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    rows = table.to_dict(orient="records")
    atomic_write_json(
        out / "metrics.json",
        {
            "stage": "zero_shot",
            "run": json.loads(json.dumps(asdict(run), default=str)),
            "clip": clip.name,
            "clip_fingerprint": clip.fingerprint,
            "benchmark_root": str(root),
            "accuracy": accuracy,
            "negatives": {"count": len(negatives), "counts": negatives.provenance.get("counts")},
            "table": rows,
            "fpr_convention": table.attrs.get("fpr_convention", ""),
            "seconds": {k: round(v, 1) for k, v in seconds.items()},
        },
    )
    return ZeroShotResult(table, scores, accuracy, negatives, out, seconds)
