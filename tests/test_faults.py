"""Faults: synthesis, feature extraction and fine-tuning SIGKILLed at seeded random moments (5 times each) and
resumed equal an uninterrupted run; a full disk or a read-only folder gives a clear error and keeps earlier
outputs; two runs on one folder are refused (or, for the feature cache, cannot harm each other)."""

from __future__ import annotations

import errno
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import fault_workers as fw
import numpy as np
import pytest
import torch
from PIL import Image

from synood_kit.finetune_run import finetune_run_steps, read_run_logs, run_finetune
from synood_kit.storage import OutputError, read_jsonl
from synood_kit.synthesis import read_records, synthesize

KILLS = 5  # SIGKILLs per job
SCHEDULE_SEED = 2026  # seeds the kill moments
WORKER = Path(fw.__file__)


@contextmanager
def one_thread():
    """Compute as the workers do (one thread), so floats match theirs bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def kill_delays(work_s: float, rng: random.Random) -> list[float]:
    """Return ``KILLS`` delays after ``ready``: kill moments drawn uniformly over the first 85% of the work.

    A resumed worker continues where the last one stopped, so the k-th kill lands about ``sum(delays[:k])`` into
    the job, and the job cannot finish before the last kill.
    """
    moments = sorted(rng.uniform(0.0, 0.85 * work_s) for _ in range(KILLS))
    return [b - a for a, b in zip([0.0, *moments], moments, strict=False)]


def kill_repeatedly(args: list[str], delays: list[float], log: Path, progress) -> list:
    """Start the worker, wait for ``ready``, SIGKILL it after each delay; return ``progress()`` after each kill."""
    seen = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(WORKER.parent)}
    for delay in delays:
        with open(log, "a") as err:
            proc = subprocess.Popen(
                [sys.executable, str(WORKER), *args], stdout=subprocess.PIPE, stderr=err, text=True, env=env
            )
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 180)
            line = proc.stdout.readline().strip() if ready else ""
            assert line == "ready", f"worker did not start: {log.read_text()[-2000:]}"
            time.sleep(delay)
            assert proc.poll() is None, "the job ended before its kill: the kill must land mid-run"
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=60) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        seen.append(progress())
    return seen


# ---------------------------------------------------------------- synthesis


@pytest.fixture(scope="module")
def pipe_dir(tiny_inpaint_dir):
    return tiny_inpaint_dir


@pytest.fixture(scope="module")
def pipe(pipe_dir):
    return fw.load_pipe(pipe_dir)


@pytest.fixture(scope="module")
def synthesis_reference(pipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("syn_ref")
    with one_thread():
        start = time.perf_counter()
        list(synthesize(pipe, fw.synthesis_sources(), fw.brightness, out, fw.synthesis_config(), progress=False))
        return out, time.perf_counter() - start


def _pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "images").glob("*.png"))}


def _record_lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "records-0.jsonl").read_text().splitlines() if line.strip()]


def _without_timing(record: dict) -> dict:
    return {**record, "cost": {k: v for k, v in record["cost"].items() if k != "seconds"}}


def _check_synthesis_folder(out: Path) -> int:
    """Assert what any moment may leave: whole PNGs only, and a record only after its image; return #records."""
    for png in (out / "images").glob("*.png"):
        with Image.open(png) as im:
            im.load()  # a half-written PNG would fail here
    records = read_records(out)
    assert all((out / r["image"]).is_file() for r in records.values())
    return len(records)


@pytest.mark.slow
def test_synthesis_killed_five_times_at_random_moments_resumes_identically(
    pipe_dir, pipe, synthesis_reference, tmp_path
):
    ref, work_s = synthesis_reference
    out = tmp_path / "out"
    delays = kill_delays(work_s, random.Random(SCHEDULE_SEED))
    progress = kill_repeatedly(
        ["synthesis", str(pipe_dir), str(out)],
        delays,
        tmp_path / "worker.log",
        lambda: _check_synthesis_folder(out) if out.exists() else 0,
    )
    n = len(fw.synthesis_sources())
    assert all(p < n for p in progress) and any(p > 0 for p in progress), progress
    with one_thread():
        list(synthesize(pipe, fw.synthesis_sources(), fw.brightness, out, fw.synthesis_config(), progress=False))
    lines = _record_lines(out)
    assert sorted(r["id"] for r in lines) == sorted(s.id for s in fw.synthesis_sources())  # each exactly once
    assert _pngs(out) == _pngs(ref)  # byte-identical images
    want = {r["id"]: _without_timing(r) for r in _record_lines(ref)}
    assert {r["id"]: _without_timing(r) for r in lines} == want


# ---------------------------------------------------------------- feature extraction


@pytest.fixture(scope="module")
def clip_and_images(tiny_clip_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("feature_images")
    rng = np.random.default_rng(0)
    for k in range(24):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / f"img{k:02d}.png")
    (root / "img10.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")  # corrupt: skipped and recorded
    data = (root / "img20.png").read_bytes()
    (root / "img20.png").write_bytes(data[: len(data) // 2])  # truncated: skipped and recorded
    return tiny_clip_dir, root


@pytest.fixture(scope="module")
def features_reference(clip_and_images, tmp_path_factory):
    from synood_kit.models import load_clip

    clip_dir, images = clip_and_images
    encoder = fw.SlowEncoder(load_clip(str(clip_dir)))
    with one_thread():
        start = time.perf_counter()
        fs = fw.extract_features(encoder, images, tmp_path_factory.mktemp("feat_ref"))
        return fs, time.perf_counter() - start, encoder


def _check_feature_cache(cache: Path) -> int:
    """Assert every shard on disk reads whole; return how many there are."""
    from safetensors.torch import load_file

    shards = list(cache.glob("image_features/*/*/shard-*.safetensors"))
    for shard in shards:
        load_file(str(shard))
    return len(shards)


def _assert_same_features(fs, ref) -> None:
    assert torch.equal(fs.features, ref.features)
    assert fs.ids == ref.ids and fs.skipped == ref.skipped and np.array_equal(fs.labels, ref.labels)
    assert {r["id"] for r in fs.skipped} == {"img10", "img20"}


@pytest.mark.slow
def test_feature_extraction_killed_five_times_at_random_moments_resumes_identically(
    clip_and_images, features_reference, tmp_path
):
    clip_dir, images = clip_and_images
    ref, work_s, encoder = features_reference
    cache = tmp_path / "cache"
    delays = kill_delays(work_s, random.Random(SCHEDULE_SEED + 1))
    progress = kill_repeatedly(
        ["features", str(clip_dir), str(images), str(cache)],
        delays,
        tmp_path / "worker.log",
        lambda: _check_feature_cache(cache),
    )
    assert all(p < 12 for p in progress) and any(p > 0 for p in progress), progress
    with one_thread():
        fs = fw.extract_features(encoder, images, cache)
    _assert_same_features(fs, ref)


@pytest.mark.slow
def test_two_extractions_sharing_one_cache_do_not_harm_each_other(clip_and_images, features_reference, tmp_path):
    clip_dir, images = clip_and_images
    ref, _, encoder = features_reference
    cache = tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(WORKER.parent)}
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), "features", str(clip_dir), str(images), str(cache)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-2000:]
        assert stdout.splitlines()[-1].startswith("done")
    assert not list(cache.glob("image_features/*/*/.*.tmp-*"))

    class MustNotEncode(fw.SlowEncoder):
        def encode_inputs(self, inputs):
            raise AssertionError("every shard should be cached")

    with one_thread():
        fs = fw.extract_features(MustNotEncode(encoder.clip), images, cache)
    _assert_same_features(fs, ref)


# ---------------------------------------------------------------- fine-tuning


def _finetune(out: Path, pause: float = 0.0):
    words, data = fw.finetune_inputs()
    adapter_config, label_config = fw.finetune_configs()
    for _ in finetune_run_steps(out, words, data, adapter_config=adapter_config, label_config=label_config):
        time.sleep(pause)


@pytest.fixture(scope="module")
def finetune_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ft_ref")
    with one_thread():
        fw.warm_up_optimizers()  # as the worker does before "ready"
        start = time.perf_counter()
        _finetune(out, fw.STEP_PAUSE_S)
        return out, time.perf_counter() - start


def _steps(out: Path) -> list[tuple]:
    return [(s.stage, s.epoch, s.step, s.loss, s.accuracy, s.lr) for s in read_run_logs(out)]


def _assert_same_result(out: Path, ref: Path) -> None:
    """Assert two fine-tuning results hold bit-identical tensors and the same metadata (the byte order of a
    safetensors header's metadata varies between processes)."""
    from safetensors import safe_open

    contents = []
    for folder in (out, ref):
        with safe_open(str(folder / "finetune.safetensors"), framework="pt") as f:
            contents.append((f.metadata(), {k: f.get_tensor(k) for k in f.keys()}))  # noqa: SIM118
    (meta, tensors), (ref_meta, ref_tensors) = contents
    assert meta == ref_meta and tensors.keys() == ref_tensors.keys()
    assert all(torch.equal(tensors[k], ref_tensors[k]) for k in tensors)


def _check_finetune_folder(out: Path) -> int:
    """Assert the checkpoint reads whole and the log parses; return the number of finished epochs logged."""
    from safetensors.torch import load_file

    if (out / "checkpoint.safetensors").is_file():
        load_file(str(out / "checkpoint.safetensors"))
    records, problems = read_jsonl(out / "log.jsonl")
    assert not problems
    return len({(r["stage"], r["epoch"]) for r in records})


@pytest.mark.slow
def test_finetuning_killed_five_times_at_random_moments_resumes_identically(finetune_reference, tmp_path):
    ref, work_s = finetune_reference
    out = tmp_path / "out"
    delays = kill_delays(work_s, random.Random(SCHEDULE_SEED + 2))
    progress = kill_repeatedly(
        ["finetune", str(out)],
        delays,
        tmp_path / "worker.log",
        lambda: _check_finetune_folder(out) if out.exists() else 0,
    )
    assert not (out / "finetune.safetensors").exists() and any(p > 0 for p in progress), progress
    with one_thread():
        _finetune(out)
    _assert_same_result(out, ref)
    assert _steps(out) == _steps(ref)  # every step once, same losses
    adapter_config, label_config = fw.finetune_configs()
    per_epoch = {"adapter": -(-400 // 64), "labels": 160 // 32}
    assert len(_steps(out)) == adapter_config.epochs * per_epoch["adapter"] + label_config.epochs * per_epoch["labels"]


# ---------------------------------------------------------------- full disk and read-only folders


@contextmanager
def failing_replace(after: int, err: int):
    """Let ``after`` atomic renames succeed, then fail every later one with ``err`` (a full disk, a read-only
    folder: root ignores permission bits, so the error is simulated where the kit meets it)."""
    import synood_kit.storage as storage

    real, calls = os.replace, {"n": 0}

    def replace(src, dst):
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError(err, os.strerror(err))
        return real(src, dst)

    storage.os.replace = replace
    try:
        yield
    finally:
        storage.os.replace = real


@pytest.mark.parametrize(
    ("err", "reason"),
    [
        (errno.ENOSPC, "the disk is full"),
        (errno.EROFS, "the file system is read-only"),
        (errno.EACCES, "permission denied"),
    ],
)
def test_synthesis_on_a_full_disk_or_read_only_folder_stops_clearly_and_keeps_earlier_images(
    pipe, synthesis_reference, tmp_path, err, reason
):
    ref, _ = synthesis_reference
    # renames: synthesis.json, then one per image
    with (
        one_thread(),
        failing_replace(after=3, err=err),
        pytest.raises(OutputError, match=f"cannot write .*src2.png: {reason}"),
    ):
        list(synthesize(pipe, fw.synthesis_sources(), fw.brightness, tmp_path, fw.synthesis_config(), progress=False))
    assert sorted(_pngs(tmp_path)) == ["src0.png", "src1.png"] and sorted(read_records(tmp_path)) == ["src0", "src1"]
    assert not list((tmp_path / "images").glob(".*.tmp-*"))  # no half-written file left behind
    with one_thread():  # space freed: the run resumes and ends as an uninterrupted one
        list(synthesize(pipe, fw.synthesis_sources(), fw.brightness, tmp_path, fw.synthesis_config(), progress=False))
    assert _pngs(tmp_path) == _pngs(ref)


def test_feature_extraction_on_a_full_disk_stops_clearly_and_keeps_earlier_shards(
    clip_and_images, features_reference, tmp_path
):
    _, images = clip_and_images
    ref, _, encoder = features_reference
    # renames: info.json, then one per shard
    with (
        one_thread(),
        failing_replace(after=4, err=errno.ENOSPC),
        pytest.raises(OutputError, match="shard-00003.*disk is full"),
    ):
        fw.extract_features(encoder, images, tmp_path)
    assert _check_feature_cache(tmp_path) == 3
    with one_thread():
        fs = fw.extract_features(encoder, images, tmp_path)
    _assert_same_features(fs, ref)


def test_finetuning_on_a_full_disk_stops_clearly_and_keeps_the_last_checkpoint(finetune_reference, tmp_path):
    ref, _ = finetune_reference
    out = tmp_path / "ft"
    with (
        one_thread(),
        failing_replace(after=2, err=errno.ENOSPC),
        pytest.raises(OutputError, match="checkpoint.*disk is full"),
    ):
        _finetune(out)
    assert _check_finetune_folder(out) == 3  # the epoch-1 checkpoint and the epoch-2 log line made it
    with one_thread():
        _finetune(out)
    _assert_same_result(out, ref)
    assert _steps(out) == _steps(ref)


def test_a_full_disk_while_appending_a_record_is_an_output_error(tmp_path, monkeypatch):
    import synood_kit.storage as storage
    from synood_kit.storage import append_jsonl

    append_jsonl(tmp_path / "r.jsonl", {"id": "a"})

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage.os, "fsync", no_space)
    with pytest.raises(OutputError, match=r"cannot write .*r.jsonl: the disk is full"):
        append_jsonl(tmp_path / "r.jsonl", {"id": "b"})


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; simulated above")
def test_a_really_read_only_folder_is_an_output_error(tmp_path):
    from synood_kit.storage import atomic_write_json

    atomic_write_json(tmp_path / "keep.json", {"v": 1})
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="permission denied"):
            atomic_write_json(tmp_path / "keep.json", {"v": 2})
    finally:
        tmp_path.chmod(0o755)
    assert json.loads((tmp_path / "keep.json").read_text()) == {"v": 1}


def test_a_truncated_record_line_never_swallows_the_next_record(tmp_path):
    from synood_kit.storage import append_jsonl

    path = tmp_path / "records.jsonl"
    append_jsonl(path, {"id": "a"})
    with open(path, "a") as f:
        f.write('{"id": "b", "pro')  # a crash mid-line (e.g. the disk filled up)
    append_jsonl(path, {"id": "c"})
    records, problems = read_jsonl(path)
    assert [r["id"] for r in records] == ["a", "c"] and len(problems) == 1


# ---------------------------------------------------------------- two runs, one folder


def test_a_second_synthesis_into_a_busy_folder_is_refused(pipe, tmp_path):
    first = synthesize(pipe, fw.synthesis_sources(), fw.brightness, tmp_path, fw.synthesis_config(), progress=False)
    with one_thread():
        next(first)  # the first run holds the folder
        with pytest.raises(OutputError, match=rf"in use by pid {os.getpid()} \(synthesis\)"):
            list(
                synthesize(pipe, fw.synthesis_sources(), fw.brightness, tmp_path, fw.synthesis_config(), progress=False)
            )
        first.close()
    assert len(read_records(tmp_path)) == 1  # the refused run wrote nothing


def test_a_second_finetuning_into_a_busy_folder_is_refused(tmp_path):
    words, data = fw.finetune_inputs()
    first = finetune_run_steps(tmp_path, words, data)
    next(first)
    with pytest.raises(OutputError, match=r"in use by .*\(fine-tuning\)"):
        next(finetune_run_steps(tmp_path, words, data))
    first.close()


def test_a_finetuning_folder_of_other_inputs_is_refused(tmp_path):
    words, data = fw.finetune_inputs()
    adapter_config, label_config = fw.finetune_configs()
    run = finetune_run_steps(tmp_path, words, data, adapter_config=adapter_config, label_config=label_config)
    for _ in range(30):  # past the first epoch's checkpoint
        next(run)
    run.close()
    with pytest.raises(ValueError, match="other inputs or settings"):
        run_finetune(tmp_path, words, data, adapter_config=adapter_config, label_config=label_config, seed=1)


def test_cleanup_keeps_a_live_writers_temporary_and_removes_a_dead_ones(tmp_path):
    from synood_kit.storage import _writer_token, remove_stale_temporaries

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        dead_token = _writer_token(dead.pid)  # taken while it runs, as its temporaries would be named
        dead.wait()
        (tmp_path / f".shard.safetensors.tmp-{_writer_token(live.pid)}").write_bytes(b"in flight")
        (tmp_path / f".info.json.tmp-{dead_token}").write_bytes(b"left by a killed run")
        (tmp_path / ".old.json.tmp-123").write_bytes(b"an older name format")
        assert remove_stale_temporaries(tmp_path) == 2
        assert [p.name for p in tmp_path.iterdir()] == [f".shard.safetensors.tmp-{_writer_token(live.pid)}"]
    finally:
        live.kill()
        live.wait()
