"""The one on-policy training loop: collect -> prepare -> update -> guard -> log -> checkpoint.

Every on-policy algorithm runs through ``OnPolicyRunner``; an algorithm only supplies what
``pgrad.algos.contract.OnPolicyAlgorithm`` lists. The runner owns the environments, normalisers,
seeding, the step counter and the RNG; the run folder, logs, checkpoints and signals belong to
the ``RunContext``; what to do about the metrics (alerts, rollbacks, halts, health marks) is the
``Guard``'s decision, which this loop carries out.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from pgrad import metric_names as names
from pgrad.algos.contract import UpdateContext
from pgrad.builders import (
    Environment,
    algo_gamma,
    build_algorithm,
    build_environment,
    env_label,
    nominal_physics,
    one_line,
)
from pgrad.checkpoint import (
    TrainState,
    read_train_state,
)
from pgrad.config import TrainConfig
from pgrad.envs import state as env_state
from pgrad.envs.randomize import draw_metrics
from pgrad.envs.sources import VectorEnvFactory
from pgrad.errors import ConfigError, PgradError, TrainingHalted
from pgrad.monitor.evaluation import episode_step_cap, eval_num_envs, periodic_evaluation
from pgrad.monitor.guard import Action, Checkpoint, Event, Guard, Halt, Rollback, Snapshot
from pgrad.monitor.recovery import (
    GuardState,
    HealthyStates,
    OptimizerGuard,
    TrajectoryRecorder,
    UpdateSizes,
    parameters_finite,
    restore_captured,
    restore_learner,
    save_batch,
    update_groups,
)
from pgrad.monitor.sinks import JsonlSink
from pgrad.registry import get_algorithm
from pgrad.rollout import Batch, RolloutCollector
from pgrad.runners import loop_state
from pgrad.runners.context import RunContext, TrainResult, resident_memory_mb, seed_everything
from pgrad.threads import set_threads


class OnPolicyRunner:
    def __init__(
        self,
        config: TrainConfig,
        run_dir: Path,
        resume: bool = False,
        console: bool = True,
        overwrite: bool = False,
        env_factory: VectorEnvFactory | None = None,
    ) -> None:
        """``env_factory``: an env handed over as a Python object (``pgrad.api``), used for the training and
        the evaluation envs instead of ``config.env.id``."""
        kind = get_algorithm(config.algo).kind
        if kind != "on_policy":
            raise ConfigError(
                f"algorithm '{config.algo}' needs the {kind} runner, not the synchronous on-policy loop; "
                f"'pgrad train {config.algo}' picks it (pgrad.runners.runner_for)"
            )
        self.config = config
        self.run = RunContext(config, run_dir, resume, overwrite)
        self.run_dir = self.run.run_dir
        set_threads(config.run.torch_threads)
        seed_everything(config.run.seed)
        self.env_factory = env_factory
        self.env = build_environment(config, algo_gamma(config), env_factory=env_factory)
        self.algo = build_algorithm(config, self.env.adapter)
        self.collector = RolloutCollector(
            self.env.envs, self.env.adapter, self.env.obs_normalizer, self.env.reward_scaler, config.run.episode_window
        )
        self.rng = np.random.default_rng(config.run.seed)
        try:
            self.collector.reset(config.run.seed)
        except Exception as exc:  # the env's own reset: nothing is written yet, so a plain one-line error
            self.env.envs.close()
            raise ConfigError(f"{env_label(config)} failed on its first reset: {one_line(exc)}") from None
        self.step = 0
        self.updates = 0
        self.guard = Guard(config.guard, config.run.total_steps, self.run_dir)
        self.update_sizes = UpdateSizes(update_groups(self.algo)) if config.guard.enabled else None
        self.optimizer_guard = OptimizerGuard(list(self.algo.optimizers().values()), self.guard.state, config.guard)
        self.recorder = TrajectoryRecorder(self.env.envs.num_envs, config.guard.dump_episodes)
        self.healthy_states = HealthyStates(config.guard.snapshot_every)  # a rollback's first choice
        self.eval_env: Environment | None = None
        self.last_batch: Batch | None = None
        self.params_finite = 1.0
        self.randomization_log: JsonlSink | None = None  # opened at the first draws (env.randomize on)

        resume_from = self.run.latest_state() if resume else None  # read (and checked) before anything is written
        self.run.open(console, f"{config.algo} {config.env.id}")
        self.inexact = env_state.inexact_reason(self.env.envs)
        if resume_from is not None:
            try:
                self.load(*resume_from)
            except PgradError:
                self.close()  # a refused checkpoint leaves no file or environment open
                raise
        else:
            self.run.started_event()
        if self.inexact is not None:  # said before training starts, not discovered after a resume
            self.run.warn(
                "warning.resume_inexact", self.step, f"resume will not be exact for {config.env.id}: {self.inexact}"
            )

    # ---- what tests, benchmarks and the CLI reach through the runner -------------------------
    @property
    def stop_requested(self) -> bool:
        return self.run.stop_requested

    @stop_requested.setter
    def stop_requested(self, value: bool) -> None:
        self.run.stop_requested = value

    @property
    def sinks(self) -> list[Any]:
        return self.run.sinks

    @property
    def store(self) -> Any:
        return self.run.store

    @property
    def guard_state(self) -> GuardState:
        return self.guard.state

    # ---- checkpoints ----------------------------------------------------------------------
    def train_state(self) -> TrainState:
        return loop_state.capture(self, self.algo.extra_state())

    def save_checkpoint(self, score: float | None, healthy: bool = True) -> Path:
        return self.run.save_checkpoint(self.train_state(), score, healthy)

    def load(self, state: TrainState, path: Path) -> None:
        """Resume from the run's latest checkpoint: everything, exactly (``pgrad.runners.loop_state``)."""
        loop_state.restore(self, state, path, state.algo_state)
        self.run.emit("run.resumed", self.step, f"resumed from {path.name}", path=str(path))
        self.run.note_new_total(state)

    def restart_episodes(self, step: int) -> None:
        """Resume without the environments' state (Box2D worlds; async runs checkpointed before their
        workers' envs were captured): start fresh episodes.

        Restoring the saved observations and episode counters onto environments that were only reset
        would pair each env's first transition with an observation from another episode; instead
        every env is reset, with a seed drawn from (run.seed, step) so the episodes differ from the
        run's first ones, and the episodes in progress at the checkpoint are dropped (their partial
        returns never reach the statistics). The reward scaler's running returns restart with them.
        """
        seed = int(np.random.SeedSequence([self.config.run.seed, step]).generate_state(1)[0])
        self.collector.reset(seed)
        self.collector.reward_scaler.running_return[:] = 0.0
        self.run.emit(
            "run.envs_restarted",
            step,
            f"environments restarted with seed {seed}: their state could not be saved "
            f"({self.inexact or 'not captured'}); the episodes in progress at the checkpoint were dropped",
            seed=seed,
        )

    # ---- carrying out the guard's decisions ---------------------------------------------------
    def log_events(self, events: list[Event]) -> None:
        for event in events:
            self.run.emit(event.kind, self.step, event.message, show=event.show, **event.data)

    def carry_out(self, actions: list[Action], metrics: dict[str, Any]) -> None:
        for action in actions:
            if isinstance(action, Halt):
                self.halt(action)
            elif isinstance(action, Rollback):
                self.roll_back(action)
            elif isinstance(action, Checkpoint):
                self.save_checkpoint(action.score, action.healthy)
            elif isinstance(action, Snapshot):
                self.healthy_states.after_update(action.healthy, self.step, self.algo, self.collector)

    def roll_back(self, action: Rollback) -> None:
        """Restore the state the guard chose (it cut the learning rate already).

        ``last_healthy``: the newest confirmed healthy state in memory, else the newest checkpoint
        marked healthy. ``best``: the best-evaluated checkpoint, else the same as ``last_healthy``.
        """
        self.healthy_states.forget_candidate()
        path = self.run.checkpoint_path("best") if action.source == "best" else None
        memory = self.healthy_states.confirmed
        if path is None and memory is not None:
            restore_captured(memory, self.algo, self.collector)
            summary = f"restored the healthy state of step {memory.step} from memory"
            data: dict[str, Any] = {"checkpoint": None, "restored_step": memory.step, "restored_from": "memory"}
            self.log_events([self.guard.rollback_event(action.reason, summary, data)])
            return
        path = path or self.run.checkpoint_path("last_healthy")
        data = {"checkpoint": str(path) if path else None, "restored_from": "disk" if path else None}
        if path is None:
            summary = "no healthy state yet, kept the current weights"
        else:
            restored = read_train_state(path)
            restore_learner(restored, path, self.algo, self.collector)
            summary = f"restored {path.name} (step {restored.step})"
            data.update(restored_step=restored.step, restored_score=restored.score, restored_healthy=restored.healthy)
        self.log_events([self.guard.rollback_event(action.reason, summary, data)])

    def halt(self, action: Halt) -> None:
        """Log why, leave the evidence in the run folder (non-finite halts), and stop (exit code 3)."""
        message = action.message
        if action.dump:
            trajectories, batch = self.run_dir / "halt_trajectories.npz", self.run_dir / "halt_batch.npz"
            episodes = self.recorder.save(trajectories)
            if self.last_batch is not None:
                save_batch(self.last_batch, batch)
            message = (
                f"{message}; wrote the last {episodes} episodes to {trajectories} and the offending batch to "
                f"{batch} (np.load works without pickle). Usual causes: learning rate too high, no gradient "
                f"clipping, unnormalised rewards; see 'pgrad doctor {self.run_dir}'"
            )
            self.run.emit(action.kind, self.step, message, trajectories=str(trajectories), batch=str(batch))
        else:
            self.run.emit(action.kind, self.step, message, recoveries=self.guard.state.recoveries)
        raise TrainingHalted(message)

    # ---- evaluation ---------------------------------------------------------------------------
    def evaluate(self, metrics: dict[str, Any]) -> list[float] | None:
        """Deterministic episodes on separate envs with the normaliser frozen; adds ``eval/*`` metrics
        and returns the episode returns (the guard weighs a drop against their spread). None when a
        Ctrl-C or SIGTERM cut it short: the loop then checkpoints and stops as after any update."""
        guard = self.config.guard
        if self.eval_env is None:
            # Nominal physics: a fixed yardstick while domain randomisation's ranges widen.
            self.eval_env = build_environment(
                nominal_physics(self.config),
                algo_gamma(self.config),
                num_envs=eval_num_envs(guard.eval_episodes),
                env_factory=self.env_factory,
            )
        try:
            return periodic_evaluation(
                self.algo.acting_policy(),
                self.eval_env.envs,
                self.eval_env.adapter,
                self.collector.obs_normalizer,
                guard.eval_episodes,
                self.config.run.seed,
                metrics,
                max_episode_steps=episode_step_cap(self.config),
                should_stop=lambda: self.run.stop_requested,
            )
        except PgradError:
            raise
        except Exception as exc:
            raise self.env_failed(exc, "during the evaluation") from None

    def env_failed(self, exc: Exception, where: str) -> TrainingHalted:
        """An exception from the environment (or anything else in collection): one line naming the env and
        the step, a ``run.env_failed`` event, and the run stopped with its last checkpoint kept (the state
        in the middle of a failed rollout is not one to save)."""
        latest = self.run.checkpoint_path("latest")
        kept = (
            f"the last checkpoint {latest.name} is kept ('pgrad resume {self.run_dir}' continues from it)"
            if latest is not None
            else "no checkpoint was written yet"
        )
        message = f"{env_label(self.config)} raised {one_line(exc)} {where} after env step {self.step}; {kept}"
        # the full traceback goes to the event (the console gets one line): a bug in a custom env, or in
        # pgrad's collection code, can still be found
        trace = "".join(traceback.format_exception(exc))
        self.run.emit("run.env_failed", self.step, message, error=type(exc).__name__, traceback=trace)
        return TrainingHalted(message)

    # ---- the loop ---------------------------------------------------------------------------
    def train_one_update(self) -> dict[str, Any]:
        started = time.perf_counter()
        env_seconds_before = self.collector.env_seconds
        # Monte Carlo algorithms (REINFORCE) ask for whole episodes instead of a fixed rollout length.
        episodes = getattr(self.algo, "episodes_per_update", None)
        try:
            if episodes is not None:
                rollout = self.collector.collect_episodes(self.algo.acting_policy(), self.rng, episodes)
            else:
                rollout = self.collector.collect(self.algo.acting_policy(), self.rng, self.algo.rollout_length)
        except Exception as exc:
            raise self.env_failed(exc, "while collecting the rollout") from None
        collected = time.perf_counter()
        first_step = self.step
        self.step += rollout.num_steps * rollout.num_envs
        self.updates += 1
        faults = self.guard.begin_update(first_step, self.step)  # drills: lr spike, NaN gradients, reward flip
        if faults.flip_reward:
            np.negative(rollout.rewards, out=rollout.rewards)
        self.recorder.add(rollout)
        self.optimizer_guard.start_update(faults)
        batch, batch_stats = self.algo.prepare(rollout)
        context = UpdateContext(
            progress=min(self.step / self.config.run.total_steps, 1.0), lr_scale=self.guard.lr_scale(), rng=self.rng
        )
        # The update's size per parameter group, for the guard's spike rule: ||theta_after - theta_before||.
        if self.update_sizes is not None:
            self.update_sizes.start()
        update_stats = self.algo.update(batch, context)
        if self.update_sizes is not None:
            for name, size in self.update_sizes.finish().items():
                update_stats[f"{names.UPDATE_NORM}/{name}"] = size
        self.last_batch = batch
        finished = time.perf_counter()
        return {
            names.STEP: self.step,
            names.UPDATE: self.updates,
            **self.collector.episodes.summary(),
            **self.log_randomize_draws(),
            **batch_stats,
            **update_stats,
            names.NONFINITE_STEPS: float(self.optimizer_guard.skipped),
            names.PARAMS_FINITE: self.check_parameters(),
            names.STEPS_PER_SECOND: rollout.num_steps * rollout.num_envs / (finished - started),
            "perf/rollout_seconds": collected - started,
            "perf/env_seconds": self.collector.env_seconds - env_seconds_before,
            "perf/update_seconds": finished - collected,
            "perf/wall_seconds": self.run.elapsed_before + finished - self.run.started,
            "perf/rss_mb": resident_memory_mb(),
        }

    def log_randomize_draws(self) -> dict[str, float]:
        """Domain randomisation's draws of the episodes started in this update: one row per episode in
        ``randomization.jsonl`` (step = the update's last step, the env's index, its scales, delay, noise std),
        and their summary as ``randomize/*`` metrics. Nothing when env.randomize is off."""
        draws = self.collector.take_randomize_draws()
        if not draws:
            return {}
        if self.randomization_log is None:
            self.randomization_log = JsonlSink(self.run_dir / "randomization.jsonl")
        for draw in draws:
            self.randomization_log.write({"step": self.step, **draw})
        return draw_metrics(draws)

    def check_parameters(self) -> float:
        """1.0 while every parameter is finite. Checked every 10th update, and after any update with a
        skipped (non-finite) step: NaN/Inf parameters also make the next losses non-finite, which the
        guard's rules read every update, so this is insurance, not the first line. Only the guard reads
        it; a bare run (guard off) does not pay for it."""
        if self.config.guard.enabled and (self.updates % 10 == 0 or self.optimizer_guard.skipped):
            self.params_finite = float(parameters_finite(self.algo.modules()))
        return self.params_finite

    def train(self, stop_at_step: int | None = None) -> TrainResult:
        """Train to ``run.total_steps`` (or stop early at ``stop_at_step``, as a kill would)."""
        self.run.started = time.perf_counter()
        metrics: dict[str, Any] = {}
        total = self.config.run.total_steps
        try:
            with self.run.stop_signals():
                try:
                    while self.step < total and not self.run.stop_requested:
                        metrics = self.train_one_update()
                        self.guard.observe(metrics, self.updates)
                        evaluation = self.evaluate(metrics) if self.guard.evaluation_due(self.step) else None
                        self.run.log(metrics)
                        checkpoint_due = self.step - self.run.last_checkpoint_step >= self.config.run.checkpoint_every
                        actions = self.guard.decide(metrics, self.step, evaluation, checkpoint_due)
                        self.log_events(self.guard.take_events())
                        self.carry_out(actions, metrics)
                        if stop_at_step is not None and self.step >= stop_at_step:
                            break
                finally:
                    self.run.flush()  # whatever ends the loop (a second Ctrl-C too), the logged rows are on disk
                # The final checkpoint takes a moment; a signal now (the second Ctrl-C of an impatient user)
                # must not cut it short and leave the run without its last state.
                self.run.second_interrupts = False
                checkpoint = None
                if self.run.needs_final_checkpoint(self.step):
                    checkpoint = self.save_checkpoint(self.guard.checkpoint_score(metrics), self.guard.healthy)
            result = self.run.finish(self.step, self.updates, metrics, checkpoint)
        except BaseException:  # a halt, a failed checkpoint write, a second Ctrl-C: files closed, lock released
            self.close()
            raise
        self.close()
        return result

    def close(self) -> None:
        self.optimizer_guard.remove()
        if self.randomization_log is not None:
            self.randomization_log.close()
        if self.eval_env is not None:
            self.eval_env.envs.close()
            self.eval_env = None
        self.run.close()
        self.env.envs.close()
