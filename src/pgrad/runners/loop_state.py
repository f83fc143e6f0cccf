"""What a checkpoint holds of a synchronous loop, written and read in one place.

The on-policy and the off-policy loops keep the same parts under the same names (``SynchronousLoop``):
the learner (``algo``: modules, optimizers, extra state), the collector (environments' last
observations, normalisers, episode statistics), the run's RNG streams, the environments' own state,
the guard's state and the in-memory healthy states. ``capture`` builds the ``TrainState`` from them
and ``restore`` puts a checkpoint back, exactly, or raises ``CheckpointError`` naming what does not
fit. What one loop alone keeps (the off-policy loop's counters and replay buffer) goes through
``algo_state`` and ``replay`` on the way out and ``restore_own`` on the way in.

A3C's coordinator keeps other parts (no collector of its own: the workers' envs are re-seeded) and
has its own pair.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from pgrad import __version__
from pgrad.builders import Environment
from pgrad.checkpoint import TrainState, check_arrays_fit, check_rollback_states, load_modules, load_optimizers
from pgrad.config import TrainConfig
from pgrad.envs import state as env_state
from pgrad.errors import CheckpointError
from pgrad.monitor.guard import Guard
from pgrad.monitor.recovery import HealthyStates, OptimizerGuard
from pgrad.monitor.sinks import read_jsonl
from pgrad.rollout import RolloutCollector
from pgrad.runners.context import RunContext


class SynchronousLoop(Protocol):
    """The attributes ``capture`` and ``restore`` read and write (both runners have them)."""

    config: TrainConfig
    run: RunContext
    run_dir: Path
    algo: Any  # OnPolicyAlgorithm or OffPolicyAlgorithm: modules(), optimizers(), extra_state()
    collector: RolloutCollector
    rng: np.random.Generator
    env: Environment
    inexact: str | None  # why the environments' state cannot be saved (None: it can)
    guard: Guard
    optimizer_guard: OptimizerGuard
    healthy_states: HealthyStates
    step: int
    updates: int

    def restart_episodes(self, step: int) -> None: ...


def capture(
    loop: SynchronousLoop, algo_state: dict[str, Any], replay: dict[str, np.ndarray] | None = None
) -> TrainState:
    """The loop as a ``TrainState``: everything a resume needs to continue bit for bit."""
    python_state = random.getstate()
    return TrainState(
        algo=loop.config.algo,
        step=loop.step,
        updates=loop.updates,
        elapsed_seconds=loop.run.elapsed(),
        config=loop.config.to_dict(),
        modules={name: module.state_dict() for name, module in loop.algo.modules().items()},
        optimizers={name: optimizer.state_dict() for name, optimizer in loop.algo.optimizers().items()},
        collector=loop.collector.state_arrays(),
        normalizers=loop.collector.normalizer_state(),
        rng_torch=torch.get_rng_state(),
        rng_numpy=dict(loop.rng.bit_generator.state),
        rng_python=[python_state[0], list(python_state[1]), python_state[2]],
        env_state=None if loop.inexact is not None else env_state.capture(loop.env.envs),
        episodes=loop.collector.episode_state(),
        algo_state=algo_state,
        guard=loop.guard.state.to_dict(),
        rollback_states=loop.healthy_states.slots(),
        rollback_capture_step=loop.healthy_states.last_capture_step,
        replay=replay or {},
        pgrad_version=__version__,
    )


def restore(
    loop: SynchronousLoop,
    state: TrainState,
    path: Path,
    algo_state: dict[str, Any],
    restore_own: Callable[[TrainState], None] | None = None,
) -> None:
    """Put checkpoint ``state`` (read from ``path``) back into ``loop``: learner, collector, RNGs,
    environments (or fresh episodes where their state was not saved), guard, healthy states, counters.

    Every array is checked against what this configuration builds before anything is restored: a
    wrongly shaped one would load, then break the run later with a traceback far from its cause.
    ``algo_state`` goes to the learner's ``load_extra_state``; ``restore_own`` restores what only this
    loop keeps (its errors are reported like the others)."""
    load_modules(loop.algo.modules(), state, path)
    load_optimizers(loop.algo.optimizers(), state, path)
    check_rollback_states(loop.algo.modules(), loop.algo.optimizers(), state, path)
    check_arrays_fit(loop.collector.state_arrays(), state.collector, "collector", path)
    check_arrays_fit(loop.collector.normalizer_state(), state.normalizers, "normalizers", path)
    loop.collector.take_randomize_draws()  # the fresh envs' first draws: the restored episodes replace them
    try:
        loop.collector.load_state_arrays(state.collector)
        loop.collector.load_normalizer_state(state.normalizers)
        loop.collector.load_episode_state(state.episodes)
        if state.rng_torch is None or state.rng_numpy is None or state.rng_python is None:
            raise KeyError("rng state")
        torch.set_rng_state(state.rng_torch)
        loop.rng.bit_generator.state = state.rng_numpy
        version, internal, gauss = state.rng_python
        random.setstate((version, tuple(internal), gauss))
        loop.algo.load_extra_state(algo_state)
        if restore_own is not None:
            restore_own(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit this configuration: {exc}") from None
    if state.env_state is not None and loop.inexact is None:
        try:
            env_state.restore(loop.env.envs, state.env_state)
        except (ValueError, AttributeError, TypeError) as exc:
            raise CheckpointError(
                f"checkpoint {path}: its environment state does not fit {loop.config.env.id} ({exc})"
            ) from None
    else:
        loop.restart_episodes(state.step)
    logged = read_jsonl(loop.run_dir / "metrics.jsonl")
    try:
        loop.guard.load(state.guard, [m for m in logged if m.get("step", 0) <= state.step])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit this configuration: {exc}") from None
    loop.healthy_states.load(state.rollback_states, state.rollback_capture_step)
    loop.optimizer_guard.state = loop.guard.state
    loop.step, loop.updates = state.step, state.updates
