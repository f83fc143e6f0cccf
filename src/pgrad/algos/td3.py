"""Twin Delayed DDPG (Fujimoto et al., 2018): DDPG with three fixes against Q over-estimation.

One gradient step:
1. critics: a' = clip(mu'(s') + clip(eps, -c, c), -1, 1), eps ~ N(0, sigma^2) (target policy smoothing);
   y = r + gamma (1 - terminated) min(Q'_1(s', a'), Q'_2(s', a')) (clipped double Q);
   L_Q = sum_i E[(Q_i(s, a) - y)^2];
2. every ``policy_delay`` gradient steps (delayed updates): actor L_mu = -E[Q_1(s, mu(s))], then
   Polyak averaging of the target actor and the target critics.
"""

from __future__ import annotations

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
    deterministic_actor_loss,
    frozen_copy,
    make_optimizers,
    polyak_update,
    q_statistics,
    replay_priorities,
    schedule_learning_rates,
    smoothed_target_actions,
    twin_min_target,
)
from pgrad.config import MAX_WINDOW, Checked, EnvConfig, OffPolicyLoopConfig, OptimizerConfig, param
from pgrad.metric_names import LEARNING_RATE
from pgrad.nets import (
    ActionSpec,
    DeterministicActor,
    ExplorationNoise,
    ObsLayout,
    QNetworks,
    SquashedActingPolicy,
    live_squashed_policy,
)
from pgrad.replay import TransitionBatch


@dataclass(frozen=True)
class TD3Config(Checked):
    """TD3 hyper-parameters; defaults are SB3's ``TD3`` (stable_baselines3/td3/td3.py, td3/policies.py)
    except the exploration noise, which SB3 leaves off by default and its zoo and the TD3 paper set to
    N(0, 0.1^2)."""

    SECTION: ClassVar[str] = "td3"

    gamma: float = glossary.gamma(0.99, "SB3: 0.99")
    tau: float = glossary.tau(0.005, "SB3: 0.005")
    policy_delay: int = param(2, "critic steps per actor and target update (SB3, TD3 paper: 2)")
    target_policy_noise: float = param(0.2, "std of the target smoothing noise, in [-1, 1] action units (SB3: 0.2)")
    target_noise_clip: float = param(0.5, "the smoothing noise is clipped to +-this (SB3: 0.5)")
    exploration_noise: Literal["gaussian", "ornstein_uhlenbeck", "none"] = param(
        "gaussian", "noise on the actor's action while training (SB3: none; its zoo and the TD3 paper: gaussian 0.1)"
    )
    exploration_std: float = param(0.1, "sigma of the exploration noise, in [-1, 1] action units (TD3 paper: 0.1)")
    network: QNetworkConfig = param(
        QNetworkConfig(hidden_sizes=(400, 300)),
        "actor and twin critics: 400x300 ReLU MLPs (SB3 td3/policies.py, TD3 paper)",
    )
    optimizer: OptimizerConfig = param(
        OptimizerConfig(learning_rate=1e-3, eps=1e-8),
        "one Adam each for actor and critics: lr 1e-3, eps 1e-8 (SB3's TD3: torch's Adam defaults)",
    )
    loop: OffPolicyLoopConfig = param(
        OffPolicyLoopConfig(), "replay buffer and schedule (SB3: 1e6, batch 256, learning_starts 100, 1 step per step)"
    )

    def validate(self) -> None:
        """Checks each hyper-parameter's range."""
        self.check_range("gamma", 0, 1)
        self.check_range("tau", 0, 1, low_open=True)
        self.check_range("policy_delay", 1, MAX_WINDOW)
        self.check_range("target_policy_noise", 0)
        self.check_range("target_noise_clip", 0)
        self.check_range("exploration_std", 0)

    def check_with_env(self, env: EnvConfig) -> None:
        """Checks the env suits an off-policy algorithm (``check_off_policy_env``)."""
        check_off_policy_env(self.SECTION, env)


class TD3:
    """The TD3 learner: actor and twin critics with their targets; one ``update`` per gradient step."""

    name = "td3"

    def __init__(
        self, config: TD3Config, obs_shape: int | ObsLayout, action: ActionSpec, device: torch.device | str = "cpu"
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        hidden, activation = config.network.hidden_sizes, config.network.activation
        torso = (config.network.torso, config.network.torso_kwargs)
        self.actor = DeterministicActor(obs_shape, action.size, hidden, activation, *torso).to(self.device)
        self.critics = QNetworks(obs_shape, action.size, hidden, activation, 2, *torso).to(self.device)
        self.target_actor = frozen_copy(self.actor)
        self.target_critics = frozen_copy(self.critics)
        self.actor_parameters = list(self.actor.parameters())
        self.critic_parameters = list(self.critics.parameters())
        self.actor_optimizer, self.critic_optimizer = make_optimizers(
            config.optimizer, self.actor_parameters, self.critic_parameters
        )
        self.learning_rate = config.optimizer.learning_rate
        self.noise = ExplorationNoise(config.exploration_noise, config.exploration_std)
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
        """The actor's deterministic policy plus the exploration noise."""
        return self.actor.acting_policy(self.noise)

    def live_acting_policy(self) -> SquashedActingPolicy | None:
        """The exploring policy on views of the actor's parameters, for the off-policy loop (``live_squashed_policy``;
        None where it cannot be live)."""
        return live_squashed_policy(self.actor, self.noise)

    def end_episodes(self, done: np.ndarray) -> None:
        """Resets the exploration noise (OU state) of the envs whose episodes ended."""
        self.noise.end_episodes(done)

    def critic_target(self, batch: TransitionBatch) -> torch.Tensor:
        """y = r + gamma (1 - terminated) min_i Q'_i(s', clip(mu'(s') + clip(eps, -c, c), -1, 1)), no gradient (also
        what an APE-X actor prioritises with, ``pgrad.algos.apex``)."""
        config = self.config
        with torch.no_grad():
            next_actions = smoothed_target_actions(
                self.target_actor(batch.next_obs), config.target_policy_noise, config.target_noise_clip
            )
            next_qs = self.target_critics.stacked(batch.next_obs, next_actions)  # [2, N]: both critics at once
            return twin_min_target(batch.rewards, batch.terminated, next_qs, config.gamma)

    def update(self, batch: TransitionBatch, context: UpdateContext) -> dict[str, Any]:
        """One TD3 gradient step: the twin critics toward r + gamma (1 - terminated) min Q'(s', smoothed mu'(s')); every
        ``policy_delay`` steps the actor up Q1(s, mu(s)) and the targets Polyak-averaged."""
        config = self.config
        self.learning_rate = schedule_learning_rates(
            [self.actor_optimizer, self.critic_optimizer], config.optimizer, context
        )
        target = self.critic_target(batch)
        q_values = self.critics.stacked(batch.obs, batch.actions)
        loss_q = critic_loss(q_values, target, batch.weights)
        metrics: dict[str, Any] = {
            "diagnostics/critic_grad_norm": optimizer_step(self.critic_optimizer, self.critic_parameters, loss_q, None),
            "train/critic_loss": loss_q.detach(),
            **q_statistics(q_values, target),
            **replay_priorities(batch, q_values, target),
        }
        self.gradient_steps += 1
        if self.gradient_steps % config.policy_delay == 0:
            # the critic's weights detached: the gradient flows only through mu(s) into the actor
            loss_mu = deterministic_actor_loss(
                self.critics.first(batch.obs, self.actor(batch.obs), detach_weights=True)
            )
            metrics["diagnostics/actor_grad_norm"] = optimizer_step(
                self.actor_optimizer, self.actor_parameters, loss_mu, None
            )
            metrics["train/actor_loss"] = loss_mu.detach()
            polyak_update(self.critics, self.target_critics, config.tau)
            polyak_update(self.actor, self.target_actor, config.tau)
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
            "target_actor": self.target_actor,
            "target_critics": self.target_critics,
        }

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The checkpoint contract: the actor's and the critics' optimizers."""
        return {"actor": self.actor_optimizer, "critics": self.critic_optimizer}

    def extra_state(self) -> dict[str, Any]:
        """The checkpoint contract: the gradient step count (for ``policy_delay``) and the exploration noise's state."""
        return {"gradient_steps": self.gradient_steps, "noise": self.noise.state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """The checkpoint contract: restores the gradient step count and the exploration noise's state."""
        self.gradient_steps = int(state.get("gradient_steps", 0))
        self.noise.load(state.get("noise"))
