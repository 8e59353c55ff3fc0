"""Resumable training runs for the mini-world models: checkpoints, thread settings and run logs.

A run folder holds ``checkpoint/`` (``model.safetensors``, ``optimizer.pt``, ``state.json``), written atomically
every ``checkpoint_every`` steps, and ``log.jsonl`` with one record per logged step. Running the same command
again continues from the last checkpoint; batches are a pure function of ``(seed, step)``, so a resumed run
draws the same data as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path

import torch

from ..storage import append_jsonl, atomic_path, atomic_write_json, weights_only_refusal

__all__ = ["load_checkpoint", "log_step", "save_checkpoint", "set_threads", "trainer_parser"]


def trainer_parser(doc: str, name: str, steps: int, batch_size: int, pool_size: int, lr: float):
    """Return the arguments every mini-world trainer shares: ``--run``, ``--out``, ``--steps``, ``--batch-size``,
    ``--pool-size``, ``--lr``, ``--seed`` and ``--smoke``, with this trainer's defaults."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--run", default=f"runs/miniworld_{name}", help="run folder (checkpoints, log)")
    parser.add_argument("--out", default=f"assets/miniworld/{name}", help="export folder of the trained model")
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--pool-size", type=int, default=pool_size)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a few steps on a tiny pool (for tests)")
    return parser


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads (default: all cores, or ``$SYNOOD_THREADS``) and return the number."""
    n = n or int(os.environ.get("SYNOOD_THREADS", 0)) or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def save_checkpoint(
    run_dir: str | Path, model: torch.nn.Module, optimizer, step: int, extra: dict | None = None
) -> None:
    """Write model weights (safetensors), optimizer state and ``{"step", ...}`` atomically."""
    from safetensors.torch import save_file

    ckpt = Path(run_dir) / "checkpoint"
    ckpt.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(ckpt / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    with atomic_path(ckpt / "optimizer.pt") as tmp:
        torch.save({"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state()}, tmp)
    atomic_write_json(ckpt / "state.json", {"step": step, "time": time.time(), **(extra or {})})


def load_checkpoint(run_dir: str | Path, model: torch.nn.Module, optimizer) -> dict | None:
    """Load the run's checkpoint into ``model`` and ``optimizer``; return its state dict, or ``None``."""
    from safetensors.torch import load_file

    ckpt = Path(run_dir) / "checkpoint"
    if not (ckpt / "state.json").is_file():
        return None
    model.load_state_dict(load_file(str(ckpt / "model.safetensors")))
    try:  # weights_only: a tampered optimizer.pt cannot run code
        blob = torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{ckpt / 'optimizer.pt'} refused: it holds pickled objects or code, not plain tensors "
            f"({weights_only_refusal(e)})"
        ) from None
    optimizer.load_state_dict(blob["optimizer"])
    torch.set_rng_state(blob["torch_rng"])
    return json.loads((ckpt / "state.json").read_text())


def log_step(run_dir: str | Path, record: dict) -> None:
    """Append one training-log record to ``<run_dir>/log.jsonl``."""
    append_jsonl(Path(run_dir) / "log.jsonl", record)
