"""Tuned starting points per (algorithm, environment), each with where its values come from.

A preset is applied automatically when ``pgrad train`` is given a matching ``--env`` (turn it
off with ``--no-preset``); config files and ``--set`` override it key by key. Where no preset
exists, ``generic_defaults_for`` picks the defaults for the env's kind of spaces (discrete or
continuous actions, vector or image observations), measured against SB3's defaults in
benchmarks/RESULTS.md ("Defaults on envs without a preset").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any


@dataclass(frozen=True)
class Preset:
    """A tuned starting point: the config layer it applies and where its values come from."""

    source: str
    values: dict[str, dict[str, Any]]


# CleanRL's ppo_continuous_action.py uses one set of values for every MuJoCo task (Huang et al. 2022,
# "The 37 implementation details of PPO"); its published 1M-step returns are the bar in benchmarks/.
_CLEANRL_CONTINUOUS_SOURCE = (
    "CleanRL ppo_continuous_action.py defaults (Huang et al. 2022): 1 env, 2048 steps, 32 minibatches, "
    "10 epochs, lr 3e-4 annealed, clipped value loss, normalised obs and reward"
)
_CLEANRL_CONTINUOUS: dict[str, dict[str, Any]] = {
    "env": {"num_envs": 1, "norm_obs": True, "norm_reward": True},
    "ppo": {
        "num_steps": 2048,
        "minibatch_size": 64,
        "num_epochs": 10,
        "gamma": 0.99,
        "gae_lambda": 0.95,
        "clip_eps": 0.2,
        "clip_vf": 0.2,
        "ent_coef": 0.0,
        "vf_coef": 0.5,
        "max_grad_norm": 0.5,
        "optimizer": {"learning_rate": 3e-4, "anneal_lr": True},
    },
}
_CLEANRL_MUJOCO = Preset(_CLEANRL_CONTINUOUS_SOURCE, {**_CLEANRL_CONTINUOUS, "run": {"total_steps": 1_000_000}})

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
                "clip_eps": 0.2,
                "anneal_clip": True,
                "optimizer": {"learning_rate": 1e-3, "anneal_lr": True},
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
                "optimizer": {"anneal_lr": False},
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
                "clip_eps": 0.2,
                "ent_coef": 0.0,
                "optimizer": {"learning_rate": 1e-3, "anneal_lr": True},
            },
        },
    ),
    ("ppo", "HalfCheetah-v5"): _CLEANRL_MUJOCO,
    ("ppo", "Hopper-v5"): _CLEANRL_MUJOCO,
    ("ppo", "Walker2d-v5"): _CLEANRL_MUJOCO,
    ("reinforce", "CartPole-v1"): Preset(
        "tuned here (no standard reference): 8 envs, 8 whole episodes per update, value baseline, "
        "normalised weights, lr 5e-3 policy / 3e-3 value (benchmarks/RESULTS.md)",
        {
            "env": {"num_envs": 8},
            "run": {"total_steps": 500_000},
            "reinforce": {
                "num_episodes": 8,
                "gamma": 0.99,
                "baseline": True,
                "normalize_returns": True,
                "optimizer": {"learning_rate": 0.005},
                "value_optimizer": {"learning_rate": 0.003},
            },
        },
    ),
    ("actor_critic", "CartPole-v1"): Preset(
        "tuned here: 8 envs x 8 steps per update, 5-step targets (TD(0), nstep_horizon 1, learns more "
        "slowly and less stably on CartPole), Adam 1e-3 for actor and critic",
        {
            "env": {"num_envs": 8},
            "run": {"total_steps": 100_000},
            "actor_critic": {"num_steps": 8, "nstep_horizon": 5, "gamma": 0.99},
        },
    ),
    ("actor_critic", "Pendulum-v1"): Preset(
        "tuned here: normalised obs and reward, gamma 0.9, 5-step targets; with the defaults (raw rewards, "
        "gamma 0.99) the policy drifts to about -1600 in 200k steps, with these about -1025 (seed 1)",
        {
            "env": {"num_envs": 8, "norm_obs": True, "norm_reward": True},
            "run": {"total_steps": 200_000},
            "actor_critic": {"num_steps": 8, "nstep_horizon": 5, "gamma": 0.9},
        },
    ),
    ("a2c", "CartPole-v1"): Preset(
        "rl-baselines3-zoo hyperparams/a2c.yml, CartPole-v1: 8 envs, ent_coef 0.0, 500k steps, otherwise SB3 "
        "A2C defaults (RMSprop 7e-4, n_steps 5, gamma 0.99, gae_lambda 1.0)",
        {
            "env": {"num_envs": 8},
            "run": {"total_steps": 500_000},
            "a2c": {"num_steps": 5, "ent_coef": 0.0},
        },
    ),
    ("a2c", "Pendulum-v1"): Preset(
        "rl-baselines3-zoo hyperparams/a2c.yml, Pendulum-v1 (8 envs, n_steps 8, gamma 0.9, gae_lambda 0.9, "
        "vf_coef 0.4, lin_7e-4, log_std_init -2, normalised obs and reward) without gSDE, which the zoo relies on: "
        "slow here (mean return about -1060 after 200k steps, seed 1; random is about -1200)",
        {
            "env": {"num_envs": 8, "norm_obs": True, "norm_reward": True},
            "run": {"total_steps": 1_000_000},
            "a2c": {
                "num_steps": 8,
                "gamma": 0.9,
                "gae_lambda": 0.9,
                "vf_coef": 0.4,
                "ent_coef": 0.0,
                "optimizer": {"learning_rate": 7e-4, "anneal_lr": True},
                "network": {"log_std_init": -2.0},
            },
        },
    ),
    ("trpo", "CartPole-v1"): Preset(
        "rl-baselines3-zoo hyperparams/trpo.yml, CartPole-v1 (2 envs, n_steps 512, batch_size 512, cg_damping 1e-3, "
        "gae_lambda 0.98, lr 1e-3, n_critic_updates 20); other values sb3-contrib TRPO defaults",
        {
            "env": {"num_envs": 2},
            "run": {"total_steps": 100_000},
            "trpo": {
                "num_steps": 512,
                "minibatch_size": 512,
                "gamma": 0.99,
                "gae_lambda": 0.98,
                "cg_damping": 1e-3,
                "value_epochs": 20,
                "max_kl": 0.01,
                "value_optimizer": {"learning_rate": 1e-3},
            },
        },
    ),
    ("trpo", "Pendulum-v1"): Preset(
        "rl-baselines3-zoo hyperparams/trpo.yml, Pendulum-v1 (2 envs, n_steps 1024, gamma 0.9, n_critic_updates 15) "
        "without gSDE (pgrad has none); other values sb3-contrib TRPO defaults",
        {
            "env": {"num_envs": 2},
            "run": {"total_steps": 100_000},
            "trpo": {"num_steps": 1024, "minibatch_size": 128, "gamma": 0.9, "value_epochs": 15},
        },
    ),
    ("npg", "CartPole-v1"): Preset(
        "the trpo CartPole-v1 preset (rl-baselines3-zoo trpo.yml) without the line search, and with npg's own "
        "max_kl 0.005 (half the step; measured in benchmarks/RESULTS.md)",
        {
            "env": {"num_envs": 2},
            "run": {"total_steps": 100_000},
            "npg": {
                "num_steps": 512,
                "minibatch_size": 512,
                "gamma": 0.99,
                "gae_lambda": 0.98,
                "cg_damping": 1e-3,
                "value_epochs": 20,
                "max_kl": 0.005,
                "value_optimizer": {"learning_rate": 1e-3},
            },
        },
    ),
    ("npg", "Pendulum-v1"): Preset(
        "the trpo Pendulum-v1 preset (rl-baselines3-zoo trpo.yml, without gSDE) without the line search",
        {
            "env": {"num_envs": 2},
            "run": {"total_steps": 100_000},
            "npg": {"num_steps": 1024, "minibatch_size": 128, "gamma": 0.9, "value_epochs": 15},
        },
    ),
    ("ppo_kl", "CartPole-v1"): Preset(
        "the ppo CartPole-v1 preset (rl-baselines3-zoo ppo.yml: 8 envs, n_steps 32, 20 epochs, lr lin 1e-3) with "
        "the KL penalty in place of the clip; target_kl 0.01 and beta0 1 as in the PPO paper",
        {
            "env": {"num_envs": 8},
            "run": {"total_steps": 100_000},
            "ppo_kl": {
                "num_steps": 32,
                "minibatch_size": 256,
                "num_epochs": 20,
                "gamma": 0.98,
                "gae_lambda": 0.8,
                "optimizer": {"learning_rate": 1e-3, "anneal_lr": True},
                "target_kl": 0.01,
                "kl_coef_init": 1.0,
            },
        },
    ),
    ("ppo_kl", "Pendulum-v1"): Preset(
        "the ppo Pendulum-v1 preset (rl-baselines3-zoo ppo.yml: 4 envs, n_steps 1024, gamma 0.9, 10 epochs, "
        "normalised obs) with the KL penalty in place of the clip, and the PPO paper's lr 3e-4: with 1e-3 the "
        "unclipped surrogate shrank log std to -2 and 3 of 5 seeds stalled near -800 (benchmarks/RESULTS.md)",
        {
            "env": {"num_envs": 4, "norm_obs": True},
            "run": {"total_steps": 200_000},
            "ppo_kl": {
                "num_steps": 1024,
                "minibatch_size": 64,
                "num_epochs": 10,
                "gamma": 0.9,
                "gae_lambda": 0.95,
                "optimizer": {"learning_rate": 3e-4, "anneal_lr": True},
                "target_kl": 0.01,
            },
        },
    ),
    ("a3c", "CartPole-v1"): Preset(
        "the a2c CartPole-v1 preset's shape (8 envs per worker, n_steps 5, RMSprop, ent_coef 0) with gamma 0.98 and "
        "lr 1.5e-3, tuned here for 2 workers (benchmarks/RESULTS.md)",
        {
            "env": {"num_envs": 8},
            "run": {"total_steps": 200_000},
            "a3c": {
                "num_workers": 2,
                "num_steps": 5,
                "gamma": 0.98,
                "ent_coef": 0.0,
                "optimizer": {"learning_rate": 1.5e-3},
            },
        },
    ),
    # Off-policy: one env (SB3's default; eight would give one gradient step per eight env steps), and
    # 64x64 networks instead of SB3's 256x256 / 400x300: a gradient step costs ~4x less on one CPU thread,
    # and Pendulum needs no more (the evaluations quoted were measured with these presets, 10 episodes).
    ("sac", "Pendulum-v1"): Preset(
        "rl-baselines3-zoo hyperparams/sac.yml, Pendulum-v1 (20k steps, lr 1e-3, SB3 defaults otherwise); pgrad: "
        "1 env, 64x64 networks (deterministic eval -158..-193 at 6k steps, seeds 1-3)",
        {
            "env": {"num_envs": 1},
            "run": {"total_steps": 20_000},
            "sac": {"optimizer": {"learning_rate": 1e-3}, "network": {"hidden_sizes": [64, 64]}},
        },
    ),
    ("td3", "Pendulum-v1"): Preset(
        "rl-baselines3-zoo hyperparams/td3.yml and ddpg.yml, Pendulum (gamma 0.98, Gaussian noise 0.1, lr 1e-3, "
        "20k steps, learning_starts 1000 as td3.yml); pgrad: 1 env, 64x64 networks (deterministic eval -174..-210 "
        "at 8k steps, seeds 1-3)",
        {
            "env": {"num_envs": 1},
            "run": {"total_steps": 20_000},
            "td3": {
                "gamma": 0.98,
                "optimizer": {"learning_rate": 1e-3},
                "exploration_noise": "gaussian",
                "exploration_std": 0.1,
                "network": {"hidden_sizes": [64, 64]},
                "loop": {"learning_starts": 1000},
            },
        },
    ),
    ("d4pg", "Pendulum-v1"): Preset(
        "the td3 Pendulum preset's values (gamma 0.98, lr 1e-3, Gaussian noise 0.1, 64x64 networks, learning_starts "
        "1000, 20k steps); support [-800, 0]: Pendulum's rewards lie in [-16.3, 0], its discounted returns in "
        "[-815, 0] (benchmarks/bench_d4pg.py)",
        {
            "env": {"num_envs": 1},
            "run": {"total_steps": 20_000},
            "d4pg": {
                "gamma": 0.98,
                "v_min": -800.0,
                "v_max": 0.0,
                "optimizer": {"learning_rate": 1e-3},
                "exploration_noise": "gaussian",
                "exploration_std": 0.1,
                "network": {"hidden_sizes": [64, 64]},
                "loop": {"learning_starts": 1000},
            },
        },
    ),
    ("ddpg", "Pendulum-v1"): Preset(
        "rl-baselines3-zoo hyperparams/ddpg.yml, Pendulum (gamma 0.98, buffer 2e5, Gaussian noise 0.1, lr 1e-3, "
        "20k steps); pgrad: 1 env, 64x64 networks, learning_starts 1000 and one gradient step per env step "
        "(zoo: 10000, and a round of updates per episode)",
        {
            "env": {"num_envs": 1},
            "run": {"total_steps": 20_000},
            "ddpg": {
                "gamma": 0.98,
                "optimizer": {"learning_rate": 1e-3},
                "exploration_noise": "gaussian",
                "exploration_std": 0.1,
                "network": {"hidden_sizes": [64, 64]},
                "loop": {"buffer_size": 200_000, "learning_starts": 1000},
            },
        },
    ),
    # MuJoCo and LunarLanderContinuous: rl-baselines3-zoo's values, SB3's defaults otherwise (one env,
    # one gradient step per env step, batch 256, buffer 1e6).
    **{
        ("sac", env_id): Preset(
            "rl-baselines3-zoo hyperparams/sac.yml, MuJoCo defaults (HalfCheetah-v3/Hopper-v3): 1M steps, "
            "learning_starts 10000, SB3's SAC otherwise (256x256, lr 3e-4, alpha auto)",
            {"run": {"total_steps": 1_000_000}, "sac": {"loop": {"learning_starts": 10_000}}},
        )
        for env_id in ("HalfCheetah-v5", "Hopper-v5")
    },
    **{
        ("td3", env_id): Preset(
            "rl-baselines3-zoo hyperparams/td3.yml, MuJoCo defaults (HalfCheetah-v4/Hopper-v4): 1M steps, "
            "learning_starts 10000, Gaussian noise 0.1, lr 1e-3, batch 256, 400x300 (the last four are pgrad's "
            "defaults too)",
            {
                "run": {"total_steps": 1_000_000},
                "td3": {"exploration_noise": "gaussian", "exploration_std": 0.1, "loop": {"learning_starts": 10_000}},
            },
        )
        for env_id in ("HalfCheetah-v5", "Hopper-v5")
    },
    ("sac", "LunarLanderContinuous-v3"): Preset(
        "rl-baselines3-zoo hyperparams/sac.yml, LunarLanderContinuous-v2: 500k steps, lr 7.3e-4 annealed "
        "linearly, tau 0.01, learning_starts 10000, 400x300 networks",
        {
            "run": {"total_steps": 500_000},
            "sac": {
                "tau": 0.01,
                "network": {"hidden_sizes": [400, 300]},
                "optimizer": {"learning_rate": 7.3e-4, "anneal_lr": True},
                "loop": {"learning_starts": 10_000},
            },
        },
    ),
    ("td3", "LunarLanderContinuous-v3"): Preset(
        "rl-baselines3-zoo hyperparams/td3.yml, LunarLanderContinuous-v2: 300k steps, gamma 0.98, buffer 2e5, "
        "learning_starts 10000, Gaussian noise 0.1, lr 1e-3, 400x300; pgrad: one gradient step per env step "
        "(zoo: a round of updates per episode, as many as its steps: the same ratio)",
        {
            "run": {"total_steps": 300_000},
            "td3": {
                "gamma": 0.98,
                "exploration_noise": "gaussian",
                "exploration_std": 0.1,
                "optimizer": {"learning_rate": 1e-3},
                "loop": {"buffer_size": 200_000, "learning_starts": 10_000},
            },
        },
    ),
}


_CLEANRL_ATARI_SOURCE = (
    "CleanRL ppo_atari.py (Huang et al. 2022): 8 envs, 128 steps, 4 minibatches, 4 epochs, lr 2.5e-4 "
    "annealed, clip 0.1 (policy and value), ent 0.01, one CNN shared by actor and critic"
)
_CLEANRL_ATARI: dict[str, dict[str, Any]] = {
    "env": {"num_envs": 8},
    "ppo": {
        "num_steps": 128,
        "minibatch_size": 256,
        "num_epochs": 4,
        "gamma": 0.99,
        "gae_lambda": 0.95,
        "clip_eps": 0.1,
        "clip_vf": 0.1,
        "ent_coef": 0.01,
        "vf_coef": 0.5,
        "max_grad_norm": 0.5,
        "network": {"shared_network": True},
        "optimizer": {"learning_rate": 2.5e-4, "anneal_lr": True},
    },
}

# Presets for a family of envs, by shell pattern (fnmatch); an exact entry in PRESETS wins.
PATTERN_PRESETS: dict[tuple[str, str], Preset] = {
    ("ppo", "ALE/*"): Preset(
        _CLEANRL_ATARI_SOURCE + ", 10M steps", {**_CLEANRL_ATARI, "run": {"total_steps": 10_000_000}}
    ),
}


def preset_for(algo: str, env_id: str) -> Preset | None:
    """The preset for ``algo`` on ``env_id`` (an exact id first, then a pattern such as ``ALE/*``), or None."""
    if (algo, env_id) in PRESETS:
        return PRESETS[(algo, env_id)]
    if not isinstance(env_id, str):  # a config file's `id: 5`: the config check then names the field
        return None
    matches = [
        preset for (name, pattern), preset in PATTERN_PRESETS.items() if name == algo and fnmatchcase(env_id, pattern)
    ]
    return matches[0] if matches else None


# The defaults for a kind of env where no preset exists, per (algorithm, action kind, observation kind): the
# layer between the algorithm's field defaults and a preset (pgrad.runs.resolve_config). Chosen by measuring
# pgrad's defaults against SB3's at equal env steps on envs without a preset (benchmarks/bench_defaults.py,
# RESULTS.md "Defaults on envs without a preset"). Each keeps run.total_steps (100k) as it is.
ACTION_KINDS = ("discrete", "continuous")
OBSERVATION_KINDS = ("vector", "image")
KIND_DEFAULTS: dict[tuple[str, str, str], Preset] = {
    # 8 envs x 128 steps, 16 minibatches of 64, 10 epochs, lr 3e-4 annealed: PPOConfig's own fields.
    ("ppo", "discrete", "vector"): Preset(
        "8 envs x 128 steps, minibatch 64, 10 epochs, lr 3e-4 annealed, no normalisation (pgrad's PPO fields)", {}
    ),
    # Normalised observations and rewards carry PPO on control tasks whose scales nobody tuned for.
    ("ppo", "continuous", "vector"): Preset(_CLEANRL_CONTINUOUS_SOURCE, _CLEANRL_CONTINUOUS),
    # Pixels: PPO's fields with one CNN shared by actor and critic, as CleanRL's ppo_atari.py (half the CNN work
    # per step). Not measured here on a non-Atari image env; the Atari preset's batch shape (minibatch 256) is
    # left out, since it would refuse any env count or rollout length but its own.
    **{
        ("ppo", action, "image"): Preset(
            "8 envs x 128 steps, minibatch 64, 10 epochs, lr 3e-4 annealed (pgrad's PPO fields), one CNN shared by "
            "actor and critic (CleanRL ppo_atari.py)",
            {"ppo": {"network": {"shared_network": True}}},
        )
        for action in ACTION_KINDS
    },
}


def generic_defaults_for(algo: str, action_kind: str, observation_kind: str) -> Preset | None:
    """The defaults ``algo`` takes on an env of this kind when no preset exists: ``action_kind`` 'discrete' or
    'continuous', ``observation_kind`` 'vector' or 'image'. The source names the kind, e.g. "generic defaults
    for continuous-action vector envs: CleanRL ...". None where the algorithm has none of its own (its field
    defaults apply as they are)."""
    chosen = KIND_DEFAULTS.get((algo, action_kind, observation_kind))
    if chosen is None:
        return None
    return Preset(f"generic defaults for {action_kind}-action {observation_kind} envs: {chosen.source}", chosen.values)


def exploration_log_std(half_ranges: Sequence[float]) -> float:
    """``network.log_std_init`` for a Gaussian policy whose actions in [-1, 1] are rescaled to a Box of these
    half-ranges ((high - low) / 2 per dimension): an initial std of 1 in the env's own action units, as SB3's
    unscaled Gaussian has, instead of 1 in the rescaled units (3 units on InvertedPendulum's [-3, 3]). The
    geometric mean over dimensions, each half-range clipped at 1 below (a narrower Box keeps std 1 in [-1, 1]:
    exploring past the bounds would only clip): log std = -mean_i log max(h_i, 1). 0.0 for infinite bounds."""
    if not half_ranges or not all(math.isfinite(h) and h > 0 for h in half_ranges):
        return 0.0
    return round(-sum(math.log(max(h, 1.0)) for h in half_ranges) / len(half_ranges), 4)


def has_generic_defaults(algo: str) -> bool:
    """Whether ``generic_defaults_for`` has anything for ``algo`` (so the env's spaces are worth reading)."""
    return any(name == algo for name, _, _ in KIND_DEFAULTS)
