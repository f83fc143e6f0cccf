"""Deep Deterministic Policy Gradient (Lillicrap et al., 2016).

One gradient step:
1. critic: y = r + gamma (1 - terminated) Q'(s', mu'(s')); L_Q = E[(Q(s, a) - y)^2];
2. actor: L_mu = -E[Q(s, mu(s))] (the deterministic policy gradient, through the critic just updated);
3. targets: theta' <- tau theta + (1 - tau) theta' for the actor and the critic.
Exploration: Gaussian noise on mu(s) (Ornstein-Uhlenbeck, the paper's choice, optional).
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
    twin_min_target,
)
from pgrad.config import Checked, EnvConfig, OffPolicyLoopConfig, OptimizerConfig, param
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
class DDPGConfig(Checked):
    """DDPG hyper-parameters; defaults are SB3's ``DDPG`` (stable_baselines3/ddpg/ddpg.py: TD3 with one
    critic, no delay, no target smoothing; networks from td3/policies.py) except the exploration noise,
    which SB3 leaves off by default and its zoo sets to N(0, 0.1^2)."""

    SECTION: ClassVar[str] = "ddpg"

    gamma: float = glossary.gamma(0.99, "SB3: 0.99")
    tau: float = glossary.tau(0.005, "SB3: 0.005")
    exploration_noise: Literal["gaussian", "ornstein_uhlenbeck", "none"] = param(
        "gaussian", "noise on the actor's action while training (SB3: none; its zoo: gaussian 0.1; DDPG paper: OU)"
    )
    exploration_std: float = param(0.1, "sigma of the exploration noise, in [-1, 1] action units (SB3 zoo: 0.1)")
    ou_theta: float = param(0.15, "mean reversion of the Ornstein-Uhlenbeck noise (SB3, DDPG paper: 0.15)")
    network: QNetworkConfig = param(
        QNetworkConfig(hidden_sizes=(400, 300)),
        "actor and critic: 400x300 ReLU MLPs (SB3 td3/policies.py, used by DDPG)",
    )
    optimizer: OptimizerConfig = param(
        OptimizerConfig(learning_rate=1e-3, eps=1e-8),
        "one Adam each for actor and critic: lr 1e-3, eps 1e-8 (SB3's DDPG: torch's Adam defaults)",
    )
    loop: OffPolicyLoopConfig = param(
        OffPolicyLoopConfig(), "replay buffer and schedule (SB3: 1e6, batch 256, learning_starts 100, 1 step per step)"
    )

    def validate(self) -> None:
        """Checks each hyper-parameter's range."""
        self.check_range("gamma", 0, 1)
        self.check_range("tau", 0, 1, low_open=True)
        self.check_range("exploration_std", 0)
        self.check_range("ou_theta", 0)

    def check_with_env(self, env: EnvConfig) -> None:
        """Checks the env suits an off-policy algorithm (``check_off_policy_env``)."""
        check_off_policy_env(self.SECTION, env)


class DDPG:
    """The DDPG learner: actor and critic with their targets; one ``update`` per gradient step."""

    name = "ddpg"

    def __init__(
        self, config: DDPGConfig, obs_shape: int | ObsLayout, action: ActionSpec, device: torch.device | str = "cpu"
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        hidden, activation = config.network.hidden_sizes, config.network.activation
        torso = (config.network.torso, config.network.torso_kwargs)
        self.actor = DeterministicActor(obs_shape, action.size, hidden, activation, *torso).to(self.device)
        self.critic = QNetworks(obs_shape, action.size, hidden, activation, 1, *torso).to(self.device)
        self.target_actor = frozen_copy(self.actor)
        self.target_critic = frozen_copy(self.critic)
        self.actor_parameters = list(self.actor.parameters())
        self.critic_parameters = list(self.critic.parameters())
        self.actor_optimizer, self.critic_optimizer = make_optimizers(
            config.optimizer, self.actor_parameters, self.critic_parameters
        )
        self.learning_rate = config.optimizer.learning_rate
        self.noise = ExplorationNoise(config.exploration_noise, config.exploration_std, theta=config.ou_theta)

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
        """y = r + gamma (1 - terminated) Q'(s', mu'(s')), no gradient (also what an APE-X actor prioritises with,
        ``pgrad.algos.apex``)."""
        with torch.no_grad():
            next_q = self.target_critic.stacked(batch.next_obs, self.target_actor(batch.next_obs))
            return twin_min_target(batch.rewards, batch.terminated, next_q, self.config.gamma)

    def update(self, batch: TransitionBatch, context: UpdateContext) -> dict[str, Any]:
        """One DDPG gradient step: the critic toward r + gamma (1 - terminated) Q'(s', mu'(s')), the actor up Q(s,
        mu(s)), then Polyak-averaged targets (tau)."""
        config = self.config
        self.learning_rate = schedule_learning_rates(
            [self.actor_optimizer, self.critic_optimizer], config.optimizer, context
        )
        target = self.critic_target(batch)
        q_values = self.critic.stacked(batch.obs, batch.actions)
        loss_q = critic_loss(q_values, target, batch.weights)
        critic_norm = optimizer_step(self.critic_optimizer, self.critic_parameters, loss_q, None)

        # the critic's weights detached: the gradient flows only through mu(s) into the actor
        loss_mu = deterministic_actor_loss(self.critic.first(batch.obs, self.actor(batch.obs), detach_weights=True))
        actor_norm = optimizer_step(self.actor_optimizer, self.actor_parameters, loss_mu, None)

        polyak_update(self.critic, self.target_critic, config.tau)
        polyak_update(self.actor, self.target_actor, config.tau)
        return {
            "train/critic_loss": loss_q.detach(),
            "train/actor_loss": loss_mu.detach(),
            "diagnostics/critic_grad_norm": critic_norm,
            "diagnostics/actor_grad_norm": actor_norm,
            **q_statistics(q_values, target),
            **replay_priorities(batch, q_values, target),
        }

    def learning_rate_metrics(self) -> dict[str, float]:
        """The learning rate of the last ``update`` (after the schedule), for the logs."""
        return {LEARNING_RATE: self.learning_rate}

    # ---- checkpoint contract ------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        """The checkpoint contract: the networks saved and restored, targets included."""
        return {
            "actor": self.actor,
            "critic": self.critic,
            "target_actor": self.target_actor,
            "target_critic": self.target_critic,
        }

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The checkpoint contract: the actor's and the critic's optimizers."""
        return {"actor": self.actor_optimizer, "critic": self.critic_optimizer}

    def extra_state(self) -> dict[str, Any]:
        """The checkpoint contract: the exploration noise's state."""
        return {"noise": self.noise.state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """The checkpoint contract: restores the exploration noise's state."""
        self.noise.load(state.get("noise"))
