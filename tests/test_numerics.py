"""The shared PPO numerics (pgrad.numerics) and what both families take from them: hand values, the
one whitening convention against NumPy, token GAE equal to the environments' GAE, and the lm_ppo
vf_coef conversion of run folders written before the value loss lost its 1/2."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pgrad.algos.upgrade import upgrade_algo_section, upgrade_saved_section
from pgrad.estimators import gae
from pgrad.lm.losses import token_gae
from pgrad.numerics import clipped_surrogate, masked_mean, masked_whiten, value_clip_fraction, value_loss
from pgrad.runs import load_run_config, resolve_config

OLD_LM_RUN = Path(__file__).parent / "data" / "lm-ppo-d46c705"  # config.yaml as commit d46c705 wrote it


@pytest.mark.parametrize("shape", [(1,), (1, 1)])  # an env step [N] or a token [B, T]: the same call
def test_clipped_ratio_with_positive_advantage_has_zero_gradient(shape):
    # The guide's value: ratio 1.3, eps 0.2, A = +1 -> min(1.3, 1.2) = 1.2, which does not depend on theta.
    log_probs = torch.full(shape, math.log(1.3), requires_grad=True)
    zeros, ones = torch.zeros(shape), torch.ones(shape)
    surrogate = clipped_surrogate(log_probs, zeros, ones, ones, clip_eps=0.2)
    (gradient,) = torch.autograd.grad(surrogate.loss, log_probs)
    assert gradient.abs().max().item() == 0.0
    assert surrogate.loss.item() == pytest.approx(-1.2)
    assert surrogate.clip_fraction.item() == 1.0
    assert surrogate.approx_kl.item() == pytest.approx(0.3 - math.log(1.3), rel=1e-5)  # (r - 1) - log r
    # the same ratio with A = -1 is on the unclipped branch: dL/dlog pi = -A r = 1.3
    (gradient,) = torch.autograd.grad(clipped_surrogate(log_probs, zeros, -ones, ones, 0.2).loss, log_probs)
    assert gradient.item() == pytest.approx(1.3)


def test_surrogate_padding_with_garbage_log_probs_changes_nothing():
    # log-probs of 1000 at padding would give exp(1000) = inf and inf x 0 = NaN if the log-ratio were not masked
    logp, old = torch.tensor([[-1.0, 1000.0]]), torch.tensor([[-1.2, -5.0]])
    mask, advantages = torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 3.0]])
    padded = clipped_surrogate(logp, old, advantages, mask, 0.2)
    alone = clipped_surrogate(logp[:, :1], old[:, :1], advantages[:, :1], mask[:, :1], 0.2)
    assert padded.loss.item() == alone.loss.item() == pytest.approx(-2.0 * min(math.exp(0.2), 1.2))
    assert padded.approx_kl.item() == alone.approx_kl.item() and padded.ratio[0, 1].item() == 1.0


def test_whitening_is_numpys_sample_std_over_the_valid_entries():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(4, 6))
    mask = rng.random((4, 6)) < 0.6
    valid = x[mask]
    expected = (valid - valid.mean()) / (valid.std(ddof=1) + 1e-8)
    white = masked_whiten(torch.from_numpy(x), torch.from_numpy(mask.astype(np.float64)))
    np.testing.assert_allclose(white.numpy()[mask], expected, rtol=1e-12)
    assert (white.numpy()[~mask] == 0.0).all()
    # population std (ddof 0) would be off by sqrt(n / (n - 1)): the convention is not a rounding detail
    assert not np.allclose(white.numpy()[mask], (valid - valid.mean()) / valid.std(ddof=0), rtol=1e-3)


def test_value_loss_has_no_half_and_clips_around_the_old_value():
    values, returns, mask = torch.tensor([1.0, 3.0, 50.0]), torch.tensor([0.0, 1.0, 0.0]), torch.tensor([1.0, 1.0, 0.0])
    assert value_loss(values, returns, mask).item() == pytest.approx((1.0 + 4.0) / 2)  # E[(V - R)^2]
    # clip 0.5 around V_old = [0, 2.8]: V_clip = [0.5, 3.0]; max((1)^2, 0.5^2) = 1, max(4, 4) = 4
    old = torch.tensor([0.0, 2.8, 0.0])
    assert value_loss(values, returns, mask, old_values=old, clip_vf=0.5).item() == pytest.approx(2.5)
    # V_old = [2, 1]: V_clip = [1.5, 1.5] -> (1.5)^2 = 2.25 > 1 and (0.5)^2 = 0.25 < 4: mean(2.25, 4) = 3.125
    old = torch.tensor([2.0, 1.0, 0.0])
    assert value_loss(values, returns, mask, old_values=old, clip_vf=0.5).item() == pytest.approx(3.125)
    assert value_clip_fraction(values, old, mask, 0.5).item() == 1.0
    with pytest.raises(ValueError, match="old_values"):
        value_loss(values, returns, mask, clip_vf=0.5)


def test_masked_mean_over_a_dimension_and_of_nothing():
    values, mask = torch.tensor([[1.0, 3.0, 9.0], [2.0, 7.0, 7.0]]), torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert masked_mean(values, mask).item() == 2.0
    assert masked_mean(values, mask, dim=1).tolist() == [2.0, 0.0]  # a row with no valid entry: 0, not NaN


def test_token_gae_is_the_environments_gae_over_the_transposed_tokens():
    # Three responses of 4, 2 and 1 tokens; each ends (terminates) after its last real token.
    rng = np.random.default_rng(1)
    lengths = np.array([4, 2, 1])
    mask = (np.arange(4) < lengths[:, None]).astype(np.float64)
    rewards, values = rng.normal(size=(3, 4)) * mask, rng.normal(size=(3, 4)) * mask
    advantages, returns = token_gae(
        torch.from_numpy(rewards), torch.from_numpy(values), torch.from_numpy(mask), 0.9, 0.8
    )
    # the environments' estimator, time-major: V(s_{t+1}) the next token's value (0 after the last one)
    next_values = np.concatenate([values[:, 1:], np.zeros((3, 1))], 1)
    terminated = (np.arange(4) == lengths[:, None] - 1) & (mask > 0)
    env_adv, env_ret = gae(rewards.T, values.T, next_values.T, terminated.T, np.zeros((4, 3), bool), 0.9, 0.8)
    np.testing.assert_allclose(advantages.numpy(), env_adv.T * mask, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(returns.numpy(), env_ret.T * mask, rtol=1e-12, atol=1e-12)
    # and the guide's value: rewards [1, 1, 1], V = 0, gamma = lambda = 0.5, terminated at the last token
    ones, zeros = torch.ones(1, 3), torch.zeros(1, 3)
    assert token_gae(ones, zeros, ones, 0.5, 0.5)[0][0, 0].item() == pytest.approx(1.3125)


# ---- lm_ppo's vf_coef: the 1/2 moved out of the value loss ----------------------------------------


def test_halving_vf_coef_gives_the_old_loss_bit_for_bit():
    # old: vf_coef x (0.5 x E[.]); new: (vf_coef / 2) x E[.]; scaling by 2 is exact in binary floating point
    mse = torch.rand(1000, dtype=torch.float32) * 10
    for vf_coef in (0.1, 0.3, 0.7, 1.0):
        assert torch.equal(vf_coef * (0.5 * mse), (vf_coef / 2) * mse)


def test_an_old_lm_ppo_section_is_converted_and_a_current_one_is_not():
    old = {"vf_coef": 0.3, "clip_vf": 0.2}
    # (a folder saved before loss_type ran the token mean: it reads as that, not as GRPO's new default)
    expected = {"vf_coef": 0.15, "clip_vf": 0.2, "version": 2, "loss_type": "token_mean"}
    assert upgrade_saved_section("lm_ppo", old) == expected
    assert old == {"vf_coef": 0.3, "clip_vf": 0.2}  # the input is not modified
    current = {"vf_coef": 0.3, "version": 2, "loss_type": "sequence_mean"}
    assert upgrade_saved_section("lm_ppo", current) == current
    assert upgrade_algo_section("lm_ppo", {"vf_coef": 0.3}) == {"vf_coef": 0.3}  # a config file: current
    assert upgrade_algo_section("lm_ppo", {"vf_coef": 0.3, "version": 1}) == {"vf_coef": 0.15, "version": 2}
    assert upgrade_saved_section("ppo", {"vf_coef": 0.5}) == {"vf_coef": 0.5}  # RL never had the 1/2


def test_an_lm_run_folder_from_d46c705_loads_with_the_same_value_loss(tmp_path):
    config = load_run_config(OLD_LM_RUN).algo_config
    assert "version" not in (OLD_LM_RUN / "config.yaml").read_text()
    assert "vf_coef: 0.3" in (OLD_LM_RUN / "config.yaml").read_text()
    assert (config.vf_coef, config.version) == (0.15, 2)  # 0.3 x 0.5 E[.] then, 0.15 x E[.] now
    # written back (as a resume does) and read again: converted once, not twice
    run = tmp_path / "run"
    shutil.copytree(OLD_LM_RUN, run)
    resumed = load_run_config(run)
    resumed.save(run / "config.yaml")
    assert load_run_config(run).algo_config.vf_coef == 0.15


def test_the_lm_ppo_default_value_weight_is_the_old_one_converted():
    # d46c705: vf_coef 0.1 x 0.5 x E[(V - R)^2]; now 0.05 x E[(V - R)^2]
    assert resolve_config("lm_ppo")[0].algo_config.vf_coef == 0.05
