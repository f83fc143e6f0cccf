"""RND (issue 26, point 4): the pure functions against hand-computed values, its wiring into PPO (metrics, the
fixed target, the combined advantages), exact resume, image observations and the refusals."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from net_runs import QUIET, resumed_equals_uninterrupted
from pgrad.algos.ppo import PPO, PPOConfig
from pgrad.algos.rnd import (
    INT_ADVANTAGE_SHARE,
    INTRINSIC_REWARD,
    PREDICTOR_LOSS,
    RND,
    RNDConfig,
    RNDTargets,
    combine_advantages,
    forward_filter,
    intrinsic_gae,
    merge_moments,
    normalize_obs,
    prediction_error,
    predictor_loss,
)
from pgrad.cli import main
from pgrad.errors import ConfigError
from pgrad.estimators import gae
from pgrad.nets import ActionSpec, ImageShape, ObsLayout, ObsPart
from pgrad.rollout import Rollout
from pgrad.runners.on_policy import OnPolicyRunner
from pgrad.runs import resolve_config

RND_ON = ["ppo.rnd.enabled=true"]


# ---- pure functions ---------------------------------------------------------------------------------


def test_next_observations_are_normalised_and_clipped_to_five() -> None:
    out = normalize_obs(np.array([[3.0, -100.0, 0.5]]), np.array([1.0, 0.0, 0.5]), np.array([4.0, 1.0, 1.0]), 5.0)
    np.testing.assert_allclose(out, [[1.0, -5.0, 0.0]], atol=1e-6)  # (3 - 1) / 2; -100 clipped; at the mean
    assert out.dtype == np.float32


def test_running_moments_merge_to_those_of_all_rows() -> None:
    mean, var, count = merge_moments(np.zeros(1), np.ones(1), 0.0, np.array([[1.0], [3.0]]))
    assert (mean[0], var[0], count) == (2.0, 1.0, 2)
    mean, var, count = merge_moments(mean, var, count, np.array([[5.0]]))
    np.testing.assert_allclose([mean[0], var[0], count], [3.0, 8.0 / 3.0, 3.0])  # of 1, 3, 5
    assert merge_moments(mean, var, count, np.zeros((0, 1)))[2] == 3.0  # an empty batch changes nothing


def test_forward_filter_discounts_per_env_over_time_and_carries_its_state() -> None:
    # R_t = 0.5 R_{t-1} + r_t from R = 10 (env 0) and 0 (env 1): 6, 5, 5.5 and 1, 0.5, 0.25
    returns, state = forward_filter(np.array([[1.0, 1.0], [2.0, 0.0], [3.0, 0.0]]), np.array([10.0, 0.0]), 0.5)
    np.testing.assert_allclose(returns, [[6.0, 1.0], [5.0, 0.5], [5.5, 0.25]])
    np.testing.assert_allclose(state, [5.5, 0.25])


def test_intrinsic_gae_does_not_stop_at_an_episode_end() -> None:
    # 4 steps, one env, an episode ends (terminated) at step 1. gamma 0.5, lambda 0.5 (decay 0.25):
    # deltas r + 0.5 V' - V: 1 + 0.5 - 0.5 = 1, 0 + 0 - 1 = -1, 2 + 1 - 0 = 3, 1 + 0.5 - 2 = -0.5
    # A3 = -0.5, A2 = 3 - 0.125 = 2.875, A1 = -1 + 0.71875 = -0.28125, A0 = 1 - 0.0703125 = 0.9296875
    rewards = np.array([[1.0], [0.0], [2.0], [1.0]])
    values = np.array([[0.5], [1.0], [0.0], [2.0], [1.0]])
    advantages, returns = intrinsic_gae(rewards, values, 0.5, 0.5)
    np.testing.assert_allclose(advantages[:, 0], [0.9296875, -0.28125, 2.875, -0.5])
    np.testing.assert_allclose(returns[:, 0], [1.4296875, 0.71875, 2.875, 1.5])
    # the episodic GAE with the episode end cuts at step 1: A1 = -1 and A0 = 1 - 0.25 = 0.75
    ended = np.array([[False], [True], [False], [False]])
    episodic, _ = gae(rewards, values[:-1], values[1:], ended, np.zeros_like(ended), 0.5, 0.5)
    np.testing.assert_allclose(episodic[:2, 0], [0.75, -1.0])


def test_advantages_combine_with_their_weights_and_the_share_counts_valid_steps() -> None:
    ext, intrinsic = np.array([[1.0], [-2.0]]), np.array([[1.0], [1.0]])
    combined, share = combine_advantages(ext, intrinsic, 2.0, 1.0, np.array([[True], [True]]))
    np.testing.assert_allclose(combined[:, 0], [3.0, -3.0])  # 2 x 1 + 1, 2 x -2 + 1
    assert share == pytest.approx(2.0 / (2.0 + 4.0 + 2.0))
    assert combine_advantages(ext, intrinsic, 2.0, 1.0, np.array([[True], [False]]))[1] == pytest.approx(1.0 / 3.0)
    assert combine_advantages(ext * 0, intrinsic * 0, 2.0, 1.0, np.array([[True], [True]]))[1] == 0.0


def test_prediction_error_and_the_predictor_loss_on_the_kept_rows() -> None:
    error = prediction_error(torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    assert error.tolist() == [2.5, 1.0]  # (1 + 4) / 2, (1 + 1) / 2
    assert float(predictor_loss(error, torch.tensor([1.0, 0.0]))) == 2.5
    assert float(predictor_loss(error, torch.tensor([1.0, 1.0]))) == 1.75
    assert float(predictor_loss(error, torch.tensor([0.0, 0.0]))) == 0.0


def test_the_predictor_trains_on_update_proportion_of_the_minibatch() -> None:
    torch.manual_seed(0)
    rnd = RND(RNDConfig(enabled=True, update_proportion=0.25), 3, (8,), "tanh")
    obs, next_obs = torch.randn(64, 3), torch.randn(64, 3)
    targets = RNDTargets(next_obs, torch.zeros(64))
    _, stats = rnd.loss(obs, targets, torch.ones(64), 0.5, np.random.default_rng(7))
    keep = torch.from_numpy(np.random.default_rng(7).random(64) < 0.25).float()
    assert 0 < keep.sum() < 64
    expected = float((rnd.errors(next_obs).detach() * keep).sum() / keep.sum())
    assert float(stats[PREDICTOR_LOSS]) == pytest.approx(expected)


def tiny_rollout(terminated: np.ndarray) -> Rollout:
    rng = np.random.default_rng(0)
    steps, envs = terminated.shape
    return Rollout(
        obs=rng.normal(size=(steps + 1, envs, 3)).astype(np.float32),
        actions=np.zeros((steps, envs), np.int64),
        rewards=np.zeros((steps, envs), np.float32),
        terminated=terminated,
        truncated=np.zeros_like(terminated),
        valid=np.ones_like(terminated),
    )


def test_prepare_ignores_episode_ends_and_normalises_by_the_return_std() -> None:
    torch.manual_seed(0)
    rnd = RND(RNDConfig(enabled=True), 3, (8,), "tanh")
    state = {k: v.clone() for k, v in rnd.state_dict().items()}
    ended = np.array([[False, False], [True, False], [False, True], [False, False]])
    ext = torch.zeros(8)
    adv_a, targets_a, stats = rnd.prepare(tiny_rollout(ended), ext, 0.95, torch.device("cpu"))
    rnd.load_state_dict(state)
    rnd.filter_state = None
    adv_b, targets_b, _ = rnd.prepare(tiny_rollout(np.zeros_like(ended)), ext, 0.95, torch.device("cpu"))
    assert torch.equal(adv_a, adv_b) and torch.equal(targets_a.int_returns, targets_b.int_returns)
    # the return normaliser saw the forward-filtered raw errors; the rewards were divided by its std
    raw = rnd.errors(targets_a.next_obs).detach().double().numpy().reshape(4, 2)
    discounted, _ = forward_filter(raw, np.zeros(2), 0.99)
    _, var, _ = merge_moments(np.zeros(()), np.ones(()), 1e-4, discounted.reshape(-1))
    assert float(rnd.ret_var) == pytest.approx(float(var))
    assert stats[INTRINSIC_REWARD] == pytest.approx(float((raw / np.sqrt(var)).mean()), rel=1e-5)
    assert stats[INT_ADVANTAGE_SHARE] == 1.0  # the extrinsic advantages were all 0


# ---- PPO wiring -------------------------------------------------------------------------------------


def short_run(tmp_path: Path, env: str, sets: list[str], steps: int = 256) -> tuple[OnPolicyRunner, list[dict]]:
    settings = [*QUIET, "env.num_envs=2", "ppo.num_steps=32", "ppo.num_epochs=2", "ppo.minibatch_size=32", *sets]
    config, _ = resolve_config("ppo", env, sets=settings, seed=1, total_steps=steps, use_preset=False)
    runner = OnPolicyRunner(config, tmp_path / "run", console=False)
    runner.train()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    return runner, rows


def test_ppo_with_rnd_logs_its_metrics_and_keeps_the_target_fixed(tmp_path: Path) -> None:
    config, _ = resolve_config("ppo", "CartPole-v1", sets=[*QUIET, *RND_ON], seed=1, total_steps=64, use_preset=False)
    torch.manual_seed(3)
    target = {
        k: v.clone() for k, v in PPO(config.algo_config, 4, ActionSpec("discrete", 2)).rnd.target.state_dict().items()
    }  # type: ignore[union-attr]
    runner, rows = short_run(tmp_path, "CartPole-v1", RND_ON)
    for name in (INTRINSIC_REWARD, PREDICTOR_LOSS, INT_ADVANTAGE_SHARE, "rnd/int_value_loss"):
        assert all(np.isfinite(row[name]) for row in rows), name
    assert all(0.0 < row[INT_ADVANTAGE_SHARE] < 1.0 for row in rows)
    rnd = runner.algo.rnd
    assert rnd is not None and runner.algo.gradient_backend == "autograd"
    assert all(not p.requires_grad for p in rnd.target.parameters())
    assert all(p.grad is None for p in rnd.target.parameters())
    assert float(rnd.obs_count) > 256  # every next observation was counted
    assert target.keys() == rnd.target.state_dict().keys()


def test_ppo_without_rnd_has_no_rnd_module_or_metrics(tmp_path: Path) -> None:
    runner, rows = short_run(tmp_path, "CartPole-v1", [])
    assert runner.algo.rnd is None and "rnd" not in runner.algo.modules()
    assert not any(key.startswith("rnd/") for key in rows[-1])


def test_rnd_resume_is_bit_exact(tmp_path: Path) -> None:
    # Predictor, target, intrinsic critic and both normalisers (module buffers) are equal bit for bit...
    resumed_equals_uninterrupted("ppo", "CartPole-v1", RND_ON, 256, tmp_path)

    # ...and so is the forward filter's per-env state, saved in the learner's state
    def saved(run: str) -> dict:
        return json.loads((tmp_path / run / "checkpoints" / "step_0000000256" / "state.json").read_text())["algo_state"]

    assert saved("a") == saved("b") and len(saved("a")["rnd_filter"]) == 2


def test_rnd_uses_small_cnns_for_image_observations(tmp_path: Path) -> None:
    sets = [*RND_ON, "ppo.network.shared_network=true"]
    runner, rows = short_run(tmp_path, "pgrad.envs.toy:BrightQuadrantEnv", sets, steps=128)
    rnd = runner.algo.rnd
    assert rnd is not None
    assert any(isinstance(m, torch.nn.Conv2d) for m in rnd.predictor.modules())
    assert any(isinstance(m, torch.nn.Conv2d) for m in rnd.target.modules())
    assert np.isfinite(rows[-1][PREDICTOR_LOSS])
    image = ImageShape(1, 36, 36)
    rnd_image = RND(RNDConfig(enabled=True, feature_dim=16), image, (8,), "tanh")
    assert rnd_image.errors(torch.zeros(5, 36 * 36)).shape == (5,)


# ---- refusals ---------------------------------------------------------------------------------------


def test_rnd_with_another_algorithm_is_one_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["train", "trpo", "--env", "CartPole-v1", "--set", "rnd.enabled=true", "--run-dir", str(tmp_path / "r")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "unknown section 'rnd'" in err and "trpo" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"gradient_backend": "numpy"}, r"^ppo\.gradient_backend must be 'auto' or 'autograd' with rnd\.enabled"),
        ({"rnd": {"enabled": True, "int_gamma": 1.5}}, r"^ppo\.rnd\.int_gamma must be in \[0, 1\]"),
        ({"rnd": {"enabled": True, "update_proportion": 0.0}}, r"^ppo\.rnd\.update_proportion must be in \(0, 1\]"),
        ({"rnd": {"enabled": True, "mlp_sizes": [0]}}, r"^ppo\.rnd\.mlp_sizes"),
    ],
)
def test_bad_rnd_settings_are_refused(changes: dict, message: str) -> None:
    base = {"rnd": {"enabled": True}} | changes
    with pytest.raises(ConfigError, match=message):
        PPOConfig(**base)


def test_rnd_refuses_dict_observations() -> None:
    layout = ObsLayout((ObsPart("a", (3,), 0, False),))
    with pytest.raises(ConfigError, match=r"^ppo\.rnd\.enabled takes vector or image observations"):
        PPO(dataclasses.replace(PPOConfig(), rnd=RNDConfig(enabled=True)), layout, ActionSpec("discrete", 2))


def test_rnd_with_a_recurrent_network_is_accepted() -> None:
    # (refused before issue 26's RND extension; tests/test_rnd_ext.py trains and resumes it)
    config = PPOConfig(rnd={"enabled": True}, network={"recurrent": "lstm"}, num_steps=128, minibatch_size=64)
    assert config.rnd.enabled and config.network.recurrent == "lstm"
