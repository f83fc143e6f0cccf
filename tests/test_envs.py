"""Environment construction: vectorisation modes, entry points, space adaptation."""

import gymnasium as gym
import numpy as np
import pytest

from pgrad.config import EnvConfig
from pgrad.envs import state as env_state
from pgrad.envs.factory import SpaceAdapter, make_vector_env
from pgrad.errors import ConfigError


def test_box_actions_are_rescaled_from_unit_interval_and_clipped():
    space = gym.spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 10.0], np.float32))
    adapter = SpaceAdapter(gym.spaces.Box(-1, 1, (3,)), space, rescale=True)
    actions = np.array([[-1.0, 1.0], [0.0, 0.0], [3.0, -5.0]], np.float32)
    np.testing.assert_allclose(adapter.env_actions(actions), [[-2.0, 10.0], [0.0, 5.0], [2.0, 0.0]])
    plain = SpaceAdapter(gym.spaces.Box(-1, 1, (3,)), space, rescale=False)
    np.testing.assert_allclose(plain.env_actions(actions), [[-1.0, 1.0], [0.0, 0.0], [2.0, 0.0]])


def test_unbounded_box_is_not_rescaled():
    adapter = SpaceAdapter(gym.spaces.Box(-1, 1, (1,)), gym.spaces.Box(-np.inf, np.inf, (1,)), rescale=True)
    assert not adapter.rescale
    np.testing.assert_allclose(adapter.env_actions(np.array([[7.0]], np.float32)), [[7.0]])


def test_discrete_observations_are_one_hot():
    adapter = SpaceAdapter(gym.spaces.Discrete(4), gym.spaces.Discrete(2), rescale=True)
    np.testing.assert_array_equal(adapter.observations(np.array([2, 0])), [[0, 0, 1, 0], [1, 0, 0, 0]])


def test_unsupported_spaces_are_named():
    with pytest.raises(ConfigError, match="action space .* is not supported \\(allowed: Discrete, Box\\)"):
        SpaceAdapter(gym.spaces.Box(-1, 1, (1,)), gym.spaces.MultiBinary(3), rescale=True)


@pytest.mark.parametrize(
    ("mode", "expected"), [("auto", "CartPoleVectorEnv"), ("sync", "SyncVectorEnv"), ("async", "AsyncVectorEnv")]
)
def test_vectorization_modes(mode, expected):
    envs = make_vector_env(EnvConfig(id="CartPole-v1", num_envs=2, vectorization=mode))
    try:
        assert type(envs).__name__ == expected
        obs, _ = envs.reset(seed=0)
        assert obs.shape == (2, 4)
    finally:
        envs.close()


def test_native_mode_without_a_native_env_is_an_error():
    with pytest.raises(ConfigError, match="env.vectorization: 'Pendulum-v1' has no native vector version"):
        make_vector_env(EnvConfig(id="Pendulum-v1", vectorization="native"))


def test_entry_point_and_kwargs_and_time_limit():
    cfg = EnvConfig(id="pgrad.envs.toy:ScriptedEnv", num_envs=1, kwargs={"episode_length": 50}, max_episode_steps=2)
    envs = make_vector_env(cfg)
    envs.reset(seed=0)
    envs.step(np.array([0]))
    _, _, terminated, truncated, _ = envs.step(np.array([0]))
    assert truncated[0] and not terminated[0]  # the TimeLimit wrapper cut at 2 steps


def test_bad_entry_point_and_bad_kwargs():
    with pytest.raises(ConfigError, match="cannot import module 'no_such_module'"):
        make_vector_env(EnvConfig(id="no_such_module:Env"))
    with pytest.raises(ConfigError, match="has no callable 'Nope'"):
        make_vector_env(EnvConfig(id="pgrad.envs.toy:Nope"))
    with pytest.raises(ConfigError, match=r"env.kwargs: CartPole-v1 does not take .bogus. \(its parameters: "):
        make_vector_env(EnvConfig(id="CartPole-v1", vectorization="sync", kwargs={"bogus": 1}))


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_env_state_capture_restores_trajectories_exactly(env_id):
    cfg = EnvConfig(id=env_id, num_envs=2)
    first = make_vector_env(cfg)
    first.reset(seed=3)
    for _ in range(30):
        first.step(first.action_space.sample())
    saved = env_state.capture(first)
    copy = make_vector_env(cfg)
    copy.reset(seed=99)
    env_state.restore(copy, saved)
    actions = [first.action_space.sample() for _ in range(300)]
    for action in actions:
        a = first.step(action)
        b = copy.step(action)
        for x, y in zip(a[:4], b[:4], strict=True):
            np.testing.assert_array_equal(x, y)


def test_async_env_state_is_captured_in_the_workers():
    cfg = EnvConfig(id="CartPole-v1", num_envs=2, vectorization="async")
    first, copy = make_vector_env(cfg), make_vector_env(cfg)
    try:
        first.reset(seed=0)
        for _ in range(30):
            first.step(first.action_space.sample())
        saved = env_state.capture(first)
        assert saved is not None and len(saved["async_sub_envs"]) == 2
        copy.reset(seed=99)
        env_state.restore(copy, saved)
        for _ in range(100):
            action = first.action_space.sample()
            for x, y in zip(first.step(action)[:4], copy.step(action)[:4], strict=True):
                np.testing.assert_array_equal(x, y)
    finally:
        first.close()
        copy.close()


def test_native_cartpole_episode_returns_equal_lengths():
    # CartPole pays 1 per step: a return that differs from the length would mean the autoreset
    # step (reward 0 by Gymnasium's contract) leaked into the statistics.
    from pgrad.envs.normalize import ObsNormalizer, RewardScaler
    from pgrad.nets import ActorCritic
    from pgrad.rollout import RolloutCollector

    envs = make_vector_env(EnvConfig(id="CartPole-v1", num_envs=4))
    adapter = SpaceAdapter(envs.single_observation_space, envs.single_action_space, True)
    collector = RolloutCollector(
        envs, adapter, ObsNormalizer((4,), 10.0, False), RewardScaler(4, 0.99, 10.0, False), 50
    )
    collector.reset(seed=0)
    collector.collect(ActorCritic(4, adapter.action).acting_policy(), np.random.default_rng(0), 200)
    assert collector.episodes.count >= 20
    assert list(collector.episodes.returns) == [float(n) for n in collector.episodes.lengths]


def test_gymnasiums_settotalmass_deprecation_is_dropped_and_other_mujoco_warnings_pass_on(capfd):
    """Building HalfCheetah prints MuJoCo's note on Gymnasium's own XML once per env without pgrad; with
    it, nothing, while a handler the user installed keeps receiving every other warning and is restored."""
    mujoco = pytest.importorskip("mujoco")
    received: list[str] = []
    handler = received.append
    mujoco.set_mju_user_warning(handler)
    try:
        envs = make_vector_env(EnvConfig(id="HalfCheetah-v5", num_envs=2, vectorization="sync"))
        envs.close()
        assert mujoco.get_mju_user_warning() is handler  # put back after the build
        mujoco.get_mju_user_warning()("another warning")
    finally:
        mujoco.set_mju_user_warning(None)
    assert received == ["another warning"]
    # without pgrad's filter the same build does print it: the test would see a regression
    gym.make("HalfCheetah-v5").close()
    assert "settotalmass" in capfd.readouterr().err
