"""The run context: one owner of a run folder and of everything that writes into it.

Every runner (the on-policy loop, A3C's coordinator, and the off-policy, language-model and Ray
loops to come) uses it instead of opening files itself:

- the folder and its saved ``config.yaml`` (a second ``train`` into a folder that holds a run is refused);
- the console (progress bar), ``events.jsonl`` and the metric sinks (JSONL, TensorBoard);
- the checkpoint store, written and read as a typed ``TrainState`` (``pgrad.checkpoint``);
- Ctrl-C / SIGTERM: the first asks for a clean stop (finish the update, checkpoint, exit 130),
  a second one means now;
- the ``TrainResult`` a run returns.

Nothing is written before ``open``: a runner builds its environments and algorithm first, so
bad input fails with one line and leaves no folder behind.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pgrad import __version__
from pgrad.checkpoint import CheckpointStore, TrainState, read_train_state
from pgrad.config import TrainConfig
from pgrad.errors import CheckpointError, ConfigError
from pgrad.monitor.sinks import ConsoleDisplay, EventLog, JsonlSink, MetricSink, tensorboard_sink


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


_rss_reading: tuple[float, float] | None = None  # (monotonic time, MiB) of the last /proc read


def resident_memory_mb() -> float:
    """Current resident set size, read at most once a second (reading /proc costs ~50 us, and the
    loop asks every update); falls back to the peak where /proc is absent."""
    global _rss_reading
    now = time.monotonic()
    if _rss_reading is not None and now - _rss_reading[0] < 1.0:
        return _rss_reading[1]
    try:
        with open("/proc/self/statm") as handle:
            value = int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    _rss_reading = (now, value)
    return value


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    updates: int
    seconds: float
    interrupted: bool
    last_metrics: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None


class RunContext:
    """A run folder, its logs and its checkpoints (see the module docstring)."""

    def __init__(self, config: TrainConfig, run_dir: Path, resume: bool) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.store = CheckpointStore(self.run_dir, config.run.keep_checkpoints)
        if not resume and self.store.index()["latest"] is not None:
            raise ConfigError(
                f"run folder {self.run_dir} already holds a run; continue it with 'pgrad resume {self.run_dir}' "
                "or choose another --run-dir"
            )
        self.stop_requested = False
        self.last_checkpoint_step = 0
        self.started = time.perf_counter()
        self.elapsed_before = 0.0
        self.sinks: list[MetricSink] = []
        self.console: ConsoleDisplay | None = None
        self.events: EventLog | None = None

    # ---- the folder and its logs ----------------------------------------------------------
    def open(self, console: bool, label: str) -> None:
        """Create the folder, save the config, open console, events and sinks."""
        config = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        config.save(self.run_dir / "config.yaml")
        self.console = ConsoleDisplay(config.run.total_steps, 0, config.run.progress and console, label)
        self.events = EventLog(self.run_dir / "events.jsonl", echo=self.console.message if console else None)
        self.sinks = [JsonlSink(self.run_dir / "metrics.jsonl")]
        if config.run.tensorboard:
            board = tensorboard_sink(self.run_dir / "tb")
            if board is not None:
                self.sinks.append(board)

    def emit(self, kind: str, step: int, message: str, show: bool = True, **data: Any) -> None:
        assert self.events is not None, "RunContext.open first"
        self.events.emit(kind, step, message, show=show, **data)

    def started_event(self, detail: str = "") -> None:
        config = self.config
        text = f"{config.algo} on {config.env.id}, seed {config.run.seed}{detail}"
        self.emit("run.started", 0, text, version=__version__)

    def log(self, metrics: dict[str, Any]) -> None:
        """One row of metrics to every sink and the progress bar."""
        for sink in self.sinks:
            sink.write(metrics)
        if self.console is not None:
            self.console.update(metrics)

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    # ---- checkpoints ----------------------------------------------------------------------
    def save_checkpoint(self, state: TrainState, score: float | None, healthy: bool = True) -> Path:
        """Write ``state`` (its step names the checkpoint), log it, and flush the sinks with it, so
        the logs on disk reach at least as far as the newest checkpoint."""
        self.flush()
        path = self.store.save_state(state, score, healthy)
        self.last_checkpoint_step = state.step
        self.emit("checkpoint", state.step, f"saved {path.name}", path=str(path), score=score, healthy=healthy)
        return path

    def latest_state(self) -> tuple[TrainState, Path]:
        """The checkpoint a resume starts from, checked to belong to this algorithm."""
        path = self.store.path("latest")
        state = read_train_state(path)
        if state.algo != self.config.algo:
            raise CheckpointError(f"checkpoint {path} is for algorithm {state.algo!r}, not {self.config.algo!r}")
        self.check_total(state)
        self.elapsed_before = state.elapsed_seconds
        self.last_checkpoint_step = state.step
        return state, path

    def check_total(self, state: TrainState) -> None:
        total = self.config.run.total_steps
        if total < state.step:
            saved = state.config.get("run", {}).get("total_steps")
            raise ConfigError(
                f"--total-steps {total} is below the {state.step} steps this run has already taken "
                f"(its total was {saved}); give a total of at least {state.step}"
            )

    def note_new_total(self, state: TrainState) -> None:
        """A resume with a larger ``--total-steps`` (``check_total`` refused a smaller one): say what
        happens to the schedules.

        Every schedule reads progress = step / run.total_steps, so after a raised total the
        learning rate (and clip range) continue from the progress already made toward the *new*
        total: a run that annealed to 0 over 50k steps and is extended to 100k resumes at half
        its initial rate. This is not the same run as one started with the larger total (that one
        annealed more slowly from its first update); only a resume with the same total is bit-exact.
        """
        saved = state.config.get("run", {}).get("total_steps")
        total = self.config.run.total_steps
        if saved is None or saved == total:
            return
        self.emit(
            "run.extended",
            state.step,
            f"run.total_steps {saved} -> {total}: schedules continue from progress {state.step}/{total} "
            f"= {state.step / total:.3f} (an uninterrupted {total}-step run would differ from its first update)",
            previous_total=saved,
            total=total,
        )

    def checkpoint_path(self, which: str) -> Path | None:
        """``latest``, ``best``, ``last_healthy`` or None when there is no such checkpoint yet."""
        try:
            return self.store.path(which)
        except CheckpointError:
            return None

    def needs_final_checkpoint(self, step: int) -> bool:
        return self.last_checkpoint_step != step or self.store.index()["latest"] is None

    # ---- signals ----------------------------------------------------------------------------
    @contextmanager
    def stop_signals(self, second_interrupts: bool = True) -> Iterator[None]:
        """While inside: SIGINT/SIGTERM set ``stop_requested``; with ``second_interrupts`` a second
        one raises KeyboardInterrupt (the user means now)."""

        def request_stop(signum: int, frame: Any) -> None:
            if self.stop_requested and second_interrupts:
                raise KeyboardInterrupt
            self.stop_requested = True

        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # ---- the end ----------------------------------------------------------------------------
    def finish(self, step: int, updates: int, metrics: dict[str, Any], checkpoint: Path | None) -> TrainResult:
        """The closing event and the result; call ``close`` after."""
        total = self.config.run.total_steps
        interrupted = step < total
        if self.stop_requested:
            self.emit("run.interrupted", step, f"stopped on request; continue with 'pgrad resume {self.run_dir}'")
        elif not interrupted:
            self.emit("run.finished", step, "reached run.total_steps")
        return TrainResult(
            self.run_dir, step, updates, self.elapsed(), interrupted, metrics, checkpoint or self.store.path("latest")
        )

    def close(self) -> None:
        if self.console is not None:
            self.console.close()
        for sink in self.sinks:
            sink.close()
        self.sinks = []
        if self.events is not None:
            self.events.close()
