"""The ``synood`` command line under bad input: every option is checked before any work and refused with one line
naming it (exit status 2, no traceback, nothing written); two runs into one folder, one refused before writing;
``evaluate`` reports the images it had to leave out. The table in docs/hardening.md lists each case."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synood_kit.cli import main
from synood_kit.miniworld.benchmark import read_manifest

WORDS = tuple(f"word{i}" for i in range(200))  # 200 negatives: NegLabel's 100 groups of 2


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, mini_benchmark):
    """A negative-label list and a synthesis folder (its synthesis.json only) made for the session's benchmark."""
    from synood_kit.negatives import NegativeLabels
    from synood_kit.registry import load_benchmark

    folder = tmp_path_factory.mktemp("inputs")
    NegativeLabels(WORDS, ("noun",) * len(WORDS), tuple(f"the nice {w}" for w in WORDS), (0.0,) * len(WORDS), {}).save(
        folder / "negatives.json"
    )
    syn = folder / "syn"
    syn.mkdir()
    identity = load_benchmark(mini_benchmark, progress=False).identity()
    (syn / "synthesis.json").write_text(json.dumps({"run": {"benchmark": identity}}))
    return folder


def _run(args: list[str]) -> tuple[int, str, str]:
    """Run ``synood`` in this process; return ``(status, stdout, stderr)``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(args)
    return status, out.getvalue(), err.getvalue()


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- evaluate reports what it left out


def test_evaluate_reports_skipped_images_per_set_in_its_table_json_and_markdown(
    mini_benchmark, tiny_clip_dir, inputs, tmp_path, monkeypatch
):
    """Unreadable images were only inside the feature cache's metadata; the results now count them per set and
    say why (the README says where)."""
    monkeypatch.setenv("SYNOOD_CACHE", str(tmp_path / "cache"))
    bench = tmp_path / "bench"
    shutil.copytree(mini_benchmark, bench)
    damaged = [read_manifest(bench, "id_test")[0]] + read_manifest(bench, "near_ood")[:2]
    for record in damaged:
        (bench / record["path"]).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    args = ["evaluate", "--benchmark", str(bench), "--clip", str(tiny_clip_dir), "--classifier", "none"]
    args += ["--negatives", str(inputs / "negatives.json"), "--n-boot", "0", "--out", str(tmp_path / "ev")]
    status, out, err = _run(args)
    assert status == 0, err
    import pandas as pd

    table = pd.read_csv(tmp_path / "ev" / "evaluation.csv")
    assert (table["skipped_id"] == 1).all()
    assert set(table[table["ood_set"] == "near_ood"]["skipped_ood"]) == {2}
    assert set(table[table["ood_set"] == "mean"]["skipped_ood"]) == {2}  # over every OOD set
    assert set(table[~table["ood_set"].isin(["near_ood", "mean"])]["skipped_ood"]) == {0}
    skipped = json.loads((tmp_path / "ev" / "metrics.json").read_text())["skipped"]
    assert (
        skipped["id_test"]["count"] == 1 and skipped["near_ood"]["count"] == 2 and skipped["far_scenes"]["count"] == 0
    )
    (reason, n), *_ = skipped["near_ood"]["reasons"].items()
    assert n == 2 and "<image>: not a readable image" in reason
    assert {e["id"] for e in skipped["near_ood"]["examples"]} == {r["id"] for r in damaged[1:]}
    markdown = (tmp_path / "ev" / "evaluation.md").read_text()
    assert "- near_ood: 2 image(s) left out: 2 x ImageLoadError: <image>: not a readable image" in markdown
    assert "unreadable images left out (counted in evaluation.csv" in out
    # the same folder with other settings: refused before anything is written; --overwrite replaces the run
    before = _files(tmp_path / "ev")
    status, _, err = _run([*args[:-4], "--n-boot", "10", "--out", str(tmp_path / "ev")])
    assert status == 2 and "holds another evaluation run with other settings" in err and "settings.n_boot" in err
    assert _files(tmp_path / "ev") == before
    status, _, err = _run([*args[:-4], "--n-boot", "10", "--out", str(tmp_path / "ev"), "--overwrite"])
    assert status == 0, err
    assert json.loads((tmp_path / "ev" / "run.json").read_text())["settings"]["n_boot"] == 10


# ---------------------------------------------------------------- two runs into one folder


def _command(name: str, tmp: Path, bench, clip, clf, pipe, inputs) -> tuple[list[str], Path]:
    """Return ``(argv, lock folder)`` of a run of ``name`` into ``tmp / "out"`` (the lock a first run holds)."""
    out = tmp / "out"
    common = ["--benchmark", str(bench), "--clip", str(clip)]
    if name == "evaluate":
        argv = ["evaluate", *common, "--classifier", "none", "--negatives", str(inputs / "negatives.json")]
        return [*argv, "--n-boot", "0", "--out", str(out)], out
    if name == "synthesize":
        argv = ["synthesize", "--benchmark", str(bench), "--clip", "none", "--pipeline", str(pipe)]
        argv += ["--classifier", str(clf), "--per-class", "1", "--steps", "4", "--batch-size", "2"]
        return [*argv, "--out", str(out)], out / "locks" / "rank-0"
    if name == "finetune":
        return ["finetune", *common, "--synthetic", str(inputs / "syn"), "--out", str(out)], out
    if name == "ablate":
        return ["ablate", *common, "--synthetic", f"a={inputs / 'syn'}", "--out", str(out)], out
    if name == "mine":
        return ["mine", *common, "--max-words", "5", "--out", str(out / "negatives.json")], out
    return ["demo", "--benchmark", str(bench), "--only", "00", "--out", str(out)], out


@pytest.mark.parametrize("command", ["evaluate", "synthesize", "finetune", "ablate", "mine", "demo"])
def test_a_second_run_of_any_command_into_a_busy_folder_is_refused_before_writing(
    command, mini_benchmark, tiny_clip_dir, mini_classifier_dir, tiny_inpaint_dir, inputs, tmp_path, monkeypatch
):
    """Another process holds the folder (as a first run of the command does, from before its first write): the
    second run is refused naming the holder, and the folder is byte for byte as it was. ``evaluate`` took no lock
    at all, and two runs both exited 0, the second replacing the first."""
    monkeypatch.setenv("SYNOOD_CACHE", str(tmp_path / "cache"))
    argv, lock = _command(
        command, tmp_path, mini_benchmark, tiny_clip_dir, mini_classifier_dir, tiny_inpaint_dir, inputs
    )
    name = ".negatives.json.lock" if command == "mine" else ".lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom synood_kit.storage import OutputLock\n"
            "OutputLock(sys.argv[1], 'first run', name=sys.argv[2]).__enter__()\nprint('held', flush=True)\n"
            "time.sleep(300)",
            str(lock),
            name,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _files(tmp_path / "out")
        status, _, err = _run(argv)
    finally:
        holder.kill()
        holder.wait()
    assert status == 2, err
    assert f"is in use by pid {holder.pid} (first run)" in err.strip().splitlines()[-1]
    assert _files(tmp_path / "out") == before


# ---------------------------------------------------------------- the fuzz test

NOT_INT = st.sampled_from(["x", "1.5", "", " ", "1e3", "nan", "0x10", "--", "1,2", "∞"]) | st.text(
    alphabet="abcxyz.-_ ", min_size=1, max_size=6
)


def _int_below(minimum: int):
    return st.integers(max_value=minimum - 1).map(str) | NOT_INT.filter(lambda t: not _is_int(t))


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _is_float(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


BAD_FLOAT = st.sampled_from(["nan", "inf", "-inf", "x", "", "1e400"]) | NOT_INT.filter(lambda t: not _is_float(t))
NEGATIVE = st.floats(max_value=-1e-6, allow_nan=False, allow_infinity=False).map(repr)
BAD_N_BOOT = st.integers(1, 9).map(str) | st.integers(max_value=-1).map(str) | NOT_INT.filter(lambda t: not _is_int(t))
MISSING = st.text(alphabet="abcdef", min_size=1, max_size=8).map(lambda t: f"missing-{t}")  # joined to the workdir
BAD_WORD = st.text(alphabet="abcdefxyz_", min_size=1, max_size=8).map(lambda t: f"no-{t}")
BAD_DEVICE = st.sampled_from(["quantum", "cuda", "cuda:7", "cuda:x", "mps", "meta", "xla", "", "cpu:"])
BAD_PAIR = st.sampled_from(["noequals", "=x", "name=", "="])
BAD_SCALE = st.sampled_from(["0", "-1", "nan", "inf", "1e3", "x", ""])


def _bad_device(text: str) -> bool:
    from synood_kit.models import check_device

    try:
        check_device(text)
    except ValueError:
        return True
    return False


DATA = ["--benchmark", "--data-root", "--config"]
MODELS = {"--device": BAD_DEVICE.filter(_bad_device), "--clip": MISSING, "--pretrained": MISSING}
PATHS = {"--benchmark", "--data-root", "--config", "--clip", "--pretrained", "--classifier", "--pipeline"}
PATHS |= {"--negatives", "--finetune", "--id", "--class-names", "--list-root", "--id-classes", "--synthetic"}
SHARED = {"--benchmark": MISSING, "--data-root": MISSING | BAD_PAIR, "--config": MISSING}

OPTIONS = {  # subcommand -> {option: strategy of values it must refuse}
    "demo": {**SHARED, "--param": st.sampled_from(["noequals", "1x=2", "a-b=3", "=v"]), "--only": BAD_WORD},
    "benchmark check": {**SHARED, "--sample": _int_below(1)},
    "config show": {"--config": MISSING},
    "world build": {"--scale": BAD_SCALE, "--seed": _int_below(0)},
    "world replicates": {
        "--seeds": st.sampled_from(["", "x", "1,,2", "-1,2", "3,3", "4294967296,1", "1;2"]),
        "--per-class": _int_below(1),
        "--batch-size": _int_below(1),
        "--n-boot": BAD_N_BOOT,
        "--scale": BAD_SCALE,
        "--config": MISSING,
    },
    "mine": {
        **SHARED,
        **MODELS,
        "--id-classes": MISSING,
        "--pos": BAD_WORD | st.just("noun,noun"),
        "--max-words": _int_below(1),
        "--text-batch-size": _int_below(1),
        "--lemmas": BAD_WORD,
    },
    "features": {
        **SHARED,
        **MODELS,
        "--classifier": MISSING,
        "--splits": BAD_WORD,
        "--sample": _int_below(1),
        "--batch-size": _int_below(1),
    },
    "evaluate": {
        **SHARED,
        **MODELS,
        "--classifier": MISSING,
        "--negatives": MISSING,
        "--finetune": MISSING,
        "--ledger": BAD_WORD,
        "--sample": _int_below(1),
        "--n-boot": BAD_N_BOOT,
        "--id": MISSING,
        "--class-names": MISSING,
        "--list-root": MISSING,
    },
    "synthesize": {
        **SHARED,
        **MODELS,
        "--classifier": MISSING,
        "--pipeline": MISSING,
        "--mllm-endpoint": BAD_WORD,
        "--negatives": MISSING,
        "--per-class": _int_below(1),
        "--selection": BAD_WORD,
        "--size": _int_below(8),
        "--context": BAD_WORD,
        "--target": BAD_WORD,
        "--scorer": BAD_WORD,
        "--mask": BAD_WORD,
        "--rounds": _int_below(0),
        "--step-size": BAD_FLOAT | NEGATIVE,
        "--normalize": BAD_WORD,
        "--step-unit": BAD_WORD,
        "--recipe": BAD_WORD,
        "--rerun-steps": _int_below(1),
        "--source-latent": BAD_WORD,
        "--steps": _int_below(1) | st.just("1"),  # 1 x the preset's strength 0.6: no denoising step
        "--strength": BAD_FLOAT | NEGATIVE | st.sampled_from(["0", "1.5"]),
        "--cfg": BAD_FLOAT | NEGATIVE,
        "--seed": NOT_INT.filter(lambda t: not _is_int(t)),
        "--batch-size": _int_below(1),
        "--chunk-images": _int_below(1),
    },
    "finetune": {
        **SHARED,
        **MODELS,
        "--synthetic": MISSING,
        "--adapter-epochs": _int_below(1),
        "--label-epochs": _int_below(1),
        "--n-boot": BAD_N_BOOT,
    },
    "ablate": {
        **SHARED,
        **MODELS,
        "--synthetic": BAD_PAIR | MISSING.map(lambda t: f"a={t}"),
        "--n-negatives": st.sampled_from(["ten", "50", "all,5", "", "-100"]),
        "--trainings": BAD_WORD | st.just("adapter,adapter"),
        "--adapter-epochs": _int_below(1),
        "--label-epochs": _int_below(1),
        "--n-boot": BAD_N_BOOT,
    },
}
CLI_EXAMPLES = int(os.environ.get("SYNOOD_CLI_FUZZ_EXAMPLES", "25"))  # per subcommand; 400 were also run once
OUT_OPTIONS = {
    "demo",
    "mine",
    "evaluate",
    "synthesize",
    "finetune",
    "ablate",
    "world replicates",
}  # each also refuses a bad --out


def _base(command: str, work: Path, bench: Path, inputs: Path) -> list[str]:
    """A valid command line of ``command`` writing only under ``work`` (the bad option is appended to it)."""
    out = ["--out", str(work / "out")]
    return {
        "demo": ["demo", "--only", "00", *out],
        "benchmark check": ["benchmark", "check", "--benchmark", str(bench)],
        "config show": ["config", "show"],
        "world build": ["world", "build", "--root", str(work / "world")],
        "world replicates": ["world", "replicates", "--seeds", "1,2", *out],
        "mine": ["mine", "--benchmark", str(bench), "--out", str(work / "out" / "negatives.json")],
        "features": ["features", "--benchmark", str(bench)],
        "evaluate": ["evaluate", "--benchmark", str(bench), *out],
        "synthesize": ["synthesize", "--benchmark", str(bench), *out],
        "finetune": ["finetune", "--benchmark", str(bench), "--synthetic", str(inputs / "syn"), *out],
        "ablate": ["ablate", "--benchmark", str(bench), "--synthetic", f"a={inputs / 'syn'}", *out],
    }[command]


@pytest.fixture(scope="module")
def fuzz_work(tmp_path_factory, mini_benchmark, inputs):
    work = tmp_path_factory.mktemp("fuzz")
    (work / "a-file").write_text("in the way of an output folder")
    mp = pytest.MonkeyPatch()
    mp.setenv("SYNOOD_CACHE", str(work / "cache"))  # anything written to the cache would show too
    yield work, Path(mini_benchmark), inputs
    mp.undo()


def _option_values(command: str):
    options = st.sampled_from(sorted(OPTIONS[command])).flatmap(lambda o: st.tuples(st.just(o), OPTIONS[command][o]))
    if command in OUT_OPTIONS:  # an output under a file, or a file where a folder belongs (a folder for a file)
        outs = ["a-file/out.json", "."] if command == "mine" else ["a-file/out", "a-file"]
        options |= st.tuples(st.just("--out"), st.sampled_from(outs))
    return options


@pytest.mark.parametrize("command", sorted(OPTIONS))
@settings(max_examples=CLI_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_subcommand_refuses_generated_bad_option_values_in_one_line_naming_the_option(command, fuzz_work, data):
    work, bench, inputs = fuzz_work
    option, value = data.draw(_option_values(command), label="option, value")
    if option in PATHS | {"--out"} and value and not value.startswith(("=", "noequals")) and "=" not in value:
        value = str(work / value)  # missing files and folders, under the workdir
    elif option in {"--data-root", "--synthetic"} and value.startswith("a=missing"):
        value = f"a={work / value[2:]}"
    argv = [*_base(command, work, bench, inputs)]
    if option == "--out":
        i = argv.index("--out")
        del argv[i : i + 2]
    before = _files(work)
    status, stdout, stderr = _run([*argv, f"{option}={value}"])
    lines = stderr.strip().splitlines()
    assert status == 2, (option, value, stderr)
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith(f"synood {command.split()[0]}") and ": error: " in lines[0]
    assert option in lines[0], (option, lines[0])
    assert _files(work) == before and not (work / "out").exists() and not (work / "world").exists()


def test_synood_threads_sets_torchs_threads_and_a_bad_value_is_refused(monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("SYNOOD_THREADS", "1")
        assert _run(["config", "show"])[0] == 0
        assert torch.get_num_threads() == 1
        for bad in ("x", "0", "-2", "1.5"):
            monkeypatch.setenv("SYNOOD_THREADS", bad)
            status, _, err = _run(["config", "show"])
            assert status == 2 and err.count("\n") == 1 and "SYNOOD_THREADS" in err, err
    finally:
        torch.set_num_threads(before)
