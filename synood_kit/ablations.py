"""The ablation grid of stage 6 (docs/method.md), beyond the official code, as one tidy table.

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

import dataclasses
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
    n_boot: int = 0  # bootstrap replicates for intervals (0: none); models and epochs come from the preset

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


def run_ablations(
    out_dir: str | Path, benchmark, preset, run: AblationRun, progress: bool = True, overwrite: bool = False
) -> dict:
    """Train and score the grid on ``benchmark`` with ``preset``'s CLIP and stage settings; write
    ``ablations.csv``, ``ablations.md`` and ``metrics.json`` into ``out_dir``.

    Returns:
        ``{"table": DataFrame}`` with columns ``synthetic``, ``training``, ``n_negatives``, ``ood_set`` and the
        metrics (fractions; FPR95 in both conventions), one row per variant and OOD split plus its ``mean``.

    Raises:
        FileNotFoundError: if a synthesis folder has no records or no saved negatives.
        ValueError: if a synthesis folder was made for another benchmark, the folders were labelled with
            different negative-label lists, or the output folder holds another run (unless ``overwrite``).
        OutputError: if the output folder is in use by another run or cannot be written.
    """
    from .experiments import check_synthesis_folder, synthesis_identity, training_settings
    from .models import check_device, load_clip
    from .storage import claim_output

    for _, folder in run.synthetic:  # before any model is loaded
        check_synthesis_folder(folder, benchmark)
    check_device(preset.models.device)
    out = Path(out_dir)
    clip = load_clip(preset.models.clip, preset.models.pretrained, device=preset.models.device)
    settings = {
        **training_settings(benchmark, preset),
        "grid": {**dataclasses.asdict(run), "synthetic": {n: synthesis_identity(f) for n, f in run.synthetic}},
    }
    outputs = ("ablations.csv", "ablations.md", "metrics.json")
    with claim_output(out, "ablations", settings, overwrite, outputs):
        return _ablations(out, benchmark, preset, run, clip, progress)


def _ablations(out: Path, benchmark, preset, run: AblationRun, clip, progress: bool) -> dict:
    """:func:`run_ablations`' work, in a folder it holds."""
    import torch

    from .evaluation import ood_table
    from .experiments import finetune_inputs, write_results
    from .finetune import synood_score, train_adapter, train_joint, tune_labels
    from .negatives import assign_negative_labels

    t0 = time.time()
    inputs = {name: finetune_inputs(folder, clip, benchmark, preset, progress) for name, folder in run.synthetic}
    first = next(iter(inputs.values()))
    for name, inp in inputs.items():
        if inp.negatives.words != first.negatives.words:
            raise ValueError(
                f"synthetic set {name!r} was labelled with a different negative-label list than "
                f"{run.synthetic[0][0]!r}; synthesise all sets with the same CLIP and negatives"
            )
    nl = preset.scores.neglabel
    scores = {}
    synthetic_sets = {
        name: {"folder": str(folder), "n_synthetic": len(inputs[name].syn), "distinct_labels": {}}
        for name, folder in run.synthetic
    }

    def score(key, negs, **kw):
        scores[key] = {
            s: synood_score(
                f.features,
                first.data.id_text,
                negs,
                **kw,
                temperature=nl.temperature,
                n_groups=nl.n_groups,
                seed=nl.seed,
            )
            .double()
            .numpy()
            for s, f in first.sets.items()
        }

    sizes = sorted(
        {len(_subset(first.data.neg_text, first.negatives.percentile_similarity, k)) for k in run.n_negatives},
        reverse=True,
    )
    for k_name in sizes:  # counts at or above the list's length all mean "every negative": run once
        rows = _subset(first.data.neg_text, first.negatives.percentile_similarity, k_name)
        negs = first.data.neg_text[rows]
        score(("none", "zero-shot", k_name), negs)
        control, _ = train_adapter(first.data.id_only().with_negatives(negs, first.data.syn_index[:0]), preset.adapter)
        score(("none", "control: adapter on ID only", k_name), negs, adapter=control)
        for name, inp in inputs.items():
            if k_name == len(first.data.neg_text):
                index = inp.data.syn_index
            else:  # re-assign each synthetic image to its argmax label among the kept negatives
                index, _ = assign_negative_labels(inp.data.syn_features, negs)
            data = inp.data.with_negatives(negs, index)
            synthetic_sets[name]["distinct_labels"][k_name] = int(torch.unique(index).numel())
            adapter = tuned = None
            if {"adapter", "adapter + labels"} & set(run.trainings):
                adapter, _ = train_adapter(data, preset.adapter)
            if {"labels", "adapter + labels"} & set(run.trainings):
                tuned, _ = tune_labels(data, preset.labels)
            if "adapter" in run.trainings:
                score((name, "adapter", k_name), negs, adapter=adapter)
            if "labels" in run.trainings:
                score((name, "labels", k_name), negs, tuned_neg_text=tuned)
            if "adapter + labels" in run.trainings:
                score((name, "adapter + labels", k_name), negs, adapter=adapter, tuned_neg_text=tuned)
            if "joint" in run.trainings:
                j_adapter, j_rows, _ = train_joint(data, preset.adapter)
                score((name, "joint", k_name), negs, adapter=j_adapter, tuned_neg_text=j_rows)
    table = ood_table(
        {" / ".join(map(str, key)): v for key, v in scores.items()},
        "id_test",
        list(benchmark.ood_splits),
        n_boot=run.n_boot,
    )
    parts = table["method"].str.split(" / ", regex=False)
    table.insert(1, "synthetic", parts.str[0])
    table.insert(2, "training", parts.str[1])
    table.insert(3, "n_negatives", parts.str[2].astype(int))
    write_results(
        out,
        "ablations",
        table,
        "ablations",
        {**dataclasses.asdict(run), "preset": preset.name},
        benchmark=benchmark.identity(),
        synthetic_sets=synthetic_sets,
        seconds=round(time.time() - t0, 1),
    )
    return {"table": table}
