"""What an on-policy algorithm receives from the loop that runs it, and what it must provide.

The loop (``pgrad.runners``) only ever calls what ``OnPolicyAlgorithm`` lists, so an algorithm is
a small file: its config, its loss, ``prepare`` and ``update``. Nothing inherits. Everything the
loop decides for the algorithm (schedule progress, the guard's learning-rate scale, the RNG)
arrives explicitly in an ``UpdateContext``; no hook changes an optimizer behind its back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from pgrad.config import OffPolicyLoopConfig
from pgrad.nets import ActingPolicy, Actor
from pgrad.rollout import Batch, Rollout


@dataclass(frozen=True)
class UpdateContext:
    """The loop's inputs to one ``update``."""

    progress: float  # env steps done / run.total_steps, in [0, 1]; drives every linear schedule
    lr_scale: float  # multiplies every learning rate the algorithm uses (guard rollbacks x drills)
    rng: np.random.Generator  # the run's RNG: minibatch order and any other sampling in the update


class OnPolicyAlgorithm(Protocol):
    """What the loop calls. An algorithm that learns from whole episodes (REINFORCE) also has an
    ``episodes_per_update: int`` attribute; the loop then collects that many complete episodes
    instead of ``rollout_length`` steps per env (see ``RolloutCollector.collect_episodes``).

    ``update`` must report the learning rate(s) it really used (after ``context.lr_scale``) under
    ``train/learning_rate`` (or ``train/actor_learning_rate`` / ``train/critic_learning_rate``).
    """

    name: str

    @property
    def rollout_length(self) -> int:
        """Steps per env per rollout (0 for an algorithm that collects whole episodes)."""

    @property
    def gamma(self) -> float:
        """The discount factor; the loop's reward scaling uses it."""

    def acting_policy(self) -> ActingPolicy:
        """The policy the loop acts with while collecting rollouts."""

    def prepare(self, rollout: Rollout) -> tuple[Batch, dict[str, float]]:
        """Turns a rollout into the batch ``update`` learns from (returns, advantages), with metrics."""

    def update(self, batch: Batch, context: UpdateContext) -> dict[str, float]:
        """Learns from one prepared batch; returns the update's metrics."""

    def modules(self) -> dict[str, torch.nn.Module]:
        """The checkpoint contract: the networks saved and restored, by name."""

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The checkpoint contract: the optimizers saved and restored, by name."""

    def extra_state(self) -> dict[str, Any]:
        """The checkpoint contract: any other state to save (JSON-serialisable)."""

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """The checkpoint contract: restores what ``extra_state`` returned."""


class OffPolicyAlgorithm(Protocol):
    """What the off-policy loop (``pgrad.runners.off_policy``) calls: DDPG, TD3 and SAC.

    The loop owns the replay buffer, the env steps and the schedule (``loop``: random actions until
    ``learning_starts``, then ``gradient_steps`` calls of ``update`` every ``train_freq`` env steps); the
    algorithm owns its networks, targets and optimizers. ``update`` is ONE gradient step on a sampled
    batch and returns its metrics (tensors or floats; the loop averages them per log row, the ``*/min``
    and ``*/max`` ones as minimum and maximum). ``acting_policy`` explores with ``sample`` (the
    algorithm's own noise) and acts deterministically with ``mode``.
    """

    name: str

    @property
    def loop(self) -> OffPolicyLoopConfig:
        """The loop's schedule: buffer size, batch size, learning starts, train frequency, gradient steps."""

    @property
    def gamma(self) -> float:
        """The discount factor."""

    def acting_policy(self) -> Actor:
        """The policy the loop acts with after ``learning_starts`` (with its exploration noise)."""

    def end_episodes(self, done: np.ndarray) -> None:
        """Resets per-episode exploration state for the envs whose ``done`` ([num_envs] bool) is set."""

    def update(self, batch: Any, context: UpdateContext) -> dict[str, Any]:
        """One gradient step on a replay batch (a ``TransitionBatch``; recurrent SAC's: a ``SequenceBatch``);
        returns its metrics."""

    def learning_rate_metrics(self) -> dict[str, float]:
        """The current learning rate(s), for the logs."""

    def modules(self) -> dict[str, torch.nn.Module]:
        """The checkpoint contract: the networks saved and restored, by name."""

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The checkpoint contract: the optimizers saved and restored, by name."""

    def extra_state(self) -> dict[str, Any]:
        """The checkpoint contract: any other state to save (JSON-serialisable)."""

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """The checkpoint contract: restores what ``extra_state`` returned."""
