"""MADDPG (Lowe et al., 2017, "Multi-Agent Actor-Critic for Mixed Cooperative-Competitive Environments"):
DDPG for a team of agents, with decentralised deterministic actors and centralised critics.

Agent i acts on its own observation, a_i = mu_i(o_i); its critic reads every agent's observation and action,
concatenated in agent order: Q_i(o_1, ..., o_n, a_1, ..., a_n) (``joint_critic_input``). One gradient step, for
every agent i, on a sample of joint transitions (``pgrad.algos.team_replay``):

1. critic: y_i = r_i + gamma (1 - d_i) Q'_i(o'_1..o'_n, mu'_1(o'_1), ..., mu'_n(o'_n)), with the target actors'
   actions (a one-hot of the argmax for discrete actions); L_Q = sum_i E[(Q_i(o, a) - y_i)^2] over the rows where
   agent i acted (``critic_targets``);
2. actor: L_mu = sum_i -E[Q_i(o, a_1, ..., mu_i(o_i), ..., a_n)] + logit_reg E[z_i^2] (the other agents' actions
   from the replay, z_i the actor's raw output), the critics' weights frozen;
3. targets: theta' <- tau theta + (1 - tau) theta' (``pgrad.algos.off_policy.polyak_update``).

Discrete actions (MPE2's default) go through the Gumbel-softmax (``gumbel_softmax``): the actor's logits plus
Gumbel noise, divided by ``gumbel_temperature``, through a softmax; the critic reads the straight-through hard
sample (one-hot in the forward pass), whose gradient is the relaxed sample's. Exploration samples the same
distribution (argmax of logits + Gumbel noise: a categorical draw); evaluation takes the argmax. Continuous
actions are tanh(z) in [-1, 1] (mapped to the Box by the team env) with Gaussian exploration noise, as DDPG.

Parameter sharing (``marl.share_parameters``, off by default as in the paper): one actor and one critic for every
agent, each with the agent's one-hot id appended to its input; the critic's Q_i still sees the whole team.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from pgrad import glossary
from pgrad import metric_names as names
from pgrad.algos.common import make_optimizer
from pgrad.algos.contract import UpdateContext
from pgrad.algos.mappo import MultiAgentConfig
from pgrad.algos.off_policy import frozen_copy, polyak_update, schedule_learning_rates
from pgrad.algos.team_replay import JointBatch
from pgrad.config import MAX_LAYER_WIDTH, MAX_WINDOW, Checked, OptimizerConfig, param
from pgrad.envs.multiagent import TeamSpaces
from pgrad.errors import ConfigError
from pgrad.nets import plain_mlp


@dataclass(frozen=True)
class MADDPGNetworkConfig(Checked):
    """MADDPG's actor and critic MLPs (one of each per agent, or one shared pair)."""

    SECTION: ClassVar[str] = "network"

    hidden_sizes: tuple[int, ...] = param((64, 64), "hidden layers of each actor and critic (the MADDPG paper: 64x64)")
    activation: Literal["relu", "tanh"] = param("relu", "hidden activation (the MADDPG paper: relu)")

    def validate(self) -> None:
        """hidden_sizes: a non-empty list of positive widths."""
        if not self.hidden_sizes or min(self.hidden_sizes) < 1 or max(self.hidden_sizes) > MAX_LAYER_WIDTH:
            self._fail("hidden_sizes", f"a non-empty list of integers in [1, {MAX_LAYER_WIDTH}]")


@dataclass(frozen=True)
class MADDPGConfig(Checked):
    """MADDPG hyper-parameters. Defaults follow the MADDPG paper's MPE settings (lr 1e-2, gamma 0.95, tau 0.01,
    batch 1024, 64x64 ReLU MLPs, gradient norm 0.5, logit regulariser 1e-3); the update-to-data ratio is pgrad's
    (``gradient_steps`` per ``num_steps`` x ``env.num_envs`` env steps)."""

    SECTION: ClassVar[str] = "maddpg"

    num_steps: int = param(25, "steps per env copy per round; a round then runs gradient_steps updates (one log row)")
    gradient_steps: int = param(20, "gradient steps (of every agent) per round")
    batch_size: int = param(1024, "joint transitions per gradient step, drawn uniformly with replacement")
    buffer_size: int = param(1_000_000, "replay capacity in joint transitions (every agent of one env step)")
    learning_starts: int = param(1000, "env steps (all copies together) stored before the first update")
    gamma: float = glossary.gamma(0.95, "the MADDPG paper: 0.95")
    tau: float = glossary.tau(0.01, "the MADDPG paper: 0.01")
    gumbel_temperature: float = param(1.0, "discrete actions: temperature of the Gumbel-softmax relaxation")
    exploration_std: float = param(0.1, "continuous actions: sigma of the Gaussian exploration noise, in [-1, 1] units")
    logit_reg: float = param(1e-3, "weight of E[z^2] on the actor's raw outputs in its loss (the paper's code: 1e-3)")
    max_grad_norm: float = glossary.max_grad_norm(0.5, "per agent's network; the paper's code: 0.5")
    network: MADDPGNetworkConfig = param(MADDPGNetworkConfig(), "the actors' and the critics' MLPs")
    optimizer: OptimizerConfig = param(
        OptimizerConfig(learning_rate=1e-2, anneal_lr=False, eps=1e-8),
        "Adam for the actors and one for the critics, lr 1e-2 (the MADDPG paper)",
    )
    marl: MultiAgentConfig = param(
        MultiAgentConfig(share_parameters=False), "what the agents share (the paper: nothing, one pair per agent)"
    )

    def validate(self) -> None:
        """Checks each hyper-parameter's range."""
        self.check_range("num_steps", 1, MAX_WINDOW)
        self.check_range("gradient_steps", 0, MAX_WINDOW)
        self.check_range("batch_size", 1, MAX_WINDOW)
        self.check_range("buffer_size", 1, 2**31)
        self.check_range("learning_starts", 0)
        self.check_range("gamma", 0, 1)
        self.check_range("tau", 0, 1, low_open=True)
        self.check_range("gumbel_temperature", 0, low_open=True)
        self.check_range("exploration_std", 0)
        self.check_range("logit_reg", 0)
        self.check_range("max_grad_norm", 0, low_open=True)

    def check_with_env(self, env: Any) -> None:
        """The replay must hold at least one step of every env copy (a step's rows are written together)."""
        if self.buffer_size < env.num_envs:
            raise ConfigError(
                f"{self.SECTION}.buffer_size must be at least env.num_envs = {env.num_envs}; got {self.buffer_size}"
            )


# ---- the pure pieces --------------------------------------------------------------------------------------
def gumbel_noise(shape: tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
    """g = -log(E), E ~ Exponential(1): standard Gumbel noise (as ``torch.nn.functional.gumbel_softmax``)."""
    return -torch.empty(shape).exponential_(generator=generator).log()


def gumbel_softmax(logits: torch.Tensor, temperature: float, gumbels: torch.Tensor, hard: bool = True) -> torch.Tensor:
    """y = softmax((logits + g) / T); ``hard``: the straight-through sample onehot(argmax y) - sg(y) + y, which is
    the one-hot in the forward pass and has the relaxed sample's gradient (Jang et al., 2017)."""
    soft = torch.softmax((logits + gumbels) / temperature, dim=-1)
    if not hard:
        return soft
    one_hot = torch.nn.functional.one_hot(soft.argmax(dim=-1), soft.shape[-1]).to(soft.dtype)
    return one_hot - soft.detach() + soft


def joint_critic_input(obs: list[torch.Tensor], actions: list[torch.Tensor]) -> torch.Tensor:
    """[o_1, ..., o_n, a_1, ..., a_n]: every agent's observation, then every agent's action, in agent order."""
    return torch.cat([*obs, *actions], dim=-1)


def critic_targets(rewards: torch.Tensor, terminated: torch.Tensor, next_q: torch.Tensor, gamma: float) -> torch.Tensor:
    """y_i = r_i + gamma (1 - d_i) Q'_i(o', mu'(o')), each [B, A]; a truncated episode (d_i = 0) bootstraps from
    its final observation."""
    return rewards + gamma * (1.0 - terminated) * next_q


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum(values x mask) / max(sum(mask), 1) over the first axis: [B, ...] -> [...]."""
    return (values * mask).sum(dim=0) / mask.sum(dim=0).clamp(min=1.0)


def clipped_step(
    optimizer: torch.optim.Optimizer, groups: nn.ModuleList, loss: torch.Tensor, max_grad_norm: float
) -> float:
    """Gradients of ``loss``, each group (one agent's network, or the shared one) clipped to ``max_grad_norm`` on
    its own, one optimizer step; returns the mean norm before clipping."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norms = [float(nn.utils.clip_grad_norm_(group.parameters(), max_grad_norm)) for group in groups]
    optimizer.step()
    return float(np.mean(norms))


class MADDPGLearner:
    """Actors, critics and their targets for a team (one per agent, or one shared pair), an Adam for the actors
    and one for the critics; ``update`` is one MADDPG gradient step of every agent."""

    def __init__(self, config: MADDPGConfig, spaces: TeamSpaces) -> None:
        marl = config.marl
        if marl.share_parameters and not spaces.homogeneous:
            raise ConfigError(
                f"{config.SECTION}.marl.share_parameters needs every agent to have the same observation and action "
                f"spaces; this team's differ (observation widths {list(spaces.obs_dims)}): set "
                f"marl.share_parameters=false"
            )
        self.config, self.spaces = config, spaces
        self.shared = marl.share_parameters
        self.agent_id = marl.share_parameters and marl.agent_id
        agents = spaces.num_agents
        extra = agents if self.agent_id else 0
        self.widths = tuple(a.size for a in spaces.actions)  # a discrete action is a one-hot of its n choices
        self.discrete = tuple(a.kind == "discrete" for a in spaces.actions)
        groups = 1 if self.shared else agents
        net = config.network
        joint = sum(spaces.obs_dims) + sum(self.widths) + extra
        self.actors = nn.ModuleList(
            plain_mlp(spaces.obs_dims[g] + extra, net.hidden_sizes, self.widths[g], net.activation)
            for g in range(groups)
        )
        self.critics = nn.ModuleList(plain_mlp(joint, net.hidden_sizes, 1, net.activation) for _ in range(groups))
        self.target_actors = frozen_copy(self.actors)
        self.target_critics = frozen_copy(self.critics)
        self.actor_optimizer = make_optimizer(list(self.actors.parameters()), config.optimizer)
        self.critic_optimizer = make_optimizer(list(self.critics.parameters()), config.optimizer)
        self.learning_rate = config.optimizer.learning_rate

    @property
    def max_width(self) -> int:
        """The width of a stored joint action row: the widest agent action (a discrete one as its one-hot)."""
        return max(self.widths)

    # ---- inputs --------------------------------------------------------------------------------------------
    def _group(self, j: int) -> int:
        return 0 if self.shared else j

    def _with_id(self, rows: torch.Tensor, j: int) -> torch.Tensor:
        if not self.agent_id:
            return rows
        one_hot = torch.zeros((*rows.shape[:-1], self.spaces.num_agents), dtype=rows.dtype)
        one_hot[..., j] = 1.0
        return torch.cat([rows, one_hot], dim=-1)

    def raw_output(self, actors: nn.ModuleList, obs: torch.Tensor, j: int) -> torch.Tensor:
        """Agent ``j``'s actor output z_j (logits, or the pre-tanh action) of observations [B, A, max_obs]."""
        out: torch.Tensor = actors[self._group(j)](self._with_id(obs[:, j, : self.spaces.obs_dims[j]], j))
        return out

    def critic_input(self, obs: torch.Tensor, actions: list[torch.Tensor], i: int) -> torch.Tensor:
        """Q_i's input: ``joint_critic_input`` of obs [B, A, max_obs] and per-agent actions (each [B, width_j]),
        with agent i's one-hot appended when the critic is shared."""
        parts = [obs[:, j, :d] for j, d in enumerate(self.spaces.obs_dims)]
        return self._with_id(joint_critic_input(parts, actions), i)

    def q_value(self, critics: nn.ModuleList, obs: torch.Tensor, actions: list[torch.Tensor], i: int) -> torch.Tensor:
        """Q_i(o, a) [B] (of ``critics`` or their targets)."""
        q: torch.Tensor = critics[self._group(i)](self.critic_input(obs, actions, i)).squeeze(-1)
        return q

    def split_actions(self, actions: torch.Tensor) -> list[torch.Tensor]:
        """Stored joint actions [B, A, max_width] -> each agent's [B, width_j]."""
        return [actions[:, j, :w] for j, w in enumerate(self.widths)]

    def target_action(self, obs: torch.Tensor, j: int) -> torch.Tensor:
        """mu'_j(o_j): the target actor's one-hot argmax (discrete) or tanh action."""
        z = self.raw_output(self.target_actors, obs, j)
        if self.discrete[j]:
            return torch.nn.functional.one_hot(z.argmax(dim=-1), self.widths[j]).to(z.dtype)
        return torch.tanh(z)

    # ---- acting --------------------------------------------------------------------------------------------
    def joint_actions(self, obs: np.ndarray, rng: np.random.Generator, deterministic: bool = False) -> np.ndarray:
        """Critic-form actions [N, A, max_width] for observations [N, A, max_obs]: a one-hot (a categorical draw
        from softmax(logits), i.e. argmax of logits + Gumbel noise; the argmax when ``deterministic``) or
        tanh(z) + N(0, exploration_std^2) clipped to [-1, 1] (no noise when ``deterministic``)."""
        with torch.no_grad():
            x = torch.as_tensor(obs, dtype=torch.float32)
            outputs = [self.raw_output(self.actors, x, j).numpy() for j in range(self.spaces.num_agents)]
        out = np.zeros((*obs.shape[:2], self.max_width), np.float32)
        for j, z in enumerate(outputs):
            if self.discrete[j]:
                scores = z if deterministic else z + rng.gumbel(size=z.shape)
                out[:, j, : self.widths[j]] = np.eye(self.widths[j], dtype=np.float32)[scores.argmax(axis=-1)]
            else:
                action = np.tanh(z)
                if not deterministic and self.config.exploration_std > 0:
                    action = action + self.config.exploration_std * rng.standard_normal(z.shape)
                out[:, j, : self.widths[j]] = np.clip(action, -1.0, 1.0)
        return out

    def env_actions(self, joint: np.ndarray) -> np.ndarray:
        """Critic-form actions -> the team env's form [N, A, max_action] (a discrete index in column 0)."""
        out = np.zeros((*joint.shape[:2], self.spaces.max_action), np.float32)
        for j, w in enumerate(self.widths):
            if self.discrete[j]:
                out[:, j, 0] = joint[:, j, :w].argmax(axis=-1)
            else:
                out[:, j, :w] = joint[:, j, :w]
        return out

    def act(self, obs: np.ndarray, rng: np.random.Generator, deterministic: bool = False) -> np.ndarray:
        """Actions in the team env's form for observations [N, A, max_obs] (``pgrad.runners.multi_agent``'s
        evaluation calls this, as on MAPPO's learner)."""
        return self.env_actions(self.joint_actions(obs, rng, deterministic))

    # ---- the update ----------------------------------------------------------------------------------------
    def critic_terms(self, batch: JointBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(L_Q per agent [A], Q(o, a) [B, A], y [B, A]) of a batch: step 1 of the module docstring."""
        agents = range(self.spaces.num_agents)
        with torch.no_grad():
            # an agent that did not act at this step gets a zero action in the target's input, as in the replay
            next_actions = [self.target_action(batch.next_obs, j) * batch.active[:, j, None] for j in agents]
            next_q = torch.stack(
                [self.q_value(self.target_critics, batch.next_obs, next_actions, i) for i in agents], 1
            )
            target = critic_targets(batch.rewards, batch.terminated, next_q, self.config.gamma)
        actions = self.split_actions(batch.actions)
        q = torch.stack([self.q_value(self.critics, batch.obs, actions, i) for i in agents], dim=1)
        return masked_mean((q - target) ** 2, batch.active), q, target

    def actor_terms(self, batch: JointBatch) -> torch.Tensor:
        """L_mu per agent [A]: -E[Q_i(o, a_1, ..., mu_i(o_i), ..., a_n)] + logit_reg E[z_i^2], agent i's own action
        from its current actor (the straight-through Gumbel-softmax sample for discrete actions), the others' from
        the replay; over the rows where agent i acted."""
        config = self.config
        stored = self.split_actions(batch.actions)
        losses = []
        for i in range(self.spaces.num_agents):
            z = self.raw_output(self.actors, batch.obs, i)
            if self.discrete[i]:
                own = gumbel_softmax(z, config.gumbel_temperature, gumbel_noise(tuple(z.shape)))
            else:
                own = torch.tanh(z)
            actions = [*stored[:i], own * batch.active[:, i, None], *stored[i + 1 :]]
            q = self.q_value(self.critics, batch.obs, actions, i)
            mask = batch.active[:, i]
            losses.append(-masked_mean(q, mask) + config.logit_reg * masked_mean((z**2).mean(dim=-1), mask))
        return torch.stack(losses)

    def update(self, batch: JointBatch, context: UpdateContext) -> dict[str, Any]:
        """One gradient step of every agent's critic, then every agent's actor (the critics frozen), then the
        targets; the team's and each agent's losses and Q."""
        config = self.config
        self.learning_rate = schedule_learning_rates(
            [self.actor_optimizer, self.critic_optimizer], config.optimizer, context
        )
        critic_losses, q, target = self.critic_terms(batch)
        critic_norm = clipped_step(self.critic_optimizer, self.critics, critic_losses.sum(), config.max_grad_norm)
        self.critics.requires_grad_(False)  # the actor's gradient flows through Q into mu only
        try:
            actor_losses = self.actor_terms(batch)
            actor_norm = clipped_step(self.actor_optimizer, self.actors, actor_losses.sum(), config.max_grad_norm)
        finally:
            self.critics.requires_grad_(True)
        polyak_update(self.critics, self.target_critics, config.tau)
        polyak_update(self.actors, self.target_actors, config.tau)
        q_means = masked_mean(q.detach(), batch.active)
        metrics: dict[str, Any] = {
            "train/critic_loss": critic_losses.detach().mean(),
            "train/actor_loss": actor_losses.detach().mean(),
            names.Q_MEAN: q_means.mean(),
            "q/target_mean": masked_mean(target, batch.active).mean(),
            "diagnostics/critic_grad_norm": critic_norm,
            "diagnostics/actor_grad_norm": actor_norm,
        }
        for i, agent in enumerate(self.spaces.agents):
            metrics[f"agent/{agent}/train/critic_loss"] = critic_losses[i].detach()
            metrics[f"agent/{agent}/train/actor_loss"] = actor_losses[i].detach()
            metrics[f"agent/{agent}/{names.Q_MEAN}"] = q_means[i]
        return metrics

    def learning_rate_metrics(self) -> dict[str, float]:
        """The learning rate of the last ``update`` (after the schedule and the guard's scale)."""
        return {names.LEARNING_RATE: self.learning_rate}

    # ---- export ----------------------------------------------------------------------------------------------
    def export_parts(self, j: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
        """Agent ``j``'s actor as (hidden layers [(W [in, out], b)], head (W, b)) NumPy arrays, its one-hot id still
        an input (``pgrad.team_runs.agent_chain`` folds it)."""
        linears = [m for m in self.actors[self._group(j)].modules() if isinstance(m, nn.Linear)]
        arrays = [(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy()) for m in linears]
        return arrays[:-1], arrays[-1]

    # ---- checkpoint contract ---------------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        """The networks a checkpoint saves, targets included."""
        return {
            "actors": self.actors,
            "critics": self.critics,
            "target_actors": self.target_actors,
            "target_critics": self.target_critics,
        }

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The actors' and the critics' optimizers."""
        return {"actor": self.actor_optimizer, "critic": self.critic_optimizer}

    def extra_state(self) -> dict[str, Any]:
        """Nothing beyond the networks and optimizers (the exploration noise is drawn from the run's RNG)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Nothing to restore (``extra_state``)."""
