"""A custom feature extractor on a Dict-observation env: one small encoder per key (SB3's BaseFeaturesExtractor
contract), a GELU MLP on top, trained with PPO, exported to ONNX with one input per key, and checked against
``predict``. Needs the ``export`` extra (onnx, onnxruntime). Runs in a few seconds:
``python examples/custom_torso.py``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from pgrad.api import PPO
from pgrad.export import export


class ReachGoal(gym.Env):
    """A goal-conditioned toy: observation {'position', 'goal'}; reward 1 for stepping towards the goal."""

    def __init__(self) -> None:
        box = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.observation_space = gym.spaces.Dict({"position": box, "goal": box})
        self.action_space = gym.spaces.Discrete(2)  # 0: left, 1: right (along the first axis)

    def _obs(self) -> dict[str, np.ndarray]:
        return {key: self.np_random.uniform(-1, 1, 2).astype(np.float32) for key in ("position", "goal")}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.t, self.obs = 0, self._obs()
        return self.obs, {}

    def step(self, action: int) -> tuple[Any, float, bool, bool, dict]:
        towards = int(self.obs["goal"][0] > self.obs["position"][0])
        self.t, self.obs = self.t + 1, self._obs()
        return self.obs, float(action == towards), False, self.t >= 20, {}


class KeyEncoder(nn.Module):
    """One Linear + ReLU per key, concatenated, then a Linear to ``features_dim`` (what the heads sit on)."""

    def __init__(self, observation_space: gym.spaces.Dict, features_dim: int = 16) -> None:
        super().__init__()
        self.features_dim = features_dim  # the contract: an int attribute, the width forward returns
        self.encoders = nn.ModuleDict(
            {key: nn.Sequential(nn.Linear(space.shape[0], 8), nn.ReLU()) for key, space in observation_space.items()}
        )
        self.out = nn.Linear(8 * len(self.encoders), features_dim)

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        encoded = [encoder(obs[key]) for key, encoder in self.encoders.items()]
        return torch.relu(self.out(torch.cat(encoded, dim=1)))


if __name__ == "__main__":
    model = PPO(
        ReachGoal,
        seed=1,
        run_dir="runs/example-custom-torso",
        config={
            "env": {"num_envs": 4},
            "ppo": {
                "num_steps": 64,
                "minibatch_size": 64,
                "network": {"torso": KeyEncoder, "torso_kwargs": {"features_dim": 16}, "activation": "GELU"},
            },
            "run": {"tensorboard": False},
        },
    )
    print("network.torso:", model.config.algo_config.network.torso)  # __main__:KeyEncoder
    model.learn(4096)
    # trust_env_code: exporting builds the network, which imports the torso's module (here: this script)
    onnx_file, _ = export(model.run_dir, "onnx", trust_env_code=True)

    import onnxruntime as ort

    rng = np.random.default_rng(0)
    batch = {key: rng.uniform(-1, 1, (100, 2)).astype(np.float32) for key in ("position", "goal")}
    session = ort.InferenceSession(str(onnx_file))
    onnx_actions = session.run(None, batch)[0]  # one graph input per Dict key, named by the key
    actions, _ = model.predict(batch)
    assert (onnx_actions == actions).all()
    towards = (actions == (batch["goal"][:, 0] > batch["position"][:, 0])).mean()
    print(f"ONNX equals predict on {len(actions)} observations; steps towards the goal: {towards:.0%}")
