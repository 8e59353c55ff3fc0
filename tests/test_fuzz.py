"""Property and fuzz tests (hypothesis) for every parser of outside text: MLLM replies, manifests, image lists,
config files, negative-label lists, JSONL records and checkpoints. Arbitrary input either parses into something
that keeps the parser's promises, or raises the error type the parser documents; never anything else."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synood_kit.config import MiningConfig, NegLabelConfig, from_dict, read_config
from synood_kit.data import MAX_LABEL, ImageSet
from synood_kit.finetune import AdapterConfig, LabelTuneConfig, load_finetune
from synood_kit.inpainting import GuidanceConfig, InpaintConfig
from synood_kit.mllm import parse_context
from synood_kit.negatives import NegativeLabels
from synood_kit.prompting import PromptingConfig, parse_reply, reply_prompt
from synood_kit.storage import read_jsonl
from synood_kit.synthesis import SynthesisConfig, read_records

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
paths = st.sampled_from(
    [
        "a.png",
        "img/b.png",
        "../a.png",
        "a/../../b.png",
        "/etc/passwd",
        "",
        " ",
        "x\x00y.png",
        "./c.png",
        "link/../a.png",
        "a b.png",
    ]
) | st.text(max_size=20)
labels = st.integers(-3, 5) | st.integers() | json_values
manifest_records = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=6) | json_values,
        "path": paths | json_values,
        "split": st.sampled_from(["train", "id_test"]),
        "label": labels,
        "class_name": st.text(max_size=8) | json_values,
    },
)
good_records = st.fixed_dictionaries(  # mostly valid records, so the success path is explored too
    {"id": st.text(min_size=1, max_size=6), "path": paths, "split": st.just("train"), "label": st.integers(-3, 5)},
    optional={"class_name": st.text(max_size=8) | json_values},
)
manifest_lines = st.one_of(
    good_records.map(json.dumps),
    good_records.map(json.dumps),
    manifest_records.map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=40),
)
manifest_texts = st.lists(manifest_lines, max_size=6).map("\n".join) | st.text()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def _inside(root, path) -> bool:
    return path == root or root in path.parents


# ---------------------------------------------------------------- MLLM replies


@FUZZ
@given(st.text() | st.none() | st.integers() | st.binary() | st.lists(st.text()) | json_values)
def test_any_mllm_reply_parses_into_a_usable_prompt(answer):
    parsed = parse_reply(answer)
    assert parsed.context.strip() and (parsed.fallback is None) == bool(parsed.elements)
    assert all(isinstance(e, str) and sum(c.isalpha() for c in e) >= 2 for e in parsed.elements)
    for truncate in ("elements", "official"):  # whole elements, or the raw reply cut as the official code does
        prompt = reply_prompt(answer, parsed, PromptingConfig(truncate=truncate))
        assert prompt.startswith("A photo only remain ") and len(prompt) <= len("A photo only remain .") + 73


@FUZZ
@given(st.text())
def test_context_elements_are_clean_and_unique(answer):
    elements = parse_context(answer)
    assert len(elements) == len(set(elements)) and all(e == e.strip() and e == e.lower() and e for e in elements)


# ---------------------------------------------------------------- manifests and image lists


@FUZZ
@given(manifest_texts)
def test_image_set_manifests_parse_or_raise_value_error(folder, text):
    path = folder / "manifest.jsonl"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        image_set = ImageSet.from_manifest(path, "train")
    except ValueError:
        return
    root = folder.resolve()
    assert all(_inside(root, it.path) for it in image_set.items)
    assert all(-1 <= it.label <= MAX_LABEL for it in image_set.items)
    assert len({it.id for it in image_set.items}) == len(image_set)


@FUZZ
@given(manifest_texts)
def test_benchmark_manifests_parse_or_raise_value_error(folder, text):
    from synood_kit.miniworld.benchmark import read_manifest

    (folder / "manifest.jsonl").write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        records = read_manifest(folder)
    except ValueError:
        return
    for record in records:
        assert {"id", "path", "split", "label"} <= set(record)
        assert not record["path"].startswith("/") and ".." not in record["path"].split("/")


list_lines = st.one_of(
    st.tuples(paths, st.integers() | st.text(max_size=5)).map(lambda t: f"{t[0]} {t[1]}"), paths, st.text(max_size=30)
)


@FUZZ
@given(st.lists(list_lines, max_size=6).map("\n".join) | st.text())
def test_image_lists_parse_or_raise_value_error(folder, text):
    path = folder / "list.txt"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        image_set = ImageSet.from_file_list(path, folder / "data")
    except ValueError:
        return
    root = (folder / "data").resolve()
    assert all(_inside(root, it.path) for it in image_set.items)
    assert all(-1 <= it.label <= MAX_LABEL for it in image_set.items)


# ---------------------------------------------------------------- config files

CONFIG_CLASSES = [
    MiningConfig,
    NegLabelConfig,
    InpaintConfig,
    GuidanceConfig,
    SynthesisConfig,
    AdapterConfig,
    LabelTuneConfig,
]


def _field_values(cls):
    import dataclasses

    names = [f.name for f in dataclasses.fields(cls)] + ["unknown_field"]
    return st.dictionaries(st.sampled_from(names), json_values | st.floats(0, 2) | st.integers(-2, 30), max_size=4)


@FUZZ
@given(st.sampled_from(CONFIG_CLASSES).flatmap(lambda cls: st.tuples(st.just(cls), _field_values(cls))))
def test_config_mappings_build_a_valid_config_or_raise_value_or_type_error(cls_values):
    cls, values = cls_values
    try:
        config = from_dict(cls, values)
    except (ValueError, TypeError):
        return
    assert isinstance(config, cls)
    assert config == from_dict(cls, json.loads(json.dumps(values)))  # the same text gives the same config


@FUZZ
@given(
    st.sampled_from([".json", ".toml"]),
    st.sampled_from(CONFIG_CLASSES),
    st.text()
    | _field_values(MiningConfig).map(json.dumps)
    | st.sampled_from(
        [
            "fraction = 0.5",
            "[corpus]\nlemmas = 'all'",
            "percentile = inf",
            "seed = 1e3",
            "rounds = -1\n",
            "x = [",
        ]
    ),
)
def test_config_files_parse_or_raise_value_or_type_error(folder, suffix, cls, text):
    path = folder / f"config{suffix}"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        config = read_config(path, cls)
    except (ValueError, TypeError):
        return
    assert isinstance(config, cls)


# ---------------------------------------------------------------- lists and records the kit reads back


@FUZZ
@given(
    st.text()
    | json_values.map(json.dumps)
    | st.fixed_dictionaries(
        {
            "labels": st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "word": json_values,
                        "pos": json_values,
                        "prompt": json_values,
                        "percentile_similarity": json_values,
                    },
                ),
                max_size=3,
            )
        },
        optional={"provenance": json_values},
    ).map(json.dumps)
)
def test_negative_label_files_load_or_raise_value_error(folder, text):
    path = folder / "negatives.json"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        labels = NegativeLabels.load(path)
    except ValueError:
        return
    assert len(labels.words) == len(labels.pos) == len(labels.prompts) > 0


@FUZZ
@given(
    st.binary()
    | st.lists(json_values.map(json.dumps) | st.text(max_size=20), max_size=6).map(
        lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")
    )
)
def test_jsonl_and_synthesis_records_never_raise(folder, data):
    (folder / "records-0.jsonl").write_bytes(data)
    records, problems = read_jsonl(folder / "records-0.jsonl")
    assert all(isinstance(r, dict) for r in records) and all(isinstance(p, str) for p in problems)
    assert all(isinstance(i, str) for i in read_records(folder))


@FUZZ
@given(st.binary(max_size=200) | st.tuples(st.text(max_size=30), st.text(max_size=30)).map(lambda t: t))
def test_checkpoints_load_or_raise_value_error(folder, content):
    from safetensors.torch import save_file

    path = folder / "ft.safetensors"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:  # a real safetensors file with arbitrary metadata
        save_file(
            {"tuned_neg_text": torch.zeros(1, 4), "tuned_index": torch.zeros(1, dtype=torch.long)},
            str(path),
            metadata={"negative_words": content[0], "extra": content[1]},
        )
    try:
        loaded = load_finetune(path, ["a"])
    except ValueError:
        return
    assert isinstance(loaded["extra"], dict) and loaded["tuned_index"].tolist() == [0]


def test_fuzzing_reaches_the_success_paths(folder):
    # the properties above are only meaningful if good inputs do parse
    (folder / "manifest.jsonl").write_text(json.dumps({"id": "a", "path": "a.png", "split": "train", "label": 2}))
    assert ImageSet.from_manifest(folder / "manifest.jsonl", "train").labels.tolist() == [2]
    assert math.isclose(from_dict(MiningConfig, {"fraction": 1}).fraction, 1.0)
    assert parse_reply("teal background, dots").elements == ("teal background", "dots")
