"""The replay buffer: only written rows are sampled, roughly uniformly; the ring wraps; the true final
observation is stored on autoreset (through a real Gymnasium vector env); state round-trips."""

import numpy as np
import pytest
import torch

from pgrad.config import EnvConfig
from pgrad.envs.factory import SpaceAdapter, make_vector_env
from pgrad.envs.normalize import ObsNormalizer, RewardScaler
from pgrad.replay import ReplayBuffer
from pgrad.rollout import RolloutCollector
from pgrad.runners.off_policy import UniformActor

CPU = torch.device("cpu")


def filled(capacity: int, rows: int) -> ReplayBuffer:
    """Row i holds obs = next_obs = i, action = -i, reward = 10 i."""
    buffer = ReplayBuffer(capacity, 1, 1)
    index = np.arange(rows, dtype=np.float32)[:, None]
    buffer.add(index, -index, 10 * index[:, 0], index, np.zeros(rows, bool), np.zeros(rows, bool))
    return buffer


def test_sampling_only_reads_written_rows_and_is_roughly_uniform():
    buffer = filled(100, 7)
    assert buffer.size == 7 and buffer.position == 7
    batch = buffer.sample(70_000, np.random.default_rng(0), CPU)
    rows = batch.obs[:, 0].numpy()
    assert set(np.unique(rows)) == set(range(7))  # never row 7..99: they hold np.empty garbage
    np.testing.assert_array_equal(batch.actions[:, 0].numpy(), -rows)  # columns of one row stay together
    np.testing.assert_array_equal(batch.rewards.numpy(), 10 * rows)
    counts = np.bincount(rows.astype(int), minlength=7)
    # 10,000 expected per row; the binomial std is ~93, so 3 % is over 3 sigma
    assert np.all(np.abs(counts - 10_000) < 300), counts


def test_ring_overwrites_the_oldest_rows():
    buffer = filled(5, 3)
    more = np.array([[3.0], [4.0], [5.0], [6.0]], np.float32)
    buffer.add(more, more, more[:, 0], more, np.zeros(4, bool), np.ones(4, bool))
    assert buffer.size == 5 and buffer.position == 2
    # rows 0, 1 were overwritten by transitions 5, 6
    np.testing.assert_array_equal(buffer.obs[:, 0], [5, 6, 2, 3, 4])
    np.testing.assert_array_equal(buffer.truncated, [True, True, False, True, True])
    sampled = set(buffer.sample(1000, np.random.default_rng(1), CPU).obs[:, 0].tolist())
    assert sampled == {2.0, 3.0, 4.0, 5.0, 6.0}


def test_more_rows_than_capacity_keep_the_newest():
    buffer = filled(4, 10)
    assert sorted(buffer.obs[:, 0].tolist()) == [6, 7, 8, 9]
    assert buffer.size == 4


def test_empty_buffer_refuses_to_sample():
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(3, 1, 1).sample(1, np.random.default_rng(0), CPU)


@pytest.mark.parametrize("ending", ["truncated", "terminated"])
def test_true_final_observation_is_stored_on_autoreset(ending):
    """ScriptedEnv's observation is the step index (reset: 0, final: episode_length): through a real
    Gymnasium vector env with next-step autoreset, s' of the last step must be 3, never the reset 0,
    and the autoreset step itself (reward 0, action ignored) must not be stored."""
    config = EnvConfig(
        id="pgrad.envs.toy:ScriptedEnv",
        num_envs=2,
        kwargs={"episode_length": 3, "ending": ending, "action": "box", "reward": 1.0},
    )
    envs = make_vector_env(config)
    adapter = SpaceAdapter(envs.single_observation_space, envs.single_action_space, True)
    collector = RolloutCollector(
        envs, adapter, ObsNormalizer((1,), 10.0, False), RewardScaler(2, 0.99, 10.0, False), 10
    )
    collector.reset(seed=0)
    buffer = ReplayBuffer(100, 1, 1)
    rng = np.random.default_rng(0)
    stored = sum(buffer.add_rollout(collector.collect(UniformActor(1), rng, 1)) for _ in range(9))
    envs.close()
    # 9 vector steps of 2 envs: steps 1-3 (stored), autoreset (skipped), steps 1-3, autoreset, step 1
    assert stored == buffer.size == 2 * 7
    obs, next_obs = buffer.obs[: buffer.size, 0], buffer.next_obs[: buffer.size, 0]
    np.testing.assert_array_equal(next_obs, obs + 1)  # every s' follows its s: no reset observation as s'
    ends = next_obs == 3
    assert ends.sum() == 4  # two episodes per env ended, each stored with its true final observation
    np.testing.assert_array_equal(buffer.rewards[: buffer.size], 1.0)  # no reward-0 autoreset step
    flag = buffer.truncated if ending == "truncated" else buffer.terminated
    other = buffer.terminated if ending == "truncated" else buffer.truncated
    np.testing.assert_array_equal(flag[: buffer.size], ends)
    assert not other[: buffer.size].any()


def test_state_round_trip_restores_rows_and_position():
    buffer = filled(5, 3)
    more = np.array([[3.0], [4.0], [5.0], [6.0]], np.float32)
    buffer.add(more, more, more[:, 0], more, np.zeros(4, bool), np.zeros(4, bool))
    restored = ReplayBuffer(5, 1, 1)
    restored.load_state_arrays(buffer.state_arrays())
    assert (restored.size, restored.position) == (5, 2)
    np.testing.assert_array_equal(restored.obs, buffer.obs)
    a = buffer.sample(50, np.random.default_rng(3), CPU)
    b = restored.sample(50, np.random.default_rng(3), CPU)
    assert torch.equal(a.obs, b.obs) and torch.equal(a.rewards, b.rewards)
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(3, 1, 1).load_state_arrays(buffer.state_arrays())


def test_memory_is_stated():
    buffer = ReplayBuffer(1_000_000, 3, 1)
    # (3 + 3 + 1 + 1) float32 + 2 bools per row
    assert buffer.nbytes == 1_000_000 * (8 * 4 + 2)
    assert "1,000,000 transitions" in buffer.describe() and "32.4 MiB" in buffer.describe()
