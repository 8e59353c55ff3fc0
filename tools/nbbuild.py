"""Write a notebook from a list of ("md" | "code" | "params", source) cells, stripped of outputs.

Used to author the kit's notebooks as plain text; the .ipynb files are what users open and what papermill runs.
"""

from __future__ import annotations

import subprocess
import sys

import nbformat


def write_notebook(path: str, cells: list[tuple[str, str]]) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3 (synood-kit)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for kind, source in cells:
        source = source.strip("\n")
        if kind == "md":
            nb.cells.append(nbformat.v4.new_markdown_cell(source))
        else:
            cell = nbformat.v4.new_code_cell(source)
            if kind == "params":
                cell.metadata["tags"] = ["parameters"]
            nb.cells.append(cell)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"
    nbformat.validate(nb)
    nbformat.write(nb, path)
    subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--quiet", str(path)], check=True
    )  # STYLE: ruff formats notebooks too
