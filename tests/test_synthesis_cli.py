"""`synood synthesize` as a process: SIGKILLed mid-way and resumed, and under `accelerate launch` with two
processes; both must equal an uninterrupted one-process run, byte for byte."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from synood_kit.miniworld.benchmark import BENCHMARK_SPEC


@dataclass(frozen=True)
class Setup:
    pipe: Path  # the smoke in-painting pipeline's folder
    clf: Path  # a random classifier over the mini-world's ID classes
    bench: Path  # a scaled mini-world benchmark


@pytest.fixture(scope="module")
def setup(tiny_inpaint_dir, mini_classifier_dir, mini_benchmark):
    return Setup(tiny_inpaint_dir, mini_classifier_dir, mini_benchmark)


@contextmanager
def one_thread():
    """Compute in this process as the launched ones do (``OMP_NUM_THREADS=1``), so the bytes match theirs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _args(setup, out):
    return [
        "synthesize",
        "--out",
        str(out),
        "--pipeline",
        str(setup.pipe),
        "--classifier",
        str(setup.clf),
        "--benchmark",
        str(setup.bench),
        "--per-class",
        "1",
        "--steps",
        "4",
        "--cfg",
        "2",
        "--rounds",
        "1",
        "--step-size",
        "0.5",
        "--normalize",
        "unit",
        "--batch-size",
        "2",
        "--clip",
        "none",
    ]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _run(setup, out, launcher=()):
    cmd = (
        [*launcher, sys.executable, "-m", "synood_kit.cli", *_args(setup, out)]
        if not launcher
        else [*launcher, "-m", "synood_kit.cli", *_args(setup, out)]
    )
    subprocess.run(cmd, check=True, env=_env(), capture_output=True, timeout=600)


def _images(folder):
    return {p.name: p.read_bytes() for p in sorted((folder / "images").glob("*.png"))}


def _record_ids(folder):
    ids = []
    for path in sorted(folder.glob("records-*.jsonl")):
        ids += [json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()]
    return ids


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
    """An uninterrupted one-chunk run, in this process (one thread, as the launched runs): the bytes to equal."""
    from synood_kit.cli import main

    out = tmp_path_factory.mktemp("ref") / "out"
    with one_thread():
        assert main(_args(setup, out)) == 0
    assert len(_images(out)) == len(BENCHMARK_SPEC.id_classes)
    return out


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_uninterrupted(setup, reference, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "synood_kit.cli", *_args(setup, out)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and len(_record_ids(out)) < 3 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 0 < len(_record_ids(out)) < len(BENCHMARK_SPEC.id_classes), "the kill must land mid-run"
    _run(setup, out)
    ids = _record_ids(out)
    assert len(ids) == len(set(ids)) == len(BENCHMARK_SPEC.id_classes)  # every image exactly once
    assert _images(out) == _images(reference)


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("accelerate") is None
    and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "accelerate")),
    reason="accelerate CLI not installed",
)
def test_accelerate_two_processes_equal_one(setup, reference, tmp_path):
    out = tmp_path / "out"
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    # `accelerate launch --cpu --num_processes 2` needs mpirun for more than one CPU process; its torchrun-based
    # launcher (--multi_gpu) starts two CPU processes with RANK/WORLD_SIZE set, which is what sharding reads
    _run(
        setup,
        out,
        launcher=(
            accelerate,
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
        ),
    )
    assert len(list(out.glob("records-*.jsonl"))) == 2  # both ranks wrote their shard
    ids = _record_ids(out)
    assert len(ids) == len(set(ids)) == len(BENCHMARK_SPEC.id_classes)
    assert _images(out) == _images(reference)


def test_streaming_in_small_chunks_equals_one_chunk(setup, reference, tmp_path, monkeypatch):
    """Sources stream through memory a chunk at a time (whole batches); the images equal a one-chunk run's."""
    from synood_kit.cli import main

    out = tmp_path / "out"
    with one_thread():
        assert main([*_args(setup, out), "--chunk-images", "4"]) == 0
    assert _images(out) == _images(reference)
    assert sorted(_record_ids(out)) == sorted(_record_ids(reference))


def test_an_unreadable_source_image_is_skipped_and_recorded(setup, tmp_path):
    from synood_kit.cli import main
    from synood_kit.miniworld.benchmark import read_manifest
    from synood_kit.synthesis import read_records, read_skipped

    bench = tmp_path / "bench"
    shutil.copytree(setup.bench, bench)
    first = read_manifest(bench, "id_train")[0]
    (bench / first["path"]).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    args = _args(setup, tmp_path / "out")
    args[args.index("--benchmark") + 1] = str(bench)
    assert main(args) == 0
    assert first["id"] in read_skipped(tmp_path / "out")
    assert first["id"] not in read_records(tmp_path / "out")
    assert len(read_records(tmp_path / "out")) == len(BENCHMARK_SPEC.id_classes) - 1


def _image_folder(setup, folder, size=None):
    """An ImageFolder tree (two classes, two images each) made of the scaled benchmark's ID training images."""
    from PIL import Image

    from synood_kit.miniworld.benchmark import read_manifest

    records = read_manifest(setup.bench, "id_train")
    for cls_name in ("heart", "pentagon"):
        picked = [r for r in records if r["class_name"] == cls_name][:2]
        (folder / cls_name.replace(" ", "_")).mkdir(parents=True)
        for k, r in enumerate(picked):
            image = Image.open(setup.bench / r["path"])
            if size is not None and cls_name == "pentagon":
                image = image.resize(size, Image.BICUBIC)
            image.save(folder / cls_name / f"img{k}.png")
    return folder


def _described(setup, folder, class_names='"auto"'):
    """A benchmark.toml over an ImageFolder tree (ID train and test) and the mini-world's near-OOD folder."""
    path = folder.parent / "benchmark.toml"
    path.write_text(
        f'name = "shapes-folder"\nclass_names = {class_names}\n'
        f'[splits.id_train]\nfolder = "{folder}"\n[splits.id_test]\nfolder = "{folder}"\n'
        f'[splits.near]\nfolder = "{setup.bench / "near_ood"}"\ngroup = "near"\n'
    )
    return path


def _source_args(setup, description, out, *extra):
    args = _args(setup, out)
    for flag in ("--benchmark", *(("--clip",) if "--clip" in extra else ())):
        i = args.index(flag)
        del args[i : i + 2]
    return [*args, "--benchmark", str(description), "--config", "miniworld", "--context", "mllm", *extra]


@pytest.mark.slow
def test_sources_from_an_image_folder_are_resized_and_prompted_by_the_mllm(setup, tiny_clip_dir, tmp_path, capsys):
    """ImageNet-style input: an ImageFolder of images of two sizes, resized to the pipeline's native 32 x 32, with
    the MLLM's context prompts, a CLIP scorer whose ID prompts are the folder names, and negative labels."""
    from synood_kit.cli import main
    from synood_kit.negatives import NegativeLabels
    from synood_kit.synthesis import read_records

    description = _described(setup, _image_folder(setup, tmp_path / "data" / "imagenet_like", size=(48, 40)))
    words = ("marble texture", "stripes", "navy")
    negs = tmp_path / "negatives.json"
    NegativeLabels(words, ("noun",) * 3, tuple(f"the nice {w}" for w in words), (0.0,) * 3, {}).save(negs)
    assert main(_source_args(setup, description, tmp_path / "out", "--size", "16")) == 2
    assert "below the in-painting pipeline's native 32 px" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    extra = ("--scorer", "clip-mcm", "--clip", str(tiny_clip_dir), "--negatives", str(negs))
    assert main(_source_args(setup, description, tmp_path / "out", *extra)) == 0, capsys.readouterr().err
    records = read_records(tmp_path / "out")
    assert sorted(records) == ["heart/img0", "pentagon/img0"]
    for rid, record in records.items():
        assert record["meta"]["class_name"] == rid.split("/")[0]
        assert record["meta"]["context_answer"] and record["prompt"].startswith("A photo only remain")
        assert record["negative_label"]["word"] in words
        assert (tmp_path / "out" / record["image"]).is_file()
    config = json.loads((tmp_path / "out" / "synthesis.json").read_text())
    assert config["scorer"] == "clip-mcm" and config["run"]["sources"]["size"] == 32
    assert config["run"]["benchmark"]["name"] == "shapes-folder"


def test_sources_refuse_what_the_benchmark_cannot_serve(setup, tmp_path, capsys):
    from synood_kit.cli import main

    folder = _image_folder(setup, tmp_path / "data" / "imagenet_like")
    description = _described(setup, folder)
    args = _source_args(setup, description, tmp_path / "out")
    args[args.index("--context") + 1] = "truth"
    assert main(args) == 2 and "has no ground-truth context" in capsys.readouterr().err
    assert main(_source_args(setup, description, tmp_path / "out", "--mask", "box")) == 2
    assert "needs the benchmark's subject annotations" in capsys.readouterr().err
    description = _described(setup, folder, class_names='["heart"]')
    assert main(_source_args(setup, description, tmp_path / "out")) == 2
    assert "1 class names for 2 ID class folders" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_folder_of_other_sources_or_settings_is_refused_before_anything_is_written(
    setup, reference, tmp_path, capsys
):
    """A folder made from other source images (another split, another render, an edited file) with otherwise equal
    settings was accepted and then mixed both; settings were checked only after pass 1 had written its records."""
    from PIL import Image

    from synood_kit.cli import main
    from synood_kit.miniworld.benchmark import read_manifest

    out = tmp_path / "out"
    shutil.copytree(reference, out)
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name != ".lock"}
    bench = tmp_path / "bench"
    shutil.copytree(setup.bench, bench)
    first = read_manifest(bench, "id_train")[0]
    Image.open(bench / first["path"]).rotate(90).save(bench / first["path"])  # same id and label, other pixels
    args = _args(setup, out)
    args[args.index("--benchmark") + 1] = str(bench)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "holds another synthesis run with other settings" in err and "run.sources.fingerprint" in err
    args = _args(setup, out)
    args[args.index("--per-class") + 1] = "2"
    assert main(args) == 2 and "run.sources.per_class" in capsys.readouterr().err
    after = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name != ".lock"}
    assert after == before  # no record, context, skipped line or image was added
    with one_thread():
        assert main(_args(setup, out)) == 0  # the same settings: resumed (nothing left to do)
    assert _images(out) == _images(reference)


def test_the_recipe_options_reach_the_run_and_each_record_carries_its_cost(setup, reference, tmp_path):
    """``--recipe one_step`` estimates each update round's clean latent with one UNet call (x2 for classifier-free
    guidance) instead of a regeneration; the records say so per image. Here a generation is int(4 x 0.6) = 2
    denoising steps x 2 = 4 UNet evaluations, and the run has 1 update round."""
    from synood_kit.cli import main

    def costs(folder):
        records = []
        for path in sorted(folder.glob("records-*.jsonl")):
            records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return {json.dumps({k: v for k, v in r["cost"].items() if k != "seconds"}, sort_keys=True) for r in records}

    out = tmp_path / "one_step"
    with one_thread():
        assert main([*_args(setup, out), "--recipe", "one_step"]) == 0
    settings = json.loads((out / "synthesis.json").read_text())
    assert "one_step" in json.dumps(settings)
    (one_step,) = (json.loads(c) for c in costs(out))
    (full,) = (json.loads(c) for c in costs(reference))
    assert full["unet_evals"] == 2 * 4  # the update round's regeneration + the final generation
    assert one_step["unet_evals"] == 4 + 2  # the final generation + one guided UNet call for the round
    assert one_step["backward_passes"] == full["backward_passes"] == 1
    assert one_step["vae_decodes"] == full["vae_decodes"] == 2
    assert _images(out).keys() == _images(reference).keys() and _images(out) != _images(reference)
