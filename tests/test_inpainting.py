"""Energy-gradient noise refinement on a tiny stock diffusers in-painting pipeline built locally."""

from __future__ import annotations

import math

import pytest
import torch

from synood_kit.classifier import build_classifier, load_classifier, save_classifier_folder
from synood_kit.guidance import OFFICIAL_MARGIN, boundary_target, classifier_scorer
from synood_kit.inpainting import GuidanceConfig, InpaintConfig, context_prompt, refine, refine_steps

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
