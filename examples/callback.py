"""Watch training from Python with a callback, and stop it early.

A ``pgrad.api.Callback`` has three hooks: ``on_update(metrics)`` after every update (one log row),
``on_evaluation(metrics)`` after each of the guard's evaluations, and ``on_checkpoint(path, step)``. Any hook
that returns ``False`` stops the run after that update, with its final checkpoint and a
``run.stopped_by_callback`` event. Runs in a few seconds: ``python examples/callback.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pgrad.api import PPO, Callback


class Progress(Callback):
    """Record the training return of every update; stop after ``max_updates`` updates."""

    def __init__(self, max_updates: int) -> None:
        self.max_updates = max_updates
        self.returns: list[float] = []
        self.checkpoints: list[int] = []

    def on_update(self, metrics: Mapping[str, Any]) -> bool | None:
        self.returns.append(float(metrics.get("rollout/return_mean", float("nan"))))
        return len(self.returns) < self.max_updates  # False stops the run

    def on_checkpoint(self, path: Path, step: int) -> bool | None:
        self.checkpoints.append(step)
        return None  # None (or True): carry on


if __name__ == "__main__":
    progress = Progress(max_updates=6)
    model = PPO("CartPole-v1", seed=1, run_dir="runs/example-callback", config={"run": {"tensorboard": False}})
    model.learn(100_000, callbacks=[progress])  # the callback stops it long before
    print(f"stopped after {len(progress.returns)} updates, {model.num_timesteps} steps")
    print("training return per update:", " ".join(f"{value:.1f}" for value in progress.returns))
    print("checkpoints written at steps:", progress.checkpoints)
