"""Context prompting: the reply parser's fallbacks, the transformers backend, and the OpenAI backend against a
loopback server that wraps a local MLLM."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from synood_kit.prompting import (
    OpenAIBackend,
    PromptingConfig,
    TransformersBackend,
    parse_reply,
    prompt_contexts,
)


@pytest.mark.parametrize(
    ("answer", "elements", "fallback"),
    [
        ("black background, stripes, pink sparkles", ("black background", "stripes", "pink sparkles"), None),
        ("- teal background\n- white dots", ("teal background", "white dots"), None),
        ('"The image shows a red background with grid."', ("red background", "grid"), None),
        ("", (), "empty reply"),
        ("   ", (), "empty reply"),
        ("Sorry, I cannot help with that.", (), "refusal"),
        ("?? !! 12 ..", (), "no words in reply"),
        (None, (), "reply is a NoneType, not text"),
    ],
)
def test_parse_reply_handles_lists_sentences_quotes_and_garbage(answer, elements, fallback):
    parsed = parse_reply(answer)
    assert parsed.elements == elements
    assert parsed.fallback == fallback
    assert parsed.context == (", ".join(elements) if elements else PromptingConfig().fallback_context)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(), st.none(), st.integers(), st.lists(st.text())))
def test_parse_reply_never_raises_and_always_gives_a_context(answer):
    parsed = parse_reply(answer)
    assert parsed.context and (parsed.fallback is None) == bool(parsed.elements)


@pytest.fixture(scope="module")
def mllm_dir(tmp_path_factory):
    from synood_kit.miniworld import train_mllm

    root = tmp_path_factory.mktemp("mllm")
    train_mllm.main(
        ["--smoke", "--run", str(root / "run"), "--out", str(root / "model"), "--threads", "1", "--no-progress"]
    )
    return root / "model"


def _items(n=3):
    g = torch.Generator().manual_seed(0)
    return [(f"img{i}", torch.rand(3, 32, 32, generator=g)) for i in range(n)]


def test_prompt_contexts_writes_one_row_per_image_and_resumes(mllm_dir, tmp_path):
    backend = TransformersBackend(str(mllm_dir), max_new_tokens=8)
    out = tmp_path / "contexts.jsonl"
    rows = prompt_contexts(backend, _items(2), out, progress=False)
    assert [r["id"] for r in rows] == ["img0", "img1"]
    for r in rows:
        assert r["prompt"].startswith("A photo only remain ") and r["prompt"].endswith(".")
        assert set(r) >= {"id", "question", "answer", "context", "fallback", "prompt", "backend"}
    calls = []
    backend.ask = lambda images, q, ids: calls.append(len(images)) or ["red background"] * len(images)
    rows = prompt_contexts(backend, _items(3), out, progress=False)
    assert calls == [1]  # only the new image was asked about
    assert len(out.read_text().splitlines()) == 3 and rows[2]["context"] == ["red background"]


def test_openai_backend_against_a_loopback_server(mllm_dir, monkeypatch):
    from synood_kit.chat_server import serve_chat_completions

    local = TransformersBackend(str(mllm_dir), max_new_tokens=8)
    server, url = serve_chat_completions(local)
    monkeypatch.setenv("SYNOOD_TEST_KEY", "sk-secret-value")
    try:
        remote = OpenAIBackend(url, "miniworld", api_key_env="SYNOOD_TEST_KEY")
        images = torch.stack([img for _, img in _items(2)])
        # PNG round trip quantises to 8 bits: ask the local model about the same quantised pixels
        quantised = (images * 255).round() / 255
        assert remote.ask(images, "What is here?") == local.ask(quantised, "What is here?")
        assert "sk-secret-value" not in json.dumps(remote.name)
    finally:
        server.shutdown()
