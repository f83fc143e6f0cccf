"""Recurrent PPO against feed-forward PPO on CartPole-v1 with the velocities masked (issue 26).

pgrad's wrapper hides the cart and pole velocities (``env.mask_velocity=true``: observation entries 1 and 3
set to 0, sb3-contrib's CartPoleNoVel-v1). Both runs use pgrad's CartPole-v1 preset (the zoo's PPO settings:
8 envs, num_steps 32, 20 epochs, minibatch 256, gamma 0.98, lambda 0.8, lr 1e-3 annealed, clip 0.2 annealed)
and the same step budget; the recurrent one adds ``network.recurrent=lstm`` (64 units, separate actor and critic
cores, sequences of 16 steps). Per seed: the best and the final mean return of the last 20 training episodes,
the first step where that mean reached 475, a final deterministic evaluation of 20 episodes on separate envs,
and the wall-clock seconds (one torch thread).

    .venv/bin/python benchmarks/bench_recurrent.py --seeds 1 2 --steps 100000
    .venv/bin/python benchmarks/bench_recurrent.py --seeds 1 --variants lstm --out benchmarks/out/rnn.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pgrad.envs import make_vector_env
from pgrad.monitor.evaluation import EVAL_SEED_OFFSET, run_episodes
from pgrad.runners.on_policy import OnPolicyRunner
from pgrad.runs import resolve_config

ENV_ID = "CartPole-v1"
TARGET = 475.0
VARIANTS = {
    "lstm": ["ppo.network.recurrent=lstm", "ppo.network.recurrent_size=64", "ppo.network.sequence_length=16"],
    "feed-forward": [],
}


def one_run(variant: str, seed: int, steps: int) -> dict[str, float | None]:
    """Train one variant on one seed; its training curve's summary, final evaluation and wall-clock seconds."""
    sets = ["env.mask_velocity=true", "run.progress=false", "run.tensorboard=false", "guard.eval_every=0"]
    sets += VARIANTS[variant]
    config, _ = resolve_config("ppo", ENV_ID, sets=sets, seed=seed, total_steps=steps)
    with tempfile.TemporaryDirectory() as folder:
        runner = OnPolicyRunner(config, Path(folder) / "run", console=False)
        started = time.perf_counter()
        runner.train()
        seconds = time.perf_counter() - started
        rows = [json.loads(line) for line in (Path(folder) / "run" / "metrics.jsonl").read_text().splitlines()]
        envs = make_vector_env(config.env, num_envs=4)
        returns, _ = run_episodes(
            runner.algo.acting_policy(),
            envs,
            runner.env.adapter,
            runner.collector.obs_normalizer,
            20,
            True,
            seed + EVAL_SEED_OFFSET,
        )
        envs.close()
    curve = [(row["step"], row["rollout/return_mean"]) for row in rows if "rollout/return_mean" in row]
    reached = next((step for step, value in curve if value >= TARGET), None)
    return {
        "best_train": max(value for _, value in curve),
        "final_train": curve[-1][1],
        "reached_475_at": reached,
        "eval_mean": float(np.mean(returns)),
        "seconds": seconds,
    }


def main() -> None:
    """Runs the variants over the seeds, seeds interleaved; prints (and with --out writes) a markdown table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines = [
        f"CartPole-v1, velocities masked, {args.steps} steps, torch {torch.__version__}, "
        f"Python {sys.version.split()[0]}",
        "",
        "| variant | seed | best train mean | final train mean | first step >= 475 | final eval (20 ep) | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    results: dict[str, list[dict[str, float | None]]] = {v: [] for v in args.variants}
    for seed in args.seeds:
        for variant in args.variants:
            r = one_run(variant, seed, args.steps)
            results[variant].append(r)
            line = (
                f"| {variant} | {seed} | {r['best_train']:.1f} | {r['final_train']:.1f} | {r['reached_475_at']} "
                f"| {r['eval_mean']:.1f} | {r['seconds']:.0f} |"
            )
            print(line, flush=True)
            lines.append(line)
    lines.append("")
    for variant, runs in results.items():
        evals = [float(r["eval_mean"] or 0.0) for r in runs]
        hit = sum(r["reached_475_at"] is not None for r in runs)
        lines.append(
            f"- {variant}: final eval median {statistics.median(evals):.1f}, training mean reached 475 in {hit}/"
            f"{len(runs)} seeds, median {statistics.median(float(r['seconds'] or 0) for r in runs):.0f} s"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
