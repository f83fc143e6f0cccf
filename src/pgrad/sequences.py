"""Recurrent rollouts as fixed-length sequences: chunking, the sequence batch, and the learner's replay.

A rollout of ``T`` steps of ``B`` envs is cut into ``T / L`` chunks of ``L`` steps per env, ``S = B T / L``
sequences in all. Each keeps the hidden state its first step was acted on with (stored by the collector), so
a chunk replays exactly as it was acted: the state flow is never cut, only resumed from a stored state.
Episode ends inside a chunk reset the state at the next episode's first step (``starts``), and the
autoreset steps between episodes are masked out of every loss (``mask``), as in the flat batch.

Minibatches are whole sequences; the PPO loss is the same ``ppo_loss`` over ``[S, L]`` tensors with the mask.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from pgrad.distributions import Categorical, DiagGaussian
from pgrad.recurrent import RecurrentActorCritic
from pgrad.rollout import Batch, Rollout


def chunk(x: np.ndarray | torch.Tensor, length: int) -> np.ndarray | torch.Tensor:
    """Time-major ``[T, B, ...]`` as sequences ``[S, L, ...]``: row ``k B + b`` is env b's steps
    ``k L .. k L + L - 1`` (``L`` divides ``T``)."""
    steps, envs = x.shape[0], x.shape[1]
    assert steps % length == 0, f"sequence length {length} must divide {steps} steps"
    rest = tuple(x.shape[2:])
    shaped = x.reshape(steps // length, length, envs, *rest)
    if isinstance(shaped, torch.Tensor):
        return shaped.transpose(1, 2).reshape(steps // length * envs, length, *rest)
    return shaped.swapaxes(1, 2).reshape(steps // length * envs, length, *rest)


@dataclass(frozen=True)
class SequenceBatch:
    """The ``Batch`` fields as ``[S, L]`` sequences, with each sequence's start state and episode starts."""

    obs: torch.Tensor  # [S, L, obs_dim]
    actions: torch.Tensor  # [S, L] or [S, L, action_dim]
    log_probs: torch.Tensor  # [S, L] log pi_old
    values: torch.Tensor  # [S, L] V_old
    advantages: torch.Tensor  # [S, L], 0 where masked
    returns: torch.Tensor  # [S, L]
    mask: torch.Tensor  # [S, L] 1.0 on valid steps
    starts: torch.Tensor  # [S, L] bool: the step's observation begins an episode (state reset before it)
    states: torch.Tensor  # [S, state_size] the state carried into the sequence's first step

    @property
    def length(self) -> int:
        """L, the steps per sequence."""
        return int(self.mask.shape[1])

    def __len__(self) -> int:
        return int(self.mask.shape[0])

    def select(self, index: torch.Tensor | slice) -> SequenceBatch:
        """The sequences ``index`` selects, in every field."""
        return SequenceBatch(*(getattr(self, f.name)[index] for f in fields(self)))

    def to(self, device: torch.device | str) -> SequenceBatch:
        """The batch on ``device``."""
        return SequenceBatch(*(getattr(self, f.name).to(device) for f in fields(self)))

    def minibatches(self, size: int, rng: np.random.Generator) -> Iterator[SequenceBatch]:
        """One pass in random order over whole sequences, ``size / L`` sequences (``size`` steps) each."""
        per_minibatch = max(size // self.length, 1)
        order = torch.from_numpy(rng.permutation(len(self))).to(self.mask.device)
        shuffled = self.select(order)
        for start in range(0, len(self) - per_minibatch + 1, per_minibatch):
            yield shuffled.select(slice(start, start + per_minibatch))

    def after(self, steps: int) -> SequenceBatch:
        """Every ``[S, L]`` field without its first ``steps`` steps (``states`` unchanged: the caller warms it)."""
        return SequenceBatch(
            *(getattr(self, f.name) if f.name == "states" else getattr(self, f.name)[:, steps:] for f in fields(self))
        )

    def with_states(self, states: torch.Tensor) -> SequenceBatch:
        """A copy with the start states replaced."""
        return replace(self, states=states)

    def with_advantages(self, advantages: torch.Tensor) -> SequenceBatch:
        """A copy with ``advantages`` replaced."""
        return replace(self, advantages=advantages)


def to_sequences(flat: Batch, rollout: Rollout, length: int) -> SequenceBatch:
    """A flat time-major batch (``rollout_to_batch``: row ``t B + b``) cut into sequences of ``length``."""
    assert rollout.states is not None and rollout.episode_starts is not None, "a recurrent policy's rollout"
    steps, envs = rollout.num_steps, rollout.num_envs

    def cut(tensor: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(chunk(tensor.reshape(steps, envs, *tensor.shape[1:]), length))

    states = torch.from_numpy(np.ascontiguousarray(rollout.states[::length])).to(flat.mask.device)
    starts = torch.from_numpy(np.ascontiguousarray(rollout.episode_starts[:steps])).to(flat.mask.device)
    return SequenceBatch(
        obs=cut(flat.obs),
        actions=cut(flat.actions),
        log_probs=cut(flat.log_probs),
        values=cut(flat.values),
        advantages=cut(flat.advantages),
        returns=cut(flat.returns),
        mask=cut(flat.mask),
        starts=torch.as_tensor(chunk(starts, length)),
        states=states.reshape(-1, states.shape[-1]),  # [T / L, B, state] -> row k B + b, as chunk orders them
    )


def replay(
    model: RecurrentActorCritic, batch: SequenceBatch, burn_in: int = 0
) -> tuple[Categorical | DiagGaussian, torch.Tensor, SequenceBatch]:
    """(pi(.|history) [S, L - burn_in], V [S, L - burn_in], the batch those steps are): the model run over each
    sequence from its stored start state. With ``burn_in`` b the first b steps only warm the state (R2D2's burn-in):
    they run without gradient and the loss sees steps b .. L - 1 alone, from the state the warm-up reached."""
    states = batch.states
    if burn_in:
        with torch.no_grad():
            _, _, states = model.sequence(
                batch.obs[:, :burn_in].transpose(0, 1), states, batch.starts[:, :burn_in].transpose(0, 1)
            )
        batch = batch.after(burn_in).with_states(states)
    head, values = model.outputs(batch.obs.transpose(0, 1), states, batch.starts.transpose(0, 1))
    return model.distribution(head.transpose(0, 1)), values.transpose(0, 1), batch


def evaluate_sequences(
    model: RecurrentActorCritic, rollout: Rollout, device: torch.device
) -> tuple[np.ndarray, torch.Tensor]:
    """The recurrent ``evaluate_rollout``: one gradient-free pass over the whole rollout from the state it started
    with; V(s) for all T + 1 observations [T + 1, B] and log pi(a_t|h_t) for the T steps, flat [T B]."""
    assert rollout.states is not None and rollout.episode_starts is not None, "a recurrent policy's rollout"
    steps, envs = rollout.num_steps, rollout.num_envs
    with torch.no_grad():
        head, values, _ = model.sequence(
            torch.from_numpy(rollout.obs).to(device),
            torch.from_numpy(rollout.states[0]).to(device),
            torch.from_numpy(rollout.episode_starts).to(device),
            stepwise=True,  # step by step as acting did: log pi_old is the acting policy's, bit for bit
        )
        actions = torch.from_numpy(rollout.actions).to(device)
        log_probs = model.distribution(head[:steps]).log_prob(actions).reshape(steps * envs)
    return values.cpu().numpy(), log_probs
