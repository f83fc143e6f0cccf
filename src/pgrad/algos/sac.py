"""Soft Actor-Critic (Haarnoja et al., 2018; the 2018 "algorithms and applications" version with a
learned temperature and no state-value network).

One gradient step, in SB3's order:
1. alpha: L_alpha = -E[log alpha (log pi(a~|s) + H_target)], H_target = -|A| by default;
2. critics: y = r + gamma (1 - terminated) (min_i Q'_i(s', a') - alpha log pi(a'|s')), a' ~ pi(.|s');
   L_Q = 1/2 sum_i E[(Q_i(s, a) - y)^2];
3. actor: L_pi = E[alpha log pi(a~|s) - min_i Q_i(s, a~)], a~ reparameterised, with the critics just updated;
4. targets: theta' <- tau theta + (1 - tau) theta' every ``target_update_interval`` gradient steps.
The squashed Gaussian's log-probability carries the tanh correction (``pgrad.distributions.TanhGaussian``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from pgrad import glossary
from pgrad.algos.common import optimizer_step
from pgrad.algos.contract import UpdateContext
from pgrad.algos.off_policy import (
    QNetworkConfig,
    check_off_policy_env,
    critic_loss,
    frozen_copy,
    make_optimizers,
    polyak_update,
    q_statistics,
    replay_priorities,
    sac_actor_loss,
    schedule_learning_rates,
    temperature_loss,
    twin_min_target,
)
from pgrad.config import MAX_WINDOW, Checked, EnvConfig, OffPolicyLoopConfig, OptimizerConfig, param
from pgrad.metric_names import ALPHA, ALPHA_LOSS, LEARNING_RATE
from pgrad.nets import (
    ActionSpec,
    ObsLayout,
    QNetworks,
    SquashedActingPolicy,
    SquashedGaussianActor,
    live_squashed_policy,
)
from pgrad.replay import TransitionBatch


@dataclass(frozen=True)
class SACConfig(Checked):
    """SAC hyper-parameters; every default is SB3's ``SAC`` (stable_baselines3/sac/sac.py, sac/policies.py)."""

    SECTION: ClassVar[str] = "sac"

    gamma: float = glossary.gamma(0.99, "SB3: 0.99")
    tau: float = glossary.tau(0.005, "SB3: 0.005")
    alpha: float | Literal["auto"] = param(
        "auto", "entropy temperature: 'auto' learns log alpha toward target_entropy; a number fixes it (SB3: auto)"
    )
    alpha_init: float = param(1.0, "initial temperature when learned (SB3: 1.0, 'auto_1.0')")
    target_entropy: float | Literal["auto"] = param("auto", "entropy target of the learned alpha; 'auto' = -|A| (SB3)")
    target_update_interval: int = param(1, "gradient steps between two Polyak updates of the targets (SB3: 1)")
    network: QNetworkConfig = param(QNetworkConfig(), "actor and twin critics: 256x256 ReLU MLPs (SB3 sac/policies.py)")
    optimizer: OptimizerConfig = param(
        OptimizerConfig(learning_rate=3e-4, eps=1e-8),
        "one Adam each for actor, critics and temperature: lr 3e-4, eps 1e-8 (SB3's SAC: torch's Adam defaults)",
    )
    loop: OffPolicyLoopConfig = param(
        OffPolicyLoopConfig(), "replay buffer and schedule (SB3: 1e6, batch 256, learning_starts 100, 1 step per step)"
    )

    def validate(self) -> None:
        """Checks each hyper-parameter's range."""
        self.check_range("gamma", 0, 1)
        self.check_range("tau", 0, 1, low_open=True)
        if not isinstance(self.alpha, str):
            self.check_range("alpha", 0)
        self.check_range("alpha_init", 0, low_open=True)
        self.check_range("target_update_interval", 1, MAX_WINDOW)

    def check_with_env(self, env: EnvConfig) -> None:
        """Checks the env suits an off-policy algorithm (``check_off_policy_env``)."""
        check_off_policy_env(self.SECTION, env)


class SAC:
    """The SAC learner: actor, twin critics and their targets, the temperature, one ``update`` per gradient step."""

    name = "sac"

    def __init__(
        self, config: SACConfig, obs_shape: int | ObsLayout, action: ActionSpec, device: torch.device | str = "cpu"
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        size, hidden, activation = action.size, config.network.hidden_sizes, config.network.activation
        torso = (config.network.torso, config.network.torso_kwargs)
        self.actor = SquashedGaussianActor(obs_shape, size, hidden, activation, *torso).to(self.device)
        self.critics = QNetworks(obs_shape, size, hidden, activation, 2, *torso).to(self.device)
        self.target_critics = frozen_copy(self.critics)
        self.actor_parameters = list(self.actor.parameters())
        self.critic_parameters = list(self.critics.parameters())
        self.learn_alpha = config.alpha == "auto"
        self.target_entropy = -float(size) if config.target_entropy == "auto" else float(config.target_entropy)
        initial = config.alpha_init if self.learn_alpha else float(config.alpha)
        # log alpha is learned (and stays a module parameter either way, so checkpoints have one layout)
        self.temperature = torch.nn.ParameterDict(
            {"log_alpha": torch.nn.Parameter(torch.tensor(math.log(max(initial, 1e-30)), device=self.device))}
        )
        self.temperature.requires_grad_(self.learn_alpha)
        self.actor_optimizer, self.critic_optimizer, self.alpha_optimizer = make_optimizers(
            config.optimizer, self.actor_parameters, self.critic_parameters, [self.temperature["log_alpha"]]
        )
        self.learning_rate = config.optimizer.learning_rate
        self.gradient_steps = 0

    @property
    def loop(self) -> OffPolicyLoopConfig:
        """The off-policy loop's schedule, from the config."""
        return self.config.loop

    @property
    def gamma(self) -> float:
        """The discount factor, from the config."""
        return self.config.gamma

    def acting_policy(self) -> SquashedActingPolicy:
        """The actor's squashed Gaussian policy (it samples, so no added noise)."""
        return self.actor.acting_policy()

    def live_acting_policy(self) -> SquashedActingPolicy | None:
        """The exploring policy on views of the actor's parameters, for the off-policy loop (``live_squashed_policy``;
        None where it cannot be live)."""
        return live_squashed_policy(self.actor)

    def end_episodes(self, done: np.ndarray) -> None:
        """Nothing: SAC's exploration (a fresh Gaussian draw per step) carries nothing across steps."""
        pass  # SAC's exploration (a fresh Gaussian draw per step) carries nothing across steps

    def alpha(self) -> torch.Tensor:
        """The temperature: exp(log_alpha) when learned, else the fixed ``alpha``."""
        return (
            self.temperature["log_alpha"].detach().exp() if self.learn_alpha else torch.tensor(float(self.config.alpha))
        )

    def update(self, batch: TransitionBatch, context: UpdateContext) -> dict[str, Any]:
        """One gradient step on ``batch``; metrics as tensors (the loop averages them per log row)."""
        config = self.config
        self.learning_rate = schedule_learning_rates(list(self.optimizers().values()), config.optimizer, context)
        metrics: dict[str, Any] = {}

        actions_pi, log_prob_pi = self.actor(batch.obs).rsample_with_log_prob()
        if self.learn_alpha:
            log_alpha = self.temperature["log_alpha"]
            alpha_loss = temperature_loss(log_alpha, log_prob_pi, self.target_entropy)
            metrics[ALPHA_LOSS] = alpha_loss.detach()
            alpha = log_alpha.detach().exp()  # this step's alpha: the one before its own update, as SB3
            optimizer_step(self.alpha_optimizer, [log_alpha], alpha_loss, None)
        else:
            alpha = self.alpha()

        with torch.no_grad():
            next_actions, next_log_prob = self.actor(batch.next_obs).rsample_with_log_prob()
            next_qs = self.target_critics.stacked(batch.next_obs, next_actions)  # [2, N]: both critics at once
            target = twin_min_target(batch.rewards, batch.terminated, next_qs, config.gamma, next_log_prob, alpha)
        q_values = self.critics.stacked(batch.obs, batch.actions)
        loss_q = 0.5 * critic_loss(q_values, target, batch.weights)
        metrics["diagnostics/critic_grad_norm"] = optimizer_step(
            self.critic_optimizer, self.critic_parameters, loss_q, None
        )

        # the critics stay fixed in the actor's step: their weights detached, so no gradient is computed for them
        # (a third of the backward pass), only through their input a~
        q_pi = self.critics.stacked(batch.obs, actions_pi, detach_weights=True)
        loss_pi = sac_actor_loss(q_pi, log_prob_pi, alpha)
        metrics["diagnostics/actor_grad_norm"] = optimizer_step(
            self.actor_optimizer, self.actor_parameters, loss_pi, None
        )

        self.gradient_steps += 1
        if self.gradient_steps % config.target_update_interval == 0:
            polyak_update(self.critics, self.target_critics, config.tau)
        metrics.update(q_statistics(q_values, target))
        metrics.update(replay_priorities(batch, q_values, target))
        metrics.update(
            {
                "train/critic_loss": loss_q.detach(),
                "train/actor_loss": loss_pi.detach(),
                ALPHA: alpha,
                "train/entropy": -log_prob_pi.detach().mean(),  # E[-log pi(a~|s)]: the policy's entropy estimate
            }
        )
        return metrics

    def learning_rate_metrics(self) -> dict[str, float]:
        """The learning rate of the last ``update`` (after the schedule), for the logs."""
        return {LEARNING_RATE: self.learning_rate}

    # ---- checkpoint contract ------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        """The checkpoint contract: the networks saved and restored, targets included."""
        return {
            "actor": self.actor,
            "critics": self.critics,
            "target_critics": self.target_critics,
            "temperature": self.temperature,
        }

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The checkpoint contract: the actor's, the critics' and the temperature's optimizers."""
        return {"actor": self.actor_optimizer, "critics": self.critic_optimizer, "alpha": self.alpha_optimizer}

    def extra_state(self) -> dict[str, Any]:
        """The checkpoint contract: the gradient step count (for ``target_update_interval``)."""
        return {"gradient_steps": self.gradient_steps}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """The checkpoint contract: restores the gradient step count."""
        self.gradient_steps = int(state.get("gradient_steps", 0))
