"""pgrad TRPO against sb3-contrib TRPO on CartPole-v1; pgrad NPG and adaptive-KL PPO; all on Pendulum-v1.

CartPole-v1, to a target: per seed, env steps and wall-clock seconds of training until the mean
return of the last 20 training episodes first reaches 475 (the run stops there; --cap steps at
most). Both libraries check once per update, after the update; wall-clock is counted from the
start of training (pgrad: ``OnPolicyRunner.train``; SB3: ``learn``). TRPO settings are rl-baselines3-zoo
hyperparams/trpo.yml for CartPole-v1 on both sides (2 envs, n_steps 512, value minibatch 512,
cg_damping 1e-3, gae_lambda 0.98, gamma 0.99, value lr 1e-3, 20 value epochs; sb3-contrib defaults
for the rest: 15 CG iterations, max KL 0.01, line search 0.8 x 10), 64x64 tanh separate
policy/value nets. The two libraries run in the same process, alternating which goes first per
seed, with one torch thread. pgrad TRPO runs twice per seed: as shipped (its defaults: TensorBoard, guard,
periodic evaluation and checkpoints on) and bare (all of those off), the three runs' order rotating per
seed. NPG and adaptive-KL PPO use pgrad's presets and run bare.

Pendulum-v1, at a fixed budget (--pendulum-steps): the mean return of the last 20 training
episodes when the budget is spent, for pgrad trpo / npg / ppo_kl (their Pendulum presets with
run.total_steps replaced by the budget) and sb3-contrib TRPO with the same settings as pgrad's
trpo preset (rl-zoo trpo.yml Pendulum-v1 without gSDE: 2 envs, n_steps 1024, gamma 0.9, 15 critic
updates).

    .venv/bin/python benchmarks/bench_trpo.py                     # seeds 1-5 (~30 min on 2 shared cores)
    .venv/bin/python benchmarks/bench_trpo.py --seeds 1 --skip-pendulum   # a quick check
    .venv/bin/python benchmarks/bench_trpo.py --skip-cartpole --pendulum-algos ppo_kl --pendulum-steps 200000

Needs the 'bench' extra: pip install -e '.[bench]'.
"""

from __future__ import annotations

import argparse
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


class FirstReach:
    """A pgrad metrics sink: remembers the first update whose last-20-episode mean reached TARGET and,
    with ``stop``, asks the trainer to stop there (as Ctrl-C would). Also keeps the last mean."""

    def __init__(self, trainer: OnPolicyRunner, stop: bool) -> None:
        self.trainer, self.stop = trainer, stop
        self.steps: int | None = None
        self.seconds: float | None = None
        self.last_mean: float | None = None

    def write(self, metrics: dict[str, Any]) -> None:
        if metrics.get("rollout/episodes", 0) >= WINDOW:
            self.last_mean = float(metrics["rollout/return_mean"])
            if self.steps is None and self.last_mean >= TARGET:
                self.steps, self.seconds = int(metrics["step"]), float(metrics["perf/wall_seconds"])
                self.trainer.stop_requested = self.stop

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def pgrad_config(algo: str, env_id: str, seed: int, steps: int, mode: str = "bare"):
    sets = ["run.progress=false", *PGRAD_MODES[mode]]
    return resolve_config(algo, env_id, sets=sets, seed=seed, total_steps=steps)[0]


def run_pgrad(
    algo: str, env_id: str, seed: int, steps: int, stop_at_target: bool, mode: str = "bare"
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        trainer = OnPolicyRunner(pgrad_config(algo, env_id, seed, steps, mode), Path(tmp) / "run", console=False)
        probe = FirstReach(trainer, stop_at_target)
        trainer.sinks.append(probe)
        result = trainer.train()
    return {
        "steps": probe.steps,
        "seconds": probe.seconds,
        "final": probe.last_mean,
        "steps_per_second": result.steps / result.seconds,
    }


def run_sb3(env_id: str, seed: int, steps: int, stop_at_target: bool) -> dict[str, Any]:
    from sb3_contrib import TRPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    class FirstReachSB3(BaseCallback):
        """Checks at the start of each rollout, i.e. right after the previous update, as pgrad does."""

        def __init__(self) -> None:
            super().__init__()
            self.returns: deque[float] = deque(maxlen=WINDOW)
            self.steps: int | None = None
            self.seconds: float | None = None

        def _on_training_start(self) -> None:
            self.started = time.perf_counter()

        def _on_rollout_start(self) -> None:
            if self.steps is None and len(self.returns) == WINDOW and np.mean(self.returns) >= TARGET:
                self.steps, self.seconds = self.num_timesteps, time.perf_counter() - self.started

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "episode" in info:
                    self.returns.append(float(info["episode"]["r"]))
            return not (stop_at_target and self.steps is not None)

    if env_id == "CartPole-v1":  # rl-zoo trpo.yml
        settings = dict(
            n_steps=512,
            batch_size=512,
            cg_damping=1e-3,
            gae_lambda=0.98,
            gamma=0.99,
            learning_rate=1e-3,
            n_critic_updates=20,
        )
    else:  # rl-zoo trpo.yml Pendulum-v1 without gSDE
        settings = dict(n_steps=1024, gamma=0.9, n_critic_updates=15)
    env = make_vec_env(env_id, n_envs=2, seed=seed)
    model = TRPO("MlpPolicy", env, seed=seed, device="cpu", verbose=0, **settings)
    callback = FirstReachSB3()
    started = time.perf_counter()
    model.learn(total_timesteps=steps, callback=callback)
    seconds = time.perf_counter() - started
    final = float(np.mean(callback.returns)) if len(callback.returns) == WINDOW else None
    return {
        "steps": callback.steps,
        "seconds": callback.seconds,
        "final": final,
        "steps_per_second": model.num_timesteps / seconds,
    }


LIBS = ["pgrad shipped", "pgrad bare"]


def trpo_vs_sb3(seeds: list[int], cap: int, lines: list[str]) -> None:
    rows = []
    for index, seed in enumerate(seeds):
        results = {}
        for lib in rotated([*LIBS, "sb3"], index):
            if lib == "sb3":
                results[lib] = run_sb3("CartPole-v1", seed, cap, True)
            else:
                results[lib] = run_pgrad("trpo", "CartPole-v1", seed, cap, True, lib.split()[1])
            print(f"  trpo CartPole seed {seed} {lib}: {results[lib]} (load {os.getloadavg()[0]:.1f})", flush=True)
        rows.append((seed, results))
    table, summary = seed_table(rows, LIBS)
    accepted = {
        lib: summary.median[lib]["steps"] is not None and summary.median[lib]["steps"] <= 100_000 for lib in LIBS
    }
    lines += [
        f"### TRPO vs sb3-contrib TRPO, CartPole-v1, to a last-{WINDOW}-episode mean of {TARGET:.0f} "
        f"(cap {cap:,} steps)",
        "",
        MODE_NOTE.replace("SB3 with its own defaults", "sb3-contrib TRPO with the same rl-zoo settings"),
        "",
        *table,
        "",
        *summary_lines(summary, LIBS),
        f"Acceptance (pgrad TRPO reaches {TARGET:.0f} within 100k env steps, median of the seeds): "
        + ", ".join(f"{lib} {'met' if accepted[lib] else 'NOT met'}" for lib in LIBS)
        + ".",
        "",
    ]


def pgrad_to_target(algo: str, seeds: list[int], cap: int, lines: list[str]) -> None:
    rows = [(seed, run_pgrad(algo, "CartPole-v1", seed, cap, True)) for seed in seeds]
    for seed, r in rows:
        print(f"  {algo} CartPole seed {seed}: {r}", flush=True)
    lines += [
        f"### {algo} (pgrad preset), CartPole-v1, to a last-{WINDOW}-episode mean of {TARGET:.0f} (cap {cap:,} steps)",
        "",
        "| seed | env steps | seconds | steps/s |",
        "|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {seed} | {fmt(r['steps'], ',d')} | {fmt(r['seconds'], '.1f')} | {r['steps_per_second']:,.0f} |"
        for seed, r in rows
    ]
    steps = median_or_none([r["steps"] for _, r in rows])
    seconds = median_or_none([r["seconds"] for _, r in rows])
    reached = sum(r["steps"] is not None for _, r in rows)
    lines += [
        "",
        f"Median: {fmt(steps, ',.0f')} env steps, {fmt(seconds, '.1f')} s; "
        f"seeds reaching {TARGET:.0f}: {reached}/{len(rows)}.",
        "",
    ]


def pendulum(seeds: list[int], budget: int, names: list[str], lines: list[str]) -> None:
    every = {
        "trpo": lambda seed: run_pgrad("trpo", "Pendulum-v1", seed, budget, False),
        "npg": lambda seed: run_pgrad("npg", "Pendulum-v1", seed, budget, False),
        "ppo_kl": lambda seed: run_pgrad("ppo_kl", "Pendulum-v1", seed, budget, False),
        "sb3": lambda seed: run_sb3("Pendulum-v1", seed, budget, False),
    }
    runners = {("sb3-contrib TRPO" if name == "sb3" else f"pgrad {name}"): every[name] for name in names}
    finals: dict[str, list[float | None]] = {name: [] for name in runners}
    speeds: dict[str, list[float]] = {name: [] for name in runners}
    for seed in seeds:
        for name, run in runners.items():
            result = run(seed)
            print(f"  Pendulum seed {seed} {name}: {result}", flush=True)
            finals[name].append(result["final"])
            speeds[name].append(result["steps_per_second"])
    lines += [
        f"### Pendulum-v1 at a fixed budget of {budget:,} env steps: last-{WINDOW}-episode mean return",
        "",
        "| algorithm | " + " | ".join(f"seed {s}" for s in seeds) + " | median | steps/s |",
        "|---|" + "---:|" * (len(seeds) + 2),
    ]
    for name in runners:
        values = [v for v in finals[name] if v is not None]
        median = statistics.median(values) if values else None
        lines.append(
            f"| {name} | "
            + " | ".join(fmt(v, ".0f") for v in finals[name])
            + f" | {fmt(median, '.0f')} | {statistics.median(speeds[name]):,.0f} |"
        )
    lines += ["", "Random policy: about -1200; a good swing-up policy: about -150 to -200.", ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--cap", type=int, default=100_000, help="CartPole env-step budget per run")
    parser.add_argument("--pendulum-steps", type=int, default=100_000, help="Pendulum env-step budget per run")
    parser.add_argument("--skip-sb3", action="store_true", help="pgrad TRPO only on CartPole")
    parser.add_argument("--skip-others", action="store_true", help="no npg / ppo_kl on CartPole")
    parser.add_argument("--skip-pendulum", action="store_true")
    parser.add_argument("--skip-cartpole", action="store_true")
    parser.add_argument(
        "--pendulum-algos",
        nargs="+",
        default=["trpo", "npg", "ppo_kl", "sb3"],
        choices=["trpo", "npg", "ppo_kl", "sb3"],
        help="sb3 = sb3-contrib TRPO",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/trpo.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    import sb3_contrib
    import stable_baselines3

    lines = [
        "## TRPO, natural policy gradient and adaptive-KL PPO",
        "",
        f"Command: `.venv/bin/python {' '.join(['benchmarks/bench_trpo.py', *sys.argv[1:]])}`  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.platform()}, "
        f"Python {platform.python_version()}, torch {torch.__version__}, stable-baselines3 "
        f"{stable_baselines3.__version__}, sb3-contrib {sb3_contrib.__version__}; one torch thread; the machine's "
        "2 cores were shared with other sessions, so absolute times are noisy (the comparison alternates "
        "libraries per seed).",
        "",
    ]
    if args.skip_cartpole:
        pass
    elif args.skip_sb3:
        pgrad_to_target("trpo", args.seeds, args.cap, lines)
    else:
        trpo_vs_sb3(args.seeds, args.cap, lines)
    if not args.skip_others and not args.skip_cartpole:
        pgrad_to_target("npg", args.seeds, args.cap, lines)
        pgrad_to_target("ppo_kl", args.seeds, args.cap, lines)
    if not args.skip_pendulum:
        pendulum(args.seeds, args.pendulum_steps, args.pendulum_algos, lines)
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
