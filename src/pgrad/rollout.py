"""Collecting on-policy experience, and the frozen batch that learning reads from.

Gymnasium 1.x vector envs autoreset on the *next* step: after a step that ends an episode, the
returned observation is the episode's final observation, and the following ``step`` call ignores
its action, resets that sub-env and returns the first observation with reward 0. pgrad keeps that
layout and marks the reset step ``valid = False``; every loss averages over valid steps only.
It also means ``obs[t + 1]`` is the final observation when an episode ended at ``t``, so the
critic's value of it is exactly the bootstrap a truncated episode needs.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch

from pgrad.envs.factory import SpaceAdapter
from pgrad.envs.normalize import ObsNormalizer, RewardScaler
from pgrad.estimators import explained_variance
from pgrad.metric_names import EXPLAINED_VARIANCE
from pgrad.nets import Actor


@dataclass(frozen=True)
class Rollout:
    """Time-major arrays from ``T`` steps of ``B`` environments."""

    obs: np.ndarray  # [T + 1, B, obs_dim] normalised; obs[T] is the observation after the last step
    actions: np.ndarray  # [T, B] (discrete) or [T, B, action_dim]
    rewards: np.ndarray  # [T, B] after reward scaling
    terminated: np.ndarray  # [T, B] bool
    truncated: np.ndarray  # [T, B] bool
    valid: np.ndarray  # [T, B] bool; False on the step Gymnasium spends on an autoreset
    # Off-policy correction (IMPALA): log mu(a|s) of the policy that acted, [T, B], and its weights' version
    # (learner updates before it was sent). None and 0 for a rollout of the learner's own current policy.
    behaviour_log_probs: np.ndarray | None = None
    policy_version: int = 0
    # Recurrent policies (pgrad.recurrent): the hidden state carried into each step, before that step's reset,
    # [T, B, state_size]; and which observations begin an episode (s <- 0 before their step), [T + 1, B].
    # None for feed-forward policies.
    states: np.ndarray | None = None
    episode_starts: np.ndarray | None = None

    @property
    def num_steps(self) -> int:
        """T, the steps per env."""
        return int(self.rewards.shape[0])

    @property
    def num_envs(self) -> int:
        """B, the number of envs."""
        return int(self.rewards.shape[1])


@dataclass(frozen=True)
class Batch:
    """Flat ``[N]`` tensors that an update reads (on the learner's device); ``minibatches``
    shuffles and slices them. ``rollout_to_batch`` builds one from a ``Rollout``."""

    obs: torch.Tensor
    actions: torch.Tensor
    log_probs: torch.Tensor  # log pi_old(a|s) at collection time (zeros where an algorithm needs none)
    values: torch.Tensor  # V_old(s) at collection time
    advantages: torch.Tensor  # 0 on invalid steps
    returns: torch.Tensor  # critic targets
    mask: torch.Tensor  # 1.0 for valid steps, 0.0 for autoreset steps

    def __len__(self) -> int:
        return int(self.obs.shape[0])

    def select(self, index: torch.Tensor | slice) -> Batch:
        """The rows ``index`` selects, in every field (a minibatch)."""
        return Batch(*(getattr(self, f.name)[index] for f in fields(self)))

    def to(self, device: torch.device | str) -> Batch:
        """The batch on ``device`` (itself when every tensor is already there)."""
        device = torch.device(device)
        if all(getattr(self, f.name).device == device for f in fields(self)):
            return self
        return Batch(*(getattr(self, f.name).to(device) for f in fields(self)))

    def minibatches(self, size: int, rng: np.random.Generator) -> Iterator[Batch]:
        """One pass over the batch in random order, ``len(self) // size`` minibatches of ``size``."""
        # Gather every field once per pass, then hand out contiguous slices (views, no copies):
        # the same minibatches as indexing each one, with 7 gathers per epoch instead of per step.
        order = torch.from_numpy(rng.permutation(len(self))).to(self.obs.device)
        shuffled = self.select(order)
        for start in range(0, len(self) - size + 1, size):
            yield shuffled.select(slice(start, start + size))

    def with_advantages(self, advantages: torch.Tensor) -> Batch:
        """A copy with ``advantages`` replaced (e.g. normalised per minibatch)."""
        return replace(self, advantages=advantages)


def rollout_to_batch(
    rollout: Rollout,
    values: np.ndarray,
    advantages: np.ndarray,
    returns: np.ndarray,
    log_probs: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    valid_only: bool = False,
) -> tuple[Batch, dict[str, float]]:
    """The one way a ``Rollout`` becomes a ``Batch``: flattened time-major, with its statistics.

    ``values`` [T + 1, B] are V(s) for every observation (the last row only bootstraps), and
    ``advantages``, ``returns`` [T, B] the targets an estimator made from them; ``log_probs`` [T * B]
    are log pi_old(a|s) (None: zeros, for algorithms without an importance ratio). Advantages of
    invalid (autoreset) steps are zeroed and masked out; ``valid_only`` drops those steps instead
    (REINFORCE's whole episodes). The statistics cover valid steps only: advantage mean and
    (population) std, the explained variance of V as a predictor of the returns, the valid fraction.
    """
    steps, envs = rollout.num_steps, rollout.num_envs
    valid = rollout.valid
    advantages = np.where(valid, advantages, 0.0).astype(np.float32)
    returns = returns.astype(np.float32)
    flat_valid = valid.reshape(-1)
    batch = Batch(
        obs=torch.from_numpy(rollout.obs[:steps].reshape(steps * envs, -1)),
        actions=torch.from_numpy(rollout.actions.reshape(steps * envs, *rollout.actions.shape[2:])),
        log_probs=torch.zeros(steps * envs) if log_probs is None else log_probs,
        values=torch.from_numpy(np.ascontiguousarray(values[:-1]).reshape(-1)),
        advantages=torch.from_numpy(advantages.reshape(-1)),
        returns=torch.from_numpy(returns.reshape(-1)),
        mask=torch.from_numpy(flat_valid.astype(np.float32)),
    )
    if valid_only:
        batch = batch.select(torch.from_numpy(np.flatnonzero(flat_valid)))
    valid_advantages = advantages[valid]
    stats = {
        "diagnostics/advantage_mean": float(valid_advantages.mean()) if valid_advantages.size else 0.0,
        "diagnostics/advantage_std": float(valid_advantages.std()) if valid_advantages.size else 0.0,
        EXPLAINED_VARIANCE: explained_variance(values[:-1][valid], returns[valid]),
        "diagnostics/valid_fraction": float(valid.mean()),
    }
    return batch.to(device), stats


@dataclass
class EpisodeStats:
    """Returns and lengths of recently finished episodes (undiscounted, unscaled rewards)."""

    window: int
    returns: deque[float]
    lengths: deque[int]
    count: int = 0
    # summary() at the count it was computed for: the trainer asks every update, but late in
    # training an episode ends only every few updates (the statistics cost ~30 us per call).
    cached: tuple[int, dict[str, float]] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def empty(cls, window: int) -> EpisodeStats:
        """No episodes yet, keeping the last ``window`` returns and lengths."""
        return cls(window, deque(maxlen=window), deque(maxlen=window))

    def add(self, episode_return: float, length: int) -> None:
        """Records one finished episode's return and length."""
        self.returns.append(episode_return)
        self.lengths.append(length)
        self.count += 1

    def state(self) -> dict[str, Any]:
        """The window, for ``TrainState.episodes`` (a resumed run reports the same running statistics)."""
        return {"returns": list(self.returns), "lengths": list(self.lengths), "count": self.count}

    def load(self, state: dict[str, Any]) -> None:
        """Refill the window from ``state()``'s output."""
        self.returns.extend(state["returns"])
        self.lengths.extend(state["lengths"])
        self.count = state["count"]
        self.cached = None

    def summary(self) -> dict[str, float]:
        """``rollout/*`` metrics over the window: return mean, median, min, max and std, mean length, and the episode
        count (cached until a new episode)."""
        if self.cached is not None and self.cached[0] == self.count:
            return dict(self.cached[1])
        if not self.returns:
            return {"rollout/episodes": float(self.count)}
        returns = np.asarray(self.returns)
        summary = {
            "rollout/return_mean": float(returns.mean()),
            "rollout/return_median": float(np.median(returns)),
            "rollout/return_min": float(returns.min()),
            "rollout/return_max": float(returns.max()),
            "rollout/return_std": float(returns.std()),
            "rollout/length_mean": float(np.mean(self.lengths)),
            "rollout/episodes": float(self.count),
        }
        self.cached = (self.count, summary)
        return dict(summary)


# a rollout's arrays, the batch built from them and the tensors of one update hold about this many copies
ROLLOUT_COPIES = 3


def rollout_bytes(num_steps: int, num_envs: int, obs_dim: int, action_size: int) -> int:
    """Bytes of one rollout of ``num_steps`` x ``num_envs`` steps and what an update builds from it
    (``ROLLOUT_COPIES``): observations and actions in float32, and per step a reward, log-probability, value,
    advantage, return (float32) and three flags."""
    per_step = 4 * (obs_dim + action_size) + 5 * 4 + 3
    return ROLLOUT_COPIES * (num_steps + 1) * num_envs * per_step


class RolloutCollector:
    """Steps a vector env with an acting policy and records a ``Rollout``.

    Owns the state that lives between rollouts: the current observation, which sub-envs will
    autoreset on their next step, running episode returns, and the normalisers.
    """

    def __init__(
        self,
        envs: Any,
        adapter: SpaceAdapter,
        obs_normalizer: ObsNormalizer,
        reward_scaler: RewardScaler,
        episode_window: int,
        state_size: int = 0,
    ) -> None:
        """``state_size``: the width of a recurrent policy's hidden state per env (0: feed-forward); the collector
        carries that state across rollouts and resets it at episode starts."""
        self.envs = envs
        self.adapter = adapter
        self.obs_normalizer = obs_normalizer
        self.reward_scaler = reward_scaler
        self.num_envs = envs.num_envs
        self.episodes = EpisodeStats.empty(episode_window)
        self.raw_obs: np.ndarray | None = None
        self.autoreset_pending = np.zeros(self.num_envs, bool)
        self.episode_return = np.zeros(self.num_envs, np.float64)
        self.episode_length = np.zeros(self.num_envs, np.int64)
        self.env_seconds = 0.0
        # Domain randomisation's draws of the episodes started since the runner last took them
        # (``take_randomize_draws``): one {"env": i, parameter: value(s)} per episode.
        self.randomize_draws: list[dict[str, Any]] = []
        # Callbacks' per-step hooks (``pgrad.runners.live.LiveTraining``: rollout_start, step, rollout_end), set only
        # while a run has callbacks; None costs one test per vector step and no call.
        self.hooks: Any = None
        # A recurrent policy's state between steps and rollouts (None: feed-forward), and which envs' current
        # observation begins an episode (the state is zeroed before acting on it).
        self.hidden = np.zeros((self.num_envs, state_size), np.float32) if state_size else None
        self.episode_start = np.ones(self.num_envs, bool)

    def reset(self, seed: int) -> None:
        """Resets the envs (and seeds their action space) with ``seed``, counts the first observations in the
        normaliser and zeroes the running episodes."""
        obs, infos = self.envs.reset(seed=seed)
        self._record_draws(infos)
        self.envs.action_space.seed(seed)
        self.raw_obs = self.adapter.observations(obs)
        self.obs_normalizer.observe(self.raw_obs)
        self.autoreset_pending[:] = False
        self.episode_return[:] = 0.0
        self.episode_length[:] = 0
        self.episode_start[:] = True

    def collect(self, policy: Actor, rng: np.random.Generator, num_steps: int) -> Rollout:
        """``num_steps`` steps of every env with ``policy``: a Rollout of fresh arrays, observations normalised and
        rewards scaled where enabled (T + 1 observations, the last for bootstrapping)."""
        assert self.raw_obs is not None, "call reset() first"
        num_envs, obs_dim = self.num_envs, self.adapter.obs_dim
        obs = np.empty((num_steps + 1, num_envs, obs_dim), np.float32)
        action_shape = () if self.adapter.action.kind == "discrete" else (self.adapter.action.size,)
        actions = np.empty((num_steps, num_envs, *action_shape), np.int64 if not action_shape else np.float32)
        rewards = np.empty((num_steps, num_envs), np.float32)
        terminated = np.empty((num_steps, num_envs), bool)
        truncated = np.empty((num_steps, num_envs), bool)
        valid = np.empty((num_steps, num_envs), bool)
        hidden = self.hidden
        states = None if hidden is None else np.empty((num_steps, *hidden.shape), np.float32)
        starts = None if hidden is None else np.empty((num_steps + 1, num_envs), bool)
        # Fresh arrays per rollout (a Rollout may still be read after the next collect starts).
        # The loop runs once per vector step, so it does no work a disabled normaliser would undo.
        normalize_obs, scale_rewards = self.obs_normalizer.enabled, self.reward_scaler.enabled
        envs, adapter, clock, hooks = self.envs, self.adapter, time.perf_counter, self.hooks
        env_seconds = 0.0
        if hooks is not None:
            hooks.rollout_start()

        for t in range(num_steps):
            obs[t] = self.obs_normalizer(self.raw_obs, update=False) if normalize_obs else self.raw_obs
            if states is None or starts is None:
                step_actions = policy.sample(obs[t], rng)
            else:
                step_actions = self._recurrent_step(policy, obs[t], t, states, starts, rng)
            actions[t] = step_actions
            started = clock()
            next_obs, reward, term, trunc, infos = envs.step(adapter.env_actions(step_actions))
            env_seconds += clock() - started
            if "randomize" in infos:  # some env reset with new physics (pgrad.envs.randomize)
                self._record_draws(infos)
            reward = np.asarray(reward, np.float64)
            is_valid = ~self.autoreset_pending
            done = term | trunc
            valid[t] = is_valid
            terminated[t] = term
            truncated[t] = trunc
            rewards[t] = self.reward_scaler(reward, done, is_valid) if scale_rewards else reward
            self._track_episodes(reward, done, is_valid)
            self.autoreset_pending = done
            self.raw_obs = adapter.observations(next_obs)
            if normalize_obs:  # counted on arrival, final observations never (see ObsNormalizer)
                self.obs_normalizer.observe(self.raw_obs, ~done)
            if hooks is not None:
                hooks.step()

        obs[num_steps] = self.obs_normalizer(self.raw_obs, update=False) if normalize_obs else self.raw_obs
        self.env_seconds += env_seconds
        if hooks is not None:
            hooks.rollout_end()
        if starts is not None:
            starts[num_steps] = self.episode_start
        return Rollout(obs, actions, rewards, terminated, truncated, valid, states=states, episode_starts=starts)

    def _recurrent_step(
        self,
        policy: Any,
        obs: np.ndarray,
        t: int,
        states: np.ndarray,
        starts: np.ndarray,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """A recurrent policy's step: records the state it is handed and the episode starts, carries the state on.
        The step after an autoreset step acts on a new episode's first observation: its state starts at zero."""
        assert self.hidden is not None
        states[t] = self.hidden
        starts[t] = self.episode_start
        actions, self.hidden = policy.step(obs, self.hidden, self.episode_start, rng)
        self.episode_start = self.autoreset_pending.copy()
        return np.asarray(actions)

    def collect_episodes(
        self, policy: Actor, rng: np.random.Generator, num_episodes: int, max_steps: int = 100_000
    ) -> Rollout:
        """Whole episodes for Monte Carlo methods (REINFORCE), as a ``Rollout`` of variable length T.

        All copies are reset, then copy i runs exactly quota_i = num_episodes // B (+1 for the first
        num_episodes % B copies) episodes. A fixed quota per copy, not "the first N episodes to end",
        keeps the sample unbiased: stopping at the first N finishers over-represents short episodes.
        The vector env steps all copies together, so steps after a copy's quota are recorded but
        marked invalid, like autoreset steps; the rollout ends when every quota is met, so every valid
        step belongs to a completed episode. ``max_steps`` (per copy) guards against episodes that
        never end.
        """
        obs, infos = self.envs.reset()  # no seed: each copy continues its own generator (exact on resume)
        self._record_draws(infos)
        self.raw_obs = self.adapter.observations(obs)
        self.obs_normalizer.observe(self.raw_obs)
        self.autoreset_pending[:] = False
        self.episode_return[:] = 0.0
        self.episode_length[:] = 0
        self.reward_scaler.running_return[:] = 0.0
        share, extra = divmod(num_episodes, self.num_envs)
        quota = share + (np.arange(self.num_envs) < extra)
        finished = np.zeros(self.num_envs, np.int64)
        columns: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "actions", "rewards", "terminated", "truncated")}
        valid: list[np.ndarray] = []
        env_seconds, hooks = 0.0, self.hooks
        if hooks is not None:
            hooks.rollout_start()
        while (finished < quota).any():
            if len(valid) >= max_steps:
                raise RuntimeError(f"episodes did not end within {max_steps} steps; set env.max_episode_steps")
            step_obs = self.obs_normalizer(self.raw_obs, update=False)
            actions = policy.sample(step_obs, rng)
            started = time.perf_counter()
            next_obs, reward, term, trunc, infos = self.envs.step(self.adapter.env_actions(actions))
            env_seconds += time.perf_counter() - started
            if "randomize" in infos:
                self._record_draws(infos)
            reward = np.asarray(reward, np.float64)
            done = np.logical_or(term, trunc)
            counted = ~self.autoreset_pending & (finished < quota)
            scaled_reward = self.reward_scaler(reward, done, counted)
            for name, value in zip(columns, (step_obs, actions, scaled_reward, term, trunc), strict=True):
                columns[name].append(np.asarray(value))
            valid.append(counted)
            self._track_episodes(reward, done & counted, counted)
            finished += done & counted
            self.autoreset_pending = done
            self.raw_obs = self.adapter.observations(next_obs)
            self.obs_normalizer.observe(self.raw_obs, ~done)
            if hooks is not None:
                hooks.step()

        columns["obs"].append(self.obs_normalizer(self.raw_obs, update=False))
        self.env_seconds += env_seconds
        if hooks is not None:
            hooks.rollout_end()
        arrays = {name: np.stack(values) for name, values in columns.items()}
        return Rollout(
            arrays["obs"].astype(np.float32),
            arrays["actions"],
            arrays["rewards"].astype(np.float32),
            arrays["terminated"].astype(bool),
            arrays["truncated"].astype(bool),
            np.stack(valid),
        )

    def _record_draws(self, infos: dict[str, Any]) -> None:
        """The draws in the reset info of the envs that just reset (the vector env stacks each parameter
        across envs and marks which envs carry it in ``_randomize``)."""
        draws = infos.get("randomize")
        if draws is None:
            return
        for index in np.flatnonzero(infos["_randomize"]):
            values = {name: np.asarray(value[index]).tolist() for name, value in draws.items() if name[0] != "_"}
            self.randomize_draws.append({"env": int(index), **values})

    def take_randomize_draws(self) -> list[dict[str, Any]]:
        """The domain-randomisation draws since the last call; clears them."""
        draws, self.randomize_draws = self.randomize_draws, []
        return draws

    def round_metrics(self) -> dict[str, float]:
        """Metrics of the last rollout beyond the episodes' (the Ray collectors report workers, lag, queues)."""
        return {}

    def _track_episodes(self, reward: np.ndarray, done: np.ndarray, valid: np.ndarray) -> None:
        # Autoreset steps pay reward 0, so adding the raw reward is exact; only the length needs the mask.
        self.episode_return += reward
        self.episode_length += valid
        if done.any():
            for index in np.flatnonzero(done):
                self.episodes.add(float(self.episode_return[index]), int(self.episode_length[index]))
            self.episode_return[done] = 0.0
            self.episode_length[done] = 0

    # ---- checkpoint support -------------------------------------------------------------
    def state_arrays(self) -> dict[str, np.ndarray]:
        """The environment-side arrays (not the normaliser statistics: see ``normalizer_state``)."""
        assert self.raw_obs is not None, "call reset() first"
        arrays = {
            "raw_obs": self.raw_obs,
            "autoreset_pending": self.autoreset_pending,
            "episode_return": self.episode_return,
            "episode_length": self.episode_length,
            "reward_running_return": self.reward_scaler.running_return,
        }
        if self.hidden is not None:  # a recurrent policy's state mid-episode: resume continues it exactly
            arrays["hidden"] = self.hidden
            arrays["episode_start"] = self.episode_start
        return arrays

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restores what ``state_arrays`` returned: raw observations, pending autoresets, running episodes and the
        reward scaler's running return."""
        self.raw_obs = arrays["raw_obs"].astype(np.float32)
        self.autoreset_pending = arrays["autoreset_pending"].astype(bool)
        self.episode_return = arrays["episode_return"].astype(np.float64)
        self.episode_length = arrays["episode_length"].astype(np.int64)
        self.reward_scaler.running_return = arrays["reward_running_return"].astype(np.float64)
        if self.hidden is not None:
            self.hidden = arrays["hidden"].astype(np.float32)
            self.episode_start = arrays["episode_start"].astype(bool)

    def normalizer_state(self) -> dict[str, dict[str, np.ndarray]]:
        """Running statistics of the observation and reward normalisers (``TrainState.normalizers``)."""
        return {"obs": self.obs_normalizer.stats.state(), "reward": self.reward_scaler.stats.state()}

    def load_normalizer_state(self, state: dict[str, dict[str, np.ndarray]]) -> None:
        """Restores the observation normaliser's and the reward scaler's running statistics."""
        self.obs_normalizer.stats.load(state["obs"])
        self.reward_scaler.stats.load(state["reward"])
