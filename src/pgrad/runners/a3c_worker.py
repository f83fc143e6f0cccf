"""One A3C worker process: sync from the shared model, collect, differentiate locally, apply to shared.

Runs in a process started with the 'spawn' method, so everything it gets arrives pickled:
the shared model and optimizer statistics travel as shared-memory tensors (torch's
multiprocessing reductions), the counters, flags and events as ``multiprocessing`` objects.

One update, in order:

1. wait while the coordinator holds the workers paused (``SharedHandles.running`` cleared, during a
   rollback's restore), then mark this worker busy (``SharedHandles.busy``) for the whole update;
2. copy the shared parameters into the local network and collect ``num_steps`` steps;
3. advance the shared step counter and, under its lock, decide the fault drills of the update
   (``guard.inject``: ``pgrad.faults.faults_for_update`` on the env steps this rollout covers, with
   the one-shot drills' "fired" flags in shared memory, so each fires in exactly one worker);
4. differentiate the A2C loss locally; a non-finite gradient (or the ``nan_grad`` drill) skips the
   step: neither the shared parameters nor the shared optimizer statistics change, and the report
   counts it. Otherwise the shared optimizer applies it at ``base_lr x lr_scale`` (the guard's scale,
   a shared double the coordinator writes, times the ``lr_spike`` drill's factor);
5. measure how far this worker's step moved the policy: the exact KL(pi_before || pi_after) of the
   shared policy just before and just after the optimizer step, averaged over this batch's valid
   states. A2C's loss has no ratio, so these two forward passes (~0.1 ms each) are what give the
   guard's KL rule something to read. The local (pre-collection) copy is not the "before": under
   Hogwild the shared model also holds the steps other workers made since the copy (often dozens
   when the OS deschedules a worker), and counting those made a healthy run's KL cross
   ``kl_critical`` (a CI failure: a rollback right after a resume). Only a step landing between the
   two forward passes can still leak in.

Messages to the coordinator (a ``multiprocessing`` queue), each a tuple:
- ``("started", worker, pid)`` once everything is imported;
- ``("drill", worker, {"drill": text, "kind": kind, "step": step})`` when a drill fires here first;
- ``("report", worker, payload)`` every ``report_every`` updates, once at the end, and early when
  the coordinator restored the shared model (the report then holds only pre-restore updates). Besides
  the means, it lists per update the shared step count when that update copied the shared weights
  (``synced_steps``), the count once its rollout was added, just before its gradient landed
  (``landed_steps``), and its own KL (``kls``; NaN for a skipped step): the coordinator needs them to
  tell which of a report's updates may be inside a state it captured and which started from it
  (``pgrad.runners.asynchronous.report_verdict``);
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

from pgrad import metric_names as names
from pgrad.algos.a2c import a2c_batch_loss
from pgrad.algos.a3c import A3CConfig, SharedOptimizer, build_model
from pgrad.algos.common import actor_critic_batch, backward, linear_schedule
from pgrad.builders import algo_gamma, build_environment
from pgrad.config import TrainConfig
from pgrad.distributions import PolicyDistribution
from pgrad.faults import ActiveFaults, FaultSpec, faults_for_update, parse_fault
from pgrad.nets import ActorCritic
from pgrad.rollout import Batch, Rollout, RolloutCollector
from pgrad.threads import set_threads

STALENESS = "diagnostics/staleness"
# Per-update statistics whose largest value over a report's updates is reported too, under "<name>_max"
# (the row's own value is the mean, what the guard's rules read). Not read by any rule: a single A3C
# update's KL is an average over 40 states, and its maximum over 20 updates is too noisy to act on.
REPORTED_MAX = {names.APPROX_KL: names.APPROX_KL + "_max"}
PAUSE_POLL_SECONDS = 0.05


def worker_seed(seed: int, worker: int, start_step: int) -> int:
    """Each worker, and each resumption of a run, gets its own stream of env and action seeds."""
    return int(np.random.SeedSequence([seed, worker, start_step]).generate_state(1)[0])


@dataclass
class SharedHandles:
    """What every worker shares with the coordinator and the other workers."""

    model: ActorCritic  # parameters in shared memory
    optimizer_states: list[dict[str, Any]]  # optimizer statistics in shared memory, in parameter order
    step_counter: Any  # multiprocessing.Value('q'): env steps taken by all workers
    update_counter: Any  # multiprocessing.Value('q'): worker updates (gradient steps applied or skipped)
    stop: Any  # multiprocessing.Event: set by the coordinator to stop every worker
    messages: Any  # multiprocessing.Queue to the coordinator
    lr_scale: Any  # multiprocessing.Value('d'): the guard's learning-rate scale (rollback cuts)
    running: Any  # multiprocessing.Event: cleared while the coordinator holds the workers paused
    busy: Any  # multiprocessing.Array('b', num_workers): 1 while that worker is inside an update
    generation: Any  # multiprocessing.Value('q'): how many times the coordinator restored the shared model
    fired: Any  # multiprocessing.Array('b', len(guard.inject)): 1 once that one-shot drill has fired


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


def enter_update(shared: SharedHandles, worker: int, parent_pid: int) -> bool:
    """Wait while the workers are paused, then mark this worker busy; False when it should stop instead.

    The busy flag is raised *before* ``running`` is read again, and the coordinator clears
    ``running`` *before* it reads the flags (both through locks), so either the coordinator sees
    this worker busy and waits for its update to end, or this worker sees the pause and waits.
    """
    while True:
        if shared.stop.is_set() or os.getppid() != parent_pid:
            return False
        if not shared.running.is_set():
            shared.running.wait(PAUSE_POLL_SECONDS)
            continue
        shared.busy[worker] = 1
        if shared.running.is_set():
            return True
        shared.busy[worker] = 0


def drills_for_update(
    drills: tuple[FaultSpec, ...], fired_flags: Any, first_step: int, step: int, lr_spike_factor: float
) -> ActiveFaults:
    """``faults_for_update`` with the "fired" flags in shared memory (call under the step counter's lock)."""
    if not drills:
        return ActiveFaults()
    fired = {spec.text for index, spec in enumerate(drills) if fired_flags[index]}
    faults = faults_for_update(drills, first_step, step, fired, lr_spike_factor)
    for index, spec in enumerate(drills):
        if spec.text in fired:
            fired_flags[index] = 1
    return faults


def _run(
    worker: int,
    config: TrainConfig,
    shared: SharedHandles,
    normalizer_state: dict[str, dict[str, np.ndarray]],
    start_step: int,
    parent_pid: int,
) -> None:
    algo: A3CConfig = config.algo_config
    guard = config.guard
    set_threads(config.run.torch_threads)
    seed = worker_seed(config.run.seed, worker, start_step)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    drills = tuple(parse_fault(text) for text in guard.inject)

    collector = make_collector(config, normalizer_state, seed % 2**31)
    adapter = collector.adapter
    local = build_model(algo, adapter.obs_shape, adapter.action)
    local_parameters, shared_parameters = list(local.parameters()), list(shared.model.parameters())

    optimizer = SharedOptimizer(shared_parameters, algo.optimizer, shared.optimizer_states)
    report = Report(worker, shared.generation.value)
    reported_episodes = 0  # episodes already sent to the coordinator
    total = config.run.total_steps
    try:
        while shared.step_counter.value < total and enter_update(shared, worker, parent_pid):
            try:
                if shared.generation.value != report.generation:
                    # The coordinator restored the shared model: what this report holds happened before.
                    if report.updates:
                        stale = report.payload(shared.step_counter.value, collector, reported_episodes)
                        shared.messages.put(("report", worker, stale))
                        reported_episodes = collector.episodes.count
                    report = Report(worker, shared.generation.value)
                started = time.perf_counter()
                synced_step = shared.step_counter.value  # when these weights were copied, by the step count
                copy_parameters(shared_parameters, local_parameters)
                updates_at_sync = shared.update_counter.value
                env_seconds = collector.env_seconds
                rollout = collector.collect(local.acting_policy(), rng, algo.num_steps)
                collector.take_randomize_draws()  # env.randomize draws are not logged by A3C: not kept either
                report.env_seconds += collector.env_seconds - env_seconds
                with shared.step_counter.get_lock():
                    first_step = shared.step_counter.value
                    shared.step_counter.value += rollout.num_steps * rollout.num_envs
                    step = shared.step_counter.value
                    faults = drills_for_update(drills, shared.fired, first_step, step, guard.lr_spike_factor)
                for spec in faults.started:
                    shared.messages.put(("drill", worker, {"drill": spec.text, "kind": spec.kind, "step": step}))
                if algo.fail_worker_at_step is not None and worker == 0 and step >= algo.fail_worker_at_step:
                    raise RuntimeError(f"injected failure: a3c.fail_worker_at_step={algo.fail_worker_at_step} reached")
                if faults.flip_reward:  # what the agent learns from; episode returns keep the true reward
                    np.negative(rollout.rewards, out=rollout.rewards)
                rates = algo.optimizer
                learning_rate = linear_schedule(rates.learning_rate, min(step / total, 1.0), rates.anneal_lr)
                learning_rate *= shared.lr_scale.value * faults.lr_factor
                stats = gradient_step(
                    local,
                    optimizer,
                    rollout,
                    algo,
                    learning_rate,
                    shared_model=shared.model,
                    nan_grad=faults.nan_grad_steps != 0,
                    skip_nonfinite=guard.skip_nonfinite,
                )
                with shared.update_counter.get_lock():
                    shared.update_counter.value += 1
                    # Staleness: updates other workers applied between this worker's copy and its own step.
                    stats[STALENESS] = float(shared.update_counter.value - updates_at_sync - 1)
            finally:
                shared.busy[worker] = 0
            report.add(stats, time.perf_counter() - started, synced_step, step)
            if report.updates >= algo.report_every:
                shared.messages.put(("report", worker, report.payload(step, collector, reported_episodes)))
                reported_episodes = collector.episodes.count
                report = Report(worker, report.generation)
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


def gradients_finite(gradients: list[torch.Tensor | None]) -> bool:
    """No NaN/Inf in any gradient (one reduction over per-tensor sums, as ``pgrad.monitor.recovery``)."""
    present = [g for g in gradients if g is not None]
    return not present or bool(torch.isfinite(torch.stack([g.sum() for g in present])).all())


def update_kl(before: PolicyDistribution, model: ActorCritic, batch: Batch) -> float:
    """KL(pi_before || pi_after) = E_s[KL(before(.|s) || model(.|s))] over the batch's valid states,
    exact per state (``PolicyDistribution.kl``), where ``model`` holds the policy after the step."""
    with torch.no_grad():
        per_state = before.kl(model.distribution(batch.obs))
        weights = batch.mask / batch.mask.sum().clamp(min=1.0)
        return float((per_state * weights).sum())


def gradient_step(
    local: ActorCritic,
    optimizer: SharedOptimizer,
    rollout: Rollout,
    config: A3CConfig,
    learning_rate: float,
    *,
    shared_model: ActorCritic | None = None,
    nan_grad: bool = False,
    skip_nonfinite: bool = True,
) -> dict[str, float]:
    """Differentiate the A2C loss on the local copy, clip, and apply the gradient to the shared model.

    The local copy holds the parameters the rollout was collected with, so the gradient is
    consistent even while other workers move the shared parameters. ``nan_grad`` (the drill)
    replaces the clipped gradient by NaN. A non-finite gradient is not applied when
    ``skip_nonfinite`` (the shared parameters and optimizer statistics stay as they are); the stats
    then say so (``NONFINITE_STEPS`` 1.0). With ``shared_model``, the stats hold the KL between the
    shared policy just before and just after this step, on the batch's states (``update_kl``).
    """
    batch, batch_stats = actor_critic_batch(local, rollout, config.gamma, config.gae_lambda)
    dist, values = local(batch.obs)
    terms = a2c_batch_loss(
        dist, values, batch, vf_coef=config.vf_coef, ent_coef=config.ent_coef, norm_adv=config.norm_adv
    )
    stats = {key: float(value) for key, value in terms.metrics().items()}
    local_parameters = list(local.parameters())
    grad_norm, clipped_norm = backward(local_parameters, terms.loss, config.max_grad_norm)
    gradients = [p.grad for p in local_parameters]
    if nan_grad:
        for grad in gradients:
            if grad is not None:
                grad.fill_(float("nan"))
    finite = gradients_finite(gradients)
    applied = finite or not skip_nonfinite
    measure_kl = shared_model is not None and applied
    if measure_kl:
        with torch.no_grad():
            before = shared_model.distribution(batch.obs)  # type: ignore[union-attr]
    if applied:
        optimizer.step(gradients, learning_rate)
    stats.update(batch_stats)
    stats.update(
        {
            names.LEARNING_RATE: learning_rate,
            names.GRAD_NORM: grad_norm,
            names.GRAD_NORM_CLIPPED: clipped_norm,
            names.NONFINITE_STEPS: float(not finite),
        }
    )
    if measure_kl:
        stats[names.APPROX_KL] = update_kl(before, shared_model, batch)  # type: ignore[arg-type]
    if local.log_std is not None:
        stats[names.LOG_STD] = float(local.log_std.detach().mean())
    return stats


class Report:
    """Per-update statistics between two messages to the coordinator: means (and maxima for
    ``REPORTED_MAX``), and per update, in order: whether it was skipped as non-finite, when it
    copied the shared weights and when it landed (by the shared step count), and its own KL.

    A skipped update counts in ``NONFINITE_STEPS`` (a count, not a mean) and in ``nonfinite``; its
    other statistics (a NaN loss, the norm of a NaN gradient) are left out of the means.
    """

    def __init__(self, worker: int, generation: int = 0) -> None:
        self.worker = worker
        self.generation = generation  # the shared model's restore count when this report began
        self.updates = 0
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.maxima: dict[str, float] = {}
        self.nonfinite: list[int] = []  # per update: 1 = its gradient was non-finite
        self.synced_steps: list[int] = []  # per update: the shared step count when it copied the shared model
        self.landed_steps: list[int] = []  # per update: the shared step count just before its gradient landed
        self.kls: list[float] = []  # per update: its own KL (NaN when skipped or not measured)
        self.seconds = 0.0
        self.env_seconds = 0.0

    def add(self, stats: dict[str, float], seconds: float, synced_step: int, landed_step: int) -> None:
        """One update's ``stats``. ``synced_step``: the shared step count when it copied the shared model;
        ``landed_step``: the count after its rollout was added (its gradient lands after that, so a state
        copied while the count was below it does not hold this update)."""
        self.synced_steps.append(synced_step)
        self.landed_steps.append(landed_step)
        self.kls.append(stats.get(names.APPROX_KL, float("nan")))
        self.updates += 1
        self.seconds += seconds
        skipped = bool(stats.get(names.NONFINITE_STEPS, 0.0))
        self.nonfinite.append(int(skipped))
        if skipped:
            return
        for key, value in stats.items():
            if key == names.NONFINITE_STEPS or not np.isfinite(value):  # EV is NaN on a constant-return batch
                continue
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1
            if key in REPORTED_MAX:
                self.maxima[REPORTED_MAX[key]] = max(self.maxima.get(REPORTED_MAX[key], value), value)

    def payload(self, step: int, collector: RolloutCollector, reported_episodes: int) -> dict[str, Any]:
        """Statistics, the episodes finished since the last report, and normaliser statistics."""
        episodes = collector.episodes
        new = min(episodes.count - reported_episodes, len(episodes.returns))
        metrics = {key: total / self.counts[key] for key, total in self.sums.items()}
        metrics.update(self.maxima)
        metrics[names.NONFINITE_STEPS] = float(sum(self.nonfinite))
        return {
            "step": step,
            "updates": self.updates,
            "generation": self.generation,
            "nonfinite": list(self.nonfinite),
            "synced_steps": list(self.synced_steps),
            "landed_steps": list(self.landed_steps),
            "kls": list(self.kls),
            "metrics": metrics,
            "seconds": self.seconds,
            "env_seconds": self.env_seconds,
            "episode_returns": list(episodes.returns)[len(episodes.returns) - new :],
            "episode_lengths": list(episodes.lengths)[len(episodes.lengths) - new :],
            "normalizers": collector.normalizer_state(),
        }
