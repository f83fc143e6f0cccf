"""The algorithm registry: name -> config class, builder, the kind of loop that runs it.

The registry holds no trainer: ``kind`` tells the CLI which runner to use (``pgrad.runners``), so
algorithms never import the loop and the loop never imports a particular algorithm.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Literal

import torch

from pgrad.algos.a2c import A2C, A2CConfig
from pgrad.algos.a3c import A3C, A3CConfig
from pgrad.algos.actor_critic import ActorCriticAlgorithm, ActorCriticConfig
from pgrad.algos.apex import ApexD4PGConfig, ApexDDPGConfig, ApexTD3Config
from pgrad.algos.contract import OffPolicyAlgorithm, OnPolicyAlgorithm
from pgrad.algos.d4pg import D4PG, D4PGConfig
from pgrad.algos.ddpg import DDPG, DDPGConfig
from pgrad.algos.impala import Impala, ImpalaConfig
from pgrad.algos.maddpg import MADDPGConfig
from pgrad.algos.mappo import IPPOConfig, MAPPOConfig
from pgrad.algos.ppo import PPO, PPOConfig
from pgrad.algos.ppo_kl import PPOKL, PPOKLConfig
from pgrad.algos.recurrent_sac import build_sac
from pgrad.algos.reinforce import Reinforce, ReinforceConfig
from pgrad.algos.sac import SACConfig
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
from pgrad.nets import ActionSpec, ObsLayout, ObsShape

# One spec class per kind of loop, each with its own learner type: the on-policy loop calls what
# OnPolicyAlgorithm lists, the off-policy loop what OffPolicyAlgorithm lists, and A3C's coordinator
# drives its workers around an A3C. ``kind`` tells the CLI which runner to use (pgrad.runners.runner_for);
# a check on ``spec.kind`` narrows a spec to its class, so the learner a builder returns has its loop's type.
# ``build``: (the algorithm's config, observation shape, action space, run.device) -> the learner. The config
# is an instance of ``config_cls`` (pgrad.runs builds it from that class); its type is Any here because it
# differs per entry, and Python's types cannot say "the class in this entry's config_cls" (a generic spec
# would be read as spec[Any] in the registry, so mypy would not check the pair either).


# The shared sections a user sets for an environment algorithm, in the order a bare --set key is looked up
# ("ALGO" stands for the algorithm's own section).
ENV_SECTIONS = ("env", "run", "ALGO", "guard", "ray")


@dataclass(frozen=True)
class SpecFields:
    """What every registry entry holds, whatever its loop: the kind-specific spec classes below add their
    ``build`` and ``kind`` (one level, a record's fields, no behaviour to override). An entry is written
    ``Spec(name, summary, config class, builder)``; the rest by keyword."""

    name: str
    summary: str
    config_cls: type
    _: KW_ONLY
    action_kinds: tuple[str, ...] = ("discrete", "continuous")
    # The algorithm's own layer of defaults, below presets, config files and --set (pgrad.runs.resolve_config):
    # the replay algorithms take SB3's single env; a language-model run its run-section sizes (it counts
    # responses, pairs or demonstrations) and lm_ppo its guard levels.
    defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # The sections a config file or --set may hold, in the order a bare --set key is looked up.
    sections: tuple[str, ...] = ENV_SECTIONS

    def section_names(self) -> tuple[str, ...]:
        """``sections`` with the algorithm's own name in place of ``ALGO``."""
        return tuple(self.name if name == "ALGO" else name for name in self.sections)


@dataclass(frozen=True)
class OnPolicySpec(SpecFields):
    """An algorithm of the synchronous collect -> prepare -> update loop (pgrad.runners.on_policy);
    ``actor_learner``: the same loop fed by asynchronous Ray actors, corrected off-policy (IMPALA's V-trace)."""

    build: Callable[[Any, ObsShape, ActionSpec, torch.device], OnPolicyAlgorithm]
    _: KW_ONLY
    kind: Literal["on_policy", "actor_learner"] = "on_policy"
    language_model: Literal[False] = False


@dataclass(frozen=True)
class AsynchronousSpec(SpecFields):
    """An algorithm of Hogwild workers around shared parameters (pgrad.runners.asynchronous): A3C."""

    build: Callable[[Any, ObsShape, ActionSpec, torch.device], A3C]
    _: KW_ONLY
    kind: Literal["asynchronous"] = "asynchronous"
    language_model: Literal[False] = False


@dataclass(frozen=True)
class OffPolicySpec(SpecFields):
    """An algorithm of the act -> replay buffer -> sampled gradient steps loop (pgrad.runners.off_policy).
    Its networks are MLPs on a vector's size, or on a layout's feature extractor (a Dict observation with an image,
    a custom torso); builders refuses a plain image first. Like SB3
    it takes continuous actions and a single env by default."""

    build: Callable[[Any, int | ObsLayout, ActionSpec, torch.device], OffPolicyAlgorithm]
    _: KW_ONLY
    kind: Literal["off_policy"] = "off_policy"
    language_model: Literal[False] = False
    action_kinds: tuple[str, ...] = ("continuous",)
    defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: {"env": {"num_envs": 1}})


@dataclass(frozen=True)
class LanguageModelSpec(SpecFields):
    """A language-model algorithm: ``lm_ppo`` (PPO, RLOO, GRPO: pgrad.runners.lm_ppo) or ``lm_rows`` (the
    row-by-row trainers SFT, reward model, DPO). Its runner builds the model (no ``build``); its env
    section is its task (``env.id`` = the section's ``task``)."""

    _: KW_ONLY
    kind: Literal["lm_ppo", "lm_rows"]
    language_model: Literal[True] = True
    action_kinds: tuple[str, ...] = ("tokens",)
    sections: tuple[str, ...] = ("run", "ALGO")


@dataclass(frozen=True)
class MultiAgentSpec(SpecFields):
    """A team algorithm on a PettingZoo parallel env (pgrad.runners.multi_agent): its runner builds the team's
    learner from the env's spaces (no ``build``); ``env.id`` names the team env ('mpe2:simple_spread_v3')."""

    _: KW_ONLY
    kind: Literal["multi_agent"] = "multi_agent"
    language_model: Literal[False] = False


AlgorithmSpec = OnPolicySpec | AsynchronousSpec | OffPolicySpec | LanguageModelSpec | MultiAgentSpec


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
    "a2c": OnPolicySpec(
        "a2c",
        "Advantage actor-critic, synchronous (n-step or GAE advantages)",
        A2CConfig,
        A2C,
    ),
    "trpo": OnPolicySpec(
        "trpo",
        "Trust Region Policy Optimization (natural step + line search)",
        TRPOConfig,
        NaturalGradient,
    ),
    "npg": OnPolicySpec(
        "npg",
        "Natural policy gradient (the TRPO step without line search)",
        NPGConfig,
        NaturalGradient,
    ),
    "ppo_kl": OnPolicySpec(
        "ppo_kl",
        "PPO with an adaptive KL penalty (PPO paper, variant 2)",
        PPOKLConfig,
        PPOKL,
    ),
    "a3c": AsynchronousSpec(
        "a3c",
        "Asynchronous advantage actor-critic (Hogwild workers, shared RMSprop/Adam)",
        A3CConfig,
        A3C,
    ),
    "impala": OnPolicySpec(
        "impala",
        "IMPALA: V-trace corrected learner; asynchronous Ray actors with slightly stale weights (--backend ray, "
        "pgrad[ray]) or the local envs",
        ImpalaConfig,
        Impala,
        kind="actor_learner",
    ),
    "sac": OffPolicySpec(
        "sac",
        "Soft Actor-Critic: squashed Gaussian policy, twin Q, learned entropy temperature (replay)",
        SACConfig,
        build_sac,  # SAC, or recurrent SAC with network.recurrent (pgrad.algos.recurrent_sac)
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
    "mappo": MultiAgentSpec(
        "mappo",
        "Multi-agent PPO: decentralised actors, a centralised critic on the global state (PettingZoo teams)",
        MAPPOConfig,
    ),
    "ippo": MultiAgentSpec(
        "ippo",
        "Independent PPO: decentralised actors, each agent's critic on its own observation (PettingZoo teams)",
        IPPOConfig,
    ),
    "maddpg": MultiAgentSpec(
        "maddpg",
        "Multi-agent DDPG: deterministic actors, centralised critics on every agent's observation and action, "
        "Gumbel-softmax for discrete actions, joint replay (PettingZoo teams)",
        MADDPGConfig,
    ),
    "d4pg": OffPolicySpec(
        "d4pg",
        "D4PG: deterministic actor, categorical distributional critic, n-step returns, prioritized replay",
        D4PGConfig,
        D4PG,
    ),
    # APE-X: the learner above unchanged, fed by actors with their own noise scales and stale weights
    # (pgrad.runners.apex; in-process and deterministic by default, on Ray with --backend ray)
    "apex_td3": OffPolicySpec(
        "apex_td3",
        "APE-X TD3: actors with per-actor noise scales send prioritised blocks to the TD3 learner (--backend ray)",
        ApexTD3Config,
        TD3,
    ),
    "apex_ddpg": OffPolicySpec(
        "apex_ddpg",
        "APE-X DDPG: actors with per-actor noise scales send prioritised blocks to the DDPG learner (--backend ray)",
        ApexDDPGConfig,
        DDPG,
    ),
    "apex_d4pg": OffPolicySpec(
        "apex_d4pg",
        "APE-X D4PG (distributed D4PG): actors send n-step prioritised blocks to the D4PG learner (--backend ray)",
        ApexD4PGConfig,
        D4PG,
    ),
    ALGO: LanguageModelSpec(
        ALGO,
        "PPO on a causal language model: value head, per-token KL to the reference, or RLOO / GRPO",
        LMPPOConfig,
        kind="lm_ppo",
        defaults={"run": RUN_DEFAULTS[ALGO], "guard": LM_GUARD_DEFAULTS},
        sections=("run", "ALGO", "guard"),
    ),
    RM_ALGO: LanguageModelSpec(
        RM_ALGO,
        "A reward model (or an ensemble) trained on preference pairs, Bradley-Terry",
        LMRewardModelConfig,
        kind="lm_rows",
        defaults={"run": RUN_DEFAULTS[RM_ALGO]},
    ),
    SFT_ALGO: LanguageModelSpec(
        SFT_ALGO,
        "Supervised fine-tuning of a causal language model on demonstrations",
        LMSFTConfig,
        kind="lm_rows",
        defaults={"run": RUN_DEFAULTS[SFT_ALGO]},
    ),
    DPO_ALGO: LanguageModelSpec(
        DPO_ALGO,
        "Direct Preference Optimization on preference pairs, no reward model",
        LMDPOConfig,
        kind="lm_rows",
        defaults={"run": RUN_DEFAULTS[DPO_ALGO]},
    ),
}


def get_algorithm(name: str) -> AlgorithmSpec:
    """The registry entry of an algorithm name; an unknown name is a ConfigError listing the allowed ones."""
    if name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm '{name}' (allowed: {', '.join(sorted(ALGORITHMS))})")
    return ALGORITHMS[name]
