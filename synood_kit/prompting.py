"""SynOOD stage 2: ask an MLLM for an image's context, parse the reply, and build the diffusion prompt.

One small protocol (``ask(images, question, ids) -> answers``), and every path of the kit goes through it and
through :func:`parse_reply` (the notebook and batch synthesis alike):

* :class:`TransformersBackend`: any transformers image-text-to-text model by name or folder (LLaVA-1.5,
  Qwen2-VL, ...) through ``AutoModelForImageTextToText`` + ``AutoProcessor``; ``"miniworld"`` is the shipped
  mini-world MLLM;
* :class:`OpenAIBackend`: an OpenAI-compatible chat endpoint (vLLM, SGLang, Ollama), with the official
  ``openai`` client; the API key is read from the environment and never written anywhere;
* :class:`AnnotationBackend`: a benchmark's ground-truth context (the mini-world knows it), answered by image id.

:func:`prompt_contexts` writes one JSONL row per image (id, backend, question, raw answer, parsed context, prompt,
and the reason of any fallback) and resumes from the rows already written.
"""

from __future__ import annotations

import base64
import io
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .inpainting import InpaintConfig, context_prompt

__all__ = [
    "AnnotationBackend",
    "OpenAIBackend",
    "ParsedReply",
    "PromptingConfig",
    "TransformersBackend",
    "context_agreement",
    "parse_reply",
    "prompt_contexts",
    "reply_prompt",
]


@dataclass(frozen=True)
class PromptingConfig:
    """The question, the parser's fallback and how a reply becomes the diffusion prompt."""

    question: str = "Describe everything in this image except the main subject."  # the official question is unpublished
    fallback_context: str = "the background"  # context used when a reply has no usable element (recorded)
    max_new_tokens: int = 48  # generation limit of local backends, tokens
    truncate: str = (
        "elements"  # "elements": whole parsed elements within 73 characters; "official": the raw reply cut at 73
    )

    def __post_init__(self) -> None:
        if self.truncate not in ("elements", "official"):
            raise ValueError(f"PromptingConfig.truncate must be 'elements' or 'official', got {self.truncate!r}")
        if not isinstance(self.question, str) or not self.question.strip():
            raise ValueError(f"PromptingConfig.question must be non-empty text, got {self.question!r}")
        if not isinstance(self.fallback_context, str) or not self.fallback_context.strip():
            raise ValueError(f"PromptingConfig.fallback_context must be non-empty text, got {self.fallback_context!r}")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"PromptingConfig.max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")


@dataclass(frozen=True)
class ParsedReply:
    """A parsed MLLM reply."""

    elements: tuple[str, ...]  # context elements, in reply order
    context: str  # the text that fills the prompt template
    fallback: str | None  # why the fallback context was used, or None


_REFUSAL = re.compile(r"\b(sorry|i cannot|i can't|i am unable|as an ai)\b", re.IGNORECASE)


def parse_reply(answer, config: PromptingConfig | None = None) -> ParsedReply:
    """Parse an MLLM reply into context elements, robust to lists, sentences, quotes, empty or garbage replies.

    Args:
        answer: the raw reply (anything: a non-string is recorded as a fallback).
        config: the fallback context.

    Returns:
        A :class:`ParsedReply`; ``fallback`` names the reason whenever ``config.fallback_context`` was used.
    """
    from .mllm import parse_context

    config = config or PromptingConfig()

    def fallback(reason: str) -> ParsedReply:
        return ParsedReply((), config.fallback_context, reason)

    if not isinstance(answer, str):
        return fallback(f"reply is a {type(answer).__name__}, not text")
    text = answer.strip().strip("\"'`")
    if not text:
        return fallback("empty reply")
    if _REFUSAL.search(text):
        return fallback("refusal")
    elements = tuple(e for e in parse_context(text) if sum(c.isalpha() for c in e) >= 2)
    if not elements:
        return fallback("no words in reply")
    return ParsedReply(elements, ", ".join(elements), None)


def reply_prompt(answer, parsed: ParsedReply, config: PromptingConfig | None = None, inpaint=None) -> str:
    """Return the diffusion prompt for a reply: from its parsed elements, kept whole within the character limit
    (``truncate="elements"``), or the raw reply cut at the limit as the official code does (``"official"``); a
    reply that fell back (empty, refusal, no words) always gives the fallback context.

    Args:
        answer: the raw reply.
        parsed: :func:`parse_reply` of it.
        config: the truncation rule.
        inpaint: an :class:`~synood_kit.inpainting.InpaintConfig` (template and limit; default the official ones).
    """
    config = config or PromptingConfig()
    if parsed.fallback is not None:
        return context_prompt(parsed.context, inpaint)
    if config.truncate == "official":
        return context_prompt(str(answer), inpaint)
    return context_prompt(parsed.elements, inpaint)


class AnnotationBackend:
    """A benchmark's ground-truth context, answered by image id (the mini-world's scenes know theirs).

    Args:
        context: ``{image id: context elements}``; an id it does not know gets an empty answer, which
            :func:`prompt_contexts` records as a fallback.
        name: how records name the backend.
    """

    def __init__(self, context: Mapping[str, Sequence[str]], name: str = "annotations"):
        self.context = context
        self.name = name

    def ask(self, images: torch.Tensor, question: str, ids: Sequence[str] | None = None) -> list[str]:
        """Return each image's true context as ``"a, b, c"`` (the images themselves are not looked at)."""
        if ids is None or len(ids) != len(images):
            raise ValueError("AnnotationBackend answers by image id: pass one id per image")
        return [", ".join(self.context.get(i, ())) for i in ids]


class TransformersBackend:
    """A transformers image-text-to-text model (``"miniworld"``, a folder, or a hub id such as
    ``"llava-hf/llava-1.5-7b-hf"``)."""

    def __init__(self, source: str = "miniworld", device: str = "cpu", max_new_tokens: int = 48):
        from .mllm import load_mllm

        self.mllm = load_mllm(source, device=device)
        self.name = f"transformers:{source}"
        self.max_new_tokens = max_new_tokens

    def ask(self, images: torch.Tensor, question: str, ids: Sequence[str] | None = None) -> list[str]:
        """Return one answer per ``(B, 3, H, W)`` image in ``[0, 1]`` (``ids`` are not needed)."""
        from .mllm import describe_context

        return describe_context(self.mllm, images, question, max_new_tokens=self.max_new_tokens, progress=False)


def _data_url(image: torch.Tensor) -> str:
    from PIL import Image

    arr = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class OpenAIBackend:
    """An OpenAI-compatible chat endpoint (``base_url`` such as ``http://localhost:8000/v1`` for vLLM).

    The API key is read from ``api_key_env`` (default ``OPENAI_API_KEY``; a placeholder if unset, as local
    servers accept any key); it is never stored in records or logs.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_tokens: int = 48,
    ):
        from openai import OpenAI

        self.client = OpenAI(base_url=base_url, api_key=os.environ.get(api_key_env) or "not-needed", timeout=timeout)
        self.model = model
        self.name = f"openai:{model}@{base_url}"
        self.max_tokens = max_tokens

    def ask(self, images: torch.Tensor, question: str, ids: Sequence[str] | None = None) -> list[str]:
        """Return one answer per image (one request each; ``ids`` are not needed).

        A request the endpoint rejects for its content (HTTP 400/413/422, e.g. an image it cannot read) becomes an
        empty answer, recorded by :func:`prompt_contexts` as a fallback, and the batch goes on; a refused key, a
        missing model or an unreachable endpoint raises the ``openai`` error at once.
        """
        import openai

        answers = []
        for image in images:
            messages = [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": _data_url(image)}},
                        {"type": "text", "text": question},
                    ],
                }
            ]
            try:
                reply = self.client.chat.completions.create(
                    model=self.model, messages=messages, max_tokens=self.max_tokens, temperature=0.0
                )
            except openai.APIStatusError as e:
                if e.status_code not in (400, 413, 422):
                    raise
                answers.append("")
                continue
            answers.append(reply.choices[0].message.content or "")
        return answers


def prompt_contexts(
    backend,
    items,
    out_path: str | Path,
    config: PromptingConfig | None = None,
    batch_size: int = 32,
    progress: bool = True,
    inpaint: InpaintConfig | None = None,
) -> list[dict]:
    """Ask ``backend`` about every ``(id, image)`` not yet in ``out_path`` and append one JSONL row each.

    Args:
        backend: an object with ``ask(images, question, ids) -> list[str]`` and a ``name``.
        items: ``[(image id, (3, H, W) image in [0, 1])]``.
        out_path: the JSONL file (rows already there are kept and skipped).
        config: question, fallback and truncation rule.
        batch_size: images per ``ask`` call.
        progress: show a progress bar.
        inpaint: the prompt template and character limit (default the official ones).

    Returns:
        Every row of the file for ``items``, in ``items`` order: ``id``, ``backend``, ``question``, ``answer``,
        ``context`` (parsed elements), ``fallback`` (the reason, or None) and ``prompt``.

    Raises:
        ValueError: if the backend returns a different number of answers than images.
    """
    from tqdm.auto import tqdm

    from .storage import append_jsonl, read_jsonl

    config = config or PromptingConfig()
    out_path = Path(out_path)
    rows = {r["id"]: r for r in read_jsonl(out_path)[0] if isinstance(r.get("id"), (str, int))}
    todo = [(i, img) for i, img in items if i not in rows]
    for k in tqdm(range(0, len(todo), batch_size), desc="MLLM context", disable=not progress or not todo):
        chunk = todo[k : k + batch_size]
        answers = backend.ask(torch.stack([img for _, img in chunk]), config.question, [i for i, _ in chunk])
        if len(answers) != len(chunk):
            raise ValueError(f"backend {backend.name} gave {len(answers)} answers for {len(chunk)} images")
        for (image_id, _), answer in zip(chunk, answers, strict=True):
            parsed = parse_reply(answer, config)
            row = {
                "id": image_id,
                "backend": backend.name,
                "question": config.question,
                "answer": answer,
                "context": list(parsed.elements),
                "fallback": parsed.fallback,
                "prompt": reply_prompt(answer, parsed, config, inpaint),
            }
            append_jsonl(out_path, row)
            rows[image_id] = row
    return [rows[i] for i, _ in items]


def context_agreement(rows: list[dict], truth: Mapping[str, Sequence[str]]) -> dict:
    """Return how well parsed answers name the true context (where a benchmark knows it, as the mini-world does).

    Args:
        rows: :func:`prompt_contexts` rows (``id``, ``context``, ``fallback``).
        truth: ``{image id: true context elements}``.

    Returns:
        ``n`` (rows with a truth), ``elements_named_exactly`` (share of true elements named), ``false_elements_per_image``,
        ``exact_lists`` (share of answers naming exactly the truth) and ``fallbacks`` (rows that fell back).

    Raises:
        ValueError: if no row has a true context.
    """
    scored = [r for r in rows if r["id"] in truth]
    if not scored:
        raise ValueError("no answered image has a known true context: agreement needs a benchmark that knows it")
    named = total = false = exact = 0
    for r in scored:
        true, said = set(truth[r["id"]]), set(r["context"])
        named += len(true & said)
        total += len(true)
        false += len(said - true)
        exact += said == true
    return {
        "n": len(scored),
        "elements_named_exactly": named / max(total, 1),
        "false_elements_per_image": false / len(scored),
        "exact_lists": exact / len(scored),
        "fallbacks": sum(r["fallback"] is not None for r in rows),
    }
