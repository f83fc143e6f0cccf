"""MAPPO and IPPO (issue 27) on MPE2's simple_spread_v3 (3 agents, 3 landmarks, cooperative), a few seeds.

Each run is ``pgrad train mappo|ippo --env mpe2:simple_spread_v3`` with pgrad's defaults (the MAPPO paper's MPE
settings: lr 7e-4, 10 epochs, one minibatch, entropy 0.01, value normalisation, shared parameters with the
agent's one-hot id) except ``env.num_envs`` and the budget. Seeds are interleaved (seed 1 MAPPO, seed 1 IPPO,
seed 2 IPPO, seed 2 MAPPO, ...). Per run: the mean return of the last 20 training episodes (the team's: the mean
over agents of each agent's episode return, 25 steps), the deterministic evaluation at the end (10 episodes),
wall seconds, env steps per second (one env step = one step of one copy, all 3 agents acting) and the load
average before and after.

    nice -n 10 .venv/bin/python benchmarks/bench_marl.py --seeds 1 2 3 --steps 30000
    nice -n 10 .venv/bin/python benchmarks/bench_marl.py --seeds 1 --steps 5000     # a quick check
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pgrad.monitor.sinks import read_jsonl
from pgrad.runners.multi_agent import MultiAgentRunner, build_team, team_episodes
from pgrad.runs import resolve_config

ENV = "mpe2:simple_spread_v3"


def load() -> str:
    """The 1-minute load average."""
    return Path("/proc/loadavg").read_text().split()[0]


def one_run(algo: str, seed: int, steps: int, num_envs: int, folder: Path) -> dict[str, Any]:
    """One training run and its final evaluation."""
    sets = ["run.progress=false", "run.tensorboard=false", f"env.num_envs={num_envs}", "eval_every=0"]
    config, _ = resolve_config(algo, ENV, sets=sets, seed=seed, total_steps=steps)
    before = load()
    started = time.perf_counter()
    runner = MultiAgentRunner(config, folder / f"{algo}-s{seed}", console=False)
    runner.train()
    wall = time.perf_counter() - started
    envs = build_team(config, 1)
    returns, _ = team_episodes(runner.learner, envs, 10, 10_000 + seed)
    envs.close()
    rows = read_jsonl(folder / f"{algo}-s{seed}" / "metrics.jsonl")
    first = next(r["rollout/return_mean"] for r in rows if "rollout/return_mean" in r)
    last = rows[-1]
    return {
        "algo": algo,
        "seed": seed,
        "steps": runner.step,
        "first_return": first,
        "train_return": last["rollout/return_mean"],
        "eval_return": float(np.mean(returns)),
        "wall_s": wall,
        "steps_per_s": runner.step / wall,
        "load_before": before,
        "load_after": load(),
    }


def main() -> None:
    """Runs the seeds, interleaved, and prints a Markdown table and the raw rows as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=30_000)
    parser.add_argument("--num-envs", type=int, default=8)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, seed in enumerate(args.seeds):
            order = ["mappo", "ippo"] if index % 2 == 0 else ["ippo", "mappo"]
            for algo in order:
                rows.append(one_run(algo, seed, args.steps, args.num_envs, Path(tmp)))
                print(json.dumps(rows[-1]), flush=True)
    header = "| algo | seed | env steps | first return | last 20 | eval (10, det.) | wall s | steps/s | load |"
    print("\n" + header + "\n" + "|---" * 9 + "|")
    for r in rows:
        cells = [r["algo"], r["seed"], f"{r['steps']:,}", f"{r['first_return']:.2f}", f"{r['train_return']:.2f}"]
        cells += [f"{r['eval_return']:.2f}", f"{r['wall_s']:.0f}", f"{r['steps_per_s']:.0f}"]
        print("| " + " | ".join(str(c) for c in cells) + f" | {r['load_before']}-{r['load_after']} |")
    for algo in ("mappo", "ippo"):
        mine = [r for r in rows if r["algo"] == algo]
        medians = {key: np.median([r[key] for r in mine]) for key in ("train_return", "eval_return", "steps_per_s")}
        print(
            f"{algo}: median train return {medians['train_return']:.2f}, median eval {medians['eval_return']:.2f}, "
            f"median {medians['steps_per_s']:.0f} env steps/s"
        )


if __name__ == "__main__":
    main()
