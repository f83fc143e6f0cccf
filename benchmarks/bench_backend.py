"""Whole runs of PPO and A2C with the NumPy hand-gradient backend on and off: speed and learning.

    .venv/bin/python benchmarks/bench_backend.py                                  # every case, seeds 1-3
    .venv/bin/python benchmarks/bench_backend.py --cases ppo-cartpole --seeds 1   # one case, one seed

``gradient_backend: auto`` (PPO's and A2C's default) computes the gradients by hand in NumPy on the
CPU (``pgrad.algos.numpy_grad``; equal to autograd of the same loss, tested); ``autograd`` is the
reference path. Each run is the whole ``OnPolicyRunner`` as shipped (its defaults: TensorBoard, guard,
evaluation and checkpoints on; construction, ``train()`` and ``close()``), from the algorithm's preset
for the env, one torch thread; the two backends alternate on the same seed, the first of the pair
changing from seed to seed. Each run's own ``run.started`` event says which backend it resolved (so
"numpy" below is what ``auto`` really ran).

Speed: wall seconds (``time.perf_counter``) and CPU seconds of the process (``time.process_time``),
env steps per wall second, and the autograd / numpy ratio of each seed's pair (measured a few seconds
apart, so the steadier figure on a shared machine). Learning: the final mean return of the last
``run.episode_window`` training episodes, the mean of that windowed return over every logged update
(the area under the learning curve, per update), and the last deterministic evaluation. The two
backends compute the same gradients up to float32 rounding, so a seed's two runs start identical and
drift apart as rounding differences grow; learning should agree in distribution, not run for run.
Every run's numbers go to ``--data`` (JSON), the tables to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pgrad.monitor.sinks import read_jsonl
from pgrad.runners.on_policy import OnPolicyRunner
from pgrad.runs import resolve_config


@dataclass(frozen=True)
class Case:
    algo: str
    env_id: str
    total_steps: int | None  # None: the preset's budget


CASES = {
    "ppo-cartpole": Case("ppo", "CartPole-v1", None),  # preset: 100k
    # below the presets' budgets, so that the whole table fits in ~30 minutes of a shared 2-core machine
    "a2c-cartpole": Case("a2c", "CartPole-v1", 100_000),  # preset: 500k
    "ppo-pendulum": Case("ppo", "Pendulum-v1", 100_000),  # preset: 200k
    "a2c-pendulum": Case("a2c", "Pendulum-v1", 100_000),  # preset: 1M
    "ppo-halfcheetah": Case("ppo", "HalfCheetah-v5", 50_000),  # preset (CleanRL's): 1M
}
BACKENDS = {"numpy": "auto", "autograd": "autograd"}  # what each column sets gradient_backend to


def run_once(case: Case, backend: str, seed: int, total_steps: int | None) -> dict[str, Any]:
    """One whole run as shipped; its times, what it resolved, and its returns."""
    sets = ["run.progress=false", f"{case.algo}.gradient_backend={BACKENDS[backend]}"]
    config = resolve_config(case.algo, case.env_id, sets=sets, seed=seed, total_steps=total_steps)[0]
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cpu, wall = time.process_time(), time.perf_counter()
        result = OnPolicyRunner(config, run_dir, console=False).train()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        started = read_jsonl(run_dir / "events.jsonl")[0]
        rows = read_jsonl(run_dir / "metrics.jsonl")
    curve = [row["rollout/return_mean"] for row in rows if row.get("rollout/return_mean") is not None]
    evals = [row["eval/return_mean"] for row in rows if row.get("eval/return_mean") is not None]
    return {
        "resolved": started["resolved"]["gradient_backend"],
        "steps": result.steps,
        "wall": wall,
        "cpu": cpu,
        "load": os.getloadavg()[0],
        "final_return": curve[-1] if curve else None,
        "mean_return": statistics.fmean(curve) if curve else None,
        "final_eval": evals[-1] if evals else None,
    }


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def case_table(name: str, runs: dict[tuple[str, int], dict[str, Any]], seeds: list[int]) -> list[str]:
    """One case: a row per backend (medians over seeds), then the per-seed pairs and their ratios."""
    first = runs[("numpy", seeds[0])]
    lines = [
        f"#### {name}: {CASES[name].algo} on {CASES[name].env_id}, {first['steps']:,} steps, seeds "
        f"{' '.join(map(str, seeds))}",
        "",
        "| backend (resolved) | wall s | CPU s | steps/s | final return | mean return over the run | last eval |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for backend in BACKENDS:
        rows = [runs[(backend, seed)] for seed in seeds]
        resolved = ",".join(sorted({r["resolved"] for r in rows}))
        lines.append(
            f"| {backend} ({resolved}) | {median([r['wall'] for r in rows]):.1f} "
            f"| {median([r['cpu'] for r in rows]):.1f} "
            f"| {median([r['steps'] / r['wall'] for r in rows]):,.0f} "
            f"| {fmt(median([r['final_return'] for r in rows]), '.1f')} "
            f"| {fmt(median([r['mean_return'] for r in rows]), '.1f')} "
            f"| {fmt(median([r['final_eval'] for r in rows]), '.1f')} |"
        )
    lines += [
        "",
        "| seed | wall s numpy / autograd | CPU s numpy / autograd | autograd / numpy wall | CPU | "
        "final return numpy / autograd | mean return numpy / autograd | load |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for seed in seeds:
        fast, ref = runs[("numpy", seed)], runs[("autograd", seed)]
        lines.append(
            f"| {seed} | {fast['wall']:.1f} / {ref['wall']:.1f} | {fast['cpu']:.1f} / {ref['cpu']:.1f} "
            f"| {ref['wall'] / fast['wall']:.2f} | {ref['cpu'] / fast['cpu']:.2f} "
            f"| {fmt(fast['final_return'], '.1f')} / {fmt(ref['final_return'], '.1f')} "
            f"| {fmt(fast['mean_return'], '.1f')} / {fmt(ref['mean_return'], '.1f')} "
            f"| {min(fast['load'], ref['load']):.1f}-{max(fast['load'], ref['load']):.1f} |"
        )
    wall_ratios = [runs[("autograd", s)]["wall"] / runs[("numpy", s)]["wall"] for s in seeds]
    cpu_ratios = [runs[("autograd", s)]["cpu"] / runs[("numpy", s)]["cpu"] for s in seeds]
    lines += [
        "",
        f"Median per-seed ratio autograd / numpy: wall {statistics.median(wall_ratios):.2f}, "
        f"CPU {statistics.median(cpu_ratios):.2f}.",
        "",
    ]
    return lines


def save_data(path: Path, began: str, commit: str, records: list[dict[str, Any]]) -> None:
    """Every run so far, with the command, commit and start time, as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": sys.argv, "commit": commit, "began_utc": began, "torch": torch.__version__}
    path.write_text(json.dumps({"meta": meta, "runs": records}, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=None, help="env steps per run (default: each case's)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/backend.md"))
    parser.add_argument("--data", type=Path, default=Path("benchmarks/out/backend.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    began = time.strftime("%Y-%m-%d %H:%M", time.gmtime())

    records: list[dict[str, Any]] = []
    tables: list[str] = []
    for name in args.cases:
        case = CASES[name]
        steps = args.steps or case.total_steps
        for backend in BACKENDS:  # warm-up, not recorded: imports, first env and model builds
            run_once(case, backend, args.seeds[0], 4_096)
        runs: dict[tuple[str, int], dict[str, Any]] = {}
        for index, seed in enumerate(args.seeds):
            order = list(BACKENDS)[index % 2 :] + list(BACKENDS)[: index % 2]
            for backend in order:
                r = run_once(case, backend, seed, steps)
                runs[(backend, seed)] = r
                records.append({"case": name, "backend": backend, "seed": seed, **r})
                save_data(args.data, began, commit, records)  # after every run: a killed run keeps what it did
                print(
                    f"  {name} seed {seed} {backend:>8} (resolved {r['resolved']}): wall {r['wall']:6.1f} s  "
                    f"cpu {r['cpu']:6.1f} s  final {fmt(r['final_return'], '.1f')}  "
                    f"mean {fmt(r['mean_return'], '.1f')}  eval {fmt(r['final_eval'], '.1f')}  load {r['load']:.2f}",
                    flush=True,
                )
        tables += case_table(name, runs, args.seeds)

    loads = [r["load"] for r in records]
    header = [
        "### Gradient backend on and off: whole runs as shipped, one torch thread",
        "",
        f"Command: `.venv/bin/python {' '.join(['benchmarks/bench_backend.py', *sys.argv[1:]])}` at commit {commit}, "
        f"{began}-{time.strftime('%H:%M UTC', time.gmtime())}; {platform.machine()}, {os.cpu_count()} cores "
        f"shared with other work (1-minute load average {min(loads):.1f}-{max(loads):.1f}), "
        f"Python {platform.python_version()}, torch {torch.__version__}.",
        "",
    ]
    text = "\n".join(header + tables)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(f"written to {args.out} and {args.data}")


if __name__ == "__main__":
    main()
