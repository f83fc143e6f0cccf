"""IMPALA: asynchronous actors, a central learner and the V-trace off-policy correction (Espeholt et al., 2018).

Actors (Ray workers, ``pgrad.runners.ray_backend.ImpalaCollector``) keep acting with the weights they were last
sent, so a rollout reaching the learner was sampled by a behaviour policy mu that is a few updates older than the
learner's pi (the policy lag). Each rollout carries log mu(a_t|s_t); the learner corrects with V-trace
(``pgrad.estimators.vtrace``):

    rho_t = min(rho_bar, pi(a_t|s_t) / mu(a_t|s_t)),   c_t = lambda min(c_bar, pi / mu)
    v_s = V(s) + sum_t gamma^(t-s) (prod_{i<t} c_i) rho_t (r_t + gamma V(s_{t+1}) - V(s_t))
    L = -E[rho_s (r_s + gamma v_{s+1} - V(s_s)) log pi(a_s|s_s)] + vf_coef E[(V(s_s) - v_s)^2] - ent_coef E[H]

which is A2C's loss (``actor_critic_loss``) with V-trace's policy-gradient advantage and target. rho_bar bounds the
variance of the policy gradient and where the value function converges (to V^pi at rho_bar = inf, towards V^mu
below); c_bar bounds how far the trace reaches. With on-policy data (pi = mu) every rho is 1 and, at
rho_bar = c_bar = lambda = 1, v_s is the bootstrapped Monte Carlo return. Terminated and truncated are apart: a
truncated step bootstraps from V(final observation), and the Gymnasium autoreset step is masked out.

Where the actors run: on Ray (``run.backend ray``), asynchronously as above; or locally (``run.backend local``), the
learner's own vector env acting with its newest weights (``LocalActorCollector``: lag 0, every rho = 1, exact resume),
which is the same learner on the same rollouts, for small runs, tests and machines without Ray.

A recurrent network (``network.recurrent``, ``pgrad.recurrent``): the actor stores the state it carried into each
rollout's first step (``Rollout.states``) and sends it with the rollout; log mu is replayed from it
(``RecurrentActingPolicy.sequence_log_probs``, the acting pass bit for bit). The learner unrolls each env's rollout
as one sequence from that state, reset at episode starts (``a2c.recurrent_forward``), and V-trace runs over it with
the autoreset steps masked: the same ``vtrace_targets`` and the same loss as the feed-forward learner.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch

from pgrad import glossary
from pgrad.algos.a2c import a2c_batch_loss, recurrent_forward
from pgrad.algos.common import evaluate_rollout, make_optimizer, mean_metrics, optimizer_step, scheduled_learning_rate
from pgrad.algos.contract import UpdateContext
from pgrad.config import MAX_WINDOW, Checked, NetworkConfig, OptimizerConfig, param
from pgrad.distributions import Categorical, DiagGaussian
from pgrad.estimators import vtrace
from pgrad.metric_names import GRAD_NORM, GRAD_NORM_CLIPPED, LEARNING_RATE, LOG_STD
from pgrad.nets import ActionSpec, ObsShape
from pgrad.recurrent import RecurrentActorCritic, make_actor_critic
from pgrad.rollout import Batch, Rollout, RolloutCollector, rollout_to_batch

RHO_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ImpalaConfig(Checked):
    """IMPALA hyper-parameters. The actors are ``ray.workers`` Ray workers of ``env.num_envs`` envs each (``run.backend
    ray``), or the learner's own ``env.num_envs`` envs (``run.backend local``)."""

    SECTION: ClassVar[str] = "impala"

    num_steps: int = param(32, "steps per env per rollout; the learner updates on one actor's rollout at a time")
    gamma: float = glossary.gamma(0.99)
    rho_bar: float = param(1.0, "V-trace importance-weight clip of the targets and the policy gradient (rho-bar)")
    c_bar: float = param(1.0, "V-trace trace-cutting clip (c-bar), <= rho_bar in the paper")
    vtrace_lambda: float = param(1.0, "V-trace lambda: c_t = lambda min(c_bar, pi/mu)")
    ent_coef: float = glossary.ent_coef(0.01)
    vf_coef: float = glossary.vf_coef(0.5, "R is the V-trace target v_s")
    max_grad_norm: float = glossary.max_grad_norm(40.0, "the paper's 40")
    actor_queue: int = param(
        2,
        "rollouts requested from each actor at a time: >1 keeps an actor busy while the learner works, at the "
        "cost of more policy lag",
    )
    network: NetworkConfig = param(NetworkConfig(), "the actor-critic MLP")
    optimizer: OptimizerConfig = param(
        OptimizerConfig(kind="adam", learning_rate=1e-3, eps=1e-5, anneal_lr=True),
        "Adam, lr 1e-3 annealed to 0 (measured on CartPole-v1: steadier than the paper's RMSprop 6e-4 there)",
    )

    def validate(self) -> None:
        """Checks each hyper-parameter's range."""
        self.check_range("num_steps", 1, MAX_WINDOW)
        self.check_range("gamma", 0, 1)
        self.check_range("rho_bar", 0, low_open=True)
        self.check_range("c_bar", 0, low_open=True)
        self.check_range("vtrace_lambda", 0, 1)
        self.check_range("ent_coef", 0)
        self.check_range("vf_coef", 0)
        self.check_range("max_grad_norm", 0, low_open=True)
        self.check_range("actor_queue", 1, MAX_WINDOW)


def vtrace_targets(
    values_tm: np.ndarray, log_pi: np.ndarray, rollout: Rollout, config: ImpalaConfig
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """(pg_advantages, v_s) [T, B] from the learner's values [T + 1, B] and log pi [T, B], and the importance
    weights' statistics over valid steps. ``values_tm[1:]`` are the bootstraps (V(final observation) where an
    episode ended)."""
    if rollout.behaviour_log_probs is None:
        raise ValueError("impala needs rollouts with behaviour log-probabilities (collected by its Ray actors)")
    log_rhos = log_pi - rollout.behaviour_log_probs.astype(np.float64)
    vs, pg_advantages = vtrace(
        log_rhos,
        rollout.rewards.astype(np.float64),
        values_tm[:-1].astype(np.float64),
        values_tm[1:].astype(np.float64),
        rollout.terminated,
        rollout.truncated,
        config.gamma,
        config.rho_bar,
        config.c_bar,
        config.vtrace_lambda,
    )
    rhos = np.exp(log_rhos[rollout.valid])
    # "clipped" beyond float32 rounding: the actors' log mu and the learner's log pi of the same weights differ in
    # the last bits, and a rho of 1 + 1e-7 clipped to 1 changes nothing
    tolerance = 1.0 + RHO_TOLERANCE
    stats = {
        "impala/rho_mean": float(rhos.mean()) if rhos.size else 1.0,
        "impala/rho_clipped_fraction": float((rhos > config.rho_bar * tolerance).mean()) if rhos.size else 0.0,
        "impala/c_clipped_fraction": float((rhos > config.c_bar * tolerance).mean()) if rhos.size else 0.0,
    }
    return pg_advantages, vs, stats


def behaviour_log_probs(policy: Any, rollout: Rollout) -> np.ndarray:
    """log mu(a_t|s_t) [T, B] of the acting ``policy`` on the rollout it collected: per step for a feed-forward
    ``ActingPolicy``; for a recurrent one, replayed from the state stored at the rollout's first step with its
    episode starts (the acting pass bit for bit)."""
    steps, envs = rollout.num_steps, rollout.num_envs
    if getattr(policy, "recurrent", False):
        assert rollout.states is not None and rollout.episode_starts is not None, "a recurrent policy's rollout"
        log_mu: np.ndarray = policy.sequence_log_probs(
            rollout.obs[:steps], rollout.states[0], rollout.episode_starts[:steps], rollout.actions
        )
    else:
        flat_obs = rollout.obs[:steps].reshape(steps * envs, -1)
        flat_actions = rollout.actions.reshape(steps * envs, *rollout.actions.shape[2:])
        log_mu = policy.log_prob(flat_obs, flat_actions).reshape(steps, envs)
    return log_mu.astype(np.float32)


class LocalActorCollector(RolloutCollector):
    """IMPALA's actors on the local backend: the learner's own vector env, acting with the newest weights (policy
    lag 0); each rollout carries its behaviour log-probabilities as a Ray actor's does."""

    def collect(self, policy: Any, rng: np.random.Generator, num_steps: int) -> Rollout:
        """``RolloutCollector.collect`` with ``behaviour_log_probs`` attached."""
        rollout = super().collect(policy, rng, num_steps)
        return replace(rollout, behaviour_log_probs=behaviour_log_probs(policy, rollout))


class Impala:
    """The IMPALA learner: an actor-critic, V-trace targets in ``prepare``, one gradient step per rollout."""

    name = "impala"

    def __init__(
        self, config: ImpalaConfig, obs_shape: ObsShape, action: ActionSpec, device: torch.device | str = "cpu"
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        # recurrent (pgrad.recurrent): each env's rollout is one sequence from the state its actor stored
        self.model = make_actor_critic(obs_shape, action, config.network).to(self.device)
        self.parameters = list(self.model.parameters())
        self.optimizer = make_optimizer(self.parameters, config.optimizer)
        # a recurrent prepare's forward (pi and V with their graph), kept for the update of the batch it built
        self.pending: tuple[Batch, tuple[Categorical | DiagGaussian, torch.Tensor]] | None = None

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
        """Width of the hidden state the actors carry per env: 0 for a feed-forward network."""
        return self.model.state_size if isinstance(self.model, RecurrentActorCritic) else 0

    def acting_policy(self) -> Any:
        """The model's acting policy: an ``ActingPolicy``, or a ``RecurrentActingPolicy`` (typed Any, as PPO's)."""
        return self.model.acting_policy()

    def prepare(self, rollout: Rollout) -> tuple[Batch, dict[str, float]]:
        """V-trace targets under the learner's current weights: one gradient-free pass, or for a recurrent model the
        sequence pass from the stored state, whose graph ``update`` then differentiates (as recurrent A2C)."""
        steps, envs = rollout.num_steps, rollout.num_envs
        forward = None
        if isinstance(self.model, RecurrentActorCritic):
            forward, values = recurrent_forward(self.model, rollout, self.device)
            values_tm = values.reshape(steps + 1, envs)
            actions = torch.from_numpy(rollout.actions.reshape(steps * envs, *rollout.actions.shape[2:]))
            log_pi = forward[0].log_prob(actions.to(self.device)).detach()
        else:
            values_tm, evaluated = evaluate_rollout(self.model, rollout, self.device)
            assert evaluated is not None
            log_pi = evaluated
        log_pi_tm = log_pi.cpu().numpy().astype(np.float64).reshape(steps, envs)
        pg_advantages, vs, stats = vtrace_targets(values_tm, log_pi_tm, rollout, self.config)
        assert rollout.behaviour_log_probs is not None
        behaviour = torch.from_numpy(rollout.behaviour_log_probs.reshape(-1).astype(np.float32))
        batch, batch_stats = rollout_to_batch(rollout, values_tm, pg_advantages, vs, behaviour, self.device)
        self.pending = None if forward is None else (batch, forward)
        return batch, {**batch_stats, **stats}

    def update(self, batch: Batch, context: UpdateContext) -> dict[str, float]:
        """One gradient step of A2C's loss on the V-trace advantages and targets."""
        config = self.config
        learning_rate = scheduled_learning_rate(self.optimizer, config.optimizer, context)
        forward = self.pending[1] if self.pending is not None and self.pending[0] is batch else None
        self.pending = None
        if forward is None and isinstance(self.model, RecurrentActorCritic):
            raise ValueError("a recurrent IMPALA updates only on the batch its prepare built (the sequence pass)")
        dist, values = forward if forward is not None else self.model(batch.obs)
        terms = a2c_batch_loss(dist, values, batch, vf_coef=config.vf_coef, ent_coef=config.ent_coef, norm_adv=False)
        metrics = mean_metrics([terms.metrics()])
        grad_norm, clipped = optimizer_step(self.optimizer, self.parameters, terms.loss, config.max_grad_norm)
        metrics.update({LEARNING_RATE: learning_rate, GRAD_NORM: grad_norm, GRAD_NORM_CLIPPED: clipped})
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
        """The checkpoint contract: nothing beyond the networks and optimizers."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """The checkpoint contract: nothing to restore beyond the networks and optimizers."""
        pass
