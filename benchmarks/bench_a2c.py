"""pgrad A2C against Stable-Baselines3 A2C, and pgrad REINFORCE / actor-critic, on CartPole-v1.

A2C: rl-zoo CartPole-v1 settings (8 envs, ent_coef 0.0, otherwise SB3 defaults: RMSprop lr 7e-4,
alpha 0.99, eps 1e-5, n_steps 5, gamma 0.99, gae_lambda 1.0, vf_coef 0.5, max_grad_norm 0.5, no
normalisation), the two libraries in the same process, alternating which goes first per seed, one
torch thread. Per seed: env steps and wall-clock seconds of training until the mean return of the
last 20 training episodes first reaches 475 (each run stops there; budget capped at --cap steps).
Wall-clock is counted from the start of training (pgrad: ``OnPolicyRunner.train``; SB3: ``learn``) to
the update at which the target is first seen; both check once per update (every 40 steps).
pgrad runs twice per seed: as shipped (its defaults: TensorBoard, guard, periodic evaluation and
checkpoints on; what a user gets) and bare (all of those off), the three runs' order rotating per seed.
REINFORCE, actor-critic and Pendulum run bare.

REINFORCE with a value baseline and actor-critic (5-step targets): pgrad's CartPole presets, the
same measurement.

    .venv/bin/python benchmarks/bench_a2c.py                      # seeds 1-5 (~5 min on 2 shared cores)
    .venv/bin/python benchmarks/bench_a2c.py --seeds 1 --cap 200000   # a quick check
    .venv/bin/python benchmarks/bench_a2c.py --seeds 1 2 3 --skip-a2c --skip-reinforce --skip-actor-critic \
        --pendulum 200000 --out benchmarks/out/pendulum_a2c_reinforce.md   # continuous actions only

Needs the 'bench' extra: pip install -e '.[bench]'.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_common import (  # run as a script: benchmarks/ is on sys.path
    MODE_NOTE,
    PGRAD_MODES,
    TARGET,
    WINDOW,
    fmt,
    median_or_none,
    rotated,
    seed_table,
    summary_lines,
)

from pgrad.runners.on_policy import OnPolicyRunner
from pgrad.runs import resolve_config

ENV_ID = "CartPole-v1"


class StopAtTarget:
    """A metrics sink that records the first update whose last-20-episode mean reaches the target,
    then asks the trainer to stop (as Ctrl-C would: finish the update, checkpoint, return)."""

    def __init__(self, trainer: OnPolicyRunner) -> None:
        self.trainer = trainer
        self.steps: int | None = None
        self.seconds: float | None = None
        self.cpu_started = time.process_time()
        self.cpu: float | None = None

    def write(self, metrics: dict[str, Any]) -> None:
        episodes, mean = metrics.get("rollout/episodes", 0), metrics.get("rollout/return_mean", -math.inf)
        reached = episodes >= WINDOW and mean >= TARGET
        if reached and self.steps is None:
            self.steps, self.seconds = int(metrics["step"]), float(metrics["perf/wall_seconds"])
            self.cpu = time.process_time() - self.cpu_started
            self.trainer.stop_requested = True

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def pgrad_config(algo: str, seed: int, cap: int, mode: str = "bare"):
    sets = ["run.progress=false", *PGRAD_MODES[mode]]
    return resolve_config(algo, ENV_ID, sets=sets, seed=seed, total_steps=cap)[0]


def run_pgrad(algo: str, seed: int, cap: int, mode: str = "bare") -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        trainer = OnPolicyRunner(pgrad_config(algo, seed, cap, mode), Path(tmp) / "run", console=False)
        stop = StopAtTarget(trainer)
        trainer.sinks.append(stop)
        stop.cpu_started = time.process_time()
        result = trainer.train()
    return {
        "steps": stop.steps,
        "seconds": stop.seconds,
        "cpu": stop.cpu,
        "steps_per_second": result.steps / result.seconds,
    }


def run_sb3(seed: int, cap: int) -> dict[str, Any]:
    from stable_baselines3 import A2C
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    class StopAtTargetSB3(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.returns: deque[float] = deque(maxlen=WINDOW)
            self.steps: int | None = None
            self.seconds: float | None = None

        def _on_training_start(self) -> None:
            self.started, self.cpu_started = time.perf_counter(), time.process_time()
            self.cpu: float | None = None

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "episode" in info:
                    self.returns.append(info["episode"]["r"])
            # Checked once per update, as pgrad does (an update is n_steps = 5 vector steps).
            if self.n_calls % self.model.n_steps == 0 and len(self.returns) == WINDOW:
                if np.mean(self.returns) >= TARGET:
                    self.steps, self.seconds = self.num_timesteps, time.perf_counter() - self.started
                    self.cpu = time.process_time() - self.cpu_started
                    return False
            return True

    env = make_vec_env(ENV_ID, n_envs=8, seed=seed)
    model = A2C("MlpPolicy", env, ent_coef=0.0, seed=seed, device="cpu", verbose=0)
    callback = StopAtTargetSB3()
    started = time.perf_counter()
    model.learn(total_timesteps=cap, callback=callback)
    seconds = time.perf_counter() - started
    return {
        "steps": callback.steps,
        "seconds": callback.seconds,
        "cpu": callback.cpu,
        "steps_per_second": model.num_timesteps / seconds,
    }


LIBS = ["pgrad shipped", "pgrad bare"]


def a2c_section(seeds: list[int], cap: int, lines: list[str]) -> None:
    rows = []
    for index, seed in enumerate(seeds):
        results: dict[str, dict[str, Any]] = {}
        for lib in rotated([*LIBS, "sb3"], index):
            if lib == "sb3":
                results[lib] = run_sb3(seed, cap)
            else:
                results[lib] = run_pgrad("a2c", seed, cap, lib.split()[1])
            print(f"  a2c seed {seed} {lib}: {results[lib]} (load {os.getloadavg()[0]:.1f})", flush=True)
        rows.append((seed, results))
    table, summary = seed_table(rows, LIBS)
    title = f"### A2C vs SB3 A2C, CartPole-v1, to a last-{WINDOW}-episode mean of {TARGET:.0f} (cap {cap:,} steps)"
    lines += [title, "", MODE_NOTE, "", *table, "", *summary_lines(summary, LIBS)]
    # CPU seconds (time.process_time, the whole process) to the target, beside the wall seconds above.
    names = [*LIBS, "sb3"]
    cpu_med = {n: median_or_none([r[n]["cpu"] for _, r in rows]) for n in names}
    per_seed = "; ".join(f"{seed}: " + " / ".join(fmt(r[n]["cpu"], ".1f") for n in names) for seed, r in rows)
    cpu_ratios = ", ".join(
        f"{lib} / sb3 {fmt(cpu_med[lib] / cpu_med['sb3'] if cpu_med[lib] and cpu_med['sb3'] else None, '.3f')}"
        for lib in LIBS
    )
    lines += [
        "",
        f"CPU seconds to {TARGET:.0f} ({' / '.join(names)}), per seed: {per_seed}. Medians: "
        + " / ".join(fmt(cpu_med[n], ".2f") for n in names)
        + f"; {cpu_ratios}.",
    ]
    verdicts = []
    for lib in LIBS:
        ratio = summary.ratio(lib, "seconds")
        verdicts.append(f"{lib} {fmt(ratio, '.3f')} ({'met' if ratio is not None and ratio <= 0.5 else 'NOT met'})")
    lines += [f"Acceptance (pgrad median wall-clock <= 1/2 of SB3's): {'; '.join(verdicts)}.", ""]


def pgrad_only_section(algo: str, title: str, seeds: list[int], cap: int, lines: list[str]) -> None:
    rows = []
    for seed in seeds:
        result = run_pgrad(algo, seed, cap)
        print(f"  {algo} seed {seed}: {result}", flush=True)
        rows.append((seed, result))
    lines += [
        f"### {title}, CartPole-v1, to a last-{WINDOW}-episode mean of {TARGET:.0f} (cap {cap:,} steps)",
        "",
        "| seed | env steps | seconds | steps/s |",
        "|---:|---:|---:|---:|",
    ]
    for seed, r in rows:
        row = f"| {seed} | {fmt(r['steps'], ',d')} | {fmt(r['seconds'], '.1f')} | {r['steps_per_second']:,.0f} |"
        lines.append(row)
    steps = median_or_none([r["steps"] for _, r in rows])
    seconds = median_or_none([r["seconds"] for _, r in rows])
    reached = sum(r["steps"] is not None for _, r in rows)
    lines += [
        "",
        f"Median: {fmt(steps, ',.0f')} env steps, {fmt(seconds, '.1f')} s; "
        f"seeds reaching {TARGET:.0f}: {reached}/{len(rows)}.",
        "",
    ]


def pendulum_section(seeds: list[int], budget: int, lines: list[str]) -> None:
    """Continuous actions at a fixed budget: the mean of the last 20 training episodes at the end."""
    lines += [
        f"### Pendulum-v1 at a fixed budget of {budget:,} steps (pgrad presets or defaults; random policy ~ -1200)",
        "",
        "| algorithm | " + " | ".join(f"seed {seed}" for seed in seeds) + " | median | steps/s (median) |",
        "|---|" + "---:|" * (len(seeds) + 2),
    ]
    for algo in ("a2c", "actor_critic", "reinforce"):
        returns, speeds = [], []
        for seed in seeds:
            config = resolve_config(
                algo, "Pendulum-v1", sets=["run.progress=false", "run.tensorboard=false"], seed=seed, total_steps=budget
            )[0]
            with tempfile.TemporaryDirectory() as tmp:
                result = OnPolicyRunner(config, Path(tmp) / "run", console=False).train()
            returns.append(result.last_metrics["rollout/return_mean"])
            speeds.append(result.steps / result.seconds)
            print(f"  pendulum {algo} seed {seed}: {returns[-1]:.1f}", flush=True)
        cells = " | ".join(f"{r:.1f}" for r in returns)
        lines.append(f"| {algo} | {cells} | {statistics.median(returns):.1f} | {statistics.median(speeds):,.0f} |")
    lines.append("")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--cap", type=int, default=500_000, help="env-step budget per run")
    parser.add_argument("--skip-a2c", action="store_true")
    parser.add_argument("--skip-reinforce", action="store_true")
    parser.add_argument("--skip-actor-critic", action="store_true")
    parser.add_argument("--pendulum", type=int, metavar="STEPS", help="also run Pendulum-v1 at this fixed budget")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/a2c_reinforce.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    import stable_baselines3

    lines = [
        "## A2C, REINFORCE and actor-critic on CartPole-v1",
        "",
        f"Command: `.venv/bin/python {' '.join(['benchmarks/bench_a2c.py', *sys.argv[1:]])}`  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.platform()}, "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}, "
        f"stable-baselines3 {stable_baselines3.__version__}; one torch thread; the machine's 2 cores were shared "
        "with other work, so absolute times are noisy (the A2C comparison alternates libraries per seed).",
        "",
    ]
    if not args.skip_a2c:
        a2c_section(args.seeds, args.cap, lines)
    if not args.skip_reinforce:
        pgrad_only_section("reinforce", "REINFORCE with a value baseline (pgrad preset)", args.seeds, args.cap, lines)
    if not args.skip_actor_critic:
        pgrad_only_section("actor_critic", "Actor-critic, 5-step targets (pgrad preset)", args.seeds, args.cap, lines)
    if args.pendulum:
        pendulum_section(args.seeds, args.pendulum, lines)
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
