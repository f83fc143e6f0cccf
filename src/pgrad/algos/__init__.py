"""The algorithm registry and the contract every on-policy algorithm meets.

The one training loop (``pgrad.train``) only ever calls what ``OnPolicyAlgorithm`` lists, so an
algorithm is a small file: its config, its loss, ``prepare`` and ``update``. Nothing inherits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from pgrad.algos.a2c import A2C, A2CConfig
from pgrad.algos.a3c import A3C, A3CConfig, A3CTrainer
from pgrad.algos.actor_critic import ActorCriticAlgorithm, ActorCriticConfig
from pgrad.algos.ppo import PPO, PPOConfig
from pgrad.algos.ppo_kl import PPOKL, PPOKLConfig
from pgrad.algos.reinforce import Reinforce, ReinforceConfig
from pgrad.algos.trpo import NPGConfig, TRPOConfig, build_npg, build_trpo
from pgrad.errors import ConfigError
from pgrad.nets import ActingPolicy, ActionSpec
from pgrad.rollout import Batch, Rollout


class OnPolicyAlgorithm(Protocol):
    """What the loop calls. An algorithm that learns from whole episodes (REINFORCE) also has an
    ``episodes_per_update: int`` attribute; the trainer then collects that many complete episodes
    instead of ``rollout_length`` steps per env (see ``RolloutCollector.collect_episodes``)."""

    name: str

    @property
    def rollout_length(self) -> int: ...  # steps per env per rollout

    @property
    def gamma(self) -> float: ...  # for reward scaling

    def acting_policy(self) -> ActingPolicy: ...

    def prepare(self, rollout: Rollout) -> tuple[Batch, dict[str, float]]: ...

    def update(self, batch: Batch, progress: float, rng: np.random.Generator) -> dict[str, float]: ...

    def modules(self) -> dict[str, torch.nn.Module]: ...

    def optimizers(self) -> dict[str, torch.optim.Optimizer]: ...

    def extra_state(self) -> dict[str, Any]: ...

    def load_extra_state(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class AlgorithmSpec:
    name: str
    summary: str
    config_cls: type
    build: Callable[[Any, int, ActionSpec], OnPolicyAlgorithm]
    action_kinds: tuple[str, ...] = ("discrete", "continuous")
    # For an algorithm that cannot run on the synchronous loop (A3C): called instead of
    # pgrad.train.Trainer as trainer(config, run_dir, resume, console); the result has the
    # Trainer's .train() -> TrainResult and .stop_requested. None: pgrad.train.Trainer.
    trainer: Callable[..., Any] | None = None


ALGORITHMS: dict[str, AlgorithmSpec] = {
    "ppo": AlgorithmSpec("ppo", "Proximal Policy Optimization (clipped surrogate)", PPOConfig, PPO),
    "reinforce": AlgorithmSpec(
        "reinforce", "REINFORCE: Monte Carlo policy gradient on whole episodes, optional value baseline",
        ReinforceConfig, Reinforce,
    ),
    "actor_critic": AlgorithmSpec(
        "actor_critic", "Actor-critic with TD(0)/n-step advantages, separate actor and critic learning rates",
        ActorCriticConfig, ActorCriticAlgorithm,
    ),
    "a2c": AlgorithmSpec("a2c", "Advantage actor-critic, synchronous (n-step or GAE advantages)", A2CConfig, A2C),
    "trpo": AlgorithmSpec(
        "trpo", "Trust Region Policy Optimization (natural step + line search)", TRPOConfig, build_trpo
    ),
    "npg": AlgorithmSpec("npg", "Natural policy gradient (the TRPO step without line search)", NPGConfig, build_npg),
    "ppo_kl": AlgorithmSpec("ppo_kl", "PPO with an adaptive KL penalty (PPO paper, variant 2)", PPOKLConfig, PPOKL),
    "a3c": AlgorithmSpec(
        "a3c", "Asynchronous advantage actor-critic (Hogwild workers, shared RMSprop/Adam)", A3CConfig, A3C,
        trainer=A3CTrainer,
    ),
}


def get_algorithm(name: str) -> AlgorithmSpec:
    if name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm '{name}' (allowed: {', '.join(sorted(ALGORITHMS))})")
    return ALGORITHMS[name]
