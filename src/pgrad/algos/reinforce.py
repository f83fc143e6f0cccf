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
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from pgrad.algos.actor_critic import actor_and_critic_parameters
from pgrad.algos.common import adam, clip_gradients, masked_mean, normalize_advantages
from pgrad.algos.contract import UpdateContext
from pgrad.config import Checked, EnvConfig, param
from pgrad.distributions import Categorical, DiagGaussian
from pgrad.errors import ConfigError
from pgrad.estimators import discounted_returns, explained_variance
from pgrad.nets import ActingPolicy, ActionSpec, ActorCritic
from pgrad.rollout import Batch, Rollout


@dataclass(frozen=True)
class ReinforceConfig(Checked):
    """REINFORCE hyper-parameters."""

    SECTION: ClassVar[str] = "reinforce"

    num_episodes: int = param(16, "complete episodes per update; at least env.num_envs (each env runs its share)")
    gamma: float = param(0.99, "discount factor of the reward-to-go")
    learning_rate: float = param(1e-3, "Adam learning rate of the policy")
    adam_eps: float = param(1e-5, "Adam epsilon")
    baseline: bool = param(True, "subtract a learned state-value baseline V(s) from the reward-to-go")
    value_learning_rate: float = param(1e-3, "Adam learning rate of the value baseline")
    value_epochs: int = param(5, "full-batch regression steps of the baseline on the returns per update")
    normalize_returns: bool = param(
        True, "normalise the policy-gradient weights (G_t, or G_t - V(s_t) with a baseline) to mean 0, std 1"
    )
    ent_coef: float = param(0.0, "entropy bonus coefficient")
    max_grad_norm: float | None = param(None, "global L2 gradient-norm clip of the policy step (None: off)")
    hidden_sizes: tuple[int, ...] = param((64, 64), "MLP hidden layer sizes")
    activation: Literal["tanh", "relu"] = param("tanh", "hidden activation")
    log_std_init: float = param(0.0, "initial log std of Gaussian policies")

    def validate(self) -> None:
        self.check_range("num_episodes", 1)
        self.check_range("gamma", 0, 1)
        self.check_range("learning_rate", 0, low_open=True)
        self.check_range("adam_eps", 0, low_open=True)
        self.check_range("value_learning_rate", 0, low_open=True)
        self.check_range("value_epochs", 1)
        self.check_range("ent_coef", 0)
        self.check_range("max_grad_norm", 0, low_open=True)
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            self._fail("hidden_sizes", "a non-empty list of positive integers")

    def check_with_env(self, env: EnvConfig) -> None:
        if self.num_episodes < env.num_envs:
            raise ConfigError(
                f"reinforce.num_episodes must be >= env.num_envs = {env.num_envs} (every env runs whole "
                f"episodes); got {self.num_episodes}"
            )


def reinforce_loss(
    dist: Categorical | DiagGaussian, actions: torch.Tensor, weights: torch.Tensor, ent_coef: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L(theta) = -(1/N) sum_i log pi_theta(a_i|s_i) Psi_i - ent_coef (1/N) sum_i H(pi_theta(.|s_i)).

    Psi_i = G_i - b(s_i) (or G_i) is a constant weight; its gradient is the REINFORCE estimate,
    averaged over the N valid steps of the batch (a per-step mean keeps the step size independent
    of episode length).
    """
    policy_loss = -(dist.log_prob(actions) * weights.detach()).mean()
    entropy = dist.entropy().mean()
    loss = policy_loss - ent_coef * entropy
    return loss, {"train/policy_loss": policy_loss.detach(), "diagnostics/entropy": entropy.detach()}


class Reinforce:
    """The REINFORCE learner: a policy, an optional value baseline, and their Adam optimisers."""

    name = "reinforce"

    def __init__(self, config: ReinforceConfig, obs_dim: int, action: ActionSpec) -> None:
        self.config = config
        # Separate torsos: the baseline's regression must not move the policy.
        self.model = ActorCritic(obs_dim, action, config.hidden_sizes, config.activation, False, config.log_std_init)
        self.policy_parameters, self.value_parameters = actor_and_critic_parameters(self.model)
        self.optimizer = adam(self.policy_parameters, config.learning_rate, config.adam_eps)
        self.value_optimizer = adam(self.value_parameters, config.value_learning_rate, config.adam_eps)

    @property
    def episodes_per_update(self) -> int:
        """Tells the trainer to collect whole episodes (``collect_episodes``) instead of num_steps."""
        return self.config.num_episodes

    @property
    def rollout_length(self) -> int:
        return 0  # variable: as long as the episodes take

    @property
    def gamma(self) -> float:
        return self.config.gamma

    def acting_policy(self) -> ActingPolicy:
        return self.model.acting_policy()

    def prepare(self, rollout: Rollout) -> tuple[Batch, dict[str, float]]:
        """Reward-to-go G_t per episode; the batch keeps only valid steps (those of completed episodes)."""
        config = self.config
        steps, envs = rollout.num_steps, rollout.num_envs
        valid = rollout.valid
        obs = torch.from_numpy(rollout.obs.reshape((steps + 1) * envs, -1))
        with torch.no_grad():
            values_tm = self.model.value(obs).numpy().reshape(steps + 1, envs)
        # Only a baseline can bootstrap a time-limit cut; without one the return stops there.
        next_values = values_tm[1:] if config.baseline else None
        returns = discounted_returns(rollout.rewards, rollout.terminated, rollout.truncated, config.gamma, next_values)
        index = torch.from_numpy(np.flatnonzero(valid.reshape(-1)))
        actions = torch.from_numpy(rollout.actions.reshape(steps * envs, *rollout.actions.shape[2:]))
        values = torch.from_numpy(values_tm[:-1].reshape(-1))[index]
        flat_returns = torch.from_numpy(returns.astype(np.float32).reshape(-1))[index]
        advantages = flat_returns - values if config.baseline else flat_returns
        batch = Batch(
            obs=obs[: steps * envs][index],
            actions=actions[index],
            log_probs=torch.zeros(len(index)),  # unused: REINFORCE has no importance ratio
            values=values,
            advantages=advantages,
            returns=flat_returns,
            mask=torch.ones(len(index)),
        )
        stats = {
            "diagnostics/return_to_go_mean": float(flat_returns.mean()),
            "diagnostics/advantage_std": float(advantages.std()) if len(index) > 1 else 0.0,
            "diagnostics/explained_variance": explained_variance(values.numpy(), flat_returns.numpy()),
            "diagnostics/valid_fraction": float(valid.mean()),
            "rollout/steps_per_update": float(steps * envs),
        }
        return batch, stats

    def update(self, batch: Batch, context: UpdateContext) -> dict[str, float]:
        """One policy-gradient step, then ``value_epochs`` regression steps of the baseline."""
        config = self.config
        learning_rate = config.learning_rate * context.lr_scale
        value_learning_rate = config.value_learning_rate * context.lr_scale
        for optimizer, rate in ((self.optimizer, learning_rate), (self.value_optimizer, value_learning_rate)):
            for group in optimizer.param_groups:
                group["lr"] = rate
        weights = batch.advantages
        if config.normalize_returns:
            weights = normalize_advantages(weights, batch.mask)
        loss, stats = reinforce_loss(self.model.distribution(batch.obs), batch.actions, weights, config.ent_coef)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        metrics = {key: float(value) for key, value in stats.items()}
        if config.max_grad_norm is not None:
            metrics["diagnostics/grad_norm"], metrics["diagnostics/grad_norm_clipped"] = clip_gradients(
                self.policy_parameters, config.max_grad_norm
            )
        self.optimizer.step()
        if config.baseline:
            for _ in range(config.value_epochs):
                value_loss = masked_mean((self.model.value(batch.obs) - batch.returns).pow(2), batch.mask)
                self.value_optimizer.zero_grad(set_to_none=True)
                value_loss.backward()
                self.value_optimizer.step()
            metrics["train/value_loss"] = float(value_loss.detach())
        metrics["train/learning_rate"] = learning_rate
        metrics["train/batch_size"] = float(len(batch))
        if self.model.log_std is not None:
            metrics["diagnostics/log_std_mean"] = float(self.model.log_std.detach().mean())
        return metrics

    # ---- checkpoint contract ------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"policy": self.optimizer, "value": self.value_optimizer}

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass
