"""A3C on CartPole-v1 (2 asynchronous workers, and other counts for comparison): env steps and
wall-clock to a return of 475.

Per seed: a fresh run (the ('a3c', 'CartPole-v1') preset unless --no-preset, plus any --set),
stopped as soon as the mean return of the last 20 training episodes (all workers pooled) first
reaches 475, or at --max-steps. Reported: env steps and wall-clock seconds to that point, both
from the run's metrics.jsonl (wall-clock from the start of ``train()``, so it includes starting
the worker processes), the whole call's wall-clock including building the trainer, and a final
deterministic evaluation (20 episodes) of the checkpoint written when the run stopped.

    .venv/bin/python benchmarks/bench_a3c.py                       # 2 workers, seeds 1-5, ~2 min here
    .venv/bin/python benchmarks/bench_a3c.py --workers 2 1         # and 1 worker, for comparison
    .venv/bin/python benchmarks/bench_a3c.py --seeds 1 2 --set learning_rate=0.001

Asynchronous runs are not reproducible step for step: the same seed gives different numbers on
every run (the OS decides the order in which gradients land), and wall-clock depends on how busy
the machine is (its load average is recorded with the table).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

from pgrad.evaluate import evaluate
from pgrad.monitor.sinks import read_jsonl
from pgrad.runners.asynchronous import A3CRunner
from pgrad.runs import resolve_config

TARGET = 475.0
WINDOW = 20


def first_reach(metrics_path: Path) -> tuple[int, float] | None:
    """(step, wall seconds) of the first metrics row whose last-20-episode mean is >= TARGET."""
    for row in read_jsonl(metrics_path):
        if row.get("rollout/episodes", 0) >= WINDOW and row.get("rollout/return_mean", -1.0) >= TARGET:
            return int(row["step"]), float(row["perf/wall_seconds"])
    return None


def stop_on_target(trainer: A3CRunner, metrics_path: Path, done: threading.Event) -> None:
    """Watch metrics.jsonl and ask the trainer to stop (as Ctrl-C would) once the target is reached."""
    while not done.wait(0.2):
        if first_reach(metrics_path) is not None:
            trainer.stop_requested = True
            return


def run_seed(seed: int, max_steps: int, sets: list[str], preset: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        started = time.perf_counter()
        config, _ = resolve_config(
            "a3c",
            "CartPole-v1",
            sets=["run.progress=false", "run.tensorboard=false", *sets],
            seed=seed,
            total_steps=max_steps,
            use_preset=preset,
        )
        trainer = A3CRunner(config, run_dir, console=False)
        done = threading.Event()
        watcher = threading.Thread(target=stop_on_target, args=(trainer, run_dir / "metrics.jsonl", done), daemon=True)
        watcher.start()
        result = trainer.train()
        done.set()
        total_seconds = time.perf_counter() - started
        reached = first_reach(run_dir / "metrics.jsonl")
        evaluation = evaluate(run_dir, episodes=20, deterministic=True)
    return {
        "seed": seed,
        "steps_to_target": reached[0] if reached else None,
        "seconds_to_target": reached[1] if reached else None,
        "total_seconds": total_seconds,
        "steps": result.steps,
        "steps_per_second": result.steps / result.seconds,
        "eval_mean": evaluation.mean,
    }


def fmt(value: float | None, spec: str) -> str:
    return "not reached" if value is None else format(value, spec)


def median(values: list[float | None]) -> float | None:
    """Median over all seeds, counting a seed that never reached the target as +infinity."""
    if not values:
        return None
    result = statistics.median([float("inf") if v is None else v for v in values])
    return None if result == float("inf") else result


def section(workers: int, rows: list[dict]) -> list[str]:
    reached = [r for r in rows if r["steps_to_target"] is not None]
    lines = [
        f"## {workers} worker{'s' if workers > 1 else ''}",
        "",
        "| seed | env steps to 475 | wall-clock to 475 (s) | whole call (s) | steps/s | eval mean (20 ep) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {fmt(r['steps_to_target'], ',')} | {fmt(r['seconds_to_target'], '.1f')} | "
            f"{r['total_seconds']:.1f} | {r['steps_per_second']:,.0f} | {r['eval_mean']:.1f} |"
        )
    lines += [
        "",
        f"Reached 475: {len(reached)} of {len(rows)} seeds. "
        f"Median env steps to 475: {fmt(median([r['steps_to_target'] for r in rows]), ',.0f')}; "
        f"median wall-clock to 475: {fmt(median([r['seconds_to_target'] for r in rows]), '.1f')} s.",
        "",
    ]
    return lines


def write_results(results: dict[int, list[dict]], args: argparse.Namespace, command: str, path: Path) -> str:
    preset = "none" if args.no_preset else "('a3c', 'CartPole-v1') in src/pgrad/presets.py"
    overrides = f", --set {' '.join(args.set)}" if args.set else ""
    lines = [
        "# A3C on CartPole-v1: env steps and wall-clock to a last-20-episode mean of 475",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other jobs "
        f"(load average at the end: {os.getloadavg()[0]:.1f}), torch {torch.__version__}, 1 torch thread per process. "
        f"Preset: {preset}{overrides}. Cap: {args.max_steps:,} env steps. Wall-clock is measured from the start of "
        "train(), so it includes starting the worker processes; a seed that never reaches 475 counts as infinite "
        "in the medians. Evaluation: the checkpoint written when the run stopped, 20 deterministic episodes.",
        "",
    ]
    for workers, rows in results.items():
        lines += section(workers, rows)
    lines += [
        "Asynchronous runs are not reproducible step for step: rerunning gives different numbers for the same seeds.",
        "",
    ]
    text = "\n".join(lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--workers", type=int, nargs="+", default=[2], help="worker counts to run, one table each")
    parser.add_argument("--max-steps", type=int, default=500_000)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-preset", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("out") / "a3c.md")
    args = parser.parse_args()
    results: dict[int, list[dict]] = {}
    for workers in args.workers:
        for seed in args.seeds:
            row = run_seed(seed, args.max_steps, [*args.set, f"num_workers={workers}"], not args.no_preset)
            print({"workers": workers, **row}, flush=True)
            results.setdefault(workers, []).append(row)
    command = "python benchmarks/bench_a3c.py " + " ".join(
        [
            f"--seeds {' '.join(map(str, args.seeds))}",
            f"--workers {' '.join(map(str, args.workers))}",
            f"--max-steps {args.max_steps}",
        ]
        + [f"--set {item}" for item in args.set]
        + (["--no-preset"] if args.no_preset else [])
    )
    print(write_results(results, args, command, args.out))


if __name__ == "__main__":
    main()
