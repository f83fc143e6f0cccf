"""Tiny Dict-observation environments and feature extractors for the network tests, imported as ``dict_envs``.

``VectorDict``: two vector keys, two actions; the reward is 1 when the action is the sign of ``target[0]``.
``ImageDict``: an HxWxC uint8 image (36x36x3, the Nature CNN's smallest) and a vector key, one continuous
action; the reward is -(a - speed[0])^2. Both end episodes after 16 steps and cost microseconds a step.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

EPISODE = 16


class VectorDict(gym.Env[dict[str, np.ndarray], int]):
    """Dict{'target': Box(2), 'position': Box(3)} observations, Discrete(2) actions."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Dict(
            {
                "target": gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
                "position": gym.spaces.Box(-1.0, 1.0, (3,), np.float32),
            }
        )
        self.action_space = gym.spaces.Discrete(2)
        self.t = 0

    def _obs(self) -> dict[str, np.ndarray]:
        return {
            "target": self.np_random.uniform(-1, 1, 2).astype(np.float32),
            "position": self.np_random.uniform(-1, 1, 3).astype(np.float32),
        }

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.t = 0
        self.last = self._obs()
        return self.last, {}

    def step(self, action: int) -> tuple[Any, float, bool, bool, dict]:
        reward = float(int(action) == int(self.last["target"][0] > 0))
        self.t += 1
        self.last = self._obs()
        return self.last, reward, False, self.t >= EPISODE, {}


class ImageDict(gym.Env[dict[str, np.ndarray], np.ndarray]):
    """Dict{'image': Box(0, 255, (36, 36, 3), uint8), 'speed': Box(2)} observations, Box(-1, 1, (1,)) actions."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Dict(
            {
                "image": gym.spaces.Box(0, 255, (36, 36, 3), np.uint8),
                "speed": gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
            }
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.t = 0

    def _obs(self) -> dict[str, np.ndarray]:
        return {
            "image": self.np_random.integers(0, 256, (36, 36, 3), dtype=np.uint8),
            "speed": self.np_random.uniform(-1, 1, 2).astype(np.float32),
        }

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.t = 0
        self.last = self._obs()
        return self.last, {}

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, bool, dict]:
        reward = -float((np.asarray(action).reshape(-1)[0] - self.last["speed"][0]) ** 2)
        self.t += 1
        self.last = self._obs()
        return self.last, reward, False, self.t >= EPISODE, {}


def _flat_size(space: gym.Space) -> int:
    if isinstance(space, gym.spaces.Dict):
        return sum(_flat_size(sub) for sub in space.spaces.values())
    if isinstance(space, gym.spaces.Discrete):
        return int(space.n)
    return int(np.prod(space.shape))


class TinyExtractor(nn.Module):
    """SB3's BaseFeaturesExtractor contract: (observation_space, features_dim) -> features_dim wide features,
    for a Box or a Dict space (its keys flattened and concatenated, then Linear + GELU)."""

    def __init__(self, observation_space: gym.Space, features_dim: int = 8) -> None:
        super().__init__()
        self.features_dim = features_dim
        self.linear = nn.Linear(_flat_size(observation_space), features_dim)

    def forward(self, obs: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        if isinstance(obs, dict):
            obs = torch.cat([value.flatten(1) for value in obs.values()], dim=1)
        return nn.functional.gelu(self.linear(obs.flatten(1)))


class Spy(TinyExtractor):
    """TinyExtractor that keeps the last observation it received (``seen``) and the space it was built with."""

    def __init__(self, observation_space: gym.Space, features_dim: int = 4) -> None:
        super().__init__(observation_space, features_dim)
        self.space = observation_space
        self.seen: Any = None

    def forward(self, obs: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        self.seen = obs
        return super().forward(obs)


class NoFeaturesDim(nn.Module):
    """A torso that forgets to set features_dim."""

    def __init__(self, observation_space: gym.Space) -> None:
        super().__init__()
        self.linear = nn.Linear(_flat_size(observation_space), 4)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.linear(obs.flatten(1))


class WrongWidth(TinyExtractor):
    """A torso whose output is one column narrower than its features_dim says."""

    def forward(self, obs: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        return super().forward(obs)[:, :-1]


class VectorBoxDict(VectorDict):
    """VectorDict with one continuous action in [-1, 1] (for SAC, TD3 and DDPG): reward -(a - target[0])^2."""

    def __init__(self) -> None:
        super().__init__()
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        reward = -float((np.asarray(action).reshape(-1)[0] - self.last["target"][0]) ** 2)
        self.t += 1
        self.last = self._obs()
        return self.last, reward, False, self.t >= EPISODE, {}
