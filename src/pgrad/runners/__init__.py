"""Runners: the loops that train an algorithm, chosen by the algorithm's kind (``pgrad.registry``).

- ``on_policy``: the synchronous collect -> prepare -> update loop;
- ``asynchronous``: A3C's coordinator and its Hogwild workers;
- ``off_policy``: DDPG, TD3 and SAC: act, store in the replay buffer, sampled gradient steps;
- ``actor_learner``: IMPALA: the on-policy loop with the asynchronous Ray actors' collector
  (``pgrad.runners.ray_backend``); ``run.backend: ray`` puts any on-policy algorithm's rollouts on Ray workers.
"""

from __future__ import annotations

from typing import Any

from pgrad.config import TrainConfig
from pgrad.registry import get_algorithm


def runner_for(config: TrainConfig) -> Any:
    """The runner class for the config's algorithm, chosen by its kind (imported on demand, so a
    command that runs PPO never imports the multiprocessing machinery of A3C)."""
    kind = get_algorithm(config.algo).kind
    if kind == "asynchronous":
        from pgrad.runners.asynchronous import A3CRunner

        return A3CRunner
    if kind == "off_policy":
        from pgrad.runners.off_policy import OffPolicyRunner

        return OffPolicyRunner
    from pgrad.runners.on_policy import OnPolicyRunner

    return OnPolicyRunner
