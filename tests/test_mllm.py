"""The MLLM loader and query (synood_kit.mllm) and the mini-world MLLM trainer (miniworld.train_mllm)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from synood_kit.config import assets_dir
from synood_kit.mllm import CONTEXT_QUESTION, describe_context, load_mllm, parse_context, resolve_mllm_source
from synood_kit.models import WeightsNotFoundError

SHIPPED = assets_dir() / "miniworld" / "mllm"
ACCEPTANCE_RECALL = 0.80  # fraction of context elements named exactly (the acceptance threshold)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """A --smoke training run (a few steps of a tiny model) and its export folder."""
    from synood_kit.miniworld import train_mllm

    root = tmp_path_factory.mktemp("mllm_smoke")
    train_mllm.main(
        ["--smoke", "--run", str(root / "run"), "--out", str(root / "model"), "--threads", "1", "--no-progress"]
    )
    return root


def test_smoke_training_exports_a_transformers_folder(smoke_run):
    model_dir = smoke_run / "model"
    for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "chat_template.jinja"):
        assert (model_dir / name).is_file(), name
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "llava"
    assert (smoke_run / "run" / "checkpoint" / "state.json").is_file()
    assert json.loads((smoke_run / "run" / "checkpoint" / "state.json").read_text())["step"] == 4


def test_smoke_model_loads_and_answers(smoke_run):
    mllm = load_mllm(smoke_run / "model")
    assert mllm.model.dtype == torch.float32  # stored as float16, loaded as float32 unless asked
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    answers = describe_context(mllm, images, max_new_tokens=6, progress=False)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    # Batched, left-padded generation gives each image the answer it gets alone.
    assert describe_context(mllm, images[1:2], max_new_tokens=6, progress=False) == answers[1:2]


def test_training_prompt_matches_the_processor(smoke_run):
    """The trainer's token rows are exactly what the processor builds from the chat template."""
    from synood_kit.miniworld.pretraining import build_pool
    from synood_kit.miniworld.train_mllm import _Batcher, context_answer

    mllm = load_mllm(smoke_run / "model")
    pool = build_pool(16, seed=0, progress=False)
    i = next(i for i, s in enumerate(pool.scenes) if not isinstance(s, dict) and s.extras and s.pattern != "plain")
    batch = _Batcher(mllm.processor, pool.scenes)(np.array([i]), np.array([0]), np.array([0]))
    conv = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": CONTEXT_QUESTION}]},
        {"role": "assistant", "content": [{"type": "text", "text": context_answer(pool.scenes[i])}]},
    ]
    text = mllm.processor.apply_chat_template(conv)
    ids = mllm.processor(images=[pool.images[i]], text=[text], return_tensors="pt")["input_ids"][0]
    assert batch["input_ids"][0].tolist() == ids.tolist()
    answer_positions = (batch["labels"][0] != -100).nonzero().flatten()
    decoded = mllm.processor.tokenizer.decode(batch["input_ids"][0, answer_positions], skip_special_tokens=True)
    assert parse_context(decoded) == pool.scenes[i].context()


def test_resumed_run_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    """A run stopped after its step-2 checkpoint and resumed ends with the uninterrupted run's weights."""
    import shutil

    from safetensors.torch import load_file

    from synood_kit.miniworld import train_mllm

    kwargs = dict(
        preset="smoke",
        steps=4,
        batch_size=8,
        pool_size=32,
        threads=1,
        checkpoint_every=2,
        eval_every=100,
        progress=False,
    )
    save = train_mllm.save_checkpoint

    def save_and_keep_step_2(run_dir, model, optimizer, step, extra=None):
        save(run_dir, model, optimizer, step, extra)
        if step == 2:  # what a run killed between steps 2 and 4 leaves behind
            shutil.copytree(tmp_path / "full" / "checkpoint", tmp_path / "resumed" / "checkpoint")

    monkeypatch.setattr(train_mllm, "save_checkpoint", save_and_keep_step_2)
    train_mllm.train(tmp_path / "full", tmp_path / "a", **kwargs)
    monkeypatch.setattr(train_mllm, "save_checkpoint", save)
    assert train_mllm.load_checkpoint.__module__.endswith("training")
    train_mllm.train(tmp_path / "resumed", tmp_path / "b", **kwargs)
    resumed_log = (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in resumed_log] == [4]  # it trained steps 3-4 only
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_parse_context():
    assert parse_context("black background, stripes, pink sparkles, green dashes") == [
        "black background",
        "stripes",
        "pink sparkles",
        "green dashes",
    ]
    assert parse_context("black background , stripes .") == ["black background", "stripes"]
    assert parse_context("The image shows a teal background with stripes and some pink sparkles.") == [
        "teal background",
        "stripes",
        "pink sparkles",
    ]
    assert parse_context("- bamboo\n- tourists\n- railings") == ["bamboo", "tourists", "railings"]
    assert parse_context("grid; grid; Grid") == ["grid"]
    assert parse_context("") == []
    with pytest.raises(TypeError):
        parse_context(None)


def test_missing_folder_raises_a_clear_error(tmp_path):
    missing = tmp_path / "no_such_mllm"
    with pytest.raises(WeightsNotFoundError, match="no_such_mllm.*config.json"):
        load_mllm(missing)
    with pytest.raises(WeightsNotFoundError, match="config.json"):
        load_mllm(str(tmp_path))  # a folder, but not a model folder


def test_missing_miniworld_model_names_the_training_command(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNOOD_ASSETS", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="train_mllm"):
        load_mllm("miniworld")


def test_uncached_hub_id_raises_offline_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match="not available offline"):
        load_mllm("synood-kit-test/no-such-llava")


def test_resolve_mllm_source(tmp_path):
    assert resolve_mllm_source("miniworld") == (str(SHIPPED), True)
    assert resolve_mllm_source(tmp_path) == (str(tmp_path), True)
    assert resolve_mllm_source("llava-hf/llava-1.5-7b-hf") == ("llava-hf/llava-1.5-7b-hf", False)


def test_describe_context_rejects_bad_images(smoke_run):
    mllm = load_mllm(smoke_run / "model")
    with pytest.raises(ValueError, match="shape"):
        describe_context(mllm, torch.rand(3, 32, 32), progress=False)
    with pytest.raises(TypeError):
        describe_context(mllm, "image.png", progress=False)


@pytest.mark.slow
def test_shipped_mllm_names_the_context():
    if not (SHIPPED / "config.json").is_file():
        pytest.skip(f"no shipped mini-world MLLM at {SHIPPED}; train it with python -m synood_kit.miniworld.train_mllm")
    from synood_kit.miniworld.train_mllm import context_accuracy

    mllm = load_mllm("miniworld")
    assert SHIPPED.joinpath("model.safetensors").stat().st_size <= 12 * 2**20
    result = context_accuracy(mllm, n_scenes=100, seed=0, progress=False)
    assert result["element_recall"] >= ACCEPTANCE_RECALL, result
