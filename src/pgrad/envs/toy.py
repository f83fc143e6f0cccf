"""Small environments for tests: a scripted one whose returns can be worked out by hand, and a
tiny image task (``BrightQuadrantEnv``).

``ScriptedEnv``: every episode lasts ``episode_length`` steps and pays ``reward`` each step, whatever the action.
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
    """A deterministic env whose rewards, terminations and truncations follow a script (for tests)."""

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
        """Restarts the script: observation [0]."""
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Observation [t] and the scripted reward; the episode ends (terminated or truncated, as scripted) at
        ``episode_length`` steps."""
        self.t += 1
        end = self.t >= self.episode_length
        terminated = end and self.ending == "terminated"
        truncated = end and self.ending == "truncated"
        return np.array([float(self.t)], np.float32), self.reward, terminated, truncated, {}


class BrightQuadrantEnv(gym.Env):
    """The smallest image task: a ``size`` x ``size`` grayscale image (HxWx1 uint8) with one bright
    quadrant, drawn at random every step; choosing that quadrant (actions 0-3: top-left, top-right,
    bottom-left, bottom-right) pays 1, anything else 0. Episodes last ``episode_length`` steps, so a
    random policy returns ``episode_length / 4`` and a perfect one ``episode_length``. Only a policy
    that reads pixels can beat chance: the CNN's learning test. 36 pixels is the Nature CNN's minimum.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, size: int = 36, episode_length: int = 8) -> None:
        self.size = size
        self.episode_length = episode_length
        self.observation_space = gym.spaces.Box(0, 255, (size, size, 1), np.uint8)
        self.action_space = gym.spaces.Discrete(4)
        self.t = 0
        self.quadrant = 0

    def _image(self) -> np.ndarray:
        self.quadrant = int(self.np_random.integers(4))
        half = self.size // 2
        row, col = divmod(self.quadrant, 2)
        image = np.zeros((self.size, self.size, 1), np.uint8)
        image[row * half : (row + 1) * half, col * half : (col + 1) * half] = 255
        return image

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Restarts the episode with a fresh image."""
        super().reset(seed=seed)
        self.t = 0
        return self._image(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Pays 1 when the action names the bright quadrant, else 0; a fresh image; truncated after
        ``episode_length`` steps."""
        reward = float(int(action) == self.quadrant)
        self.t += 1
        return self._image(), reward, False, self.t >= self.episode_length, {}
