"""GAE and discounted returns against hand-computed values and a slow reference loop."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgrad.estimators import discounted_returns, explained_variance, gae


def column(values):
    return np.asarray(values, np.float64)[:, None]


def test_gae_terminated_at_last_step_matches_guide_value():
    # gamma = lambda = 0.5, rewards [1, 1, 1], V = 0: A0 = 1 + 0.25 + 0.0625 = 1.3125
    rewards = column([1, 1, 1])
    zeros = np.zeros_like(rewards)
    terminated = column([0, 0, 1]).astype(bool)
    advantages, returns = gae(rewards, zeros, zeros, terminated, np.zeros_like(terminated), 0.5, 0.5)
    assert advantages[0, 0] == pytest.approx(1.3125)
    np.testing.assert_allclose(advantages[:, 0], [1.3125, 1.25, 1.0])
    np.testing.assert_allclose(returns, advantages)


def test_gae_truncated_bootstraps_from_final_observation_value():
    # Same, but truncated with V(final observation) = 2: delta_2 = 1 + 0.5 * 2 = 2, A0 = 1.375
    rewards = column([1, 1, 1])
    values = np.zeros_like(rewards)
    next_values = column([0, 0, 2])
    truncated = column([0, 0, 1]).astype(bool)
    advantages, _ = gae(rewards, values, next_values, np.zeros_like(truncated), truncated, 0.5, 0.5)
    assert advantages[0, 0] == pytest.approx(1.375)


def test_gae_does_not_leak_across_episode_boundary():
    # Episode ends (terminated) at t=1; t=2 starts a new episode whose value must not flow back.
    rewards = column([1, 1, 5])
    values = np.zeros_like(rewards)
    next_values = column([0, 100, 0])
    terminated = column([0, 1, 0]).astype(bool)
    advantages, _ = gae(rewards, values, next_values, terminated, np.zeros_like(terminated), 0.9, 0.9)
    # A1 = r1 (terminated: no bootstrap from 100), A0 = 1 + 0.81 * 1
    assert advantages[1, 0] == pytest.approx(1.0)
    assert advantages[0, 0] == pytest.approx(1.81)


def test_gae_lambda_one_equals_discounted_return_minus_value():
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(6, 3))
    values = rng.normal(size=(6, 3))
    next_values = np.concatenate([values[1:], rng.normal(size=(1, 3))])
    no = np.zeros((6, 3), bool)
    advantages, returns = gae(rewards, values, next_values, no, no, 0.9, 1.0)
    expected = discounted_returns(rewards, no, no, 0.9, next_values=next_values)
    np.testing.assert_allclose(returns, expected, rtol=1e-12)


def test_discounted_returns_reward_to_go_restarts_at_done():
    rewards = column([1, 2, 3, 4])
    terminated = column([0, 1, 0, 0]).astype(bool)
    returns = discounted_returns(rewards, terminated, np.zeros_like(terminated), 0.5)
    # [1 + 0.5*2, 2, 3 + 0.5*4, 4] (last episode unfinished, no bootstrap given)
    np.testing.assert_allclose(returns[:, 0], [2.0, 2.0, 5.0, 4.0])


def test_discounted_returns_truncated_bootstraps():
    rewards = column([1, 1])
    truncated = column([0, 1]).astype(bool)
    next_values = column([0, 10])
    returns = discounted_returns(rewards, np.zeros_like(truncated), truncated, 0.5, next_values=next_values)
    np.testing.assert_allclose(returns[:, 0], [1 + 0.5 * 6, 1 + 0.5 * 10])


def slow_gae(rewards, values, next_values, terminated, truncated, gamma, lam):
    steps, envs = rewards.shape
    advantages = np.zeros_like(rewards)
    for b in range(envs):
        for t in range(steps):
            # Sum of discounted deltas until the episode ends (inclusive).
            total, factor = 0.0, 1.0
            for k in range(t, steps):
                bootstrap = 0.0 if terminated[k, b] else next_values[k, b]
                delta = rewards[k, b] + gamma * bootstrap - values[k, b]
                total += factor * delta
                if terminated[k, b] or truncated[k, b]:
                    break
                factor *= gamma * lam
            advantages[t, b] = total
    return advantages


@settings(max_examples=60, deadline=None)
@given(
    steps=st.integers(1, 12),
    envs=st.integers(1, 3),
    gamma=st.floats(0.0, 1.0),
    lam=st.floats(0.0, 1.0),
    seed=st.integers(0, 10_000),
)
def test_gae_matches_slow_reference(steps, envs, gamma, lam, seed):
    rng = np.random.default_rng(seed)
    rewards = rng.normal(size=(steps, envs))
    values = rng.normal(size=(steps, envs))
    next_values = rng.normal(size=(steps, envs))
    terminated = rng.random((steps, envs)) < 0.2
    truncated = (rng.random((steps, envs)) < 0.2) & ~terminated
    fast, _ = gae(rewards, values, next_values, terminated, truncated, gamma, lam)
    slow = slow_gae(rewards, values, next_values, terminated, truncated, gamma, lam)
    np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(steps=st.integers(1, 10), gamma=st.floats(0.0, 1.0), seed=st.integers(0, 10_000))
def test_discounted_returns_match_slow_reference(steps, gamma, seed):
    rng = np.random.default_rng(seed)
    rewards = rng.normal(size=(steps, 2))
    terminated = rng.random((steps, 2)) < 0.3
    fast = discounted_returns(rewards, terminated, np.zeros_like(terminated), gamma)
    for b in range(2):
        for t in range(steps):
            total, factor = 0.0, 1.0
            for k in range(t, steps):
                total += factor * rewards[k, b]
                if terminated[k, b]:
                    break
                factor *= gamma
            assert fast[t, b] == pytest.approx(total, abs=1e-9)


def test_explained_variance_values():
    targets = np.array([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(targets, targets) == pytest.approx(1.0)
    assert explained_variance(np.full(4, targets.mean()), targets) == pytest.approx(0.0)
    assert np.isnan(explained_variance(targets, np.ones(4)))


def test_vtrace_on_policy_equals_bootstrapped_lambda_one_return():
    # Guide value: pi = mu and rho_bar = c_bar = 1 -> V-trace targets = bootstrapped lambda=1 returns.
    from pgrad.estimators import vtrace

    rng = np.random.default_rng(3)
    steps, envs = 7, 3
    rewards = rng.normal(size=(steps, envs))
    values = rng.normal(size=(steps, envs))
    next_values = np.concatenate([values[1:], rng.normal(size=(1, envs))])
    terminated = rng.random((steps, envs)) < 0.15
    truncated = (rng.random((steps, envs)) < 0.15) & ~terminated
    next_values = np.where(truncated, rng.normal(size=(steps, envs)), next_values)  # V(final obs)
    vs, pg_advantages = vtrace(np.zeros((steps, envs)), rewards, values, next_values, terminated, truncated, 0.9)
    expected = discounted_returns(rewards, terminated, truncated, 0.9, next_values=next_values)
    np.testing.assert_allclose(vs, expected, rtol=1e-12)
    _, gae_returns = gae(rewards, values, next_values, terminated, truncated, 0.9, 1.0)
    np.testing.assert_allclose(vs, gae_returns, rtol=1e-12)
    # and the policy-gradient advantage is r + gamma v_{t+1} - V = the lambda=1 advantage
    np.testing.assert_allclose(pg_advantages, expected - values, rtol=1e-10, atol=1e-12)


def test_vtrace_clips_importance_weights_by_hand():
    # One step, terminated: v = V + min(rho_bar, pi/mu) (r - V). pi/mu = e^2 is clipped to 1.
    from pgrad.estimators import vtrace

    one = np.ones((1, 1))
    vs, adv = vtrace(2.0 * one, 3.0 * one, 1.0 * one, 0 * one, one.astype(bool), 0 * one > 0, 0.9)
    assert vs[0, 0] == pytest.approx(1.0 + 1.0 * (3.0 - 1.0))
    vs, adv = vtrace(np.log(0.5) * one, 3.0 * one, 1.0 * one, 0 * one, one.astype(bool), 0 * one > 0, 0.9)
    assert vs[0, 0] == pytest.approx(1.0 + 0.5 * 2.0)
    assert adv[0, 0] == pytest.approx(0.5 * 2.0)
