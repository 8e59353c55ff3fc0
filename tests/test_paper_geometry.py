"""SynOOD end to end at the paper's geometry, by parameters alone: stand-ins with the real architectures and input
sizes (random weights; tests/standins.py) and a tiny ImageNet-style tree, run through the command line with the
paper preset and through every notebook with papermill. Random weights give meaningless numbers, so these tests
assert that each stage ran on the given data: class names, image sizes, split names, counts, prompts built from
parsed answers, and the refusals that keep one benchmark's outputs out of another's runs.

The commands are the README's walk-through ("SynOOD on ImageNet on your GPU"), with the stand-ins' folders and
files in place of the real weights' names, and `--device cpu`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import standins
from PIL import Image

from synood_kit.cli import main as synood
from synood_kit.config import repo_root

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The stand-ins and the data tree, built once; ``TORCH_HOME`` points at the stand-in ResNet-50."""
    root = tmp_path_factory.mktemp("paper_geometry")
    checkpoint, reduced = standins.build_vit_b16(root / "clip")
    mp = pytest.MonkeyPatch()
    mp.setenv("TORCH_HOME", str(root / "torch"))
    mp.setenv("SYNOOD_CACHE", str(root / "cache"))
    standins.install_resnet50(root / "torch")
    world = {
        "root": root,
        "data": standins.build_data(root / "data"),
        "pipeline": standins.build_sd2_pipeline(root / "models"),
        "mllm": standins.build_llava(root / "models"),
        "vit_b16": checkpoint,
        "clip": reduced,
    }
    yield world
    mp.undo()


def _models(world) -> list[str]:
    """The paper preset's model names, replaced by the stand-ins' folders (what a user with local weights passes)."""
    return ["--clip", str(world["clip"]), "--device", "cpu"]


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = synood(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def walkthrough_commands() -> list[str]:
    """Return the README walk-through's command lines ("SynOOD on ImageNet on your GPU"), in order."""
    readme = (repo_root() / "README.md").read_text()
    section = readme[readme.index("## SynOOD on ImageNet on your GPU") :]
    block = section[section.index("```bash") + len("```bash") : section.index("```", section.index("```bash") + 7)]
    return [line.strip() for line in block.strip().splitlines() if line.strip()]


# What a user with local weights adds to each command: the stand-ins' folders and files in place of the paper
# preset's hub names, the CPU, and a capped WordNet corpus for a full-size ViT-B/16 text tower on a CPU.
STAND_IN_OPTIONS = {
    "mine": lambda w: ["--clip", "ViT-B-16", "--pretrained", str(w["vit_b16"]), "--device", "cpu", "--max-words", "60"],
    "synthesize": lambda w: [
        "--clip",
        str(w["clip"]),
        "--pipeline",
        str(w["pipeline"]),
        "--mllm",
        str(w["mllm"]),
        "--device",
        "cpu",
        "--per-class",
        "1",
    ],
    "finetune": lambda w: ["--clip", str(w["clip"]), "--device", "cpu", "--n-boot", "0"],
    "evaluate": lambda w: ["--clip", str(w["clip"]), "--device", "cpu", "--n-boot", "0"],
    "ablate": lambda w: ["--clip", str(w["clip"]), "--device", "cpu", "--n-negatives", "all"],
    "benchmark": lambda w: [],
}


@pytest.fixture(scope="module")
def pipeline_run(world, tmp_path_factory):
    """The README walk-through's commands, in order, on ImageNet-1k (MOS) with the paper preset."""
    import shlex

    out = tmp_path_factory.mktemp("walkthrough")
    data = f"--benchmark imagenet-mos --data-root {world['data']} --config paper"
    runs = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(out)  # the walk-through's relative output folders land here
        for line in walkthrough_commands():
            if line.startswith("papermill"):  # the notebooks run below, by parameters alone
                continue
            if line.startswith("-p ") or line.endswith("\\"):
                continue
            argv = shlex.split(line.replace("$B", data))
            argv = argv[argv.index("synood_kit.cli") + 1 :] if argv[0] == "accelerate" else argv[1:]
            command = argv[0]
            if command == "ablate":  # a grid over the list's own size: the stand-in corpus is small
                argv = [a for a in argv if a != "all,1000"]
                argv.remove("--n-negatives")
            runs[" ".join(argv[:2])] = synood(argv + STAND_IN_OPTIONS[command](world))
    return out, runs


def test_every_command_of_the_walkthrough_succeeds(pipeline_run):
    _, runs = pipeline_run
    assert runs == dict.fromkeys(runs, 0)


def test_mining_used_the_full_vit_b16_and_the_capped_corpus(pipeline_run):
    out, _ = pipeline_run
    labels = json.loads((out / "neglabel_imagenet.json").read_text())
    provenance = labels["provenance"]
    assert provenance["model"].startswith("ViT-B-16/") and provenance["id_labels"] == 3
    assert {c["candidates"] for c in provenance["counts"].values()} == {60}  # --max-words 60 per part of speech
    assert "capped at 60" in provenance["corpus"] and "noun.animal" in provenance["corpus"]  # the paper's filter


def test_synthesis_ran_at_512_px_on_the_imagenet_classes_with_parsed_mllm_prompts(pipeline_run):
    out, _ = pipeline_run
    config = json.loads((out / "syn" / "synthesis.json").read_text())
    run = config["run"]
    assert run["benchmark"]["name"] == "imagenet-mos" and run["benchmark"]["n_classes"] == 3
    assert run["sources"]["size"] == 512 and run["sources"]["selection"] == "jpeg_bytes_per_pixel"
    assert run["context"]["backend"].startswith("transformers:") and config["batch_size"] == 2  # the paper's batch
    records = [json.loads(line) for line in (out / "syn" / "records-0.jsonl").read_text().splitlines()]
    assert {r["meta"]["class_name"] for r in records} == {"tench", "goldfish", "English Springer Spaniel"}
    for r in records:
        assert Image.open(out / "syn" / r["image"]).size == (512, 512)
        assert r["id"].split("/")[0] in standins.WNIDS and r["image"] == f"images/{r['id']}.png"
        assert r["cost"]["unet_evals"] > 0 and len(r["scores"]) == 4  # 3 updates, then the generation they shape
        if r["meta"]["fallback"] is None:  # the prompt holds parsed elements within 73 characters, never a cut word
            said = r["prompt"].removeprefix("A photo only remain ").removesuffix(".")
            joined = ", ".join(r["meta"]["context"])
            assert len(said) <= 73 and joined.startswith(said) and joined[len(said) : len(said) + 1] in ("", ",", " ")
        else:
            assert r["prompt"] == "A photo only remain the background."
    contexts = [json.loads(line) for line in (out / "syn" / "contexts-0.jsonl").read_text().splitlines()]
    assert sorted(c["id"] for c in contexts) == sorted(r["id"] for r in records)
    # the 500x375 JPEG has the most bytes per pixel of its class: the official choice picks it
    assert "n01440764/n01440764_train_0" in {r["id"] for r in records}


def test_finetune_and_evaluation_report_the_benchmark_splits_and_the_ledger(pipeline_run):
    out, _ = pipeline_run
    synood_metrics = json.loads((out / "ft" / "metrics.json").read_text())
    assert synood_metrics["benchmark"]["name"] == "imagenet-mos" and synood_metrics["n_synthetic"] == 3
    splits = {"inaturalist", "sun", "places", "textures", "mean"}
    assert {r["ood_set"] for r in synood_metrics["table"]} == splits
    evaluation = json.loads((out / "eval" / "metrics.json").read_text())
    assert evaluation["n"] == {"id_test": 6, "inaturalist": 3, "sun": 3, "places": 3, "textures": 3}
    assert {"MCM", "NegLabel", "SynOOD", "MSP", "Energy"} <= {r["method"] for r in evaluation["table"]}
    assert evaluation["ledger"] == "ImageNet-1k (MOS)"
    import pandas as pd

    book = pd.read_csv(out / "eval" / "ledger.csv")
    # per split by canonical name (the benchmark calls it "inaturalist"; the paper "iNaturalist")
    assert not book[(book.method == "NegLabel") & (book.ood_set == "iNaturalist")]["measured"].isna().any()
    mean = book[(book.method == "NegLabel") & (book.ood_set == "mean")]
    assert mean["note"].str.contains("mean over iNaturalist, SUN, Places, Textures").all()
    ablations = json.loads((out / "ablations" / "metrics.json").read_text())
    assert ablations["benchmark"]["name"] == "imagenet-mos"


def test_a_synthesis_folder_of_another_benchmark_is_refused_naming_both(pipeline_run, world, tmp_path, capsys):
    out, _ = pipeline_run
    code, _, err = _run(
        [
            "finetune",
            "--benchmark",
            "openood-v1.5-imagenet",
            "--data-root",
            f"openood={world['data'] / 'openood'}",
            "--config",
            "paper",
            *_models(world),
            "--synthetic",
            str(out / "syn"),
            "--out",
            str(tmp_path / "x"),
        ],
        capsys,
    )
    assert code == 2 and "synthesised for benchmark 'imagenet-mos' (3 classes), not for 'openood-v1.5-imagenet'" in err
    assert not (tmp_path / "x").exists()


def test_openood_lists_are_read_with_their_data_roots_and_groups(world, tmp_path, capsys):
    code, _, err = _run(
        [
            "evaluate",
            "--benchmark",
            "openood-v1.5-imagenet",
            "--data-root",
            f"openood={world['data'] / 'openood'}",
            "--config",
            "paper",
            *_models(world),
            "--classifier",
            "none",
            "--n-boot",
            "0",
            "--out",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == 0, err
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["benchmark"]["n_classes"] == 1000  # the lists' labels are ImageNet-1k indices
    assert metrics["benchmark"]["groups"] == {
        "near": ["ssb_hard", "ninco"],
        "far": ["inaturalist", "textures", "openimage_o"],
    }
    book = {(r["method"], r["ood_set"], r["metric"]): r for r in _csv(tmp_path / "ledger.csv")}
    assert book[("NegLabel", "near", "AUROC")]["note"] == "mean over SSB-hard, NINCO"


def _csv(path: Path) -> list[dict]:
    import pandas as pd

    return pd.read_csv(path).fillna("").to_dict(orient="records")


NOTEBOOKS = sorted((repo_root() / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture(scope="module")
def notebook_runs(world, tmp_path_factory):
    """Every notebook, in order, on the stand-ins by parameters only (later ones reuse earlier synthesis folders,
    as the main job does)."""
    import papermill

    from synood_kit.report import main_job_plan

    out = tmp_path_factory.mktemp("notebooks")
    names = [p.stem for p in NOTEBOOKS]
    plan = main_job_plan(out, names)
    common = {
        "benchmark": "imagenet-mos",
        "data_roots": str(world["data"]),
        "preset": "paper",
        "overrides": {
            "models.clip": str(world["clip"]),
            "models.pipeline": str(world["pipeline"]),
            "models.mllm": str(world["mllm"]),
            "models.device": "cpu",
            "mining.corpus.max_words": 60,
            "n_boot": 0,
        },
    }
    extra = {
        "02_prompting_mllm": {"n_images": 3},
        "03_inpainting_loop": {"n_images": 2, "n_score": 4},
        "07_feature_space_umap": {"per_class": 1, "n_per_set": 10, "n_neighbors": 4},
        "08_ablations": {"n_negatives": "all"},
        "05_finetune_clip": {"per_class": 1},
        "06_evaluate": {"per_class": 1},
    }
    errors = {}
    for name in names:
        declared = set(papermill.inspect_notebook(str(repo_root() / "notebooks" / f"{name}.ipynb")))
        params = {k: v for k, v in {**common, **plan[name], **extra.get(name, {})}.items() if k in declared}
        try:
            papermill.execute_notebook(
                str(repo_root() / "notebooks" / f"{name}.ipynb"),
                str(out / f"{name}.ipynb"),
                parameters=params,
                kernel_name="python3",
                cwd=str(repo_root()),
                progress_bar=False,
            )
        except Exception as e:  # recorded, so that every notebook's failure is reported together
            errors[name] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
    return out, plan, errors


def test_every_notebook_runs_on_the_paper_stand_ins_by_parameters_alone(notebook_runs):
    _, _, errors = notebook_runs
    assert errors == {}


def test_notebooks_report_the_imagenet_benchmark(notebook_runs):
    _, plan, _ = notebook_runs

    def metrics(name):
        return json.loads((Path(plan[name]["out_dir"]) / "metrics.json").read_text())

    assert metrics("00_quickstart")["benchmark"] == "imagenet-mos"
    assert set(metrics("00_quickstart")["groups"]["NegLabel (zero-shot)"]) == {"far"}
    described = metrics("01_benchmark")["benchmark"]
    assert described["classes"] == 3 and list(described["splits"]) == [
        "id_train",
        "id_test",
        "inaturalist",
        "sun",
        "places",
        "textures",
    ]
    assert metrics("02_prompting_mllm")["n"] == 3 and metrics("02_prompting_mllm")["backend"].startswith(
        "transformers:"
    )
    assert metrics("03_inpainting_loop")["size"] == 512 and metrics("03_inpainting_loop")["n"] == 2
    assert metrics("04_negative_labels")["n_synthetic"] == 3
    assert metrics("07_feature_space_umap")["n_synthetic"] == {"CLIP-guided": 3, "unguided": 3}
    assert metrics("08_ablations")["focus"] == "inaturalist"
