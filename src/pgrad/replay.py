"""The replay buffer of the off-policy algorithms (DDPG, TD3, SAC): preallocated NumPy ring storage.

One row per transition (s, a, r, s', terminated, truncated), written from the valid steps of a
vectorised ``Rollout`` and sampled uniformly. Two details decide whether the targets are right:

- ``next_obs`` is the TRUE next observation. Gymnasium's next-step autoreset returns the episode's
  final observation on the step that ends it and the reset observation one step later (a step whose
  action is ignored and whose reward is 0, marked ``valid = False`` by the collector). So for a valid
  step t, ``rollout.obs[t + 1]`` is s' even when the episode ended at t, and the autoreset step itself
  is never stored: no transition ever pairs a final observation with a reset one.
- ``terminated`` and ``truncated`` are kept apart: the target bootstraps through a time limit
  (y = r + gamma Q(s', a')) and not through a terminal state (y = r).

Rows are stored flat (not [steps, envs]), so the skipped autoreset rows leave no holes, and sampling
``rng.integers(0, size)`` can only ever pick written rows. The arrays are allocated once with
``np.empty`` (the OS hands out pages on first write, so a 1e6-row buffer costs memory as it fills).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pgrad import safe_io
from pgrad.config import OffPolicyLoopConfig, check_memory
from pgrad.rollout import Rollout

# the arrays a checkpoint holds (``TrainState.replay``), besides ``position`` and ``size``
FIELDS = ("obs", "next_obs", "actions", "rewards", "terminated", "truncated")
# the key under which a learner hands a prioritised batch's new |TD errors| back (popped before the metrics)
PRIORITY_KEY = "replay/td_abs"


@dataclass(frozen=True)
class TransitionBatch:
    """A sample of transitions as ``[N, ...]`` tensors on the learner's device.

    ``terminated`` and ``truncated`` are float 0/1, so ``1 - terminated`` masks the bootstrap directly."""

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_obs: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    # prioritised replay: the importance weights w_i (max 1) that scale each row's critic loss, and the rows
    # drawn, whose priorities the learner's TD errors then update; None for a uniform sample
    weights: torch.Tensor | None = None
    indices: np.ndarray | None = None
    # n-step replay: gamma^m for a window of m <= n rewards summed into ``rewards`` (None: one step, gamma^1)
    discounts: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.obs.shape[0])

    def save(self, path: Path) -> None:
        """The batch as a pickle-free ``.npz`` (what a halted run leaves behind)."""
        arrays: dict[str, Any] = {}  # np.savez's keyword arrays
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                arrays[f.name] = value if isinstance(value, np.ndarray) else value.detach().cpu().numpy()
        with safe_io.atomic_file(path) as handle:  # a run folder's file: never through a link
            np.savez(handle, **arrays)


class ReplayBuffer:
    """A ring of ``capacity`` transitions; the oldest are overwritten once it is full."""

    def __init__(self, capacity: int, obs_dim: int, action_dim: int, n_step: int = 1, gamma: float = 1.0) -> None:
        """``n_step > 1``: ``sample`` returns n-step transitions over consecutive rows (``nstep_windows``; rows of
        one env in time order, so one env), discounted by ``gamma``."""
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1; got {capacity}")
        # 4 bytes per float (observation, next observation, action, reward) and one per flag
        check_memory(capacity * (4 * (2 * obs_dim + action_dim + 1) + 2), "loop.buffer_size", "the replay buffer")
        self.capacity = capacity
        self.obs = np.empty((capacity, obs_dim), np.float32)
        self.next_obs = np.empty((capacity, obs_dim), np.float32)
        self.actions = np.empty((capacity, action_dim), np.float32)
        self.rewards = np.empty(capacity, np.float32)
        self.terminated = np.empty(capacity, bool)
        self.truncated = np.empty(capacity, bool)
        self.position = 0  # the row the next transition goes to
        self.size = 0  # rows written so far, at most capacity
        self.n_step, self.gamma = n_step, gamma

    @property
    def nbytes(self) -> int:
        """Bytes the buffer occupies once full."""
        return sum(getattr(self, name).nbytes for name in FIELDS)

    def describe(self) -> str:
        """One line with the buffer's capacity, the fields of a transition and its size in MiB when full."""
        obs_dim, action_dim = self.obs.shape[1], self.actions.shape[1]
        return (
            f"replay buffer: {self.capacity:,} transitions x (obs {obs_dim}, next obs {obs_dim}, action {action_dim}, "
            f"reward, terminated, truncated) = {self.nbytes / 2**20:,.1f} MiB when full"
        )

    def add(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        next_obs: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
    ) -> None:
        """Append ``n`` transitions (arrays with a leading axis of ``n``), wrapping around the ring."""
        count = len(rewards)
        if count == 0:
            return
        if count > self.capacity:  # only the newest capacity rows would survive anyway
            obs, actions, rewards = obs[-self.capacity :], actions[-self.capacity :], rewards[-self.capacity :]
            next_obs, terminated = next_obs[-self.capacity :], terminated[-self.capacity :]
            truncated, count = truncated[-self.capacity :], self.capacity
        rows = (self.position + np.arange(count)) % self.capacity
        self.obs[rows] = obs
        self.next_obs[rows] = next_obs
        self.actions[rows] = actions.reshape(count, -1)
        self.rewards[rows] = rewards
        self.terminated[rows] = terminated
        self.truncated[rows] = truncated
        self.position = int((self.position + count) % self.capacity)
        self.size = min(self.size + count, self.capacity)

    def add_rollout(self, rollout: Rollout) -> int:
        """Store every valid step of ``rollout`` (time-major, then env order); returns how many.

        s' of step t is ``rollout.obs[t + 1]``: the final observation when the episode ended at t
        (next-step autoreset), and the autoreset step after it is invalid, so it is skipped."""
        valid = rollout.valid
        steps = rollout.num_steps
        self.add(
            rollout.obs[:steps][valid],
            rollout.actions[valid],
            rollout.rewards[valid],
            rollout.obs[1 : steps + 1][valid],
            rollout.terminated[valid],
            rollout.truncated[valid],
        )
        return int(valid.sum())

    def sample(self, batch_size: int, rng: np.random.Generator, device: torch.device) -> TransitionBatch:
        """``batch_size`` rows drawn uniformly, with replacement, from the written ones."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        return self.gather(rng.integers(0, self.size, batch_size), device)

    def gather(self, rows: np.ndarray, device: torch.device) -> TransitionBatch:
        """The transitions at ``rows`` as tensors; with ``n_step > 1`` each row's n-step window (``nstep_windows``)."""
        discounts = None
        rewards, last = self.rewards[rows], rows
        if self.n_step > 1:
            window = nstep_windows(rows, self, self.n_step, self.gamma)
            rewards, last, discounts = window.returns, window.last, torch.from_numpy(window.discounts).to(device)

        # np.take and a NumPy cast (bool -> float32) before a zero-copy from_numpy: ~2.5x cheaper per batch
        # than fancy indexing then torch's .to(dtype) (~100 against ~280 us here, once per gradient step)
        def take(array: np.ndarray, at: np.ndarray = rows, as_float: bool = False) -> torch.Tensor:
            picked = np.take(array, at, axis=0)
            tensor = torch.from_numpy(picked.astype(np.float32) if as_float else picked)
            return tensor if device.type == "cpu" else tensor.to(device)

        return TransitionBatch(
            obs=take(self.obs),
            actions=take(self.actions),
            rewards=torch.from_numpy(np.ascontiguousarray(rewards)).to(device),
            next_obs=take(self.next_obs, last),
            terminated=take(self.terminated, last, as_float=True),
            truncated=take(self.truncated, last, as_float=True),
            discounts=discounts,
        )

    # ---- checkpoint support -------------------------------------------------------------
    def state_arrays(self) -> dict[str, np.ndarray]:
        """The written rows and the ring's position, for ``TrainState.replay`` (safetensors)."""
        arrays = {name: getattr(self, name)[: self.size] for name in FIELDS}
        arrays["position"] = np.array([self.position], np.int64)  # shape [1]: what safetensors gives back
        arrays["size"] = np.array([self.size], np.int64)
        return arrays

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Put saved rows back; shapes are checked first (a checkpoint may come from another config)."""
        size, position = int(arrays["size"].reshape(-1)[0]), int(arrays["position"].reshape(-1)[0])
        if not 0 <= size <= self.capacity or not 0 <= position < self.capacity:
            raise ValueError(f"replay size {size} / position {position} do not fit a capacity of {self.capacity}")
        for name in FIELDS:
            mine, saved = getattr(self, name), arrays[name]
            if saved.shape != (size, *mine.shape[1:]):
                raise ValueError(f"replay.{name} has shape {saved.shape}; expected {(size, *mine.shape[1:])}")
            mine[:size] = saved
        self.size, self.position = size, position


# ---- n-step windows over consecutive rows ------------------------------------------------------------


@dataclass(frozen=True)
class NStepWindows:
    """The n-step view of sampled rows: ``returns`` sum_{k<m} gamma^k r_{t+k} (float32), ``last`` the row t+m-1
    whose next observation and flags end the window, ``discounts`` gamma^m (float32)."""

    returns: np.ndarray
    last: np.ndarray
    discounts: np.ndarray


def nstep_windows(rows: np.ndarray, buffer: ReplayBuffer, n_step: int, gamma: float) -> NStepWindows:
    """The n-step transition that starts at each of ``rows`` (one env: consecutive rows are consecutive steps).

        R_t = sum_{k<m} gamma^k r_{t+k},  target = R_t + gamma^m (1 - terminated_{t+m-1}) Q(s_{t+m}, .)

    The window holds m <= n rows and ends early at the first row that ends an episode (terminated: no
    bootstrap; truncated: bootstrap from its true final observation) and at the newest row written (the row
    after it is an older transition, or not yet written). Every window bootstraps from a true next
    observation, so a shortened window is still an unbiased (shorter) target."""
    offsets = np.arange(n_step)
    window = (rows[:, None] + offsets) % buffer.capacity
    newest = (buffer.position - 1) % buffer.capacity
    available = offsets <= ((newest - rows) % buffer.capacity)[:, None]
    done = buffer.terminated[window] | buffer.truncated[window]
    # row k belongs to the window when no earlier row of it ended the episode
    open_before = np.concatenate([np.ones((len(rows), 1), bool), np.cumprod(~done[:, :-1], axis=1).astype(bool)], 1)
    inside = available & open_before
    length = inside.sum(axis=1)
    powers = gamma ** offsets.astype(np.float64)
    # where, not a product: rows past the newest may be unwritten (np.empty), and 0 x NaN is NaN
    returns = np.where(inside, powers * buffer.rewards[window].astype(np.float64), 0.0).sum(axis=1)
    last = (rows + length - 1) % buffer.capacity
    discounts = gamma ** length.astype(np.float64)
    return NStepWindows(returns.astype(np.float32), last, discounts.astype(np.float32))


# ---- prioritised replay ------------------------------------------------------------------------------


class SumTree:
    """A binary tree over ``capacity`` leaves whose every inner node is the sum of its two children.

    Leaves sit at ``[size, 2 size)`` of one float64 array (``size``: capacity rounded up to a power of two;
    unused leaves stay 0, so they are never drawn), node ``i``'s children at ``2i`` and ``2i + 1``, the total at
    node 1. ``update`` rewrites the changed leaves' ancestors level by level as left + right (never by adding a
    difference), so a node's value depends only on the current leaves: a tree rebuilt from saved leaves is bit
    for bit the tree that was saved. Both ``update`` and ``find`` are vectorised over a batch: log2(size) NumPy
    steps, no Python loop over the rows."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.size = 1 << max(capacity - 1, 0).bit_length()
        self.nodes = np.zeros(2 * self.size, np.float64)

    @property
    def total(self) -> float:
        """The sum of all leaves (the root)."""
        return float(self.nodes[1])

    def leaves(self, count: int | None = None) -> np.ndarray:
        """A copy of the first ``count`` leaves (all by default)."""
        return self.nodes[self.size : self.size + (self.capacity if count is None else count)].copy()

    def update(self, indices: np.ndarray, values: np.ndarray) -> None:
        """Set leaves ``indices`` to ``values`` (a later duplicate index wins, as NumPy assignment) and their
        ancestors to the sums of their children."""
        nodes = np.asarray(indices, np.int64) + self.size
        self.nodes[nodes] = values
        for _ in range(self.size.bit_length() - 1):  # one level up per pass, to the root
            nodes = nodes // 2  # a parent shared by several rows is written several times, with one value
            self.nodes[nodes] = self.nodes[2 * nodes] + self.nodes[2 * nodes + 1]

    def find(self, prefix: np.ndarray) -> np.ndarray:
        """For each prefix sum u in [0, total), the leaf i with sum(leaves[:i]) <= u < sum(leaves[:i + 1])."""
        nodes = np.ones(len(prefix), np.int64)
        remaining = np.asarray(prefix, np.float64).copy()
        while nodes[0] < self.size:  # every path has the same depth
            left = self.nodes[2 * nodes]
            right = remaining >= left
            remaining -= np.where(right, left, 0.0)
            nodes = 2 * nodes + right
        leaves: np.ndarray = nodes - self.size
        return leaves


@dataclass(frozen=True)
class PrioritySettings:
    """Proportional prioritisation (Schaul et al., 2016): P(i) = p_i^alpha / sum_k p_k^alpha with
    p_i = |delta_i| + eps; importance weights w_i = (N P(i))^-beta / max_j w_j over the batch, beta annealed
    linearly from ``beta`` to 1 over the first ``beta_end`` fraction of the run."""

    alpha: float = 0.6
    beta: float = 0.4
    beta_end: float = 1.0
    eps: float = 1e-6

    def beta_at(self, progress: float) -> float:
        """beta after ``progress`` (0 to 1) of the run: beta + (1 - beta) min(1, progress / beta_end)."""
        fraction = 1.0 if self.beta_end <= 0 else min(max(progress, 0.0) / self.beta_end, 1.0)
        return self.beta + (1.0 - self.beta) * fraction


def importance_weights(probabilities: np.ndarray, size: int, beta: float) -> np.ndarray:
    """w_i = (N P(i))^-beta / max_j w_j: 1 for the batch's least likely row, below 1 for the rest."""
    weights = (size * probabilities) ** -beta
    normalised: np.ndarray = weights / weights.max()
    return normalised


class PrioritizedReplayBuffer(ReplayBuffer):
    """The ring of ``ReplayBuffer`` sampled in proportion to p_i^alpha (a ``SumTree`` over its rows).

    New rows enter at the largest priority seen so far (so each is replayed at least about once before its
    TD error is known), or at priorities the caller computed (``add(..., priorities=...)``: what an APE-X
    actor sends with its batch). ``sample`` draws one row from each of ``batch_size`` equal slices of the
    total (stratified, as the paper), ``update_priorities(rows, |delta|)`` sets p_i = |delta_i| + eps from
    the learner's TD errors. Everything a draw depends on (rows, leaves, the running maximum) is in
    ``state_arrays``, so a resumed run draws the same batches."""

    def __init__(
        self,
        capacity: int,
        obs_dim: int,
        action_dim: int,
        settings: PrioritySettings,
        n_step: int = 1,
        gamma: float = 1.0,
    ) -> None:
        """``settings``: alpha, beta, its annealing and eps (``loop.priority_*``)."""
        super().__init__(capacity, obs_dim, action_dim, n_step, gamma)
        self.settings = settings
        self.tree = SumTree(capacity)
        self.max_priority = 1.0  # the largest p_i = |delta_i| + eps set so far (before the exponent alpha)
        self.beta = settings.beta

    def describe(self) -> str:
        """The uniform buffer's line plus the prioritisation's settings."""
        s = self.settings
        return f"prioritized {super().describe()} (alpha {s.alpha:g}, beta {s.beta:g} -> 1, eps {s.eps:g})"

    def set_progress(self, progress: float) -> None:
        """Anneal beta to ``progress`` (0 to 1) of the run."""
        self.beta = self.settings.beta_at(progress)

    def add(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        next_obs: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        priorities: np.ndarray | None = None,
    ) -> None:
        """Append ``n`` transitions, each at the running maximum priority or at ``priorities`` (|delta|, n of them)."""
        count = min(len(rewards), self.capacity)
        if count == 0:
            return
        rows = (self.position + np.arange(count)) % self.capacity
        super().add(obs, actions, rewards, next_obs, terminated, truncated)
        if priorities is None:
            self.tree.update(rows, np.full(count, self.max_priority**self.settings.alpha))
        else:
            self.update_priorities(rows, np.asarray(priorities, np.float64)[-count:])

    def update_priorities(self, rows: np.ndarray, errors: np.ndarray) -> None:
        """p_i = |delta_i| + eps for ``rows`` (eps > 0: every row stays drawable); the tree holds p_i^alpha and the
        running maximum grows."""
        priorities = np.abs(np.asarray(errors, np.float64)) + self.settings.eps
        self.max_priority = max(self.max_priority, float(priorities.max()))
        self.tree.update(rows, priorities**self.settings.alpha)

    def probabilities(self, rows: np.ndarray) -> np.ndarray:
        """P(i) = p_i^alpha / sum_k p_k^alpha of ``rows``, read from the tree."""
        leaves: np.ndarray = self.tree.nodes[self.tree.size + np.asarray(rows, np.int64)] / self.tree.total
        return leaves

    def sample_rows(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """``batch_size`` rows, one from each of as many equal slices of the total priority."""
        total = self.tree.total
        prefix = (np.arange(batch_size) + rng.random(batch_size)) * (total / batch_size)
        rows = self.tree.find(np.minimum(prefix, np.nextafter(total, 0.0)))
        # rounding in the descent can only land on an unwritten leaf (priority 0) at the very end: take the newest
        return np.where(rows < self.size, rows, (self.position - 1) % self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator, device: torch.device) -> TransitionBatch:
        """``batch_size`` rows drawn in proportion to p_i^alpha, with their importance weights and indices."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        rows = self.sample_rows(batch_size, rng)
        weights = importance_weights(self.probabilities(rows), self.size, self.beta)
        batch = self.gather(rows, device)
        return replace(batch, weights=torch.from_numpy(weights.astype(np.float32)).to(device), indices=rows)

    # ---- checkpoint support -------------------------------------------------------------
    def state_arrays(self) -> dict[str, np.ndarray]:
        """The uniform buffer's arrays plus the written leaves (p_i^alpha) and the running maximum priority."""
        arrays = super().state_arrays()
        arrays["priorities"] = self.tree.leaves(self.size)
        arrays["max_priority"] = np.array([self.max_priority], np.float64)
        return arrays

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Put saved rows and priorities back and rebuild the tree's sums from the leaves (bit-equal)."""
        super().load_state_arrays(arrays)
        if "priorities" not in arrays:
            raise ValueError("the checkpoint's replay buffer holds no priorities (it was saved by a uniform buffer)")
        leaves = np.asarray(arrays["priorities"], np.float64).reshape(-1)
        if leaves.shape != (self.size,):
            raise ValueError(f"replay.priorities has shape {leaves.shape}; expected ({self.size},)")
        self.tree = SumTree(self.capacity)
        if self.size:
            self.tree.update(np.arange(self.size), leaves)
        self.max_priority = float(np.asarray(arrays["max_priority"]).reshape(-1)[0])


def make_replay_buffer(
    loop: OffPolicyLoopConfig, obs_dim: int, action_dim: int, n_step: int = 1, gamma: float = 1.0
) -> ReplayBuffer:
    """The buffer ``loop.replay`` names: uniform, or prioritized with ``loop.priority_*``."""
    if loop.replay == "uniform":
        return ReplayBuffer(loop.buffer_size, obs_dim, action_dim, n_step, gamma)
    settings = PrioritySettings(loop.priority_alpha, loop.priority_beta, loop.priority_beta_end, loop.priority_eps)
    return PrioritizedReplayBuffer(loop.buffer_size, obs_dim, action_dim, settings, n_step, gamma)
