"""Recurrent SAC (R2D2-style sequence replay) against feed-forward SAC on Pendulum-v1 with the velocity masked
(issue 26, point 2).

pgrad's wrapper hides the angular velocity (``env.mask_velocity=true``: the observation is cos, sin, 0), so a
feed-forward policy sees the angle only. All variants use pgrad's SAC Pendulum-v1 preset (the zoo's lr 1e-3, SB3's
defaults otherwise, 64x64 networks, one env) and the same step budget and schedule (``loop.train_freq`` and
``loop.gradient_steps``, one gradient step per two env steps by default to fit a shared CPU); the recurrent ones
add an LSTM core of 32 units for the actor and for the critics, sequences of burn_in 4 + 8 steps every 4 steps,
and start each replayed sequence from the stored state (``stored``) or from zeros (``zero``). Per seed: the best
and final mean return of the last training episodes, a final deterministic evaluation of 10 episodes on separate
envs, and the wall-clock seconds (one torch thread).

    nice -n 10 .venv/bin/python benchmarks/bench_recurrent_offpolicy.py --seeds 1 2 3 --steps 20000
    nice -n 10 .venv/bin/python benchmarks/bench_recurrent_offpolicy.py --seeds 1 --steps 3000 --variants zero

(one variant per process runs the variants side by side; each prints its table rows as they finish)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pgrad.envs import make_vector_env
from pgrad.monitor.evaluation import EVAL_SEED_OFFSET, run_episodes
from pgrad.runners.off_policy import OffPolicyRunner
from pgrad.runs import resolve_config

ENV_ID = "Pendulum-v1"
RECURRENT = [
    "sac.network.recurrent=lstm",
    "sac.network.recurrent_size=32",
    "sac.network.sequence_length=8",
    "sac.loop.burn_in=4",
    "sac.loop.sequence_stride=4",
]
VARIANTS = {
    "stored": [*RECURRENT, "sac.loop.recurrent_state=stored"],
    "zero": [*RECURRENT, "sac.loop.recurrent_state=zero"],
    "feed-forward": [],
}


def one_run(variant: str, seed: int, steps: int, schedule: list[str]) -> dict[str, float]:
    """Train one variant on one seed; its training curve's summary, final evaluation and wall-clock seconds."""
    sets = ["env.mask_velocity=true", "run.progress=false", "run.tensorboard=false", "guard.eval_every=0"]
    sets += [*schedule, *VARIANTS[variant]]
    config, _ = resolve_config("sac", ENV_ID, sets=sets, seed=seed, total_steps=steps)
    with tempfile.TemporaryDirectory() as folder:
        runner = OffPolicyRunner(config, Path(folder) / "run", console=False)
        started = time.perf_counter()
        runner.train()
        seconds = time.perf_counter() - started
        rows = [json.loads(line) for line in (Path(folder) / "run" / "metrics.jsonl").read_text().splitlines()]
        envs = make_vector_env(config.env, num_envs=2)
        returns, _ = run_episodes(
            runner.algo.acting_policy(),
            envs,
            runner.env.adapter,
            runner.collector.obs_normalizer,
            10,
            True,
            seed + EVAL_SEED_OFFSET,
        )
        envs.close()
    curve = [row["rollout/return_mean"] for row in rows if "rollout/return_mean" in row]
    return {
        "best_train": max(curve),
        "final_train": curve[-1],
        "eval_mean": float(np.mean(returns)),
        "seconds": seconds,
    }


def main() -> None:
    """Runs the variants over the seeds, seeds interleaved; prints (and with --out writes) a markdown table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--train-freq", type=int, default=2)
    parser.add_argument("--gradient-steps", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    schedule = [f"sac.loop.train_freq={args.train_freq}", f"sac.loop.gradient_steps={args.gradient_steps}"]
    lines = [
        f"Pendulum-v1, velocity masked, {args.steps} steps, {' '.join(schedule)}, torch {torch.__version__}, "
        f"Python {sys.version.split()[0]}, load average at start {os.getloadavg()[0]:.1f}",
        "",
        "| variant | seed | best train mean | final train mean | final eval (10 ep) | seconds | load |",
        "|---|---|---|---|---|---|---|",
    ]
    results: dict[str, list[dict[str, float]]] = {v: [] for v in args.variants}
    for seed in args.seeds:
        for variant in args.variants:
            r = one_run(variant, seed, args.steps, schedule)
            results[variant].append(r)
            line = (
                f"| {variant} | {seed} | {r['best_train']:.1f} | {r['final_train']:.1f} | {r['eval_mean']:.1f} "
                f"| {r['seconds']:.0f} | {os.getloadavg()[0]:.1f} |"
            )
            print(line, flush=True)
            lines.append(line)
    lines.append("")
    for variant, runs in results.items():
        evals = [r["eval_mean"] for r in runs]
        lines.append(
            f"- {variant}: final eval median {statistics.median(evals):.1f} (per seed "
            f"{', '.join(f'{e:.0f}' for e in evals)}), median {statistics.median(r['seconds'] for r in runs):.0f} s"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
