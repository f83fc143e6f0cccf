"""pgrad PPO with its CNN against Stable-Baselines3's ``CnnPolicy`` PPO on an Atari game: steps/s.

Both libraries train on the same environments: ``ALE/Breakout-v5`` built with pgrad's Atari recipe
(``pgrad.envs.atari``: frameskip 1 and no sticky actions in the emulator, 30 no-ops, 4-frame skip
with max-pool, 84x84 grayscale, sign-clipped rewards, 4 stacked frames, i.e. the NoFrameskip-v4
settings), 8 envs in a synchronous vector env, and the same PPO settings (rl-zoo's Atari PPO: n_steps
128, 4 epochs, minibatch 256, lr 2.5e-4, clip 0.1, ent_coef 0.01, vf_coef 0.5, gamma 0.99, GAE 0.95,
one CNN shared by actor and critic, as ``CnnPolicy`` has it). One torch thread each. pgrad runs twice
per round: as shipped (its defaults: TensorBoard, guard, checkpoints, and the guard's evaluation of 5
deterministic episodes at the end of the run, which in a run this short is a third of the time) and
bare (``bench_common.BARE_SETS``: all of those off); SB3 with its defaults (no evaluation). The three
alternate, which one goes first changing per round, so a change in the machine's load hits all;
each run's wall and CPU seconds and the load average before and after are recorded, and the table
reports the ratios to SB3 per round.

    .venv/bin/python benchmarks/bench_atari.py                        # 2 rounds of 3,072 steps (~3 min)
    .venv/bin/python benchmarks/bench_atari.py --rounds 1 --steps 2048

Needs the 'bench' and 'atari' extras: pip install -e '.[bench,atari]'.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import torch
from bench_common import PGRAD_MODES, rotated  # run as a script: benchmarks/ is on sys.path

from pgrad.envs import atari
from pgrad.runners.on_policy import OnPolicyRunner
from pgrad.runs import resolve_config

ENV_ID = "ALE/Breakout-v5"
NUM_ENVS = 8
PGRAD_SETS = [
    f"env.num_envs={NUM_ENVS}",
    "env.vectorization=sync",
    "run.progress=false",
    "ppo.num_steps=128",
    "ppo.num_epochs=4",
    "ppo.minibatch_size=256",
    "ppo.optimizer.learning_rate=0.00025",
    "ppo.clip_eps=0.1",
    "ppo.ent_coef=0.01",
    "ppo.vf_coef=0.5",
    "ppo.gamma=0.99",
    "ppo.gae_lambda=0.95",
    "ppo.network.shared_network=true",
]
SB3_KWARGS = dict(
    n_steps=128,
    n_epochs=4,
    batch_size=256,
    learning_rate=2.5e-4,
    clip_range=0.1,
    ent_coef=0.01,
    vf_coef=0.5,
    gamma=0.99,
    gae_lambda=0.95,
)


def timed(run: Callable[[], int]) -> dict:
    load_before = os.getloadavg()[0]
    started, cpu_started = time.perf_counter(), time.process_time()
    steps = run()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return {
        "steps": steps,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "steps_per_second": steps / wall,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def run_pgrad(seed: int, steps: int, mode: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        sets = [*PGRAD_SETS, *PGRAD_MODES[mode]]
        config, _ = resolve_config("ppo", ENV_ID, sets=sets, seed=seed, total_steps=steps)
        # built outside the timing, as SB3's model is: both time learning alone
        trainer = OnPolicyRunner(config, Path(tmp) / "run", console=False)
        return timed(lambda: trainer.train().steps)


def run_sb3(seed: int, steps: int) -> dict:
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor

    def make_one() -> gym.Env:
        atari.ensure_registered(ENV_ID)
        return atari.preprocess(gym.make(ENV_ID, **atari.emulator_kwargs({})))

    env = VecMonitor(DummyVecEnv([make_one] * NUM_ENVS))
    env.seed(seed)
    model = PPO("CnnPolicy", env, seed=seed, device="cpu", verbose=0, **SB3_KWARGS)
    return timed(lambda: model.learn(total_timesteps=steps).num_timesteps)


LIBS = ["pgrad shipped", "pgrad bare", "sb3"]


def table(rounds: list[dict[str, dict]], steps: int) -> list[str]:
    """Per round: steps/s and CPU seconds of each, and pgrad's ratios to SB3 of both. Under load from
    other processes wall-clock steps/s swings; CPU seconds (this process, every thread) much less."""
    lines = [
        f"{ENV_ID}, {NUM_ENVS} envs, {steps:,} steps per run, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "",
        "| round | first | " + " | ".join(f"{lib} steps/s" for lib in LIBS) + " | "
        "shipped / SB3 steps/s | bare / SB3 steps/s | "
        + " | ".join(f"{lib} wall s / CPU s" for lib in LIBS)
        + " | SB3 / shipped CPU | SB3 / bare CPU | load avg (1 min) before -> after |",
        "|---:|---|" + "---:|" * (2 * len(LIBS) + 4) + "---|",
    ]
    ratios: dict[str, list[float]] = {}
    for index, row in enumerate(rounds):
        sb3 = row["sb3"]
        current = {
            "shipped steps/s": row["pgrad shipped"]["steps_per_second"] / sb3["steps_per_second"],
            "bare steps/s": row["pgrad bare"]["steps_per_second"] / sb3["steps_per_second"],
            "shipped CPU": sb3["cpu_seconds"] / row["pgrad shipped"]["cpu_seconds"],
            "bare CPU": sb3["cpu_seconds"] / row["pgrad bare"]["cpu_seconds"],
        }
        for key, value in current.items():
            ratios.setdefault(key, []).append(value)
        load = f"{min(r['load_before'] for r in row.values()):.2f} -> {max(r['load_after'] for r in row.values()):.2f}"
        lines.append(
            f"| {index + 1} | {rotated(LIBS, index)[0]} | "
            + " | ".join(f"{row[lib]['steps_per_second']:.0f}" for lib in LIBS)
            + f" | {current['shipped steps/s']:.2f} | {current['bare steps/s']:.2f} | "
            + " | ".join(f"{row[lib]['wall_seconds']:.1f} / {row[lib]['cpu_seconds']:.1f}" for lib in LIBS)
            + f" | {current['shipped CPU']:.2f} | {current['bare CPU']:.2f} | {load} |"
        )
    lines += [
        "",
        "Medians over rounds (above 1: pgrad faster): "
        + ", ".join(f"{key} {statistics.median(values):.2f}" for key, values in ratios.items())
        + ".",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3072, help="env steps per run (a multiple of 1,024)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data" / "atari.json")
    parser.add_argument("--table-only", action="store_true", help="print the table of the results in --out")
    args = parser.parse_args()
    if args.table_only:
        saved = json.loads(args.out.read_text())
        print("\n".join(table(saved["rounds"], saved["steps"])))
        return
    torch.set_num_threads(1)  # SB3's; pgrad sets its own from run.torch_threads (1)
    runners: dict[str, Callable[[int, int], dict]] = {
        "pgrad shipped": lambda seed, steps: run_pgrad(seed, steps, "shipped"),
        "pgrad bare": lambda seed, steps: run_pgrad(seed, steps, "bare"),
        "sb3": run_sb3,
    }
    rounds = []
    for index in range(args.rounds):
        seed = index + 1
        row = {}
        for lib in rotated(LIBS, index):
            row[lib] = runners[lib](seed, args.steps)
            print(f"round {index + 1} {lib}: {json.dumps({k: round(v, 2) for k, v in row[lib].items()})}", flush=True)
        rounds.append(row)
    print("\n".join(table(rounds, args.steps)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rounds": rounds, "steps": args.steps, "env": ENV_ID}, indent=1))


if __name__ == "__main__":
    main()
