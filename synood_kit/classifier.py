"""ID classifiers (torchvision architectures): loading, saving and logits, for MSP/energy scores and for the
official SynOOD recipe's classifier-energy guidance.

``load_classifier("resnet50", weights="IMAGENET1K_V2")`` is the paper's ImageNet ResNet-50 (torchvision's
weights cache; offline it must already be there). ``load_classifier("miniworld")`` or a folder loads a
*classifier folder*: ``classifier_config.json`` (torchvision builder and its arguments, class names,
preprocessing) next to ``model.safetensors``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import assets_dir
from .models import ImageTransform, WeightsNotFoundError, file_fingerprint, pickled_weights, untrusted_weights_error

__all__ = ["ClassifierModel", "build_classifier", "classifier_logits", "load_classifier", "save_classifier_folder"]

CONFIG_NAME = "classifier_config.json"
WEIGHTS_NAME = "model.safetensors"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ClassifierModel:
    """A classifier with a differentiable tensor preprocessing; images enter as ``(B, 3, H, W)`` in ``[0, 1]``."""

    model: torch.nn.Module  # eval mode; inputs -> (B, C) logits
    class_names: tuple[str, ...]  # label order
    image_size: int  # input side, pixels
    mean: tuple[float, float, float]  # normalisation mean
    std: tuple[float, float, float]  # normalisation std
    name: str  # how it was loaded
    fingerprint: str  # architecture + weights; part of cache keys
    info: dict = field(default_factory=dict)  # provenance

    @property
    def device(self) -> torch.device:
        """Return the device of the model's parameters."""
        return next(self.model.parameters()).device

    @property
    def transform(self) -> ImageTransform:
        """Return the input transform (picklable)."""
        return ImageTransform(self.image_size, self.mean, self.std)

    def encode_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        """Return logits ``(B, C)`` float32 for preprocessed inputs (the feature-cache interface)."""
        return self.model(inputs.to(self.device)).float()

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Return logits ``(B, C)`` float32; differentiable w.r.t. ``images`` ``(B, 3, H, W)`` in ``[0, 1]``."""
        return self.encode_inputs(self.transform(images.to(self.device, torch.float32)))


def build_classifier(arch: str, kwargs: dict) -> torch.nn.Module:
    """Return an untrained torchvision classifier: ``torchvision.models.get_model(arch, **kwargs)``, or the
    ``"resnet"`` family built directly from ``torchvision.models.ResNet`` with a block and layer counts.

    Args:
        arch: a torchvision model name (``"resnet50"``), or ``"resnet"`` with ``kwargs = {"block": "basic"|
            "bottleneck", "layers": [..4 ints..], "num_classes": C}``.
        kwargs: builder arguments.
    """
    import torchvision

    if arch == "resnet":
        from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

        blocks = {"basic": BasicBlock, "bottleneck": Bottleneck}
        kw = dict(kwargs)
        block = kw.pop("block", "basic")
        if block not in blocks:
            raise ValueError(f"unknown ResNet block {block!r}; known: {sorted(blocks)}")
        return ResNet(blocks[block], **kw)
    if arch not in torchvision.models.list_models():
        raise ValueError(f"unknown torchvision model {arch!r}")
    return torchvision.models.get_model(arch, **kwargs)


def save_classifier_folder(
    model: torch.nn.Module,
    arch: str,
    kwargs: dict,
    class_names: list[str],
    folder: str | Path,
    preprocess: dict,
    dtype: torch.dtype = torch.float32,
    extra: dict | None = None,
) -> Path:
    """Save a classifier folder that :func:`load_classifier` reads.

    Args:
        model: the trained module.
        arch, kwargs: how :func:`build_classifier` rebuilds it.
        class_names: label order.
        folder: output folder (created).
        preprocess: ``{"size", "mean", "std"}``.
        dtype: storage dtype of floating tensors (loaded back as float32).
        extra: more JSON-ready provenance for the config.
    """
    from safetensors.torch import save_file

    from .storage import atomic_path, atomic_write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.to(dtype) if v.is_floating_point() else v).detach().contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    with atomic_path(folder / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp))
    cfg = {"arch": arch, "kwargs": kwargs, "class_names": list(class_names), "preprocess": preprocess, **(extra or {})}
    atomic_write_json(folder / CONFIG_NAME, cfg)
    return folder


def load_classifier(
    source: str = "miniworld", weights: str | None = None, device: str | torch.device = "cpu"
) -> ClassifierModel:
    """Load an ID classifier.

    Args:
        source: ``"miniworld"``, a classifier folder, or a torchvision model name (``"resnet50"``).
        weights: with a torchvision name, a weights enum name (``"IMAGENET1K_V2"``); taken from torchvision's
            cache (``$TORCH_HOME``), never downloaded when ``HF_HUB_OFFLINE``/no network.
        device: where to put the model.

    Returns:
        A :class:`ClassifierModel` in eval mode.

    Raises:
        WeightsNotFoundError: when the folder or the cached weights are missing, naming what was looked for.
        ValueError: for an unknown architecture or weights name, or a folder whose weights are pickle files.
    """
    from safetensors.torch import load_file

    folder = assets_dir() / "miniworld" / "classifier" if source == "miniworld" else Path(source)
    if source == "miniworld" or folder.is_dir() or "/" in source:
        cfg_path = folder / CONFIG_NAME
        if not cfg_path.is_file():
            raise WeightsNotFoundError(
                f"no {CONFIG_NAME} in {folder} (looked for a classifier folder). Train the mini-world classifier with "
                "`python -m synood_kit.miniworld.train_classifier`, or pass a torchvision name with weights=."
            )
        weights_path = folder / WEIGHTS_NAME
        if not weights_path.is_file():
            if found := pickled_weights(folder):
                raise untrusted_weights_error(found, f"classifier folder {folder}")
            raise WeightsNotFoundError(f"{folder} has {CONFIG_NAME} but no {WEIGHTS_NAME}")
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            model = build_classifier(cfg["arch"], dict(cfg["kwargs"]))
            pre = cfg["preprocess"]
            int(pre["size"]), tuple(pre["mean"]), tuple(pre["std"]), tuple(cfg["class_names"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{cfg_path} is not a classifier config ({type(e).__name__}: {e})") from None
        try:
            state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(weights_path)).items()}
            model.load_state_dict(state)
        except Exception as e:  # SafetensorError (not an OSError) or RuntimeError on other shapes
            raise ValueError(
                f"{weights_path} does not fit the architecture in {cfg_path} ({type(e).__name__}: {str(e)[:500]})"
            ) from None
        n_out = getattr(getattr(model, "fc", None), "out_features", len(cfg["class_names"]))
        if n_out != len(cfg["class_names"]):
            raise ValueError(f"{cfg_path} names {len(cfg['class_names'])} classes but the model has {n_out} outputs")
        digest = hashlib.sha256(cfg_path.read_bytes())
        digest.update(file_fingerprint(weights_path).encode())
        return ClassifierModel(
            model.eval().to(device),
            tuple(cfg["class_names"]),
            int(pre["size"]),
            tuple(pre["mean"]),
            tuple(pre["std"]),
            name=f"classifier:{folder}",
            fingerprint=f"{folder.name}-{digest.hexdigest()[:16]}",
            info={"weights": str(weights_path), **{k: v for k, v in cfg.items() if k not in ("kwargs", "class_names")}},
        )
    return _load_torchvision(source, weights, device)


def _load_torchvision(arch: str, weights: str | None, device) -> ClassifierModel:
    import torchvision

    if arch not in torchvision.models.list_models():
        raise ValueError(f"{arch!r} is neither a classifier folder nor a torchvision model name")
    if weights is None:
        raise ValueError(
            f"torchvision model {arch!r} needs weights=<enum name, e.g. 'IMAGENET1K_V2'>; refusing random weights"
        )
    try:
        enum = torchvision.models.get_model_weights(arch)[weights]
    except KeyError:
        known = [w.name for w in torchvision.models.get_model_weights(arch)]
        raise ValueError(f"unknown weights {weights!r} for {arch!r}; known: {known}") from None
    hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
    file = hub_dir / Path(enum.url).name
    if not file.is_file():
        raise WeightsNotFoundError(
            f"torchvision weights {arch}/{weights} are not in {file}. Download {enum.url} on a machine with "
            "network and copy it there (or set $TORCH_HOME)."
        )
    model = torchvision.models.get_model(arch, weights=enum).eval().to(device)
    crop = enum.transforms().crop_size
    return ClassifierModel(
        model,
        tuple(enum.meta["categories"]),
        int(crop[0] if isinstance(crop, (list, tuple)) else crop),
        IMAGENET_MEAN,
        IMAGENET_STD,
        name=f"{arch}/{weights}",
        fingerprint=f"{arch}-{weights}",
        info={"weights": str(file)},
    )


def classifier_logits(classifier: ClassifierModel, image_set, progress: bool = True, cache_root=None):
    """Return the classifier's logits on every readable image of ``image_set``, cached on disk.

    Returns:
        A :class:`~synood_kit.features.FeatureSet` whose ``features`` are ``(N, C)`` logits.
    """
    from .features import image_features

    return image_features(classifier, image_set, cache_root=cache_root, progress=progress)
