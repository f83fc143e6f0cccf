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
import random
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as mp

from pgrad import __version__
from pgrad.algos.a3c import A3C, A3CConfig
from pgrad.checkpoint import (
    CheckpointStore,
    load_checkpoint,
    numpy_to_tensors,
    optimizer_from_parts,
    optimizer_to_parts,
    tensors_to_numpy,
)
from pgrad.config import TrainConfig
from pgrad.envs.factory import SpaceAdapter, make_vector_env
from pgrad.envs.normalize import RunningMeanStd
from pgrad.errors import CheckpointError, ConfigError, TrainingHalted
from pgrad.monitor.sinks import ConsoleDisplay, EventLog, JsonlSink, tensorboard_sink
from pgrad.rollout import EpisodeStats
from pgrad.runners.context import TrainResult, resident_memory_mb
from pgrad.threads import set_threads

# ---- the coordinator ------------------------------------------------------------------------

# Before its first message a worker is importing torch and building its envs, which takes seconds
# on a busy machine; it counts as stuck only after this long (then after a3c.stall_timeout).
STARTUP_SECONDS = 300.0


class A3CRunner:
    """Runs an A3C run: starts the workers, supervises them, logs and checkpoints.

    Same constructor, ``train()`` and ``stop_requested`` as ``pgrad.runners.on_policy.OnPolicyRunner``, so the
    command line treats both alike (``AlgorithmSpec.trainer``). Workers are started with 'spawn',
    which re-imports the main module: a script that trains A3C needs ``if __name__ == "__main__":``.

    Not applied here: the synchronous trainer's guard (``guard`` section: alert rules, rollbacks,
    periodic evaluation, drills). A3C stops on a worker error, including a non-finite loss; its
    drill is ``a3c.fail_worker_at_step``, and ``guard.inject`` is refused rather than ignored.
    """

    def __init__(self, config: TrainConfig, run_dir: Path, resume: bool = False, console: bool = True) -> None:
        self.config = config
        self.algo_config: A3CConfig = config.algo_config
        self.run_dir = Path(run_dir)
        self.store = CheckpointStore(self.run_dir, config.run.keep_checkpoints)
        if not resume and self.store.index()["latest"] is not None:
            raise ConfigError(
                f"run folder {self.run_dir} already holds a run; continue it with 'pgrad resume {self.run_dir}' "
                "or choose another --run-dir"
            )
        if config.guard.inject:
            raise ConfigError(
                "guard.inject drills run on the synchronous trainer only; for a3c use a3c.fail_worker_at_step"
            )
        set_threads(config.run.torch_threads)
        random.seed(config.run.seed)
        np.random.seed(config.run.seed)
        torch.manual_seed(config.run.seed)
        probe = make_vector_env(config.env, num_envs=1)  # the spaces, and env errors before any process starts
        self.adapter = SpaceAdapter(
            probe.single_observation_space, probe.single_action_space, config.env.rescale_actions
        )
        probe.close()
        self.algo = A3C(self.algo_config, self.adapter.obs_dim, self.adapter.action)
        self.episodes = EpisodeStats.empty(config.run.episode_window)
        self.normalizers: dict[int, dict[str, np.ndarray]] = {-1: fresh_normalizer_arrays(self.adapter.obs_dim)}
        self.step = self.updates = self.last_checkpoint_step = 0
        self.elapsed_before = 0.0
        self.stop_requested = False
        self.failure: str | None = None
        self.workers: list[Any] = []
        self.finished: set[int] = set()  # workers that said done, failed, died or stalled
        self.last_heard: dict[int, float] = {}  # worker -> monotonic time of its last message
        self.started_workers: set[int] = set()  # workers that have imported everything and begun

        self.run_dir.mkdir(parents=True, exist_ok=True)
        config.save(self.run_dir / "config.yaml")
        label = f"{config.algo} {config.env.id}"
        self.console = ConsoleDisplay(config.run.total_steps, 0, config.run.progress and console, label)
        self.events = EventLog(self.run_dir / "events.jsonl", echo=self.console.message if console else None)
        self.sinks: list[Any] = [JsonlSink(self.run_dir / "metrics.jsonl")]
        if config.run.tensorboard:
            board = tensorboard_sink(self.run_dir / "tb")
            if board is not None:
                self.sinks.append(board)
        if resume:
            self.load(self.store.path("latest"))
        else:
            workers = self.algo_config.num_workers
            message = f"{config.algo} on {config.env.id}, seed {config.run.seed}, {workers} workers"
            self.events.emit("run.started", 0, message, version=__version__)

    # ---- checkpoints ----------------------------------------------------------------------
    def normalizer_arrays(self) -> dict[str, np.ndarray]:
        """Observation/reward normaliser statistics of the lowest-numbered worker that reported.

        Every worker estimates the same statistics from its own env copy; one worker's are saved
        (as the trainer's ``collector.obs_norm_*`` tensors, which ``pgrad eval`` reads), and a
        resumed run starts every worker from them.
        """
        return self.normalizers[min(self.normalizers)]

    def checkpoint_parts(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {f"module.model.{k}": v for k, v in self.algo.model.state_dict().items()}
        optimizer_tensors, optimizer_state = optimizer_to_parts("optim.optimizer", self.algo.optimizer)  # type: ignore[arg-type]
        tensors.update(optimizer_tensors)
        tensors.update(numpy_to_tensors("collector", self.normalizer_arrays()))
        tensors["rng.torch"] = torch.get_rng_state()
        state = {
            "pgrad_version": __version__,
            "algo": self.config.algo,
            "step": self.step,
            "updates": self.updates,
            "elapsed_seconds": self.elapsed_before + (time.perf_counter() - self.started),
            "config": self.config.to_dict(),
            "optimizers": {"optimizer": optimizer_state},
            "env_state": None,  # worker environments are re-seeded on resume (module docstring)
            "episodes": {"returns": list(self.episodes.returns), "lengths": list(self.episodes.lengths),
                         "count": self.episodes.count},
            "algo_state": {"num_workers": self.algo_config.num_workers},
        }
        return tensors, state

    def save_checkpoint(self, score: float | None) -> Path:
        # Workers keep stepping while the tensors are copied: a checkpoint is a Hogwild snapshot.
        tensors, state = self.checkpoint_parts()
        path = self.store.save(self.step, tensors, state, score)
        self.last_checkpoint_step = self.step
        self.events.emit("checkpoint", self.step, f"saved {path.name}", path=str(path), score=score, healthy=True)
        return path

    def load(self, path: Path) -> None:
        tensors, state = load_checkpoint(path)
        if state.get("algo") != self.config.algo:
            raise CheckpointError(f"checkpoint {path} is for algorithm {state.get('algo')!r}, not {self.config.algo!r}")
        try:
            self.algo.model.load_state_dict(
                {k[len("module.model."):]: v for k, v in tensors.items() if k.startswith("module.model.")}
            )
            optimizer_from_parts(
                "optim.optimizer", self.algo.optimizer, tensors, state["optimizers"]["optimizer"]  # type: ignore[arg-type]
            )
            arrays = tensors_to_numpy("collector", tensors)
            self.normalizers = {-1: {k: arrays[k] for k in fresh_normalizer_arrays(self.adapter.obs_dim)}}
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path} does not fit this configuration: {exc}") from None
        self.episodes.returns.extend(state["episodes"]["returns"])
        self.episodes.lengths.extend(state["episodes"]["lengths"])
        self.episodes.count = state["episodes"]["count"]
        torch.set_rng_state(tensors["rng.torch"])
        self.step, self.updates = state["step"], state["updates"]
        self.elapsed_before = state["elapsed_seconds"]
        self.last_checkpoint_step = self.step
        self.events.emit("run.resumed", self.step, f"resumed from {path.name} (A3C resumes are not bit-exact)",
                         path=str(path))

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
                    args=(worker, self.config, shared, self.normalizer_arrays(), self.step, os.getpid()),
                    name=f"pgrad-a3c-worker-{worker}",
                    daemon=True,
                )
                process.start()
                self.workers.append(process)
                self.last_heard[worker] = time.monotonic()
        finally:
            signal.signal(signal.SIGINT, handler)
        pids = ", ".join(str(p.pid) for p in self.workers)
        self.events.emit("workers.started", self.step, f"{len(self.workers)} workers (pids {pids})",
                         pids=[p.pid for p in self.workers])

    def _supervise(self, stop_at_step: int | None) -> None:
        """Read reports until the workers finish, one fails, a stop is requested or ``stop_at_step``."""
        every = self.config.run.checkpoint_every
        while not self.stop_requested and self.failure is None and len(self.finished) < len(self.workers):
            self._receive(timeout=0.1)
            self._check_alive()
            if stop_at_step is not None and self.step_counter.value >= stop_at_step:
                return
            if self.step - self.last_checkpoint_step >= every and self.failure is None:
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
            self.events.emit("critical.worker_failed", self.step_counter.value, f"worker {worker} raised {last_line}",
                             worker=worker, traceback=payload)

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
                self.events.emit("critical.worker_stalled", self.step, reason, worker=worker)
            if process.exitcode is None:
                continue
            self._receive(timeout=0.5)  # its last messages may still be in the pipe
            if worker not in self.finished:
                self.finished.add(worker)
                reason = f"a3c worker {worker} (pid {process.pid}) exited with code {process.exitcode} without a report"
                self.failure = self.failure or reason
                self.events.emit("critical.worker_failed", self.step, reason, worker=worker, exitcode=process.exitcode)

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
            self.events.emit("warning.worker_terminated", self.step, f"worker {worker} did not stop in time",
                             worker=worker)
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
            "perf/wall_seconds": self.elapsed_before + now - self.started,
            "perf/rss_mb": resident_memory_mb(),
            "perf/workers_alive": float(sum(p.is_alive() for p in self.workers)),
        }
        for sink in self.sinks:
            sink.write(metrics)
        self.console.update(metrics)
        self.last_metrics = metrics

    # ---- the run ----------------------------------------------------------------------------
    def _request_stop(self, signum: int, frame: Any) -> None:
        self.stop_requested = True

    def train(self, stop_at_step: int | None = None) -> Any:
        """Train to ``run.total_steps`` (or stop at ``stop_at_step``); returns a ``TrainResult``.

        Raises ``TrainingHalted`` after a clean shutdown and a checkpoint if a worker failed.
        """

        self.started = time.perf_counter()
        self.rate_mark = (self.started, self.step)
        self.steps_per_second: float | None = None
        self.last_metrics: dict[str, Any] = {}
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._start_workers()
            for sig in previous:
                signal.signal(sig, self._request_stop)
            self._supervise(stop_at_step)
        finally:
            self._stop_workers()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        checkpoint = None
        if self.last_checkpoint_step != self.step or self.store.index()["latest"] is None:
            checkpoint = self.save_checkpoint(self.episodes.summary().get("rollout/return_mean"))
        checkpoint = checkpoint or self.store.path("latest")
        total = self.config.run.total_steps
        if self.failure is not None:
            self.events.emit("run.failed", self.step, f"{self.failure}; continue with 'pgrad resume {self.run_dir}'")
            self.close()
            raise TrainingHalted(
                f"{self.failure} (details in {self.run_dir / 'events.jsonl'}); checkpoint {checkpoint.name} saved"
            )
        if self.stop_requested:
            message = f"stopped on request; continue with 'pgrad resume {self.run_dir}'"
            self.events.emit("run.interrupted", self.step, message)
        elif self.step >= total:
            self.events.emit("run.finished", self.step, "reached run.total_steps")
        self.close()
        seconds = self.elapsed_before + time.perf_counter() - self.started
        interrupted = self.step < total
        return TrainResult(self.run_dir, self.step, self.updates, seconds, interrupted, self.last_metrics, checkpoint)

    def close(self) -> None:
        self.console.close()
        for sink in self.sinks:
            sink.close()
        self.events.close()


def fresh_normalizer_arrays(obs_dim: int) -> dict[str, np.ndarray]:
    """Normaliser statistics before any data, under the names ``RolloutCollector.state_arrays`` uses."""
    arrays = {f"obs_norm_{k}": v for k, v in RunningMeanStd((obs_dim,)).state().items()}
    arrays.update({f"reward_norm_{k}": v for k, v in RunningMeanStd(()).state().items()})
    return arrays
