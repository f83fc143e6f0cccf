"""Memory and sparse-reward tasks from popgym and MiniGrid (issue 26), by their registered ids.

Two comparisons, each at equal steps, the arms of a seed back to back (which runs first alternates by seed):

- ``memory``: recurrent PPO (``network.recurrent=lstm``) against feed-forward PPO on ``popgym-RepeatFirstEasy-v0``:
  52 cards dealt one by one (the observation is the suit of the card just dealt, one-hot), and at every step the
  action must name the suit of the *first* card: +1/51 when right, -1/51 when wrong, so a perfect policy scores
  1 and one that cannot remember about -0.5 (it guesses among four suits).
- ``rnd``: PPO against PPO + RND (``ppo.rnd.enabled=true``, its defaults) on ``MiniGrid-DoorKey-5x5-v0``: pick up
  the key, open the door, reach the goal; reward ``1 - 0.9 x steps / 250`` on reaching it, 0 otherwise (episodes
  end at 250 steps). The observation is MiniGrid's 7x7x3 egocentric view and the direction (pgrad.envs.memory).

Per run: the mean return of the last 20 training episodes at the end and at its best, the first step at which it
reached the task's target, a deterministic evaluation of 20 episodes on separate envs after training, the
wall-clock seconds and the 1-minute load average before and after (the machine is shared: compare seconds only
within a table). Each arm's settings are printed as the ``pgrad train`` command that reproduces the run.

    nice -n 10 .venv/bin/python benchmarks/bench_memory.py memory --seeds 1 2 3
    nice -n 10 .venv/bin/python benchmarks/bench_memory.py rnd --seeds 1 2 3
    nice -n 10 .venv/bin/python benchmarks/bench_memory.py memory --env popgym-RepeatPreviousEasy-v0 --seeds 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pgrad.envs import make_vector_env
from pgrad.errors import TrainingHalted
from pgrad.monitor.evaluation import EVAL_SEED_OFFSET, run_episodes
from pgrad.runners.on_policy import OnPolicyRunner
from pgrad.runs import resolve_config

QUIET = ["run.progress=false", "run.tensorboard=false", "guard.eval_every=0", "run.checkpoint_every=100000000"]


@dataclass(frozen=True)
class Task:
    """One comparison: the env, the settings both arms share, each arm's own, the budget and the target."""

    env_id: str
    steps: int
    target: float
    shared: list[str]
    arms: dict[str, list[str]]


TASKS = {
    "memory": Task(
        "popgym-RepeatFirstEasy-v0",
        81_920,
        0.9,
        [
            "env.num_envs=16",
            "ppo.num_steps=64",
            "ppo.num_epochs=4",
            "ppo.minibatch_size=256",
            "ppo.gamma=0.5",  # each step's reward depends on that step's action only: a short horizon
            "ppo.ent_coef=0.01",
            "ppo.optimizer.learning_rate=0.001",
        ],
        {
            "lstm": ["ppo.network.recurrent=lstm", "ppo.network.recurrent_size=64", "ppo.network.sequence_length=16"],
            "feed-forward": [],
        },
    ),
    "rnd": Task(
        "MiniGrid-DoorKey-5x5-v0",
        81_920,
        0.8,
        ["env.num_envs=8", "ppo.num_steps=128", "ppo.num_epochs=4", "ppo.minibatch_size=256", "ppo.ent_coef=0.01"],
        {"ppo": [], "ppo+rnd": ["ppo.rnd.enabled=true"]},
    ),
}


def load() -> float:
    """The 1-minute load average."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def command(task: Task, arm: str, seed: int, steps: int) -> str:
    """The ``pgrad train`` line that makes this run."""
    sets = " ".join(f"--set {item}" for item in task.shared + task.arms[arm])
    return f"pgrad train ppo --env {task.env_id} --no-preset --seed {seed} --total-steps {steps} {sets}"


def one_run(task: Task, arm: str, seed: int, steps: int, root: Path) -> dict[str, float | None]:
    """Train one arm on one seed; its training curve's summary, a final evaluation, seconds and load."""
    sets = QUIET + task.shared + task.arms[arm]
    config, _ = resolve_config("ppo", task.env_id, sets=sets, seed=seed, total_steps=steps, use_preset=False)
    folder = root / f"{arm}-{seed}"
    load_before = load()
    runner = OnPolicyRunner(config, folder, console=False)
    started = time.perf_counter()
    halted = None
    try:
        runner.train()
    except TrainingHalted:  # the guard's recoveries ran out: the run as far as it got, and where it stopped
        halted = runner.step
    seconds = time.perf_counter() - started
    load_after = load()
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
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    # rows once 20 episodes have ended: before that the mean is over the few (DoorKey: lucky) early finishers
    curve = [(row["step"], row["rollout/return_mean"]) for row in rows if row.get("rollout/episodes", 0) >= 20]
    curve = curve or [(rows[-1]["step"], rows[-1].get("rollout/return_mean", float("nan")))]
    return {
        "final": curve[-1][1],
        "best": max(value for _, value in curve),
        "first": next((step for step, value in curve if value >= task.target), None),
        "eval": float(np.mean(returns)),
        "seconds": seconds,
        "load_before": load_before,
        "load_after": load_after,
        "halted": halted,
    }


def row(arm: str, seed: int, r: dict[str, float | None]) -> str:
    """One Markdown table row."""
    first = "never" if r["first"] is None else f"{int(r['first']):,}"
    if r["halted"] is not None:
        arm = f"{arm} (guard halted it at {int(r['halted']):,})"
    return (
        f"| {arm} | {seed} | {r['final']:.3f} | {r['best']:.3f} | {first} | {r['eval']:.3f} | {r['seconds']:.0f} "
        f"| {r['load_before']:.1f} / {r['load_after']:.1f} |"
    )


def main() -> None:
    """Both arms per seed, interleaved; prints the commands and a Markdown table with means."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("task", choices=list(TASKS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, help="env steps per run (default: the task's budget)")
    parser.add_argument("--arms", nargs="+", help="only these arms (default: all of the task's)")
    parser.add_argument("--env", help="another env id for the task's arms (e.g. popgym-RepeatPreviousEasy-v0)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # popgym's and MiniGrid's own deprecation notes, once per env
    task = TASKS[args.task]
    if args.env:
        task = dataclasses.replace(task, env_id=args.env)
    steps = args.steps or task.steps
    arms = args.arms or list(task.arms)
    for arm in arms:
        print(f"{arm}: {command(task, arm, args.seeds[0], steps)}")
    lines = [
        f"{task.env_id}, {steps:,} steps per run; first: step at which the 20-episode mean return reached "
        f"{task.target}",
        "",
        "| arm | seed | final mean (20 ep) | best mean | first | eval (20 ep, deterministic) | seconds | load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    results: dict[str, list[dict[str, float | None]]] = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory() as tmp:
        for index, seed in enumerate(args.seeds):
            for arm in arms if index % 2 == 0 else arms[::-1]:
                result = one_run(task, arm, seed, steps, Path(tmp))
                results[arm].append(result)
                lines.append(row(arm, seed, result))
                print(lines[-1], flush=True)
    lines.append("")
    for arm, runs in results.items():
        reached = sum(r["first"] is not None for r in runs)
        lines.append(
            f"- {arm}: mean final {statistics.mean(float(r['final'] or 0) for r in runs):.3f}, mean eval "
            f"{statistics.mean(float(r['eval'] or 0) for r in runs):.3f}, reached {task.target} in {reached}/"
            f"{len(runs)} seeds, mean {statistics.mean(float(r['seconds'] or 0) for r in runs):.0f} s"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
