"""What the benchmark scripts that compare pgrad with a reference library per seed share: the
threshold, how missing values print, the median that counts an unreached seed as infinite, pgrad's
two modes (as shipped and bare), and the per-seed table with its medians."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

TARGET = 475.0  # the mean return of the last WINDOW training episodes that counts as "solved"
WINDOW = 20


def fmt(value: float | None, spec: str) -> str:
    return "not reached" if value is None else format(value, spec)


def median_or_none(values: list[float | None]) -> float | None:
    """Median with unreached runs as +inf: None when half or more of the seeds did not reach."""
    result = statistics.median([math.inf if v is None else v for v in values])
    return None if math.isinf(result) else result


# ---- pgrad as shipped beside the bare loop ------------------------------------------------------

# What a user runs is pgrad's defaults: TensorBoard, the guard, periodic evaluation and checkpoints
# on. The bare loop has them off. Every speed table shows both against the reference's defaults.
BARE_SETS = ["run.tensorboard=false", "guard.enabled=false", "guard.eval_every=0", "run.checkpoint_every=1000000000"]
PGRAD_MODES = {"shipped": [], "bare": BARE_SETS}
MODE_NOTE = (
    "pgrad shipped: its defaults (TensorBoard, guard, evaluation every 25k steps, checkpoints every 25k "
    f"steps); pgrad bare: `{' '.join(BARE_SETS)}`; SB3 with its own defaults."
)


def rotated(items: list[str], index: int) -> list[str]:
    """``items`` rotated by ``index``: which library runs first changes from seed to seed."""
    shift = index % len(items)
    return items[shift:] + items[:shift]


@dataclass
class SeedSummary:
    """Medians over seeds of several pgrad modes against one reference (see ``seed_table``)."""

    median: dict[str, dict[str, float | None]]  # lib -> {"steps", "seconds"}
    steps_per_second: dict[str, float]
    reached: dict[str, int]
    per_seed_ratio: dict[str, float | None]  # lib -> median over seeds (where both reached) of lib / reference s

    def ratio(self, lib: str, key: str, reference: str = "sb3") -> float | None:
        ours, theirs = self.median[lib][key], self.median[reference][key]
        return ours / theirs if ours and theirs else None


def seed_table(
    rows: list[tuple[int, dict[str, dict[str, Any]]]], libs: list[str], reference: str = "sb3"
) -> tuple[list[str], SeedSummary]:
    """Per-seed table (steps and seconds to the target, steps/s, for each of ``libs`` and the reference,
    and each lib's time ratio to the reference) and the medians. ``rows``: (seed, {lib: result}), result
    keys ``steps``, ``seconds`` (None when the target was not reached) and ``steps_per_second``."""
    names = [*libs, reference]
    header = "| seed | " + " | ".join(f"{n} steps | {n} s | {n} steps/s" for n in names)
    header += " | " + " | ".join(f"{n} / {reference}" for n in libs) + " |"
    lines = [header, "|---:|" + "---:|" * (3 * len(names) + len(libs))]
    ratios: dict[str, list[float]] = {lib: [] for lib in libs}
    for seed, r in rows:
        cells = [
            f"{fmt(r[n]['steps'], ',d')} | {fmt(r[n]['seconds'], '.1f')} | {r[n]['steps_per_second']:,.0f}"
            for n in names
        ]
        ratio_cells = []
        for lib in libs:
            ours, theirs = r[lib]["seconds"], r[reference]["seconds"]
            ratio = ours / theirs if ours and theirs else None
            if ratio is not None:
                ratios[lib].append(ratio)
            ratio_cells.append(fmt(ratio, ".3f"))
        lines.append(f"| {seed} | " + " | ".join(cells) + " | " + " | ".join(ratio_cells) + " |")
    summary = SeedSummary(
        median={n: {key: median_or_none([r[n][key] for _, r in rows]) for key in ("steps", "seconds")} for n in names},
        steps_per_second={n: statistics.median(r[n]["steps_per_second"] for _, r in rows) for n in names},
        reached={n: sum(r[n]["steps"] is not None for _, r in rows) for n in names},
        per_seed_ratio={lib: statistics.median(ratios[lib]) if ratios[lib] else None for lib in libs},
    )
    return lines, summary


def summary_lines(summary: SeedSummary, libs: list[str], reference: str = "sb3") -> list[str]:
    """The medians table: seconds and env steps to the target and steps/s, each lib against the reference."""
    names = [*libs, reference]
    med, sps = summary.median, summary.steps_per_second
    lines = [
        "| median over seeds | "
        + " | ".join(names)
        + " | "
        + " | ".join(f"{lib} / {reference}" for lib in libs)
        + " |",
        "|---|" + "---:|" * (len(names) + len(libs)),
        f"| seconds to {TARGET:.0f} | "
        + " | ".join(fmt(med[n]["seconds"], ".2f") for n in names)
        + " | "
        + " | ".join(fmt(summary.ratio(lib, "seconds", reference), ".3f") for lib in libs)
        + " |",
        f"| env steps to {TARGET:.0f} | "
        + " | ".join(fmt(med[n]["steps"], ",.0f") for n in names)
        + " | "
        + " | ".join(fmt(summary.ratio(lib, "steps", reference), ".3f") for lib in libs)
        + " |",
        "| steps/s | "
        + " | ".join(f"{sps[n]:,.0f}" for n in names)
        + " | "
        + " | ".join(f"{sps[lib] / sps[reference]:.2f}x" for lib in libs)
        + " |",
        "",
        "Seeds reaching the target: " + ", ".join(f"{n} {summary.reached[n]}" for n in names) + ". "
        "Median of the per-seed time ratios (seeds where both reached): "
        + ", ".join(f"{lib} {fmt(summary.per_seed_ratio[lib], '.3f')}" for lib in libs)
        + ".",
    ]
    return lines
