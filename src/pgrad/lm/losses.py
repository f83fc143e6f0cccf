"""The math of RLHF as pure functions of tensors: no model, no tokenizer, no transformers import.

Conventions shared by every function here:

- Token tensors are batch-major ``[B, T]``: row ``b`` is one response, column ``t`` its ``t``-th
  generated token. (Time-major ``[T, B]`` is the convention of ``pgrad.estimators``; a language model
  emits ``[B, T]`` and transposing twice per step buys nothing.)
- ``mask[b, t]`` is 1 for a real response token (the EOS that ends a response included) and 0 for
  padding after it. A response's tokens are contiguous from column 0, so padding is only on the right;
  every row holds at least one token.
- Padded positions never change a result: every sum runs over ``mask``, every output is 0 there.
  Results that are a function of one row (log-probs, KL, rewards, GAE, RLOO/GRPO within one prompt's
  group) do not depend on the other rows in the batch; batch means are over all masked tokens, so they
  do not depend on the order of the rows or on how far the batch is padded.

Sources: InstructGPT (Ouyang et al., 2022); Ziegler et al., "Fine-tuning language models from human
preferences" (2019) for the per-token KL penalty and the adaptive KL controller; Huang et al., "The N
implementation details of RLHF with PPO" (2024); Schulman, "Approximating KL divergence" (2020) for k3;
Rafailov et al. (2023) for DPO; Ahmadian et al. (2024) for RLOO; Shao et al. (2024) for GRPO.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor


def masked_sum(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """sum(values * mask) over ``dim`` (all when None)."""
    return (values * mask).sum() if dim is None else (values * mask).sum(dim)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """sum(values * mask) / sum(mask): the mean over real tokens only."""
    if dim is None:
        return masked_sum(values, mask) / mask.sum().clamp(min=1)
    return masked_sum(values, mask, dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: Tensor, mask: Tensor) -> Tensor:
    """Population variance over real tokens: mean(mask * (x - mean)^2) (the biased estimator; with the
    thousands of tokens of a batch the n/(n-1) correction is noise)."""
    mean = masked_mean(values, mask)
    return masked_mean((values - mean) ** 2, mask)


def masked_whiten(values: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """(x - mean) / sqrt(var + eps) with mean and variance over real tokens; 0 at padding.

    Whitened advantages (InstructGPT; the N implementation details, #6): the statistics are over the
    whole batch of tokens, so padding columns added to the batch change nothing.
    """
    mean = masked_mean(values, mask)
    return (values - mean) * torch.rsqrt(masked_var(values, mask) + eps) * mask


def token_logprobs(logits: Tensor, tokens: Tensor, mask: Tensor) -> Tensor:
    """log pi(tokens[b, t] | context) = log_softmax(logits[b, t])[tokens[b, t]], 0 at padding.

    ``logits`` [B, T, V] are already aligned with ``tokens`` [B, T]: ``logits[b, t]`` is the model's
    output at the position *before* ``tokens[b, t]`` (the caller shifts by one). Divide logits by the
    sampling temperature first when the samples were drawn at one (the N details, #17).
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) * mask


def sft_loss(logprobs: Tensor, mask: Tensor) -> Tensor:
    """Supervised fine-tuning: the mean negative log-likelihood per real response token,

    L = -sum_{b,t} mask[b, t] log pi(y_t | x, y_<t) / sum_{b,t} mask[b, t]
    """
    return -masked_mean(logprobs, mask)


def kl_k1(logp: Tensor, ref_logp: Tensor, mask: Tensor) -> Tensor:
    """Per-token k1 = log pi(y_t) - log pi_ref(y_t): the sample whose expectation under pi is KL(pi || ref).
    It is what the reward is penalised by; it can be negative token by token."""
    return (logp - ref_logp) * mask


def kl_k3(logp: Tensor, ref_logp: Tensor, mask: Tensor) -> Tensor:
    """Per-token k3 = (r - 1) - log r with r = pi_ref(y_t) / pi(y_t) (Schulman 2020): unbiased for
    KL(pi || ref) under samples of pi like k1, but never negative and of lower variance; reported."""
    log_ratio = (ref_logp - logp) * mask
    return (torch.expm1(log_ratio) - log_ratio) * mask


def last_token_index(mask: Tensor) -> Tensor:
    """Column of each row's last real token: the number of real tokens minus one (right padding)."""
    return mask.sum(-1).long() - 1


def token_rewards(score: Tensor, logp: Tensor, ref_logp: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """The per-token reward of RLHF PPO (Ziegler et al.; InstructGPT):

        r[b, t] = -kl_coef * (log pi(y_t) - log pi_ref(y_t))  +  score[b] * [t == last real token of b]

    ``score`` [B] is the reward model's score of the whole response, given on its last token (the EOS
    when the response ended, the last token when it hit the length limit); padding gets 0.
    """
    rewards = -kl_coef * kl_k1(logp, ref_logp, mask)
    last = last_token_index(mask)
    return rewards.scatter_add(1, last.unsqueeze(1), score.to(rewards.dtype).unsqueeze(1))


def token_gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, gae_lambda: float) -> tuple[Tensor, Tensor]:
    """GAE over the tokens of each response, right to left; returns (advantages, returns), 0 at padding.

        delta_t = r_t + gamma * V_{t+1} - V_t      (V_{t+1} = 0 after the last real token: the episode ends)
        A_t     = delta_t + gamma * lambda * A_{t+1}
        R_t     = A_t + V_t                         (the value target)

    The value at column t is the critic's estimate before token t is emitted. With gamma 1 (the RLHF
    default) the return is the undiscounted sum of the rest of the response's rewards.
    """
    batch, length = rewards.shape
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(batch, dtype=rewards.dtype, device=rewards.device)
    next_value = torch.zeros(batch, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(length)):
        live = mask[:, t].to(rewards.dtype)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * gae_lambda * running) * live
        advantages[:, t] = running
        next_value = values[:, t] * live  # past the last token (live = 0) the next value stays 0
    return advantages, (advantages + values) * mask


@dataclass(frozen=True)
class PolicyLoss:
    """The clipped surrogate and its diagnostics (scalars; ``loss`` carries the gradient)."""

    loss: Tensor
    clip_fraction: Tensor
    approx_kl: Tensor  # k3 of the new policy against the one that sampled, over the minibatch's tokens
    ratio_mean: Tensor
    ratio_max: Tensor


def ppo_policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float) -> PolicyLoss:
    """PPO's clipped surrogate, per token, averaged over real tokens:

        rho_t = exp(log pi(y_t) - log pi_old(y_t))
        L     = mean_t max(-A_t rho_t, -A_t clip(rho_t, 1 - eps, 1 + eps))

    On the first minibatch of the first epoch pi = pi_old, rho = 1 exactly and L = -mean(A).
    """
    log_ratio = (logp - old_logp) * mask
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_fraction = masked_mean(((ratio - 1.0).abs() > clip_eps).to(ratio.dtype), mask)
        approx_kl = masked_mean(torch.expm1(log_ratio) - log_ratio, mask)
        ratio_mean = masked_mean(ratio, mask)
        ratio_max = (ratio * mask).max()
    return PolicyLoss(loss, clip_fraction, approx_kl, ratio_mean, ratio_max)


def clipped_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_range: float
) -> tuple[Tensor, Tensor]:
    """PPO's clipped value loss (the N details, #10); returns (loss, fraction of tokens clipped):

    V_clip = old_V + clip(V - old_V, -c, c)
    L_V    = 0.5 * mean_t max((V_t - R_t)^2, (V_clip_t - R_t)^2)
    """
    clipped = old_values + (values - old_values).clamp(-clip_range, clip_range)
    loss = 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)
    with torch.no_grad():
        fraction = masked_mean(((values - old_values).abs() > clip_range).to(values.dtype), mask)
    return loss, fraction


def bradley_terry_loss(chosen: Tensor, rejected: Tensor) -> tuple[Tensor, Tensor]:
    """Reward-model loss on preference pairs (Bradley-Terry); returns (loss, accuracy):

        P(chosen > rejected) = sigmoid(s_c - s_r),   L = -mean log sigmoid(s_c - s_r)
        dL/ds_c = -sigmoid(s_r - s_c) / N,          dL/ds_r = +sigmoid(s_r - s_c) / N

    Accuracy counts pairs with s_c > s_r (a tie is wrong).
    """
    margin = chosen - rejected
    loss = -torch.nn.functional.logsigmoid(margin).mean()
    with torch.no_grad():
        accuracy = (margin > 0).to(chosen.dtype).mean()
    return loss, accuracy


def dpo_loss(
    chosen_logp: Tensor, rejected_logp: Tensor, ref_chosen_logp: Tensor, ref_rejected_logp: Tensor, beta: float
) -> tuple[Tensor, Tensor]:
    """Direct Preference Optimization (Rafailov et al., 2023); returns (loss, implicit-reward accuracy).

    Arguments are whole-response log-probs (sums over the response's tokens) of policy and reference:

        h = beta * ((log pi(y_c) - log ref(y_c)) - (log pi(y_r) - log ref(y_r)))
        L = -mean log sigmoid(h)
    """
    margin = beta * ((chosen_logp - ref_chosen_logp) - (rejected_logp - ref_rejected_logp))
    loss = -torch.nn.functional.logsigmoid(margin).mean()
    with torch.no_grad():
        accuracy = (margin > 0).to(margin.dtype).mean()
    return loss, accuracy


def rloo_advantages(rewards: Tensor) -> Tensor:
    """REINFORCE leave-one-out (Ahmadian et al., 2024) over ``rewards`` [P, K]: K samples per prompt.

        A_i = r_i - (1 / (K - 1)) * sum_{j != i} r_j  =  K / (K - 1) * (r_i - mean_j r_j)

    Each sample's baseline is the mean of the others of its prompt, so it is independent of the sample.
    """
    samples = rewards.shape[-1]
    if samples < 2:
        raise ValueError(f"RLOO needs at least 2 samples per prompt; got {samples}")
    others = (rewards.sum(-1, keepdim=True) - rewards) / (samples - 1)
    return rewards - others


def grpo_advantages(rewards: Tensor, eps: float = 1e-4) -> Tensor:
    """Group-normalised advantages of GRPO (Shao et al., 2024) over ``rewards`` [P, K]:

        A_i = (r_i - mean_j r_j) / (std_j r_j + eps)

    with the sample standard deviation (n - 1 in the denominator, as in the paper's reference code); a
    group whose samples all scored the same gets advantage 0.
    """
    samples = rewards.shape[-1]
    if samples < 2:
        raise ValueError(f"GRPO needs at least 2 samples per prompt; got {samples}")
    mean = rewards.mean(-1, keepdim=True)
    std = rewards.std(-1, keepdim=True, correction=1)
    return (rewards - mean) / (std + eps)


GroupRule = Literal["rloo", "grpo"]


def group_token_advantages(
    score: Tensor,
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    kl_coef: float,
    samples_per_prompt: int,
    rule: GroupRule,
) -> Tensor:
    """Critic-free advantages for responses in groups of ``samples_per_prompt`` consecutive rows (one prompt):

        R_b = score_b - kl_coef * sum_t (log pi(y_t) - log pi_ref(y_t))     (the KL penalty in the reward)
        A   = rloo_advantages(R grouped [P, K]) or grpo_advantages(R grouped [P, K])
        A[b, t] = A_b at every real token of response b, 0 at padding

    Each group's numbers depend on that group alone: the other prompts in the batch change nothing.
    """
    sequence = score - kl_coef * kl_k1(logp, ref_logp, mask).sum(1)
    grouped = sequence.view(-1, samples_per_prompt)
    advantages = rloo_advantages(grouped) if rule == "rloo" else grpo_advantages(grouped)
    return advantages.reshape(-1, 1) * mask


EnsembleRule = Literal["min", "mean_minus_std"]


def combine_ensemble(scores: Tensor, rule: EnsembleRule, std_coef: float = 1.0) -> Tensor:
    """One conservative score from an ensemble's ``scores`` [M, B] (M reward models):

        min:            s_b = min_m s_{m,b}                     (never above any member)
        mean_minus_std: s_b = mean_m s_{m,b} - k * std_m s_{m,b} (population std: one member gives its score)

    Both penalise disagreement, the reward-hacking signal of an over-optimised reward model.
    """
    if rule == "min":
        return scores.min(0).values
    if rule == "mean_minus_std":
        if std_coef < 0:
            raise ValueError(f"std_coef must be >= 0; got {std_coef}")
        return scores.mean(0) - std_coef * scores.std(0, correction=0)
    raise ValueError(f"ensemble rule must be 'min' or 'mean_minus_std'; got {rule!r}")


class AdaptiveKLController:
    """The KL coefficient of Ziegler et al. (2019), steered toward a target KL:

        e       = clip(KL / target - 1, -0.2, 0.2)
        beta   <- beta * (1 + e * n / horizon)

    ``KL`` is the batch's mean per-response KL (sum over tokens of k1), ``n`` the responses in that batch.
    The proportional error is clipped so one odd batch moves beta at most 0.2 * n / horizon. With no
    target the coefficient is fixed.
    """

    def __init__(self, init_coef: float, target: float | None, horizon: int) -> None:
        if init_coef < 0 or not math.isfinite(init_coef):
            raise ValueError(f"init_coef must be a finite number >= 0; got {init_coef}")
        if target is not None and target <= 0:
            raise ValueError(f"target must be > 0 or None; got {target}")
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1; got {horizon}")
        self.value = init_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, batch_responses: int) -> float:
        """Move the coefficient after one batch; returns the new value."""
        if self.target is not None:
            error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * batch_responses / self.horizon
        return self.value
