"""Learning parity on MuJoCo: pgrad PPO against Stable-Baselines3 PPO on identical hyper-parameters.

Two groups:

- ``parity``: Hopper-v5 (seeds 1-5), HalfCheetah-v5 and Walker2d-v5 (seeds 1-3), 300k steps, both
  libraries with SB3's PPO defaults plus observation and reward normalisation: 1 env, n_steps 2048,
  minibatch 64, 10 epochs, Adam 3e-4 constant, gamma 0.99, gae_lambda 0.95, clip 0.2, no value
  clipping, ent_coef 0, vf_coef 0.5, max_grad_norm 0.5, a 64x64 tanh actor and critic, log-std 0.
  SB3 normalises with ``VecNormalize`` (clip 10 both), pgrad with ``env.norm_obs/norm_reward``.
  pgrad runs as shipped (guard, evaluations, checkpoints, TensorBoard off only to save disk) with
  ``ppo.optimizer.anneal_lr=false``: pgrad's PPO anneals its learning rate by default, SB3's does not.
  Columns: deterministic evaluation over 10 episodes after 200k and 300k steps (SB3: ``evaluate_policy``
  on a ``VecNormalize`` copy with frozen statistics; pgrad: ``pgrad eval`` of the checkpoint at that
  step), the mean training return of the last 20 episodes, the guard's recoveries and warnings, CPU
  and wall seconds and the load average.
- ``presets``: pgrad's own presets (CleanRL's ``ppo_continuous_action.py`` settings) at 1M steps on the
  three envs, against CleanRL's published 1M-step returns (v4 envs; HalfCheetah 2262, Hopper 2311,
  Walker2d 3312) and rl-baselines3-zoo's tuned ones (5819, 2410, 3479).

Runs are interleaved: the pgrad and SB3 runs of one (env, seed) are started together on the two
worker processes (``--jobs 2``), so both see the same machine load. Every run is its own process
with one torch thread. Raw results go to ``benchmarks/data/parity_<group>.json`` and the learning
curves to ``benchmarks/plots/<group>_<env>.png``; the tables print as markdown.

    .venv/bin/python benchmarks/bench_parity.py                       # parity group (~35 min here)
    .venv/bin/python benchmarks/bench_parity.py --groups presets      # 1M-step presets (~25 min)
    .venv/bin/python benchmarks/bench_parity.py --envs Hopper-v5 --seeds 1 --total-steps 20000   # smoke

Needs the 'bench', 'mujoco' and 'plots' extras: pip install -e '.[bench,mujoco,plots]'.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import tempfile
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WINDOW = 20  # training episodes in the "last-20" return
MID_STEP = 200_000  # the Hopper table was taken at 200k steps
EVAL_EPISODES = 10

PARITY_SEEDS = {"Hopper-v5": [1, 2, 3, 4, 5], "HalfCheetah-v5": [1, 2, 3], "Walker2d-v5": [1, 2, 3]}
PUBLISHED_1M = {  # env: (CleanRL ppo_continuous_action, rl-baselines3-zoo tuned), v4 envs
    "HalfCheetah-v5": (2262.0, 5819.0),
    "Hopper-v5": (2311.0, 2410.0),
    "Walker2d-v5": (3312.0, 3479.0),
}

# SB3's PPO defaults, written out for pgrad (``--no-preset`` starts from pgrad's own defaults, which
# equal these except the learning-rate annealing).
PGRAD_SB3_DEFAULTS = [
    "env.num_envs=1",
    "env.norm_obs=true",
    "env.norm_reward=true",
    "ppo.num_steps=2048",
    "ppo.minibatch_size=64",
    "ppo.num_epochs=10",
    "ppo.gamma=0.99",
    "ppo.gae_lambda=0.95",
    "ppo.clip_eps=0.2",
    "ppo.ent_coef=0.0",
    "ppo.vf_coef=0.5",
    "ppo.max_grad_norm=0.5",
    "ppo.optimizer.learning_rate=0.0003",
    "ppo.optimizer.anneal_lr=false",
]


@dataclass
class Job:
    group: str
    lib: str  # "pgrad" or "sb3"
    env: str
    seed: int
    total_steps: int
    result: dict[str, Any] = field(default_factory=dict)


def eval_steps(total: int, per_rollout: int = 2048) -> list[int]:
    """The update boundaries where evaluations are taken: the first at or after 200k (when the run is
    that long), and the end."""
    steps = []
    if total > MID_STEP:
        steps.append(math.ceil(MID_STEP / per_rollout) * per_rollout)
    steps.append(math.ceil(total / per_rollout) * per_rollout)
    return steps


# ---- pgrad -------------------------------------------------------------------------------------


def run_pgrad(job: Job) -> dict[str, Any]:
    from pgrad.evaluate import evaluate
    from pgrad.monitor.sinks import read_jsonl
    from pgrad.runners.on_policy import OnPolicyRunner
    from pgrad.runs import resolve_config

    preset = job.group == "presets"
    sets = ["run.progress=false", "run.tensorboard=false", "run.keep_checkpoints=100"]
    sets += [] if preset else PGRAD_SB3_DEFAULTS
    with tempfile.TemporaryDirectory(prefix="bench_parity_") as tmp:
        run_dir = Path(tmp) / "run"
        config, _ = resolve_config(
            "ppo", job.env, sets=sets, seed=job.seed, total_steps=job.total_steps, use_preset=preset
        )
        started, cpu_started = time.perf_counter(), time.process_time()
        OnPolicyRunner(config, run_dir, console=False).train()
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        metrics = read_jsonl(run_dir / "metrics.jsonl")
        events = read_jsonl(run_dir / "events.jsonl")
        evaluations = {}
        *middle, end = eval_steps(job.total_steps, config.algo_config.num_steps * config.env.num_envs)
        for step in middle:
            name = f"step_{step:010d}"
            if (run_dir / "checkpoints" / name).is_dir():
                result = evaluate(run_dir, episodes=EVAL_EPISODES, deterministic=True, which=name)
                evaluations[str(step)] = result.mean
        evaluations[str(end)] = evaluate(run_dir, episodes=EVAL_EPISODES, deterministic=True).mean
    curve = [(m["step"], m["rollout/return_mean"]) for m in metrics if m.get("rollout/return_mean") is not None]
    return {
        "evaluations": evaluations,
        "last20": curve[-1][1] if curve else None,
        "curve": curve,
        "recoveries": sum(e["kind"] == "recovery.rollback" for e in events),
        "warnings": sum(e["kind"].startswith("warning.") for e in events),
        "halted": any(e["kind"] in ("critical.halted", "critical.recovery_cap") for e in events),
        "wall": wall,
        "cpu": cpu,
    }


# ---- Stable-Baselines3 ------------------------------------------------------------------------


def run_sb3(job: Job) -> dict[str, Any]:
    import copy

    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecNormalize

    def evaluate_now(model: PPO, train_env: VecNormalize) -> float:
        eval_env = VecNormalize(
            make_vec_env(job.env, n_envs=1, seed=job.seed + 1_000_003), training=False, norm_reward=False
        )
        eval_env.obs_rms = copy.deepcopy(train_env.obs_rms)
        mean, _ = evaluate_policy(model, eval_env, n_eval_episodes=EVAL_EPISODES, deterministic=True)
        eval_env.close()
        return float(mean)

    wanted = eval_steps(job.total_steps)

    class Recorder(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.returns: deque[float] = deque(maxlen=WINDOW)
            self.curve: list[tuple[int, float]] = []
            self.evaluations: dict[str, float] = {}

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "episode" in info:
                    self.returns.append(float(info["episode"]["r"]))
            return True

        def _on_rollout_end(self) -> None:
            if self.returns:
                self.curve.append((self.num_timesteps, float(sum(self.returns) / len(self.returns))))

        def _on_rollout_start(self) -> None:
            # Here, not at the rollout's end: SB3 calls train() after on_rollout_end, so the policy
            # at step N has learned from the rollout ending at N only when the next rollout starts,
            # which is the policy pgrad's checkpoint at step N holds. The end is evaluated after learn().
            if self.num_timesteps in wanted[:-1]:
                self.evaluations[str(self.num_timesteps)] = evaluate_now(self.model, self.training_env)

    env = VecNormalize(make_vec_env(job.env, n_envs=1, seed=job.seed), norm_obs=True, norm_reward=True, gamma=0.99)
    model = PPO("MlpPolicy", env, seed=job.seed, device="cpu", verbose=0)
    recorder = Recorder()
    started, cpu_started = time.perf_counter(), time.process_time()
    model.learn(total_timesteps=job.total_steps, callback=recorder)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    recorder.evaluations[str(model.num_timesteps)] = evaluate_now(model, env)
    return {
        "evaluations": recorder.evaluations,
        "last20": recorder.curve[-1][1] if recorder.curve else None,
        "curve": recorder.curve,
        "wall": wall,
        "cpu": cpu,
    }


def run_job(job: Job) -> Job:
    import torch

    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    job.result = run_pgrad(job) if job.lib == "pgrad" else run_sb3(job)
    job.result["load"] = (load_before, os.getloadavg()[0])
    print(
        f"# {job.group} {job.env} seed {job.seed} {job.lib}: eval {job.result['evaluations']} "
        f"last-20 {job.result['last20']:.0f} wall {job.result['wall']:.0f} s cpu {job.result['cpu']:.0f} s "
        f"load {load_before:.1f}->{job.result['load'][1]:.1f}",
        flush=True,
    )
    return job


# ---- tables and plots ---------------------------------------------------------------------------


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def parity_tables(jobs: list[Job]) -> list[str]:
    lines: list[str] = []
    for env in dict.fromkeys(j.env for j in jobs):
        runs = {(j.lib, j.seed): j.result for j in jobs if j.env == env}
        seeds = sorted({s for _, s in runs})
        steps = sorted({int(k) for r in runs.values() for k in r["evaluations"]})
        head = " | ".join(f"SB3 eval@{s // 1000}k | pgrad eval@{s // 1000}k" for s in steps)
        lines += [
            f"### {env}",
            "",
            f"| seed | {head} | SB3 last-20 | pgrad last-20 | pgrad recoveries / warnings "
            "| CPU s SB3 / pgrad | wall s SB3 / pgrad | load |",
            "|---:|" + "---:|" * (2 * len(steps) + 2) + "---|---|---|---|",
        ]
        for seed in seeds:
            sb3, ours = runs.get(("sb3", seed)), runs.get(("pgrad", seed))
            if sb3 is None or ours is None:
                continue
            cells = " | ".join(
                f"{sb3['evaluations'].get(str(s), math.nan):.0f} | {ours['evaluations'].get(str(s), math.nan):.0f}"
                for s in steps
            )
            load = max(sb3["load"] + ours["load"])
            lines.append(
                f"| {seed} | {cells} | {sb3['last20']:.0f} | {ours['last20']:.0f} "
                f"| {ours['recoveries']} / {ours['warnings']} | {sb3['cpu']:.0f} / {ours['cpu']:.0f} "
                f"| {sb3['wall']:.0f} / {ours['wall']:.0f} | <= {load:.1f} |"
            )
        paired = [s for s in seeds if ("sb3", s) in runs and ("pgrad", s) in runs]

        def col(lib: str, key: str, step: int | None = None, runs=runs, paired=paired) -> list[float]:
            """One column over the paired seeds: a result ``key``, or the evaluation at ``step``."""
            if step is None:
                return [runs[(lib, s)][key] for s in paired]
            return [
                runs[(lib, s)]["evaluations"][str(step)] for s in paired if str(step) in runs[(lib, s)]["evaluations"]
            ]

        means = " | ".join(f"**{mean(col('sb3', '', s)):.0f}** | **{mean(col('pgrad', '', s)):.0f}**" for s in steps)
        cpu_ratio = mean(col("sb3", "cpu")) / mean(col("pgrad", "cpu"))
        wall_ratio = mean(col("sb3", "wall")) / mean(col("pgrad", "wall"))
        lines += [
            f"| mean | {means} | {mean(col('sb3', 'last20')):.0f} | {mean(col('pgrad', 'last20')):.0f} "
            f"| {sum(col('pgrad', 'recoveries'))} / {sum(col('pgrad', 'warnings'))} "
            f"| SB3 / pgrad {cpu_ratio:.2f}x | {wall_ratio:.2f}x | |",
            "",
        ]
        for step in steps:
            ours, theirs = col("pgrad", "", step), col("sb3", "", step)
            verdict = "at least" if mean(ours) >= mean(theirs) else "BELOW"
            lines.append(
                f"pgrad's mean evaluation at {step // 1000}k is {verdict} SB3's "
                f"({mean(ours):.0f} vs {mean(theirs):.0f}, {len(paired)} seeds; Welch t {welch_t(ours, theirs):+.2f})."
            )
        lines.append("")
    return lines


def welch_t(a: list[float], b: list[float]) -> float:
    """(mean a - mean b) / sqrt(var a / n_a + var b / n_b), sample variances: how many standard errors apart."""
    if len(a) < 2 or len(b) < 2:
        return math.nan
    return (mean(a) - mean(b)) / math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))


def preset_table(jobs: list[Job]) -> list[str]:
    lines = [
        "| env | seeds | pgrad preset eval@1M (per seed) | mean | last-20 mean | CleanRL 1M | zoo tuned 1M "
        "| recoveries / warnings | CPU s per run |",
        "|---|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for env in dict.fromkeys(j.env for j in jobs):
        runs = sorted((j for j in jobs if j.env == env), key=lambda j: j.seed)
        finals = [list(j.result["evaluations"].values())[-1] for j in runs]
        cleanrl, zoo = PUBLISHED_1M[env]
        lines.append(
            f"| {env} | {', '.join(str(j.seed) for j in runs)} | {' / '.join(f'{v:.0f}' for v in finals)} "
            f"| **{mean(finals):.0f}** | {mean([j.result['last20'] for j in runs]):.0f} | {cleanrl:.0f} | {zoo:.0f} "
            f"| {sum(j.result['recoveries'] for j in runs)} / {sum(j.result['warnings'] for j in runs)} "
            f"| {mean([j.result['cpu'] for j in runs]):.0f} |"
        )
    return lines


def plot(jobs: list[Job], group: str) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
    except ImportError:
        print("matplotlib not installed: no plots (pip install -e '.[plots]')")
        return []
    written = []
    (HERE / "plots").mkdir(exist_ok=True)
    for env in dict.fromkeys(j.env for j in jobs):
        figure, axes = plt.subplots(figsize=(6, 4))
        for lib, colour in (("sb3", "tab:blue"), ("pgrad", "tab:orange")):
            curves = [j.result["curve"] for j in jobs if j.env == env and j.lib == lib and j.result["curve"]]
            if not curves:
                continue
            end = min(c[-1][0] for c in curves)
            grid = np.linspace(min(c[0][0] for c in curves), end, 100)
            ys = np.array([np.interp(grid, [s for s, _ in c], [r for _, r in c]) for c in curves])
            label = "SB3" if lib == "sb3" else ("pgrad preset" if group == "presets" else "pgrad")
            axes.plot(grid, ys.mean(axis=0), color=colour, label=f"{label} (mean of {len(curves)} seeds)")
            axes.fill_between(grid, ys.min(axis=0), ys.max(axis=0), color=colour, alpha=0.2)
        axes.set_title(f"PPO {env}: training return (last {WINDOW} episodes)")
        axes.set_xlabel("env steps")
        axes.set_ylabel("return")
        axes.legend()
        figure.tight_layout()
        path = HERE / "plots" / f"{group}_{env.split('-')[0].lower()}.png"
        figure.savefig(path, dpi=90)
        plt.close(figure)
        written.append(path)
    return written


# ---- main ---------------------------------------------------------------------------------------


def build_jobs(group: str, envs: list[str], seeds: list[int] | None, total: int | None) -> list[Job]:
    jobs = []
    if group == "parity":
        for seed in sorted(set(seeds) if seeds else {s for env in envs for s in PARITY_SEEDS[env]}):
            for env in envs:
                if seed in (seeds or PARITY_SEEDS[env]):
                    # pgrad and SB3 of one (env, seed) side by side: the two workers run them together
                    libs = ["pgrad", "sb3"] if seed % 2 else ["sb3", "pgrad"]
                    jobs += [Job(group, lib, env, seed, total or 300_000) for lib in libs]
    else:
        jobs = [Job(group, "pgrad", env, seed, total or 1_000_000) for seed in (seeds or [1, 2, 3]) for env in envs]
    return jobs


def job_key(job: Job) -> tuple[str, str, str, int, int]:
    return (job.group, job.lib, job.env, job.seed, job.total_steps)


def load_jobs(path: Path) -> list[Job]:
    return [Job(**row) for row in json.loads(path.read_text())] if path.exists() else []


def merge_jobs(path: Path, done: list[Job]) -> None:
    """Add this invocation's runs to the data file; a run of the same (lib, env, seed, steps) replaces the
    recorded one, so runs split over several invocations add up without duplicates."""
    merged = {job_key(job): job for job in load_jobs(path)}
    merged.update({job_key(job): job for job in done})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(job) for job in merged.values()]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", nargs="+", default=["parity"], choices=["parity", "presets"])
    parser.add_argument("--envs", nargs="+", default=list(PARITY_SEEDS))
    parser.add_argument("--seeds", nargs="+", type=int, default=None)
    parser.add_argument("--total-steps", type=int, default=None)
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (each its own process, one thread)")
    parser.add_argument(
        "--redraw", action="store_true", help="run nothing: print the tables and draw the plots from the data file"
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=HERE / "data",
        help="folder of parity_<group>.json (tracked: tables redraw from it)",
    )
    args = parser.parse_args()
    print(f"# started {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, {os.cpu_count()} CPUs", flush=True)
    for group in args.groups:
        out = args.data / f"parity_{group}.json"
        if args.redraw:
            done = [
                job for job in load_jobs(out) if job.env in args.envs and (not args.seeds or job.seed in args.seeds)
            ]
        else:
            jobs = build_jobs(group, args.envs, args.seeds, args.total_steps)
            context = multiprocessing.get_context("spawn")
            with context.Pool(args.jobs, maxtasksperchild=1) as pool:
                done = pool.map(run_job, jobs, chunksize=1)
            merge_jobs(out, done)
        lines = parity_tables(done) if group == "parity" else preset_table(done)
        print("\n".join(lines))
        for path in plot(done, group):
            print(f"plot: {path.relative_to(HERE.parent)}")
        loads = [x for j in done for x in j.result["load"]]
        print(f"\nload average over the runs: {min(loads):.1f}-{max(loads):.1f}; median {statistics.median(loads):.1f}")
    print(f"# finished {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}", flush=True)


if __name__ == "__main__":
    main()
