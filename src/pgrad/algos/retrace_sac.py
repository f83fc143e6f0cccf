"""SAC with a Retrace(lambda) critic target (``sac`` with ``loop.q_target=retrace``; Munos et al., 2016): the
off-policy actor-critic that corrects its multi-step critic target with truncated importance weights of stored
behaviour log-probabilities.

Acting stores, with every step, log mu(a_t|s_t): the log-density of the squashed action under the policy that
acted (the actor's weights of that moment; -|A| log 2 for the warm-up's uniform draws). The replay
(``BehaviourReplay``) hands out sequences of n = ``loop.retrace_steps`` steps of one env (n + 1 observations),
one starting at every stored step. The critic's target for Q(s_0, a_0) is then the Retrace target of the pure
estimator (``pgrad.estimators.retrace_torch``) over those n steps, with pi the current actor:

    c_t      = lambda min(1, pi(a_t|s_t) / mu(a_t|s_t))
    Q^ret_0  = r_0 + gamma (1 - terminated_0) V(s_1) + gamma (1 - done_0) c_1 (Q^ret_1 - Q'(s_1, a_1)),  ...
    Q^ret_{n-1} = r_{n-1} + gamma (1 - terminated_{n-1}) V(s_n)

in soft values: Q'(s, a) = min_i Q'_i(s, a) of the target critics, and V(s) = E_{a~pi}[Q'(s, a) - alpha log pi(a|s)]
the soft state value, estimated with ONE action a' ~ pi(.|s) per state (as SAC's own target does): V(s) ~=
min_i Q'_i(s, a') - alpha log pi(a'|s). The soft Q^pi is the fixed point (every soft TD error has mean 0 under pi).
lambda = 0 cuts every trace: SAC's one-step target r_0 + gamma (1 - terminated_0) V(s_1). With pi = mu and
lambda = 1, and where the sampled a' is the action taken, it is the n-step soft return
r_0 + sum_{k=1}^{n-1} gamma^k (r_k - alpha log pi(a_k|s_k)) + gamma^n V(s_n).

Everything else is SAC's step in SAC's order (``pgrad.algos.sac``, the same networks, optimizers and checkpoint
layout): alpha, critics on Q(s_0, a_0), actor on s_0, Polyak targets. Sequences whose first step is an autoreset
step (no transition) carry no loss. Traces stop at an episode's end (the estimator's done flags); an episode's
last step bootstraps from its true final observation, which sits on the autoreset step after it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch

from pgrad.algos.common import optimizer_step
from pgrad.algos.contract import UpdateContext
from pgrad.algos.off_policy import (
    critic_loss,
    polyak_update,
    q_statistics,
    sac_actor_loss,
    schedule_learning_rates,
    temperature_loss,
    twin_min,
)
from pgrad.algos.sac import SAC, SACConfig
from pgrad.config import OffPolicyLoopConfig
from pgrad.distributions import TanhGaussian
from pgrad.estimators import retrace_torch
from pgrad.metric_names import ALPHA, ALPHA_LOSS
from pgrad.nets import ActionSpec, ObsLayout, SquashedActingPolicy
from pgrad.rollout import Rollout
from pgrad.sequence_replay import SequenceBatch, SequenceReplay


@dataclass(frozen=True)
class RetraceBatch(SequenceBatch):
    """Replayed sequences (``SequenceBatch``: n steps, n + 1 observations, time-major) with log mu(a_t|s_t)."""

    behaviour_log_probs: torch.Tensor  # [n, N]: log mu(a_t|s_t) of the policy that acted


class BehaviourReplay(SequenceReplay):
    """The sequence replay with no recurrent state and a sequence starting at every step (burn-in 0, stride 1),
    storing each step's behaviour log-probability beside it (``Rollout.behaviour_log_probs``)."""

    def __init__(self, buffer_size: int, num_envs: int, obs_dim: int, action_dim: int, steps: int) -> None:
        super().__init__(buffer_size, num_envs, obs_dim, action_dim, 0, burn_in=0, sequence_length=steps, stride=1)
        self.behaviour_log_probs = np.zeros((self.steps, num_envs), np.float32)

    @property
    def nbytes(self) -> int:
        """Bytes the ring occupies, log-probabilities included."""
        return super().nbytes + self.behaviour_log_probs.nbytes

    def describe(self) -> str:
        """One line: steps per env, sequence length, size in MiB."""
        return (
            f"retrace replay: {self.steps:,} steps x {self.num_envs} envs, sequences of {self.length} steps with "
            f"their behaviour log-probabilities = {self.nbytes / 2**20:,.1f} MiB when full"
        )

    def add_rollout(self, rollout: Rollout) -> int:
        """Append every step of ``rollout`` with its ``behaviour_log_probs``; returns the steps stored."""
        if rollout.behaviour_log_probs is None:
            raise ValueError("the retrace replay stores behaviour log-probabilities: the rollout has none")
        count = rollout.num_steps
        self.behaviour_log_probs[(self.written + np.arange(count)) % self.steps] = rollout.behaviour_log_probs
        no_state = replace(  # a feed-forward policy: no state to store, no reset to mark
            rollout,
            states=np.zeros((count, self.num_envs, 0), np.float32),
            episode_starts=np.zeros((count + 1, self.num_envs), bool),
        )
        return super().add_rollout(no_state)

    def sample(self, batch_size: int, rng: np.random.Generator, device: torch.device) -> RetraceBatch:
        """``batch_size`` sequences (one loss step each: Q(s_0, a_0)), uniform over start steps and envs, with
        replacement."""
        first, count = self.start_range()
        if count == 0:
            raise ValueError("cannot sample from a retrace replay without a complete sequence")
        draws = rng.integers(0, count * self.num_envs, batch_size)
        return self.gather(first + draws // self.num_envs, draws % self.num_envs, device)

    def gather(self, slots: np.ndarray, envs: np.ndarray, device: torch.device) -> RetraceBatch:
        """The sequences starting at steps ``slots`` of envs ``envs``, with their behaviour log-probabilities."""
        sequences = super().gather(slots, envs, device)
        rows = (slots[None, :] + np.arange(self.length)[:, None]) % self.steps
        log_mu = torch.from_numpy(np.ascontiguousarray(self.behaviour_log_probs[rows, envs[None, :]])).to(device)
        return RetraceBatch(
            **{f.name: getattr(sequences, f.name) for f in fields(sequences)}, behaviour_log_probs=log_mu
        )

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The sequence replay's arrays and the behaviour log-probabilities, for ``TrainState.replay``."""
        filled = min(self.written, self.steps)
        return {**super().state_arrays(), "behaviour_log_probs": self.behaviour_log_probs[:filled]}

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Put a saved ring back, the behaviour log-probabilities checked and restored with it."""
        saved = arrays.get("behaviour_log_probs")
        if saved is None:
            raise ValueError("the checkpoint's replay has no behaviour_log_probs: not a retrace run's replay")
        super().load_state_arrays(arrays)
        filled = min(self.written, self.steps)
        if saved.shape != (filled, self.num_envs):
            raise ValueError(f"replay.behaviour_log_probs has shape {saved.shape}; expected {(filled, self.num_envs)}")
        self.behaviour_log_probs[:filled] = saved


def valid_starts(batch: RetraceBatch) -> RetraceBatch:
    """The sequences whose first step is a transition (not an autoreset step): the ones with a loss."""
    keep = batch.mask[0]
    columns = {f.name: getattr(batch, f.name)[:, keep] for f in fields(batch) if f.name != "states"}
    return RetraceBatch(**columns, states=batch.states[keep])


class RetraceSAC:
    """SAC whose critic learns toward Retrace targets over replayed sequences (see the module). It holds a
    ``SAC`` learner (networks, temperature, optimizers, checkpoint contract) and replaces its ``update``."""

    name = "sac"
    replays_behaviour = True  # the off-policy loop attaches log mu(a_t|s_t) to every rollout

    def __init__(
        self, config: SACConfig, obs_shape: int | ObsLayout, action: ActionSpec, device: torch.device | str = "cpu"
    ) -> None:
        self.sac = SAC(config, obs_shape, action, device)
        self.config = config
        self.action_dim = action.size

    @property
    def loop(self) -> OffPolicyLoopConfig:
        """The off-policy loop's schedule, from the config."""
        return self.config.loop

    @property
    def gamma(self) -> float:
        """The discount factor, from the config."""
        return self.config.gamma

    def make_replay(self, num_envs: int, obs_dim: int) -> BehaviourReplay:
        """The runner's replay: sequences of ``loop.retrace_steps`` steps, one from every step, with log mu."""
        loop = self.loop
        return BehaviourReplay(loop.buffer_size, num_envs, obs_dim, self.action_dim, loop.retrace_steps)

    def acting_policy(self) -> SquashedActingPolicy:
        """SAC's squashed Gaussian acting policy (it also scores actions: ``log_prob``)."""
        return self.sac.acting_policy()

    def live_acting_policy(self) -> SquashedActingPolicy | None:
        """SAC's acting policy on views of the actor's parameters (None where it cannot be live)."""
        return self.sac.live_acting_policy()

    def end_episodes(self, done: np.ndarray) -> None:
        """Nothing: SAC's exploration carries nothing across steps."""

    def critic_target(self, batch: RetraceBatch, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q^ret(s_0, a_0) [N], traces c_t [n, N]) of ``batch``'s sequences, without gradient (see the module):
        one actor pass over the n + 1 observations gives pi(a_t|s_t) and the sampled a'_t ~ pi(.|s_{t+1}), one
        pass of the target critics both Q'(s_{t+1}, a'_t) and Q'(s_t, a_t)."""
        sac, loop = self.sac, self.loop
        steps, count = batch.rewards.shape
        with torch.no_grad():
            flat = sac.actor(batch.obs.reshape((steps + 1) * count, -1)).base
            mean = flat.mean.reshape(steps + 1, count, -1)
            log_std = flat.log_std.reshape(steps + 1, count, -1)
            log_rhos = TanhGaussian(mean[:-1], log_std[:-1]).log_prob(batch.actions) - batch.behaviour_log_probs
            next_actions, next_log_prob = TanhGaussian(mean[1:], log_std[1:]).rsample_with_log_prob()
            states = torch.cat((batch.obs[1:], batch.obs[:-1])).reshape(2 * steps * count, -1)
            actions = torch.cat((next_actions, batch.actions)).reshape(2 * steps * count, -1)
            q_next, q_taken = twin_min(sac.target_critics.stacked(states, actions)).reshape(2, steps, count)
            soft_values = q_next - alpha * next_log_prob  # V(s_{t+1}) ~= min_i Q'_i(s_{t+1}, a') - alpha log pi(a')
            targets = retrace_torch(
                log_rhos,
                batch.rewards,
                q_taken,
                soft_values,
                batch.terminated,
                batch.truncated,
                self.gamma,
                loop.retrace_lambda,
            )
        return targets[0], loop.retrace_lambda * torch.exp(log_rhos).clamp(max=1.0)

    def update(self, batch: RetraceBatch, context: UpdateContext) -> dict[str, Any]:
        """One gradient step of SAC on the sequences' first steps, the critic toward Q^ret; metrics as tensors."""
        sac, config = self.sac, self.config
        sac.learning_rate = schedule_learning_rates(list(sac.optimizers().values()), config.optimizer, context)
        metrics: dict[str, Any] = {}
        batch = valid_starts(batch)
        obs, taken = batch.obs[0], batch.actions[0]

        actions_pi, log_prob_pi = sac.actor(obs).rsample_with_log_prob()
        if sac.learn_alpha:
            log_alpha = sac.temperature["log_alpha"]
            alpha_loss = temperature_loss(log_alpha, log_prob_pi, sac.target_entropy)
            metrics[ALPHA_LOSS] = alpha_loss.detach()
            alpha = log_alpha.detach().exp()  # this step's alpha: the one before its own update, as SAC
            optimizer_step(sac.alpha_optimizer, [log_alpha], alpha_loss, None)
        else:
            alpha = sac.alpha()

        target, traces = self.critic_target(batch, alpha)
        q_values = sac.critics.stacked(obs, taken)
        loss_q = 0.5 * critic_loss(q_values, target)
        metrics["diagnostics/critic_grad_norm"] = optimizer_step(
            sac.critic_optimizer, sac.critic_parameters, loss_q, None
        )
        q_pi = sac.critics.stacked(obs, actions_pi, detach_weights=True)
        loss_pi = sac_actor_loss(q_pi, log_prob_pi, alpha)
        metrics["diagnostics/actor_grad_norm"] = optimizer_step(
            sac.actor_optimizer, sac.actor_parameters, loss_pi, None
        )

        sac.gradient_steps += 1
        if sac.gradient_steps % config.target_update_interval == 0:
            polyak_update(sac.critics, sac.target_critics, config.tau)
        metrics.update(q_statistics(q_values, target))
        metrics.update(
            {
                "train/critic_loss": loss_q.detach(),
                "train/actor_loss": loss_pi.detach(),
                ALPHA: alpha,
                "train/entropy": -log_prob_pi.detach().mean(),
                # mean trace c_t = lambda min(1, pi/mu) of the steps after the first (1: nothing cut)
                "retrace/trace_mean": traces[1:].mean() if len(traces) > 1 else torch.ones(()),
            }
        )
        return metrics

    def learning_rate_metrics(self) -> dict[str, float]:
        """The learning rate of the last ``update`` (after the schedule), for the logs."""
        return self.sac.learning_rate_metrics()

    # ---- checkpoint contract: SAC's, unchanged --------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        """The checkpoint contract: SAC's networks (actor, critics, targets, temperature)."""
        return self.sac.modules()

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The checkpoint contract: SAC's optimizers."""
        return self.sac.optimizers()

    def extra_state(self) -> dict[str, Any]:
        """The checkpoint contract: SAC's gradient step count."""
        return self.sac.extra_state()

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """The checkpoint contract: restores SAC's gradient step count."""
        self.sac.load_extra_state(state)
