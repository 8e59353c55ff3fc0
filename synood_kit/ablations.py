"""The ablation grid of stage 6 (METHOD.md), beyond the official code, as one tidy table.

For every synthetic set given (guided or unguided, classifier or CLIP scorer: reused ``synood synthesize``
folders) and every number of negatives, four ways of fine-tuning are trained on cached features and scored on
every OOD split:

* ``adapter``: stage A only;
* ``labels``: stage B only (tuned rows, no adapter);
* ``adapter + labels``: the SynOOD recipe (stage A, then stage B; both substituted at inference);
* ``joint``: one objective for the adapter and the negative rows (:func:`synood_kit.finetune.train_joint`).

Two rows per number of negatives need no synthetic images and anchor every comparison: zero-shot NegLabel and
the **control**, the same adapter trained on the ID images alone. A gain that the control also shows comes from
fine-tuning as such, not from the synthetic images.

Fewer negatives keep the ``k`` farthest from the ID labels (lowest percentile similarity: NegLabel's own
selection with a smaller ratio); the synthetic images are then re-assigned to their argmax label among those ``k``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TRAININGS", "AblationRun", "run_ablations"]

TRAININGS = ("adapter", "labels", "adapter + labels", "joint")


@dataclass(frozen=True)
class AblationRun:
    """What :func:`run_ablations` trains and scores."""

    synthetic: tuple[tuple[str, str], ...]  # (name, `synood synthesize` folder) per synthetic set
    n_negatives: tuple[int | None, ...] = (None,)  # numbers of negatives kept; None: all mined
    trainings: tuple[str, ...] = TRAININGS  # which of TRAININGS to run
    clip: str = "miniworld"  # the CLIP that labelled the synthetic images
    pretrained: str | None = None  # open_clip pretrained tag
    benchmark_root: str | None = None  # built mini-world benchmark; None: the default cache location
    adapter_epochs: int = 3  # stage A (and joint) epochs, official 3
    label_epochs: int = 5  # stage B epochs, official 5
    n_boot: int = 0  # bootstrap replicates for intervals (0: none)
    device: str = "cpu"  # torch device

    def __post_init__(self):
        if not self.synthetic:
            raise ValueError("AblationRun.synthetic is empty: give at least one (name, synthesis folder)")
        names = [n for n, _ in self.synthetic]
        if len(set(names)) != len(names):
            raise ValueError(f"synthetic set names must be unique, got {names}")
        unknown = [t for t in self.trainings if t not in TRAININGS]
        if unknown:
            raise ValueError(f"unknown trainings {unknown}; expected some of {list(TRAININGS)}")
        bad = [k for k in self.n_negatives if k is not None and k < 100]
        if bad:
            raise ValueError(f"n_negatives must be at least 100 (NegLabel's 100 groups) or None, got {bad}")


def _subset(neg_text, percentile_similarity, k):
    """Rows of the ``k`` negatives farthest from the ID labels, in their saved order (all when ``k`` is None)."""
    import torch

    if k is None or k >= len(neg_text):
        return torch.arange(len(neg_text))
    return torch.sort(torch.argsort(torch.as_tensor(percentile_similarity))[:k]).values


def run_ablations(out_dir: str | Path, run: AblationRun, progress: bool = True) -> dict:
    """Train and score the grid; write ``ablations.csv``, ``ablations.md`` and ``metrics.json`` into ``out_dir``.

    Returns:
        ``{"table": DataFrame}`` with columns ``synthetic``, ``training``, ``n_negatives``, ``ood_set`` and the
        metrics (fractions; FPR95 in both conventions), one row per variant and OOD split plus its ``mean``.

    Raises:
        FileNotFoundError: if a synthesis folder has no records or no saved negatives.
        ValueError: if the synthesis folders were labelled with different negative-label lists.
    """
    import torch

    from .evaluation import ood_table
    from .experiments import finetune_inputs, write_results
    from .finetune import (
        AdapterConfig,
        LabelTuneConfig,
        synood_score,
        train_adapter,
        train_joint,
        tune_labels,
    )
    from .miniworld.benchmark import OOD_SPLITS, open_benchmark
    from .models import load_clip
    from .negatives import assign_negative_labels

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    root = open_benchmark(run.benchmark_root, progress=progress)
    clip = load_clip(run.clip, run.pretrained, device=run.device)
    t0 = time.time()
    inputs = {name: finetune_inputs(folder, clip, root, progress) for name, folder in run.synthetic}
    first = next(iter(inputs.values()))
    for name, inp in inputs.items():
        if inp.negatives.words != first.negatives.words:
            raise ValueError(
                f"synthetic set {name!r} was labelled with a different negative-label list than "
                f"{run.synthetic[0][0]!r}; synthesise all sets with the same --clip and --negatives"
            )
    id_feats, id_labels = first.id_train.features, torch.as_tensor(first.id_train.labels)
    adapter_config = AdapterConfig(epochs=run.adapter_epochs)
    label_config = LabelTuneConfig(epochs=run.label_epochs)
    scores = {}
    synthetic_sets = {
        name: {"folder": str(folder), "n_synthetic": len(inputs[name].syn), "distinct_labels": {}}
        for name, folder in run.synthetic
    }

    def score(key, **kw):
        scores[key] = {
            s: synood_score(f.features, first.id_text, negs, **kw).double().numpy() for s, f in first.sets.items()
        }

    for k in run.n_negatives:
        rows = _subset(first.neg_text, first.negatives.percentile_similarity, k)
        negs = first.neg_text[rows]
        k_name = len(rows)
        score(("none", "zero-shot", k_name))
        control, _ = train_adapter(
            negs.shape[1],
            id_feats,
            id_labels,
            first.syn.features[:0],
            first.syn_index[:0],
            first.id_text,
            negs,
            config=adapter_config,
        )
        score(("none", "control: adapter on ID only", k_name), adapter=control)
        for name, inp in inputs.items():
            if k_name == len(first.neg_text):
                index = inp.syn_index
            else:  # re-assign each synthetic image to its argmax label among the kept negatives
                index, _ = assign_negative_labels(inp.syn.features, negs)
            syn_feats = inp.syn.features
            synthetic_sets[name]["distinct_labels"][k_name] = int(torch.unique(index).numel())
            adapter = tuned = None
            if {"adapter", "adapter + labels"} & set(run.trainings):
                adapter, _ = train_adapter(
                    negs.shape[1], id_feats, id_labels, syn_feats, index, first.id_text, negs, config=adapter_config
                )
            if {"labels", "adapter + labels"} & set(run.trainings):
                tuned, _ = tune_labels(negs, syn_feats, index, label_config)
            if "adapter" in run.trainings:
                score((name, "adapter", k_name), adapter=adapter)
            if "labels" in run.trainings:
                score((name, "labels", k_name), tuned_neg_text=tuned)
            if "adapter + labels" in run.trainings:
                score((name, "adapter + labels", k_name), adapter=adapter, tuned_neg_text=tuned)
            if "joint" in run.trainings:
                j_adapter, j_rows, _ = train_joint(
                    id_feats, id_labels, syn_feats, index, first.id_text, negs, config=adapter_config
                )
                score((name, "joint", k_name), adapter=j_adapter, tuned_neg_text=j_rows)
    table = ood_table(
        {" / ".join(map(str, key)): v for key, v in scores.items()}, "id_test", list(OOD_SPLITS), n_boot=run.n_boot
    )
    parts = table["method"].str.split(" / ", regex=False)
    table.insert(1, "synthetic", parts.str[0])
    table.insert(2, "training", parts.str[1])
    table.insert(3, "n_negatives", parts.str[2].astype(int))
    write_results(
        out, "ablations", table, "ablations", run, synthetic_sets=synthetic_sets, seconds=round(time.time() - t0, 1)
    )
    return {"table": table}
