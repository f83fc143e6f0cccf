"""Recurrent actor-critics (``network.recurrent``: lstm or gru) and the acting policy that carries their state.

The network is torso -> recurrent core -> heads: the MLP torso (``network.hidden_sizes``, possibly empty) embeds
each observation, an ``LSTMCell`` or ``GRUCell`` of ``network.recurrent_size`` units carries the memory, and the
policy and value heads read its output, each through its own ``network.recurrent_head_sizes`` hidden layers
(sb3-contrib's ``MlpLstmPolicy`` is ``hidden_sizes=[]``, ``recurrent_head_sizes=[64]``). With
``network.recurrent_shared`` the actor and the critic share one torso and core; otherwise each has its own.

The hidden state is one flat float32 row per env, ``[B, state_size]``: the actor core's (h, c) for an LSTM
(h for a GRU), then the critic core's when it has its own. A flat row is what the rollout stores, the
checkpoint saves and ``predict`` hands back, whatever the cell.

Episode starts reset the state: before the step on the first observation of an episode, s <- 0. With
Gymnasium's next-step autoreset that is the step after the autoreset step (``pgrad.rollout``), so the final
observation of an episode (whose value bootstraps a truncation) is still seen with the episode's memory.
"""

from __future__ import annotations

import copy
from typing import Literal

import numpy as np
import torch
from torch import nn

from pgrad.config import NetworkConfig
from pgrad.distributions import Categorical, DiagGaussian
from pgrad.nets import ActionSpec, ActorCritic, ObsShape, make_torso, mlp_torso, obs_size, orthogonal_init

CellKind = Literal["lstm", "gru"]


class Core(nn.Module):
    """One recurrent cell over a flat state: ``(h, c)`` side by side for an LSTM, ``h`` for a GRU."""

    def __init__(self, kind: CellKind, in_dim: int, size: int) -> None:
        super().__init__()
        self.kind = kind
        self.size = size
        self.cell: nn.LSTMCell | nn.GRUCell = nn.LSTMCell(in_dim, size) if kind == "lstm" else nn.GRUCell(in_dim, size)
        for name, weight in self.cell.named_parameters():  # orthogonal weights, zero biases (CleanRL's LSTM init)
            if name.startswith("weight"):
                nn.init.orthogonal_(weight, 1.0)
            else:
                nn.init.zeros_(weight)

    @property
    def state_size(self) -> int:
        """Width of this core's flat state: 2 x size for an LSTM (h and c), size for a GRU."""
        return 2 * self.size if self.kind == "lstm" else self.size

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(outputs h [L, N, size], flat state after the last step [N, state_size]) for ``L`` steps of inputs
        ``x`` [L, N, in_dim] with no episode start after the first step: one fused call (``torch.lstm`` or
        ``torch.gru`` over the whole span, oneDNN's kernel on the CPU, cuDNN's on a GPU) on the cell's own weights,
        the same function as ``L`` calls of the cell (equal to float rounding, not bit for bit)."""
        weights = [self.cell.weight_ih, self.cell.weight_hh, self.cell.bias_ih, self.cell.bias_hh]
        train = self.training and torch.is_grad_enabled()  # the training variant keeps what backward needs
        if self.kind == "lstm":
            h0, c0 = state[None, :, : self.size].contiguous(), state[None, :, self.size :].contiguous()
            out, h, c = torch.lstm(x, (h0, c0), weights, True, 1, 0.0, train, False, False)
            return out, torch.cat((h[0], c[0]), dim=1)
        out, h = torch.gru(x, state[None].contiguous(), weights, True, 1, 0.0, train, False, False)
        return out, h[0]

    def packed(self, x: torch.Tensor, state: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        """The outputs [L, N, size] of ``run`` (not the final state) as ONE fused call, cuDNN-style packing: every
        episode piece of a row (its steps up to the next start) becomes a row of its own, from the row's state
        (times 1 - start_0) for its first piece and from zeros for a piece that begins at a start. Pieces are
        left-aligned and zero-padded to L steps; the padding's outputs are never read. The same recurrence as
        ``run``: a reset is exactly a fresh row from the zero state."""
        begins = starts.clone()
        begins[0] = True  # every row's first piece begins at t = 0
        if bool(begins.all(dim=1)[0]) and not bool(begins[1:].any()):
            return self(x, state * (1.0 - starts[0].to(state.dtype)).unsqueeze(-1))[0]
        steps, rows = starts.shape
        counts = begins.sum(dim=0)  # pieces per row [N]
        first = torch.cumsum(counts, 0) - counts  # the index of each row's first piece
        piece = first[None, :] + torch.cumsum(begins.long(), dim=0) - 1  # [L, N] the piece of each step
        times = torch.arange(steps, device=x.device)[:, None].expand(steps, rows)
        piece_begin = torch.zeros(int(counts.sum()), dtype=torch.long, device=x.device)
        piece_begin[piece[begins]] = times[begins]
        position = times - piece_begin[piece]  # [L, N] the step's place inside its piece
        packed = x.new_zeros(steps, len(piece_begin), x.shape[-1]).index_put((position, piece), x)
        first_state = state * (1.0 - starts[0].to(state.dtype)).unsqueeze(-1)
        initial = state.new_zeros(len(piece_begin), state.shape[-1]).index_put((first,), first_state)
        out, _ = self(packed, initial)
        return out[position, piece]

    def run(self, x: torch.Tensor, state: torch.Tensor, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(outputs [L, N, size], state after the last step) over ``L`` steps with episode starts ``starts`` [L, N].

        s <- (1 - start_t) s before step t. A start resets only its own row, so the span is cut only at the steps
        where some row starts an episode: each piece is one fused call, the reset a multiplication by 0 or 1
        between pieces (exact: inside a piece every factor would be 1)."""
        keep = 1.0 - starts.to(state.dtype).unsqueeze(-1)
        if x.shape[0] == 1:  # one step (acting, export): no cut to look for, nothing data-dependent to trace
            return self(x, state * keep[0])
        cuts = [0, *(torch.nonzero(starts[1:].any(dim=1)).flatten() + 1).tolist(), x.shape[0]]
        outputs = []
        for begin, end in zip(cuts[:-1], cuts[1:], strict=True):
            out, state = self(x[begin:end], state * keep[begin])
            outputs.append(out)
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs), state


def _head(size: int, network: NetworkConfig, out_dim: int, gain: float) -> nn.Module:
    """A head on the core's output: ``network.recurrent_head_sizes`` hidden layers (sqrt 2 init, the torso's
    activation), then a linear layer with ``gain``; the bare linear layer when there are none (the default, whose
    parameter names a checkpoint already holds)."""
    sizes = network.recurrent_head_sizes
    last = orthogonal_init(nn.Linear(sizes[-1] if sizes else size, out_dim), gain)
    return nn.Sequential(*mlp_torso(size, sizes, network.activation), last) if sizes else last


class RecurrentActorCritic(nn.Module):
    """Policy and value over sequences: torso -> LSTM/GRU core -> heads, shared or separate for the critic."""

    def __init__(
        self,
        obs_shape: ObsShape,
        action: ActionSpec,
        network: NetworkConfig,
    ) -> None:
        super().__init__()
        assert network.recurrent is not None, "a recurrent network needs network.recurrent"
        self.action = action
        self.shared = network.recurrent_shared
        width = network.hidden_sizes[-1] if network.hidden_sizes else obs_size(obs_shape)
        size = network.recurrent_size

        def branch() -> tuple[nn.Module, Core]:
            torso = make_torso(obs_shape, network.hidden_sizes, network.activation, network.torso, network.torso_kwargs)
            return torso, Core(network.recurrent or "lstm", width, size)

        self.actor_torso, self.actor_core = branch()
        self.critic_torso: nn.Module | None = None
        self.critic_core: Core | None = None
        if not self.shared:
            self.critic_torso, self.critic_core = branch()
        self.policy_head = _head(size, network, action.size, 0.01)
        self.value_head = _head(size, network, 1, 1.0)
        self.log_std = (
            nn.Parameter(torch.full((action.size,), float(network.log_std_init)))
            if action.kind == "continuous"
            else None
        )

    @property
    def state_size(self) -> int:
        """Width of the flat hidden state of one env: the actor core's, plus the critic core's when separate."""
        critic = 0 if self.critic_core is None else self.critic_core.state_size
        return self.actor_core.state_size + critic

    def initial_state(self, num_envs: int) -> np.ndarray:
        """Zeros [num_envs, state_size]: the state at an episode's start."""
        return np.zeros((num_envs, self.state_size), np.float32)

    def distribution(self, head: torch.Tensor) -> Categorical | DiagGaussian:
        """pi(.|history) from the policy head's output (any leading shape)."""
        if self.action.kind == "discrete":
            return Categorical(head)
        assert self.log_std is not None
        return DiagGaussian(head, self.log_std)

    def sequence(
        self, obs: torch.Tensor, state: torch.Tensor, starts: torch.Tensor, stepwise: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(policy head [L, N, head], values [L, N], state after the last step [N, state_size]) of ``L`` steps of
        ``N`` sequences. ``obs`` [L, N, ...] time-major; ``state`` [N, state_size] the state carried into the
        first step; ``starts`` [L, N] true where the step's observation begins an episode: there
        s <- 0 before the step (h_t = cell(x_t, (1 - start_t) s_{t-1})).

        The torso runs once over all ``L N`` observations and each core as fused calls over the spans between
        episode starts (``Core.run``). ``stepwise`` instead computes one step at a time, each step the same
        [N, .] computation a one-step call (acting) does: the learner's pass over a rollout takes it, so that
        log pi_old is the acting policy's log-probability bit for bit."""
        if stepwise and obs.shape[0] > 1:
            pieces = []
            for t in range(obs.shape[0]):
                head, values, state = self.sequence(obs[t : t + 1], state, starts[t : t + 1])
                pieces.append((head, values))
            return torch.cat([p[0] for p in pieces]), torch.cat([p[1] for p in pieces]), state
        split = self.actor_core.state_size
        actor_out, actor_state = self.actor_core.run(self._features(self.actor_torso, obs), state[:, :split], starts)
        critic_out = actor_out
        if self.critic_core is not None and self.critic_torso is not None:
            critic_out, critic_state = self.critic_core.run(
                self._features(self.critic_torso, obs), state[:, split:], starts
            )
            state = torch.cat((actor_state, critic_state), dim=1)
        else:
            state = actor_state
        return self.policy_head(actor_out), self.value_head(critic_out).squeeze(-1), state

    def outputs(
        self, obs: torch.Tensor, state: torch.Tensor, starts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(policy head [L, N, head], values [L, N]) of ``sequence`` without the final state, each core as one
        packed fused call (``Core.packed``): what the learner's replay takes."""
        split = self.actor_core.state_size
        actor_out = self.actor_core.packed(self._features(self.actor_torso, obs), state[:, :split], starts)
        critic_out = actor_out
        if self.critic_core is not None and self.critic_torso is not None:
            critic_out = self.critic_core.packed(self._features(self.critic_torso, obs), state[:, split:], starts)
        return self.policy_head(actor_out), self.value_head(critic_out).squeeze(-1)

    @staticmethod
    def _features(torso: nn.Module, obs: torch.Tensor) -> torch.Tensor:
        """The torso over every step at once: [L, N, ...] observations -> [L, N, width]."""
        features: torch.Tensor = torso(obs.flatten(0, 1))
        return features.reshape(obs.shape[0], obs.shape[1], -1)

    def acting_policy(self) -> RecurrentActingPolicy:
        """A frozen CPU copy for acting in the envs (the learner keeps training its own)."""
        frozen = copy.deepcopy(self).cpu().requires_grad_(False).eval()
        return RecurrentActingPolicy(frozen)


class RecurrentActingPolicy:
    """Acting with a recurrent actor-critic: one step at a time, the state handed in and back.

    ``step`` is what the collector calls; it also steps the critic's core (when separate) so that the state it
    returns is the whole state the learner replays from. Draws use the same NumPy ``Generator`` rules as the
    feed-forward ``ActingPolicy`` (inverse-CDF for categorical, mean + sigma x N(0, 1) for Gaussian), so a
    resumed run draws the same actions.
    """

    recurrent = True

    def __init__(self, model: RecurrentActorCritic) -> None:
        self.model = model
        self.action = model.action
        self.state_size = model.state_size

    def initial_state(self, num_envs: int) -> np.ndarray:
        """Zeros [num_envs, state_size]."""
        return self.model.initial_state(num_envs)

    def head(self, obs: np.ndarray, state: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(policy head [B, head], next state [B, state_size]) for one step of ``B`` envs."""
        with torch.no_grad():
            head, _, next_state = self.model.sequence(
                torch.from_numpy(np.ascontiguousarray(obs, np.float32))[None],
                torch.from_numpy(np.ascontiguousarray(state, np.float32)),
                torch.from_numpy(np.asarray(starts, bool))[None],
            )
        return head[0].numpy(), next_state.numpy()

    def sequence_log_probs(
        self, obs: np.ndarray, state: np.ndarray, starts: np.ndarray, actions: np.ndarray
    ) -> np.ndarray:
        """log pi(a_t|h_t) [T, B] of ``T`` steps acted from ``state`` [B, state_size] (the state carried into the
        first step, before its reset), ``obs`` [T, B, obs_dim] and ``starts`` [T, B]: the same step-by-step pass
        ``step`` made, so these are the acting log-probabilities bit for bit (IMPALA's log mu)."""
        with torch.no_grad():
            head, _, _ = self.model.sequence(
                torch.from_numpy(np.ascontiguousarray(obs, np.float32)),
                torch.from_numpy(np.ascontiguousarray(state, np.float32)),
                torch.from_numpy(np.asarray(starts, bool)),
            )
            log_probs = self.model.distribution(head).log_prob(torch.from_numpy(np.asarray(actions)))
        out: np.ndarray = log_probs.numpy()
        return out

    def step(
        self, obs: np.ndarray, state: np.ndarray, starts: np.ndarray, rng: np.random.Generator | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(actions, next state): sampled from ``rng``, or the mode (argmax, mean) when ``rng`` is None."""
        head, next_state = self.head(obs, state, starts)
        return self.choose(head, rng), next_state

    def choose(self, head: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """Actions from the policy head's output: sampled from ``rng``, or the mode when it is None."""
        if self.action.kind == "discrete":
            if rng is None:
                best: np.ndarray = head.argmax(axis=-1).astype(np.int64)
                return best
            logits = head - head.max(axis=-1, keepdims=True)
            cdf = np.cumsum(np.exp(logits), axis=-1)
            draws = rng.random(len(head))[:, None] * cdf[:, -1:]
            indices: np.ndarray = np.minimum((cdf < draws).sum(axis=-1), self.action.size - 1).astype(np.int64)
            return indices
        mean = head.astype(np.float32)
        if rng is None:
            return mean
        assert self.model.log_std is not None
        log_std = self.model.log_std.numpy()
        noise = rng.standard_normal(mean.shape).astype(np.float32)
        action: np.ndarray = (mean + noise * np.exp(log_std)).astype(np.float32)
        return action


def make_actor_critic(
    obs_shape: ObsShape, action: ActionSpec, network: NetworkConfig
) -> ActorCritic | RecurrentActorCritic:
    """The actor-critic a ``network`` section describes: recurrent when ``network.recurrent`` is set."""
    if network.recurrent is None:
        return ActorCritic.from_config(obs_shape, action, network)
    return RecurrentActorCritic(obs_shape, action, network)
