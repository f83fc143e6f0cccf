"""Distributions against torch.distributions and change-of-variables; the NumPy acting policy
against the torch learner; initialisation; normalisers against NumPy statistics."""

import math

import numpy as np
import pytest
import torch

from pgrad.distributions import Categorical, DiagGaussian, TanhGaussian
from pgrad.envs.normalize import ObsNormalizer, RunningMeanStd
from pgrad.nets import ActionSpec, ActorCritic


def test_categorical_matches_torch():
    logits = torch.randn(5, 4)
    actions = torch.tensor([0, 1, 2, 3, 1])
    ours, ref = Categorical(logits), torch.distributions.Categorical(logits=logits)
    torch.testing.assert_close(ours.log_prob(actions), ref.log_prob(actions))
    torch.testing.assert_close(ours.entropy(), ref.entropy())
    other = torch.randn(5, 4)
    torch.testing.assert_close(
        ours.kl(Categorical(other)),
        torch.distributions.kl_divergence(ref, torch.distributions.Categorical(logits=other)),
    )


def test_diag_gaussian_matches_torch():
    mean, log_std = torch.randn(6, 3), torch.randn(3) * 0.3
    actions = torch.randn(6, 3)
    ours = DiagGaussian(mean, log_std)
    ref = torch.distributions.Independent(torch.distributions.Normal(mean, log_std.exp().expand_as(mean)), 1)
    torch.testing.assert_close(ours.log_prob(actions), ref.log_prob(actions))
    torch.testing.assert_close(ours.entropy(), ref.entropy())
    mean2, log_std2 = torch.randn(6, 3), torch.randn(3) * 0.3
    ref2 = torch.distributions.Independent(torch.distributions.Normal(mean2, log_std2.exp().expand_as(mean2)), 1)
    torch.testing.assert_close(ours.kl(DiagGaussian(mean2, log_std2)), torch.distributions.kl_divergence(ref, ref2))


def test_tanh_gaussian_log_prob_is_change_of_variables():
    # p_A(a) = p_U(u) / |da/du|, da/du = 1 - tanh(u)^2; check against a numerical derivative.
    mean, log_std = torch.tensor([[0.3]], dtype=torch.float64), torch.tensor([-0.2], dtype=torch.float64)
    dist = TanhGaussian(mean, log_std)
    u = torch.tensor([[0.7]], dtype=torch.float64)
    a = torch.tanh(u)
    base = torch.distributions.Normal(mean, log_std.exp()).log_prob(u).sum()
    h = 1e-6
    derivative = (math.tanh(0.7 + h) - math.tanh(0.7 - h)) / (2 * h)
    assert dist.log_prob(a).item() == pytest.approx(base.item() - math.log(derivative), abs=1e-5)
    # and the density integrates to one over (-1, 1)
    grid = torch.linspace(-0.999999, 0.999999, 200_001, dtype=torch.float64)[:, None]
    density = TanhGaussian(mean.expand(len(grid), 1), log_std).log_prob(grid).exp()
    assert torch.trapezoid(density, grid[:, 0]).item() == pytest.approx(1.0, abs=1e-3)


def test_orthogonal_init_gains():
    model = ActorCritic(4, ActionSpec("discrete", 2), (64, 64))
    hidden = model.actor_torso[0].weight
    # orthogonal with gain sqrt(2): W W^T = 2 I for a wide matrix's rows (64 x 4 -> columns orthogonal)
    torch.testing.assert_close(hidden.T @ hidden, 2.0 * torch.eye(4), atol=1e-5, rtol=0)
    head = model.policy_head.weight
    torch.testing.assert_close(head @ head.T, 0.01**2 * torch.eye(2), atol=1e-7, rtol=0)
    assert torch.all(model.policy_head.bias == 0)


@pytest.mark.parametrize("shared", [False, True])
def test_acting_policy_sampling_matches_learner_distribution(shared):
    torch.manual_seed(0)
    model = ActorCritic(3, ActionSpec("discrete", 3), (8,), shared=shared)
    with torch.no_grad():
        model.policy_head.weight.mul_(200.0)  # make the policy far from uniform
    obs = np.tile(np.array([[0.5, -1.0, 2.0]], np.float32), (40_000, 1))
    actions = model.acting_policy().sample(obs, np.random.default_rng(0))
    probs = model.distribution(torch.from_numpy(obs[:1])).log_probs.exp()[0].detach().numpy()
    frequencies = np.bincount(actions, minlength=3) / len(actions)
    np.testing.assert_allclose(frequencies, probs, atol=0.01)
    assert model.acting_policy().mode(obs[:1])[0] == probs.argmax()


def test_acting_policy_gaussian_matches_learner():
    torch.manual_seed(0)
    model = ActorCritic(2, ActionSpec("continuous", 2), (8, 8), log_std_init=-0.5)
    obs = np.random.default_rng(1).normal(size=(5, 2)).astype(np.float32)
    policy = model.acting_policy()
    torch.testing.assert_close(
        torch.from_numpy(policy.mode(obs)), model.distribution(torch.from_numpy(obs)).mean.detach(), atol=1e-6, rtol=0
    )
    samples = policy.sample(np.repeat(obs[:1], 50_000, 0), np.random.default_rng(2))
    np.testing.assert_allclose(samples.std(0), np.exp(-0.5), rtol=0.02)


def test_state_dependent_std_is_clamped():
    model = ActorCritic(2, ActionSpec("continuous", 1), (4,), state_dependent_std=True)
    with torch.no_grad():
        model.policy_head.bias[1] = 50.0
    dist = model.distribution(torch.zeros(1, 2))
    assert dist.log_std.item() == pytest.approx(2.0)
    assert model.acting_policy().sample(np.zeros((1, 2), np.float32), np.random.default_rng(0)).shape == (1, 1)


def test_running_mean_std_matches_numpy_over_all_batches():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(n, 2)) for n in (1, 7, 30)]
    stats = RunningMeanStd((2,), epsilon=0.0)
    for batch in batches:
        stats.update(batch)
    everything = np.concatenate(batches)
    np.testing.assert_allclose(stats.mean, everything.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.var, everything.var(0), rtol=1e-12)


def test_obs_normalizer_freezes_when_not_updating_and_clips():
    norm = ObsNormalizer((1,), clip=2.0, enabled=True)
    norm(np.array([[0.0], [10.0]]), update=True)
    mean = norm.stats.mean.copy()
    out = norm(np.array([[1000.0]]), update=False)
    np.testing.assert_array_equal(norm.stats.mean, mean)
    assert out[0, 0] == 2.0
