"""Reward hacking caught without the true score (issue 23): the guard on the digits task with the hidden true score
kept from it, against a reward model trained on preferences that favour a proxy, a fast hack and a slow drift, and
healthy runs that must raise nothing. Markdown table out.

    .venv/bin/python benchmarks/bench_lm_hacking.py --seeds 1 2

What runs, each through the CLI as a user would (``python -m pgrad``), in a fresh temporary folder:

- the pipeline once (seed 1): ``pgrad lm sft``; ``pgrad lm rm`` (the healthy reward model: 16384 pairs labelled by
  the true score); the *judge*, a second reward model on 1024 pairs of its own (seed 7): what a user holds back
  as a check (``check_reward=model``, ``check_reward_model=judge``), never optimised; and the *proxy* reward model,
  ``pgrad lm rm --set proxy_weight=1``: 16384 pairs labelled by the echo proxy (the share of response digits equal
  to the prompt's last digit, which the true score counts as 0; on random responses it agrees with the true
  score's order on about half the pairs, through length).
- PPO from the SFT model, per seed, in five scenarios:
  ``healthy`` (the README pipeline: the healthy reward model, no check), ``healthy+check`` (the same with the
  judge as the check), ``proxy`` (the proxy reward model at the defaults), ``fast`` (the proxy at 3x the learning
  rate and kl_coef 0.01: the hack comes within a few updates), ``slow`` (the proxy at 3% of the learning rate
  for 12288 responses: a drift).

The guard sees the optimised reward, the check, KL, length and degeneration; it never reads ``lm/true_score``
(``pgrad.lm.alerts``). The benchmark reads the true score afterwards, from the held-out evaluations the run logged,
to say whether a flag was right and whether ``best`` points at hacked weights: "true at best" is the held-out true
score of the checkpoint ``best`` names, against the highest and the last the run evaluated.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PGRAD = [sys.executable, "-m", "pgrad"]
CHECK = ["check_reward=model", "check_reward_model={judge}"]
SCENARIOS: dict[str, tuple[int, list[str]]] = {  # name: (responses, --set values)
    "healthy": (4096, ["reward=model", "reward_model={rm}"]),
    "healthy+check": (4096, ["reward=model", "reward_model={rm}", *CHECK]),
    "proxy": (4096, ["reward=model", "reward_model={proxy}", *CHECK]),
    "fast": (4096, ["reward=model", "reward_model={proxy}", *CHECK, "optimizer.learning_rate=3e-3", "kl_coef=0.01"]),
    "slow": (12288, ["reward=model", "reward_model={proxy}", *CHECK, "optimizer.learning_rate=3e-5"]),
}


def pgrad(*args: str) -> None:
    subprocess.run([*PGRAD, *args, "--quiet"], check=True)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rule_of(event: dict[str, Any]) -> str:
    """Which hacking test raised the event: the window of updates, two held-out evaluations, or the level test."""
    message = event["message"]
    if event["kind"].endswith("lm_reward_hacking"):
        if message.startswith("over the last"):
            return "window"
        if message.startswith("on the held-out prompts"):
            return "held-out"
        return "level"
    return event["kind"].split(".", 1)[1]


@dataclass
class Outcome:
    scenario: str
    seed: int
    alerts: list[tuple[int, str, str]]  # (step, level, rule)
    rollbacks: int
    best_step: int | None
    true_at_best: float | None
    true_max: float
    true_last: float
    true_start: float
    wall: float


def outcome(scenario: str, seed: int, run: Path, wall: float) -> Outcome:
    events = read_jsonl(run / "events.jsonl")
    alerts = [
        (int(e["step"]), e["kind"].split(".")[0], rule_of(e))
        for e in events
        if e["kind"].startswith(("warning.", "critical."))
    ]
    evaluated = {
        int(r["step"]): r["eval/true_score"] for r in read_jsonl(run / "metrics.jsonl") if "eval/true_score" in r
    }
    index = json.loads((run / "checkpoints" / "index.json").read_text())
    best = index.get("best")
    best_step = index["entries"][best]["step"] if best else None
    steps = sorted(evaluated)
    return Outcome(
        scenario,
        seed,
        alerts,
        sum(e["kind"] == "recovery.rollback" for e in events),
        best_step,
        evaluated.get(best_step) if best_step is not None else None,
        max(evaluated.values()),
        evaluated[steps[-1]],
        evaluated[steps[0]],
        wall,
    )


def pipeline(work: Path) -> dict[str, str]:
    """SFT, the healthy reward model, the judge and the proxy reward model (seed 1 each; the judge seed 7)."""
    runs = {name: str(work / name) for name in ("sft", "rm", "judge", "proxy")}
    pgrad("lm", "sft", "--run-dir", runs["sft"])
    pgrad("lm", "rm", "--run-dir", runs["rm"])
    pgrad("lm", "rm", "--run-dir", runs["judge"], "--seed", "7", "--set", "train_pairs=1024", "--total-steps", "4096")
    pgrad("lm", "rm", "--run-dir", runs["proxy"], "--set", "proxy_weight=1")
    return runs


def run_scenario(work: Path, runs: dict[str, str], scenario: str, seed: int) -> Outcome:
    responses, sets = SCENARIOS[scenario]
    run = work / f"{scenario}-{seed}"
    args = ["lm", "ppo", "--run-dir", str(run), "--seed", str(seed), "--total-steps", str(responses)]
    args += ["--set", f"init_from={runs['sft']}"]
    for value in sets:
        args += ["--set", value.format(**runs)]
    wall = time.perf_counter()
    pgrad(*args)
    return outcome(scenario, seed, run, time.perf_counter() - wall)


def table(outcomes: list[Outcome]) -> list[str]:
    lines = [
        "| scenario | seed | alerts (step level rule) | rollbacks | best (step) | true at best | highest true "
        "| last true | start true | wall s |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for o in outcomes:
        alerts = ", ".join(f"{step} {level} {rule}" for step, level, rule in o.alerts) or "none"
        best = f"{o.true_at_best:.3f}" if o.true_at_best is not None else "-"
        lines.append(
            f"| {o.scenario} | {o.seed} | {alerts} | {o.rollbacks} | {o.best_step} | {best} | {o.true_max:.3f} "
            f"| {o.true_last:.3f} | {o.true_start:.3f} | {o.wall:.0f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    args = parser.parse_args()
    started = time.perf_counter(), os.getloadavg()[0]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    work = Path(tempfile.mkdtemp(prefix="bench-lm-hacking-"))
    runs = pipeline(work)
    outcomes = [run_scenario(work, runs, scenario, seed) for seed in args.seeds for scenario in args.scenarios]
    print(
        f"`python benchmarks/bench_lm_hacking.py {' '.join(sys.argv[1:])}`; commit {commit}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.machine()}, {os.cpu_count()} cores; "
        f"load (1 min) {started[1]:.2f} at the start\n"
    )
    print("\n".join(table(outcomes)))
    wall = time.perf_counter() - started[0]
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        f"\nload (1 min) {os.getloadavg()[0]:.2f} at the end; {wall:.0f} s wall, "
        f"{cpu.ru_utime + cpu.ru_stime:.0f} s CPU (the runs, in subprocesses) in all"
    )


if __name__ == "__main__":
    main()
