"""Retrace(lambda) (issue 28, point 5): hand values (with cut traces, a terminal and a time limit inside the
window), lambda = 0 as the one-step expected target, agreement with the operator's sum form, and Q^pi as a fixed
point on a small deterministic tabular MDP (and a wrong Q that is not one)."""

from __future__ import annotations

import numpy as np
import pytest

from pgrad.estimators import retrace, td_targets

# gamma 0.5, rewards [1, 1, 1], Q(s_t, a_t) = [1, 2, 3], E_pi Q(s_{t+1}, .) = [2, 4, 8], pi/mu = [1, 0.5, 2]
REWARDS = np.ones((3, 1))
Q = np.array([[1.0], [2.0], [3.0]])
NEXT_V = np.array([[2.0], [4.0], [8.0]])
LOG_RHOS = np.log(np.array([[1.0], [0.5], [2.0]]))


def flags(at: int | None) -> np.ndarray:
    out = np.zeros((3, 1), bool)
    if at is not None:
        out[at] = True
    return out


@pytest.mark.parametrize(
    ("lam", "terminated", "truncated", "expected"),
    [
        # Q2 = 1 + .5 * 8 = 5; Q1 = 1 + .5 (4 + min(1, 2)(5 - 3)) = 4; Q0 = 1 + .5 (2 + min(1, .5)(4 - 2)) = 2.5
        (1.0, None, None, [2.5, 4.0, 5.0]),
        # traces halved: c1 = .25, c2 = .5; Q1 = 1 + .5 (4 + .5 * 2) = 3.5; Q0 = 1 + .5 (2 + .25 * 1.5) = 2.1875
        (0.5, None, None, [2.1875, 3.5, 5.0]),
        # terminated at 1: Q1 = 1, Q0 = 1 + .5 (2 + .5 (1 - 2)) = 1.75; row 2 starts a new episode
        (1.0, 1, None, [1.75, 1.0, 5.0]),
        # truncated at 1: Q1 = 1 + .5 * 4 = 3 (bootstrap from the final observation), Q0 = 1 + .5 (2 + .5) = 2.25
        (1.0, None, 1, [2.25, 3.0, 5.0]),
    ],
)
def test_retrace_against_hand_values(lam, terminated, truncated, expected):
    got = retrace(LOG_RHOS, REWARDS, Q, NEXT_V, flags(terminated), flags(truncated), 0.5, lam)
    np.testing.assert_allclose(got[:, 0], expected)


def test_lambda_zero_is_the_one_step_expected_target():
    rng = np.random.default_rng(0)
    rewards, q, next_v, log_rhos = (rng.normal(size=(6, 4)) for _ in range(4))
    terminated = rng.random((6, 4)) < 0.2
    got = retrace(log_rhos, rewards, q, next_v, terminated, np.zeros((6, 4), bool), 0.9, lam=0.0)
    np.testing.assert_allclose(got, td_targets(rewards, next_v, terminated, 0.9))


def test_equals_the_operator_sum_form_on_random_inputs():
    """Q^ret_t = Q_t + sum_k gamma^(k-t) (prod_{i=t+1..k} c_i) delta_k inside one episode (no flags)."""
    rng = np.random.default_rng(1)
    steps, gamma, lam = 7, 0.9, 0.8
    rewards, q, next_v, log_rhos = (rng.normal(size=(steps, 1)) for _ in range(4))
    cs = lam * np.minimum(1.0, np.exp(log_rhos[:, 0]))
    deltas = rewards[:, 0] + gamma * next_v[:, 0] - q[:, 0]
    expected = []
    for t in range(steps):
        total, trace = q[t, 0], 1.0
        for k in range(t, steps):
            trace *= cs[k] if k > t else 1.0
            total += gamma ** (k - t) * trace * deltas[k]
        expected.append(total)
    none = np.zeros((steps, 1), bool)
    np.testing.assert_allclose(retrace(log_rhos, rewards, q, next_v, none, none, gamma, lam)[:, 0], expected)


def test_pi_equal_mu_with_lambda_one_keeps_every_trace():
    """pi = mu, lambda = 1: c = 1 everywhere. Where E_pi Q(s_{t+1}, .) = Q(s_{t+1}, a_{t+1}) the corrections
    cancel the bootstraps and Q^ret is the Monte Carlo return bootstrapped at the end: rewards [1, 1, 1],
    gamma .5, E Q(s_3, .) = 8 -> 1 + .5 + .25 + .125 * 8 = 2.75 (with pi/mu = 0.5 at step 1 it would be cut)."""
    next_v = np.array([[2.0], [3.0], [8.0]])  # = Q(s_1, a_1), Q(s_2, a_2), then the end's bootstrap
    got = retrace(np.zeros((3, 1)), REWARDS, Q, next_v, flags(None), flags(None), 0.5, 1.0)
    np.testing.assert_allclose(got[:, 0], [2.75, 3.5, 5.0])
    cut = retrace(LOG_RHOS, REWARDS, Q, next_v, flags(None), flags(None), 0.5, 1.0)
    assert cut[0, 0] == pytest.approx(1 + 0.5 * (2 + 0.5 * (3.5 - 2)))  # c_1 = min(1, 0.5)


def tabular_q_pi(transitions: np.ndarray, rewards: np.ndarray, pi: np.ndarray, gamma: float) -> np.ndarray:
    """Q^pi of a deterministic MDP: solve Q = R + gamma P_pi Q (``transitions[s, a]`` is s')."""
    states, actions = rewards.shape
    size = states * actions
    operator = np.zeros((size, size))
    for s in range(states):
        for a in range(actions):
            nxt = transitions[s, a]
            operator[s * actions + a, nxt * actions : (nxt + 1) * actions] = gamma * pi[nxt]
    return np.linalg.solve(np.eye(size) - operator, rewards.reshape(-1)).reshape(states, actions)


def test_q_pi_is_a_fixed_point_on_a_tabular_mdp():
    """Three states, two actions, deterministic transitions and rewards, a target policy pi and a different
    behaviour mu: along a trajectory of mu every delta_k is exactly 0 under Q^pi, so the Retrace target equals
    Q^pi(s_t, a_t) for any lambda; a Q off by a constant is not a fixed point."""
    rng = np.random.default_rng(2)
    transitions = np.array([[1, 2], [0, 2], [1, 0]])
    rewards = rng.normal(size=(3, 2))
    pi = np.array([[0.9, 0.1], [0.3, 0.7], [0.5, 0.5]])
    mu = np.array([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    gamma = 0.9
    q_pi = tabular_q_pi(transitions, rewards, pi, gamma)
    states, actions = [0], []
    for _ in range(12):
        actions.append(int(rng.choice(2, p=mu[states[-1]])))
        states.append(int(transitions[states[-1], actions[-1]]))
    s, a, s_next = np.array(states[:-1]), np.array(actions), np.array(states[1:])
    log_rhos = np.log(pi[s, a] / mu[s, a])[:, None]
    step_rewards = rewards[s, a][:, None]
    none = np.zeros((12, 1), bool)
    for lam in (0.0, 0.7, 1.0):
        for q in (q_pi, q_pi + 1.0):
            got = retrace(
                log_rhos, step_rewards, q[s, a][:, None], (pi * q).sum(1)[s_next][:, None], none, none, gamma, lam
            )
            if q is q_pi:
                np.testing.assert_allclose(got[:, 0], q_pi[s, a], rtol=1e-10)
            else:
                assert not np.allclose(got[:, 0], q[s, a])  # Q + 1 gives targets Q + gamma: not a fixed point
