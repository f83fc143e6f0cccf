"""Advantage actor-critic, synchronous (A2C; Mnih et al. 2016, the synchronous variant of A3C).

A2C is the PPO loop with one epoch, one minibatch and another loss: every ``num_steps`` steps of
``env.num_envs`` environments, one gradient step on the whole batch with

    L = -E[log pi(a|s) A] + vf_coef E[(V(s) - R)^2] - ent_coef E[H(pi(.|s))]

where A and R come from GAE (``gae_lambda``; 1.0 gives the classic A2C return bootstrapped from
V(s_T)) or from n-step returns. Defaults are Stable-Baselines3's: RMSprop (alpha 0.99, eps 1e-5),
lr 7e-4, n_steps 5, gamma 0.99, gae_lambda 1.0, ent_coef 0.0, vf_coef 0.5, max_grad_norm 0.5.

Per update there is one forward over the T + 1 observations: its values give the targets and its
log-probabilities and values the loss. The gradient of ``a2c_loss`` is computed by hand in NumPy
(``a2c_hand_gradients``, checked against autograd in the tests) unless ``hand_gradients=false``:
at 40 samples per update autograd's per-op overhead, not arithmetic, is the cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from pgrad.algos.common import adam, clip_gradients, linear_schedule, normalize_advantages
from pgrad.algos.contract import UpdateContext
from pgrad.algos.numpy_grad import Forward, NumpyActorCritic
from pgrad.algos.numpy_grad import normalize_advantages as normalize_numpy
from pgrad.config import Checked, param
from pgrad.distributions import Categorical, DiagGaussian
from pgrad.estimators import explained_variance, gae, nstep_returns
from pgrad.nets import ActingPolicy, ActionSpec, ActorCritic
from pgrad.rollout import Batch, Rollout


@dataclass(frozen=True)
class A2CConfig(Checked):
    """A2C hyper-parameters. Defaults follow Stable-Baselines3's A2C."""

    SECTION: ClassVar[str] = "a2c"

    num_steps: int = param(5, "steps per environment per update (batch = num_steps x env.num_envs)")
    advantage: Literal["gae", "nstep"] = param(
        "gae", "gae: GAE(gamma, gae_lambda); nstep: n-step returns with n = nstep_horizon, A = G - V(s)"
    )
    nstep_horizon: int | None = param(None, "n of the n-step return (None: num_steps, bootstrap from V(s_T))")
    gamma: float = param(0.99, "discount factor")
    gae_lambda: float = param(1.0, "GAE lambda (1.0: the classic A2C return)")
    learning_rate: float = param(7e-4, "learning rate (initial value when annealed)")
    anneal_lr: bool = param(False, "anneal the learning rate linearly to 0 over run.total_steps")
    optimizer: Literal["rmsprop", "adam"] = param("rmsprop", "RMSprop (as SB3/A3C) or Adam")
    rms_alpha: float = param(0.99, "RMSprop smoothing constant")
    optimizer_eps: float = param(1e-5, "RMSprop/Adam epsilon")
    ent_coef: float = param(0.0, "entropy bonus coefficient")
    vf_coef: float = param(0.5, "value loss coefficient; value loss = mean((V - R)^2)")
    max_grad_norm: float = param(0.5, "global L2 gradient-norm clip")
    norm_adv: bool = param(False, "normalise advantages over the batch")
    hidden_sizes: tuple[int, ...] = param((64, 64), "MLP hidden layer sizes")
    activation: Literal["tanh", "relu"] = param("tanh", "hidden activation")
    shared_network: bool = param(False, "share the MLP torso between actor and critic")
    log_std_init: float = param(0.0, "initial log std of Gaussian policies")
    hand_gradients: bool = param(
        True, "compute the gradient with hand-derived NumPy code (a2c_hand_gradients; equals autograd, faster)"
    )

    def validate(self) -> None:
        self.check_range("num_steps", 1)
        self.check_range("nstep_horizon", 1)
        self.check_range("gamma", 0, 1)
        self.check_range("gae_lambda", 0, 1)
        self.check_range("learning_rate", 0, low_open=True)
        self.check_range("rms_alpha", 0, 1, low_open=True, high_open=True)
        self.check_range("optimizer_eps", 0, low_open=True)
        self.check_range("ent_coef", 0)
        self.check_range("vf_coef", 0)
        self.check_range("max_grad_norm", 0, low_open=True)
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            self._fail("hidden_sizes", "a non-empty list of positive integers")


def a2c_loss(
    dist: Categorical | DiagGaussian, values: torch.Tensor, batch: Batch, config: A2CConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = -E[log pi(a|s) A] + vf_coef E[(V(s) - R)^2] - ent_coef E[H(pi(.|s))].

    A and R are constants (NumPy, from detached values in ``prepare``), so the critic regresses on
    a detached bootstrapped target. Means run over valid steps only. Reads only ``norm_adv``,
    ``vf_coef`` and ``ent_coef`` from ``config`` (A3C passes its own config with those names).
    """
    # E over valid steps as one weighted sum, w = mask / #valid (fewer autograd nodes than three
    # masked means: at 40 samples per update the op count, not the arithmetic, is the cost).
    weights = batch.mask / batch.mask.sum().clamp(min=1.0)
    advantages = normalize_advantages(batch.advantages, batch.mask) if config.norm_adv else batch.advantages
    policy_loss = -(dist.log_prob(batch.actions) * advantages * weights).sum()
    value_loss = ((values - batch.returns).pow(2) * weights).sum()
    if config.ent_coef > 0.0:
        entropy = (dist.entropy() * weights).sum()
        loss = policy_loss + config.vf_coef * value_loss - config.ent_coef * entropy
    else:  # a diagnostic only: keep it out of the backward pass
        with torch.no_grad():
            entropy = (dist.entropy() * weights).sum()
        loss = policy_loss + config.vf_coef * value_loss
    stats = {
        "train/policy_loss": policy_loss.detach(),
        "train/value_loss": value_loss.detach(),
        "diagnostics/entropy": entropy.detach(),
    }
    return loss, stats


def a2c_forward(model: ActorCritic, rollout: Rollout) -> tuple[Categorical | DiagGaussian, torch.Tensor]:
    """pi(.|s_t) for the T steps and V(s) for all T + 1 observations, in one forward with gradients.

    A2C takes one gradient step per rollout, so the forward that gives the bootstrap values for
    the targets is also the forward the loss differentiates: the targets use the values detached,
    the loss the same tensors with their graph (no second, gradient-free pass).
    """
    steps, envs = rollout.num_steps, rollout.num_envs
    obs = torch.from_numpy(rollout.obs.reshape((steps + 1) * envs, -1))
    return model.distribution(obs[: steps * envs]), model.value(obs)


def a2c_targets(values_tm: np.ndarray, rollout: Rollout, config: A2CConfig) -> tuple[np.ndarray, np.ndarray]:
    """(advantages, returns) [T, B] from the critic's values ``values_tm`` [T + 1, B].

    gae: GAE(gamma, gae_lambda), R = A + V(s). nstep: R = G^(n) (``nstep_returns``), A = R - V(s).
    ``values_tm[1:]`` are the bootstraps: V(s_{t+1}), V(final observation) where an episode ended
    at t, and V(s_T) after the last step.
    """
    if config.advantage == "gae":
        return gae(rollout.rewards, values_tm[:-1], values_tm[1:], rollout.terminated, rollout.truncated,
                   config.gamma, config.gae_lambda)
    horizon = config.nstep_horizon or config.num_steps
    next_values = values_tm[1:]
    returns = nstep_returns(rollout.rewards, next_values, rollout.terminated, rollout.truncated, config.gamma, horizon)
    return returns - values_tm[:-1], returns


def a2c_hand_gradients(
    net: NumpyActorCritic, forward: Forward, batch: Batch, config: A2CConfig
) -> dict[str, float]:
    """Set every ``.grad`` to dL/dparameter of ``a2c_loss`` (same L, same statistics), in NumPy.

    With w = mask / #valid: dL/dlog pi_i = -w_i A_i and dL/dV_i = 2 vf_coef w_i (V_i - R_i);
    ``numpy_grad`` carries them through the heads and torsos. ``tests/test_reinforce_ac_a2c.py``
    checks value and gradient against autograd of ``a2c_loss``.
    """
    n = len(batch)
    mask, advantages, actions = batch.mask.numpy(), batch.advantages.numpy(), batch.actions.numpy()
    weights = mask / max(float(mask.sum()), 1.0)
    if config.norm_adv:
        advantages = normalize_numpy(advantages, weights)
    terms = net.policy_terms(forward.head[:n], actions)
    d_log_probs = -weights * advantages
    d_head = net.head_gradient(terms, actions, d_log_probs, config.ent_coef, weights)
    error = forward.values[:n] - batch.returns.numpy()
    net.backward(forward, d_head, 2.0 * config.vf_coef * weights * error)
    return {
        "train/policy_loss": -float(weights @ (terms.log_probs * advantages)),
        "train/value_loss": float(weights @ (error * error)),
        "diagnostics/entropy": float(weights @ terms.entropy),
    }


class A2C:
    """The A2C learner: an actor-critic, RMSprop or Adam, ``prepare`` and a one-step ``update``."""

    name = "a2c"

    def __init__(self, config: A2CConfig, obs_dim: int, action: ActionSpec) -> None:
        self.config = config
        self.model = ActorCritic(
            obs_dim, action, config.hidden_sizes, config.activation, config.shared_network, config.log_std_init
        )
        self.parameters = list(self.model.parameters())
        if config.optimizer == "rmsprop":
            self.optimizer: torch.optim.Optimizer = torch.optim.RMSprop(
                self.parameters, lr=config.learning_rate, alpha=config.rms_alpha, eps=config.optimizer_eps, foreach=True
            )
        else:
            self.optimizer = adam(self.parameters, config.learning_rate, config.optimizer_eps)
        use_hand = config.hand_gradients and NumpyActorCritic.supports(self.model)
        self.numpy_net = NumpyActorCritic(self.model) if use_hand else None
        # prepare's forward, kept for the update of the batch it built: (batch, NumPy activations)
        # for hand gradients, else (batch, (pi, V) with their autograd graph).
        self.pending: tuple[Batch, Any] | None = None

    @property
    def rollout_length(self) -> int:
        return self.config.num_steps

    @property
    def gamma(self) -> float:
        return self.config.gamma

    def acting_policy(self) -> ActingPolicy:
        return self.model.acting_policy()

    def prepare(self, rollout: Rollout) -> tuple[Batch, dict[str, float]]:
        """Targets from one forward; ``update`` differentiates that same forward.

        The forward is NumPy with its activations kept (hand gradients) or torch with its autograd
        graph; either way it is kept for the ``update`` of this batch (nothing changes the
        parameters in between), and ``update`` of any other batch runs its own forward. Advantages
        of autoreset steps are zeroed and the mask keeps them out of the loss.
        """
        steps, envs = rollout.num_steps, rollout.num_envs
        if self.numpy_net is not None:
            obs = rollout.obs.reshape((steps + 1) * envs, -1)
            forward: Any = self.numpy_net.forward(obs, steps * envs)
            values = forward.values
        else:
            dist, values_with_graph = a2c_forward(self.model, rollout)
            forward = (dist, values_with_graph[: steps * envs])
            values = values_with_graph.detach().numpy()
        values_tm = values.reshape(steps + 1, envs)
        advantages, returns = a2c_targets(values_tm, rollout, self.config)
        valid = rollout.valid
        advantages = np.where(valid, advantages, 0.0).astype(np.float32)
        batch = Batch(
            obs=torch.from_numpy(rollout.obs[:steps].reshape(steps * envs, -1)),
            actions=torch.from_numpy(rollout.actions.reshape(steps * envs, *rollout.actions.shape[2:])),
            log_probs=torch.zeros(steps * envs),  # no importance ratio in A2C: log pi_old is not needed
            values=torch.from_numpy(values[: steps * envs]),
            advantages=torch.from_numpy(advantages.reshape(-1)),
            returns=torch.from_numpy(returns.astype(np.float32).reshape(-1)),
            mask=torch.from_numpy(valid.reshape(-1).astype(np.float32)),
        )
        self.pending = (batch, forward)
        stats = {
            "diagnostics/advantage_mean": float(advantages.mean()),
            "diagnostics/explained_variance": explained_variance(values_tm[:-1][valid], returns[valid]),
        }
        return batch, stats

    def update(self, batch: Batch, context: UpdateContext) -> dict[str, float]:
        """One gradient step on the whole batch (one epoch, one minibatch)."""
        config = self.config
        learning_rate = linear_schedule(config.learning_rate, context.progress, config.anneal_lr) * context.lr_scale
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        forward = self.pending[1] if self.pending is not None and self.pending[0] is batch else None
        self.pending = None
        if self.numpy_net is not None:
            if forward is None:
                forward = self.numpy_net.forward(batch.obs.numpy(), len(batch))
            metrics = a2c_hand_gradients(self.numpy_net, forward, batch, config)
        else:
            dist, values = forward if forward is not None else self.model(batch.obs)
            loss, stats = a2c_loss(dist, values, batch, config)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            metrics = {key: float(value) for key, value in stats.items()}
        grad_norm, clipped = clip_gradients(self.parameters, config.max_grad_norm)
        self.optimizer.step()
        metrics.update(
            {
                "train/learning_rate": learning_rate,
                "train/gradient_steps": 1.0,
                "diagnostics/grad_norm": grad_norm,
                "diagnostics/grad_norm_clipped": clipped,
            }
        )
        if self.model.log_std is not None:
            metrics["diagnostics/log_std_mean"] = float(self.model.log_std.detach().mean())
        return metrics

    # ---- checkpoint contract ------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"optimizer": self.optimizer}

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass
