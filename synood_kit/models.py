"""Loading CLIP models: one place for open_clip names + pretrained tags, local folders and checkpoint files.

The same code loads real weights and the mini-world's: ``load_clip("ViT-B-16", "openai")`` is the paper's
model; ``load_clip("miniworld")`` is ``local-dir:assets/miniworld/clip`` (an ``open_clip_config.json`` next to
``open_clip_model.safetensors``, the Hugging Face layout of open_clip models). Nothing is downloaded when
``HF_HUB_OFFLINE=1``; missing weights raise :class:`WeightsNotFoundError` naming what was looked for.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import assets_dir

__all__ = [
    "PICKLE_SUFFIXES",
    "ClipModel",
    "ImageTransform",
    "WeightsNotFoundError",
    "available_devices",
    "check_device",
    "file_fingerprint",
    "load_clip",
    "pickled_weights",
    "refuse_pickled_weights",
    "resolve_clip_source",
    "save_clip_folder",
    "untrusted_weights_error",
]


class WeightsNotFoundError(FileNotFoundError):
    """Raised when model weights are not available locally and may not be downloaded."""


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")  # weights stored with pickle (torch.save)


def available_devices() -> list[str]:
    """Return the torch devices this machine has: ``cpu``, then ``cuda:0`` ... and ``mps`` where present."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found


def check_device(device: str | torch.device) -> torch.device:
    """Return ``device`` as a :class:`torch.device` after checking that this machine has it.

    Raises:
        ValueError: for a name that is not a torch device, a device type the kit does not run on, or a device this
            machine does not have (``cuda`` without a GPU, ``cuda:3`` with two), naming the ones it has.
    """
    here = ", ".join(available_devices())
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device {str(device)!r} is not a torch device; this machine has: {here}") from None
    if parsed.type == "cpu":
        return parsed
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {str(device)!r}: this machine has no CUDA GPU; it has: {here}")
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"device {str(device)!r}: this machine has {count} CUDA GPU(s); it has: {here}")
        return parsed
    if parsed.type == "mps":
        if "mps" not in available_devices():
            raise ValueError(f"device {str(device)!r}: MPS is not available on this machine; it has: {here}")
        return parsed
    raise ValueError(f"device {str(device)!r}: the kit runs on cpu, cuda or mps; this machine has: {here}")


def untrusted_weights_error(files: list[Path], what: str, detail: str = "") -> ValueError:
    """Return the kit's one refusal of pickled weights: what was found, and how to convert it to safetensors.

    Args:
        files: the pickle files found.
        what: where, e.g. ``"MLLM folder /models/llava"``.
        detail: what loading it said (e.g. the global a pickle asked for), if it was tried.
    """
    names = ", ".join(str(f) for f in files[:4]) + (f" and {len(files) - 4} more" if len(files) > 4 else "")
    return ValueError(
        f"{what}: refused {names}: weights stored with pickle (torch.save){f' ({detail})' if detail else ''}, which "
        "can run code when loaded; the kit loads weights from safetensors only. Convert a state dict with "
        "`safetensors.torch.save_file(torch.load(FILE, weights_only=True), NEW.safetensors)`, a transformers or "
        "diffusers folder with `from_pretrained(FOLDER)` then `save_pretrained(FOLDER)` (both write safetensors); "
        "a file that holds more than tensors fails to load this way, and is not a weights file to use"
    )


def pickled_weights(folder: str | Path) -> list[Path]:
    """Return the pickle weight files (:data:`PICKLE_SUFFIXES`) in ``folder`` and its sub-folders that have no
    safetensors file beside them: what a loader would have to unpickle (a model folder's components, such as a
    diffusers pipeline's ``unet/``, are one level down)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for directory in (folder, *sorted(p for p in folder.iterdir() if p.is_dir())):
        files = sorted(p for p in directory.iterdir() if p.is_file())
        if not any(p.suffix == ".safetensors" for p in files):
            found += [p for p in files if p.suffix.lower() in PICKLE_SUFFIXES]
    return found


def refuse_pickled_weights(source: str | Path, what: str) -> None:
    """Refuse a model folder, or a cached Hugging Face snapshot of a hub id, whose weights are pickle files.

    Args:
        source: a folder, or a hub id (``org/name``; looked up in the local cache only, never downloaded).
        what: the folder's role, for the message (``"MLLM"``, ``"in-painting pipeline"``).

    Raises:
        ValueError: :func:`untrusted_weights_error` naming the files.
    """
    folder = Path(source).expanduser()
    if not folder.is_dir():
        folder = _cached_snapshot(str(source))
    if folder is not None and (found := pickled_weights(folder)):
        raise untrusted_weights_error(found, f"{what} {source}")


def _cached_snapshot(repo_id: str) -> Path | None:
    """Return the local Hugging Face cache's snapshot folder of ``repo_id``, or ``None`` (nothing downloaded)."""
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/", "~")):
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached, not a valid id: the loader reports it
        return None


def file_fingerprint(path: str | Path, chunk: int = 1 << 20) -> str:
    """Return the first 16 hex digits of a file's SHA-256 (a cache key for weights)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class ImageTransform:
    """Differentiable tensor preprocessing: resize the short side, centre-crop, normalise.

    Picklable and model-free, so data-loader workers can run it.
    """

    size: int  # output side, pixels
    mean: tuple[float, float, float]  # per-channel mean subtracted after scaling to [0, 1]
    std: tuple[float, float, float]  # per-channel std divided by

    @property
    def description(self) -> str:
        """Return a string that fixes the transform (part of feature-cache keys)."""
        return f"resize-short-bicubic-aa+center-crop {self.size}; mean={self.mean}; std={self.std}"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Return normalised ``(B, 3, size, size)`` inputs for ``(B, 3, H, W)`` images in ``[0, 1]``."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        size = self.size
        if min(h, w) != size:
            scale = size / min(h, w)
            new_hw = (max(size, round(h * scale)), max(size, round(w * scale)))
            images = F.interpolate(images, size=new_hw, mode="bicubic", antialias=True, align_corners=False)
            images = images.clamp(0.0, 1.0)
        top, left = (images.shape[-2] - size) // 2, (images.shape[-1] - size) // 2
        images = images[..., top : top + size, left : left + size]
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        return (images - mean) / std


@dataclass
class ClipModel:
    """An open_clip model with its tokenizer and a differentiable tensor preprocessing.

    Images enter as ``(B, 3, H, W)`` float in ``[0, 1]``; :meth:`preprocess` resizes the short side to
    ``image_size`` (bicubic, antialiased), centre-crops and normalises, so gradients can flow through it.
    """

    model: torch.nn.Module  # the open_clip CLIP module (eval mode)
    tokenizer: object  # open_clip tokenizer: list[str] -> (N, context_length) int64
    image_size: int  # square input resolution of the image tower, pixels
    mean: tuple[float, float, float]  # per-channel normalisation mean
    std: tuple[float, float, float]  # per-channel normalisation std
    name: str  # how it was loaded, e.g. "ViT-B-16/openai" or "local-dir:/path"
    fingerprint: str  # identifies architecture + weights; part of every feature-cache key
    info: dict = field(default_factory=dict)  # free-form provenance (paths, checkpoint hash)

    @property
    def device(self) -> torch.device:
        """Return the device of the model's parameters."""
        return next(self.model.parameters()).device

    @property
    def embed_dim(self) -> int:
        """Return the dimension of the joint embedding space."""
        return int(self.encode_text(["a"], progress=False).shape[1])

    @property
    def transform(self) -> ImageTransform:
        """Return the model's input transform (picklable, for data-loader workers)."""
        return ImageTransform(self.image_size, self.mean, self.std)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Return model inputs ``(B, 3, image_size, image_size)`` for ``(B, 3, H, W)`` images in ``[0, 1]``."""
        return self.transform(images)

    def encode_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        """Return unnormalised image embeddings ``(B, D)`` float32 for preprocessed inputs."""
        return self.model.encode_image(inputs.to(self.device)).float()

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Return unnormalised image embeddings ``(B, D)`` float32; differentiable w.r.t. ``images``.

        Args:
            images: ``(B, 3, H, W)`` float in ``[0, 1]`` (moved to the model's device).
        """
        return self.encode_inputs(self.preprocess(images.to(self.device, torch.float32)))

    @torch.no_grad()
    def encode_text(self, texts: list[str], batch_size: int = 1024, progress: bool = True) -> torch.Tensor:
        """Return unnormalised text embeddings ``(N, D)`` float32 on the CPU, in batches.

        Args:
            texts: the prompts (already formatted).
            batch_size: prompts per forward pass.
            progress: show a tqdm bar.
        """
        from tqdm.auto import tqdm

        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not a single string")
        out = []
        starts = range(0, len(texts), batch_size)
        for i in tqdm(starts, desc="text features", unit="batch", disable=not progress or len(starts) < 2):
            tokens = self.tokenizer(list(texts[i : i + batch_size])).to(self.device)
            out.append(self.model.encode_text(tokens).float().cpu())
        if not out:
            raise ValueError("texts is empty: nothing to encode")
        return torch.cat(out)


def resolve_clip_source(model: str, pretrained: str | None) -> tuple[str, str | None]:
    """Return the open_clip ``(model_name, pretrained)`` for the kit's names.

    ``"miniworld"`` maps to ``local-dir:<assets>/miniworld/clip``; an existing folder path maps to
    ``local-dir:<path>``; anything else is passed to open_clip unchanged.
    """
    if model == "miniworld":
        return f"local-dir:{assets_dir() / 'miniworld' / 'clip'}", None
    if not model.startswith(("local-dir:", "hf-hub:")) and os.path.isdir(model):
        return f"local-dir:{Path(model).resolve()}", None
    return model, pretrained


def _offline_hint(model: str, pretrained: str | None) -> str:
    return (
        f"CLIP weights for model={model!r}, pretrained={pretrained!r} are not available offline. "
        "Provide them in one of three ways: (1) on a connected machine run open_clip once with the same "
        "name and tag and copy its Hugging Face cache ($HF_HOME/hub) here; (2) pass pretrained=<path to a "
        ".safetensors/.pt checkpoint file>; (3) pass model='local-dir:<folder>' holding open_clip_config.json "
        "and open_clip_model.safetensors."
    )


def load_clip(
    model: str = "miniworld",
    pretrained: str | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> ClipModel:
    """Load a CLIP model through open_clip.

    Args:
        model: an open_clip architecture name (``"ViT-B-16"``), ``"hf-hub:org/repo"``,
            ``"local-dir:<folder>"``, a folder path, or ``"miniworld"`` (the shipped mini-world CLIP).
        pretrained: with an architecture name, an open_clip tag (``"openai"``) or a checkpoint file path.
        device: where to put the model.
        precision: open_clip precision (``"fp32"`` unless asked otherwise).

    Returns:
        A :class:`ClipModel` in eval mode.

    Raises:
        ValueError: for an unknown architecture name or pretrained tag.
        WeightsNotFoundError: when the weights are not on disk and cannot be downloaded.
    """
    import open_clip

    name, tag = resolve_clip_source(model, pretrained)
    if not name.startswith(("local-dir:", "hf-hub:")):
        if name not in open_clip.list_models() and (os.sep in name or name.startswith((".", "~"))):
            raise WeightsNotFoundError(
                f"CLIP folder {name!r} does not exist (looked for a local folder holding "
                "open_clip_config.json and open_clip_model.safetensors). " + _offline_hint(model, pretrained)
            )
        if name not in open_clip.list_models():
            raise ValueError(f"unknown open_clip model {name!r}; known e.g. {open_clip.list_models()[:8]} ...")
        if tag is None:
            raise ValueError(f"model {name!r} needs pretrained=<tag or checkpoint path>; refusing random weights")
        if not os.path.isfile(tag) and tag not in open_clip.list_pretrained_tags_by_model(name):
            raise ValueError(
                f"pretrained={tag!r} is neither a checkpoint file nor an open_clip tag of {name!r} "
                f"(tags: {open_clip.list_pretrained_tags_by_model(name)})"
            )
    if name.startswith("local-dir:"):
        folder = Path(name.split(":", 1)[1])
        if not (folder / "open_clip_config.json").is_file():
            raise WeightsNotFoundError(
                f"no open_clip_config.json in {folder} (looked for a local CLIP folder). "
                + _offline_hint(model, pretrained)
            )
        refuse_pickled_weights(folder, "CLIP folder")
    elif name.startswith("hf-hub:"):
        refuse_pickled_weights(name.split(":", 1)[1], "CLIP")
    try:
        clip, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=tag, device=device, precision=precision, weights_only=True
        )
        tokenizer = open_clip.get_tokenizer(name)
    except pickle.UnpicklingError as e:
        from .storage import weights_only_refusal

        raise untrusted_weights_error(
            [Path(str(tag))],
            f"CLIP checkpoint pretrained={tag!r}",
            "loaded with weights_only=True, it holds pickled objects or code: " + weights_only_refusal(e),
        ) from None
    except (OSError, RuntimeError) as e:
        if isinstance(e, FileNotFoundError) or "offline" in str(e).lower() or "connect" in str(e).lower():
            raise WeightsNotFoundError(_offline_hint(model, pretrained) + f" (open_clip said: {e})") from e
        raise
    clip.eval()
    cfg = open_clip.get_model_preprocess_cfg(clip)
    size = cfg.get("size", 224)
    size = size[0] if isinstance(size, (tuple, list)) else size
    info: dict = {"open_clip_name": name, "pretrained": tag}
    if name.startswith("local-dir:"):
        folder = Path(name.split(":", 1)[1])
        weights = sorted(folder.glob("*.safetensors"))
        if not weights:
            raise WeightsNotFoundError(f"{folder} has an open_clip config but no .safetensors weights")
        digest = hashlib.sha256((folder / "open_clip_config.json").read_bytes())
        digest.update(file_fingerprint(weights[0]).encode())
        fingerprint = f"{folder.name}-{digest.hexdigest()[:16]}"
        info["weights"] = str(weights[0])
    elif tag is not None and os.path.isfile(tag):
        fingerprint = f"{name}-{file_fingerprint(tag)}"
        info["weights"] = str(tag)
    else:
        fingerprint = f"{name}-{tag}"
    label = name if tag is None else f"{name}/{tag}"
    return ClipModel(
        model=clip,
        tokenizer=tokenizer,
        image_size=int(size),
        mean=tuple(float(v) for v in cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))),
        std=tuple(float(v) for v in cfg.get("std", (0.26862954, 0.26130258, 0.27577711))),
        name=label,
        fingerprint=fingerprint,
        info=info,
    )


def save_clip_folder(
    model: torch.nn.Module,
    model_cfg: dict,
    folder: str | Path,
    preprocess_cfg: dict | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Save an open_clip model as a ``local-dir:`` folder that :func:`load_clip` (and open_clip) loads.

    Writes ``open_clip_config.json`` (``{"model_cfg", "preprocess_cfg"}``) and ``open_clip_model.safetensors``,
    each atomically.

    Args:
        model: the open_clip ``CLIP`` module.
        model_cfg: the architecture dict it was built from (as in open_clip's ``model_configs/*.json``).
        folder: destination folder (created).
        preprocess_cfg: ``{"size", "mean", "std", ...}`` overrides of open_clip's preprocessing.
        dtype: storage dtype of floating-point tensors (float16 halves the file).

    Returns:
        The folder.
    """
    from safetensors.torch import save_file

    from .storage import atomic_path, atomic_write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    with atomic_path(folder / "open_clip_model.safetensors") as tmp:
        save_file(state, str(tmp))
    atomic_write_json(
        folder / "open_clip_config.json", {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg or {}}
    )
    return folder
