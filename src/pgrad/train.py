"""The one on-policy training loop: collect -> prepare -> update -> log -> checkpoint.

Every on-policy algorithm runs through ``Trainer``; an algorithm only supplies what
``pgrad.algos.OnPolicyAlgorithm`` lists. The trainer owns everything else: environments,
normalisers, seeding, the step counter, metrics, checkpoints, and stopping cleanly on
Ctrl-C/SIGTERM (finish the current update, write a checkpoint, exit).
"""

from __future__ import annotations

import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pgrad import __version__
from pgrad.algos import OnPolicyAlgorithm, get_algorithm
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
from pgrad.envs.factory import SpaceAdapter, make_vector_env
from pgrad.envs.normalize import ObsNormalizer, RewardScaler
from pgrad.errors import CheckpointError, ConfigError
from pgrad.monitor.sinks import ConsoleDisplay, EventLog, JsonlSink, tensorboard_sink
from pgrad.rollout import RolloutCollector


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resident_memory_mb() -> float:
    """Current resident set size; falls back to the peak where /proc is absent."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    updates: int
    seconds: float
    interrupted: bool
    last_metrics: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None


@dataclass
class Environment:
    """What the trainer and the evaluator both build from an ``EnvConfig``."""

    envs: Any
    adapter: SpaceAdapter
    obs_normalizer: ObsNormalizer
    reward_scaler: RewardScaler


def build_environment(config: TrainConfig, gamma: float, num_envs: int | None = None, **make_kwargs: Any) -> Environment:
    envs = make_vector_env(config.env, num_envs=num_envs, **make_kwargs)
    adapter = SpaceAdapter(envs.single_observation_space, envs.single_action_space, config.env.rescale_actions)
    obs_normalizer = ObsNormalizer((adapter.obs_dim,), config.env.clip_obs, config.env.norm_obs)
    reward_scaler = RewardScaler(envs.num_envs, gamma, config.env.clip_reward, config.env.norm_reward)
    return Environment(envs, adapter, obs_normalizer, reward_scaler)


def algo_gamma(config: TrainConfig) -> float:
    """The discount the reward scaler uses: the algorithm's own gamma (0.99 if it has none)."""
    return float(getattr(config.algo_config, "gamma", 0.99))


def build_algorithm(config: TrainConfig, adapter: SpaceAdapter) -> OnPolicyAlgorithm:
    spec = get_algorithm(config.algo)
    if adapter.action.kind not in spec.action_kinds:
        raise ConfigError(
            f"algorithm '{config.algo}' does not support {adapter.action.kind} actions of {config.env.id} "
            f"(it supports: {', '.join(spec.action_kinds)})"
        )
    return spec.build(config.algo_config, adapter.obs_dim, adapter.action)


class Trainer:
    def __init__(self, config: TrainConfig, run_dir: Path, resume: bool = False, console: bool = True) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.store = CheckpointStore(self.run_dir, config.run.keep_checkpoints)
        if not resume and self.store.index()["latest"] is not None:
            raise ConfigError(
                f"run folder {self.run_dir} already holds a run; continue it with 'pgrad resume {self.run_dir}' "
                "or choose another --run-dir"
            )
        torch.set_num_threads(config.run.torch_threads)
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

        self.run_dir.mkdir(parents=True, exist_ok=True)
        config.save(self.run_dir / "config.yaml")
        self.console = ConsoleDisplay(config.run.total_steps, 0, config.run.progress and console, f"{config.algo} {config.env.id}")
        self.events = EventLog(self.run_dir / "events.jsonl", echo=self.console.message if console else None)
        self.sinks: list[Any] = [JsonlSink(self.run_dir / "metrics.jsonl")]
        if config.run.tensorboard:
            board = tensorboard_sink(self.run_dir / "tb")
            if board is not None:
                self.sinks.append(board)
        if resume:
            self.load(self.store.path("latest"))
        else:
            self.events.emit("run.started", 0, f"{config.algo} on {config.env.id}, seed {config.run.seed}", version=__version__)

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
        }
        return tensors, state

    def save_checkpoint(self, score: float | None, healthy: bool = True) -> Path:
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
            env_state.restore(self.env.envs, state["env_state"])
        else:
            self.events.emit("warning.env_state", state["step"], "environment state was not captured; environments were re-seeded")
        self.algo.load_extra_state(state["algo_state"])
        self.step, self.updates = state["step"], state["updates"]
        self.elapsed_before = state["elapsed_seconds"]
        self.last_checkpoint_step = self.step
        self.events.emit("run.resumed", self.step, f"resumed from {path.name}", path=str(path))

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
        batch, batch_stats = self.algo.prepare(rollout)
        progress = min(self.step / self.config.run.total_steps, 1.0)
        update_stats = self.algo.update(batch, progress, self.rng)
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
                for sink in self.sinks:
                    sink.write(metrics)
                self.console.update(metrics)
                if self.step - self.last_checkpoint_step >= self.config.run.checkpoint_every:
                    self.save_checkpoint(metrics.get("rollout/return_mean"))
                if stop_at_step is not None and self.step >= stop_at_step:
                    break
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        checkpoint = None
        if self.last_checkpoint_step != self.step or self.store.index()["latest"] is None:
            checkpoint = self.save_checkpoint(metrics.get("rollout/return_mean"))
        interrupted = self.step < total
        if self.stop_requested:
            self.events.emit("run.interrupted", self.step, f"stopped on request; continue with 'pgrad resume {self.run_dir}'")
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
        self.console.close()
        for sink in self.sinks:
            sink.close()
        self.events.close()
        self.env.envs.close()
