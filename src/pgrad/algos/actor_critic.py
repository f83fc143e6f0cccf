"""Actor-critic with TD(0) or n-step advantages (Sutton & Barto 2018, ch. 13.5; Konda & Tsitsiklis 2000).

The critic V_w learns by semi-gradient regression on a bootstrapped target that is held constant:

    y_t = G_t^(n) = sum_{k<n} gamma^k r_{t+k} + gamma^n V_w(s_{t+n})      (n = 1: TD(0), y = r + gamma V(s'))
    A_t = y_t - V_w(s_t)

and the actor follows -E[log pi(a_t|s_t) A_t]. The target is computed in ``prepare`` from values
taken without gradients, so no gradient flows through V_w(s_{t+n}) (the "detached target").
Actor and critic have their own optimisers (``optimizer``, ``critic_optimizer``); with
``network.shared_network`` the shared torso belongs to the actor's optimiser and also receives
vf_coef x the critic's gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from pgrad import glossary
from pgrad.algos.common import (
    actor_critic_loss,
    evaluate_rollout,
    make_optimizer,
    mean_metrics,
    optimizer_step,
    scheduled_learning_rate,
)
from pgrad.algos.contract import UpdateContext
from pgrad.config import MAX_WINDOW, Checked, NetworkConfig, OptimizerConfig, param
from pgrad.estimators import nstep_returns
from pgrad.metric_names import GRAD_NORM, GRAD_NORM_CLIPPED, LOG_STD
from pgrad.nets import ActingPolicy, ActionSpec, ActorCritic, ObsShape
from pgrad.rollout import Batch, Rollout, rollout_to_batch


@dataclass(frozen=True)
class ActorCriticConfig(Checked):
    """Actor-critic hyper-parameters."""

    SECTION: ClassVar[str] = "actor_critic"

    num_steps: int = param(8, "steps per environment per update (batch = num_steps x env.num_envs)")
    nstep_horizon: int = param(1, "n of the n-step target: 1 is TD(0); windows are cut at the rollout end")
    gamma: float = glossary.gamma(0.99)
    ent_coef: float = glossary.ent_coef(0.0)
    vf_coef: float = glossary.vf_coef(0.5, "matters for a shared torso; with separate nets Adam rescales it")
    max_grad_norm: float | None = glossary.max_grad_norm(0.5, "over actor and critic; None: off")
    norm_adv: bool = glossary.norm_adv(False, "over the batch")
    network: NetworkConfig = param(NetworkConfig(), "the actor-critic MLP")
    optimizer: OptimizerConfig = param(
        OptimizerConfig(learning_rate=1e-3, eps=1e-5), "the actor's optimizer (a shared torso's too): Adam, lr 1e-3"
    )
    critic_optimizer: OptimizerConfig = param(
        OptimizerConfig(learning_rate=1e-3, eps=1e-5), "the critic's optimizer: Adam, lr 1e-3"
    )

    def validate(self) -> None:
        """Checks each hyper-parameter's range."""
        self.check_range("num_steps", 1, MAX_WINDOW)
        self.check_range("nstep_horizon", 1, MAX_WINDOW)
        self.check_range("gamma", 0, 1)
        self.check_range("ent_coef", 0)
        self.check_range("vf_coef", 0, low_open=True)
        self.check_range("max_grad_norm", 0, low_open=True)


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
    """The actor-critic learner: separate optimisers for actor and critic, one step per rollout."""

    name = "actor_critic"

    def __init__(
        self, config: ActorCriticConfig, obs_shape: ObsShape, action: ActionSpec, device: torch.device | str = "cpu"
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        self.model = ActorCritic.from_config(obs_shape, action, config.network).to(self.device)
        actor_parameters, critic_parameters = actor_and_critic_parameters(self.model)
        self.parameters = actor_parameters + critic_parameters
        self.actor_optimizer = make_optimizer(actor_parameters, config.optimizer)
        self.critic_optimizer = make_optimizer(critic_parameters, config.critic_optimizer)

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
        """One gradient-free pass; targets R = G^(n) (``nstep_returns``) and A = R - V(s)."""
        config = self.config
        values, log_probs = evaluate_rollout(self.model, rollout, self.device)
        returns = nstep_returns(
            rollout.rewards, values[1:], rollout.terminated, rollout.truncated, config.gamma, config.nstep_horizon
        )
        return rollout_to_batch(rollout, values, returns - values[:-1], returns, log_probs, self.device)

    def update(self, batch: Batch, context: UpdateContext) -> dict[str, float]:
        """One gradient step of actor and critic on the whole batch."""
        config = self.config
        actor_rate = scheduled_learning_rate(self.actor_optimizer, config.optimizer, context)
        critic_rate = scheduled_learning_rate(self.critic_optimizer, config.critic_optimizer, context)
        dist, values = self.model(batch.obs)
        terms = actor_critic_loss(
            log_probs=dist.log_prob(batch.actions),
            advantages=batch.advantages,
            values=values,
            returns=batch.returns,
            entropy=dist.entropy(),
            mask=batch.mask,
            vf_coef=config.vf_coef,
            ent_coef=config.ent_coef,
            norm_adv=config.norm_adv,
        )
        metrics = mean_metrics([terms.metrics()])
        norms = optimizer_step(
            (self.actor_optimizer, self.critic_optimizer), self.parameters, terms.loss, config.max_grad_norm
        )
        if isinstance(norms, tuple):  # with max_grad_norm None: not clipped, not logged
            metrics[GRAD_NORM], metrics[GRAD_NORM_CLIPPED] = norms
        metrics["train/actor_learning_rate"] = actor_rate
        metrics["train/critic_learning_rate"] = critic_rate
        metrics["train/gradient_steps"] = 1.0
        if self.model.log_std is not None:
            metrics[LOG_STD] = float(self.model.log_std.detach().mean())
        return metrics

    # ---- checkpoint contract ------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        """The checkpoint contract: the networks saved and restored (the actor-critic model)."""
        return {"model": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The checkpoint contract: the actor's and the critic's optimizers."""
        return {"actor": self.actor_optimizer, "critic": self.critic_optimizer}

    def extra_state(self) -> dict[str, Any]:
        """The checkpoint contract: nothing beyond the networks and optimizers."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """The checkpoint contract: nothing to restore beyond the networks and optimizers."""
        pass
