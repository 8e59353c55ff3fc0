"""The mini-world in-painting trainer and the probes that judge its samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from synood_kit.miniworld import probes as probes_mod
from synood_kit.miniworld.train_inpaint import PRESETS, build_tokenizer, main, removal_prompt, train

ASSET = Path(__file__).resolve().parents[1] / "assets" / "miniworld" / "inpaint"


@pytest.fixture(scope="module")
def smoke_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inpaint_smoke")
    main(["--smoke", "--run", str(root / "run"), "--out", str(root / "model")])
    return root / "model"


def _load(folder):
    from diffusers import StableDiffusionInpaintPipeline

    pipe = StableDiffusionInpaintPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_smoke_run_exports_a_loadable_inpainting_pipeline(smoke_folder):
    for part in (
        "model_index.json",
        "unet/config.json",
        "vae/config.json",
        "text_encoder/config.json",
        "tokenizer/tokenizer.json",
    ):
        assert (smoke_folder / part).is_file(), part
    assert list(smoke_folder.rglob("*.safetensors")), "weights must be safetensors"
    pipe = _load(smoke_folder)
    assert pipe.unet.config.in_channels == 9 and pipe.vae_scale_factor == 1
    assert pipe.unet.dtype == torch.float32  # stored in float16, loaded back in float32
    assert pipe.tokenizer.model_max_length == 77
    image = torch.rand(2, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    full = pipe(
        prompt=[removal_prompt(["teal background", "stripes"])] * 2,
        image=image,
        mask_image=torch.ones(2, 1, 32, 32),
        height=32,
        width=32,
        strength=0.6,
        num_inference_steps=4,
        guidance_scale=8.0,
        generator=g,
        output_type="pt",
    ).images
    box = torch.zeros(1, 1, 32, 32)
    box[..., 8:24, 8:24] = 1
    boxed = pipe(
        prompt="a red circle on a navy background",
        image=image[:1],
        mask_image=box,
        height=32,
        width=32,
        num_inference_steps=3,
        generator=g,
        output_type="pt",
    ).images
    assert full.shape == (2, 3, 32, 32) and boxed.shape == (1, 3, 32, 32)
    assert torch.isfinite(full).all() and full.min() >= 0 and full.max() <= 1


def test_resumed_run_equals_an_uninterrupted_one(tmp_path):
    from safetensors.torch import load_file

    recipe = PRESETS["smoke"]
    train(tmp_path / "a", None, recipe, checkpoint_every=100, progress=False)
    # Interrupt after every step (max_seconds=0 checkpoints and stops); each call resumes from the last.
    for _ in range(recipe.vae_steps + recipe.unet_steps):
        rec = train(tmp_path / "b", None, recipe, checkpoint_every=100, max_seconds=0, progress=False)
    assert rec["step"] == recipe.vae_steps + recipe.unet_steps
    a = load_file(str(tmp_path / "a" / "checkpoint" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoint" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_tokenizer_knows_the_worlds_words():
    tok = build_tokenizer()
    ids = tok(removal_prompt(["maroon background", "checkerboard", "white sparkles", "yellow dashes"])).input_ids
    assert tok.unk_token_id not in ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.model_max_length == 77
    assert build_tokenizer().get_vocab() == tok.get_vocab()  # deterministic


def test_probes_train_validate_and_round_trip(tmp_path):
    net = probes_mod.train_probes(steps=6, batch_size=16, pool_size=48, progress=False)
    val = probes_mod.validate_probes(net, n=40)
    for head in probes_mod.HEADS:
        assert 0.0 <= val[head] <= 1.0
    assert set(val["usable"]) <= set(probes_mod.HEADS)
    probes_mod.save_probes(net, tmp_path, val)
    again, meta = probes_mod.load_probes(tmp_path)
    x, _ = probes_mod.render_probe_set(8, stream=999)
    a, b = probes_mod.judge(net, x), probes_mod.judge(again, x)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6)
    assert meta["validation"]["n"] == 40


def test_inpaint_quality_reports_both_settings_and_a_grid(smoke_folder):
    net = probes_mod.ProbeNet().eval()
    validation = {"usable": list(probes_mod.HEADS)}  # pretend: the tiny test probe is not validated
    metrics, grid = probes_mod.inpaint_quality(
        _load(smoke_folder), net, validation, n=2, steps=3, batch=2, grid_rows=2, progress=False
    )
    assert set(metrics["synood"]) >= {"removed_or_changed", "pattern_kept", "removed_or_changed_and_pattern_kept"}
    assert set(metrics["box"]) >= {"mae_outside_box_raw", "prompted_subject_present"}
    assert grid.shape == (4 * 32 * 4, 4 * 32 * 4, 3) and grid.dtype == np.uint8
    with pytest.raises(ValueError, match="below"):
        probes_mod.inpaint_quality(_load(smoke_folder), net, {"usable": ["category"]}, n=2, steps=1, batch=2)


@pytest.mark.skipif(not (ASSET / "model_index.json").is_file(), reason="the shipped in-painting model is not built")
def test_shipped_pipeline_loads_offline_within_budget():
    sizes = sum(p.stat().st_size for p in ASSET.rglob("*.safetensors"))
    assert sizes <= 12 * 2**20
    pipe = _load(ASSET)
    out = pipe(
        prompt=removal_prompt(["teal background", "stripes"]),
        image=torch.rand(1, 3, 32, 32),
        mask_image=torch.ones(1, 1, 32, 32),
        height=32,
        width=32,
        strength=0.6,
        num_inference_steps=4,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).images
    assert out.shape == (1, 3, 32, 32)
