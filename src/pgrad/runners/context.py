"""The run context: one owner of a run folder and of everything that writes into it.

Every runner (the on-policy, off-policy and language-model loops, A3C's coordinator; opened through
``pgrad.runners.trunk``'s prologue) uses it instead of opening files itself:

- the folder and its saved ``config.yaml`` (a second ``train`` into a folder that holds a run, or into
  any non-empty folder without ``--overwrite``, is refused);
- an exclusive lock on the folder (``.pgrad.lock``, ``fcntl.flock``) from ``open`` to ``close``: a
  second train or resume of the same folder gets one line naming the holder's pid;
- on resume, the newest checkpoint that loads (even when ``index.json`` lags or the latest is damaged)
  and logs cut back to its step (``metrics.jsonl``, ``events.jsonl``, TensorBoard's purge marker);
- the console (progress bar), ``events.jsonl`` and the metric sinks (JSONL, TensorBoard);
- the checkpoint store, written and read as a typed ``TrainState`` (``pgrad.checkpoint``);
- Ctrl-C / SIGTERM: the first asks for a clean stop (finish the update, checkpoint, exit 130),
  a second one means now;
- the ``TrainResult`` a run returns.

Nothing is written before ``open``: a runner builds its environments and algorithm first, so
bad input fails with one line and leaves no folder behind.
"""

from __future__ import annotations

import fcntl
import os
import random
import shutil
import signal
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError

from pgrad import __version__, safe_io
from pgrad.callbacks import BaseCallback, Logger, as_callbacks, leaves, merge_recorded, stop_reason
from pgrad.checkpoint import (
    LOCK_FILE,
    RUN_FILES,
    CheckpointStore,
    TrainState,
    adopt_checkpoint,
    check_run_folder,
    newest_loadable,
    remove_partial_writes,
    weights_finite,
)
from pgrad.config import TrainConfig, append_resolved
from pgrad.errors import CheckpointError, ConfigError, PgradError
from pgrad.monitor.sinks import (
    ENV_UNITS,
    ConsoleDisplay,
    EventLog,
    JsonlSink,
    MetricSink,
    ProgressUnits,
    tensorboard_sink,
    truncate_jsonl,
)
from pgrad.monitor.trackers import check_trackers, tracker_sinks
from pgrad.runners.live import LiveTraining
from pgrad.runs import check_config_recorded


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's and torch's global generators."""
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
    """What a finished (or interrupted) run reports: folder, steps, updates, time, last metrics, final checkpoint."""

    run_dir: Path
    steps: int
    updates: int
    seconds: float
    interrupted: bool
    last_metrics: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None


class RunContext:
    """A run folder, its logs and its checkpoints (see the module docstring)."""

    def __init__(self, config: TrainConfig, run_dir: Path, resume: bool, overwrite: bool = False) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.overwrite = overwrite
        self.store = CheckpointStore(self.run_dir, config.run.keep_checkpoints)
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ConfigError(f"run folder {self.run_dir} is a file, not a folder; choose another --run-dir")
        if resume:  # a new run takes an empty folder (a link makes it not empty), or --overwrite unlinks them
            check_run_folder(self.run_dir, writing=True)  # links planted in a received folder: one line, first
        RunLock.probe(self.run_dir)  # a folder in use: say so first (``open`` takes the lock for real)
        check_trackers(config)  # run.wandb / run.mlflow on but not installed: one line, nothing written
        if not resume:
            self.check_new_folder()  # again under the lock in ``open``: another run may start in between
        self.lock: RunLock | None = None
        self.resume_notes: list[tuple[str, str, dict[str, Any]]] = []  # events for ``open`` to write
        self.index_repair: tuple[str, int, bool, float | None] | None = None  # a checkpoint for the index
        self.stop_requested = False
        # library use (pgrad.api, pgrad.callbacks): told of steps, updates, evaluations, checkpoints
        self.callbacks: list[Any] = []
        self.logger = Logger()  # custom scalars (pgrad.api hands over the agent's): joined to the next row
        self.training: LiveTraining | None = None  # what the callbacks see of the loop, from start_callbacks
        self.stopped_by: str | None = None  # the callback hook that asked to stop
        self.second_interrupts = True
        self.last_checkpoint_step = 0
        self.started = time.perf_counter()
        self.elapsed_before = 0.0
        self.sinks: list[MetricSink] = []
        self.broken_sinks: list[MetricSink] = []  # sinks whose write failed (disk full), closed by ``close``
        self.console: ConsoleDisplay | None = None
        self.events: EventLog | None = None
        # what the learner resolved at build time (``resolved_record``), set by the runner before ``open``:
        # recorded in config.yaml and at run.started
        self.resolved: dict[str, str] = {}
        self.env_object = False  # the envs come from a Python object (pgrad.api): recorded under resolved

    # ---- the folder and its logs ----------------------------------------------------------
    def check_new_folder(self) -> None:
        """A new run goes into a missing or empty folder, or with ``--overwrite`` into any folder.

        A folder holding a run (a checkpoint index naming a latest checkpoint) is continued with
        ``pgrad resume``; any other non-empty folder is someone's data (a config.yaml, old metrics) that a
        new run would overwrite or append to, so it is refused unless ``--overwrite`` says so.
        """
        if self.overwrite or not self.run_dir.is_dir():
            return
        try:
            holds_run = self.store.index()["latest"] is not None
        except CheckpointError:
            holds_run = True  # an unreadable index: still a run's folder
        # a checkpoint the index does not list yet (a kill before the index update) is resumable too
        holds_run = holds_run or any(self.store.root.glob("step_*"))
        if holds_run:
            raise ConfigError(
                f"run folder {self.run_dir} already holds a run; continue it with 'pgrad resume {self.run_dir}', "
                "choose another --run-dir, or pass --overwrite to replace it"
            )
        # the lock file is this run's own (``open`` checks again under it); a link by its name is not
        present = sorted(p.name for p in self.run_dir.iterdir() if p.name != RunLock.NAME or p.is_symlink())
        if present:
            shown = ", ".join(present[:5]) + (f" and {len(present) - 5} more" if len(present) > 5 else "")
            raise ConfigError(
                f"run folder {self.run_dir} is not empty and holds no run to resume ({shown}); choose another "
                f"--run-dir, or pass --overwrite to replace pgrad's files there ({', '.join(RUN_FILES)}; "
                "other files are kept)"
            )

    def clear_previous_run(self) -> None:
        """``--overwrite``: delete what an earlier run wrote here (``RUN_FILES``), nothing else. A
        symlink is removed as a link, never followed: nothing outside the folder is touched."""
        for name in RUN_FILES:
            path = self.run_dir / name
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.is_dir():
                shutil.rmtree(path)

    def open(self, console: bool, label: str, units: ProgressUnits = ENV_UNITS) -> None:
        """Create and lock the folder, save the config, open console, events and sinks; on resume first
        cut the logs back to the checkpoint's step."""
        config = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.lock = RunLock.acquire(self.run_dir)
        try:
            dropped = self.prepare_folder()
        except BaseException:
            self.lock.release()
            raise
        config.save(self.run_dir / "config.yaml")
        if self.resolved:
            append_resolved(self.run_dir / "config.yaml", self.resolved)
        self.console = ConsoleDisplay(config.run.total_steps, 0, config.run.progress and console, label, units)
        self.events = EventLog(self.run_dir / "events.jsonl", echo=self.console.message if console else None)
        self.sinks = [JsonlSink(self.run_dir / "metrics.jsonl")]
        if config.run.tensorboard:
            board = tensorboard_sink(self.run_dir / "tb")
            if board is not None:
                if self.resume:
                    board.purge_from(self.last_checkpoint_step + 1)
                self.sinks.append(board)
        self.sinks += tracker_sinks(config, self.run_dir)
        for kind, message, data in self.resume_notes:
            if kind in ("run.checkpoint_skipped", "run.config_changed"):  # the user should know: one line each
                self.emit(kind, self.last_checkpoint_step, message, show=False, **data)
                print(f"pgrad: warning: {message}", file=sys.stderr, flush=True)
            else:
                self.emit(kind, self.last_checkpoint_step, message, **data)
        if any(after or bad for after, bad in dropped.values()):  # a (0, 0) pair is truthy: count the rows
            counts = ", ".join(
                f"{name}: {after} rows past it, {bad} unreadable" for name, (after, bad) in dropped.items()
            )
            self.emit(
                "run.logs_truncated",
                self.last_checkpoint_step,
                f"logs cut back to the checkpoint's step {self.last_checkpoint_step} ({counts}); "
                "the resumed run logs those steps again",
                dropped={
                    name: {"after_checkpoint": after, "unreadable": bad} for name, (after, bad) in dropped.items()
                },
            )

    def prepare_folder(self) -> dict[str, tuple[int, int]]:
        """Under the lock: a new run checks (and with ``--overwrite`` clears) the folder; a resume cuts
        ``metrics.jsonl`` and ``events.jsonl`` back to its checkpoint's step. Returns what was dropped."""
        if not self.resume:
            self.check_new_folder()
            if self.overwrite:
                self.clear_previous_run()
            return {}
        if self.index_repair is not None:
            adopt_checkpoint(self.store, *self.index_repair)
        # randomization.jsonl: only runs with domain randomisation have one (pgrad.envs.randomize)
        logs = ["metrics.jsonl", "events.jsonl", "randomization.jsonl"]
        for name in logs:  # what a kill during an earlier truncation left
            safe_io.remove_temporaries(self.run_dir, name)
        return {
            name: truncate_jsonl(self.run_dir / name, self.last_checkpoint_step)
            for name in logs
            if name != "randomization.jsonl" or (self.run_dir / name).is_file()
        }

    def emit(self, kind: str, step: int, message: str, show: bool = True, **data: Any) -> None:
        """Appends an event to ``events.jsonl`` (and the console when ``show``); a write error becomes
        ``write_failed``'s error."""
        assert self.events is not None, "RunContext.open first"
        try:
            self.events.emit(kind, step, message, show=show, **data)
        except OSError as exc:
            raise self.write_failed(exc, step) from None

    def write_failed(self, exc: OSError, step: int) -> PgradError:
        """A log write failed (disk full, quota): one line naming the folder, the reason and the checkpoint
        that is kept, and a ``run.write_failed`` event if the event log can still take one."""
        # nothing more goes to files that cannot be written (a later flush would only fail again); ``close``
        # still closes them
        self.broken_sinks, self.sinks = [*self.broken_sinks, *self.sinks], []
        kept = self.checkpoint_path("latest")
        where = f" ({Path(exc.filename).name})" if exc.filename else ""
        message = f"could not write the logs of {self.run_dir}: {exc.strerror or exc}{where}; " + (
            f"the last good checkpoint {kept.name} is kept ('pgrad resume {self.run_dir}' continues from it)"
            if kept is not None
            else "no checkpoint of this run was written yet"
        )
        if self.events is not None:
            try:
                self.events.emit("run.write_failed", step, message, show=False)
            except OSError:
                pass  # the event log is on the same full disk: the line on stderr is what is left
        return PgradError(message)

    def warn(self, kind: str, step: int, message: str) -> None:
        """An event and one ``pgrad: warning:`` line on stderr, shown even with ``--quiet`` (which only
        silences progress): for what the user must know before the run goes on."""
        self.emit(kind, step, message, show=False)
        print(f"pgrad: warning: {message}", file=sys.stderr, flush=True)

    def started_event(self, detail: str = "", subject: str | None = None) -> None:
        """Emits ``run.started``: algorithm, env id (or ``subject``: a language-model run's model and data), seed,
        version and any resolved settings."""
        config = self.config
        text = f"{config.algo} on {subject or config.env.id}, seed {config.run.seed}{detail}"
        data: dict[str, Any] = {"resolved": self.resolved} if self.resolved else {}
        self.emit("run.started", 0, text, version=__version__, **data)

    def log(self, metrics: dict[str, Any]) -> None:
        """One row of metrics to every sink and the progress bar; callbacks hear of it first, and the scalars
        they (or anyone) recorded on the logger join it."""
        if self.callbacks:
            self.hear_update(metrics)
        if self.logger.values or self.logger.means:  # attribute reads: no call on the hot path
            merge_recorded(metrics, self.logger.take())
        try:
            for sink in self.sinks:
                sink.write(metrics)
        except OSError as exc:
            raise self.write_failed(exc, int(metrics.get("step", 0))) from None
        if self.console is not None:
            self.console.update(metrics)

    # ---- callbacks ----------------------------------------------------------------------------
    def start_callbacks(self, body: Any) -> LiveTraining | None:
        """When the loop starts: the callbacks (opened into a flat list, see ``pgrad.callbacks.leaves``) are
        bound to the running loop and hear ``on_training_start``; the collector's per-step hooks are routed to
        them. Nothing without callbacks."""
        if not self.callbacks or self.training is not None:
            return self.training
        self.callbacks = leaves(as_callbacks(self.callbacks, "callbacks"))
        self.training = LiveTraining(self, body, self.callbacks)
        for callback in self.callbacks:
            callback.on_training_start(self.training)
        self.training.attach()
        return self.training

    def hear_update(self, metrics: dict[str, Any]) -> None:
        """A logged row: where no collector calls ``on_step`` per vector step, it is called once here; then
        ``on_update`` and, when the row holds a guard evaluation, ``on_evaluation``."""
        training = self.start_callbacks(None)  # A3C's coordinator logs without the trunk's loop
        assert training is not None
        training.num_timesteps = int(metrics.get("step", training.num_timesteps))
        training.last_row = metrics
        if not training.per_step:
            self.ask_callbacks("on_step")
        self.ask_callbacks("update_event", metrics)
        if any(key.startswith("eval/") for key in metrics):  # a guard's evaluation, or a language model's
            self.ask_callbacks("evaluation_event", metrics)

    def end_callbacks(self) -> None:
        """After the final checkpoint: ``on_training_end``."""
        if self.training is not None:
            for callback in self.callbacks:
                callback.on_training_end()

    def ask_callbacks(self, hook: str, *args: Any) -> None:
        """Call the driver ``hook`` of every callback (``pgrad.callbacks.stop_reason``). One that returns False
        stops the run as a Ctrl-C would (the loop ends after this update, with its final checkpoint), but is
        recorded as ``run.stopped_by_callback``."""
        callbacks: list[BaseCallback] = self.callbacks
        reason = stop_reason(callbacks, hook, *args)
        if reason is not None and self.stopped_by is None:
            self.stopped_by = reason
            self.stop_requested = True

    def flush(self) -> None:
        """Flushes every metric sink; a write error becomes ``write_failed``'s error."""
        try:
            for sink in self.sinks:
                sink.flush()
        except OSError as exc:
            raise self.write_failed(exc, self.last_checkpoint_step) from None

    def elapsed(self) -> float:
        """Training seconds: those before a resume plus those since this process started."""
        return self.elapsed_before + time.perf_counter() - self.started

    # ---- checkpoints ----------------------------------------------------------------------
    def save_checkpoint(self, state: TrainState, score: float | None, healthy: bool = True) -> Path:
        """Write ``state`` (its step names the checkpoint), log it, and flush the sinks with it, so
        the logs on disk reach at least as far as the newest checkpoint. A write error (disk full) is a
        ``run.checkpoint_failed`` event and one line naming the checkpoint that is kept."""
        self.flush()
        # A healthy mark is what a rollback trusts: never on NaN/Inf weights, whatever the guard last saw (it may
        # check the parameters only every few updates). One pass over the weights per checkpoint.
        healthy = healthy and weights_finite(state.modules)
        try:
            path = self.store.save_state(state, score, healthy)
        except (OSError, SafetensorError) as exc:
            remove_partial_writes(self.store.root)
            kept = self.checkpoint_path("latest")
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            message = f"could not write checkpoint step_{state.step:010d} in {self.store.root}: {reason}; " + (
                f"the last good checkpoint {kept.name} is kept ('pgrad resume {self.run_dir}' continues from it)"
                if kept is not None
                else "no checkpoint of this run was written yet"
            )
            self.emit("run.checkpoint_failed", state.step, message, kept=str(kept) if kept else None)
            raise CheckpointError(message) from None
        self.last_checkpoint_step = state.step
        self.emit("checkpoint", state.step, f"saved {path.name}", path=str(path), score=score, healthy=healthy)
        if self.callbacks:
            self.start_callbacks(None)
            self.ask_callbacks("checkpoint_event", path, state.step)
        return path

    def latest_state(self) -> tuple[TrainState, Path]:
        """The checkpoint a resume starts from, checked to belong to this algorithm: the newest one that
        loads, even when ``index.json`` does not list it yet or the newer ones are damaged (each skip and
        the index repair become events once ``open`` has the event log, and each skip a warning line)."""
        listed = self.store.index()["latest"]  # an unreadable or invalid index is refused, not rebuilt
        state, path, skipped = newest_loadable(self.store.root)
        for name, reason in skipped:
            self.resume_notes.append(
                ("run.checkpoint_skipped", f"skipped checkpoint {name}: {reason}", {"checkpoint": name})
            )
        if path.name != listed:
            self.resume_notes.append(
                (
                    "run.index_repaired",
                    f"index.json named {listed} as the latest checkpoint; resuming from {path.name}, the newest "
                    "that loads",
                    {"listed": listed, "used": path.name},
                )
            )
            self.index_repair = (path.name, state.step, state.healthy, state.score)
        if state.algo != self.config.algo:
            raise CheckpointError(f"checkpoint {path} is for algorithm {state.algo!r}, not {self.config.algo!r}")
        changed = check_config_recorded(self.config, state, path, self.run_dir / "config.yaml")
        if changed is not None:
            self.resume_notes.append(("run.config_changed", changed, {"checkpoint": path.name}))
        self.check_total(state)
        self.elapsed_before = state.elapsed_seconds
        self.last_checkpoint_step = state.step
        return state, path

    def check_total(self, state: TrainState) -> None:
        """Refuses a resume whose ``--total-steps`` is below the steps the run has already taken."""
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
        """True unless a checkpoint of ``step`` was written last and the index has a latest one."""
        return self.last_checkpoint_step != step or self.store.index()["latest"] is None

    # ---- signals ----------------------------------------------------------------------------
    @contextmanager
    def stop_signals(self, second_interrupts: bool = True) -> Iterator[None]:
        """While inside: SIGINT/SIGTERM set ``stop_requested``; with ``second_interrupts`` a second
        one raises KeyboardInterrupt (the user means now)."""

        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be set from the main thread (a library caller may train in another)
            return

        def request_stop(signum: int, frame: Any) -> None:
            if self.stop_requested and second_interrupts and self.second_interrupts:
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
        if self.stopped_by is not None:
            self.emit("run.stopped_by_callback", step, f"{self.stopped_by} returned False", callback=self.stopped_by)
        elif self.stop_requested:
            self.emit("run.interrupted", step, f"stopped on request; continue with 'pgrad resume {self.run_dir}'")
        elif not interrupted:
            self.emit("run.finished", step, "reached run.total_steps")
        return TrainResult(
            self.run_dir, step, updates, self.elapsed(), interrupted, metrics, checkpoint or self.store.path("latest")
        )

    def close(self) -> None:
        """Close everything, even after a write error (closing flushes, and a full disk fails that flush
        again: what could not be written is lost either way, and the error was reported already)."""
        try:
            if self.training is not None:
                self.training.close()
            if self.console is not None:
                self.console.close()
            for sink in [*self.sinks, *self.broken_sinks, self.events]:
                try:
                    if sink is not None:
                        sink.close()
                except OSError:
                    pass
            self.sinks, self.broken_sinks = [], []
        finally:
            if self.lock is not None:
                self.lock.release()
                self.lock = None


class RunLock:
    """An exclusive ``flock`` on ``RUN_DIR/.pgrad.lock``, held by the process that trains into the folder.

    flock, not a pid file: the kernel releases it when the process dies, even by SIGKILL, so a
    crash never leaves a stale lock. The holder writes its pid into the file for the refusal message.
    """

    NAME = LOCK_FILE

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self._finalizer = weakref.finalize(self, handle.close)  # a runner dropped without close()

    @classmethod
    def acquire(cls, run_dir: Path) -> RunLock:
        """Create (or open) and lock the file, never through a link (``safe_io.open_lock``): the pid is written
        only into a plain file of the folder's own."""
        handle = safe_io.open_lock(Path(run_dir) / cls.NAME, create=True)
        assert handle is not None
        cls._lock_or_refuse(handle, run_dir)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        return cls(handle)

    @classmethod
    def probe(cls, run_dir: Path) -> None:
        """Refuse a folder whose lock is held, creating nothing (a refused run leaves no file behind)."""
        try:
            handle = safe_io.open_lock(Path(run_dir) / cls.NAME, create=False)
        except OSError:  # no folder: nobody holds it (a link is a PgradError: refused)
            return
        if handle is None:  # no lock file: nobody holds it
            return
        cls._lock_or_refuse(handle, run_dir)
        handle.close()

    @staticmethod
    def _lock_or_refuse(handle: Any, run_dir: Path) -> None:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            who = f"pid {holder}" if holder.isdigit() else "another process"
            raise ConfigError(
                f"run folder {run_dir} is in use by another pgrad run ({who}); wait for it to end or stop it, "
                "or choose another --run-dir"
            ) from None

    def release(self) -> None:
        """Releases the flock (by closing the lock file)."""
        self._finalizer()  # closing the file releases the flock
