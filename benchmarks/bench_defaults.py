"""Defaults on envs without a preset: pgrad PPO as shipped against Stable-Baselines3 PPO with its defaults.

A user who points either library at an env nobody tuned for gets its defaults. This runs both on a suite
of Gymnasium envs that have no pgrad PPO preset, at equal env steps, and compares what they learned:

- pgrad: ``resolve_config("ppo", env)`` as ``pgrad train --algo ppo --env ENV`` resolves it (the defaults
  for the env's kind of spaces, ``pgrad.presets.generic_defaults_for``; no preset applies on these envs),
  trained as shipped (guard, evaluations and checkpoints on; only the progress bar and TensorBoard off).
  ``--pgrad-set`` adds ``--set`` overrides (the pilot that chose the defaults used it).
- SB3: ``PPO("MlpPolicy", ENV, seed=seed)``: 1 env x 2048 steps, batch 64, 10 epochs, lr 3e-4 constant,
  no normalisation.

Both policies then go through one evaluation function (``evaluate``): deterministic actions on fresh envs
reset with fixed seeds (the same for both libraries), ``EVAL_EPISODES`` episodes. The mean return of the
last ``WINDOW`` training episodes is recorded too. Each run is its own process with one torch thread;
the pgrad and SB3 runs of one (env, seed) start together on the two workers (``--jobs 2``), so both see
the same load; wall and CPU seconds and the load average are recorded per run.

Every finished run appends one JSON line to ``--out`` (default ``benchmarks/data/defaults_runs.jsonl``);
a run already there (same env, seed, lib and steps) is skipped, so an interrupted sweep resumes by running
the same command again. ``--report`` reads the file and prints the markdown table and the paired test.

    .venv/bin/python benchmarks/bench_defaults.py                     # the whole suite, 5 seeds (~60 min, 2 cores)
    .venv/bin/python benchmarks/bench_defaults.py --report            # table and statistics from the data file
    .venv/bin/python benchmarks/bench_defaults.py --envs Swimmer-v5 --seeds 1 --steps 5000 --out /tmp/x.jsonl

Statistics (numpy only): per env, returns are normalised by the pooled range of both libraries' runs
((x - min) / (max - min)); over the (env, seed) pairs, the difference pgrad - SB3 of normalised scores is
tested with a one-sided Wilcoxon signed-rank test (exact null distribution, zero differences dropped,
tied ranks averaged) and summarised by a paired bootstrap interval of its mean.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "defaults_runs.jsonl"
WINDOW = 20  # training episodes in the "last-20" return
EVAL_EPISODES = 10
EVAL_SEED = 1_000_003  # evaluation episode i of every run is reset with seed EVAL_SEED + i

# env id -> env steps per run (both libraries). No pgrad PPO preset exists for any of them (checked in main).
SUITE: dict[str, int] = {
    "InvertedPendulum-v5": 16_384,
    "InvertedDoublePendulum-v5": 16_384,
    "Reacher-v5": 16_384,
    "Swimmer-v5": 16_384,
    "Pusher-v5": 16_384,
    "MountainCarContinuous-v0": 16_384,
    "LunarLanderContinuous-v3": 16_384,
    "LunarLander-v3": 16_384,
}
SEEDS = [1, 2, 3, 4, 5]


def evaluate(act: Callable[[np.ndarray], np.ndarray], env_id: str, episodes: int = EVAL_EPISODES) -> list[float]:
    """Returns of ``episodes`` deterministic episodes of ``act`` (one observation -> one env action) on a fresh
    env, episode i reset with seed ``EVAL_SEED + i``: the same episodes for every policy evaluated."""
    import gymnasium as gym

    env = gym.make(env_id)
    returns = []
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=EVAL_SEED + episode)
            total, done = 0.0, False
            while not done:
                obs, reward, terminated, truncated, _ = env.step(act(obs))
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
    finally:
        env.close()
    return returns


def run_pgrad(env_id: str, seed: int, steps: int, extra_sets: list[str]) -> dict[str, Any]:
    """Train pgrad PPO with what ``pgrad train --algo ppo --env ENV`` resolves; evaluate its final policy."""
    from pgrad.monitor.sinks import read_jsonl
    from pgrad.policy import load_policy
    from pgrad.runners.on_policy import OnPolicyRunner
    from pgrad.runs import resolve_config

    sets = ["run.progress=false", "run.tensorboard=false", *extra_sets]
    config, source = resolve_config("ppo", env_id, sets=sets, seed=seed, total_steps=steps)
    with tempfile.TemporaryDirectory(prefix="bench_defaults_") as tmp:
        run_dir = Path(tmp) / "run"
        started, cpu_started = time.perf_counter(), time.process_time()
        OnPolicyRunner(config, run_dir, console=False).train()
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        metrics = read_jsonl(run_dir / "metrics.jsonl")
        policy, _, _ = load_policy(run_dir)
        returns = evaluate(lambda obs: policy.predict(obs, deterministic=True), env_id)
    curve = [m["rollout/return_mean"] for m in metrics if m.get("rollout/return_mean") is not None]
    return {
        "eval": returns,
        "last20": curve[-1] if curve else None,
        "wall": wall,
        "cpu": cpu,
        "defaults": source,
        "sets": extra_sets,
    }


def run_sb3(env_id: str, seed: int, steps: int) -> dict[str, Any]:
    """Train SB3 PPO with its defaults, ``PPO("MlpPolicy", env_id)``; evaluate its final policy."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback

    class Recorder(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.returns: deque[float] = deque(maxlen=WINDOW)

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "episode" in info:
                    self.returns.append(float(info["episode"]["r"]))
            return True

    model = PPO("MlpPolicy", env_id, seed=seed, device="cpu", verbose=0)
    recorder = Recorder()
    started, cpu_started = time.perf_counter(), time.process_time()
    model.learn(total_timesteps=steps, callback=recorder)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    returns = evaluate(lambda obs: model.predict(obs, deterministic=True)[0], env_id)
    last20 = sum(recorder.returns) / len(recorder.returns) if recorder.returns else None
    return {"eval": returns, "last20": last20, "wall": wall, "cpu": cpu, "steps_done": int(model.num_timesteps)}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """One run in its own process, one torch thread; the record written to the data file."""
    import torch

    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    if job["lib"] == "pgrad":
        result = run_pgrad(job["env"], job["seed"], job["steps"], job["pgrad_sets"])
    else:
        result = run_sb3(job["env"], job["seed"], job["steps"])
    record = {k: job[k] for k in ("env", "seed", "lib", "steps", "tag")}
    record.update(result)
    record["eval_mean"] = float(np.mean(result["eval"]))
    record["load"] = [load_before, os.getloadavg()[0]]
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return record


def key(record: dict[str, Any]) -> tuple[str, int, str, int, str]:
    """What makes a run the same run: a record with this key in the data file is not run again."""
    tag = record.get("tag", "") if record["lib"] == "pgrad" else ""  # SB3's runs never change: one per (env, seed)
    return (record["env"], int(record["seed"]), record["lib"], int(record["steps"]), tag)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The data file's records (one JSON object per line); none when it does not exist."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---- statistics (numpy only) --------------------------------------------------------------------


def normalised(records: list[dict[str, Any]], metric: str = "eval_mean") -> dict[tuple[str, int, str], float]:
    """Each run's ``metric`` scaled by its env's pooled range over both libraries: (x - min) / (max - min)."""
    scores: dict[tuple[str, int, str], float] = {}
    for env in sorted({r["env"] for r in records}):
        values = [r[metric] for r in records if r["env"] == env and r[metric] is not None]
        low, high = min(values), max(values)
        for r in records:
            if r["env"] == env and r[metric] is not None:
                scores[(env, r["seed"], r["lib"])] = (r[metric] - low) / (high - low) if high > low else 0.5
    return scores


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``values``, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def wilcoxon_greater(differences: np.ndarray) -> tuple[float, float, int]:
    """One-sided Wilcoxon signed-rank test of H1: the differences are shifted above 0. Zero differences are
    dropped (Wilcoxon's method), tied |d| share their mean rank, and the p-value comes from the exact null
    distribution of W+ given those ranks: each rank's sign is + or - with probability 1/2, independently,
    counted by dynamic programming over twice the ranks (integers). Returns (W+, p, n used)."""
    d = differences[differences != 0]
    n = len(d)
    if n == 0:
        return 0.0, 1.0, 0
    doubled = np.rint(2 * average_ranks(np.abs(d))).astype(int)
    w_plus = float(doubled[d > 0].sum()) / 2
    total = int(doubled.sum())
    counts = np.zeros(total + 1)
    counts[0] = 1.0
    for r in doubled:  # counts[s]: sign patterns of the ranks so far whose + ranks sum (doubled) to s
        counts[r:] = counts[r:] + counts[: total + 1 - r].copy()
    p = float(counts[int(round(2 * w_plus)) :].sum() / 2**n)
    return w_plus, p, n


def bootstrap_mean(values: np.ndarray, draws: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """The mean and a 95% percentile bootstrap interval of it (resampling the values with replacement)."""
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(draws, len(values)), replace=True).mean(axis=1)
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def report(records: list[dict[str, Any]], tag: str = "") -> list[str]:
    """The markdown table (per env: steps, seeds, mean return with a bootstrap interval per library, wall and
    CPU seconds) and the paired tests over (env, seed) pairs."""
    records = [r for r in records if r["lib"] == "sb3" or r.get("tag", "") == tag]
    by_key = {(r["env"], r["seed"], r["lib"]): r for r in records}
    pairs = sorted({(e, s) for (e, s, lib) in by_key if lib == "pgrad" and (e, s, "sb3") in by_key})
    lines = [
        "| env | steps | seeds | pgrad eval (95% CI) | SB3 eval (95% CI) | pgrad last-20 | SB3 last-20 "
        "| pgrad wall / CPU s | SB3 wall / CPU s | load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for env in sorted({e for e, _ in pairs}, key=list(SUITE).index if all(e in SUITE for e, _ in pairs) else str):
        seeds = [s for e, s in pairs if e == env]
        cells = []
        for lib in ("pgrad", "sb3"):
            mean, low, high = bootstrap_mean(np.array([by_key[(env, s, lib)]["eval_mean"] for s in seeds]))
            cells.append(f"{mean:.1f} ({low:.1f}, {high:.1f})")
        for lib in ("pgrad", "sb3"):
            last = [by_key[(env, s, lib)]["last20"] for s in seeds if by_key[(env, s, lib)]["last20"] is not None]
            cells.append(f"{np.mean(last):.1f}" if last else "-")
        for lib in ("pgrad", "sb3"):
            wall = np.mean([by_key[(env, s, lib)]["wall"] for s in seeds])
            cpu = np.mean([by_key[(env, s, lib)]["cpu"] for s in seeds])
            cells.append(f"{wall:.0f} / {cpu:.0f}")
        loads = [x for s in seeds for lib in ("pgrad", "sb3") for x in by_key[(env, s, lib)]["load"]]
        cells.append(f"{min(loads):.1f}-{max(loads):.1f}")
        steps = by_key[(env, seeds[0], "pgrad")]["steps"]
        lines.append(f"| {env} | {steps // 1000}k | {len(seeds)} | " + " | ".join(cells) + " |")
    paired = [by_key[(e, s, lib)] for e, s in pairs for lib in ("pgrad", "sb3")]
    for metric, label in (("eval_mean", "final evaluation"), ("last20", "last-20 training episodes")):
        scores = normalised(paired, metric)
        diffs = np.array(
            [scores[(e, s, "pgrad")] - scores[(e, s, "sb3")] for e, s in pairs if (e, s, "pgrad") in scores]
        )
        if len(diffs) == 0:
            continue
        w_plus, p, n = wilcoxon_greater(diffs)
        _, p_less, _ = wilcoxon_greater(-diffs)
        mean, low, high = bootstrap_mean(diffs)
        wins = int((diffs > 0).sum())
        losses = int((diffs < 0).sum())
        lines.append("")
        lines.append(
            f"Paired over {len(diffs)} (env, seed) pairs, {label}, normalised per env by the pooled range: "
            f"mean pgrad - SB3 = {mean:+.3f} (95% bootstrap {low:+.3f}, {high:+.3f}); pgrad higher in {wins}, "
            f"lower in {losses}; one-sided Wilcoxon signed-rank (n={n}, W+={w_plus:.1f}): "
            f"p(pgrad > SB3) = {p:.4f}, p(pgrad < SB3) = {p_less:.4f}."
        )
    walls = {lib: sum(by_key[(e, s, lib)]["wall"] for e, s in pairs) for lib in ("pgrad", "sb3")}
    cpus = {lib: sum(by_key[(e, s, lib)]["cpu"] for e, s in pairs) for lib in ("pgrad", "sb3")}
    if pairs:
        lines.append("")
        lines.append(
            f"Total over the pairs: pgrad {walls['pgrad']:.0f} s wall / {cpus['pgrad']:.0f} s CPU, "
            f"SB3 {walls['sb3']:.0f} s wall / {cpus['sb3']:.0f} s CPU (pgrad / SB3 wall = "
            f"{walls['pgrad'] / walls['sb3']:.2f})."
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=list(SUITE))
    parser.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    parser.add_argument("--steps", type=int, default=None, help="env steps per run (default: the suite's)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DATA)
    parser.add_argument("--tag", default="", help="label a variant's records (a pilot's); the report reads one tag")
    parser.add_argument("--pgrad-set", action="append", default=[], help="a --set override for pgrad (pilots)")
    parser.add_argument("--libs", nargs="+", default=["pgrad", "sb3"])
    parser.add_argument("--report", action="store_true", help="print the table from --out and exit")
    args = parser.parse_args()
    if args.report:
        print("\n".join(report(read_records(args.out), args.tag)))
        return
    from pgrad.presets import preset_for

    with_preset = [env for env in args.envs if preset_for("ppo", env) is not None]
    if with_preset:
        raise SystemExit(f"these envs have a pgrad PPO preset, not its defaults: {with_preset}")
    done = {key(r) for r in read_records(args.out)}
    jobs = []
    for seed in args.seeds:  # seed-major: a sweep cut short still holds every env
        for env in args.envs:
            for lib in args.libs:
                steps = args.steps or SUITE.get(env, 100_000)
                job = {"env": env, "seed": seed, "lib": lib, "steps": steps, "tag": args.tag if lib == "pgrad" else ""}
                job["pgrad_sets"] = args.pgrad_set
                if key(job) not in done:
                    jobs.append(job)
    print(f"{len(jobs)} runs to do ({len(done)} records already in {args.out})", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("spawn")
    # workers live for the whole sweep (imports once); every run seeds everything it uses itself
    with context.Pool(args.jobs) as pool:
        for record in pool.imap_unordered(run_job, jobs):
            with args.out.open("a") as file:
                file.write(json.dumps(record) + "\n")
            what = f"{record['finished']} {record['env']} s{record['seed']} {record['lib']}"
            print(
                f"{what}: eval {record['eval_mean']:.1f} last20 {record['last20']} wall {record['wall']:.0f}s "
                f"cpu {record['cpu']:.0f}s",
                flush=True,
            )


if __name__ == "__main__":
    main()
