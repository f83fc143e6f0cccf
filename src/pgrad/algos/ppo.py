"""Proximal Policy Optimization (Schulman et al., 2017), clipped-surrogate variant.

The details that matter (Huang et al., "The 37 implementation details of PPO", 2022) are all
here and named in ``PPOConfig``: GAE, per-minibatch advantage normalisation, clipped surrogate,
optional clipped value loss, entropy bonus, global gradient clipping, Adam with eps 1e-5,
linear annealing of the learning rate and clip range, and target-KL early stopping.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from pgrad import glossary
from pgrad.algos.common import (
    LossTerms,
    actor_critic_batch,
    linear_schedule,
    make_optimizer,
    mean_metrics,
    optimizer_step,
    scheduled_learning_rate,
)
from pgrad.algos.contract import UpdateContext
from pgrad.algos.numpy_grad import GradientBackend, NumpyActorCritic, choose_gradient_backend
from pgrad.algos.numpy_grad import normalize_advantages as normalize_numpy
from pgrad.algos.rnd import RND, RNDConfig, RNDTargets, make_rnd, paired_minibatches
from pgrad.config import MAX_WINDOW, Checked, EnvConfig, NetworkConfig, OptimizerConfig, param
from pgrad.errors import ConfigError
from pgrad.estimators import gae
from pgrad.metric_names import (
    APPROX_KL,
    CLIP_FRACTION,
    ENTROPY,
    GRAD_NORM,
    GRAD_NORM_CLIPPED,
    LEARNING_RATE,
    LOG_STD,
    POLICY_LOSS,
    VALUE_LOSS,
)
from pgrad.nets import ActionSpec, ActorCritic, ObsShape
from pgrad.numerics import clipped_surrogate, masked_mean, masked_whiten, value_loss
from pgrad.recurrent import RecurrentActorCritic, make_actor_critic
from pgrad.rollout import Batch, Rollout, rollout_to_batch
from pgrad.sequences import SequenceBatch, evaluate_sequences, replay, to_sequences


@dataclass(frozen=True)
class PPOConfig(Checked):
    """PPO hyper-parameters. Defaults follow CleanRL/SB3 for MuJoCo-sized problems."""

    SECTION: ClassVar[str] = "ppo"

    num_steps: int = param(128, "steps per environment per rollout (batch = num_steps x env.num_envs)")
    num_epochs: int = glossary.num_epochs(10)
    minibatch_size: int = param(64, "samples per gradient step; must divide the batch")
    gamma: float = glossary.gamma(0.99)
    gae_lambda: float = glossary.gae_lambda(0.95)
    clip_eps: float = glossary.clip_eps(0.2)
    anneal_clip: bool = param(False, "anneal clip_eps linearly to 0 over run.total_steps")
    clip_vf: float | None = param(None, "clip the value update to +-clip_vf around the old value (None: off)")
    ent_coef: float = glossary.ent_coef(0.0)
    vf_coef: float = glossary.vf_coef(0.5)
    max_grad_norm: float = glossary.max_grad_norm(0.5)
    target_kl: float | None = param(
        None,
        "early stop: before each minibatch step, if that minibatch's approx KL > 1.5 x target_kl, "
        "the step is skipped and the update ends (None: off)",
    )
    norm_adv: bool = glossary.norm_adv(True, "per minibatch")
    network: NetworkConfig = param(NetworkConfig(), "the actor-critic MLP")
    optimizer: OptimizerConfig = param(
        OptimizerConfig(learning_rate=3e-4, anneal_lr=True, eps=1e-5),
        "Adam, lr 3e-4 annealed to 0, eps 1e-5 (the PPO baselines')",
    )
    gradient_backend: GradientBackend = param(
        "auto",
        "autograd (the reference), numpy (hand-derived gradients, equal to autograd, ~2x faster per CPU step; "
        "refuses what it does not implement) or auto (numpy when it implements the setting)",
    )
    rnd: RNDConfig = param(RNDConfig(), "Random Network Distillation exploration (pgrad.algos.rnd); off by default")

    def validate(self) -> None:
        """Checks each hyper-parameter's range and that the gradient backend fits the network."""
        self.check_range("num_steps", 1, MAX_WINDOW)
        self.check_range("num_epochs", 1, MAX_WINDOW)
        self.check_range("minibatch_size", 1, MAX_WINDOW)
        self.check_range("gamma", 0, 1)
        self.check_range("gae_lambda", 0, 1)
        self.check_range("clip_eps", 0, 1, low_open=True, high_open=True)
        self.check_range("clip_vf", 0, low_open=True)
        self.check_range("ent_coef", 0)
        self.check_range("vf_coef", 0)
        self.check_range("max_grad_norm", 0, low_open=True)
        self.check_range("target_kl", 0, low_open=True)
        choose_gradient_backend(self.gradient_backend, self.SECTION, self.network)
        length = self.network.sequence_length
        if self.network.recurrent is not None and (self.num_steps % length or self.minibatch_size % length):
            raise ConfigError(
                f"ppo.network.sequence_length must divide ppo.num_steps ({self.num_steps}) and ppo.minibatch_size "
                f"({self.minibatch_size}): minibatches are whole sequences; got {length}"
            )
        if self.rnd.enabled and self.gradient_backend == "numpy":
            raise ConfigError("ppo.gradient_backend must be 'auto' or 'autograd' with rnd.enabled; got 'numpy'")

    def check_with_env(self, env: EnvConfig) -> None:
        """Checks that ``minibatch_size`` divides the batch, ``num_steps x env.num_envs``."""
        batch = self.num_steps * env.num_envs
        if self.minibatch_size > batch or batch % self.minibatch_size:
            raise ConfigError(
                f"ppo.minibatch_size must divide the batch num_steps x env.num_envs = "
                f"{self.num_steps} x {env.num_envs} = {batch}; got {self.minibatch_size}"
            )


def ppo_loss(
    *,
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    values: torch.Tensor,
    returns: torch.Tensor,
    entropy: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
    vf_coef: float,
    ent_coef: float,
    norm_adv: bool,
    clip_vf: float | None = None,
    old_values: torch.Tensor | None = None,
) -> LossTerms:
    """L = -E[min(r A, clip(r, 1 - eps, 1 + eps) A)] + vf_coef E[(V - R)^2] - ent_coef E[H(pi)].

    r = exp(log pi(a|s) - log pi_old(a|s)). Every tensor has the shape of ``mask`` ([N] steps or
    [B, T] tokens), and every E[.] is a mean over the entries where mask = 1. With ``norm_adv``,
    A is whitened to mean 0, sample std 1 over those entries first (``numerics.masked_whiten``).
    With ``clip_vf`` = c, the value term is E[max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)]
    (needs ``old_values``). ``entropy`` is H(pi(.|s)) per entry. The surrogate and its diagnostics
    (approx KL = E[(r - 1) - log r], the fraction of entries whose ratio left [1 - eps, 1 + eps]) are
    ``numerics.clipped_surrogate``, the value term ``numerics.value_loss``: token PPO uses the same two.
    """
    if norm_adv:
        advantages = masked_whiten(advantages, mask)
    surrogate = clipped_surrogate(log_probs, old_log_probs, advantages, mask, clip_eps)
    critic_loss = value_loss(values, returns, mask, old_values=old_values, clip_vf=clip_vf)
    mean_entropy = masked_mean(entropy, mask)
    loss = surrogate.loss + vf_coef * critic_loss - ent_coef * mean_entropy
    return LossTerms(
        loss=loss,
        policy_loss=surrogate.loss,
        value_loss=critic_loss,
        entropy=mean_entropy,
        approx_kl=surrogate.approx_kl,
        clip_fraction=surrogate.clip_fraction,
    )


def ppo_hand_gradients(
    net: NumpyActorCritic,
    minibatch: Batch,
    *,
    clip_eps: float,
    vf_coef: float,
    ent_coef: float,
    norm_adv: bool,
    clip_vf: float | None = None,
) -> dict[str, float]:
    """The NumPy backend: set every ``.grad`` to the gradient of ``ppo_loss`` and return its terms.

    With w = mask / #valid (sum_i w_i = 1) and A the (normalised) advantages:
        dL/dlog pi_i = -w_i A_i r_i [r_i A_i <= clip(r_i) A_i]   (zero where the clip is active)
        dL/dV_i      = 2 c_v w_i (V_i - R_i), or through the clipped value when that branch is larger
    ``numpy_grad`` carries these through the heads and torsos; tests/test_ppo_grad.py checks value
    and gradient against autograd of ``ppo_loss``. Every coefficient of ``ppo_loss`` is implemented.
    """
    mask, actions, returns = minibatch.mask.numpy(), minibatch.actions.numpy(), minibatch.returns.numpy()
    weights = mask / max(float(mask.sum()), 1.0)
    advantages = minibatch.advantages.numpy()
    if norm_adv:
        advantages = normalize_numpy(advantages, weights)
    forward = net.forward(minibatch.obs.numpy())
    terms = net.policy_terms(forward.head, actions)
    log_ratio = terms.log_probs - minibatch.log_probs.numpy()
    ratio = np.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = np.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    d_log_probs = -weights * advantages * ratio * (unclipped <= clipped)
    d_head = net.head_gradient(terms, actions, d_log_probs, ent_coef, weights)

    error = forward.values - returns
    if clip_vf is None:
        critic_loss = float(weights @ (error * error))
        d_values = 2.0 * vf_coef * weights * error
    else:
        delta = forward.values - minibatch.values.numpy()
        clipped_error = minibatch.values.numpy() + np.clip(delta, -clip_vf, clip_vf) - returns
        use_clipped = clipped_error * clipped_error > error * error
        critic_loss = float(weights @ np.where(use_clipped, clipped_error**2, error**2))
        inside = np.abs(delta) <= clip_vf
        d_values = 2.0 * vf_coef * weights * np.where(use_clipped, clipped_error * inside, error)
    net.backward(forward, d_head, d_values)
    return {
        POLICY_LOSS: -float(weights @ np.minimum(unclipped, clipped)),
        VALUE_LOSS: critic_loss,
        ENTROPY: float(weights @ terms.entropy),
        APPROX_KL: float(weights @ ((ratio - 1.0) - log_ratio)),
        CLIP_FRACTION: float(weights @ (np.abs(ratio - 1.0) > clip_eps).astype(np.float32)),
    }


class PPO:
    """The PPO learner: an actor-critic, its optimiser, ``prepare`` and ``update``."""

    name = "ppo"

    def __init__(
        self, config: PPOConfig, obs_shape: ObsShape, action: ActionSpec, device: torch.device | str = "cpu"
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        self.gradient_backend, self.gradient_backend_reason = choose_gradient_backend(
            config.gradient_backend,
            config.SECTION,
            config.network,
            action,
            str(self.device),
            not isinstance(obs_shape, int),  # an image, or a Dict observation with one
        )
        # recurrent (pgrad.recurrent): the rollout carries its state, minibatches are sequences (pgrad.sequences)
        self.model = make_actor_critic(obs_shape, action, config.network).to(self.device)
        self.parameters = list(self.model.parameters())
        self.rnd = rnd_for(config, obs_shape, self.device)
        if self.rnd is not None:  # the NumPy backend has no RND terms; the predictor and V_int train in this loss
            self.gradient_backend, self.gradient_backend_reason = "autograd", "ppo.rnd.enabled (RND needs autograd)"
            self.parameters += self.rnd.trainable()
        self._rnd_targets: RNDTargets | None = None  # set by prepare, read by the update that follows it
        self.optimizer = make_optimizer(self.parameters, config.optimizer)
        self.numpy_net = None
        if self.gradient_backend == "numpy" and isinstance(self.model, ActorCritic):
            self.numpy_net = NumpyActorCritic(self.model)

    @property
    def state_size(self) -> int:
        """Width of the hidden state the loop carries per env: 0 for a feed-forward network."""
        return self.model.state_size if isinstance(self.model, RecurrentActorCritic) else 0

    @property
    def rollout_length(self) -> int:
        """Steps per env per rollout: ``num_steps``."""
        return self.config.num_steps

    @property
    def gamma(self) -> float:
        """The discount factor, from the config."""
        return self.config.gamma

    def acting_policy(self) -> Any:
        """The model's acting policy (the loop samples actions from it): an ``ActingPolicy``, or a
        ``RecurrentActingPolicy`` whose ``step`` takes and returns the state (typed Any: the loop's contract names
        the feed-forward one)."""
        return self.model.acting_policy()

    def prepare(self, rollout: Rollout) -> tuple[Any, dict[str, float]]:
        """log pi_old and V from one gradient-free pass; GAE advantages and returns. A recurrent model's pass runs
        over the whole rollout from its start state, and the batch is cut into sequences."""
        config = self.config
        if not isinstance(self.model, RecurrentActorCritic):
            return self._feed_forward_batch(rollout)
        values, log_probs = evaluate_sequences(self.model, rollout, self.device)
        advantages, returns = gae(
            rollout.rewards,
            values[:-1],
            values[1:],
            rollout.terminated,
            rollout.truncated,
            config.gamma,
            config.gae_lambda,
        )
        flat, stats = rollout_to_batch(rollout, values, advantages, returns, log_probs)
        length = config.network.sequence_length
        if self.rnd is not None:  # RND's rows cut into the same sequences as the batch
            combined, targets, rnd_stats = self.rnd.prepare(rollout, flat.advantages, config.gae_lambda, self.device)
            flat, stats = flat.with_advantages(combined), {**stats, **rnd_stats}
            self._rnd_targets = targets.sequences(rollout.num_steps, rollout.num_envs, length)
        return to_sequences(flat, rollout, length).to(self.device), stats

    def _feed_forward_batch(self, rollout: Rollout) -> tuple[Batch, dict[str, float]]:
        """The feed-forward GAE batch; with RND, A = ext_coef A_ext + int_coef A_int replaces its advantages (the PPO
        loss reads them as before)."""
        assert isinstance(self.model, ActorCritic)  # the recurrent model takes the sequence path
        batch, stats = actor_critic_batch(self.model, rollout, self.config.gamma, self.config.gae_lambda, self.device)
        if self.rnd is None:
            return batch, stats
        advantages, self._rnd_targets, rnd_stats = self.rnd.prepare(
            rollout, batch.advantages, self.config.gae_lambda, self.device
        )
        return batch.with_advantages(advantages), {**stats, **rnd_stats}

    def update(self, batch: Batch | SequenceBatch, context: UpdateContext) -> dict[str, float]:
        """``num_epochs`` passes of minibatch steps; ``context.progress`` in [0, 1] drives the annealing."""
        config = self.config
        learning_rate = scheduled_learning_rate(self.optimizer, config.optimizer, context)
        clip_eps = linear_schedule(config.clip_eps, context.progress, config.anneal_clip)

        history: list[dict[str, Any]] = []
        grad_norms: list[float] = []
        stopped_early = False
        for _ in range(config.num_epochs):
            for minibatch, extra in self._minibatches(batch, context.rng):
                # The loss (autograd) or the loss's terms with every .grad already set (NumPy).
                loss, stats = self._loss(minibatch, clip_eps, extra, context.rng)
                if config.target_kl is not None and float(stats[APPROX_KL]) > 1.5 * config.target_kl:
                    stopped_early = True
                    break
                norms = optimizer_step(self.optimizer, self.parameters, loss, config.max_grad_norm)
                grad_norms.append(norms[0])
                history.append(stats)
            if stopped_early:
                break

        metrics = mean_metrics(history)
        norm_array = np.asarray(grad_norms) if grad_norms else np.zeros(1)
        metrics.update(
            {
                LEARNING_RATE: learning_rate,
                "train/clip_eps": clip_eps,
                "train/gradient_steps": float(len(history)),
                "train/stopped_early": float(stopped_early),
                GRAD_NORM: float(norm_array.mean()),
                GRAD_NORM_CLIPPED: float(np.minimum(norm_array, config.max_grad_norm).mean()),
            }
        )
        if self.model.log_std is not None:
            metrics[LOG_STD] = float(self.model.log_std.detach().mean())
        return metrics

    def _minibatches(
        self, batch: Batch | SequenceBatch, rng: np.random.Generator
    ) -> Iterator[tuple[Batch | SequenceBatch, RNDTargets | None]]:
        """The update's minibatches, each with its RND rows (None without RND)."""
        if self._rnd_targets is None:
            yield from ((minibatch, None) for minibatch in batch.minibatches(self.config.minibatch_size, rng))
            return
        yield from paired_minibatches(batch, self._rnd_targets, self.config.minibatch_size, rng)

    def _loss(
        self, minibatch: Batch | SequenceBatch, clip_eps: float, extra: RNDTargets | None, rng: np.random.Generator
    ) -> tuple[torch.Tensor | None, dict[str, Any]]:
        config = self.config
        if self.numpy_net is not None and isinstance(minibatch, Batch):
            stats = ppo_hand_gradients(
                self.numpy_net,
                minibatch,
                clip_eps=clip_eps,
                vf_coef=config.vf_coef,
                ent_coef=config.ent_coef,
                norm_adv=config.norm_adv,
                clip_vf=config.clip_vf,
            )
            return None, stats
        terms = self.loss_terms(minibatch, clip_eps)
        if extra is None or self.rnd is None:
            return terms.loss, terms.metrics()
        # RND: the predictor's loss and vf_coef x the intrinsic value loss join the same step.
        rnd_loss, rnd_stats = self.rnd.loss(minibatch.obs, extra, minibatch.mask, config.vf_coef, rng)
        return terms.loss + rnd_loss, {**terms.metrics(), **rnd_stats}

    def loss_terms(self, minibatch: Batch | SequenceBatch, clip_eps: float) -> LossTerms:
        """``ppo_loss`` of the current model on ``minibatch`` (autograd): flat steps, or sequences replayed from their
        stored start states (every tensor [S, L] and the same loss over the mask)."""
        config = self.config
        if isinstance(self.model, RecurrentActorCritic):
            assert isinstance(minibatch, SequenceBatch)
            dist, values, minibatch = replay(self.model, minibatch, config.network.burn_in)
        else:
            dist, values = self.model(minibatch.obs)
        return ppo_loss(
            log_probs=dist.log_prob(minibatch.actions),
            old_log_probs=minibatch.log_probs,
            advantages=minibatch.advantages,
            values=values,
            returns=minibatch.returns,
            entropy=dist.entropy(),
            mask=minibatch.mask,
            clip_eps=clip_eps,
            vf_coef=config.vf_coef,
            ent_coef=config.ent_coef,
            norm_adv=config.norm_adv,
            clip_vf=config.clip_vf,
            old_values=minibatch.values,
        )

    # ---- checkpoint contract ------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        """The checkpoint contract: the networks saved and restored (the actor-critic model)."""
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


def rnd_for(config: PPOConfig, obs_shape: ObsShape, device: torch.device) -> RND | None:
    """The RND module when ``rnd.enabled`` (vector and image observations), else None (``rnd.make_rnd``)."""
    return make_rnd(config.SECTION, config.rnd, config.network, obs_shape, device)
