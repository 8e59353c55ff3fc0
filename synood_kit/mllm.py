"""Asking a multimodal LLM what an image shows besides its main subject (SynOOD stage 2).

SynOOD asks an MLLM to list an ID image's context ("bamboo, tourists, railings" for a panda); the answer
becomes the in-painting prompt. The same code runs a real LLaVA and the mini-world's: any
``AutoModelForImageTextToText`` + ``AutoProcessor`` folder or hub id whose processor has a chat template.
``load_mllm("miniworld")`` is ``<assets>/miniworld/mllm``, a tiny LLaVA trained by
:mod:`synood_kit.miniworld.train_mllm`. Nothing is downloaded when ``HF_HUB_OFFLINE=1``; missing weights raise
:class:`~synood_kit.models.WeightsNotFoundError` naming what was looked for.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import assets_dir
from .models import WeightsNotFoundError, refuse_pickled_weights

__all__ = [
    "CONTEXT_QUESTION",
    "MllmModel",
    "describe_context",
    "load_mllm",
    "parse_context",
    "resolve_mllm_source",
]

# The official question is unpublished (docs/method.md, stage 2); this one asks for exactly what the paper describes.
CONTEXT_QUESTION = "Describe everything in this image except the main subject."


@dataclass
class MllmModel:
    """An image-text-to-text model with its processor (tokenizer, image processor, chat template)."""

    model: torch.nn.Module  # a transformers *ForConditionalGeneration model, eval mode
    processor: object  # the matching transformers processor; it must carry a chat template
    name: str  # how it was loaded: "miniworld", a folder path or a hub id
    info: dict = field(default_factory=dict)  # provenance: folder, dtype

    @property
    def device(self) -> torch.device:
        """Return the device of the model's parameters."""
        return next(self.model.parameters()).device


def resolve_mllm_source(source: str | os.PathLike) -> tuple[str, bool]:
    """Return ``(path or hub id, is_local)`` for the kit's names.

    ``"miniworld"`` maps to ``<assets>/miniworld/mllm``; an existing folder, or anything that looks like a path
    (absolute, ``./``, ``~``), is local; anything else is a hub id ("org/name").
    """
    text = str(source)
    if text == "miniworld":
        return str(assets_dir() / "miniworld" / "mllm"), True
    expanded = os.path.expanduser(text)
    if isinstance(source, os.PathLike) or os.path.isdir(expanded) or text.startswith(("/", ".", "~")):
        return expanded, True
    if text.count("/") > 1 or "\\" in text:
        return expanded, True
    return text, False


def _local_hint(source: str, folder: str) -> str:
    hint = (
        f"no MLLM folder for source={source!r}: looked for {folder}/config.json (a transformers "
        "image-text-to-text model saved with save_pretrained, next to its processor files). "
    )
    if source == "miniworld":
        hint += (
            "Train and export the mini-world MLLM with `python -m synood_kit.miniworld.train_mllm "
            f"--out {folder}` (about 30 CPU-minutes), or set $SYNOOD_ASSETS to a folder holding miniworld/mllm."
        )
    else:
        hint += "Pass the folder written by model.save_pretrained(folder) and processor.save_pretrained(folder)."
    return hint


def _hub_hint(repo_id: str, error: Exception) -> str:
    return (
        f"MLLM weights for hub id {repo_id!r} are not available offline. Provide them in one of two ways: "
        f"(1) on a connected machine run AutoModelForImageTextToText.from_pretrained({repo_id!r}) and "
        f"AutoProcessor.from_pretrained({repo_id!r}) once and copy the Hugging Face cache ($HF_HOME/hub) here; "
        "(2) save both with save_pretrained(folder) and pass that folder. "
        f"(transformers said: {error})"
    )


def load_mllm(
    source: str | os.PathLike = "miniworld",
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
) -> MllmModel:
    """Load an image-text-to-text model and its processor (a LLaVA-style MLLM).

    Args:
        source: ``"miniworld"`` (the shipped mini-world MLLM), a local folder, or a hub id such as
            ``"llava-hf/llava-1.5-7b-hf"`` (read from the local Hugging Face cache when offline).
        device: where to put the model (default CPU).
        dtype: parameter dtype (default float32, whatever the stored dtype).
        trust_remote_code: let transformers run Python code shipped with the model (off: a folder or hub
            model that needs it is refused).

    Returns:
        An :class:`MllmModel` in eval mode.

    Raises:
        WeightsNotFoundError: when the folder is missing or incomplete, or the hub id is not cached offline.
        ValueError: when the processor has no chat template (the question could not be formatted), the model needs
            its own code and ``trust_remote_code`` is off, or its weights are pickle files (never unpickled: only
            safetensors are loaded).
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path, is_local = resolve_mllm_source(source)
    if is_local and not (Path(path) / "config.json").is_file():
        raise WeightsNotFoundError(_local_hint(str(source), path))
    if is_local and not trust_remote_code and "auto_map" in (Path(path) / "config.json").read_text(errors="replace"):
        raise ValueError(
            f"{path}/config.json asks to run the folder's own Python code (auto_map); refused. Turn "
            "trust_remote_code on only for a model whose code you have read."
        )
    refuse_pickled_weights(path, "MLLM")  # a folder, or a hub id's cached snapshot: safetensors only
    dtype = dtype or torch.float32
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            path, dtype=dtype, local_files_only=is_local, trust_remote_code=trust_remote_code, use_safetensors=True
        )
        processor = AutoProcessor.from_pretrained(path, local_files_only=is_local, trust_remote_code=trust_remote_code)
    except OSError as e:
        if is_local:
            raise WeightsNotFoundError(_local_hint(str(source), path) + f" (transformers said: {e})") from e
        raise WeightsNotFoundError(_hub_hint(path, e)) from e
    if getattr(processor, "chat_template", None) is None:
        raise ValueError(f"the processor of {source!r} has no chat template; set processor.chat_template first")
    model.to(device or "cpu").eval()
    return MllmModel(model=model, processor=processor, name=str(source), info={"path": path, "dtype": str(dtype)})


def _to_pil(images) -> list:
    """Return a list of RGB PIL images for ``(B, 3, H, W)`` floats in ``[0, 1]`` or a list of PIL images."""
    from PIL import Image

    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(a) for a in arr]
    if isinstance(images, (list, tuple)) and all(isinstance(im, Image.Image) for im in images):
        return [im.convert("RGB") for im in images]
    raise TypeError(
        f"images must be a (B, 3, H, W) tensor in [0, 1] or a list of PIL images, got {type(images).__name__}"
    )


@torch.no_grad()
def describe_context(
    mllm: MllmModel,
    images,
    question: str = CONTEXT_QUESTION,
    max_new_tokens: int = 32,
    batch_size: int = 64,
    progress: bool = True,
) -> list[str]:
    """Ask the MLLM ``question`` about each image and return its answers (greedy decoding).

    Implements SynOOD's stage 2 (docs/method.md): the answer lists the image's context except the main subject.

    Args:
        mllm: a loaded :class:`MllmModel`.
        images: ``(B, 3, H, W)`` float in ``[0, 1]``, or a list of PIL images; the processor resizes them.
        question: the user turn that follows the image.
        max_new_tokens: generation length limit, tokens.
        batch_size: images per ``generate`` call.
        progress: show a tqdm bar over batches.

    Returns:
        ``B`` decoded answers, stripped, in image order.
    """
    from tqdm.auto import tqdm

    pil = _to_pil(images)
    processor = mllm.processor
    tokenizer = processor.tokenizer
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # batched generation continues every row from its last prompt token
    answers: list[str] = []
    try:
        starts = range(0, len(pil), batch_size)
        for i in tqdm(starts, desc="describe context", unit="batch", disable=not progress or len(starts) < 2):
            chunk = pil[i : i + batch_size]
            inputs = processor(images=chunk, text=[prompt] * len(chunk), return_tensors="pt", padding=True)
            inputs = inputs.to(mllm.device)
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(mllm.model.dtype)
            out = mllm.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            )
            new = out[:, inputs["input_ids"].shape[1] :]
            answers.extend(a.strip() for a in processor.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
    return answers


_SPLIT = re.compile(r"[,;\n]|\band\b|\bwith\b")
_LEAD = re.compile(
    r"^(?:[-*\u2022\d.)\s]+)?"  # bullets and numbering
    r"(?:(?:the|this) (?:image|picture|photo) (?:shows|contains|features|has|includes)\s+)?"
    r"(?:(?:a|an|the|some|several|there (?:is|are))\s+)*",
    re.IGNORECASE,
)


def parse_context(answer: str) -> list[str]:
    """Split an MLLM's context answer into elements.

    ``"black background, stripes, pink sparkles"`` gives ``["black background", "stripes", "pink sparkles"]``;
    free-form answers are split at commas, semicolons, new lines, "and" and "with", and each element loses
    bullets, leading articles and end punctuation. Elements are lower-cased; duplicates are dropped.

    Args:
        answer: the decoded answer.

    Returns:
        The elements in answer order (empty for an empty answer).
    """
    if not isinstance(answer, str):
        raise TypeError(f"answer must be a string, got {type(answer).__name__}")
    out: list[str] = []
    for part in _SPLIT.split(answer.lower()):
        item = _LEAD.sub("", part.strip()).strip(" .!?:\"'")
        item = re.sub(r"\s+", " ", item).strip()  # inner Unicode spaces (e.g. U+00A0) may end up at an edge
        if item and item not in out:
            out.append(item)
    return out
