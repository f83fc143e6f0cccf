"""A tiny PettingZoo parallel env for the multi-agent tests: two agents whose episodes end at different steps.

Agent ``a`` terminates after ``finish[0]`` steps, agent ``b`` is truncated after ``finish[1]``; every live agent
gets reward 1 per step. An agent's observation is ``t + index`` in each of its ``width`` entries, so a row tells
which step it came from. No ``state()``: the centralised critic reads the observations concatenated.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from pettingzoo.utils.env import ParallelEnv


class Relay(ParallelEnv):
    """Two agents, ``a`` and ``b``, with observation widths ``widths`` and Discrete(3) or Box(2) actions."""

    metadata = {"name": "relay_v0"}

    def __init__(self, widths: tuple[int, int] = (3, 3), finish: tuple[int, int] = (2, 4), discrete: bool = True):
        self.possible_agents = ["a", "b"]
        self.agents: list[str] = []
        self.widths = dict(zip(self.possible_agents, widths, strict=True))
        self.finish = dict(zip(self.possible_agents, finish, strict=True))
        self.t = 0
        self._obs_spaces = {a: spaces.Box(-100.0, 100.0, (w,), np.float32) for a, w in self.widths.items()}
        act: Any = spaces.Discrete(3) if discrete else spaces.Box(-2.0, 2.0, (2,), np.float32)
        self._act_spaces = {a: act for a in self.possible_agents}

    def observation_space(self, agent: str) -> spaces.Space:
        return self._obs_spaces[agent]

    def action_space(self, agent: str) -> spaces.Space:
        return self._act_spaces[agent]

    def _obs(self, agent: str) -> np.ndarray:
        index = self.possible_agents.index(agent)
        return np.full(self.widths[agent], self.t + index, np.float32)

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        self.t = 0
        self.agents = list(self.possible_agents)
        return {a: self._obs(a) for a in self.agents}, {a: {} for a in self.agents}

    def step(self, actions: dict) -> tuple[dict, dict, dict, dict, dict]:
        self.t += 1
        live = list(self.agents)
        rewards = {a: 1.0 for a in live}
        terminated = {a: a == "a" and self.t >= self.finish["a"] for a in live}
        truncated = {a: a == "b" and self.t >= self.finish["b"] for a in live}
        obs = {a: self._obs(a) for a in live}
        self.agents = [a for a in live if not (terminated[a] or truncated[a])]
        return obs, rewards, terminated, truncated, {a: {} for a in live}


class TeamBandit(ParallelEnv):
    """Two agents with identical (zero) observations, each rewarded 1 per step for its own target action (``x``: 1,
    ``y``: 2), 10 steps per episode: a shared policy can only tell them apart by the one-hot id."""

    metadata = {"name": "team_bandit_v0"}

    def __init__(self) -> None:
        self.possible_agents = ["x", "y"]
        self.agents: list[str] = []
        self.t = 0

    def observation_space(self, agent: str) -> spaces.Space:
        return spaces.Box(-1.0, 1.0, (2,), np.float32)

    def action_space(self, agent: str) -> spaces.Space:
        return spaces.Discrete(3)

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        self.t = 0
        self.agents = list(self.possible_agents)
        return {a: np.zeros(2, np.float32) for a in self.agents}, {a: {} for a in self.agents}

    def step(self, actions: dict) -> tuple[dict, dict, dict, dict, dict]:
        self.t += 1
        rewards = {a: float(actions[a] == i + 1) for i, a in enumerate(self.possible_agents) if a in actions}
        done = self.t >= 10
        self.agents = [] if done else list(self.agents)
        obs = {a: np.zeros(2, np.float32) for a in actions}
        return obs, rewards, dict.fromkeys(actions, False), dict.fromkeys(actions, done), {a: {} for a in actions}
