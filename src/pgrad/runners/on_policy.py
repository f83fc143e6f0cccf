"""The one on-policy training loop: collect -> prepare -> update -> guard -> log -> checkpoint.

Every on-policy algorithm runs through ``OnPolicyRunner``; an algorithm only supplies what
``pgrad.algos.contract.OnPolicyAlgorithm`` lists. The runner owns the environments, normalisers,
seeding, the step counter and the RNG; the run folder, logs, checkpoints and signals belong to
the ``RunContext``; what to do about the metrics (alerts, rollbacks, halts, health marks) is the
``Guard``'s decision, which this loop carries out.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from pgrad import metric_names as names
from pgrad.algos.contract import UpdateContext
from pgrad.algos.impala import LocalActorCollector
from pgrad.algos.numpy_grad import resolved_record
from pgrad.builders import (
    Environment,
    algo_gamma,
    build_algorithm,
    build_environment,
    one_line,
)
from pgrad.callbacks import CallbackError
from pgrad.checkpoint import (
    CheckpointStore,
    TrainState,
)
from pgrad.config import TrainConfig, check_memory
from pgrad.envs import state as env_state
from pgrad.envs.sources import VectorEnvFactory
from pgrad.errors import ConfigError, TrainingHalted, WorkersLost
from pgrad.monitor.guard import Action
from pgrad.monitor.recovery import (
    TrajectoryRecorder,
    UpdateSizes,
    parameters_finite,
    update_groups,
)
from pgrad.monitor.sinks import JsonlSink, MetricSink
from pgrad.registry import get_algorithm
from pgrad.rollout import Batch, RolloutCollector, rollout_bytes
from pgrad.runners import synchronous, trunk
from pgrad.runners.context import TrainResult, resident_memory_mb
from pgrad.runners.trunk import guard_parts


class OnPolicyRunner:
    """The on-policy loop: collect, prepare, update, judged by the guard after each update."""

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
        if kind not in ("on_policy", "actor_learner"):
            raise ConfigError(
                f"algorithm '{config.algo}' needs the {kind} runner, not the synchronous on-policy loop; "
                f"'pgrad train {config.algo}' picks it (pgrad.runners.runner_for)"
            )
        self.config = config
        self.run = trunk.begin_run(config, run_dir, resume, overwrite, env_object=env_factory is not None)
        self.run_dir = self.run.run_dir
        self.env_factory = env_factory
        self.collector: RolloutCollector | Any
        if config.run.backend == "ray":
            self.env, self.collector, self.algo = self.ray_workers(config, kind)
        else:
            self.env = build_environment(config, algo_gamma(config), env_factory=env_factory)
            self.algo = build_algorithm(config, self.env.adapter)
            adapter, steps = self.env.adapter, max(self.algo.rollout_length, 1)
            needed = rollout_bytes(steps, self.env.envs.num_envs, adapter.obs_dim, adapter.action.size)
            check_memory(needed, f"{config.algo}.num_steps", "a rollout of num_steps x env.num_envs and its batch")
            # IMPALA's actors here are the learner's own envs: rollouts carry log mu (impala.LocalActorCollector)
            collector_class = LocalActorCollector if kind == "actor_learner" else RolloutCollector
            self.collector = collector_class(
                self.env.envs,
                self.env.adapter,
                self.env.obs_normalizer,
                self.env.reward_scaler,
                config.run.episode_window,
                getattr(self.algo, "state_size", 0),  # a recurrent policy's state, carried by the collector
            )
        self.rng = np.random.default_rng(config.run.seed)
        synchronous.first_reset(self)
        self.step = 0
        self.updates = 0
        self.guard, self.optimizer_guard, self.healthy_states = guard_parts(
            config, self.run_dir, list(self.algo.optimizers().values())
        )
        self.update_sizes = UpdateSizes(update_groups(self.algo)) if config.guard.enabled else None
        self.recorder = TrajectoryRecorder(self.env.envs.num_envs, config.guard.dump_episodes)
        self.eval_env: Environment | None = None
        self.last_batch: Batch | None = None
        self.params_finite = 1.0
        self.params_checked = False  # the first update of this process checks them (after a resume, too)
        self.randomization_log: JsonlSink | None = None  # opened at the first draws (env.randomize on)
        self.run.resolved = resolved_record(self.algo)
        self.inexact = env_state.inexact_reason(self.env.envs)
        trunk.open_or_resume(self.run, console, f"{config.algo} {config.env.id}", self.load, self.close)
        if self.inexact is not None:  # said before training starts, not discovered after a resume
            self.run.warn(
                "warning.resume_inexact", self.step, f"resume will not be exact for {config.env.id}: {self.inexact}"
            )

    def ray_workers(self, config: TrainConfig, kind: str) -> tuple[Environment, Any, Any]:
        """The learner's env stand-in, the Ray collector (synchronous, or IMPALA's asynchronous one) and the
        algorithm. The spaces come from one env built here and closed; the envs that step are the workers'."""
        if self.env_factory is not None:
            raise ConfigError(
                "run.backend 'ray' needs env.id (a Gymnasium id or 'module:Class' the workers can build); an env "
                "handed over as a Python object stays in this process: use run.backend 'local'"
            )
        from pgrad.runners.ray_backend import ray_environment

        probe = build_environment(config, algo_gamma(config), num_envs=1)
        probe.envs.close()
        algo = build_algorithm(config, probe.adapter)
        queue = int(getattr(config.algo_config, "actor_queue", 1))
        state_size = getattr(algo, "state_size", 0)  # a recurrent policy's state, carried by each worker's collector
        env, collector = ray_environment(
            config, algo_gamma(config), probe.adapter, kind == "actor_learner", queue, state_size
        )
        collector.group.on_event = lambda event, message, **data: self.run.emit(event, self.step, message, **data)
        return env, collector, algo

    # ---- what tests, benchmarks and the CLI reach through the runner -------------------------
    # what the CLI, callbacks, tests and benchmarks reach through the runner: the run context's
    stop_requested: trunk.RunAttribute[bool] = trunk.RunAttribute("stop_requested")
    sinks: trunk.RunAttribute[list[MetricSink]] = trunk.RunAttribute("sinks")
    store: trunk.RunAttribute[CheckpointStore] = trunk.RunAttribute("store")

    # ---- checkpoints ----------------------------------------------------------------------
    def train_state(self) -> TrainState:
        """The loop as a ``TrainState``, with the algorithm's extra state."""
        return synchronous.capture(self, self.algo.extra_state())

    def save_checkpoint(self, score: float | None, healthy: bool = True) -> Path:
        """Writes the current ``train_state`` as a checkpoint with its score and health mark; returns its path."""
        return self.run.save_checkpoint(self.train_state(), score, healthy)

    def load(self, state: TrainState, path: Path) -> None:
        """Resume from the run's latest checkpoint: everything, exactly (``pgrad.runners.synchronous``)."""
        synchronous.restore(self, state, path, state.algo_state)

    # ---- shared with the other synchronous loop (pgrad.runners.synchronous) ----------------------
    restart_episodes = synchronous.restart_episodes
    log_events = synchronous.log_events
    roll_back = synchronous.roll_back
    evaluate = synchronous.evaluate
    env_failed = synchronous.env_failed
    log_randomize_draws = synchronous.log_randomize_draws
    close = synchronous.close

    # ---- the body the trunk's loop drives (pgrad.runners.trunk) ---------------------------------
    take_events = synchronous.take_events
    snapshot = synchronous.snapshot
    final_score = synchronous.final_score
    before_loop = synchronous.before_loop
    halt = synchronous.halt

    def advance(self, stop_at_step: int | None = None) -> dict[str, Any]:
        """The Body protocol: one update (``train_one_update``); its metrics."""
        return self.train_one_update()

    def judge(self, metrics: dict[str, Any]) -> list[Action]:
        """The Body protocol: the guard's rules and decision over this update's metrics."""
        return synchronous.judge(self, metrics, self.updates)

    # ---- the loop ---------------------------------------------------------------------------
    def train_one_update(self) -> dict[str, Any]:
        """Collects a rollout (or whole episodes), applies any drilled faults, prepares and updates; returns the
        update's metrics with timings and update sizes."""
        started = time.perf_counter()
        env_seconds_before = self.collector.env_seconds
        # Monte Carlo algorithms (REINFORCE) ask for whole episodes instead of a fixed rollout length.
        episodes = getattr(self.algo, "episodes_per_update", None)
        try:
            if episodes is not None:
                rollout = self.collector.collect_episodes(self.algo.acting_policy(), self.rng, episodes)
            else:
                rollout = self.collector.collect(self.algo.acting_policy(), self.rng, self.algo.rollout_length)
        except WorkersLost as exc:
            raise self.workers_lost(exc) from None
        except CallbackError:
            raise  # a callback's failure during the steps, not the env's
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
            **self.collector.round_metrics(),
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

    def workers_lost(self, exc: WorkersLost) -> TrainingHalted:
        """Ray workers failed past the cap: a checkpoint of the state before this update (its workers' episodes
        restart on resume where a worker was replaced), a ``ray.workers_lost`` event, and the run stops."""
        try:
            kept = f"wrote checkpoint {self.save_checkpoint(None, healthy=False).name}"
        except Exception as save_error:  # the workers needed to save their state are gone too
            latest = self.run.checkpoint_path("latest")
            kept = f"no new checkpoint ({one_line(save_error)}); " + (
                f"the last one, {latest.name}, is kept" if latest is not None else "none was written before"
            )
        message = f"{exc}; {kept} ('pgrad resume {self.run_dir}' continues from it)"
        self.run.emit("ray.workers_lost", self.step, message)
        return TrainingHalted(message)

    def check_parameters(self) -> float:
        """1.0 while every parameter is finite. Checked on the first update of this process (a resumed run's
        weights came from a file), every 10th update, and after any update with a skipped (non-finite) step:
        NaN/Inf parameters also make the next losses non-finite, which the guard's rules read every update, so
        this is insurance, not the first line. Only the guard reads it; a bare run (guard off) does not pay for it."""
        due = self.updates % 10 == 0 or self.optimizer_guard.skipped or not self.params_checked
        if self.config.guard.enabled and due:
            self.params_finite = float(parameters_finite(self.algo.modules()))
            self.params_checked = True
        return self.params_finite

    def train(self, stop_at_step: int | None = None) -> TrainResult:
        """Train to ``run.total_steps`` (or stop early at ``stop_at_step``, as a kill would)."""
        return trunk.train_loop(self, stop_at_step)
