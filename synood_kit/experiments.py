"""End-to-end runs over a benchmark that the CLI and the notebooks share: each writes its tables, figures and
``metrics.json`` to an output folder and returns what it computed.

* :func:`run_evaluation`: the zero-shot baselines on every split of a :class:`~synood_kit.benchmark.Benchmark`
  (MCM and NegLabel with CLIP; MSP and energy with the preset's classifier), the SynOOD score when a fine-tuning
  checkpoint is given, and the published numbers beside them when the benchmark has a ledger.
* :func:`run_synood`: stages 6-7 on a finished synthesis folder: SynOOD against zero-shot NegLabel, the
  single-stage ablations and the ID-only control.

Each stage's result is cached (features by encoder and image set, negatives by model, class names and mining
settings), so a rerun after an interruption only redoes what is missing.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = [
    "EvaluationResult",
    "FinetuneInputs",
    "SynoodResult",
    "benchmark_negatives",
    "check_synthesis_folder",
    "finetune_inputs",
    "run_evaluation",
    "run_synood",
    "synthesis_identity",
    "training_settings",
    "write_results",
]


def write_results(out: Path, stem: str, table, stage: str, run, note: str = "", **metrics) -> None:
    """Write a run's results table as ``{stem}.csv`` and ``{stem}.md`` (with ``note`` below the table), and
    ``metrics.json`` holding the stage, the run's settings (a dataclass or a dict), the table's rows and ``metrics``."""
    from .evaluation import format_markdown
    from .storage import atomic_path, atomic_write_json, atomic_write_text

    with atomic_path(out / f"{stem}.csv") as tmp:
        table.to_csv(tmp, index=False)
    atomic_write_text(out / f"{stem}.md", format_markdown(table) + (f"\n{note}" if note else ""))
    settings = json.loads(json.dumps(run if isinstance(run, dict) else asdict(run), default=str))
    atomic_write_json(
        out / "metrics.json",
        {"stage": stage, "run": settings, "table": table.to_dict(orient="records"), **metrics},
    )


def benchmark_negatives(clip, benchmark, preset, out: Path, negatives: str | Path | None = None, progress: bool = True):
    """Return the negative labels of a run: the given file, else ``out/negatives.json`` when it was mined by this
    CLIP for these class names with these settings, else mined now (``preset.mining_for(benchmark)``) and saved
    there."""
    from .negatives import NegativeLabels, mine_negative_labels
    from .storage import sha256_text

    if negatives is not None:
        return NegativeLabels.load(negatives)
    config = preset.mining_for(benchmark)
    path = Path(out) / "negatives.json"
    if path.is_file():
        saved = NegativeLabels.load(path)
        p = saved.provenance
        if (
            p.get("model_fingerprint") == clip.fingerprint
            and p.get("id_labels_fingerprint") == sha256_text("\n".join(benchmark.class_names))
            and p.get("config") == json.loads(json.dumps(asdict(config)))
        ):
            return saved
    labels = mine_negative_labels(clip, list(benchmark.class_names), config, progress=progress).labels
    labels.save(path)
    return labels


@dataclass
class EvaluationResult:
    """What :func:`run_evaluation` computed."""

    table: object  # pandas.DataFrame from evaluation.ood_table (a row per method and OOD split, plus means)
    scores: dict  # {method: {split: (N,) numpy scores}}
    accuracy: dict  # {"clip_zero_shot": top-1 on id_test, "classifier": top-1 when its classes are the benchmark's}
    negatives: object  # the NegativeLabels used
    skipped: dict  # {split: [{"id", "path", "reason"}]} images that could not be read (left out of the scores)
    out_dir: Path
    seconds: dict  # wall time per stage
    ledger: object = None  # published numbers beside the measured ones (pandas.DataFrame), when there are some


def run_evaluation(
    out_dir: str | Path,
    benchmark,
    preset,
    negatives: str | Path | None = None,
    finetune: str | Path | None = None,
    ledger: str | None = None,
    sample: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> EvaluationResult:
    """Score every split of a benchmark with every method and write the results.

    Writes ``evaluation.csv``, ``evaluation.md``, ``metrics.json``, ``score_histograms.png``, ``negatives.json``
    (when mined) and ``ledger.csv`` (with a ledger) into ``out_dir``.

    Args:
        out_dir: output folder (created).
        benchmark: a :class:`~synood_kit.benchmark.Benchmark`.
        preset: a :class:`~synood_kit.preset.Preset`: models, mining, scoring, ``n_boot``.
        negatives: a saved negative-label list; ``None`` mines one (cached in ``out_dir``).
        finetune: a SynOOD checkpoint (``finetune.safetensors``) trained with these negatives: adds ``SynOOD``.
        ledger: the published numbers to set beside (e.g. ``"ImageNet-1k (MOS)"``); default the benchmark's own
            (:data:`synood_kit.ledger.LEDGER_BENCHMARKS`), none for others.
        sample: score at most this many images per split (a fixed-seed sample); ``None``: all.
        progress: show progress bars.
        overwrite: replace a run of other settings that the folder holds (its outputs are removed first).

    The folder is locked and checked (:func:`~synood_kit.storage.claim_output`) after the inputs are read and the
    models loaded, before anything is written: a second run into it at the same time, or a folder holding an
    evaluation of other settings (or another kind of run), is refused. Images that cannot be read are left out of
    the scores and counted per split in the table (``skipped_id``, ``skipped_ood``), ``evaluation.md`` and
    ``metrics.json`` (``skipped``: count and reasons per split).

    Raises:
        FileNotFoundError: for a negatives or checkpoint file that does not exist (before any model is loaded).
        ValueError: for an unknown ledger or device, a checkpoint of another negative-label list or CLIP width, a
            split none of whose images can be read, or a folder holding another run.
        OutputError: if the folder is in use by another run or cannot be written.
    """
    from .ledger import LEDGER_BENCHMARKS, ledger_names
    from .models import check_device, file_fingerprint, load_clip
    from .storage import claim_output

    for name, path in (("negatives", negatives), ("finetune checkpoint", finetune)):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{name} file not found: {path}")
    ledger = ledger or LEDGER_BENCHMARKS.get(benchmark.name)
    if ledger and ledger not in ledger_names():
        raise ValueError(f"unknown ledger {ledger!r}; known: {ledger_names()}")
    check_device(preset.models.device)
    out = Path(out_dir)
    models = preset.models
    splits = list(benchmark.evaluation_splits())
    t = time.time()
    sets = {s: benchmark.split(s).sample(sample) for s in splits}  # every split read (and checked) first
    clip = load_clip(models.clip, models.pretrained, device=models.device)
    clf = None
    if models.classifier != "none":
        from .classifier import load_classifier

        clf = load_classifier(models.classifier, weights=models.classifier_weights, device=models.device)
    settings = {
        "benchmark": {**benchmark.identity(), "splits": {s: benchmark.spec(s).location for s in splits}},
        "models": {k: v for k, v in asdict(models).items() if k != "device"},
        "mining": asdict(preset.mining_for(benchmark)),
        "scores": asdict(preset.scores),
        "n_boot": preset.n_boot,
        "negatives": None if negatives is None else file_fingerprint(negatives),
        "finetune": None if finetune is None else file_fingerprint(finetune),
        "ledger": ledger,
        "sample": sample,
    }
    with claim_output(out, "evaluation", settings, overwrite, _EVALUATION_OUTPUTS):
        return _evaluate(out, benchmark, preset, sets, clip, clf, negatives, finetune, ledger, sample, progress, t)


_EVALUATION_OUTPUTS = (
    "evaluation.csv",
    "evaluation.md",
    "metrics.json",
    "score_histograms.png",
    "ledger.csv",
    "negatives.json",
)


def _evaluate(out, benchmark, preset, sets, clip, clf, negatives, finetune, ledger, sample, progress, t):
    """:func:`run_evaluation`'s work, in a folder it holds."""
    import matplotlib.pyplot as plt

    from .classifier import classifier_logits
    from .evaluation import (
        classifier_scores,
        clip_scores,
        ood_table,
        skipped_markdown,
        skipped_summary,
        zero_shot_accuracy,
    )
    from .features import image_features, text_features
    from .finetune import load_finetune, synood_score
    from .ledger import ledger as ledger_table
    from .plotting import score_histograms
    from .storage import atomic_path

    seconds = {}
    feats = {s: image_features(clip, v, progress=progress) for s, v in sets.items()}
    seconds["clip_features"] = time.time() - t

    t = time.time()
    labels = benchmark_negatives(clip, benchmark, preset, out, negatives, progress)
    seconds["negatives"] = time.time() - t

    t = time.time()
    names = list(benchmark.class_names)
    scores = clip_scores(clip, {s: f.features for s, f in feats.items()}, names, labels, preset.scores)
    mcm_text = text_features(clip, [preset.scores.mcm_prompt.format(c) for c in names], progress=False)
    accuracy = {"clip_zero_shot": zero_shot_accuracy(feats["id_test"].features, feats["id_test"].labels, mcm_text)}
    if finetune is not None:
        nl = preset.scores.neglabel
        id_text = text_features(clip, [nl.id_prompt.format(c) for c in names], progress=False)
        ft = load_finetune(finetune, list(labels.words), dim=id_text.shape[1])
        neg_text = labels.text_features(clip, progress=False)
        scores["SynOOD"] = {
            s: synood_score(
                f.features,
                id_text,
                neg_text,
                ft["adapter"],
                ft["tuned_neg_text"],
                ft["tuned_index"],
                temperature=nl.temperature,
                n_groups=nl.n_groups,
                seed=nl.seed,
            )
            .double()
            .numpy()
            for s, f in feats.items()
        }
    if clf is not None:
        logits = {s: classifier_logits(clf, v, progress=progress) for s, v in sets.items()}
        scores.update(classifier_scores({s: lg.features for s, lg in logits.items()}, preset.scores))
        if tuple(clf.class_names) == tuple(names) or tuple(clf.class_names) == tuple(benchmark.id_test.class_names):
            accuracy["classifier"] = float(
                (logits["id_test"].features.argmax(1).numpy() == logits["id_test"].labels).mean()
            )
    table = ood_table(scores, "id_test", list(benchmark.ood_splits), n_boot=preset.n_boot)
    skipped = {s: f.skipped for s, f in feats.items()}
    ood_sets = table["ood_set"].where(table["ood_set"] != "mean")
    table["skipped_id"] = len(skipped["id_test"])  # unreadable images left out of each row's sets
    table["skipped_ood"] = [
        len(skipped[o]) if isinstance(o, str) else sum(len(skipped[x]) for x in benchmark.ood_splits) for o in ood_sets
    ]
    seconds["scoring"] = time.time() - t

    fig, axes = plt.subplots(1, len(scores), figsize=(4.6 * len(scores), 3.2), squeeze=False)
    for ax, (method, by_split) in zip(axes[0], scores.items(), strict=True):
        score_histograms(by_split, title=method, ax=ax)
    fig.tight_layout()
    with atomic_path(out / "score_histograms.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    book = None
    if ledger:
        book = ledger_table(table, ledger)
        with atomic_path(out / "ledger.csv") as tmp:
            book.to_csv(tmp, index=False)
    summary = skipped_summary(skipped)
    write_results(
        out,
        "evaluation",
        table,
        "evaluation",
        note=skipped_markdown(summary),
        run={
            "preset": preset.name,
            "negatives": str(negatives) if negatives else None,
            "finetune": str(finetune) if finetune else None,
            "sample": sample,
        },
        benchmark={**benchmark.identity(), "source": benchmark.source, "groups": benchmark.groups},
        n={s: len(f) for s, f in feats.items()},
        skipped=summary,
        clip=clip.name,
        clip_fingerprint=clip.fingerprint,
        accuracy=accuracy,
        negatives={"count": len(labels), "counts": labels.provenance.get("counts")},
        fpr_convention=table.attrs.get("fpr_convention", ""),
        ledger=ledger,
        seconds={k: round(v, 1) for k, v in seconds.items()},
    )
    return EvaluationResult(table, scores, accuracy, labels, skipped, out, seconds, book)


@dataclass
class FinetuneInputs:
    """Cached CLIP features that fine-tuning and its evaluation read (see :func:`finetune_inputs`)."""

    negatives: object  # the synthesis folder's NegativeLabels (the order its records index)
    data: object  # the FinetuneData bundle (ID training and synthetic features, targets, label features)
    syn: object  # the synthetic images' FeatureSet (ids are the records' ids)
    sets: dict  # {split: FeatureSet} for id_test and every OOD split
    synthesis: dict  # the folder's synthesis.json


def check_synthesis_folder(folder: str | Path, benchmark) -> dict:
    """Return a synthesis folder's ``synthesis.json`` after checking it was made for ``benchmark``'s classes.

    Raises:
        FileNotFoundError: if the folder holds no synthesis run.
        ValueError: if it was made for another benchmark or other classes, naming both.
    """
    path = Path(folder) / "synthesis.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} holds no synthesis run (no synthesis.json): run `synood synthesize` first")
    config = json.loads(path.read_text())
    made = (config.get("run") or {}).get("benchmark")
    if not made:
        raise ValueError(
            f"{folder} does not record the benchmark it was made for (a folder from an older kit); synthesise it "
            f"again for {benchmark.name!r}"
        )
    want = benchmark.identity()
    if made.get("classes") != want["classes"]:
        raise ValueError(
            f"{folder} was synthesised for benchmark {made.get('name')!r} ({made.get('n_classes')} classes), not for "
            f"{want['name']!r} ({want['n_classes']} classes): its negative labels and sources belong to other classes"
        )
    return config


def finetune_inputs(synthetic: str | Path, clip, benchmark, preset, progress: bool = True) -> FinetuneInputs:
    """Load a synthesis folder's records and negatives and the features fine-tuning needs (from the feature cache
    where they are already there). Synthetic images are joined to their records by the records' ids.

    Raises:
        FileNotFoundError: if the folder has no records or no ``negatives.json``.
        ValueError: if it was made for another benchmark (:func:`check_synthesis_folder`).
    """
    import torch

    from .data import ImageItem, ImageSet
    from .features import image_features, text_features
    from .finetune import FinetuneData
    from .negatives import NegativeLabels
    from .synthesis import read_records

    syn_dir = Path(synthetic)
    config = check_synthesis_folder(syn_dir, benchmark)
    records = read_records(syn_dir)
    if not records:
        raise FileNotFoundError(f"no synthesis records in {syn_dir}: run `synood synthesize --out {syn_dir}` first")
    if not (syn_dir / "negatives.json").is_file():
        raise FileNotFoundError(f"{syn_dir} has no negatives.json: synthesise with a CLIP that assigns negative labels")
    negatives = NegativeLabels.load(syn_dir / "negatives.json")
    root = syn_dir.resolve()
    items = tuple(ImageItem(i, root / r["image"], -1) for i, r in sorted(records.items()))
    syn = image_features(clip, ImageSet(f"synthetic-{syn_dir.name}", root, items), progress=progress)
    id_train = image_features(clip, benchmark.id_train, progress=progress)
    syn_index = torch.tensor([records[i]["negative_label"]["index"] for i in syn.ids], dtype=torch.long)
    sets = {s: image_features(clip, benchmark.split(s), progress=progress) for s in benchmark.evaluation_splits()}
    prompt = preset.scores.neglabel.id_prompt
    id_text = text_features(clip, [prompt.format(c) for c in benchmark.class_names], progress=False)
    data = FinetuneData(
        id_train.features,
        torch.as_tensor(id_train.labels),
        syn.features,
        syn_index,
        id_text,
        negatives.text_features(clip, progress=False),
    )
    return FinetuneInputs(negatives, data, syn, sets, config)


@dataclass
class SynoodResult:
    """What :func:`run_synood` computed."""

    table: object  # pandas.DataFrame: a row per variant and OOD split, plus means
    scores: dict  # {variant: {split: (N,) numpy scores}}
    logs: dict  # {"adapter": [TrainLog], "labels": [TrainLog]}
    out_dir: Path


def run_synood(
    out_dir: str | Path,
    benchmark,
    preset,
    synthetic: str | Path,
    progress: bool = True,
    overwrite: bool = False,
) -> SynoodResult:
    """Fine-tune (stage A adapter, stage B tuned negatives) on cached features and compare SynOOD with zero-shot
    NegLabel, the two single-stage ablations and the ID-only control on every OOD split of ``benchmark``.

    Writes ``synood.csv``, ``synood.md``, ``finetune.safetensors`` and ``metrics.json`` into ``out_dir``; the
    fine-tuning itself checkpoints after every epoch there and resumes when run again with the same inputs
    (:mod:`synood_kit.finetune_run`). The folder is locked and checked before the first write: a second run into
    it at the same time, or a folder holding another run (other settings, another synthesis folder, another kind of
    run) is refused naming the difference, unless ``overwrite`` (the other run's outputs are removed first).

    Raises:
        FileNotFoundError, ValueError: for a synthesis folder that is missing, incomplete or made for another
            benchmark (naming both), or an output folder holding another run.
        OutputError: if the output folder is in use by another run or cannot be written.
    """
    from .models import check_device, load_clip
    from .storage import claim_output

    check_synthesis_folder(synthetic, benchmark)  # before any model is loaded
    check_device(preset.models.device)
    out = Path(out_dir)
    clip = load_clip(preset.models.clip, preset.models.pretrained, device=preset.models.device)
    settings = {
        **training_settings(benchmark, preset),
        "synthetic": synthesis_identity(synthetic),
    }
    with claim_output(out, "fine-tuning", settings, overwrite, _SYNOOD_OUTPUTS):
        return _synood(out, benchmark, preset, synthetic, clip, progress)


_SYNOOD_OUTPUTS = (
    "synood.csv",
    "synood.md",
    "metrics.json",
    "finetune.safetensors",
    "checkpoint.safetensors",
    "log.jsonl",
)


def training_settings(benchmark, preset) -> dict:
    """Return what fixes a fine-tuning folder's outputs besides its synthetic images: the benchmark's identity and
    splits, the models (not the device), the scoring and both stages' settings."""
    return {
        "benchmark": {
            **benchmark.identity(),
            "splits": {s: benchmark.spec(s).location for s in ("id_train", *benchmark.evaluation_splits())},
        },
        "models": {k: v for k, v in asdict(preset.models).items() if k != "device"},
        "scores": asdict(preset.scores),
        "adapter": asdict(preset.adapter),
        "labels": asdict(preset.labels),
        "n_boot": preset.n_boot,
    }


def synthesis_identity(folder: str | Path) -> dict:
    """Return what identifies a synthesis folder's images for a run that reads it: its path and configuration."""
    from .storage import sha256_text

    folder = Path(folder)
    return {"folder": str(folder.resolve()), "config": sha256_text((folder / "synthesis.json").read_text())}


def _synood(out: Path, benchmark, preset, synthetic, clip, progress: bool) -> SynoodResult:
    """:func:`run_synood`'s work, in a folder it holds."""
    import torch

    from .evaluation import ood_table
    from .finetune import synood_score, train_adapter
    from .finetune_run import run_finetune

    t = time.time()
    inputs = finetune_inputs(synthetic, clip, benchmark, preset, progress)
    data, negatives = inputs.data, inputs.negatives
    seconds = {"features": time.time() - t}

    t = time.time()
    # stages A and B, resumable: a checkpoint after every epoch in out_dir (synood_kit.finetune_run)
    ft = run_finetune(out, list(negatives.words), data, preset.adapter, preset.labels)
    adapter, tuned = ft["adapter"], ft["tuned_neg_text"]
    logs_a = [log for log in ft["logs"] if log.stage == "adapter"]
    logs_b = [log for log in ft["logs"] if log.stage == "labels"]
    # control: the same adapter trained on the ID images alone, so the synthetic images' share is visible
    id_only, _ = train_adapter(data.id_only(), preset.adapter)
    seconds["finetune"] = time.time() - t
    variants = {
        "NegLabel (zero-shot)": {},
        "control: adapter on ID images only": {"adapter": id_only},
        "SynOOD: adapter only": {"adapter": adapter},
        "SynOOD: tuned labels only": {"tuned_neg_text": tuned},
        "SynOOD (adapter + tuned labels)": {"adapter": adapter, "tuned_neg_text": tuned},
    }
    nl = preset.scores.neglabel
    scores = {
        name: {
            s: synood_score(
                f.features,
                data.id_text,
                data.neg_text,
                **kw,
                temperature=nl.temperature,
                n_groups=nl.n_groups,
                seed=nl.seed,
            )
            .double()
            .numpy()
            for s, f in inputs.sets.items()
        }
        for name, kw in variants.items()
    }
    table = ood_table(scores, "id_test", list(benchmark.ood_splits), n_boot=preset.n_boot)
    write_results(
        out,
        "synood",
        table,
        "synood",
        {
            "preset": preset.name,
            "synthetic": str(synthetic),
            "adapter": asdict(preset.adapter),
            "labels": asdict(preset.labels),
        },
        benchmark={**benchmark.identity(), "groups": benchmark.groups},
        clip_fingerprint=clip.fingerprint,
        n_synthetic=len(inputs.syn),
        n_negatives=len(negatives),
        distinct_negative_labels_assigned=int(torch.unique(data.syn_index).numel()),
        adapter_final_loss=logs_a[-1].loss,
        labels_final_loss=logs_b[-1].loss,
        seconds={k: round(v, 1) for k, v in seconds.items()},
    )
    return SynoodResult(table, scores, {"adapter": logs_a, "labels": logs_b}, out)
