"""The asynchronous runner: A3C's coordinator (see ``pgrad.algos.a3c`` for the algorithm).

The main process does not learn. It starts the workers (``pgrad.runners.a3c_worker``), reads
their reports from a queue, writes ``metrics.jsonl`` / ``events.jsonl`` with the same names as
the synchronous loop, saves checkpoints in the same format, and stops the run at
``run.total_steps`` (a shared step counter), on Ctrl-C/SIGTERM (workers stop after their current
update, then a checkpoint is written), or when a worker raises, dies or stops reporting (its
traceback or exit code is reported, the others are stopped, stragglers are terminated after
``shutdown_timeout``, a checkpoint is written and the run ends with ``TrainingHalted``, exit code 3).

The guard (``guard`` section) judges every report as the synchronous loop judges every update: one
report (one worker's ``report_every`` updates) is one row of metrics, one ``Guard.observe`` and one
``Guard.decide``, and the coordinator carries the decision out:

- alerts are logged as events; evaluations (deterministic episodes, frozen normaliser) run on the
  coordinator's own envs every ``guard.eval_every`` steps, on a copy of the weights taken with the
  checkpoint they score;
- health marks: a report lists, per update, when the update copied the shared weights, when it landed
  and its own KL, so the coordinator knows which updates may be inside a state it copied and which
  started from it (``report_verdict``). A state, the candidate a rollback may return to in memory or a
  checkpoint written while the guard judged the run healthy, is confirmed once every running worker has
  reported healthy updates that started from it, with the updates that may be inside it healthy too;
  until then a checkpoint stays unmarked in the index (``PendingState``). This is the synchronous rule
  ("the next update is healthy too") for updates that overlap;
- non-finite gradients are skipped in the workers and counted in their reports; the counts feed
  ``GuardState.recent_steps``, and too many halt the run: the workers are stopped cleanly, then
  ``TrainingHalted`` (exit code 3). No checkpoint is written after a halt;
- a rollback pauses the workers between two updates (see ``A3CRunner.pause_workers``), copies the
  newest confirmed healthy state (in memory or on disk; without one, the state the run started from)
  into the shared parameters and shared optimizer statistics in place, writes the guard's learning-rate scale to
  the shared ``lr_scale`` the workers multiply their rate by, and lets the workers go on: each
  copies the restored weights at the start of its next update. Reports that hold updates from
  before the restore (``generation``) are logged but not judged;
- drills (``guard.inject``) are decided in the workers from the shared step counter (see
  ``pgrad.runners.a3c_worker``) and logged here as ``drill.*`` events.
"""

from __future__ import annotations

import os
import queue
import signal
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as mp

from pgrad import __version__
from pgrad import metric_names as names
from pgrad.algos.a3c import A3C, A3CConfig, build_model
from pgrad.algos.numpy_grad import resolved_record
from pgrad.builders import Environment, algo_gamma, build_environment
from pgrad.checkpoint import (
    CheckpointStore,
    LearnerState,
    TrainState,
    check_arrays_fit,
    check_rollback_states,
    load_modules,
    load_optimizers,
    read_train_state,
)
from pgrad.config import TrainConfig
from pgrad.errors import CheckpointError, TrainingHalted
from pgrad.faults import parse_fault
from pgrad.monitor.guard import Action, Checkpoint, Event, Guard, Halt, Rollback, Snapshot
from pgrad.monitor.recovery import HealthyStates, parameters_finite
from pgrad.monitor.sinks import MetricSink, read_jsonl
from pgrad.rollout import EpisodeStats
from pgrad.runners import trunk
from pgrad.runners.context import TrainResult, resident_memory_mb

# ---- the coordinator ------------------------------------------------------------------------

# Before its first message a worker is importing torch and building its envs, which takes seconds
# on a busy machine; it counts as stuck only after this long (then after a3c.stall_timeout).
STARTUP_SECONDS = 300.0
PAUSE_POLL_SECONDS = 0.001


def update_metrics(payload: dict[str, Any], indices: list[int]) -> dict[str, float]:
    """What the guard's health rule reads (``Guard.healthy_for_rollback``) for some of a report's updates:
    their skipped (non-finite) steps and the mean of the others' own KL. A KL that is NaN or infinite
    on an applied step stays in the mean, so the rule reads it as unhealthy."""
    applied = [i for i in indices if not payload["nonfinite"][i]]
    metrics = {names.NONFINITE_STEPS: float(len(indices) - len(applied))}
    if applied:
        metrics[names.APPROX_KL] = statistics.fmean(payload["kls"][i] for i in applied)
    return metrics


def report_verdict(fence: int, payload: dict[str, Any], healthy: Callable[[list[int]], bool]) -> bool | None:
    """One worker report's verdict on a state copied from the shared tensors before the shared step count
    was read as ``fence`` (read just after the copy).

    A worker's updates run one after another, each copying the shared weights (``synced_steps``) after
    the previous one landed (``landed_steps``: the count just before its gradient is applied), so its
    updates fall in three runs, in order: those that landed at or before ``fence`` (their gradients may
    be inside the state), those that copied before and landed after it (neither in the state nor from
    it), and those that copied after it (they started from weights that hold the state). So once a
    worker has an update of the last kind, every one of its updates that may be inside the state has
    been reported, in this report or an earlier one.

    False when the updates of this report that may be inside the state, or those that started from it,
    are not healthy by ``healthy(indices)`` (the guard's rule on their mean KL and skipped steps); True
    when some started from it and they are healthy (this worker vouches for it); None when none did yet.
    """
    inside = [i for i, landed in enumerate(payload["landed_steps"]) if landed <= fence]
    after = [i for i, synced in enumerate(payload["synced_steps"]) if synced > fence]
    if (inside and not healthy(inside)) or (after and not healthy(after)):
        return False
    return True if after else None


@dataclass
class PendingState:
    """A state waiting for the reports that confirm it: the rollback candidate in memory, or a checkpoint
    (``name``) written while the guard judged the run healthy, unmarked in the index until confirmed."""

    fence: int  # the shared step count read just after the state was copied (see report_verdict)
    waiting: set[int]  # workers that have not vouched for it yet
    name: str = ""

    def hear(self, worker: int, verdict: bool | None, running: set[int]) -> bool | None:
        """Take one report's ``report_verdict``: False (refuted), True (confirmed: with this report every
        running worker has vouched), None (still waiting). A worker that vouched already is not heard
        again: its later updates started from later weights, which later states answer for. Only a
        report that vouches confirms (a last report read after the other workers stopped does not)."""
        if worker not in self.waiting or verdict is None:
            return None
        if verdict is False:
            return False
        self.waiting.discard(worker)
        return None if self.waiting & running else True


class WorkerConfirmedStates(HealthyStates):
    """``HealthyStates`` for asynchronous reports: a candidate is confirmed only once *every* running
    worker has reported healthy updates that started from weights copied after the capture, and the
    updates that may be inside it were reported healthy (``report_verdict``, ``PendingState``).

    A report lags its updates by up to ``report_every`` of them, and the next report after a capture
    may come from another worker whose updates mostly predate it; "the next report is healthy", the
    synchronous rule, would confirm a state taken just as damage began in a worker that has not
    reported yet.
    """

    def __init__(self, every: int) -> None:
        super().__init__(every)
        self.pending: PendingState | None = None  # the candidate's fence and the workers it waits for

    def after_report(
        self,
        healthy: bool,
        worker: int,
        verdict: Callable[[int], bool | None],
        step: int,
        running: set[int],
        capture: Callable[[], tuple[LearnerState, int]],
    ) -> None:
        """``healthy``: the guard's mark for the whole report (a new candidate is taken only after a healthy
        one); ``verdict(fence)``: this report's ``report_verdict`` on a state of that fence; ``capture()``:
        the ``LearnerState`` to hold and its fence (called only when one is taken)."""
        if self.candidate is not None and self.pending is not None:
            outcome = self.pending.hear(worker, verdict(self.pending.fence), running)
            if outcome is not None:
                self.confirmed = self.candidate if outcome else self.confirmed
                self.candidate, self.pending = None, None
        if (
            healthy
            and self.candidate is None
            and (self.last_capture_step is None or step - self.last_capture_step >= self.every)
        ):
            self.candidate, fence = capture()
            self.pending = PendingState(fence, set(running))
            self.last_capture_step = step

    def forget_candidate(self) -> None:
        """Drops the candidate and the reports it was waiting for."""
        self.candidate, self.pending = None, None

    def load(self, slots: dict[str, Any], capture_step: int | None) -> None:
        """Restores the slots from a checkpoint; a restored candidate waits again for reports, the workers filled in as
        they start."""
        super().load(slots, capture_step)
        # Every update of the resumed run copies weights past the candidate's step; the running workers
        # are filled in when they start.
        self.pending = PendingState(self.candidate.step, set()) if self.candidate is not None else None


class A3CRunner:
    """Runs an A3C run: starts the workers, supervises them, guards, logs and checkpoints.

    Same constructor, ``train()`` and ``stop_requested`` as ``OnPolicyRunner``, and the same
    ``RunContext``, ``TrainState`` and ``Guard``, so the command line treats both alike
    (``runner_for``). Workers are started with 'spawn', which re-imports the main module: a script
    that trains A3C needs ``if __name__ == "__main__":``.
    """

    def __init__(
        self, config: TrainConfig, run_dir: Path, resume: bool = False, console: bool = True, overwrite: bool = False
    ) -> None:
        self.config = config
        self.algo_config: A3CConfig = config.algo_config
        self.run = trunk.begin_run(config, run_dir, resume, overwrite)
        self.run_dir = self.run.run_dir
        probe = build_environment(config, algo_gamma(config), num_envs=1)  # env errors before any process starts
        self.adapter = probe.adapter
        # Statistics before any data, in case no worker reports before the first checkpoint.
        self.normalizers: dict[int, dict[str, dict[str, np.ndarray]]] = {
            -1: {"obs": probe.obs_normalizer.stats.state(), "reward": probe.reward_scaler.stats.state()}
        }
        probe.envs.close()
        self.algo = A3C(self.algo_config, self.adapter.obs_shape, self.adapter.action, config.run.device)
        self.episodes = EpisodeStats.empty(config.run.episode_window)
        self.step = self.updates = 0
        self.failure: str | None = None
        self.halted: tuple[Halt, int] | None = None  # the guard's halt and the step it was decided at
        self.judging = False  # reports are judged by the guard only while the workers are supervised
        self.judged_reports = 0
        self.workers: list[Any] = []
        self.finished: set[int] = set()  # workers that said done, failed, died or stalled
        self.last_heard: dict[int, float] = {}  # worker -> monotonic time of its last message
        self.started_workers: set[int] = set()  # workers that have imported everything and begun
        self.guard = Guard(config.guard, config.run.total_steps, self.run_dir, early_evaluations=False)
        self.healthy_states = WorkerConfirmedStates(config.guard.snapshot_every)  # a rollback's first choice
        self.pending_marks: list[PendingState] = []  # checkpoints waiting for their health mark
        self.start_state: LearnerState | None = None  # a rollback's last resort (see roll_back)
        self.eval_env: Environment | None = None
        self.eval_model: Any = None
        # set by train(): the step rate's window (time, step), the rate, and the last logged row
        self.rate_mark: tuple[float, int] = (0.0, 0)
        self.steps_per_second: float | None = None
        self.last_metrics: dict[str, Any] = {}

        self.run.resolved = resolved_record(self.algo)
        label, workers = f"{config.algo} {config.env.id}", f", {self.algo_config.num_workers} workers"
        trunk.open_or_resume(
            self.run, console, label, self.load, self.close, workers, " (A3C resumes are not bit-exact)"
        )

    # what the CLI, callbacks, tests and benchmarks reach through the runner: the run context's
    stop_requested: trunk.RunAttribute[bool] = trunk.RunAttribute("stop_requested")
    sinks: trunk.RunAttribute[list[MetricSink]] = trunk.RunAttribute("sinks")
    store: trunk.RunAttribute[CheckpointStore] = trunk.RunAttribute("store")

    # ---- checkpoints ----------------------------------------------------------------------
    def normalizer_state(self) -> dict[str, dict[str, np.ndarray]]:
        """Observation/reward normaliser statistics of the lowest-numbered worker that reported.

        Every worker estimates the same statistics from its own env copy; one worker's are saved
        (``TrainState.normalizers``, which ``pgrad eval`` reads), and a resumed run starts every
        worker from them.
        """
        return self.normalizers[min(self.normalizers)]

    def train_state(self, frozen: bool = False) -> TrainState:
        """The checkpoint's content. Workers keep stepping while the tensors are copied: a checkpoint
        is a Hogwild snapshot. ``frozen``: clone the shared tensors now (an evaluation plays exactly
        the weights of the checkpoint that carries its score); otherwise they are read when written."""
        episodes = self.episodes
        if frozen:
            model_state, optimizer_state = self._cloned_learner()
        else:
            model_state, optimizer_state = self.algo.model.state_dict(), self.algo.optimizer.state_dict()
        return TrainState(
            algo=self.config.algo,
            step=self.step,
            updates=self.updates,
            elapsed_seconds=self.run.elapsed(),
            config=self.config.to_dict(),
            modules={"model": model_state},
            optimizers={"optimizer": optimizer_state},
            normalizers=self.normalizer_state(),
            rng_torch=torch.get_rng_state(),
            env_state=None,  # worker environments are re-seeded on resume (pgrad.algos.a3c)
            episodes={"returns": list(episodes.returns), "lengths": list(episodes.lengths), "count": episodes.count},
            algo_state={"num_workers": self.algo_config.num_workers},
            guard=self.guard.state.to_dict(),
            rollback_states=self.healthy_states.slots(),
            rollback_capture_step=self.healthy_states.last_capture_step,
            pgrad_version=__version__,
        )

    def _cloned_learner(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Copies of the shared model's and optimizer's state dicts (sharing no storage with them)."""
        model_state = {key: value.detach().clone() for key, value in self.algo.model.state_dict().items()}
        optimizer_state = self.algo.optimizer.state_dict()
        optimizer_state["state"] = {
            index: {key: tensor.clone() for key, tensor in group.items()}
            for index, group in optimizer_state["state"].items()
        }
        return model_state, optimizer_state

    def capture(self, step: int) -> LearnerState:
        """The shared learner as a rollback may restore it (a Hogwild snapshot, like a checkpoint)."""
        model_state, optimizer_state = self._cloned_learner()
        normalizers = {
            name: {key: np.copy(value) for key, value in stats.items()}
            for name, stats in self.normalizer_state().items()
        }
        return LearnerState(step, {"model": model_state}, {"optimizer": optimizer_state}, normalizers)

    def save_checkpoint(self, score: float | None, healthy: bool = True, state: TrainState | None = None) -> Path:
        """Writes ``state`` (by default the learner's state now) as a checkpoint with its score and health mark; returns
        its path."""
        return self.run.save_checkpoint(state or self.train_state(), score, healthy)

    def load(self, state: TrainState, path: Path) -> None:
        """Restores a checkpoint into the runner: model, shared optimizer, normaliser statistics, episode history, torch
        RNG and healthy states; refuses one that does not fit."""
        load_modules({"model": self.algo.model}, state, path)
        load_optimizers({"optimizer": self.algo.optimizer}, state, path)
        check_rollback_states({"model": self.algo.model}, {"optimizer": self.algo.optimizer}, state, path)
        if set(state.normalizers) != {"obs", "reward"}:
            raise CheckpointError(f"checkpoint {path} has no normaliser statistics")
        check_arrays_fit(self.normalizer_state(), state.normalizers, "normalizers", path)
        self.normalizers = {-1: state.normalizers}
        self.episodes.returns.extend(state.episodes["returns"])
        self.episodes.lengths.extend(state.episodes["lengths"])
        self.episodes.count = state.episodes["count"]
        if state.rng_torch is not None:
            torch.set_rng_state(state.rng_torch)
        self.healthy_states.load(state.rollback_states, state.rollback_capture_step)
        logged = read_jsonl(self.run_dir / "metrics.jsonl")
        try:
            self.guard.load(state.guard, [m for m in logged if m.get(names.STEP, 0) <= state.step])
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path} does not fit this configuration: {exc}") from None
        self.step, self.updates = state.step, state.updates

    # ---- workers ----------------------------------------------------------------------------
    def share(self) -> Any:
        """Move the learner to shared memory and make the shared counters, flags and queue; returns
        the ``SharedHandles`` every worker gets (no process is started here)."""
        from pgrad.runners.a3c_worker import SharedHandles

        context = mp.get_context("spawn")  # fork is unsafe once torch has started threads
        self.context = context
        self.stop_event = context.Event()
        self.messages = context.Queue()
        self.step_counter = context.Value("q", self.step)
        self.update_counter = context.Value("q", self.updates)
        self.lr_scale = context.Value("d", self.guard.state.lr_scale)
        self.running = context.Event()
        self.running.set()
        self.busy = context.Array("b", self.algo_config.num_workers)
        self.generation = context.Value("q", 0)
        drills = [parse_fault(text).text for text in self.config.guard.inject]
        self.fired = context.Array("b", [int(text in self.guard.state.fired) for text in drills])
        optimizer_states = self.algo.share_memory()
        self.start_state = self.capture(self.step)
        return SharedHandles(
            self.algo.model,
            optimizer_states,
            self.step_counter,
            self.update_counter,
            self.stop_event,
            self.messages,
            self.lr_scale,
            self.running,
            self.busy,
            self.generation,
            self.fired,
        )

    def _start_workers(self) -> None:
        from pgrad.runners.a3c_worker import worker_main

        shared = self.share()
        context, workers = self.context, self.algo_config.num_workers
        if self.healthy_states.pending is not None:
            self.healthy_states.pending.waiting = set(range(workers))
        # Started with SIGINT ignored, which survives exec: Ctrl-C in a terminal reaches the whole
        # process group, and only the coordinator may act on it (it then stops the workers).
        handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for worker in range(workers):
                process = context.Process(
                    target=worker_main,
                    args=(worker, self.config, shared, self.normalizer_state(), self.step, os.getpid()),
                    name=f"pgrad-a3c-worker-{worker}",
                    daemon=True,
                )
                process.start()
                self.workers.append(process)
                self.last_heard[worker] = time.monotonic()
        finally:
            signal.signal(signal.SIGINT, handler)
        pids = ", ".join(str(p.pid) for p in self.workers)
        self.run.emit(
            "workers.started",
            self.step,
            f"{len(self.workers)} workers (pids {pids})",
            pids=[p.pid for p in self.workers],
        )

    def _supervise(self, stop_at_step: int | None) -> None:
        """Read reports until the workers finish, one fails, the guard halts, a stop is requested
        or ``stop_at_step``."""
        self.judging = True
        try:
            while not self.stop_requested and self.failure is None and self.halted is None:
                if len(self.finished) >= len(self.workers):
                    return
                self._receive(timeout=0.1)
                self._check_alive()
                if stop_at_step is not None and self.step_counter.value >= stop_at_step:
                    return
        finally:
            self.judging = False

    def _receive(self, timeout: float) -> None:
        """Handle every waiting message; wait up to ``timeout`` seconds for the first one."""
        try:
            message = self.messages.get(timeout=timeout) if timeout > 0 else self.messages.get_nowait()
            while True:
                self._handle(*message)
                message = self.messages.get_nowait()
        except queue.Empty:
            pass
        self.step, self.updates = self.step_counter.value, self.update_counter.value

    def _handle(self, kind: str, worker: int, payload: Any) -> None:
        self.last_heard[worker] = time.monotonic()
        if kind == "started":
            self.started_workers.add(worker)
        elif kind == "report":
            self._on_report(worker, payload)
        elif kind == "drill":
            self._on_drill(worker, payload)
        elif kind == "done":
            self.finished.add(worker)
        elif kind == "error":
            self.finished.add(worker)
            last_line = payload.strip().splitlines()[-1]
            if self.failure is None:
                self.failure = f"a3c worker {worker} failed: {last_line}"
            self.run.emit(
                "critical.worker_failed",
                self.step_counter.value,
                f"worker {worker} raised {last_line}",
                worker=worker,
                traceback=payload,
            )

    def _check_alive(self) -> None:
        """A worker that died without a word (killed, out of memory) or went silent is a failure too."""
        for worker, process in enumerate(self.workers):
            if worker in self.finished:
                continue
            silent = time.monotonic() - self.last_heard[worker]
            limit = self.algo_config.stall_timeout
            if worker not in self.started_workers:
                limit = max(limit, STARTUP_SECONDS)
            if process.exitcode is None and silent > limit:
                self.finished.add(worker)
                reason = f"a3c worker {worker} (pid {process.pid}) sent nothing for {silent:.0f} s (stuck?)"
                self.failure = self.failure or reason
                self.run.emit("critical.worker_stalled", self.step, reason, worker=worker)
            if process.exitcode is None:
                continue
            self._receive(timeout=0.5)  # its last messages may still be in the pipe
            if worker not in self.finished:
                self.finished.add(worker)
                reason = f"a3c worker {worker} (pid {process.pid}) exited with code {process.exitcode} without a report"
                self.failure = self.failure or reason
                self.run.emit("critical.worker_failed", self.step, reason, worker=worker, exitcode=process.exitcode)

    def _stop_workers(self) -> None:
        """Ask every worker to stop, wait up to ``shutdown_timeout``, then terminate stragglers."""
        if not self.workers:
            return
        self.stop_event.set()
        self.running.set()  # a worker held paused must see the stop
        deadline = time.monotonic() + self.algo_config.shutdown_timeout
        while any(p.is_alive() for p in self.workers) and time.monotonic() < deadline:
            self._receive(timeout=0.05)  # keep draining: a worker exits only once its queue is flushed
        stragglers = [worker for worker, process in enumerate(self.workers) if process.is_alive()]
        for worker in stragglers:
            self.workers[worker].terminate()
            self.run.emit(
                "warning.worker_terminated", self.step, f"worker {worker} did not stop in time", worker=worker
            )
        for process in self.workers:
            process.join(timeout=2.0)
            if process.is_alive():
                process.kill()
                process.join(timeout=2.0)
        if not stragglers:  # a worker killed in the middle of a put could leave half a message to block on
            self._receive(timeout=0)
        self.messages.close()
        self.messages.cancel_join_thread()

    def running_workers(self) -> set[int]:
        """The indices of the workers still alive and not finished."""
        return {w for w, process in enumerate(self.workers) if w not in self.finished and process.is_alive()}

    # ---- pausing the workers (rollbacks) -------------------------------------------------------
    def pause_workers(self) -> list[int]:
        """Hold every worker between two updates; returns the workers still inside one at the deadline.

        Clears the shared ``running`` event, then waits until no live worker has its ``busy`` flag
        up. A worker raises that flag before it copies the shared parameters and lowers it after its
        gradient is applied (``a3c_worker.enter_update``), so once none is busy no update is in
        flight: nothing computed from the weights about to be replaced can land on the restored
        ones, and nothing writes the tensors while they are restored. The wait is at most one update
        (a rollout of ``num_steps`` steps and a gradient step, milliseconds); a worker stuck inside
        one (a hung env) is waited for ``shutdown_timeout`` at most, then left to the stall check.
        """
        self.running.clear()
        deadline = time.monotonic() + self.algo_config.shutdown_timeout
        while True:
            busy = [w for w, process in enumerate(self.workers) if self.busy[w] and process.is_alive()]
            if not busy or time.monotonic() >= deadline:
                return busy
            time.sleep(PAUSE_POLL_SECONDS)

    def resume_workers(self) -> None:
        """Lets the paused workers run again (sets the shared ``running`` event)."""
        self.running.set()

    # ---- carrying out the guard's decisions ---------------------------------------------------
    def log_events(self, events: list[Event], step: int) -> None:
        """The guard's events into ``events.jsonl`` at ``step``."""
        trunk.log_events(self.run, step, events)

    def carry_out(self, actions: list[Action], worker: int, payload: dict[str, Any], frozen: TrainState | None) -> None:
        """Carries out the guard's decision on one worker's report: halt, roll back, checkpoint (healthy ones wait
        unmarked for confirming reports when the guard is on) or snapshot."""
        step = int(payload.get("row_step", self.step))
        for action in actions:
            if isinstance(action, Halt):
                self.halted = (action, step)
                return
            if isinstance(action, Rollback):
                self.roll_back(action, step)
            elif isinstance(action, Checkpoint):
                state, fence = None, None
                if frozen is not None and action.score is not None:
                    # The evaluated weights, with the guard's state as decide left it (the evaluation counted).
                    state = replace(
                        frozen,
                        guard=self.guard.state.to_dict(),
                        rollback_states=self.healthy_states.slots(),
                        rollback_capture_step=self.healthy_states.last_capture_step,
                    )
                    fence = payload.get("frozen_fence")
                # Healthy by this report, the checkpoint waits unmarked for the reports of updates from its
                # weights (with the guard off nothing rolls back, and the mark is the report's).
                confirm = action.healthy and self.config.guard.enabled
                path = self.save_checkpoint(action.score, action.healthy and not confirm, state)
                if confirm:  # fenced when its weights were copied (a live checkpoint reads them as it writes)
                    fence = self.step_counter.value if fence is None else fence
                    self.pending_marks.append(PendingState(fence, self.running_workers(), path.name))
            elif isinstance(action, Snapshot):
                self.after_report(action.healthy, worker, payload, step)

    def after_report(self, healthy: bool, worker: int, payload: dict[str, Any], step: int) -> None:
        """One judged report's verdict on the states waiting for confirmation: the checkpoints written
        unmarked (a confirmed one is marked healthy in the index) and the rollback candidate in memory.
        Each is judged on the report's updates that may be inside it and those that started from it, by
        the guard's health rule (``report_verdict``)."""

        def verdict(fence: int) -> bool | None:
            return report_verdict(
                fence, payload, lambda indices: self.guard.healthy_for_rollback(update_metrics(payload, indices))
            )

        running = self.running_workers()
        for mark in list(self.pending_marks):
            outcome = mark.hear(worker, verdict(mark.fence), running)
            if outcome is None:
                continue
            self.pending_marks.remove(mark)
            if outcome:
                self.run.store.mark_healthy(mark.name)
            self.run.emit(
                "checkpoint.confirmed" if outcome else "checkpoint.refuted",
                step,
                f"{mark.name} {'marked healthy' if outcome else 'stays unmarked'} after worker {worker}'s report",
                show=False,
                checkpoint=mark.name,
                fence=mark.fence,
                worker=worker,
            )
        self.healthy_states.after_report(
            healthy, worker, verdict, step, running, lambda: (self.capture(step), self.step_counter.value)
        )

    def roll_back(self, action: Rollback, step: int) -> None:
        """Restore the state the guard chose into the shared tensors (it cut the learning rate already).

        ``last_healthy``: the newest confirmed healthy state, in memory (``healthy_states``) or on disk
        (the newest checkpoint marked healthy: marks are confirmed as the states in memory are).
        ``best``: the best-evaluated checkpoint (only a confirmed one can be best), else as
        ``last_healthy``. With neither, the state this process started from (``start_state``: a new
        run's initial weights, or the checkpoint a resume began from), so that a rollback never keeps
        the weights the guard has just judged damaged. The candidate in memory and the checkpoints
        still waiting for their mark are dropped (the damage may be in them).
        The workers are paused for the restore (``pause_workers``); their observation and reward
        normalisers keep their statistics (they are the workers' own, and no gradient step moves them).
        """
        self.healthy_states.forget_candidate()
        self.pending_marks.clear()
        best = self.run.checkpoint_path("best") if action.source == "best" else None
        path = best or self.run.checkpoint_path("last_healthy")
        restored = read_train_state(path) if path is not None else None  # read before the workers wait
        memory = self.healthy_states.confirmed if best is None else None
        if memory is not None and restored is not None:  # the newer of the two (memory needs no file)
            if memory.step >= restored.step:
                path = restored = None
            else:
                memory = None
        start = memory is None and restored is None
        if start:
            memory = self.start_state
        data: dict[str, Any] = {"checkpoint": str(path) if path else None, "restored_from": None}
        still_busy = self.pause_workers()
        try:
            if memory is not None:
                self.algo.restore_in_place(memory.modules["model"], memory.optimizers["optimizer"])
                summary = f"restored the healthy state of step {memory.step} from memory"
                if start:
                    summary = (
                        f"no confirmed healthy state yet, restored the state of step {memory.step} the run started from"
                    )
                data.update(restored_from="start" if start else "memory", restored_step=memory.step)
            elif restored is not None and path is not None:
                load_modules({"model": self.algo.model}, restored, path)  # copies into the shared tensors
                load_optimizers({"optimizer": self.algo.optimizer}, restored, path)
                summary = f"restored {path.name} (step {restored.step})"
                data.update(
                    restored_from="disk",
                    restored_step=restored.step,
                    restored_score=restored.score,
                    restored_healthy=self.run.store.is_healthy(path.name),  # the index: marks come later
                )
            else:
                summary = "no healthy state yet, kept the current weights"
            self.lr_scale.value = self.guard.state.lr_scale
            with self.generation.get_lock():
                self.generation.value += 1  # reports begun before now are not judged
        finally:
            self.resume_workers()
        data.update(
            paused_workers=sorted(self.running_workers() - set(still_busy)),
            unpaused_workers=still_busy,
            generation=self.generation.value,
        )
        if still_busy:
            summary += f" (workers {still_busy} did not pause within {self.algo_config.shutdown_timeout:g} s)"
        self.log_events([self.guard.rollback_event(action.reason, summary, data)], step)

    # ---- evaluation ---------------------------------------------------------------------------
    def evaluate(self, metrics: dict[str, Any], state: TrainState) -> list[float] | None:
        """Deterministic episodes on the coordinator's own envs, with the weights and observation
        statistics of ``state`` (frozen); adds ``eval/*`` metrics and returns the episode returns
        (the guard weighs a drop against their spread)."""
        if self.eval_env is None:
            self.eval_env = trunk.evaluation_environment(self.config)
            self.eval_model = build_model(self.algo_config, self.adapter.obs_shape, self.adapter.action)
        self.eval_model.load_state_dict(state.modules["model"])
        self.eval_env.obs_normalizer.stats.load(state.normalizers["obs"])
        return trunk.evaluate_on(
            self.run, self.eval_env, self.eval_model.acting_policy(), self.eval_env.obs_normalizer, metrics
        )

    # ---- reports --------------------------------------------------------------------------------
    def _on_drill(self, worker: int, payload: dict[str, Any]) -> None:
        text = payload["drill"]
        if text not in self.guard.state.fired:
            self.guard.state.fired = sorted([*self.guard.state.fired, text])
        # Logged at the coordinator's step, like every event (events.jsonl stays in step order); the
        # worker's step count when the drill fired is in the message and in ``fired_at``.
        self.run.emit(
            f"drill.{payload['kind']}",
            self.step_counter.value,
            f"drill {text} started (worker {worker}, step {payload['step']})",
            drill=text,
            worker=worker,
            fired_at=payload["step"],
        )

    def _on_report(self, worker: int, payload: dict[str, Any]) -> None:
        """Log one worker's report as a metrics row, and while supervising let the guard judge it.

        Reports holding updates from before the latest restore (an older ``generation``) and those
        drained while the workers stop are logged, and their non-finite steps counted, but not judged.
        """
        metrics = self._metrics_row(worker, payload)
        window = self.config.guard.nonfinite_window
        state = self.guard.state
        state.recent_steps = (state.recent_steps + list(payload.get("nonfinite", [])))[-window:]
        payload["row_step"] = metrics[names.STEP]
        if not self.judging or self.halted is not None or payload.get("generation", 0) != self.generation.value:
            self.run.log(metrics)
            self.last_metrics = metrics
            return
        step = metrics[names.STEP]
        # The guard counts rows, as the synchronous loop's updates (a warning repeats once per
        # guard.history_window of them), not the workers' gradient steps (report_every per row).
        self.judged_reports += 1
        self.guard.observe(metrics, self.judged_reports)
        if self.lr_scale.value != self.guard.state.lr_scale:  # the first rollback's cut lifted
            self.lr_scale.value = self.guard.state.lr_scale
        frozen = evaluation = None
        # The evaluation at run.total_steps is the final checkpoint's (every worker's last report is past it).
        if step < self.config.run.total_steps and self.guard.evaluation_due(step):
            frozen = self.train_state(frozen=True)
            payload["frozen_fence"] = self.step_counter.value  # its health mark's fence (see PendingState)
            evaluation = self.evaluate(metrics, frozen)
        self.run.log(metrics)
        self.last_metrics = metrics
        checkpoint_due = step - self.run.last_checkpoint_step >= self.config.run.checkpoint_every
        actions = self.guard.decide(metrics, step, evaluation, checkpoint_due)
        self.log_events(self.guard.take_events(), step)
        self.carry_out(actions, worker, payload, frozen)

    def _metrics_row(self, worker: int, payload: dict[str, Any]) -> dict[str, Any]:
        for episode_return, length in zip(payload["episode_returns"], payload["episode_lengths"], strict=True):
            self.episodes.add(episode_return, length)
        self.normalizers[worker] = payload["normalizers"]
        self.normalizers.pop(-1, None)
        now = time.perf_counter()
        step, updates = self.step_counter.value, self.update_counter.value
        self.step, self.updates = step, updates
        mark_time, mark_step = self.rate_mark
        if now - mark_time >= 1.0 or self.steps_per_second is None:  # rate over >= 1 s windows
            self.steps_per_second = (step - mark_step) / max(now - mark_time, 1e-9)
            if now - mark_time >= 1.0:
                self.rate_mark = (now, step)
        return {
            names.STEP: step,
            names.UPDATE: updates,
            "worker": worker,
            **self.episodes.summary(),
            **payload["metrics"],
            names.PARAMS_FINITE: float(parameters_finite({"model": self.algo.model})),
            "train/gradient_steps": float(payload["updates"]),
            names.STEPS_PER_SECOND: self.steps_per_second,
            "perf/update_seconds": payload["seconds"] / max(payload["updates"], 1),
            "perf/env_seconds": payload["env_seconds"],
            "perf/wall_seconds": self.run.elapsed(),
            "perf/rss_mb": resident_memory_mb(),
            "perf/workers_alive": float(sum(p.is_alive() for p in self.workers)),
        }

    # ---- the run ----------------------------------------------------------------------------
    def train(self, stop_at_step: int | None = None) -> TrainResult:
        """Train to ``run.total_steps`` (or stop at ``stop_at_step``); returns a ``TrainResult``.

        Raises ``TrainingHalted`` (exit code 3) after a clean shutdown if the guard halted the run
        (no checkpoint after the halt), or if a worker failed (with a checkpoint).
        """
        self.run.started = time.perf_counter()
        self.rate_mark = (self.run.started, self.step)
        self.steps_per_second = None
        self.last_metrics = {}
        try:
            return self._train(stop_at_step)
        except BaseException:  # a failed checkpoint write, an error while supervising: files closed, lock released
            self.close()
            raise

    def _train(self, stop_at_step: int | None) -> TrainResult:
        # A second Ctrl-C does not interrupt: the coordinator must still stop its workers, and then write
        # the final checkpoint (a signal during the final evaluation ends the evaluation, not the run's save).
        with self.run.stop_signals(second_interrupts=False):
            try:
                self._start_workers()
                self._supervise(stop_at_step)
            finally:
                self._stop_workers()
            if self.halted is not None:
                self.halt(*self.halted)
            checkpoint = None
            # The run's last evaluation goes with the final checkpoint, even when a periodic checkpoint
            # was already written at this step (reports can carry the step past run.total_steps).
            evaluate = self.failure is None and not self.stop_requested and self.guard.evaluation_due(self.step)
            if evaluate or self.run.needs_final_checkpoint(self.step):
                checkpoint = self._final_checkpoint(evaluate)
        checkpoint = checkpoint or self.run.store.path("latest")
        if self.failure is not None:
            self.run.emit("run.failed", self.step, f"{self.failure}; continue with 'pgrad resume {self.run_dir}'")
            self.close()
            raise TrainingHalted(
                f"{self.failure} (details in {self.run_dir / 'events.jsonl'}); checkpoint {checkpoint.name} saved"
            )
        result = self.run.finish(self.step, self.updates, self.last_metrics, checkpoint)
        self.close()
        return result

    def _final_checkpoint(self, evaluate: bool) -> Path:
        """At the end of the run; with ``evaluate`` (the guard's evaluation is due) it carries the score."""
        if evaluate:
            frozen = self.train_state(frozen=True)
            row: dict[str, Any] = {names.STEP: self.step, names.UPDATE: self.updates}
            returns = self.evaluate(row, frozen)
            score = None if returns is None else float(np.mean(returns))
            self.run.log(row)
            return self.save_checkpoint(score, self.guard.healthy, frozen)
        return self.save_checkpoint(self.guard.checkpoint_score(self.last_metrics), self.guard.healthy)

    def halt(self, action: Halt, step: int) -> None:
        """The guard's halt, once the workers have stopped: log why and raise ``TrainingHalted``."""
        latest = self.run.checkpoint_path("latest")
        message = action.message
        if action.dump:
            message = (
                f"{message}. A3C keeps no trajectories in the coordinator, so nothing was dumped. Usual causes: "
                f"learning rate too high, no gradient clipping, unnormalised rewards; see 'pgrad doctor {self.run_dir}'"
            )
        resume = f"'pgrad resume {self.run_dir}' continues from {latest.name}" if latest else "no checkpoint yet"
        message = f"{message}; the workers were stopped ({resume})"
        self.run.emit(action.kind, step, message, recoveries=self.guard.state.recoveries)
        self.close()
        raise TrainingHalted(message)

    def close(self) -> None:
        """Closes the evaluation envs, if built, and the run context."""
        if self.eval_env is not None:
            self.eval_env.envs.close()
            self.eval_env = None
        self.run.close()
