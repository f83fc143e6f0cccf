"""Action distributions for learning (torch). Lean on purpose: no argument validation on the hot
path (torch.distributions spends more time validating than computing for small batches).

Each distribution gives ``log_prob(actions)``, ``entropy()``, ``kl(other)`` = KL(self || other)
and ``mode()``. Log-probabilities are summed over action dimensions.

``kl`` takes any ``PolicyDistribution`` (what ``ActorCritic.distribution`` returns, typed as the
union) and raises TypeError when ``other`` is not of its own kind.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


class Categorical:
    """pi(a|s) = softmax(logits)_a."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.log_probs = F.log_softmax(logits, dim=-1)

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        """log pi(a|s) of each action: the log-softmax entry it indexes."""
        return self.log_probs.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self) -> torch.Tensor:
        """H = -sum_a p log p, per row."""
        # H = -sum_a p log p
        return -(self.log_probs.exp() * self.log_probs).sum(-1)

    def kl(self, other: PolicyDistribution) -> torch.Tensor:
        """KL(self || other) = sum_a p (log p - log q), per row; only against another Categorical."""
        # KL(p || q) = sum_a p (log p - log q)
        if not isinstance(other, Categorical):
            raise TypeError(f"KL(Categorical || {type(other).__name__}) is not defined")
        return (self.log_probs.exp() * (self.log_probs - other.log_probs)).sum(-1)

    def mode(self) -> torch.Tensor:
        """The most probable action, per row."""
        return self.log_probs.argmax(-1)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One action per row drawn from softmax(logits) (``generator`` for reproducible draws)."""
        return torch.multinomial(self.log_probs.exp(), 1, generator=generator).squeeze(-1)


class DiagGaussian:
    """pi(a|s) = N(mean, diag(exp(log_std))^2)."""

    def __init__(self, mean: torch.Tensor, log_std: torch.Tensor) -> None:
        self.mean = mean
        self.log_std = log_std.expand_as(mean)

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        """log N(a; mu, sigma) summed over action dims: -(a - mu)^2 / (2 sigma^2) - log sigma - log sqrt(2 pi)."""
        # log N(a; mu, sigma) = -(a - mu)^2 / (2 sigma^2) - log sigma - log sqrt(2 pi)
        z = (actions - self.mean) * torch.exp(-self.log_std)
        return (-0.5 * z.pow(2) - self.log_std - LOG_SQRT_2PI).sum(-1)

    def entropy(self) -> torch.Tensor:
        """H = sum_i (log sigma_i + 0.5 log(2 pi e)), per row."""
        # H = sum_i (log sigma_i + 0.5 log(2 pi e))
        return (self.log_std + 0.5 + LOG_SQRT_2PI).sum(-1)

    def kl(self, other: PolicyDistribution) -> torch.Tensor:
        """KL(self || other) = sum_i log(s2/s1) + (s1^2 + (m1 - m2)^2) / (2 s2^2) - 1/2; only against another
        DiagGaussian."""
        # KL = sum_i log(s2/s1) + (s1^2 + (m1 - m2)^2) / (2 s2^2) - 1/2
        if not isinstance(other, DiagGaussian):
            raise TypeError(f"KL(DiagGaussian || {type(other).__name__}) is not defined")
        var_ratio = torch.exp(2.0 * (self.log_std - other.log_std))
        mean_term = ((self.mean - other.mean) * torch.exp(-other.log_std)).pow(2)
        return (0.5 * (var_ratio + mean_term - 1.0) - (self.log_std - other.log_std)).sum(-1)

    def mode(self) -> torch.Tensor:
        """The mean."""
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """mean + sigma x eps with eps ~ N(0, I) (``generator`` for reproducible draws)."""
        noise = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype, device=self.mean.device)
        return self.mean + noise * torch.exp(self.log_std)


class TanhGaussian:
    """a = tanh(u), u ~ N(mean, sigma^2): bounded actions for SAC-style policies.

    log pi(a) = log N(u) - sum_i log(1 - tanh(u_i)^2), using the stable identity
    log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)).
    """

    def __init__(self, mean: torch.Tensor, log_std: torch.Tensor) -> None:
        self.base = DiagGaussian(mean, log_std)

    @staticmethod
    def log_det_jacobian(pre_tanh: torch.Tensor) -> torch.Tensor:
        """sum_i log(1 - tanh(u_i)^2) of the squashing, in the stable form 2 (log 2 - u - softplus(-2u))."""
        return (2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))).sum(-1)

    def log_prob_pre_tanh(self, pre_tanh: torch.Tensor) -> torch.Tensor:
        """log pi(tanh(u)) from the pre-squash u: log N(u) minus the log-det Jacobian."""
        return self.base.log_prob(pre_tanh) - self.log_det_jacobian(pre_tanh)

    def log_prob(self, actions: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        """log pi(a) of squashed actions: inverts tanh on ``a`` clamped to [-1 + eps, 1 - eps] (atanh is infinite at
        +-1)."""
        pre_tanh = torch.atanh(actions.clamp(-1.0 + eps, 1.0 - eps))
        return self.log_prob_pre_tanh(pre_tanh)

    def rsample_with_log_prob(self, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised sample a = tanh(mean + sigma x eps) (gradients flow to mean and sigma) and its
        log-probability."""
        mean = self.base.mean
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        pre_tanh = self.base.mean + noise * torch.exp(self.base.log_std)
        return torch.tanh(pre_tanh), self.log_prob_pre_tanh(pre_tanh)

    def mode(self) -> torch.Tensor:
        """tanh(mean): the deterministic action."""
        return torch.tanh(self.base.mean)


# What ActorCritic.distribution returns; the kinds that have a KL divergence between them.
PolicyDistribution = Categorical | DiagGaussian
Distribution = Categorical | DiagGaussian | TanhGaussian
