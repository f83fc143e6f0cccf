"""pgrad's GRPO minibatch gradient against TRL's GRPOTrainer loss written out by hand (issue 23's comparison).

TRL 1.16 (``GRPOTrainer._generate_and_score_completions`` and ``_compute_loss``, ``loss_type="grpo"``,
``scale_rewards="group"``, ``beta`` > 0, token-level importance sampling), for responses in groups of G:

    A_i    = (r_i - mean_group r) / (std_group r + 1e-4)            (torch std: n - 1)
    c_t    = exp(log pi - log pi_old),   kl_t = exp(ref - log pi) - (ref - log pi) - 1
    l_t    = -min(c_t A_i, clip(c_t, 1 - eps, 1 + eps) A_i) + beta kl_t
    L      = mean_i (sum_t m l / sum_t m)

With the policy moved off the reference (so the KL term has a gradient) and off pi_old (so some ratios clip),
the runner's loss on a minibatch must give the same value and the same gradient.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")  # the lm extra

from pgrad.lm.model import response_outputs  # noqa: E402
from pgrad.runners.lm_ppo import LMPPORunner  # noqa: E402
from pgrad.runs import resolve_config  # noqa: E402

TINY = ["batch_size=16", "minibatch_size=8", "num_epochs=1", "eval_every=0", "model.n_layer=1", "model.n_embd=16"]
GROUP, BETA, EPS = 4, 0.04, 0.2


def trl_loss(logp, old_logp, ref_logp, scores, mask):
    """TRL's GRPO loss as its source writes it (see the module docstring)."""
    grouped = scores.view(-1, GROUP)
    mean = grouped.mean(1).repeat_interleave(GROUP)
    std = grouped.std(1).repeat_interleave(GROUP)
    advantages = ((scores - mean) / (std + 1e-4)).unsqueeze(1)
    coef_1 = torch.exp(logp - old_logp)
    coef_2 = torch.clamp(coef_1, 1 - EPS, 1 + EPS)
    kl = torch.exp(ref_logp - logp) - (ref_logp - logp) - 1
    per_token = -torch.min(coef_1 * advantages, coef_2 * advantages) + BETA * kl
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()


def test_a_grpo_minibatch_gradient_is_trls(tmp_path):
    sets = [*TINY, "advantage=grpo", f"samples_per_prompt={GROUP}", "loss_type=sequence_mean", f"kl_coef={BETA}"]
    sets += ["optimizer.learning_rate=0.01", "checkpoint_every=10000"]
    config = resolve_config("lm_ppo", None, None, sets, seed=3, total_steps=64)[0]
    runner = LMPPORunner(config, tmp_path / "run", console=False)
    try:
        check_against_trl(runner)
    finally:
        runner.close()


def check_against_trl(runner: LMPPORunner) -> None:
    """The loss value and gradient of the runner's second minibatch, both ways."""
    for _ in range(2):  # off the reference: the KL term has a gradient
        runner.update()
    scores = []
    score = runner.scorer.score
    runner.scorer.score = lambda *args: scores.append(score(*args)) or scores[-1]  # type: ignore[method-assign]
    rollout, _ = runner.collect()
    assert float(scores[0].view(-1, GROUP).std(1).max()) > 0  # some group has advantages
    with torch.no_grad():  # a step on the first minibatch moves the second off pi_old: some ratios clip
        for parameter in runner.policy.lm.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    batch = rollout.rows(torch.arange(8, 16))
    grads = []
    for loss_of in ("pgrad", "trl"):
        runner.policy.zero_grad(set_to_none=True)
        out = response_outputs(
            runner.policy, batch.prompts.ids, batch.prompts.mask, batch.response, batch.mask.long(), temperature=1.0
        )
        if loss_of == "pgrad":
            loss, _ = runner.policy_loss(out.logprobs, batch)
        else:
            loss = trl_loss(out.logprobs, batch.old_logprobs, batch.ref_logprobs, scores[0][8:16].float(), batch.mask)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in runner.policy.lm.parameters() if p.grad is not None]))
        grads.append(loss.detach())
    pgrad_grad, pgrad_loss, trl_grad, trl_value = grads
    ratio = torch.exp(out.logprobs.detach() - batch.old_logprobs)
    assert bool(((ratio - 1).abs() > EPS)[batch.mask > 0].any())  # the clip is exercised
    assert bool(((batch.ref_logprobs - out.logprobs.detach()).abs() > 1e-3)[batch.mask > 0].any())  # and the KL
    torch.testing.assert_close(pgrad_loss, trl_value, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(pgrad_grad, trl_grad, rtol=1e-4, atol=1e-7)
