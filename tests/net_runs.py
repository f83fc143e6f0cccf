"""Shared by tests/test_dict_obs.py and tests/test_nets_custom.py: a tiny run trained N steps in one go and
N/2 + resume, compared tensor by tensor; and the exported ONNX file run against ``predict``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from pgrad.cli import main
from pgrad.policy import load_policy
from pgrad.runners import runner_for
from pgrad.runs import resolve_config

QUIET = ["run.progress=false", "run.tensorboard=false", "run.checkpoint_every=100000000", "guard.eval_every=0"]
ON_POLICY = {algo: [f"{algo}.num_steps=16"] for algo in ("ppo", "a2c")}
ON_POLICY["ppo"] += ["ppo.num_epochs=2", "ppo.minibatch_size=16"]
OFF_POLICY = {
    algo: [
        f"{algo}.network.hidden_sizes=[16, 16]",
        f"{algo}.loop.batch_size=16",
        f"{algo}.loop.learning_starts=32",
        f"{algo}.loop.log_every=64",
    ]
    for algo in ("sac", "td3", "ddpg")
}


def learner_tensors(runner: Any) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of the learner's modules, by qualified name."""
    return {
        f"{name}.{key}": value
        for name, module in runner.algo.modules().items()
        for key, value in module.state_dict().items()
    }


def resumed_equals_uninterrupted(algo: str, env_id: str, sets: list[str], total: int, root: Path) -> Path:
    """Train ``total`` steps in one run and ``total // 2`` + resume in another; assert every learner tensor is
    equal (the torso's included) and return the resumed run's folder."""
    settings = [*QUIET, "env.num_envs=2", *ON_POLICY.get(algo, []), *OFF_POLICY.get(algo, []), *sets]
    config, _ = resolve_config(algo, env_id, sets=settings, seed=1, total_steps=total, use_preset=False)
    runner = runner_for(config)
    uninterrupted = runner(config, root / "a", console=False)
    uninterrupted.train()
    runner(config, root / "b", console=False).train(stop_at_step=total // 2)
    resumed = runner(config, root / "b", resume=True, console=False)
    resumed.train()
    assert resumed.step == uninterrupted.step >= total
    expected, actual = learner_tensors(uninterrupted), learner_tensors(resumed)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    return root / "b"


def onnx_matches_predict(run: Path, observations: Any, feed: dict[str, np.ndarray]) -> np.ndarray:
    """Export ``run`` to ONNX (trusting its code: the test wrote it) and assert the file's actions equal
    ``predict``'s on ``observations`` (``feed``: the same batch as the graph's inputs): discrete actions exactly,
    continuous ones to 1e-5 (as tests/test_export.py: ONNX Runtime's tanh, matmul and convolution kernels round
    differently from NumPy's and torch's in the last bits); returns them."""
    import onnxruntime as ort

    assert main(["export", str(run), "--format", "onnx", "--trust-env-code"]) == 0
    policy, _, _ = load_policy(run, trust_env_code=True)
    expected = policy.predict(observations)
    session = ort.InferenceSession(str(run / "export" / "policy.onnx"), providers=["CPUExecutionProvider"])
    exported = session.run(None, feed)[0]
    assert exported.shape == expected.shape
    if expected.dtype.kind == "i":
        np.testing.assert_array_equal(exported, expected)
    else:
        np.testing.assert_allclose(exported, expected, rtol=0, atol=1e-5)
    return expected
