"""Every notebook is paired with a py:percent script (jupytext) and committed stripped: an edit to one side that was
not synced fails here, before it can be lost."""

from __future__ import annotations

import subprocess
import sys

import nbformat
import pytest

from synood_kit.config import repo_root

FOLDER = repo_root() / "notebooks"
NOTEBOOKS = sorted(FOLDER.glob("[0-9][0-9]_*.ipynb"))
SCRIPTS = sorted(FOLDER.glob("[0-9][0-9]_*.py"))


def _cells(nb) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(c.cell_type, c.source.strip(), tuple(c.metadata.get("tags", ()))) for c in nb.cells]


def test_every_notebook_has_its_script_and_every_script_its_notebook():
    assert NOTEBOOKS, "no notebooks found"
    assert [p.stem for p in NOTEBOOKS] == [p.stem for p in SCRIPTS]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_and_script_hold_the_same_cells(notebook):
    import jupytext

    script = jupytext.read(notebook.with_suffix(".py"))
    stored = nbformat.read(notebook, as_version=4)
    assert _cells(stored) == _cells(script), (
        f"{notebook.name} and {notebook.stem}.py differ: run `make notebooks` (jupytext --sync) and commit both"
    )


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stripped_with_one_parameters_cell_and_metrics_last(notebook):
    nb = nbformat.read(notebook, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code:
        assert not cell.outputs and cell.execution_count is None, f"{notebook.name}: outputs not stripped"
    assert sum("parameters" in c.metadata.get("tags", ()) for c in code) == 1, f"{notebook.name}: one parameters cell"
    code_lines = [[line.split("#")[0] for line in c.source.splitlines()] for c in nb.cells]
    writes = [
        i for i, c in enumerate(nb.cells) if c.cell_type == "code" and any("metrics.json" in x for x in code_lines[i])
    ]
    assert writes == [len(nb.cells) - 1], f"{notebook.name}: only the last cell writes metrics.json"
    heading = nb.cells[-2]
    assert heading.cell_type == "markdown" and "What the test suite reads" in heading.source


def test_notebook_scripts_pass_ruff():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--quiet", *map(str, SCRIPTS)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_drifted_pair_is_caught(tmp_path):
    """The comparison above fails for a script changed without syncing (the check is not vacuous)."""
    import jupytext

    source = NOTEBOOKS[0]
    script = jupytext.read(source.with_suffix(".py"))
    script.cells[-1].source += "\nprint('edited in the script only')"
    assert _cells(nbformat.read(source, as_version=4)) != _cells(script)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_declares_every_parameter_of_the_parameters_cell(notebook):
    """papermill's parser must read every line of the parameters cell (a help comment holding '=' or quotes can
    defeat it, and the parameter is then silently not injected)."""
    import ast

    import papermill

    nb = nbformat.read(notebook, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", ()))
    assigned = [n.targets[0].id for n in ast.parse(cell.source).body if isinstance(n, ast.Assign)]
    assert list(papermill.inspect_notebook(str(notebook))) == assigned
