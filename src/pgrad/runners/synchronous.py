"""What the two synchronous loops (on-policy, off-policy) share, written once.

The on-policy and the off-policy loops keep the same parts under the same names (``SynchronousLoop``):
the learner (``algo``: modules, optimizers, extra state), the collector (environments' last
observations, normalisers, episode statistics), the run's RNG streams, the environments' own state,
the guard's state and the in-memory healthy states. ``capture`` builds the ``TrainState`` from them
and ``restore`` puts a checkpoint back, exactly, or raises ``CheckpointError`` naming what does not
fit. What one loop alone keeps (the off-policy loop's counters and replay buffer) goes through
``algo_state`` and ``replay`` on the way out and ``restore_own`` on the way in.

The rest carries out what the guard decided and what the environments did, the same way in both loops:
``roll_back`` (to the healthy state in memory, else the newest healthy or the best checkpoint),
``evaluate`` (deterministic episodes on separate envs with the nominal physics), ``env_failed``,
``restart_episodes``, ``log_events``, ``log_randomize_draws`` and ``close``. Each runner binds them as
its methods (``roll_back = synchronous.roll_back``), so a reader finds one body per behaviour.

A3C's coordinator keeps other parts (no collector of its own: the workers' envs are re-seeded) and
has its own versions.
"""

from __future__ import annotations

import dataclasses
import random
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, Protocol

import numpy as np
import torch

from pgrad.builders import Environment, env_label, one_line
from pgrad.checkpoint import (
    TrainState,
    check_arrays_fit,
    check_rollback_states,
    load_modules,
    load_optimizers,
    read_train_state,
)
from pgrad.config import TrainConfig
from pgrad.envs import state as env_state
from pgrad.envs.randomize import draw_metrics
from pgrad.envs.sources import VectorEnvFactory
from pgrad.errors import CheckpointError, ConfigError, PgradError, TrainingHalted
from pgrad.monitor.guard import Action, Event, Guard, Halt, Rollback
from pgrad.monitor.recovery import (
    HealthyStates,
    OptimizerGuard,
    TrajectoryRecorder,
    restore_captured,
    restore_learner,
    save_batch,
)
from pgrad.monitor.sinks import JsonlSink, read_jsonl
from pgrad.rollout import RolloutCollector
from pgrad.runners import trunk
from pgrad.runners.context import RunContext


class SynchronousLoop(Protocol):
    """The attributes the functions below read and write (both runners have them)."""

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
    env_factory: VectorEnvFactory | None  # an env handed over as a Python object (pgrad.api), else None
    eval_env: Environment | None  # built at the first evaluation
    randomization_log: JsonlSink | None  # opened at the first domain-randomisation draws
    recorder: TrajectoryRecorder  # the last episodes, written when a run halts on non-finite values
    last_batch: Any  # the last batch updated on (a dataclass of tensors), written with them

    def restart_episodes(self, step: int) -> None:
        """Starts fresh episodes, for a resume without the environments' state."""

    def log_events(self, events: list[Event]) -> None:
        """Writes the guard's events into ``events.jsonl``."""

    def evaluate(self, metrics: dict[str, Any]) -> list[float] | None:
        """Deterministic evaluation episodes; their returns, or None when cut short."""


def capture(
    loop: SynchronousLoop, algo_state: dict[str, Any], replay: dict[str, np.ndarray] | None = None
) -> TrainState:
    """The loop as a ``TrainState``: everything a resume needs to continue bit for bit."""
    python_state = random.getstate()
    common = trunk.base_state(
        loop.run,
        loop.step,
        loop.updates,
        trunk.module_tensors(loop.algo.modules()),
        loop.algo.optimizers(),
        loop.guard,
        loop.healthy_states.slots(),
        loop.healthy_states.last_capture_step,
    )
    return dataclasses.replace(
        common,
        collector=loop.collector.state_arrays(),
        normalizers=loop.collector.normalizer_state(),
        rng_numpy=dict(loop.rng.bit_generator.state),
        rng_python=[python_state[0], list(python_state[1]), python_state[2]],
        env_state=None if loop.inexact is not None else env_state.capture(loop.env.envs),
        episodes=loop.collector.episodes.state(),
        algo_state=algo_state,
        replay=replay or {},
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
        loop.collector.episodes.load(state.episodes)
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
                f"checkpoint {path}: its environment state does not fit {loop.config.env.id} ({exc}); a run "
                "trained on an env passed to pgrad.api as a Python object resumes only in Python, with that env"
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


def first_reset(loop: SynchronousLoop) -> None:
    """The collector's first reset with ``run.seed``. The env's own failure becomes one line (nothing is
    written yet); the environments are closed either way."""
    try:
        loop.collector.reset(loop.config.run.seed)
    except PgradError:
        loop.env.envs.close()
        raise
    except Exception as exc:
        loop.env.envs.close()
        raise ConfigError(f"{env_label(loop.config)} failed on its first reset: {one_line(exc)}") from None


def restart_episodes(loop: SynchronousLoop, step: int) -> None:
    """Resume without the environments' state (Box2D worlds; async runs checkpointed before their
    workers' envs were captured): start fresh episodes.

    Restoring the saved observations and episode counters onto environments that were only reset
    would pair each env's first transition with an observation from another episode; instead
    every env is reset, with a seed drawn from (run.seed, step) so the episodes differ from the
    run's first ones, and the episodes in progress at the checkpoint are dropped (their partial
    returns never reach the statistics). The reward scaler's running returns restart with them.
    """
    seed = int(np.random.SeedSequence([loop.config.run.seed, step]).generate_state(1)[0])
    loop.collector.reset(seed)
    loop.collector.reward_scaler.running_return[:] = 0.0
    loop.run.emit(
        "run.envs_restarted",
        step,
        f"environments restarted with seed {seed}: their state could not be saved "
        f"({loop.inexact or 'not captured'}); the episodes in progress at the checkpoint were dropped",
        seed=seed,
    )


def log_events(loop: SynchronousLoop, events: list[Event]) -> None:
    """Write events to the run's log at the loop's current step."""
    trunk.log_events(loop.run, loop.step, events)


def judge(loop: SynchronousLoop, metrics: dict[str, Any], guard_updates: int) -> list[Action]:
    """The guard's rules over this update's (or log row's) metrics, a deterministic evaluation when one is
    due, and the guard's decision. ``guard_updates``: what the guard counts as updates (the off-policy loop's
    log rows)."""
    loop.guard.observe(metrics, guard_updates)
    evaluation = loop.evaluate(metrics) if loop.guard.evaluation_due(loop.step) else None
    checkpoint_due = loop.step - loop.run.last_checkpoint_step >= loop.config.run.checkpoint_every
    return loop.guard.decide(metrics, loop.step, evaluation, checkpoint_due)


def take_events(loop: SynchronousLoop) -> list[Event]:
    """The events the guard has queued since the last call."""
    return loop.guard.take_events()


def snapshot(loop: SynchronousLoop, healthy: bool) -> None:
    """Offer the state after an update to the healthy-state keeper (kept only if healthy, and confirmed later)."""
    loop.healthy_states.after_update(healthy, loop.step, loop.algo, loop.collector)


def final_score(loop: SynchronousLoop, metrics: dict[str, Any]) -> tuple[float | None, bool]:
    """The final checkpoint's score and health mark, as the guard judges them."""
    return loop.guard.checkpoint_score(metrics), loop.guard.healthy


def before_loop(loop: SynchronousLoop) -> None:
    """Nothing to do before the first update (the language-model loops log their starting model here)."""


def halt(loop: SynchronousLoop, action: Halt) -> NoReturn:
    """Stop the run (exit code 3); on non-finite values first leave the evidence in the run folder: the last
    episodes and the last batch updated on, as pickle-free ``.npz`` files."""
    evidence: dict[str, tuple[str, Path]] | None = None
    if action.dump:
        trajectories, batch = loop.run_dir / "halt_trajectories.npz", loop.run_dir / "halt_batch.npz"
        evidence = {"trajectories": (f"the last {loop.recorder.save(trajectories)} episodes", trajectories)}
        if loop.last_batch is not None:
            save_batch(loop.last_batch, batch)
            evidence["batch"] = ("the last batch updated on", batch)
    trunk.halted(loop.run, loop.step, action, loop.guard.state.recoveries, evidence)


def roll_back(loop: SynchronousLoop, action: Rollback) -> None:
    """Restore the learner the guard chose (it cut the learning rate already); the environments, the
    episode statistics and a replay buffer stay: a rollback undoes learning, not experience.

    ``last_healthy``: the newest confirmed healthy state in memory, else the newest checkpoint
    marked healthy. ``best``: the best-evaluated checkpoint, else the same as ``last_healthy``.
    """
    loop.healthy_states.forget_candidate()
    path = loop.run.checkpoint_path("best") if action.source == "best" else None
    memory = loop.healthy_states.confirmed
    if path is None and memory is not None:
        restore_captured(memory, loop.algo, loop.collector)
        summary = f"restored the healthy state of step {memory.step} from memory"
        data: dict[str, Any] = {"checkpoint": None, "restored_step": memory.step, "restored_from": "memory"}
        loop.log_events([loop.guard.rollback_event(action.reason, summary, data)])
        return
    path = path or loop.run.checkpoint_path("last_healthy")
    data = {"checkpoint": str(path) if path else None, "restored_from": "disk" if path else None}
    if path is None:
        summary = "no healthy state yet, kept the current weights"
    else:
        restored = read_train_state(path)
        restore_learner(restored, path, loop.algo, loop.collector)
        summary = f"restored {path.name} (step {restored.step})"
        data.update(restored_step=restored.step, restored_score=restored.score, restored_healthy=restored.healthy)
    loop.log_events([loop.guard.rollback_event(action.reason, summary, data)])


def evaluate(loop: SynchronousLoop, metrics: dict[str, Any]) -> list[float] | None:
    """Deterministic episodes on separate envs with the normaliser frozen; adds ``eval/*`` metrics
    and returns the episode returns (the guard weighs a drop against their spread). None when a
    Ctrl-C or SIGTERM cut it short: the loop then checkpoints and stops as after any update."""
    if loop.eval_env is None:
        loop.eval_env = trunk.evaluation_environment(loop.config, loop.env_factory)
    try:
        return trunk.evaluate_on(
            loop.run, loop.eval_env, loop.algo.acting_policy(), loop.collector.obs_normalizer, metrics
        )
    except PgradError:
        raise
    except Exception as exc:
        raise env_failed(loop, exc, "during the evaluation") from None


def env_failed(loop: SynchronousLoop, exc: Exception, where: str) -> TrainingHalted:
    """An exception from the environment (or anything else in collection): one line naming the env and
    the step, a ``run.env_failed`` event, and the run stopped with its last checkpoint kept (the state
    in the middle of a failed rollout is not one to save)."""
    latest = loop.run.checkpoint_path("latest")
    kept = (
        f"the last checkpoint {latest.name} is kept ('pgrad resume {loop.run_dir}' continues from it)"
        if latest is not None
        else "no checkpoint was written yet"
    )
    message = f"{env_label(loop.config)} raised {one_line(exc)} {where} after env step {loop.step}; {kept}"
    # the full traceback goes to the event (the console gets one line): a bug in a custom env, or in
    # pgrad's collection code, can still be found
    trace = "".join(traceback.format_exception(exc))
    loop.run.emit("run.env_failed", loop.step, message, error=type(exc).__name__, traceback=trace)
    return TrainingHalted(message)


def log_randomize_draws(loop: SynchronousLoop) -> dict[str, float]:
    """Domain randomisation's draws of the episodes started since the last call (an update, a log row):
    one row per episode in ``randomization.jsonl`` (step, the env's index, its scales, delay, noise std),
    and their summary as ``randomize/*`` metrics. Nothing when env.randomize is off."""
    draws = loop.collector.take_randomize_draws()
    if not draws:
        return {}
    if loop.randomization_log is None:
        loop.randomization_log = JsonlSink(loop.run_dir / "randomization.jsonl")
    for draw in draws:
        loop.randomization_log.write({"step": loop.step, **draw})
    return draw_metrics(draws)


def close(loop: SynchronousLoop) -> None:
    """Release the loop's resources: the optimizer hooks, the randomisation log, the evaluation envs."""
    loop.optimizer_guard.remove()
    if loop.randomization_log is not None:
        loop.randomization_log.close()
    if loop.eval_env is not None:
        loop.eval_env.envs.close()
        loop.eval_env = None
    loop.run.close()
    loop.env.envs.close()
