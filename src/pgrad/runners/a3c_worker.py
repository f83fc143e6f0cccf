"""One A3C worker process: sync from the shared model, collect, differentiate locally, apply to shared.

Runs in a process started with the 'spawn' method, so everything it gets arrives pickled:
the shared model and optimizer statistics travel as shared-memory tensors (torch's
multiprocessing reductions), the counters and the stop event as ``multiprocessing`` objects.

Messages to the coordinator (a ``multiprocessing`` queue), each a tuple:
- ``("started", worker, pid)`` once everything is imported;
- ``("report", worker, payload)`` every ``report_every`` updates and once at the end;
- ``("error", worker, traceback_text)`` if anything raises (the worker then exits with code 1);
- ``("done", worker, None)`` after a clean stop.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pgrad.algos.a2c import a2c_batch_loss
from pgrad.algos.a3c import A3CConfig, SharedOptimizer, build_model
from pgrad.algos.common import actor_critic_batch, backward, linear_schedule
from pgrad.builders import algo_gamma, build_environment
from pgrad.config import TrainConfig
from pgrad.nets import ActorCritic
from pgrad.rollout import Rollout, RolloutCollector
from pgrad.threads import set_threads


def worker_seed(seed: int, worker: int, start_step: int) -> int:
    """Each worker, and each resumption of a run, gets its own stream of env and action seeds."""
    return int(np.random.SeedSequence([seed, worker, start_step]).generate_state(1)[0])


@dataclass
class SharedHandles:
    """What every worker shares with the coordinator and the other workers."""

    model: ActorCritic  # parameters in shared memory
    optimizer_states: list[dict[str, Any]]  # optimizer statistics in shared memory, in parameter order
    step_counter: Any  # multiprocessing.Value('q'): env steps taken by all workers
    update_counter: Any  # multiprocessing.Value('q'): gradient steps applied by all workers
    stop: Any  # multiprocessing.Event: set by the coordinator to stop every worker
    messages: Any  # multiprocessing.Queue to the coordinator


def worker_main(
    worker: int,
    config: TrainConfig,
    shared: SharedHandles,
    normalizer_state: dict[str, dict[str, np.ndarray]],
    start_step: int,
    parent_pid: int,
) -> None:
    """Process entry point. Never raises: an exception is sent to the coordinator as text."""
    # Ctrl-C reaches the whole process group; only the coordinator decides when to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    shared.messages.put(("started", worker, os.getpid()))
    try:
        _run(worker, config, shared, normalizer_state, start_step, parent_pid)
        shared.messages.put(("done", worker, None))
        exit_code = 0
    except BaseException:
        shared.messages.put(("error", worker, traceback.format_exc()))
        exit_code = 1
    # Leave without interpreter teardown, which takes seconds once torch is loaded: flush the
    # queue to the coordinator, then exit (the worker holds no files; its envs are closed).
    shared.messages.close()
    shared.messages.join_thread()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)


def _run(
    worker: int,
    config: TrainConfig,
    shared: SharedHandles,
    normalizer_state: dict[str, dict[str, np.ndarray]],
    start_step: int,
    parent_pid: int,
) -> None:
    algo: A3CConfig = config.algo_config
    set_threads(config.run.torch_threads)
    seed = worker_seed(config.run.seed, worker, start_step)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)

    collector = make_collector(config, normalizer_state, seed % 2**31)
    adapter = collector.adapter
    local = build_model(algo, adapter.obs_dim, adapter.action)
    local_parameters, shared_parameters = list(local.parameters()), list(shared.model.parameters())

    optimizer = SharedOptimizer(shared_parameters, algo.optimizer, shared.optimizer_states)
    report = Report(worker)
    reported_episodes = 0  # episodes already sent to the coordinator
    total = config.run.total_steps
    try:
        while not shared.stop.is_set() and shared.step_counter.value < total and os.getppid() == parent_pid:
            started = time.perf_counter()
            copy_parameters(shared_parameters, local_parameters)
            updates_at_sync = shared.update_counter.value
            env_seconds = collector.env_seconds
            rollout = collector.collect(local.acting_policy(), rng, algo.num_steps)
            report.env_seconds += collector.env_seconds - env_seconds
            with shared.step_counter.get_lock():
                shared.step_counter.value += rollout.num_steps * rollout.num_envs
                step = shared.step_counter.value
            if algo.fail_worker_at_step is not None and worker == 0 and step >= algo.fail_worker_at_step:
                raise RuntimeError(f"injected failure: a3c.fail_worker_at_step={algo.fail_worker_at_step} reached")
            rates = algo.optimizer
            learning_rate = linear_schedule(rates.learning_rate, min(step / total, 1.0), rates.anneal_lr)
            stats = gradient_step(local, optimizer, rollout, algo, learning_rate)
            with shared.update_counter.get_lock():
                shared.update_counter.value += 1
                # Staleness: updates other workers applied between this worker's copy and its own step.
                stats["diagnostics/staleness"] = float(shared.update_counter.value - updates_at_sync - 1)
            report.add(stats, time.perf_counter() - started)
            if report.updates >= algo.report_every:
                shared.messages.put(("report", worker, report.payload(step, collector, reported_episodes)))
                reported_episodes = collector.episodes.count
                report = Report(worker)
        if report.updates:
            final = report.payload(shared.step_counter.value, collector, reported_episodes)
            shared.messages.put(("report", worker, final))
    finally:
        collector.envs.close()


def make_collector(
    config: TrainConfig, normalizer_state: dict[str, dict[str, np.ndarray]], seed: int
) -> RolloutCollector:
    """This worker's env copy and normalisers (starting from the coordinator's statistics), reset with ``seed``."""
    env = build_environment(config, algo_gamma(config))
    collector = RolloutCollector(
        env.envs, env.adapter, env.obs_normalizer, env.reward_scaler, config.run.episode_window
    )
    collector.load_normalizer_state(normalizer_state)
    collector.reset(seed)
    return collector


def copy_parameters(source: list[torch.nn.Parameter], target: list[torch.nn.Parameter]) -> None:
    """target <- source, in place (the ActorCritic has no buffers; a state_dict round trip is 20x slower)."""
    with torch.no_grad():
        for source_tensor, target_tensor in zip(source, target, strict=True):
            target_tensor.copy_(source_tensor)


def gradient_step(
    local: ActorCritic,
    optimizer: SharedOptimizer,
    rollout: Rollout,
    config: A3CConfig,
    learning_rate: float,
) -> dict[str, float]:
    """Differentiate the A2C loss on the local copy, clip, and apply the gradient to the shared model.

    The local copy holds the parameters the rollout was collected with, so the gradient is
    consistent even while other workers move the shared parameters.
    """
    batch, batch_stats = actor_critic_batch(local, rollout, config.gamma, config.gae_lambda)
    dist, values = local(batch.obs)
    terms = a2c_batch_loss(
        dist, values, batch, vf_coef=config.vf_coef, ent_coef=config.ent_coef, norm_adv=config.norm_adv
    )
    stats = {key: float(value) for key, value in terms.metrics().items()}
    if not torch.isfinite(terms.loss):
        raise FloatingPointError(f"non-finite A3C loss {float(terms.loss)}: {stats}")
    local_parameters = list(local.parameters())
    grad_norm, clipped_norm = backward(local_parameters, terms.loss, config.max_grad_norm)  # type: ignore[misc]
    optimizer.step([p.grad for p in local_parameters], learning_rate)
    stats.update(batch_stats)
    stats.update(
        {
            "train/learning_rate": learning_rate,
            "diagnostics/grad_norm": grad_norm,
            "diagnostics/grad_norm_clipped": clipped_norm,
        }
    )
    if local.log_std is not None:
        stats["diagnostics/log_std_mean"] = float(local.log_std.detach().mean())
    return stats


class Report:
    """Sums of per-update statistics between two messages to the coordinator."""

    def __init__(self, worker: int) -> None:
        self.worker = worker
        self.updates = 0
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.seconds = 0.0
        self.env_seconds = 0.0

    def add(self, stats: dict[str, float], seconds: float) -> None:
        self.updates += 1
        self.seconds += seconds
        for key, value in stats.items():
            if np.isfinite(value):  # explained variance is NaN on a constant-return batch
                self.sums[key] = self.sums.get(key, 0.0) + value
                self.counts[key] = self.counts.get(key, 0) + 1

    def payload(self, step: int, collector: RolloutCollector, reported_episodes: int) -> dict[str, Any]:
        """Mean statistics, the episodes finished since the last report, and normaliser statistics."""
        episodes = collector.episodes
        new = min(episodes.count - reported_episodes, len(episodes.returns))
        return {
            "step": step,
            "updates": self.updates,
            "metrics": {key: total / self.counts[key] for key, total in self.sums.items()},
            "seconds": self.seconds,
            "env_seconds": self.env_seconds,
            "episode_returns": list(episodes.returns)[len(episodes.returns) - new :],
            "episode_lengths": list(episodes.lengths)[len(episodes.lengths) - new :],
            "normalizers": collector.normalizer_state(),
        }
