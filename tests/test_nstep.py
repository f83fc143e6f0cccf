"""n-step returns and TD targets: hand-computed values (terminated, truncated, mid-rollout
boundaries, the rollout end) and agreement with a slow scalar reference loop."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgrad.estimators import discounted_returns, nstep_returns, td_targets


def column(values: list[float]) -> np.ndarray:
    return np.asarray(values, np.float64)[:, None]


def flags(length: int, at: int | None) -> np.ndarray:
    out = np.zeros((length, 1), bool)
    if at is not None:
        out[at] = True
    return out


# gamma = 0.5, rewards [1, 1, 1], next_values = V(s_1), V(s_2), V(s_3) = [2, 4, 8].
REWARDS = column([1, 1, 1])
NEXT_VALUES = column([2, 4, 8])


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (1, [1 + 0.5 * 2, 1 + 0.5 * 4, 1]),
        (2, [1 + 0.5 + 0.25 * 4, 1 + 0.5, 1]),
        (3, [1 + 0.5 + 0.25, 1 + 0.5, 1]),
        (10, [1.75, 1.5, 1]),
    ],
)
def test_terminated_at_last_step_does_not_bootstrap(n: int, expected: list[float]) -> None:
    got = nstep_returns(REWARDS, NEXT_VALUES, flags(3, 2), flags(3, None), 0.5, n)
    np.testing.assert_allclose(got[:, 0], expected)


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (1, [2.0, 3.0, 1 + 0.5 * 8]),
        (2, [1 + 0.5 + 0.25 * 4, 1 + 0.5 + 0.25 * 8, 5.0]),
        (3, [1 + 0.5 + 0.25 + 0.125 * 8, 3.5, 5.0]),
    ],
)
def test_truncated_at_last_step_bootstraps_from_final_observation(n: int, expected: list[float]) -> None:
    got = nstep_returns(REWARDS, NEXT_VALUES, flags(3, None), flags(3, 2), 0.5, n)
    np.testing.assert_allclose(got[:, 0], expected)


def test_guide_value_truncated_with_final_value_two() -> None:
    # GUIDE: gamma 0.5, rewards [1, 1, 1], V = 0, V(final observation) = 2; the 3-step return is
    # 1 + 0.5 + 0.25 + 0.125 * 2 = 2.0 (and G - V(s_0) = 2.0, vs GAE(lambda 0.5) = 1.375).
    got = nstep_returns(REWARDS, column([0, 0, 2]), flags(3, None), flags(3, 2), 0.5, 3)
    assert got[0, 0] == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("terminated_at", "truncated_at", "expected"),
    [
        # The episode ends at t = 1; t = 2, 3 belong to the next episode, which runs past the rollout end.
        (1, None, [1 + 0.5, 1, 1 + 0.5 + 0.25 * 8, 1 + 0.5 * 8]),
        (None, 1, [1 + 0.5 + 0.25 * 4, 1 + 0.5 * 4, 3.5, 5.0]),
    ],
)
def test_episode_boundary_inside_the_window(terminated_at, truncated_at, expected) -> None:
    rewards, next_values = column([1, 1, 1, 1]), column([2, 4, 6, 8])
    got = nstep_returns(rewards, next_values, flags(4, terminated_at), flags(4, truncated_at), 0.5, 3)
    np.testing.assert_allclose(got[:, 0], expected)


def test_td_targets_hand_values() -> None:
    # y = r + gamma (1 - terminated) V(s'): the truncated row keeps its bootstrap from V(final obs).
    rewards = np.array([[1.0, 2.0], [0.5, -1.0]])
    next_values = np.array([[10.0, 20.0], [30.0, 40.0]])
    terminated = np.array([[False, True], [False, False]])
    got = td_targets(rewards, next_values, terminated, 0.9)
    np.testing.assert_allclose(got, [[1 + 9.0, 2.0], [0.5 + 27.0, -1 + 36.0]])


def reference_nstep(rewards, next_values, terminated, truncated, gamma, n):
    """Scalar loops straight from the definition."""
    steps, envs = rewards.shape
    out = np.zeros((steps, envs))
    for b in range(envs):
        for t in range(steps):
            total, k = 0.0, 0
            while True:
                i = t + k
                total += gamma**k * rewards[i, b]
                if terminated[i, b]:
                    break
                if truncated[i, b] or k == n - 1 or i == steps - 1:
                    total += gamma ** (k + 1) * next_values[i, b]
                    break
                k += 1
            out[t, b] = total
    return out


@st.composite
def problems(draw):
    steps = draw(st.integers(1, 8))
    envs = draw(st.integers(1, 3))
    floats = st.floats(-5, 5, allow_nan=False, width=32)
    rewards = np.array(draw(st.lists(floats, min_size=steps * envs, max_size=steps * envs))).reshape(steps, envs)
    values = np.array(draw(st.lists(floats, min_size=steps * envs, max_size=steps * envs))).reshape(steps, envs)
    ends = draw(st.lists(st.sampled_from([0, 1, 2]), min_size=steps * envs, max_size=steps * envs))
    ends = np.array(ends).reshape(steps, envs)
    return rewards, values, ends == 1, ends == 2, draw(st.floats(0, 1)), draw(st.integers(1, 10))


@settings(max_examples=200, deadline=None)
@given(problems())
def test_matches_slow_reference(problem) -> None:
    rewards, next_values, terminated, truncated, gamma, n = problem
    expected = reference_nstep(rewards, next_values, terminated, truncated, gamma, n)
    got = nstep_returns(rewards, next_values, terminated, truncated, gamma, n)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
    if n == 1:
        np.testing.assert_allclose(td_targets(rewards, next_values, terminated, gamma), expected, atol=1e-9)
    if n >= rewards.shape[0]:
        # The whole-rollout return of classic A2C.
        whole = discounted_returns(rewards, terminated, truncated, gamma, next_values)
        np.testing.assert_allclose(got, whole, atol=1e-9)


def test_rejects_n_below_one() -> None:
    with pytest.raises(ValueError):
        nstep_returns(REWARDS, NEXT_VALUES, flags(3, None), flags(3, None), 0.5, 0)
