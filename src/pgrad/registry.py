"""The algorithm registry: name -> config class, builder, the kind of loop that runs it.

The registry holds no trainer: ``kind`` tells the CLI which runner to use (``pgrad.runners``), so
algorithms never import the loop and the loop never imports a particular algorithm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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
from pgrad.nets import ActionSpec

# on_policy: the synchronous collect -> prepare -> update loop (pgrad.runners.on_policy);
# asynchronous: Hogwild workers around shared parameters (pgrad.runners.asynchronous);
# off_policy: act -> replay buffer -> sampled gradient steps (pgrad.runners.off_policy);
# actor_learner: the on-policy loop fed by asynchronous Ray actors, corrected off-policy (IMPALA's V-trace).
LoopKind = Literal["on_policy", "asynchronous", "off_policy", "actor_learner"]


@dataclass(frozen=True)
class AlgorithmSpec:
    name: str
    summary: str
    config_cls: type
    # (the algorithm's config, observation shape, action space, run.device) -> the learner. The shape is
    # an int (a vector's size), or an ImageShape for on-policy algorithms (builders refuses images for
    # the off-policy ones, whose networks are MLPs).
    build: Callable[[Any, Any, ActionSpec, torch.device], OnPolicyAlgorithm | OffPolicyAlgorithm]
    action_kinds: tuple[str, ...] = ("discrete", "continuous")
    kind: LoopKind = "on_policy"
    # The algorithm's own default for env.num_envs where the shared one (8) does not suit it: the replay
    # algorithms take SB3's single env. Below presets, config files and --set (pgrad.runs.resolve_config).
    num_envs: int | None = None


ALGORITHMS: dict[str, AlgorithmSpec] = {
    "ppo": AlgorithmSpec("ppo", "Proximal Policy Optimization (clipped surrogate)", PPOConfig, PPO),
    "reinforce": AlgorithmSpec(
        "reinforce",
        "REINFORCE: Monte Carlo policy gradient on whole episodes, optional value baseline",
        ReinforceConfig,
        Reinforce,
    ),
    "actor_critic": AlgorithmSpec(
        "actor_critic",
        "Actor-critic with TD(0)/n-step advantages, separate actor and critic learning rates",
        ActorCriticConfig,
        ActorCriticAlgorithm,
    ),
    "a2c": AlgorithmSpec("a2c", "Advantage actor-critic, synchronous (n-step or GAE advantages)", A2CConfig, A2C),
    "trpo": AlgorithmSpec(
        "trpo", "Trust Region Policy Optimization (natural step + line search)", TRPOConfig, NaturalGradient
    ),
    "npg": AlgorithmSpec(
        "npg", "Natural policy gradient (the TRPO step without line search)", NPGConfig, NaturalGradient
    ),
    "ppo_kl": AlgorithmSpec("ppo_kl", "PPO with an adaptive KL penalty (PPO paper, variant 2)", PPOKLConfig, PPOKL),
    "a3c": AlgorithmSpec(
        "a3c",
        "Asynchronous advantage actor-critic (Hogwild workers, shared RMSprop/Adam)",
        A3CConfig,
        A3C,
        kind="asynchronous",
    ),
    "impala": AlgorithmSpec(
        "impala",
        "IMPALA: asynchronous Ray actors with slightly stale weights, V-trace corrected learner (needs pgrad[ray])",
        ImpalaConfig,
        Impala,
        kind="actor_learner",
    ),
    "sac": AlgorithmSpec(
        "sac",
        "Soft Actor-Critic: squashed Gaussian policy, twin Q, learned entropy temperature (replay)",
        SACConfig,
        SAC,
        action_kinds=("continuous",),
        kind="off_policy",
        num_envs=1,
    ),
    "td3": AlgorithmSpec(
        "td3",
        "Twin Delayed DDPG: twin Q min target, target policy smoothing, delayed actor updates (replay)",
        TD3Config,
        TD3,
        action_kinds=("continuous",),
        kind="off_policy",
        num_envs=1,
    ),
    "ddpg": AlgorithmSpec(
        "ddpg",
        "Deep Deterministic Policy Gradient: deterministic tanh actor, one critic, target networks (replay)",
        DDPGConfig,
        DDPG,
        action_kinds=("continuous",),
        kind="off_policy",
        num_envs=1,
    ),
}


def get_algorithm(name: str) -> AlgorithmSpec:
    if name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm '{name}' (allowed: {', '.join(sorted(ALGORITHMS))})")
    return ALGORITHMS[name]
