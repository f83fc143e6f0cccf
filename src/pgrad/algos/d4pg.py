"""D4PG (Barth-Maron et al., 2018): DDPG with a categorical distributional critic, n-step returns and
prioritised replay (the distributed actors are APE-X's part, ``--backend local`` here).

The critic predicts a distribution over ``num_atoms`` fixed returns z_j, evenly spaced in [v_min, v_max]
(C51, Bellemare et al., 2017): p_j(s, a) = softmax(logits(s, a))_j, Q(s, a) = sum_j p_j z_j. One gradient step:
1. target: each atom of the target critic's distribution at (s_{t+m}, mu'(s_{t+m})) moves to
   R_t + gamma^m (1 - terminated) z_j (R_t the m <= n step discounted reward sum of the replay's window),
   is clipped to [v_min, v_max] and its mass split between the two nearest atoms (``categorical_projection``);
2. critic: the cross-entropy L_Z = -sum_j target_j log p_j(s, a), weighted per sample by the prioritised
   replay's importance weights; the per-sample cross-entropy becomes the rows' new priorities;
3. actor: L_mu = -E[Q(s, mu(s))] through the critic's mean; Polyak averaging of both targets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from pgrad import glossary
from pgrad import metric_names as names
from pgrad.algos.common import optimizer_step
from pgrad.algos.contract import UpdateContext
from pgrad.algos.off_policy import (
    QNetworkConfig,
    check_off_policy_env,
    deterministic_actor_loss,
    frozen_copy,
    make_optimizers,
    polyak_update,
    schedule_learning_rates,
)
from pgrad.config import MAX_WINDOW, Activation, Checked, EnvConfig, OffPolicyLoopConfig, OptimizerConfig, param
from pgrad.errors import ConfigError
from pgrad.nets import (
    ActionSpec,
    DeterministicActor,
    ExplorationNoise,
    ObsLayout,
    SquashedActingPolicy,
    off_policy_extractor,
    plain_mlp,
)
from pgrad.replay import PRIORITY_KEY, TransitionBatch


@dataclass(frozen=True)
class D4PGConfig(Checked):
    """D4PG hyper-parameters. The support, n and sigma follow the paper and Acme's D4PG (51 atoms, n = 5;
    set v_min/v_max to cover the env's discounted returns: about [-1700, 0] for Pendulum); networks,
    optimizer and tau are this library's TD3's, so a comparison with TD3 changes the critic alone."""

    SECTION: ClassVar[str] = "d4pg"

    gamma: float = glossary.gamma(0.99, "Acme: 0.99")
    tau: float = glossary.tau(0.005, "as TD3")
    n_step: int = param(5, "rewards summed before bootstrapping (D4PG paper, Acme: 5); cut at episode ends")
    num_atoms: int = param(51, "atoms of the categorical critic's support (C51, D4PG: 51)")
    v_min: float = param(-150.0, "lowest atom: the smallest discounted return the critic can represent (Acme: -150)")
    v_max: float = param(150.0, "highest atom: the largest discounted return the critic can represent (Acme: 150)")
    exploration_noise: Literal["gaussian", "ornstein_uhlenbeck", "none"] = param(
        "gaussian", "noise on the actor's action while training (D4PG: gaussian)"
    )
    exploration_std: float = param(0.1, "sigma of the exploration noise, in [-1, 1] action units (as TD3 here)")
    network: QNetworkConfig = param(
        QNetworkConfig(hidden_sizes=(400, 300)), "actor and critic: 400x300 ReLU MLPs (as TD3 here)"
    )
    optimizer: OptimizerConfig = param(
        OptimizerConfig(learning_rate=1e-3, eps=1e-8), "one Adam each for actor and critic: lr 1e-3 (as TD3 here)"
    )
    loop: OffPolicyLoopConfig = param(
        OffPolicyLoopConfig(replay="prioritized"),
        "replay buffer and schedule: prioritized by default (priorities from the critic's cross-entropy)",
    )

    def validate(self) -> None:
        """Checks each hyper-parameter's range and v_min < v_max."""
        self.check_range("gamma", 0, 1)
        self.check_range("tau", 0, 1, low_open=True)
        self.check_range("n_step", 1, MAX_WINDOW)
        self.check_range("num_atoms", 2, 10_000)
        self.check_range("exploration_std", 0)
        if not self.v_min < self.v_max:
            self._fail("v_max", f"a number above v_min = {self.v_min:g}")

    def check_with_env(self, env: EnvConfig) -> None:
        """Checks the env suits an off-policy algorithm, and one env when n_step > 1 (the n-step windows run
        over consecutive replay rows, which are one env's consecutive steps only when there is one env)."""
        check_off_policy_env(self.SECTION, env)
        if self.n_step > 1 and env.num_envs != 1:
            raise ConfigError(
                f"env.num_envs must be 1 for d4pg with n_step > 1 (n-step windows run over consecutive replay "
                f"rows); got {env.num_envs} (or set d4pg.n_step=1)"
            )


# ---- the distributional math: pure functions ----------------------------------------------------------------


def categorical_projection(
    next_probs: torch.Tensor, rewards: torch.Tensor, discounts: torch.Tensor, support: torch.Tensor
) -> torch.Tensor:
    """Project the shifted distribution R + d z onto the fixed support (C51's Phi, D4PG's target).

    Atom j of ``next_probs`` [B, N] carries its mass p_j to Tz_j = clip(R + d z_j, v_min, v_max) (``rewards``
    and ``discounts`` [B]; d = gamma^m (1 - terminated)), b_j = (Tz_j - v_min) / dz, and the mass splits between
    the atoms l = floor(b_j) and u = ceil(b_j) in proportion (u - b_j) and (b_j - l); a target exactly on an
    atom (l = u) gives it all its mass. Mass beyond the ends piles on the end atoms. Rows sum to 1."""
    count = support.shape[0]
    v_min, v_max = float(support[0]), float(support[-1])
    delta = (v_max - v_min) / (count - 1)
    shifted = (rewards[:, None] + discounts[:, None] * support[None, :]).clamp(v_min, v_max)
    position = (shifted - v_min) / delta
    lower, upper = position.floor(), position.ceil()
    on_atom = (lower == upper).to(next_probs.dtype)
    mass_lower = next_probs * (upper - position + on_atom)
    mass_upper = next_probs * (position - lower)
    projected = torch.zeros_like(next_probs)
    projected.scatter_add_(1, lower.long().clamp(0, count - 1), mass_lower)
    projected.scatter_add_(1, upper.long().clamp(0, count - 1), mass_upper)
    return projected


def categorical_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Per sample -sum_j target_j log softmax(logits)_j, shape [B] (target_probs carries no gradient)."""
    return -(target_probs * torch.log_softmax(logits, dim=-1)).sum(dim=-1)


def weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """E[w x] with prioritised replay's importance weights, E[x] without."""
    return values.mean() if weights is None else (weights * values).mean()


class CategoricalCritic(nn.Module):
    """logits(s, a) = MLP([f(s), a]) over ``num_atoms`` atoms z evenly spaced in [v_min, v_max] (a buffer, so it
    travels with the module)."""

    support: torch.Tensor

    def __init__(
        self,
        obs_shape: int | ObsLayout,
        action_dim: int,
        hidden_sizes: tuple[int, ...],
        activation: Activation,
        support: torch.Tensor,
        torso: str | None = None,
        torso_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.extractor, width = off_policy_extractor(obs_shape, torso, torso_kwargs or {})
        self.net = plain_mlp(width + action_dim, hidden_sizes, support.shape[0], activation)
        self.register_buffer("support", support.clone())

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The logits [N, num_atoms] of the return distribution at (s, a)."""
        features = obs if self.extractor is None else self.extractor(obs)
        logits: torch.Tensor = self.net(torch.cat([features, actions], dim=-1))
        return logits

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        """Q = sum_j softmax(logits)_j z_j, shape [N]."""
        return torch.softmax(logits, dim=-1) @ self.support


class D4PG:
    """The D4PG learner: deterministic actor, categorical critic, their targets; one ``update`` per step."""

    name = "d4pg"

    def __init__(
        self, config: D4PGConfig, obs_shape: int | ObsLayout, action: ActionSpec, device: torch.device | str = "cpu"
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        hidden, activation = config.network.hidden_sizes, config.network.activation
        torso = (config.network.torso, config.network.torso_kwargs)
        support = torch.linspace(config.v_min, config.v_max, config.num_atoms)
        self.actor = DeterministicActor(obs_shape, action.size, hidden, activation, *torso).to(self.device)
        self.critic = CategoricalCritic(obs_shape, action.size, hidden, activation, support, *torso).to(self.device)
        self.target_actor = frozen_copy(self.actor)
        self.target_critic = frozen_copy(self.critic)
        self.actor_parameters = list(self.actor.parameters())
        self.critic_parameters = list(self.critic.parameters())
        self.actor_optimizer, self.critic_optimizer = make_optimizers(
            config.optimizer, self.actor_parameters, self.critic_parameters
        )
        self.learning_rate = config.optimizer.learning_rate
        self.noise = ExplorationNoise(config.exploration_noise, config.exploration_std)

    @property
    def loop(self) -> OffPolicyLoopConfig:
        """The off-policy loop's schedule, from the config."""
        return self.config.loop

    @property
    def gamma(self) -> float:
        """The discount factor, from the config."""
        return self.config.gamma

    @property
    def n_step(self) -> int:
        """Rewards per replay window (the loop's buffer samples n-step windows)."""
        return self.config.n_step

    def acting_policy(self) -> SquashedActingPolicy:
        """The actor's deterministic policy plus the exploration noise."""
        return self.actor.acting_policy(self.noise)

    def end_episodes(self, done: np.ndarray) -> None:
        """Resets the exploration noise (OU state) of the envs whose episodes ended."""
        self.noise.end_episodes(done)

    def target_distribution(self, batch: TransitionBatch) -> torch.Tensor:
        """The projected n-step target distribution [N, num_atoms] (no gradient)."""
        with torch.no_grad():
            next_logits = self.target_critic(batch.next_obs, self.target_actor(batch.next_obs))
            discount = batch.discounts if batch.discounts is not None else torch.full_like(batch.rewards, self.gamma)
            discounts = discount * (1.0 - batch.terminated)
            return categorical_projection(
                torch.softmax(next_logits, dim=-1), batch.rewards, discounts, self.critic.support
            )

    def update(self, batch: TransitionBatch, context: UpdateContext) -> dict[str, Any]:
        """One D4PG gradient step: the critic toward the projected n-step target (cross-entropy), the actor up
        the critic's mean, both targets Polyak-averaged."""
        config = self.config
        self.learning_rate = schedule_learning_rates(
            [self.actor_optimizer, self.critic_optimizer], config.optimizer, context
        )
        target = self.target_distribution(batch)
        logits = self.critic(batch.obs, batch.actions)
        per_sample = categorical_cross_entropy(logits, target)
        loss_z = weighted_mean(per_sample, batch.weights)
        metrics: dict[str, Any] = {
            "diagnostics/critic_grad_norm": optimizer_step(self.critic_optimizer, self.critic_parameters, loss_z, None),
            "train/critic_loss": loss_z.detach(),
            **distribution_statistics(self.critic, logits.detach(), target),
        }
        if batch.indices is not None:
            metrics[PRIORITY_KEY] = per_sample.detach()
        self.critic.requires_grad_(False)
        loss_mu = deterministic_actor_loss(self.critic.mean(self.critic(batch.obs, self.actor(batch.obs))))
        metrics["diagnostics/actor_grad_norm"] = optimizer_step(
            self.actor_optimizer, self.actor_parameters, loss_mu, None
        )
        self.critic.requires_grad_(True)
        metrics["train/actor_loss"] = loss_mu.detach()
        polyak_update(self.critic, self.target_critic, config.tau)
        polyak_update(self.actor, self.target_actor, config.tau)
        return metrics

    def learning_rate_metrics(self) -> dict[str, float]:
        """The learning rate of the last ``update`` (after the schedule), for the logs."""
        return {names.LEARNING_RATE: self.learning_rate}

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


def distribution_statistics(critic: CategoricalCritic, logits: torch.Tensor, target: torch.Tensor) -> dict[str, Any]:
    """Q mean/min/max of the critic's means, the target's mean, |Q - E[target]| (the guard's TD-error rule), and
    log(num_atoms): the cross-entropy of a uniform prediction, the scale of the guard's critic-loss rule."""
    q = critic.mean(logits)
    target_mean = target @ critic.support
    return {
        names.Q_MEAN: q.mean(),
        names.Q_MIN: q.min(),
        names.Q_MAX: q.max(),
        names.TD_ERROR: (q - target_mean).abs().mean(),
        "q/target_mean": target_mean.mean(),
        names.CRITIC_LOSS_SCALE: math.log(critic.support.shape[0]),
    }
