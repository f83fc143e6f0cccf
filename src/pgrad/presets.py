"""Tuned starting points per (algorithm, environment), each with where its values come from.

A preset is applied automatically when ``pgrad train`` is given a matching ``--env`` (turn it
off with ``--no-preset``); config files and ``--set`` override it key by key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Preset:
    source: str
    values: dict[str, dict[str, Any]]


PRESETS: dict[tuple[str, str], Preset] = {
    ("ppo", "CartPole-v1"): Preset(
        "rl-baselines3-zoo hyperparams/ppo.yml, CartPole-v1 (8 envs, n_steps 32, 20 epochs, lin_1e-3 lr and clip)",
        {
            "env": {"num_envs": 8},
            "run": {"total_steps": 100_000},
            "ppo": {
                "num_steps": 32,
                "minibatch_size": 256,
                "num_epochs": 20,
                "gamma": 0.98,
                "gae_lambda": 0.8,
                "ent_coef": 0.0,
                "learning_rate": 1e-3,
                "anneal_lr": True,
                "clip_eps": 0.2,
                "anneal_clip": True,
            },
        },
    ),
    ("ppo", "Acrobot-v1"): Preset(
        "rl-baselines3-zoo hyperparams/ppo.yml, Acrobot-v1 (16 envs, n_steps 256, 4 epochs, normalised obs and reward)",
        {
            "env": {"num_envs": 16, "norm_obs": True, "norm_reward": True},
            "run": {"total_steps": 1_000_000},
            "ppo": {
                "num_steps": 256,
                "minibatch_size": 64,
                "num_epochs": 4,
                "gamma": 0.99,
                "gae_lambda": 0.94,
                "ent_coef": 0.0,
                "anneal_lr": False,
            },
        },
    ),
    ("ppo", "Pendulum-v1"): Preset(
        "rl-baselines3-zoo hyperparams/ppo.yml, Pendulum-v1 (4 envs, n_steps 1024, gamma 0.9, lr 1e-3, 10 epochs), "
        "without gSDE; tuned here for a 200k-step budget (benchmarks/RESULTS.md)",
        {
            "env": {"num_envs": 4, "norm_obs": True},
            "run": {"total_steps": 200_000},
            "ppo": {
                "num_steps": 1024,
                "minibatch_size": 64,
                "num_epochs": 10,
                "gamma": 0.9,
                "gae_lambda": 0.95,
                "learning_rate": 1e-3,
                "anneal_lr": True,
                "clip_eps": 0.2,
                "ent_coef": 0.0,
            },
        },
    ),
    ("ppo", "HalfCheetah-v5"): Preset(
        "CleanRL ppo_continuous_action.py defaults (Huang et al. 2022): 1 env, 2048 steps, 32 minibatches, "
        "10 epochs, clipped value loss, normalised obs and reward",
        {
            "env": {"num_envs": 1, "norm_obs": True, "norm_reward": True},
            "run": {"total_steps": 1_000_000},
            "ppo": {
                "num_steps": 2048,
                "minibatch_size": 64,
                "num_epochs": 10,
                "gamma": 0.99,
                "gae_lambda": 0.95,
                "learning_rate": 3e-4,
                "anneal_lr": True,
                "clip_eps": 0.2,
                "clip_vf": 0.2,
                "ent_coef": 0.0,
                "vf_coef": 0.5,
                "max_grad_norm": 0.5,
            },
        },
    ),
}


def preset_for(algo: str, env_id: str) -> Preset | None:
    return PRESETS.get((algo, env_id))
