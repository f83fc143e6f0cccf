"""Callbacks for library use (``pgrad.api``): told of every logged update, every evaluation and every
checkpoint, and able to stop training.

As in Stable-Baselines3, a hook that returns ``False`` stops the run: the loop finishes the current
update, writes its final checkpoint and returns (``learn`` then returns normally; the run folder's
``events.jsonl`` records ``run.stopped_by_callback``). ``None`` or ``True`` go on. Hooks get copies of
what the loop logged, never the loop's own state (SB3 hands over ``locals()``; a callback here cannot
change a run behind the guard's back).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


class Callback:
    """Override the hooks you need; each returns ``False`` to stop training."""

    def on_update(self, metrics: Mapping[str, Any]) -> bool | None:
        """After every logged update: the row written to ``metrics.jsonl`` (``step``, ``rollout/return_mean``...)."""
        return None

    def on_evaluation(self, metrics: Mapping[str, Any]) -> bool | None:
        """After a periodic evaluation (``guard.eval_every``): the same row, with ``eval/return_mean`` in it."""
        return None

    def on_checkpoint(self, path: Path, step: int) -> bool | None:
        """After a checkpoint was written (``run.checkpoint_every``, the guard's marks, the final one)."""
        return None


class StopOnReturn(Callback):
    """Stop once the mean evaluation return (or, without evaluations, the training return) reaches ``threshold``."""

    def __init__(self, threshold: float, metric: str = "eval/return_mean") -> None:
        self.threshold = threshold
        self.metric = metric

    def on_update(self, metrics: Mapping[str, Any]) -> bool | None:
        """False (stop) once the row's ``metric`` reaches ``threshold``; None while it is below or absent."""
        value = metrics.get(self.metric)
        return None if value is None or value < self.threshold else False


def stop_reason(callbacks: list[Callback], hook: str, *args: Any) -> str | None:
    """Call ``hook`` on every callback (all of them, even after one asked to stop); the first one that
    returned False, named, or None."""
    reason = None
    for callback in callbacks:
        if getattr(callback, hook)(*args) is False and reason is None:
            reason = f"{type(callback).__name__}.{hook}"
    return reason
