"""What pgrad's defaults cost: fixed-step runs as shipped (TensorBoard, guard, periodic evaluation,
checkpoints on) against the bare loop (all of them off), interleaved, in one process.

    .venv/bin/python benchmarks/bench_overhead.py                        # A2C and PPO, CartPole presets, seeds 1-3
    .venv/bin/python benchmarks/bench_overhead.py --algos a2c --steps 50000 --seeds 1
    .venv/bin/python benchmarks/bench_overhead.py --variants shipped bare no-tb no-eval no-guard   # where it goes

Each run is the whole ``OnPolicyRunner`` (construction, ``train()`` to ``--steps`` env steps, the final
checkpoint and ``close()``), with the algorithm's CartPole-v1 preset and one torch thread; the order of
the variants rotates from seed to seed. Wall seconds (``time.perf_counter``) and CPU seconds of the
whole process (``time.process_time``: every thread, so work moved to a background thread still counts)
are printed per run, with the 1-minute load average. A seed's run is deterministic, so its repeats
(``--repeats``, rounds interleaved) differ only by the machine's noise, which only adds time: each
(variant, seed) counts with its fastest repeat, and the table gives the median over seeds of those,
and each variant's ratio to the bare loop's. On a shared machine the CPU seconds are the steadier measure.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from pgrad.runners.on_policy import OnPolicyRunner
from pgrad.runs import resolve_config

BARE = ["run.tensorboard=false", "guard.enabled=false", "guard.eval_every=0", "run.checkpoint_every=1000000000"]
VARIANTS = {
    "shipped": [],  # pgrad's defaults: what a user runs
    "bare": BARE,
    "no-tb": ["run.tensorboard=false"],  # ablations: the defaults less one thing
    "no-eval": ["guard.eval_every=0"],
    "no-guard": ["guard.enabled=false"],
    "no-ckpt": ["run.checkpoint_every=1000000000", "guard.eval_every=0"],  # evaluations also checkpoint
}


def run_once(algo: str, variant: str, seed: int, steps: int) -> dict[str, float]:
    config = resolve_config(
        algo, "CartPole-v1", sets=["run.progress=false", *VARIANTS[variant]], seed=seed, total_steps=steps
    )[0]
    with tempfile.TemporaryDirectory() as tmp:
        cpu, wall = time.process_time(), time.perf_counter()
        result = OnPolicyRunner(config, Path(tmp) / "run", console=False).train()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"wall": wall, "cpu": cpu, "steps": result.steps, "load": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=["a2c", "ppo"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=100_000, help="env steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per (variant, seed); the fastest counts")
    parser.add_argument("--variants", nargs="+", default=["shipped", "bare"], choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/overhead.md"))
    args = parser.parse_args()
    if "bare" not in args.variants:
        args.variants.append("bare")
    torch.set_num_threads(1)

    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for algo in args.algos:
        run_once(algo, "bare", args.seeds[0], 2_000)  # warm-up: imports, first env build
        runs: dict[tuple[str, int], list[dict[str, float]]] = {}
        turn = 0
        for repeat in range(args.repeats):
            for seed in args.seeds:
                shift = turn % len(args.variants)
                turn += 1
                for variant in args.variants[shift:] + args.variants[:shift]:
                    r = run_once(algo, variant, seed, args.steps)
                    runs.setdefault((variant, seed), []).append(r)
                    print(
                        f"  {algo} seed {seed} {variant:>8} (repeat {repeat + 1}): wall {r['wall']:6.2f} s  "
                        f"cpu {r['cpu']:6.2f} s  load {r['load']:.2f}",
                        flush=True,
                    )
        # A seed's run is deterministic, so its repeats differ only by the machine's noise, which only
        # ever adds time: each (variant, seed) counts with its fastest repeat (wall and CPU separately).
        for variant in args.variants:
            for seed in args.seeds:
                reps = runs[(variant, seed)]
                best = {
                    "wall": min(r["wall"] for r in reps),
                    "cpu": min(r["cpu"] for r in reps),
                    "load": max(r["load"] for r in reps),
                }
                results.setdefault((algo, variant), []).append(best)

    loads = [r["load"] for rows in results.values() for r in rows]
    lines = [
        f"### Cost of the defaults: fixed {args.steps:,}-step runs, CartPole-v1 presets, seeds "
        f"{' '.join(map(str, args.seeds))}, fastest of {args.repeats} interleaved repeats each",
        "",
        f"Command: `.venv/bin/python {' '.join(['benchmarks/bench_overhead.py', *sys.argv[1:]])}`  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.machine()}, "
        f"{os.cpu_count()} cores shared with other work (1-minute load average {min(loads):.1f}-{max(loads):.1f}), "
        f"Python {platform.python_version()}, torch {torch.__version__}, one torch thread.",
        "",
        "| algo | variant | wall s (median) | CPU s (median) | wall / bare | CPU / bare | per seed: wall s | CPU s |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for algo in args.algos:
        bare = results[(algo, "bare")]
        bare_wall = statistics.median(r["wall"] for r in bare)
        bare_cpu = statistics.median(r["cpu"] for r in bare)
        for variant in args.variants:
            rows = results[(algo, variant)]
            wall, cpu = statistics.median(r["wall"] for r in rows), statistics.median(r["cpu"] for r in rows)
            walls = " ".join(format(r["wall"], ".2f") for r in rows)
            cpus = " ".join(format(r["cpu"], ".2f") for r in rows)
            lines.append(
                f"| {algo} | {variant} | {wall:.2f} | {cpu:.2f} | {wall / bare_wall:.3f} | {cpu / bare_cpu:.3f} "
                f"| {walls} | {cpus} |"
            )
    lines += [
        "",
        "shipped: pgrad's defaults (TensorBoard, guard, evaluation every 25k steps, checkpoints every 25k steps); "
        f"bare: `{' '.join(BARE)}`.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
