"""Aggregating scores over seeds, as rliable does (Agarwal et al., 2021): the mean or the
interquartile mean, with percentile bootstrap confidence intervals.

Pure functions of arrays: ``pgrad.monitor.compare`` reads the runs and draws; these are what its
table and bands are made of, and what the tests check against hand-computed values.

- IQM: the mean of the middle 50% of the scores, cutting floor(n/4) from each end (SciPy's
  ``trim_mean(x, 0.25)``, which rliable calls): robust to one outlying seed, yet less noisy than
  the median. With fewer than 4 runs nothing is cut and it equals the mean.
- Bootstrap interval: resample the n runs with replacement ``reps`` times, compute the statistic
  on each resample, take the (1 - c)/2 and (1 + c)/2 percentiles (rliable's percentile method; its
  stratification over tasks is moot with one task).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

Statistic = Literal["mean", "iqm"]


def iqm(scores: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean along ``axis``: the mean after cutting floor(n/4) scores from each end."""
    ordered = np.sort(np.asarray(scores, np.float64), axis=axis)
    n = ordered.shape[axis]
    cut = n // 4
    kept: np.ndarray = np.take(ordered, np.arange(cut, n - cut), axis=axis).mean(axis=axis)  # numpy's stub: Any
    return kept


def mean(scores: np.ndarray, axis: int = -1) -> np.ndarray:
    """The mean along ``axis``, in float64 (the companion of ``iqm``)."""
    means: np.ndarray = np.asarray(scores, np.float64).mean(axis=axis)  # numpy's stub: Any
    return means


STATISTICS: dict[str, Callable[..., np.ndarray]] = {"mean": mean, "iqm": iqm}


@dataclass(frozen=True)
class Interval:
    """A statistic of the runs' scores and its bootstrap confidence interval."""

    value: float
    low: float
    high: float


def bootstrap_band(
    scores: np.ndarray, statistic: Statistic = "iqm", confidence: float = 0.95, reps: int = 2000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(statistic, low, high) over the last axis of ``scores`` ([..., runs]: one triple per leading
    index, e.g. per point of a learning curve), the bounds from a percentile bootstrap over runs.
    ``seed`` fixes the resampling (the same runs for every point), so a table printed twice reads the same."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    values = np.asarray(scores, np.float64)
    function = STATISTICS[statistic]
    picks = np.random.default_rng(seed).integers(0, values.shape[-1], (reps, values.shape[-1]))
    resampled = function(values[..., picks], axis=-1)  # [..., reps]
    low, high = np.percentile(resampled, [50 * (1 - confidence), 50 * (1 + confidence)], axis=-1)
    return function(values, axis=-1), low, high


def bootstrap_interval(
    scores: np.ndarray, statistic: Statistic = "iqm", confidence: float = 0.95, reps: int = 2000, seed: int = 0
) -> Interval:
    """``bootstrap_band`` of one score per run ([runs])."""
    value, low, high = bootstrap_band(np.asarray(scores, np.float64).reshape(-1), statistic, confidence, reps, seed)
    return Interval(float(value), float(low), float(high))


def common_grid(curves: list[tuple[np.ndarray, np.ndarray]], points: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Each (steps, values) curve linearly interpolated onto one grid of env steps, from the latest
    first point to the earliest last point (where every run has data): (grid [points], [points, runs])."""
    start = max(float(steps[0]) for steps, _ in curves)
    stop = min(float(steps[-1]) for steps, _ in curves)
    grid = np.linspace(start, stop, points) if stop > start else np.array([stop])
    return grid, np.stack([np.interp(grid, steps, values) for steps, values in curves], axis=-1)
