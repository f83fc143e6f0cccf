"""Building a run's pieces from its config: the environments (with normalisers) and the algorithm.

Used by every runner, by ``pgrad.evaluate`` and by the A3C workers, so all of them build the same
thing from the same config.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, cast

import torch

from pgrad.algos.a3c import A3C
from pgrad.algos.contract import OffPolicyAlgorithm, OnPolicyAlgorithm
from pgrad.config import RandomizeConfig, TrainConfig
from pgrad.envs.factory import SpaceAdapter, make_vector_env
from pgrad.envs.normalize import ObsNormalizer, RewardScaler
from pgrad.envs.sources import VectorEnvFactory
from pgrad.errors import ConfigError, PgradError
from pgrad.nets import ImageShape
from pgrad.registry import get_algorithm


@dataclass
class Environment:
    """What the trainer and the evaluator both build from an ``EnvConfig``."""

    envs: Any
    adapter: SpaceAdapter
    obs_normalizer: ObsNormalizer
    reward_scaler: RewardScaler


@contextmanager
def _sigint_ignored_by_children() -> Iterator[None]:
    """SIGINT ignored while worker processes start (they inherit it, across exec too), then restored.

    Ctrl-C in a terminal signals the whole process group: async env workers would die of it mid-step
    (a KeyboardInterrupt traceback from each, then BrokenPipe), before the trainer could take its
    clean stop with a checkpoint. Only the trainer acts on Ctrl-C; it closes its workers itself.
    Signal handlers can only be set from the main thread; elsewhere nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def build_environment(
    config: TrainConfig,
    gamma: float,
    num_envs: int | None = None,
    render_mode: str | None = None,
    env_factory: VectorEnvFactory | None = None,
) -> Environment:
    """``env_factory``: an env handed over as a Python object (``pgrad.envs.sources``) builds the vector env
    instead of ``config.env.id``; everything after it (adapter, normalisers) is the same."""
    try:
        with _sigint_ignored_by_children():
            if env_factory is not None:
                envs = env_factory(num_envs or config.env.num_envs, render_mode)
            else:
                envs = make_vector_env(config.env, num_envs=num_envs, render_mode=render_mode)
    except PgradError:
        raise
    except Exception as exc:  # the env's own constructor: wrong kwargs give TypeError, KeyError, ValueError...
        raise ConfigError(f"{env_label(config)} could not be created: {one_line(exc)}") from None
    adapter = SpaceAdapter(envs.single_observation_space, envs.single_action_space, config.env.rescale_actions)
    if isinstance(adapter.obs_shape, ImageShape) and config.env.norm_obs:
        envs.close()
        raise ConfigError(
            f"env.norm_obs must be false for the image observations of {config.env.id} "
            "(the CNN scales pixels to [0, 1])"
        )
    if network_torso(config) is not None:
        adapter.use_torso()
    obs_normalizer = ObsNormalizer(
        (adapter.obs_dim,), config.env.clip_obs, config.env.norm_obs, mask=adapter.normalized()
    )
    reward_scaler = RewardScaler(envs.num_envs, gamma, config.env.clip_reward, config.env.norm_reward)
    return Environment(envs, adapter, obs_normalizer, reward_scaler)


def network_torso(config: TrainConfig) -> str | None:
    """The custom torso ('module:Class') the algorithm's network section names, or None."""
    torso = getattr(getattr(config.algo_config, "network", None), "torso", None)
    return torso if isinstance(torso, str) else None


def nominal_physics(config: TrainConfig) -> TrainConfig:
    """``config`` with domain randomisation off (``env.randomize`` at its defaults): evaluations measure the
    policy on the env's own physics unless asked otherwise (``pgrad eval --randomize``)."""
    return replace(config, env=replace(config.env, randomize=RandomizeConfig()))


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``: an exception from code pgrad does not own, fit for one line."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def env_label(config: TrainConfig) -> str:
    """``env CartPole-v1`` and, when set, its kwargs (the usual suspects when an env fails)."""
    kwargs = f" with env.kwargs {dict(config.env.kwargs)}" if config.env.kwargs else ""
    return f"env {config.env.id}{kwargs}"


def algo_gamma(config: TrainConfig) -> float:
    """The discount the reward scaler uses: the algorithm's own gamma (0.99 if it has none)."""
    return float(getattr(config.algo_config, "gamma", 0.99))


def build_learner(config: TrainConfig, adapter: SpaceAdapter) -> OnPolicyAlgorithm | OffPolicyAlgorithm | A3C:
    """The algorithm's learner, its model on ``run.device`` (the acting policy stays NumPy on the CPU);
    an action space the algorithm does not support (a discrete env for SAC) is one line naming both."""
    spec = get_algorithm(config.algo)
    if spec.language_model:  # the runners of pgrad.runners.lm_* build their model themselves
        raise ConfigError(f"algorithm '{config.algo}' trains a language model, not a policy for an environment")
    if spec.kind == "multi_agent":  # pgrad.runners.multi_agent builds the team's learner from the team's spaces
        raise ConfigError(f"algorithm '{config.algo}' trains a team on a PettingZoo env (pgrad.runners.multi_agent)")
    if adapter.action.kind not in spec.action_kinds:
        raise ConfigError(
            f"algorithm '{config.algo}' does not support {adapter.action.kind} actions of {config.env.id} "
            f"(it supports: {', '.join(spec.action_kinds)})"
        )
    if spec.kind == "off_policy":  # narrows spec to OffPolicySpec: its builder takes a vector's size or a layout
        if isinstance(adapter.obs_shape, ImageShape):  # a Dict observation's images have the Dict encoder's CNN
            raise ConfigError(
                f"algorithm '{config.algo}' has MLP networks only; the image observations of {config.env.id} need an "
                "on-policy algorithm (ppo, a2c, a3c, trpo, ...) for a CNN"
            )
        assert not isinstance(adapter.obs_shape, ImageShape)
        return spec.build(config.algo_config, adapter.obs_shape, adapter.action, torch.device(config.run.device))
    return spec.build(config.algo_config, adapter.obs_shape, adapter.action, torch.device(config.run.device))


def build_algorithm(config: TrainConfig, adapter: SpaceAdapter) -> OnPolicyAlgorithm:
    """``build_learner`` for the loops of on-policy kind (and for ``pgrad eval``, which only reads
    ``modules`` and ``acting_policy``, what every kind has)."""
    return cast(OnPolicyAlgorithm, build_learner(config, adapter))


def build_off_policy_algorithm(config: TrainConfig, adapter: SpaceAdapter) -> OffPolicyAlgorithm:
    """``build_learner`` for the off-policy loop (its runner checked the algorithm's kind)."""
    return cast(OffPolicyAlgorithm, build_learner(config, adapter))
