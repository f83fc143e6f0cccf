"""The trunk every training loop shares, written once: the run prologue, the loop skeleton, carrying out
the guard's decisions, and the common ``TrainState`` fields.

A family (on-policy, off-policy, language-model PPO, the row-by-row language-model trainers) brings a
*body*: an object that does one step of its own work and says what the guard should hear. The trunk
calls it; it never inherits from anything::

    run = begin_run(config, run_dir, resume, overwrite)    # folder checked, threads, seeds: nothing written
    ... the body builds its environments / model / learner (bad input fails here, leaving no folder) ...
    open_or_resume(run, console, label, body.load, body.close)   # open the folder, then load or log run.started
    result = train_loop(body, stop_at_step)                 # advance -> judge -> log -> events -> carry out

The loop, in one place::

    while step < run.total_steps and no stop was asked for:
        metrics = body.advance(stop_at_step)       # one update (on-policy, LM PPO) or one log row (off-policy, rows)
        actions = body.judge(metrics)              # guard rules, evaluation, decision (Halt, Rollback, ...)
        run.log(metrics); events; carry_out(body, actions)
    final checkpoint (unless the last action wrote one), the closing event, close

``carry_out`` is the one place a ``Halt`` stops the run, a ``Rollback`` restores a learner, a ``Checkpoint``
is written with its score and health mark, and a ``Snapshot`` offers the state to the in-memory healthy states.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, Generic, NoReturn, Protocol, TypeVar

import torch

from pgrad import __version__
from pgrad import metric_names as names
from pgrad.builders import Environment, algo_gamma, build_environment, nominal_physics
from pgrad.checkpoint import LearnerState, TrainState
from pgrad.config import RESOLVED_SECTION, TrainConfig, load_yaml
from pgrad.envs.normalize import ObsNormalizer
from pgrad.envs.sources import VectorEnvFactory
from pgrad.errors import ConfigError, TrainingHalted
from pgrad.monitor.alerts import RULES, Rule
from pgrad.monitor.evaluation import episode_step_cap, eval_num_envs, periodic_evaluation
from pgrad.monitor.guard import Action, Checkpoint, Event, Guard, Halt, Rollback, Snapshot
from pgrad.monitor.recovery import HealthyStates, OptimizerGuard
from pgrad.monitor.sinks import ENV_UNITS, ProgressUnits
from pgrad.nets import Actor
from pgrad.runners.context import RunContext, TrainResult, seed_everything
from pgrad.threads import set_threads

T = TypeVar("T")


class RunAttribute(Generic[T]):
    """A runner attribute that is its run context's: ``runner.stop_requested`` reads and sets
    ``runner.run.stop_requested`` (what the CLI, callbacks, tests and benchmarks reach through a runner)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, runner: Any, owner: type | None = None) -> T:
        value: T = getattr(runner.run, self.name)
        return value

    def __set__(self, runner: Any, value: T) -> None:
        setattr(runner.run, self.name, value)


# ---- the prologue -------------------------------------------------------------------------------
# config.yaml's ``resolved:`` entry of a run whose envs were a Python object handed to pgrad.api
ENV_OBJECT = "env_object"
ENV_OBJECT_NOTE = "passed to pgrad.api as a Python object; config.yaml's env.id cannot rebuild it"


def begin_run(
    config: TrainConfig, run_dir: Path, resume: bool, overwrite: bool, env_object: bool = False
) -> RunContext:
    """The first half of every run's prologue: the folder checked (a lock held by another run, a folder
    holding a run that ``train`` would overwrite: one line, nothing written), threads, and the seeds of
    Python, NumPy and torch. The body builds its parts after this and before ``open_or_resume``.
    ``env_object``: the envs come from a Python object (``pgrad.api``), which the run folder records."""
    run = RunContext(config, run_dir, resume, overwrite)
    run.env_object = env_object
    if resume and not env_object:
        check_env_rebuildable(run.run_dir)
    set_threads(config.run.torch_threads)
    seed_everything(config.run.seed)
    return run


def check_env_rebuildable(run_dir: Path) -> None:
    """A run trained on an env passed as a Python object cannot be resumed from its config.yaml alone (the
    recorded env.id names the object's class or spec, not the object): one line saying how to resume it,
    before any env is built."""
    path = run_dir / "config.yaml"
    try:
        saved = load_yaml(path) if path.is_file() else {}
    except ConfigError:
        return  # the config's own checks report it
    resolved = saved.get(RESOLVED_SECTION) if isinstance(saved, dict) else None
    if isinstance(resolved, dict) and ENV_OBJECT in resolved:
        raise ConfigError(
            f"{run_dir} trained on an env passed to pgrad.api as a Python object, which config.yaml cannot "
            f"rebuild: resume it in Python with the same env, pgrad.api.Agent.load('{run_dir}', env=ENV).learn(STEPS)"
        )


def open_or_resume(
    run: RunContext,
    console: bool,
    label: str,
    load: Callable[[TrainState, Path], None],
    close: Callable[[], None],
    started_detail: str = "",
    resumed_note: str = "",
    units: ProgressUnits = ENV_UNITS,
    subject: str | None = None,
) -> bool:
    """The second half: the checkpoint to resume from is read (and checked) before anything is written,
    then the folder is opened (lock, config with the learner's ``resolved`` record, logs) and the body loads
    it and logs ``run.resumed`` (and ``run.extended`` for a larger total), or a fresh run logs
    ``run.started`` (on ``subject``, else the env id). A refused checkpoint closes the body (no file or
    environment left open). Returns whether the run resumed."""
    resume_from = run.latest_state() if run.resume else None
    if not run.resolved:  # the learner chose nothing (the language models): its gradients are autograd's
        reason = f"{run.config.algo} has no NumPy backend"
        run.resolved = {"gradient_backend": "autograd", "gradient_backend_reason": reason}
    if run.env_object:
        run.resolved[ENV_OBJECT] = ENV_OBJECT_NOTE
    run.open(console, label, units)
    if resume_from is None:
        run.started_event(started_detail, subject)
        return False
    state, path = resume_from
    try:
        load(state, path)
    except BaseException:
        close()
        raise
    run.emit("run.resumed", state.step, f"resumed from {path.name}{resumed_note}", path=str(path))
    run.note_new_total(state)
    return True


def guard_parts(
    config: TrainConfig,
    run_dir: Path,
    optimizers: list[torch.optim.Optimizer],
    rules: tuple[Rule, ...] = RULES,
    rollback_rules: Collection[str] = (),
    score_metric: str = names.RETURN_MEAN,
) -> tuple[Guard, OptimizerGuard, HealthyStates]:
    """The guard (decisions), its optimizer hook (skips a non-finite step, applies the drills) and the
    in-memory healthy states a rollback returns to: the same three parts for every guarded loop."""
    guard = Guard(
        config.guard,
        config.run.total_steps,
        run_dir,
        rules=rules,
        rollback_rules=rollback_rules,
        score_metric=score_metric,
    )
    return guard, OptimizerGuard(optimizers, guard.state, config.guard), HealthyStates(config.guard.snapshot_every)


# ---- the common checkpoint fields ---------------------------------------------------------------
def module_tensors(modules: dict[str, torch.nn.Module], clone: bool = False) -> dict[str, dict[str, torch.Tensor]]:
    """Each module's state dict. ``clone``: copies, for models whose tensors share memory (GPT-2 ties its
    input and output embeddings, and safetensors refuses two names for one tensor)."""
    if not clone:
        return {name: module.state_dict() for name, module in modules.items()}
    return {
        name: {key: value.detach().clone() for key, value in module.state_dict().items()}
        for name, module in modules.items()
    }


def base_state(
    run: RunContext,
    step: int,
    updates: int,
    modules: dict[str, dict[str, torch.Tensor]],
    optimizers: dict[str, torch.optim.Optimizer],
    guard: Guard | None = None,
    rollback_states: dict[str, LearnerState] | None = None,
    rollback_capture_step: int | None = None,
) -> TrainState:
    """The fields every family's checkpoint holds: algorithm, counters, elapsed time, config, weights,
    optimizer moments, the torch RNG, and (for guarded loops) the guard's state with its healthy states. A
    family adds its own fields with ``dataclasses.replace`` (collector, NumPy RNG, replay, ...)."""
    config = run.config
    return TrainState(
        algo=config.algo,
        step=step,
        updates=updates,
        elapsed_seconds=run.elapsed(),
        config=config.to_dict(),
        modules=modules,
        optimizers={name: optimizer.state_dict() for name, optimizer in optimizers.items()},
        rng_torch=torch.get_rng_state(),
        guard=guard.state.to_dict() if guard is not None else {},
        rollback_states=rollback_states or {},
        rollback_capture_step=rollback_capture_step,
        pgrad_version=__version__,
    )


# ---- the body and the loop ----------------------------------------------------------------------
class Body(Protocol):
    """What the loop skeleton calls. ``step`` counts what ``run.total_steps`` counts (env steps, responses,
    pairs, demonstrations); ``updates`` what the family calls an update."""

    run: RunContext

    @property
    def step(self) -> int:
        """What ``run.total_steps`` counts so far (env steps, responses, pairs, demonstrations)."""

    @property
    def updates(self) -> int:
        """The updates so far, as the family counts them."""

    def before_loop(self) -> None:
        """Once, inside the signal handlers, before the first ``advance`` (e.g. log the starting model)."""
        ...

    def advance(self, stop_at_step: int | None) -> dict[str, Any]:
        """One update or one log row of work; its metrics."""
        ...

    def judge(self, metrics: dict[str, Any]) -> list[Action]:
        """The guard's rules and decision over ``metrics`` (which it may extend: evaluations, guard state)."""
        ...

    def take_events(self) -> list[Event]:
        """What the guard said since the last call (alerts, drills), for ``events.jsonl``."""
        ...

    def halt(self, action: Halt) -> NoReturn:
        """Leave the evidence, log why and raise ``TrainingHalted``."""
        ...

    def roll_back(self, action: Rollback) -> None:
        """Restores the learner the guard's ``Rollback`` chose: a healthy state in memory or a checkpoint."""

    def snapshot(self, healthy: bool) -> None:
        """Offer the state after this update to the in-memory healthy states (confirmed by the next one)."""
        ...

    def train_state(self) -> TrainState:
        """Everything a checkpoint saves, as a ``TrainState``."""

    def final_score(self, metrics: dict[str, Any]) -> tuple[float | None, bool]:
        """The score and health mark of the checkpoint written at the end."""
        ...

    def close(self) -> None:
        """At the end of the run: releases what the body holds (envs, workers, the run's logs)."""


def log_events(run: RunContext, step: int, events: list[Event]) -> None:
    """The guard's events into ``events.jsonl`` (and on the console where they ask to be shown)."""
    for event in events:
        run.emit(event.kind, step, event.message, show=event.show, **event.data)


def carry_out(body: Body, actions: list[Action]) -> None:
    """Do what the guard decided, in its order (``Guard.decide``: halt, roll back, or checkpoint)."""
    for action in actions:
        if isinstance(action, Halt):
            body.halt(action)
        elif isinstance(action, Rollback):
            body.roll_back(action)
        elif isinstance(action, Checkpoint):
            body.run.save_checkpoint(body.train_state(), action.score, action.healthy)
        elif isinstance(action, Snapshot):
            body.snapshot(action.healthy)


def halted(
    run: RunContext, step: int, action: Halt, recoveries: int, evidence: dict[str, tuple[str, Path]] | None = None
) -> NoReturn:
    """Log a halt and raise ``TrainingHalted`` (exit code 3). ``evidence``: the files the body wrote for a
    non-finite halt, as {event field: (what it holds, path)}, named in the message and the event."""
    if evidence:
        written = " and ".join(f"{what} to {path}" for what, path in evidence.values())
        message = (
            f"{action.message}; wrote {written} (np.load works without pickle). Usual causes: learning rate too "
            f"high, no gradient clipping, unnormalised rewards; see 'pgrad doctor {run.run_dir}'"
        )
        paths: dict[str, Any] = {key: str(path) for key, (_, path) in evidence.items()}
        run.emit(action.kind, step, message, **paths)
    else:
        message = f"{action.message}; see 'pgrad doctor {run.run_dir}'"
        run.emit(action.kind, step, message, recoveries=recoveries)
    raise TrainingHalted(message)


def train_loop(body: Body, stop_at_step: int | None = None) -> TrainResult:
    """Train to ``run.total_steps`` (or stop early at ``stop_at_step``, as a kill would): see the module
    docstring. Whatever ends the loop (a halt, a failed write, a second Ctrl-C), the logged rows are flushed
    and the body is closed (files closed, lock released)."""
    run = body.run
    run.started = time.perf_counter()
    metrics: dict[str, Any] = {}
    total = run.config.run.total_steps
    try:
        with run.stop_signals():
            try:
                run.start_callbacks(body)  # nothing without callbacks
                body.before_loop()
                while body.step < total and not run.stop_requested:
                    metrics = body.advance(stop_at_step)
                    actions = body.judge(metrics)
                    run.log(metrics)
                    log_events(run, body.step, body.take_events())
                    carry_out(body, actions)
                    if stop_at_step is not None and body.step >= stop_at_step:
                        break
            finally:
                run.flush()
            # The final checkpoint takes a moment; a signal now (the second Ctrl-C of an impatient user)
            # must not cut it short and leave the run without its last state.
            run.second_interrupts = False
            checkpoint = None
            if run.needs_final_checkpoint(body.step):
                score, healthy = body.final_score(metrics)
                checkpoint = run.save_checkpoint(body.train_state(), score, healthy)
            run.end_callbacks()
        result = run.finish(body.step, body.updates, metrics, checkpoint)
    finally:
        body.close()
    return result


# ---- the guard's evaluation -----------------------------------------------------------------------


def evaluation_environment(config: TrainConfig, env_factory: VectorEnvFactory | None = None) -> Environment:
    """The envs the guard evaluates on, built once per run: nominal physics (a fixed yardstick while
    domain randomisation's ranges widen) and enough copies for ``guard.eval_episodes``."""
    episodes = config.guard.eval_episodes
    return build_environment(
        nominal_physics(config), algo_gamma(config), num_envs=eval_num_envs(episodes), env_factory=env_factory
    )


def evaluate_on(
    run: RunContext,
    eval_env: Environment,
    policy: Actor,
    obs_normalizer: ObsNormalizer,
    metrics: dict[str, Any],
) -> list[float] | None:
    """``guard.eval_episodes`` deterministic episodes of ``policy`` on ``eval_env``, the observations
    normalised by ``obs_normalizer`` (frozen); adds ``eval/*`` to ``metrics`` and returns the episode
    returns, or None when a Ctrl-C or SIGTERM cut it short (a callback's stop does not)."""
    config = run.config
    return periodic_evaluation(
        policy,
        eval_env.envs,
        eval_env.adapter,
        obs_normalizer,
        config.guard.eval_episodes,
        config.run.seed,
        metrics,
        max_episode_steps=episode_step_cap(config),
        # a Ctrl-C cuts it short; a callback's stop lets the update in progress finish, its evaluation included
        should_stop=lambda: run.stop_requested and run.stopped_by is None,
    )
