"""SAC, TD3 and DDPG: speed against Stable-Baselines3, and learning on Pendulum and HalfCheetah.

Three groups:

- ``speed``: HalfCheetah-v5, SAC and TD3, pgrad as shipped (its defaults: guard, evaluation every 25k
  steps, checkpoints, TensorBoard; one env, one gradient step per env step, batch 256, SAC 256x256 and
  TD3 400x300 networks, one torch thread), pgrad bare (guard, evaluation, checkpoints and TensorBoard
  off), pgrad with ``run.torch_threads=2`` (what a user may raise it to), SB3 with its defaults (the
  same hyper-parameters; torch's default thread count, all cores) and SB3 on one torch thread
  (``sb3-1thread``): torch's thread pool loses badly when another process holds a core, so on a
  shared machine SB3's default can be the slower of the two. Each run
  does ``--warmup`` env steps (learning starts at 100) and is then timed over ``--measure`` more: env
  steps per wall second and CPU milliseconds per env step (every thread of the process). The libraries
  run one after another, never together, their order rotating per round; the load average is noted
  beside each run. pgrad's rows say where its time goes (env stepping, gradient steps, the rest).
- ``pendulum``: Pendulum-v1 from pgrad's presets (rl-baselines3-zoo values, 64x64 networks, 20k steps),
  SAC, TD3 and DDPG, seeds 1-3: the guard's deterministic evaluation (10 episodes) every 2,000 steps,
  and a final 10-episode deterministic ``pgrad eval`` of the last checkpoint. Thresholds from the
  issue: SAC and TD3 >= -200, DDPG >= -250.
- ``halfcheetah``: HalfCheetah-v5, pgrad SAC and TD3 as shipped (their defaults, SB3's), seeds 1-2,
  200k steps, a 10-episode deterministic evaluation every 10k steps and a final one; beside them SB3's
  SAC (its defaults) over the first 50k steps of the same seeds, evaluated every 5k steps (10 episodes,
  ``evaluate_policy``; one torch thread, which changes its speed, not what it learns). Threshold:
  pgrad's final evaluation >= 4,000. ``--preset-algos td3`` runs TD3 from pgrad's HalfCheetah preset
  (rl-baselines3-zoo: ``learning_starts`` 10,000; its run folder ends in ``-zoo``), and SB3's runs of
  that algorithm take the same value; SB3's TD3 always gets pgrad's exploration noise, N(0, 0.1^2)
  (SB3's default is none). ``--sb3-algos sac td3`` and ``--sb3-steps`` choose SB3's runs beside.

Every run is its own process (``spawn``); ``--jobs 2`` runs two at once (the learning groups only: the
speed group always runs alone). Raw results go to ``benchmarks/data/offpolicy_<group>.json``, the
HalfCheetah curves to ``benchmarks/plots/offpolicy_halfcheetah.png``; the tables print as markdown.

    .venv/bin/python benchmarks/bench_offpolicy.py --groups speed              # ~5 min here
    .venv/bin/python benchmarks/bench_offpolicy.py --groups pendulum --jobs 2  # ~10 min
    .venv/bin/python benchmarks/bench_offpolicy.py --groups halfcheetah --jobs 2   # ~2.5 h (200k x 4)
    .venv/bin/python benchmarks/bench_offpolicy.py --groups halfcheetah --seeds 1 --total-steps 5000   # smoke

Needs the 'bench', 'mujoco' and 'plots' extras: pip install -e '.[bench,mujoco,plots]'.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench_common import BARE_SETS  # run as a script: benchmarks/ is on sys.path

HERE = Path(__file__).resolve().parent
EVAL_EPISODES = 10
PENDULUM_THRESHOLD = {"sac": -200.0, "td3": -200.0, "ddpg": -250.0}
HALFCHEETAH_THRESHOLD = 4000.0
SB3_CURVE_STEPS = 50_000
SB3_EVAL_EVERY = 5_000
QUIET = ["run.progress=false", "run.tensorboard=false"]


@dataclass
class Job:
    group: str
    lib: str  # "pgrad", "pgrad-bare", "pgrad-2threads", "sb3" or "sb3-1thread"
    algo: str
    env: str
    seed: int
    total_steps: int
    warmup: int = 0  # speed group: env steps before the timed part
    run_root: str | None = None  # learning groups: keep run folders here, and resume one found there
    preset: bool = False  # halfcheetah group: pgrad from its preset (rl-baselines3-zoo), SB3 with the same values
    result: dict[str, Any] = field(default_factory=dict)


def load_average() -> float:
    return os.getloadavg()[0]


# ---- pgrad -------------------------------------------------------------------------------------


class RowClock:
    """A metrics sink noting (env step, wall seconds, CPU seconds) at every row: the speed group times
    the rows after the warm-up, so start-up (imports, env construction, learning_starts) is left out."""

    def __init__(self) -> None:
        self.marks: list[tuple[int, float, float]] = []

    def write(self, metrics: dict) -> None:
        self.marks.append((int(metrics["step"]), time.perf_counter(), time.process_time()))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def pgrad_sets(job: Job) -> list[str]:
    if job.group == "speed":
        extra = {"pgrad-bare": BARE_SETS, "pgrad-2threads": ["run.torch_threads=2"]}.get(job.lib, [])
        return [*QUIET[:1], *extra]
    every = 2_000 if job.group == "pendulum" else 10_000
    # TensorBoard off only to save disk; evaluation every `every` steps, 10 episodes: the learning curve.
    return [*QUIET, f"guard.eval_every={every}", f"guard.eval_episodes={EVAL_EPISODES}"]


def run_pgrad(job: Job) -> dict[str, Any]:
    from pgrad.evaluate import evaluate
    from pgrad.monitor.sinks import read_jsonl
    from pgrad.runners.off_policy import OffPolicyRunner
    from pgrad.runs import load_run_config, resolve_config

    with tempfile.TemporaryDirectory(prefix="bench_offpolicy_") as tmp:
        root = Path(job.run_root) if job.run_root else Path(tmp)
        run_dir = root / f"{job.algo}-{job.env}-s{job.seed}{'-zoo' if job.preset else ''}"
        config, preset = resolve_config(
            job.algo,
            job.env,
            sets=pgrad_sets(job),
            seed=job.seed,
            total_steps=job.total_steps,
            use_preset=job.group == "pendulum" or job.preset,  # HalfCheetah: SB3's defaults unless --preset-algos
        )
        # A run folder left by an earlier, interrupted invocation resumes (bit-exact, buffer included).
        resume = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir())
        if resume:
            config = load_run_config(run_dir, total_steps=job.total_steps)
        runner = OffPolicyRunner(config, run_dir, resume=resume, console=False)
        clock = RowClock()
        runner.sinks.append(clock)
        load_before = load_average()
        cpu_started = time.process_time()
        runner.train()
        cpu = time.process_time() - cpu_started
        spent = run_dir / "bench_cpu_seconds.json"  # CPU over every invocation that worked on this folder
        cpu += json.loads(spent.read_text()) if spent.is_file() else 0.0
        spent.write_text(json.dumps(cpu))
        metrics = read_jsonl(run_dir / "metrics.jsonl")
        wall = metrics[-1]["perf/wall_seconds"]  # the run's own clock: sums the invocations too
        events = read_jsonl(run_dir / "events.jsonl")
        final = None if job.group == "speed" else evaluate(run_dir, episodes=EVAL_EPISODES, deterministic=True).mean
    result: dict[str, Any] = {
        "preset": preset,
        "resumed": resume,
        "wall": wall,
        "cpu": cpu,
        "load": [load_before, load_average()],
        "final_eval": final,
        "curve": [(m["step"], m["eval/return_mean"]) for m in metrics if "eval/return_mean" in m],
        "recoveries": sum(e["kind"] == "recovery.rollback" for e in events),
        "warnings": sum(e["kind"].startswith("warning.") for e in events),
    }
    if job.group == "speed":
        timed = [mark for mark in clock.marks if mark[0] >= job.warmup]
        (step0, wall0, cpu0), (step1, wall1, cpu1) = timed[0], timed[-1]
        rows = [m for m in metrics if m["step"] > step0]
        result.update(
            steps_per_second=(step1 - step0) / (wall1 - wall0),
            cpu_ms_per_step=1000 * (cpu1 - cpu0) / (step1 - step0),
            env_seconds=sum(m["perf/env_seconds"] for m in rows),
            update_seconds=sum(m["perf/update_seconds"] for m in rows),
            timed_wall=wall1 - wall0,
        )
    return result


# ---- Stable-Baselines3 ------------------------------------------------------------------------


def run_sb3(job: Job) -> dict[str, Any]:
    import gymnasium as gym
    import numpy as np
    import torch
    from stable_baselines3 import SAC, TD3
    from stable_baselines3.common.evaluation import evaluate_policy

    if job.lib == "sb3-1thread" or job.group != "speed":
        torch.set_num_threads(1)
    env = gym.make(job.env)
    options: dict[str, Any] = {}
    if job.algo == "td3" and job.group != "speed":
        # pgrad's TD3 explores with N(0, 0.1^2) (the TD3 paper, the zoo); SB3's default is no noise at all
        from stable_baselines3.common.noise import NormalActionNoise

        size = env.action_space.shape[0]
        options["action_noise"] = NormalActionNoise(mean=np.zeros(size), sigma=0.1 * np.ones(size))
    if job.preset:
        options["learning_starts"] = 10_000  # the zoo's MuJoCo value, as pgrad's preset
    model = {"sac": SAC, "td3": TD3}[job.algo]("MlpPolicy", env, seed=job.seed, device="cpu", verbose=0, **options)
    load_before = load_average()
    if job.group == "speed":
        model.learn(job.warmup)
        started, cpu_started = time.perf_counter(), time.process_time()
        model.learn(job.total_steps - job.warmup, reset_num_timesteps=False)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        return {
            "steps_per_second": (job.total_steps - job.warmup) / wall,
            "cpu_ms_per_step": 1000 * cpu / (job.total_steps - job.warmup),
            "timed_wall": wall,
            "torch_threads": torch.get_num_threads(),
            "load": [load_before, load_average()],
        }
    from stable_baselines3.common.monitor import Monitor

    eval_env = Monitor(gym.make(job.env))
    curve = []
    started, cpu_started = time.perf_counter(), time.process_time()
    while model.num_timesteps < job.total_steps:
        model.learn(SB3_EVAL_EVERY, reset_num_timesteps=False)
        mean, _ = evaluate_policy(model, eval_env, n_eval_episodes=EVAL_EPISODES, deterministic=True)
        curve.append((model.num_timesteps, float(mean)))
    return {
        "curve": curve,
        "final_eval": curve[-1][1],
        "wall": time.perf_counter() - started,
        "cpu": time.process_time() - cpu_started,
        "load": [load_before, load_average()],
    }


def run_job(job: Job) -> Job:
    job.result = run_sb3(job) if job.lib.startswith("sb3") else run_pgrad(job)
    print(f"done: {job.group} {job.lib} {job.algo} {job.env} seed {job.seed}", flush=True)
    return job


def run_all(jobs: list[Job], workers: int, save_as: str | None = None) -> list[Job]:
    """Every job in its own process, ``workers`` at once; with ``save_as`` the raw results are written
    after each job ends, so a long group stopped half-way keeps what finished."""
    context = multiprocessing.get_context("spawn")
    finished: dict[int, Job] = {}
    with context.Pool(workers, maxtasksperchild=1) as pool:
        for index, job in pool.imap_unordered(run_indexed, list(enumerate(jobs)), chunksize=1):
            finished[index] = job
            if save_as is not None:
                save(save_as, [finished[i] for i in sorted(finished)])
    return [finished[i] for i in sorted(finished)]


def run_indexed(item: tuple[int, Job]) -> tuple[int, Job]:
    return item[0], run_job(item[1])


# ---- tables ------------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def speed_table(jobs: list[Job]) -> list[str]:
    lines = [
        "| algo | round | lib | steps/s | CPU ms / step | env s | update s | other s | load before-after |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for job in jobs:
        r = job.result
        split = ["-", "-", "-"]
        if "env_seconds" in r:
            other = r["timed_wall"] - r["env_seconds"] - r["update_seconds"]
            split = [f"{r['env_seconds']:.1f}", f"{r['update_seconds']:.1f}", f"{other:.1f}"]
        lines.append(
            f"| {job.algo} | {job.seed} | {job.lib} | {r['steps_per_second']:.1f} | {r['cpu_ms_per_step']:.1f} | "
            + " | ".join(split)
            + f" | {r['load'][0]:.1f}-{r['load'][1]:.1f} |"
        )
    lines += [
        "",
        "| algo | pgrad / sb3 (steps/s, median over rounds) | pgrad bare / sb3 | pgrad 2 threads / sb3 | "
        "pgrad / sb3-1thread | sb3 CPU per step / pgrad's |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for algo in sorted({job.algo for job in jobs}):

        def median(lib: str, key: str, algo: str = algo) -> float:
            return statistics.median(j.result[key] for j in jobs if j.algo == algo and j.lib == lib)

        sb3 = median("sb3", "steps_per_second")
        lines.append(
            f"| {algo} | {median('pgrad', 'steps_per_second') / sb3:.2f}x | "
            f"{median('pgrad-bare', 'steps_per_second') / sb3:.2f}x | "
            f"{median('pgrad-2threads', 'steps_per_second') / sb3:.2f}x | "
            f"{median('pgrad', 'steps_per_second') / median('sb3-1thread', 'steps_per_second'):.2f}x | "
            f"{median('sb3', 'cpu_ms_per_step') / median('pgrad', 'cpu_ms_per_step'):.2f}x |"
        )
    return lines


def learning_table(jobs: list[Job], thresholds: dict[str, float]) -> list[str]:
    lines = [
        "| algo | lib | seed | steps | final eval (10 ep.) | threshold | met | evaluations (step: mean) | "
        "recoveries | warnings | wall s | CPU s | load |",
        "|---|---|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---|",
    ]
    for job in jobs:
        r = job.result
        threshold = thresholds.get(job.algo) if job.lib == "pgrad" else None
        met = "-" if threshold is None else ("yes" if r["final_eval"] >= threshold else "**no**")
        curve = ", ".join(f"{step // 1000}k: {value:.0f}" for step, value in r["curve"])
        lines.append(
            f"| {job.algo} | {job.lib} | {job.seed} | {job.total_steps:,} | {r['final_eval']:.1f} | "
            f"{fmt(threshold)} | {met} | {curve} | {r.get('recoveries', '-')} | {r.get('warnings', '-')} | "
            f"{r['wall']:.0f} | {r['cpu']:.0f} | {r['load'][0]:.1f}-{r['load'][1]:.1f} |"
        )
    return lines


def plot_curves(jobs: list[Job], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5))
    for job in jobs:
        steps, values = zip(*job.result["curve"], strict=True) if job.result["curve"] else ((), ())
        style = "--" if job.lib == "sb3" else "-"
        axis.plot(steps, values, style, marker=".", label=f"{job.lib} {job.algo} seed {job.seed}")
    axis.axhline(HALFCHEETAH_THRESHOLD, color="grey", linewidth=0.8)
    axis.set_xlabel("env steps")
    axis.set_ylabel("deterministic evaluation (10 episodes)")
    axis.set_title("HalfCheetah-v5: pgrad SAC/TD3 (defaults) and SB3 SAC (defaults, first 50k)")
    axis.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")


# ---- groups ------------------------------------------------------------------------------------


def speed(args: argparse.Namespace) -> list[str]:
    jobs = []
    libs = ["pgrad", "pgrad-bare", "pgrad-2threads", "sb3", "sb3-1thread"]
    for algo in args.algos or ["sac", "td3"]:
        for round_index in range(1, args.rounds + 1):
            order = libs[round_index % len(libs) :] + libs[: round_index % len(libs)]
            total = args.warmup + args.measure
            jobs += [Job("speed", lib, algo, "HalfCheetah-v5", round_index, total, args.warmup) for lib in order]
    done = run_all(jobs, 1)  # never two at once: the timing is the point
    save("speed", done)
    return [
        f"Speed, HalfCheetah-v5, {args.measure} env steps timed after {args.warmup} (the `seed` column is "
        "the round; one run at a time, the order rotating):",
        "",
        *speed_table(done),
    ]


def pendulum(args: argparse.Namespace) -> list[str]:
    jobs = [
        Job("pendulum", "pgrad", algo, "Pendulum-v1", seed, args.total_steps or 20_000)
        for seed in args.seeds or [1, 2, 3]
        for algo in args.algos or ["sac", "td3", "ddpg"]
    ]
    done = run_all(jobs, args.jobs)
    save("pendulum", done)
    return ["Pendulum-v1, pgrad presets:", "", *learning_table(done, PENDULUM_THRESHOLD)]


def halfcheetah(args: argparse.Namespace) -> list[str]:
    total = args.total_steps or 200_000
    jobs = []
    preset = set(args.preset_algos or [])
    for seed in args.seeds or [1, 2]:
        jobs += [
            Job(
                "halfcheetah",
                "pgrad",
                algo,
                "HalfCheetah-v5",
                seed,
                total,
                run_root=args.run_root,
                preset=algo in preset,
            )
            for algo in args.algos or ["sac", "td3"]
        ]
        jobs += [
            Job("halfcheetah", "sb3", algo, "HalfCheetah-v5", seed, min(args.sb3_steps, total), preset=algo in preset)
            for algo in args.sb3_algos
        ]
    done = run_all(jobs, args.jobs, save_as="halfcheetah" + args.tag)
    plot_curves(done, HERE / "plots" / "offpolicy_halfcheetah.png")
    thresholds = dict.fromkeys(("sac", "td3"), HALFCHEETAH_THRESHOLD)
    label = f"presets for {', '.join(sorted(preset))}, " if preset else ""
    return [f"HalfCheetah-v5, {label}defaults (SB3's) otherwise:", "", *learning_table(done, thresholds)]


def save(group: str, jobs: list[Job]) -> None:
    path = HERE / "data" / f"offpolicy_{group}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(job) for job in jobs], indent=1))


GROUPS = {"speed": speed, "pendulum": pendulum, "halfcheetah": halfcheetah}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", nargs="+", choices=sorted(GROUPS), default=["speed", "pendulum"])
    parser.add_argument("--algos", nargs="+", choices=["sac", "td3", "ddpg"])
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--total-steps", type=int, help="learning groups: override the step budget")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once in the learning groups")
    parser.add_argument("--rounds", type=int, default=2, help="speed group: rounds of the three runs per algo")
    parser.add_argument("--warmup", type=int, default=1000, help="speed group: env steps before timing")
    parser.add_argument("--measure", type=int, default=2000, help="speed group: env steps timed")
    parser.add_argument(
        "--sb3-algos", nargs="*", default=["sac"], choices=["sac", "td3"], help="halfcheetah group: SB3 runs beside"
    )
    parser.add_argument("--sb3-steps", type=int, default=SB3_CURVE_STEPS, help="halfcheetah group: SB3's budget")
    parser.add_argument(
        "--preset-algos",
        nargs="*",
        choices=["sac", "td3"],
        help="halfcheetah group: these algorithms from pgrad's presets (the zoo's: learning_starts 10000), SB3 alike",
    )
    parser.add_argument("--tag", default="", help="suffix of the raw-data file name (offpolicy_<group><tag>.json)")
    parser.add_argument(
        "--run-root", help="halfcheetah group: keep pgrad's run folders here; a folder left by a killed run resumes"
    )
    args = parser.parse_args()
    print(f"pgrad off-policy benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs")
    for group in args.groups:
        print("\n".join(["", *GROUPS[group](args)]), flush=True)


if __name__ == "__main__":
    main()
