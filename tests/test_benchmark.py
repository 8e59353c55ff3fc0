"""Benchmarks as data, presets as files, published numbers by canonical name, and the library pieces the workflow and
the notebooks share (prompts from parsed replies, the boundary target, sharded feature extraction)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from synood_kit.benchmark import benchmark_from_sources, imagenet_class_names, imagenet_wnids, parse_roots
from synood_kit.preset import Preset, load_preset, preset_names, preset_toml
from synood_kit.registry import BUILTIN_BENCHMARKS, load_benchmark, load_run


def _png(path, side=12, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (side, side), (value, 2, 3)).save(path)


@pytest.fixture
def tree(tmp_path):
    """An ImageFolder tree with two wnid classes (train, val), an OOD folder, and an OpenOOD-style list."""
    for split, n in (("train", 3), ("val", 2)):
        for wnid in ("n01440764", "n02102040"):
            for i in range(n):
                _png(tmp_path / "imagenet" / split / wnid / f"{i}.JPEG", value=i)
    for i in range(3):
        _png(tmp_path / "inat" / "x" / f"{i}.jpg", value=i)
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "ood.txt").write_text("x/0.jpg 5\nx/1.jpg 5\n")
    return tmp_path


def _describe(tmp_path, text):
    path = tmp_path / "benchmark.toml"
    path.write_text(text)
    return path


def test_parse_roots_reads_named_roots_and_one_base_folder():
    assert parse_roots("imagenet=/a,inaturalist=/b") == {"imagenet": "/a", "inaturalist": "/b"}
    assert parse_roots("/data") == {"": "/data"} and parse_roots(None) == {} and parse_roots({"x": 1}) == {"x": "1"}
    with pytest.raises(ValueError, match="two base folders"):
        parse_roots("/a,/b")
    with pytest.raises(ValueError, match="NAME=PATH"):
        parse_roots("=/a")


def test_imagenet_names_and_wnids_come_from_the_installed_packages():
    wnids, names = imagenet_wnids(), imagenet_class_names()
    assert len(wnids) == len(names) == 1000 and wnids[0] == "n01440764" and names[0] == "tench"
    assert wnids == tuple(sorted(wnids))


def test_wnid_folders_get_their_imagenet_names_and_a_subset_works(tree):
    description = _describe(
        tree,
        """name = "subset"\n[splits.id_train]\nfolder = "${imagenet}/train"\n[splits.id_test]\nfolder = "${imagenet}/val"\n"""
        """[splits.inat]\nfolder = "inat"\ngroup = "far"\n[splits.listed]\nlist = "lists/ood.txt"\ndata_root = "inat"\n""",
    )
    bench = load_benchmark(description, {"imagenet": str(tree / "imagenet")})
    assert bench.class_names == ("tench", "English Springer Spaniel")  # ImageNet indices 0 and 217
    assert bench.ood_splits == ("inat", "listed") and bench.groups == {"far": ("inat",), "ood": ("listed",)}
    assert list(bench.id_train.labels) == [0, 0, 0, 1, 1, 1] and list(bench.id_test.labels) == [0, 0, 1, 1]
    assert set(bench.split("listed").labels) == {-1}  # an OOD list's labels are read as OOD, whatever they say
    described = bench.describe()
    assert {s: v["images"] for s, v in described["splits"].items()} == {
        "id_train": 6,
        "id_test": 4,
        "inat": 3,
        "listed": 2,
    }
    assert bench.check() == {s: {"images": v["images"], "checked": v["images"]} for s, v in described["splits"].items()}


def test_builtin_descriptions_take_a_base_folder_or_named_roots(tree):
    (tree / "SUN").mkdir()
    bench = load_benchmark(
        "imagenet-mos",
        f"{tree},inaturalist={tree / 'inat'},sun={tree / 'SUN'},places={tree / 'inat'},textures={tree / 'inat'}",
    )
    assert bench.name == "imagenet-mos" and bench.preset == "paper" and len(bench.class_names) == 2
    assert bench.ood_splits == ("inaturalist", "sun", "places", "textures")
    assert set(BUILTIN_BENCHMARKS) == {"miniworld", "imagenet-mos", "openood-v1.5-imagenet"}
    with pytest.raises(FileNotFoundError, match="folder .*iNaturalist does not exist"):
        load_benchmark("imagenet-mos", str(tree))  # the default sub-folder under the base is missing
    with pytest.raises(ValueError, match=r"names the data root \$\{openood\}, which was not given"):
        load_benchmark("openood-v1.5-imagenet")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name = "x"\n[splits.id_test]\nfolder = "imagenet/val"\n', "no OOD split"),
        ('name = "x"\n[splits.inat]\nfolder = "inat"\n', "has no id_test split"),
        (
            'name = "x"\n[splits.id_test]\nfolder = "imagenet/val"\nlist = "a"\n[splits.o]\nfolder = "inat"\n',
            "exactly one of",
        ),
        (
            'name = "x"\n[splits.id_test]\nfolder = "imagenet/val"\ngroup = "near"\n[splits.o]\nfolder = "inat"\n',
            "takes no group",
        ),
        ('name = "x"\ncolour = 1\n', r"unknown key\(s\) \['colour'\]"),
        ('[splits.id_test]\nfolder = "imagenet/val"\n', "needs a name"),
        (
            'name = "x"\nclass_names = "imagenet"\n[splits.id_test]\nfolder = "imagenet/val"\n[splits.o]\nfolder = "inat"\n',
            "use class_names = 'auto'",
        ),
        (
            'name = "x"\nclass_names = ["a"]\n[splits.id_test]\nfolder = "imagenet/val"\n[splits.o]\nfolder = "inat"\n',
            "1 class names for 2 ID class folders",
        ),
        ('name = "x"\n[splits.id_test]\nfolder = "nowhere"\n[splits.o]\nfolder = "inat"\n', "does not exist"),
    ],
)
def test_bad_descriptions_are_refused_naming_the_problem(tree, text, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_benchmark(_describe(tree, text))


def test_an_id_list_label_beyond_the_class_names_is_refused_naming_the_split(tree):
    (tree / "lists" / "id.txt").write_text("x/0.jpg 0\nx/1.jpg 7\n")
    bench = benchmark_from_sources(
        str(tree / "lists" / "id.txt"), [("o", str(tree / "inat"))], ["a", "b"], data_root=str(tree / "inat")
    )
    with pytest.raises(ValueError, match=r"split id_test .*label 7 is not a class index in \[0, 2\)"):
        bench.id_test  # noqa: B018


def test_check_refuses_unreadable_images_and_ood_images_that_are_also_id(tree):
    (tree / "inat" / "x" / "2.jpg").write_bytes(b"not an image")
    bench = load_benchmark(
        _describe(
            tree,
            'name = "x"\n[splits.id_test]\nfolder = "imagenet/val"\n[splits.o]\nfolder = "inat"\n[splits.same]\nfolder = "imagenet/val"\n',
        )
    )
    with pytest.raises(ValueError) as error:
        bench.check()
    assert "o: 1 unreadable image(s) of 3 checked" in str(error.value) and "same: 4 image(s) are also ID images" in str(
        error.value
    )


def test_a_name_that_is_no_benchmark_is_an_error_not_the_miniworld(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a built-in"):
        load_benchmark("imagenet")
    with pytest.raises(FileNotFoundError, match="holds no benchmark.toml"):
        load_benchmark(tmp_path)


def test_every_shipped_preset_names_every_field_and_loads():
    import dataclasses

    from synood_kit.config import read_table

    def leaves(obj, prefix=""):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            yield from leaves(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else [f"{prefix}{f.name}"]

    def keys(table, prefix=""):
        for k, v in table.items():
            yield from keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]

    unset_by_design = {"synthesis.guidance.target"}  # set by each run from its ID training images
    assert set(preset_names()) == {"miniworld", "paper", "official"}
    for name in preset_names():
        preset = load_preset(name)
        stated = set(keys(read_table(f"synood_kit/presets/{name}.toml")))
        unset = {k for k in leaves(preset) if _get(preset, k) is None}
        assert set(leaves(preset)) - unset_by_design - unset <= stated, name
        assert preset.name == name
    assert load_preset("miniworld") == Preset()  # the dataclass defaults are the mini-world recipe
    assert load_preset("paper").models.clip == "ViT-B-16" and load_preset("official").synthesis.target == "official"


def _get(obj, dotted):
    for key in dotted.split("."):
        obj = getattr(obj, key)
    return obj


def test_a_preset_file_of_your_own_and_overrides(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(preset_toml(load_preset("paper")).replace('device = "cuda"', 'device = "cuda:1"'))
    mine = load_preset(path)
    assert mine.models.device == "cuda:1" and mine.name == "paper"
    (tmp_path / "short.toml").write_text("[adapter]\nepochs = 7\n")
    short = load_preset(tmp_path / "short.toml")
    assert short.name == "short" and short.adapter.epochs == 7 and short.models == Preset().models
    changed = short.override({"synthesis.guidance.rounds": 0, "models.clip": None})
    assert changed.synthesis.guidance.rounds == 0 and changed.models.clip == "miniworld"
    with pytest.raises(ValueError, match=r"preset.synthesis.guidance: unknown field 'round'"):
        short.override({"synthesis.guidance.round": 1})
    with pytest.raises(TypeError, match="expected int"):
        short.override({"adapter.epochs": "many"})
    with pytest.raises(ValueError, match="guidance.target and .official_rounds are set by the run"):
        short.override({"synthesis.guidance.target": -5.0})
    with pytest.raises(FileNotFoundError, match="neither a shipped preset"):
        load_preset("fast")


def test_load_run_needs_a_preset_where_the_benchmark_names_none(tree):
    description = _describe(
        tree, 'name = "x"\n[splits.id_test]\nfolder = "imagenet/val"\n[splits.o]\nfolder = "inat"\n'
    )
    with pytest.raises(ValueError, match="names no preset"):
        load_run(description)
    bench, preset = load_run(description, preset="paper", overrides={"models.device": "cpu"})
    assert preset.name == "paper" and preset.models.device == "cpu" and bench.name == "x"


def test_ledger_compares_splits_by_canonical_name_and_averages_only_over_the_papers_splits():
    import pandas as pd

    from synood_kit.ledger import canonical_split, ledger

    assert [
        canonical_split(n) for n in ("inat", "iNaturalist", "INATURALIST", "dtd", "ssb_hard", "openimage_o", "x")
    ] == ["iNaturalist", "iNaturalist", "iNaturalist", "Textures", "SSB-hard", "OpenImage-O", "x"]
    rows = [
        {"method": "NegLabel", "ood_set": s, "FPR95_IDpos": v, "AUROC": 0.9}
        for s, v in (("inat", 0.1), ("sun", 0.3), ("mean", 0.2))
    ]
    book = ledger(pd.DataFrame(rows), "ImageNet-1k (MOS)")
    row = book[(book.method == "NegLabel") & (book.ood_set == "iNaturalist") & (book.metric == "FPR95_IDpos")].iloc[0]
    assert row.measured == pytest.approx(10.0) and row.reported == pytest.approx(1.91)
    mean = book[(book.method == "NegLabel") & (book.ood_set == "mean") & (book.metric == "FPR95_IDpos")].iloc[0]
    assert pd.isna(mean.measured) and mean.note.endswith("not measured: Places, Textures")  # never the run's own mean
    rows += [{"method": "NegLabel", "ood_set": s, "FPR95_IDpos": 0.5, "AUROC": 0.9} for s in ("places", "textures")]
    mean = ledger(pd.DataFrame(rows), "ImageNet-1k (MOS)")
    mean = mean[(mean.method == "NegLabel") & (mean.ood_set == "mean") & (mean.metric == "FPR95_IDpos")].iloc[0]
    assert mean.measured == pytest.approx(100 * (0.1 + 0.3 + 0.5 + 0.5) / 4)


def test_prompts_keep_whole_elements_or_cut_as_the_official_code_does():
    from synood_kit.inpainting import context_prompt
    from synood_kit.prompting import PromptingConfig, parse_reply, reply_prompt

    answer = "orange square, brown brick wall, a gradient background, grey sky and some remaining clouds over the sea"
    parsed = parse_reply(answer)
    kept = reply_prompt(answer, parsed)
    assert kept == "A photo only remain orange square, brown brick wall, gradient background, grey sky."
    official = reply_prompt(answer, parsed, PromptingConfig(truncate="official"))
    assert official == "A photo only remain " + answer[:73] + "."
    assert context_prompt(["a" * 40 + " " + "b" * 40]) == "A photo only remain " + "a" * 40 + "."
    assert reply_prompt("", parse_reply("")) == "A photo only remain the background."
    with pytest.raises(ValueError, match="at least one context element"):
        context_prompt([])


def test_the_boundary_target_is_a_quantile_of_training_scores_or_the_official_margin():
    from synood_kit.guidance import OFFICIAL_MARGIN
    from synood_kit.synthesis_run import SynthesisSettings, guidance_config, guidance_target

    scores = torch.arange(101, dtype=torch.float32)
    assert guidance_target(scores, SynthesisSettings()) == pytest.approx(5.0)
    assert guidance_target(scores, SynthesisSettings(target_quantile=0.5)) == pytest.approx(50.0)
    official = SynthesisSettings(target="official")
    assert guidance_target(scores, official) == OFFICIAL_MARGIN
    assert guidance_config(official, OFFICIAL_MARGIN).official_rounds
    with pytest.raises(ValueError, match="use target 'boundary' with a CLIP scorer"):
        SynthesisSettings(target="official", scorer="clip-mcm")


def test_sources_are_chosen_per_class_first_or_by_jpeg_bytes_per_pixel(tmp_path):
    import numpy as np

    from synood_kit.data import ImageSet
    from synood_kit.synthesis_run import SourcesConfig, choose_sources

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        for i, noisy in enumerate((False, True, False)):
            array = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) if noisy else np.full((40, 40, 3), 9, np.uint8)
            (tmp_path / c).mkdir(exist_ok=True)
            Image.fromarray(array).save(tmp_path / c / f"{i}.jpg", quality=95)
    images = ImageSet.from_folder(tmp_path)
    assert [it.id for it in choose_sources(images, SourcesConfig(per_class=1))] == ["a/0", "b/0"]
    dense = choose_sources(images, SourcesConfig(per_class=1, selection="jpeg_bytes_per_pixel"))
    assert [it.id for it in dense] == ["a/1", "b/1"]  # the noisy JPEG has the most bytes per pixel


def test_feature_extraction_shards_are_disjoint_and_fill_one_cache(tiny_clip, tmp_path):
    from synood_kit.data import ImageSet
    from synood_kit.features import extract_features, image_features

    for i in range(7):
        _png(tmp_path / "imgs" / f"{i}.png", side=16, value=30 * i)
    images = ImageSet.from_folder(tmp_path / "imgs", labelled=False)
    kw = {"cache_root": tmp_path / "cache", "shard_size": 2, "progress": False}
    done = [extract_features(tiny_clip, images, rank, 2, **kw) for rank in (0, 1)]
    assert [d["shards"] for d in done] == [2, 2] and sum(d["images"] for d in done) == 7
    shards = sorted(p.name for p in next((tmp_path / "cache").rglob("info.json")).parent.glob("shard-*"))
    assert shards == [f"shard-{s:05d}.safetensors" for s in range(4)]
    whole = image_features(tiny_clip, images, **kw)
    alone = image_features(tiny_clip, images, cache_root=tmp_path / "other", shard_size=2, progress=False)
    torch.testing.assert_close(whole.features, alone.features)
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        extract_features(tiny_clip, images, 2, 2, **kw)


def test_a_synthesis_folder_records_its_benchmark_and_refuses_another(tmp_path):
    from synood_kit.experiments import check_synthesis_folder

    (tmp_path / "syn").mkdir()
    (tmp_path / "syn" / "synthesis.json").write_text(
        json.dumps({"run": {"benchmark": {"name": "a", "n_classes": 2, "classes": "x"}}})
    )

    class Other:
        name = "b"

        @staticmethod
        def identity():
            return {"name": "b", "n_classes": 3, "classes": "y"}

    with pytest.raises(ValueError, match=r"synthesised for benchmark 'a' \(2 classes\), not for 'b' \(3 classes\)"):
        check_synthesis_folder(tmp_path / "syn", Other)
    (tmp_path / "syn" / "synthesis.json").write_text("{}")
    with pytest.raises(ValueError, match="does not record the benchmark"):
        check_synthesis_folder(tmp_path / "syn", Other)
