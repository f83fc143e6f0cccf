"""MAPPO and IPPO (Yu et al., 2022, "The Surprising Effectiveness of PPO in Cooperative Multi-Agent Games";
de Witt et al., 2020): PPO for a team of agents, with decentralised actors.

What differs from single-agent PPO is small and lives here; the rest is PPO's own:

- every array has an agent axis, [T, N, A] (steps, env copies, agents);
- per-agent GAE is ``pgrad.estimators.gae`` over the flattened [T, N x A] columns, each agent's own
  terminated/truncated flags cutting its recursion where it finished (``team_gae``);
- the loss is ``pgrad.algos.ppo.ppo_loss`` over every (step, copy, agent) entry, with ``mask`` = 1 where the
  agent acted: an agent that finished before its team contributes zero terms (death masking), never its last
  observation repeated;
- the critic: MAPPO's is centralised, V(s_global, agent), on the env's ``state()`` when it has one, else the
  agents' observations concatenated (``critic_rows``); IPPO's is V(o_j, agent), on the agent's own observation;
- value normalisation (MAPPO's running normaliser, ``ValueNormalizer``): the critic predicts standardised
  returns; GAE reads the de-standardised values;
- parameter sharing (``marl.share_parameters``, default on): one actor and one critic for every agent, with the
  agent's id as a one-hot appended to its input (``marl.agent_id``); off, each agent has its own pair.
  Agents with different observation widths or actions cannot share: the config says so in one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, cast

import numpy as np
import torch
from torch import nn

from pgrad import glossary
from pgrad.algos.common import make_optimizer, mean_metrics, optimizer_step, scheduled_learning_rate
from pgrad.algos.contract import UpdateContext
from pgrad.algos.ppo import ppo_loss
from pgrad.config import MAX_WINDOW, Checked, NetworkConfig, OptimizerConfig, param
from pgrad.envs.multiagent import TeamSpaces
from pgrad.envs.normalize import RunningMeanStd
from pgrad.errors import ConfigError
from pgrad.estimators import explained_variance, gae
from pgrad.metric_names import APPROX_KL, ENTROPY, EXPLAINED_VARIANCE, GRAD_NORM, LEARNING_RATE
from pgrad.nets import ActingPolicy, ActorCritic, orthogonal_init


@dataclass(frozen=True)
class MultiAgentConfig(Checked):
    """What is shared between the agents of a team."""

    SECTION: ClassVar[str] = "marl"

    share_parameters: bool = param(True, "one actor and one critic for every agent (needs equal spaces)")
    agent_id: bool = param(True, "with shared parameters: append the agent's one-hot id to actor and critic inputs")

    def validate(self) -> None:
        """Nothing beyond the types."""


@dataclass(frozen=True)
class MAPPOConfig(Checked):
    """MAPPO hyper-parameters. Defaults follow the MAPPO paper's MPE settings (lr 7e-4, 10 epochs, one
    minibatch, entropy 0.01, gradient norm 10, value normalisation)."""

    SECTION: ClassVar[str] = "mappo"
    CENTRALISED: ClassVar[bool] = True

    num_steps: int = param(100, "steps per env copy per rollout (batch = num_steps x env.num_envs x agents)")
    num_epochs: int = glossary.num_epochs(10)
    num_minibatches: int = param(1, "minibatches per epoch (each holds every agent of its steps)")
    gamma: float = glossary.gamma(0.99)
    gae_lambda: float = glossary.gae_lambda(0.95)
    clip_eps: float = glossary.clip_eps(0.2)
    clip_vf: float | None = param(None, "clip the value update to +-clip_vf around the old value (None: off)")
    ent_coef: float = glossary.ent_coef(0.01)
    vf_coef: float = glossary.vf_coef(1.0)
    max_grad_norm: float = glossary.max_grad_norm(10.0)
    norm_adv: bool = glossary.norm_adv(True, "per minibatch, over the entries where an agent acted")
    value_norm: bool = param(True, "standardise the critic's targets by running statistics of the returns")
    network: NetworkConfig = param(NetworkConfig(), "the actor's and the critic's MLPs")
    optimizer: OptimizerConfig = param(
        OptimizerConfig(learning_rate=7e-4, anneal_lr=False, eps=1e-5), "Adam, lr 7e-4 (the MAPPO paper's MPE)"
    )
    marl: MultiAgentConfig = param(MultiAgentConfig(), "what the agents share")

    def validate(self) -> None:
        """Checks each hyper-parameter's range; the network must be a feed-forward MLP."""
        self.check_range("num_steps", 1, MAX_WINDOW)
        self.check_range("num_epochs", 1, MAX_WINDOW)
        self.check_range("num_minibatches", 1, MAX_WINDOW)
        self.check_range("gamma", 0, 1)
        self.check_range("gae_lambda", 0, 1)
        self.check_range("clip_eps", 0, 1, low_open=True, high_open=True)
        self.check_range("clip_vf", 0, low_open=True)
        self.check_range("ent_coef", 0)
        self.check_range("vf_coef", 0)
        self.check_range("max_grad_norm", 0, low_open=True)
        if self.network.recurrent is not None or self.network.torso is not None:
            raise ConfigError(f"{self.SECTION}.network takes an MLP (recurrent and torso must be null)")
        if self.network.shared_network:  # the actor reads the agent's observation, the critic the global state
            raise ConfigError(
                f"{self.SECTION}.network.shared_network must be false: actor and critic read different inputs"
            )

    def check_with_env(self, env: Any) -> None:
        """``num_minibatches`` must not exceed the rollout's steps x copies (each minibatch holds whole steps)."""
        if self.num_minibatches > self.num_steps * env.num_envs:
            raise ConfigError(
                f"{self.SECTION}.num_minibatches must be at most num_steps x env.num_envs = "
                f"{self.num_steps * env.num_envs}; got {self.num_minibatches}"
            )


@dataclass(frozen=True)
class IPPOConfig(MAPPOConfig):
    """IPPO: MAPPO's settings with each agent's critic on its own observation (no centralised critic)."""

    SECTION: ClassVar[str] = "ippo"
    CENTRALISED: ClassVar[bool] = False


# ---- the pure pieces --------------------------------------------------------------------------------------
def with_agent_id(rows: np.ndarray, agent_id: bool) -> np.ndarray:
    """[..., A, D] -> [..., A, D + A]: each agent's row with its one-hot id appended (unchanged without)."""
    if not agent_id:
        return rows
    agents = rows.shape[-2]
    ids = np.broadcast_to(np.eye(agents, dtype=rows.dtype), (*rows.shape[:-2], agents, agents))
    return np.concatenate([rows, ids], axis=-1)


def critic_rows(obs: np.ndarray, state: np.ndarray, centralised: bool) -> np.ndarray:
    """The critic's input per agent, [..., A, W]: the global ``state`` [..., S] repeated for every agent
    (centralised: the same state for all agents at a step), else each agent's own observation."""
    if not centralised:
        return obs
    agents = obs.shape[-2]
    return np.repeat(state[..., None, :], agents, axis=-2)


def team_gae(
    rewards: np.ndarray,
    values: np.ndarray,
    next_values: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    active: np.ndarray,
    gamma: float,
    gae_lambda: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-agent GAE: ``estimators.gae`` over the [T, N x A] columns of [T, N, A] arrays, then zero where the
    agent did not act (``active`` = 0: it had finished). An agent's own done flag at its last step cuts its
    recursion, so the steps after it (masked) never reach its advantages; ``next_values`` holds V of the
    observation after each step (of the final one where the agent's episode was truncated)."""
    shape = rewards.shape
    flat = (shape[0], -1)
    advantages, returns = gae(
        rewards.reshape(flat),
        values.reshape(flat),
        next_values.reshape(flat),
        terminated.reshape(flat),
        truncated.reshape(flat),
        gamma,
        gae_lambda,
    )
    return advantages.reshape(shape) * active, returns.reshape(shape) * active


class ValueNormalizer:
    """Running mean and std of the critic's targets (MAPPO's ValueNorm): the critic learns
    (R - mean) / std, and V = mean + std x output."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.stats = RunningMeanStd(())

    def update(self, targets: np.ndarray) -> None:
        """Merge the targets of the entries where an agent acted."""
        if self.enabled:
            self.stats.update(targets.astype(np.float64))

    def normalize(self, values: np.ndarray) -> np.ndarray:
        """(v - mean) / std."""
        if not self.enabled:
            return values
        return ((values - self.stats.mean) / np.sqrt(self.stats.var + 1e-8)).astype(np.float32)

    def denormalize(self, values: np.ndarray) -> np.ndarray:
        """mean + std x v."""
        if not self.enabled:
            return values
        return (values * np.sqrt(self.stats.var + 1e-8) + self.stats.mean).astype(np.float32)


class Critic(nn.Module):
    """An MLP value function, orthogonal init (gain sqrt 2 hidden, 1 output)."""

    def __init__(self, in_dim: int, network: NetworkConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for size in network.hidden_sizes:
            layers += [orthogonal_init(nn.Linear(in_dim, size), float(np.sqrt(2))), nn.Tanh()]
            in_dim = size
        layers.append(orthogonal_init(nn.Linear(in_dim, 1), 1.0))
        self.body = nn.Sequential(*layers)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """V [...] of rows [..., in_dim]."""
        value: torch.Tensor = self.body(rows).squeeze(-1)
        return value


@dataclass(frozen=True)
class TeamBatch:
    """A rollout ready for the loss, [M, A] per entry (M = steps x copies)."""

    actor_in: torch.Tensor  # [M, A, W_actor]
    critic_in: torch.Tensor  # [M, A, W_critic]
    actions: torch.Tensor  # [M, A, max_action] (a discrete index in column 0)
    log_probs: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor  # standardised when value_norm
    values: torch.Tensor  # the old critic outputs (standardised when value_norm)
    mask: torch.Tensor  # 1 where the agent acted

    def take(self, index: np.ndarray) -> TeamBatch:
        """The rows ``index`` of every field."""
        rows = torch.as_tensor(index)
        return TeamBatch(*(getattr(self, f)[rows] for f in self.__dataclass_fields__))


class TeamLearner:
    """Actors and critics of a team (one pair when shared, one per agent otherwise), one optimizer, the value
    normaliser; ``prepare`` (per-agent GAE) and ``update`` (PPO's loss over the masked entries)."""

    def __init__(self, config: MAPPOConfig, spaces: TeamSpaces) -> None:
        marl = config.marl
        if marl.share_parameters and not spaces.homogeneous:
            raise ConfigError(
                f"{config.SECTION}.marl.share_parameters needs every agent to have the same observation and action "
                f"spaces; this team's differ (observation widths {list(spaces.obs_dims)}, actions "
                f"{[a.kind + str(a.size) for a in spaces.actions]}): set marl.share_parameters=false"
            )
        self.config, self.spaces = config, spaces
        self.centralised = config.CENTRALISED
        self.shared = marl.share_parameters
        self.agent_id = marl.share_parameters and marl.agent_id
        extra = spaces.num_agents if self.agent_id else 0
        groups = 1 if self.shared else spaces.num_agents
        net = config.network
        self.actors = nn.ModuleList(
            ActorCritic(
                spaces.obs_dims[g] + extra,
                spaces.actions[g],
                net.hidden_sizes,
                net.activation,
                True,  # one torso: only its policy head is used (the critics below are separate networks)
                net.log_std_init,
                net.state_dependent_std,
            )
            for g in range(groups)
        )
        critic_width = [(spaces.state_dim if self.centralised else spaces.obs_dims[g]) + extra for g in range(groups)]
        self.critics = nn.ModuleList(Critic(critic_width[g], net) for g in range(groups))
        # the actor's own value head is not trained (the critics above are): it is left out of the optimizer
        actor_params = [p for actor in self.actors for n, p in actor.named_parameters() if not n.startswith("value")]
        self.parameters = actor_params + list(self.critics.parameters())
        self.optimizer = make_optimizer(self.parameters, config.optimizer)
        self.value_norm = ValueNormalizer(config.value_norm)

    # ---- inputs ----------------------------------------------------------------------------------------
    def actor_rows(self, obs: np.ndarray) -> np.ndarray:
        """[..., A, max_obs] observations -> the actors' inputs [..., A, W]."""
        return with_agent_id(obs, self.agent_id)

    def critic_input(self, obs: np.ndarray, state: np.ndarray) -> np.ndarray:
        """The critics' inputs [..., A, W] from observations and global states."""
        return with_agent_id(critic_rows(obs, state, self.centralised), self.agent_id)

    def acting_policies(self) -> list[ActingPolicy]:
        """One NumPy acting policy per agent (the same one for every agent when shared)."""
        policies = [cast(ActorCritic, actor).acting_policy() for actor in self.actors]
        return policies * self.spaces.num_agents if self.shared else policies

    def act(self, obs: np.ndarray, rng: np.random.Generator, deterministic: bool = False) -> np.ndarray:
        """Actions [N, A, max_action] for observations [N, A, max_obs] (float; discrete ones as their index)."""
        rows = self.actor_rows(obs)
        out = np.zeros((*obs.shape[:2], self.spaces.max_action), np.float32)
        for j, policy in enumerate(self.acting_policies()):
            # shared: every agent's row is as wide (its one-hot appended); else agent j reads its own width
            x = rows[:, j] if self.shared else rows[:, j, : self.spaces.obs_dims[j]]
            chosen = (policy.mode(x) if deterministic else policy.sample(x, rng)).reshape(len(x), -1)
            out[:, j, : chosen.shape[1]] = chosen
        return out

    def values(self, critic_in: np.ndarray) -> np.ndarray:
        """De-standardised V [..., A] of critic inputs [..., A, W] (no gradient)."""
        with torch.no_grad():
            raw = self._critic(torch.as_tensor(critic_in, dtype=torch.float32)).numpy()
        return self.value_norm.denormalize(raw)

    def _critic(self, rows: torch.Tensor) -> torch.Tensor:
        if self.shared:
            out: torch.Tensor = self.critics[0](rows)
            return out
        width = [self.spaces.state_dim if self.centralised else d for d in self.spaces.obs_dims]
        return torch.stack([c(rows[..., j, : width[j]]) for j, c in enumerate(self.critics)], dim=-1)

    def _policy_terms(self, actor: Any, rows: torch.Tensor, actions: torch.Tensor, j: int) -> tuple[Any, Any]:
        """(log pi, entropy) of agent ``j``'s actions [..., max_action] (a discrete index in column 0)."""
        spec = self.spaces.actions[j]
        dist = actor.distribution(rows)
        acts = actions[..., 0].long() if spec.kind == "discrete" else actions[..., : spec.size]
        return dist.log_prob(acts), dist.entropy()

    def distributions_terms(self, actor_in: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log pi(a|o), entropy), each [M, A], of the current actors; ``actions`` [M, A, max_action]."""
        if self.shared:
            return self._policy_terms(self.actors[0], actor_in, actions, 0)
        terms = [
            self._policy_terms(actor, actor_in[:, j, : self.spaces.obs_dims[j]], actions[:, j], j)
            for j, actor in enumerate(self.actors)
        ]
        return torch.stack([t[0] for t in terms], dim=-1), torch.stack([t[1] for t in terms], dim=-1)

    # ---- prepare and update -----------------------------------------------------------------------------
    def prepare(self, rollout: TeamRollout) -> tuple[TeamBatch, dict[str, float]]:
        """log pi_old and V from one gradient-free pass, per-agent GAE, and the value normaliser's update."""
        config = self.config
        values = self.values(rollout.critic_in)  # [T, N, A]
        next_values = np.concatenate([values[1:], self.values(rollout.last_critic_in)[None]], axis=0)
        done = rollout.terminated | rollout.truncated
        final_values = self.values(rollout.final_critic_in)
        next_values = np.where(done, final_values, next_values)
        advantages, returns = team_gae(
            rollout.rewards,
            values,
            next_values,
            rollout.terminated,
            rollout.truncated,
            rollout.active,
            config.gamma,
            config.gae_lambda,
        )
        active = rollout.active > 0
        self.value_norm.update(returns[active])
        stats = {EXPLAINED_VARIANCE: explained_variance(values[active], returns[active])}
        for j, agent in enumerate(self.spaces.agents):
            live = active[..., j]
            stats[f"agent/{agent}/{EXPLAINED_VARIANCE}"] = explained_variance(
                values[..., j][live], returns[..., j][live]
            )
        actor_in = torch.as_tensor(self.actor_rows(rollout.obs), dtype=torch.float32).flatten(0, 1)
        actions = torch.as_tensor(rollout.actions, dtype=torch.float32).flatten(0, 1)
        with torch.no_grad():
            log_probs, _ = self.distributions_terms(actor_in, actions)
        batch = TeamBatch(
            actor_in=actor_in,
            critic_in=torch.as_tensor(rollout.critic_in, dtype=torch.float32).flatten(0, 1),
            actions=actions,
            log_probs=log_probs,
            advantages=torch.as_tensor(advantages, dtype=torch.float32).flatten(0, 1),
            returns=torch.as_tensor(self.value_norm.normalize(returns), dtype=torch.float32).flatten(0, 1),
            values=torch.as_tensor(self.value_norm.normalize(values), dtype=torch.float32).flatten(0, 1),
            mask=torch.as_tensor(rollout.active, dtype=torch.float32).flatten(0, 1),
        )
        return batch, stats

    def loss(self, batch: TeamBatch, clip_eps: float) -> tuple[torch.Tensor, dict[str, Any]]:
        """PPO's loss (``ppo_loss``) over every [M, A] entry, masked where the agent had finished."""
        config = self.config
        log_probs, entropy = self.distributions_terms(batch.actor_in, batch.actions)
        terms = ppo_loss(
            log_probs=log_probs,
            old_log_probs=batch.log_probs,
            advantages=batch.advantages,
            values=self._critic(batch.critic_in),
            returns=batch.returns,
            entropy=entropy,
            mask=batch.mask,
            clip_eps=clip_eps,
            vf_coef=config.vf_coef,
            ent_coef=config.ent_coef,
            norm_adv=config.norm_adv,
            clip_vf=config.clip_vf,
            old_values=batch.values,
        )
        return terms.loss, terms.metrics()

    def update(self, batch: TeamBatch, context: UpdateContext) -> dict[str, float]:
        """``num_epochs`` passes over ``num_minibatches`` minibatches of whole steps (every agent of a step in
        the same minibatch); then each agent's KL and entropy over the whole batch."""
        config = self.config
        learning_rate = scheduled_learning_rate(self.optimizer, config.optimizer, context)
        history: list[dict[str, Any]] = []
        norms: list[float] = []
        rows = batch.mask.shape[0]
        for _ in range(config.num_epochs):
            order = context.rng.permutation(rows)
            for index in np.array_split(order, config.num_minibatches):
                loss, stats = self.loss(batch.take(index), config.clip_eps)
                norms.append(optimizer_step(self.optimizer, self.parameters, loss, config.max_grad_norm)[0])
                history.append(stats)
        metrics = mean_metrics(history)
        metrics.update({LEARNING_RATE: learning_rate, GRAD_NORM: float(np.mean(norms))})
        metrics.update(self.agent_metrics(batch))
        return metrics

    def agent_metrics(self, batch: TeamBatch) -> dict[str, float]:
        """Per agent, over the whole batch after the update: approx KL E[(r - 1) - log r] and entropy."""
        with torch.no_grad():
            log_probs, entropy = self.distributions_terms(batch.actor_in, batch.actions)
        log_ratio = log_probs - batch.log_probs
        kl = (log_ratio.exp() - 1.0) - log_ratio
        out: dict[str, float] = {}
        for j, agent in enumerate(self.spaces.agents):
            weight = batch.mask[:, j]
            count = max(float(weight.sum()), 1.0)
            out[f"agent/{agent}/{APPROX_KL}"] = float((kl[:, j] * weight).sum()) / count
            out[f"agent/{agent}/{ENTROPY}"] = float((entropy[:, j] * weight).sum()) / count
        return out

    # ---- checkpoint contract ---------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        """The networks a checkpoint saves: the actors and the critics."""
        return {"actors": self.actors, "critics": self.critics}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The one optimizer."""
        return {"optimizer": self.optimizer}

    def extra_state(self) -> dict[str, Any]:
        """The value normaliser's statistics (floats: JSON keeps them exactly)."""
        stats = self.value_norm.stats
        return {"value_norm": {"mean": float(stats.mean), "var": float(stats.var), "count": float(stats.count)}}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restores ``extra_state``'s output."""
        saved = state["value_norm"]
        stats = self.value_norm.stats
        stats.mean, stats.var = np.array(saved["mean"], np.float64), np.array(saved["var"], np.float64)
        stats.count = float(saved["count"])


@dataclass
class TeamRollout:
    """What the collector gathered, time-major [T, N, A, ...]; ``last_critic_in`` [N, A, W] is the critic's input
    after the last step, ``final_critic_in`` [T, N, A, W] the one of each step's final observation (used where
    an agent's episode ended there)."""

    obs: np.ndarray
    critic_in: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    active: np.ndarray
    final_critic_in: np.ndarray
    last_critic_in: np.ndarray
