"""RND extended (issue 26, point 4): A2C's intrinsic return and combined advantages against a hand computation, RND
rows aligned with recurrent PPO's sequences, and bit-exact resume of RND with a recurrent torso, with the CNN torso on
images, and with A2C (feed-forward and recurrent)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from net_runs import resumed_equals_uninterrupted
from pgrad.algos.a2c import A2C, A2CConfig
from pgrad.algos.ppo import PPO, PPOConfig
from pgrad.algos.rnd import RNDConfig, normalize_obs
from pgrad.config import NetworkConfig
from pgrad.errors import ConfigError
from pgrad.nets import ActionSpec
from pgrad.rollout import Rollout
from pgrad.sequences import SequenceBatch


def zero_last_linear(module: torch.nn.Module) -> None:
    """The module's last Linear layer zeroed: its output is 0 for every input."""
    last = [m for m in module.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()


def test_a2c_intrinsic_return_and_combined_advantages_by_hand() -> None:
    torch.manual_seed(0)
    rnd_config = RNDConfig(enabled=True, int_gamma=0.9, ext_coef=2.0, int_coef=1.0, feature_dim=8, mlp_sizes=(8,))
    config = A2CConfig(num_steps=3, gamma=0.5, gae_lambda=1.0, network=NetworkConfig(hidden_sizes=(8,)), rnd=rnd_config)
    a2c = A2C(config, 3, ActionSpec("discrete", 2))
    assert a2c.rnd is not None and a2c.gradient_backend == "autograd"
    zero_last_linear(a2c.model.value_head)  # V_ext = 0
    zero_last_linear(a2c.rnd.int_critic)  # V_int = 0
    obs = np.random.default_rng(4).normal(size=(4, 1, 3)).astype(np.float32)
    rollout = Rollout(  # the episode terminates at t = 1; t = 2 is the autoreset step
        obs=obs,
        actions=np.array([[0], [1], [0]]),
        rewards=np.array([[1.0], [1.0], [0.0]], np.float32),
        terminated=np.array([[False], [True], [False]]),
        truncated=np.zeros((3, 1), bool),
        valid=np.array([[True], [True], [False]]),
    )
    batch, stats = a2c.prepare(rollout)
    # by hand: the next observations' moments merged into (mean 0, var 1, count 1e-4) (Chan et al.), normalised
    rows = obs[1:, 0].astype(np.float64)
    n, count = 3, 1e-4
    total = count + n
    mean = rows.mean(0) * n / total
    var = (count + rows.var(0) * n + rows.mean(0) ** 2 * count * n / total) / total
    normalised = np.clip((rows - mean) / np.sqrt(var + 1e-8), -5.0, 5.0).astype(np.float32)
    with torch.no_grad():
        x = torch.from_numpy(normalised)
        raw = ((a2c.rnd.predictor(x) - a2c.rnd.target(x)) ** 2).mean(-1).double().numpy()
    # R_t = 0.9 R_{t-1} + raw_t from 0; its variance merged likewise; r = raw / std
    filtered = np.array([raw[0], 0.9 * raw[0] + raw[1], 0.81 * raw[0] + 0.9 * raw[1] + raw[2]])
    ret_var = (count + filtered.var() * n + filtered.mean() ** 2 * count * n / total) / total
    r = raw / math.sqrt(ret_var)
    # non-episodic: the intrinsic return crosses the episode end at t = 1 (lambda = 1, V_int = 0)
    int_return = np.array([r[0] + 0.9 * r[1] + 0.81 * r[2], r[1] + 0.9 * r[2], r[2]])
    # extrinsic: A_0 = 1 + 0.5 x 1 (terminated at t = 1), A_1 = 1; combined 2 A_ext + 1 A_int, 0 on the reset step
    expected = np.array([2 * 1.5 + int_return[0], 2 * 1.0 + int_return[1], 0.0])
    assert a2c.rnd_targets is not None
    np.testing.assert_allclose(a2c.rnd_targets[1].int_returns.numpy(), int_return, rtol=1e-5)
    np.testing.assert_allclose(batch.advantages.numpy(), expected, rtol=1e-5)
    assert stats["rnd/intrinsic_reward"] == pytest.approx(r[:2].mean(), rel=1e-5)
    # the update trains the predictor and V_int in the same step, and logs their losses
    from pgrad.algos.contract import UpdateContext

    before = [p.clone() for p in a2c.rnd.predictor.parameters()]
    metrics = a2c.update(batch, UpdateContext(progress=0.0, lr_scale=1.0, rng=np.random.default_rng(0)))
    assert np.isfinite(metrics["rnd/predictor_loss"]) and np.isfinite(metrics["rnd/int_value_loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, a2c.rnd.predictor.parameters(), strict=True))


def test_rnd_rows_follow_recurrent_ppo_sequences_through_the_minibatches() -> None:
    """Each minibatch's RND rows are the next observations of its own sequences' steps: within a sequence the next
    observation of step l is the observation of step l + 1."""
    torch.manual_seed(0)
    network = NetworkConfig(hidden_sizes=(8,), recurrent="gru", recurrent_size=4, sequence_length=4)
    config = PPOConfig(num_steps=8, minibatch_size=8, num_epochs=1, network=network, rnd=RNDConfig(enabled=True))
    ppo = PPO(config, 3, ActionSpec("discrete", 2))
    rng = np.random.default_rng(1)
    starts = np.zeros((9, 3), bool)
    starts[0] = True
    rollout = Rollout(
        obs=rng.normal(size=(9, 3, 3)).astype(np.float32),
        actions=rng.integers(0, 2, size=(8, 3)),
        rewards=np.zeros((8, 3), np.float32),
        terminated=np.zeros((8, 3), bool),
        truncated=np.zeros((8, 3), bool),
        valid=np.ones((8, 3), bool),
        states=np.zeros((8, 3, ppo.state_size), np.float32),
        episode_starts=starts,
    )
    batch, stats = ppo.prepare(rollout)
    assert isinstance(batch, SequenceBatch) and len(batch) == 6 and "rnd/intrinsic_reward" in stats
    assert ppo.rnd is not None
    mean, var = ppo.rnd.obs_mean.numpy(), ppo.rnd.obs_var.numpy()
    seen = 0
    for minibatch, extra in ppo._minibatches(batch, np.random.default_rng(2)):
        assert extra is not None and extra.next_obs.shape == (2, 4, 3)
        expected = normalize_obs(minibatch.obs[:, 1:].numpy().astype(np.float64), mean, var, 5.0)
        np.testing.assert_array_equal(extra.next_obs[:, :-1].numpy(), expected)
        seen += len(minibatch)
    assert seen == 6


@pytest.mark.parametrize(
    ("algo", "env_id", "sets", "total"),
    [
        (
            "ppo",
            "CartPole-v1",
            [
                "env.mask_velocity=true",
                "network.recurrent=gru",
                "network.recurrent_size=8",
                "network.sequence_length=8",
            ],
            128,
        ),
        ("ppo", "pgrad.envs.toy:BrightQuadrantEnv", ["ppo.network.shared_network=true", "rnd.feature_dim=16"], 64),
        ("a2c", "CartPole-v1", [], 128),
        ("a2c", "CartPole-v1", ["env.mask_velocity=true", "network.recurrent=lstm", "network.recurrent_size=8"], 128),
    ],
    ids=["ppo-gru", "ppo-cnn", "a2c", "a2c-lstm"],
)
def test_rnd_resumes_bit_exactly(tmp_path, algo: str, env_id: str, sets: list[str], total: int) -> None:
    run = resumed_equals_uninterrupted(
        algo, env_id, ["rnd.enabled=true", "network.hidden_sizes=[16]", *sets], total, tmp_path
    )
    assert "rnd_filter" in (run / "checkpoints").glob("step_*/state.json").__next__().read_text()


def test_a2c_rnd_refusals() -> None:
    with pytest.raises(ConfigError, match=r"^a2c\.gradient_backend must be 'auto' or 'autograd' with rnd\.enabled"):
        A2CConfig(gradient_backend="numpy", rnd={"enabled": True})
    with pytest.raises(ConfigError, match=r"^a2c\.rnd\.int_gamma must be in \[0, 1\]"):
        A2CConfig(rnd={"enabled": True, "int_gamma": 2.0})
