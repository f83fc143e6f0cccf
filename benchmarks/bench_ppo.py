"""pgrad PPO against Stable-Baselines3 PPO on the same machine, in the same process, alternating.

CartPole-v1 with the rl-zoo hyper-parameters (8 envs, n_steps 32, minibatch 256, gae_lambda 0.8,
gamma 0.98, 20 epochs, ent_coef 0, learning rate 1e-3 and clip 0.2 both annealed linearly,
100k steps), seeds 1-5, one torch thread. Per seed: env steps and wall-clock seconds until the
mean return of the last 20 training episodes first reaches 475, steps per second, and a final
deterministic evaluation over 20 episodes. HalfCheetah-v5 (1 env, n_steps 2048, 10 epochs,
minibatch 64, 50k steps): steps per second. Pendulum-v1: pgrad's preset, evaluation at 200k.
"Reaches 475" is checked for both libraries once per rollout (pgrad logs one metrics line per
update; SB3 is checked by a callback at rollout end). On CartPole and HalfCheetah pgrad runs twice
per seed: as shipped (its defaults: TensorBoard, guard, periodic evaluation and checkpoints on; what a
user gets) and bare (all of those off), the three runs' order rotating per seed; SB3 runs with its
defaults.

    .venv/bin/python benchmarks/bench_ppo.py                 # everything (~15 min here)
    .venv/bin/python benchmarks/bench_ppo.py --seeds 1 2 --skip-pendulum   # quicker

Needs the 'bench' and 'mujoco' extras: pip install -e '.[bench,mujoco]'.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
from bench_common import MODE_NOTE, PGRAD_MODES, rotated  # run as a script: benchmarks/ is on sys.path

from pgrad.evaluate import evaluate
from pgrad.monitor.sinks import read_jsonl
from pgrad.runners.on_policy import OnPolicyRunner
from pgrad.runs import resolve_config

TARGET = 475.0
WINDOW = 20


# ---- pgrad -------------------------------------------------------------------------------------


class CpuAtTarget:
    """A metrics sink that notes the process CPU seconds (``time.process_time``, every thread) at the
    first update whose last-20-episode mean reaches the target; it does not stop the run."""

    def __init__(self) -> None:
        self.started = time.process_time()
        self.cpu_to: float | None = None

    def write(self, metrics: dict) -> None:
        if self.cpu_to is None and metrics.get("rollout/episodes", 0) >= WINDOW:
            if metrics.get("rollout/return_mean", -1e9) >= TARGET:
                self.cpu_to = time.process_time() - self.started

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def run_pgrad(
    env_id: str, seed: int, total: int, sets: list[str], preset: bool, eval_episodes: int, mode: str = "shipped"
) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        config, _ = resolve_config(
            "ppo",
            env_id,
            sets=["run.progress=false", *PGRAD_MODES[mode], *sets],
            seed=seed,
            total_steps=total,
            use_preset=preset,
        )
        trainer = OnPolicyRunner(config, Path(tmp) / "run", console=False)
        cpu_mark = CpuAtTarget()
        trainer.sinks.append(cpu_mark)
        started, cpu_started = time.perf_counter(), time.process_time()
        cpu_mark.started = cpu_started
        result = trainer.train()
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        steps_to, seconds_to = None, None
        for row in read_jsonl(Path(tmp) / "run" / "metrics.jsonl"):
            if row.get("rollout/episodes", 0) >= WINDOW and row.get("rollout/return_mean", -1e9) >= TARGET:
                steps_to, seconds_to = row["step"], row["perf/wall_seconds"]
                break
        evaluation = evaluate(Path(tmp) / "run", episodes=eval_episodes, deterministic=True) if eval_episodes else None
    return {
        "steps_to_target": steps_to,
        "seconds_to_target": seconds_to,
        "steps_per_second": result.steps / seconds,
        "eval_mean": evaluation.mean if evaluation else None,
        "cpu_to_target": cpu_mark.cpu_to,
        "cpu_seconds": cpu_seconds,
        "wall_seconds": seconds,
    }


# ---- Stable-Baselines3 ------------------------------------------------------------------------


def run_sb3(env_id: str, seed: int, total: int, kwargs: dict, n_envs: int, eval_episodes: int) -> dict:
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    class FirstReach(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.returns: deque[float] = deque(maxlen=WINDOW)
            self.steps_to = self.seconds_to = None

        def _on_training_start(self) -> None:
            self.started, self.cpu_started = time.perf_counter(), time.process_time()
            self.cpu_to = None

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "episode" in info:
                    self.returns.append(info["episode"]["r"])
            return True

        def _on_rollout_end(self) -> None:
            # Checked once per rollout, as pgrad's metrics are (one line per update): the same rule
            # for both libraries, so neither gains from a finer-grained check.
            if self.steps_to is None and len(self.returns) == WINDOW and np.mean(self.returns) >= TARGET:
                self.steps_to, self.seconds_to = self.num_timesteps, time.perf_counter() - self.started
                self.cpu_to = time.process_time() - self.cpu_started

    env = make_vec_env(env_id, n_envs=n_envs, seed=seed)
    model = PPO("MlpPolicy", env, seed=seed, device="cpu", verbose=0, **kwargs)
    callback = FirstReach()
    started, cpu_started = time.perf_counter(), time.process_time()
    model.learn(total_timesteps=total, callback=callback)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    eval_mean = None
    if eval_episodes:
        eval_env = make_vec_env(env_id, n_envs=1, seed=seed + 1_000_003)
        eval_mean, _ = evaluate_policy(model, eval_env, n_eval_episodes=eval_episodes, deterministic=True)
    return {
        "steps_to_target": callback.steps_to,
        "seconds_to_target": callback.seconds_to,
        "steps_per_second": model.num_timesteps / seconds,
        "eval_mean": eval_mean,
        "cpu_to_target": callback.cpu_to,
        "cpu_seconds": cpu_seconds,
        "wall_seconds": seconds,
    }


def linear(initial: float):
    return lambda progress_remaining: progress_remaining * initial


CARTPOLE_PGRAD = [
    "env.num_envs=8",
    "num_steps=32",
    "minibatch_size=256",
    "gae_lambda=0.8",
    "gamma=0.98",
    "num_epochs=20",
    "ent_coef=0.0",
    "learning_rate=0.001",
    "anneal_lr=true",
    "clip_eps=0.2",
    "anneal_clip=true",
]
CARTPOLE_SB3 = dict(
    n_steps=32,
    batch_size=256,
    gae_lambda=0.8,
    gamma=0.98,
    n_epochs=20,
    ent_coef=0.0,
    learning_rate=linear(1e-3),
    clip_range=linear(0.2),
)
CHEETAH_PGRAD = [
    "env.num_envs=1",
    "num_steps=2048",
    "num_epochs=10",
    "minibatch_size=64",
]
CHEETAH_SB3 = dict(n_steps=2048, n_epochs=10, batch_size=64)


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


LIBS = ["pgrad shipped", "pgrad bare"]


def cartpole(seeds: list[int], lines: list[str]) -> None:
    rows = []
    for index, seed in enumerate(seeds):
        results = {}
        for lib in rotated([*LIBS, "sb3"], index):
            if lib == "sb3":
                results[lib] = run_sb3("CartPole-v1", seed, 100_000, CARTPOLE_SB3, 8, 20)
            else:
                results[lib] = run_pgrad("CartPole-v1", seed, 100_000, CARTPOLE_PGRAD, False, 20, lib.split()[1])
            print(f"  seed {seed} {lib}: {json.dumps(results[lib])} (load {os.getloadavg()[0]:.1f})", flush=True)
        rows.append((seed, results))
    lines += [
        MODE_NOTE,
        "",
        "| seed | lib | steps to 475 | seconds to 475 | CPU s to 475 | steps/s | eval mean (20 ep, det.) |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for seed, results in rows:
        for lib in [*LIBS, "sb3"]:
            r = results[lib]
            lines.append(
                f"| {seed} | {lib} | {fmt(r['steps_to_target'], 'd')} | {fmt(r['seconds_to_target'], '.2f')} "
                f"| {fmt(r['cpu_to_target'], '.2f')} | {r['steps_per_second']:.0f} | {fmt(r['eval_mean'], '.1f')} |"
            )

    def median(lib: str, key: str):
        values = [r[lib][key] for _, r in rows if r[lib][key] is not None]
        return statistics.median(values) if values else None

    lines.append("")
    lines.append("| median over seeds | pgrad shipped | pgrad bare | SB3 | shipped / SB3 | bare / SB3 |")
    lines.append("|---|---:|---:|---:|---:|---:|")
    for key in ("seconds_to_target", "cpu_to_target", "steps_to_target", "steps_per_second"):
        shipped, bare, theirs = median("pgrad shipped", key), median("pgrad bare", key), median("sb3", key)
        ratios = [fmt(ours / theirs if ours is not None and theirs else None, ".3f") for ours in (shipped, bare)]
        lines.append(
            f"| {key} | {fmt(shipped, '.2f')} | {fmt(bare, '.2f')} | {fmt(theirs, '.2f')} | {ratios[0]} | {ratios[1]} |"
        )
    reached = {lib: sum(r[lib]["steps_to_target"] is not None for _, r in rows) for lib in [*LIBS, "sb3"]}
    lines.append(
        f"\nSeeds reaching 475: pgrad shipped {reached['pgrad shipped']}/{len(rows)}, "
        f"pgrad bare {reached['pgrad bare']}/{len(rows)}, SB3 {reached['sb3']}/{len(rows)}."
    )


def halfcheetah(seeds: list[int], lines: list[str]) -> None:
    lines += [
        MODE_NOTE,
        "",
        "| seed | pgrad shipped steps/s | pgrad bare steps/s | SB3 steps/s | shipped / SB3 | bare / SB3 "
        "| CPU s shipped / bare / SB3 | wall s shipped / bare / SB3 |",
        "|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    ratios: dict[str, list[float]] = {lib: [] for lib in LIBS}
    cpu_ratios: dict[str, list[float]] = {lib: [] for lib in LIBS}
    for index, seed in enumerate(seeds):
        results = {}
        for lib in rotated([*LIBS, "sb3"], index):
            if lib == "sb3":
                results[lib] = run_sb3("HalfCheetah-v5", seed, 50_000, CHEETAH_SB3, 1, 0)
            else:
                results[lib] = run_pgrad("HalfCheetah-v5", seed, 50_000, CHEETAH_PGRAD, False, 0, lib.split()[1])
            print(
                f"  HalfCheetah seed {seed} {lib}: {results[lib]['steps_per_second']:.0f} steps/s "
                f"(wall {results[lib]['wall_seconds']:.1f} s, CPU {results[lib]['cpu_seconds']:.1f} s, "
                f"load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
        theirs = results["sb3"]["steps_per_second"]
        for lib in LIBS:
            ratios[lib].append(results[lib]["steps_per_second"] / theirs)
            cpu_ratios[lib].append(results["sb3"]["cpu_seconds"] / results[lib]["cpu_seconds"])
        shipped, bare = results["pgrad shipped"]["steps_per_second"], results["pgrad bare"]["steps_per_second"]
        cpus = " / ".join(f"{results[lib]['cpu_seconds']:.1f}" for lib in [*LIBS, "sb3"])
        walls = " / ".join(f"{results[lib]['wall_seconds']:.1f}" for lib in [*LIBS, "sb3"])
        lines.append(
            f"| {seed} | {shipped:.0f} | {bare:.0f} | {theirs:.0f} | {shipped / theirs:.2f}x | {bare / theirs:.2f}x "
            f"| {cpus} | {walls} |"
        )
    lines.append(
        f"\nMedian speed-up on HalfCheetah-v5: shipped {statistics.median(ratios['pgrad shipped']):.2f}x, "
        f"bare {statistics.median(ratios['pgrad bare']):.2f}x SB3's steps per second (by CPU seconds: shipped "
        f"{statistics.median(cpu_ratios['pgrad shipped']):.2f}x, "
        f"bare {statistics.median(cpu_ratios['pgrad bare']):.2f}x)."
    )


def pendulum(seeds: list[int], lines: list[str]) -> None:
    lines += ["| seed | eval mean (20 ep, det.) after 200k steps | steps/s |", "|---:|---:|---:|"]
    means = []
    for seed in seeds:
        result = run_pgrad("Pendulum-v1", seed, 200_000, ["run.tensorboard=false"], True, 20)
        means.append(result["eval_mean"])
        print(f"  Pendulum seed {seed}: {result}", flush=True)
        lines.append(f"| {seed} | {result['eval_mean']:.1f} | {result['steps_per_second']:.0f} |")
    lines.append(f"\nMedian evaluation return: {statistics.median(means):.1f} (target >= -250).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--cheetah-seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--skip-cartpole", action="store_true")
    parser.add_argument("--skip-cheetah", action="store_true")
    parser.add_argument("--skip-pendulum", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/ppo.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    import stable_baselines3

    lines = [
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"stable-baselines3 {stable_baselines3.__version__}, one torch thread, {time.strftime('%Y-%m-%d')}.",
        "",
    ]
    if not args.skip_cartpole:
        lines += ["### PPO, CartPole-v1 (rl-zoo settings, 100k steps)", ""]
        cartpole(args.seeds, lines)
        lines.append("")
    if not args.skip_cheetah:
        lines += ["### PPO, HalfCheetah-v5 (1 env, n_steps 2048, 10 epochs, minibatch 64, 50k steps)", ""]
        halfcheetah(args.cheetah_seeds, lines)
        lines.append("")
    if not args.skip_pendulum:
        lines += ["### PPO, Pendulum-v1 (pgrad preset, 200k steps)", ""]
        pendulum(args.seeds[:3], lines)
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
