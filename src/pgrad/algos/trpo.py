"""Trust Region Policy Optimization (Schulman et al., 2015) and the natural policy gradient
(Kakade, 2001), which is the same step without the line search.

One policy step per batch:
1. surrogate L(theta) = E[r A], r = pi_theta(a|s) / pi_old(a|s), and its gradient g at theta_old;
2. search direction s = F^-1 g by conjugate gradient on Fisher-vector products (``pgrad.optim``);
3. step scaled to the trust region: the quadratic model 1/2 (b s)^T F (b s) = max_kl gives
   b = sqrt(2 max_kl / s^T F s);
4. TRPO: backtracking line search over theta_old + c^i b s, i = 0, 1, ..., accepting the first
   candidate that raises L and keeps the mean KL(pi_old || pi_theta) <= max_kl; if none does, the
   old parameters stay. NPG: theta_old + b s, taken as it is.
The value function is a separate network with its own optimiser (``value_optimizer``), fitted
after the policy step by ``value_epochs`` passes of minibatch regression on the GAE returns.

``trpo`` and ``npg`` are the same file, the same update functions and the same field list
(``NaturalGradientConfig``); only the defaults differ (``line_search``, ``max_kl``), so
``pgrad train trpo --set line_search=false`` is NPG.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from pgrad import glossary
from pgrad.algos.common import (
    actor_critic_batch,
    make_optimizer,
    optimizer_step,
    scheduled_learning_rate,
)
from pgrad.algos.contract import UpdateContext
from pgrad.config import MAX_WINDOW, Checked, EnvConfig, NetworkConfig, OptimizerConfig, param
from pgrad.errors import ConfigError
from pgrad.metric_names import (
    APPROX_KL,
    ENTROPY,
    GROUP_GRAD_NORM,
    LEARNING_RATE,
    LOG_STD,
    POLICY_LOSS,
    SURROGATE_GRAD_NORM,
    VALUE_LOSS,
)
from pgrad.nets import ActingPolicy, ActionSpec, ActorCritic, ObsShape
from pgrad.numerics import masked_mean, masked_whiten, value_loss
from pgrad.optim import (
    conjugate_gradient,
    detach_distribution,
    fisher_vector_product,
    flat_grad,
    flat_parameters,
    set_flat_parameters,
)
from pgrad.rollout import Batch, Rollout


@dataclass(frozen=True)
class NaturalGradientConfig(Checked):
    """The fields TRPO and NPG share (``TRPOConfig`` and ``NPGConfig`` differ only in defaults)."""

    SECTION: ClassVar[str] = "trpo"

    num_steps: int = param(256, "steps per environment per rollout (8 envs x 256 = SB3-contrib's 2048)")
    gamma: float = glossary.gamma(0.99)
    gae_lambda: float = glossary.gae_lambda(0.95)
    norm_adv: bool = glossary.norm_adv(True, "over the whole batch before the policy step")
    max_kl: float = param(
        0.01,
        "mean KL(pi_old || pi_new) per policy step: the trust-region bound (line search), and the KL of the "
        "quadratic model the step is scaled to",
    )
    line_search: bool = param(
        True,
        "backtracking line search: accept a step only if it raises the surrogate and keeps KL <= max_kl "
        "(false: natural policy gradient, the scaled step as it is)",
    )
    backtrack_coef: float = param(0.8, "line search: each rejected candidate step is shrunk by this factor")
    backtrack_iters: int = param(10, "line search: candidate steps tried before keeping the old parameters")
    cg_iterations: int = param(15, "conjugate-gradient iterations (Fisher-vector products) per step")
    cg_damping: float = param(0.1, "Fisher damping: CG solves (F + cg_damping I) s = g")
    cg_residual_tol: float = param(1e-10, "CG stops early once the residual norm falls to this")
    value_epochs: int = param(10, "passes of value regression over each batch")
    minibatch_size: int = param(128, "value-regression minibatch size; must divide the batch")
    network: NetworkConfig = param(NetworkConfig(), "the policy and value MLPs (separate torsos)")
    value_optimizer: OptimizerConfig = param(
        OptimizerConfig(learning_rate=1e-3, eps=1e-5),
        "the value function's optimizer (the policy takes natural-gradient steps): Adam, lr 1e-3",
    )

    def validate(self) -> None:
        """Checks each hyper-parameter's range, and that the network is not shared (the natural step moves the policy
        network alone)."""
        for name in ("num_steps", "backtrack_iters", "cg_iterations", "value_epochs", "minibatch_size"):
            self.check_range(name, 1, MAX_WINDOW)
        self.check_range("gamma", 0, 1)
        self.check_range("gae_lambda", 0, 1)
        self.check_range("max_kl", 0, low_open=True)
        self.check_range("backtrack_coef", 0, 1, low_open=True, high_open=True)
        self.check_range("cg_damping", 0)
        self.check_range("cg_residual_tol", 0)
        if self.network.shared_network:
            raise ConfigError(
                f"{self.SECTION}.network.shared_network must be false (the natural step moves the policy "
                "network alone); got True"
            )

    def check_with_env(self, env: EnvConfig) -> None:
        """Checks that ``minibatch_size`` divides the batch, ``num_steps x env.num_envs``."""
        batch = self.num_steps * env.num_envs
        if self.minibatch_size > batch or batch % self.minibatch_size:
            raise ConfigError(
                f"{self.SECTION}.minibatch_size must divide the batch num_steps x env.num_envs = "
                f"{self.num_steps} x {env.num_envs} = {batch}; got {self.minibatch_size}"
            )


@dataclass(frozen=True)
class TRPOConfig(NaturalGradientConfig):
    """TRPO hyper-parameters. Defaults follow sb3-contrib TRPO (max_kl is its target_kl)."""

    SECTION: ClassVar[str] = "trpo"


@dataclass(frozen=True)
class NPGConfig(NaturalGradientConfig):
    """Natural policy gradient: the TRPO step scaled to max_kl, without the line search."""

    SECTION: ClassVar[str] = "npg"

    # Without the line search nothing catches a step whose true KL overshoots the quadratic model,
    # so NPG defaults to half the TRPO step (max_kl 0.005): on CartPole-v1 (seeds 1, 2) it reached
    # 475 in 56k/50k steps, against not reached/81k with 0.01.
    max_kl: float = param(
        0.005,
        "mean KL(pi_old || pi_new) per policy step: the KL of the quadratic model the step is scaled to "
        "(and the bound of the line search when line_search is true)",
    )
    line_search: bool = param(
        False,
        "backtracking line search: accept a step only if it raises the surrogate and keeps KL <= max_kl (true: TRPO)",
    )


def trpo_surrogate(
    *, log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """L(theta) = E[pi_theta(a|s) / pi_old(a|s) A], the mean over entries with mask = 1 (any shape).

    The ratio is 1 at theta_old, its gradient is not: grad L(theta_old) = E[grad log pi(a|s) A],
    the policy gradient. TRPO maximises L subject to E[KL(pi_old || pi_theta)] <= max_kl.
    """
    return masked_mean(torch.exp(log_probs - old_log_probs) * advantages, mask)


@dataclass(frozen=True)
class LineSearchResult:
    """What the backtracking line search kept: accepted or not, candidates rejected, surrogate and KL there."""

    accepted: bool
    backtracks: int  # candidates rejected before the accepted one (all of them when none is accepted)
    surrogate: float  # surrogate at the parameters kept
    kl: float  # mean KL(pi_old || pi) at the parameters kept


def backtracking_line_search(
    parameters: list[torch.nn.Parameter],
    full_step: torch.Tensor,
    evaluate: Callable[[], tuple[float, float]],
    surrogate_before: float,
    max_kl: float,
    backtrack_coef: float,
    backtrack_iters: int,
) -> LineSearchResult:
    """Try theta_old + c^i * full_step for i = 0 .. backtrack_iters - 1; keep the first that improves.

    A candidate is accepted iff L(candidate) > L(theta_old) and mean KL <= max_kl (both finite).
    ``evaluate()`` returns (surrogate, mean KL) at the parameters currently set. If every candidate
    fails, theta_old is written back exactly and the result says so.
    """
    old = flat_parameters(parameters)
    for backtracks in range(backtrack_iters):
        set_flat_parameters(parameters, old + backtrack_coef**backtracks * full_step)
        surrogate, kl = evaluate()
        if math.isfinite(surrogate) and math.isfinite(kl) and kl <= max_kl and surrogate > surrogate_before:
            return LineSearchResult(True, backtracks, surrogate, kl)
    set_flat_parameters(parameters, old)
    return LineSearchResult(False, backtrack_iters, surrogate_before, 0.0)


def trust_region_step(
    surrogate_grad: torch.Tensor,
    fisher_product: Callable[[torch.Tensor], torch.Tensor],
    max_kl: float,
    cg_iterations: int,
    cg_residual_tol: float,
) -> tuple[torch.Tensor, float]:
    """The natural-gradient step b s with s ~= F^-1 g (CG) and b = sqrt(2 max_kl / s^T F s).

    Returns the step and the CG residual norm. A direction with s^T F s <= 0 or not finite (no
    usable curvature, e.g. a zero gradient) gives a zero step.
    """
    direction, residual = conjugate_gradient(fisher_product, surrogate_grad, cg_iterations, cg_residual_tol)
    curvature = float(direction @ fisher_product(direction))
    if not (math.isfinite(curvature) and curvature > 0.0):
        return torch.zeros_like(direction), residual
    return math.sqrt(2.0 * max_kl / curvature) * direction, residual


def policy_step(
    model: ActorCritic,
    parameters: list[torch.nn.Parameter],
    batch: Batch,
    config: NaturalGradientConfig,
    max_kl: float | None = None,
) -> dict[str, float]:
    """One TRPO (``config.line_search``) or NPG step on the policy parameters; returns its metrics.

    Metrics: ``diagnostics/kl_after_step`` the exact mean KL(pi_old || pi_new) of the step kept (0 when
    the line search kept the old parameters), ``train/line_search_steps`` the candidates rejected
    before the accepted one (``backtrack_iters`` when all were), ``train/surrogate_improvement``
    L(theta_new) - L(theta_old), ``diagnostics/cg_residual`` ||g - (F + damping I) s||,
    ``diagnostics/surrogate_grad_norm`` ||g|| (the policy takes no optimizer step, so there is no
    clipped gradient norm to report). ``max_kl`` overrides ``config.max_kl`` (the runner scales the
    trust region with the guard's learning-rate scale).
    """
    max_kl = config.max_kl if max_kl is None else max_kl
    mask = batch.mask
    advantages = masked_whiten(batch.advantages, mask) if config.norm_adv else batch.advantages
    dist = model.distribution(batch.obs)
    old_dist = detach_distribution(dist)
    surrogate = trpo_surrogate(
        log_probs=dist.log_prob(batch.actions), old_log_probs=batch.log_probs, advantages=advantages, mask=mask
    )
    mean_kl = masked_mean(old_dist.kl(dist), mask)
    surrogate_grad = flat_grad(surrogate, parameters, retain_graph=True)
    fisher_product = fisher_vector_product(mean_kl, parameters, config.cg_damping)
    step, cg_residual = trust_region_step(
        surrogate_grad, fisher_product, max_kl, config.cg_iterations, config.cg_residual_tol
    )

    def evaluate() -> tuple[float, float]:
        with torch.no_grad():
            new_dist = model.distribution(batch.obs)
            surrogate = trpo_surrogate(
                log_probs=new_dist.log_prob(batch.actions),
                old_log_probs=batch.log_probs,
                advantages=advantages,
                mask=mask,
            )
            return float(surrogate), float(masked_mean(old_dist.kl(new_dist), mask))

    surrogate_before = float(surrogate.detach())
    before = flat_parameters(parameters)
    if config.line_search:
        result = backtracking_line_search(
            parameters, step, evaluate, surrogate_before, max_kl, config.backtrack_coef, config.backtrack_iters
        )
    else:
        set_flat_parameters(parameters, before + step)
        surrogate_after, kl_after = evaluate()
        result = LineSearchResult(True, 0, surrogate_after, kl_after)
    return {
        POLICY_LOSS: -surrogate_before,
        "train/surrogate_improvement": result.surrogate - surrogate_before,
        "train/line_search_steps": float(result.backtracks),
        "train/line_search_accepted": float(result.accepted),
        "train/step_norm": float((flat_parameters(parameters) - before).norm()),
        "diagnostics/kl_after_step": result.kl,
        APPROX_KL: result.kl,
        "diagnostics/cg_residual": cg_residual,
        SURROGATE_GRAD_NORM: float(surrogate_grad.norm()),
        "train/max_kl": max_kl,
        ENTROPY: float(masked_mean(old_dist.entropy(), mask).detach()),
    }


def fit_value(
    model: ActorCritic,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    epochs: int,
    minibatch_size: int,
    rng: np.random.Generator,
) -> tuple[float, float]:
    """``epochs`` passes of the optimizer on E[(V(s) - R)^2] over valid steps; returns the mean loss and
    the mean gradient norm of its steps (measured, never clipped: the guard's update-size rule reads the
    critic's move per unit of gradient, see ``pgrad.monitor.alerts.update_size_rule``)."""
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    losses, grad_norms = [], []
    for _ in range(epochs):
        for minibatch in batch.minibatches(minibatch_size, rng):
            loss = value_loss(model.value(minibatch.obs), minibatch.returns, minibatch.mask)
            norm_before, _ = optimizer_step(optimizer, parameters, loss, math.inf)  # inf: measure, do not clip
            losses.append(loss.detach())
            grad_norms.append(norm_before)
    return float(torch.stack(losses).mean()), sum(grad_norms) / len(grad_norms)


class NaturalGradient:
    """The TRPO / NPG learner: a policy net stepped by natural gradients, a value net fitted by its
    optimizer. ``name`` is the config's section: ``trpo`` or ``npg``."""

    def __init__(
        self, config: NaturalGradientConfig, obs_shape: ObsShape, action: ActionSpec, device: torch.device | str = "cpu"
    ) -> None:
        self.name = config.SECTION
        self.config = config
        self.device = torch.device(device)
        self.model = ActorCritic.from_config(obs_shape, action, config.network).to(self.device)
        if self.model.critic_torso is None:  # validate refuses network.shared_network
            raise ValueError(f"{self.name} needs separate policy and value torsos")
        critic = [self.model.critic_torso, self.model.value_head]
        self.value_parameters = [p for module in critic for p in module.parameters()]
        value_ids = {id(p) for p in self.value_parameters}
        self.policy_parameters = [p for p in self.model.parameters() if id(p) not in value_ids]
        self.value_optimizer = make_optimizer(self.value_parameters, config.value_optimizer)

    @property
    def rollout_length(self) -> int:
        """Steps per env per rollout: ``num_steps``."""
        return self.config.num_steps

    @property
    def gamma(self) -> float:
        """The discount factor, from the config."""
        return self.config.gamma

    def acting_policy(self) -> ActingPolicy:
        """The model's acting policy (the loop samples actions from it)."""
        return self.model.acting_policy()

    def prepare(self, rollout: Rollout) -> tuple[Batch, dict[str, float]]:
        """log pi_old and V from one gradient-free pass; GAE advantages and returns."""
        return actor_critic_batch(self.model, rollout, self.config.gamma, self.config.gae_lambda, self.device)

    def update(self, batch: Batch, context: UpdateContext) -> dict[str, float]:
        """The policy step first (on the batch's advantages), then the value regression."""
        config = self.config
        # The guard's scale (rollbacks halve it, the lr_spike drill multiplies it) applies to the trust
        # region as to a learning rate: the natural step's length grows as sqrt(max_kl).
        metrics = policy_step(self.model, self.policy_parameters, batch, config, config.max_kl * context.lr_scale)
        learning_rate = scheduled_learning_rate(self.value_optimizer, config.value_optimizer, context)
        metrics[VALUE_LOSS], metrics[f"{GROUP_GRAD_NORM}/value_optimizer"] = fit_value(
            self.model, self.value_optimizer, batch, config.value_epochs, config.minibatch_size, context.rng
        )
        metrics[LEARNING_RATE] = learning_rate
        if self.model.log_std is not None:
            metrics[LOG_STD] = float(self.model.log_std.detach().mean())
        return metrics

    # ---- checkpoint contract ------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        """The checkpoint contract: the networks saved and restored (the actor-critic model)."""
        return {"model": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The checkpoint contract: the value net's optimizer (the policy is stepped by natural gradients, no
        optimizer)."""
        return {"value_optimizer": self.value_optimizer}

    def extra_state(self) -> dict[str, Any]:
        """The checkpoint contract: nothing beyond the networks and optimizers."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """The checkpoint contract: nothing to restore beyond the networks and optimizers."""
        pass
