"""Resumable SynOOD fine-tuning (stage 6): stages A and B on cached features, with a checkpoint after every epoch.

Layout of a run folder::

    checkpoint.safetensors   weights, tuned rows and optimiser state after the last finished epoch
    log.jsonl                one line per finished epoch with its TrainLog steps (read back once per epoch)
    finetune.safetensors     the result (:func:`~synood_kit.finetune.save_finetune`), written when both stages end

Guarantees:

* **Resumable, bit-identical.** Shuffles are a function of ``(seed, epoch)``, learning rates of the step, and the
  checkpoint holds the optimiser state, so a run killed at any moment and started again with the same inputs
  continues after its last finished epoch and ends with the same tensors as an uninterrupted run.
* **Atomic.** Every file is written whole or not at all (:mod:`synood_kit.storage`); an epoch's log line is
  written before its checkpoint, and lines of a redone epoch are read once.
* **One run per folder.** The folder is locked while a run writes; a folder holding a run of other inputs or
  settings is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch

from .finetune import (
    AdapterConfig,
    FinetuneData,
    LabelTuneConfig,
    ResidualAdapter,
    TrainLog,
    adapter_steps,
    label_steps,
    save_finetune,
)

__all__ = ["finetune_run_steps", "read_run_logs", "run_finetune"]


def _inputs_key(tensors: list[torch.Tensor], settings: list) -> str:
    """Return a hash of the inputs' bytes and the JSON-ready settings: a run folder belongs to one such key."""
    digest = hashlib.sha256(json.dumps(settings).encode())
    for t in tensors:
        t = t.detach().contiguous().cpu()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()[:16]


def _optimizer_tensors(state: dict) -> tuple[dict[str, torch.Tensor], str]:
    """Split an optimiser ``state_dict`` into tensors and JSON (safetensors holds no pickles)."""
    tensors, scalars = {}, {}
    for pid, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{pid}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, json.dumps({"param_groups": state["param_groups"], "scalars": scalars})


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: str) -> dict:
    data = json.loads(meta)
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            pid, name = key[len("optimizer.") :].split(".", 1)
            state.setdefault(int(pid), {})[name] = value
    for key, value in data["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": data["param_groups"]}


def _save_checkpoint(path: Path, stage: str, epoch: int, key: str, adapter, rows, optimizer_state) -> None:
    from safetensors.torch import save_file

    from .storage import atomic_path

    tensors = {f"adapter.{k}": v.detach().contiguous().cpu() for k, v in adapter.state_dict().items()}
    if rows is not None:
        tensors["rows"] = rows.detach().contiguous().cpu()
    opt_tensors, opt_meta = _optimizer_tensors(optimizer_state)
    tensors.update(opt_tensors)
    meta = {"stage": stage, "epoch": str(epoch), "inputs": key, "optimizer": opt_meta}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def _load_checkpoint(path: Path, key: str) -> dict | None:
    from safetensors import safe_open

    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    if meta.get("inputs") != key:
        raise ValueError(f"{path.parent} holds a fine-tuning run of other inputs or settings; use a new folder")
    return {
        "stage": meta["stage"],
        "epoch": int(meta["epoch"]),
        "adapter": {k[len("adapter.") :]: v for k, v in tensors.items() if k.startswith("adapter.")},
        "rows": tensors.get("rows"),
        "optimizer": _optimizer_state(tensors, meta["optimizer"]),
    }


def read_run_logs(out_dir: str | Path) -> list[TrainLog]:
    """Return the steps of a run folder's finished epochs, each once, in order (a redone epoch counts once)."""
    from .storage import read_jsonl

    order = {"adapter": 0, "labels": 1}
    epochs: dict[tuple[str, int], list[TrainLog]] = {}
    for rec in read_jsonl(Path(out_dir) / "log.jsonl")[0]:
        key = (rec.get("stage"), rec.get("epoch"))
        if (
            key[0] not in order
            or not isinstance(key[1], int)
            or key in epochs
            or not isinstance(rec.get("steps"), list)
        ):
            continue
        try:
            epochs[key] = [TrainLog(**step) for step in rec["steps"]]
        except TypeError:  # not a line this module wrote
            continue
    return [log for key in sorted(epochs, key=lambda k: (order[k[0]], k[1])) for log in epochs[key]]


def finetune_run_steps(
    out_dir: str | Path,
    words: list[str],
    data: FinetuneData,
    adapter_config: AdapterConfig | None = None,
    label_config: LabelTuneConfig | None = None,
    seed: int = 0,
) -> Iterator[TrainLog]:
    """Run stage A then stage B into ``out_dir``, resuming after the last finished epoch; yield each new step.

    Args:
        out_dir: the run folder (created; locked while this generator runs).
        words: the ordered negative-label list (``data.neg_text`` rows), stored with the result.
        data: the features and targets (:class:`~synood_kit.finetune.FinetuneData`); ``data.neg_text`` also
            initialises stage B's rows.
        adapter_config, label_config: stage A and B settings.
        seed: the adapter's initialisation seed.

    Yields:
        The :class:`~synood_kit.finetune.TrainLog` of every step computed by this call.

    Raises:
        ValueError: if ``words`` and ``neg_text`` differ in length, or the folder holds another run.
        OutputError: if another process is writing into the folder, or it cannot be written.
    """
    from .storage import OutputLock, append_jsonl, remove_stale_temporaries

    adapter_config, label_config = adapter_config or AdapterConfig(), label_config or LabelTuneConfig()
    if len(words) != len(data.neg_text):
        raise ValueError(f"{len(words)} words for {len(data.neg_text)} negative label rows")
    out = Path(out_dir)
    key = _inputs_key(
        [data.id_features, data.id_labels, data.syn_features, data.syn_index, data.id_text, data.neg_text],
        [list(words), dataclasses.asdict(adapter_config), dataclasses.asdict(label_config), seed],
    )
    with OutputLock(out, purpose="fine-tuning"):
        remove_stale_temporaries(out)
        result = out / "finetune.safetensors"
        ckpt = _load_checkpoint(out / "checkpoint.safetensors", key)
        if result.is_file() and ckpt is not None and ckpt["stage"] == "done":
            return
        adapter = ResidualAdapter.seeded(data.dim, seed, data.id_features.device)
        rows = torch.nn.Parameter(data.neg_text.detach().clone().float())
        if ckpt is not None:
            adapter.load_state_dict(ckpt["adapter"])
            if ckpt["rows"] is not None:
                rows.data.copy_(ckpt["rows"])
        epoch_logs: list[TrainLog] = []

        def checkpoint(stage):
            def on_epoch_end(epoch, optimizer_state):
                append_jsonl(
                    out / "log.jsonl",
                    {"stage": stage, "epoch": epoch, "steps": [dataclasses.asdict(log) for log in epoch_logs]},
                )
                epoch_logs.clear()
                _save_checkpoint(
                    out / "checkpoint.safetensors",
                    stage,
                    epoch,
                    key,
                    adapter,
                    rows if stage == "labels" else None,
                    optimizer_state,
                )

            return on_epoch_end

        stage, done_epoch = (ckpt["stage"], ckpt["epoch"]) if ckpt else ("adapter", -1)
        if stage == "adapter" and done_epoch + 1 < adapter_config.epochs:
            resume = ckpt["optimizer"] if ckpt else None
            for log in adapter_steps(adapter, data, adapter_config, done_epoch + 1, resume, checkpoint("adapter")):
                epoch_logs.append(log)
                yield log
            stage, done_epoch, ckpt = "labels", -1, None
        elif stage == "adapter":
            stage, done_epoch, ckpt = "labels", -1, None
        adapter.eval()
        if stage == "labels" and done_epoch + 1 < label_config.epochs:
            resume = ckpt["optimizer"] if ckpt else None
            for log in label_steps(rows, data, label_config, done_epoch + 1, resume, checkpoint("labels")):
                epoch_logs.append(log)
                yield log
        save_finetune(
            result,
            list(words),
            adapter,
            rows.detach(),
            extra={
                "inputs": key,
                "adapter_config": dataclasses.asdict(adapter_config),
                "label_config": dataclasses.asdict(label_config),
                "seed": seed,
            },
        )
        _save_checkpoint(
            out / "checkpoint.safetensors", "done", 0, key, adapter, rows, {"state": {}, "param_groups": []}
        )


def run_finetune(out_dir: str | Path, words: list[str], *args, **kwargs) -> dict:
    """Run :func:`finetune_run_steps` to its end and return the result as :func:`~synood_kit.finetune.load_finetune`
    reads it, plus ``"logs"``: every step of the run, each once."""
    from .finetune import load_finetune

    for _ in finetune_run_steps(out_dir, words, *args, **kwargs):
        pass
    return {**load_finetune(Path(out_dir) / "finetune.safetensors", list(words)), "logs": read_run_logs(out_dir)}
