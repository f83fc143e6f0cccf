"""The sequence replay of recurrent off-policy learners (R2D2, Kapturowski et al., 2019): overlapping fixed-length
sequences, each with the hidden state the actor had at its first step.

Storage is each env's stream of steps, time-major in a ring of ``capacity`` steps per env: the observation the
step acted on, its action, reward, terminated and truncated flags, whether it is valid (the autoreset step after
an episode's end is not: its action is ignored and its reward is 0) and whether its observation begins an episode
(the state is reset before it). A sequence is ``m + 1`` consecutive steps of one env, ``m = burn_in +
sequence_length``, the last only for its observation (s' of step ``m - 1``); sequences start every
``sequence_stride`` steps (R2D2: m = 80, stride 40, so consecutive sequences overlap by half), and the state
carried into each start step is stored beside it: ``capacity`` is a multiple of the stride, so a start's state
slot is ``(k / stride) mod (capacity / stride)``.

Episodes never leak across each other inside a sequence: ``starts`` marks where the state is zeroed, and the
final observation of an episode sits on the (invalid) autoreset step after it, still seen with the episode's
memory, so s' of an episode's last step is its true final observation (as ``pgrad.replay``). Invalid steps get
no loss (``valid``); neither do the burn-in steps (``loss_mask``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from pgrad import safe_io
from pgrad.config import check_memory
from pgrad.rollout import Rollout

# the ring arrays a checkpoint holds (``TrainState.replay``), besides ``written``
FIELDS = ("obs", "actions", "rewards", "terminated", "truncated", "valid", "starts", "states")


@dataclass(frozen=True)
class SequenceBatch:
    """``N`` replayed sequences as time-major tensors on the learner's device (``m`` steps, ``m + 1``
    observations); flags as float 0/1 except ``starts`` and ``mask`` (bool)."""

    obs: torch.Tensor  # [m + 1, N, obs_dim]: the last row is s' of step m - 1
    actions: torch.Tensor  # [m, N, action_dim]
    rewards: torch.Tensor  # [m, N]
    terminated: torch.Tensor  # [m, N]
    truncated: torch.Tensor  # [m, N]
    starts: torch.Tensor  # [m + 1, N] bool: the state is zeroed before the step on this observation
    mask: torch.Tensor  # [m, N] bool: valid and after the burn-in, the steps with a loss
    states: torch.Tensor  # [N, state_size]: the state the actor carried into the first step

    def __len__(self) -> int:
        return int(self.mask.sum())

    def save(self, path: Path) -> None:
        """The batch as a pickle-free ``.npz`` (what a halted run leaves behind)."""
        arrays = {f.name: getattr(self, f.name).detach().cpu().numpy() for f in fields(self)}
        with safe_io.atomic_file(path) as handle:
            np.savez(handle, **arrays)


def loss_mask(valid: np.ndarray, burn_in: int) -> np.ndarray:
    """Which steps of time-major sequences ``valid`` [m, N] carry a loss: valid ones after the first ``burn_in``."""
    mask = valid.astype(bool).copy()
    mask[:burn_in] = False
    return mask


class SequenceReplay:
    """A ring of each env's steps, sampled as sequences of ``burn_in + sequence_length`` steps (see the module)."""

    def __init__(
        self,
        buffer_size: int,
        num_envs: int,
        obs_dim: int,
        action_dim: int,
        state_size: int,
        burn_in: int,
        sequence_length: int,
        stride: int,
    ) -> None:
        self.num_envs, self.burn_in, self.stride = num_envs, burn_in, stride
        self.length = burn_in + sequence_length  # m
        self.steps = buffer_size // num_envs // stride * stride  # ring capacity per env, a multiple of the stride
        if self.steps < self.length + 1:
            raise ValueError(f"a sequence replay of {self.steps} steps per env cannot hold {self.length + 1}")
        per_step = 4 * (obs_dim + action_dim + 1) + 4 + 4 * state_size / stride
        check_memory(int(self.steps * num_envs * per_step), "loop.buffer_size", "the sequence replay")
        shape = (self.steps, num_envs)
        self.obs = np.zeros((*shape, obs_dim), np.float32)
        self.actions = np.zeros((*shape, action_dim), np.float32)
        self.rewards = np.zeros(shape, np.float32)
        self.terminated = np.zeros(shape, bool)
        self.truncated = np.zeros(shape, bool)
        self.valid = np.zeros(shape, bool)
        self.starts = np.zeros(shape, bool)
        self.states = np.zeros((self.steps // stride, num_envs, state_size), np.float32)
        self.written = 0  # steps per env written so far (the absolute index of the next one)

    @property
    def capacity(self) -> int:
        """Steps of all envs the ring holds when full."""
        return self.steps * self.num_envs

    @property
    def nbytes(self) -> int:
        """Bytes the ring occupies."""
        return sum(getattr(self, name).nbytes for name in FIELDS)

    def describe(self) -> str:
        """One line: steps per env, sequence length and stride, size in MiB."""
        return (
            f"sequence replay: {self.steps:,} steps x {self.num_envs} envs, sequences of {self.length} steps "
            f"({self.burn_in} burn-in) every {self.stride} steps, with their start states = {self.nbytes / 2**20:,.1f} "
            "MiB when full"
        )

    def start_range(self) -> tuple[int, int]:
        """(first, count) of the start slots ``i`` (sequence start k = i x stride) that can be sampled: still in the
        ring (k >= written - steps) and complete (k + m + 1 <= written: s' of the last step written)."""
        first = -(-max(self.written - self.steps, 0) // self.stride)
        last = (self.written - self.length - 1) // self.stride
        return first, max(last - first + 1, 0)

    @property
    def size(self) -> int:
        """Steps of all envs covered by sampleable sequences (0 until one is complete)."""
        _, count = self.start_range()
        return 0 if count == 0 else ((count - 1) * self.stride + self.length) * self.num_envs

    def add_rollout(self, rollout: Rollout) -> int:
        """Append every step of ``rollout`` (time-major, ``[T, num_envs]``), with the state carried into the steps
        where a sequence starts; returns the steps stored. ``rollout.obs[T]`` is the next rollout's first."""
        assert rollout.states is not None and rollout.episode_starts is not None, "a recurrent policy's rollout"
        count = rollout.num_steps
        absolute = self.written + np.arange(count)
        rows = absolute % self.steps
        self.obs[rows] = rollout.obs[:count]
        self.actions[rows] = rollout.actions.reshape(count, self.num_envs, -1)
        self.rewards[rows] = rollout.rewards
        self.terminated[rows] = rollout.terminated
        self.truncated[rows] = rollout.truncated
        self.valid[rows] = rollout.valid
        self.starts[rows] = rollout.episode_starts[:count]
        at_start = absolute % self.stride == 0
        self.states[(absolute[at_start] // self.stride) % len(self.states)] = rollout.states[at_start]
        self.written += count
        return count * self.num_envs

    def sample(self, batch_size: int, rng: np.random.Generator, device: torch.device) -> SequenceBatch:
        """``batch_size / sequence_length`` sequences (``loop.batch_size`` counts steps with a loss, as the on-policy
        minibatches of whole chunks), drawn uniformly over start slots and envs, with replacement."""
        first, count = self.start_range()
        if count == 0:
            raise ValueError("cannot sample from a sequence replay without a complete sequence")
        sequences = max(batch_size // (self.length - self.burn_in), 1)
        draws = rng.integers(0, count * self.num_envs, sequences)
        return self.gather(first + draws // self.num_envs, draws % self.num_envs, device)

    def gather(self, slots: np.ndarray, envs: np.ndarray, device: torch.device) -> SequenceBatch:
        """The sequences starting at step ``slots x stride`` of env ``envs`` (arrays of N), time-major."""
        rows = (slots[None, :] * self.stride + np.arange(self.length + 1)[:, None]) % self.steps  # [m + 1, N]
        steps, columns = rows[:-1], envs[None, :]

        def tensor(array: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
            value = torch.from_numpy(np.ascontiguousarray(array))
            return value.to(device=device, dtype=dtype or value.dtype)

        return SequenceBatch(
            obs=tensor(self.obs[rows, columns]),
            actions=tensor(self.actions[steps, columns]),
            rewards=tensor(self.rewards[steps, columns]),
            terminated=tensor(self.terminated[steps, columns], torch.float32),
            truncated=tensor(self.truncated[steps, columns], torch.float32),
            starts=tensor(self.starts[rows, columns]),
            mask=tensor(loss_mask(self.valid[steps, columns], self.burn_in)),
            states=tensor(self.states[slots % len(self.states), envs]),
        )

    # ---- checkpoint support -------------------------------------------------------------
    def state_arrays(self) -> dict[str, np.ndarray]:
        """The ring and the step count, for ``TrainState.replay`` (safetensors)."""
        filled = min(self.written, self.steps)  # rows written so far (all of them once the ring went round)
        arrays = {name: getattr(self, name)[:filled] for name in FIELDS if name != "states"}
        arrays["states"] = self.states[: -(-filled // self.stride)]
        arrays["written"] = np.array([self.written], np.int64)  # shape [1]: what safetensors gives back
        return arrays

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Put a saved ring back; shapes are checked first (a checkpoint may come from another config)."""
        if "written" not in arrays:
            raise ValueError("the checkpoint's replay is not a sequence replay (no 'written'): another network?")
        written = int(arrays["written"].reshape(-1)[0])
        filled = min(written, self.steps)
        for name in FIELDS:
            mine, saved = getattr(self, name), arrays[name]
            rows = -(-filled // self.stride) if name == "states" else filled
            if written < 0 or saved.shape != (rows, *mine.shape[1:]):
                raise ValueError(f"replay.{name} has shape {saved.shape}; expected {(rows, *mine.shape[1:])}")
        for name in FIELDS:
            getattr(self, name)[: len(arrays[name])] = arrays[name]
        self.written = written
