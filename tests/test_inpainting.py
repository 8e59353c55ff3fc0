"""Energy-gradient noise refinement on a tiny stock diffusers in-painting pipeline built locally."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from synood_kit.classifier import build_classifier, load_classifier, save_classifier_folder
from synood_kit.guidance import OFFICIAL_MARGIN, boundary_target, classifier_scorer
from synood_kit.inpainting import (
    GuidanceConfig,
    InpaintConfig,
    context_prompt,
    refine,
    refine_steps,
    summarize_refinement,
)

FAST = InpaintConfig(num_inference_steps=4, guidance_scale=2.0)


@pytest.fixture(scope="module")
def pipe(tiny_inpaint_dir):
    from diffusers import StableDiffusionInpaintPipeline

    p = StableDiffusionInpaintPipeline.from_pretrained(
        tiny_inpaint_dir, safety_checker=None, requires_safety_checker=False
    )
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def clf(tmp_path_factory):
    torch.manual_seed(0)
    kw = {"block": "basic", "layers": [1, 1, 1, 1], "num_classes": 5}
    folder = tmp_path_factory.mktemp("clf")
    save_classifier_folder(
        build_classifier("resnet", kw),
        "resnet",
        kw,
        list("abcde"),
        folder,
        {"size": 32, "mean": [0.5] * 3, "std": [0.25] * 3},
    )
    return load_classifier(str(folder))


@pytest.fixture
def images():
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


PROMPTS = [context_prompt("teal background, stripes"), context_prompt("red background")]


def test_prompt_uses_the_official_template_and_truncation():
    assert context_prompt("bamboo, tourists") == "A photo only remain bamboo, tourists."
    assert context_prompt("x" * 200) == "A photo only remain " + "x" * 73 + "."


def test_steps_have_the_documented_count_shapes_and_cost(pipe, clf, images):
    scorer = classifier_scorer(clf)
    steps = list(
        refine_steps(
            pipe,
            images,
            PROMPTS,
            scorer,
            GuidanceConfig(rounds=2, target=0.0, step_size=0.1),
            FAST,
            generator=torch.Generator().manual_seed(0),
        )
    )
    assert [s.round for s in steps] == [0, 1, 2]  # 2 updates, then the generation they shape
    for s in steps:
        assert s.image.shape == images.shape and s.image.min() >= 0.0 and s.image.max() <= 1.0
        assert s.score.shape == (2,) and torch.isfinite(s.loss).all()
        assert s.unet_evals == int(FAST.num_inference_steps * FAST.strength) * 2 and s.vae_decodes == 1
    assert steps[0].grad is not None and steps[0].grad_magnitude.shape == (2, 32, 32)
    assert steps[-1].grad is None  # no gradient is computed that nothing would use
    assert not torch.equal(steps[0].noise, steps[1].noise)
    official = list(
        refine_steps(
            pipe,
            images,
            PROMPTS,
            scorer,
            GuidanceConfig(rounds=2, target=0.0, official_rounds=True),
            FAST,
            generator=torch.Generator().manual_seed(0),
        )
    )
    assert len(official) == 2 and official[-1].grad is not None  # the official last gradient is thrown away


def test_refine_equals_the_last_step_and_is_seeded(pipe, clf, images):
    scorer = classifier_scorer(clf)
    g = GuidanceConfig(rounds=1, target=0.0, step_size=0.1)
    last = list(refine_steps(pipe, images, PROMPTS, scorer, g, FAST, generator=torch.Generator().manual_seed(3)))[-1]
    again = refine(pipe, images, PROMPTS, scorer, g, FAST, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(again.image, last.image)
    other = refine(pipe, images, PROMPTS, scorer, g, FAST, generator=torch.Generator().manual_seed(4))
    assert not torch.allclose(other.image, last.image)


def test_a_step_along_the_gradient_lowers_the_loss(pipe, clf, images):
    from synood_kit.inpainting import _decode

    scorer = classifier_scorer(clf)
    step = next(
        refine_steps(
            pipe,
            images,
            PROMPTS,
            scorer,
            GuidanceConfig(rounds=1, target=-10.0),
            FAST,
            generator=torch.Generator().manual_seed(0),
        )
    )

    def loss(z):
        with torch.no_grad():
            return ((-10.0 - scorer(_decode(pipe, z))) ** 2).sum()

    moved = step.latent - 1e-3 * step.grad / step.grad.norm()
    assert loss(moved) < loss(step.latent)


def test_non_finite_gradients_are_rejected_and_recorded(pipe, images):
    def nan_scorer(x):
        return x.mean(dim=(1, 2, 3)) * float("nan")

    steps = list(
        refine_steps(
            pipe,
            images,
            PROMPTS,
            nan_scorer,
            GuidanceConfig(rounds=1, target=0.0),
            FAST,
            generator=torch.Generator().manual_seed(0),
        )
    )
    assert steps[0].rejected == (True, True)
    torch.testing.assert_close(steps[1].noise, steps[0].noise)  # the noise was kept


def test_bad_inputs_name_the_problem(pipe, clf, images):
    scorer = classifier_scorer(clf)
    with pytest.raises(ValueError, match="target"):
        next(refine_steps(pipe, images, PROMPTS, scorer, GuidanceConfig(rounds=1), FAST))
    with pytest.raises(ValueError, match="one prompt per image"):
        next(refine_steps(pipe, images, PROMPTS[:1], scorer, GuidanceConfig(rounds=0), FAST))
    with pytest.raises(ValueError, match="masks"):
        next(
            refine_steps(pipe, images, PROMPTS, scorer, GuidanceConfig(rounds=0), FAST, masks=torch.ones(2, 1, 16, 16))
        )
    with pytest.raises(ValueError, match="strength"):
        InpaintConfig(strength=1.5)
    with pytest.raises(ValueError, match="rounds"):
        GuidanceConfig(rounds=-1)


def test_official_target_is_unreachable_and_the_boundary_target_is_a_quantile(clf, images):
    official = classifier_scorer(clf, form="official")
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    assert (official(x) <= -math.log(5) + 1e-5).all()  # mean(g) - logsumexp(g) <= -log C
    assert -math.log(1000) < OFFICIAL_MARGIN  # with ImageNet's 1000 classes the margin -5 is never reached
    energy = classifier_scorer(clf)
    with torch.no_grad():
        expected = torch.quantile(energy(x), 0.05).item()
    assert boundary_target(energy, x, batch_size=5) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("sf", [1.0, 0.18215])
@pytest.mark.parametrize("batch", [1, 2, 5])
def test_the_official_step_reproduces_the_official_update_for_any_batch_and_scale(pipe, clf, sf, batch):
    """`step_unit="official"` takes the gradient of the batch-mean loss with respect to the unscaled latent
    ``z / sf``, as the official code does (docs/method.md, stage 4); a per-image step of ``lr * sf / B`` is the same
    update, computed without the batch or the scale."""
    before = pipe.vae.config.scaling_factor
    pipe.vae.register_to_config(scaling_factor=sf)
    try:
        images = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
        prompts = [PROMPTS[i % 2] for i in range(batch)]
        scorer = classifier_scorer(clf)

        def run(step_size, unit):
            guidance = GuidanceConfig(rounds=1, step_size=step_size, target=1.0, step_unit=unit)
            generator = torch.Generator().manual_seed(0)
            return list(refine_steps(pipe, images, prompts, scorer, guidance, FAST, generator=generator))

        official = run(7.0, "official")
        # the official update, computed independently from the first generation's final latent
        u = (official[0].latent / sf).clone().requires_grad_(True)
        decoded = ((pipe.vae.decode(u).sample + 1) / 2).clamp(0, 1)
        loss = ((1.0 - scorer(decoded).float()) ** 2).mean()
        (grad,) = torch.autograd.grad(loss, u)
        torch.testing.assert_close(official[1].noise, official[0].noise - 7.0 * grad, rtol=1e-4, atol=1e-6)
        per_image = run(7.0 * sf / batch, "per_image")
        torch.testing.assert_close(per_image[1].noise, official[1].noise, rtol=1e-4, atol=1e-6)
    finally:
        pipe.vae.register_to_config(scaling_factor=before)


def test_the_source_latent_is_sampled_reproducibly_or_its_mode(pipe, clf, images):
    scorer = classifier_scorer(clf)
    guidance = GuidanceConfig(rounds=0)

    def first(how, seed):
        config = InpaintConfig(num_inference_steps=4, guidance_scale=2.0, source_latent=how)
        return next(
            refine_steps(pipe, images, PROMPTS, scorer, guidance, config, generator=torch.Generator().manual_seed(seed))
        )

    torch.testing.assert_close(first("sample", 0).latent, first("sample", 0).latent)
    assert not torch.equal(first("sample", 0).latent, first("mode", 0).latent)
    # the mode does not depend on anything drawn after the initial noise; a sample does
    source = torch.zeros(2, *first("mode", 0).latent.shape[1:])
    steps = refine_steps(
        pipe,
        images,
        PROMPTS,
        scorer,
        guidance,
        InpaintConfig(num_inference_steps=4, guidance_scale=2.0),
        generator=torch.Generator().manual_seed(0),
        source_noise=source,
    )
    torch.testing.assert_close(next(steps).latent, first("mode", 0).latent)  # zero noise samples the mean = mode


# ---------------------------------------------------------------- cheaper recipes (issue 17)

LONGER = InpaintConfig(num_inference_steps=10, guidance_scale=2.0)  # 6 denoising steps, CFG: 12 UNet evals / image


def _steps(pipe, images, scorer, guidance, config=LONGER, seed=0):
    return list(
        refine_steps(pipe, images, PROMPTS, scorer, guidance, config, generator=torch.Generator().manual_seed(seed))
    )


@pytest.mark.parametrize(
    ("recipe", "extra", "unet", "backward", "estimates"),
    [
        ("full", {}, [12, 12, 12], [1, 1, 0], ["final"] * 3),
        ("one_step", {}, [2, 2, 12], [1, 1, 0], ["one_step", "one_step", "final"]),
        ("last_steps", {"rerun_steps": 2}, [12, 4, 4], [1, 1, 0], ["final"] * 3),
        ("one_step", {"official_rounds": True}, [2, 12], [1, 1], ["one_step", "final"]),
        ("last_steps", {"rerun_steps": 6}, [12, 12, 12], [1, 1, 0], ["final"] * 3),
    ],
)
def test_each_recipe_counts_its_cost_per_image_exactly(pipe, clf, images, recipe, extra, unet, backward, estimates):
    guidance = GuidanceConfig(rounds=2, target=0.0, step_size=0.1, recipe=recipe, **extra)
    steps = _steps(pipe, images, classifier_scorer(clf), guidance)
    assert [s.unet_evals for s in steps] == unet  # UNet calls x 2 (CFG), per image
    assert [s.vae_decodes for s in steps] == [1] * len(steps)
    assert [s.backward_passes for s in steps] == backward
    assert [s.estimate for s in steps] == estimates
    assert [s.grad is not None for s in steps] == [b == 1 for b in backward]
    for s in steps:
        assert (
            s.image.shape == images.shape and torch.isfinite(s.score).all() and s.start_latent.shape == s.latent.shape
        )
    summary = summarize_refinement(steps, 0.0, [1.0, 2.0], [0.0])
    assert summary["unet_evals_per_image"] == sum(unet) and summary["backward_passes_per_image"] == sum(backward)


@pytest.mark.parametrize("recipe", ["full", "one_step", "last_steps"])
def test_every_recipe_is_seeded_and_refine_is_its_last_step(pipe, clf, images, recipe):
    scorer = classifier_scorer(clf)
    guidance = GuidanceConfig(rounds=2, target=0.0, step_size=0.5, recipe=recipe, rerun_steps=2)
    a, b = _steps(pipe, images, scorer, guidance), _steps(pipe, images, scorer, guidance)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.latent, y.latent) and torch.equal(x.image, y.image) and torch.equal(x.score, y.score)
    last = refine(pipe, images, PROMPTS, scorer, guidance, LONGER, generator=torch.Generator().manual_seed(0))
    assert torch.equal(last.image, a[-1].image)
    assert not torch.equal(_steps(pipe, images, scorer, guidance, seed=1)[-1].image, a[-1].image)
    assert not torch.equal(a[-1].image, a[0].image)  # the updates reached the image


def _literal_full_recipe(pipe, images, prompts, scorer, guidance, config, seed):
    """The full (official-unit) recipe written out from docs/method.md, stage 4, with the kit's rounds + 1
    generations: draws in the order noise, pipeline seed, source noise; z_t0 = add_noise(z0, eps, t0); the stock
    pipeline denoises; decode z_hat / sf with gradient; eps <- eps - lr * d mean_i (m - s_i)^2 / d(z_hat / sf)."""
    g = torch.Generator().manual_seed(seed)
    sf = pipe.vae.config.scaling_factor
    with torch.no_grad():
        dist = pipe.vae.encode(images * 2 - 1).latent_dist
    eps = torch.randn(dist.mean.shape, generator=g)
    pipe_seed = int(torch.randint(0, 2**62, (1,), generator=g))
    z0 = (dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g)) * sf
    pipe.scheduler.set_timesteps(config.num_inference_steps)
    n = int(config.num_inference_steps * config.strength)
    t0 = pipe.scheduler.timesteps[config.num_inference_steps - n]
    out = []
    for r in range(guidance.rounds + 1):
        z_t0 = pipe.scheduler.add_noise(z0, eps, t0.reshape(1).repeat(len(z0)))
        with torch.no_grad():
            z_hat = pipe(
                prompt=list(prompts),
                negative_prompt=[""] * len(prompts),
                image=images,
                mask_image=torch.ones(len(images), 1, *images.shape[-2:]),
                height=images.shape[-2],
                width=images.shape[-1],
                strength=config.strength,
                num_inference_steps=config.num_inference_steps,
                guidance_scale=config.guidance_scale,
                latents=z_t0 / pipe.scheduler.init_noise_sigma,
                generator=torch.Generator("cpu").manual_seed(pipe_seed),
                output_type="latent",
            ).images.float()
        u = (z_hat / sf).clone().requires_grad_(r < guidance.rounds)
        with torch.enable_grad():
            image = ((pipe.vae.decode(u).sample + 1) / 2).clamp(0, 1)
            score = scorer(image).float()
            loss = (guidance.target - score) ** 2
            grad = torch.autograd.grad(loss.mean(), u)[0] if r < guidance.rounds else None
        out.append((eps.clone(), z_hat, image.detach(), score.detach(), loss.detach(), grad))
        if grad is not None:
            eps = eps - guidance.step_size * grad
    return out


def test_the_default_recipe_is_the_full_one_unchanged_byte_for_byte(pipe, clf, images):
    scorer = classifier_scorer(clf)
    guidance = GuidanceConfig(rounds=2, target=0.0, step_size=3.0, step_unit="official")
    assert GuidanceConfig().recipe == "full"
    steps = _steps(pipe, images, scorer, guidance, config=FAST, seed=5)
    literal = _literal_full_recipe(pipe, images, PROMPTS, scorer, guidance, FAST, seed=5)
    for step, (noise, latent, image, score, loss, grad) in zip(steps, literal, strict=True):
        assert torch.equal(step.noise, noise) and torch.equal(step.latent, latent) and torch.equal(step.image, image)
        assert torch.equal(step.score, score) and torch.equal(step.loss, loss)
        assert (step.grad is None and grad is None) or torch.equal(step.grad, grad)


@pytest.fixture
def scheduler_kind(pipe, request):
    """The pipeline with its DDIM scheduler set to ``request.param``'s prediction type (restored afterwards)."""
    from diffusers import DDIMScheduler, PNDMScheduler

    before = pipe.scheduler
    kind = request.param
    if kind == "pndm":  # the official SD-2 in-painting scheduler
        pipe.scheduler = PNDMScheduler.from_config(before.config, prediction_type="epsilon", skip_prk_steps=True)
    else:
        pipe.scheduler = DDIMScheduler.from_config(before.config, prediction_type=kind)
    yield kind
    pipe.scheduler = before


@pytest.mark.parametrize("scheduler_kind", ["v_prediction", "epsilon", "pndm"], indirect=True)
def test_the_one_step_estimate_is_tweedies_formula_on_the_schedulers_alphas(pipe, clf, images, scheduler_kind):
    seen = []
    hook = pipe.unet.register_forward_hook(lambda m, args, out: seen.append((args[0], args[1], out[0])))
    try:
        guidance = GuidanceConfig(rounds=1, target=0.0, step_size=2.0, step_unit="per_image", recipe="one_step")
        steps = _steps(pipe, images, classifier_scorer(clf), guidance)
    finally:
        hook.remove()
    model_input, t, output = seen[0]  # the first UNet call: the one-step estimate's
    assert steps[0].unet_evals == 2 and len(seen) == 1 + steps[1].unet_evals // 2
    z_t = model_input[: len(images), :4]  # the conditional half; channels 4: are the mask and masked-image latents
    torch.testing.assert_close(z_t, steps[0].start_latent, rtol=0, atol=0)
    uncond, text = output.chunk(2)
    prediction = uncond + LONGER.guidance_scale * (text - uncond)
    a = float(pipe.scheduler.alphas_cumprod[int(t)])
    v_model = scheduler_kind == "v_prediction"  # then eps = sqrt(a) v + sqrt(1 - a) z_t
    noise_hat = math.sqrt(a) * prediction + math.sqrt(1 - a) * z_t if v_model else prediction
    expected = (z_t - math.sqrt(1 - a) * noise_hat) / math.sqrt(a)
    torch.testing.assert_close(steps[0].latent, expected, rtol=1e-5, atol=1e-5)
    assert steps[0].estimate == "one_step" and steps[1].estimate == "final"
    # the update is the full recipe's: eps <- eps - lr * dL/dz0_hat, here per image on z0_hat
    torch.testing.assert_close(steps[1].noise, steps[0].noise - 2.0 * steps[0].grad, rtol=1e-6, atol=1e-6)


def test_the_one_step_update_lowers_the_loss_of_the_estimate(pipe, clf, images):
    from synood_kit.inpainting import _decode

    scorer = classifier_scorer(clf)
    step = _steps(
        pipe, images, scorer, GuidanceConfig(rounds=1, target=-10.0, recipe="one_step", step_unit="per_image")
    )[0]

    def loss(z):
        with torch.no_grad():
            return ((-10.0 - scorer(_decode(pipe, z))) ** 2).sum()

    assert loss(step.latent - 1e-3 * step.grad / step.grad.norm()) < loss(step.latent)


def test_last_steps_moves_the_noise_of_the_latent_it_restarts_from(pipe, clf, images):
    scorer = classifier_scorer(clf)
    guidance = GuidanceConfig(
        rounds=2, target=0.0, step_size=2.0, step_unit="per_image", recipe="last_steps", rerun_steps=2
    )
    steps = _steps(pipe, images, scorer, guidance)
    pipe.scheduler.set_timesteps(LONGER.num_inference_steps)
    t_m = pipe.scheduler.timesteps[LONGER.num_inference_steps - 2]
    sigma = (1 - pipe.scheduler.alphas_cumprod[int(t_m)]).sqrt()
    # z_m <- z_m - lr * sqrt(1 - a_m) * dL/dz_hat: the noise of z_m moves as eps does in a full round
    torch.testing.assert_close(steps[2].start_latent, steps[1].start_latent - 2.0 * sigma * steps[1].grad)
    assert torch.equal(steps[0].noise, steps[2].noise)  # the initial noise is not what this recipe moves
    # re-running every step is the full recipe (up to rounding: z_t0 - lr sigma g vs add_noise(z0, eps - lr g))
    every = dataclasses.replace(guidance, rerun_steps=6)
    full = dataclasses.replace(guidance, recipe="full")
    for x, y in zip(_steps(pipe, images, scorer, every), _steps(pipe, images, scorer, full), strict=True):
        torch.testing.assert_close(x.latent, y.latent, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(x.score, y.score, rtol=1e-4, atol=1e-5)


def test_recipe_settings_are_checked(pipe, clf, images):
    from diffusers import EulerDiscreteScheduler

    with pytest.raises(ValueError, match="recipe must be one of"):
        GuidanceConfig(recipe="tweedie")
    with pytest.raises(ValueError, match="rerun_steps"):
        GuidanceConfig(recipe="last_steps", rerun_steps=0)
    scorer = classifier_scorer(clf)
    with pytest.raises(ValueError, match="rerun_steps=7 exceeds the 6 denoising steps"):
        _steps(pipe, images, scorer, GuidanceConfig(rounds=1, target=0.0, recipe="last_steps", rerun_steps=7))
    before = pipe.scheduler
    pipe.scheduler = EulerDiscreteScheduler.from_config(before.config)
    try:
        with pytest.raises(ValueError, match="DDPM-type scheduler"):
            _steps(pipe, images, scorer, GuidanceConfig(rounds=1, target=0.0, recipe="one_step"))
    finally:
        pipe.scheduler = before


def test_synthesis_records_carry_the_recipes_cost(pipe, tmp_path):
    from synood_kit.synthesis import SynthesisConfig, SynthesisSource, read_records, synthesize

    g = torch.Generator().manual_seed(0)
    sources = [SynthesisSource(f"s{i}", torch.rand(3, 32, 32, generator=g), PROMPTS[i]) for i in range(2)]
    config = SynthesisConfig(
        inpaint=LONGER,
        guidance=GuidanceConfig(rounds=3, target=0.5, step_size=0.5, recipe="one_step"),
        batch_size=2,
    )
    list(synthesize(pipe, sources, lambda x: x.mean(dim=(1, 2, 3)), tmp_path, config, progress=False))
    for record in read_records(tmp_path).values():
        cost = record["cost"]
        assert (cost["unet_evals"], cost["vae_decodes"], cost["backward_passes"]) == (3 * 2 + 12, 4, 3)
        assert record["config"]["guidance"]["recipe"] == "one_step" and len(record["scores"]) == 4


def test_compare_recipes_runs_each_recipe_on_the_same_noise_and_counts_its_cost(pipe, clf, images):
    from synood_kit.inpainting import compare_recipes

    scorer = classifier_scorer(clf)
    guidance = GuidanceConfig(rounds=2, target=0.0, step_size=2.0)
    recipes = {"one_step": {"recipe": "one_step"}, "last 2": {"recipe": "last_steps", "rerun_steps": 2}}
    table, finals = compare_recipes(pipe, images, PROMPTS, scorer, guidance, recipes, LONGER, seed=3)
    assert list(table["recipe"]) == ["unguided", "full", "one_step", "last 2"]
    rows = table.set_index("recipe")
    # the reference runs are refine_steps' own: the same seed gives the same final scores
    full = _steps(pipe, images, scorer, guidance, seed=3)
    assert np.array_equal(finals["full"], full[-1].score.numpy())
    assert np.array_equal(finals["unguided"], full[0].score.numpy())
    assert rows.loc["full", "unet_evals"] == sum(st.unet_evals for st in full)
    assert rows.loc["unguided", "unet_vs_unguided"] == 1.0 and rows.loc["unguided", "moved_toward_target"] == 0.0
    assert rows.loc["full", "unet_vs_unguided"] == 3.0  # 2 updates + the final generation
    # 6 denoising steps x 2 per generation: one_step adds 2 per update, last 2 adds 4, full adds 12
    assert 1.0 < rows.loc["one_step", "unet_vs_unguided"] < rows.loc["last 2", "unet_vs_unguided"] < 3.0
    assert (rows.loc[["full", "one_step", "last 2"], "backward_passes"] == 2).all()
    gap = np.median(np.abs(finals["one_step"] - 0.0))
    assert rows.loc["one_step", "median_gap"] == pytest.approx(gap)
    with pytest.raises(ValueError, match="taken"):
        compare_recipes(pipe, images, PROMPTS, scorer, guidance, {"full": {}}, LONGER)
    with pytest.raises(ValueError, match="target"):
        compare_recipes(pipe, images, PROMPTS, scorer, GuidanceConfig(), {}, LONGER)
