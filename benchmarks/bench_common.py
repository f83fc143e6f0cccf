"""What the benchmark scripts that compare pgrad with a reference library per seed share: the
threshold, how missing values print, the median that counts an unreached seed as infinite, and the
per-seed table with its medians."""

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


@dataclass
class PairedSummary:
    """Medians over seeds of a pgrad-vs-reference comparison (see ``paired_seed_table``)."""

    median: dict[str, dict[str, float | None]]  # lib -> {"steps", "seconds"}
    steps_per_second: dict[str, float]  # lib -> median steps/s
    reached: dict[str, int]  # lib -> seeds that reached the target
    per_seed_ratio: float | None  # median of pgrad/reference seconds over seeds where both reached

    def ratio(self, key: str) -> float | None:
        ours, theirs = self.median["pgrad"][key], self.median["sb3"][key]
        return ours / theirs if ours and theirs else None


def paired_seed_table(rows: list[tuple[int, dict[str, dict[str, Any]]]]) -> tuple[list[str], PairedSummary]:
    """The per-seed table (steps, seconds, steps/s for pgrad and SB3, and their time ratio) and the
    medians. ``rows`` holds (seed, {"pgrad": result, "sb3": result}) with result keys ``steps``,
    ``seconds`` (None when the target was not reached) and ``steps_per_second``."""
    lines = [
        "| seed | pgrad steps | pgrad s | pgrad steps/s | SB3 steps | SB3 s | SB3 steps/s | time ratio pgrad/SB3 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ratios = []
    for seed, r in rows:
        ours, theirs = r["pgrad"], r["sb3"]
        ratio = ours["seconds"] / theirs["seconds"] if ours["seconds"] and theirs["seconds"] else None
        ratios.append(ratio)
        lines.append(
            f"| {seed} | {fmt(ours['steps'], ',d')} | {fmt(ours['seconds'], '.1f')} | {ours['steps_per_second']:,.0f} "
            f"| {fmt(theirs['steps'], ',d')} | {fmt(theirs['seconds'], '.1f')} | {theirs['steps_per_second']:,.0f} "
            f"| {fmt(ratio, '.3f')} |"
        )
    libs = ("pgrad", "sb3")
    known = [x for x in ratios if x is not None]
    summary = PairedSummary(
        median={
            lib: {key: median_or_none([r[lib][key] for _, r in rows]) for key in ("steps", "seconds")} for lib in libs
        },
        steps_per_second={lib: statistics.median(r[lib]["steps_per_second"] for _, r in rows) for lib in libs},
        reached={lib: sum(r[lib]["steps"] is not None for _, r in rows) for lib in libs},
        per_seed_ratio=statistics.median(known) if known else None,
    )
    return lines, summary
