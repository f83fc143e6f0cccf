"""Proximal Policy Optimization (Schulman et al., 2017), clipped-surrogate variant.

The details that matter (Huang et al., "The 37 implementation details of PPO", 2022) are all
here and named in ``PPOConfig``: GAE, per-minibatch advantage normalisation, clipped surrogate,
optional clipped value loss, entropy bonus, global gradient clipping, Adam with eps 1e-5,
linear annealing of the learning rate and clip range, and target-KL early stopping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from pgrad.algos.common import (
    actor_critic_batch,
    adam,
    clip_gradients,
    linear_schedule,
    masked_mean,
    normalize_advantages,
)
from pgrad.algos.contract import UpdateContext
from pgrad.algos.numpy_grad import NumpyActorCritic
from pgrad.algos.numpy_grad import normalize_advantages as normalize_numpy
from pgrad.config import Checked, EnvConfig, param
from pgrad.distributions import Categorical, DiagGaussian
from pgrad.errors import ConfigError
from pgrad.nets import ActingPolicy, ActionSpec, ActorCritic
from pgrad.rollout import Batch, Rollout


@dataclass(frozen=True)
class PPOConfig(Checked):
    """PPO hyper-parameters. Defaults follow CleanRL/SB3 for MuJoCo-sized problems."""

    SECTION: ClassVar[str] = "ppo"

    num_steps: int = param(128, "steps per environment per rollout (batch = num_steps x env.num_envs)")
    num_epochs: int = param(10, "passes over each batch")
    minibatch_size: int = param(64, "samples per gradient step; must divide the batch")
    learning_rate: float = param(3e-4, "Adam learning rate (initial value when annealed)")
    anneal_lr: bool = param(True, "anneal the learning rate linearly to 0 over run.total_steps")
    adam_eps: float = param(1e-5, "Adam epsilon (1e-5, not torch's 1e-8, as in the PPO baselines)")
    gamma: float = param(0.99, "discount factor")
    gae_lambda: float = param(0.95, "GAE lambda: 0 is one-step TD, 1 is Monte Carlo")
    clip_eps: float = param(0.2, "surrogate clip range: ratio clipped to [1 - clip_eps, 1 + clip_eps]")
    anneal_clip: bool = param(False, "anneal clip_eps linearly to 0 over run.total_steps")
    clip_vf: float | None = param(None, "clip the value update to +-clip_vf around the old value (None: off)")
    ent_coef: float = param(0.0, "entropy bonus coefficient")
    vf_coef: float = param(0.5, "value loss coefficient; value loss = mean((V - R)^2)")
    max_grad_norm: float = param(0.5, "global L2 gradient-norm clip")
    target_kl: float | None = param(
        None,
        "early stop: before each minibatch step, if that minibatch's approx KL > 1.5 x target_kl, "
        "the step is skipped and the update ends (None: off)",
    )
    norm_adv: bool = param(True, "normalise advantages per minibatch")
    hidden_sizes: tuple[int, ...] = param((64, 64), "MLP hidden layer sizes")
    activation: Literal["tanh", "relu"] = param("tanh", "hidden activation")
    shared_network: bool = param(False, "share the MLP torso between actor and critic")
    log_std_init: float = param(0.0, "initial log std of Gaussian policies")
    state_dependent_std: bool = param(False, "Gaussian log std from the network (clamped) instead of a free parameter")
    hand_gradients: bool = param(
        True, "compute the gradient by hand in NumPy (ppo_hand_gradients; equals autograd, ~2x faster)"
    )

    def validate(self) -> None:
        self.check_range("num_steps", 1)
        self.check_range("num_epochs", 1)
        self.check_range("minibatch_size", 1)
        self.check_range("learning_rate", 0, low_open=True)
        self.check_range("adam_eps", 0, low_open=True)
        self.check_range("gamma", 0, 1)
        self.check_range("gae_lambda", 0, 1)
        self.check_range("clip_eps", 0, 1, low_open=True, high_open=True)
        self.check_range("clip_vf", 0, low_open=True)
        self.check_range("ent_coef", 0)
        self.check_range("vf_coef", 0)
        self.check_range("max_grad_norm", 0, low_open=True)
        self.check_range("target_kl", 0, low_open=True)
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            self._fail("hidden_sizes", "a non-empty list of positive integers")

    def check_with_env(self, env: EnvConfig) -> None:
        batch = self.num_steps * env.num_envs
        if self.minibatch_size > batch or batch % self.minibatch_size:
            raise ConfigError(
                f"ppo.minibatch_size must divide the batch num_steps x env.num_envs = "
                f"{self.num_steps} x {env.num_envs} = {batch}; got {self.minibatch_size}"
            )


def ppo_loss(
    dist: Categorical | DiagGaussian,
    values: torch.Tensor,
    batch: Batch,
    clip_eps: float,
    config: PPOConfig,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = -E[min(r A, clip(r, 1-eps, 1+eps) A)] + c_v E[(V - R)^2] - c_e E[H(pi)].

    r = pi(a|s) / pi_old(a|s). With ``clip_vf``, the value term is
    E[max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)]. Means run over valid steps only.
    Diagnostics: approx KL = E[(r - 1) - log r] (low variance, unbiased; Schulman 2020) and the
    fraction of samples whose ratio was clipped.
    """
    mask = batch.mask
    log_ratio = dist.log_prob(batch.actions) - batch.log_probs
    ratio = log_ratio.exp()
    advantages = normalize_advantages(batch.advantages, mask) if config.norm_adv else batch.advantages
    surrogate = torch.min(ratio * advantages, ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * advantages)
    policy_loss = -masked_mean(surrogate, mask)

    value_error = (values - batch.returns).pow(2)
    if config.clip_vf is not None:
        clipped_values = batch.values + (values - batch.values).clamp(-config.clip_vf, config.clip_vf)
        value_error = torch.max(value_error, (clipped_values - batch.returns).pow(2))
    value_loss = masked_mean(value_error, mask)
    entropy = masked_mean(dist.entropy(), mask)

    loss = policy_loss + config.vf_coef * value_loss - config.ent_coef * entropy
    with torch.no_grad():
        stats = {
            "train/policy_loss": policy_loss.detach(),
            "train/value_loss": value_loss.detach(),
            "diagnostics/entropy": entropy.detach(),
            "diagnostics/approx_kl": masked_mean((ratio - 1.0) - log_ratio, mask),
            "diagnostics/clip_fraction": masked_mean(((ratio - 1.0).abs() > clip_eps).float(), mask),
        }
    return loss, stats


def ppo_hand_gradients(
    net: NumpyActorCritic, minibatch: Batch, clip_eps: float, config: PPOConfig
) -> dict[str, float]:
    """Set every ``.grad`` to the gradient of ``ppo_loss`` and return its statistics, in NumPy.

    With w = mask / #valid (sum_i w_i = 1) and A the (normalised) advantages:
        dL/dlog pi_i = -w_i A_i r_i [r_i A_i <= clip(r_i) A_i]   (zero where the clip is active)
        dL/dV_i      = 2 c_v w_i (V_i - R_i), or through the clipped value when that branch is larger
    ``numpy_grad`` carries these through the heads and torsos; tests/test_ppo_grad.py checks value
    and gradient against autograd of ``ppo_loss``.
    """
    mask, actions, returns = minibatch.mask.numpy(), minibatch.actions.numpy(), minibatch.returns.numpy()
    weights = mask / max(float(mask.sum()), 1.0)
    advantages = minibatch.advantages.numpy()
    if config.norm_adv:
        advantages = normalize_numpy(advantages, weights)
    forward = net.forward(minibatch.obs.numpy())
    terms = net.policy_terms(forward.head, actions)
    log_ratio = terms.log_probs - minibatch.log_probs.numpy()
    ratio = np.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = np.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    d_log_probs = -weights * advantages * ratio * (unclipped <= clipped)
    d_head = net.head_gradient(terms, actions, d_log_probs, config.ent_coef, weights)

    error = forward.values - returns
    if config.clip_vf is None:
        value_loss = float(weights @ (error * error))
        d_values = 2.0 * config.vf_coef * weights * error
    else:
        delta = forward.values - minibatch.values.numpy()
        clipped_error = minibatch.values.numpy() + np.clip(delta, -config.clip_vf, config.clip_vf) - returns
        use_clipped = clipped_error * clipped_error > error * error
        value_loss = float(weights @ np.where(use_clipped, clipped_error**2, error**2))
        inside = np.abs(delta) <= config.clip_vf
        d_values = 2.0 * config.vf_coef * weights * np.where(use_clipped, clipped_error * inside, error)
    net.backward(forward, d_head, d_values)
    return {
        "train/policy_loss": -float(weights @ np.minimum(unclipped, clipped)),
        "train/value_loss": value_loss,
        "diagnostics/entropy": float(weights @ terms.entropy),
        "diagnostics/approx_kl": float(weights @ ((ratio - 1.0) - log_ratio)),
        "diagnostics/clip_fraction": float(weights @ (np.abs(ratio - 1.0) > clip_eps).astype(np.float32)),
    }


class PPO:
    """The PPO learner: an actor-critic, its optimiser, ``prepare`` and ``update``."""

    name = "ppo"

    def __init__(self, config: PPOConfig, obs_dim: int, action: ActionSpec) -> None:
        self.config = config
        self.model = ActorCritic(
            obs_dim,
            action,
            config.hidden_sizes,
            config.activation,
            config.shared_network,
            config.log_std_init,
            config.state_dependent_std,
        )
        self.parameters = list(self.model.parameters())
        self.optimizer = adam(self.parameters, config.learning_rate, config.adam_eps)
        use_hand = config.hand_gradients and NumpyActorCritic.supports(self.model)
        self.hand_gradients = NumpyActorCritic(self.model) if use_hand else None

    @property
    def rollout_length(self) -> int:
        return self.config.num_steps

    @property
    def gamma(self) -> float:
        return self.config.gamma

    def acting_policy(self) -> ActingPolicy:
        return self.model.acting_policy()

    def prepare(self, rollout: Rollout) -> tuple[Batch, dict[str, float]]:
        return actor_critic_batch(self.model, rollout, self.config.gamma, self.config.gae_lambda)

    def update(self, batch: Batch, context: UpdateContext) -> dict[str, float]:
        """``num_epochs`` passes of minibatch steps; ``context.progress`` in [0, 1] drives the annealing."""
        config = self.config
        learning_rate = linear_schedule(config.learning_rate, context.progress, config.anneal_lr) * context.lr_scale
        clip_eps = linear_schedule(config.clip_eps, context.progress, config.anneal_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate

        history: list[dict[str, float]] = []
        grad_norms: list[float] = []
        stopped_early = False
        for _ in range(config.num_epochs):
            for minibatch in batch.minibatches(config.minibatch_size, context.rng):
                # Sets every parameter's .grad to dL/dparameter and returns the loss statistics.
                stats = self._gradients(minibatch, clip_eps)
                if config.target_kl is not None and stats["diagnostics/approx_kl"] > 1.5 * config.target_kl:
                    stopped_early = True
                    break
                grad_norms.append(clip_gradients(self.parameters, config.max_grad_norm)[0])
                self.optimizer.step()
                history.append(stats)
            if stopped_early:
                break

        metrics = {key: float(np.mean([h[key] for h in history])) for key in history[0]} if history else {}
        norms = np.asarray(grad_norms) if grad_norms else np.zeros(1)
        metrics.update(
            {
                "train/learning_rate": learning_rate,
                "train/clip_eps": clip_eps,
                "train/gradient_steps": float(len(history)),
                "train/stopped_early": float(stopped_early),
                "diagnostics/grad_norm": float(norms.mean()),
                "diagnostics/grad_norm_clipped": float(np.minimum(norms, config.max_grad_norm).mean()),
            }
        )
        if self.model.log_std is not None:
            metrics["diagnostics/log_std_mean"] = float(self.model.log_std.detach().mean())
        return metrics

    def _gradients(self, minibatch: Batch, clip_eps: float) -> dict[str, float]:
        if self.hand_gradients is not None:
            return ppo_hand_gradients(self.hand_gradients, minibatch, clip_eps, self.config)
        dist, values = self.model(minibatch.obs)
        loss, stats = ppo_loss(dist, values, minibatch, clip_eps, self.config)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return {key: float(value) for key, value in stats.items()}

    # ---- checkpoint contract ------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"optimizer": self.optimizer}

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass
