"""The kit on a CUDA device: every stage that runs a model gives what it gives on the CPU.

Skipped without a GPU (CI has none). Run with ``pytest -m gpu tests/test_gpu.py``; each test loads the shipped
mini-world models on both devices and compares. TF32 is switched off for the comparisons, so differences are
float32 reordering only; the measured differences are printed (``-s``) so a run records them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(scope="module", autouse=True)
def _exact_float32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module")
def scenes():
    from synood_kit.miniworld.benchmark import BENCHMARK_SPEC
    from synood_kit.miniworld.world import sample_scene

    return [sample_scene(np.random.default_rng([7310, i]), categories=BENCHMARK_SPEC.id_classes) for i in range(16)]


@pytest.fixture(scope="module")
def images(scenes):
    from synood_kit.miniworld.world import render

    return torch.from_numpy(np.stack([render(s) for s in scenes])).permute(0, 3, 1, 2).float() / 255


def test_clip_image_and_text_features_match_the_cpu(images):
    from synood_kit.models import load_clip

    cpu, gpu = load_clip("miniworld", device="cpu"), load_clip("miniworld", device="cuda")
    assert gpu.device.type == "cuda" and gpu.fingerprint == cpu.fingerprint
    with torch.no_grad():
        f_cpu, f_gpu = cpu.encode_images(images), gpu.encode_images(images).cpu()
    cos = torch.nn.functional.cosine_similarity(f_cpu, f_gpu, dim=1)
    print(f"CLIP image features: min cosine cpu/cuda {cos.min():.7f}")
    assert cos.min() > 0.9999
    words = ["a photo of a pentagon.", "a photo of a heart.", "the nice marble texture"]
    t_cpu, t_gpu = cpu.encode_text(words, progress=False), gpu.encode_text(words, progress=False)
    assert t_gpu.device.type == "cpu"  # text features come back on the CPU, as documented
    torch.testing.assert_close(t_gpu, t_cpu, rtol=1e-4, atol=1e-4)


def test_image_gradients_flow_on_the_gpu(images):
    from synood_kit.features import text_features  # noqa: F401  (import check: the module loads with CUDA)
    from synood_kit.guidance import clip_scorer
    from synood_kit.models import load_clip

    clip = load_clip("miniworld", device="cuda")
    id_text = clip.encode_text(["a photo of a pentagon.", "a photo of a heart."], progress=False)
    x = images.to("cuda").requires_grad_(True)
    clip_scorer(clip, id_text)(x).sum().backward()
    assert x.grad is not None and x.grad.device.type == "cuda" and torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0


def test_classifier_logits_match_the_cpu(images):
    from synood_kit.classifier import load_classifier

    cpu, gpu = load_classifier("miniworld", device="cpu"), load_classifier("miniworld", device="cuda")
    with torch.no_grad():
        l_cpu, l_gpu = cpu.logits(images), gpu.logits(images.to("cuda")).cpu()
    print(f"classifier logits: max abs difference cpu/cuda {(l_cpu - l_gpu).abs().max():.2e}")
    torch.testing.assert_close(l_gpu, l_cpu, rtol=1e-3, atol=1e-3)
    assert torch.equal(l_gpu.argmax(1), l_cpu.argmax(1))


def test_guided_refinement_on_the_gpu_follows_the_cpu(images, scenes):
    """A CPU generator seeds the noise, so a seed gives the same synthesis on both devices (refine_steps docs)."""
    from synood_kit.classifier import load_classifier
    from synood_kit.guidance import boundary_target, classifier_scorer
    from synood_kit.inpainting import GuidanceConfig, InpaintConfig, context_prompt, load_inpaint_pipeline, refine

    prompts = [context_prompt(", ".join(s.context())) for s in scenes[:4]]
    config = InpaintConfig()
    finals = {}
    for device in ("cpu", "cuda"):
        pipe = load_inpaint_pipeline("miniworld", device=device)
        pipe.set_progress_bar_config(disable=True)
        scorer = classifier_scorer(load_classifier("miniworld", device=device))
        guidance = GuidanceConfig(rounds=2, target=boundary_target(scorer, images.to(device)))
        finals[device] = refine(
            pipe, images[:4], prompts, scorer, guidance, config, generator=torch.Generator().manual_seed(11)
        )
    a, b = finals["cpu"], finals["cuda"]
    assert b.image.device.type == "cpu" and b.image.shape == a.image.shape and torch.isfinite(b.score).all()
    diff = (a.image - b.image).abs().mean()
    print(
        f"refined images: mean abs pixel difference cpu/cuda {diff:.2e}; scores cpu {a.score.tolist()} "
        f"cuda {b.score.tolist()}"
    )
    assert diff < 0.02
    torch.testing.assert_close(b.score, a.score, rtol=0.05, atol=0.05)


def test_mllm_answers_match_the_cpu(images):
    from synood_kit.mllm import describe_context, load_mllm

    cpu, gpu = load_mllm("miniworld", device="cpu"), load_mllm("miniworld", device="cuda")
    a = describe_context(cpu, images[:8], progress=False)
    b = describe_context(gpu, images[:8], progress=False)
    same = sum(x == y for x, y in zip(a, b, strict=True))
    print(f"MLLM greedy answers equal on cpu and cuda: {same}/8")
    assert same >= 7 and all(b)


def test_fine_tuning_follows_the_features_device():
    from synood_kit.finetune import AdapterConfig, FinetuneData, synood_score, train_adapter, train_joint

    g = torch.Generator().manual_seed(0)
    id_text, neg_text = torch.randn(4, 32, generator=g), torch.randn(20, 32, generator=g)
    id_feats, id_labels = torch.randn(64, 32, generator=g), torch.randint(0, 4, (64,), generator=g)
    syn_feats, syn_index = torch.randn(32, 32, generator=g), torch.randint(0, 20, (32,), generator=g)
    cfg = AdapterConfig(epochs=2, batch_size=32)
    args = (id_feats, id_labels, syn_feats, syn_index, id_text, neg_text)
    cuda_args = tuple(t.to("cuda") for t in args)
    a_cpu, logs_cpu = train_adapter(FinetuneData(*args), cfg)
    a_gpu, logs_gpu = train_adapter(FinetuneData(*cuda_args), cfg)
    assert next(a_gpu.parameters()).device.type == "cuda"
    np.testing.assert_allclose([x.loss for x in logs_gpu], [x.loss for x in logs_cpu], rtol=1e-4, atol=1e-5)
    adapter, rows, _ = train_joint(FinetuneData(*cuda_args), cfg)
    assert rows.device.type == "cuda" and next(adapter.parameters()).device.type == "cuda"
    s_gpu = synood_score(cuda_args[0], cuda_args[4], cuda_args[5], adapter=a_gpu).cpu()
    s_cpu = synood_score(id_feats, id_text, neg_text, adapter=a_cpu)
    torch.testing.assert_close(s_gpu, s_cpu, rtol=1e-3, atol=1e-6)


def test_synthesis_with_negative_labels_runs_on_the_gpu(images, scenes, tmp_path):
    """The whole synthesis call on CUDA: refinement, then each image's negative label from the CLIP."""
    from synood_kit.classifier import load_classifier
    from synood_kit.guidance import classifier_scorer
    from synood_kit.inpainting import GuidanceConfig, InpaintConfig, context_prompt, load_inpaint_pipeline
    from synood_kit.models import load_clip
    from synood_kit.negatives import NegativeLabels
    from synood_kit.synthesis import SynthesisConfig, SynthesisSource, negative_labeler, synthesize

    words = ["marble texture", "stripes", "navy", "dots"]
    negatives = NegativeLabels(tuple(words), ("noun",) * 4, tuple(f"the nice {w}" for w in words), (0.0,) * 4, {})
    pipe = load_inpaint_pipeline("miniworld", device="cuda")
    pipe.set_progress_bar_config(disable=True)
    scorer = classifier_scorer(load_classifier("miniworld", device="cuda"))
    sources = [SynthesisSource(f"s{i}", images[i], context_prompt(", ".join(scenes[i].context()))) for i in range(3)]
    config = SynthesisConfig(InpaintConfig(num_inference_steps=5), GuidanceConfig(rounds=1, target=0.0), batch_size=2)
    labeler = negative_labeler(load_clip("miniworld", device="cuda"), negatives)
    records = list(synthesize(pipe, sources, scorer, tmp_path, config, progress=False, labeler=labeler))
    assert [r["id"] for r in records] == ["s0", "s1", "s2"]
    assert all(r["negative_label"]["word"] in words and 0 < r["negative_label"]["probability"] <= 1 for r in records)
