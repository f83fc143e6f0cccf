"""Return and advantage estimators: pure functions over time-major ``[T, B]`` arrays.

The estimators take NumPy arrays; the three that a learner needs on its own device also come over
torch tensors: ``gae_torch`` (token PPO's GAE, ``pgrad.lm.losses.token_gae``),
``td_targets_torch`` (the replay learners' TD target, ``pgrad.algos.off_policy``) and ``retrace_torch``
(SAC's Retrace target, ``pgrad.algos.retrace_sac``). Each twin computes
the same recursion as its NumPy original, is tested equal to it, and stays on the tensors' device and
dtype (no ``.numpy()``, no host round trip). Separate functions rather than one that dispatches on
type: each has one exact signature for the type checker and callers, NumPy float64 keeps its
precision, and neither pays for a runtime type test. (Torch twins of the other estimators existed
with no caller but their tests and were removed; write one when a learner needs it.)

Conventions used by every function here:
- ``rewards[t]`` is the reward for the action taken at step ``t``.
- ``terminated[t]``: the episode ended at ``t`` in a terminal state; nothing follows, V = 0.
- ``truncated[t]``: the episode was cut at ``t`` (time limit); the future still had value, so the
  target bootstraps from ``next_values[t]`` = V(final observation).
- ``next_values[t]`` is V(s_{t+1}), the value of the observation that followed step ``t``
  (the final observation when the episode ended at ``t``).

Both flags stop the recursion (the next row belongs to another episode); only ``terminated``
removes the bootstrap. Treating truncation as termination biases values low near time limits.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def _as_done(terminated: np.ndarray, truncated: np.ndarray) -> np.ndarray:
    done: np.ndarray = np.logical_or(terminated, truncated)
    return done


def discounted_returns(
    rewards: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    gamma: float,
    next_values: np.ndarray | None = None,
) -> np.ndarray:
    """Reward-to-go G_t = r_t + gamma * G_{t+1}, restarting at episode boundaries.

    With ``next_values`` given, a truncated step (and the last row, if its episode is still
    running) bootstraps: G_t = r_t + gamma * V(s_{t+1}). Without it, they bootstrap from 0,
    which is the Monte Carlo return of REINFORCE over complete episodes.
    """
    rewards = np.asarray(rewards)
    steps = rewards.shape[0]
    done = _as_done(terminated, truncated)
    if next_values is None:
        next_values = np.zeros_like(rewards)
    returns = np.zeros_like(rewards)
    # G after the last row: bootstrap from V(s_T) unless that episode just terminated.
    following = next_values[steps - 1] * (1.0 - terminated[steps - 1])
    for t in reversed(range(steps)):
        bootstrap = next_values[t] * (1.0 - terminated[t])
        following = np.where(done[t], bootstrap, following)
        returns[t] = rewards[t] + gamma * following
        following = returns[t]
    return returns


def gae(
    rewards: np.ndarray,
    values: np.ndarray,
    next_values: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    gamma: float,
    gae_lambda: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimation (Schulman et al., 2016).

        delta_t = r_t + gamma * (1 - terminated_t) * V(s_{t+1}) - V(s_t)
        A_t     = delta_t + gamma * lambda * (1 - done_t) * A_{t+1},   done = terminated | truncated

    Returns ``(advantages, returns)`` with ``returns = advantages + values`` (the TD(lambda)
    target for the critic).
    """
    rewards = np.asarray(rewards)
    not_terminated = 1.0 - np.asarray(terminated, dtype=rewards.dtype)
    not_done = 1.0 - _as_done(terminated, truncated).astype(rewards.dtype)
    deltas = rewards + gamma * not_terminated * next_values - values
    advantages = np.zeros_like(rewards)
    running = np.zeros_like(rewards[0])
    decay = gamma * gae_lambda
    for t in reversed(range(rewards.shape[0])):
        running = deltas[t] + decay * not_done[t] * running
        advantages[t] = running
    return advantages, advantages + values


def explained_variance(predictions: np.ndarray, targets: np.ndarray) -> float:
    """1 - Var[target - prediction] / Var[target]: 1 is perfect, 0 is no better than a constant."""
    target_var = float(np.var(targets))
    if target_var == 0.0:
        return float("nan")
    return 1.0 - float(np.var(targets - predictions)) / target_var


def nstep_returns(
    rewards: np.ndarray,
    next_values: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    gamma: float,
    n: int,
) -> np.ndarray:
    """n-step bootstrapped return (the TD target of n-step actor-critic and A2C).

        G_t^(n) = sum_{k<m} gamma^k r_{t+k} + gamma^m * bootstrap

    The window ends after ``m <= n`` steps, at the first of: n steps, the end of the episode, the
    end of the rollout. bootstrap = 0 if the episode terminated at step t+m-1, else
    ``next_values[t+m-1]`` (V(s_{t+n}), V(final observation) on truncation, V(s_T) at the end of
    the rollout). ``n = 1`` is the TD(0) target; ``n >= T`` equals
    ``discounted_returns(..., next_values)``, the classic A2C return.

    Cost is O(T * n) vectorised over B (n is a rollout length, so small).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    rewards = np.asarray(rewards)
    steps = rewards.shape[0]
    done = _as_done(terminated, truncated)
    not_terminated = 1.0 - np.asarray(terminated, dtype=rewards.dtype)
    returns = np.zeros_like(rewards)
    for t in range(steps):
        total = np.zeros_like(rewards[0])
        discount = 1.0
        open_window = np.ones(rewards.shape[1:], bool)  # episode still running inside the window
        last = min(t + n, steps) - 1
        for i in range(t, last + 1):
            total = total + open_window * discount * rewards[i]
            discount *= gamma
            # An episode that ends at i bootstraps from its final observation unless it terminated.
            ends_here = open_window & (done[i] | (i == last))
            total = total + ends_here * discount * not_terminated[i] * next_values[i]
            open_window = open_window & ~done[i]
        returns[t] = total
    return returns


def td_targets(rewards: np.ndarray, next_values: np.ndarray, terminated: np.ndarray, gamma: float) -> np.ndarray:
    """One-step TD target y_t = r_t + gamma * (1 - terminated_t) * V(s_{t+1}).

    Truncation needs no flag here: ``next_values[t]`` is already V(final observation).
    Equal to ``nstep_returns(..., n=1)``.
    """
    rewards = np.asarray(rewards)
    targets: np.ndarray = rewards + gamma * (1.0 - np.asarray(terminated, dtype=rewards.dtype)) * next_values
    return targets


def vtrace(
    log_rhos: np.ndarray,
    rewards: np.ndarray,
    values: np.ndarray,
    next_values: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    gamma: float,
    rho_bar: float = 1.0,
    c_bar: float = 1.0,
    lam: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """V-trace off-policy targets (Espeholt et al., 2018, IMPALA).

        rho_t = min(rho_bar, pi/mu),  c_t = lam * min(c_bar, pi/mu),  log_rhos = log pi - log mu
        delta_t = rho_t (r_t + gamma (1 - terminated_t) V(s_{t+1}) - V(s_t))
        v_t - V(s_t) = delta_t + gamma c_t (1 - done_t) (v_{t+1} - V(s_{t+1}))
        policy-gradient advantage_t = rho_t (r_t + gamma (1 - terminated_t) v_{t+1} - V(s_t))

    where v_{t+1} is V(final observation) after a truncation and V(s_T) past the last row.
    With pi = mu and rho_bar = c_bar = lam = 1 the targets are the bootstrapped Monte Carlo
    (lambda = 1) returns. Returns ``(vs, pg_advantages)``.
    """
    rhos = np.exp(log_rhos)
    clipped_rhos = np.minimum(rho_bar, rhos)
    cs = lam * np.minimum(c_bar, rhos)
    not_terminated = 1.0 - np.asarray(terminated, dtype=rewards.dtype)
    done = _as_done(terminated, truncated)
    not_done = 1.0 - done.astype(rewards.dtype)
    deltas = clipped_rhos * (rewards + gamma * not_terminated * next_values - values)
    corrections = np.zeros_like(rewards)
    running = np.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        running = deltas[t] + gamma * cs[t] * not_done[t] * running
        corrections[t] = running
    vs = values + corrections
    next_vs = np.concatenate([vs[1:], next_values[-1:]])
    next_vs = np.where(done, next_values, next_vs)
    pg_advantages = clipped_rhos * (rewards + gamma * not_terminated * next_vs - values)
    return vs, pg_advantages


def retrace(
    log_rhos: np.ndarray,
    rewards: np.ndarray,
    q_values: np.ndarray,
    next_expected_q: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    gamma: float,
    lam: float = 1.0,
) -> np.ndarray:
    """Retrace(lambda) Q targets (Munos et al., 2016), the action-value sibling of V-trace.

        c_t = lam * min(1, pi(a_t|s_t) / mu(a_t|s_t)),  log_rhos = log pi - log mu
        Q^ret_t = r_t + gamma (1 - terminated_t) [E_pi Q(s_{t+1}, .) + c_{t+1} (Q^ret_{t+1} - Q(s_{t+1}, a_{t+1}))]

    ``q_values[t]`` is Q(s_t, a_t), ``next_expected_q[t]`` is E_{a~pi} Q(s_{t+1}, a) (of the final observation
    after a truncation). The correction term stops at an episode's end and at the last row, which bootstrap from
    ``next_expected_q`` alone. Equivalently Q^ret_t = Q(s_t, a_t) + sum_{k>=t} gamma^(k-t) (c_{t+1}...c_k) delta_k
    with delta_k = r_k + gamma (1 - terminated_k) E_pi Q(s_{k+1}, .) - Q(s_k, a_k). lam = 0 gives the one-step
    expected target r_t + gamma E_pi Q(s_{t+1}, .); with pi = mu and lam = 1 every trace is 1; Q^pi is a fixed
    point (every delta has mean 0). Truncated traces (min(1, .)) keep the variance bounded for any mu.
    """
    cs = lam * np.minimum(1.0, np.exp(log_rhos))
    not_terminated = 1.0 - np.asarray(terminated, dtype=rewards.dtype)
    not_done = 1.0 - _as_done(terminated, truncated).astype(rewards.dtype)
    one_step = rewards + gamma * not_terminated * next_expected_q
    targets = np.zeros_like(rewards)
    targets[-1] = one_step[-1]
    for t in reversed(range(rewards.shape[0] - 1)):
        correction = cs[t + 1] * (targets[t + 1] - q_values[t + 1])
        targets[t] = one_step[t] + gamma * not_done[t] * correction  # not_done: terminated implies done
    return targets


# ---- torch twins ---------------------------------------------------------------------------------
# The same equations as above, over tensors on one device. Flags may be bool or 0/1 floats; they
# are cast to the rewards' dtype (or to bool) and nothing moves between devices, so float32 on a GPU
# stays float32 on that GPU.
# Rows are gathered in a list and stacked rather than written in place, so a caller that needs
# gradients through a target (GAE's returns through a learned value) gets them.


def _flags_torch(terminated: Tensor, truncated: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """``(1 - terminated, done)`` with ``1 - terminated`` in ``like``'s dtype and ``done`` boolean."""
    done = torch.logical_or(terminated.bool(), truncated.bool())
    return 1.0 - terminated.to(like.dtype), done


def gae_torch(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[Tensor, Tensor]:
    """Torch twin of :func:`gae`; returns ``(advantages, advantages + values)``.

    delta_t = r_t + gamma (1 - terminated_t) V(s_{t+1}) - V(s_t);  A_t = delta_t + gamma lambda (1 - done_t) A_{t+1}
    """
    not_terminated, done = _flags_torch(terminated, truncated, rewards)
    not_done = (~done).to(rewards.dtype)
    deltas = rewards + gamma * not_terminated * next_values - values
    decay = gamma * gae_lambda
    running = torch.zeros_like(rewards[0])
    advantages: list[Tensor] = []
    for t in reversed(range(rewards.shape[0])):
        running = deltas[t] + decay * not_done[t] * running
        advantages.append(running)
    stacked = torch.stack(advantages[::-1])
    return stacked, stacked + values


def td_targets_torch(rewards: Tensor, next_values: Tensor, terminated: Tensor, gamma: float) -> Tensor:
    """Torch twin of :func:`td_targets`: y_t = r_t + gamma (1 - terminated_t) V(s_{t+1})."""
    return rewards + gamma * (1.0 - terminated.to(rewards.dtype)) * next_values


def retrace_torch(
    log_rhos: Tensor,
    rewards: Tensor,
    q_values: Tensor,
    next_expected_q: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    gamma: float,
    lam: float = 1.0,
) -> Tensor:
    """Torch twin of :func:`retrace` (SAC's Retrace critic target, ``pgrad.algos.retrace_sac``).

    c_t = lam min(1, pi/mu);  Q^ret_t = r_t + gamma (1 - terminated_t) E_pi Q(s_{t+1}, .)
                                        + gamma (1 - done_t) c_{t+1} (Q^ret_{t+1} - Q(s_{t+1}, a_{t+1}))
    """
    cs = lam * torch.exp(log_rhos).clamp(max=1.0)
    not_terminated, done = _flags_torch(terminated, truncated, rewards)
    not_done = (~done).to(rewards.dtype)
    one_step = rewards + gamma * not_terminated * next_expected_q
    target = one_step[-1]
    rows = [target]
    for t in reversed(range(rewards.shape[0] - 1)):
        target = one_step[t] + gamma * not_done[t] * cs[t + 1] * (target - q_values[t + 1])
        rows.append(target)
    return torch.stack(rows[::-1])
