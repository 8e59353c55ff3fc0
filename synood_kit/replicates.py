"""Replicates over world seeds: which differences survive a new render of the mini-world.

A bootstrap interval over test images says how far a number would move with other test images drawn from the same
render; it says nothing of how far it moves when the world itself is rendered again (other scenes, other sources
for synthesis, other synthetic images). :func:`run_replicates` re-renders the mini-world benchmark with each
world seed (same classes, sizes and splits; :func:`synood_kit.registry.build_world`), and on each render runs the
headline comparison end to end with one preset:

* **NegLabel (zero-shot)**;
* **control**: the adapter trained on the ID images alone;
* **SynOOD (guided)**: stages A and B on synthetic images made with the preset's guidance;
* **SynOOD (unguided)**: the same on images made with the same in-painting and prompts, no noise updates.

It reports each metric per group of OOD splits (near, far) as the mean and standard deviation over seeds, beside
the first seed's bootstrap interval, so a reader sees which differences are larger than a new render moves them.
The models stay those of the preset: only the benchmark is re-rendered.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = ["HEADLINE", "ReplicateSettings", "ReplicateResult", "run_replicates", "replicate_summary"]

# reported name -> (synthesis kind, run_synood method)
HEADLINE = {
    "NegLabel (zero-shot)": ("guided", "NegLabel (zero-shot)"),
    "control: adapter on ID images only": ("guided", "control: adapter on ID images only"),
    "SynOOD (guided synthesis)": ("guided", "SynOOD (adapter + tuned labels)"),
    "SynOOD (unguided synthesis)": ("unguided", "SynOOD (adapter + tuned labels)"),
}
SYNTHESIS_KINDS = {"guided": {}, "unguided": {"synthesis.guidance.rounds": 0}}


@dataclass(frozen=True)
class ReplicateSettings:
    """Which world seeds, and which metrics are reported."""

    seeds: tuple[int, ...] = (2025, 2026, 2027)  # 2025 is the shipped render
    metrics: tuple[str, ...] = ("FPR95_IDpos", "AUROC")
    scale: float = 1.0  # every split's size times scale (for quick looks)

    def __post_init__(self):
        seeds = tuple(self.seeds)
        if len(seeds) < 2 or len(set(seeds)) != len(seeds):
            raise ValueError(
                f"--seeds needs at least two distinct world seeds (three or more to see a spread), got {seeds}"
            )
        if any(not isinstance(s, int) or not 0 <= s < 2**32 for s in seeds):
            raise ValueError(f"--seeds must be integers in [0, 2**32), got {seeds}")
        from .metrics import METRIC_COLUMNS

        bad = [m for m in self.metrics if m not in METRIC_COLUMNS]
        if bad or not self.metrics:
            raise ValueError(f"metrics must be among {METRIC_COLUMNS}, got {tuple(self.metrics)}")
        if not self.scale > 0:
            raise ValueError(f"--scale must be > 0, got {self.scale}")
        object.__setattr__(self, "seeds", seeds)
        object.__setattr__(self, "metrics", tuple(self.metrics))


@dataclass
class ReplicateResult:
    """What :func:`run_replicates` computed."""

    rows: object  # pandas.DataFrame: seed, method, group, metric, value, low, high (interval: n_boot > 0 only)
    summary: object  # pandas.DataFrame: method, group, metric, mean, sd, min, max, first-seed value and interval
    out_dir: Path


def run_replicates(out_dir: str | Path, preset, settings: ReplicateSettings, progress: bool = True) -> ReplicateResult:
    """Run the headline comparison on the mini-world rendered with each of ``settings.seeds``.

    Each seed's work lands in ``out_dir/seed-<seed>/`` (``synthetic_guided``, ``synthetic_unguided``,
    ``synood_guided``, ``synood_unguided``): every stage is resumable or cached, so an interrupted run continues
    where it stopped when run again. Writes ``replicates.csv`` (one row per seed, method, group and metric),
    ``replicates.md`` and ``metrics.json`` into ``out_dir``.

    Args:
        out_dir: the output folder.
        preset: a :class:`~synood_kit.preset.Preset` whose models are the mini-world's (the renders change, the
            models do not).
        settings: seeds, metrics and scale.
        progress: show progress bars.
    """
    import pandas as pd

    from .experiments import run_synood
    from .metrics import summarize
    from .registry import build_world, load_benchmark
    from .synthesis_run import run_synthesis

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in settings.seeds:
        root, _ = build_world(None, settings.scale, progress=progress, seed=seed)
        bench = load_benchmark(root, progress=progress)
        groups = bench.groups
        results = {}
        for kind, changes in SYNTHESIS_KINDS.items():
            folder = out / f"seed-{seed}" / f"synthetic_{kind}"
            run_synthesis(folder, bench, preset.override(changes), progress=progress)
            results[kind] = run_synood(out / f"seed-{seed}" / f"synood_{kind}", bench, preset, folder, progress)
        for name, (kind, method) in HEADLINE.items():
            scores = results[kind].scores[method]
            for group, splits in groups.items():
                table = summarize(scores["id_test"], {s: scores[s] for s in splits}, n_boot=preset.n_boot)
                for metric in settings.metrics:
                    row = {"seed": seed, "method": name, "group": group, "metric": metric}
                    row["value"] = float(table.loc["mean", metric])
                    if preset.n_boot:
                        row["low"] = float(table.loc["mean", f"{metric}_low"])
                        row["high"] = float(table.loc["mean", f"{metric}_high"])
                    rows.append(row)
    rows = pd.DataFrame(rows)
    summary = replicate_summary(rows)
    rows.to_csv(out / "replicates.csv", index=False)
    (out / "replicates.md").write_text(replicate_markdown(summary, settings.seeds))
    metrics = {
        "seeds": list(settings.seeds),
        "preset": preset.name,
        "settings": asdict(settings),
        "summary": summary.to_dict(orient="records"),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return ReplicateResult(rows, summary, out)


def replicate_summary(rows):
    """Return, per method, group and metric: each seed's value, the mean and sample standard deviation over seeds,
    their range, and the first seed's bootstrap interval (``low``/``high``; NaN without one)."""
    import pandas as pd

    first = rows["seed"].iloc[0]
    out = []
    for (method, group, metric), part in rows.groupby(["method", "group", "metric"], sort=False):
        values = part["value"].to_numpy(dtype=float)
        head = part[part["seed"] == first].iloc[0]
        out.append(
            {
                "method": method,
                "group": group,
                "metric": metric,
                "values": [float(v) for v in values],
                "mean": float(values.mean()),
                "sd": float(values.std(ddof=1)) if values.size > 1 else float("nan"),
                "min": float(values.min()),
                "max": float(values.max()),
                "first_seed": float(head["value"]),
                "first_low": float(head.get("low", np.nan)),
                "first_high": float(head.get("high", np.nan)),
            }
        )
    return pd.DataFrame(out)


def replicate_markdown(summary, seeds) -> str:
    """Return the summary as a markdown table (percent): per seed, mean +- sd, and the first seed's interval."""
    head = " | ".join(f"seed {s}" for s in seeds)
    lines = [
        f"| method | group | metric | {head} | mean +- sd over seeds | bootstrap 95% interval, seed {seeds[0]} |",
        "|---|---|---|" + "---|" * len(seeds) + "---|---|",
    ]
    for r in summary.itertuples():
        values = " | ".join(f"{100 * v:.1f}" for v in r.values)
        interval = "" if np.isnan(r.first_low) else f"[{100 * r.first_low:.1f}, {100 * r.first_high:.1f}]"
        lines.append(
            f"| {r.method} | {r.group} | {r.metric} | {values} | {100 * r.mean:.1f} +- {100 * r.sd:.1f} | {interval} |"
        )
    return "\n".join(lines) + "\n"
