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

The PPO numerics (masked mean and whitening, clipped surrogate, clipped value loss) are the
environments' own, in ``pgrad.numerics``; token GAE is ``pgrad.estimators.gae_torch`` over the tokens.

Sources: InstructGPT (Ouyang et al., 2022); Ziegler et al., "Fine-tuning language models from human
preferences" (2019) for the per-token KL penalty and the adaptive KL controller; Huang et al., "The N
implementation details of RLHF with PPO" (2024); Schulman, "Approximating KL divergence" (2020) for k3;
Rafailov et al. (2023) for DPO; Ahmadian et al. (2024) for RLOO; Shao et al. (2024) for GRPO; Yu et al.
(2025, DAPO) for the token-mean loss and Liu et al. (2025, Dr. GRPO) for the constant normaliser.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from pgrad.estimators import gae_torch
from pgrad.numerics import masked_mean


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
    """GAE over the tokens of each response; returns (advantages, returns), 0 at padding.

    Each response is an episode that terminates after its last real token, so this is
    ``estimators.gae_torch`` (the environments' GAE) over the time-major ``[T, B]`` transpose with

        V(s_{t+1}) = V_{t+1} (0 past the last real token),   terminated_t = [t is the row's last real token]

    and nothing truncated:

        delta_t = r_t + gamma * V_{t+1} - V_t,   A_t = delta_t + gamma * lambda * A_{t+1},   R_t = A_t + V_t

    The value at column t is the critic's estimate before token t is emitted. With gamma 1 (the RLHF
    default) the return is the undiscounted sum of the rest of the response's rewards. Rewards and
    values are masked first, so whatever sits in the padding never reaches a real token.
    """
    rewards, values = rewards * mask, values * mask
    live = mask.bool()
    next_live = torch.nn.functional.pad(live[:, 1:], (0, 1))  # the next column holds a real token
    next_values = torch.nn.functional.pad(values[:, 1:], (0, 1))
    advantages, returns = gae_torch(
        rewards.T, values.T, next_values.T, (live & ~next_live).T, torch.zeros_like(live).T, gamma, gae_lambda
    )
    # back to [B, T] in row-major memory: later reductions (whitening's sums) then add in the same order as ever
    return advantages.T.contiguous() * mask, returns.T.contiguous() * mask


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


def grpo_advantages(rewards: Tensor, eps: float = 1e-4, scale: bool = True) -> Tensor:
    """Group-normalised advantages of GRPO (Shao et al., 2024) over ``rewards`` [P, K]:

        A_i = (r_i - mean_j r_j) / (std_j r_j + eps)

    with the sample standard deviation (n - 1 in the denominator, as in the paper's reference code); a
    group whose samples all scored the same gets advantage 0. With ``scale`` False, Dr. GRPO's (Liu et al.,
    2025) A_i = r_i - mean_j r_j: no division by the std, which up-weights the groups whose rewards barely
    differ (too easy or too hard questions).
    """
    samples = rewards.shape[-1]
    if samples < 2:
        raise ValueError(f"GRPO needs at least 2 samples per prompt; got {samples}")
    mean = rewards.mean(-1, keepdim=True)
    if not scale:
        return rewards - mean
    std = rewards.std(-1, keepdim=True, correction=1)
    return (rewards - mean) / (std + eps)


LossType = Literal["token_mean", "sequence_mean", "dr_grpo"]


def aggregate_token_loss(per_token: Tensor, mask: Tensor, loss_type: LossType, max_length: int) -> Tensor:
    """One loss from per-token losses ``l[b, t]`` of B responses (``lm_ppo.loss_type``), m the mask:

        token_mean    (DAPO, Yu et al. 2025):  L = sum_{b,t} m l / sum_{b,t} m
        sequence_mean (GRPO, Shao et al. 2024): L = (1 / B) sum_b (sum_t m l / sum_t m)
        dr_grpo       (Liu et al. 2025):        L = sum_{b,t} m l / (B * max_length)

    token_mean weighs every token alike, so long responses weigh more; sequence_mean weighs every response
    alike, so a token of a short response weighs more (the length bias Dr. GRPO names); dr_grpo divides by a
    constant (``max_length`` = max_new_tokens), so neither the response's length nor the batch's changes a
    token's weight.
    """
    masked = per_token * mask
    if loss_type == "token_mean":
        return masked.sum() / mask.sum().clamp(min=1.0)
    if loss_type == "sequence_mean":
        return (masked.sum(1) / mask.sum(1).clamp(min=1.0)).mean()
    if loss_type == "dr_grpo":
        return masked.sum() / (per_token.shape[0] * max_length)
    raise ValueError(f"loss_type must be 'token_mean', 'sequence_mean' or 'dr_grpo'; got {loss_type!r}")


def group_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    ref_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float,
    kl_coef: float,
    loss_type: LossType,
    max_length: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """GRPO's objective as a loss (Shao et al., 2024, eq. 3), with the KL in the loss; returns (loss, the
    policy term, the KL term), each aggregated by ``aggregate_token_loss``:

        r_t = pi(y_t) / pi_old(y_t)
        l_t = -min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t) + kl_coef * k3_t,  k3_t = (ref/pi - 1) - log(ref/pi)
        L   = aggregate(l, mask, loss_type)

    The aggregation is linear, so L = aggregate(policy part) + kl_coef * aggregate(k3). With kl_coef 0 the KL
    term is still returned (for the logs) but adds nothing.
    """
    ratio = ((logp - old_logp) * mask).exp()
    surrogate = -torch.min(ratio * advantages, ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * advantages)
    policy = aggregate_token_loss(surrogate, mask, loss_type, max_length)
    kl = aggregate_token_loss(kl_k3(logp, ref_logp, mask), mask, loss_type, max_length)
    return policy + kl_coef * kl, policy, kl


GroupRule = Literal["rloo", "grpo", "dr_grpo"]


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
        A   = rloo_advantages(R grouped [P, K]), grpo_advantages(R grouped [P, K]) or, for dr_grpo,
              grpo_advantages(..., scale=False)
        A[b, t] = A_b at every real token of response b, 0 at padding

    Each group's numbers depend on that group alone: the other prompts in the batch change nothing.
    """
    sequence = score - kl_coef * kl_k1(logp, ref_logp, mask).sum(1)
    grouped = sequence.view(-1, samples_per_prompt)
    if rule == "rloo":
        advantages = rloo_advantages(grouped)
    else:
        advantages = grpo_advantages(grouped, scale=rule == "grpo")
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
