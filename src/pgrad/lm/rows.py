"""The training loop of the row-by-row language-model trainers (SFT, reward model, DPO), written once.

Each trainer supplies ``train_steps(until_step)`` (gradient steps up to a row's end, then that row's
metrics with its held-out evaluation), ``evaluate()``, ``train_state()`` and the score its checkpoints
are ranked by; the run folder, logs, checkpoints and Ctrl-C are the shared ``RunContext``'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from pgrad import __version__
from pgrad.checkpoint import TrainState, load_modules, load_optimizers
from pgrad.config import TrainConfig
from pgrad.errors import CheckpointError
from pgrad.runners.context import RunContext, TrainResult


class RowTrainer(Protocol):
    config: TrainConfig
    run: RunContext
    step: int
    updates: int

    def train_steps(self, until_step: int) -> dict[str, Any]: ...

    def evaluate(self) -> dict[str, float]: ...

    def train_state(self) -> TrainState: ...


def train_in_rows(
    trainer: RowTrainer,
    every: int,
    score: Callable[[dict[str, Any]], float],
    stop_at_step: int | None = None,
    log_start: bool = True,
) -> TrainResult:
    """Rows of ``every`` steps to ``run.total_steps`` (or ``stop_at_step``, as a kill would), a checkpoint
    every ``run.checkpoint_every`` steps ranked by ``score(row)``, and a last one at the end. With
    ``log_start``, a fresh run first logs the starting model's evaluation as row 0."""
    run = trainer.run
    run.started = time.perf_counter()
    metrics: dict[str, Any] = {}
    total = trainer.config.run.total_steps
    try:
        with run.stop_signals():
            try:
                if log_start and trainer.step == 0:
                    run.log({"step": 0, "update": 0, **trainer.evaluate()})
                while trainer.step < total and not run.stop_requested:
                    row_end = min((trainer.step // every + 1) * every, total)
                    if stop_at_step is not None:
                        row_end = min(row_end, stop_at_step)
                    metrics = trainer.train_steps(row_end)
                    run.log(metrics)
                    if trainer.step - run.last_checkpoint_step >= trainer.config.run.checkpoint_every:
                        run.save_checkpoint(trainer.train_state(), score(metrics))
                    if stop_at_step is not None and trainer.step >= stop_at_step:
                        break
            finally:
                run.flush()
            run.second_interrupts = False
            checkpoint = None
            if run.needs_final_checkpoint(trainer.step):
                checkpoint = run.save_checkpoint(trainer.train_state(), score(metrics) if metrics else None)
        result = run.finish(trainer.step, trainer.updates, metrics, checkpoint)
    finally:
        run.close()
    return result


def row_train_state(
    algo: str,
    run: RunContext,
    config: TrainConfig,
    step: int,
    updates: int,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
) -> TrainState:
    """The checkpoint of a row-by-row trainer (SFT, reward models, DPO): its modules, optimizers and the torch
    RNG. The tensors are cloned: GPT-2 ties its input and output embeddings, and safetensors refuses tensors
    sharing memory."""
    return TrainState(
        algo=algo,
        step=step,
        updates=updates,
        elapsed_seconds=run.elapsed(),
        config=config.to_dict(),
        modules={
            name: {key: value.detach().clone() for key, value in module.state_dict().items()}
            for name, module in modules.items()
        },
        optimizers={name: optimizer.state_dict() for name, optimizer in optimizers.items()},
        rng_torch=torch.get_rng_state(),
        pgrad_version=__version__,
    )


def load_row_state(
    state: TrainState,
    path: Path,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
) -> tuple[int, int]:
    """Load what ``row_train_state`` saved into ``modules`` and ``optimizers``, restore the torch RNG, and
    return the (step, updates) to continue from."""
    load_modules(modules, state, path)
    load_optimizers(optimizers, state, path)
    if state.rng_torch is None:
        raise CheckpointError(f"checkpoint {path} lacks the torch RNG state")
    torch.set_rng_state(state.rng_torch)
    return state.step, state.updates
