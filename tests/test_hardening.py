"""Bad inputs and untrusted files: every bad value is answered by an error naming it and what was expected; batch
jobs skip and record a bad item and go on; no file the kit reads can run code. The table in docs/hardening.md
lists each case with the test that covers it."""

from __future__ import annotations

import dataclasses
import http.server
import json
import logging
import math
import os
import threading
from pathlib import Path

import fault_workers
import pytest
import torch
from PIL import Image

from synood_kit.classifier import build_classifier, load_classifier, save_classifier_folder
from synood_kit.config import CorpusConfig, MiningConfig, NegLabelConfig, read_config
from synood_kit.data import ImageLoadError, ImageSet, load_image
from synood_kit.finetune import (
    AdapterConfig,
    LabelTuneConfig,
    ResidualAdapter,
    load_finetune,
    save_finetune,
    synood_score,
)
from synood_kit.guidance import boundary_target
from synood_kit.inpainting import GuidanceConfig, InpaintConfig, load_inpaint_pipeline, refine_steps
from synood_kit.models import WeightsNotFoundError
from synood_kit.synthesis import SynthesisConfig, SynthesisSource, read_records, read_skipped, synthesize

# ---------------------------------------------------------------- images


def test_a_huge_image_is_refused_before_it_is_decoded(tmp_path):
    Image.new("1", (8000, 8000)).save(tmp_path / "bomb.png")  # 64 Mpx, a few kB on disk
    with pytest.raises(ImageLoadError, match=r"bomb.png: 8000x8000 pixels is above the limit of 40000000"):
        load_image(tmp_path / "bomb.png")


def test_an_image_that_is_a_directory_or_empty_file_is_named(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty.png: not a readable image"):
        load_image(tmp_path / "empty.png")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(FileNotFoundError, match="image not found: .*dir.png"):
        load_image(tmp_path / "dir.png")


# ---------------------------------------------------------------- image sets, lists, manifests


def _png(path: Path, side: int = 10) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (side, side), (1, 2, 3)).save(path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("a.png 1000001", r"list.txt:1: label 1000001 is out of range"),
        ("a.png -2", r"list.txt:1: label -2 is out of range"),
        ("/etc/passwd 0", r"list.txt:1: absolute path '/etc/passwd' refused"),
        ("../outside.png 0", r"list.txt:1: .*path traversal"),
    ],
)
def test_image_list_lines_with_bad_labels_or_escaping_paths_are_refused(tmp_path, line, message):
    _png(tmp_path / "data" / "a.png")
    (tmp_path / "list.txt").write_text(f"{line}\n")
    with pytest.raises(ValueError, match=message):
        ImageSet.from_file_list(tmp_path / "list.txt", tmp_path / "data")


def _manifest(tmp_path: Path, records: list) -> Path:
    path = tmp_path / "manifest.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


GOOD = {"id": "a", "path": "img/a.png", "split": "train", "label": 0, "class_name": "dog"}


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (
            '{"id": "a", "path": "img/a.png", "split": "tr',
            r"manifest.jsonl:2: malformed manifest record \(JSONDecodeError",
        ),
        ({**GOOD, "label": "dog"}, r"manifest.jsonl:2: .*label 'dog' is not an integer"),
        ({**GOOD, "label": 1.5}, r"manifest.jsonl:2: .*label 1.5 is not an integer"),
        ({**GOOD, "label": 10**9}, r"manifest.jsonl:2: .*label 1000000000 is out of range"),
        ({**GOOD, "class_name": ["dog"]}, r"manifest.jsonl:2: .*class_name must be a string"),
        ({**GOOD, "path": "/etc/passwd"}, r"manifest.jsonl:2: .*absolute path '/etc/passwd' refused"),
        ({**GOOD, "path": "img/../../x.png"}, r"manifest.jsonl:2: .*path traversal"),
        ([1, 2], r"manifest.jsonl:2: malformed manifest record \(TypeError"),
    ],
)
def test_image_set_manifest_records_that_are_malformed_are_refused_with_file_and_line(tmp_path, record, message):
    path = _manifest(tmp_path, [{**GOOD, "id": "z"}, record])
    with pytest.raises(ValueError, match=message):
        ImageSet.from_manifest(path, "train")


def test_duplicate_ids_in_a_manifest_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"duplicate ids, e.g. \['a'\]"):
        ImageSet.from_manifest(_manifest(tmp_path, [GOOD, GOOD]), "train")


def test_a_manifest_that_is_not_utf8_is_refused(tmp_path):
    (tmp_path / "manifest.jsonl").write_bytes(b'{"id": "\xff\xfe"}\n')
    with pytest.raises(ValueError, match="manifest.jsonl is not UTF-8 text"):
        ImageSet.from_manifest(tmp_path / "manifest.jsonl", "train")


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ("not json", r"manifest.jsonl:2: malformed manifest record \(JSONDecodeError"),
        ({"id": "b", "path": "x.png", "label": 0}, r"manifest.jsonl:2: .*missing key\(s\) \['split'\]"),
        ({**GOOD, "path": "../../etc/passwd"}, r"manifest.jsonl:2: .*path traversal"),
        ({**GOOD, "path": "/etc/passwd"}, r"manifest.jsonl:2: .*path traversal"),
        ({**GOOD, "path": 7}, r"manifest.jsonl:2: .*path 7 is not a relative file path"),
        ('"just a string"', r"manifest.jsonl:2: .*expected a JSON object"),
    ],
)
def test_benchmark_manifest_lines_that_are_malformed_or_escape_are_refused(tmp_path, record, message):
    from synood_kit.miniworld.benchmark import read_manifest

    _manifest(tmp_path, [{**GOOD, "split": "id_test"}, record])
    with pytest.raises(ValueError, match=message):
        read_manifest(tmp_path)


def test_benchmark_manifest_missing_or_unknown_split_is_named(tmp_path):
    from synood_kit.miniworld.benchmark import read_manifest

    with pytest.raises(FileNotFoundError, match="no manifest.jsonl in"):
        read_manifest(tmp_path)
    _manifest(tmp_path, [{**GOOD, "split": "id_test"}])
    with pytest.raises(ValueError, match="unknown split 'train'; known: \\['id_train'"):
        read_manifest(tmp_path, "train")
    assert [r["id"] for r in read_manifest(tmp_path, "id_test")] == ["a"]


# ---------------------------------------------------------------- config files


@pytest.mark.parametrize(
    ("name", "text", "error", "message"),
    [
        ("run.json", '{"fraction": 0.2,', ValueError, r"run.json is not valid JSON \(JSONDecodeError"),
        ("run.toml", "fraction = = 2", ValueError, r"run.toml is not valid TOML \(TOMLDecodeError"),
        ("run.json", '{"fractoin": 0.2}', ValueError, r"unknown MiningConfig field\(s\) \['fractoin'\]; known fields"),
        ("run.json", '{"fraction": "lots"}', TypeError, r"run.json.fraction: expected float .*got 'lots'"),
        ("run.json", '{"fraction": 0}', ValueError, r"run.json: MiningConfig.fraction must be in \(0, 1\], got 0"),
        ("run.toml", "percentile = nan", ValueError, r"MiningConfig.percentile must be in \[0, 100\], got nan"),
        ("run.json", '{"corpus": {"lemmas": "some"}}', ValueError, r"run.json.corpus: CorpusConfig.lemmas must be"),
        ("run.json", '{"corpus": 3}', TypeError, r"run.json.corpus: expected CorpusConfig"),
        ("run.json", "[1, 2]", TypeError, r"run.json: expected a mapping of MiningConfig fields, got list"),
        ("run.yaml", "fraction: 0.2", ValueError, r"expected a .json or .toml config file, got suffix '.yaml'"),
    ],
)
def test_malformed_config_files_are_refused_naming_the_file_and_field(tmp_path, name, text, error, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(error, match=message):
        read_config(tmp_path / name, MiningConfig)


def test_a_good_config_file_maps_onto_the_dataclasses(tmp_path):
    (tmp_path / "run.toml").write_text(
        '[mining]\nfraction = 0.2\npercentile = 90\n[mining.corpus]\nextra_words = [["zebra", "noun"]]\n'
    )
    config = read_config(tmp_path / "run.toml", MiningConfig, section="mining")
    assert config == MiningConfig(fraction=0.2, percentile=90.0, corpus=CorpusConfig(extra_words=(("zebra", "noun"),)))
    with pytest.raises(ValueError, match="has no section 'scoring'"):
        read_config(tmp_path / "run.toml", MiningConfig, section="scoring")
    with pytest.raises(FileNotFoundError, match="config file not found"):
        read_config(tmp_path / "missing.json", MiningConfig)


# ---------------------------------------------------------------- out-of-range parameters


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: InpaintConfig(strength=0.0), r"strength must be in \(0, 1\], got 0.0"),
        (lambda: InpaintConfig(strength=1.5), r"strength must be in \(0, 1\], got 1.5"),
        (lambda: InpaintConfig(strength=math.nan), r"strength must be in \(0, 1\], got nan"),
        (lambda: InpaintConfig(num_inference_steps=-3), r"num_inference_steps must be an integer >= 1, got -3"),
        (lambda: InpaintConfig(num_inference_steps=0), r"num_inference_steps must be an integer >= 1, got 0"),
        (lambda: InpaintConfig(guidance_scale=-1.0), r"guidance_scale must be a finite number >= 0, got -1.0"),
        (lambda: InpaintConfig(prompt_template="no slot"), r"prompt_template needs one '\{context\}'"),
        (lambda: GuidanceConfig(rounds=-1), r"rounds must be an integer >= 0 \(0: the unguided baseline\), got -1"),
        (lambda: GuidanceConfig(rounds=0, official_rounds=True), r"official_rounds needs rounds >= 1"),
        (lambda: GuidanceConfig(step_size=-1.0), r"step_size must be a finite number >= 0, got -1.0"),
        (lambda: GuidanceConfig(step_size=math.inf), r"step_size must be a finite number >= 0, got inf"),
        (lambda: GuidanceConfig(target=math.nan), r"target must be None or a finite number, got nan"),
        (lambda: GuidanceConfig(normalize="l2"), r"normalize must be 'none', 'unit' or 'clip', got 'l2'"),
        (lambda: GuidanceConfig(clip_value=0.0), r"clip_value must be a finite number > 0, got 0.0"),
        (lambda: SynthesisConfig(batch_size=0), r"batch_size must be an integer >= 1, got 0"),
        (lambda: AdapterConfig(epochs=0), r"AdapterConfig.epochs must be an integer >= 1, got 0"),
        (lambda: AdapterConfig(lr=-1e-3), r"AdapterConfig.lr must be a finite number > 0, got -0.001"),
        (lambda: AdapterConfig(lr=math.nan), r"AdapterConfig.lr must be a finite number > 0, got nan"),
        (lambda: LabelTuneConfig(batch_size=0), r"LabelTuneConfig.batch_size must be an integer >= 1, got 0"),
        (lambda: LabelTuneConfig(momentum=-0.5), r"LabelTuneConfig.momentum must be a finite number >= 0, got -0.5"),
        (lambda: MiningConfig(fraction=1.5), r"MiningConfig.fraction must be in \(0, 1\], got 1.5"),
        (lambda: MiningConfig(percentile=101.0), r"MiningConfig.percentile must be in \[0, 100\], got 101.0"),
        (lambda: MiningConfig(text_batch_size=0), r"MiningConfig.text_batch_size must be >= 1, got 0"),
        (lambda: NegLabelConfig(temperature=0.0), r"NegLabelConfig.temperature must be a finite number > 0, got 0.0"),
        (lambda: NegLabelConfig(n_groups=0), r"NegLabelConfig.n_groups must be None or an integer >= 1, got 0"),
        (lambda: CorpusConfig(parts_of_speech=("verb",)), r"parts_of_speech must be a non-empty subset"),
        (
            lambda: boundary_target(lambda x: x.mean((1, 2, 3)), torch.rand(4, 3, 8, 8), quantile=0.0),
            r"quantile must be in \(0, 1\), got 0.0",
        ),
    ],
)
def test_out_of_range_parameters_are_refused_naming_the_value(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_feature_extraction_sizes_are_refused(tiny_clip, tmp_path):
    _png(tmp_path / "imgs" / "a.png")
    image_set = ImageSet.from_folder(tmp_path / "imgs", labelled=False)
    from synood_kit.features import image_features

    for kwargs in ({"shard_size": 0}, {"batch_size": -1}):
        with pytest.raises(ValueError, match="shard_size and batch_size must be >= 1"):
            image_features(tiny_clip, image_set, cache_root=tmp_path / "cache", progress=False, **kwargs)


# ---------------------------------------------------------------- models and checkpoints


def test_unknown_model_names_and_missing_weights_are_named(tmp_path):
    with pytest.raises(ValueError, match="'no-such-net' is neither a classifier folder nor a torchvision model name"):
        load_classifier("no-such-net")
    with pytest.raises(WeightsNotFoundError, match="no model_index.json in .*missing_pipe"):
        load_inpaint_pipeline(str(tmp_path / "missing_pipe"))
    with pytest.raises(WeightsNotFoundError, match="'synood-kit-test/no-such-inpainting' are not available offline"):
        load_inpaint_pipeline("synood-kit-test/no-such-inpainting")


@pytest.fixture
def clf_folder(tmp_path):
    torch.manual_seed(0)
    kw = {"block": "basic", "layers": [1, 1, 1, 1], "num_classes": 5}
    return save_classifier_folder(
        build_classifier("resnet", kw),
        "resnet",
        kw,
        list("abcde"),
        tmp_path / "clf",
        {"size": 32, "mean": [0.5] * 3, "std": [0.25] * 3},
    )


def _edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "classifier_config.json").read_text())
    (folder / "classifier_config.json").write_text(json.dumps({**cfg, **changes}))


def test_classifier_folders_whose_weights_or_labels_do_not_fit_are_refused(clf_folder):
    assert load_classifier(str(clf_folder)).class_names == tuple("abcde")
    _edit_config(clf_folder, kwargs={"block": "basic", "layers": [1, 1, 1, 1], "num_classes": 7})
    with pytest.raises(ValueError, match=r"(?s)model.safetensors does not fit the architecture .*size mismatch"):
        load_classifier(str(clf_folder))
    _edit_config(
        clf_folder, kwargs={"block": "basic", "layers": [1, 1, 1, 1], "num_classes": 5}, class_names=["a", "b"]
    )
    with pytest.raises(ValueError, match="names 2 classes but the model has 5 outputs"):
        load_classifier(str(clf_folder))
    (clf_folder / "classifier_config.json").write_text('{"arch": "resnet"')
    with pytest.raises(ValueError, match=r"classifier_config.json is not a classifier config \(JSONDecodeError"):
        load_classifier(str(clf_folder))


def test_a_damaged_weights_file_is_refused_not_unpickled(clf_folder):
    (clf_folder / "model.safetensors").write_bytes(b"\x80\x04garbage")
    with pytest.raises(ValueError, match="model.safetensors does not fit the architecture"):
        load_classifier(str(clf_folder))


WORDS = [f"w{i}" for i in range(8)]


def test_finetune_checkpoints_of_other_shapes_or_files_are_refused(tmp_path):
    torch.manual_seed(0)
    adapter = ResidualAdapter(16)
    path = save_finetune(tmp_path / "ft.safetensors", WORDS, adapter, torch.randn(3, 16), torch.tensor([1, 4, 6]))
    assert load_finetune(path, WORDS, dim=16)["adapter"] is not None
    with pytest.raises(ValueError, match="does not fit: its adapter is 16-dimensional, expected 32"):
        load_finetune(path, WORDS, dim=32)
    with pytest.raises(ValueError, match=r"another negative-label list \(8 vs 7 labels"):
        load_finetune(path, WORDS[:7])
    bad_index = save_finetune(
        tmp_path / "idx.safetensors", WORDS, tuned_neg_text=torch.randn(2, 16), tuned_index=torch.tensor([1, 8])
    )
    with pytest.raises(ValueError, match=r"tuned_index must hold 2 rows in \[0, 8\)"):
        load_finetune(bad_index, WORDS)
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="junk.safetensors is not a readable safetensors checkpoint"):
        load_finetune(tmp_path / "junk.safetensors", WORDS)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a SynOOD fine-tuning checkpoint"):
        load_finetune(tmp_path / "other.safetensors", WORDS)
    with pytest.raises(FileNotFoundError, match="fine-tuning checkpoint not found"):
        load_finetune(tmp_path / "missing.safetensors", WORDS)


def test_scoring_with_a_checkpoint_of_another_width_is_refused():
    feats, id_text, neg_text = torch.randn(4, 32), torch.randn(3, 32), torch.randn(8, 32)
    with pytest.raises(ValueError, match=r"image features are 32-dimensional but \{'adapter': 16\} differ"):
        synood_score(feats, id_text, neg_text, adapter=ResidualAdapter(16))
    with pytest.raises(ValueError, match=r"2 tuned rows need as many indices in \[0, 8\)"):
        synood_score(feats, id_text, neg_text, tuned_neg_text=torch.randn(2, 32), tuned_index=torch.tensor([0, 9]))


def test_a_damaged_feature_cache_shard_is_recomputed_with_a_warning(tiny_clip, tmp_path):
    from synood_kit.features import image_features

    for k in range(4):
        _png(tmp_path / "imgs" / f"{k}.png", side=12 + k)
    image_set = ImageSet.from_folder(tmp_path / "imgs", labelled=False)
    first = image_features(tiny_clip, image_set, cache_root=tmp_path / "cache", shard_size=2, progress=False)
    shard = first.cache_path / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:40])  # damaged by something outside the kit
    with pytest.warns(UserWarning, match="shard-00001.safetensors is unreadable .*recomputing it"):
        again = image_features(tiny_clip, image_set, cache_root=tmp_path / "cache", shard_size=2, progress=False)
    assert torch.equal(again.features, first.features) and again.ids == first.ids


# ---------------------------------------------------------------- synthesis: bad items skipped, NaN guidance


@pytest.fixture(scope="module")
def pipe(tiny_inpaint_dir):
    return fault_workers.load_pipe(tiny_inpaint_dir)


CONFIG = dataclasses.replace(fault_workers.synthesis_config(), seed=1, batch_size=2)
_brightness = fault_workers.brightness


def _good_sources(n):
    g = torch.Generator().manual_seed(0)
    return [
        SynthesisSource(f"ok{i}", torch.rand(3, 32, 32, generator=g), "A photo only remain red background.")
        for i in range(n)
    ]


def test_zero_rounds_is_the_documented_unguided_baseline(pipe):
    """``rounds=0`` needs no target and runs one generation from the initial noise, with no gradient: exactly the
    first generation of a guided run with the same seed."""
    config = GuidanceConfig(rounds=0)
    assert config.rounds == 0 and config.target is None  # one generation, no noise update, no target needed
    images = torch.stack([s.image for s in _good_sources(2)])
    prompts = [s.prompt for s in _good_sources(2)]

    def run(guidance):
        generator = torch.Generator().manual_seed(5)
        return list(refine_steps(pipe, images, prompts, _brightness, guidance, CONFIG.inpaint, generator=generator))

    (baseline,) = run(config)  # exactly one generation
    assert baseline.round == 0 and baseline.grad is None and baseline.grad_magnitude is None
    assert baseline.rejected == ()  # no update was tried
    initial = torch.randn(baseline.noise.shape, generator=torch.Generator().manual_seed(5))  # the seed's first draw
    assert torch.equal(baseline.noise, initial)
    guided = run(GuidanceConfig(rounds=1, target=0.0, step_size=0.5))
    assert len(guided) == 2 and guided[0].grad is not None and not torch.equal(guided[1].noise, initial)
    for field in ("noise", "latent", "image", "score", "loss"):
        assert torch.equal(getattr(baseline, field), getattr(guided[0], field)), field


def test_bad_synthesis_sources_are_skipped_and_recorded_and_the_rest_goes_on(pipe, tmp_path):
    good = _good_sources(3)
    nan_image = good[0].image.clone()
    nan_image[0, 0, 0] = math.nan
    bad = [
        SynthesisSource("small", torch.rand(3, 16, 16), "p"),
        SynthesisSource("nan", nan_image, "p"),
        SynthesisSource("bright", good[0].image * 2 + 0.1, "p"),
        SynthesisSource("flat", torch.rand(32, 32), "p"),
        SynthesisSource("mask", good[0].image, "p", mask=torch.ones(1, 16, 16)),
        SynthesisSource("noprompt", good[0].image, "  "),
    ]
    sources = [bad[0], good[0], bad[1], bad[2], good[1], bad[3], bad[4], good[2], bad[5]]
    records = list(synthesize(pipe, sources, _brightness, tmp_path / "mixed", CONFIG, progress=False))
    assert sorted(r["id"] for r in records) == ["ok0", "ok1", "ok2"]
    skipped = read_skipped(tmp_path / "mixed")
    assert skipped == {
        "small": "image is 16x16, the run's images are 32x32",
        "nan": "image holds NaN or Inf values",
        "bright": skipped["bright"],
        "flat": "image must be a float (3, H, W) tensor in [0, 1], got (32, 32)",
        "mask": "mask must be (1, 32, 32) like its image, got (1, 16, 16)",
        "noprompt": "prompt must be non-empty text, got '  '",
    }
    assert skipped["bright"].startswith("image values must lie in [0, 1], got [0.1")
    # the good sources come out as a run of them alone would make them; a rerun records nothing twice
    list(synthesize(pipe, good, _brightness, tmp_path / "alone", CONFIG, progress=False))
    for s in good:
        assert (tmp_path / "mixed" / "images" / f"{s.id}.png").read_bytes() == (
            tmp_path / "alone" / "images" / f"{s.id}.png"
        ).read_bytes()
    assert list(synthesize(pipe, sources, _brightness, tmp_path / "mixed", CONFIG, progress=False)) == []
    assert len((tmp_path / "mixed" / "skipped.jsonl").read_text().splitlines()) == len(bad)


def test_a_synthesis_with_no_usable_source_is_an_error(pipe, tmp_path):
    with pytest.raises(ValueError, match="no source can be synthesised; first problems: .*'x': 'image holds NaN"):
        list(
            synthesize(
                pipe,
                [SynthesisSource("x", torch.full((3, 32, 32), math.nan), "p")],
                _brightness,
                tmp_path,
                CONFIG,
                progress=False,
            )
        )


def test_nan_and_inf_guidance_steps_are_rejected_recorded_and_the_run_goes_on(pipe, tmp_path):
    def poisoned(images):
        score = images.mean(dim=(1, 2, 3))
        return torch.stack([score[0] * math.nan, score[1] * math.inf, *score[2:]])

    config = SynthesisConfig(**{**CONFIG.__dict__, "batch_size": 3})
    records = list(synthesize(pipe, _good_sources(3), poisoned, tmp_path, config, progress=False))
    assert len(records) == 3 and len(list((tmp_path / "images").glob("*.png"))) == 3
    by_id = read_records(tmp_path)
    assert by_id["ok0"]["rejected"][0] and by_id["ok1"]["rejected"][0]  # non-finite gradients: noise kept
    assert not by_id["ok2"]["rejected"][0]  # the finite sample was updated
    assert math.isnan(by_id["ok0"]["scores"][0]) and math.isinf(by_id["ok1"]["scores"][0])


# ---------------------------------------------------------------- untrusted files


class _Evil:
    """Pickles to a call of ``os.system``: loading it with plain ``pickle`` would run the command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pt_checkpoint_with_pickled_code_is_refused_and_never_run(tmp_path, monkeypatch):
    import open_clip
    from conftest import TINY_CLIP_CFG

    from synood_kit.models import load_clip

    marker = tmp_path / "pwned"
    torch.save({"state_dict": _Evil(marker)}, tmp_path / "evil.pt")
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "synood-tiny-test", TINY_CLIP_CFG)
    with pytest.raises(
        ValueError, match=r"evil.pt: weights stored with pickle .*weights_only=True.*GLOBAL posix.system"
    ):
        load_clip("synood-tiny-test", pretrained=str(tmp_path / "evil.pt"))
    assert not marker.exists()


def test_a_trainer_optimizer_state_with_pickled_code_is_refused(tmp_path):
    from safetensors.torch import save_file

    from synood_kit.miniworld.training import load_checkpoint

    model = torch.nn.Linear(2, 2)
    ckpt = tmp_path / "run" / "checkpoint"
    ckpt.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt / "model.safetensors"))
    (ckpt / "state.json").write_text('{"step": 3}')
    marker = tmp_path / "pwned"
    torch.save({"optimizer": _Evil(marker)}, ckpt / "optimizer.pt")
    with pytest.raises(ValueError, match="optimizer.pt refused: it holds pickled objects or code"):
        load_checkpoint(tmp_path / "run", model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert not marker.exists()


def test_every_weights_file_the_kit_writes_is_safetensors(tiny_clip, tiny_clip_dir, clf_folder, tmp_path):
    from safetensors import safe_open

    from synood_kit.features import image_features, text_features
    from synood_kit.finetune_run import run_finetune

    _png(tmp_path / "imgs" / "a.png")
    image_features(
        tiny_clip,
        ImageSet.from_folder(tmp_path / "imgs", labelled=False),
        cache_root=tmp_path / "cache",
        progress=False,
    )
    text_features(tiny_clip, ["a dog"], cache_root=tmp_path / "cache", progress=False)
    words, data = fault_workers.finetune_inputs()
    run_finetune(
        tmp_path / "ft", words, data, adapter_config=AdapterConfig(epochs=1), label_config=LabelTuneConfig(epochs=1)
    )
    written = [p for p in [*tmp_path.rglob("*"), *clf_folder.rglob("*"), *tiny_clip_dir.rglob("*")] if p.is_file()]
    data_files = [p for p in written if p.suffix not in (".json", ".jsonl", ".png") and p.name != ".lock"]
    assert {p.suffix for p in data_files} == {".safetensors"}
    assert len(data_files) >= 6  # feature shard, text features, checkpoint, result, classifier and CLIP weights
    for p in data_files:
        with safe_open(str(p), framework="pt"):
            pass


def test_model_code_shipped_in_a_folder_is_refused_unless_trusted(tmp_path, monkeypatch):
    from synood_kit.mllm import load_mllm

    marker = tmp_path / "pwned"
    folder = tmp_path / "remote"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "evil",
                "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForImageTextToText": "evil.Evil"},
            }
        )
    )
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    with pytest.raises(ValueError, match=r"config.json asks to run the folder's own Python code \(auto_map\); refused"):
        load_mllm(folder)
    assert not marker.exists()
    # without auto_map, transformers is still told not to run remote code
    import transformers

    seen = {}

    def capture(path, **kwargs):
        seen.update(kwargs)
        raise OSError("stop here")

    (folder / "config.json").write_text('{"model_type": "llava"}')
    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", capture)
    with pytest.raises(WeightsNotFoundError):
        load_mllm(folder)
    assert seen["trust_remote_code"] is False and seen["local_files_only"] is True


def test_no_code_path_of_the_kit_turns_remote_code_on(tmp_path, monkeypatch):
    """Every loader that could run a model's own code tells its library not to, by default: load_mllm's model and
    processor, for a folder and a hub id (the test above refuses a folder that asks for its code), and
    load_inpaint_pipeline, which leaves diffusers' default (off) as it is."""
    import diffusers
    import transformers

    from synood_kit.mllm import load_mllm

    seen: dict[str, list[dict]] = {}

    def capture(name, then=None):
        def from_pretrained(path, *args, **kwargs):
            seen.setdefault(name, []).append(kwargs)
            if then is None:
                raise OSError("stop here")
            return then

        return from_pretrained

    folder = tmp_path / "mllm"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llava"}')
    model = torch.nn.Linear(1, 1)
    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", capture("model", model))
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", capture("processor"))
    for source in (folder, "synood-kit-test/no-such-mllm"):
        with pytest.raises(WeightsNotFoundError):
            load_mllm(source)
    assert len(seen["model"]) == len(seen["processor"]) == 2
    for kwargs in seen["model"] + seen["processor"]:
        assert kwargs["trust_remote_code"] is False

    pipe = tmp_path / "pipe"
    pipe.mkdir()
    (pipe / "model_index.json").write_text("{}")
    pipeline = diffusers.StableDiffusionInpaintPipeline
    monkeypatch.setattr(pipeline, "from_pretrained", capture("pipeline"))
    for source in (str(pipe), "synood-kit-test/no-such-inpainting"):
        with pytest.raises(WeightsNotFoundError):
            load_inpaint_pipeline(source)
    assert len(seen["pipeline"]) == 2
    for kwargs in seen["pipeline"]:
        assert kwargs.get("trust_remote_code", False) is False  # absent: diffusers' default, checked next
    monkeypatch.undo()

    # diffusers' default refuses a folder whose components need their own code, and never runs it
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil_pipe"
    (evil / "unet").mkdir(parents=True)
    (evil / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "StableDiffusionInpaintPipeline",
                "_diffusers_version": diffusers.__version__,
                "unet": ["evil_unet", "EvilUNet"],
            }
        )
    )
    (evil / "unet" / "config.json").write_text("{}")
    (evil / "unet" / "evil_unet.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nclass EvilUNet: pass\n")
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        load_inpaint_pipeline(str(evil))
    assert not marker.exists()


def test_a_symlink_out_of_an_image_lists_root_is_refused(tmp_path):
    (tmp_path / "outside").mkdir()
    _png(tmp_path / "outside" / "secret.png")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "link").symlink_to(tmp_path / "outside")
    (tmp_path / "list.txt").write_text("link/secret.png 0\n")
    with pytest.raises(ValueError, match="list.txt:1: path 'link/secret.png' leaves its root"):
        ImageSet.from_file_list(tmp_path / "list.txt", tmp_path / "data")


# ---------------------------------------------------------------- API keys


class _ChatHandler(http.server.BaseHTTPRequestHandler):
    seen_auth: list[str] = []
    status = 200
    next_statuses: list[int] = []  # consumed one per request before ``status`` applies

    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).seen_auth.append(self.headers.get("Authorization", ""))
        status = type(self).next_statuses.pop(0) if type(self).next_statuses else type(self).status
        if status != 200:
            body = {"error": {"message": "invalid api key", "type": "invalid_request_error"}}
        else:
            body = {
                "id": "c1",
                "object": "chat.completion",
                "created": 0,
                "model": "m",
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": "red background, dots"},
                    }
                ],
            }
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_the_endpoint_api_key_never_appears_in_records_or_logs(tmp_path, monkeypatch, caplog, capsys):
    from synood_kit.prompting import OpenAIBackend, prompt_contexts

    secret = "sk-test-9f8e7d6c5b4a-do-not-log"
    monkeypatch.setenv("SYNOOD_TEST_API_KEY", secret)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ChatHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    caplog.set_level(logging.DEBUG)
    try:
        backend = OpenAIBackend(url, "m", api_key_env="SYNOOD_TEST_API_KEY", timeout=10)
        items = [(f"img{i}", torch.rand(3, 16, 16)) for i in range(2)]
        rows = prompt_contexts(backend, items, tmp_path / "contexts.jsonl", progress=False)
        assert [r["context"] for r in rows] == [["red background", "dots"]] * 2
        _ChatHandler.status = 401
        import openai

        with pytest.raises(openai.AuthenticationError) as refused:  # the endpoint refuses the key: raised at once
            OpenAIBackend(url, "m", api_key_env="SYNOOD_TEST_API_KEY", timeout=10).ask(items[0][1][None], "q?")
    finally:
        _ChatHandler.status = 200
        server.shutdown()
    assert _ChatHandler.seen_auth[0] == f"Bearer {secret}"  # the key was sent to the endpoint, and only there
    out = capsys.readouterr()
    assert "chat/completions" in caplog.text  # the client's request logs were captured
    for text in (
        (tmp_path / "contexts.jsonl").read_text(),
        caplog.text,
        out.out,
        out.err,
        backend.name,
        repr(backend),
        str(refused.value),
        repr(refused.value),
    ):
        assert secret not in text


def test_an_image_the_endpoint_rejects_is_recorded_as_a_fallback_and_the_batch_goes_on(tmp_path):
    from synood_kit.prompting import OpenAIBackend, prompt_contexts

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ChatHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _ChatHandler.next_statuses = [200, 400, 200]  # the second image is refused (e.g. unreadable for the server)
    try:
        backend = OpenAIBackend(f"http://127.0.0.1:{server.server_address[1]}/v1", "m", timeout=10)
        rows = prompt_contexts(
            backend, [(f"img{i}", torch.rand(3, 16, 16)) for i in range(3)], tmp_path / "c.jsonl", progress=False
        )
    finally:
        _ChatHandler.next_statuses = []
        server.shutdown()
    assert [r["fallback"] for r in rows] == [None, "empty reply", None]
    assert rows[1]["prompt"] == "A photo only remain the background." and rows[2]["context"] == [
        "red background",
        "dots",
    ]


def test_every_row_of_the_hardening_table_names_a_test_that_exists():
    import ast
    import re

    root = Path(__file__).resolve().parents[1]
    table = (root / "docs" / "hardening.md").read_text()
    rows = [
        line
        for line in table.splitlines()
        if line.startswith("| ") and not line.startswith(("| input", "| fault", "| parser", "|---"))
    ]
    refs = set(re.findall(r"tests/(\w+\.py)::(\w+)", table))
    assert len(rows) >= 100 and len(refs) >= 80
    for file, name in refs:
        tree = ast.parse((root / "tests" / file).read_text())
        assert name in {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}, f"{file}::{name}"


# ---------------------------------------------------------------- second round: one image reader, lists, folders


def test_a_header_claiming_20000x20000_pixels_is_refused_by_the_kits_limit_before_decoding(tmp_path):
    """PIL's own guard raises DecompressionBombError from Image.open (a traceback before); the kit's limit answers."""
    import warnings

    from synood_kit.data import read_image_header

    Image.new("1", (20000, 20000)).save(tmp_path / "bomb.png")  # 400 Mpx declared, ~48 kB on disk
    assert (tmp_path / "bomb.png").stat().st_size < 100_000
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning escapes either
        for read in (load_image, read_image_header):
            with pytest.raises(
                ImageLoadError, match=r"bomb.png: 400000000 pixels \(from its header\) is above the limit"
            ):
                read(tmp_path / "bomb.png")
    _png(tmp_path / "small.png", side=100)  # the kit's limit, not PIL's: any value applies
    with pytest.raises(ImageLoadError, match=r"small.png: 100x100 pixels is above the limit of 5000"):
        load_image(tmp_path / "small.png", max_pixels=5000)


def test_an_orientation_tag_is_applied_so_an_image_is_read_as_shown(tmp_path):
    from synood_kit.data import read_image_header

    stored = torch.zeros(20, 10, 3, dtype=torch.uint8)
    stored[0, :] = 255  # the stored image's top row is white
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: the stored top row becomes the right column
    Image.fromarray(stored.numpy()).save(tmp_path / "turned.png", exif=exif.tobytes())
    image = load_image(tmp_path / "turned.png")
    assert image.shape == (3, 10, 20)
    assert image[:, :, -1].min() == 1.0 and image[:, :, :-1].max() == 0.0
    header = read_image_header(tmp_path / "turned.png")
    assert (header.width, header.height, header.orientation) == (20, 10, 6)


def _mode_image(path: Path, mode: str, value) -> None:
    import numpy as np

    if mode == "F":
        Image.fromarray(np.full((10, 12), value, np.float32), "F").save(path)
    elif mode == "I":
        Image.fromarray(np.full((10, 12), value, np.int32), "I").save(path)
    else:
        Image.new(mode, (12, 10), value).save(path)


@pytest.mark.parametrize(
    ("name", "mode", "value", "expected"),
    [
        ("float.tif", "F", 0.5, 0.5),  # was read as all black
        ("i8.tif", "I", 200, 200 / 255),
        ("i16.tif", "I", 40000, 40000 / 65535),
        ("i32.tif", "I", 2**30, 2**30 / (2**31 - 1)),  # was clamped to white
        ("cmyk.jpg", "CMYK", (0, 0, 0, 0), 1.0),
        ("lab.tif", "LAB", (255, 128, 128), 1.0),
    ],
)
def test_integer_and_float_images_are_scaled_by_their_range(tmp_path, name, mode, value, expected):
    _mode_image(tmp_path / name, mode, value)
    image = load_image(tmp_path / name)
    assert image.shape == (3, 10, 12) and image.dtype == torch.float32
    assert float(image.mean()) == pytest.approx(expected, abs=0.01)


@pytest.mark.parametrize(
    ("name", "mode", "value", "message"),
    [
        ("f200.tif", "F", 200.0, r"a float image with values in \[200, 200\]; float images must lie in \[0, 1\]"),
        ("fnan.tif", "F", float("nan"), "a float image holding NaN or Inf values"),
        ("ineg.tif", "I", -5, "a I image holding negative values"),
    ],
)
def test_images_whose_values_cannot_be_read_as_intensities_are_refused(tmp_path, name, mode, value, message):
    _mode_image(tmp_path / name, mode, value)
    with pytest.raises(ImageLoadError, match=rf"{name}: {message}"):
        load_image(tmp_path / name)


def test_an_image_mode_the_kit_does_not_convert_is_refused_by_name(tmp_path, monkeypatch):
    """Premultiplied LA ("La") has no conversion to RGB in PIL: the reader names the mode instead of guessing. No
    file format stores it, so PIL's opener is made to return one."""
    import PIL.Image

    _png(tmp_path / "la.png")
    monkeypatch.setattr(PIL.Image, "open", lambda *a, **k: PIL.Image.new("La", (10, 10)))
    with pytest.raises(ImageLoadError, match=r"la.png: image mode 'La' is not supported; accepted: 1, L, RGB"):
        load_image(tmp_path / "la.png")


def test_an_oversized_png_text_chunk_is_named_and_skipped_by_every_batch_reader(tiny_clip, tmp_path):
    """PIL raises a bare ValueError for a text chunk above its limit; synthesis's source reader stopped on it."""
    from PIL import PngImagePlugin

    from synood_kit.features import image_features
    from synood_kit.synthesis_run import read_sources

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * 3_000_000, zip=True)  # 3 kB on disk, 3 MB of text
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (16, 16)).save(folder / "chunk.png", pnginfo=info)
    _png(folder / "good.png", side=16)
    with pytest.raises(ImageLoadError, match=r"chunk.png: not a readable image \(ValueError: Decompressed data"):
        load_image(folder / "chunk.png")
    image_set = ImageSet.from_folder(folder, labelled=False)
    skipped = []
    batches = list(read_sources(list(image_set.items), 16, 4, on_skip=lambda item, reason: skipped.append(item.id)))
    assert skipped == ["chunk"] and [it.id for it in batches[0][0]] == ["good"]
    feats = image_features(tiny_clip, image_set, cache_root=tmp_path / "cache", progress=False)
    assert feats.ids == ["good"] and [s["id"] for s in feats.skipped] == ["chunk"]
    assert "chunk.png: not a readable image" in feats.skipped[0]["reason"]


def test_an_image_list_label_that_is_not_an_integer_is_named_not_read_as_a_path(tmp_path):
    _png(tmp_path / "data" / "a.png")
    _png(tmp_path / "data" / "b c.png")  # a path with a space and no label is still read
    (tmp_path / "list.txt").write_text("b c.png\na.png dog\n")
    with pytest.raises(ValueError, match=r"list.txt:2: label 'dog' of 'a.png' is not an integer"):
        ImageSet.from_file_list(tmp_path / "list.txt", tmp_path / "data")
    (tmp_path / "list.txt").write_text("b c.png\n")
    assert [(it.id, it.label) for it in ImageSet.from_file_list(tmp_path / "list.txt", tmp_path / "data").items] == [
        ("b c", -1)
    ]


def test_an_id_list_or_manifest_needs_labels_within_the_class_names(tmp_path):
    """``evaluate --id list.txt --class-names names.txt`` read a label past the names (synthesis refused it)."""
    from synood_kit.benchmark import benchmark_from_sources

    _png(tmp_path / "data" / "a.png")
    _png(tmp_path / "data" / "b.png")
    _png(tmp_path / "ood" / "o.png")
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    for text, message in (
        ("a.png 0\nb.png 2\n", r"id.txt:2: label 2 is not a class index in \[0, 2\) of the 2 class names"),
        ("a.png 0\nb.png\n", r"id.txt:2: 'b.png' has no label: an ID image list needs '<path> <label>'"),
    ):
        (tmp_path / "id.txt").write_text(text)
        bench = benchmark_from_sources(
            str(tmp_path / "id.txt"),
            [("o", str(tmp_path / "ood"))],
            str(tmp_path / "names.txt"),
            data_root=str(tmp_path / "data"),
        )
        with pytest.raises(ValueError, match=message):
            bench.id_test  # noqa: B018
    path = _manifest(tmp_path, [GOOD, {**GOOD, "id": "b", "label": 3}])
    with pytest.raises(ValueError, match=r"manifest.jsonl:2: .*label 3 is not a class index in \[0, 2\)"):
        ImageSet.from_manifest(path, "train", n_classes=2)
    (tmp_path / "empty.txt").write_text("\n")  # with the default 'auto' an ID list failed at "texts is empty"
    with pytest.raises(ValueError, match=r"--class-names: the ID class names are empty"):
        benchmark_from_sources(str(tmp_path / "id.txt"), [("o", str(tmp_path / "ood"))], str(tmp_path / "empty.txt"))


@pytest.mark.parametrize(
    ("habit", "encode"),
    [
        ("UTF-8 with a byte-order mark (Notepad)", lambda t: b"\xef\xbb\xbf" + t.encode()),
        ("UTF-16 with a byte-order mark (Notepad's 'Unicode')", lambda t: t.encode("utf-16")),
        ("CRLF line endings", lambda t: t.replace("\n", "\r\n").encode()),
        ("old Mac CR line endings", lambda t: t.replace("\n", "\r").encode()),
        (
            "tabs, trailing spaces, no final newline",
            lambda t: t.replace(" ", "\t").replace("\n", "  \n").rstrip().encode(),
        ),
    ],
)
def test_image_lists_saved_by_common_editors_keep_every_entry(tmp_path, habit, encode):
    for name in ("a", "b", "c"):
        _png(tmp_path / "data" / f"{name}.png")
    (tmp_path / "list.txt").write_bytes(encode("a.png 0\nb.png 1\nc.png 2\n"))
    items = ImageSet.from_file_list(tmp_path / "list.txt", tmp_path / "data").items
    assert [(it.id, it.label) for it in items] == [("a", 0), ("b", 1), ("c", 2)], habit


def test_a_list_in_another_encoding_is_refused_naming_file_and_line(tmp_path):
    _png(tmp_path / "data" / "a.png")
    (tmp_path / "list.txt").write_bytes(b"a.png 0\ncaf\xe9.png 1\n")  # Latin-1
    with pytest.raises(ValueError, match=r"list.txt is not UTF-8 text: line 2 holds byte 0xe9; save the image list"):
        ImageSet.from_file_list(tmp_path / "list.txt", tmp_path / "data")
    (tmp_path / "list.txt").write_bytes("a.png 0\n".encode("utf-16-le"))  # UTF-16 without its mark
    with pytest.raises(ValueError, match=r"list.txt is not UTF-8 text: line 1 holds NUL bytes"):
        ImageSet.from_file_list(tmp_path / "list.txt", tmp_path / "data")


def test_an_output_folder_holding_another_run_is_refused_naming_the_difference(tmp_path):
    from synood_kit.storage import claim_output

    out = tmp_path / "out"
    with claim_output(out, "evaluation", {"n_boot": 0, "sample": None}, outputs=("table.csv",)):
        (out / "table.csv").write_text("first")
    with claim_output(out, "evaluation", {"n_boot": 0, "sample": None}, outputs=("table.csv",)):
        pass  # the same run: taken again (to resume, or recompute the same outputs)
    other = r"holds another evaluation run with other settings \(differs in \['settings.n_boot'\]: settings.n_boot: 0 "
    with (
        pytest.raises(ValueError, match=other + r"there, 10 now\).*--overwrite"),
        claim_output(out, "evaluation", {"n_boot": 10, "sample": None}, outputs=("table.csv",)),
    ):
        pass
    kind = r"holds a run of another kind \(evaluation\) with other settings \(differs in \['purpose'"
    with pytest.raises(ValueError, match=kind), claim_output(out, "synthesis", {"n_boot": 0, "sample": None}):
        pass
    assert (out / "table.csv").read_text() == "first"  # the refused runs wrote nothing
    with claim_output(out, "evaluation", {"n_boot": 10, "sample": None}, overwrite=True, outputs=("table.csv",)):
        assert not (out / "table.csv").exists()  # the other run's outputs were removed
    assert json.loads((out / "run.json").read_text())["settings"]["n_boot"] == 10


def test_a_run_that_fails_before_its_first_output_leaves_the_folder_free(tmp_path):
    from synood_kit.storage import claim_output

    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError), claim_output(out, "evaluation", {"k": 1}):
        raise FileNotFoundError("a model folder that does not exist")
    assert not (out / "run.json").exists()
    with claim_output(out, "evaluation", {"k": 2}):  # a corrected rerun is not refused
        pass


def test_creating_an_output_folder_on_a_read_only_or_full_file_system_is_an_output_error(tmp_path, monkeypatch):
    """``mkdir`` raised a bare OSError (a traceback); every writer of ``--out`` now takes its lock, whose ``mkdir``
    is explained. Simulated: the tests run as root, which a real read-only folder does not stop."""
    import errno

    from synood_kit.storage import OutputError, check_output_path, claim_output

    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self.name == "new":
            raise OSError(errno.EROFS, "Read-only file system")
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    read_only_fs = r"cannot write .*new/.lock: the file system is read-only"
    with pytest.raises(OutputError, match=read_only_fs), claim_output(tmp_path / "new", "evaluation", {}):
        pass
    monkeypatch.undo()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match=r"cannot create .*afile/out: .*afile is a file, not a folder"):
        check_output_path(tmp_path / "afile" / "out")

    class Stat:
        f_flag, f_blocks, f_bavail = os.ST_RDONLY, 100, 50

    monkeypatch.setattr(os, "statvfs", lambda p: Stat)
    with pytest.raises(OutputError, match=r"cannot write .*out: the file system is read-only"):
        check_output_path(tmp_path / "out")
    Stat.f_flag, Stat.f_bavail = 0, 0
    with pytest.raises(OutputError, match=r"cannot write .*out: the disk is full"):
        check_output_path(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_steps_times_strength_below_one_is_refused_before_any_work():
    """``--steps 1`` at strength 0.6 gave diffusers no step: an IndexError after synthesis.json was written."""
    from synood_kit.preset import load_preset

    preset = load_preset("miniworld")
    with pytest.raises(
        ValueError,
        match=r"num_inference_steps x inpaint.strength = 1 x 0.6 leaves no denoising step; need num_inference_steps >= 2",
    ):
        preset.override({"synthesis.inpaint.num_inference_steps": 1})
    assert preset.override({"synthesis.inpaint.num_inference_steps": 2}).synthesis.inpaint.num_inference_steps == 2


@pytest.mark.parametrize("device", ["quantum", "cuda:99", "meta", "mps"])
def test_a_device_this_machine_does_not_have_is_named(device):
    from synood_kit.models import available_devices, check_device

    if device in available_devices() or (device == "cuda:99" and torch.cuda.device_count() > 99):
        pytest.skip(f"this machine has {device}")
    with pytest.raises(ValueError, match=rf"device '{device}'.*(this machine|it) has: cpu"):
        check_device(device)
    assert check_device("cpu") == torch.device("cpu")


# ---------------------------------------------------------------- second round: untrusted weights, one message


def _assert_refused_and_never_run(error, marker: Path, found: str) -> None:
    text = str(error.value)
    assert found in text and "weights stored with pickle" in text and "safetensors.torch.save_file" in text
    assert "weights_only=False" not in text and "trust" not in text  # never advice to trust the file
    assert not marker.exists()


def test_pickled_weights_in_a_clip_classifier_or_mllm_folder_are_refused_with_how_to_convert(
    clf_folder, tiny_clip_dir, tmp_path
):
    import shutil

    from synood_kit.mllm import load_mllm
    from synood_kit.models import load_clip

    marker = tmp_path / "pwned"
    # classifier folder: model.pt instead of model.safetensors
    (clf_folder / "model.safetensors").unlink()
    torch.save({"state": _Evil(marker)}, clf_folder / "model.pt")
    with pytest.raises(ValueError) as refused:
        load_classifier(str(clf_folder))
    _assert_refused_and_never_run(refused, marker, "model.pt")
    # CLIP folder: open_clip_pytorch_model.bin only
    clip = tmp_path / "clip"
    shutil.copytree(tiny_clip_dir, clip)
    (clip / "open_clip_model.safetensors").unlink()
    torch.save({"state": _Evil(marker)}, clip / "open_clip_pytorch_model.bin")
    with pytest.raises(ValueError) as refused:
        load_clip(str(clip))
    _assert_refused_and_never_run(refused, marker, "open_clip_pytorch_model.bin")
    # MLLM folder: pytorch_model.bin (transformers said "UnpicklingError ... weights_only=False")
    mllm = tmp_path / "mllm"
    mllm.mkdir()
    (mllm / "config.json").write_text('{"model_type": "llava"}')
    torch.save({"state": _Evil(marker)}, mllm / "pytorch_model.bin")
    with pytest.raises(ValueError) as refused:
        load_mllm(mllm)
    _assert_refused_and_never_run(refused, marker, "pytorch_model.bin")


def test_a_pipeline_folder_with_pickled_weights_is_refused_not_called_unavailable(
    tiny_inpaint_dir, mini_benchmark, tmp_path, capsys
):
    import shutil

    from synood_kit.cli import main

    marker = tmp_path / "pwned"
    pipe = tmp_path / "pipe"
    shutil.copytree(tiny_inpaint_dir, pipe)
    for f in (pipe / "unet").glob("*.safetensors"):
        f.unlink()
    torch.save({"state": _Evil(marker)}, pipe / "unet" / "diffusion_pytorch_model.bin")
    args = ["synthesize", "--benchmark", str(mini_benchmark), "--pipeline", str(pipe), "--clip", "none"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "in-painting pipeline" in err and "diffusion_pytorch_model.bin: weights stored with pickle" in err
    assert "not available offline" not in err and "weights_only=False" not in err and not marker.exists()
    assert not (tmp_path / "out").exists()
    # the loader itself refuses it too, for a notebook or script that calls it directly
    from synood_kit.inpainting import load_inpaint_pipeline

    with pytest.raises(ValueError) as refused:
        load_inpaint_pipeline(str(pipe))
    _assert_refused_and_never_run(refused, marker, "diffusion_pytorch_model.bin")


def test_a_finetuning_checkpoint_that_is_a_pickle_or_holds_nan_is_refused_naming_the_file(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"adapter": _Evil(marker)}, tmp_path / "ft.safetensors")  # a pickle under a safetensors name
    with pytest.raises(ValueError) as refused:
        load_finetune(tmp_path / "ft.safetensors", WORDS)
    _assert_refused_and_never_run(refused, marker, "ft.safetensors")
    adapter = ResidualAdapter(16)
    with torch.no_grad():
        next(adapter.parameters()).fill_(float("nan"))
    path = save_finetune(tmp_path / "nan.safetensors", WORDS, adapter)
    with pytest.raises(ValueError, match=r"nan.safetensors holds NaN or Inf values in \['adapter\..*diverged"):
        load_finetune(path, WORDS, dim=16)
