"""Metric sinks. Metrics are flat ``{"group/name": float}`` dicts, one per update, with the
groups ``rollout/``, ``train/``, ``diagnostics/``, ``perf/`` and ``eval/``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any


def _clean(value: Any) -> Any:
    # JSON has no NaN/Inf; write them as strings so every line parses everywhere.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class JsonlSink:
    """``metrics.jsonl``: one JSON object per update, flushed each time (tail -f friendly)."""

    def __init__(self, path: Path) -> None:
        self.handle = open(path, "a", buffering=1)

    def write(self, metrics: dict[str, Any]) -> None:
        self.handle.write(json.dumps({k: _clean(v) for k, v in metrics.items()}) + "\n")

    def close(self) -> None:
        self.handle.close()


class TensorBoardSink:
    """TensorBoard event files under ``RUN_DIR/tb``; every metric, grouped by its prefix."""

    def __init__(self, path: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the 'tensorboard' extra

        self.writer = SummaryWriter(str(path))

    def write(self, metrics: dict[str, Any]) -> None:
        step = int(metrics["step"])
        for key, value in metrics.items():
            if "/" in key and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


def tensorboard_sink(path: Path) -> TensorBoardSink | None:
    try:
        return TensorBoardSink(path)
    except ImportError:
        return None


class EventLog:
    """``events.jsonl``: typed events (run started, checkpoint, interrupted, alerts, recoveries)."""

    def __init__(self, path: Path, echo: Any | None = None) -> None:
        self.handle = open(path, "a", buffering=1)
        self.echo = echo

    def emit(self, kind: str, step: int, message: str, show: bool = True, **data: Any) -> dict[str, Any]:
        """Write one event; ``show=False`` keeps it off the console (repeated warnings)."""
        event = {"time": time.time(), "step": step, "kind": kind, "message": message, **data}
        self.handle.write(json.dumps({k: _clean(v) for k, v in event.items()}) + "\n")
        if self.echo is not None and show:
            self.echo(kind, step, message)
        return event

    def close(self) -> None:
        self.handle.close()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a metrics or events file; lines from a killed writer (partial last line) are skipped."""
    rows = []
    if not Path(path).is_file():
        return rows
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class ConsoleDisplay:
    """A rich progress bar on a terminal (steps, steps/s, recent return, time left); plain
    periodic lines when output is not a terminal (CI logs, files)."""

    def __init__(self, total_steps: int, start_step: int, enabled: bool, label: str) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.total = total_steps
        self.interactive = enabled and self.console.is_terminal
        self.enabled = enabled
        self.last_line = 0.0
        self.progress = None
        if self.interactive:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[sps]:>6} steps/s"),
                TextColumn("return {task.fields[ret]}"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self.task = self.progress.add_task(label, total=total_steps, completed=start_step, sps="-", ret="-")
            self.progress.start()

    def update(self, metrics: dict[str, Any]) -> None:
        step = int(metrics["step"])
        ret = metrics.get("rollout/return_mean")
        ret_text = f"{ret:8.1f}" if isinstance(ret, float) else "       -"
        sps = f"{metrics.get('perf/steps_per_second', 0.0):.0f}"
        if self.progress is not None:
            self.progress.update(self.task, completed=min(step, self.total), sps=sps, ret=ret_text)
        elif self.enabled and time.monotonic() - self.last_line > 5.0:
            self.last_line = time.monotonic()
            print(f"step {step:>9}/{self.total}  {sps:>6} steps/s  return {ret_text}", file=sys.stderr, flush=True)

    def message(self, kind: str, step: int, text: str) -> None:
        style = {"critical": "bold red", "warning": "yellow", "recovery": "bold magenta"}.get(kind.split(".")[0], "dim")
        self.console.print(f"[{style}]{kind}[/] @ {step}: {text}")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
