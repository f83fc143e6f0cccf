"""The multi-agent body: MAPPO and IPPO on N copies of a PettingZoo parallel env, driven by the trunk.

Only what differs from the single-agent on-policy loop is here: the team collector (arrays over
[T, N, A], the agents' active masks, per-agent and team episode returns) and the body methods that carry the
team's state. The prologue, the loop, the guard's decisions, checkpoints and rollbacks are the trunk's
(``pgrad.runners.trunk``), and the learner (``pgrad.algos.mappo.TeamLearner``) is PPO's loss over the masked
entries. The guard's rules run on the team's metrics and, for the policy rules (KL, clip fraction, entropy,
explained variance), on each agent's metrics too (``per_agent_rules``); a rollback restores the whole team.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Protocol, cast

import numpy as np
import torch

from pgrad import metric_names as names
from pgrad.algos.contract import UpdateContext
from pgrad.algos.mappo import TeamLearner, TeamRollout
from pgrad.builders import one_line
from pgrad.checkpoint import (
    TrainState,
    check_arrays_fit,
    check_rollback_states,
    load_modules,
    load_optimizers,
    read_train_state,
)
from pgrad.config import TrainConfig
from pgrad.envs.multiagent import TeamEnvs, load_parallel_env
from pgrad.errors import CheckpointError, ConfigError, PgradError
from pgrad.monitor import alerts
from pgrad.monitor.alerts import RULES, Rule
from pgrad.monitor.guard import Action, Event, Halt, Rollback
from pgrad.monitor.recovery import UpdateSizes, parameters_finite, restore_captured, restore_learner, update_groups
from pgrad.monitor.sinks import read_jsonl
from pgrad.rollout import EpisodeStats
from pgrad.runners import trunk
from pgrad.runners.context import TrainResult, resident_memory_mb

# the rules that read a policy's own metrics: each runs again on every agent's (agent/<name>/<metric>)
AGENT_RULES: tuple[Rule, ...] = (
    alerts.kl_rule,
    alerts.entropy_collapse_rule,
    alerts.explained_variance_rule,
)


def agent_metric(agent: str, metric: str) -> str:
    """The name of one agent's copy of a metric: ``agent/<name>/<metric>``."""
    return f"agent/{agent}/{metric}"


def per_agent_rule(rule: Rule, agent: str) -> Rule:
    """``rule`` read on one agent's metrics (``agent/<name>/...`` in place of the team's); its alert names the
    agent and keeps the rule's name, so the guard decides on it as on the team's (a critical KL rolls back)."""
    prefix = agent_metric(agent, "")

    def check(history: list[dict[str, Any]], config: Any) -> alerts.Alert | None:
        view = [{**row, **{k[len(prefix) :]: v for k, v in row.items() if k.startswith(prefix)}} for row in history]
        if not any(key.startswith(prefix) for key in history[-1]):
            return None
        alert = rule(view, config)
        if alert is None:
            return None
        return dataclasses.replace(alert, message=f"agent {agent}: {alert.message}", metric=prefix + alert.metric)

    return check


def team_rules(agents: tuple[str, ...]) -> tuple[Rule, ...]:
    """The guard's rules for a team: every rule on the team's metrics, and the policy rules on each agent's."""
    return RULES + tuple(per_agent_rule(rule, agent) for agent in agents for rule in AGENT_RULES)


def build_team(config: TrainConfig, num_envs: int, make: Callable[..., Any] | None = None) -> TeamEnvs:
    """``num_envs`` copies of the team env ``config.env.id`` names (the trust rule: ``load_parallel_env``), or
    of ``make``'s (an env handed over as a Python object); the env's own failure is one line."""
    make = make or load_parallel_env(config.env.id)
    kwargs = dict(config.env.kwargs)
    try:
        return TeamEnvs(lambda: make(**kwargs), num_envs)
    except PgradError:
        raise
    except Exception as exc:
        extra = f" with env.kwargs {kwargs}" if kwargs else ""
        raise ConfigError(f"env {config.env.id}{extra} could not be created: {one_line(exc)}") from None


@dataclass
class TeamEpisodes:
    """Running returns of the episodes in progress ([N, A] and lengths [N]) and the finished ones: the team's
    (the mean of its agents' returns) and each agent's."""

    running: np.ndarray
    lengths: np.ndarray
    team: EpisodeStats
    agents: list[EpisodeStats]

    @classmethod
    def empty(cls, num_envs: int, num_agents: int, window: int) -> TeamEpisodes:
        """No episodes yet."""
        return cls(
            np.zeros((num_envs, num_agents)),
            np.zeros(num_envs, np.int64),
            EpisodeStats.empty(window),
            [EpisodeStats.empty(window) for _ in range(num_agents)],
        )

    def add(self, rewards: np.ndarray, team_done: np.ndarray) -> None:
        """One step's rewards [N, A]; the copies whose team finished close their episode."""
        self.running += rewards
        self.lengths += 1
        for i in np.flatnonzero(team_done):
            self.team.add(float(self.running[i].mean()), int(self.lengths[i]))
            for j, stats in enumerate(self.agents):
                stats.add(float(self.running[i, j]), int(self.lengths[i]))
            self.running[i], self.lengths[i] = 0.0, 0

    def summary(self, agent_names: tuple[str, ...]) -> dict[str, float]:
        """The team's ``rollout/*`` metrics and each agent's return mean."""
        out = self.team.summary()
        for name, stats in zip(agent_names, self.agents, strict=True):
            if stats.returns:
                out[agent_metric(name, names.RETURN_MEAN)] = float(np.mean(stats.returns))
        return out

    def state(self) -> dict[str, Any]:
        """For ``TrainState.episodes``."""
        return {"team": self.team.state(), "agents": [s.state() for s in self.agents]}

    def load(self, state: dict[str, Any]) -> None:
        """Restores ``state``'s output."""
        self.team.load(state["team"])
        for stats, saved in zip(self.agents, state["agents"], strict=True):
            stats.load(saved)


def collect(
    learner: TeamLearner, envs: TeamEnvs, episodes: TeamEpisodes, rng: np.random.Generator, steps: int
) -> TeamRollout:
    """``steps`` steps of every copy with the actors' sampled actions: the arrays the learner prepares."""
    obs, critic_in, actions, rewards, terminated, truncated, active, final = ([] for _ in range(8))
    for _ in range(steps):
        obs.append(envs.obs)
        critic_in.append(learner.critic_input(envs.obs, envs.state))
        active.append(envs.active)
        chosen = learner.act(envs.obs, rng)
        out = envs.step(chosen)
        actions.append(chosen)
        rewards.append(out.rewards)
        terminated.append(out.terminated)
        truncated.append(out.truncated)
        final.append(learner.critic_input(out.final_obs, out.final_state))
        episodes.add(out.rewards, out.team_done)
    return TeamRollout(
        obs=np.stack(obs),
        critic_in=np.stack(critic_in),
        actions=np.stack(actions),
        rewards=np.stack(rewards),
        terminated=np.stack(terminated),
        truncated=np.stack(truncated),
        active=np.stack(active),
        final_critic_in=np.stack(final),
        last_critic_in=learner.critic_input(envs.obs, envs.state),
    )


class TeamActor(Protocol):
    """What evaluation needs of a team learner (MAPPO's or MADDPG's): actions in the team env's form."""

    def act(self, obs: np.ndarray, rng: np.random.Generator, deterministic: bool = False) -> np.ndarray:
        """Actions [N, A, max_action] for observations [N, A, max_obs]."""


def team_episodes(
    learner: TeamActor, envs: TeamEnvs, episodes: int, seed: int, deterministic: bool = True
) -> tuple[list[float], np.ndarray]:
    """``episodes`` whole episodes on ``envs`` (reset with ``seed``): the team returns (mean over agents) and the
    per-agent returns [episodes, A]."""
    envs.reset(seed)
    rng = np.random.default_rng(seed)
    stats = TeamEpisodes.empty(envs.num_envs, envs.spaces.num_agents, episodes)
    while stats.team.count < episodes:
        out = envs.step(learner.act(envs.obs, rng, deterministic))
        stats.add(out.rewards, out.team_done)
    per_agent = np.array([list(s.returns)[:episodes] for s in stats.agents]).T
    return list(stats.team.returns)[:episodes], per_agent


class MultiAgentRunner:
    """MAPPO and IPPO: collect a team rollout, prepare (per-agent GAE), update, judged by the guard."""

    def __init__(
        self,
        config: TrainConfig,
        run_dir: Path,
        resume: bool = False,
        console: bool = True,
        overwrite: bool = False,
        env_factory: Callable[..., Any] | None = None,
    ) -> None:
        """``env_factory``: a team env handed over as a Python object (``pgrad.team_runs.train_team``): called with
        ``env.kwargs`` for each copy, instead of building what ``config.env.id`` names."""
        self.config = config
        self.make = env_factory
        self.run = trunk.begin_run(config, run_dir, resume, overwrite, env_object=env_factory is not None)
        self.run_dir = self.run.run_dir
        self.envs = build_team(config, config.env.num_envs, env_factory)
        try:
            self.learner: TeamLearner = self.build_learner()
        except BaseException:
            self.envs.close()
            raise
        self.agents = self.envs.spaces.agents
        self.envs.reset(config.run.seed)
        self.episodes = TeamEpisodes.empty(config.env.num_envs, len(self.agents), config.run.episode_window)
        self.rng = np.random.default_rng(config.run.seed)
        self.step = 0
        self.updates = 0
        self.guard, self.optimizer_guard, self.healthy_states = trunk.guard_parts(
            config, self.run_dir, list(self.learner.optimizers().values()), rules=team_rules(self.agents)
        )
        self.update_sizes = UpdateSizes(update_groups(self.learner)) if config.guard.enabled else None
        self.eval_envs: TeamEnvs | None = None
        self.params_finite = 1.0
        self.run.resolved = {"gradient_backend": "autograd", "gradient_backend_reason": "multi-agent learners"}
        trunk.open_or_resume(self.run, console, f"{config.algo} {config.env.id}", self.load, self.close)

    stop_requested: trunk.RunAttribute[bool] = trunk.RunAttribute("stop_requested")

    def build_learner(self) -> Any:
        """The team's learner on the envs' spaces (MADDPG's runner builds its own, and its replay, here)."""
        return TeamLearner(self.config.algo_config, self.envs.spaces)

    # ---- the body the trunk drives --------------------------------------------------------------------
    def before_loop(self) -> None:
        """Nothing before the first update."""

    def advance(self, stop_at_step: int | None = None) -> dict[str, Any]:
        """One update: collect, apply any drilled faults, prepare, update; its metrics."""
        started = time.perf_counter()
        config = self.config
        rollout = self.collect_rollout()
        collected = time.perf_counter()
        first_step = self.step
        self.step += rollout.rewards.shape[0] * rollout.rewards.shape[1]
        self.updates += 1
        faults = self.guard.begin_update(first_step, self.step)  # drills: lr spike, NaN gradients, reward flip
        if faults.flip_reward:
            np.negative(rollout.rewards, out=rollout.rewards)
        self.optimizer_guard.start_update(faults)
        batch, batch_stats = self.learner.prepare(rollout)
        context = UpdateContext(
            progress=min(self.step / config.run.total_steps, 1.0), lr_scale=self.guard.lr_scale(), rng=self.rng
        )
        if self.update_sizes is not None:
            self.update_sizes.start()
        update_stats = self.learner.update(batch, context)
        if self.update_sizes is not None:
            for name, size in self.update_sizes.finish().items():
                update_stats[f"{names.UPDATE_NORM}/{name}"] = size
        finished = time.perf_counter()
        env_steps = rollout.rewards.shape[0] * rollout.rewards.shape[1]
        return {
            names.STEP: self.step,
            names.UPDATE: self.updates,
            **self.episodes.summary(self.agents),
            **batch_stats,
            **update_stats,
            names.NONFINITE_STEPS: float(self.optimizer_guard.skipped),
            names.PARAMS_FINITE: self.check_parameters(),
            names.STEPS_PER_SECOND: env_steps / (finished - started),
            "perf/rollout_seconds": collected - started,
            "perf/update_seconds": finished - collected,
            "perf/wall_seconds": self.run.elapsed_before + finished - self.run.started,
            "perf/rss_mb": resident_memory_mb(),
        }

    def collect_rollout(self) -> TeamRollout:
        """The rollout; an exception from the env stops the run in one line (the last checkpoint kept)."""
        try:
            return collect(self.learner, self.envs, self.episodes, self.rng, self.config.algo_config.num_steps)
        except PgradError:
            raise
        except Exception as exc:
            message = f"env {self.config.env.id} raised {one_line(exc)} after env step {self.step}"
            self.run.emit("run.env_failed", self.step, message, error=type(exc).__name__)
            from pgrad.errors import TrainingHalted

            raise TrainingHalted(message) from None

    def check_parameters(self) -> float:
        """1.0 while every parameter is finite (checked every 10th update and after a skipped step)."""
        if self.config.guard.enabled and (self.updates % 10 == 1 or self.optimizer_guard.skipped):
            self.params_finite = float(parameters_finite(self.learner.modules()))
        return self.params_finite

    def judge(self, metrics: dict[str, Any]) -> list[Action]:
        """The guard's rules (team and per agent), an evaluation when due, and the guard's decision."""
        self.guard.observe(metrics, self.updates)
        evaluation = self.evaluate(metrics) if self.guard.evaluation_due(self.step) else None
        checkpoint_due = self.step - self.run.last_checkpoint_step >= self.config.run.checkpoint_every
        return self.guard.decide(metrics, self.step, evaluation, checkpoint_due)

    def evaluate(self, metrics: dict[str, Any]) -> list[float]:
        """``guard.eval_episodes`` deterministic episodes on separate copies: ``eval/*`` for the team and each
        agent; returns the team returns."""
        if self.eval_envs is None:
            self.eval_envs = build_team(self.config, 1, self.make)
        returns, per_agent = team_episodes(
            self.learner, self.eval_envs, self.config.guard.eval_episodes, self.config.run.seed + 10_000
        )
        metrics[names.EVAL_RETURN_MEAN] = float(np.mean(returns))
        metrics[names.EVAL_RETURN_STD] = float(np.std(returns))
        for j, agent in enumerate(self.agents):
            metrics[agent_metric(agent, names.EVAL_RETURN_MEAN)] = float(per_agent[:, j].mean())
        return returns

    def take_events(self) -> list[Event]:
        """What the guard said since the last call."""
        return self.guard.take_events()

    def halt(self, action: Halt) -> NoReturn:
        """Log why and stop (exit code 3)."""
        trunk.halted(self.run, self.step, action, self.guard.state.recoveries)

    def roll_back(self, action: Rollback) -> None:
        """Restore the whole team (every actor, critic, the optimizer and the value normaliser) to the healthy
        state in memory, else the newest healthy (or the best) checkpoint; the envs and episodes stay."""
        self.healthy_states.forget_candidate()
        path = self.run.checkpoint_path("best") if action.source == "best" else None
        memory = self.healthy_states.confirmed
        if path is None and memory is not None:
            restore_captured(memory, self.learner, self)
            data: dict[str, Any] = {"checkpoint": None, "restored_step": memory.step, "restored_from": "memory"}
            summary = f"restored the team's healthy state of step {memory.step} from memory"
        else:
            path = path or self.run.checkpoint_path("last_healthy")
            data = {"checkpoint": str(path) if path else None, "restored_from": "disk" if path else None}
            summary = "no healthy state yet, kept the current weights"
            if path is not None:
                restored = read_train_state(path)
                restore_learner(restored, path, self.learner, cast(Any, self))  # its normalisers: none
                summary = f"restored the team from {path.name} (step {restored.step})"
                data.update(restored_step=restored.step, restored_score=restored.score)
        trunk.log_events(self.run, self.step, [self.guard.rollback_event(action.reason, summary, data)])

    def snapshot(self, healthy: bool) -> None:
        """Offer the team's state after this update to the in-memory healthy states."""
        self.healthy_states.after_update(healthy, self.step, self.learner, self)

    def normalizer_state(self) -> dict[str, Any]:
        """No observation normaliser (the value normaliser is the learner's extra state)."""
        return {}

    def load_normalizer_state(self, state: dict[str, Any]) -> None:
        """Nothing to restore (see ``normalizer_state``)."""

    def final_score(self, metrics: dict[str, Any]) -> tuple[float | None, bool]:
        """The final checkpoint's score and health mark, as the guard judges them."""
        return self.guard.checkpoint_score(metrics), self.guard.healthy

    # ---- checkpoints ------------------------------------------------------------------------------------
    def collector_arrays(self) -> dict[str, np.ndarray]:
        """The episodes in progress: running returns [N, A] and lengths [N]."""
        return {"running": self.episodes.running.copy(), "lengths": self.episodes.lengths.copy()}

    def train_state(self) -> TrainState:
        """Everything a resume needs to continue bit for bit: the team, the envs' objects, RNGs, episodes."""
        python_state = random.getstate()
        common = trunk.base_state(
            self.run,
            self.step,
            self.updates,
            trunk.module_tensors(self.learner.modules()),
            self.learner.optimizers(),
            self.guard,
            self.healthy_states.slots(),
            self.healthy_states.last_capture_step,
        )
        return dataclasses.replace(
            common,
            collector=self.collector_arrays(),
            rng_numpy=dict(self.rng.bit_generator.state),
            rng_python=[python_state[0], list(python_state[1]), python_state[2]],
            env_state=self.envs.capture_state(),
            episodes=self.episodes.state(),
            algo_state=self.learner.extra_state(),
        )

    def load(self, state: TrainState, path: Path) -> None:
        """Put a checkpoint back: weights, optimizer, value normaliser, envs, episodes, RNGs, guard, counters."""
        learner = self.learner
        load_modules(learner.modules(), state, path)
        load_optimizers(learner.optimizers(), state, path)
        check_rollback_states(learner.modules(), learner.optimizers(), state, path)
        check_arrays_fit(self.collector_arrays(), state.collector, "collector", path)
        try:
            self.episodes.running = np.asarray(state.collector["running"], np.float64).copy()
            self.episodes.lengths = np.asarray(state.collector["lengths"], np.int64).copy()
            self.episodes.load(state.episodes)
            learner.load_extra_state(state.algo_state)
            self.envs.restore_state(state.env_state)
            restore_rngs(state, self.rng)
            self.guard.load(
                state.guard, [m for m in read_jsonl(self.run_dir / "metrics.jsonl") if m["step"] <= state.step]
            )
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            raise CheckpointError(f"checkpoint {path} does not fit this configuration: {exc}") from None
        self.healthy_states.load(state.rollback_states, state.rollback_capture_step)
        self.optimizer_guard.state = self.guard.state
        self.step, self.updates = state.step, state.updates

    def close(self) -> None:
        """Release the optimizer hooks, the run's logs and the envs."""
        self.optimizer_guard.remove()
        self.run.close()
        self.envs.close()
        if self.eval_envs is not None:
            self.eval_envs.close()

    def train(self, stop_at_step: int | None = None) -> TrainResult:
        """Train to ``run.total_steps`` (or stop early at ``stop_at_step``, as a kill would)."""
        return trunk.train_loop(self, stop_at_step)


def restore_rngs(state: TrainState, rng: np.random.Generator) -> None:
    """The torch, NumPy and Python generators of a checkpoint."""
    if state.rng_torch is None or state.rng_numpy is None or state.rng_python is None:
        raise KeyError("rng state")
    torch.set_rng_state(state.rng_torch)
    rng.bit_generator.state = state.rng_numpy
    version, internal, gauss = state.rng_python
    random.setstate((version, tuple(internal), gauss))
