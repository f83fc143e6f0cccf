"""Every algorithm learns something on CartPole-v1 within a CI-sized budget.

a2c, actor_critic and reinforce already have such a run in the fast suite
(tests/test_reinforce_ac_a2c.py::test_learns_cartpole_from_fixed_seed, to 150, under a second
each), so they are not repeated here; add a row here for each new algorithm instead.

One row per algorithm: the preset, seed 1, training until the mean of the last 20 episodes reaches
100 (a random policy scores about 22), or the step budget. The runs stop at the threshold, so each
costs a few seconds; the budgets are about twice the steps seed 1 needed when measured, which
leaves room for other library versions without letting a broken learner through. The longer runs
to higher returns are marked slow (`make test-slow`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pgrad.runners.asynchronous import A3CRunner
from pgrad.runners.on_policy import OnPolicyRunner
from pgrad.runs import resolve_config

THRESHOLD = 100.0


class StopAtReturn:
    """A metrics sink that records the first step at which the last-20-episode mean reaches the
    threshold and then asks the runner to stop (both runners check ``stop_requested``)."""

    def __init__(self, runner: Any, threshold: float) -> None:
        self.runner, self.threshold = runner, threshold
        self.reached_at: int | None = None
        self.best = 0.0

    def write(self, metrics: dict[str, Any]) -> None:
        if metrics.get("rollout/episodes", 0) < 20:
            return
        self.best = max(self.best, metrics.get("rollout/return_mean", 0.0))
        if self.reached_at is None and self.best >= self.threshold:
            self.reached_at = metrics["step"]
            self.runner.stop_requested = True

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


# Steps seed 1 needed to reach 100 when measured (torch 2.13 CPU): ppo 5.9k, trpo 7.2k, npg 13.3k,
# ppo_kl 3.8k; a3c 3-7k (asynchronous, so it varies from run to run even with one seed).
BUDGETS = {
    "ppo": 15_000,
    "trpo": 20_480,
    "npg": 25_600,
    "ppo_kl": 10_240,
    "a3c": 30_000,
}


@pytest.mark.parametrize(("algo", "budget"), list(BUDGETS.items()))
def test_learns_cartpole_within_a_ci_budget(algo, budget, tmp_path: Path, quiet_sets, hang_guard):
    config, _ = resolve_config(algo, "CartPole-v1", sets=quiet_sets, seed=1, total_steps=budget)
    runner_class = A3CRunner if algo == "a3c" else OnPolicyRunner
    runner = runner_class(config, tmp_path / "run", console=False)
    stop = StopAtReturn(runner, THRESHOLD)
    runner.sinks.append(stop)
    with hang_guard(300):  # a hang guard only: these runs take seconds
        runner.train()
    assert stop.reached_at is not None, (
        f"{algo}: best last-20-episode mean {stop.best:.1f} < {THRESHOLD} in {budget} steps"
    )
    assert stop.reached_at <= budget
