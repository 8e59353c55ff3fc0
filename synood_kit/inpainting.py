"""SynOOD stages 3-4: in-painting with energy-gradient noise refinement, on a stock diffusers pipeline.

One refinement round (docs/method.md, stage 4): from the source image's latent ``z0`` and a noise ``eps``, start at
``z_t0 = add_noise(z0, eps, t0)`` (``t0`` set by ``strength``), let the stock ``StableDiffusionInpaintPipeline``
denoise to a final latent ``z_hat`` (no gradient), decode ``z_hat`` through the VAE **with** gradient, score the
image with a guidance scorer ``s`` (higher = more in-distribution), and update the *initial* noise with the
gradient taken on the *final* latent (the official "skip gradient" approximation):
``eps <- eps - step_size * d loss / d z_hat`` with ``loss = (target - s)^2``.

Defaults fix the official code's defects (docs/method.md, "Known defects"), each reachable as an option:

* **Reachable target** (defect 1). Officially ``s = mean(g) - logsumexp(g)`` of classifier logits ``g`` with
  margin ``m = -5``; ``s <= -log(C)``, so ``m`` is never reached and every step pushes "more OOD". The default
  target is the scorer's value at the ID boundary (the 5% quantile of ID scores, i.e. the FPR95 threshold),
  measured by :func:`boundary_target`. ``target=-5.0`` with the ``"official"`` classifier form is the official
  setting.
* **Pluggable scorer** (defect 2): classifier energy (official), or the CLIP model's own MCM / NegLabel /
  energy score (:mod:`synood_kit.guidance`).
* **Every update reaches the saved image** (defect 3). Officially, 3 rounds each compute a gradient and the
  last one is thrown away, so 2 updates shape the image. Here ``rounds`` updates are followed by a final
  generation (``rounds + 1`` generations); ``official_rounds=True`` restores the official count.

Cheaper recipes (``GuidanceConfig.recipe``) estimate the clean latent of an update round for less than a full
regeneration; the update and its units (``step_unit``) are the same, and the last generation is always a full one:

* ``"full"`` (default; the official recipe): every round regenerates the image, ``n`` denoising steps.
* ``"one_step"``: the one-step (Tweedie) estimate at the first denoising step,
  ``z0_hat = (z_t0 - sqrt(1 - a_t0) eps_theta(z_t0)) / sqrt(a_t0)`` (Chung et al. 2023, DPS; Bansal et al. 2023,
  universal guidance): one UNet call per round instead of ``n``.
* ``"last_steps"``: the first generation is a full one that keeps the latent ``z_m`` entering its last ``k``
  (``rerun_steps``) denoising steps; each round re-runs only those ``k`` steps (an SDEdit restart late in the
  trajectory, Meng et al. 2022). The update moves the noise of ``z_m`` (``z_m = sqrt(a_m) x + sqrt(1 - a_m) eps_m``):
  ``z_m <- z_m - step * sqrt(1 - a_m) * dL/dz_hat``; with ``k`` = all steps it is the full recipe.

:func:`refine_steps` yields one frozen :class:`RefineStep` per generation (or clean-latent estimate); :func:`refine`
returns the last. The denoising loop is the stock pipeline's (``latents=`` in, ``output_type="latent"`` out; the
one-step estimate stops it after its first step with ``callback_on_step_end``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "RECIPES",
    "GuidanceConfig",
    "InpaintConfig",
    "RefineStep",
    "compare_recipes",
    "context_prompt",
    "full_masks",
    "load_inpaint_pipeline",
    "refine",
    "refine_steps",
    "summarize_refinement",
]


@dataclass(frozen=True)
class InpaintConfig:
    """The in-painting call (official values: docs/method.md, stages 2-3)."""

    prompt_template: str = "A photo only remain {context}."  # official diffusion prompt
    max_context_chars: int = 73  # the official code cuts the MLLM answer to 73 characters
    strength: float = 0.6  # share of the schedule that is re-noised (official 0.6)
    num_inference_steps: int = 20  # scheduler steps over the full schedule (official 20)
    guidance_scale: float = 8.0  # classifier-free guidance (official 8)
    negative_prompt: str = ""  # CFG's unconditional prompt
    source_latent: str = "sample"  # the source's VAE latent: "sample" (official; seeded per image) or "mode"

    def __post_init__(self) -> None:
        if self.source_latent not in ("sample", "mode"):
            raise ValueError(f"source_latent must be 'sample' or 'mode', got {self.source_latent!r}")
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")
        if (
            isinstance(self.num_inference_steps, bool)
            or not isinstance(self.num_inference_steps, int)
            or self.num_inference_steps < 1
        ):
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {self.num_inference_steps!r}")
        if not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0):
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {self.guidance_scale}")
        if self.max_context_chars < 1:
            raise ValueError(f"max_context_chars must be >= 1, got {self.max_context_chars}")
        if not isinstance(self.prompt_template, str) or self.prompt_template.count("{context}") != 1:
            raise ValueError(f"prompt_template needs one '{{context}}', got {self.prompt_template!r}")


RECIPES = ("full", "one_step", "last_steps")  # see the module docstring


@dataclass(frozen=True)
class GuidanceConfig:
    """Energy-gradient refinement of the initial noise (docs/method.md, stage 4)."""

    rounds: int = 3  # noise updates (official R = 3)
    step_size: float = 10.0  # lr on the noise, in step_unit (official 10; the argparse default 2e11 is a defect)
    step_unit: str = "per_image"  # "per_image": lr on d L_i / d z per image, batch-independent (the kit's default);
    # "official": lr on d mean_i L_i / d(z / sf), the official code's form. official lr at batch B = per_image lr * B / sf
    target: float | None = None  # score target; None: required from boundary_target() by the caller
    normalize: str = "none"  # "none" (official), "unit" (per-sample unit RMS gradient) or "clip"
    clip_value: float = 1.0  # with normalize="clip": per-element gradient clip
    official_rounds: bool = False  # True: the last round's gradient is computed and discarded (official)
    recipe: str = "full"  # clean-latent estimate of an update round: "full" regeneration (official), "one_step"
    # (Tweedie estimate at the first denoising step: 1 UNet call) or "last_steps" (re-run the last rerun_steps steps)
    rerun_steps: int = 3  # with recipe="last_steps": denoising steps re-run per round (<= steps x strength)

    def __post_init__(self) -> None:
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 0:
            raise ValueError(f"rounds must be an integer >= 0 (0: the unguided baseline), got {self.rounds!r}")
        if not (math.isfinite(self.step_size) and self.step_size >= 0):
            raise ValueError(f"step_size must be a finite number >= 0, got {self.step_size}")
        if not (math.isfinite(self.clip_value) and self.clip_value > 0):
            raise ValueError(f"clip_value must be a finite number > 0, got {self.clip_value}")
        if self.target is not None and not (isinstance(self.target, (int, float)) and math.isfinite(self.target)):
            raise ValueError(f"target must be None or a finite number, got {self.target!r}")
        if self.normalize not in ("none", "unit", "clip"):
            raise ValueError(f"normalize must be 'none', 'unit' or 'clip', got {self.normalize!r}")
        if self.step_unit not in ("official", "per_image"):
            raise ValueError(f"step_unit must be 'official' or 'per_image', got {self.step_unit!r}")
        if self.official_rounds and self.rounds < 1:
            raise ValueError("official_rounds needs rounds >= 1")
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {self.recipe!r}")
        if isinstance(self.rerun_steps, bool) or not isinstance(self.rerun_steps, int) or self.rerun_steps < 1:
            raise ValueError(f"rerun_steps must be an integer >= 1, got {self.rerun_steps!r}")


@dataclass(frozen=True)
class RefineStep:
    """One generation (or clean-latent estimate) of the refinement loop (tensors on the CPU, detached)."""

    round: int  # 0-based generation index
    noise: torch.Tensor  # (B, C, h, w) the initial noise eps (recipe "last_steps": the first generation's, kept)
    latent: torch.Tensor  # (B, C, h, w) the final latent z_hat, or the one-step estimate (see `estimate`)
    image: torch.Tensor  # (B, 3, H, W) decoded image in [0, 1]
    score: torch.Tensor  # (B,) guidance score of the image (higher = more ID)
    loss: torch.Tensor  # (B,) (target - score)^2
    grad: torch.Tensor | None  # (B, C, h, w) the gradient the update uses (see GuidanceConfig.step_unit), or None
    grad_magnitude: torch.Tensor | None  # (B, h, w) per-position L2 norm of grad over channels
    seconds: float  # wall time of this generation (denoise + decode + backward)
    unet_evals: int  # UNet forward passes per image of this generation (x2 under CFG)
    vae_decodes: int  # VAE decodes per image of this generation
    rejected: tuple[bool, ...] = ()  # per sample: a non-finite gradient was rejected (noise kept)
    backward_passes: int = 0  # backward passes (decoder + scorer) per image: 1 when `grad` was computed
    estimate: str = "final"  # what `latent` is: "final" (a generation's last latent) or "one_step" (Tweedie)
    start_latent: torch.Tensor | None = None  # (B, C, h, w) the latent the denoising started from (z_t0 or z_m)


def context_prompt(context: str | Sequence[str], config: InpaintConfig | None = None) -> str:
    """Return the diffusion prompt for an image's context (docs/method.md, stage 2).

    Args:
        context: a raw MLLM answer (a string), cut at ``config.max_context_chars`` characters as the official code
            does, mid-word if need be; or parsed context elements (a sequence), joined with ", " and kept whole:
            elements are dropped from the end until the text fits, and a first element that alone is too long is
            cut at its last word boundary within the limit.
        config: the prompt template and the character limit.

    Raises:
        ValueError: for an empty sequence of elements.
    """
    config = config or InpaintConfig()
    limit = config.max_context_chars
    if isinstance(context, str):
        return config.prompt_template.format(context=context.strip()[:limit])
    elements = [e.strip() for e in context if e.strip()]
    if not elements:
        raise ValueError("context_prompt needs at least one context element")
    text = elements[0]
    if len(text) > limit:
        cut = text[: limit + 1].rsplit(" ", 1)[0] if " " in text[: limit + 1] else text[:limit]
        text = cut[:limit].rstrip()
    for element in elements[1:]:
        if len(text) + 2 + len(element) > limit:
            break
        text = f"{text}, {element}"
    return config.prompt_template.format(context=text)


def full_masks(images: torch.Tensor) -> torch.Tensor:
    """Return the official full-image masks ``(B, 1, H, W)`` of ones (in-painting acts as img2img)."""
    return torch.ones(images.shape[0], 1, *images.shape[-2:], dtype=images.dtype)


def _encode(pipe, images: torch.Tensor, how: str = "sample", noise: torch.Tensor | None = None) -> torch.Tensor:
    """Return the sources' scaled latents: sampled from the VAE's latent distribution with ``noise`` (official), or
    its mode."""
    with torch.no_grad():
        dist = pipe.vae.encode(images * 2 - 1).latent_dist
    latent = dist.mode() if how == "mode" else dist.mean + dist.std * noise.to(dist.mean)
    return latent * pipe.vae.config.scaling_factor


def _decode(pipe, latents: torch.Tensor) -> torch.Tensor:
    out = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return ((out + 1) / 2).clamp(0, 1)


def _start_timestep(pipe, config: InpaintConfig) -> torch.Tensor:
    pipe.scheduler.set_timesteps(config.num_inference_steps)
    init = min(int(config.num_inference_steps * config.strength), config.num_inference_steps)
    t_start = max(config.num_inference_steps - init, 0)
    return pipe.scheduler.timesteps[t_start * pipe.scheduler.order], init


def _normalised(grad: torch.Tensor, guidance: GuidanceConfig) -> torch.Tensor:
    if guidance.normalize == "unit":
        rms = grad.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-12)
        return grad / rms.view(-1, 1, 1, 1)
    if guidance.normalize == "clip":
        return grad.clamp(-guidance.clip_value, guidance.clip_value)
    return grad


def _denoise(
    pipe,
    start: torch.Tensor,
    images: torch.Tensor,
    masks: torch.Tensor,
    prompts: list[str],
    config: InpaintConfig,
    strength: float,
    seed: int,
    callback: Callable | None = None,
) -> torch.Tensor:
    """Return the stock pipeline's last latent ``(B, C, h, w)`` from ``start`` (no gradient); ``strength`` picks how
    many of the schedule's last steps are run, ``callback`` is the pipeline's ``callback_on_step_end``."""
    with torch.no_grad():
        out = pipe(
            prompt=list(prompts),
            negative_prompt=[config.negative_prompt] * len(prompts) if config.guidance_scale > 1.0 else None,
            image=images,
            mask_image=masks.to(pipe.device, torch.float32),
            height=images.shape[-2],
            width=images.shape[-1],
            strength=strength,
            num_inference_steps=config.num_inference_steps,
            guidance_scale=config.guidance_scale,
            latents=start / pipe.scheduler.init_noise_sigma,
            generator=torch.Generator(pipe.device).manual_seed(seed),
            output_type="latent",
            callback_on_step_end=callback,
        )
    return out.images.detach().float()


def _check_scheduler(scheduler, recipe: str) -> None:
    """Refuse a scheduler whose latents are not ``sqrt(a_t) x + sqrt(1 - a_t) eps`` (the cheaper recipes need it)."""
    kind = getattr(scheduler.config, "prediction_type", None)
    if not hasattr(scheduler, "alphas_cumprod") or float(scheduler.init_noise_sigma) != 1.0:
        raise ValueError(
            f"recipe {recipe!r} needs a DDPM-type scheduler (DDIM, PNDM, DDPM: alphas_cumprod, init_noise_sigma 1), "
            f"got {type(scheduler).__name__}"
        )
    if kind not in ("epsilon", "v_prediction", "sample"):
        raise ValueError(f"recipe {recipe!r} needs prediction_type epsilon, v_prediction or sample, got {kind!r}")


def _clean_latent(scheduler, z_t: torch.Tensor, prediction: torch.Tensor, t) -> torch.Tensor:
    """Return the one-step (Tweedie) estimate ``z0_hat`` from the latent ``z_t`` at timestep ``t`` and the model's
    prediction: ``(z_t - sqrt(1 - a_t) eps) / sqrt(a_t)`` for an epsilon model, ``sqrt(a_t) z_t - sqrt(1 - a_t) v``
    for a v-prediction model (the same estimate, since ``eps = sqrt(a_t) v + sqrt(1 - a_t) z_t``)."""
    a = scheduler.alphas_cumprod[int(t)].to(z_t.device, torch.float32)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return (z_t - (1 - a).sqrt() * prediction) / a.sqrt()
    if kind == "v_prediction":
        return a.sqrt() * z_t - (1 - a).sqrt() * prediction
    return prediction


def _one_step_estimate(pipe, z_t: torch.Tensor, t, images, masks, prompts, config: InpaintConfig, seed: int):
    """Return the clean-latent estimate at the first denoising step: the pipeline runs that one step (its prompt
    encoding, mask latents and CFG exactly as in a full generation) and is stopped there."""
    seen = {}

    def keep(module, args, kwargs, output):
        seen["t"], seen["prediction"] = args[1] if len(args) > 1 else kwargs["timestep"], output[0].detach()

    def stop(pipeline, i, step_t, tensors):
        pipeline._interrupt = True  # diffusers' way to end its loop early (its docs, "Interrupt the diffusion process")
        return tensors

    hook = pipe.unet.register_forward_hook(keep, with_kwargs=True)
    try:
        _denoise(pipe, z_t, images, masks, prompts, config, config.strength, seed, callback=stop)
    finally:
        hook.remove()
    assert int(seen["t"]) == int(t), (seen["t"], t)
    prediction = seen["prediction"].float()
    if len(prediction) == 2 * len(z_t):  # classifier-free guidance, combined as the pipeline combines it
        uncond, text = prediction.chunk(2)
        prediction = uncond + config.guidance_scale * (text - uncond)
    return _clean_latent(pipe.scheduler, z_t, prediction, t)


def _score_and_gradient(pipe, latent: torch.Tensor, scorer, guidance: GuidanceConfig, wants_grad: bool):
    """Decode ``latent`` (with gradient), score it and return ``(image, score, loss, grad or None)``; the gradient is
    taken in ``guidance.step_unit`` (see :class:`GuidanceConfig`)."""
    target = guidance.target if guidance.target is not None else 0.0
    with torch.enable_grad():
        if guidance.step_unit == "official":  # d mean_i L_i / d(z / sf), as the official code takes it
            u = (latent / pipe.vae.config.scaling_factor).clone().requires_grad_(wants_grad)
            image = ((pipe.vae.decode(u).sample + 1) / 2).clamp(0, 1)
        else:  # d L_i / d z per image: a step that does not depend on the batch or the VAE's scale
            u = latent.clone().requires_grad_(wants_grad)
            image = _decode(pipe, u)
        score = scorer(image).float()
        loss = (target - score) ** 2
        reduced = loss.mean() if guidance.step_unit == "official" else loss.sum()
        grad = torch.autograd.grad(reduced, u)[0] if wants_grad else None
    return image, score, loss, grad


def refine_steps(
    pipe,
    images: torch.Tensor,
    prompts: list[str],
    scorer: Callable[[torch.Tensor], torch.Tensor],
    guidance: GuidanceConfig,
    config: InpaintConfig | None = None,
    masks: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    source_noise: torch.Tensor | None = None,
) -> Iterator[RefineStep]:
    """Yield one :class:`RefineStep` per generation of energy-gradient noise refinement.

    Each update round estimates the clean latent by ``guidance.recipe`` (module docstring): a full regeneration
    (``"full"``, official), the one-step estimate at the first denoising step (``"one_step"``), or a re-run of the
    last ``guidance.rerun_steps`` steps (``"last_steps"``); the last generation is always a full one. Per image a
    round costs ``n`` (full), 1 (one-step) or ``k`` (last steps) UNet calls, x2 under classifier-free guidance,
    plus one VAE decode and, when it computes a gradient, one backward pass; each step records its counts.

    Args:
        pipe: a diffusers ``StableDiffusionInpaintPipeline`` (any SD-inpainting checkpoint).
        images: ``(B, 3, H, W)`` source images in ``[0, 1]``.
        prompts: one prompt per image (see :func:`context_prompt`).
        scorer: differentiable ``(B, 3, H, W) [0, 1] -> (B,)`` score, higher = more in-distribution
            (:mod:`synood_kit.guidance`).
        guidance: rounds, step size, target, normalisation, recipe.
        config: the in-painting call.
        masks: ``(B, 1, H, W)`` in ``[0, 1]`` (1 = repaint); default the official full-image mask.
        generator: seeds the initial noise (a CPU generator, so results match across devices).
        noise: an explicit initial noise ``(B, C, h, w)`` instead of drawing one.
        source_noise: ``(B, C, h, w)`` standard normal noise that samples the sources' VAE latents
            (``config.source_latent="sample"``); default drawn from ``generator`` after everything else.

    Yields:
        ``guidance.rounds + 1`` steps (``guidance.rounds`` with ``official_rounds``); the last one's image is
        the synthetic sample. With ``recipe="one_step"`` the steps before the last hold one-step estimates.

    Raises:
        ValueError: on mismatched shapes, a missing target, prompts of the wrong length, ``rerun_steps`` above the
            denoising steps of a generation, or a cheaper recipe with a scheduler it cannot invert.
    """
    config = config or InpaintConfig()
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W) in [0, 1], got {tuple(images.shape)}")
    if len(prompts) != len(images):
        raise ValueError(f"need one prompt per image, got {len(prompts)} prompts for {len(images)} images")
    if guidance.target is None and guidance.rounds > 0:
        raise ValueError("GuidanceConfig.target is None: pass a target (boundary_target(...) or the official -5.0)")
    masks = full_masks(images) if masks is None else masks
    if masks.shape[0] != images.shape[0] or masks.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"masks {tuple(masks.shape)} do not match images {tuple(images.shape)}")
    if guidance.recipe != "full":
        _check_scheduler(pipe.scheduler, guidance.recipe)
    device = pipe.device
    images = images.to(device, torch.float32)
    with torch.no_grad():
        latent_shape = pipe.vae.encode(images[:1] * 2 - 1).latent_dist.mean.shape[1:]
    shape = (len(images), *latent_shape)
    if noise is None:
        noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(device)
    elif tuple(noise.shape) != shape:
        raise ValueError(f"noise must have the latent shape {shape}, got {tuple(noise.shape)}")
    eps = noise.to(device, torch.float32)
    # the pipeline samples the masked image's latent; seed it too, the same in every round
    pipe_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    if config.source_latent == "sample" and source_noise is None:
        source_noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    z0 = _encode(pipe, images, config.source_latent, source_noise)
    generations = guidance.rounds if guidance.official_rounds else guidance.rounds + 1
    t0, n_denoise = _start_timestep(pipe, config)
    if guidance.recipe == "last_steps":
        k = guidance.rerun_steps
        if k > n_denoise:
            raise ValueError(
                f"rerun_steps={k} exceeds the {n_denoise} denoising steps of a generation "
                f"(num_inference_steps {config.num_inference_steps} x strength {config.strength})"
            )
        order = pipe.scheduler.order
        t_m = pipe.scheduler.timesteps[(config.num_inference_steps - k) * order]  # first timestep of the re-run
        sigma_m = (1 - pipe.scheduler.alphas_cumprod[int(t_m)]).sqrt().to(device, torch.float32)
        capture_at = (n_denoise - k) * order - 1  # loop index after which the latent enters the last k steps
        # the pipeline runs int(n * strength) last steps; k + 1/2 keeps int() off a rounding edge
        rerun_strength = config.strength if k == n_denoise else (k + 0.5) / config.num_inference_steps
    z_m = None  # recipe "last_steps": the latent entering the last k steps, moved by every update
    cfg_factor = 2 if config.guidance_scale > 1.0 else 1
    calls = [0]
    hook = pipe.unet.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        for r in range(generations):
            start, calls[0] = time.perf_counter(), 0
            eps_start = eps.detach().cpu()
            wants_grad = r < guidance.rounds  # the kit's last generation (or the official last gradient) ...
            keeps_update = r < generations - 1  # ... only an update that reaches a later generation is applied
            estimate = "one_step" if guidance.recipe == "one_step" and keeps_update else "final"
            args = (images, masks, prompts, config)
            if guidance.recipe == "last_steps" and r > 0:
                z_start = z_m
                z_hat = _denoise(pipe, z_m, *args, rerun_strength, pipe_seed)
            else:
                z_start = pipe.scheduler.add_noise(z0, eps, t0.reshape(1).repeat(len(z0)))
                if estimate == "one_step":
                    z_hat = _one_step_estimate(pipe, z_start, t0, *args, pipe_seed)
                elif guidance.recipe == "last_steps":
                    kept = {}

                    def keep(pipeline, i, t, tensors, kept=kept):
                        if i == capture_at:
                            kept["z"] = tensors["latents"].detach().clone()
                        return tensors

                    z_hat = _denoise(pipe, z_start, *args, config.strength, pipe_seed, callback=keep)
                    z_m = kept.get("z", z_start)
                else:
                    z_hat = _denoise(pipe, z_start, *args, config.strength, pipe_seed)
            unet_evals = calls[0] * cfg_factor  # per image: one batched call covers both halves of CFG
            image, score, loss, grad = _score_and_gradient(pipe, z_hat, scorer, guidance, wants_grad)
            rejected = ()
            if grad is not None and keeps_update:
                bad = ~torch.isfinite(grad).flatten(1).all(1)
                step = _normalised(torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0), guidance)
                step[bad] = 0.0  # a non-finite gradient is rejected for that sample and recorded
                if guidance.recipe == "last_steps":  # the noise of z_m moves as eps does in a full round
                    z_m = z_m - guidance.step_size * sigma_m * step
                else:
                    eps = eps - guidance.step_size * step
                rejected = tuple(bool(b) for b in bad.cpu())
            yield RefineStep(
                round=r,
                noise=eps_start,
                latent=z_hat.cpu(),
                image=image.detach().cpu(),
                score=score.detach().cpu(),
                loss=loss.detach().cpu(),
                grad=None if grad is None else grad.detach().cpu(),
                grad_magnitude=None if grad is None else grad.detach().norm(dim=1).cpu(),
                seconds=time.perf_counter() - start,
                unet_evals=unet_evals,
                vae_decodes=1,
                rejected=rejected,
                backward_passes=int(grad is not None),
                estimate=estimate,
                start_latent=z_start.detach().cpu(),
            )
    finally:
        hook.remove()


def refine(*args, **kwargs) -> RefineStep:
    """Run :func:`refine_steps` to its end and return the last step (the synthetic sample)."""
    last = None
    for step in refine_steps(*args, **kwargs):
        last = step
    if last is None:
        raise ValueError("refinement produced no generation")
    return last


def load_inpaint_pipeline(
    source: str = "miniworld", device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
):
    """Load a ``StableDiffusionInpaintPipeline``: ``"miniworld"``, a local folder, or a hub id
    (``"stabilityai/stable-diffusion-2-inpainting"``, the paper's; taken from the local Hugging Face cache when
    ``HF_HUB_OFFLINE=1``).

    Raises:
        WeightsNotFoundError: when the folder or the cached hub snapshot is missing, naming what was looked for.
        ValueError: when its weights are pickle files (``.bin``, ``.pt``, ...), which can run code when loaded.
    """
    from pathlib import Path

    from diffusers import StableDiffusionInpaintPipeline

    from .config import assets_dir
    from .models import WeightsNotFoundError, refuse_pickled_weights

    folder = assets_dir() / "miniworld" / "inpaint" if source == "miniworld" else Path(source)
    local = source == "miniworld" or folder.is_dir() or source.startswith((".", "/"))
    if local and not (folder / "model_index.json").is_file():
        raise WeightsNotFoundError(
            f"no model_index.json in {folder} (looked for a diffusers in-painting folder). Train the mini-world model "
            "with `python -m synood_kit.miniworld.train_inpaint`, or pass a hub id such as "
            "stabilityai/stable-diffusion-2-inpainting."
        )
    refuse_pickled_weights(folder if local else source, "in-painting pipeline")  # safetensors only, never pickle
    try:
        pipe = StableDiffusionInpaintPipeline.from_pretrained(
            str(folder) if local else source, dtype=dtype, safety_checker=None, requires_safety_checker=False
        )
    except OSError as e:
        raise WeightsNotFoundError(
            f"in-painting weights {source!r} are not available offline ({e}). Download them on a machine with network "
            "(`huggingface-cli download` or `from_pretrained` once), then run with HF_HUB_OFFLINE=1."
        ) from e
    return pipe.to(device)


def summarize_refinement(steps: list[RefineStep], target: float, id_scores, ood_scores) -> dict:
    """Return what a refinement achieved: the share of samples whose score moved toward the target, and the
    share whose final score lies between the OOD and ID medians (near the boundary).

    Args:
        steps: one refinement's steps (first = unguided generation, last = refined sample; with
            ``recipe="one_step"`` the first is the unguided one-step estimate, so the "unguided" values describe it).
        target: the guidance target.
        id_scores, ood_scores: the scorer on real ID and OOD images.
    """
    import numpy as np

    first, last = steps[0].score.numpy(), steps[-1].score.numpy()
    id_med, ood_med = float(np.median(id_scores)), float(np.median(ood_scores))
    lo, hi = min(id_med, ood_med), max(id_med, ood_med)
    return {
        "n": int(len(last)),
        "target": float(target),
        "id_median": id_med,
        "ood_median": ood_med,
        "moved_toward_target": float(np.mean(np.abs(last - target) < np.abs(first - target))),
        "between_medians": float(np.mean((last >= lo) & (last <= hi))),
        "unguided_between_medians": float(np.mean((first >= lo) & (first <= hi))),
        "mean_abs_gap_unguided": float(np.mean(np.abs(first - target))),
        "mean_abs_gap_refined": float(np.mean(np.abs(last - target))),
        "seconds": float(sum(st.seconds for st in steps)),
        "unet_evals_per_image": int(sum(st.unet_evals for st in steps)),
        "vae_decodes_per_image": int(sum(st.vae_decodes for st in steps)),
        "backward_passes_per_image": int(sum(st.backward_passes for st in steps)),
    }


def compare_recipes(
    pipe,
    images: torch.Tensor,
    prompts: list[str],
    scorer,
    guidance: GuidanceConfig,
    recipes: Mapping[str, Mapping[str, object]],
    config: InpaintConfig | None = None,
    seed: int = 0,
):
    """Refine the same images, prompts and seed by several recipes and return a table of cost and placement.

    The reference is ``guidance`` with ``recipe="full"``: its first generation is the unguided image of the same
    noise (the cost unit and the "before" of every recipe), its last the full recipe's sample.

    Args:
        pipe, images, prompts, scorer, config: as :func:`refine_steps`.
        guidance: the run's guidance (with its target); each recipe changes some of its fields.
        recipes: name -> fields of :class:`GuidanceConfig` to change, e.g.
            ``{"one_step": {"recipe": "one_step"}, "last 2 steps": {"recipe": "last_steps", "rerun_steps": 2}}``.
        seed: the generator seed of every run (the same noise for all).

    Returns:
        ``(table, final_scores)``: a DataFrame with one row per recipe (``unguided`` and ``full`` first) and the
        columns ``unet_evals``, ``vae_decodes``, ``backward_passes`` (per image), ``unet_vs_unguided``,
        ``seconds``, ``median_gap`` (median |final score - target|), ``moved_toward_target`` (share of samples
        nearer the target than their unguided image); and ``{recipe: final scores}``.
    """
    import dataclasses

    import numpy as np
    import pandas as pd

    if guidance.target is None:
        raise ValueError("compare_recipes needs guidance.target: pass the run's guidance (guidance_config)")

    def run(g: GuidanceConfig) -> list[RefineStep]:
        generator = torch.Generator().manual_seed(seed)
        return list(refine_steps(pipe, images, prompts, scorer, g, config, generator=generator))

    full = run(dataclasses.replace(guidance, recipe="full"))
    before = full[0]
    runs = {"unguided": [before], "full": full}
    for name, changes in recipes.items():
        if name in runs:
            raise ValueError(f"recipe name {name!r} is taken: unguided and full are always compared")
        runs[name] = run(dataclasses.replace(guidance, **dict(changes)))
    unit = before.unet_evals
    first = before.score.numpy()
    rows, finals = [], {}
    for name, steps in runs.items():
        last = steps[-1].score.numpy()
        finals[name] = last
        unet = sum(st.unet_evals for st in steps)
        rows.append(
            {
                "recipe": name,
                "unet_evals": unet,
                "vae_decodes": sum(st.vae_decodes for st in steps),
                "backward_passes": sum(st.backward_passes for st in steps),
                "unet_vs_unguided": unet / unit,
                "seconds": sum(st.seconds for st in steps),
                "median_gap": float(np.median(np.abs(last - guidance.target))),
                "moved_toward_target": float(np.mean(np.abs(last - guidance.target) < np.abs(first - guidance.target))),
            }
        )
    return pd.DataFrame(rows), finals
