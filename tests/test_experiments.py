"""The zero-shot run and the ``synood`` command line, end to end on tiny local models and a small benchmark."""

from __future__ import annotations

import json

import pytest
import torch

from synood_kit.cli import main
from synood_kit.experiments import run_evaluation
from synood_kit.metrics import METRIC_COLUMNS
from synood_kit.miniworld.benchmark import BENCHMARK_SPEC, OOD_SPLITS
from synood_kit.preset import load_preset
from synood_kit.registry import load_benchmark


@pytest.fixture(scope="module")
def world(mini_benchmark, mini_classifier_dir):
    """The session's scaled benchmark (3% of every split) and random classifier over its ID classes."""
    return mini_benchmark, mini_classifier_dir


def wordnet_noun_lexnames() -> tuple[str, ...]:
    """Every WordNet noun lexicographer file: excluded, they leave a small mining corpus of every WordNet adjective
    (14,001) and the benchmark's own nouns (mining the full 81k-word corpus is tested in test_mining.py)."""
    from synood_kit.wordnet import wordnet_dir

    lexnames = [line.split()[1] for line in (wordnet_dir() / "lexnames").read_text().splitlines()]
    return tuple(x for x in lexnames if x.startswith("noun."))


@pytest.fixture(scope="module")
def bench(world):
    return load_benchmark(world[0], progress=False)


@pytest.fixture(scope="module")
def preset(world, tiny_clip_dir):
    return load_preset("miniworld").override(
        {"models.clip": str(tiny_clip_dir), "models.classifier": str(world[1]), "adapter.epochs": 1, "labels.epochs": 1}
    )


@pytest.fixture(scope="module")
def zero_shot(bench, preset, tmp_path_factory):
    out = tmp_path_factory.mktemp("zs")
    cache = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("SYNOOD_CACHE", str(cache))
    config = preset.override({"n_boot": 20, "mining.corpus.exclude_lexnames": wordnet_noun_lexnames()})
    result = run_evaluation(out, bench, config, progress=False)
    yield result, config, out
    mp.undo()


def test_zero_shot_table_has_every_method_and_split(zero_shot):
    result, _, out = zero_shot
    table = result.table
    assert set(table["method"]) == {"MCM", "NegLabel", "MSP", "Energy"}
    for method in table["method"].unique():
        rows = table[table["method"] == method]
        assert list(rows["ood_set"]) == [*OOD_SPLITS, "mean"]
        for col in METRIC_COLUMNS:
            assert rows[col].between(0, 1).all()
            mean = rows[rows["ood_set"] == "mean"][col].item()
            assert mean == pytest.approx(rows[rows["ood_set"] != "mean"][col].mean())
    for name in ("evaluation.csv", "evaluation.md", "score_histograms.png", "negatives.json", "metrics.json"):
        assert (out / name).is_file(), name


def test_metrics_json_records_what_ran(zero_shot, bench):
    result, _, out = zero_shot
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stage"] == "evaluation" and metrics["benchmark"]["name"] == "miniworld"
    assert metrics["n"] == {s: len(bench.split(s)) for s in bench.evaluation_splits()}
    assert metrics["skipped"] == {s: {"count": 0, "reasons": {}, "examples": []} for s in bench.evaluation_splits()}
    assert 0.0 <= metrics["accuracy"]["clip_zero_shot"] <= 1.0
    assert 0.0 <= metrics["accuracy"]["classifier"] <= 1.0
    assert len(metrics["table"]) == 4 * (len(OOD_SPLITS) + 1)
    assert "FPR95_IDpos" in metrics["fpr_convention"] and "FPR95_OODpos" in metrics["fpr_convention"]
    assert metrics["negatives"]["count"] == len(result.negatives)


def test_rerun_reuses_the_mined_negatives(zero_shot, bench, monkeypatch):
    result, config, out = zero_shot
    before = (out / "negatives.json").stat().st_mtime_ns

    def refuse(*a, **k):
        raise AssertionError("negatives were mined again")

    monkeypatch.setattr("synood_kit.negatives.mine_negative_labels", refuse)
    again = run_evaluation(out, bench, config, progress=False)
    assert (out / "negatives.json").stat().st_mtime_ns == before
    for method, by_split in result.scores.items():
        for split, s in by_split.items():
            assert again.scores[method][split] == pytest.approx(s)


def test_cli_world_build_and_bad_model(tmp_path, capsys):
    assert main(["world", "build", "--root", str(tmp_path / "b"), "--scale", "0.01"]) == 0
    assert (tmp_path / "b" / "manifest.jsonl").is_file()
    status = main(
        [
            "evaluate",
            "--clip",
            str(tmp_path / "no_such_clip"),
            "--benchmark",
            str(tmp_path / "b"),
            "--config",
            "miniworld",
            "--out",
            str(tmp_path / "o"),
            "--classifier",
            "none",
        ]
    )
    assert status == 2
    assert "open_clip_config.json" in capsys.readouterr().err


def test_cli_mine_writes_an_ordered_list(tmp_path, tiny_clip_dir, cache_root, capsys):
    names = tmp_path / "ids.txt"
    names.write_text("triangle\nsquare\n")
    out = tmp_path / "neg.json"
    assert (
        main(
            [
                "mine",
                "--config",
                "miniworld",
                "--clip",
                str(tiny_clip_dir),
                "--id-classes",
                str(names),
                "--official-filter",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    saved = json.loads(out.read_text())
    counts = saved["provenance"]["counts"]
    # both names are WordNet nouns; "square" is an adjective too: ID names leave every part of speech
    assert counts["noun"]["candidates"] == 58_424 - 2 and counts["adj"]["candidates"] == 14_001 - 1
    assert [r["pos"] for r in saved["labels"]] == ["noun"] * counts["noun"]["kept"] + ["adj"] * counts["adj"]["kept"]
    assert "kept" in capsys.readouterr().out


@pytest.fixture(scope="module")
def synthetic(world, bench, tiny_clip, tiny_inpaint_dir, tmp_path_factory):
    """A 6-image synthesis folder from a smoke in-painting pipeline, labelled over 150 made-up negatives."""
    from diffusers import StableDiffusionInpaintPipeline

    from synood_kit.data import load_image
    from synood_kit.inpainting import GuidanceConfig, InpaintConfig
    from synood_kit.miniworld.benchmark import read_manifest
    from synood_kit.negatives import NegativeLabels
    from synood_kit.synthesis import SynthesisConfig, SynthesisSource, negative_labeler, synthesize

    root, _ = world
    tmp = tmp_path_factory.mktemp("synthetic")
    pipe = StableDiffusionInpaintPipeline.from_pretrained(
        tiny_inpaint_dir, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    recs = read_manifest(root, "id_train")[:6]
    sources = [
        SynthesisSource(r["id"], load_image(root / r["path"]), "A photo only remain red background.") for r in recs
    ]
    words = tuple(
        f"{a}{b}"
        for a in ("gran", "viol", "harb", "mead", "lant", "quar", "pebb", "cind", "mosa", "fern")
        for b in ("ite", "in", "or", "ow", "ern", "tz", "le", "er", "ic", "al", "ock", "ine", "ash", "um", "et")
    )
    negatives = NegativeLabels(
        words,
        ("noun",) * len(words),
        tuple(f"the nice {w}" for w in words),
        tuple(i / len(words) for i in range(len(words))),
        {},
    )
    config = SynthesisConfig(
        inpaint=InpaintConfig(num_inference_steps=2, guidance_scale=1.0),
        guidance=GuidanceConfig(rounds=0),
        batch_size=3,
        run={"benchmark": bench.identity()},
    )
    list(
        synthesize(
            pipe,
            sources,
            lambda x: x.mean(dim=(1, 2, 3)),
            tmp / "syn",
            config,
            progress=False,
            labeler=negative_labeler(tiny_clip, negatives, tmp / "syn"),
        )
    )
    return tmp / "syn"


def test_run_synood_fine_tunes_and_compares_with_neglabel(bench, preset, synthetic, tmp_path, cache_root):
    from synood_kit.experiments import run_synood

    result = run_synood(tmp_path / "out", bench, preset.override({"n_boot": 0}), synthetic, progress=False)
    table = result.table
    assert set(table["method"]) == {
        "NegLabel (zero-shot)",
        "control: adapter on ID images only",
        "SynOOD: adapter only",
        "SynOOD: tuned labels only",
        "SynOOD (adapter + tuned labels)",
    }
    assert (tmp_path / "out" / "finetune.safetensors").is_file() and (tmp_path / "out" / "synood.md").is_file()
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["n_synthetic"] == 6 and metrics["n_negatives"] == 150


def test_ablation_grid_has_every_variant_and_the_control(bench, preset, synthetic, tmp_path, cache_root):
    from synood_kit.ablations import TRAININGS, AblationRun, run_ablations

    run = AblationRun(synthetic=(("a", str(synthetic)), ("b", str(synthetic))), n_negatives=(None, 100))
    # 50 groups: NegLabel's grouping keeps all 150 and all 100 (with 100 groups it would drop the last 50 of 150,
    # and both rows would score the same 100 negatives, as the official grouping does)
    preset = preset.override({"scores.neglabel.n_groups": 50})
    table = run_ablations(tmp_path / "abl", bench, preset, run, progress=False)["table"]
    variants = set(zip(table["synthetic"], table["training"], table["n_negatives"], strict=True))
    expected = {(s, t, k) for s in "ab" for t in TRAININGS for k in (150, 100)}
    expected |= {("none", "zero-shot", k) for k in (150, 100)} | {
        ("none", "control: adapter on ID only", k) for k in (150, 100)
    }
    assert variants == expected
    assert len(table) == len(expected) * (len(OOD_SPLITS) + 1)  # every OOD split and the mean
    # the same folder under two names trains the same seeded models
    a, b = (table[table["synthetic"] == n].drop(columns=["synthetic", "method"]).reset_index(drop=True) for n in "ab")
    assert a.equals(b)
    # keeping fewer negatives changes zero-shot NegLabel, and synthetic images are re-assigned among the kept ones
    zs = table[(table["training"] == "zero-shot") & (table["ood_set"] == "mean")].set_index("n_negatives")["AUROC"]
    assert zs[100] != zs[150]
    metrics = json.loads((tmp_path / "abl" / "metrics.json").read_text())
    assert metrics["synthetic_sets"]["a"]["n_synthetic"] == 6
    assert 1 <= metrics["synthetic_sets"]["a"]["distinct_labels"]["100"] <= 6
    markdown = (tmp_path / "abl" / "ablations.md").read_text()
    assert sum(line.startswith("|") for line in markdown.splitlines()) == len(table) + 2  # header, rule, one per row
    assert "average precision" in markdown  # the table says which AUPR it holds


def test_ablation_run_rejects_bad_settings(capsys):
    from synood_kit.ablations import AblationRun

    with pytest.raises(ValueError, match="unknown trainings"):
        AblationRun(synthetic=(("a", "x"),), trainings=("adapter", "both"))
    with pytest.raises(ValueError, match="at least 100"):
        AblationRun(synthetic=(("a", "x"),), n_negatives=(50,))
    with pytest.raises(ValueError, match="unique"):
        AblationRun(synthetic=(("a", "x"), ("a", "y")))
    assert main(["ablate", "--synthetic", "nofolder", "--out", "x"]) == 2
    assert "NAME=FOLDER" in capsys.readouterr().err
    assert main(["ablate", "--n-negatives", "all,ten", "--synthetic", "a=x", "--out", "x"]) == 2
    assert "--n-negatives" in capsys.readouterr().err


def test_evaluate_any_folders_with_synood_checkpoint_and_ledger(
    world, tiny_clip_dir, tiny_clip, tmp_path, cache_root, capsys
):
    from synood_kit.finetune import ResidualAdapter, save_finetune
    from synood_kit.negatives import NegativeLabels

    root, clf = world
    words = ("granite", "violin", "harbor", "meadow", "lantern")
    negatives = NegativeLabels(words, ("noun",) * 5, tuple(f"the nice {w}" for w in words), (0.0,) * 5, {})
    negatives.save(tmp_path / "neg.json")
    torch.manual_seed(0)
    save_finetune(tmp_path / "ft.safetensors", list(words), ResidualAdapter(32), torch.randn(5, 32))
    scenes = sorted((root / "far_scenes").rglob("*.png"))
    (tmp_path / "list.txt").write_text("\n".join(str(p.relative_to(root)) for p in scenes) + "\n")
    out = tmp_path / "eval"
    status = main(
        [
            "evaluate",
            "--id",
            str(root / "id_test"),
            "--ood",
            f"near={root / 'near_ood'}",
            "--ood",
            f"scenes={tmp_path / 'list.txt'}",
            "--list-root",
            str(root),
            "--config",
            "miniworld",
            "--clip",
            str(tiny_clip_dir),
            "--negatives",
            str(tmp_path / "neg.json"),
            "--finetune",
            str(tmp_path / "ft.safetensors"),
            "--classifier",
            str(clf),
            "--ledger",
            "ImageNet-1k (MOS)",
            "--n-boot",
            "0",
            "--out",
            str(out),
        ]
    )
    assert status == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {r["method"] for r in metrics["table"]} == {"MCM", "NegLabel", "SynOOD", "MSP", "Energy"}
    assert metrics["n"]["scenes"] == len(scenes) and (out / "ledger.csv").is_file()
    assert "NegLabel" in capsys.readouterr().out
    assert main(["evaluate", "--id", str(root / "id_test"), "--ood", "broken", "--out", str(out)]) == 2
    assert "NAME=PATH" in capsys.readouterr().err


def test_open_benchmark_uses_a_built_folder_as_it_is(world):
    from synood_kit.miniworld.benchmark import open_benchmark, read_manifest

    root, _ = world
    before = (root / "manifest.jsonl").read_bytes()
    assert open_benchmark(root, progress=False) == root
    assert (root / "manifest.jsonl").read_bytes() == before  # a scaled benchmark is not rebuilt at full size
    assert len(read_manifest(root, "id_test")) < BENCHMARK_SPEC.n_test_per_class * len(BENCHMARK_SPEC.id_classes)
