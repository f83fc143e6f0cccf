"""The training loop of the row-by-row language-model trainers (SFT, reward model, DPO), written once.

Each trainer supplies ``train_steps(until_step)`` (gradient steps up to a row's end, then that row's
metrics with its held-out evaluation), ``evaluate()``, ``train_state()`` and the score its checkpoints
are ranked by; ``RowLoop`` makes it a body of the trunk's loop (``pgrad.runners.trunk``), and the run
folder, logs, checkpoints and Ctrl-C are the shared ``RunContext``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, Protocol

import torch

from pgrad.checkpoint import TrainState, load_modules, load_optimizers
from pgrad.config import TrainConfig
from pgrad.errors import CheckpointError
from pgrad.monitor.guard import Action, Checkpoint, Event, Halt, Rollback
from pgrad.monitor.sinks import ProgressUnits
from pgrad.runners import trunk
from pgrad.runners.context import RunContext, TrainResult


class RowTrainer(Protocol):
    """What a row trainer gives the loop: its rows of gradient steps, its evaluation, and the modules and
    optimizers its checkpoints hold (``row_train_state`` / ``load_row_state`` do the rest)."""

    config: TrainConfig
    run: RunContext
    step: int
    updates: int

    def train_steps(self, until_step: int) -> dict[str, Any]:
        """Gradient steps until ``until_step`` (or a stop request); the row's metrics."""

    def evaluate(self) -> dict[str, float]:
        """The trainer's evaluation metrics."""

    def modules(self) -> dict[str, torch.nn.Module]:
        """The networks its checkpoints hold, by name."""

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimizers its checkpoints hold, by name."""


class RowLoop:
    """The body the trunk's loop drives for a row trainer: a row of gradient steps, a checkpoint every
    ``run.checkpoint_every`` steps ranked by ``score(row)``. No guard: nothing halts or rolls back."""

    def __init__(
        self, trainer: RowTrainer, every: int, score: Callable[[dict[str, Any]], float], log_start: bool
    ) -> None:
        self.trainer, self.every, self.score, self.log_start = trainer, every, score, log_start
        self.run = trainer.run

    @property
    def step(self) -> int:
        """The Body protocol: the trainer's step count."""
        return self.trainer.step

    @property
    def updates(self) -> int:
        """The Body protocol: the trainer's gradient-step count."""
        return self.trainer.updates

    def before_loop(self) -> None:
        """The Body protocol: with ``log_start``, a fresh run logs the starting model's evaluation as row 0."""
        if self.log_start and self.trainer.step == 0:  # the starting model's evaluation as row 0
            self.run.log({"step": 0, "update": 0, **self.trainer.evaluate()})

    def advance(self, stop_at_step: int | None) -> dict[str, Any]:
        """The Body protocol: gradient steps to the end of this row (the next multiple of ``every``, capped by the total
        and ``stop_at_step``)."""
        row_end = min((self.step // self.every + 1) * self.every, self.run.config.run.total_steps)
        return self.trainer.train_steps(row_end if stop_at_step is None else min(row_end, stop_at_step))

    def judge(self, metrics: dict[str, Any]) -> list[Action]:
        """The Body protocol: a healthy checkpoint scored by ``score(row)`` once ``run.checkpoint_every`` steps have
        passed since the last; nothing else."""
        due = self.step - self.run.last_checkpoint_step >= self.run.config.run.checkpoint_every
        return [Checkpoint(self.score(metrics), True)] if due else []

    def take_events(self) -> list[Event]:
        """The Body protocol: none; there is no guard."""
        return []

    def halt(self, action: Halt) -> NoReturn:
        """The Body protocol: never called; there is no guard (an AssertionError)."""
        raise AssertionError(f"a row trainer has no guard to halt it ({action.kind})")

    def roll_back(self, action: Rollback) -> None:
        """The Body protocol: never called; there is no guard (an AssertionError)."""
        raise AssertionError(f"a row trainer has no guard to roll it back ({action.reason})")

    def snapshot(self, healthy: bool) -> None:
        """No healthy states are kept: nothing rolls back."""

    def train_state(self) -> TrainState:
        """The Body protocol: the trainer's ``row_train_state``."""
        return row_train_state(self.trainer)

    def final_score(self, metrics: dict[str, Any]) -> tuple[float | None, bool]:
        """The Body protocol: the last row's score (None without a row), always healthy."""
        return (self.score(metrics) if metrics else None), True

    def close(self) -> None:
        """The Body protocol: closes the run context."""
        self.run.close()


def train_in_rows(
    trainer: RowTrainer,
    every: int,
    score: Callable[[dict[str, Any]], float],
    stop_at_step: int | None = None,
    log_start: bool = True,
) -> TrainResult:
    """Rows of ``every`` steps to ``run.total_steps`` (or ``stop_at_step``, as a kill would), a checkpoint
    every ``run.checkpoint_every`` steps ranked by ``score(row)``, and a last one at the end, through the
    trunk's loop. With ``log_start``, a fresh run first logs the starting model's evaluation as row 0."""
    return trunk.train_loop(RowLoop(trainer, every, score, log_start), stop_at_step)


def row_train_state(trainer: RowTrainer) -> TrainState:
    """The checkpoint of a row-by-row trainer (SFT, reward models, DPO): its modules, optimizers and the torch
    RNG. The tensors are cloned: GPT-2 ties its input and output embeddings, and safetensors refuses tensors
    sharing memory. A trainer binds it as its ``train_state`` method."""
    modules = trunk.module_tensors(trainer.modules(), clone=True)
    return trunk.base_state(trainer.run, trainer.step, trainer.updates, modules, trainer.optimizers())


def load_row_state(trainer: RowTrainer, state: TrainState, path: Path) -> None:
    """Load what ``row_train_state`` saved into the trainer's modules and optimizers, restore the torch RNG,
    and continue its counters from the checkpoint's. A trainer binds it as its ``load`` method."""
    load_modules(trainer.modules(), state, path)
    load_optimizers(trainer.optimizers(), state, path)
    if state.rng_torch is None:
        raise CheckpointError(f"checkpoint {path} lacks the torch RNG state")
    torch.set_rng_state(state.rng_torch)
    trainer.step, trainer.updates = state.step, state.updates


def open_rows(trainer: RowTrainer, console: bool, label: str, detail: str, units: ProgressUnits) -> None:
    """The prologue's second half for a row trainer (``trunk.open_or_resume``), resuming through
    ``load_row_state``; ``label`` is ``"ALGO SUBJECT"`` (the model and data, which ``run.started`` names)."""

    def load(state: TrainState, path: Path) -> None:
        load_row_state(trainer, state, path)

    subject = label.partition(" ")[2] or None
    trunk.open_or_resume(trainer.run, console, label, load, trainer.run.close, detail, units=units, subject=subject)
