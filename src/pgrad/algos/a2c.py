"""Advantage actor-critic, synchronous (A2C; Mnih et al. 2016, the synchronous variant of A3C).

A2C is the PPO loop with one epoch, one minibatch and another loss: every ``num_steps`` steps of
``env.num_envs`` environments, one gradient step on the whole batch with

    L = -E[log pi(a|s) A] + vf_coef E[(V(s) - R)^2] - ent_coef E[H(pi(.|s))]

where A and R come from GAE (``gae_lambda``; 1.0 gives the classic A2C return bootstrapped from
V(s_T)) or from n-step returns. Defaults are Stable-Baselines3's: RMSprop (alpha 0.99, eps 1e-5),
lr 7e-4, n_steps 5, gamma 0.99, gae_lambda 1.0, ent_coef 0.0, vf_coef 0.5, max_grad_norm 0.5.

Per update there is one forward over the T + 1 observations: its values give the targets and its
log-probabilities and values the loss. On the CPU the gradient of ``actor_critic_loss`` is computed by
hand in NumPy (``a2c_hand_gradients``, checked against autograd in the tests; ``gradient_backend``
chooses): at 40 samples per update autograd's per-op overhead, not arithmetic, is the cost.

With ``rnd.enabled`` (``pgrad.algos.rnd``, PPO's module and code): A = ext_coef A_ext + int_coef A_int, the
intrinsic advantage from RND's non-episodic GAE(int_gamma, gae_lambda), and the predictor's and intrinsic critic's
losses join the one gradient step (autograd).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from pgrad import glossary
from pgrad.algos.common import (
    LossTerms,
    actor_critic_loss,
    make_optimizer,
    mean_metrics,
    optimizer_step,
    scheduled_learning_rate,
)
from pgrad.algos.contract import UpdateContext
from pgrad.algos.numpy_grad import Forward, GradientBackend, NumpyActorCritic, choose_gradient_backend
from pgrad.algos.numpy_grad import normalize_advantages as normalize_numpy
from pgrad.algos.rnd import RNDConfig, RNDTargets, make_rnd
from pgrad.config import MAX_WINDOW, Checked, NetworkConfig, OptimizerConfig, param
from pgrad.distributions import Categorical, DiagGaussian
from pgrad.errors import ConfigError
from pgrad.estimators import gae, nstep_returns
from pgrad.metric_names import ENTROPY, GRAD_NORM, GRAD_NORM_CLIPPED, LEARNING_RATE, LOG_STD, POLICY_LOSS, VALUE_LOSS
from pgrad.nets import ActionSpec, ActorCritic, ObsShape
from pgrad.recurrent import RecurrentActorCritic, make_actor_critic
from pgrad.rollout import Batch, Rollout, rollout_to_batch


@dataclass(frozen=True)
class A2CConfig(Checked):
    """A2C hyper-parameters. Defaults follow Stable-Baselines3's A2C."""

    SECTION: ClassVar[str] = "a2c"

    num_steps: int = param(5, "steps per environment per update (batch = num_steps x env.num_envs)")
    advantage: Literal["gae", "nstep"] = param(
        "gae", "gae: GAE(gamma, gae_lambda); nstep: n-step returns with n = nstep_horizon, A = G - V(s)"
    )
    nstep_horizon: int | None = param(None, "n of the n-step return (None: num_steps, bootstrap from V(s_T))")
    gamma: float = glossary.gamma(0.99)
    gae_lambda: float = glossary.gae_lambda(1.0, "1.0: the classic A2C return")
    ent_coef: float = glossary.ent_coef(0.0)
    vf_coef: float = glossary.vf_coef(0.5)
    max_grad_norm: float = glossary.max_grad_norm(0.5)
    norm_adv: bool = glossary.norm_adv(False, "over the batch")
    network: NetworkConfig = param(NetworkConfig(), "the actor-critic MLP")
    optimizer: OptimizerConfig = param(
        OptimizerConfig(kind="rmsprop", learning_rate=7e-4, eps=1e-5, rms_alpha=0.99),
        "RMSprop, lr 7e-4, alpha 0.99, eps 1e-5 (SB3's A2C)",
    )
    gradient_backend: GradientBackend = param(
        "auto",
        "autograd (the reference), numpy (hand-derived gradients, equal to autograd, faster on the CPU; refuses "
        "what it does not implement) or auto (numpy when it implements the setting)",
    )
    rnd: RNDConfig = param(RNDConfig(), "Random Network Distillation exploration (pgrad.algos.rnd); off by default")

    def validate(self) -> None:
        """Checks each hyper-parameter's range and that the gradient backend fits the network."""
        self.check_range("num_steps", 1, MAX_WINDOW)
        self.check_range("nstep_horizon", 1, MAX_WINDOW)
        self.check_range("gamma", 0, 1)
        self.check_range("gae_lambda", 0, 1)
        self.check_range("ent_coef", 0)
        self.check_range("vf_coef", 0)
        self.check_range("max_grad_norm", 0, low_open=True)
        choose_gradient_backend(self.gradient_backend, self.SECTION, self.network)
        if self.rnd.enabled and self.gradient_backend == "numpy":
            raise ConfigError("a2c.gradient_backend must be 'auto' or 'autograd' with rnd.enabled; got 'numpy'")


def a2c_batch_loss(
    dist: Categorical | DiagGaussian,
    values: torch.Tensor,
    batch: Batch,
    *,
    vf_coef: float,
    ent_coef: float,
    norm_adv: bool,
) -> LossTerms:
    """``common.actor_critic_loss`` of a policy and values on a ``Batch`` (A2C and the A3C workers). The entropy
    is computed without a graph when ``ent_coef`` is 0 (it is then only reported)."""
    if ent_coef > 0.0:
        entropy = dist.entropy()
    else:
        with torch.no_grad():
            entropy = dist.entropy()
    return actor_critic_loss(
        log_probs=dist.log_prob(batch.actions),
        advantages=batch.advantages,
        values=values,
        returns=batch.returns,
        entropy=entropy,
        mask=batch.mask,
        vf_coef=vf_coef,
        ent_coef=ent_coef,
        norm_adv=norm_adv,
    )


def a2c_targets(values_tm: np.ndarray, rollout: Rollout, config: A2CConfig) -> tuple[np.ndarray, np.ndarray]:
    """(advantages, returns) [T, B] from the critic's values ``values_tm`` [T + 1, B].

    gae: GAE(gamma, gae_lambda), R = A + V(s). nstep: R = G^(n) (``nstep_returns``), A = R - V(s).
    ``values_tm[1:]`` are the bootstraps: V(s_{t+1}), V(final observation) where an episode ended
    at t, and V(s_T) after the last step.
    """
    if config.advantage == "gae":
        return gae(
            rollout.rewards,
            values_tm[:-1],
            values_tm[1:],
            rollout.terminated,
            rollout.truncated,
            config.gamma,
            config.gae_lambda,
        )
    horizon = config.nstep_horizon or config.num_steps
    next_values = values_tm[1:]
    returns = nstep_returns(rollout.rewards, next_values, rollout.terminated, rollout.truncated, config.gamma, horizon)
    return returns - values_tm[:-1], returns


def a2c_hand_gradients(
    net: NumpyActorCritic, forward: Forward, batch: Batch, *, vf_coef: float, ent_coef: float, norm_adv: bool
) -> dict[str, float]:
    """The NumPy backend: set every ``.grad`` to dL/dparameter of ``actor_critic_loss`` (same L, same terms).

    With w = mask / #valid: dL/dlog pi_i = -w_i A_i and dL/dV_i = 2 vf_coef w_i (V_i - R_i);
    ``numpy_grad`` carries them through the heads and torsos. ``tests/test_reinforce_ac_a2c.py``
    checks value and gradient against autograd of ``actor_critic_loss``. Every coefficient is implemented.
    """
    n = len(batch)
    mask, advantages, actions = batch.mask.numpy(), batch.advantages.numpy(), batch.actions.numpy()
    weights = mask / max(float(mask.sum()), 1.0)
    if norm_adv:
        advantages = normalize_numpy(advantages, weights)
    terms = net.policy_terms(forward.head[:n], actions)
    d_log_probs = -weights * advantages
    d_head = net.head_gradient(terms, actions, d_log_probs, ent_coef, weights)
    error = forward.values[:n] - batch.returns.numpy()
    net.backward(forward, d_head, 2.0 * vf_coef * weights * error)
    return {
        POLICY_LOSS: -float(weights @ (terms.log_probs * advantages)),
        VALUE_LOSS: float(weights @ (error * error)),
        ENTROPY: float(weights @ terms.entropy),
    }


def recurrent_forward(
    model: RecurrentActorCritic, rollout: Rollout, device: torch.device
) -> tuple[tuple[Categorical | DiagGaussian, torch.Tensor], np.ndarray]:
    """((pi over the T B steps, V [T B] with the graph), V [T + 1, B] flat as NumPy): the model over each env's
    rollout as one sequence from the stored state it began with, reset at episode starts."""
    assert rollout.states is not None and rollout.episode_starts is not None, "a recurrent policy's rollout"
    steps, envs = rollout.num_steps, rollout.num_envs
    head, values = model.outputs(
        torch.from_numpy(rollout.obs).to(device),
        torch.from_numpy(rollout.states[0]).to(device),
        torch.from_numpy(rollout.episode_starts).to(device),
    )
    dist = model.distribution(head[:steps].reshape(steps * envs, -1))
    return (dist, values[:steps].reshape(-1)), values.detach().cpu().numpy().reshape(-1)


class A2C:
    """The A2C learner: an actor-critic, RMSprop or Adam, ``prepare`` and a one-step ``update``."""

    name = "a2c"

    def __init__(
        self, config: A2CConfig, obs_shape: ObsShape, action: ActionSpec, device: torch.device | str = "cpu"
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        image = not isinstance(obs_shape, int)  # an image, or a Dict observation with one
        backend, self.gradient_backend_reason = choose_gradient_backend(
            config.gradient_backend, config.SECTION, config.network, action, str(device), image
        )
        # recurrent (pgrad.recurrent): each env's rollout is one sequence from the state it started with
        self.model = make_actor_critic(obs_shape, action, config.network).to(self.device)
        self.parameters = list(self.model.parameters())
        self.rnd = make_rnd(config.SECTION, config.rnd, config.network, obs_shape, self.device)
        if self.rnd is not None:  # the NumPy backend has no RND terms; the predictor and V_int train in this loss
            backend, self.gradient_backend_reason = "autograd", "a2c.rnd.enabled (RND needs autograd)"
            self.parameters += self.rnd.trainable()
        self.gradient_backend = backend
        self.optimizer = make_optimizer(self.parameters, config.optimizer)
        self.numpy_net = None
        if backend == "numpy" and isinstance(self.model, ActorCritic):
            self.numpy_net = NumpyActorCritic(self.model)
        # prepare's forward, kept for the update of the batch it built: (batch, NumPy activations)
        # for the NumPy backend, else (batch, (pi, V) with their autograd graph); and RND's rows of that batch.
        self.pending: tuple[Batch, Any] | None = None
        self.rnd_targets: tuple[Batch, RNDTargets] | None = None

    @property
    def rollout_length(self) -> int:
        """Steps per env per rollout: ``num_steps``."""
        return self.config.num_steps

    @property
    def gamma(self) -> float:
        """The discount factor, from the config."""
        return self.config.gamma

    @property
    def state_size(self) -> int:
        """Width of the hidden state the loop carries per env: 0 for a feed-forward network."""
        return self.model.state_size if isinstance(self.model, RecurrentActorCritic) else 0

    def acting_policy(self) -> Any:
        """The model's acting policy: an ``ActingPolicy``, or a ``RecurrentActingPolicy`` (typed Any, as PPO's)."""
        return self.model.acting_policy()

    def prepare(self, rollout: Rollout) -> tuple[Batch, dict[str, float]]:
        """Targets from one forward; ``update`` differentiates that same forward.

        A2C takes one gradient step per rollout, so the forward that gives the bootstrap values
        for the targets is also the forward the loss differentiates: NumPy with its activations
        kept, or torch with its autograd graph (the targets use the values detached). It is kept
        for the ``update`` of this batch (nothing changes the parameters in between); ``update`` of
        any other batch runs its own forward.
        """
        steps, envs = rollout.num_steps, rollout.num_envs
        obs = rollout.obs.reshape((steps + 1) * envs, -1)
        if self.numpy_net is not None:
            forward: Any = self.numpy_net.forward(obs, steps * envs)
            values = forward.values
        elif isinstance(self.model, RecurrentActorCritic):
            forward, values = recurrent_forward(self.model, rollout, self.device)
        else:
            obs_tensor = torch.from_numpy(obs).to(self.device)
            values_with_graph = self.model.value(obs_tensor)
            forward = (self.model.distribution(obs_tensor[: steps * envs]), values_with_graph[: steps * envs])
            values = values_with_graph.detach().cpu().numpy()
        values_tm = values.reshape(steps + 1, envs)
        advantages, returns = a2c_targets(values_tm, rollout, self.config)
        batch, stats = rollout_to_batch(rollout, values_tm, advantages, returns, None, self.device)
        if self.rnd is not None:  # A = ext_coef A_ext + int_coef A_int (pgrad.algos.rnd)
            combined, targets, rnd_stats = self.rnd.prepare(
                rollout, batch.advantages, self.config.gae_lambda, self.device
            )
            batch, stats = batch.with_advantages(combined), {**stats, **rnd_stats}
            self.rnd_targets = (batch, targets)
        self.pending = (batch, forward)
        return batch, stats

    def update(self, batch: Batch, context: UpdateContext) -> dict[str, float]:
        """One gradient step on the whole batch (one epoch, one minibatch)."""
        config = self.config
        learning_rate = scheduled_learning_rate(self.optimizer, config.optimizer, context)
        forward = self.pending[1] if self.pending is not None and self.pending[0] is batch else None
        self.pending = None
        vf_coef, ent_coef, norm_adv = config.vf_coef, config.ent_coef, config.norm_adv
        loss: torch.Tensor | None = None
        if self.numpy_net is not None:
            if forward is None:
                forward = self.numpy_net.forward(batch.obs.numpy(), len(batch))
            metrics = a2c_hand_gradients(
                self.numpy_net, forward, batch, vf_coef=vf_coef, ent_coef=ent_coef, norm_adv=norm_adv
            )
        else:
            if forward is None and isinstance(self.model, RecurrentActorCritic):
                raise ValueError("a recurrent A2C updates only on the batch its prepare built (the sequence pass)")
            dist, values = forward if forward is not None else self.model(batch.obs)
            terms = a2c_batch_loss(dist, values, batch, vf_coef=vf_coef, ent_coef=ent_coef, norm_adv=norm_adv)
            loss, metrics = terms.loss, mean_metrics([terms.metrics()])
            loss, metrics = self._with_rnd(loss, metrics, batch, context.rng)
        grad_norm, clipped = optimizer_step(self.optimizer, self.parameters, loss, config.max_grad_norm)
        metrics.update(
            {
                LEARNING_RATE: learning_rate,
                "train/gradient_steps": 1.0,
                GRAD_NORM: grad_norm,
                GRAD_NORM_CLIPPED: clipped,
            }
        )
        if self.model.log_std is not None:
            metrics[LOG_STD] = float(self.model.log_std.detach().mean())
        return metrics

    def _with_rnd(
        self, loss: torch.Tensor, metrics: dict[str, float], batch: Batch, rng: np.random.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss plus RND's predictor and vf_coef x intrinsic value losses on ``batch`` (unchanged without RND)."""
        pending, self.rnd_targets = self.rnd_targets, None
        if self.rnd is None:
            return loss, metrics
        if pending is None or pending[0] is not batch:
            raise ValueError("a2c with rnd.enabled updates only on the batch its prepare built (RND's rows)")
        rnd_loss, rnd_stats = self.rnd.loss(batch.obs, pending[1], batch.mask, self.config.vf_coef, rng)
        return loss + rnd_loss, {**metrics, **{name: float(value) for name, value in rnd_stats.items()}}

    # ---- checkpoint contract ------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        """The checkpoint contract: the networks saved and restored (the actor-critic model, and RND's)."""
        return {"model": self.model} if self.rnd is None else {"model": self.model, "rnd": self.rnd}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The checkpoint contract: the optimizers saved and restored."""
        return {"optimizer": self.optimizer}

    def extra_state(self) -> dict[str, Any]:
        """The checkpoint contract: RND's forward-filter state, else nothing beyond the networks and optimizers."""
        return {} if self.rnd is None else self.rnd.extra_state()

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """The checkpoint contract: restores RND's forward-filter state (nothing else to restore)."""
        if self.rnd is not None:
            self.rnd.load_extra_state(state)
