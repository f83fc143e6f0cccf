"""Playing whole episodes with an acting policy and a frozen observation normaliser.

Used by ``pgrad eval`` (a saved policy) and by the trainer's periodic evaluation (the live policy,
on environments separate from the training ones, so training's env state and RNG are untouched).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from pgrad import metric_names as names
from pgrad.config import TrainConfig
from pgrad.envs.factory import SpaceAdapter
from pgrad.envs.normalize import ObsNormalizer
from pgrad.nets import Actor

EVAL_SEED_OFFSET = 1_000_003  # evaluation episodes never reuse training seeds


class Memory:
    """A recurrent policy's state across an evaluation's steps (``pgrad.recurrent``), reset at episode starts.

    With next-step autoreset the step after an episode's end acts on its final observation (ignored by the env);
    the step after that acts on the new episode's first observation, and there the state starts at zero."""

    def __init__(self, policy: Any, num_envs: int) -> None:
        self.policy = policy
        self.state: np.ndarray = policy.initial_state(num_envs)
        self.starts = np.ones(num_envs, bool)
        self.pending = np.zeros(num_envs, bool)

    def act(self, obs: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """Actions for one step (the mode where ``rng`` is None), carrying the state on."""
        actions, self.state = self.policy.step(obs, self.state, self.starts, rng)
        return np.asarray(actions)

    def after_step(self, done: np.ndarray) -> np.ndarray:
        """Marks the episode starts the next step acts on; returns ``done``."""
        self.starts, self.pending = self.pending, np.asarray(done, bool).copy()
        return done

    def after_reset(self, reset: np.ndarray) -> None:
        """Sub-envs reset by hand (the step cap) begin an episode on the next step."""
        self.starts = self.starts | reset
        self.pending = self.pending & ~reset


class NoMemory:
    """A feed-forward policy's actions, with ``Memory``'s methods (nothing to carry)."""

    def __init__(self, policy: Actor) -> None:
        self.policy = policy

    def act(self, obs: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """The mode where ``rng`` is None, else a sample."""
        return self.policy.mode(obs) if rng is None else self.policy.sample(obs, rng)

    def after_step(self, done: np.ndarray) -> np.ndarray:
        """Nothing to carry; returns ``done``."""
        return done

    def after_reset(self, reset: np.ndarray) -> None:
        """Nothing to carry."""


def record_episodes(
    indices: np.ndarray,
    episode_return: np.ndarray,
    episode_length: np.ndarray,
    returns: list[float],
    lengths: list[int],
) -> None:
    """Appends the return and length of the episodes of sub-envs ``indices``."""
    for index in indices:
        returns.append(float(episode_return[index]))
        lengths.append(int(episode_length[index]))


def run_episodes(
    policy: Actor,
    envs: Any,
    adapter: SpaceAdapter,
    obs_normalizer: ObsNormalizer,
    episodes: int,
    deterministic: bool,
    seed: int,
    on_step: Callable[[np.ndarray], None] | None = None,
    max_episode_steps: int | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[list[float], list[int]]:
    """Play ``episodes`` episodes on the vector env ``envs``; returns (returns, lengths).

    Each sub-env plays a fixed quota (episodes split evenly), so short episodes are not
    over-represented. The normaliser is read, never updated. Gymnasium's next-step autoreset
    step (reward 0) is not counted. ``on_step(finished)`` is called after every env step with the
    indices of the sub-envs whose counted episode just ended (used to cut videos).

    ``max_episode_steps`` caps every episode: one that reaches it without ending counts as truncated
    there and its sub-env is reset, so an env without a time limit (CliffWalking) cannot loop forever
    under a policy that never reaches the goal. ``should_stop()`` is asked after every step; when it
    says yes (a Ctrl-C or SIGTERM during the evaluation) the episodes finished so far are returned.
    """
    num_envs = envs.num_envs
    quota = np.array([episodes // num_envs + (i < episodes % num_envs) for i in range(num_envs)])
    done_count = np.zeros(num_envs, int)
    returns: list[float] = []
    lengths: list[int] = []
    episode_return = np.zeros(num_envs)
    episode_length = np.zeros(num_envs, int)
    # active: this step counts for that sub-env (quota not met, not the reset step after a done). It only
    # changes after a step where some episode ended, so the usual step costs four small array operations
    # besides acting and stepping (one evaluation is hundreds of steps; see benchmarks/bench_overhead.py).
    active = quota > 0
    resetting = False
    remaining = episodes
    nothing = np.zeros(0, dtype=np.int64)
    memory = Memory(policy, num_envs) if getattr(policy, "recurrent", False) else NoMemory(policy)
    rng = None if deterministic else np.random.default_rng(seed)  # None: the mode
    raw, _ = envs.reset(seed=seed)
    while remaining > 0:
        obs = obs_normalizer(adapter.observations(raw), update=False)
        actions = memory.act(obs, rng)
        raw, reward, terminated, truncated, _ = envs.step(adapter.env_actions(actions))
        np.add(episode_return, reward, out=episode_return, where=active)
        episode_length += active
        done = memory.after_step(terminated | truncated)
        finished = nothing
        if done.any():
            finished = np.flatnonzero(done & active)
            record_episodes(finished, episode_return, episode_length, returns, lengths)
            done_count[finished] += 1
            remaining -= len(finished)
            episode_return[done] = 0.0
            episode_length[done] = 0
            active = (done_count < quota) & ~done  # a done sub-env's next step is Gymnasium's reset step
            resetting = True
        elif resetting:
            active = done_count < quota
            resetting = False
        if max_episode_steps is not None and (episode_length >= max_episode_steps).any():
            capped = (episode_length >= max_episode_steps) & active
            record_episodes(np.flatnonzero(capped), episode_return, episode_length, returns, lengths)
            done_count[capped] += 1
            remaining -= int(capped.sum())
            finished = np.union1d(finished, np.flatnonzero(capped))
            reset = episode_length >= max_episode_steps
            episode_return[reset] = 0.0
            episode_length[reset] = 0
            # a fresh episode on those sub-envs (unseeded: their generators carry on from the evaluation's seed)
            raw, _ = envs.reset(options={"reset_mask": reset})
            memory.after_reset(reset)
            active = (done_count < quota) & ~done  # reset sub-envs were not done: they play on
        if on_step is not None:
            on_step(finished)
        if should_stop is not None and should_stop():
            break
    return returns, lengths


def episode_step_cap(config: TrainConfig) -> int:
    """The step cap of an evaluation episode: the env's own time limit (``env.max_episode_steps``, else
    the registered one), else ``guard.eval_max_steps``. With a time limit the env truncates first and
    the cap never acts; without one (CliffWalking-v1, Blackjack-v1, most entry points) it is what ends
    an episode the policy never finishes."""
    if config.env.max_episode_steps is not None:
        return config.env.max_episode_steps
    try:
        limit = gym.spec(config.env.id).max_episode_steps
    except Exception:  # an entry point 'module:Class' or an id gymnasium does not know: no registered limit
        limit = None
    return int(limit) if limit else config.guard.eval_max_steps


def eval_num_envs(episodes: int) -> int:
    """Sub-envs for an evaluation of ``episodes`` episodes (at most 10)."""
    return min(episodes, 10)


def periodic_evaluation(
    policy: Actor,
    envs: Any,
    adapter: SpaceAdapter,
    obs_normalizer: ObsNormalizer,
    episodes: int,
    seed: int,
    metrics: dict[str, Any],
    max_episode_steps: int | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[float] | None:
    """The guard's evaluation, for every runner: ``episodes`` deterministic episodes seeded with
    ``EVAL_SEED_OFFSET + seed``, each capped at ``max_episode_steps``; adds the ``eval/*`` metrics (and
    ``perf/eval_seconds``) to ``metrics`` and returns the episode returns (the guard weighs a drop against
    their spread). None when ``should_stop`` cut it short: a partial evaluation is no evaluation."""
    started = time.perf_counter()
    returns, lengths = run_episodes(
        policy,
        envs,
        adapter,
        obs_normalizer,
        episodes,
        True,
        EVAL_SEED_OFFSET + seed,
        max_episode_steps=max_episode_steps,
        should_stop=should_stop,
    )
    if len(returns) < episodes:
        return None
    metrics.update(
        {
            names.EVAL_RETURN_MEAN: float(np.mean(returns)),
            names.EVAL_RETURN_STD: float(np.std(returns)),
            "eval/return_min": float(np.min(returns)),
            "eval/return_max": float(np.max(returns)),
            "eval/length_mean": float(np.mean(lengths)),
            "perf/eval_seconds": time.perf_counter() - started,
        }
    )
    return [float(r) for r in returns]
