"""Termination, truncation and Gymnasium's next-step autoreset, end to end through the real
vector env and collector, on a scripted environment whose values are known by hand."""

import numpy as np
import pytest
import torch

from pgrad.algos.common import actor_critic_batch
from pgrad.config import EnvConfig
from pgrad.envs.factory import SpaceAdapter, make_vector_env
from pgrad.envs.normalize import ObsNormalizer, RewardScaler
from pgrad.nets import ActionSpec, ActorCritic
from pgrad.rollout import RolloutCollector


def collector_for(ending: str, num_envs: int = 1, length: int = 3) -> RolloutCollector:
    cfg = EnvConfig(
        id="pgrad.envs.toy:ScriptedEnv", num_envs=num_envs, kwargs={"episode_length": length, "ending": ending}
    )
    envs = make_vector_env(cfg)
    adapter = SpaceAdapter(envs.single_observation_space, envs.single_action_space, True)
    collector = RolloutCollector(
        envs, adapter, ObsNormalizer((1,), 10.0, False), RewardScaler(num_envs, 0.5, 10.0, False), episode_window=10
    )
    collector.reset(seed=0)
    return collector


def value_model(value_of_step: dict[float, float]) -> ActorCritic:
    """An ActorCritic whose critic returns value_of_step[obs] exactly (a lookup via a patched value())."""
    model = ActorCritic(1, ActionSpec("discrete", 2), (4,))

    def value(obs: torch.Tensor) -> torch.Tensor:
        return torch.tensor([value_of_step[float(o)] for o in obs[:, 0]], dtype=torch.float32)

    model.value = value  # type: ignore[method-assign]
    return model


def test_autoreset_step_is_masked_and_has_zero_reward():
    collector = collector_for("terminated")
    rollout = collector.collect(value_model({}).acting_policy(), np.random.default_rng(0), num_steps=8)
    # steps 0,1,2 episode 1 (done at 2); step 3 is the autoreset step; 4,5,6 episode 2; 7 autoreset
    np.testing.assert_array_equal(rollout.valid[:, 0], [1, 1, 1, 0, 1, 1, 1, 0])
    np.testing.assert_array_equal(rollout.terminated[:, 0], [0, 0, 1, 0, 0, 0, 1, 0])
    assert rollout.rewards[3, 0] == 0.0 and rollout.rewards[7, 0] == 0.0
    # obs[t+1] after the terminal step is the final observation (step index 3), then the reset obs 0
    np.testing.assert_array_equal(rollout.obs[:, 0, 0], [0, 1, 2, 3, 0, 1, 2, 3, 0])
    # episode statistics count real steps only
    assert list(collector.episodes.returns) == [3.0, 3.0]
    assert list(collector.episodes.lengths) == [3, 3]


def test_termination_gives_guide_advantage_and_masks_reset_step():
    collector = collector_for("terminated")
    model = value_model({0.0: 0.0, 1.0: 0.0, 2.0: 0.0, 3.0: 0.0})
    rollout = collector.collect(model.acting_policy(), np.random.default_rng(0), num_steps=4)
    batch, _ = actor_critic_batch(model, rollout, gamma=0.5, gae_lambda=0.5)
    assert batch.advantages[0].item() == pytest.approx(1.3125)
    np.testing.assert_array_equal(batch.mask.numpy(), [1, 1, 1, 0])
    assert batch.advantages[3].item() == 0.0


def test_truncation_bootstraps_from_value_of_final_observation():
    collector = collector_for("truncated")
    # V(final observation, step index 3) = 2, zero elsewhere: A0 = 1.375 (guide value)
    model = value_model({0.0: 0.0, 1.0: 0.0, 2.0: 0.0, 3.0: 2.0})
    rollout = collector.collect(model.acting_policy(), np.random.default_rng(0), num_steps=4)
    assert rollout.truncated[2, 0] and not rollout.terminated[2, 0]
    batch, _ = actor_critic_batch(model, rollout, gamma=0.5, gae_lambda=0.5)
    assert batch.advantages[0].item() == pytest.approx(1.375)
    assert batch.returns[2].item() == pytest.approx(1.0 + 0.5 * 2.0)


def test_same_values_but_terminated_do_not_bootstrap():
    collector = collector_for("terminated")
    model = value_model({0.0: 0.0, 1.0: 0.0, 2.0: 0.0, 3.0: 2.0})
    rollout = collector.collect(model.acting_policy(), np.random.default_rng(0), num_steps=4)
    batch, _ = actor_critic_batch(model, rollout, gamma=0.5, gae_lambda=0.5)
    assert batch.advantages[0].item() == pytest.approx(1.3125)


def test_episode_running_across_rollouts_bootstraps_from_last_observation():
    collector = collector_for("terminated", length=5)
    model = value_model({float(i): 10.0 * i for i in range(6)})
    rollout = collector.collect(model.acting_policy(), np.random.default_rng(0), num_steps=2)
    batch, _ = actor_critic_batch(model, rollout, gamma=0.5, gae_lambda=1.0)
    # Not done within the rollout: R_1 = r + gamma V(obs[2]) = 1 + 0.5 * 20
    assert batch.returns[1].item() == pytest.approx(11.0)
    rollout = collector.collect(model.acting_policy(), np.random.default_rng(0), num_steps=2)
    np.testing.assert_array_equal(rollout.obs[:, 0, 0], [2, 3, 4])  # continues where it stopped


def test_reward_scaler_ignores_autoreset_steps():
    scaler = RewardScaler(1, gamma=0.5, clip=10.0, enabled=True)
    scaler(np.array([1.0]), np.array([True]), np.array([True]))
    count = scaler.stats.count
    scaler(np.array([0.0]), np.array([False]), np.array([False]))  # autoreset step
    assert scaler.stats.count == count


def test_observation_statistics_count_arrivals_but_never_a_final_observation():
    # As SB3's VecNormalize: every observation is counted once, when the env returns it (the reset
    # observations too), except an episode's final observation, which is only acted on in the
    # autoreset step whose action Gymnasium ignores.
    collector = collector_for("terminated")
    collector.obs_normalizer = ObsNormalizer((1,), 10.0, True)
    collector.reset(seed=0)
    rollout = collector.collect(value_model({}).acting_policy(), np.random.default_rng(0), num_steps=8)
    stats = collector.obs_normalizer.stats
    # returned by reset and the 8 steps: 0 | 1 2 [3] 0 1 2 [3] 0 -- the bootstrap observation 0 included
    counted = np.array([0.0, 1, 2, 0, 1, 2, 0])
    assert stats.count == pytest.approx(len(counted), abs=1e-3)
    assert stats.mean[0] == pytest.approx(counted.mean(), abs=1e-3)
    assert stats.var[0] == pytest.approx(counted.var(), abs=1e-3)
    # the bootstrap observation is normalised with the statistics that include it
    expected = (0.0 - stats.mean[0]) / np.sqrt(stats.var[0] + 1e-8)
    assert rollout.obs[8, 0, 0] == pytest.approx(expected, rel=1e-5)


def test_observe_counts_only_the_rows_marked():
    normalizer = ObsNormalizer((1,), 10.0, True)
    normalizer.observe(np.array([[1.0], [100.0], [3.0]], np.float32), np.array([True, False, True]))
    assert normalizer.stats.count == pytest.approx(2.0, abs=1e-3)
    assert normalizer.stats.mean[0] == pytest.approx(2.0, abs=1e-3)
    normalizer.observe(np.array([[50.0], [60.0], [70.0]], np.float32), np.array([False, False, False]))
    assert normalizer.stats.count == pytest.approx(2.0, abs=1e-3)
    normalizer(np.array([[50.0]], np.float32), update=False)
    assert normalizer.stats.count == pytest.approx(2.0, abs=1e-3)
