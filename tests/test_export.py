"""pgrad export: the ONNX / TorchScript file acts exactly as ``predict`` (normaliser, squashing, rescaling inside).

``make setup`` installs the export extra (onnx, onnxruntime), so CI runs these; without it they skip.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from pgrad.api import PPO, SAC
from pgrad.cli import main

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

QUIET = {"tensorboard": False, "progress": False}
PPO_SMALL = {"num_steps": 64, "num_epochs": 2, "minibatch_size": 64}


def observations(agent, count=1000, seed=0):
    space = agent.observation_space
    space.seed(seed)
    return np.stack([space.sample() for _ in range(count)])


def onnx_actions(path, obs):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"observation": obs})[0]


def torchscript_actions(path, obs):
    with warnings.catch_warnings():  # torch.jit.load is deprecated in torch 2.10+, still what libtorch loads
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(path))
    return module(torch.from_numpy(obs)).numpy()


def test_cartpole_onnx_and_torchscript_equal_predict_exactly(tmp_path, capsys):
    run = tmp_path / "run"
    agent = PPO("CartPole-v1", config={"env": {"num_envs": 2}, "run": QUIET, "ppo": PPO_SMALL}, run_dir=run)
    agent.learn(512)
    obs = observations(agent)
    expected = agent.predict(obs)[0]
    assert 0.05 < expected.mean() < 0.95  # both actions occur: equality is not two constants agreeing

    assert main(["export", str(run), "--format", "onnx"]) == 0
    assert "exported onnx: " in capsys.readouterr().out
    exported = onnx_actions(run / "export" / "policy.onnx", obs)
    assert exported.dtype == np.int64 and exported.shape == (1000,)
    np.testing.assert_array_equal(exported, expected)

    assert main(["export", str(run), "--format", "torchscript", "--out", str(tmp_path / "p.pt")]) == 0
    np.testing.assert_array_equal(torchscript_actions(tmp_path / "p.pt", obs), expected)

    manifest = json.loads((run / "export" / "policy.onnx.json").read_text())
    assert manifest["source_checkpoint"] == str(agent.last_result.checkpoint)
    assert manifest["observation_space"]["shape"] == [4] and manifest["action_space"] == {
        "type": "Discrete",
        "n": 2,
        "start": 0,
    }
    assert manifest["pgrad_version"] and manifest["checkpoint_step"] == 512
    assert manifest["inside"] == {
        "obs_normalizer": False,
        "action_rescaling": False,
        "action_clipping": False,
        "deterministic": True,
    }


def test_pendulum_with_normalised_observations_equals_predict(tmp_path):
    """Box actions in [-2, 2], norm_obs: the exported file applies the frozen statistics and the rescaling."""
    config = {"env": {"num_envs": 2, "norm_obs": True}, "run": QUIET, "ppo": PPO_SMALL}
    agent = PPO("Pendulum-v1", config=config, run_dir=tmp_path / "run").learn(512)
    saved = agent.save(tmp_path / "saved")  # a saved agent exports too (its spaces come from spaces.json)
    obs = observations(agent)
    expected = agent.predict(obs)[0]
    assert np.abs(agent.policy.obs_normalizer.stats.mean).max() > 0.01
    assert main(["export", str(saved), "--format", "onnx"]) == 0
    exported = onnx_actions(saved / "export" / "policy.onnx", obs)
    assert exported.shape == (1000, 1) and exported.dtype == np.float32
    np.testing.assert_allclose(exported, expected, rtol=0, atol=1e-5)
    assert main(["export", str(saved), "--format", "torchscript"]) == 0
    np.testing.assert_allclose(torchscript_actions(saved / "export" / "policy.pt", obs), expected, rtol=0, atol=1e-5)
    # the normaliser matters here: without it the actions differ (the test would catch a missing one)
    agent.policy.obs_normalizer.enabled = False
    assert np.abs(agent.predict(obs)[0] - expected).max() > 1e-3


def test_squashed_actor_and_discrete_observations(tmp_path):
    sac = SAC(
        "Pendulum-v1",
        config={
            "env": {"num_envs": 1},
            "run": QUIET,
            "sac": {"loop": {"learning_starts": 50, "batch_size": 32, "buffer_size": 1000}},
        },
        run_dir=tmp_path / "sac",
        use_preset=False,
    ).learn(150)
    obs = observations(sac, 300)
    assert main(["export", str(tmp_path / "sac"), "--format", "onnx"]) == 0
    exported = onnx_actions(tmp_path / "sac" / "export" / "policy.onnx", obs)
    np.testing.assert_allclose(exported, sac.predict(obs)[0], rtol=0, atol=1e-5)

    frozen = PPO(
        "FrozenLake-v1", config={"env": {"num_envs": 2}, "run": QUIET, "ppo": PPO_SMALL}, run_dir=tmp_path / "fl"
    )
    frozen.learn(256)
    states = np.arange(16, dtype=np.int64)  # a Discrete observation: the graph one-hot encodes it
    assert main(["export", str(tmp_path / "fl"), "--format", "onnx"]) == 0
    exported = onnx_actions(tmp_path / "fl" / "export" / "policy.onnx", states)
    np.testing.assert_array_equal(exported, frozen.predict(states)[0])


def test_export_errors_are_one_line(tmp_path, capsys, monkeypatch):
    assert main(["export", str(tmp_path), "--format", "onnx"]) == 2
    assert "is neither a pgrad run folder (config.yaml) nor a saved agent (state.json)" in capsys.readouterr().err
    PPO("CartPole-v1", config={"env": {"num_envs": 2}, "run": QUIET, "ppo": PPO_SMALL}, run_dir=tmp_path / "r").learn(
        128
    )
    assert main(["export", str(tmp_path / "r"), "--format", "onnx", "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path} is a folder; name the file to write" in capsys.readouterr().err
    monkeypatch.setitem(__import__("sys").modules, "onnx", None)  # as if the export extra were not installed
    assert main(["export", str(tmp_path / "r"), "--format", "onnx"]) == 2
    assert capsys.readouterr().err == "pgrad: error: --format onnx needs onnx: pip install 'pgrad[export]'\n"
    assert not (tmp_path / "r" / "export" / "policy.onnx").exists()
