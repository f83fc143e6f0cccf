"""A custom environment for the library and custom-env tests, imported as ``corridor_env``.

Importing it registers ``Corridor-v0`` (Gymnasium's ``module:EnvId`` form). Its constructor takes no
``render_mode``, as many hand-written envs do not: ``pgrad eval --video`` must say so in one line.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class Corridor(gym.Env):
    """Walk right along a corridor of ``length`` cells: reward 1 at the end, -0.01 per step."""

    metadata = {"render_modes": []}

    def __init__(self, length: int = 5, slip: float = 0.0) -> None:
        self.length = length
        self.slip = slip
        self.observation_space = gym.spaces.Box(0.0, float(length), (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.position = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.position = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        move = 1 if int(action) == 1 else -1
        if self.slip and self.np_random.random() < self.slip:
            move = -move
        self.position = max(self.position + move, 0)
        done = self.position >= self.length
        return np.array([self.position], np.float32), 1.0 if done else -0.01, done, False, {}


def make_corridor(length: int = 5) -> gym.Env:
    """An annotated factory: importable as ``corridor_env:make_corridor``."""
    return Corridor(length)


if "Corridor-v0" not in gym.registry:
    gym.register("Corridor-v0", entry_point=Corridor, max_episode_steps=50)


class ClaimsToRender(Corridor):
    """Lists rgb_array in its metadata but its constructor takes no render_mode (a common slip)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}
