"""MADDPG's body: rounds of team steps into the joint replay, then sampled gradient steps, driven by the trunk.

Everything but the round itself is the multi-agent body's (``pgrad.runners.multi_agent.MultiAgentRunner``): the
team envs, the per-agent episode returns, the guard with its per-agent rules, evaluation, rollback of the whole
team, the checkpoint's envs, RNGs and episodes. This body adds the joint replay (in the checkpoint, as SAC's
buffer, so a resume is bit-exact) and its counters. One round (one log row, what the guard counts as an update):
``maddpg.num_steps`` steps of every copy with the exploring actors, each step's joint transition stored, then
``maddpg.gradient_steps`` MADDPG updates once ``maddpg.learning_starts`` env steps are stored.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from pgrad import metric_names as names
from pgrad.algos.contract import UpdateContext
from pgrad.algos.maddpg import MADDPGConfig, MADDPGLearner
from pgrad.algos.team_replay import JointReplay
from pgrad.builders import one_line
from pgrad.checkpoint import TrainState
from pgrad.errors import CheckpointError, PgradError, TrainingHalted
from pgrad.runners.context import resident_memory_mb
from pgrad.runners.multi_agent import MultiAgentRunner
from pgrad.runners.off_policy import aggregate


class MADDPGRunner(MultiAgentRunner):
    """MADDPG on a PettingZoo team: the multi-agent body with a joint replay in place of on-policy rollouts."""

    learner: MADDPGLearner  # type: ignore[assignment]

    def build_learner(self) -> Any:
        """The MADDPG learner, and the joint replay with the loop's counters (a resume fills them)."""
        config: MADDPGConfig = self.config.algo_config
        learner = MADDPGLearner(config, self.envs.spaces)
        spaces = self.envs.spaces
        self.buffer = JointReplay(config.buffer_size, spaces.num_agents, spaces.max_obs, learner.max_width)
        self.gradient_steps = 0
        self.reward_abs_max = 0.0  # largest |reward| stored: r_max of the guard's Q bound r_max / (1 - gamma)
        return learner

    def advance(self, stop_at_step: int | None = None) -> dict[str, Any]:
        """One round: ``num_steps`` steps of every copy into the replay, then ``gradient_steps`` updates."""
        started = time.perf_counter()
        config: MADDPGConfig = self.config.algo_config
        first_step = self.step
        self.step += config.num_steps * self.envs.num_envs
        self.updates += 1
        faults = self.guard.begin_update(first_step, self.step)  # drills: lr spike, NaN gradients, reward flip
        self.optimizer_guard.start_update(faults)
        self.collect_round(config.num_steps, faults.flip_reward, first_step)
        collected = time.perf_counter()
        history: dict[str, list[Any]] = defaultdict(list)
        if self.step >= config.learning_starts:
            context = UpdateContext(
                progress=min(self.step / self.config.run.total_steps, 1.0), lr_scale=self.guard.lr_scale(), rng=self.rng
            )
            for _ in range(config.gradient_steps):
                for key, value in self.learner.update(self.buffer.sample(config.batch_size, self.rng), context).items():
                    history[key].append(value)
                self.gradient_steps += 1
        finished = time.perf_counter()
        env_steps = self.step - first_step
        return {
            names.STEP: self.step,
            names.UPDATE: self.updates,
            **self.episodes.summary(self.agents),
            **aggregate(history),
            **(self.learner.learning_rate_metrics() if history else {}),
            "train/gradient_steps": float(self.gradient_steps),
            "replay/size": float(self.buffer.size),
            **self.q_bound(),
            names.NONFINITE_STEPS: float(self.optimizer_guard.skipped),
            names.PARAMS_FINITE: self.check_parameters(),
            (names.STEPS_PER_SECOND if history else names.WARMUP_STEPS_PER_SECOND): env_steps / (finished - started),
            "perf/rollout_seconds": collected - started,
            "perf/update_seconds": finished - collected,
            "perf/wall_seconds": self.run.elapsed_before + finished - self.run.started,
            "perf/rss_mb": resident_memory_mb(),
        }

    def collect_round(self, steps: int, flip_reward: bool, first_step: int) -> None:
        """``steps`` team steps with the exploring actors, each one's joint transition into the replay (a drilled
        reward flip stores negated rewards); an exception from the env stops the run in one line."""
        learner, envs = self.learner, self.envs
        try:
            for _ in range(steps):
                obs, active = envs.obs, envs.active
                joint = learner.joint_actions(obs, self.rng) * active[..., None]  # a finished agent acts zeros
                out = envs.step(learner.env_actions(joint))
                rewards = -out.rewards if flip_reward else out.rewards
                self.buffer.add(obs, joint, rewards, out.final_obs, out.terminated, active)
                self.reward_abs_max = max(self.reward_abs_max, float(np.abs(out.rewards).max(initial=0.0)))
                self.episodes.add(out.rewards, out.team_done)
        except PgradError:
            raise
        except Exception as exc:
            message = f"env {self.config.env.id} raised {one_line(exc)} after env step {first_step}"
            self.run.emit("run.env_failed", first_step, message, error=type(exc).__name__)
            raise TrainingHalted(message) from None

    def q_bound(self) -> dict[str, float]:
        """r_max / (1 - gamma), the guard's Q-divergence bound; absent for gamma = 1 or before a reward."""
        gamma = self.learner.config.gamma
        if gamma >= 1.0 or self.reward_abs_max <= 0.0:
            return {}
        return {names.Q_BOUND: self.reward_abs_max / (1.0 - gamma)}

    # ---- checkpoints ----------------------------------------------------------------------------------------
    def train_state(self) -> TrainState:
        """The multi-agent body's state, the joint replay and this loop's counters."""
        state = super().train_state()
        counters = {"gradient_steps": self.gradient_steps, "reward_abs_max": self.reward_abs_max}
        return dataclasses.replace(
            state, replay=self.buffer.state_arrays(), algo_state={**state.algo_state, "loop": counters}
        )

    def load(self, state: TrainState, path: Path) -> None:
        """The multi-agent body's state, then the replay and the counters."""
        super().load(state, path)
        try:
            self.buffer.load_state_arrays(state.replay)
            counters = state.algo_state["loop"]
            self.gradient_steps = int(counters["gradient_steps"])
            self.reward_abs_max = float(counters["reward_abs_max"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path} does not fit this configuration: {exc}") from None
