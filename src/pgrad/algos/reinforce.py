"""REINFORCE (Williams, 1992): Monte Carlo policy gradient over whole episodes.

Each update collects ``num_episodes`` complete episodes with the current policy and follows

    grad J = E[ sum_t grad log pi(a_t|s_t) (G_t - b(s_t)) ],   G_t = sum_{k>=t} gamma^(k-t) r_k

G_t is the discounted reward-to-go: by causality an action cannot change rewards that came before
it, so those terms are dropped (they only add variance). The optional baseline b(s) = V_w(s) is
a value network fitted by regression on G_t; it leaves the expected gradient unchanged
(E[grad log pi(a|s)] = 0) and lowers its variance. Without a baseline, a truncated (time-limited)
episode's return stops at the cut; with one, the cut bootstraps from V_w(final observation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from pgrad import glossary
from pgrad.algos.actor_critic import actor_and_critic_parameters
from pgrad.algos.common import (
    LossTerms,
    evaluate_rollout,
    make_optimizer,
    mean_metrics,
    optimizer_step,
    scheduled_learning_rate,
)
from pgrad.algos.contract import UpdateContext
from pgrad.config import MAX_WINDOW, Checked, EnvConfig, NetworkConfig, OptimizerConfig, param
from pgrad.errors import ConfigError
from pgrad.estimators import discounted_returns
from pgrad.metric_names import GRAD_NORM, GRAD_NORM_CLIPPED, LEARNING_RATE, LOG_STD, VALUE_LOSS
from pgrad.nets import ActingPolicy, ActionSpec, ActorCritic, ObsShape
from pgrad.numerics import masked_mean, masked_whiten, value_loss
from pgrad.rollout import Batch, Rollout, rollout_to_batch


@dataclass(frozen=True)
class ReinforceConfig(Checked):
    """REINFORCE hyper-parameters."""

    SECTION: ClassVar[str] = "reinforce"

    num_episodes: int = param(16, "complete episodes per update; at least env.num_envs (each env runs its share)")
    gamma: float = glossary.gamma(0.99, "of the reward-to-go")
    baseline: bool = param(True, "subtract a learned state-value baseline V(s) from the reward-to-go")
    value_epochs: int = param(5, "full-batch regression steps of the baseline on the returns per update")
    normalize_returns: bool = param(
        True, "normalise the policy-gradient weights (G_t, or G_t - V(s_t) with a baseline) to mean 0, std 1"
    )
    ent_coef: float = glossary.ent_coef(0.0)
    max_grad_norm: float | None = glossary.max_grad_norm(None, "of the policy step; None: off")
    network: NetworkConfig = param(NetworkConfig(), "the policy and baseline MLPs (separate torsos)")
    optimizer: OptimizerConfig = param(OptimizerConfig(learning_rate=1e-3, eps=1e-5), "the policy's: Adam, lr 1e-3")
    value_optimizer: OptimizerConfig = param(
        OptimizerConfig(learning_rate=1e-3, eps=1e-5), "the value baseline's: Adam, lr 1e-3"
    )

    def validate(self) -> None:
        """Checks each hyper-parameter's range, and that the network is not shared (the baseline's regression must not
        move the policy)."""
        self.check_range("num_episodes", 1, MAX_WINDOW)
        self.check_range("gamma", 0, 1)
        self.check_range("value_epochs", 1, MAX_WINDOW)
        self.check_range("ent_coef", 0)
        self.check_range("max_grad_norm", 0, low_open=True)
        if self.network.shared_network:
            raise ConfigError(
                "reinforce.network.shared_network must be false (the baseline's regression must not move the "
                "policy); got True"
            )

    def check_with_env(self, env: EnvConfig) -> None:
        """Checks ``num_episodes >= env.num_envs``: every env runs whole episodes."""
        if self.num_episodes < env.num_envs:
            raise ConfigError(
                f"reinforce.num_episodes must be >= env.num_envs = {env.num_envs} (every env runs whole "
                f"episodes); got {self.num_episodes}"
            )


def reinforce_loss(
    *,
    log_probs: torch.Tensor,
    weights: torch.Tensor,
    entropy: torch.Tensor,
    mask: torch.Tensor,
    ent_coef: float,
    norm_adv: bool,
) -> LossTerms:
    """L(theta) = -E[log pi_theta(a|s) Psi] - ent_coef E[H(pi_theta(.|s))].

    Psi = G - b(s) (or G) is a constant weight (detached here); with ``norm_adv`` it is normalised
    to mean 0, std 1 first. Every tensor has the shape of ``mask``; E[.] is the mean over entries
    with mask = 1, a per-step mean that keeps the step size independent of episode length. The
    gradient is the REINFORCE estimate, averaged over those entries.
    """
    weights = weights.detach()
    if norm_adv:
        weights = masked_whiten(weights, mask)
    policy_loss = -masked_mean(log_probs * weights, mask)
    mean_entropy = masked_mean(entropy, mask)
    loss = policy_loss - ent_coef * mean_entropy
    return LossTerms(loss=loss, policy_loss=policy_loss, entropy=mean_entropy)


class Reinforce:
    """The REINFORCE learner: a policy, an optional value baseline, and their optimisers."""

    name = "reinforce"

    def __init__(
        self, config: ReinforceConfig, obs_shape: ObsShape, action: ActionSpec, device: torch.device | str = "cpu"
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        # Separate torsos (validate refuses a shared one): the baseline's regression must not move the policy.
        self.model = ActorCritic.from_config(obs_shape, action, config.network).to(self.device)
        self.policy_parameters, self.value_parameters = actor_and_critic_parameters(self.model)
        self.optimizer = make_optimizer(self.policy_parameters, config.optimizer)
        self.value_optimizer = make_optimizer(self.value_parameters, config.value_optimizer)

    @property
    def episodes_per_update(self) -> int:
        """Tells the trainer to collect whole episodes (``collect_episodes``) instead of num_steps."""
        return self.config.num_episodes

    @property
    def rollout_length(self) -> int:
        """0: REINFORCE collects ``num_episodes`` whole episodes, as long as they take."""
        return 0  # variable: as long as the episodes take

    @property
    def gamma(self) -> float:
        """The discount factor, from the config."""
        return self.config.gamma

    def acting_policy(self) -> ActingPolicy:
        """The model's acting policy (the loop samples actions from it)."""
        return self.model.acting_policy()

    def prepare(self, rollout: Rollout) -> tuple[Batch, dict[str, float]]:
        """Reward-to-go G_t per episode; the batch keeps only valid steps (those of completed episodes)."""
        config = self.config
        values, _ = evaluate_rollout(self.model, rollout, self.device, with_log_probs=False)
        # Only a baseline can bootstrap a time-limit cut; without one the return stops there.
        next_values = values[1:] if config.baseline else None
        returns = discounted_returns(rollout.rewards, rollout.terminated, rollout.truncated, config.gamma, next_values)
        advantages = returns - values[:-1] if config.baseline else returns
        batch, stats = rollout_to_batch(rollout, values, advantages, returns, None, self.device, valid_only=True)
        stats["diagnostics/return_to_go_mean"] = float(batch.returns.mean())
        stats["rollout/steps_per_update"] = float(rollout.num_steps * rollout.num_envs)
        return batch, stats

    def update(self, batch: Batch, context: UpdateContext) -> dict[str, float]:
        """One policy-gradient step, then ``value_epochs`` regression steps of the baseline."""
        config = self.config
        learning_rate = scheduled_learning_rate(self.optimizer, config.optimizer, context)
        value_learning_rate = scheduled_learning_rate(self.value_optimizer, config.value_optimizer, context)
        dist = self.model.distribution(batch.obs)
        terms = reinforce_loss(
            log_probs=dist.log_prob(batch.actions),
            weights=batch.advantages,
            entropy=dist.entropy(),
            mask=batch.mask,
            ent_coef=config.ent_coef,
            norm_adv=config.normalize_returns,
        )
        metrics = mean_metrics([terms.metrics()])
        norms = optimizer_step(self.optimizer, self.policy_parameters, terms.loss, config.max_grad_norm)
        if isinstance(norms, tuple):  # with max_grad_norm None: not clipped, not logged
            metrics[GRAD_NORM], metrics[GRAD_NORM_CLIPPED] = norms
        if config.baseline:
            for _ in range(config.value_epochs):
                loss = value_loss(self.model.value(batch.obs), batch.returns, batch.mask)
                optimizer_step(self.value_optimizer, self.value_parameters, loss, None)
            metrics[VALUE_LOSS] = float(loss.detach())
        metrics[LEARNING_RATE] = learning_rate
        metrics["train/value_learning_rate"] = value_learning_rate
        metrics["train/batch_size"] = float(len(batch))
        if self.model.log_std is not None:
            metrics[LOG_STD] = float(self.model.log_std.detach().mean())
        return metrics

    # ---- checkpoint contract ------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        """The checkpoint contract: the networks saved and restored (the actor-critic model)."""
        return {"model": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The checkpoint contract: the policy's and the value baseline's optimizers."""
        return {"policy": self.optimizer, "value": self.value_optimizer}

    def extra_state(self) -> dict[str, Any]:
        """The checkpoint contract: nothing beyond the networks and optimizers."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """The checkpoint contract: nothing to restore beyond the networks and optimizers."""
        pass
