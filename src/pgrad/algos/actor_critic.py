"""Actor-critic with TD(0) or n-step advantages (Sutton & Barto 2018, ch. 13.5; Konda & Tsitsiklis 2000).

The critic V_w learns by semi-gradient regression on a bootstrapped target that is held constant:

    y_t = G_t^(n) = sum_{k<n} gamma^k r_{t+k} + gamma^n V_w(s_{t+n})      (n = 1: TD(0), y = r + gamma V(s'))
    A_t = y_t - V_w(s_t)

and the actor follows -E[log pi(a_t|s_t) A_t]. The target is computed in ``prepare`` from values
taken without gradients, so no gradient flows through V_w(s_{t+n}) (the "detached target").
Actor and critic have their own Adam optimisers and learning rates; with ``shared_network`` the
shared torso belongs to the actor's optimiser and also receives vf_coef x the critic's gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from pgrad.algos.common import adam, clip_gradients, masked_mean, normalize_advantages
from pgrad.algos.contract import UpdateContext
from pgrad.config import Checked, param
from pgrad.distributions import Categorical, DiagGaussian
from pgrad.estimators import explained_variance, nstep_returns
from pgrad.nets import ActingPolicy, ActionSpec, ActorCritic
from pgrad.rollout import Batch, Rollout


@dataclass(frozen=True)
class ActorCriticConfig(Checked):
    """Actor-critic hyper-parameters."""

    SECTION: ClassVar[str] = "actor_critic"

    num_steps: int = param(8, "steps per environment per update (batch = num_steps x env.num_envs)")
    nstep_horizon: int = param(1, "n of the n-step target: 1 is TD(0); windows are cut at the rollout end")
    gamma: float = param(0.99, "discount factor")
    actor_learning_rate: float = param(1e-3, "Adam learning rate of the actor")
    critic_learning_rate: float = param(1e-3, "Adam learning rate of the critic")
    adam_eps: float = param(1e-5, "Adam epsilon")
    ent_coef: float = param(0.0, "entropy bonus coefficient")
    vf_coef: float = param(0.5, "value loss weight (matters for a shared torso; with separate nets Adam rescales it)")
    max_grad_norm: float | None = param(0.5, "global L2 gradient-norm clip over actor and critic (None: off)")
    norm_adv: bool = param(False, "normalise advantages over the batch")
    hidden_sizes: tuple[int, ...] = param((64, 64), "MLP hidden layer sizes")
    activation: Literal["tanh", "relu"] = param("tanh", "hidden activation")
    shared_network: bool = param(False, "share the MLP torso between actor and critic")
    log_std_init: float = param(0.0, "initial log std of Gaussian policies")

    def validate(self) -> None:
        self.check_range("num_steps", 1)
        self.check_range("nstep_horizon", 1)
        self.check_range("gamma", 0, 1)
        self.check_range("actor_learning_rate", 0, low_open=True)
        self.check_range("critic_learning_rate", 0, low_open=True)
        self.check_range("adam_eps", 0, low_open=True)
        self.check_range("ent_coef", 0)
        self.check_range("vf_coef", 0, low_open=True)
        self.check_range("max_grad_norm", 0, low_open=True)
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            self._fail("hidden_sizes", "a non-empty list of positive integers")


def nstep_batch(model: ActorCritic, rollout: Rollout, gamma: float, horizon: int) -> tuple[Batch, dict[str, float]]:
    """One batched, gradient-free forward; targets R = G^(n) (``nstep_returns``) and A = R - V(s).

    ``values[1:]`` are the bootstraps: V(s_{t+1}), V(final observation) where an episode ended at t,
    and V(s_T) after the last step. Advantages of autoreset steps are zeroed and masked.
    """
    steps, envs = rollout.num_steps, rollout.num_envs
    obs = torch.from_numpy(rollout.obs.reshape((steps + 1) * envs, -1))
    actions = torch.from_numpy(rollout.actions.reshape(steps * envs, *rollout.actions.shape[2:]))
    with torch.no_grad():
        log_probs = model.distribution(obs[: steps * envs]).log_prob(actions)
        values = model.value(obs)
    values_tm = values.numpy().reshape(steps + 1, envs)
    returns = nstep_returns(rollout.rewards, values_tm[1:], rollout.terminated, rollout.truncated, gamma, horizon)
    valid = rollout.valid
    advantages = np.where(valid, returns - values_tm[:-1], 0.0).astype(np.float32)
    batch = Batch(
        obs=obs[: steps * envs],
        actions=actions,
        log_probs=log_probs,
        values=values[: steps * envs],
        advantages=torch.from_numpy(advantages.reshape(-1)),
        returns=torch.from_numpy(returns.astype(np.float32).reshape(-1)),
        mask=torch.from_numpy(valid.reshape(-1).astype(np.float32)),
    )
    valid_adv = advantages[valid]
    stats = {
        "diagnostics/advantage_mean": float(valid_adv.mean()) if valid_adv.size else 0.0,
        "diagnostics/advantage_std": float(valid_adv.std()) if valid_adv.size else 0.0,
        "diagnostics/explained_variance": explained_variance(values_tm[:-1][valid], returns[valid]),
        "diagnostics/valid_fraction": float(valid.mean()),
    }
    return batch, stats


def actor_critic_loss(
    dist: Categorical | DiagGaussian, values: torch.Tensor, batch: Batch, config: ActorCriticConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = -E[log pi(a|s) A] + vf_coef E[(V_w(s) - sg(y))^2] - ent_coef E[H(pi(.|s))].

    sg = stop-gradient: y (``batch.returns``) and A are detached here as well, so a caller that
    built them with gradients still gets the semi-gradient TD update. Means over valid steps.
    """
    mask = batch.mask
    advantages = batch.advantages.detach()
    if config.norm_adv:
        advantages = normalize_advantages(advantages, mask)
    policy_loss = -masked_mean(dist.log_prob(batch.actions) * advantages, mask)
    value_loss = masked_mean((values - batch.returns.detach()).pow(2), mask)
    entropy = masked_mean(dist.entropy(), mask)
    loss = policy_loss + config.vf_coef * value_loss - config.ent_coef * entropy
    stats = {
        "train/policy_loss": policy_loss.detach(),
        "train/value_loss": value_loss.detach(),
        "diagnostics/entropy": entropy.detach(),
    }
    return loss, stats


def actor_and_critic_parameters(model: ActorCritic) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split the learner's parameters; a shared torso goes with the actor."""
    actor = [*model.actor_torso.parameters(), *model.policy_head.parameters()]
    if model.log_std is not None:
        actor.append(model.log_std)
    critic = [*model.value_head.parameters()]
    if model.critic_torso is not None:
        critic = [*model.critic_torso.parameters(), *critic]
    return actor, critic


class ActorCriticAlgorithm:
    """The actor-critic learner: separate Adam optimisers for actor and critic, one step per rollout."""

    name = "actor_critic"

    def __init__(self, config: ActorCriticConfig, obs_dim: int, action: ActionSpec) -> None:
        self.config = config
        self.model = ActorCritic(
            obs_dim, action, config.hidden_sizes, config.activation, config.shared_network, config.log_std_init
        )
        actor_parameters, critic_parameters = actor_and_critic_parameters(self.model)
        self.parameters = actor_parameters + critic_parameters
        self.actor_optimizer = adam(actor_parameters, config.actor_learning_rate, config.adam_eps)
        self.critic_optimizer = adam(critic_parameters, config.critic_learning_rate, config.adam_eps)

    @property
    def rollout_length(self) -> int:
        return self.config.num_steps

    @property
    def gamma(self) -> float:
        return self.config.gamma

    def acting_policy(self) -> ActingPolicy:
        return self.model.acting_policy()

    def prepare(self, rollout: Rollout) -> tuple[Batch, dict[str, float]]:
        return nstep_batch(self.model, rollout, self.config.gamma, self.config.nstep_horizon)

    def update(self, batch: Batch, context: UpdateContext) -> dict[str, float]:
        """One gradient step of actor and critic on the whole batch."""
        config = self.config
        actor_rate = config.actor_learning_rate * context.lr_scale
        critic_rate = config.critic_learning_rate * context.lr_scale
        for optimizer, rate in ((self.actor_optimizer, actor_rate), (self.critic_optimizer, critic_rate)):
            for group in optimizer.param_groups:
                group["lr"] = rate
        dist, values = self.model(batch.obs)
        loss, stats = actor_critic_loss(dist, values, batch, config)
        self.actor_optimizer.zero_grad(set_to_none=True)
        self.critic_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        metrics = {key: float(value) for key, value in stats.items()}
        if config.max_grad_norm is not None:
            grad_norm, clipped = clip_gradients(self.parameters, config.max_grad_norm)
            metrics["diagnostics/grad_norm"] = grad_norm
            metrics["diagnostics/grad_norm_clipped"] = clipped
        self.actor_optimizer.step()
        self.critic_optimizer.step()
        metrics["train/actor_learning_rate"] = actor_rate
        metrics["train/critic_learning_rate"] = critic_rate
        metrics["train/gradient_steps"] = 1.0
        if self.model.log_std is not None:
            metrics["diagnostics/log_std_mean"] = float(self.model.log_std.detach().mean())
        return metrics

    # ---- checkpoint contract ------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor": self.actor_optimizer, "critic": self.critic_optimizer}

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass
