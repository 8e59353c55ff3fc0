"""The reported-vs-reproduced ledger: published numbers (with their source) beside what the kit measured.

``reported_numbers.csv`` (package data) holds one row per published value: method, benchmark, OOD set, metric
(``AUROC`` or ``FPR95_IDpos``, in percent), value and source. :func:`ledger` joins it with a measured table
from :func:`synood_kit.evaluation.ood_table`.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ledger", "reported_numbers"]

_CSV = Path(__file__).with_name("reported_numbers.csv")


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
        benchmark: the ledger's benchmark name, e.g. ``"ImageNet-1k (MOS)"``.
        set_names: measured OOD set name -> ledger name (e.g. ``{"inat": "iNaturalist"}``); default identity.
        method_names: measured method name -> ledger method; default identity.
        metrics: the metrics compared.

    Returns:
        A ``pandas.DataFrame`` with ``method, ood_set, metric, reported, measured, difference, source``
        (percent); a published value that was not measured has ``measured`` NaN, and the reverse.
    """
    import pandas as pd

    reported = reported_numbers()
    reported = reported[reported["benchmark"] == benchmark]
    if reported.empty:
        known = sorted(reported_numbers()["benchmark"].unique())
        raise ValueError(f"no reported numbers for benchmark {benchmark!r}; known: {known}")
    set_names, method_names = set_names or {}, method_names or {}
    rows = []
    for _, r in measured.iterrows():
        for metric in metrics:
            rows.append(
                {
                    "method": method_names.get(r["method"], r["method"]),
                    "ood_set": set_names.get(r["ood_set"], r["ood_set"]),
                    "metric": metric,
                    "measured": 100.0 * float(r[metric]),
                }
            )
    mine = pd.DataFrame(rows, columns=["method", "ood_set", "metric", "measured"])
    out = (
        reported.drop(columns=["benchmark"])
        .rename(columns={"value": "reported"})
        .merge(mine, on=["method", "ood_set", "metric"], how="outer")
    )
    out["difference"] = out["measured"] - out["reported"]
    return out[["method", "ood_set", "metric", "reported", "measured", "difference", "source"]]
