"""The asynchronous runner: A3C's coordinator (see ``pgrad.algos.a3c`` for the algorithm).

The main process does not learn. It starts the workers (``pgrad.runners.a3c_worker``), reads
their reports from a queue, writes ``metrics.jsonl`` / ``events.jsonl`` with the same names as
the synchronous loop, saves checkpoints in the same format, and stops the run at
``run.total_steps`` (a shared step counter), on Ctrl-C/SIGTERM (workers stop after their current
update, then a checkpoint is written), or when a worker raises, dies or stops reporting (its
traceback or exit code is reported, the others are stopped, stragglers are terminated after
``shutdown_timeout``, a checkpoint is written and the run ends with ``TrainingHalted``, exit code 3).
"""

from __future__ import annotations

import os
import queue
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as mp

from pgrad import __version__
from pgrad.algos.a3c import A3C, A3CConfig
from pgrad.builders import algo_gamma, build_environment
from pgrad.checkpoint import TrainState, load_modules, load_optimizers
from pgrad.config import TrainConfig
from pgrad.errors import CheckpointError, ConfigError, TrainingHalted
from pgrad.rollout import EpisodeStats
from pgrad.runners.context import RunContext, TrainResult, resident_memory_mb, seed_everything
from pgrad.threads import set_threads

# ---- the coordinator ------------------------------------------------------------------------

# Before its first message a worker is importing torch and building its envs, which takes seconds
# on a busy machine; it counts as stuck only after this long (then after a3c.stall_timeout).
STARTUP_SECONDS = 300.0


class A3CRunner:
    """Runs an A3C run: starts the workers, supervises them, logs and checkpoints.

    Same constructor, ``train()`` and ``stop_requested`` as ``OnPolicyRunner``, and the same
    ``RunContext`` and ``TrainState``, so the command line treats both alike (``runner_for``).
    Workers are started with 'spawn', which re-imports the main module: a script that trains A3C
    needs ``if __name__ == "__main__":``.

    Not applied here: the synchronous trainer's guard (``guard`` section: alert rules, rollbacks,
    periodic evaluation, drills). A3C stops on a worker error, including a non-finite loss; its
    drill is ``a3c.fail_worker_at_step``, and ``guard.inject`` is refused rather than ignored.
    """

    def __init__(self, config: TrainConfig, run_dir: Path, resume: bool = False, console: bool = True) -> None:
        self.config = config
        self.algo_config: A3CConfig = config.algo_config
        self.run = RunContext(config, run_dir, resume)
        self.run_dir = self.run.run_dir
        if config.guard.inject:
            raise ConfigError(
                "guard.inject drills run on the synchronous trainer only; for a3c use a3c.fail_worker_at_step"
            )
        set_threads(config.run.torch_threads)
        seed_everything(config.run.seed)
        probe = build_environment(config, algo_gamma(config), num_envs=1)  # env errors before any process starts
        self.adapter = probe.adapter
        # Statistics before any data, in case no worker reports before the first checkpoint.
        self.normalizers: dict[int, dict[str, dict[str, np.ndarray]]] = {
            -1: {"obs": probe.obs_normalizer.stats.state(), "reward": probe.reward_scaler.stats.state()}
        }
        probe.envs.close()
        self.algo = A3C(self.algo_config, self.adapter.obs_dim, self.adapter.action, config.run.device)
        self.episodes = EpisodeStats.empty(config.run.episode_window)
        self.step = self.updates = 0
        self.failure: str | None = None
        self.workers: list[Any] = []
        self.finished: set[int] = set()  # workers that said done, failed, died or stalled
        self.last_heard: dict[int, float] = {}  # worker -> monotonic time of its last message
        self.started_workers: set[int] = set()  # workers that have imported everything and begun

        resume_from = self.run.latest_state() if resume else None  # read (and checked) before anything is written
        self.run.open(console, f"{config.algo} {config.env.id}")
        if resume_from is not None:
            self.load(*resume_from)
        else:
            self.run.started_event(f", {self.algo_config.num_workers} workers")

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

    # ---- checkpoints ----------------------------------------------------------------------
    def normalizer_state(self) -> dict[str, dict[str, np.ndarray]]:
        """Observation/reward normaliser statistics of the lowest-numbered worker that reported.

        Every worker estimates the same statistics from its own env copy; one worker's are saved
        (``TrainState.normalizers``, which ``pgrad eval`` reads), and a resumed run starts every
        worker from them.
        """
        return self.normalizers[min(self.normalizers)]

    def train_state(self) -> TrainState:
        # Workers keep stepping while the tensors are copied: a checkpoint is a Hogwild snapshot.
        episodes = self.episodes
        return TrainState(
            algo=self.config.algo,
            step=self.step,
            updates=self.updates,
            elapsed_seconds=self.run.elapsed(),
            config=self.config.to_dict(),
            modules={"model": self.algo.model.state_dict()},
            optimizers={"optimizer": self.algo.optimizer.state_dict()},
            normalizers=self.normalizer_state(),
            rng_torch=torch.get_rng_state(),
            env_state=None,  # worker environments are re-seeded on resume (pgrad.algos.a3c)
            episodes={"returns": list(episodes.returns), "lengths": list(episodes.lengths), "count": episodes.count},
            algo_state={"num_workers": self.algo_config.num_workers},
            pgrad_version=__version__,
        )

    def save_checkpoint(self, score: float | None) -> Path:
        return self.run.save_checkpoint(self.train_state(), score)

    def load(self, state: TrainState, path: Path) -> None:
        load_modules({"model": self.algo.model}, state, path)
        load_optimizers({"optimizer": self.algo.optimizer}, state, path)
        if set(state.normalizers) != {"obs", "reward"}:
            raise CheckpointError(f"checkpoint {path} has no normaliser statistics")
        self.normalizers = {-1: state.normalizers}
        self.episodes.returns.extend(state.episodes["returns"])
        self.episodes.lengths.extend(state.episodes["lengths"])
        self.episodes.count = state.episodes["count"]
        if state.rng_torch is not None:
            torch.set_rng_state(state.rng_torch)
        self.step, self.updates = state.step, state.updates
        self.run.emit(
            "run.resumed", self.step, f"resumed from {path.name} (A3C resumes are not bit-exact)", path=str(path)
        )
        self.run.note_new_total(state)

    # ---- workers ----------------------------------------------------------------------------
    def _start_workers(self) -> None:
        from pgrad.runners.a3c_worker import SharedHandles, worker_main

        context = mp.get_context("spawn")  # fork is unsafe once torch has started threads
        self.stop_event = context.Event()
        self.messages = context.Queue()
        self.step_counter = context.Value("q", self.step)
        self.update_counter = context.Value("q", self.updates)
        optimizer_states = self.algo.share_memory()
        shared = SharedHandles(
            self.algo.model, optimizer_states, self.step_counter, self.update_counter, self.stop_event, self.messages
        )
        # Started with SIGINT ignored, which survives exec: Ctrl-C in a terminal reaches the whole
        # process group, and only the coordinator may act on it (it then stops the workers).
        handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for worker in range(self.algo_config.num_workers):
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
        """Read reports until the workers finish, one fails, a stop is requested or ``stop_at_step``."""
        every = self.config.run.checkpoint_every
        while not self.stop_requested and self.failure is None and len(self.finished) < len(self.workers):
            self._receive(timeout=0.1)
            self._check_alive()
            if stop_at_step is not None and self.step_counter.value >= stop_at_step:
                return
            if self.step - self.run.last_checkpoint_step >= every and self.failure is None:
                self.save_checkpoint(self.episodes.summary().get("rollout/return_mean"))

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
            self._write_metrics(worker, payload)
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

    # ---- metrics ----------------------------------------------------------------------------
    def _write_metrics(self, worker: int, payload: dict[str, Any]) -> None:

        for episode_return, length in zip(payload["episode_returns"], payload["episode_lengths"], strict=True):
            self.episodes.add(episode_return, length)
        self.normalizers[worker] = payload["normalizers"]
        self.normalizers.pop(-1, None)
        now = time.perf_counter()
        step, updates = self.step_counter.value, self.update_counter.value
        mark_time, mark_step = self.rate_mark
        if now - mark_time >= 1.0 or self.steps_per_second is None:  # rate over >= 1 s windows
            self.steps_per_second = (step - mark_step) / max(now - mark_time, 1e-9)
            if now - mark_time >= 1.0:
                self.rate_mark = (now, step)
        metrics = {
            "step": step,
            "update": updates,
            "worker": worker,
            **self.episodes.summary(),
            **payload["metrics"],
            "train/gradient_steps": float(payload["updates"]),
            "perf/steps_per_second": self.steps_per_second,
            "perf/update_seconds": payload["seconds"] / max(payload["updates"], 1),
            "perf/env_seconds": payload["env_seconds"],
            "perf/wall_seconds": self.run.elapsed(),
            "perf/rss_mb": resident_memory_mb(),
            "perf/workers_alive": float(sum(p.is_alive() for p in self.workers)),
        }
        self.run.log(metrics)
        self.last_metrics = metrics

    # ---- the run ----------------------------------------------------------------------------
    def train(self, stop_at_step: int | None = None) -> TrainResult:
        """Train to ``run.total_steps`` (or stop at ``stop_at_step``); returns a ``TrainResult``.

        Raises ``TrainingHalted`` after a clean shutdown and a checkpoint if a worker failed.
        """
        self.run.started = time.perf_counter()
        self.rate_mark = (self.run.started, self.step)
        self.steps_per_second: float | None = None
        self.last_metrics: dict[str, Any] = {}
        # A second Ctrl-C does not interrupt: the coordinator must still stop its workers.
        with self.run.stop_signals(second_interrupts=False):
            try:
                self._start_workers()
                self._supervise(stop_at_step)
            finally:
                self._stop_workers()
        checkpoint = None
        if self.run.needs_final_checkpoint(self.step):
            checkpoint = self.save_checkpoint(self.episodes.summary().get("rollout/return_mean"))
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

    def close(self) -> None:
        self.run.close()
