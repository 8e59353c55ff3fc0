"""The main job: run every notebook in order with papermill, then render them and a summary page to HTML.

``synood demo --out DIR`` (the README's first command) calls :func:`run_report`. Each notebook writes into its
own folder under ``DIR/notebooks/<name>/``; later notebooks reuse earlier outputs where the plan says so (the
quickstart's synthesis folder feeds 04, 05, 06 and 08; 07's two synthesis folders feed 08), which is only a shortcut:
every notebook also runs alone with its defaults. A notebook that fails is recorded and the others still run;
everything already executed is kept, and the exit status says so.

Outputs::

    DIR/executed/<name>.ipynb   executed notebooks (outputs kept)
    DIR/html/<name>.html        each rendered, images embedded
    DIR/figures/*.png           key figures, copied from the notebooks' folders
    DIR/index.html              the summary: key figures, the results table, the ledger, time and cost
    DIR/report.json             per-notebook status, wall and CPU seconds, peak memory, synthesis cost
"""

from __future__ import annotations

import html
import platform
import resource
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import repo_root
from .storage import atomic_write_json, atomic_write_text

__all__ = ["KEY_FIGURES", "NotebookRun", "Report", "main_job_plan", "notebook_names", "run_report"]

KEY_FIGURES = {  # notebook -> (figure file in its folder, caption)
    "01_benchmark": ("zero_shot/score_histograms.png", "Zero-shot score histograms per split (01)"),
    "03_inpainting_loop": ("refinement.png", "The in-painting loop, step by step (03)"),
    "06_evaluate": ("roc_curves.png", "ROC curves: NegLabel, the ID-only control and SynOOD (06)"),
    "07_feature_space_umap": ("umap_boundary.png", "UMAP with the score field and the decision boundary (07)"),
    "08_ablations": ("ablations_near_fpr95.png", "Ablations against the ID-only control (08)"),
}


def notebook_names(folder: Path | None = None) -> list[str]:
    """Return the kit's notebooks (``NN_name`` stems) in run order."""
    folder = folder or repo_root() / "notebooks"
    return sorted(p.stem for p in folder.glob("[0-9][0-9]_*.ipynb"))


def main_job_plan(out: Path, names: list[str]) -> dict[str, dict]:
    """Return papermill parameters per notebook: its own ``out_dir``, and earlier outputs where they serve.

    The quickstart's synthesis folder (or, without it, 04's) feeds 04, 05, 06 and 08; 07's CLIP-guided and
    unguided sets feed 08.
    """
    nb = {name: out / "notebooks" / name for name in names}
    plan = {name: {"out_dir": str(folder)} for name, folder in nb.items()}
    source = next((n for n in ("00_quickstart", "04_negative_labels") if n in plan), None)
    if source is not None:
        shared = str(nb[source] / "synthetic")
        for later in ("04_negative_labels", "05_finetune_clip", "06_evaluate"):
            if later in plan and later != source:
                plan[later]["synthetic_dir"] = shared
        if "08_ablations" in plan:
            plan["08_ablations"]["guided_dir"] = shared
    if "07_feature_space_umap" in plan and "08_ablations" in plan:
        plan["08_ablations"]["unguided_dir"] = str(nb["07_feature_space_umap"] / "synthetic_unguided")
        plan["08_ablations"]["clip_guided_dir"] = str(nb["07_feature_space_umap"] / "synthetic_clip_guided")
    return plan


@dataclass
class NotebookRun:
    """One notebook's outcome in the main job."""

    name: str
    status: str = "not run"  # "ok", "failed" or "not run"
    seconds: float = 0.0  # wall time
    cpu_seconds: float = 0.0  # CPU time of the kernel process
    error: str = ""  # the error's last line when failed
    parameters: dict = field(default_factory=dict)


@dataclass
class Report:
    """What :func:`run_report` did."""

    out_dir: Path
    notebooks: list[NotebookRun]
    seconds: float
    index: Path

    @property
    def ok(self) -> bool:
        return all(n.status == "ok" for n in self.notebooks)


def _render(executed: Path, target: Path) -> list[str]:
    """Render an executed notebook to HTML; return its error outputs (``"Name: value"`` each)."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(executed, as_version=4)
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    atomic_write_text(target, body)
    return [
        f"{o.get('ename', '')}: {o.get('evalue', '')}"
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]


def run_report(
    out_dir: str | Path,
    only: list[str] | None = None,
    parameters: dict | None = None,
    kernel_name: str = "python3",
    progress: bool = True,
    notebooks_dir: str | Path | None = None,
    overwrite: bool = False,
) -> Report:
    """Run the notebooks in order, render each to HTML and write the summary page.

    Args:
        out_dir: output folder.
        only: notebook names or their ``NN`` prefixes to run (default: all).
        parameters: extra papermill parameters for every notebook that declares them (e.g. ``{"clip": ...}``).
        kernel_name: Jupyter kernel.
        progress: print a line per notebook and papermill's cell progress bar.
        notebooks_dir: where the notebooks are (default: the kit's ``notebooks/``).
        overwrite: replace a main job of other parameters that the folder holds (its outputs are removed first).

    The folder is locked and checked before the first write (:func:`~synood_kit.storage.claim_output`): a second
    main job into it at the same time, or a folder holding a main job of other parameters (or another kind of run),
    is refused; a rerun with the same parameters (any selection of notebooks) continues in it.

    Raises:
        ValueError: if ``only`` names no notebook, a parameter is declared by none of the notebooks run, or the
            folder holds another run.
        OutputError: if the folder is in use by another run or cannot be written.
    """
    import papermill

    from .storage import claim_output

    out = Path(out_dir).resolve()
    folder = Path(notebooks_dir) if notebooks_dir else repo_root() / "notebooks"
    names = notebook_names(folder)
    if only:
        chosen = [n for n in names if n in only or n[:2] in only]
        if not chosen:
            raise ValueError(f"no notebook matches {only}; expected names or prefixes of {names}")
        names = chosen
    plan = main_job_plan(out, names)
    parameters = dict(parameters or {})
    declared = {n: set(papermill.inspect_notebook(str(folder / f"{n}.ipynb"))) for n in names}
    unused = [k for k in parameters if not any(k in d for d in declared.values())]
    if unused:
        raise ValueError(f"parameters {unused} are declared by none of the notebooks {names}")
    outputs = ("executed", "html", "figures", "notebooks", "index.html", "report.json")
    with claim_output(out, "main job", {"parameters": parameters}, overwrite, outputs):
        return _run_notebooks(out, folder, names, plan, parameters, declared, kernel_name, progress)


def _run_notebooks(out, folder, names, plan, parameters, declared, kernel_name, progress) -> Report:
    """:func:`run_report`'s work, in a folder it holds."""
    import papermill

    for sub in ("executed", "html", "figures"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    runs, t_job = [], time.time()
    for i, name in enumerate(names, 1):
        params = {**plan[name], **{k: v for k, v in parameters.items() if k in declared[name]}}
        Path(params["out_dir"]).mkdir(parents=True, exist_ok=True)
        run = NotebookRun(name, parameters=params)
        if progress:
            print(f"[{i}/{len(names)}] {name} ...", flush=True)
        executed = out / "executed" / f"{name}.ipynb"
        cpu0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
        try:
            papermill.execute_notebook(
                str(folder / f"{name}.ipynb"),
                str(executed),
                parameters=params,
                kernel_name=kernel_name,
                cwd=str(repo_root()),
                progress_bar=progress,
            )
            run.status = "ok"
        except Exception as e:  # a failed notebook is recorded; the others still run
            run.status, run.error = (
                "failed",
                f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300] if str(e).strip() else ''}",
            )
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        run.seconds = round(time.time() - t0, 1)
        run.cpu_seconds = round((cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime), 1)
        if executed.is_file():
            errors = _render(executed, out / "html" / f"{name}.html")
            if errors and run.status == "ok":  # an error cell that papermill let pass (e.g. tagged raises-exception)
                run.status, run.error = "failed", errors[-1]
        if progress:
            print(
                f"[{i}/{len(names)}] {name}: {run.status} in {run.seconds:.0f} s"
                + (f" ({run.error})" if run.error else ""),
                flush=True,
            )
        runs.append(run)
    seconds = round(time.time() - t_job, 1)
    index = _write_summary(out, runs, seconds)
    if progress:
        print(
            f"report: {index} ({sum(r.status == 'ok' for r in runs)}/{len(runs)} notebooks ok, {seconds / 60:.1f} min)"
        )
    return Report(out, runs, seconds, index)


def _synthesis_cost(out: Path) -> dict:
    """Sum the cost records of every synthesis folder the run wrote."""
    from .synthesis import read_records

    images = unet = 0
    seconds = 0.0
    folders = sorted({p.parent for p in out.glob("notebooks/*/**/synthesis.json")})
    for folder in folders:
        for record in read_records(folder).values():
            images += 1
            unet += int(record.get("cost", {}).get("unet_evals", 0))
            seconds += float(record.get("cost", {}).get("seconds", 0.0))
    return {"folders": len(folders), "images": images, "unet_evaluations": unet, "seconds": round(seconds, 1)}


def _markdown_html(text: str) -> str:
    import mistune

    return mistune.create_markdown(plugins=["table"])(text)


def _write_summary(out: Path, runs: list[NotebookRun], seconds: float) -> Path:
    from .ledger import reported_numbers

    figures = []
    for name, (file, caption) in KEY_FIGURES.items():
        source = out / "notebooks" / name / file
        if source.is_file():
            target = f"{name}-{Path(file).name}"
            shutil.copyfile(source, out / "figures" / target)
            figures.append((f"figures/{target}", caption))
    results = out / "notebooks" / "06_evaluate" / "finetune" / "synood.md"
    ablations = out / "notebooks" / "08_ablations" / "grid" / "ablations.md"
    cost = _synthesis_cost(out)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    rows = "".join(
        f"<tr><td><a href='html/{r.name}.html'>{html.escape(r.name)}</a></td>"
        f"<td class='{r.status}'>{r.status}</td><td>{r.seconds:.0f}</td><td>{r.cpu_seconds:.0f}</td>"
        f"<td>{html.escape(r.error)}</td></tr>"
        for r in runs
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>synood-kit report</title><style>"
        "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
        ".ok{color:#070}.failed{color:#b00;font-weight:bold}img{max-width:100%}figure{margin:1em 0}</style></head><body>",
        "<h1>SynOOD kit: main job report</h1>",
        f"<p>{time.strftime('%Y-%m-%d %H:%M:%S %Z')} on {html.escape(platform.node())} "
        f"({html.escape(platform.processor() or platform.machine())}, {_cpu_count()} CPUs). "
        f"Total {seconds / 60:.1f} min; {sum(r.status == 'ok' for r in runs)}/{len(runs)} notebooks ok.</p>",
        "<h2>Notebooks</h2><table><tr><th>notebook</th><th>status</th><th>wall s</th><th>CPU s</th><th>error</th></tr>",
        rows,
        "</table>",
        f"<h2>Cost</h2><p>Synthesis: {cost['images']} images in {cost['folders']} folders, "
        f"{cost['unet_evaluations']} UNet evaluations, {cost['seconds']:.0f} s of refinement. "
        f"Peak memory of one notebook kernel: {peak_mb:.0f} MB.</p>",
        "<h2>Key figures</h2>",
        *(f"<figure><img src='{src}'><figcaption>{html.escape(cap)}</figcaption></figure>" for src, cap in figures),
    ]
    if results.is_file():
        parts += [
            "<h2>Results: SynOOD vs zero-shot NegLabel and the ID-only control (06)</h2>",
            _markdown_html(results.read_text()),
        ]
    if ablations.is_file():
        parts += ["<h2>Ablations (08)</h2>", _markdown_html(ablations.read_text())]
    parts += [
        "<h2>Ledger: published numbers (ImageNet-1k, for GPU runs with real weights)</h2>",
        reported_numbers().to_html(index=False),
        "</body></html>",
    ]
    index = atomic_write_text(out / "index.html", "\n".join(parts))
    atomic_write_json(
        out / "report.json",
        {
            "seconds": seconds,
            "notebooks": [asdict(r) for r in runs],
            "synthesis_cost": cost,
            "peak_kernel_memory_mb": round(peak_mb),
        },
    )
    return index


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
