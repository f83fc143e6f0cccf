"""The algorithm registry: name -> config class, builder, the kind of loop that runs it.

The registry holds no trainer: ``kind`` tells the CLI which runner to use (``pgrad.runners``), so
algorithms never import the loop and the loop never imports a particular algorithm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from pgrad.algos.a2c import A2C, A2CConfig
from pgrad.algos.a3c import A3C, A3CConfig
from pgrad.algos.actor_critic import ActorCriticAlgorithm, ActorCriticConfig
from pgrad.algos.contract import OffPolicyAlgorithm, OnPolicyAlgorithm
from pgrad.algos.ddpg import DDPG, DDPGConfig
from pgrad.algos.impala import Impala, ImpalaConfig
from pgrad.algos.ppo import PPO, PPOConfig
from pgrad.algos.ppo_kl import PPOKL, PPOKLConfig
from pgrad.algos.reinforce import Reinforce, ReinforceConfig
from pgrad.algos.sac import SAC, SACConfig
from pgrad.algos.td3 import TD3, TD3Config
from pgrad.algos.trpo import NaturalGradient, NPGConfig, TRPOConfig
from pgrad.errors import ConfigError
from pgrad.nets import ActionSpec, ObsShape

# One spec class per kind of loop, each with its own learner type: the on-policy loop calls what
# OnPolicyAlgorithm lists, the off-policy loop what OffPolicyAlgorithm lists, and A3C's coordinator
# drives its workers around an A3C. ``kind`` tells the CLI which runner to use (pgrad.runners.runner_for);
# a check on ``spec.kind`` narrows a spec to its class, so the learner a builder returns has its loop's type.
# ``build``: (the algorithm's config, observation shape, action space, run.device) -> the learner. The config
# is an instance of ``config_cls`` (pgrad.runs builds it from that class); its type is Any here because it
# differs per entry, and Python's types cannot say "the class in this entry's config_cls" (a generic spec
# would be read as spec[Any] in the registry, so mypy would not check the pair either).


@dataclass(frozen=True)
class OnPolicySpec:
    """An algorithm of the synchronous collect -> prepare -> update loop (pgrad.runners.on_policy);
    ``actor_learner``: the same loop fed by asynchronous Ray actors, corrected off-policy (IMPALA's V-trace)."""

    name: str
    summary: str
    config_cls: type
    build: Callable[[Any, ObsShape, ActionSpec, torch.device], OnPolicyAlgorithm]
    kind: Literal["on_policy", "actor_learner"] = "on_policy"
    action_kinds: tuple[str, ...] = ("discrete", "continuous")
    # The algorithm's own default for env.num_envs where the shared one (8) does not suit it. Below presets,
    # config files and --set (pgrad.runs.resolve_config).
    num_envs: int | None = None


@dataclass(frozen=True)
class AsynchronousSpec:
    """An algorithm of Hogwild workers around shared parameters (pgrad.runners.asynchronous): A3C."""

    name: str
    summary: str
    config_cls: type
    build: Callable[[Any, ObsShape, ActionSpec, torch.device], A3C]
    kind: Literal["asynchronous"] = field(default="asynchronous", init=False)
    action_kinds: tuple[str, ...] = ("discrete", "continuous")
    num_envs: int | None = None


@dataclass(frozen=True)
class OffPolicySpec:
    """An algorithm of the act -> replay buffer -> sampled gradient steps loop (pgrad.runners.off_policy).
    Its networks are MLPs, so the observation is a vector's size (builders refuses images first); like SB3
    it takes continuous actions and a single env by default."""

    name: str
    summary: str
    config_cls: type
    build: Callable[[Any, int, ActionSpec, torch.device], OffPolicyAlgorithm]
    kind: Literal["off_policy"] = field(default="off_policy", init=False)
    action_kinds: tuple[str, ...] = ("continuous",)
    num_envs: int | None = 1


AlgorithmSpec = OnPolicySpec | AsynchronousSpec | OffPolicySpec


ALGORITHMS: dict[str, AlgorithmSpec] = {
    "ppo": OnPolicySpec("ppo", "Proximal Policy Optimization (clipped surrogate)", PPOConfig, PPO),
    "reinforce": OnPolicySpec(
        "reinforce",
        "REINFORCE: Monte Carlo policy gradient on whole episodes, optional value baseline",
        ReinforceConfig,
        Reinforce,
    ),
    "actor_critic": OnPolicySpec(
        "actor_critic",
        "Actor-critic with TD(0)/n-step advantages, separate actor and critic learning rates",
        ActorCriticConfig,
        ActorCriticAlgorithm,
    ),
    "a2c": OnPolicySpec("a2c", "Advantage actor-critic, synchronous (n-step or GAE advantages)", A2CConfig, A2C),
    "trpo": OnPolicySpec(
        "trpo", "Trust Region Policy Optimization (natural step + line search)", TRPOConfig, NaturalGradient
    ),
    "npg": OnPolicySpec(
        "npg", "Natural policy gradient (the TRPO step without line search)", NPGConfig, NaturalGradient
    ),
    "ppo_kl": OnPolicySpec("ppo_kl", "PPO with an adaptive KL penalty (PPO paper, variant 2)", PPOKLConfig, PPOKL),
    "a3c": AsynchronousSpec(
        "a3c", "Asynchronous advantage actor-critic (Hogwild workers, shared RMSprop/Adam)", A3CConfig, A3C
    ),
    "impala": OnPolicySpec(
        "impala",
        "IMPALA: asynchronous Ray actors with slightly stale weights, V-trace corrected learner (needs pgrad[ray])",
        ImpalaConfig,
        Impala,
        kind="actor_learner",
    ),
    "sac": OffPolicySpec(
        "sac",
        "Soft Actor-Critic: squashed Gaussian policy, twin Q, learned entropy temperature (replay)",
        SACConfig,
        SAC,
    ),
    "td3": OffPolicySpec(
        "td3",
        "Twin Delayed DDPG: twin Q min target, target policy smoothing, delayed actor updates (replay)",
        TD3Config,
        TD3,
    ),
    "ddpg": OffPolicySpec(
        "ddpg",
        "Deep Deterministic Policy Gradient: deterministic tanh actor, one critic, target networks (replay)",
        DDPGConfig,
        DDPG,
    ),
}


def get_algorithm(name: str) -> AlgorithmSpec:
    if name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm '{name}' (allowed: {', '.join(sorted(ALGORITHMS))})")
    return ALGORITHMS[name]
