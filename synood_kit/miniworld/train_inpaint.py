"""Train the mini-world in-painting model: a diffusers Stable-Diffusion-inpainting pipeline at 32x32.

The exported folder is what ``StableDiffusionInpaintPipeline.from_pretrained(folder)`` loads, so SynOOD's
synthesis code runs unchanged on it and on ``stabilityai/stable-diffusion-2-inpainting``:

- ``vae``: an ``AutoencoderKL`` with one block (f=1: 32x32x3 -> 32x32x4). The pilots (``MINIWORLD_NOTES.md``)
  found an f=2 autoencoder too slow to reach the ~28 dB that keeping unmasked pixels needs; f=1 gets there in
  minutes. After phase 1 a per-channel shift and scale are folded into its ``quant_conv`` /
  ``post_quant_conv`` so that latents are zero-mean and unit-variance and ``scaling_factor`` is 1.
- ``unet``: a 9-channel ``UNet2DConditionModel`` (latent 4 + mask 1 + masked-image latent 4), v-prediction.
- ``text_encoder`` + ``tokenizer``: a 2-layer ``CLIPTextModel`` over a word-level ``PreTrainedTokenizerFast``
  whose vocabulary is the world's words (95 tokens; a 49,408-token BPE table alone would be 6 MB of the
  12 MB budget); ``model_max_length=77`` as CLIP's.
- ``scheduler``: DDIM (eta 0) with SD-2-inpainting's noise schedule (scaled-linear betas 0.00085-0.012, 1,000
  steps, ``steps_offset=1``, "leading" spacing) and no x0 clipping. SD-2-inpainting ships PNDM, and
  ``PNDMScheduler.from_config(pipe.scheduler.config)`` gives it here too (the saved config carries
  ``skip_prk_steps: true`` as SD-2's does); DDIM is the default because it measured better in SynOOD's setting
  on the same 128 held-out scenes (background pattern kept 93.0% vs 87.5%, subject removed 100% vs 97.7%).
  DDIM's default x0 clipping to [-1, 1] must stay off: it ruins these unit-variance latents (pattern kept 18%).

Phase 1 trains the VAE; phase 2 trains UNet and text encoder jointly on cached latents with a batch mix aimed at
SynOOD's operating regime:

- ``removal``: full-image mask, prompt ``"A photo only remain {context}."``, the noisy latent made from the
  render WITH its subject and the target the subject-free render of the same scene; timesteps concentrated
  below 600 (strength 0.6 with 20 DDIM or PNDM steps starts at t=551).
- ``box`` / ``subject``: the subject's box (grown 0-3 px), a random box, or its dilated silhouette, with a
  caption naming the subject; uniform timesteps (box in-painting runs at strength 1).
- ``caption``: full-image mask with an ordinary caption (text-to-image).
- a share of every kind gets the empty prompt (classifier-free guidance).

Training scenes come from their own random stream (``[seed, 4207, i]``), never the benchmark's; digits come
from :func:`~.benchmark.pretraining_digit_rows` only. Batches are a pure function of ``(seed, step)``.

Usage::

    python -m synood_kit.miniworld.train_inpaint --run runs/miniworld_inpaint --out assets/miniworld/inpaint
    python -m synood_kit.miniworld.train_inpaint --preset gpu --device cuda --workers 16 ...
    python -m synood_kit.miniworld.train_inpaint --smoke --run /tmp/inp --out /tmp/inp/model

Running the same command again resumes from ``<run>/checkpoint``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .training import load_checkpoint, log_step, save_checkpoint, set_threads

__all__ = [
    "PRESETS",
    "REMOVAL_PROMPT",
    "InpaintRecipe",
    "build_components",
    "build_pool",
    "build_tokenizer",
    "export_pipeline",
    "removal_prompt",
    "train",
]

REMOVAL_PROMPT = "A photo only remain {}."  # SynOOD's official prompt template (docs/method.md, stage 2)
_STREAM = 4207  # random-stream code of the in-painting training scenes (benchmark streams use 2025)
_BATCH_STREAM = 4208  # random-stream code of the batch draws
KINDS = ("removal", "box", "subject", "caption")


@dataclass(frozen=True)
class InpaintRecipe:
    """Architecture and schedule of the in-painting model (values from the pilots in MINIWORLD_NOTES.md)."""

    vae_channels: int = 32  # width of the f=1 autoencoder's single block
    vae_layers: int = 2  # ResNet layers per VAE block
    unet_channels: tuple[int, ...] = (48, 96, 128)  # UNet widths at 32x32, 16x16, 8x8
    unet_layers: int = 1  # ResNet layers per UNet block
    text_width: int = 64  # CLIPTextModel hidden size (= UNet cross-attention width)
    text_layers: int = 2  # CLIPTextModel layers
    pool_size: int = 40000  # training scenes rendered once (each with and without its subject)
    vae_steps: int = 1500  # phase 1 steps
    vae_batch: int = 64  # phase 1 images per step
    vae_lr: float = 2e-3  # phase 1 peak Adam learning rate
    unet_steps: int = 20000  # phase 2 steps
    batch_size: int = 48  # phase 2 samples per step
    lr: float = 6e-4  # phase 2 peak AdamW learning rate (UNet and text encoder)
    warmup: int = 200  # phase 2 linear warm-up steps
    ema: float = 0.999  # EMA decay of the exported UNet and text encoder weights
    mix: tuple[float, float, float, float] = (0.45, 0.25, 0.1, 0.2)  # shares of KINDS in a batch
    empty_prompt: float = 0.1  # share of samples trained with the empty prompt
    low_t_share: float = 0.85  # share of removal/caption samples with t < low_t_max
    low_t_max: int = 600  # strength 0.6 x 1000 training steps
    removal_from_target: float = 0.2  # share of removal samples noised from the subject-free latent
    guidance_scale: float = 8.0  # CFG written to the model card (official SynOOD value)
    schedule: str = "cosine"  # phase-2 learning rate after warm-up: "cosine" (to 10%) or "constant" (EMA smooths)


PRESETS: dict[str, InpaintRecipe] = {
    "cpu": InpaintRecipe(),
    "gpu": InpaintRecipe(
        pool_size=80000,
        vae_steps=3000,
        vae_batch=256,
        unet_steps=12000,
        batch_size=256,
        lr=6e-4,
        warmup=300,
        schedule="constant",
    ),
    "smoke": InpaintRecipe(
        vae_channels=8,
        vae_layers=1,
        unet_channels=(16, 32, 32),
        text_width=32,
        text_layers=1,
        pool_size=24,
        vae_steps=3,
        vae_batch=8,
        unet_steps=4,
        batch_size=8,
        warmup=2,
        ema=0.5,
    ),
}


def removal_prompt(context: list[str]) -> str:
    """Return SynOOD's in-painting prompt for context elements (joined with commas, as the MLLM answers)."""
    return REMOVAL_PROMPT.format(", ".join(context))


# --- tokenizer and components -------------------------------------------------------------------------------


def _corpus() -> list[str]:
    """Return text that covers every word the world's captions, contexts and prompts use."""
    from . import pretraining
    from .shapes import CATEGORIES
    from .world import BACKGROUND_COLORS, DIGIT_NAMES, EXTRA_KINDS, PATTERNS, SUBJECT_COLORS, world_vocabulary

    texts = [w for w, _ in world_vocabulary()]
    texts += [t.replace("{}", " ") for t in pretraining._OBJECT_TEMPLATES + pretraining._ADJ_TEMPLATES]
    texts += [REMOVAL_PROMPT.replace("{}", " "), "a an the on with and of in is background photo picture image"]
    texts += ["an empty background", "nothing in front of a background", "a background only", "texture"]
    texts += [c.name for c in CATEGORIES] + list(DIGIT_NAMES) + list(PATTERNS) + list(EXTRA_KINDS)
    texts += list(SUBJECT_COLORS) + list(BACKGROUND_COLORS) + [". , ; : ! ? - ' \" ( )"]
    return texts


def build_tokenizer(model_max_length: int = 77):
    """Build the world's word-level tokenizer (deterministic: the vocabulary is the sorted set of world words).

    Returns:
        A ``transformers.PreTrainedTokenizerFast`` that adds ``<|startoftext|>`` / ``<|endoftext|>`` around
        a prompt, pads with ``<pad>`` and maps unknown words to ``<unk>``.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    words = sorted({w for text in _corpus() for w, _ in pre.pre_tokenize_str(text.lower())})
    special = ["<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(special + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", vocab["<|startoftext|>"]), ("<|endoftext|>", vocab["<|endoftext|>"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )


class InpaintModel(torch.nn.Module):
    """The trainable parts together (one state dict for checkpoints), plus EMA copies of UNet and text encoder."""

    def __init__(self, vae, unet, text_encoder):
        super().__init__()
        self.vae, self.unet, self.text_encoder = vae, unet, text_encoder
        self.ema_unet = copy.deepcopy(unet).requires_grad_(False)
        self.ema_text = copy.deepcopy(text_encoder).requires_grad_(False)


def build_components(recipe: InpaintRecipe, vocab_size: int, seed: int = 0) -> InpaintModel:
    """Build the randomly initialised VAE, 9-channel UNet and text encoder of ``recipe`` (seeded)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    groups = 8 if recipe.vae_channels % 8 == 0 else 4
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(recipe.vae_channels,),
        layers_per_block=recipe.vae_layers,
        latent_channels=4,
        norm_num_groups=groups,
        sample_size=32,
        scaling_factor=1.0,
        mid_block_add_attention=False,
    )
    with torch.no_grad():  # a small initial log-variance keeps early samples near the mean (pilot)
        vae.quant_conv.bias[4:].fill_(-8.0)
    n = len(recipe.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=9,
        out_channels=4,
        block_out_channels=recipe.unet_channels,
        layers_per_block=recipe.unet_layers,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=recipe.text_width,
        attention_head_dim=8,
        norm_num_groups=8 if min(recipe.unet_channels) >= 32 else 4,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=recipe.text_width,
            intermediate_size=4 * recipe.text_width,
            num_hidden_layers=recipe.text_layers,
            num_attention_heads=4,
            max_position_embeddings=77,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=3,
            projection_dim=recipe.text_width,
        )
    )
    return InpaintModel(vae, unet, text)


def scheduler_config() -> dict:
    """Return SD-2-inpainting's noise schedule with this model's v-prediction (DDIM keys plus PNDM's)."""
    return {
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000,
        "steps_offset": 1,
        "skip_prk_steps": True,
        "set_alpha_to_one": False,
        "prediction_type": "v_prediction",
        "timestep_spacing": "leading",
        "clip_sample": False,
    }


def _training_scheduler_config() -> dict:
    return {k: v for k, v in scheduler_config().items() if k not in ("skip_prk_steps", "set_alpha_to_one")}


# --- data ---------------------------------------------------------------------------------------------------


@dataclass
class InpaintPool:
    """Rendered training scenes: with and without subject, subject masks and boxes, prompts."""

    src: np.ndarray  # (N, 32, 32, 3) uint8, the render with its subject
    free: np.ndarray  # (N, 32, 32, 3) uint8, the same scene without subject
    smask: np.ndarray  # (N, 32, 32) uint8, subject coverage x 255
    box: np.ndarray  # (N, 4) int16 subject box (x0, y0, x1, y1); -1 without subject
    prompts: dict  # kind -> list of N strings: "removal", "removal_alt", "caption", "short", "free_caption"


def _render_chunk(args) -> dict:
    from .benchmark import pretraining_digit_rows
    from .pretraining import sample_caption
    from .world import render, sample_scene, subject_box, subject_mask

    seed, lo, hi = args
    rows = pretraining_digit_rows()
    out = {k: [] for k in ("src", "free", "smask", "box", "removal", "removal_alt", "caption", "short", "free_caption")}
    for i in range(lo, hi):
        rng = np.random.default_rng([seed, _STREAM, i])
        kind = ("category", "digit", "none")[int(rng.choice(3, p=[0.82, 0.06, 0.12]))]
        scene = sample_scene(rng, subject=kind, digit_rows=rows)
        free = scene.without_subject()
        out["src"].append(render(scene))
        out["free"].append(render(free))
        m = subject_mask(scene)
        out["smask"].append((m * 255).round().astype(np.uint8))
        out["box"].append(subject_box(scene) if scene.subject is not None else (-1, -1, -1, -1))
        ctx = scene.context()
        out["removal"].append(removal_prompt(ctx))
        alt = [ctx[0]] + [ctx[k] for k in rng.permutation(np.arange(1, len(ctx)))] if len(ctx) > 1 else ctx
        out["removal_alt"].append(REMOVAL_PROMPT.format(" and ".join(alt)))
        out["caption"].append(scene.caption() if rng.random() < 0.7 else sample_caption(scene, rng)[0])
        short = f"a {scene.subject_color} {scene.subject_name}" if scene.subject else "a background only"
        out["short"].append(short)
        out["free_caption"].append(free.caption())
    return out


def build_pool(n: int, seed: int = 0, workers: int = 1, progress: bool = True) -> InpaintPool:
    """Render ``n`` training scenes deterministically (the result does not depend on ``workers``)."""
    from tqdm.auto import tqdm

    chunk = 500
    jobs = [(seed, lo, min(n, lo + chunk)) for lo in range(0, n, chunk)]
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as p:
            parts = list(tqdm(p.imap(_render_chunk, jobs), total=len(jobs), desc="inpaint pool", disable=not progress))
    else:
        parts = [_render_chunk(j) for j in tqdm(jobs, desc="inpaint pool", disable=not progress)]
    cat = {k: [v for p in parts for v in p[k]] for k in parts[0]}
    prompts = {k: cat[k] for k in ("removal", "removal_alt", "caption", "short", "free_caption")}
    return InpaintPool(
        np.stack(cat["src"]), np.stack(cat["free"]), np.stack(cat["smask"]), np.asarray(cat["box"], np.int16), prompts
    )


def _to_unit(x: np.ndarray, device) -> torch.Tensor:
    """uint8 (N, 32, 32, 3) -> float (N, 3, 32, 32) in [-1, 1]."""
    return torch.from_numpy(x).to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


# --- phase 1: the autoencoder -------------------------------------------------------------------------------


def _vae_loss(vae, x: torch.Tensor) -> torch.Tensor:
    post = vae.encode(x).latent_dist
    rec = vae.decode(post.sample()).sample
    kl = post.kl().mean() / x[0].numel()
    return F.l1_loss(rec, x) + F.mse_loss(rec, x) + 1e-6 * kl


@torch.no_grad()
def vae_psnr(vae, x: torch.Tensor, batch: int = 256) -> float:
    """Return the PSNR (dB, images in [0, 1]) of ``vae`` on ``x`` ((N, 3, 32, 32) in [-1, 1])."""
    mse = []
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        rec = vae.decode(vae.encode(xb).latent_dist.mode()).sample.clamp(-1, 1)
        mse.append(((rec - xb) / 2).pow(2).flatten(1).mean(1))
    return float((10 * torch.log10(1.0 / torch.cat(mse).clamp_min(1e-10))).mean())


@torch.no_grad()
def _fold_latent_normalisation(vae, x: torch.Tensor) -> dict:
    """Fold per-channel latent mean/std into quant_conv and post_quant_conv (scaling_factor stays 1)."""
    mu = torch.cat([vae.encode(x[i : i + 256]).latent_dist.mean for i in range(0, len(x), 256)])
    m = mu.mean((0, 2, 3))
    s = mu.std((0, 2, 3)).clamp_min(1e-4)
    q, p = vae.quant_conv, vae.post_quant_conv
    q.weight[:4] /= s.view(4, 1, 1, 1)
    q.bias[:4] = (q.bias[:4] - m) / s
    q.bias[4:] -= 2 * torch.log(s)
    p.bias += (p.weight[:, :, 0, 0] * m.view(1, 4)).sum(1)
    p.weight *= s.view(1, 4, 1, 1)
    return {"latent_mean": m.tolist(), "latent_std": s.tolist()}


# --- phase 2: the UNet --------------------------------------------------------------------------------------


def _sample_t(g: torch.Generator, n: int, low: torch.Tensor, recipe: InpaintRecipe) -> torch.Tensor:
    """Timesteps: uniform over [0, 1000) or, where ``low``, mostly below ``low_t_max``."""
    u = torch.randint(0, 1000, (n,), generator=g)
    lo = torch.randint(0, recipe.low_t_max, (n,), generator=g)
    pick = (torch.rand(n, generator=g) < recipe.low_t_share) & low
    return torch.where(pick, lo, u)


def _batch_plan(pool: InpaintPool, step: int, seed: int, recipe: InpaintRecipe) -> dict:
    """Draw one phase-2 batch as a pure function of (seed, step): indices, kinds, masks, prompts, timesteps."""
    g = torch.Generator().manual_seed(int(np.random.default_rng([seed, _BATCH_STREAM, step]).integers(2**62)))
    b = recipe.batch_size
    idx = torch.randint(0, len(pool.src), (b,), generator=g)
    kind = torch.multinomial(torch.tensor(recipe.mix), b, replacement=True, generator=g)
    has_subject = torch.from_numpy(pool.box[idx.numpy(), 0] >= 0)
    kind = torch.where((kind == 2) & ~has_subject, torch.ones_like(kind), kind)  # no silhouette to mask
    boxes = torch.from_numpy(pool.box[idx.numpy()].astype(np.int64))
    grow = torch.randint(0, 4, (b, 1), generator=g)
    rnd_lo = torch.randint(0, 20, (b, 2), generator=g)
    rnd_hi = (rnd_lo + torch.randint(8, 25, (b, 2), generator=g)).clamp(max=32)
    use_rnd = ((torch.rand(b, generator=g) < 0.25) | ~has_subject).view(-1, 1)
    lo = torch.where(use_rnd, rnd_lo, (boxes[:, :2] - grow).clamp(min=0))
    hi = torch.where(use_rnd, rnd_hi, (boxes[:, 2:] + grow).clamp(max=32))
    ar = torch.arange(32)
    inside_x = (ar >= lo[:, :1]) & (ar < hi[:, :1])  # (b, 32) over x
    inside_y = (ar >= lo[:, 1:]) & (ar < hi[:, 1:])  # (b, 32) over y
    box_mask = (inside_y[:, :, None] & inside_x[:, None, :]).float().unsqueeze(1)
    mask = torch.where((kind == 1).view(-1, 1, 1, 1), box_mask, torch.ones(b, 1, 32, 32))
    mask = torch.where((kind == 2).view(-1, 1, 1, 1), -torch.ones(b, 1, 32, 32), mask)  # silhouette, filled later
    u_prompt = torch.rand(b, generator=g).tolist()
    u_free = torch.rand(b, generator=g)
    from_target = (kind == 0) & (u_free < recipe.removal_from_target)
    use_free = (kind == 3) & (u_free < 0.3)
    texts = pool.prompts
    prompts = []
    for j, (i, k) in enumerate(zip(idx.tolist(), kind.tolist(), strict=True)):
        if k == 0:
            prompts.append(texts["removal"][i] if u_prompt[j] < 0.85 else texts["removal_alt"][i])
        elif k in (1, 2):
            prompts.append(texts["caption"][i] if u_prompt[j] < 0.8 else texts["short"][i])
        else:
            prompts.append(texts["free_caption"][i] if use_free[j] else texts["caption"][i])
    drop = torch.rand(b, generator=g) < recipe.empty_prompt
    prompts = ["" if d else p for p, d in zip(prompts, drop.tolist(), strict=True)]
    t = _sample_t(g, b, (kind == 0) | (kind == 3), recipe)
    # Below t=200 a sampler started at strength 0.6 only sees latents it has already cleaned: noise those from
    # the subject-free target rather than asking for a removal from a nearly clean source.
    from_target |= (kind == 0) & (t < 200)
    noise = torch.randn(b, 4, 32, 32, generator=g)
    dilate = torch.randint(1, 3, (b,), generator=g)
    return {
        "idx": idx,
        "kind": kind,
        "mask": mask,
        "prompts": prompts,
        "t": t,
        "noise": noise,
        "dilate": dilate,
        "from_target": from_target,
        "use_free": use_free,
    }


def _encode_prompts(tokenizer, text_encoder, prompts: list[str], device) -> torch.Tensor:
    ids = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    return text_encoder(ids.input_ids.to(device))[0]


def _unet_loss(model: InpaintModel, tokenizer, scheduler, plan: dict, pool_t: dict, device) -> torch.Tensor:
    idx = plan["idx"].to(device)
    kind = plan["kind"].to(device)
    src_img = pool_t["src"][idx].float().div(127.5).sub(1.0)
    mask = plan["mask"].to(device)
    sil = (pool_t["smask"][idx].float() / 255.0).unsqueeze(1)
    k = plan["dilate"].to(device).view(-1, 1, 1, 1)
    sil = torch.where(k == 1, F.max_pool2d(sil, 3, 1, 1), F.max_pool2d(sil, 5, 1, 2))
    mask = torch.where(mask < 0, (sil > 0.05).float(), mask)
    z_src = pool_t["z_src"][idx].float()
    z_free = pool_t["z_free"][idx].float()
    use_free = plan["use_free"].to(device).view(-1, 1, 1, 1)
    target = torch.where((kind == 0).view(-1, 1, 1, 1) | use_free, z_free, z_src)
    start = torch.where(
        (kind == 0).view(-1, 1, 1, 1) & ~plan["from_target"].to(device).view(-1, 1, 1, 1), z_src, target
    )
    noise, t = plan["noise"].to(device), plan["t"].to(device)
    with torch.no_grad():  # the whole batch at once (a full mask gives the grey image's latent): fixed shapes
        z_masked = model.vae.encode(src_img * (mask < 0.5)).latent_dist.mode()
    # Same input as the pipeline: x_t noised from `start`; the model learns v for the `target` image.
    a = scheduler.alphas_cumprod.to(device)[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * start + (1 - a).sqrt() * noise
    eps = (x_t - a.sqrt() * target) / (1 - a).sqrt()  # the noise that maps `target` to x_t
    v = a.sqrt() * eps - (1 - a).sqrt() * target
    cond = _encode_prompts(tokenizer, model.text_encoder, plan["prompts"], device)
    pred = model.unet(torch.cat([x_t, mask, z_masked], 1), t, cond).sample
    # Min-SNR-5 weighting (Hang et al., 2023) in its v form: x0-error x min(SNR, 5). Without it, removal samples
    # at low t (a large x0 change seen through a tiny noise level) dominate the v-loss.
    snr = a / (1 - a)
    w = snr.clamp(max=5.0) / (snr + 1)
    return (w * (pred - v).pow(2)).mean()


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, live: torch.nn.Module, decay: float) -> None:
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in live.parameters()], 1 - decay)


def _lr_at(step: int, total: int, peak: float, warmup: int, schedule: str = "cosine") -> float:
    decay = 1.0 if schedule == "constant" else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    return peak * min(1.0, (step + 1) / max(1, warmup)) * decay


def _ddim_kwargs() -> dict:
    return {k: v for k, v in scheduler_config().items() if k != "skip_prk_steps"}


# --- export -------------------------------------------------------------------------------------------------


def export_pipeline(
    model: InpaintModel, tokenizer, out_dir: str | Path, extra: dict | None = None, fp16: bool = True
) -> Path:
    """Save a ``StableDiffusionInpaintPipeline`` folder (safetensors) of the EMA UNet and text encoder.

    The UNet is stored in float16 (``fp16``) to halve the folder; ``from_pretrained`` loads it back in the
    dtype the caller asks for (``torch_dtype``), float32 by default in the kit's loader. The VAE and text encoder
    are small and stay float32.
    """
    from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline

    out_dir = Path(out_dir)
    unet = copy.deepcopy(model.ema_unet).eval()
    if fp16:
        unet = unet.half()
    pipe = StableDiffusionInpaintPipeline(
        vae=copy.deepcopy(model.vae).float().eval(),
        text_encoder=copy.deepcopy(model.ema_text).float().eval(),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(**_ddim_kwargs()),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    # As in SD-2's scheduler files, the config also carries the other scheduler's keys, so that
    # PNDMScheduler.from_config(pipe.scheduler.config) gets skip_prk_steps (DDIM ignores the key).
    cfg_file = out_dir / "scheduler" / "scheduler_config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), **scheduler_config()}, indent=2))
    if extra:
        (out_dir / "training.json").write_text(json.dumps(extra, indent=1))
    return out_dir


# --- the training run ---------------------------------------------------------------------------------------


def train(
    run_dir: str | Path,
    out_dir: str | Path | None,
    recipe: InpaintRecipe = PRESETS["cpu"],
    seed: int = 0,
    device: str = "cpu",
    workers: int = 1,
    checkpoint_every: int = 250,
    export_every: int = 0,
    max_seconds: float | None = None,
    progress: bool = True,
) -> dict:
    """Train (or resume) the in-painting model and export it as a pipeline folder.

    Args:
        run_dir: run folder (``checkpoint/``, ``log.jsonl``, ``tokenizer/``, ``recipe.json``).
        out_dir: export folder; ``None`` to skip the export.
        recipe: architecture and schedule.
        seed: seed of initialisation, pool and batches.
        device: torch device of the training (``"cpu"`` or ``"cuda"``).
        workers: processes rendering the pool.
        checkpoint_every: steps between checkpoints (both phases count).
        export_every: phase-2 steps between exports to ``out_dir`` (0: only at the end).
        max_seconds: stop (after a checkpoint) once this much wall time has passed; run again to continue.
        progress: show progress bars.

    Returns:
        The last log record.
    """
    from diffusers import DDPMScheduler
    from tqdm.auto import tqdm

    t_start = time.time()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if device == "cpu":
        set_threads()
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    tok_dir = run_dir / "tokenizer"
    if tok_dir.is_dir():  # a resumed run keeps the vocabulary it started with
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast.from_pretrained(tok_dir)
    else:
        tokenizer = build_tokenizer()
        tokenizer.save_pretrained(tok_dir)
    (run_dir / "recipe.json").write_text(json.dumps({**asdict(recipe), "seed": seed}, indent=1))
    model = build_components(recipe, len(tokenizer), seed).to(device)
    total = recipe.vae_steps + recipe.unet_steps
    state_file = run_dir / "checkpoint" / "state.json"
    start = json.loads(state_file.read_text())["step"] if state_file.is_file() else 0
    in_phase2 = start >= recipe.vae_steps
    vae_opt = torch.optim.Adam(model.vae.parameters(), lr=recipe.vae_lr)
    unet_params = list(model.unet.parameters()) + list(model.text_encoder.parameters())
    unet_opt = torch.optim.AdamW(unet_params, lr=recipe.lr, weight_decay=0.01)
    state = load_checkpoint(run_dir, model, unet_opt if in_phase2 else vae_opt)
    start = state["step"] if state else 0
    model.to(device)
    pool = build_pool(recipe.pool_size, seed, workers, progress)
    held = _to_unit(build_pool(64, seed + 1000, 1, False).src, device)
    record: dict = {"step": start}
    bar = tqdm(range(start, total), initial=start, total=total, desc="train inpaint", disable=not progress)
    t0 = time.time()
    pool_t: dict = {}
    sched = DDPMScheduler(**_training_scheduler_config())

    def checkpoint(step: int) -> None:
        save_checkpoint(
            run_dir,
            model,
            unet_opt if step >= recipe.vae_steps else vae_opt,
            step,
            {"phase": 2 if step >= recipe.vae_steps else 1},
        )

    def export(step: int) -> None:
        if out_dir is not None:
            export_pipeline(
                model,
                tokenizer,
                out_dir,
                {
                    "trained_by": "python -m synood_kit.miniworld.train_inpaint",
                    "step": step,
                    "recipe": asdict(recipe),
                    "seed": seed,
                    "vae_psnr_db": record.get("vae_psnr_db"),
                    "train_seconds": record.get("seconds"),
                },
            )

    for step in bar:
        if step < recipe.vae_steps:
            model.vae.train()
            rng = np.random.default_rng([seed, _BATCH_STREAM, step])
            idx = rng.choice(len(pool.src), size=recipe.vae_batch)
            half = rng.random(recipe.vae_batch) < 0.5
            imgs = np.where(half[:, None, None, None], pool.src[idx], pool.free[idx])
            for group in vae_opt.param_groups:
                group["lr"] = _lr_at(step, recipe.vae_steps, recipe.vae_lr, 50)
            loss = _vae_loss(model.vae, _to_unit(imgs, device))
            vae_opt.zero_grad(set_to_none=True)
            loss.backward()
            vae_opt.step()
            record = {"step": step + 1, "phase": 1, "seconds": round(time.time() - t0, 1)}
            if (step + 1) % 50 == 0:
                record["loss"] = round(float(loss.detach()), 5)
                log_step(run_dir, record)
            if step + 1 == recipe.vae_steps:
                model.vae.eval()
                record["vae_psnr_db"] = round(vae_psnr(model.vae, held), 2)
                sample = _to_unit(pool.src[: min(len(pool.src), 4096)], device)
                record.update(_fold_latent_normalisation(model.vae, sample))
                record["vae_psnr_db_folded"] = round(vae_psnr(model.vae, held), 2)
                log_step(run_dir, record)
                bar.set_postfix(psnr=record["vae_psnr_db"])
        else:
            if not pool_t:  # phase 2 starts (or resumes): cache the latents of the frozen VAE
                model.vae.eval().requires_grad_(False)
                with torch.no_grad():

                    def enc(a):
                        x = _to_unit(a, "cpu")
                        return torch.cat(
                            [
                                model.vae.encode(x[i : i + 512].to(device)).latent_dist.mode().half()
                                for i in range(0, len(x), 512)
                            ]
                        )

                    pool_t = {
                        "src": torch.from_numpy(pool.src).to(device).permute(0, 3, 1, 2).contiguous(),
                        "smask": torch.from_numpy(pool.smask).to(device),
                        "z_src": enc(pool.src),
                        "z_free": enc(pool.free),
                    }
                    record["vae_psnr_db"] = round(vae_psnr(model.vae, held), 2)
                model.unet.train()
                model.text_encoder.train()
            s2 = step - recipe.vae_steps
            plan = _batch_plan(pool, s2, seed, recipe)
            for group in unet_opt.param_groups:
                group["lr"] = _lr_at(s2, recipe.unet_steps, recipe.lr, recipe.warmup, recipe.schedule)
            loss = _unet_loss(model, tokenizer, sched, plan, pool_t, device)
            unet_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet_params, 1.0)
            unet_opt.step()
            decay = min(recipe.ema, (1 + s2) / (10 + s2))
            _ema_update(model.ema_unet, model.unet, decay)
            _ema_update(model.ema_text, model.text_encoder, decay)
            record = {
                **{k: record[k] for k in ("vae_psnr_db",) if k in record},
                "step": step + 1,
                "phase": 2,
                "seconds": round(time.time() - t0, 1),
            }
            if (s2 + 1) % 50 == 0 or step + 1 == total:
                record["loss"] = round(float(loss.detach()), 5)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                log_step(run_dir, record)
            if export_every and (s2 + 1) % export_every == 0:
                export(step + 1)
        last = step + 1 == total
        timeout = max_seconds is not None and time.time() - t_start > max_seconds
        if (step + 1) % checkpoint_every == 0 or last or step + 1 == recipe.vae_steps or timeout:
            checkpoint(step + 1)
        if timeout:
            record["stopped"] = "max_seconds"
            break
    if record["step"] > recipe.vae_steps or total == recipe.vae_steps:
        export(record["step"])
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/miniworld_inpaint", help="run folder (checkpoints, log)")
    parser.add_argument("--out", default="assets/miniworld/inpaint", help="export folder of the pipeline")
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="recipe preset")
    parser.add_argument("--unet-steps", type=int, help="override the preset's phase-2 steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering the pool")
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument("--export-every", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, help="stop after this wall time (resume later)")
    parser.add_argument("--smoke", action="store_true", help="a tiny model for a few steps (for tests)")
    args = parser.parse_args(argv)
    recipe = PRESETS["smoke" if args.smoke else args.preset]
    if args.unet_steps is not None:
        recipe = replace(recipe, unet_steps=args.unet_steps)
    record = train(
        args.run,
        args.out,
        recipe,
        seed=args.seed,
        device=args.device,
        workers=args.workers,
        checkpoint_every=2 if args.smoke else args.checkpoint_every,
        export_every=args.export_every,
        max_seconds=args.max_seconds,
    )
    print(json.dumps(record))


if __name__ == "__main__":
    main()
