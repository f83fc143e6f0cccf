"""The replay of MADDPG: joint transitions of a team, in a preallocated NumPy ring.

One row is one env step of one env copy, for every agent at once: observations [A, max_obs], the actions the
critics read [A, max_width] (a discrete action as its one-hot), rewards [A], next observations [A, max_obs],
``terminated`` [A] and ``active`` [A] (1 where the agent acted at that step; a finished agent's row is zeros and
every term it would contribute is masked). ``next_obs`` is each agent's TRUE next observation: the team env's
``final_obs``, which holds where an agent's episode ended even when its copy was reset in the same step, so a
truncated episode bootstraps from its final observation and no row pairs a final observation with a reset one.

A checkpoint holds the written rows and the ring's position (``state_arrays``), as SAC's buffer, so a resumed
run samples the same batches as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pgrad.config import check_memory

FIELDS = ("obs", "actions", "rewards", "next_obs", "terminated", "active")


@dataclass(frozen=True)
class JointBatch:
    """A sample of joint transitions as tensors: obs/next_obs [B, A, max_obs], actions [B, A, max_width],
    rewards/terminated/active [B, A] (float 0/1 flags)."""

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_obs: torch.Tensor
    terminated: torch.Tensor
    active: torch.Tensor


class JointReplay:
    """A ring of ``capacity`` joint transitions; the oldest are overwritten once it is full."""

    def __init__(self, capacity: int, agents: int, max_obs: int, max_width: int) -> None:
        # 4 bytes per float (two observation rows, the action row, the rewards, the active flags), 1 per done flag
        check_memory(capacity * agents * (4 * (2 * max_obs + max_width + 2) + 1), "maddpg.buffer_size", "the replay")
        self.capacity = capacity
        self.obs = np.empty((capacity, agents, max_obs), np.float32)
        self.actions = np.empty((capacity, agents, max_width), np.float32)
        self.rewards = np.empty((capacity, agents), np.float32)
        self.next_obs = np.empty((capacity, agents, max_obs), np.float32)
        self.terminated = np.empty((capacity, agents), bool)
        self.active = np.empty((capacity, agents), np.float32)
        self.position = 0  # the row the next transition goes to
        self.size = 0  # rows written so far, at most capacity

    @property
    def nbytes(self) -> int:
        """Bytes the buffer occupies once full."""
        return sum(getattr(self, name).nbytes for name in FIELDS)

    def describe(self) -> str:
        """One line: capacity, a row's shape, MiB when full."""
        _, agents, max_obs = self.obs.shape
        return (
            f"joint replay: {self.capacity:,} transitions x {agents} agents (obs {max_obs}, next obs {max_obs}, "
            f"action {self.actions.shape[2]}, reward, terminated, active) = {self.nbytes / 2**20:,.1f} MiB when full"
        )

    def add(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        next_obs: np.ndarray,
        terminated: np.ndarray,
        active: np.ndarray,
    ) -> None:
        """Append ``n`` joint transitions (a leading axis of ``n``: the env copies of one step), wrapping around."""
        count = len(rewards)
        rows = (self.position + np.arange(count)) % self.capacity
        for name, value in zip(FIELDS, (obs, actions, rewards, next_obs, terminated, active), strict=True):
            getattr(self, name)[rows] = value
        self.position = int((self.position + count) % self.capacity)
        self.size = min(self.size + count, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator) -> JointBatch:
        """``batch_size`` rows drawn uniformly with replacement from the written ones."""
        rows = rng.integers(0, self.size, batch_size)

        def take(name: str) -> torch.Tensor:
            return torch.as_tensor(getattr(self, name)[rows], dtype=torch.float32)

        return JointBatch(*(take(name) for name in FIELDS))

    # ---- checkpoint support -------------------------------------------------------------------------------
    def state_arrays(self) -> dict[str, np.ndarray]:
        """The written rows and the ring's position, for ``TrainState.replay`` (safetensors)."""
        arrays = {name: getattr(self, name)[: self.size] for name in FIELDS}
        arrays["position"] = np.array([self.position], np.int64)
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
