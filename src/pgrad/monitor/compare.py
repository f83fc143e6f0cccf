"""``pgrad compare RUN ...``: runs grouped by configuration, seeds aggregated, a table and a plot.

Runs whose configs differ only in ``run.seed`` form one group (a folder without ``config.yaml`` is
a group of its own). Each run's score is the last value of ``metric`` (``rollout/return_mean``: the
mean return of its last training episodes; ``eval/return_mean``: its last evaluation). Per group the
table gives the seeds' scores, their mean and IQM with percentile bootstrap intervals
(``pgrad.monitor.aggregate``); the plot draws each group's aggregate learning curve with its band,
the runs' curves interpolated onto the env steps they all reached.
"""

from __future__ import annotations

import difflib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pgrad.checkpoint import check_run_folder, inside_run
from pgrad.config import load_yaml
from pgrad.errors import ConfigError
from pgrad.monitor.aggregate import Interval, Statistic, bootstrap_band, bootstrap_interval, common_grid
from pgrad.monitor.doctor import well_formed_rows
from pgrad.monitor.report import metric_series, plain_text
from pgrad.monitor.sinks import read_jsonl


@dataclass(frozen=True)
class RunCurve:
    """One run's curve of a metric over env steps, with its seed and its config without the seed."""

    run_dir: Path
    seed: int | None
    config: dict[str, Any] | None  # the run's config.yaml without run.seed; None when it has none
    steps: np.ndarray
    values: np.ndarray
    logged: frozenset[str] = frozenset()  # every metric name in the run's metrics.jsonl


@dataclass(frozen=True)
class GroupSummary:
    """A group of runs that differ only in their seed: final scores, mean and IQM with intervals."""

    label: str
    runs: list[RunCurve]
    scores: np.ndarray  # each run's last value of the metric
    mean: Interval
    iqm: Interval


def read_curve(run_dir: Path, metric: str) -> RunCurve:
    """A run folder's ``metric`` over env steps, its seed and its config (read as data, inside the folder)."""
    check_run_folder(Path(run_dir))  # links planted in a received folder: one line, nothing read through them
    rows = well_formed_rows(read_jsonl(inside_run(Path(run_dir), "metrics.jsonl", "metrics.jsonl")))
    steps, values = metric_series(rows, metric)
    config_path = Path(run_dir) / "config.yaml"
    config = load_yaml(inside_run(Path(run_dir), "config.yaml", "config.yaml")) if config_path.is_file() else None
    seed = None
    if config is not None:
        run_section = dict(config.get("run") or {})
        seed = run_section.pop("seed", None)
        config = {**config, "run": run_section}
    logged = frozenset(key for row in rows for key in row)
    return RunCurve(Path(run_dir), seed, config, steps, values, logged)


def check_metric(curves: list[RunCurve], metric: str) -> None:
    """A metric no run has ever logged is a typo, not a metric "not logged yet": say so, with the nearest
    name the runs do log."""
    logged = sorted(set().union(*(curve.logged for curve in curves)) - {"step", "time"})
    if metric in logged or not logged:
        return
    close = difflib.get_close_matches(metric, logged, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(name) for name in close)}?" if close else ""
    raise ConfigError(f"--metric {metric!r} is not logged by any of these runs{hint}")


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat(value, f"{name}."))
        else:
            flat[name] = json.dumps(value)
    return flat


def group_runs(curves: list[RunCurve]) -> dict[str, list[RunCurve]]:
    """Runs with the same config but for the seed, under a label: algorithm and env, plus the fields
    that tell groups of that algorithm and env apart (``lr=...``-style, at most three)."""
    keyed: dict[str, list[RunCurve]] = {}
    for curve in curves:
        key = str(curve.run_dir) if curve.config is None else json.dumps(curve.config, sort_keys=True, default=str)
        keyed.setdefault(key, []).append(curve)
    flats = {key: _flat(runs[0].config) for key, runs in keyed.items() if runs[0].config is not None}
    groups: dict[str, list[RunCurve]] = {}
    for key, runs in keyed.items():
        config = runs[0].config
        if config is None:
            label = str(runs[0].run_dir)
        else:
            label = f"{config.get('algo')} {(config.get('env') or {}).get('id')}"
            differing = sorted(
                name
                for name in flats[key]
                if name not in ("algo", "env.id") and len({flat.get(name) for flat in flats.values()}) > 1
            )
            if differing:
                label += " (" + ", ".join(f"{name}={flats[key][name]}" for name in differing[:3]) + ")"
        groups[label] = runs
    return groups


def summarize(
    groups: dict[str, list[RunCurve]], confidence: float = 0.95, reps: int = 2000, seed: int = 0
) -> list[GroupSummary]:
    """Per group, the runs' last values with the mean and IQM and their bootstrap intervals."""
    summaries = []
    for label, runs in groups.items():
        scores = np.array([run.values[-1] for run in runs if run.values.size], np.float64)
        if scores.size == 0:
            raise ConfigError(f"no run of group '{label}' has logged its metric yet")
        summaries.append(
            GroupSummary(
                label,
                runs,
                scores,
                bootstrap_interval(scores, "mean", confidence, reps, seed),
                bootstrap_interval(scores, "iqm", confidence, reps, seed),
            )
        )
    return summaries


def table_lines(summaries: list[GroupSummary], metric: str, confidence: float = 0.95) -> list[str]:
    """The summaries as an aligned text table, one line per group."""
    band = f"{confidence:.0%} CI"
    header = ["group", "runs", "seeds", f"scores ({metric}, last)", f"mean [{band}]", f"IQM [{band}]"]
    rows = [header]
    for summary in summaries:
        seeds = ",".join("-" if run.seed is None else str(run.seed) for run in summary.runs)
        rows.append(
            [
                summary.label,
                str(len(summary.runs)),
                seeds,
                " ".join(f"{score:.1f}" for score in summary.scores),
                f"{summary.mean.value:.1f} [{summary.mean.low:.1f}, {summary.mean.high:.1f}]",
                f"{summary.iqm.value:.1f} [{summary.iqm.low:.1f}, {summary.iqm.high:.1f}]",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]


def plot_groups(
    groups: dict[str, list[RunCurve]],
    out_path: Path,
    metric: str,
    statistic: Statistic = "iqm",
    confidence: float = 0.95,
    reps: int = 1000,
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Each group's ``statistic`` curve with its bootstrap band in one PNG; returns what was drawn
    (grid, value, low, high) per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    drawn = {}
    for label, runs in groups.items():
        curves = [(run.steps, run.values) for run in runs if run.values.size]
        if not curves:
            continue
        grid, values = common_grid(curves)
        value, low, high = bootstrap_band(values, statistic, confidence, reps)
        line = ax.plot(grid, value, label=plain_text(f"{label} ({len(curves)} runs)"), linewidth=1.4)[0]
        ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        drawn[label] = (grid, value, low, high)
    ax.set_xlabel("env steps")
    ax.set_ylabel(plain_text(f"{metric} ({statistic.upper() if statistic == 'iqm' else statistic} over runs)"))
    ax.set_title(f"{statistic.upper() if statistic == 'iqm' else statistic} with {confidence:.0%} bootstrap band")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()  # drawn first, then written by Python: a write error (/dev/full) is an OSError, not lost
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    out_path.write_bytes(buffer.getvalue())
    return drawn
