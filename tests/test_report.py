"""The main job's runner: notebooks in order, failures recorded while the others run, HTML and a summary page."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest

from synood_kit.report import main_job_plan, notebook_names, run_report


def _notebook(path: Path, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('out_dir = "x"\nvalue = 1')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def notebooks(tmp_path):
    folder = tmp_path / "nbs"
    folder.mkdir()
    _notebook(folder / "01_first.ipynb", "from pathlib import Path\nPath(out_dir, 'v.txt').write_text(str(value))")
    _notebook(folder / "02_broken.ipynb", "raise RuntimeError('bad value ' + str(value))")
    _notebook(folder / "03_after.ipynb", "print('ran after the failure')")
    return folder


def test_plan_chains_synthesis_folders_and_gives_each_notebook_its_folder(tmp_path):
    names = notebook_names()
    assert names[0] == "00_quickstart" and names == sorted(names) and len(names) >= 9
    plan = main_job_plan(tmp_path, names)
    assert all(plan[n]["out_dir"] == str(tmp_path / "notebooks" / n) for n in names)
    shared = str(tmp_path / "notebooks" / "00_quickstart" / "synthetic")
    for name in ("04_negative_labels", "05_finetune_clip", "06_evaluate"):
        assert plan[name]["synthetic_dir"] == shared
    assert plan["08_ablations"]["guided_dir"] == shared
    assert plan["08_ablations"]["unguided_dir"].endswith("07_feature_space_umap/synthetic_unguided")
    # without the quickstart, 04 synthesises and feeds the later ones
    partial = main_job_plan(tmp_path, ["04_negative_labels", "05_finetune_clip"])
    assert "synthetic_dir" not in partial["04_negative_labels"]
    assert partial["05_finetune_clip"]["synthetic_dir"] == str(
        tmp_path / "notebooks" / "04_negative_labels" / "synthetic"
    )
    # run alone, a notebook gets only its folder and synthesises what it needs itself
    assert main_job_plan(tmp_path, ["05_finetune_clip"]) == {
        "05_finetune_clip": {"out_dir": str(tmp_path / "notebooks" / "05_finetune_clip")}
    }


@pytest.mark.skipif(sys.platform == "win32", reason="resource module")
def test_a_failing_notebook_is_recorded_and_the_others_still_run(notebooks, tmp_path):
    report = run_report(tmp_path / "out", parameters={"value": 7}, progress=False, notebooks_dir=notebooks)
    status = {r.name: r.status for r in report.notebooks}
    assert status == {"01_first": "ok", "02_broken": "failed", "03_after": "ok"} and not report.ok
    assert "bad value 7" in report.notebooks[1].error
    assert (tmp_path / "out" / "notebooks" / "01_first" / "v.txt").read_text() == "7"  # parameter injected
    for name in status:  # every executed notebook is kept and rendered, the failed one included
        assert (tmp_path / "out" / "executed" / f"{name}.ipynb").is_file()
        assert (tmp_path / "out" / "html" / f"{name}.html").is_file()
    index = (tmp_path / "out" / "index.html").read_text()
    assert "02_broken" in index and "failed" in index and "2/3 notebooks ok" in index
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [n["status"] for n in saved["notebooks"]] == ["ok", "failed", "ok"]


def test_bad_selection_and_unknown_parameters_are_refused(notebooks, tmp_path):
    with pytest.raises(ValueError, match="no notebook matches"):
        run_report(tmp_path / "o", only=["99"], progress=False, notebooks_dir=notebooks)
    with pytest.raises(ValueError, match=r"\['colour'\] are declared by none"):
        run_report(tmp_path / "o", parameters={"colour": 1}, progress=False, notebooks_dir=notebooks)
    assert not (tmp_path / "o").exists()


def test_demo_cli_refuses_a_malformed_parameter(capsys):
    from synood_kit.cli import main

    assert main(["demo", "--out", "x", "--param", "not a pair"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
