"""Building a run's pieces from its config: the environments (with normalisers) and the algorithm.

Used by every runner, by ``pgrad.evaluate`` and by the A3C workers, so all of them build the same
thing from the same config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from pgrad.algos.contract import OnPolicyAlgorithm
from pgrad.config import TrainConfig
from pgrad.envs.factory import SpaceAdapter, make_vector_env
from pgrad.envs.normalize import ObsNormalizer, RewardScaler
from pgrad.errors import ConfigError
from pgrad.registry import get_algorithm


@dataclass
class Environment:
    """What the trainer and the evaluator both build from an ``EnvConfig``."""

    envs: Any
    adapter: SpaceAdapter
    obs_normalizer: ObsNormalizer
    reward_scaler: RewardScaler


def build_environment(
    config: TrainConfig, gamma: float, num_envs: int | None = None, render_mode: str | None = None
) -> Environment:
    envs = make_vector_env(config.env, num_envs=num_envs, render_mode=render_mode)
    adapter = SpaceAdapter(envs.single_observation_space, envs.single_action_space, config.env.rescale_actions)
    obs_normalizer = ObsNormalizer((adapter.obs_dim,), config.env.clip_obs, config.env.norm_obs)
    reward_scaler = RewardScaler(envs.num_envs, gamma, config.env.clip_reward, config.env.norm_reward)
    return Environment(envs, adapter, obs_normalizer, reward_scaler)


def algo_gamma(config: TrainConfig) -> float:
    """The discount the reward scaler uses: the algorithm's own gamma (0.99 if it has none)."""
    return float(getattr(config.algo_config, "gamma", 0.99))


def build_algorithm(config: TrainConfig, adapter: SpaceAdapter) -> OnPolicyAlgorithm:
    """The algorithm's learner, its model on ``run.device`` (the acting policy stays NumPy on the CPU)."""
    spec = get_algorithm(config.algo)
    if adapter.action.kind not in spec.action_kinds:
        raise ConfigError(
            f"algorithm '{config.algo}' does not support {adapter.action.kind} actions of {config.env.id} "
            f"(it supports: {', '.join(spec.action_kinds)})"
        )
    return spec.build(config.algo_config, adapter.obs_dim, adapter.action, torch.device(config.run.device))
