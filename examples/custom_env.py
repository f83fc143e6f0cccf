"""Train PPO on your own Gymnasium environment, then act with the trained agent.

A custom env is any ``gymnasium.Env`` with ``Box`` or ``Discrete`` spaces. Passed to the Python API as a class
or factory (here) it is called once per vector-env copy, with ``env_kwargs``. On the command line the same env is
``--env examples.custom_env:Corridor`` or ``--env examples.custom_env:make_corridor`` (the module importable, e.g.
on ``PYTHONPATH``).
Runs in a few seconds: ``python examples/custom_env.py``.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from pgrad.api import PPO


class Corridor(gym.Env):
    """Walk right along a corridor of ``length`` cells: +1 at the end, -0.01 per step elsewhere."""

    def __init__(self, length: int = 6) -> None:
        self.length = length
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(2)  # 0: left, 1: right
        self.position = 0

    def _obs(self) -> np.ndarray:
        return np.array([self.position / self.length], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.position = 0
        return self._obs(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.position = max(0, self.position + (1 if action == 1 else -1))
        reached = self.position >= self.length
        return self._obs(), 1.0 if reached else -0.01, reached, False, {}


def make_corridor(length: int = 6) -> gym.Env:
    """A factory: wrappers go here (a time limit makes long episodes truncated, and bootstrapped)."""
    return gym.wrappers.TimeLimit(Corridor(length), max_episode_steps=50)


if __name__ == "__main__":
    model = PPO(
        make_corridor,
        env_kwargs={"length": 6},
        seed=1,
        run_dir="runs/example-corridor",
        config={
            "env": {"num_envs": 4},
            "ppo": {"num_steps": 64, "minibatch_size": 64, "num_epochs": 4},
            "run": {"tensorboard": False},
        },
    )
    model.learn(4096)

    env = Corridor(length=6)
    obs, _ = env.reset(seed=0)
    steps, done = 0, False
    while not done and steps < 50:
        action, _ = model.predict(obs)  # deterministic by default
        obs, reward, done, _, _ = env.step(int(action))
        steps += 1
    print(f"trained {model.num_timesteps} steps; the greedy policy walks the corridor in {steps} steps")
