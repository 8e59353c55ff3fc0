"""The reported-vs-reproduced ledger: published numbers (with their source) beside what the kit measured.

``reported_numbers.csv`` (package data) holds one row per published value: method, benchmark, OOD set, metric
(``AUROC`` or ``FPR95_IDpos``, in percent), value and source. :func:`ledger` joins it with a measured table from
:func:`synood_kit.evaluation.ood_table`:

* per split, by **canonical name**: a measured split called ``inat``, ``iNaturalist`` or ``inaturalist`` meets
  the paper's iNaturalist (:func:`canonical_split`);
* a paper's **average** (the MOS four's ``mean``, OpenOOD's ``near`` and ``far``) is compared only with the
  average of the measured values over exactly the splits the paper averaged; when some were not measured the
  measured value is empty and the ``note`` says which are missing. The measured table's own ``mean`` row (over
  whatever splits the run had) is never set beside the paper's.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["AVERAGED_SPLITS", "LEDGER_BENCHMARKS", "canonical_split", "ledger", "reported_numbers"]

_CSV = Path(__file__).with_name("reported_numbers.csv")

# The splits each published average is taken over (docs/method.md, "Reported numbers").
AVERAGED_SPLITS = {
    ("ImageNet-1k (MOS)", "mean"): ("iNaturalist", "SUN", "Places", "Textures"),
    ("OpenOOD v1.5 ImageNet-1k", "near"): ("SSB-hard", "NINCO"),
    ("OpenOOD v1.5 ImageNet-1k", "far"): ("iNaturalist", "Textures", "OpenImage-O"),
}

# Which ledger benchmark a built-in benchmark is compared with.
LEDGER_BENCHMARKS = {"imagenet-mos": "ImageNet-1k (MOS)", "openood-v1.5-imagenet": "OpenOOD v1.5 ImageNet-1k"}

_ALIASES = {
    "inaturalist": "iNaturalist",
    "inat": "iNaturalist",
    "sun": "SUN",
    "sun397": "SUN",
    "places": "Places",
    "places365": "Places",
    "textures": "Textures",
    "texture": "Textures",
    "dtd": "Textures",
    "ssbhard": "SSB-hard",
    "ssb": "SSB-hard",
    "ninco": "NINCO",
    "openimageo": "OpenImage-O",
    "openimage": "OpenImage-O",
}

_METHODS = {"NegLabel (zero-shot)": "NegLabel", "SynOOD (adapter + tuned labels)": "SynOOD"}


def canonical_split(name: str) -> str:
    """Return the ledger's name of an OOD split: case, spaces, ``-`` and ``_`` are ignored, and common aliases
    (``inat``, ``dtd``, ``places365``, ``ssb_hard``, ``openimage_o``) are known; other names come back as given."""
    key = re.sub(r"[\s_\-]", "", str(name)).lower()
    return _ALIASES.get(key, str(name))


def reported_numbers(path: str | Path | None = None):
    """Return the published numbers as a ``pandas.DataFrame`` (values in percent).

    Raises:
        ValueError: if a row lacks a source or a value, naming the row.
    """
    import pandas as pd

    table = pd.read_csv(path or _CSV)
    missing = {"method", "benchmark", "ood_set", "metric", "value", "source"} - set(table.columns)
    if missing:
        raise ValueError(f"{path or _CSV} lacks the columns {sorted(missing)}")
    bad = table[table["source"].isna() | table["value"].isna()]
    if len(bad):
        raise ValueError(f"rows without a value or source in {path or _CSV}: {bad.index.tolist()}")
    return table


def ledger_names() -> list[str]:
    """Return the benchmarks that have reported numbers (what :func:`ledger` accepts)."""
    return sorted(reported_numbers()["benchmark"].unique())


def ledger(
    measured,
    benchmark: str,
    set_names: dict[str, str] | None = None,
    method_names: dict[str, str] | None = None,
    metrics: tuple[str, ...] = ("FPR95_IDpos", "AUROC"),
):
    """Return reported and measured values side by side for one benchmark.

    Args:
        measured: a table from :func:`~synood_kit.evaluation.ood_table` (fractions).
        benchmark: the ledger's benchmark name, e.g. ``"ImageNet-1k (MOS)"`` (see :data:`LEDGER_BENCHMARKS`).
        set_names: measured split name -> ledger name, for names :func:`canonical_split` does not know.
        method_names: measured method name -> ledger method (default: the kit's SynOOD and zero-shot NegLabel rows
            map to ``SynOOD`` and ``NegLabel``; other names as they are).
        metrics: the metrics compared.

    Returns:
        A ``pandas.DataFrame`` with ``method, ood_set, metric, reported, measured, difference, source, note``
        (percent). A published value that was not measured has ``measured`` NaN (its ``note`` says why for an
        average), and a measured split the paper did not report has ``reported`` NaN.

    Raises:
        ValueError: for a benchmark without reported numbers (naming the known ones).
    """
    import numpy as np
    import pandas as pd

    table = reported_numbers()
    reported = table[table["benchmark"] == benchmark].drop(columns=["benchmark"]).rename(columns={"value": "reported"})
    if reported.empty:
        raise ValueError(
            f"no reported numbers for benchmark {benchmark!r}; known: {sorted(table['benchmark'].unique())}"
        )
    set_names = set_names or {}
    methods = {**_METHODS, **(method_names or {})}
    averages = {name: splits for (b, name), splits in AVERAGED_SPLITS.items() if b == benchmark}
    per_split: dict[tuple[str, str, str], float] = {}
    for _, r in measured.iterrows():
        if r["ood_set"] == "mean":  # the run's own mean is over its splits, not the paper's
            continue
        split = set_names.get(r["ood_set"], canonical_split(r["ood_set"]))
        for metric in metrics:
            per_split[(methods.get(r["method"], r["method"]), split, metric)] = 100.0 * float(r[metric])
    rows = [
        {"method": m, "ood_set": s, "metric": k, "measured": v, "note": ""}
        for (m, s, k), v in per_split.items()
        if s not in averages
    ]
    for name, splits in averages.items():
        for method in sorted({m for m, _, _ in per_split}):
            for metric in metrics:
                values = [per_split.get((method, s, metric)) for s in splits]
                missing = [s for s, v in zip(splits, values, strict=True) if v is None]
                note = f"mean over {', '.join(splits)}"
                if missing:
                    note += f"; not measured: {', '.join(missing)}"
                value = float(np.mean(values)) if not missing else float("nan")
                rows.append({"method": method, "ood_set": name, "metric": metric, "measured": value, "note": note})
    mine = pd.DataFrame(rows, columns=["method", "ood_set", "metric", "measured", "note"])
    out = reported.merge(mine, on=["method", "ood_set", "metric"], how="outer")
    out["note"] = out["note"].fillna("")
    for name, splits in averages.items():  # a published average that no measured method touched
        unmeasured = (out["ood_set"] == name) & out["measured"].isna() & (out["note"] == "")
        out.loc[unmeasured, "note"] = f"mean over {', '.join(splits)}; not measured"
    out["difference"] = out["measured"] - out["reported"]
    return out[["method", "ood_set", "metric", "reported", "measured", "difference", "source", "note"]]
