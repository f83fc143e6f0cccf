"""D4PG against TD3, and TD3 with prioritised against uniform replay, on Pendulum-v1 (issue 28, points 2-3).

Three arms, all from pgrad's TD3 Pendulum preset (rl-baselines3-zoo: gamma 0.98, lr 1e-3, Gaussian noise 0.1,
64x64 networks, learning_starts 1000, one gradient step per env step), with batches of 64 rather than 256 (a
small budget on a shared 2-core machine):

- ``td3``: TD3 as the preset has it (uniform replay);
- ``td3-per``: the same with ``loop.replay=prioritized`` (alpha 0.6, beta 0.4 -> 1 over the run);
- ``d4pg``: D4PG with the same networks, lr, noise and schedule, 51 atoms on [-800, 0] (Pendulum's rewards
  are in [-16.3, 0], so discounted returns at gamma 0.98 lie in [-815, 0]), n = 5, prioritised replay.

Each run trains ``--steps`` env steps (guard on, its evaluation off), then a 10-episode deterministic
``evaluate`` of the last checkpoint. Seeds run in order, the three arms of a seed back to back (the order
rotating per seed); the load average is recorded beside every run. Raw results:
``benchmarks/data/d4pg_pendulum.json``; the table prints as markdown.

    nice -n 10 .venv/bin/python benchmarks/bench_d4pg.py --seeds 1 2 3 --steps 5000
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
ARMS = ("td3", "td3-per", "d4pg")
QUIET = ["run.progress=false", "run.tensorboard=false", "guard.eval_every=0", "run.checkpoint_every=1000000"]
SHARED = ["gamma=0.98", "optimizer.learning_rate=0.001", "exploration_std=0.1", "network.hidden_sizes=[64, 64]"]
LOOP = ["loop.learning_starts=1000", "loop.log_every=1000", "loop.batch_size=64"]


def arm_sets(arm: str) -> tuple[str, list[str]]:
    """(algorithm, its --set list) for an arm."""
    if arm == "d4pg":
        extra = ["v_min=-800", "v_max=0", "n_step=5", "num_atoms=51"]
        return "d4pg", [*QUIET, *(f"d4pg.{s}" for s in [*SHARED, *LOOP, *extra])]
    algo_sets = [*SHARED, *LOOP, *(["loop.replay=prioritized"] if arm == "td3-per" else [])]
    return "td3", [*QUIET, *(f"td3.{s}" for s in algo_sets)]


def run_arm(arm: str, seed: int, steps: int) -> dict[str, Any]:
    """Train one arm for ``steps`` env steps and evaluate its last checkpoint (10 deterministic episodes)."""
    from pgrad.evaluate import evaluate
    from pgrad.runners.off_policy import OffPolicyRunner
    from pgrad.runs import resolve_config

    algo, sets = arm_sets(arm)
    config, _ = resolve_config(algo, "Pendulum-v1", sets=sets, seed=seed, total_steps=steps)
    with tempfile.TemporaryDirectory(prefix="bench_d4pg_") as tmp:
        load_before = os.getloadavg()[0]
        started, cpu_started = time.perf_counter(), time.process_time()
        runner = OffPolicyRunner(config, Path(tmp) / "run", console=False)
        runner.train()
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        events = [json.loads(line) for line in (Path(tmp) / "run" / "events.jsonl").read_text().splitlines()]
        final = evaluate(Path(tmp) / "run", episodes=10, deterministic=True).mean
    return {
        "arm": arm,
        "seed": seed,
        "steps": steps,
        "final_eval": final,
        "wall": wall,
        "cpu": cpu,
        "load": [load_before, os.getloadavg()[0]],
        "rollbacks": sum(e["kind"] == "recovery.rollback" for e in events),
    }


def table(results: list[dict[str, Any]]) -> list[str]:
    """The markdown table: one row per seed, each arm's final evaluation and wall seconds, then the medians."""
    seeds = sorted({r["seed"] for r in results})
    by = {(r["arm"], r["seed"]): r for r in results}
    head = "| seed | " + " | ".join(f"{arm} eval | {arm} s" for arm in ARMS) + " | load |"
    lines = [head, "|" + "---|" * (2 * len(ARMS) + 2)]
    for seed in seeds:
        cells = []
        for arm in ARMS:
            r = by.get((arm, seed))
            cells += [f"{r['final_eval']:.0f}", f"{r['wall']:.0f}"] if r else ["-", "-"]
        loads = [r["load"][0] for arm in ARMS if (r := by.get((arm, seed)))]
        lines.append(f"| {seed} | " + " | ".join(cells) + f" | {statistics.mean(loads):.1f} |")
    medians = []
    for arm in ARMS:
        evals = [r["final_eval"] for r in results if r["arm"] == arm]
        walls = [r["wall"] for r in results if r["arm"] == arm]
        medians += [f"{statistics.median(evals):.0f}", f"{statistics.median(walls):.0f}"] if evals else ["-", "-"]
    lines.append("| median | " + " | ".join(medians) + " | |")
    return lines


def main() -> None:
    """Run the seeds' arms in rotating order, save the raw results, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--out", type=Path, default=HERE / "data" / "d4pg_pendulum.json")
    args = parser.parse_args()
    results = []
    for index, seed in enumerate(args.seeds):
        for arm in ARMS[index % len(ARMS) :] + ARMS[: index % len(ARMS)]:
            result = run_arm(arm, seed, args.steps)
            results.append(result)
            print(json.dumps(result), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1))
    print("\n".join(table(results)))


if __name__ == "__main__":
    main()
