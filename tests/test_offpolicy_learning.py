"""SAC, TD3 and DDPG learn Pendulum-v1 within a CI-sized budget, from their Pendulum presets.

Deterministic evaluation every 1000 env steps (10 episodes, the guard's own evaluation); a run stops
once it reaches -400 (a random policy scores about -1200 to -1500, a solved one about -150). Measured
(torch 2.13 CPU, 10-episode evaluations), the first evaluation at or above -400 came at:
SAC 3k / 3k / 4k steps, TD3 6k / 6k / 6k, DDPG 4k / 4k / 4k for seeds 1 / 2 / 3 (each run 10-25 s
on one thread). Budgets leave room above the slowest seed. Seed 1 is in the fast suite; seeds 2 and 3
are marked slow. A healthy learning run must raise no guard warning either.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from pgrad.runners.off_policy import OffPolicyRunner
from pgrad.runs import resolve_config

THRESHOLD = -400.0
BUDGETS = {"sac": 6000, "td3": 8000, "ddpg": 6000}


class StopAtEvaluation:
    """A metrics sink: the first step whose evaluation reaches the threshold, then a stop request."""

    def __init__(self, runner: OffPolicyRunner) -> None:
        self.runner = runner
        self.reached_at: int | None = None
        self.evaluations: list[tuple[int, float]] = []

    def write(self, metrics: dict[str, Any]) -> None:
        if "eval/return_mean" not in metrics:
            return
        self.evaluations.append((metrics["step"], metrics["eval/return_mean"]))
        if self.reached_at is None and metrics["eval/return_mean"] >= THRESHOLD:
            self.reached_at = metrics["step"]
            self.runner.stop_requested = True

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def learn(algo: str, seed: int, tmp_path) -> StopAtEvaluation:
    sets = [
        "run.progress=false",
        "run.tensorboard=false",
        "guard.eval_every=1000",
        "guard.eval_episodes=10",
        "run.checkpoint_every=1000000",
    ]
    config, preset = resolve_config(algo, "Pendulum-v1", sets=sets, total_steps=BUDGETS[algo], seed=seed)
    assert preset is not None and "rl-baselines3-zoo" in preset
    runner = OffPolicyRunner(config, tmp_path / "run", console=False)
    stopper = StopAtEvaluation(runner)
    runner.run.sinks.append(stopper)
    runner.train()
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    alarms = [e for e in events if e["kind"].startswith(("warning.", "critical.", "recovery."))]
    assert not alarms, alarms
    return stopper


@pytest.mark.parametrize("algo", ["sac", "td3", "ddpg"])
def test_learns_pendulum_from_seed_1(algo, tmp_path):
    stopper = learn(algo, 1, tmp_path)
    assert stopper.reached_at is not None, f"{algo} evaluations: {stopper.evaluations}"


@pytest.mark.slow
@pytest.mark.parametrize("seed", [2, 3])
@pytest.mark.parametrize("algo", ["sac", "td3", "ddpg"])
def test_learns_pendulum_from_seeds_2_and_3(algo, seed, tmp_path):
    stopper = learn(algo, seed, tmp_path)
    assert stopper.reached_at is not None, f"{algo} seed {seed} evaluations: {stopper.evaluations}"
