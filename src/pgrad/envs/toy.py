"""A scripted environment whose returns can be worked out by hand, for tests.

Every episode lasts ``episode_length`` steps and pays ``reward`` each step, whatever the action.
The observation is the step index within the episode, so a critic that is a known function of
the observation gives known values. The last step ends the episode as ``terminated`` or as
``truncated`` (a time limit), so the two cases can be told apart. ``action="box"`` gives it a
continuous action in [-1, 1] (ignored too), for the off-policy algorithms.
"""

from __future__ import annotations

from typing import Any, Literal

import gymnasium as gym
import numpy as np


class ScriptedEnv(gym.Env):
    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        episode_length: int = 3,
        reward: float = 1.0,
        ending: Literal["terminated", "truncated"] = "terminated",
        data_set_mib: float = 0.0,
        action: Literal["discrete", "box"] = "discrete",
    ) -> None:
        self.episode_length = episode_length
        self.reward = reward
        self.ending = ending
        # A table the env reads but never changes (prices, a map): what an env holding a data set looks like.
        self.data_set = np.zeros(int(data_set_mib * 2**20 / 8), np.float64)
        self.observation_space = gym.spaces.Box(0.0, float(episode_length), shape=(1,), dtype=np.float32)
        self.action_space: gym.Space = (
            gym.spaces.Discrete(2) if action == "discrete" else gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        )
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        end = self.t >= self.episode_length
        terminated = end and self.ending == "terminated"
        truncated = end and self.ending == "truncated"
        return np.array([float(self.t)], np.float32), self.reward, terminated, truncated, {}
