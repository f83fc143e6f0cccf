"""The partially observed wrapper (env.mask_velocity): which entries are hidden, values, and every refusal."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from pgrad.config import EnvConfig
from pgrad.envs import make_vector_env
from pgrad.envs.partial import MaskVelocity, env_family, velocity_indices
from pgrad.errors import ConfigError


def test_cartpole_hides_both_velocities_and_keeps_positions() -> None:
    plain = gym.make("CartPole-v1")
    masked = MaskVelocity(gym.make("CartPole-v1"), *velocity_indices("CartPole-v1", None))
    full, _ = plain.reset(seed=3)
    obs, _ = masked.reset(seed=3)
    np.testing.assert_array_equal(obs, [full[0], 0.0, full[2], 0.0])
    for _ in range(5):
        full, *_ = plain.step(1)
        obs, *_ = masked.step(1)
    assert full[1] != 0.0 and full[3] != 0.0  # the velocities were there to hide
    np.testing.assert_array_equal(obs, [full[0], 0.0, full[2], 0.0])
    assert obs.dtype == np.float32
    np.testing.assert_array_equal(masked.observation_space.low[[1, 3]], [0.0, 0.0])
    np.testing.assert_array_equal(masked.observation_space.high[[0, 2]], plain.observation_space.high[[0, 2]])


def test_table_entries() -> None:
    assert velocity_indices("CartPole-v1", None) == ((1, 3), 4)
    assert velocity_indices("Pendulum-v1", None) == ((2,), 3)  # (cos, sin, theta_dot)
    assert velocity_indices("Hopper-v5", None) == ((5, 6, 7, 8, 9, 10), 11)
    assert env_family("gymnasium.envs.classic_control:CartPole-v1") == "CartPole"
    assert velocity_indices("MyEnv-v0", (0, 2)) == ((0, 2), None)  # given indices win, no size assumed


def test_pendulum_through_the_factory_sync_and_async() -> None:
    for mode in ("sync", "async"):
        envs = make_vector_env(EnvConfig(id="Pendulum-v1", num_envs=2, mask_velocity=True, vectorization=mode))
        plain = make_vector_env(EnvConfig(id="Pendulum-v1", num_envs=2, vectorization=mode))
        try:
            obs, _ = envs.reset(seed=0)
            full, _ = plain.reset(seed=0)
            np.testing.assert_array_equal(obs[:, :2], full[:, :2])
            np.testing.assert_array_equal(obs[:, 2], [0.0, 0.0])
            assert np.all(full[:, 2] != 0.0)
        finally:
            envs.close()
            plain.close()


def test_cartpole_auto_vectorisation_wraps_each_env() -> None:
    envs = make_vector_env(EnvConfig(id="CartPole-v1", num_envs=3, mask_velocity=True))
    obs, _ = envs.reset(seed=1)
    obs, *_ = envs.step(np.ones(3, np.int64))
    np.testing.assert_array_equal(obs[:, [1, 3]], np.zeros((3, 2)))
    envs.close()


def test_refusals() -> None:
    with pytest.raises(ConfigError, match=r"env.mask_velocity: .*'Blackjack-v1'.*env.mask_indices"):
        make_vector_env(EnvConfig(id="Blackjack-v1", num_envs=1, mask_velocity=True))
    with pytest.raises(ConfigError, match=r"env.mask_indices must be null, or indices >= 0"):
        EnvConfig(mask_indices=(1,))  # without mask_velocity they would do nothing
    with pytest.raises(ConfigError, match=r"env.mask_indices must be"):
        EnvConfig(mask_velocity=True, mask_indices=(-1,))
    with pytest.raises(ConfigError, match=r"env.mask_indices: each index must be in \[0, 3\]; got \[4\]"):
        MaskVelocity(gym.make("CartPole-v1"), (4,), None)
    with pytest.raises(ConfigError, match=r"assumes 11 observation entries; this env has 12"):
        MaskVelocity(gym.make("Hopper-v5", exclude_current_positions_from_observation=False), (5,), 11)
    with pytest.raises(ConfigError, match=r"env.vectorization: env.mask_velocity wraps each env"):
        make_vector_env(EnvConfig(id="CartPole-v1", num_envs=1, mask_velocity=True, vectorization="native"))


def test_given_indices_for_an_env_not_in_the_table() -> None:
    envs = make_vector_env(EnvConfig(id="Pendulum-v1", num_envs=1, mask_velocity=True, mask_indices=(0,)))
    obs, _ = envs.reset(seed=0)
    assert obs[0, 0] == 0.0 and obs[0, 2] != 0.0
    envs.close()
