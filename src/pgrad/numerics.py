"""The masked numerics of policy optimisation, once for every family: masked statistics, advantage
whitening, PPO's clipped surrogate and the (clipped) value loss.

Every function takes tensors of one shape with a ``mask`` of that shape (1 valid, 0 not) and works on
any device without a host copy: ``[N]`` environment steps on the CPU (autoreset steps carry mask 0)
and ``[B, T]`` response tokens on a GPU (padding carries mask 0) are the same call. Env PPO
(``pgrad.algos.ppo``), A2C and the other ``pgrad.algos`` losses, and token PPO (``pgrad.lm``) use
these; return estimators (GAE, n-step, TD targets) live in ``pgrad.estimators``.

Conventions, one for both families:
- whitening divides by the *sample* standard deviation (n - 1), as SB3, CleanRL and TRL do;
- the value loss is E[(V - R)^2] without a 1/2, so ``vf_coef`` means the same in every section.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def masked_sum(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """sum(values * mask) over ``dim`` (all entries when None)."""
    return (values * mask).sum() if dim is None else (values * mask).sum(dim)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """sum(values * mask) / sum(mask) over ``dim`` (all entries when None): the mean over valid
    entries only (autoreset steps and padding tokens carry mask 0); 0 where nothing is valid."""
    if dim is None:
        return masked_sum(values, mask) / mask.sum().clamp(min=1.0)
    return masked_sum(values, mask, dim) / mask.sum(dim).clamp(min=1.0)


def masked_whiten(values: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """(x - mean) / (std + eps) over the n valid entries, 0 where mask is 0 (advantage normalisation).

        mean = sum_i m_i x_i / n,    std = sqrt(sum_i m_i (x_i - mean)^2 / (n - 1))

    The sample std (n - 1), for both families: SB3 and CleanRL normalise env advantages with torch's
    ``std()`` and TRL whitens token advantages with the n / (n - 1) correction, so the same minibatch
    gives the same step as theirs (tests/test_sb3_parity.py compares whole PPO updates; the population
    std made every policy gradient 0.8 % larger at minibatch 64). Over the thousands of tokens of an
    LM batch the two differ by well under 0.1 %. The statistics are over all valid entries at once, so
    padding added to a batch changes nothing.
    """
    count = mask.sum()
    mean = (values * mask).sum() / count.clamp(min=1.0)
    var = ((values - mean).pow(2) * mask).sum() / (count - 1.0).clamp(min=1.0)
    return (values - mean) / (var.sqrt() + eps) * mask


@dataclass(frozen=True)
class Surrogate:
    """PPO's clipped surrogate loss (``loss`` carries the gradient) and its diagnostics (no gradient)."""

    loss: Tensor
    approx_kl: Tensor  # E[(r - 1) - log r] over the valid entries (Schulman 2020's k3 of pi_old || pi)
    clip_fraction: Tensor  # share of valid entries whose ratio left [1 - eps, 1 + eps]
    ratio: Tensor  # r per entry, detached; 1 where mask is 0


def clipped_surrogate(
    log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float
) -> Surrogate:
    """PPO's clipped surrogate (Schulman et al., 2017), averaged over the valid entries:

        r_i = exp(m_i (log pi(a_i) - log pi_old(a_i)))
        L   = -E[min(r_i A_i, clip(r_i, 1 - eps, 1 + eps) A_i)]

    The log-ratio is masked before ``exp`` so that garbage log-probs at padding cannot overflow into
    inf x 0 = NaN. Where the clip is active (r > 1 + eps with A > 0, r < 1 - eps with A < 0) the
    gradient is zero: ratio 1.3, eps 0.2, A = +1 gives L = -1.2 whatever theta.
    Advantages are used as given (whiten them first with ``masked_whiten`` where wanted).
    """
    log_ratio = (log_probs - old_log_probs) * mask
    ratio = log_ratio.exp()
    surrogate = torch.min(ratio * advantages, ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * advantages)
    loss = -masked_mean(surrogate, mask)
    with torch.no_grad():
        approx_kl = masked_mean((ratio - 1.0) - log_ratio, mask)
        clip_fraction = masked_mean(((ratio - 1.0).abs() > clip_eps).to(ratio.dtype), mask)
    return Surrogate(loss, approx_kl, clip_fraction, ratio.detach())


def value_loss(
    values: Tensor,
    returns: Tensor,
    mask: Tensor,
    *,
    old_values: Tensor | None = None,
    clip_vf: float | None = None,
) -> Tensor:
    """E[(V - R)^2] over the valid entries (no 1/2: the total loss adds ``vf_coef`` x this); with
    ``clip_vf`` = c, PPO's clipped value loss

        V_clip = V_old + clip(V - V_old, -c, c),    L_V = E[max((V - R)^2, (V_clip - R)^2)]
    """
    error = (values - returns).pow(2)
    if clip_vf is not None:
        if old_values is None:
            raise ValueError("clip_vf needs old_values")
        clipped = old_values + (values - old_values).clamp(-clip_vf, clip_vf)
        error = torch.max(error, (clipped - returns).pow(2))
    return masked_mean(error, mask)


def value_clip_fraction(values: Tensor, old_values: Tensor, mask: Tensor, clip_vf: float) -> Tensor:
    """Share of valid entries whose value moved more than ``clip_vf`` from the old one (no gradient)."""
    with torch.no_grad():
        return masked_mean(((values - old_values).abs() > clip_vf).to(values.dtype), mask)
