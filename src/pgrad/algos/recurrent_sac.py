"""Recurrent SAC (``sac.network.recurrent``: lstm or gru): SAC's loss over replayed sequences, R2D2-style.

The actor and the critics each read the observations through their own recurrent core (``pgrad.recurrent.Core``,
``network.recurrent_size`` units), and SAC's networks sit on the core's output h_t as on an observation: the
squashed Gaussian pi(.|h^pi_t) and the twin Q_i(h^Q_t, a). Acting steps both cores, so the state stored with a
sequence (``pgrad.sequence_replay``) is [actor state, critic state], and the critics' targets start from the
stored critic state too (R2D2's stored-state strategy; ``loop.recurrent_state=zero`` starts every replayed
sequence from zeros instead, the strategy R2D2 compares it with).

One gradient step on N sequences of m = burn_in + sequence_length steps (m + 1 observations):
1. unroll each core over the sequence from the stored (or zero) state, resetting it at episode starts; the first
   ``loop.burn_in`` steps run without gradient and carry no loss (only the state they leave matters);
2. the steps with a loss (``batch.mask``: valid, after the burn-in) are taken out as a flat batch, s_t -> h_t and
   s'_t -> h_{t+1} (the same unroll, one step on), and SAC's losses apply unchanged (``pgrad.algos.off_policy``:
   ``temperature_loss``, ``twin_min_target``, ``critic_loss``, ``sac_actor_loss``) in SAC's order: alpha,
   critics, actor (the critics' heads just updated, on their core's outputs of this step), Polyak targets.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from pgrad.algos.common import optimizer_step
from pgrad.algos.contract import UpdateContext
from pgrad.algos.off_policy import (
    critic_loss,
    make_optimizers,
    polyak_update,
    q_statistics,
    sac_actor_loss,
    schedule_learning_rates,
    temperature_loss,
    twin_min_target,
)
from pgrad.algos.retrace_sac import RetraceSAC
from pgrad.algos.sac import SAC, SACConfig
from pgrad.config import Activation, OffPolicyLoopConfig
from pgrad.errors import ConfigError
from pgrad.metric_names import ALPHA, ALPHA_LOSS, LEARNING_RATE
from pgrad.nets import LOG_STD_BOUNDS, ActionSpec, ObsLayout, QNetworks, SquashedGaussianActor
from pgrad.recurrent import Core
from pgrad.sequence_replay import SequenceBatch, SequenceReplay


def unroll(
    core: Core, obs: torch.Tensor, state: torch.Tensor, starts: torch.Tensor, burn_in: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(outputs h [L, N, size], state after the last step) of ``core`` over ``L`` steps of ``N`` sequences from
    ``state``; s <- 0 before a step whose observation starts an episode. The first ``burn_in`` steps run without
    gradient: what follows depends on them only through the state they leave."""
    keep = 1.0 - starts.to(state.dtype).unsqueeze(-1)
    outputs = []
    grad = torch.is_grad_enabled()
    for t in range(obs.shape[0]):  # step by step, [N, .] at a time: the computation acting did, bit for bit
        with torch.set_grad_enabled(grad and t >= burn_in):
            h, state = core(obs[t : t + 1], state * keep[t])  # the core's fused call over a span of one step
        outputs.append(h[0])
    return torch.stack(outputs), state


class RecurrentActor(nn.Module):
    """pi(.|h_t): a recurrent core on the observations, SAC's squashed Gaussian actor on its output."""

    def __init__(self, core: Core, action_dim: int, hidden: tuple[int, ...], activation: Activation) -> None:
        super().__init__()
        self.core = core
        self.head = SquashedGaussianActor(core.size, action_dim, hidden, activation)


class RecurrentCritics(nn.Module):
    """Q_i(h_t, a): a recurrent core on the observations, SAC's twin Q networks on its output and the action."""

    def __init__(self, core: Core, action_dim: int, hidden: tuple[int, ...], activation: Activation) -> None:
        super().__init__()
        self.core = core
        self.heads = QNetworks(core.size, action_dim, hidden, activation, 2)


class ActingModel(nn.Module):
    """What acting runs, one step at a time: the actor (core and head) and the critics' core, whose state is
    stored with the sequences too. On the CPU the learner's own modules, read under no_grad (a frozen copy on
    another device); ``pgrad.export_recurrent`` traces it."""

    def __init__(self, actor: RecurrentActor, critic_core: Core) -> None:
        super().__init__()
        self.actor = actor
        self.critic_core = critic_core
        self.split = actor.core.state_size

    def sequence(
        self, obs: torch.Tensor, state: torch.Tensor, starts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean [L, N, A], clamped log std [L, N, A], state after the last step) over ``L`` steps: the pre-tanh
        Gaussian of a = tanh(u), u ~ N(mean, std^2)."""
        actor_h, actor_state = unroll(self.actor.core, obs, state[:, : self.split], starts, 0)
        _, critic_state = unroll(self.critic_core, obs, state[:, self.split :], starts, 0)
        features = self.actor.head.torso(actor_h)
        mean = self.actor.head.mean(features)
        log_std = self.actor.head.log_std(features).clamp(*LOG_STD_BOUNDS)
        return mean, log_std, torch.cat((actor_state, critic_state), dim=1)


class RecurrentSquashedPolicy:
    """Acting with recurrent SAC: the state handed in and back (``Policy.predict_recurrent``, the collector, the
    evaluation). Samples a = tanh(mean + std x N(0, 1)) from the NumPy ``Generator`` (as SAC's acting policy);
    the mode is tanh(mean)."""

    recurrent = True
    squashed = True  # the exported step applies tanh to the mean (pgrad.export_recurrent)

    def __init__(self, model: ActingModel, state_size: int) -> None:
        self.model = model
        self.state_size = state_size

    def initial_state(self, num_envs: int) -> np.ndarray:
        """Zeros [num_envs, state_size]."""
        return np.zeros((num_envs, self.state_size), np.float32)

    def head(self, obs: np.ndarray, state: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean [B, A], log std [B, A], next state [B, state_size]) for one step of ``B`` envs."""
        with torch.no_grad():
            mean, log_std, next_state = self.model.sequence(
                torch.from_numpy(np.ascontiguousarray(obs, np.float32))[None],
                torch.from_numpy(np.ascontiguousarray(state, np.float32)),
                torch.from_numpy(np.asarray(starts, bool))[None],
            )
        return mean[0].numpy(), log_std[0].numpy(), next_state.numpy()

    def step(
        self, obs: np.ndarray, state: np.ndarray, starts: np.ndarray, rng: np.random.Generator | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(actions in [-1, 1], next state): sampled from ``rng``, or tanh(mean) when ``rng`` is None."""
        mean, log_std, next_state = self.head(obs, state, starts)
        if rng is None:
            return np.tanh(mean).astype(np.float32), next_state
        noise = rng.standard_normal(mean.shape).astype(np.float32)
        return np.tanh(mean + np.exp(log_std) * noise).astype(np.float32), next_state


class UniformRecurrentPolicy:
    """The warm-up's uniform actions in [-1, 1] (``UniformActor``'s draws), the state still carried by the acting
    model, so that the stored states are the actor's from the first step."""

    recurrent = True

    def __init__(self, acting: RecurrentSquashedPolicy, action_dim: int) -> None:
        self.acting = acting
        self.action_dim = action_dim
        self.state_size = acting.state_size

    def step(
        self, obs: np.ndarray, state: np.ndarray, starts: np.ndarray, rng: np.random.Generator | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(uniform actions, next state of the acting model)."""
        assert rng is not None, "the warm-up samples"
        _, _, next_state = self.acting.head(obs, state, starts)
        return rng.uniform(-1.0, 1.0, (obs.shape[0], self.action_dim)).astype(np.float32), next_state


class RecurrentSAC:
    """The recurrent SAC learner: recurrent actor and critics, their targets, the temperature; ``update`` is one
    gradient step on replayed sequences (see the module)."""

    name = "sac"

    def __init__(
        self, config: SACConfig, obs_shape: int | ObsLayout, action: ActionSpec, device: torch.device | str = "cpu"
    ) -> None:
        if not isinstance(obs_shape, int):
            raise ConfigError("sac.network.recurrent: recurrent SAC reads flat Box observations (no Dict, no torso)")
        network = config.network
        assert network.recurrent is not None
        self.config = config
        self.device = torch.device(device)
        kind, size, hidden, activation = (
            network.recurrent,
            network.recurrent_size,
            network.hidden_sizes,
            network.activation,
        )
        self.actor = RecurrentActor(Core(kind, obs_shape, size), action.size, hidden, activation).to(self.device)
        self.critics = RecurrentCritics(Core(kind, obs_shape, size), action.size, hidden, activation).to(self.device)
        self.target_critics: RecurrentCritics = copy.deepcopy(self.critics).requires_grad_(False)  # no optimizer
        self.action_dim = action.size
        self.state_size = self.actor.core.state_size + self.critics.core.state_size
        self.actor_parameters = list(self.actor.parameters())
        self.critic_parameters = list(self.critics.parameters())
        self.learn_alpha = config.alpha == "auto"
        self.target_entropy = -float(action.size) if config.target_entropy == "auto" else float(config.target_entropy)
        initial = config.alpha_init if self.learn_alpha else float(config.alpha)
        self.temperature = torch.nn.ParameterDict(
            {"log_alpha": torch.nn.Parameter(torch.tensor(math.log(max(initial, 1e-30)), device=self.device))}
        )
        self.temperature.requires_grad_(self.learn_alpha)
        self.actor_optimizer, self.critic_optimizer, self.alpha_optimizer = make_optimizers(
            config.optimizer, self.actor_parameters, self.critic_parameters, [self.temperature["log_alpha"]]
        )
        self.learning_rate = config.optimizer.learning_rate
        self.gradient_steps = 0

    @property
    def loop(self) -> OffPolicyLoopConfig:
        """The off-policy loop's schedule, from the config."""
        return self.config.loop

    @property
    def gamma(self) -> float:
        """The discount factor, from the config."""
        return self.config.gamma

    def make_replay(self, num_envs: int, obs_dim: int) -> SequenceReplay:
        """The runner's replay: sequences of burn_in + sequence_length steps every sequence_stride steps."""
        loop = self.loop
        return SequenceReplay(
            loop.buffer_size,
            num_envs,
            obs_dim,
            self.action_dim,
            self.state_size,
            loop.burn_in,
            self.config.network.sequence_length,
            loop.sequence_stride,
        )

    def acting_policy(self) -> Any:
        """The actor and the critics' core (a frozen CPU copy off the CPU), stepping with the state handed in
        (a ``RecurrentSquashedPolicy``: the collector and the evaluation call its ``step``)."""
        model = ActingModel(self.actor, self.critics.core)
        if self.device.type != "cpu":  # on the CPU acting reads the learner's weights under no_grad: no copy per step
            model = copy.deepcopy(model).cpu().requires_grad_(False)
        return RecurrentSquashedPolicy(model, self.state_size)

    def warmup_policy(self) -> UniformRecurrentPolicy:
        """Uniform actions before ``learning_starts``, the state carried by the acting model."""
        acting: RecurrentSquashedPolicy = self.acting_policy()
        return UniformRecurrentPolicy(acting, self.action_dim)

    def end_episodes(self, done: np.ndarray) -> None:
        """Nothing: the collector resets the hidden state at episode starts."""

    def alpha(self) -> torch.Tensor:
        """The temperature: exp(log_alpha) when learned, else the fixed ``alpha``."""
        learned: torch.Tensor = self.temperature["log_alpha"].detach().exp()
        return learned if self.learn_alpha else torch.tensor(float(self.config.alpha))

    def start_states(self, batch: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(actor, critic) states the sequences start from: stored, or zeros (``loop.recurrent_state``)."""
        states = torch.zeros_like(batch.states) if self.loop.recurrent_state == "zero" else batch.states
        split = self.actor.core.state_size
        return states[:, :split], states[:, split:]

    def update(self, batch: SequenceBatch, context: UpdateContext) -> dict[str, Any]:
        """One gradient step on ``batch``'s sequences; metrics as tensors (the loop averages them per log row)."""
        config, burn_in, mask = self.config, self.loop.burn_in, batch.mask
        self.learning_rate = schedule_learning_rates(list(self.optimizers().values()), config.optimizer, context)
        metrics: dict[str, Any] = {}
        actor_state, critic_state = self.start_states(batch)
        obs, starts = batch.obs, batch.starts

        actor_h, _ = unroll(self.actor.core, obs, actor_state, starts, burn_in)  # h_0 .. h_m
        actions_pi, log_prob_pi = self.actor.head(actor_h[:-1][mask]).rsample_with_log_prob()
        if self.learn_alpha:
            log_alpha = self.temperature["log_alpha"]
            alpha_loss = temperature_loss(log_alpha, log_prob_pi, self.target_entropy)
            metrics[ALPHA_LOSS] = alpha_loss.detach()
            alpha = log_alpha.detach().exp()
            optimizer_step(self.alpha_optimizer, [log_alpha], alpha_loss, None)
        else:
            alpha = self.alpha()

        with torch.no_grad():  # y = r + gamma (1 - terminated) (min_i Q'_i(h'_{t+1}, a') - alpha log pi(a'|h_{t+1}))
            next_actions, next_log_prob = self.actor.head(actor_h[1:][mask]).rsample_with_log_prob()
            target_h, _ = unroll(self.target_critics.core, obs, critic_state, starts, 0)
            next_qs = self.target_critics.heads(target_h[1:][mask], next_actions)
            target = twin_min_target(
                batch.rewards[mask], batch.terminated[mask], next_qs, config.gamma, next_log_prob, alpha
            )
        critic_h, _ = unroll(self.critics.core, obs[:-1], critic_state, starts[:-1], burn_in)
        critic_features = critic_h[mask]
        q_values = self.critics.heads(critic_features, batch.actions[mask])
        loss_q = 0.5 * critic_loss(q_values, target)
        metrics["diagnostics/critic_grad_norm"] = optimizer_step(
            self.critic_optimizer, self.critic_parameters, loss_q, None
        )

        # the actor's step: Q heads just updated, on this step's critic core outputs (detached: the actor's loss
        # trains neither; re-unrolling the updated core would cost a fourth unroll for a change of one Adam step)
        self.critics.requires_grad_(False)
        loss_pi = sac_actor_loss(self.critics.heads(critic_features.detach(), actions_pi), log_prob_pi, alpha)
        metrics["diagnostics/actor_grad_norm"] = optimizer_step(
            self.actor_optimizer, self.actor_parameters, loss_pi, None
        )
        self.critics.requires_grad_(True)

        self.gradient_steps += 1
        if self.gradient_steps % config.target_update_interval == 0:
            polyak_update(self.critics, self.target_critics, config.tau)
        metrics.update(q_statistics(q_values, target))
        metrics.update(
            {
                "train/critic_loss": loss_q.detach(),
                "train/actor_loss": loss_pi.detach(),
                ALPHA: alpha,
                "train/entropy": -log_prob_pi.detach().mean(),
                "replay/loss_steps": mask.sum().float(),  # steps with a loss in the batch (valid, after burn-in)
            }
        )
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
            "target_critics": self.target_critics,
            "temperature": self.temperature,
        }

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The checkpoint contract: the actor's, the critics' and the temperature's optimizers."""
        return {"actor": self.actor_optimizer, "critics": self.critic_optimizer, "alpha": self.alpha_optimizer}

    def extra_state(self) -> dict[str, Any]:
        """The checkpoint contract: the gradient step count (for ``target_update_interval``)."""
        return {"gradient_steps": self.gradient_steps}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """The checkpoint contract: restores the gradient step count."""
        self.gradient_steps = int(state.get("gradient_steps", 0))


def build_sac(
    config: SACConfig, obs_shape: int | ObsLayout, action: ActionSpec, device: torch.device | str = "cpu"
) -> SAC | RecurrentSAC | RetraceSAC:
    """The registry's builder of ``sac``: recurrent SAC when ``network.recurrent`` is set, SAC with Retrace
    targets with ``loop.q_target=retrace`` (pgrad.algos.retrace_sac), else SAC."""
    if config.network.recurrent is not None:
        return RecurrentSAC(config, obs_shape, action, device)
    if config.loop.q_target == "retrace":
        return RetraceSAC(config, obs_shape, action, device)
    return SAC(config, obs_shape, action, device)
