"""Off-policy math against hand values: Polyak averaging, TD targets (terminated vs truncated), TD3's
target smoothing, the squashed Gaussian's log-probability, the sign of the temperature gradient."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from pgrad.algos.off_policy import (
    critic_loss,
    polyak_update,
    sac_actor_loss,
    smoothed_target_actions,
    temperature_loss,
    twin_min_target,
)
from pgrad.distributions import TanhGaussian
from pgrad.estimators import td_targets_torch
from pgrad.nets import DeterministicActor, ExplorationNoise, SquashedGaussianActor
from pgrad.replay import ReplayBuffer


def test_polyak_update_matches_hand_values():
    source, target = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        source.weight.fill_(1.0)
        source.bias.fill_(-2.0)
        target.weight.copy_(torch.tensor([[0.0, 4.0]]))
        target.bias.fill_(0.0)
    polyak_update(source, target, 0.1)
    # theta' <- 0.1 theta + 0.9 theta'
    assert torch.allclose(target.weight, torch.tensor([[0.1, 3.7]]))
    assert torch.allclose(target.bias, torch.tensor([-0.2]))
    polyak_update(source, target, 0.1)
    assert torch.allclose(target.weight, torch.tensor([[0.19, 3.43]]))
    assert torch.allclose(target.bias, torch.tensor([-0.38]))
    assert torch.equal(source.weight, torch.ones(1, 2))  # the source never moves


def test_twin_min_target_bootstraps_through_truncation_not_termination():
    """Transitions from a real buffer: one truncated (time limit) and one terminated, same values."""
    buffer = ReplayBuffer(4, 1, 1)
    ones = np.ones((2, 1), np.float32)
    buffer.add(ones, ones, np.array([1.0, 1.0], np.float32), ones, np.array([False, True]), np.array([True, False]))
    batch = buffer.sample(64, np.random.default_rng(0), torch.device("cpu"))
    assert 0 < batch.terminated.sum() < 64 and torch.equal(batch.truncated, 1.0 - batch.terminated)
    q1, q2 = torch.full((64,), 5.0), torch.where(batch.terminated > 0, 7.0, 3.0)
    target = twin_min_target(batch.rewards, batch.terminated, [q1, q2], 0.9)
    # truncated: 1 + 0.9 * min(5, 3) = 3.7; terminated: 1 (no bootstrap, whatever Q' says)
    expected = torch.where(batch.terminated > 0, 1.0, 3.7)
    assert torch.allclose(target, expected)
    # with SAC's entropy term: 1 + 0.9 (min(5, 3) - 0.2 * (-1.5)) = 3.97
    five, three = torch.tensor([5.0]), torch.tensor([3.0])
    soft = twin_min_target(
        torch.tensor([1.0]), torch.tensor([0.0]), [five, three], 0.9, torch.tensor([-1.5]), alpha=0.2
    )
    assert soft.item() == pytest.approx(3.97)
    # DDPG's single critic: the one-step TD target of pgrad.estimators, r + gamma (1 - terminated) Q'
    assert twin_min_target(torch.tensor([1.0]), torch.tensor([0.0]), [torch.tensor([2.0])], 0.5).item() == 2.0
    assert td_targets_torch(torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([1.0]), 0.5).item() == 1.0


def test_target_smoothing_noise_is_clipped():
    generator = torch.Generator().manual_seed(0)
    base = torch.zeros(10_000, 2)
    smoothed = smoothed_target_actions(base, noise_std=10.0, noise_clip=0.5, generator=generator)
    assert smoothed.abs().max().item() == pytest.approx(0.5)
    assert (smoothed.abs() == 0.5).float().mean() > 0.9  # sigma 10: nearly every draw is clipped
    # the action stays in [-1, 1] after the noise
    near_edge = smoothed_target_actions(torch.full((1000, 1), 0.9), 0.2, 0.5, generator=generator)
    assert near_edge.max().item() <= 1.0 and near_edge.min().item() >= 0.4 - 1e-6
    # small noise: unclipped, with its standard deviation
    small = smoothed_target_actions(base, noise_std=0.01, noise_clip=0.5, generator=generator)
    assert small.std().item() == pytest.approx(0.01, rel=0.05)


def test_squashed_log_prob_matches_numerical_change_of_variables():
    """log pi(a) = log N(u) - log|det da/du|, the Jacobian of a = tanh(u) by central differences."""
    torch.manual_seed(0)
    mean = torch.tensor([[0.3, -1.2, 2.0]], dtype=torch.float64)
    log_std = torch.tensor([[-0.5, 0.1, 0.4]], dtype=torch.float64)
    dist = TanhGaussian(mean, log_std)
    for u in (torch.tensor([[0.1, -0.7, 1.9]], dtype=torch.float64), torch.tensor([[2.5, 3.0, -4.0]]).double()):
        h = 1e-6
        jacobian = torch.zeros(3, 3, dtype=torch.float64)
        for j in range(3):
            step = torch.zeros(1, 3, dtype=torch.float64)
            step[0, j] = h
            jacobian[:, j] = ((torch.tanh(u + step) - torch.tanh(u - step)) / (2 * h))[0]
        gaussian = torch.distributions.Normal(mean, log_std.exp()).log_prob(u).sum(-1)
        numerical = gaussian - torch.linalg.slogdet(jacobian).logabsdet
        assert dist.log_prob_pre_tanh(u).item() == pytest.approx(numerical.item(), abs=1e-6)
        # and through the action itself (atanh inverts tanh)
        assert dist.log_prob(torch.tanh(u)).item() == pytest.approx(numerical.item(), abs=1e-4)


def test_squashed_log_prob_is_finite_where_tanh_saturates():
    u = torch.tensor([[20.0, -30.0]])
    naive = torch.log(1 - torch.tanh(u) ** 2).sum()
    assert torch.isinf(naive)  # the textbook formula underflows
    correction = TanhGaussian.log_det_jacobian(u)
    # 2 (log 2 - u - softplus(-2u)) -> 2 log 2 - 2|u| for large |u|
    assert correction.item() == pytest.approx(2 * (math.log(2) - 20) + 2 * (math.log(2) - 30), rel=1e-6)


def test_temperature_gradient_lowers_alpha_while_entropy_is_above_target():
    log_alpha = torch.zeros((), requires_grad=True)
    # entropy estimate E[-log pi] = 2 > target -1: descent must lower log alpha (a positive gradient)
    temperature_loss(log_alpha, torch.full((8,), -2.0), target_entropy=-1.0).backward()
    assert log_alpha.grad is not None and log_alpha.grad.item() == pytest.approx(3.0)
    log_alpha.grad = None
    # entropy estimate -3 < target -1: raise alpha
    temperature_loss(log_alpha, torch.full((8,), 3.0), target_entropy=-1.0).backward()
    assert log_alpha.grad.item() == pytest.approx(-2.0)


def test_sac_actor_and_critic_losses_by_hand():
    q1, q2 = torch.tensor([1.0, 4.0]), torch.tensor([2.0, 3.0])
    # E[alpha log pi - min(Q1, Q2)] = mean(0.5 * [-1, 1] - [1, 3]) = mean([-1.5, -2.5]) = -2
    assert sac_actor_loss([q1, q2], torch.tensor([-1.0, 1.0]), 0.5).item() == pytest.approx(-2.0)
    # sum_i E[(Q_i - y)^2] with y = [1, 1]: (0 + 9) / 2 + (1 + 4) / 2 = 7
    assert critic_loss([q1, q2], torch.tensor([1.0, 1.0])).item() == pytest.approx(7.0)


def test_numpy_acting_policies_match_the_torch_actors():
    torch.manual_seed(1)
    obs = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    sac_actor = SquashedGaussianActor(3, 2, (16, 16), "relu")
    with torch.no_grad():
        expected = sac_actor(torch.from_numpy(obs)).mode().numpy()
    policy = sac_actor.acting_policy()
    np.testing.assert_allclose(policy.mode(obs), expected, atol=1e-5)
    samples = policy.sample(obs, np.random.default_rng(0))
    assert samples.shape == (5, 2) and np.abs(samples).max() < 1.0

    actor = DeterministicActor(3, 2, (16, 16), "relu")
    with torch.no_grad():
        expected = actor(torch.from_numpy(obs)).numpy()
    noisy = actor.acting_policy(ExplorationNoise("gaussian", 0.5))
    np.testing.assert_allclose(noisy.mode(obs), expected, atol=1e-5)
    explored = noisy.sample(obs, np.random.default_rng(0))
    assert np.abs(explored).max() <= 1.0 and not np.allclose(explored, expected)
    quiet = actor.acting_policy(ExplorationNoise("none", 0.5))
    np.testing.assert_allclose(quiet.sample(obs, np.random.default_rng(0)), expected, atol=1e-5)


def test_ornstein_uhlenbeck_noise_is_correlated_and_resumes_from_its_state():
    rng = np.random.default_rng(0)
    noise = ExplorationNoise("ornstein_uhlenbeck", 0.3, theta=0.15, dt=1e-2)
    draws = np.array([noise((1, 1), rng)[0, 0] for _ in range(2000)])
    # x_{t+1} = (1 - theta dt) x_t + sigma sqrt(dt) eps: lag-1 autocorrelation 1 - theta dt = 0.9985
    assert np.corrcoef(draws[:-1], draws[1:])[0, 1] > 0.95
    saved, state = noise.state(), rng.bit_generator.state
    expected = noise((1, 1), rng)
    again = ExplorationNoise("ornstein_uhlenbeck", 0.3, theta=0.15, dt=1e-2)
    again.load(saved)
    rng.bit_generator.state = state
    np.testing.assert_array_equal(again((1, 1), rng), expected)


def test_ornstein_uhlenbeck_noise_restarts_with_each_episode():
    noise = ExplorationNoise("ornstein_uhlenbeck", 0.3)
    rng = np.random.default_rng(0)
    for _ in range(50):
        noise((2, 1), rng)
    assert noise.process is not None and np.all(noise.process != 0.0)
    noise.end_episodes(np.array([True, False]))
    assert noise.process[0, 0] == 0.0 and noise.process[1, 0] != 0.0
