"""Train a small policy, export it to ONNX, and run it with onnxruntime alone, as a deployment would.

The ONNX file takes the raw observation (float32 ``[batch, *obs_shape]``) and returns the action ``env.step``
takes: observation normalisation, the actor, the deterministic action and the action rescaling are inside it.
Needs the ``export`` extra (``pip install 'pgrad[export]'``: onnx, onnxruntime).
Runs in a few seconds: ``python examples/onnx_deploy.py``.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from pgrad.api import PPO
from pgrad.export import export

if __name__ == "__main__":
    # Pendulum: a continuous action, with the observation normaliser on, so the file has something to carry.
    model = PPO(
        "Pendulum-v1",
        seed=1,
        run_dir="runs/example-onnx",
        use_preset=False,
        config={
            "env": {"num_envs": 4, "norm_obs": True},
            "ppo": {"num_steps": 64, "minibatch_size": 64, "num_epochs": 2},
            "run": {"tensorboard": False},
        },
    )
    model.learn(2048)
    onnx_file, manifest = export(model.run_dir, "onnx")  # what `pgrad export RUN_DIR --format onnx` writes
    print(f"exported {onnx_file} (manifest {manifest.name})")

    import onnxruntime as ort  # the deployment side needs only onnxruntime and numpy

    session = ort.InferenceSession(str(onnx_file))
    env = gym.make("Pendulum-v1")
    obs, _ = env.reset(seed=0)
    largest_gap = 0.0
    for _ in range(200):
        action = session.run(None, {"observation": obs[None].astype(np.float32)})[0][0]
        expected, _ = model.predict(obs)
        largest_gap = max(largest_gap, float(np.abs(action - expected).max()))
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            obs, _ = env.reset()
    print(f"200 steps driven by onnxruntime; largest difference from predict(): {largest_gap:.2e}")
    assert largest_gap < 1e-4
