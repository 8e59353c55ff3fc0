"""SynOOD stage 6: fine-tuning on cached CLIP features, and the SynOOD score (docs/method.md, stages 6-7).

* **Stage A**, a residual image adapter ``f' = norm(f + delta(f))`` with ``delta = Linear -> LayerNorm -> ReLU``
  on the unnormalised image embedding, trained with cross-entropy over ``[ID labels + mined negatives]`` at
  logit scale 100: ID images target their class, synthetic images their mined negative label. Adam 1e-3,
  weight decay 1e-5, cosine to 1e-5, 3 epochs, batch 128 (official).
* **Stage B**, the mined negatives' text features as free float32 parameters (the official code trained fp16
  ones, a defect), initialised from the text encoder; cross-entropy over the negatives only, on synthetic
  images only, without the adapter. SGD 2e-2, momentum 0.9, weight decay 1e-5, cosine, 5 epochs, batch 128.

Both train on cached features, so an epoch is a few matrix products. Each stage is a generator of
:class:`TrainLog` steps (``adapter_steps``, ``label_steps``); the plain functions run them to the end. Checkpoints
are safetensors carrying the ordered negative-label list, so tuned rows always map back to their words.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = [
    "AdapterConfig",
    "FinetuneData",
    "LabelTuneConfig",
    "ResidualAdapter",
    "TrainLog",
    "adapter_steps",
    "label_steps",
    "load_finetune",
    "save_finetune",
    "substitute_rows",
    "synood_score",
    "train_adapter",
    "train_joint",
    "tune_labels",
]


@dataclass(frozen=True)
class AdapterConfig:
    """Stage A (official values)."""

    lr: float = 1e-3  # Adam learning rate
    min_lr: float = 1e-5  # cosine floor
    weight_decay: float = 1e-5  # Adam weight decay
    epochs: int = 3  # passes over ID + synthetic features
    batch_size: int = 128  # features per step
    logit_scale: float = 100.0  # CLIP's 1 / tau
    seed: int = 0  # shuffling seed

    def __post_init__(self) -> None:
        _check_training_config(self)


@dataclass(frozen=True)
class LabelTuneConfig:
    """Stage B (official values)."""

    lr: float = 2e-2  # SGD learning rate
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-5  # SGD weight decay
    epochs: int = 5  # passes over the synthetic features
    batch_size: int = 128  # features per step
    logit_scale: float = 100.0  # CLIP's 1 / tau
    seed: int = 0  # shuffling seed

    def __post_init__(self) -> None:
        _check_training_config(self)


def _check_training_config(config) -> None:
    """Refuse epochs or batch sizes below 1 and non-finite or non-positive rates, naming the field."""
    name = type(config).__name__
    for field in ("epochs", "batch_size"):
        value = getattr(config, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}.{field} must be an integer >= 1, got {value!r}")
    for field in ("lr", "logit_scale"):
        value = getattr(config, field)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name}.{field} must be a finite number > 0, got {value!r}")
    for field in ("weight_decay", "min_lr", "momentum"):
        value = getattr(config, field, 0.0)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name}.{field} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class TrainLog:
    """One optimisation step."""

    stage: str  # "adapter" or "labels"
    epoch: int  # 0-based
    step: int  # global step, 1-based
    loss: float  # batch cross-entropy
    accuracy: float  # batch top-1 against the targets
    lr: float  # learning rate used
    seconds: float  # since the stage started


@dataclass(frozen=True)
class FinetuneData:
    """What fine-tuning trains on, as one bundle of cached CLIP features (all on one device).

    ID images target their class among the ``C`` ID labels; synthetic images target their mined negative label
    among the ``K`` negatives (docs/method.md, stages 5-6).
    """

    id_features: torch.Tensor  # (N, d) unnormalised ID training image features
    id_labels: torch.Tensor  # (N,) int64 class indices in [0, C)
    syn_features: torch.Tensor  # (M, d) unnormalised synthetic image features (M may be 0: the ID-only control)
    syn_index: torch.Tensor  # (M,) int64 each synthetic image's negative label, a row of neg_text
    id_text: torch.Tensor  # (C, d) ID label text features ("the nice {class}")
    neg_text: torch.Tensor  # (K, d) negative label text features, in the saved list's order

    def __post_init__(self) -> None:
        d = self.id_text.shape[-1]
        shapes = {k: tuple(getattr(self, k).shape) for k in ("id_features", "syn_features", "id_text", "neg_text")}
        if any(len(s) != 2 or s[1] != d for s in shapes.values()):
            raise ValueError(f"FinetuneData: every feature matrix needs width {d}, got {shapes}")
        if self.id_labels.shape != (len(self.id_features),) or self.syn_index.shape != (len(self.syn_features),):
            raise ValueError(
                f"FinetuneData: one label per feature row: {len(self.id_features)} ID features with labels of shape "
                f"{tuple(self.id_labels.shape)}, {len(self.syn_features)} synthetic with {tuple(self.syn_index.shape)}"
            )
        for name, index, n in (
            ("id_labels", self.id_labels, len(self.id_text)),
            ("syn_index", self.syn_index, len(self.neg_text)),
        ):
            if len(index) and (int(index.min()) < 0 or int(index.max()) >= n):
                raise ValueError(
                    f"FinetuneData.{name} must lie in [0, {n}), got [{int(index.min())}, {int(index.max())}]"
                )

    @property
    def dim(self) -> int:
        """Return the feature width ``d``."""
        return int(self.id_text.shape[-1])

    def id_only(self) -> FinetuneData:
        """Return the same data without synthetic images (the ID-only control)."""
        return replace(self, syn_features=self.syn_features[:0], syn_index=self.syn_index[:0])

    def with_negatives(self, neg_text: torch.Tensor, syn_index: torch.Tensor) -> FinetuneData:
        """Return the same images against another negative-label set (e.g. the ``k`` farthest), re-indexed."""
        return replace(self, neg_text=neg_text, syn_index=syn_index)


class ResidualAdapter(torch.nn.Module):
    """``f' = normalize(f + delta(f))``, ``delta = Linear(d, d) -> LayerNorm(d) -> ReLU`` (263,680 parameters at d = 512)."""

    def __init__(self, dim: int):
        super().__init__()
        self.delta = torch.nn.Sequential(torch.nn.Linear(dim, dim), torch.nn.LayerNorm(dim), torch.nn.ReLU())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return adapted, unit-norm features for ``(N, d)`` unnormalised image features."""
        return F.normalize(features + self.delta(features), dim=-1)

    @classmethod
    def seeded(cls, dim: int, seed: int, device: torch.device | str = "cpu") -> ResidualAdapter:
        """Return an adapter initialised from ``seed`` on the CPU, then moved to ``device``: a seed gives the same
        start on every device."""
        torch.manual_seed(seed)
        return cls(dim).to(device)


def _batches(n: int, batch_size: int, epoch: int, seed: int) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


def _cross_entropy_steps(
    stage, opt, logits_of, y, config, lr_at, start_epoch=0, on_epoch_end=None
) -> Iterator[TrainLog]:
    """The loop both stages share: seeded shuffles per epoch, a scheduled learning rate, cross-entropy steps."""
    per_epoch = math.ceil(len(y) / config.batch_size)
    total = per_epoch * config.epochs
    t0 = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        for k, idx in enumerate(_batches(len(y), config.batch_size, epoch, config.seed)):
            step = epoch * per_epoch + k
            lr = lr_at(step, total)
            for group in opt.param_groups:
                group["lr"] = lr
            logits = logits_of(idx)
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            acc = float((logits.argmax(1) == y[idx]).float().mean())
            yield TrainLog(stage, epoch, step + 1, float(loss.detach()), acc, lr, time.perf_counter() - t0)
        if on_epoch_end is not None:
            on_epoch_end(epoch, opt.state_dict())


def _adapter_schedule(config: AdapterConfig):
    """Stage A's learning rate: cosine from ``lr`` to ``min_lr`` over all steps."""
    return lambda step, total: (
        config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * step / total))
    )


def adapter_steps(
    adapter: ResidualAdapter,
    data: FinetuneData,
    config: AdapterConfig | None = None,
    start_epoch: int = 0,
    optimizer_state: dict | None = None,
    on_epoch_end=None,
    tuned_rows: torch.nn.Parameter | None = None,
) -> Iterator[TrainLog]:
    """Train ``adapter`` in place (stage A); yield one :class:`TrainLog` per step.

    Args:
        adapter: the module to train.
        data: ID and synthetic features, their targets and the label features.
        config: hyper-parameters.
        start_epoch, optimizer_state: resume from a checkpoint (see :func:`save_finetune`).
        on_epoch_end: ``f(epoch, optimizer_state)`` called after each epoch (write a checkpoint there).
        tuned_rows: ``(K, d)`` float32 negative rows trained together with the adapter, in place of
            ``data.neg_text`` (the joint ablation, :func:`train_joint`); ``None``: the negatives stay fixed (stage A).
    """
    config = config or AdapterConfig()
    id_rows = F.normalize(data.id_text.float(), dim=-1)
    fixed = torch.cat([id_rows, F.normalize(data.neg_text.float(), dim=-1)])
    x = torch.cat([data.id_features, data.syn_features]).float()
    y = torch.cat([data.id_labels.long(), data.syn_index.long() + len(data.id_text)])
    params = [*adapter.parameters(), *([] if tuned_rows is None else [tuned_rows])]
    opt = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if optimizer_state:
        opt.load_state_dict(optimizer_state)

    def logits_of(idx):
        labels = fixed if tuned_rows is None else torch.cat([id_rows, F.normalize(tuned_rows, dim=-1)])
        return config.logit_scale * adapter(x[idx]) @ labels.T

    adapter.train()
    yield from _cross_entropy_steps(
        "adapter" if tuned_rows is None else "joint",
        opt,
        logits_of,
        y,
        config,
        _adapter_schedule(config),
        start_epoch,
        on_epoch_end,
    )
    adapter.eval()


def label_steps(
    neg_text: torch.nn.Parameter,
    data: FinetuneData,
    config: LabelTuneConfig | None = None,
    start_epoch: int = 0,
    optimizer_state: dict | None = None,
    on_epoch_end=None,
) -> Iterator[TrainLog]:
    """Tune the negative label features in place (stage B); yield one :class:`TrainLog` per step.

    Args:
        neg_text: ``(K, d)`` float32 parameter, initialised from the text encoder.
        data: its synthetic features (no adapter) and their negative labels are what stage B trains on.
        config: hyper-parameters.
        start_epoch, optimizer_state: resume from a checkpoint.
        on_epoch_end: ``f(epoch, optimizer_state)`` called after each epoch (write a checkpoint there).
    """
    config = config or LabelTuneConfig()
    if neg_text.dtype != torch.float32:
        raise TypeError(f"neg_text must be float32 (fp16 parameters are an official-code defect), got {neg_text.dtype}")
    x = F.normalize(data.syn_features.float(), dim=-1)
    y = data.syn_index.long()
    opt = torch.optim.SGD([neg_text], lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if optimizer_state:
        opt.load_state_dict(optimizer_state)
    yield from _cross_entropy_steps(
        "labels",
        opt,
        lambda idx: config.logit_scale * x[idx] @ F.normalize(neg_text, dim=-1).T,
        y,
        config,
        lambda step, total: 0.5 * config.lr * (1 + math.cos(math.pi * step / total)),
        start_epoch,
        on_epoch_end,
    )


def train_adapter(
    data: FinetuneData, config: AdapterConfig | None = None, seed: int = 0, tuned_rows=None
) -> tuple[ResidualAdapter, list[TrainLog]]:
    """Build a :meth:`~ResidualAdapter.seeded` adapter on the device of ``data``, run :func:`adapter_steps` to the
    end, return both."""
    adapter = ResidualAdapter.seeded(data.dim, seed, data.id_features.device)
    logs = list(adapter_steps(adapter, data, config, tuned_rows=tuned_rows))
    return adapter, logs


def tune_labels(data: FinetuneData, config: LabelTuneConfig | None = None) -> tuple[torch.Tensor, list[TrainLog]]:
    """Copy ``data.neg_text`` to a float32 parameter, run :func:`label_steps` to the end, return the tuned rows and
    logs."""
    param = torch.nn.Parameter(data.neg_text.detach().clone().float())
    logs = list(label_steps(param, data, config))
    return param.detach(), logs


def train_joint(
    data: FinetuneData, config: AdapterConfig | None = None, seed: int = 0
) -> tuple[ResidualAdapter, torch.Tensor, list[TrainLog]]:
    """Ablation beyond the official code: stages A and B as one objective. The adapter and the negative rows are
    trained together by stage A's loss (ID images -> their class, synthetic images -> their mined label, over
    ``[ID labels + negatives]``), with stage A's optimiser and schedule for both.

    Returns:
        ``(adapter, tuned negative rows (K, d) float32, logs)``.
    """
    rows = torch.nn.Parameter(data.neg_text.detach().clone().float())
    adapter, logs = train_adapter(data, config, seed=seed, tuned_rows=rows)
    return adapter, rows.detach(), logs


def substitute_rows(
    neg_text: torch.Tensor, tuned_neg_text: torch.Tensor, tuned_index: torch.Tensor | None = None
) -> torch.Tensor:
    """Return the negative label features with stage B's tuned rows put in place (docs/method.md, stage 7): each
    tuned row keeps its direction and takes the original row's norm, so only the direction was learned.

    Args:
        neg_text: ``(K, d)`` all negative label features.
        tuned_neg_text: ``(T, d)`` tuned rows.
        tuned_index: ``(T,)`` their rows in ``neg_text`` (default: the first ``T``).
    """
    index = tuned_index if tuned_index is not None else torch.arange(len(tuned_neg_text))
    negs = neg_text.float().clone()
    negs[index] = F.normalize(tuned_neg_text.float(), dim=-1) * negs[index].norm(dim=-1, keepdim=True)
    return negs


def synood_score(
    image_features: torch.Tensor,
    id_text: torch.Tensor,
    neg_text: torch.Tensor,
    adapter: ResidualAdapter | None = None,
    tuned_neg_text: torch.Tensor | None = None,
    tuned_index: torch.Tensor | None = None,
    keep_untuned: bool = True,
    temperature: float = 0.01,
    n_groups: int | None = 100,
    seed: int = 0,
) -> torch.Tensor:
    """Return the SynOOD score (docs/method.md, stage 7: the most likely reading of the unpublished inference code):
    NegLabel's grouped score with the adapted image feature and the tuned rows substituted into the negatives.

    Args:
        image_features: ``(N, d)`` CLIP image features.
        id_text: ``(C, d)`` ID label features; ``neg_text``: ``(K, d)`` all negative label features.
        adapter: the stage-A adapter (``None``: off).
        tuned_neg_text: ``(T, d)`` stage-B rows; ``tuned_index``: ``(T,)`` their rows in ``neg_text``
            (default: the first ``T``).
        keep_untuned: keep the negatives that were not tuned (default) or score against the tuned rows only.
        temperature, n_groups, seed: NegLabel settings.

    Returns:
        ``(N,)`` scores, higher = more in-distribution.

    Raises:
        ValueError: when the feature widths of images, labels, adapter and tuned rows differ, or tuned rows do
            not match their indices.
    """
    from .scores import neglabel_score

    d = image_features.shape[-1]
    widths = {"id_text": id_text.shape[-1], "neg_text": neg_text.shape[-1]}
    if adapter is not None:
        widths["adapter"] = adapter.delta[0].in_features
    if tuned_neg_text is not None:
        widths["tuned_neg_text"] = tuned_neg_text.shape[-1]
        n_tuned = len(tuned_index) if tuned_index is not None else len(tuned_neg_text)
        if n_tuned != len(tuned_neg_text) or (
            tuned_index is not None
            and len(tuned_index)
            and (int(tuned_index.min()) < 0 or int(tuned_index.max()) >= len(neg_text))
        ):
            raise ValueError(
                f"{len(tuned_neg_text)} tuned rows need as many indices in [0, {len(neg_text)}), got "
                f"{None if tuned_index is None else tuned_index.tolist()[:10]}"
            )
    wrong = {k: v for k, v in widths.items() if v != d}
    if wrong:
        raise ValueError(f"image features are {d}-dimensional but {wrong} differ (a checkpoint of another CLIP?)")
    with torch.no_grad():
        feats = adapter(image_features.float()) if adapter is not None else image_features
        negs = neg_text.float()
        if tuned_neg_text is not None:
            negs = substitute_rows(neg_text, tuned_neg_text, tuned_index)
            if not keep_untuned:
                negs = negs[tuned_index if tuned_index is not None else torch.arange(len(tuned_neg_text))]
        return neglabel_score(feats, id_text, negs, temperature, n_groups, seed)


def save_finetune(
    path: str | Path,
    words: list[str],
    adapter: ResidualAdapter | None = None,
    tuned_neg_text: torch.Tensor | None = None,
    tuned_index: torch.Tensor | None = None,
    extra: dict | None = None,
) -> Path:
    """Write a safetensors checkpoint whose metadata carries the ordered negative-label list."""
    from safetensors.torch import save_file

    from .storage import atomic_path

    tensors = {}
    if adapter is not None:
        tensors.update({f"adapter.{k}": v.detach().contiguous().cpu() for k, v in adapter.state_dict().items()})
    if tuned_neg_text is not None:
        tensors["tuned_neg_text"] = tuned_neg_text.detach().float().contiguous().cpu()
        idx = tuned_index if tuned_index is not None else torch.arange(len(tuned_neg_text))
        tensors["tuned_index"] = idx.long().contiguous().cpu()
    if not tensors:
        raise ValueError("nothing to save: pass an adapter and/or tuned label features")
    meta = {"negative_words": json.dumps(list(words)), "extra": json.dumps(extra or {})}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


def load_finetune(path: str | Path, words: list[str], dim: int | None = None) -> dict:
    """Read a :func:`save_finetune` checkpoint, refusing one made for another negative-label list.

    Returns:
        ``{"adapter": ResidualAdapter | None, "tuned_neg_text": tensor | None, "tuned_index": tensor | None, "extra": dict}``.

    Args:
        path: the checkpoint.
        words: the ordered negative-label list it must have been trained for.
        dim: if given, the CLIP feature width the adapter and tuned rows must have.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it is not a safetensors checkpoint of this kind (a pickle is refused, never loaded), its label
            list differs from ``words`` (naming the first difference), it holds NaN or Inf values, or its shapes do
            not fit the list or ``dim``.
    """
    from safetensors import SafetensorError, safe_open

    if not Path(path).is_file():
        raise FileNotFoundError(f"fine-tuning checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(9)  # safetensors: an 8-byte header length, then its JSON header
    if head[8:9] != b"{" and head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save's zip, or a bare pickle
        from .models import untrusted_weights_error

        raise untrusted_weights_error([Path(path)], "fine-tuning checkpoint", "a torch.save file, not safetensors")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        saved = json.loads(meta.get("negative_words", "null") or "null")
        extra = json.loads(meta.get("extra", "{}") or "{}")
    except (SafetensorError, ValueError, OSError, RecursionError) as e:
        raise ValueError(f"{path} is not a readable safetensors checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(saved, list) or not all(isinstance(w, str) for w in saved):
        raise ValueError(f"{path} is not a SynOOD fine-tuning checkpoint (no negative_words metadata)")
    diverged = sorted(k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all())
    if diverged:
        raise ValueError(f"{path} holds NaN or Inf values in {diverged[:5]}: a diverged fine-tuning; train it again")
    if list(saved) != list(words):
        first = next(
            (i for i, (a, b) in enumerate(zip(saved, words, strict=False)) if a != b), min(len(saved), len(words))
        )
        raise ValueError(
            f"{path} was trained for another negative-label list ({len(saved)} vs {len(words)} labels; "
            f"first difference at position {first})"
        )
    adapter = None
    state = {k[len("adapter.") :]: v for k, v in tensors.items() if k.startswith("adapter.")}
    tuned, index = tensors.get("tuned_neg_text"), tensors.get("tuned_index")
    try:
        if state:
            width = state["delta.0.weight"].shape[-1] if "delta.0.weight" in state else -1
            if dim is not None and width != dim:
                raise ValueError(f"its adapter is {width}-dimensional, expected {dim}")
            adapter = ResidualAdapter(width)
            adapter.load_state_dict(state)  # RuntimeError on missing keys or other shapes
            adapter.eval()
        if tuned is not None:
            if tuned.ndim != 2 or (dim is not None and tuned.shape[1] != dim):
                raise ValueError(f"its tuned rows have shape {tuple(tuned.shape)}, expected (T, {dim or 'd'})")
            if (
                index is None
                or index.shape != (len(tuned),)
                or (len(index) and not 0 <= int(index.min()) <= int(index.max()) < len(words))
            ):
                raise ValueError(f"its tuned_index must hold {len(tuned)} rows in [0, {len(words)})")
    except (RuntimeError, ValueError, RecursionError) as e:
        raise ValueError(f"{path} does not fit: {e}") from None
    return {
        "adapter": adapter,
        "tuned_neg_text": tensors.get("tuned_neg_text"),
        "tuned_index": tensors.get("tuned_index"),
        "extra": extra if isinstance(extra, dict) else {},
    }
