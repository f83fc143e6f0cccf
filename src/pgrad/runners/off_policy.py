"""The one off-policy training loop (DDPG, TD3, SAC, D4PG): act -> replay buffer -> sampled gradient steps.

Per round: ``loop.train_freq`` steps of every env (uniformly random actions in [-1, 1] until
``loop.learning_starts`` env steps, then the algorithm's exploring policy), their valid transitions into the
replay buffer, then ``loop.gradient_steps`` calls of ``algorithm.update`` on sampled batches (-1, the default:
one per env step of the round, as SB3's -1), uniform or, with ``loop.replay=prioritized``, prioritised (the
learner's TD errors come back as the rows' priorities, ``replay_feedback``). Every ``loop.log_every`` env
steps the rounds so far become one row of metrics, and that row is what the ``Guard`` judges: alerts,
evaluation, rollback, halt, checkpoint, exactly as the on-policy loop does once per update (the guard does not
know which loop runs it). Non-finite gradients are dropped at each optimizer step by the ``OptimizerGuard``
hook, as on-policy.

The run folder, logs, checkpoints and Ctrl-C belong to the ``RunContext``; checkpoints are the typed
``TrainState``, with the replay buffer in the safetensors file (``loop.save_buffer``), so a resume
continues bit for bit. Ctrl-C is honoured after the current round of updates: the row then logged is
shorter than ``loop.log_every``, so the resumed run's rows (and the guard's judgements on them) fall
at other steps than an uninterrupted run's; the learner itself continues exactly unless the guard acts
(a rollback, a lifted learning-rate cut) at one of those steps. A stop at a row boundary (a kill after
a checkpoint, ``train(stop_at_step=...)`` at a multiple of ``loop.log_every``) is exact in every respect.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from pgrad import metric_names as names
from pgrad.algos.contract import UpdateContext
from pgrad.algos.impala import behaviour_log_probs
from pgrad.algos.numpy_grad import resolved_record
from pgrad.builders import (
    Environment,
    algo_gamma,
    build_environment,
    build_off_policy_algorithm,
)
from pgrad.callbacks import CallbackError
from pgrad.checkpoint import (
    CheckpointStore,
    TrainState,
)
from pgrad.config import TrainConfig
from pgrad.envs import state as env_state
from pgrad.envs.sources import VectorEnvFactory
from pgrad.errors import ConfigError, PgradError
from pgrad.monitor.guard import Action, Event
from pgrad.monitor.recovery import (
    TrajectoryRecorder,
    parameters_finite,
)
from pgrad.monitor.sinks import JsonlSink, MetricSink
from pgrad.nets import Actor
from pgrad.registry import get_algorithm
from pgrad.replay import PRIORITY_KEY, PrioritizedReplayBuffer, ReplayBuffer, TransitionBatch, make_replay_buffer
from pgrad.rollout import Rollout, RolloutCollector
from pgrad.runners import synchronous, trunk
from pgrad.runners.context import TrainResult, resident_memory_mb
from pgrad.sequence_replay import SequenceBatch, SequenceReplay


@runtime_checkable
class LiveActing(Protocol):
    """An algorithm whose exploring policy can act on views of its live parameters (SAC, TD3, DDPG on the CPU)."""

    def live_acting_policy(self) -> Actor | None:
        """The exploring policy on views of the current parameters, or None where it cannot be live."""


class UniformActor:
    """Actions drawn uniformly from [-1, 1] (the rescaled action box) before ``learning_starts``."""

    warmup = True  # APE-X's actors act with it, not their own policy, while the loop warms up (pgrad.runners.apex)

    def __init__(self, action_dim: int) -> None:
        self.action_dim = action_dim

    def sample(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Uniform actions in [-1, 1], one row per observation."""
        return rng.uniform(-1.0, 1.0, (obs.shape[0], self.action_dim)).astype(np.float32)

    def mode(self, obs: np.ndarray) -> np.ndarray:
        """Zeros, the centre of the action box (the uniform distribution has no mode)."""
        return np.zeros((obs.shape[0], self.action_dim), np.float32)

    def log_prob(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """log mu(a|s) = -|A| log 2 per row, the density of the uniform draw on [-1, 1]^|A| (a Retrace learner's
        behaviour log-probabilities during the warm-up)."""
        return np.full(obs.shape[0], -self.action_dim * np.log(2.0))


def aggregate(history: dict[str, list[Any]]) -> dict[str, float]:
    """One value per metric over the gradient steps of a log row: ``*/min`` the minimum, ``*/max`` the
    maximum, everything else the mean (tensors go to the host once per key)."""
    out = {}
    for key, values in history.items():
        array = torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in values]).cpu().numpy()
        if key.endswith("/min"):
            out[key] = float(array.min())
        elif key.endswith("/max"):
            out[key] = float(array.max())
        else:
            out[key] = float(array.astype(np.float64).mean())
    return out


class OffPolicyRunner:
    """The off-policy loop (DDPG, TD3, SAC): act, store in the replay buffer, sampled gradient steps."""

    def __init__(
        self,
        config: TrainConfig,
        run_dir: Path,
        resume: bool = False,
        console: bool = True,
        overwrite: bool = False,
        env_factory: VectorEnvFactory | None = None,
    ) -> None:
        """``env_factory``: an env handed over as a Python object (``pgrad.api``), used for the training and
        the evaluation envs instead of ``config.env.id``."""
        kind = get_algorithm(config.algo).kind
        if kind != "off_policy":
            raise ConfigError(
                f"algorithm '{config.algo}' needs the {kind} runner, not the off-policy loop; "
                f"'pgrad train {config.algo}' picks it (pgrad.runners.runner_for)"
            )
        apex = getattr(config.algo_config, "apex", None)  # APE-X's actors (pgrad.runners.apex), or None
        if config.run.backend == "ray" and apex is None:
            raise ConfigError(
                f"run.backend 'ray' runs off-policy learners as APE-X: 'pgrad train apex_{config.algo} --backend ray' "
                f"(apex_td3, apex_ddpg, apex_d4pg); {config.algo} collects in this process (run.backend 'local')"
            )
        self.config = config
        self.run = trunk.begin_run(config, run_dir, resume, overwrite, env_object=env_factory is not None)
        self.run_dir = self.run.run_dir
        self.env_factory = env_factory
        self.env = build_environment(config, algo_gamma(config), env_factory=env_factory)
        try:
            self.algo = build_off_policy_algorithm(config, self.env.adapter)
        except PgradError:
            self.env.envs.close()
            raise
        self.loop = self.algo.loop
        self.device = torch.device(config.run.device)
        self.collector: RolloutCollector | Any
        if apex is not None:  # the actors' blocks, with their priorities, instead of this process's env
            from pgrad.runners.apex import apex_environment

            self.env, self.collector = apex_environment(
                config,
                self.env,
                self.algo,  # type: ignore[arg-type]
                self.learner_version,
                self.emit_event,
                env_factory is not None,
            )
        else:
            self.collector = RolloutCollector(
                self.env.envs,
                self.env.adapter,
                self.env.obs_normalizer,
                self.env.reward_scaler,
                config.run.episode_window,
                getattr(self.algo, "state_size", 0),  # a recurrent policy's state, carried by the collector
            )
        self.rng = np.random.default_rng(config.run.seed)
        synchronous.first_reset(self)
        action_dim = self.env.adapter.action.size
        # recurrent SAC replays sequences with their stored states (pgrad.sequence_replay); a learner with an
        # ``n_step`` (D4PG) samples n-step windows; the rest one-step transitions (uniform or prioritized)
        make_replay = getattr(self.algo, "make_replay", None)
        n_step = int(getattr(self.algo, "n_step", 1))
        self.buffer: ReplayBuffer | SequenceReplay = (
            make_replay_buffer(self.loop, self.env.adapter.obs_dim, action_dim, n_step, self.algo.gamma)
            if make_replay is None
            else make_replay(self.env.envs.num_envs, self.env.adapter.obs_dim)
        )
        self.random_actor = UniformActor(action_dim)
        self.step = 0
        self.updates = 0  # gradient steps
        self.rows = 0  # log rows: what the guard counts as updates
        self.refill_target = 1  # transitions the buffer must hold before updates (more after a resume without it)
        self.reward_abs_max = 0.0  # largest |reward| stored: r_max of the guard's Q bound r_max / (1 - gamma)
        self.guard, self.optimizer_guard, self.healthy_states = trunk.guard_parts(
            config, self.run_dir, list(self.algo.optimizers().values())
        )
        self.recorder = TrajectoryRecorder(self.env.envs.num_envs, config.guard.dump_episodes)
        self.eval_env: Environment | None = None
        self.last_batch: TransitionBatch | SequenceBatch | None = None
        self.params_finite = 1.0
        self.randomization_log: JsonlSink | None = None  # opened at the first draws (env.randomize on)
        self.run.resolved = resolved_record(self.algo)
        self.inexact = env_state.inexact_reason(self.env.envs)
        label = f"{config.algo} {config.env.id}"
        if not trunk.open_or_resume(self.run, console, label, self.load, self.close):
            self.run.emit("replay.allocated", 0, self.buffer.describe(), bytes=self.buffer.nbytes)
        if self.inexact is not None:
            self.run.warn(
                "warning.resume_inexact", self.step, f"resume will not be exact for {config.env.id}: {self.inexact}"
            )

    # ---- what tests, benchmarks and the CLI reach through the runner -------------------------
    # what the CLI, callbacks, tests and benchmarks reach through the runner: the run context's
    stop_requested: trunk.RunAttribute[bool] = trunk.RunAttribute("stop_requested")
    sinks: trunk.RunAttribute[list[MetricSink]] = trunk.RunAttribute("sinks")
    store: trunk.RunAttribute[CheckpointStore] = trunk.RunAttribute("store")

    # ---- checkpoints ----------------------------------------------------------------------
    def train_state(self) -> TrainState:
        """The loop as a ``TrainState``: the algorithm's extra state, the loop's counters, and the replay buffer when
        ``save_buffer`` is set."""
        replay = self.buffer.state_arrays() if self.loop.save_buffer else {}
        return synchronous.capture(self, {**self.algo.extra_state(), "loop": self.own_counters()}, replay)

    def own_counters(self) -> dict[str, Any]:
        """The loop's own counters (JSON, under ``algo_state["loop"]``)."""
        return {"rows": self.rows, "refill_target": self.refill_target, "reward_abs_max": self.reward_abs_max}

    def save_checkpoint(self, score: float | None, healthy: bool = True) -> Path:
        """Writes the current ``train_state`` as a checkpoint with its score and health mark; returns its path."""
        return self.run.save_checkpoint(self.train_state(), score, healthy)

    def load(self, state: TrainState, path: Path) -> None:
        """Resume from the run's latest checkpoint: learner, replay buffer, envs, RNG, guard, exactly."""
        learner_state = {k: v for k, v in state.algo_state.items() if k != "loop"}
        synchronous.restore(self, state, path, learner_state, self.restore_own)
        if not state.replay:
            self.refill_target = min(max(self.loop.learning_starts, self.loop.batch_size), self.buffer.capacity)
            self.run.warn(
                "run.replay_refill",
                self.step,
                f"{path.name} holds no replay buffer (loop.save_buffer was false): refilling it with the current "
                f"policy, no updates until it holds {self.refill_target} transitions; this resume is not exact",
            )

    def restore_own(self, state: TrainState) -> None:
        """This loop's counters and, when the checkpoint holds it, the replay buffer."""
        own = dict(state.algo_state.get("loop") or {})
        self.rows = int(own.get("rows", 0))
        self.reward_abs_max = float(own.get("reward_abs_max", 0.0))
        if state.replay:
            self.buffer.load_state_arrays(state.replay)
            self.refill_target = int(own.get("refill_target", 1))

    # ---- shared with the other synchronous loop (pgrad.runners.synchronous) ----------------------
    restart_episodes = synchronous.restart_episodes
    log_events = synchronous.log_events
    roll_back = synchronous.roll_back
    evaluate = synchronous.evaluate
    env_failed = synchronous.env_failed
    log_randomize_draws = synchronous.log_randomize_draws
    close = synchronous.close

    # ---- the body the trunk's loop drives (pgrad.runners.trunk) ---------------------------------
    take_events = synchronous.take_events
    snapshot = synchronous.snapshot
    final_score = synchronous.final_score
    halt = synchronous.halt

    def before_loop(self) -> None:
        """Say that the first steps are a warm-up: random actions, no updates, several times faster than
        learning, so the steps/s and the time left of those rows say nothing about the rest of the run."""
        starts = self.loop.learning_starts
        if self.step < starts:
            message = (
                f"random actions until step {starts:,} (loop.learning_starts), then learning; steps/s shows warm-up"
            )
            self.log_events([Event("run.warmup", message, data={"learning_starts": starts})])

    def advance(self, stop_at_step: int | None = None) -> dict[str, Any]:
        """The Body protocol: one log row of env steps and gradient steps; its metrics."""
        return self.train_one_row(stop_at_step)

    def judge(self, metrics: dict[str, Any]) -> list[Action]:
        """The Body protocol: the guard's rules and decision over this log row (the guard counts rows as updates)."""
        return synchronous.judge(self, metrics, self.rows)

    # ---- the loop ---------------------------------------------------------------------------
    def warmup_policy(self) -> Any:
        """Uniform actions before ``learning_starts``; a recurrent learner's carries its hidden state on."""
        warmup = getattr(self.algo, "warmup_policy", None)
        return self.random_actor if warmup is None else warmup()

    def row_end(self) -> int:
        """The env step the current log row ends at: the next multiple of ``loop.log_every``, or the total."""
        every = self.loop.log_every
        return min((self.step // every + 1) * every, self.config.run.total_steps)

    def collect(self, policy: Actor) -> Rollout:
        """``loop.train_freq`` steps of every env with ``policy``; for a learner that replays behaviour
        log-probabilities (SAC's Retrace target) with log mu(a_t|s_t) attached, computed by the policy that acted
        right after it acted (no update falls inside a collect, so these are the acting weights)."""
        try:
            rollout = self.collector.collect(policy, self.rng, self.loop.train_freq)
        except CallbackError:
            raise  # a callback's failure during the steps, not the env's
        except Exception as exc:
            raise self.env_failed(exc, "while collecting") from None
        if getattr(self.algo, "replays_behaviour", False):
            rollout = replace(rollout, behaviour_log_probs=behaviour_log_probs(policy, rollout))
        return rollout

    def train_one_row(self, stop_at_step: int | None = None) -> dict[str, Any]:
        """Rounds of collect -> store -> update up to the end of this log row; its metrics."""
        loop, num_envs = self.loop, self.env.envs.num_envs
        started = time.perf_counter()
        first_step, end = self.step, self.row_end()
        if stop_at_step is not None:
            end = min(end, max(stop_at_step, self.step + 1))
        faults = self.guard.begin_update(first_step, end)  # drills: lr spike, NaN gradients, reward flip
        self.optimizer_guard.start_update(faults)
        env_seconds_before = self.collector.env_seconds
        update_seconds = 0.0
        history: dict[str, list[Any]] = defaultdict(list)
        steps_before = self.updates
        # built once per row: a policy on views of the actor's weights needs no copy per env step (None: rebuilt
        # each round); nothing swaps the learner's parameters within a row (rollback and resume fall between rows)
        live = self.algo.live_acting_policy() if isinstance(self.algo, LiveActing) else None
        while self.step < end and not self.run.stop_requested:
            if self.step < loop.learning_starts:
                policy: Actor = self.warmup_policy()
            else:
                policy = live if live is not None else self.algo.acting_policy()
            rollout = self.collect(policy)
            if faults.flip_reward:
                np.negative(rollout.rewards, out=rollout.rewards)
            self.step += rollout.num_steps * num_envs
            self.store_round(rollout)
            # as SB3: random actions while step < learning_starts, updates once step > learning_starts
            if self.step <= loop.learning_starts or self.buffer.size < self.refill_target:
                continue
            self.refill_target = 1
            update_started = time.perf_counter()
            context = UpdateContext(
                progress=min(self.step / self.config.run.total_steps, 1.0), lr_scale=self.guard.lr_scale(), rng=self.rng
            )
            if isinstance(self.buffer, PrioritizedReplayBuffer):
                self.buffer.set_progress(context.progress)  # beta annealed toward 1
            round_updates = loop.gradient_steps if loop.gradient_steps > 0 else rollout.num_steps * num_envs
            for _ in range(round_updates):
                batch = self.buffer.sample(loop.batch_size, self.rng, self.device)
                for key, value in self.replay_feedback(batch, self.algo.update(batch, context)).items():
                    history[key].append(value)
                self.updates += 1
                self.last_batch = batch
            update_seconds += time.perf_counter() - update_started
        finished = time.perf_counter()
        env_steps = self.step - first_step
        gradient_steps = self.updates - steps_before
        self.rows += 1
        metrics: dict[str, Any] = {
            names.STEP: self.step,
            names.UPDATE: self.rows,
            **self.collector.episodes.summary(),
            **self.log_randomize_draws(),
            **aggregate(history),
            **(self.algo.learning_rate_metrics() if gradient_steps else {}),
            "train/gradient_steps": float(self.updates),
            "train/update_to_data": gradient_steps / max(env_steps, 1),
            "replay/size": float(self.buffer.size),
            "replay/fill": self.buffer.size / self.buffer.capacity,
            **self.q_bound(),
            names.NONFINITE_STEPS: float(self.optimizer_guard.skipped),
            names.PARAMS_FINITE: self.check_parameters(),
            # a row without an update (the warm-up, a refill after resume) is a different, faster rate: it gets its
            # own name so that neither the console nor the guard's slow-down rule compares learning against it
            (names.STEPS_PER_SECOND if gradient_steps else names.WARMUP_STEPS_PER_SECOND): env_steps
            / max(finished - started, 1e-9),
            "perf/env_seconds": self.collector.env_seconds - env_seconds_before,
            "perf/update_seconds": update_seconds,
            "perf/wall_seconds": self.run.elapsed_before + finished - self.run.started,
            "perf/rss_mb": resident_memory_mb(),
            **self.collector_metrics(gradient_steps, finished - started),
        }
        return metrics

    def store_round(self, rollout: Rollout) -> None:
        """A round's valid steps into the replay (APE-X: the actor's block at the priorities it computed), the
        largest |reward| so far, and the trajectory recorder."""
        self.algo.end_episodes(((rollout.terminated | rollout.truncated) & rollout.valid).any(axis=0))
        add_to_replay = getattr(self.collector, "add_to_replay", None)
        if add_to_replay is None:
            self.buffer.add_rollout(rollout)
        else:
            add_to_replay(self.buffer, rollout)
        self.reward_abs_max = max(self.reward_abs_max, float(np.abs(rollout.rewards[rollout.valid]).max(initial=0.0)))
        self.recorder.add(rollout)

    def learner_version(self) -> int:
        """The learner's gradient steps so far: the version of the weights an APE-X actor copies now."""
        return self.updates

    def emit_event(self, kind: str, message: str, **data: Any) -> None:
        """An event in the run's log at the current step (what the APE-X actors' group reports)."""
        self.run.emit(kind, self.step, message, **data)

    def collector_metrics(self, gradient_steps: int, seconds: float) -> dict[str, float]:
        """The collector's own metrics of this row (APE-X: actor and learner throughput, weight lag, priorities)."""
        row_metrics = getattr(self.collector, "row_metrics", None)
        return {} if row_metrics is None else dict(row_metrics(self.buffer, gradient_steps, seconds))

    def replay_feedback(self, batch: TransitionBatch | SequenceBatch, metrics: dict[str, Any]) -> dict[str, Any]:
        """Prioritised replay: the learner's new |TD errors| of ``batch`` become its rows' priorities; the
        metrics without them, plus beta and the batch's smallest importance weight."""
        errors = metrics.pop(PRIORITY_KEY, None)
        if not isinstance(batch, TransitionBatch) or not isinstance(self.buffer, PrioritizedReplayBuffer):
            return metrics
        if errors is None or batch.indices is None:
            return metrics
        self.buffer.update_priorities(batch.indices, torch.as_tensor(errors).detach().cpu().numpy())
        assert batch.weights is not None
        return {**metrics, "replay/beta": self.buffer.beta, "replay/weight/min": batch.weights.min()}

    def q_bound(self) -> dict[str, float]:
        """r_max / (1 - gamma): no discounted return of rewards bounded by r_max exceeds it (the guard's
        Q-divergence rule); absent for gamma = 1 or before a reward was stored."""
        gamma = self.algo.gamma
        if gamma >= 1.0 or self.reward_abs_max <= 0.0:
            return {}
        return {names.Q_BOUND: self.reward_abs_max / (1.0 - gamma)}

    def check_parameters(self) -> float:
        """1.0 while every parameter is finite (one reduction per log row, or after a skipped step)."""
        if self.config.guard.enabled:
            self.params_finite = float(parameters_finite(self.algo.modules()))
        return self.params_finite

    def train(self, stop_at_step: int | None = None) -> TrainResult:
        """Train to ``run.total_steps`` (or stop early at ``stop_at_step``, as a kill would)."""
        return trunk.train_loop(self, stop_at_step)
