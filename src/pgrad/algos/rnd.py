"""Random Network Distillation (Burda et al., "Exploration by Random Network Distillation", 2018) for PPO and A2C.

A fixed, randomly initialised *target* network f maps a (normalised) next observation to features; a
*predictor* f^ is trained to match it. Observations seen often are predicted well, novel ones are not, so

    r_int(s') = mean_k (f^(s')_k - f(s')_k)^2          (the predictor's squared error, per sample)

is an exploration bonus. The paper's details, all here:
- next observations are normalised by a running mean/std and clipped to [-obs_clip, obs_clip] (5);
- r_int is divided by a running std of the *discounted intrinsic return* (``RewardForwardFilter``:
  R_t = gamma_int R_{t-1} + r_int_t per env, over time, never reset), so its scale stays put;
- the intrinsic return is non-episodic: its GAE does not stop at episode ends (novelty in the next
  episode is still worth reaching), with its own gamma (0.99) and its own value head;
- advantages are combined A = ext_coef A_ext + int_coef A_int (2 and 1) and fed to the usual PPO loss;
- the predictor trains on a random ``update_proportion`` (0.25) of each minibatch, so it does not learn
  the bonus away faster than the policy can use it when many envs run.

The intrinsic value head is its own small network (a torso like the actor-critic's plus one output),
trained in the same loss with ``vf_coef``; the actor-critic itself is unchanged.

The same module serves every torso and learner: vector observations (MLPs) and images (the Nature-CNN layers);
PPO and A2C (``make_rnd``, ``RND.prepare`` and ``RND.loss`` are theirs alike); and recurrent actor-critics
(``network.recurrent``), where PPO's batch is cut into sequences and ``RNDTargets.sequences`` cuts the RND rows the
same way. With a recurrent actor-critic the intrinsic critic stays feed-forward on the observation, by choice: the
intrinsic return measures how novel the states ahead are to the predictor, a property of the states and of the
predictor's training so far, not of what the agent remembers of its episode (and it is non-episodic, so the
episode's memory, reset at each start, is the wrong scope for it). Keeping it apart also leaves the recurrent
model, its state layout, its export and its checkpoints exactly as without RND.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from pgrad.config import Activation, Checked, NetworkConfig, param
from pgrad.errors import ConfigError
from pgrad.estimators import gae
from pgrad.nets import (
    NATURE_CNN_FEATURES,
    NATURE_CNN_LAYERS,
    ImageShape,
    ObsLayout,
    ObsShape,
    make_torso,
    orthogonal_init,
)
from pgrad.rollout import Batch, Rollout
from pgrad.sequences import SequenceBatch, chunk

INTRINSIC_REWARD = "rnd/intrinsic_reward"
PREDICTOR_LOSS = "rnd/predictor_loss"
INT_ADVANTAGE_SHARE = "rnd/int_advantage_share"
INT_VALUE_LOSS = "rnd/int_value_loss"


@dataclass(frozen=True)
class RNDConfig(Checked):
    """RND exploration for PPO and A2C (``--set rnd.enabled=true``); the defaults are the paper's."""

    SECTION: ClassVar[str] = "rnd"

    enabled: bool = param(False, "add RND's intrinsic reward (Burda et al., 2018)")
    ext_coef: float = param(2.0, "weight of the extrinsic advantage: A = ext_coef A_ext + int_coef A_int")
    int_coef: float = param(1.0, "weight of the intrinsic advantage")
    int_gamma: float = param(0.99, "discount of the intrinsic return (non-episodic: it crosses episode ends)")
    update_proportion: float = param(0.25, "fraction of each minibatch the predictor trains on")
    obs_clip: float = param(5.0, "clip of the normalised next observations the RND networks see")
    feature_dim: int = param(128, "width of the target's and predictor's output features")
    mlp_sizes: tuple[int, ...] = param((64, 64), "hidden layers of the RND MLPs (vector observations)")

    def validate(self) -> None:
        """Checks each coefficient's range."""
        self.check_range("ext_coef", 0)
        self.check_range("int_coef", 0)
        self.check_range("int_gamma", 0, 1)
        self.check_range("update_proportion", 0, 1, low_open=True)
        self.check_range("obs_clip", 0, low_open=True)
        self.check_range("feature_dim", 1, 4096)
        if any(size < 1 for size in self.mlp_sizes):
            self._fail("mlp_sizes", "positive layer widths")


# ---- pure functions ---------------------------------------------------------------------------


def normalize_obs(obs: np.ndarray, mean: np.ndarray, var: np.ndarray, clip: float) -> np.ndarray:
    """clip((obs - mean) / sqrt(var + 1e-8), -clip, clip), as float32: what the RND networks see."""
    out: np.ndarray = np.clip((obs - mean) / np.sqrt(var + 1e-8), -clip, clip).astype(np.float32)
    return out


def merge_moments(
    mean: np.ndarray, var: np.ndarray, count: float, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """Running (mean, var, count) with the rows of ``rows`` merged in (Chan et al.'s parallel update)."""
    if rows.shape[0] == 0:
        return mean, var, count
    batch_mean, batch_var, batch_count = rows.mean(axis=0), rows.var(axis=0), rows.shape[0]
    delta = batch_mean - mean
    total = count + batch_count
    m2 = var * count + batch_var * batch_count + delta**2 * count * batch_count / total
    return mean + delta * batch_count / total, m2 / total, total


def forward_filter(rewards: np.ndarray, state: np.ndarray, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """The paper's RewardForwardFilter over ``rewards`` [T, B]: R_t = gamma R_{t-1} + r_t per env, never reset.

    Returns (R [T, B], the last R [B]: the state the next rollout continues from)."""
    running = np.array(state, np.float64)
    out = np.zeros(rewards.shape, np.float64)
    for t in range(rewards.shape[0]):
        running = gamma * running + rewards[t]
        out[t] = running
    return out, running


def intrinsic_gae(
    rewards: np.ndarray, values: np.ndarray, gamma: float, gae_lambda: float
) -> tuple[np.ndarray, np.ndarray]:
    """Non-episodic GAE for the intrinsic return: ``values`` [T + 1, B], no stop at episode ends.

        delta_t = r_t + gamma V(s_{t+1}) - V(s_t),   A_t = delta_t + gamma lambda A_{t+1}
    Returns (advantages, returns = advantages + V)."""
    never = np.zeros(rewards.shape, bool)
    return gae(rewards, values[:-1], values[1:], never, never, gamma, gae_lambda)


def combine_advantages(
    ext: np.ndarray, intrinsic: np.ndarray, ext_coef: float, int_coef: float, valid: np.ndarray
) -> tuple[np.ndarray, float]:
    """A = ext_coef A_ext + int_coef A_int, and the intrinsic term's share of sum |term| over valid steps."""
    ext_term, int_term = ext_coef * ext, int_coef * intrinsic
    ext_size, int_size = float(np.abs(ext_term[valid]).sum()), float(np.abs(int_term[valid]).sum())
    share = int_size / (ext_size + int_size) if ext_size + int_size > 0 else 0.0
    return ext_term + int_term, share


def prediction_error(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample squared error mean_k (f^(s')_k - f(s')_k)^2: the intrinsic reward and the predictor's loss."""
    return (predicted - target).pow(2).mean(dim=-1)


def predictor_loss(error: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of the per-sample ``error`` over the samples ``keep`` selects (1/0), 0 when none is kept."""
    return (error * keep).sum() / keep.sum().clamp(min=1.0)


# ---- networks -----------------------------------------------------------------------------------


def rnd_network(obs_shape: int | ImageShape, config: RNDConfig) -> nn.Module:
    """A small network for RND: the Nature-CNN layers with leaky ReLU for images, an MLP for vectors,
    then a linear layer to ``feature_dim`` features (orthogonal init, gain sqrt(2), as in the paper)."""
    layers: list[nn.Module] = []
    if isinstance(obs_shape, ImageShape):
        image = obs_shape
        layers.append(nn.Unflatten(-1, tuple(image)))
        channels = image.channels
        for out_channels, kernel, stride in NATURE_CNN_LAYERS:
            conv = nn.Conv2d(channels, out_channels, kernel, stride)
            nn.init.orthogonal_(conv.weight, math.sqrt(2))
            assert conv.bias is not None
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.LeakyReLU()]
            channels = out_channels
        layers.append(nn.Flatten())
        with torch.no_grad():
            width = nn.Sequential(*layers)(torch.zeros(1, image.channels * image.height * image.width)).shape[1]
    else:
        width = int(obs_shape)
        for size in config.mlp_sizes:
            layers += [orthogonal_init(nn.Linear(width, size), math.sqrt(2)), nn.LeakyReLU()]
            width = size
    layers.append(orthogonal_init(nn.Linear(width, config.feature_dim), math.sqrt(2)))
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class RNDTargets:
    """Per-sample RND data beside a PPO ``Batch`` (same rows): normalised next obs, intrinsic returns."""

    next_obs: torch.Tensor
    int_returns: torch.Tensor

    def select(self, index: torch.Tensor | slice) -> RNDTargets:
        """The rows ``index`` selects."""
        return RNDTargets(self.next_obs[index], self.int_returns[index])

    def sequences(self, steps: int, envs: int, length: int) -> RNDTargets:
        """The flat time-major rows (row ``t B + b``) as ``[S, L, ...]`` sequences, cut as ``sequences.to_sequences``
        cuts the PPO batch, so sequence ``i`` of both holds the same steps."""

        def cut(rows: torch.Tensor) -> torch.Tensor:
            return torch.as_tensor(chunk(rows.reshape(steps, envs, *rows.shape[1:]), length))

        return RNDTargets(cut(self.next_obs), cut(self.int_returns))


def paired_minibatches(
    batch: Batch | SequenceBatch, targets: RNDTargets, size: int, rng: np.random.Generator
) -> Iterator[tuple[Batch | SequenceBatch, RNDTargets]]:
    """``batch.minibatches(size, rng)`` with the RND rows shuffled by the same permutation: ``size`` samples per
    minibatch, i.e. ``size / L`` whole sequences of a ``SequenceBatch``."""
    per_minibatch = max(size // batch.length, 1) if isinstance(batch, SequenceBatch) else size
    order = torch.from_numpy(rng.permutation(len(batch))).to(batch.obs.device)
    shuffled, extra = batch.select(order), targets.select(order)
    for start in range(0, len(batch) - per_minibatch + 1, per_minibatch):
        rows = slice(start, start + per_minibatch)
        yield shuffled.select(rows), extra.select(rows)


def make_rnd(
    section: str, config: RNDConfig, network: NetworkConfig, obs_shape: ObsShape, device: torch.device
) -> RND | None:
    """The RND module of an algorithm's ``section`` when ``rnd.enabled`` (vector and image observations), else
    None; its intrinsic critic's torso follows the section's ``network`` (hidden sizes, activation)."""
    if not config.enabled:
        return None
    if isinstance(obs_shape, ObsLayout):
        raise ConfigError(f"{section}.rnd.enabled takes vector or image observations; got a Dict observation")
    return RND(config, obs_shape, network.hidden_sizes, network.activation).to(device)


class RND(nn.Module):
    """Target, predictor, intrinsic critic and the two normalisers (as float64 buffers, so a checkpoint of
    the module restores them exactly; the per-env forward-filter state travels in the learner's extra state)."""

    obs_mean: torch.Tensor
    obs_var: torch.Tensor
    obs_count: torch.Tensor
    ret_mean: torch.Tensor
    ret_var: torch.Tensor
    ret_count: torch.Tensor

    def __init__(
        self, config: RNDConfig, obs_shape: int | ImageShape, hidden_sizes: tuple[int, ...], activation: Activation
    ) -> None:
        super().__init__()
        self.config = config
        size = obs_shape if isinstance(obs_shape, int) else math.prod(obs_shape)
        self.predictor = rnd_network(obs_shape, config)
        self.target = rnd_network(obs_shape, config)
        self.target.requires_grad_(False)
        torso = make_torso(obs_shape, hidden_sizes, activation)
        width = NATURE_CNN_FEATURES if isinstance(obs_shape, ImageShape) else (hidden_sizes or (size,))[-1]
        self.int_critic = nn.Sequential(torso, orthogonal_init(nn.Linear(width, 1), 1.0))
        self.register_buffer("obs_mean", torch.zeros(size, dtype=torch.float64))
        self.register_buffer("obs_var", torch.ones(size, dtype=torch.float64))
        self.register_buffer("obs_count", torch.tensor(1e-4, dtype=torch.float64))
        self.register_buffer("ret_var", torch.ones((), dtype=torch.float64))
        self.register_buffer("ret_mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("ret_count", torch.tensor(1e-4, dtype=torch.float64))
        self.filter_state: np.ndarray | None = None  # [B], set by the first rollout

    def trainable(self) -> list[nn.Parameter]:
        """The predictor's and the intrinsic critic's parameters (the target stays fixed)."""
        return [*self.predictor.parameters(), *self.int_critic.parameters()]

    def int_values(self, obs: torch.Tensor) -> torch.Tensor:
        """V_int(s), [N]."""
        values: torch.Tensor = self.int_critic(obs).squeeze(-1)
        return values

    def errors(self, next_obs: torch.Tensor) -> torch.Tensor:
        """Per-sample prediction error of normalised next observations (gradient flows into the predictor)."""
        with torch.no_grad():
            target = self.target(next_obs)
        return prediction_error(self.predictor(next_obs), target)

    def _normalised_next_obs(self, rollout: Rollout) -> np.ndarray:
        steps, envs = rollout.num_steps, rollout.num_envs
        rows = rollout.obs[1:].reshape(steps * envs, -1).astype(np.float64)
        mean, var, count = merge_moments(
            self.obs_mean.cpu().numpy(), self.obs_var.cpu().numpy(), float(self.obs_count), rows
        )
        self.obs_mean.copy_(torch.from_numpy(mean))
        self.obs_var.copy_(torch.from_numpy(var))
        self.obs_count.fill_(count)
        return normalize_obs(rows, mean, var, self.config.obs_clip)

    def prepare(
        self, rollout: Rollout, ext_advantages: torch.Tensor, gae_lambda: float, device: torch.device
    ) -> tuple[torch.Tensor, RNDTargets, dict[str, float]]:
        """Intrinsic rewards of the rollout's next observations, normalised; intrinsic GAE; combined advantages.

        Updates the observation and return normalisers first (the paper's order), so a resumed run that
        restored them computes the same numbers."""
        config, steps, envs = self.config, rollout.num_steps, rollout.num_envs
        next_obs = torch.from_numpy(self._normalised_next_obs(rollout)).to(device)
        all_obs = torch.from_numpy(rollout.obs.reshape((steps + 1) * envs, -1)).to(device)
        with torch.no_grad():
            raw = self.errors(next_obs).double().cpu().numpy().reshape(steps, envs)
            values = self.int_values(all_obs).double().cpu().numpy().reshape(steps + 1, envs)
        state = np.zeros(envs) if self.filter_state is None else self.filter_state
        discounted, self.filter_state = forward_filter(raw, state, config.int_gamma)
        mean, var, count = merge_moments(
            self.ret_mean.cpu().numpy(), self.ret_var.cpu().numpy(), float(self.ret_count), discounted.reshape(-1)
        )
        self.ret_mean.fill_(float(mean))
        self.ret_var.fill_(float(var))
        self.ret_count.fill_(count)
        rewards = raw / math.sqrt(float(var))
        int_adv, int_returns = intrinsic_gae(rewards, values, config.int_gamma, gae_lambda)
        ext = ext_advantages.double().cpu().numpy().reshape(steps, envs)
        valid = rollout.valid
        combined, share = combine_advantages(ext, int_adv, config.ext_coef, config.int_coef, valid)
        combined = np.where(valid, combined, 0.0).astype(np.float32).reshape(-1)
        targets = RNDTargets(next_obs, torch.from_numpy(int_returns.astype(np.float32).reshape(-1)).to(device))
        stats = {INTRINSIC_REWARD: float(rewards[valid].mean()) if valid.any() else 0.0, INT_ADVANTAGE_SHARE: share}
        return torch.from_numpy(combined).to(device), targets, stats

    def loss(
        self, obs: torch.Tensor, targets: RNDTargets, mask: torch.Tensor, vf_coef: float, rng: np.random.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """predictor loss on a random ``update_proportion`` of the rows + vf_coef E[(V_int - R_int)^2]. Rows may come
        as ``[N]`` steps or ``[S, L]`` sequences (flattened here: both terms are per step)."""
        obs, mask = obs.reshape(-1, obs.shape[-1]), mask.reshape(-1)
        targets = RNDTargets(targets.next_obs.reshape(-1, targets.next_obs.shape[-1]), targets.int_returns.reshape(-1))
        keep = torch.from_numpy(rng.random(len(mask)) < self.config.update_proportion).to(mask)
        forward = predictor_loss(self.errors(targets.next_obs), keep)
        error = (self.int_values(obs) - targets.int_returns).pow(2)
        int_value = (error * mask).sum() / mask.sum().clamp(min=1.0)
        stats = {PREDICTOR_LOSS: forward.detach(), INT_VALUE_LOSS: int_value.detach()}
        return forward + vf_coef * int_value, stats

    def extra_state(self) -> dict[str, list[float]]:
        """The forward filter's per-env state (JSON keeps doubles exactly)."""
        return {} if self.filter_state is None else {"rnd_filter": [float(x) for x in self.filter_state]}

    def load_extra_state(self, state: dict[str, list[float]]) -> None:
        """Restores what ``extra_state`` returned."""
        if "rnd_filter" in state:
            self.filter_state = np.asarray(state["rnd_filter"], np.float64)
