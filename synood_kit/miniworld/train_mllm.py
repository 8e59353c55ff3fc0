"""Train the mini-world MLLM (a tiny LLaVA in transformers format) from scratch on the world's pretraining data.

The model is a stock ``LlavaForConditionalGeneration``: a ``CLIPVisionModel`` tower (32x32 input, 8-pixel
patches, so 16 image tokens), a two-layer MLP projector and a small Llama, with a word-level tokenizer over
the world's vocabulary and a LLaVA-1.5-style chat template (``USER: <image>\\n{question} ASSISTANT:``). It
is trained on pretraining scenes (every category, digits, scenes without subject, textures) to answer the
context question with the scene's context as a comma-separated list (``"black background, stripes, pink
sparkles"``, the order of :meth:`~.world.Scene.context`), and a main-subject question (``"a pink six-point
star"``); the language-model loss counts answer tokens only. Training-only heads on the vision tower's patch
tokens (a dense detector of the small secondary objects, plus background, pattern and subject heads) are
dropped at export. The export loads with ``AutoModelForImageTextToText`` and ``AutoProcessor``
(:func:`synood_kit.mllm.load_mllm`), the same code a real LLaVA runs. Recipe, cost and measured quality:
``assets/miniworld/MODEL_CARD_mllm.md``.

Usage::

    python -m synood_kit.miniworld.train_mllm --run runs/miniworld_mllm --out assets/miniworld/mllm
    python -m synood_kit.miniworld.train_mllm --smoke --run /tmp/mllm-smoke --out /tmp/mllm-smoke/model
    python -m synood_kit.miniworld.train_mllm --evaluate assets/miniworld/mllm   # 500 held-out scenes

Running the same command again resumes from ``<run>/checkpoint``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ..mllm import CONTEXT_QUESTION, MllmModel, describe_context, parse_context
from .benchmark import BENCHMARK_SPEC
from .pretraining import SUBJECT_CLASSES, build_pool, subject_index
from .shapes import CATEGORIES
from .training import load_checkpoint, log_step, save_checkpoint, set_threads
from .world import (
    BACKGROUND_COLORS,
    DIGIT_NAMES,
    EXTRA_KINDS,
    PATTERNS,
    SUBJECT_COLORS,
    TEXTURE_KINDS,
    render,
    sample_scene,
)

__all__ = [
    "CONTEXT_QUESTIONS",
    "MLLM_PRESETS",
    "SUBJECT_QUESTIONS",
    "build_model",
    "build_processor",
    "build_tokenizer",
    "context_accuracy",
    "context_answer",
    "subject_accuracy",
    "subject_answer",
    "train",
]

# Training paraphrases; the first of each is the canonical question (evaluation and describe_context use it).
CONTEXT_QUESTIONS = (
    CONTEXT_QUESTION,
    "What else is in this image besides the main subject?",
    "List the background and the small objects in this image.",
)
SUBJECT_QUESTIONS = ("What is the main subject?", "What is the main subject of this image?")
NO_SUBJECT = "no main subject"
IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>", IMAGE_TOKEN)
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}{% if m['role'] == 'user' %} {% else %}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
IMAGE_MEAN, IMAGE_STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
EVAL_STREAM = 7100  # first element of evaluation seeds; pretraining uses 9000, the benchmark 2025

MLLM_PRESETS: dict[str, dict] = {
    # The plain LLaVA tower, a CLIP ViT, with 8-pixel patches: 16 image tokens (+ CLS, dropped). In pilots it
    # learned the 2-4 pixel extras faster per CPU-second than 4-pixel patches (3-4x the cost per step) and
    # than a Hiera tower with a convolutional stem ("hiera").
    "miniworld": {
        "vision_type": "clip_vision_model",
        "vision": {
            "hidden_size": 128,
            "intermediate_size": 512,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "patch_size": 8,
        },
        "text": {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 3, "num_attention_heads": 4},
    },
    # Hiera: an overlapping 7x7 stride-4 convolutional stem (8x8 tokens), a stage at width 64, then query
    # pooling to 4x4 tokens at width 128.
    "hiera": {
        "vision_type": "hiera",
        "vision": {"embed_dim": 64, "depths": [2, 3], "num_heads": [2, 4]},
        "text": {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 3, "num_attention_heads": 4},
    },
    "smoke": {
        "vision_type": "clip_vision_model",
        "vision": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "patch_size": 8,
        },
        "text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
    },
}


def _vision_config(cfg: dict):
    """Return ``(vision config, image tokens per side, extra tokens dropped by the LLaVA strategy)``."""
    from transformers import CLIPVisionConfig, HieraConfig

    if cfg["vision_type"] == "hiera":
        v = cfg["vision"]
        stages = len(v["depths"])
        config = HieraConfig(
            image_size=[32, 32],
            patch_size=[7, 7],
            patch_stride=[4, 4],
            patch_padding=[3, 3],
            num_query_pool=stages - 1,
            query_stride=[2, 2],
            masked_unit_size=[8, 8],
            masked_unit_attention=[True] + [False] * (stages - 1),
            **v,
        )
        return config, 8 // 2 ** (stages - 1), 0
    if cfg["vision_type"] == "clip_vision_model":
        return CLIPVisionConfig(image_size=32, **cfg["vision"]), 32 // cfg["vision"]["patch_size"], 1
    raise ValueError(f"vision_type must be 'hiera' or 'clip_vision_model', got {cfg['vision_type']!r}")


def context_answer(scene) -> str:
    """Return the target context answer of a pretraining image (a Scene, or texture metadata)."""
    if isinstance(scene, dict):
        return f"{scene['texture']} texture"
    return ", ".join(scene.context())


def subject_answer(scene) -> str:
    """Return the target main-subject answer ("a pink six-point star", "no main subject")."""
    if isinstance(scene, dict) or scene.subject is None:
        return NO_SUBJECT
    article = "an" if scene.subject_color[0] in "aeiou" else "a"
    return f"{article} {scene.subject_color} {scene.subject_name}"


def _pre_tokenizer():
    from tokenizers import Regex, normalizers, pre_tokenizers

    split = pre_tokenizers.Split(Regex(r"[,.?:;!]"), behavior="isolated")
    return normalizers.Lowercase(), pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), split])


def _world_texts() -> list[str]:
    texts = list(CONTEXT_QUESTIONS + SUBJECT_QUESTIONS) + [
        "USER: ASSISTANT:",
        NO_SUBJECT,
        "a an digit texture background",
    ]
    texts += [f"{c}" for c in list(BACKGROUND_COLORS) + list(SUBJECT_COLORS) + list(PATTERNS) + list(EXTRA_KINDS)]
    texts += [c.name for c in CATEGORIES] + list(DIGIT_NAMES) + list(TEXTURE_KINDS) + [", ."]
    return texts


def build_tokenizer():
    """Return a word-level ``PreTrainedTokenizerFast`` over the world's words (lower-cased, punctuation split)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    normalizer, pre_tokenizer = _pre_tokenizer()
    words: list[str] = []
    for text in _world_texts():
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)):
            if word not in words:
                words.append(word)
    vocab = {w: i for i, w in enumerate(list(SPECIAL_TOKENS) + words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer, backend.pre_tokenizer = normalizer, pre_tokenizer
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        padding_side="left",
        clean_up_tokenization_spaces=True,
        model_max_length=256,
    )


def build_processor(tokenizer, preset: str | dict):
    """Return the ``LlavaProcessor``: 32x32 CLIP image processor, ``tokenizer`` and the chat template.

    The processor expands ``<image>`` to ``(32 / patch_size)^2 + extra - 1`` tokens under the LLaVA "default"
    strategy and ``(32 / patch_size)^2 + extra`` under "full"; ``patch_size`` here is the image side over the
    tower's output grid side, whatever the tower's own stem.
    """
    from transformers import CLIPImageProcessor, LlavaProcessor

    cfg = MLLM_PRESETS[preset] if isinstance(preset, str) else preset
    _, side, extra = _vision_config(cfg)

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
        resample=3,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=32 // side,
        vision_feature_select_strategy="default" if extra else "full",
        chat_template=CHAT_TEMPLATE,
        num_additional_image_tokens=extra,
    )


def build_model(preset: str | dict, tokenizer):
    """Return a randomly initialised ``LlavaForConditionalGeneration`` for a preset of :data:`MLLM_PRESETS`."""
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    cfg = MLLM_PRESETS[preset] if isinstance(preset, str) else preset
    vision, side, extra = _vision_config(cfg)
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=256,
        num_key_value_heads=cfg["text"]["num_attention_heads"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **cfg["text"],
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=side * side,
        vision_feature_select_strategy="default" if extra else "full",
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    return LlavaForConditionalGeneration(config)


class _VisionHeads(torch.nn.Module):
    """Training-only heads on the vision tower's patch tokens (dropped at export).

    Extras are small, so their head scores every patch token against the extras whose centres fall in that
    token's cell (a dense detector) and, through the maximum over tokens, against the image's extras;
    background, pattern, subject and subject colour are read from the mean token. This dense supervision
    makes the tower learn 2-4 pixel objects far faster than the answer tokens alone (pilots: extras recall
    0.13 -> 0.39 after 150 s of tower training).
    """

    def __init__(self, width: int):
        super().__init__()
        self.extras = torch.nn.Linear(width, len(SUBJECT_COLORS) * len(EXTRA_KINDS))
        self.pooled = torch.nn.ModuleDict(
            {
                "background": torch.nn.Linear(width, len(BACKGROUND_COLORS)),
                "pattern": torch.nn.Linear(width, len(PATTERNS)),
                "subject": torch.nn.Linear(width, len(SUBJECT_CLASSES)),
                "color": torch.nn.Linear(width, len(SUBJECT_COLORS) + 1),
            }
        )

    def loss(self, tokens: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """Return the summed head losses for patch tokens ``(B, N, width)``."""
        import torch.nn.functional as F

        dense = self.extras(tokens)
        loss = F.binary_cross_entropy_with_logits(dense.amax(dim=1), targets["extras"])
        loss = loss + dense.shape[-1] * F.binary_cross_entropy_with_logits(dense, targets["extras_dense"].float())
        mean = tokens.mean(dim=1)
        for name, head in self.pooled.items():
            loss = loss + F.cross_entropy(head(mean), targets[name], ignore_index=-100)
        return loss


class _Trainee(torch.nn.Module):
    """The MLLM being trained plus its training-only vision heads (one module, so one checkpoint)."""

    def __init__(self, mllm, heads: _VisionHeads):
        super().__init__()
        self.mllm, self.heads = mllm, heads


def _head_targets(scenes: list, side: int) -> dict[str, torch.Tensor]:
    """Return the vision heads' targets for every pool entry (-100 = ignore); ``side`` is the token grid side."""
    colors, kinds, bgs = list(SUBJECT_COLORS), list(EXTRA_KINDS), list(BACKGROUND_COLORS)
    extras = torch.zeros(len(scenes), len(colors) * len(kinds))
    dense = torch.zeros(len(scenes), side * side, len(colors) * len(kinds), dtype=torch.bool)
    cell = 32 / side
    out = {k: torch.full((len(scenes),), -100, dtype=torch.long) for k in ("background", "pattern", "subject", "color")}
    for i, s in enumerate(scenes):
        out["subject"][i] = subject_index(s)
        if isinstance(s, dict):
            continue
        out["background"][i] = bgs.index(s.background)
        out["pattern"][i] = PATTERNS.index(s.pattern)
        out["color"][i] = colors.index(s.subject_color) if s.subject_color else len(colors)
        for e in s.extras:
            k = colors.index(e.color) * len(kinds) + kinds.index(e.kind)
            extras[i, k] = 1.0
            for x, y in e.positions:
                dense[i, min(int(y // cell), side - 1) * side + min(int(x // cell), side - 1), k] = True
    return {"extras": extras, "extras_dense": dense, **out}


class _Batcher:
    """Turns pool entries and question choices into padded ``input_ids``, ``attention_mask`` and ``labels``."""

    def __init__(self, processor, scenes: list):
        tok = processor.tokenizer
        dummy = [np.zeros((32, 32, 3), np.uint8)]
        self.prompts = []
        for questions in (CONTEXT_QUESTIONS, SUBJECT_QUESTIONS):
            ids = []
            for q in questions:
                conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
                text = processor.apply_chat_template(conv, add_generation_prompt=True)
                ids.append(processor(images=dummy, text=[text], return_tensors="pt")["input_ids"][0].tolist())
            self.prompts.append(ids)
        eos = tok.eos_token_id
        self.answers = [
            [tok(context_answer(s), add_special_tokens=False)["input_ids"] + [eos] for s in scenes],
            [tok(subject_answer(s), add_special_tokens=False)["input_ids"] + [eos] for s in scenes],
        ]
        self.pad = tok.pad_token_id

    def __call__(self, idx: np.ndarray, kinds: np.ndarray, variants: np.ndarray) -> dict[str, torch.Tensor]:
        rows, labels = [], []
        for i, k, v in zip(idx, kinds, variants, strict=True):
            prompt = self.prompts[k][v % len(self.prompts[k])]
            answer = self.answers[k][i]
            rows.append(prompt + answer)
            labels.append([-100] * len(prompt) + answer)
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        lab = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (row, lrow) in enumerate(zip(rows, labels, strict=True)):
            ids[r, : len(row)] = torch.tensor(row)
            lab[r, : len(row)] = torch.tensor(lrow)
            mask[r, : len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": lab}


def eval_scenes(n: int, seed: int = 0, categories: tuple[str, ...] | None = None) -> list:
    """Return ``n`` held-out scenes with ID subjects (benchmark ID classes), from a stream no training uses."""
    cats = categories or BENCHMARK_SPEC.id_classes
    return [sample_scene(np.random.default_rng([EVAL_STREAM, seed, i]), categories=cats) for i in range(n)]


def context_accuracy(
    mllm: MllmModel, n_scenes: int = 500, seed: int = 0, batch_size: int = 100, progress: bool = True
) -> dict:
    """Measure how exactly the MLLM lists the context of held-out ID scenes.

    Args:
        mllm: a loaded MLLM (the mini-world's, or any model that answers in the world's words).
        n_scenes: held-out scenes, drawn by :func:`eval_scenes` with ``seed``.
        seed: evaluation seed (0 is the reported number).
        batch_size: images per generation call.
        progress: show a progress bar.

    Returns:
        ``element_recall``: mean over scenes of (context elements named exactly / elements in the scene);
        ``exact_match``: share of scenes whose parsed answer equals the context as a set;
        ``false_element_rate``: named elements that are not in the scene / all named elements;
        per-kind recall (``recall_background``, ``recall_pattern``, ``recall_extras``) and ``n_scenes``.
    """
    scenes = eval_scenes(n_scenes, seed)
    images = torch.from_numpy(np.stack([render(s) for s in scenes])).permute(0, 3, 1, 2).float() / 255
    answers = describe_context(mllm, images, batch_size=batch_size, progress=progress)
    recall, exact, named, false = [], [], 0, 0
    kind_hits = {"background": [0, 0], "pattern": [0, 0], "extras": [0, 0]}
    for scene, answer in zip(scenes, answers, strict=True):
        truth, parsed = scene.context(), set(parse_context(answer))
        recall.append(sum(t in parsed for t in truth) / len(truth))
        exact.append(parsed == set(truth))
        named += len(parsed)
        false += len(parsed - set(truth))
        for t in truth:
            kind = "background" if t.endswith(" background") else "pattern" if t in PATTERNS else "extras"
            kind_hits[kind][0] += t in parsed
            kind_hits[kind][1] += 1
    out = {
        "element_recall": float(np.mean(recall)),
        "exact_match": float(np.mean(exact)),
        "false_element_rate": false / max(named, 1),
        "n_scenes": n_scenes,
    }
    out.update({f"recall_{k}": h / max(n, 1) for k, (h, n) in kind_hits.items()})
    return out


def subject_accuracy(
    mllm: MllmModel, n_scenes: int = 500, seed: int = 0, batch_size: int = 100, progress: bool = True
) -> dict:
    """Measure the answers to the main-subject question on the held-out scenes of :func:`context_accuracy`.

    Returns:
        ``exact``: share of answers equal to :func:`subject_answer` ("a pink six-point star");
        ``shape``: share naming the right category; ``color``: share naming the right colour.
    """
    scenes = eval_scenes(n_scenes, seed)
    images = torch.from_numpy(np.stack([render(s) for s in scenes])).permute(0, 3, 1, 2).float() / 255
    answers = describe_context(mllm, images, question=SUBJECT_QUESTIONS[0], batch_size=batch_size, progress=progress)
    pairs = [(s, a.lower()) for s, a in zip(scenes, answers, strict=True)]
    return {
        "exact": float(np.mean([a == subject_answer(s) for s, a in pairs])),
        "shape": float(np.mean([a.endswith(f" {s.subject_name}") for s, a in pairs])),
        "color": float(np.mean([s.subject_color in a.split() for s, a in pairs])),
        "n_scenes": n_scenes,
    }


def export(model, processor, out_dir: str | Path, dtype: torch.dtype = torch.float16, info: dict | None = None) -> Path:
    """Save model (``dtype`` safetensors) and processor to ``out_dir``, replacing it only once complete."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    copy.deepcopy(model).to(dtype).save_pretrained(tmp)
    processor.save_pretrained(tmp)
    if info is not None:
        (tmp / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    if out_dir.exists():
        out_dir.rename(old)
    for f in tmp.iterdir():
        f.chmod(0o644)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return out_dir


def train(
    run_dir: str | Path,
    out_dir: str | Path | None,
    preset: str = "miniworld",
    steps: int = 5000,
    batch_size: int = 64,
    pool_size: int = 60000,
    lr: float = 2e-3,
    subject_share: float = 0.2,
    head_weight: float = 1.0,
    seed: int = 0,
    threads: int | None = None,
    checkpoint_every: int = 250,
    eval_every: int = 1000,
    eval_scenes_n: int = 200,
    progress: bool = True,
) -> dict:
    """Train (or resume) the mini-world MLLM and export it as a transformers folder.

    Args:
        run_dir: run folder (checkpoint and ``log.jsonl``).
        out_dir: export folder (``config.json``, ``model.safetensors`` in float16, processor files); ``None``
            to skip.
        preset: a key of :data:`MLLM_PRESETS`.
        steps: total optimisation steps.
        batch_size: image-question pairs per step.
        pool_size: pretraining images rendered once and sampled from.
        lr: peak AdamW learning rate (linear warm-up over 100 steps, cosine decay to 5%).
        subject_share: share of pairs that ask the main-subject question instead of the context question.
        head_weight: weight of the training-only vision heads' loss (0 turns them off).
        seed: seed of initialisation, pool and batches.
        threads: torch threads (default: all cores or ``$SYNOOD_THREADS``).
        checkpoint_every: steps between checkpoints.
        eval_every: steps between held-out context-accuracy monitors (logged).
        eval_scenes_n: scenes per monitor (its seed differs from the reported evaluation's).
        progress: show progress bars.

    Returns:
        The last log record.
    """
    from tqdm.auto import tqdm

    set_threads(threads)
    torch.manual_seed(seed)
    run_dir = Path(run_dir)
    tokenizer = build_tokenizer()
    cfg = MLLM_PRESETS[preset]
    processor = build_processor(tokenizer, cfg)
    model = build_model(preset, tokenizer)
    trainee = _Trainee(model, _VisionHeads(model.config.vision_config.hidden_size))
    optimizer = torch.optim.AdamW(trainee.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    state = load_checkpoint(run_dir, trainee, optimizer)
    start = state["step"] if state else 0
    elapsed = state.get("train_seconds", 0.0) if state else 0.0
    pool = build_pool(pool_size, seed=seed, progress=progress)
    batcher = _Batcher(processor, pool.scenes)
    targets = _head_targets(pool.scenes, _vision_config(cfg)[1])
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    mllm = MllmModel(model, processor, name="training")
    record: dict = {"step": start}
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="train mllm", disable=not progress)
    t0 = time.time() - elapsed
    model.train()
    for step in bar:
        rng = np.random.default_rng([seed, 11, step])
        idx = rng.choice(len(pool), size=batch_size, replace=False)
        kinds = (rng.random(batch_size) < subject_share).astype(int)
        variants = rng.integers(0, 6, size=batch_size)
        batch = batcher(idx, kinds, variants)
        pixels = (pool.tensor(idx) - mean) / std
        for group in optimizer.param_groups:
            warm = min(1.0, (step + 1) / 100)
            group["lr"] = lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        image = model.model.get_image_features(pixel_values=pixels)
        loss_lm = model(mm_encoder_outputs={"image": image}, **batch).loss
        tokens = (
            image.hidden_states[-1][:, 1:]
            if model.config.vision_feature_select_strategy == "default"
            else image.hidden_states[-1]
        )
        loss_heads = trainee.heads.loss(tokens, {k: v[idx] for k, v in targets.items()})
        loss = loss_lm + head_weight * loss_heads
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainee.parameters(), 1.0)
        optimizer.step()
        record = {
            "step": step + 1,
            "loss": round(loss_lm.item(), 4),
            "loss_heads": round(loss_heads.item(), 4),
            "seconds": round(time.time() - t0, 1),
        }
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            model.eval()
            acc = context_accuracy(mllm, eval_scenes_n, seed=1, progress=False)
            model.train()
            record.update({k: round(v, 4) for k, v in acc.items() if k != "n_scenes"})
            bar.set_postfix(loss=f"{loss_lm.item():.3f}", recall=f"{acc['element_recall']:.3f}")
            log_step(run_dir, record)
        elif (step + 1) % 50 == 0:
            bar.set_postfix(loss=f"{loss_lm.item():.3f}")
            log_step(run_dir, record)
        if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
            save_checkpoint(run_dir, trainee, optimizer, step + 1, {"train_seconds": time.time() - t0})
    model.eval()
    if out_dir is not None:
        info = {
            "preset": preset,
            "architecture": cfg,
            "steps": steps,
            "batch_size": batch_size,
            "pool_size": pool_size,
            "lr": lr,
            "subject_share": subject_share,
            "head_weight": head_weight,
            "seed": seed,
            "train_seconds": round(time.time() - t0, 1),
            "parameters": sum(p.numel() for p in model.parameters()),
            "last_record": record,
        }
        export(model, processor, out_dir, info=info)
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/miniworld_mllm", help="run folder (checkpoints, log)")
    parser.add_argument("--out", default="assets/miniworld/mllm", help="export folder of the trained model")
    parser.add_argument("--preset", default="miniworld", choices=sorted(MLLM_PRESETS))
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--pool-size", type=int, default=60000)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--head-weight", type=float, default=1.0, help="weight of the training-only vision heads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--smoke", action="store_true", help="a few steps of a tiny model on a tiny pool (for tests)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--evaluate", metavar="FOLDER", help="only measure a saved model (500 held-out scenes) and print JSON"
    )
    args = parser.parse_args(argv)
    if args.evaluate:
        from ..mllm import load_mllm

        set_threads(args.threads)
        mllm = load_mllm(args.evaluate)
        progress = not args.no_progress
        result = {
            "context": context_accuracy(mllm, progress=progress),
            "subject": subject_accuracy(mllm, progress=progress),
        }
        print(json.dumps(result, indent=2))
        return
    if args.smoke:
        args.preset, args.steps, args.batch_size, args.pool_size, args.eval_every = "smoke", 4, 8, 32, 2
    record = train(
        args.run,
        args.out,
        preset=args.preset,
        steps=args.steps,
        batch_size=args.batch_size,
        pool_size=args.pool_size,
        lr=args.lr,
        head_weight=args.head_weight,
        seed=args.seed,
        threads=args.threads,
        checkpoint_every=2 if args.smoke else 250,
        eval_every=args.eval_every,
        eval_scenes_n=8 if args.smoke else 200,
        progress=not args.no_progress,
    )
    print(record)


if __name__ == "__main__":
    main()
