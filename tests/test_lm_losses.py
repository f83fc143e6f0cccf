"""The RLHF math (pgrad.lm.losses) against hand-computed values and its definitions."""

import math

import pytest
import torch

from pgrad.lm.losses import (
    AdaptiveKLController,
    bradley_terry_loss,
    combine_ensemble,
    dpo_loss,
    group_token_advantages,
    grpo_advantages,
    kl_k1,
    kl_k3,
    rloo_advantages,
    sft_loss,
    token_gae,
    token_logprobs,
    token_rewards,
)
from pgrad.numerics import clipped_surrogate, masked_mean, masked_whiten, value_clip_fraction, value_loss


def t(values):
    return torch.tensor(values, dtype=torch.float64)


def close(actual, expected, atol=1e-12):
    torch.testing.assert_close(actual, t(expected), rtol=0, atol=atol)


def test_token_logprobs_are_log_softmax_at_the_token_and_zero_at_padding():
    logits = t([[[0.0, 1.0, 2.0], [3.0, 3.0, 3.0]]])
    tokens = torch.tensor([[2, 1]])
    logp = token_logprobs(logits, tokens, t([[1, 0]]))
    expected = 2.0 - math.log(1 + math.e + math.e**2)
    assert logp[0, 0].item() == pytest.approx(expected)
    assert logp[0, 1].item() == 0.0
    full = token_logprobs(logits, tokens, t([[1, 1]]))
    assert full[0, 1].item() == pytest.approx(-math.log(3))


def test_sft_loss_is_the_mean_nll_of_real_tokens():
    logp, mask = t([[-1.0, -2.0, -50.0], [-3.0, -50.0, -50.0]]), t([[1, 1, 0], [1, 0, 0]])
    assert sft_loss(logp, mask).item() == pytest.approx(2.0)  # (1 + 2 + 3) / 3


def test_kl_estimators_against_hand_values_and_zero_when_policy_is_reference():
    logp, ref, mask = t([[-1.0, -2.0, 7.0]]), t([[-1.5, -1.0, 3.0]]), t([[1, 1, 0]])
    assert kl_k1(logp, ref, mask).tolist() == [[0.5, -1.0, 0.0]]
    k3 = kl_k3(logp, ref, mask)
    # r = ref/pi: log r = -0.5 -> e^-0.5 - 1 + 0.5; log r = +1 -> e - 1 - 1
    assert k3[0].tolist() == pytest.approx([math.exp(-0.5) - 0.5, math.e - 2.0, 0.0])
    same = torch.randn(4, 6, dtype=torch.float64)
    ones = torch.ones(4, 6, dtype=torch.float64)
    assert kl_k1(same, same, ones).abs().max().item() == 0.0
    assert kl_k3(same, same, ones).abs().max().item() == 0.0


def test_token_rewards_put_the_score_on_the_last_real_token():
    logp = t([[-1.0, -2.0, -0.5, 0.0], [-1.0, 0.0, 0.0, 0.0]])
    ref = t([[-1.5, -1.0, -0.5, 0.0], [-1.0, 0.0, 0.0, 0.0]])
    mask = t([[1, 1, 1, 0], [1, 0, 0, 0]])
    rewards = token_rewards(t([2.0, -3.0]), logp, ref, mask, kl_coef=0.1)
    # row 0: k1 = [0.5, -1, 0] -> -0.1 * k1 = [-0.05, 0.1, 0] and +2 on column 2; row 1: -3 on column 0
    close(rewards, [[-0.05, 0.1, 2.0, 0.0], [-3.0, 0.0, 0.0, 0.0]])


def test_token_gae_with_masks_against_hand_values():
    # gamma 1, lambda 0.95. Row 0, no padding:
    #   t2: delta = 1.0 - 0.4 = 0.6;            A2 = 0.6
    #   t1: delta = -0.2 + 0.4 - 0.2 = 0;       A1 = 0.95 * 0.6 = 0.57
    #   t0: delta = 0.1 + 0.2 - 0.3 = 0;        A0 = 0.95 * 0.57 = 0.5415
    # Row 1 ends after one token: V after it is 0, whatever sits in the padded columns.
    #   t0: delta = 2 + 0 - 1 = 1;              A0 = 1, R0 = 2
    rewards = t([[0.1, -0.2, 1.0], [2.0, 5.0, 5.0]])
    values = t([[0.3, 0.2, 0.4], [1.0, 9.0, 9.0]])
    mask = t([[1, 1, 1], [1, 0, 0]])
    advantages, returns = token_gae(rewards, values, mask, gamma=1.0, gae_lambda=0.95)
    close(advantages, [[0.5415, 0.57, 0.6], [1.0, 0.0, 0.0]])
    close(returns, [[0.8415, 0.77, 1.0], [2.0, 0.0, 0.0]])


def test_token_gae_per_row_is_unchanged_by_padding_and_batch_composition():
    torch.manual_seed(0)
    rewards, values = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    lengths = torch.tensor([7, 3, 1, 5, 2])
    mask = (torch.arange(7) < lengths[:, None]).to(torch.float64)
    advantages, returns = token_gae(rewards, values, mask, 1.0, 0.95)
    for row in range(5):
        n = int(lengths[row])
        alone_adv, alone_ret = token_gae(
            rewards[row : row + 1, :n], values[row : row + 1, :n], mask[row : row + 1, :n], 1.0, 0.95
        )
        assert torch.equal(alone_adv[0], advantages[row, :n])
        assert torch.equal(alone_ret[0], returns[row, :n])
    # ten more padded columns holding garbage: same numbers
    wide = lambda x, fill: torch.cat([x, torch.full((5, 10), fill, dtype=x.dtype)], 1)  # noqa: E731
    wide_adv, _ = token_gae(wide(rewards, 3.0), wide(values, -7.0), wide(mask, 0.0), 1.0, 0.95)
    assert torch.equal(wide_adv[:, :7], advantages) and wide_adv[:, 7:].abs().max().item() == 0.0


def test_whitened_advantages_use_only_real_tokens():
    x, mask = t([[1.0, 2.0, 100.0], [3.0, -50.0, 0.0]]), t([[1, 1, 0], [1, 0, 0]])
    white = masked_whiten(x, mask)
    # mean 2, sample variance ((1 - 2)^2 + 0 + (3 - 2)^2) / (3 - 1) = 1 over {1, 2, 3} (the shared convention)
    close(white, [[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], atol=1e-6)
    assert masked_mean(white, mask).item() == pytest.approx(0.0, abs=1e-12)
    shuffled = masked_whiten(x.flip(0), mask.flip(0))
    assert torch.allclose(shuffled.flip(0), white)


def test_ppo_surrogate_ratio_one_gives_minus_mean_advantage_and_clipping_kills_the_gradient():
    old = t([[-1.0, -2.0, 0.0]])
    mask = t([[1, 1, 0]])
    advantages = t([[1.0, -3.0, 99.0]])
    same = clipped_surrogate(old.clone(), old, advantages, mask, clip_eps=0.2)
    assert same.loss.item() == pytest.approx(1.0)  # -mean([1, -3])
    assert same.ratio.tolist() == [[1.0, 1.0, 1.0]]
    assert same.clip_fraction.item() == 0.0 and same.approx_kl.item() == 0.0
    # ratio 1.3, eps 0.2: advantage +1 -> clipped branch, zero gradient; advantage -1 -> gradient -A * rho = 1.3
    logp = (old + math.log(1.3)).requires_grad_(True)
    loss = clipped_surrogate(logp, old, t([[1.0, -1.0, 0.0]]), mask, clip_eps=0.2)
    loss.loss.backward()
    assert logp.grad is not None
    assert logp.grad[0, 0].item() == 0.0
    assert logp.grad[0, 1].item() == pytest.approx(1.3 / 2)  # mean over the two real tokens
    assert logp.grad[0, 2].item() == 0.0
    assert loss.clip_fraction.item() == 1.0


def test_clipped_value_loss_against_hand_values():
    # V = 1, old V = 0, R = 2, clip 0.2: (1 - 2)^2 = 1; V_clip = 0.2 -> (0.2 - 2)^2 = 3.24; max = 3.24 (no 1/2:
    # the loss is vf_coef x E[max(...)], as in the RL sections; lm_ppo's vf_coef default halved to match)
    values, old, returns, mask = t([[1.0, 5.0]]), t([[0.0, 0.0]]), t([[2.0, 0.0]]), t([[1, 0]])
    loss = value_loss(values, returns, mask, old_values=old, clip_vf=0.2)
    assert loss.item() == pytest.approx(3.24)
    assert value_clip_fraction(values, old, mask, 0.2).item() == 1.0
    inside = value_loss(t([[0.1]]), t([[2.0]]), t([[1]]), old_values=t([[0.0]]), clip_vf=0.2)
    assert inside.item() == pytest.approx(1.9**2)


def test_bradley_terry_loss_and_gradient():
    chosen, rejected = t([2.0, 0.0]).requires_grad_(True), t([1.0, 0.5]).requires_grad_(True)
    loss, accuracy = bradley_terry_loss(chosen, rejected)
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(0.5))) / 2
    assert loss.item() == pytest.approx(expected)
    assert accuracy.item() == 0.5
    loss.backward()
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    # dL/ds_c = -sigmoid(s_r - s_c) / N
    assert chosen.grad.tolist() == pytest.approx([-sigmoid(-1.0) / 2, -sigmoid(0.5) / 2])
    assert rejected.grad.tolist() == pytest.approx([sigmoid(-1.0) / 2, sigmoid(0.5) / 2])


def test_dpo_loss_against_its_definition():
    loss, accuracy = dpo_loss(t([-3.0]), t([-5.0]), t([-4.0]), t([-4.0]), beta=0.1)
    # h = 0.1 * ((-3 + 4) - (-5 + 4)) = 0.2
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.2)))
    assert accuracy.item() == 1.0
    # policy equal to the reference: h = 0, loss log 2
    equal, _ = dpo_loss(t([-3.0, -1.0]), t([-5.0, -2.0]), t([-3.0, -1.0]), t([-5.0, -2.0]), beta=0.5)
    assert equal.item() == pytest.approx(math.log(2))


def test_rloo_and_grpo_advantages_against_hand_values():
    rewards = t([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    # leave-one-out: 1 - (2 + 3)/2, 2 - (1 + 3)/2, 3 - (1 + 2)/2
    assert rloo_advantages(rewards).tolist() == [[-1.5, 0.0, 1.5], [0.0, 0.0, 0.0]]
    # mean 2, sample std 1
    assert grpo_advantages(rewards, eps=0.0 + 1e-12)[0].tolist() == pytest.approx([-1.0, 0.0, 1.0])
    assert grpo_advantages(rewards)[1].tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="at least 2 samples"):
        rloo_advantages(t([[1.0]]))


def test_group_token_advantages_put_the_kl_in_the_sequence_reward_by_hand():
    # groups of 2: R = score - 0.1 * sum k1 = [1 - 0.1, 2 - 0.1, 3, 3] (row 1's padded column is ignored)
    score = t([1.0, 2.0, 3.0, 3.0])
    logp = t([[-1.0, -1.0], [-1.0, 9.0], [-2.0, -2.0], [-1.0, -1.0]])
    ref = t([[-1.5, -1.5], [-2.0, 0.0], [-2.0, -2.0], [-1.0, -1.0]])
    mask = t([[1, 1], [1, 0], [1, 1], [1, 1]])
    rloo = group_token_advantages(score, logp, ref, mask, 0.1, 2, "rloo")
    close(rloo, [[-1.0, -1.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    # GRPO: group 1 has mean 1.4 and sample std sqrt(0.5); group 2 no spread: 0
    grpo = group_token_advantages(score, logp, ref, mask, 0.1, 2, "grpo")
    a = 0.5 / (math.sqrt(0.5) + 1e-4)
    close(grpo, [[-a, -a], [a, 0.0], [0.0, 0.0], [0.0, 0.0]])
    # a group's advantages do not depend on the other groups in the batch
    alone = group_token_advantages(score[:2], logp[:2], ref[:2], mask[:2], 0.1, 2, "grpo")
    assert torch.equal(alone, grpo[:2])


def test_ensemble_min_never_above_any_member_and_mean_minus_std_by_hand():
    scores = t([[1.0, 5.0], [3.0, 2.0]])
    assert combine_ensemble(scores, "min").tolist() == [1.0, 2.0]
    # column 0: mean 2, std 1; column 1: mean 3.5, std 1.5
    assert combine_ensemble(scores, "mean_minus_std", std_coef=1.0).tolist() == [1.0, 2.0]
    generator = torch.Generator().manual_seed(3)
    for _ in range(50):
        members = torch.randn(int(torch.randint(1, 6, (1,), generator=generator)), 9, generator=generator)
        low = combine_ensemble(members, "min")
        assert bool((low <= members).all())
        assert bool((combine_ensemble(members, "mean_minus_std", 0.5) <= members.mean(0) + 1e-7).all())
    with pytest.raises(ValueError, match="ensemble rule"):
        combine_ensemble(scores, "max")  # type: ignore[arg-type]


def test_adaptive_kl_controller_follows_ziegler_et_al():
    controller = AdaptiveKLController(0.2, target=6.0, horizon=10_000)
    # KL 9: error 0.5 clipped to 0.2 -> beta * (1 + 0.2 * 256 / 10000)
    assert controller.update(9.0, 256) == pytest.approx(0.2 * 1.00512)
    down = AdaptiveKLController(0.2, target=6.0, horizon=10_000)
    assert down.update(3.0, 256) == pytest.approx(0.2 * (1 - 0.00512))
    small = AdaptiveKLController(0.2, target=6.0, horizon=10_000)
    assert small.update(6.6, 100) == pytest.approx(0.2 * (1 + 0.1 * 100 / 10_000))
    fixed = AdaptiveKLController(0.05, target=None, horizon=1)
    assert fixed.update(100.0, 1000) == 0.05
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(0.1, target=0.0, horizon=1)


def test_losses_are_unchanged_by_padding_and_row_order():
    torch.manual_seed(1)
    logp, old = torch.randn(4, 5, dtype=torch.float64) * 0.1 - 1, torch.randn(4, 5, dtype=torch.float64) * 0.1 - 1
    advantages = torch.randn(4, 5, dtype=torch.float64)
    mask = (torch.arange(5) < torch.tensor([5, 2, 4, 1])[:, None]).to(torch.float64)
    base = clipped_surrogate(logp, old, advantages, mask, 0.2).loss
    order = torch.tensor([2, 0, 3, 1])
    assert clipped_surrogate(logp[order], old[order], advantages[order], mask[order], 0.2).loss.item() == pytest.approx(
        base.item(), abs=1e-14
    )
    pad = lambda x: torch.cat([x, torch.full((4, 3), 5.0, dtype=x.dtype)], 1)  # noqa: E731
    padded = clipped_surrogate(pad(logp), pad(old), pad(advantages), torch.cat([mask, torch.zeros(4, 3)], 1), 0.2)
    assert padded.loss.item() == pytest.approx(base.item(), abs=1e-14)
