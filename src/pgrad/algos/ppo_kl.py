"""PPO with an adaptive KL penalty (Schulman et al., 2017, section 4), the paper's second variant.

Instead of clipping the ratio, the surrogate is penalised by beta * KL(pi_old || pi), and beta
follows the measured KL: after each update, with d = E_s[KL(pi_old(.|s) || pi(.|s))] over the
batch, beta doubles when d > 1.5 * target_kl and halves when d < target_kl / 1.5. beta is part
of the run's state (``extra_state``), so a resumed run continues with the same beta.
The KL is analytic (``distributions.kl``): pi_old's distribution parameters for every sample are
taken once, before the first epoch, from the same network that collected the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from pgrad import glossary
from pgrad.algos.common import (
    LossTerms,
    actor_critic_batch,
    make_optimizer,
    optimizer_step,
    scheduled_learning_rate,
)
from pgrad.algos.contract import UpdateContext
from pgrad.config import MAX_WINDOW, Checked, EnvConfig, NetworkConfig, OptimizerConfig, param
from pgrad.distributions import Categorical, DiagGaussian
from pgrad.errors import ConfigError
from pgrad.metric_names import GRAD_NORM, LEARNING_RATE, LOG_STD
from pgrad.nets import ActingPolicy, ActionSpec, ActorCritic, ObsShape
from pgrad.numerics import masked_mean, masked_whiten, value_loss
from pgrad.optim import detach_distribution
from pgrad.rollout import Batch, Rollout


@dataclass(frozen=True)
class PPOKLConfig(Checked):
    """PPO-with-adaptive-KL-penalty hyper-parameters. The PPO paper's d_targ is ``target_kl``."""

    SECTION: ClassVar[str] = "ppo_kl"

    num_steps: int = param(128, "steps per environment per rollout (batch = num_steps x env.num_envs)")
    num_epochs: int = glossary.num_epochs(10)
    minibatch_size: int = param(64, "samples per gradient step; must divide the batch")
    gamma: float = glossary.gamma(0.99)
    gae_lambda: float = glossary.gae_lambda(0.95)
    target_kl: float = param(
        0.01,
        "after each update the batch KL(pi_old || pi) is measured: beta doubles if it is > 1.5 x target_kl, "
        "halves if it is < target_kl / 1.5",
    )
    kl_coef_init: float = param(1.0, "initial KL penalty coefficient beta")
    ent_coef: float = glossary.ent_coef(0.0)
    vf_coef: float = glossary.vf_coef(0.5)
    max_grad_norm: float = glossary.max_grad_norm(0.5)
    norm_adv: bool = glossary.norm_adv(True, "per minibatch")
    network: NetworkConfig = param(NetworkConfig(), "the actor-critic MLP")
    optimizer: OptimizerConfig = param(
        OptimizerConfig(learning_rate=3e-4, anneal_lr=True, eps=1e-5), "Adam, lr 3e-4 annealed to 0, eps 1e-5"
    )

    def validate(self) -> None:
        """Checks each hyper-parameter's range."""
        for name in ("num_steps", "num_epochs", "minibatch_size"):
            self.check_range(name, 1, MAX_WINDOW)
        self.check_range("gamma", 0, 1)
        self.check_range("gae_lambda", 0, 1)
        self.check_range("target_kl", 0, low_open=True)
        self.check_range("kl_coef_init", 0, low_open=True)
        self.check_range("ent_coef", 0)
        self.check_range("vf_coef", 0)
        self.check_range("max_grad_norm", 0, low_open=True)

    def check_with_env(self, env: EnvConfig) -> None:
        """Checks that ``minibatch_size`` divides the batch, ``num_steps x env.num_envs``."""
        batch = self.num_steps * env.num_envs
        if self.minibatch_size > batch or batch % self.minibatch_size:
            raise ConfigError(
                f"ppo_kl.minibatch_size must divide the batch num_steps x env.num_envs = "
                f"{self.num_steps} x {env.num_envs} = {batch}; got {self.minibatch_size}"
            )


def adapt_kl_coef(kl_coef: float, kl: float, target_kl: float) -> float:
    """The PPO paper's rule: beta * 2 if d > 1.5 d_targ, beta / 2 if d < d_targ / 1.5, else beta."""
    if kl > 1.5 * target_kl:
        return kl_coef * 2.0
    if kl < target_kl / 1.5:
        return kl_coef / 2.0
    return kl_coef


def ppo_kl_loss(
    *,
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    kl: torch.Tensor,
    values: torch.Tensor,
    returns: torch.Tensor,
    entropy: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    vf_coef: float,
    ent_coef: float,
    norm_adv: bool,
) -> LossTerms:
    """L = -E[r A] + beta E[KL(pi_old || pi)] + vf_coef E[(V - R)^2] - ent_coef E[H(pi)].

    r = exp(log pi(a|s) - log pi_old(a|s)); ``kl`` is the analytic KL(pi_old(.|s) || pi(.|s)) per
    entry (against a detached pi_old), beta = ``kl_coef``. Every tensor has the shape of ``mask``;
    E[.] is the mean over entries with mask = 1 (advantages normalised over them with ``norm_adv``).
    Diagnostics: approx KL = E[(r - 1) - log r] from the sampled actions.
    """
    log_ratio = log_probs - old_log_probs
    ratio = log_ratio.exp()
    if norm_adv:
        advantages = masked_whiten(advantages, mask)
    surrogate = masked_mean(ratio * advantages, mask)
    mean_kl = masked_mean(kl, mask)
    policy_loss = -surrogate + kl_coef * mean_kl
    critic_loss = value_loss(values, returns, mask)
    mean_entropy = masked_mean(entropy, mask)
    loss = policy_loss + vf_coef * critic_loss - ent_coef * mean_entropy
    with torch.no_grad():
        approx_kl = masked_mean((ratio - 1.0) - log_ratio, mask)
    return LossTerms(
        loss=loss,
        policy_loss=policy_loss,
        value_loss=critic_loss,
        entropy=mean_entropy,
        approx_kl=approx_kl,
        kl=mean_kl,
        surrogate=surrogate,
    )


def select_distribution(dist: Categorical | DiagGaussian, index: torch.Tensor) -> Categorical | DiagGaussian:
    """The rows ``index`` of a batched distribution."""
    if isinstance(dist, Categorical):
        return Categorical(dist.log_probs[index])
    return DiagGaussian(dist.mean[index], dist.log_std[index])


class PPOKL:
    """The adaptive-KL PPO learner: an actor-critic, its optimiser, and the penalty coefficient beta."""

    name = "ppo_kl"

    def __init__(
        self, config: PPOKLConfig, obs_shape: ObsShape, action: ActionSpec, device: torch.device | str = "cpu"
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        self.model = ActorCritic.from_config(obs_shape, action, config.network).to(self.device)
        self.parameters = list(self.model.parameters())
        self.optimizer = make_optimizer(self.parameters, config.optimizer)
        self.kl_coef = config.kl_coef_init

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
        """``num_epochs`` passes of minibatch steps with the current beta, then beta adapts to the KL."""
        config = self.config
        learning_rate = scheduled_learning_rate(self.optimizer, config.optimizer, context)
        with torch.no_grad():
            old_dist = detach_distribution(self.model.distribution(batch.obs))

        history: list[dict[str, torch.Tensor]] = []
        grad_norms: list[float] = []
        for _ in range(config.num_epochs):
            order = torch.from_numpy(context.rng.permutation(len(batch))).to(self.device)
            for start in range(0, len(batch) - config.minibatch_size + 1, config.minibatch_size):
                index = order[start : start + config.minibatch_size]
                minibatch = batch.select(index)
                dist, values = self.model(minibatch.obs)
                terms = ppo_kl_loss(
                    log_probs=dist.log_prob(minibatch.actions),
                    old_log_probs=minibatch.log_probs,
                    advantages=minibatch.advantages,
                    kl=select_distribution(old_dist, index).kl(dist),
                    values=values,
                    returns=minibatch.returns,
                    entropy=dist.entropy(),
                    mask=minibatch.mask,
                    kl_coef=self.kl_coef,
                    vf_coef=config.vf_coef,
                    ent_coef=config.ent_coef,
                    norm_adv=config.norm_adv,
                )
                norms = optimizer_step(self.optimizer, self.parameters, terms.loss, config.max_grad_norm)
                grad_norms.append(norms[0])
                history.append(terms.metrics())

        with torch.no_grad():
            batch_kl = float(masked_mean(old_dist.kl(self.model.distribution(batch.obs)), batch.mask))
        kl_coef_used = self.kl_coef
        self.kl_coef = adapt_kl_coef(self.kl_coef, batch_kl, config.target_kl)

        metrics = {key: float(torch.stack([h[key] for h in history]).mean()) for key in history[0]}
        metrics.update(
            {
                LEARNING_RATE: learning_rate,
                "train/kl_coef": kl_coef_used,
                "train/kl_coef_next": self.kl_coef,
                "train/gradient_steps": float(len(history)),
                "diagnostics/kl": batch_kl,
                GRAD_NORM: float(np.mean(grad_norms)),
            }
        )
        if self.model.log_std is not None:
            metrics[LOG_STD] = float(self.model.log_std.detach().mean())
        return metrics

    # ---- checkpoint contract ------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        """The checkpoint contract: the networks saved and restored (the actor-critic model)."""
        return {"model": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The checkpoint contract: the optimizers saved and restored."""
        return {"optimizer": self.optimizer}

    def extra_state(self) -> dict[str, Any]:
        """The checkpoint contract: the KL penalty coefficient beta (a float; JSON keeps a double exactly)."""
        # beta is a float updated by doubling/halving; JSON keeps a double exactly (repr round-trips).
        return {"kl_coef": self.kl_coef}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """The checkpoint contract: restores the KL penalty coefficient beta."""
        self.kl_coef = float(state["kl_coef"])
