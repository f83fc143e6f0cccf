"""The algorithm registry: name -> config class, builder, the kind of loop that runs it.

The registry holds no trainer: ``kind`` tells the CLI which runner to use (``pgrad.runners``), so
algorithms never import the loop and the loop never imports a particular algorithm.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
from pgrad.lm.config import (
    ALGO,
    DPO_ALGO,
    LM_GUARD_DEFAULTS,
    RM_ALGO,
    RUN_DEFAULTS,
    SFT_ALGO,
    LMDPOConfig,
    LMPPOConfig,
    LMRewardModelConfig,
    LMSFTConfig,
)
from pgrad.nets import ActionSpec

# on_policy: the synchronous collect -> prepare -> update loop (pgrad.runners.on_policy);
# asynchronous: Hogwild workers around shared parameters (pgrad.runners.asynchronous);
# off_policy: act -> replay buffer -> sampled gradient steps (pgrad.runners.off_policy);
# actor_learner: the on-policy loop fed by asynchronous Ray actors, corrected off-policy (IMPALA's V-trace);
# lm_ppo: PPO on a language model (sample -> score -> token GAE -> epochs, pgrad.runners.lm_ppo);
# lm_rows: the row-by-row language-model trainers (SFT, reward model, DPO: pgrad.runners.lm_rows).
LoopKind = Literal["on_policy", "asynchronous", "off_policy", "actor_learner", "lm_ppo", "lm_rows"]
LM_KINDS = ("lm_ppo", "lm_rows")
# The shared sections a user sets for an environment algorithm, in the order a bare --set key is looked up
# ("ALGO" stands for the algorithm's own section).
ENV_SECTIONS = ("env", "run", "ALGO", "guard", "ray")


@dataclass(frozen=True)
class AlgorithmSpec:
    name: str
    summary: str
    config_cls: type
    # (the algorithm's config, observation shape, action space, run.device) -> the learner. The shape is
    # an int (a vector's size), or an ImageShape for on-policy algorithms (builders refuses images for
    # the off-policy ones, whose networks are MLPs).
    # None for the language-model algorithms: their runners build the model (pgrad.runners.lm_*).
    build: Callable[[Any, Any, ActionSpec, torch.device], OnPolicyAlgorithm | OffPolicyAlgorithm] | None
    action_kinds: tuple[str, ...] = ("discrete", "continuous")
    kind: LoopKind = "on_policy"
    # The algorithm's own layer of defaults, below presets, config files and --set (pgrad.runs.resolve_config):
    # the replay algorithms take SB3's single env; a language-model run its run-section sizes (it counts
    # responses, pairs or demonstrations) and lm_ppo its guard levels.
    defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # The sections a config file or --set may hold, in the order a bare --set key is looked up.
    sections: tuple[str, ...] = ENV_SECTIONS

    @property
    def language_model(self) -> bool:
        """A language-model algorithm: its env section is its task (``env.id`` = the section's ``task``)."""
        return self.kind in LM_KINDS

    def section_names(self) -> tuple[str, ...]:
        """``sections`` with the algorithm's own name in place of ``ALGO``."""
        return tuple(self.name if name == "ALGO" else name for name in self.sections)


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
        defaults={"env": {"num_envs": 1}},
    ),
    "td3": AlgorithmSpec(
        "td3",
        "Twin Delayed DDPG: twin Q min target, target policy smoothing, delayed actor updates (replay)",
        TD3Config,
        TD3,
        action_kinds=("continuous",),
        kind="off_policy",
        defaults={"env": {"num_envs": 1}},
    ),
    "ddpg": AlgorithmSpec(
        "ddpg",
        "Deep Deterministic Policy Gradient: deterministic tanh actor, one critic, target networks (replay)",
        DDPGConfig,
        DDPG,
        action_kinds=("continuous",),
        kind="off_policy",
        defaults={"env": {"num_envs": 1}},
    ),
    ALGO: AlgorithmSpec(
        ALGO,
        "PPO on a causal language model: value head, per-token KL to the reference, or RLOO / GRPO (pgrad lm ppo)",
        LMPPOConfig,
        None,
        action_kinds=("tokens",),
        kind="lm_ppo",
        defaults={"run": RUN_DEFAULTS[ALGO], "guard": LM_GUARD_DEFAULTS},
        sections=("run", "ALGO", "guard"),
    ),
    RM_ALGO: AlgorithmSpec(
        RM_ALGO,
        "A reward model (or an ensemble) trained on preference pairs, Bradley-Terry (pgrad lm rm)",
        LMRewardModelConfig,
        None,
        action_kinds=("tokens",),
        kind="lm_rows",
        defaults={"run": RUN_DEFAULTS[RM_ALGO]},
        sections=("run", "ALGO"),
    ),
    SFT_ALGO: AlgorithmSpec(
        SFT_ALGO,
        "Supervised fine-tuning of a causal language model on demonstrations (pgrad lm sft)",
        LMSFTConfig,
        None,
        action_kinds=("tokens",),
        kind="lm_rows",
        defaults={"run": RUN_DEFAULTS[SFT_ALGO]},
        sections=("run", "ALGO"),
    ),
    DPO_ALGO: AlgorithmSpec(
        DPO_ALGO,
        "Direct Preference Optimization on preference pairs, no reward model (pgrad lm dpo)",
        LMDPOConfig,
        None,
        action_kinds=("tokens",),
        kind="lm_rows",
        defaults={"run": RUN_DEFAULTS[DPO_ALGO]},
        sections=("run", "ALGO"),
    ),
}


def get_algorithm(name: str) -> AlgorithmSpec:
    if name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm '{name}' (allowed: {', '.join(sorted(ALGORITHMS))})")
    return ALGORITHMS[name]
