"""The one on-policy training loop: collect -> prepare -> update -> log -> checkpoint.

Every on-policy algorithm runs through ``OnPolicyRunner``; an algorithm only supplies what
``pgrad.algos.OnPolicyAlgorithm`` lists. The trainer owns everything else: environments,
normalisers, seeding, the step counter, metrics, checkpoints, and stopping cleanly on
Ctrl-C/SIGTERM (finish the current update, write a checkpoint, exit).
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pgrad import __version__
from pgrad.algos.contract import UpdateContext
from pgrad.builders import Environment, algo_gamma, build_algorithm, build_environment
from pgrad.checkpoint import (
    CheckpointStore,
    load_checkpoint,
    numpy_to_tensors,
    optimizer_from_parts,
    optimizer_to_parts,
    tensors_to_numpy,
)
from pgrad.config import TrainConfig
from pgrad.envs import state as env_state
from pgrad.errors import CheckpointError, ConfigError, TrainingHalted
from pgrad.monitor.alerts import Alert, bounded_history, check_alerts
from pgrad.monitor.evaluation import EVAL_SEED_OFFSET, eval_num_envs, run_episodes
from pgrad.monitor.faults import faults_for_update, parse_fault
from pgrad.monitor.recovery import (
    GuardState,
    OptimizerGuard,
    TrajectoryRecorder,
    eval_collapsed,
    nonfinite_fraction,
    parameters_finite,
    restore_learner,
    save_batch,
    should_halt,
)
from pgrad.monitor.sinks import ConsoleDisplay, EventLog, JsonlSink, read_jsonl, tensorboard_sink
from pgrad.registry import get_algorithm
from pgrad.rollout import RolloutCollector
from pgrad.runners.context import TrainResult, resident_memory_mb, seed_everything
from pgrad.threads import set_threads


class OnPolicyRunner:
    def __init__(self, config: TrainConfig, run_dir: Path, resume: bool = False, console: bool = True) -> None:
        kind = get_algorithm(config.algo).kind
        if kind != "on_policy":
            raise ConfigError(
                f"algorithm '{config.algo}' needs the {kind} runner, not the synchronous on-policy loop; "
                f"'pgrad train {config.algo}' picks it (pgrad.runners.runner_for)"
            )
        self.config = config
        self.run_dir = Path(run_dir)
        self.store = CheckpointStore(self.run_dir, config.run.keep_checkpoints)
        if not resume and self.store.index()["latest"] is not None:
            raise ConfigError(
                f"run folder {self.run_dir} already holds a run; continue it with 'pgrad resume {self.run_dir}' "
                "or choose another --run-dir"
            )
        set_threads(config.run.torch_threads)
        seed_everything(config.run.seed)
        self.env = build_environment(config, algo_gamma(config))
        self.algo = build_algorithm(config, self.env.adapter)
        self.collector = RolloutCollector(
            self.env.envs, self.env.adapter, self.env.obs_normalizer, self.env.reward_scaler, config.run.episode_window
        )
        self.rng = np.random.default_rng(config.run.seed)
        self.collector.reset(config.run.seed)
        self.step = 0
        self.updates = 0
        self.elapsed_before = 0.0
        self.last_checkpoint_step = 0
        self.stop_requested = False
        self.setup_guard()

        self.run_dir.mkdir(parents=True, exist_ok=True)
        config.save(self.run_dir / "config.yaml")
        self.console = ConsoleDisplay(
            config.run.total_steps, 0, config.run.progress and console, f"{config.algo} {config.env.id}"
        )
        self.events = EventLog(self.run_dir / "events.jsonl", echo=self.console.message if console else None)
        self.sinks: list[Any] = [JsonlSink(self.run_dir / "metrics.jsonl")]
        if config.run.tensorboard:
            board = tensorboard_sink(self.run_dir / "tb")
            if board is not None:
                self.sinks.append(board)
        if resume:
            self.load(self.store.path("latest"))
        else:
            self.events.emit(
                "run.started", 0, f"{config.algo} on {config.env.id}, seed {config.run.seed}", version=__version__
            )

    # ---- checkpoints ----------------------------------------------------------------------
    def checkpoint_parts(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors: dict[str, torch.Tensor] = {}
        for name, module in self.algo.modules().items():
            tensors.update({f"module.{name}.{k}": v for k, v in module.state_dict().items()})
        optimizers = {}
        for name, optimizer in self.algo.optimizers().items():
            optimizer_tensors, optimizers[name] = optimizer_to_parts(f"optim.{name}", optimizer)
            tensors.update(optimizer_tensors)
        tensors.update(numpy_to_tensors("collector", self.collector.state_arrays()))
        tensors["rng.torch"] = torch.get_rng_state()
        python_state = random.getstate()
        state = {
            "pgrad_version": __version__,
            "algo": self.config.algo,
            "step": self.step,
            "updates": self.updates,
            "elapsed_seconds": self.elapsed_before + (time.perf_counter() - self.started),
            "config": self.config.to_dict(),
            "rng_numpy": self.rng.bit_generator.state,
            "rng_python": [python_state[0], list(python_state[1]), python_state[2]],
            "optimizers": optimizers,
            "env_state": env_state.capture(self.env.envs),
            "episodes": self.collector.episode_state(),
            "algo_state": self.algo.extra_state(),
            "guard": self.guard_state.to_dict(),
        }
        return tensors, state

    def save_checkpoint(self, score: float | None, healthy: bool = True) -> Path:
        for sink in self.sinks:  # the buffered rows up to this step go to disk before the checkpoint exists
            sink.flush()
        tensors, state = self.checkpoint_parts()
        path = self.store.save(self.step, tensors, state, score, healthy)
        self.last_checkpoint_step = self.step
        self.events.emit("checkpoint", self.step, f"saved {path.name}", path=str(path), score=score, healthy=healthy)
        return path

    def load(self, path: Path) -> None:
        tensors, state = load_checkpoint(path)
        if state.get("algo") != self.config.algo:
            raise CheckpointError(f"checkpoint {path} is for algorithm {state.get('algo')!r}, not {self.config.algo!r}")
        try:
            for name, module in self.algo.modules().items():
                prefix = f"module.{name}."
                module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
            for name, optimizer in self.algo.optimizers().items():
                optimizer_from_parts(f"optim.{name}", optimizer, tensors, state["optimizers"][name])
            self.collector.load_state_arrays(tensors_to_numpy("collector", tensors))
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path} does not fit this configuration: {exc}") from None
        self.collector.load_episode_state(state["episodes"])
        torch.set_rng_state(tensors["rng.torch"])
        self.rng.bit_generator.state = state["rng_numpy"]
        version, internal, gauss = state["rng_python"]
        random.setstate((version, tuple(internal), gauss))
        if state["env_state"] is not None:
            try:
                env_state.restore(self.env.envs, state["env_state"])
            except (ValueError, AttributeError, TypeError) as exc:
                raise CheckpointError(
                    f"checkpoint {path}: its environment state does not fit {self.config.env.id} ({exc})"
                ) from None
        else:
            self.events.emit(
                "warning.env_state", state["step"], "environment state was not captured; environments were re-seeded"
            )
        self.algo.load_extra_state(state["algo_state"])
        self.set_guard_state(GuardState.from_dict(state.get("guard")))
        logged = read_jsonl(self.run_dir / "metrics.jsonl")
        self.history = bounded_history([m for m in logged if m.get("step", 0) <= state["step"]], self.config.guard)
        self.step, self.updates = state["step"], state["updates"]
        self.elapsed_before = state["elapsed_seconds"]
        self.last_checkpoint_step = self.step
        self.events.emit("run.resumed", self.step, f"resumed from {path.name}", path=str(path))

    # ---- the guard: drills, alerts, recovery, evaluation (see pgrad.monitor) -------------------
    def setup_guard(self) -> None:
        guard = self.config.guard
        self.guard_state = GuardState(next_eval_step=guard.eval_every)
        self.optimizer_guard = OptimizerGuard(list(self.algo.optimizers().values()), self.guard_state, guard)
        self.recorder = TrajectoryRecorder(self.env.envs.num_envs, guard.dump_episodes)
        self.drills = tuple(parse_fault(text) for text in guard.inject)
        self.history: list[dict[str, Any]] = []  # recent metrics (and the first), what the alert rules read
        self.announced: dict[str, int] = {}  # "level.rule" -> update it was last announced at
        self.shown: set[str] = set()  # warnings already shown on the console
        self.eval_env: Environment | None = None
        self.last_batch: Any = None
        self.healthy = True

    def set_guard_state(self, state: GuardState) -> None:
        self.guard_state = state
        self.optimizer_guard.state = state

    def before_update(self, rollout: Any) -> None:
        """Arm this update's drills, flip rewards if one says so, and record the episodes."""
        first_step = self.step - rollout.num_steps * rollout.num_envs
        fired = set(self.guard_state.fired)
        faults = faults_for_update(self.drills, first_step, self.step, fired, self.config.guard.lr_spike_factor)
        self.guard_state.fired = sorted(fired)
        for spec in faults.started:
            self.events.emit(f"drill.{spec.kind}", self.step, f"drill {spec.text} started", drill=spec.text)
        if faults.flip_reward:
            np.negative(rollout.rewards, out=rollout.rewards)
        self.recorder.add(rollout)
        self.optimizer_guard.start_update(faults)

    def check_guard(self, metrics: dict[str, Any]) -> list[Alert]:
        """Add the guard's own diagnostics to ``metrics`` and run the alert rules on the history."""
        metrics["train/lr_scale"] = self.guard_state.lr_scale
        metrics["diagnostics/nonfinite_steps"] = float(self.optimizer_guard.skipped)
        metrics["diagnostics/params_finite"] = float(parameters_finite(self.algo.modules()))
        metrics["diagnostics/recoveries"] = float(self.guard_state.recoveries)
        self.history = bounded_history(self.history + [metrics], self.config.guard)
        if not self.config.guard.enabled:
            return []
        alerts = check_alerts(self.history, self.config.guard)
        metrics["diagnostics/alerts"] = float(len(alerts))
        for alert in alerts:
            # Critical alerts are always announced. A warning is logged once per history_window updates,
            # and shown on the console only the first time (its repeats are in events.jsonl).
            kind = f"{alert.level}.{alert.rule}"
            last = self.announced.get(kind)
            if alert.level == "critical" or last is None or self.updates - last >= self.config.guard.history_window:
                self.announced[kind] = self.updates
                self.events.emit(
                    kind, self.step, alert.message, show=alert.level == "critical" or kind not in self.shown,
                    metric=alert.metric, value=alert.value, threshold=alert.threshold,
                )
                self.shown.add(kind)
        return alerts

    def evaluate_if_due(self, metrics: dict[str, Any]) -> bool:
        """Every ``guard.eval_every`` steps and at the end: deterministic episodes on separate envs."""
        guard = self.config.guard
        due = self.step >= self.guard_state.next_eval_step or self.step >= self.config.run.total_steps
        if not guard.eval_every or not due:
            return False
        while self.guard_state.next_eval_step <= self.step:
            self.guard_state.next_eval_step += guard.eval_every
        started = time.perf_counter()
        if self.eval_env is None:
            self.eval_env = build_environment(
                self.config, algo_gamma(self.config), num_envs=eval_num_envs(guard.eval_episodes)
            )
        returns, lengths = run_episodes(
            self.algo.acting_policy(), self.eval_env.envs, self.eval_env.adapter, self.collector.obs_normalizer,
            guard.eval_episodes, True, EVAL_SEED_OFFSET + self.config.run.seed,
        )
        metrics.update({
            "eval/return_mean": float(np.mean(returns)),
            "eval/return_std": float(np.std(returns)),
            "eval/return_min": float(np.min(returns)),
            "eval/return_max": float(np.max(returns)),
            "eval/length_mean": float(np.mean(lengths)),
            "perf/eval_seconds": time.perf_counter() - started,
        })
        return True

    def act_on_guard(self, alerts: list[Alert], metrics: dict[str, Any], evaluated: bool) -> None:
        """Halt, roll back, or checkpoint (with its health mark), in that order of precedence."""
        guard = self.config.guard
        if guard.enabled and should_halt(self.guard_state, guard):
            self.halt_nonfinite()
        self.healthy = metrics["diagnostics/params_finite"] == 1.0 and not any(a.level == "critical" for a in alerts)
        if guard.enabled and guard.rollback_on_kl and any(a.rule == "kl" and a.level == "critical" for a in alerts):
            self.recover("last_healthy", f"approx KL {metrics['diagnostics/approx_kl']:.3g} > {guard.kl_critical}")
            return
        if evaluated:
            if self.after_evaluation(metrics["eval/return_mean"]):
                return
            self.save_checkpoint(metrics["eval/return_mean"], self.healthy)
        elif self.step - self.last_checkpoint_step >= self.config.run.checkpoint_every:
            self.save_checkpoint(self.checkpoint_score(metrics), self.healthy)

    def checkpoint_score(self, metrics: dict[str, Any]) -> float | None:
        """With evaluation on, only evaluated checkpoints carry a score (best = best evaluation)."""
        return None if self.config.guard.eval_every else metrics.get("rollout/return_mean")

    def after_evaluation(self, eval_return: float) -> bool:
        """Track the best evaluation and collapses; reload the best checkpoint after ``eval_patience``."""
        state, guard = self.guard_state, self.config.guard
        if eval_collapsed(eval_return, state.best_eval, guard):
            state.eval_collapses += 1
            self.events.emit(
                "warning.eval_collapse", self.step,
                f"evaluation return {eval_return:.4g} (best {state.best_eval}); "
                f"{state.eval_collapses} of {guard.eval_patience} before a reload",
                value=eval_return, best=state.best_eval,
            )
        else:
            state.eval_collapses = 0
        # The level to hold is the best *confirmed* one: two evaluations in a row at or above it, so one
        # lucky evaluation early in training does not make every later one look like a collapse.
        if self.healthy and state.last_eval is not None:
            confirmed = min(eval_return, state.last_eval)
            state.best_eval = confirmed if state.best_eval is None else max(state.best_eval, confirmed)
        state.last_eval = eval_return if self.healthy else None
        if guard.enabled and guard.rollback_on_eval and state.eval_collapses >= guard.eval_patience:
            self.recover("best", f"evaluation return collapsed for {state.eval_collapses} evaluations in a row")
            return True
        return False

    def recover(self, which: str, reason: str) -> None:
        """Restore the ``which`` checkpoint's learner and cut the learning rate; stop past the cap."""
        state, guard = self.guard_state, self.config.guard
        if state.recoveries >= guard.max_recoveries:
            message = (
                f"{reason}, and this run already used its {guard.max_recoveries} recoveries (guard.max_recoveries); "
                f"stopping instead of looping. Earlier recoveries: {'; '.join(state.recovery_log) or 'none'}. "
                f"Events: {self.run_dir / 'events.jsonl'}; diagnose with 'pgrad doctor {self.run_dir}'"
            )
            self.events.emit("critical.recovery_cap", self.step, message, recoveries=state.recoveries)
            raise TrainingHalted(message)
        path = None
        for name in (which, "last_healthy") if which != "last_healthy" else (which,):
            try:
                path = self.store.path(name)
                break
            except CheckpointError:
                continue
        state.lr_scale *= guard.lr_cut
        state.recoveries += 1
        state.recovery_log.append(f"step {self.step}: {reason}")
        state.eval_collapses = 0
        state.last_eval = None
        restored: dict[str, Any] = {}
        if path is None:
            summary = "no healthy checkpoint yet, kept the current weights"
        else:
            restored = restore_learner(path, self.algo, self.collector)
            summary = f"restored {path.name} (step {restored['step']})"
        self.events.emit(
            "recovery.rollback", self.step,
            f"{reason}: {summary}; learning rate x{state.lr_scale:g} (recovery {state.recoveries} of "
            f"{guard.max_recoveries})",
            checkpoint=str(path) if path else None, restored_step=restored.get("step"),
            restored_score=restored.get("score"), restored_healthy=restored.get("healthy"),
            lr_scale=state.lr_scale, recoveries=state.recoveries, reason=reason,
        )
        self.announced.clear()
        self.healthy = True

    def halt_nonfinite(self) -> None:
        """Leave the evidence in the run folder and stop (the CLI exits with code 3)."""
        guard = self.config.guard
        trajectories, batch = self.run_dir / "halt_trajectories.npz", self.run_dir / "halt_batch.npz"
        episodes = self.recorder.save(trajectories)
        if self.last_batch is not None:
            save_batch(self.last_batch, batch)
        message = (
            f"{nonfinite_fraction(self.guard_state, guard):.0%} of the last {guard.nonfinite_window} optimizer steps "
            f"had NaN/Inf gradients (limit {guard.nonfinite_halt:.0%}); wrote the last {episodes} episodes to "
            f"{trajectories} and the offending batch to {batch} (np.load works without pickle). Usual causes: "
            f"learning rate too high, no gradient clipping, unnormalised rewards; see 'pgrad doctor {self.run_dir}'"
        )
        self.events.emit("critical.halted", self.step, message, trajectories=str(trajectories), batch=str(batch))
        raise TrainingHalted(message)

    # ---- the loop ---------------------------------------------------------------------------
    def train_one_update(self) -> dict[str, Any]:
        started = time.perf_counter()
        env_seconds_before = self.collector.env_seconds
        # Monte Carlo algorithms (REINFORCE) ask for whole episodes instead of a fixed rollout length.
        episodes = getattr(self.algo, "episodes_per_update", None)
        if episodes is not None:
            rollout = self.collector.collect_episodes(self.algo.acting_policy(), self.rng, episodes)
        else:
            rollout = self.collector.collect(self.algo.acting_policy(), self.rng, self.algo.rollout_length)
        collected = time.perf_counter()
        self.step += rollout.num_steps * rollout.num_envs
        self.updates += 1
        self.before_update(rollout)  # drills (reward flip, lr spike, NaN gradients) and the trajectory record
        batch, batch_stats = self.algo.prepare(rollout)
        context = UpdateContext(
            progress=min(self.step / self.config.run.total_steps, 1.0),
            lr_scale=self.guard_state.lr_scale * self.optimizer_guard.faults.lr_factor,
            rng=self.rng,
        )
        update_stats = self.algo.update(batch, context)
        self.last_batch = batch
        finished = time.perf_counter()
        return {
            "step": self.step,
            "update": self.updates,
            **self.collector.episodes.summary(),
            **batch_stats,
            **update_stats,
            "perf/steps_per_second": rollout.num_steps * rollout.num_envs / (finished - started),
            "perf/rollout_seconds": collected - started,
            "perf/env_seconds": self.collector.env_seconds - env_seconds_before,
            "perf/update_seconds": finished - collected,
            "perf/wall_seconds": self.elapsed_before + finished - self.started,
            "perf/rss_mb": resident_memory_mb(),
        }

    def _request_stop(self, signum: int, frame: Any) -> None:
        if self.stop_requested:  # a second Ctrl-C means now
            raise KeyboardInterrupt
        self.stop_requested = True

    def train(self, stop_at_step: int | None = None) -> TrainResult:
        """Train to ``run.total_steps`` (or stop early at ``stop_at_step``, as a kill would)."""
        self.started = time.perf_counter()
        previous = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        metrics: dict[str, Any] = {}
        total = self.config.run.total_steps
        try:
            while self.step < total and not self.stop_requested:
                metrics = self.train_one_update()
                alerts = self.check_guard(metrics)
                evaluated = self.evaluate_if_due(metrics)
                for sink in self.sinks:
                    sink.write(metrics)
                self.console.update(metrics)
                self.act_on_guard(alerts, metrics, evaluated)
                if stop_at_step is not None and self.step >= stop_at_step:
                    break
        except TrainingHalted:
            self.close()
            raise
        finally:
            for sink in self.sinks:  # whatever ends the loop (a second Ctrl-C too), the logged rows are on disk
                sink.flush()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        checkpoint = None
        if self.last_checkpoint_step != self.step or self.store.index()["latest"] is None:
            checkpoint = self.save_checkpoint(self.checkpoint_score(metrics), self.healthy)
        interrupted = self.step < total
        if self.stop_requested:
            self.events.emit(
                "run.interrupted", self.step, f"stopped on request; continue with 'pgrad resume {self.run_dir}'"
            )
        elif not interrupted:
            self.events.emit("run.finished", self.step, "reached run.total_steps")
        self.close()
        return TrainResult(
            self.run_dir,
            self.step,
            self.updates,
            self.elapsed_before + time.perf_counter() - self.started,
            interrupted,
            metrics,
            checkpoint or self.store.path("latest"),
        )

    def close(self) -> None:
        self.optimizer_guard.remove()
        if self.eval_env is not None:
            self.eval_env.envs.close()
            self.eval_env = None
        self.console.close()
        for sink in self.sinks:
            sink.close()
        self.events.close()
        self.env.envs.close()
