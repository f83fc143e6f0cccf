"""The guard's drill matrix: inject a fault into a real run and check what the guard made of it.

Each row is one run (preset, seed, drill) through the on-policy runner, guard on with its
defaults. The final column is a deterministic evaluation of the run's last checkpoint over 10
episodes (what ``pgrad eval RUN --episodes 10 --deterministic`` prints). Columns: rollbacks and
where the restored weights came from (memory / disk), whether the run halted, and the verdict
against the acceptance criterion of its group:

- ``ppo-cartpole``: PPO CartPole-v1 preset, ``lr_spike`` at 10k, 20k, 40k of 100k: final >= 475;
- ``ppo-pendulum``: PPO Pendulum-v1 preset, ``lr_spike`` at 50k of 200k: within 150 of the same
  seed without the drill (that run is in the table too);
- ``a2c``, ``trpo``: their CartPole-v1 presets, ``lr_spike`` at 20k: final >= 475;
- ``flip``: PPO CartPole ``reward_flip@15000:30000`` (a reward corrupted for 30k steps), seeds 1-5,
  with ``guard.eval_every=10000``: where the flip collapsed the policy for longer than the guard's
  ``eval_collapse_span`` (the training return below half its level at the flip for 10k steps), the
  collapse is detected and a pre-damage checkpoint reloaded (saved before the flip, or evaluated at
  least as well as the best evaluation before it); a shorter dip the run climbs out of by itself is
  left alone by design. Why these settings: a flip can only be caught against a confirmed evaluation
  from before it (the default schedule has its first at 25k, confirmed ~2.5k later), and it only
  damages a policy that still sees episodes end (a CartPole policy at 500 is truncated, never
  terminated, and a negated constant reward gives it nothing to unlearn: flips at 30k left 4 of 5
  seeds untouched);
- ``nan``: ``nan_grad@20000`` (one step: skipped, no halt) and ``nan_grad@20000:3000`` (sustained:
  halt, exit 3, dumps written);
- ``healthy`` (item 3, no drill): the ppo, a2c and trpo CartPole-v1 presets, the ppo Acrobot-v1 preset
  and PPO on LunarLander-v3 with rl-baselines3-zoo's settings (500k), seeds 1-3: no warning, no
  rollback, no stop. (The Pendulum preset's healthy runs are ``ppo-pendulum``'s reference rows; Hopper
  with SB3's defaults is in ``bench_parity.py``, whose table counts recoveries and warnings.)

    .venv/bin/python benchmarks/bench_guard.py                       # everything (~15 min here)
    .venv/bin/python benchmarks/bench_guard.py --groups ppo-cartpole --seeds 1 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgrad.errors import TrainingHalted
from pgrad.evaluate import evaluate
from pgrad.monitor.sinks import read_jsonl
from pgrad.runners.on_policy import OnPolicyRunner
from pgrad.runs import resolve_config

QUIET = ["run.progress=false", "run.tensorboard=false"]
# rl-baselines3-zoo's PPO settings for LunarLander (the healthy run that the old guard wrecked)
LUNAR_ZOO = (
    "env.num_envs=16",
    "ppo.num_steps=1024",
    "ppo.minibatch_size=64",
    "ppo.num_epochs=4",
    "ppo.gamma=0.999",
    "ppo.gae_lambda=0.98",
    "ppo.ent_coef=0.01",
    "ppo.optimizer.anneal_lr=false",
)


@dataclass(frozen=True)
class Drill:
    group: str
    algo: str
    env: str
    seed: int
    inject: str | None  # None: the same run without a drill (a reference)
    total_steps: int | None = None  # None: the preset's
    sets: tuple[str, ...] = ()  # the group's own settings
    preset: bool = True  # False: --no-preset (the settings are all in ``sets``)


def matrix(groups: list[str], seeds: list[int] | None) -> list[Drill]:
    def pick(default: list[int]) -> list[int]:
        return seeds or default

    rows: list[Drill] = []
    if "ppo-cartpole" in groups:
        rows += [
            Drill("ppo-cartpole", "ppo", "CartPole-v1", s, f"lr_spike@{at}")
            for s in pick([1, 2, 3, 4, 5])
            for at in (10_000, 20_000, 40_000)
        ]
    if "ppo-pendulum" in groups:
        for s in pick([1, 2, 3]):
            rows += [Drill("ppo-pendulum", "ppo", "Pendulum-v1", s, None)]
            rows += [Drill("ppo-pendulum", "ppo", "Pendulum-v1", s, "lr_spike@50000")]
    for algo in ("a2c", "trpo"):
        if algo in groups:
            rows += [Drill(algo, algo, "CartPole-v1", s, "lr_spike@20000") for s in pick([1, 2, 3])]
    if "flip" in groups:
        rows += [
            Drill("flip", "ppo", "CartPole-v1", s, "reward_flip@15000:30000", sets=("guard.eval_every=10000",))
            for s in pick([1, 2, 3, 4, 5])
        ]
    if "healthy" in groups:
        for algo, env in (
            ("ppo", "CartPole-v1"),
            ("a2c", "CartPole-v1"),
            ("trpo", "CartPole-v1"),
            ("ppo", "Acrobot-v1"),
        ):
            rows += [Drill("healthy", algo, env, s, None) for s in pick([1, 2, 3])]
        rows += [
            Drill("healthy", "ppo", "LunarLander-v3", s, None, 500_000, LUNAR_ZOO, preset=False)
            for s in pick([1, 2, 3])
        ]
    if "nan" in groups:
        for s in pick([1]):
            rows += [Drill("nan", "ppo", "CartPole-v1", s, "nan_grad@20000", 40_000)]
            rows += [Drill("nan", "ppo", "CartPole-v1", s, "nan_grad@20000:3000", 40_000)]
    return rows


def run(drill: Drill, folder: Path) -> dict[str, Any]:
    sets = QUIET + list(drill.sets) + ([f"guard.inject=[{drill.inject}]"] if drill.inject else [])
    config, _ = resolve_config(
        drill.algo, drill.env, sets=sets, seed=drill.seed, total_steps=drill.total_steps, use_preset=drill.preset
    )
    run_dir = folder / f"{drill.group}-{drill.algo}-{drill.seed}-{(drill.inject or 'none').replace('@', '_')}"
    started = time.perf_counter()
    halted = False
    try:
        OnPolicyRunner(config, run_dir, console=False).train()
    except TrainingHalted:
        halted = True
    seconds = time.perf_counter() - started
    events = read_jsonl(run_dir / "events.jsonl")
    rollbacks = [e for e in events if e["kind"] == "recovery.rollback"]
    final = None if halted else evaluate(run_dir, episodes=10, deterministic=True).mean
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    return {
        "drill": drill,
        "seconds": seconds,
        "halted": halted,
        "halt_kind": next(
            (e["kind"] for e in events if e["kind"] in ("critical.halted", "critical.recovery_cap")), None
        ),
        "dumps": (run_dir / "halt_trajectories.npz").is_file() and (run_dir / "halt_batch.npz").is_file(),
        "rollbacks": rollbacks,
        "skipped": sum(e["kind"] == "critical.nonfinite" for e in events),
        "warnings": sum(e["kind"].startswith("warning.") for e in events),
        "final": final,
        "train": [(m["step"], m["rollout/return_mean"]) for m in metrics if m.get("rollout/return_mean") is not None],
        "evaluations": [(m["step"], m["eval/return_mean"]) for m in metrics if "eval/return_mean" in m],
    }


def verdict(result: dict[str, Any], reference: dict[tuple[str, int], float]) -> str:
    drill: Drill = result["drill"]
    final = result["final"]
    if drill.group == "nan":
        sustained = ":" in (drill.inject or "")
        if sustained:
            return "ok" if result["halted"] and result["dumps"] else "FAIL (no halt/dumps)"
        return "ok" if not result["halted"] and result["skipped"] >= 1 else "FAIL"
    if drill.group == "healthy":
        quiet = result["warnings"] == result["skipped"] == 0 and not result["rollbacks"] and not result["halted"]
        return "ok (silent)" if quiet else "FAIL (a healthy run warned, was rolled back or stopped)"
    if drill.inject is None:
        return "reference"
    if drill.group == "flip":
        return flip_verdict(result)
    if drill.group == "ppo-pendulum":
        ref = reference.get((drill.env, drill.seed))
        if ref is None or final is None:
            return "?"
        return "ok" if final >= ref - 150 else f"FAIL ({final - ref:+.0f})"
    return "ok" if final is not None and final >= 475 else "FAIL (< 475)"


def flip_verdict(result: dict[str, Any]) -> str:
    """Caught where it collapsed the policy: an evaluation-collapse reload of a pre-damage checkpoint."""
    flip_at = int(result["drill"].inject.split("@")[1].split(":")[0])
    before = [r for s, r in result["train"] if s <= flip_at]
    after = [r for s, r in result["train"] if s > flip_at]
    if not before or not after:
        return "?"
    level, low = before[-1], min(after)
    reloads = [r for r in result["rollbacks"] if "evaluation" in r.get("reason", "")]
    if low >= 0.5 * level:
        return f"ok (no collapse: training return {level:.0f} -> min {low:.0f}{', reloaded' if reloads else ''})"
    span = 10_000  # guard.eval_collapse_span x guard.eval_every of this group
    below = [s for s, r in result["train"] if s > flip_at and r < 0.5 * level]
    longest, start, last = 0, None, None
    for s in below:  # the longest run of consecutive logged steps below half the level
        start = s if last is None or s - last > 2_048 else start
        last = s
        longest = max(longest, s - start)
    if not reloads and longest < span:
        return f"ok (dip {level:.0f} -> {low:.0f} for {longest} steps < {span}: left alone)"
    best_before = max((r for s, r in result["evaluations"] if s <= flip_at), default=None)

    def pre_damage(rollback: dict[str, Any]) -> bool:
        step, score = rollback.get("restored_step"), rollback.get("restored_score")
        return step is not None and (
            step <= flip_at or (score is not None and best_before is not None and score >= best_before)
        )

    if reloads and pre_damage(reloads[0]):
        return f"ok (collapse {level:.0f} -> {low:.0f} caught at {reloads[0]['step']})"
    return f"FAIL (collapse {level:.0f} -> {low:.0f}, no reload of a pre-damage checkpoint)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    all_groups = ["ppo-cartpole", "ppo-pendulum", "a2c", "trpo", "flip", "nan", "healthy"]
    parser.add_argument("--groups", nargs="+", default=all_groups, choices=all_groups)
    parser.add_argument("--seeds", nargs="+", type=int, default=None)
    parser.add_argument("--algos", nargs="+", default=None, help="only the rows of these algorithms")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_guard_") as tmp:
        for drill in [d for d in matrix(args.groups, args.seeds) if args.algos is None or d.algo in args.algos]:
            result = run(drill, Path(tmp))
            results.append(result)
            print(f"# {drill.group} {drill.algo} seed {drill.seed} {drill.inject}: final {result['final']}", flush=True)
    reference = {
        (r["drill"].env, r["drill"].seed): r["final"]
        for r in results
        if r["drill"].inject is None and r["final"] is not None
    }
    print(
        "| group | algo | env | seed | drill | rollbacks (restored from) | halted | warnings "
        "| final eval (10) | s | verdict |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        d: Drill = r["drill"]
        sources = ", ".join(f"{x.get('restored_from')}@{x.get('restored_step')}" for x in r["rollbacks"]) or "-"
        final = "-" if r["final"] is None else f"{r['final']:.1f}"
        halted = r["halt_kind"] or "no"
        print(
            f"| {d.group} | {d.algo} | {d.env} | {d.seed} | {d.inject or 'none'} | {len(r['rollbacks'])} ({sources}) "
            f"| {halted} | {r['warnings']} | {final} | {r['seconds']:.0f} | {verdict(r, reference)} |"
        )


if __name__ == "__main__":
    main()
