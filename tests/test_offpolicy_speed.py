"""The off-policy learner's fast paths compute what the plain ones do (issue 28, point 1).

- ``QNetworks`` stacks its critics' layers and runs them as one batched product: its values and
  gradients are those of separate MLPs with the same weights, its initial weights are the ones the
  separate MLPs drew, and a checkpoint written with separate MLPs loads into it.
- The off-policy loop acts through a NumPy policy on views of the actor's weights
  (``live_acting_policy``): it acts as a fresh snapshot would, after every optimizer step.
- The replay buffer's sample is the rows its generator picks, flags as float 0/1.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pgrad.algos.contract import UpdateContext
from pgrad.algos.ddpg import DDPG, DDPGConfig
from pgrad.algos.off_policy import QNetworkConfig, critic_loss, sac_actor_loss, twin_min, twin_min_target
from pgrad.algos.sac import SAC, SACConfig
from pgrad.algos.td3 import TD3, TD3Config
from pgrad.nets import ActionSpec, QNetworks, plain_mlp
from pgrad.replay import ReplayBuffer

OBS, ACT, HIDDEN, N = 5, 2, (8, 7), 16


def separate(count: int, seed: int) -> list[nn.Sequential]:
    torch.manual_seed(seed)
    return [plain_mlp(OBS + ACT, HIDDEN, 1, "relu") for _ in range(count)]


def old_state_dict(nets: list[nn.Sequential]) -> dict[str, torch.Tensor]:
    """What ``QNetworks.state_dict()`` was before stacking: ``nets.<i>.<k>.weight`` per critic."""
    return {f"nets.{i}.{key}": value for i, net in enumerate(nets) for key, value in net.state_dict().items()}


@pytest.mark.parametrize("count", [1, 2, 3])
def test_stacked_critics_equal_separate_mlps_in_values_and_gradients(count):
    nets = separate(count, seed=3)
    stacked = QNetworks(OBS, ACT, HIDDEN, "relu", count)
    stacked.load_state_dict(old_state_dict(nets))  # the pre-hook rewrites the separate layout
    obs, actions = torch.randn(N, OBS), torch.randn(N, ACT)
    target = torch.randn(N)

    ours = stacked.stacked(obs, actions)
    theirs = [net(torch.cat([obs, actions], -1)).squeeze(-1) for net in nets]
    assert ours.shape == (count, N)
    torch.testing.assert_close(ours, torch.stack(theirs), rtol=0, atol=1e-6)
    torch.testing.assert_close(stacked.first(obs, actions), theirs[0], rtol=0, atol=1e-6)

    critic_loss(ours, target).backward()
    critic_loss(theirs, target).backward()
    for j in range(len(HIDDEN) + 1):
        for i, net in enumerate(nets):
            layer = [m for m in net if isinstance(m, nn.Linear)][j]
            torch.testing.assert_close(stacked.weights[j].grad[i].T, layer.weight.grad, rtol=0, atol=1e-6)
            torch.testing.assert_close(stacked.biases[j].grad[i, 0], layer.bias.grad, rtol=0, atol=1e-6)


def test_initial_weights_are_those_the_separate_mlps_drew():
    nets = separate(2, seed=11)
    torch.manual_seed(11)
    stacked = QNetworks(OBS, ACT, HIDDEN, "relu", 2)
    for i, net in enumerate(nets):
        for j, layer in enumerate(m for m in net if isinstance(m, nn.Linear)):
            assert torch.equal(stacked.weights[j][i].T, layer.weight)
            assert torch.equal(stacked.biases[j][i, 0], layer.bias)


def test_detached_weights_pass_gradients_to_the_actions_only():
    critics = QNetworks(OBS, ACT, HIDDEN, "relu", 2)
    actions = torch.randn(N, ACT, requires_grad=True)
    critics.stacked(torch.randn(N, OBS), actions, detach_weights=True).sum().backward()
    assert actions.grad is not None and actions.grad.abs().sum() > 0
    assert all(p.grad is None for p in critics.parameters())


def test_stacked_and_listed_losses_agree_with_hand_values():
    q = torch.tensor([[1.0, 2.0], [3.0, 0.0]])  # critic 1: (1, 2); critic 2: (3, 0)
    y = torch.tensor([0.0, 1.0])
    # critic 1: ((1-0)^2 + (2-1)^2) / 2 = 1; critic 2: ((3-0)^2 + (0-1)^2) / 2 = 5
    assert critic_loss(q, y).item() == critic_loss(list(q.unbind(0)), y).item() == 6.0
    assert twin_min(q).tolist() == twin_min(list(q.unbind(0))).tolist() == [1.0, 0.0]
    assert twin_min(q[:1]).tolist() == [1.0, 2.0]
    # E[alpha log pi - min Q] = mean(0.5 * (-1, -2) - (1, 0)) = mean(-1.5, -1) = -1.25
    assert sac_actor_loss(q, torch.tensor([-1.0, -2.0]), 0.5).item() == -1.25
    # y = r + gamma (1 - d) min Q': (0.5 + 0.9 * 1, 1 + 0)
    target = twin_min_target(torch.tensor([0.5, 1.0]), torch.tensor([0.0, 1.0]), q, 0.9)
    torch.testing.assert_close(target, torch.tensor([1.4, 1.0]))


def small(config_class):
    return config_class(network=QNetworkConfig(hidden_sizes=(8, 8)))


@pytest.mark.parametrize("algo_class, config_class", [(SAC, SACConfig), (TD3, TD3Config), (DDPG, DDPGConfig)])
def test_live_acting_policy_acts_with_the_weights_of_the_moment(algo_class, config_class):
    algo = algo_class(small(config_class), OBS, ActionSpec("continuous", ACT))
    live = algo.live_acting_policy()
    obs = np.random.default_rng(0).standard_normal((4, OBS)).astype(np.float32)
    before = algo.acting_policy()
    np.testing.assert_allclose(live.mode(obs), before.mode(obs), rtol=0, atol=1e-6)

    buffer = ReplayBuffer(64, OBS, ACT)
    rng = np.random.default_rng(1)
    buffer.add(
        rng.standard_normal((64, OBS)),
        rng.uniform(-1, 1, (64, ACT)),
        rng.standard_normal(64),
        rng.standard_normal((64, OBS)),
        np.zeros(64, bool),
        np.zeros(64, bool),
    )
    for _ in range(2):  # TD3 moves its actor every second step
        algo.update(buffer.sample(16, rng, torch.device("cpu")), UpdateContext(0.0, 1.0, rng))
    after = algo.acting_policy()
    assert np.abs(after.mode(obs) - before.mode(obs)).max() > 1e-6  # the actor moved: the old snapshot is stale
    np.testing.assert_allclose(live.mode(obs), after.mode(obs), rtol=0, atol=1e-6)
    draws = [policy.sample(obs, np.random.default_rng(5)) for policy in (live, after)]
    np.testing.assert_allclose(draws[0], draws[1], rtol=0, atol=1e-6)


def test_no_live_policy_where_a_torch_part_would_be_a_frozen_copy():
    config = SACConfig(network=QNetworkConfig(hidden_sizes=(8, 8), activation="GELU"))
    assert SAC(config, OBS, ActionSpec("continuous", ACT)).live_acting_policy() is None


def test_replay_sample_returns_the_rows_the_generator_picks():
    buffer = ReplayBuffer(10, 1, 1)
    values = np.arange(6, dtype=np.float32)
    buffer.add(values[:, None], -values[:, None], 10 * values, values[:, None] + 0.5, values % 2 == 1, values == 4)
    rows = np.random.default_rng(9).integers(0, 6, 5)
    batch = buffer.sample(5, np.random.default_rng(9), torch.device("cpu"))
    assert batch.obs[:, 0].tolist() == rows.tolist() and batch.actions[:, 0].tolist() == (-rows).tolist()
    assert batch.rewards.tolist() == (10 * rows).tolist() and batch.next_obs[:, 0].tolist() == (rows + 0.5).tolist()
    assert batch.terminated.dtype == batch.truncated.dtype == torch.float32
    assert batch.terminated.tolist() == (rows % 2).tolist() and batch.truncated.tolist() == (rows == 4).tolist()
