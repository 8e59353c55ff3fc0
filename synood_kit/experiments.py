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

__all__ = [
    "EvaluationRun",
    "FinetuneInputs",
    "SynoodRun",
    "ZeroShotResult",
    "ZeroShotRun",
    "finetune_inputs",
    "id_class_names",
    "image_set",
    "miniworld_mining_config",
    "run_evaluation",
    "run_synood",
    "run_zero_shot",
    "write_results",
]


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


def write_results(out: Path, stem: str, table, stage: str, run, **metrics) -> None:
    """Write a run's results table as ``{stem}.csv`` and ``{stem}.md``, and ``metrics.json`` holding the stage,
    the run's settings, the table's rows and ``metrics``."""
    from .evaluation import format_markdown
    from .storage import atomic_write_json, atomic_write_text

    table.to_csv(out / f"{stem}.csv", index=False)
    atomic_write_text(out / f"{stem}.md", format_markdown(table))
    settings = json.loads(json.dumps(asdict(run), default=str))
    atomic_write_json(
        out / "metrics.json",
        {"stage": stage, "run": settings, "table": table.to_dict(orient="records"), **metrics},
    )


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

    from .evaluation import classifier_scores, clip_scores, ood_table, zero_shot_accuracy
    from .features import image_features, text_features
    from .miniworld.benchmark import OOD_SPLITS, open_benchmark, split_image_set
    from .models import load_clip
    from .negatives import NegativeLabels, mine_negative_labels
    from .plotting import score_histograms
    from .storage import atomic_path

    run = run or ZeroShotRun()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    t = time.time()
    root = open_benchmark(run.benchmark_root, progress=progress)
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
    saved = NegativeLabels.load(neg_path) if not run.negatives and neg_path.is_file() else None
    if run.negatives:
        negatives = NegativeLabels.load(run.negatives)
    elif saved is not None and saved.provenance.get("model_fingerprint") == clip.fingerprint:
        negatives = saved
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
        accuracy["classifier"] = float(
            (logits["id_test"].features.argmax(1).numpy() == logits["id_test"].labels).mean()
        )
    table = ood_table(scores, "id_test", list(OOD_SPLITS), n_boot=run.n_boot)
    seconds["scoring"] = time.time() - t

    fig, axes = plt.subplots(1, len(scores), figsize=(4.6 * len(scores), 3.2), squeeze=False)
    for ax, (method, by_split) in zip(axes[0], scores.items(), strict=True):
        score_histograms(by_split, title=method, ax=ax)
    fig.tight_layout()
    with atomic_path(out / "score_histograms.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    write_results(
        out,
        "zero_shot",
        table,
        "zero_shot",
        run,
        clip=clip.name,
        clip_fingerprint=clip.fingerprint,
        benchmark_root=str(root),
        accuracy=accuracy,
        negatives={"count": len(negatives), "counts": negatives.provenance.get("counts")},
        fpr_convention=table.attrs.get("fpr_convention", ""),
        seconds={k: round(v, 1) for k, v in seconds.items()},
    )
    return ZeroShotResult(table, scores, accuracy, negatives, out, seconds)


@dataclass
class FinetuneInputs:
    """Cached CLIP features that fine-tuning and its evaluation read (see :func:`finetune_inputs`)."""

    negatives: object  # the synthesis folder's NegativeLabels (the order its records index)
    id_train: object  # Features of the ID training split (labelled)
    syn: object  # Features of the synthetic images
    syn_index: object  # (M,) each synthetic image's negative label (index into ``negatives``)
    sets: dict  # {split: Features} for id_test and every OOD split
    id_text: object  # (C, d) ID label features ("the nice {class}")
    neg_text: object  # (K, d) negative label features


def finetune_inputs(synthetic: str | Path, clip, root: Path, progress: bool = True) -> FinetuneInputs:
    """Load a synthesis folder's records and negatives and the features fine-tuning needs, from the feature cache
    where they are already there.

    Raises:
        FileNotFoundError: if the folder has no records or no ``negatives.json``.
    """
    import torch

    from .data import ImageSet
    from .features import image_features, text_features
    from .miniworld.benchmark import OOD_SPLITS, split_image_set
    from .negatives import NegativeLabels
    from .synthesis import read_records

    syn_dir = Path(synthetic)
    records = read_records(syn_dir)
    if not records:
        raise FileNotFoundError(f"no synthesis records in {syn_dir}: run `synood synthesize --out {syn_dir}` first")
    if not (syn_dir / "negatives.json").is_file():
        raise FileNotFoundError(
            f"{syn_dir} has no negatives.json: synthesise with a --clip that assigns negative labels"
        )
    negatives = NegativeLabels.load(syn_dir / "negatives.json")
    id_train = image_features(clip, split_image_set(root, "id_train"), progress=progress)
    syn_set = ImageSet.from_folder(syn_dir / "images", name=f"synthetic-{syn_dir.name}", labelled=False)
    syn = image_features(clip, syn_set, progress=progress)
    by_stem = {Path(r["image"]).stem: r for r in records.values()}
    syn_index = torch.tensor([by_stem[Path(i).name]["negative_label"]["index"] for i in syn.ids])
    image_sets = {s: split_image_set(root, s) for s in ["id_test", *OOD_SPLITS]}
    sets = {s: image_features(clip, v, progress=progress) for s, v in image_sets.items()}
    id_text = text_features(clip, [f"the nice {c}" for c in image_sets["id_test"].class_names], progress=False)
    return FinetuneInputs(
        negatives, id_train, syn, syn_index, sets, id_text, negatives.text_features(clip, progress=False)
    )


@dataclass(frozen=True)
class SynoodRun:
    """What :func:`run_synood` fine-tunes and evaluates (stages 6-7 on a finished synthesis folder)."""

    synthetic: str = "outputs/synood/synthetic"  # a `synood synthesize` folder (images, records, negatives.json)
    clip: str = "miniworld"  # the CLIP that is fine-tuned (must be the one that labelled the synthetic images)
    pretrained: str | None = None  # open_clip pretrained tag
    benchmark_root: str | None = None  # built mini-world benchmark; None: the default cache location
    adapter_epochs: int = 3  # stage A epochs (official 3)
    label_epochs: int = 5  # stage B epochs (official 5)
    n_boot: int = 200  # bootstrap replicates
    device: str = "cpu"  # torch device


def run_synood(out_dir: str | Path, run: SynoodRun | None = None, progress: bool = True) -> dict:
    """Fine-tune (stage A adapter, stage B tuned negatives) on cached features and compare SynOOD with
    zero-shot NegLabel and the two single-stage ablations on every OOD split.

    Writes ``synood.csv``, ``synood.md``, ``finetune.safetensors`` and ``metrics.json`` into ``out_dir``; the
    fine-tuning itself checkpoints after every epoch there and resumes when run again with the same inputs
    (:mod:`synood_kit.finetune_run`), and a folder holding another run is refused.

    Returns:
        ``{"table": DataFrame, "scores": {...}, "logs": {...}}``.
    """
    import torch

    from .evaluation import ood_table
    from .finetune import AdapterConfig, LabelTuneConfig, synood_score, train_adapter
    from .finetune_run import run_finetune
    from .miniworld.benchmark import OOD_SPLITS, open_benchmark
    from .models import load_clip

    run = run or SynoodRun()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    root = open_benchmark(run.benchmark_root, progress=progress)
    clip = load_clip(run.clip, run.pretrained, device=run.device)
    t = time.time()
    inputs = finetune_inputs(run.synthetic, clip, root, progress)
    negatives, syn, syn_index = inputs.negatives, inputs.syn, inputs.syn_index
    id_train, sets, id_text, neg_text = inputs.id_train, inputs.sets, inputs.id_text, inputs.neg_text
    seconds = {"features": time.time() - t}

    t = time.time()
    # stages A and B, resumable: a checkpoint after every epoch in out_dir (synood_kit.finetune_run)
    ft = run_finetune(
        out,
        list(negatives.words),
        id_train.features,
        torch.as_tensor(id_train.labels),
        syn.features,
        syn_index,
        id_text,
        neg_text,
        AdapterConfig(epochs=run.adapter_epochs),
        LabelTuneConfig(epochs=run.label_epochs),
    )
    adapter, tuned = ft["adapter"], ft["tuned_neg_text"]
    logs_a = [log for log in ft["logs"] if log.stage == "adapter"]
    logs_b = [log for log in ft["logs"] if log.stage == "labels"]
    # control: the same adapter trained on the ID images alone, so the synthetic images' share is visible
    id_only, _ = train_adapter(
        id_text.shape[1],
        id_train.features,
        torch.as_tensor(id_train.labels),
        syn.features[:0],
        syn_index[:0],
        id_text,
        neg_text,
        config=AdapterConfig(epochs=run.adapter_epochs),
    )
    seconds["finetune"] = time.time() - t
    variants = {
        "NegLabel (zero-shot)": {},
        "control: adapter on ID images only": {"adapter": id_only},
        "SynOOD: adapter only": {"adapter": adapter},
        "SynOOD: tuned labels only": {"tuned_neg_text": tuned},
        "SynOOD (adapter + tuned labels)": {"adapter": adapter, "tuned_neg_text": tuned},
    }
    scores = {
        name: {s: synood_score(f.features, id_text, neg_text, **kw).double().numpy() for s, f in sets.items()}
        for name, kw in variants.items()
    }
    table = ood_table(scores, "id_test", list(OOD_SPLITS), n_boot=run.n_boot)
    write_results(
        out,
        "synood",
        table,
        "synood",
        run,
        clip_fingerprint=clip.fingerprint,
        n_synthetic=len(syn),
        n_negatives=len(negatives),
        distinct_negative_labels_assigned=int(torch.unique(syn_index).numel()),
        adapter_final_loss=logs_a[-1].loss,
        labels_final_loss=logs_b[-1].loss,
        seconds={k: round(v, 1) for k, v in seconds.items()},
    )
    return {"table": table, "scores": scores, "logs": {"adapter": logs_a, "labels": logs_b}}


@dataclass(frozen=True)
class EvaluationRun:
    """An OOD evaluation on any image folders (ImageNet-1k val + iNaturalist/SUN/Places/Textures, OpenOOD lists)."""

    id_source: str  # ImageFolder root (class sub-folders) or an image-list file (OpenOOD format)
    ood_sources: tuple[tuple[str, str], ...]  # (name, folder or image-list file) per OOD set
    class_names: str = "folders"  # "folders" (sub-folder names), "imagenet" (open_clip's names in wnid order) or a file
    data_root: str | None = None  # root the paths of image-list files start from
    clip: str = "miniworld"  # open_clip name, folder, or "miniworld"
    pretrained: str | None = None  # open_clip pretrained tag
    negatives: str | None = None  # saved negative labels; None: mine from WordNet 3.0 for these class names
    finetune: str | None = None  # a SynOOD checkpoint (finetune.safetensors) to add the SynOOD score
    classifier: str | None = None  # classifier folder / torchvision name for MSP and energy
    classifier_weights: str | None = None  # torchvision weights name
    ledger_benchmark: str | None = None  # e.g. "ImageNet-1k (MOS)": print reported numbers beside the measured
    n_boot: int = 200  # bootstrap replicates
    device: str = "cpu"  # torch device


def image_set(source: str, name: str, labelled: bool, data_root: str | None):
    """Return an :class:`~synood_kit.data.ImageSet` from an ImageFolder tree or an OpenOOD-style image list
    (a file; its paths start at ``data_root``, default the list's folder)."""
    from .data import ImageSet

    path = Path(source)
    if path.is_file():
        return ImageSet.from_file_list(path, data_root or path.parent, name=name)
    return ImageSet.from_folder(path, name=name, labelled=labelled)


def id_class_names(id_set, class_names: str) -> list[str]:
    """Return the ID class names (the text of CLIP's ID prompts) of a labelled set.

    Args:
        id_set: the labelled ID :class:`~synood_kit.data.ImageSet`.
        class_names: ``"folders"`` (its sub-folder names, ``_`` read as a space), ``"imagenet"`` (open_clip's
            ImageNet-1k names in wnid order) or a text file of names, one per line in label order.

    Raises:
        FileNotFoundError: if the names file does not exist.
        ValueError: if the number of names differs from the set's number of classes.
    """
    if class_names == "folders":
        names = [c.replace("_", " ") for c in id_set.class_names]
    elif class_names == "imagenet":
        import open_clip

        names = list(open_clip.IMAGENET_CLASSNAMES)
    else:
        path = Path(class_names)
        if not path.is_file():
            raise FileNotFoundError(f"class names {class_names!r} are neither 'folders', 'imagenet' nor a file")
        names = [x.strip() for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    if id_set.class_names and len(names) != len(id_set.class_names):
        raise ValueError(f"{len(names)} class names for the {len(id_set.class_names)} classes of {id_set.root}")
    return names


def run_evaluation(out_dir: str | Path, run: EvaluationRun, progress: bool = True) -> dict:
    """Score an ID set and OOD sets with MCM, NegLabel, SynOOD (with a checkpoint) and MSP/energy (with a
    classifier) from one cached feature pass per set; write ``evaluation.csv``, ``evaluation.md``,
    ``metrics.json`` and, with ``ledger_benchmark``, ``ledger.csv``.
    """

    from .evaluation import classifier_scores, clip_scores, ood_table
    from .features import image_features, text_features
    from .finetune import load_finetune, synood_score
    from .models import load_clip
    from .negatives import NegativeLabels, mine_negative_labels

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not run.ood_sources:
        raise ValueError("no OOD sets: pass at least one (name, path)")
    id_set = image_set(run.id_source, "id", True, run.data_root)
    names = id_class_names(id_set, run.class_names)
    sets = {"id": id_set, **{n: image_set(p, n, False, run.data_root) for n, p in run.ood_sources}}
    clip = load_clip(run.clip, run.pretrained, device=run.device)
    feats = {s: image_features(clip, v, progress=progress).features for s, v in sets.items()}
    if run.negatives:
        negatives = NegativeLabels.load(run.negatives)
    else:
        negatives = mine_negative_labels(clip, names, progress=progress).labels
        negatives.save(out / "negatives.json")
    scores = clip_scores(clip, feats, names, negatives)
    if run.finetune:
        id_text = text_features(clip, [f"the nice {c}" for c in names], progress=False)
        ft = load_finetune(run.finetune, list(negatives.words), dim=id_text.shape[1])
        neg_text = negatives.text_features(clip, progress=False)
        scores["SynOOD"] = {
            s: synood_score(f, id_text, neg_text, ft["adapter"], ft["tuned_neg_text"], ft["tuned_index"])
            .double()
            .numpy()
            for s, f in feats.items()
        }
    if run.classifier:
        from .classifier import classifier_logits, load_classifier

        clf = load_classifier(run.classifier, weights=run.classifier_weights, device=run.device)
        scores.update(
            classifier_scores({s: classifier_logits(clf, v, progress=progress).features for s, v in sets.items()})
        )
    table = ood_table(scores, "id", [n for n, _ in run.ood_sources], n_boot=run.n_boot)
    result = {"table": table, "scores": scores}
    if run.ledger_benchmark:
        from .ledger import ledger

        book = ledger(table, run.ledger_benchmark)
        book.to_csv(out / "ledger.csv", index=False)
        result["ledger"] = book
    write_results(
        out,
        "evaluation",
        table,
        "evaluation",
        run,
        n={s: len(v) for s, v in sets.items()},
        fpr_convention=table.attrs.get("fpr_convention", ""),
    )
    return result
