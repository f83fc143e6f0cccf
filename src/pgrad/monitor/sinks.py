"""Metric sinks. Metrics are flat ``{"group/name": float}`` dicts, one per update, with the
groups ``rollout/``, ``train/``, ``diagnostics/``, ``perf/`` and ``eval/``.

A sink has three methods (``MetricSink``): ``write(metrics)`` once per update, ``flush()`` to put
everything written so far on disk (the runner calls it before every checkpoint, so a checkpoint's
rows are in ``metrics.jsonl`` when the checkpoint exists), and ``close()`` (flushes, then releases
the file). ``write`` must be cheap: it runs once per update, and an A2C update on CartPole takes
~1.5 ms. So the file sinks buffer in memory and write every ``flush_seconds`` (and at
``flush``/``close``), in the training thread. Not a writer thread: the work is Python (JSON and
protobuf encoding) that holds the GIL, so a thread would not run beside the loop, only add a queue,
locks and a shutdown path; batching is what makes it cheap (one ``write`` system call per batch, and
the TensorBoard checksums of a whole batch in one NumPy pass, see ``pgrad.monitor.tfevents``).

What survives what: Ctrl-C, a halt or an exception reaches ``close()`` through the runner; a second
Ctrl-C or an exception that escapes it leaves the process, and a ``weakref.finalize`` hook writes the
buffer at interpreter exit (or when the sink is garbage-collected). Only a hard kill (SIGKILL, power)
loses rows, at most ``flush_seconds`` of them, and never rows from before the last checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pgrad import metric_names as names
from pgrad import safe_io
from pgrad.monitor.tfevents import ScalarEventFile
from pgrad.terminal import console

FLUSH_SECONDS = 1.0  # the longest a written row stays in memory while training runs (tail -f shows it then)


class MetricSink(Protocol):
    """What the runners call on every sink (their ``sinks`` list)."""

    def write(self, metrics: dict[str, Any]) -> None:
        """Records one update's (or log row's) metrics."""

    def flush(self) -> None:
        """Puts what was written on disk (or sends it)."""

    def close(self) -> None:
        """Flushes and releases the sink, at the end of the run."""


def _clean(value: Any) -> Any:
    # JSON has no NaN/Inf; write them as strings so every line parses everywhere.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def json_line(row: dict[str, Any]) -> str:
    """One JSON line; NaN/Inf as the strings 'nan'/'inf'/'-inf'. ``json.dumps`` writes non-finite floats
    as the tokens NaN/Infinity, so only a line that contains one of them needs the slower cleaning pass."""
    text = json.dumps(row)
    if "NaN" in text or "Infinity" in text:
        text = json.dumps({k: _clean(v) for k, v in row.items()})
    return text + "\n"


class JsonlSink:
    """``metrics.jsonl``: one JSON object per update, on disk within ``flush_seconds`` (and at every
    ``flush``/``close``)."""

    def __init__(self, path: Path, flush_seconds: float = FLUSH_SECONDS) -> None:
        self.handle = safe_io.open_append(path, buffering=1 << 16)  # checked once here; rows are plain writes
        self.flush_seconds = flush_seconds
        self.next_flush = time.monotonic() + flush_seconds
        self._finalizer = weakref.finalize(self, self.handle.close)  # at exit: the buffer is not lost

    def write(self, metrics: dict[str, Any]) -> None:
        """The MetricSink protocol: one JSON line; flushes when ``flush_seconds`` have passed."""
        self.handle.write(json_line(metrics))
        if time.monotonic() >= self.next_flush:
            self.flush()

    def flush(self) -> None:
        """The MetricSink protocol: flushes the file (unless closed) and restarts the ``flush_seconds`` timer."""
        if not self.handle.closed:
            self.handle.flush()
        self.next_flush = time.monotonic() + self.flush_seconds

    def close(self) -> None:
        """The MetricSink protocol: closes (and so flushes) the file, once."""
        self._finalizer()  # closes (and so flushes) the file, once


class TensorBoardSink:
    """TensorBoard event files under ``RUN_DIR/tb``: every numeric metric whose name has a group
    (``group/name``), at the update's ``step``, one event per update; on disk within
    ``flush_seconds`` and at every ``flush``/``close``."""

    def __init__(self, path: Path, flush_seconds: float = FLUSH_SECONDS) -> None:
        self.file = ScalarEventFile(path)
        self.flush_seconds = flush_seconds
        self.next_flush = time.monotonic() + flush_seconds
        self._finalizer = weakref.finalize(self, self.file.close)

    def write(self, metrics: dict[str, Any]) -> None:
        """The MetricSink protocol: the numeric metrics with a group in their name as scalars at ``step``; flushes
        when ``flush_seconds`` have passed."""
        tags, values = [], []
        for key, value in metrics.items():
            if "/" in key and isinstance(value, (int, float)):
                tags.append(key)
                values.append(value)
        self.file.add_scalars(int(metrics["step"]), tags, values, time.time())
        if time.monotonic() >= self.next_flush:
            self.flush()

    def flush(self) -> None:
        """The MetricSink protocol: writes the buffered events and restarts the ``flush_seconds`` timer."""
        self.file.flush()
        self.next_flush = time.monotonic() + self.flush_seconds

    def close(self) -> None:
        """The MetricSink protocol: flushes and closes the event file, once."""
        self._finalizer()

    def purge_from(self, step: int) -> None:
        """Tell TensorBoard to forget this run's events at ``step`` and later (a resume from the checkpoint
        before ``step``: the killed run's rows past it are logged again by the resumed run)."""
        self.file.add_restart(step, time.time())
        self.flush()


def tensorboard_sink(path: Path) -> TensorBoardSink | None:
    """A TensorBoard sink when the ``tensorboard`` package is installed (to read the files), else None.
    Writing needs nothing from it (``pgrad.monitor.tfevents``), so it is not imported."""
    if importlib.util.find_spec("tensorboard") is None:
        return None
    return TensorBoardSink(path)


class EventLog:
    """``events.jsonl``: typed events (run started, checkpoint, interrupted, alerts, recoveries)."""

    def __init__(self, path: Path, echo: Any | None = None) -> None:
        self.handle = safe_io.open_append(path, buffering=1)
        self.echo = echo

    def emit(self, kind: str, step: int, message: str, show: bool = True, **data: Any) -> dict[str, Any]:
        """Write one event; ``show=False`` keeps it off the console (repeated warnings)."""
        event = {"time": time.time(), "step": step, "kind": kind, "message": message, **data}
        self.handle.write(json_line(event))  # line-buffered: events are rare and must be on disk at once
        if self.echo is not None and show:
            self.echo(kind, step, message)
        return event

    def close(self) -> None:
        """Closes the file (which flushes it)."""
        self.handle.close()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a metrics or events file; lines from a killed writer (partial last line) are skipped."""
    rows: list[dict[str, Any]] = []
    if not Path(path).is_file():
        return rows
    # A received file may hold anything: bytes that are not UTF-8 become U+FFFD (that line then fails to
    # parse and is skipped), and a line nested past the JSON decoder's recursion limit is skipped too.
    for line in Path(path).read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except (json.JSONDecodeError, RecursionError):
            continue
    return rows


def truncate_jsonl(path: Path, last_step: int) -> tuple[int, int]:
    """Cut a metrics or events file back to ``last_step`` before a resumed run appends to it.

    A killed run may have logged rows after its last checkpoint; the resumed run logs those steps again,
    so they are dropped here (otherwise steps repeat and go backwards, and the doctor counts updates
    twice). A half-written last line (a kill in mid-write) is dropped too: left in place, the resumed
    run's first line would be glued onto it and lost with it. Lines whose step is not a number are
    kept as they are (this does not judge them). The file is replaced atomically, and only when something
    is dropped. Returns (rows after ``last_step``, unreadable lines) dropped.
    """
    path = Path(path)
    if not path.is_file() and not path.is_symlink():
        return 0, 0
    text = safe_io.read_bytes(path).decode("utf-8", errors="replace")
    kept: list[str] = []
    after = unreadable = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            unreadable += 1
            continue
        step = row.get("step") if isinstance(row, dict) else None
        if isinstance(step, (int, float)) and not isinstance(step, bool) and step > last_step:
            after += 1
            continue
        kept.append(line)
    if after or unreadable or (text and not text.endswith("\n")):
        safe_io.write_atomic(path, "".join(f"{line}\n" for line in kept))
    return after, unreadable


@dataclass(frozen=True)
class ProgressUnits:
    """What a run's progress line counts (``run.total_steps`` is in these units) and the number it shows
    beside the rate: an env run counts env steps and shows the episode return; a language-model run counts
    responses, demonstrations or pairs and shows its own score."""

    step: str = "steps"
    score_key: str = names.RETURN_MEAN
    score_label: str = "return"
    score_format: str = "8.1f"


ENV_UNITS = ProgressUnits()


class ConsoleDisplay:
    """A rich progress bar on a terminal (steps, steps/s, recent return, time left); plain
    periodic lines when output is not a terminal (CI logs, files)."""

    BAR_SECONDS = 0.1
    LINE_SECONDS = 5.0

    def __init__(
        self, total_steps: int, start_step: int, enabled: bool, label: str, units: ProgressUnits = ENV_UNITS
    ) -> None:
        self.units = units
        self.console = console(stderr=True)
        self.total = total_steps
        self.interactive = enabled and self.console.is_terminal
        self.enabled = enabled
        self.last_line = 0.0
        self.last_bar = 0.0
        self.unshown: dict[str, Any] | None = None  # the newest metrics the bar does not show yet
        self.progress = None
        if self.interactive:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[sps]:>14}"),
                TextColumn("{task.fields[ret]}"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self.task = self.progress.add_task(
                label, total=total_steps, completed=start_step, sps=f"- {units.step}/s", ret=f"{units.score_label} -"
            )
            self.progress.start()

    def update(self, metrics: dict[str, Any]) -> None:
        """Called every update; the bar changes at most every ``BAR_SECONDS`` (rich redraws it 10 times a
        second anyway), a plain line at most every ``LINE_SECONDS``, so most calls cost a clock read."""
        now = time.monotonic()
        if self.progress is not None:
            self.unshown = metrics
            if now - self.last_bar >= self.BAR_SECONDS:
                self.show_bar()
        elif self.enabled and now - self.last_line > self.LINE_SECONDS:
            self.last_line = now
            step, sps, ret = self.fields(metrics)
            print(f"{self.units.step} {step:>9}/{self.total}  {sps:>14}  {ret}", file=sys.stderr, flush=True)

    def fields(self, metrics: dict[str, Any]) -> tuple[int, str, str]:
        """(step, rate, score) as the progress line shows them."""
        units = self.units
        score = metrics.get(units.score_key)
        score_text = f"{units.score_label} " + (
            format(score, units.score_format) if isinstance(score, float) else "-".rjust(8)
        )
        if names.WARMUP_STEPS_PER_SECOND in metrics:  # off-policy warm-up: random actions, no updates
            return int(metrics["step"]), "warm-up", score_text
        return int(metrics["step"]), f"{metrics.get(names.STEPS_PER_SECOND, 0.0):.0f} {units.step}/s", score_text

    def show_bar(self) -> None:
        """Updates the progress bar with the newest metrics it does not show yet, if any."""
        if self.progress is not None and self.unshown is not None:
            step, sps, ret = self.fields(self.unshown)
            self.progress.update(self.task, completed=min(step, self.total), sps=sps, ret=ret)
            self.unshown = None
            self.last_bar = time.monotonic()

    def message(self, kind: str, step: int, text: str) -> None:
        """Prints an event line, styled by its kind (critical, warning, recovery, else dim)."""
        style = {"critical": "bold red", "warning": "yellow", "recovery": "bold magenta"}.get(kind.split(".")[0], "dim")
        self.console.print(f"[{style}]{kind}[/] @ {step}: {text}")

    def close(self) -> None:
        """Shows the last metrics and stops the progress bar, if any."""
        if self.progress is not None:
            self.show_bar()
            self.progress.stop()
