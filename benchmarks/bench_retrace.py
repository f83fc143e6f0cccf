"""SAC with Retrace(lambda) critic targets against plain SAC on Pendulum-v1 (issue 28, point 5).

Two arms, both from pgrad's SAC Pendulum preset (rl-baselines3-zoo: lr 1e-3, 64x64 networks, SB3's defaults
otherwise: batch 256, learning_starts 100, one gradient step per env step):

- ``sac``: SAC's one-step soft TD target;
- ``retrace``: ``loop.q_target=retrace``, lambda 1, sequences of n = 5 steps.

Each run trains ``--steps`` env steps (guard on, its evaluation off), logging the mean return of the last
training episodes every 1000 steps, then a 10-episode deterministic ``evaluate`` of the last checkpoint. Seeds
run in order, the arms of a seed back to back (the order alternating per seed); the load average is recorded
beside every run. Raw results: ``benchmarks/data/retrace_pendulum.json``; the table prints as markdown.

    nice -n 19 .venv/bin/python benchmarks/bench_retrace.py --seeds 1 2 --steps 15000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ARMS = ("sac", "retrace")
QUIET = ["run.progress=false", "run.tensorboard=false", "guard.eval_every=0", "run.checkpoint_every=1000000"]
RETRACE = ["sac.loop.q_target=retrace", "sac.loop.retrace_lambda=1.0", "sac.loop.retrace_steps=5"]
CURVE_AT = (3000, 6000, 9000, 12000, 15000)  # env steps at which the table shows the training return


def run_arm(arm: str, seed: int, steps: int) -> dict[str, Any]:
    """Train one arm for ``steps`` env steps; its training-return curve and final 10-episode evaluation."""
    from pgrad.evaluate import evaluate
    from pgrad.runners.off_policy import OffPolicyRunner
    from pgrad.runs import resolve_config

    sets = [*QUIET, "sac.loop.log_every=1000", *(RETRACE if arm == "retrace" else [])]
    config, _ = resolve_config("sac", "Pendulum-v1", sets=sets, seed=seed, total_steps=steps)
    with tempfile.TemporaryDirectory(prefix="bench_retrace_") as tmp:
        load_before = os.getloadavg()
        started, cpu_started = time.perf_counter(), time.process_time()
        runner = OffPolicyRunner(config, Path(tmp) / "run", console=False)
        runner.train()
        runner.close()
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        rows = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
        final = evaluate(Path(tmp) / "run", episodes=10, deterministic=True).mean
    return {
        "arm": arm,
        "seed": seed,
        "steps": steps,
        "final_eval": final,
        "curve": {int(r["step"]): r.get("rollout/return_mean") for r in rows},
        "trace_mean": [r.get("retrace/trace_mean") for r in rows if "retrace/trace_mean" in r],
        "wall": wall,
        "cpu": cpu,
        "load_before": list(load_before),
        "load_after": list(os.getloadavg()),
    }


def table(results: list[dict[str, Any]]) -> list[str]:
    """The markdown table: one row per run (training return at CURVE_AT, final evaluation, seconds, load)."""
    head = "| arm | seed | " + " | ".join(f"return @{s // 1000}k" for s in CURVE_AT) + " | final eval | s | load |"
    lines = [head, "|" + "---|" * (len(CURVE_AT) + 5)]
    for r in sorted(results, key=lambda r: (r["arm"], r["seed"])):
        curve = [r["curve"].get(s) for s in CURVE_AT]
        cells = ["-" if v is None else f"{v:.0f}" for v in curve]
        lines.append(
            f"| {r['arm']} | {r['seed']} | " + " | ".join(cells) + f" | {r['final_eval']:.0f} | {r['wall']:.0f} | "
            f"{r['load_before'][0]:.1f} |"
        )
    for arm in ARMS:
        evals = [r["final_eval"] for r in results if r["arm"] == arm]
        if evals:
            lines.append(f"| {arm} median | | " + " | " * len(CURVE_AT) + f"{statistics.median(evals):.0f} | | |")
    return lines


def main() -> None:
    """Run the seeds' arms in alternating order, save the raw results, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=15000)
    parser.add_argument("--out", type=Path, default=HERE / "data" / "retrace_pendulum.json")
    args = parser.parse_args()
    results = []
    for index, seed in enumerate(args.seeds):
        for arm in ARMS[index % 2 :] + ARMS[: index % 2]:
            result = run_arm(arm, seed, args.steps)
            results.append(result)
            print(json.dumps(result), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1))
    print("\n".join(table(results)))


if __name__ == "__main__":
    main()
