"""Rollout workers on Ray: the only pgrad module that imports ``ray`` (``pgrad[ray]``).

Each worker is a Ray actor (``RolloutWorker``) with its own vector env of ``env.num_envs`` copies, its own
``RolloutCollector`` and the acting-only policy it is sent (NumPy, as in a local run). The learner, the
run folder, the checkpoints and the guard stay in the training process; the on-policy runner only swaps
its collector for one of the two below, which answer the same calls as ``RolloutCollector``:

- ``RayCollector`` (synchronous, every on-policy algorithm): each update sends the current policy to
  every worker, gathers one rollout from each and concatenates them along the env axis, so the learner
  sees one batch of ``workers x env.num_envs`` columns and the math is unchanged. Worker i resets its envs
  with ``run.seed + i x env.num_envs``: the workers' envs are seeded as one local vector env of
  ``workers x num_envs`` copies. Worker 0 samples its actions from the run's own RNG (its state travels
  with the call and comes back), the others from their own streams; so with one worker a run is the
  local run, bit for bit.
- ``ImpalaCollector`` (asynchronous, IMPALA): every worker always has ``queue`` rollouts requested; the
  learner takes whichever finishes first and asks that worker for the next one with the newest weights,
  so workers keep acting with slightly stale weights while the learner learns. Each rollout carries the
  behaviour log-probabilities log mu(a|s) and the weights' version; V-trace corrects the lag.

Fault tolerance (``WorkerGroup``): every remote call has a deadline (``ray.call_timeout_s``). A worker that
dies (SIGKILL, OOM, a node lost), raises or overruns is killed, replaced by a fresh actor re-seeded from
(run.seed, worker, generation), its partial rollout dropped and a ``ray.worker_replaced`` event logged;
the synchronous round then asks the new worker again. After ``ray.max_worker_restarts`` replacements the
next failure raises ``WorkersLost``: the runner writes a checkpoint and stops.

Observation and reward normaliser statistics live in the learner (checkpointed, frozen at evaluation): they
go out with each request and each worker's increment (Chan et al.'s parallel moments) comes back and is
added to them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

import pgrad
from pgrad.algos.impala import behaviour_log_probs
from pgrad.builders import Environment, build_environment, one_line
from pgrad.config import TrainConfig
from pgrad.envs import state as env_state
from pgrad.envs.factory import SpaceAdapter
from pgrad.envs.normalize import ObsNormalizer, RewardScaler, RunningMeanStd
from pgrad.errors import ConfigError, PgradError, WorkersLost
from pgrad.nets import ActingPolicy
from pgrad.rollout import EpisodeStats, Rollout, RolloutCollector
from pgrad.threads import set_threads

# The worker's own episode statistics are emptied after every request, so they never drop one.
_UNBOUNDED_WINDOW = 2**31
# A fresh worker's first answer also waits for its process to start and import torch, Gymnasium and pgrad
# (seconds on a loaded machine): the deadline of that call is at least this.
STARTUP_SECONDS = 120.0


def require_ray() -> Any:
    """The ``ray`` module, or a one-line error naming the extra that brings it."""
    try:
        import ray
    except ImportError:
        raise PgradError("run.backend 'ray' needs Ray: pip install 'pgrad[ray]' (ray==2.60.*)") from None
    return ray


# ---- the worker (a Ray actor) ------------------------------------------------------------------------------


@dataclass
class WorkerResult:
    """What one request returns: the rollout and everything the learner keeps of the worker's side."""

    rollout: Rollout
    rng_state: dict[str, Any]  # the sampling generator after the rollout
    normalizers: dict[str, dict[str, np.ndarray]]  # the worker's normaliser statistics after the rollout
    episodes: list[tuple[float, int]]  # (return, length) of the episodes that ended, in order
    draws: list[dict[str, Any]]  # domain randomisation draws, env index local to the worker
    env_seconds: float
    collect_seconds: float  # the worker's wall time for the rollout


class RolloutWorker:
    """A vector env, a collector and a sampling generator, in a Ray actor (``ray.remote`` is applied at start)."""

    def __init__(self, config: TrainConfig, gamma: float, seed: int, state_size: int = 0) -> None:
        """``state_size``: the width of a recurrent policy's state per env (0: feed-forward); the worker's collector
        carries it across rollouts and stores it with each one."""
        set_threads(1)
        logging.getLogger("ray").setLevel(logging.WARNING)
        self.env = build_environment(config, gamma)
        self.collector = RolloutCollector(
            self.env.envs,
            self.env.adapter,
            self.env.obs_normalizer,
            self.env.reward_scaler,
            _UNBOUNDED_WINDOW,
            state_size,
        )
        self.rng = np.random.default_rng(seed)  # replaced by the learner's state when it sends one

    def pid(self) -> int:
        """The worker process's id."""
        return os.getpid()

    def node_id(self) -> str:
        """The id of the Ray node this worker runs on."""
        import ray

        return str(ray.get_runtime_context().get_node_id())

    def inexact_reason(self) -> str | None:
        """Why this worker's envs' state cannot be saved, or None when it can."""
        return env_state.inexact_reason(self.env.envs)

    def reset(self, seed: int, normalizers: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
        """Fresh episodes seeded with ``seed``; returns the normaliser statistics with the first observations."""
        self.collector.load_normalizer_state(normalizers)
        self.collector.reset(seed)
        self.collector.reward_scaler.running_return[:] = 0.0
        return self.collector.normalizer_state()

    def collect(
        self,
        policy: ActingPolicy,
        rng_state: dict[str, Any] | None,
        normalizers: dict[str, dict[str, np.ndarray]],
        num_steps: int,
        episodes: int | None,
        behaviour: bool,
    ) -> WorkerResult:
        """``num_steps`` steps of every env (or ``episodes`` whole episodes); ``behaviour``: record log mu(a|s)."""
        started = time.perf_counter()
        if rng_state is not None:
            self.rng.bit_generator.state = rng_state
        collector = self.collector
        collector.load_normalizer_state(normalizers)
        env_seconds = collector.env_seconds
        if episodes is not None:
            rollout = collector.collect_episodes(policy, self.rng, episodes)
        else:
            rollout = collector.collect(policy, self.rng, num_steps)
        if behaviour:  # log mu(a|s), replayed from the stored state for a recurrent policy
            rollout = replace(rollout, behaviour_log_probs=behaviour_log_probs(policy, rollout))
        finished = list(zip(collector.episodes.returns, collector.episodes.lengths, strict=True))
        collector.episodes.returns.clear()
        collector.episodes.lengths.clear()
        return WorkerResult(
            rollout=rollout,
            rng_state=dict(self.rng.bit_generator.state),
            normalizers=collector.normalizer_state(),
            episodes=finished,
            draws=collector.take_randomize_draws(),
            env_seconds=collector.env_seconds - env_seconds,
            collect_seconds=time.perf_counter() - started,
        )

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any] | None]:
        """The collector's arrays and the envs' own state (None when it cannot be saved)."""
        arrays = {name: np.array(value) for name, value in self.collector.state_arrays().items()}
        reason = env_state.inexact_reason(self.env.envs)
        return arrays, None if reason is not None else env_state.capture(self.env.envs)

    def load_state(self, arrays: dict[str, np.ndarray] | None, envs: dict[str, Any] | None) -> None:
        """Restores the collector's env-side arrays and/or the envs' state, whichever is given."""
        if arrays is not None:
            self.collector.load_state_arrays(arrays)
        if envs is not None:
            env_state.restore(self.env.envs, envs)


# ---- starting Ray and the group of workers ----------------------------------------------------------------


class _NotMainThreadNote(logging.Filter):
    """Drops Ray's warning that ``init`` outside the main thread sets no SIGTERM handler: pgrad handles SIGTERM
    itself while it trains (``RunContext.stop_signals``), so that is intended, not news for the user."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("SIGTERM handler is not set")


def init_within(ray: Any, seconds: float, options: dict[str, Any]) -> threading.Event:
    """``ray.init(**options)``, waited for at most ``seconds``: ``TimeoutError`` after that, and Ctrl-C
    (``KeyboardInterrupt``) at any time; whatever ``ray.init`` raises is raised here. Returns the event that
    lets the init thread end: set it after ``ray.shutdown()``.

    Joining an address where nothing answers blocks inside Ray's C++ client for minutes, and Python code
    (its Ctrl-C handler included) does not run in that thread until it returns. So ``init`` runs in a
    daemon thread and this one waits in short slices, where signals arrive as usual. A timed-out ``init``
    is left behind in its thread (Ray offers no way to cancel it); the CLI exits, and a Python session that
    wants Ray again is best restarted.

    The thread then stays parked until the event is set: a local Ray's GCS and raylet are started from it with
    ``PR_SET_PDEATHSIG``, which Linux fires when the *thread* that started a child ends, not the process, so an
    init thread that returned would take the Ray it just started down with it (the driver then aborted after 60 s
    with "Failed to connect to GCS")."""
    failure: list[BaseException] = []
    started, release = threading.Event(), threading.Event()

    def start() -> None:
        try:
            ray.init(**options)
        except BaseException as exc:  # handed to the waiting thread, raised there
            failure.append(exc)
            return
        started.set()
        release.wait()  # keep Ray's child processes' parent thread alive until the session closes

    note = _NotMainThreadNote()
    worker_logger = logging.getLogger("ray._private.worker")
    worker_logger.addFilter(note)
    thread = threading.Thread(target=start, name="pgrad-ray-init", daemon=True)
    try:
        thread.start()
        deadline = time.monotonic() + seconds
        while thread.is_alive() and not started.is_set() and time.monotonic() < deadline:
            thread.join(0.1)
    finally:
        worker_logger.removeFilter(note)
    if failure:
        raise failure[0]
    if not started.is_set():
        raise TimeoutError(f"ray.init did not return within {seconds:g} s")
    return release


class RaySession:
    """Ray for one run: join ``ray.address``, or start a local Ray sized for the workers (no dashboard), or use the
    Ray this process already runs (a notebook, a test); ``close`` undoes only what ``open`` did."""

    def __init__(self, config: TrainConfig) -> None:
        self.ray = require_ray()
        self.started = False
        self.release: threading.Event | None = None
        if self.ray.is_initialized():
            return
        settings = config.ray
        # Workers import pgrad from where this process does (an editable checkout, a PYTHONPATH).
        source = str(Path(pgrad.__file__).resolve().parent.parent)
        pythonpath = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH", "")) if p)
        runtime_env = {"env_vars": {"PYTHONPATH": pythonpath}}
        options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING, "runtime_env": runtime_env}
        if settings.address is not None:
            options["address"] = settings.address
        else:
            options["num_cpus"] = settings.num_cpus or max(1, int(np.ceil(settings.workers * settings.worker_cpus)))
            options["include_dashboard"] = False
            # A Ray this run starts serves this machine only: its processes listen on the loopback, not on the
            # machine's network address (where a firewalled or sandboxed host drops the driver's own connection
            # to its GCS, and which would expose the ports to the network)
            options["_node_ip_address"] = "127.0.0.1"
        where = f"join the Ray cluster at ray.address {settings.address}" if settings.address else "start Ray"
        try:
            self.release = init_within(self.ray, settings.connect_timeout_s, options)
        except TimeoutError:
            raise ConfigError(
                f"could not {where} within ray.connect_timeout_s={settings.connect_timeout_s:g} s (nothing "
                "answered); check the address, or raise ray.connect_timeout_s"
            ) from None
        except Exception as exc:
            raise ConfigError(f"could not {where}: {one_line(exc)}") from None
        self.started = True

    def close(self) -> None:
        """Shuts Ray down if ``open`` started it; a Ray it joined or found stays up."""
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()
        if self.release is not None:
            self.release.set()  # the init thread may end now (pgrad.runners.ray_backend.init_within)
        self.started = False


class WorkerGroup:
    """``ray.workers`` rollout actors, their deadlines and their replacement."""

    def __init__(
        self,
        config: TrainConfig,
        gamma: float,
        session: RaySession,
        on_event: Any = None,
        state_size: int = 0,
        worker_class: type = RolloutWorker,
    ) -> None:
        """``state_size``: a recurrent policy's state width, handed to every worker's collector (0: feed-forward);
        ``worker_class``: the actor class, built as (config, gamma, seed, state_size) (APE-X's ``ApexActor``)."""
        self.config = config
        self.gamma = gamma
        self.state_size = state_size
        self.ray = session.ray
        self.session = session
        self.timeout = config.ray.call_timeout_s
        self.actor_class = self.ray.remote(num_cpus=config.ray.worker_cpus, max_restarts=0)(worker_class)
        self.generations = [0] * config.ray.workers
        self.restarts = 0
        # the runner points this at its event log: (kind, message, data) -> None
        self.on_event = on_event or (lambda kind, message, **data: None)
        self.handles = [self._spawn(index) for index in range(config.ray.workers)]

    @property
    def size(self) -> int:
        """The number of worker actors."""
        return len(self.handles)

    def seed_for(self, index: int) -> int:
        """Worker ``index``'s env seed: run.seed + index x num_envs first (one local vector env's seeds), then a
        fresh seed from (run.seed, index, generation) for each replacement, so a new worker repeats nothing."""
        config = self.config
        if self.generations[index] == 0:
            return config.run.seed + index * config.env.num_envs
        sequence = np.random.SeedSequence([config.run.seed, index, self.generations[index]])
        return int(sequence.generate_state(1)[0])

    def _spawn(self, index: int) -> Any:
        return self.actor_class.remote(self.config, self.gamma, self.seed_for(index), self.state_size)

    def get(self, ref: Any, what: str, starting: bool = False) -> Any:
        """``ray.get`` with the deadline; any failure is a ``WorkerFailed`` naming what was asked. ``starting``: the
        first call to a fresh worker, which waits for its process to start and import pgrad too (at least
        ``STARTUP_SECONDS``)."""
        timeout = max(self.timeout, STARTUP_SECONDS) if starting else self.timeout
        try:
            return self.ray.get(ref, timeout=timeout)
        except self.ray.exceptions.GetTimeoutError:
            setting = f"ray.call_timeout_s={self.timeout:g}" if timeout == self.timeout else "the start-up allowance"
            raise WorkerFailed(f"{what} took longer than {setting} ({timeout:g} s)") from None
        except self.ray.exceptions.RayActorError as exc:
            raise WorkerFailed(f"the worker died during {what} ({type(exc).__name__})") from None
        except self.ray.exceptions.RayTaskError as exc:
            raise WorkerFailed(f"{what} raised {one_line(exc.as_instanceof_cause())}") from None
        except self.ray.exceptions.RayError as exc:  # the rollout's object lost with its node, its owner gone, ...
            raise WorkerFailed(f"{what} failed in Ray: {one_line(exc)}") from None

    def call_all(self, method: str, *args: Any) -> list[Any]:
        """The same call on every worker, waited for together; a failure is not retried (state transfers)."""
        refs = [getattr(handle, method).remote(*args) for handle in self.handles]
        return [self.get(ref, f"{method} on worker {index}") for index, ref in enumerate(refs)]

    def replace_worker(self, index: int, reason: str) -> WorkersLost | None:
        """Kill worker ``index`` (whatever state it is in), start a fresh one re-seeded and log it. Past the cap the
        fresh worker is started all the same (so the run's state can still be saved) and the ``WorkersLost`` to
        raise once it is reset is returned."""
        self.ray.kill(self.handles[index], no_restart=True)
        self.generations[index] += 1
        self.restarts += 1
        self.handles[index] = self._spawn(index)
        cap = self.config.ray.max_worker_restarts
        if self.restarts > cap:
            return WorkersLost(
                f"ray worker {index} failed ({reason}); that is {self.restarts} worker failures, more than "
                f"ray.max_worker_restarts={cap}"
            )
        self.on_event(
            "ray.worker_replaced",
            f"ray worker {index} failed ({reason}); replaced by a fresh worker seeded {self.seed_for(index)}, "
            f"its partial rollout dropped ({self.restarts}/{cap} replacements used)",
            worker=index,
            reason=reason,
            seed=self.seed_for(index),
            restarts=self.restarts,
        )
        return None

    def pids(self) -> list[int]:
        """Each worker's process id."""
        return [int(pid) for pid in self.call_all("pid")]

    def node_ids(self) -> list[str]:
        """Each worker's Ray node id."""
        return [str(node) for node in self.call_all("node_id")]

    def close(self) -> None:
        """Kills every worker actor (ignoring ones already gone) and closes the Ray session."""
        for handle in self.handles:
            try:
                self.ray.kill(handle, no_restart=True)
            except Exception:  # already gone with its node, or Ray shut down
                pass
        self.handles = []
        self.session.close()


class WorkerFailed(Exception):
    """One worker did not answer in time, died or raised (internal to this module: it is replaced)."""


# ---- normaliser statistics across workers -------------------------------------------------------------------


def _moments(state: dict[str, np.ndarray]) -> tuple[float, np.ndarray, np.ndarray]:
    return float(np.asarray(state["count"]).reshape(-1)[0]), np.asarray(state["mean"]), np.asarray(state["var"])


def add_increment(
    current: dict[str, np.ndarray], start: dict[str, np.ndarray], end: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """``current`` plus what a worker added to ``start`` to reach ``end`` (running mean/var statistics).

    A worker's statistics after its rollout are ``start`` merged with the rows it saw, so those rows'
    moments follow from the parallel formula (Chan et al.) run backwards:
        n_d = n_end - n_start,  mean_d = (n_end mean_end - n_start mean_start) / n_d
        M2_d = n_end var_end - n_start var_start - (mean_d - mean_start)^2 n_start n_d / n_end
    and are merged into ``current`` forwards. With ``current == start`` the result is ``end``."""
    n_start, mean_start, var_start = _moments(start)
    n_end, mean_end, var_end = _moments(end)
    n_d = n_end - n_start
    if n_d <= 0:
        return current
    if all(np.array_equal(np.asarray(current[k]), np.asarray(start[k])) for k in ("count", "mean", "var")):
        return end  # nothing else arrived in between: exactly the worker's statistics
    mean_d = (n_end * mean_end - n_start * mean_start) / n_d
    m2_d = n_end * var_end - n_start * var_start - (mean_d - mean_start) ** 2 * n_start * n_d / n_end
    stats = RunningMeanStd(np.shape(mean_d))
    stats.load(current)
    delta = mean_d - stats.mean
    total = stats.count + n_d
    merged_mean = stats.mean + delta * n_d / total
    merged_m2 = stats.var * stats.count + np.maximum(m2_d, 0.0) + delta**2 * stats.count * n_d / total
    return {"mean": merged_mean, "var": merged_m2 / total, "count": np.array(total, np.float64)}


# ---- what the learner process keeps ------------------------------------------------------------------------


class RemoteEnvs:
    """Stands where a local run keeps its vector env (``Environment.envs``): the env count, closing, and the
    envs' state for checkpoints (``pgrad.envs.state`` asks through the ``*_remote_*`` methods)."""

    def __init__(self, collector: RayCollector | ImpalaCollector, num_envs: int) -> None:
        self.collector = collector
        self.num_envs = num_envs

    def inexact_remote_reason(self) -> str | None:
        """Why the workers' envs' state cannot be saved, or None; asked by ``pgrad.envs.state``."""
        return self.collector.inexact_reason()

    def capture_remote_state(self) -> dict[str, Any] | None:
        """The workers' envs' state for a checkpoint, or None when it cannot be saved."""
        return self.collector.capture_env_state()

    def restore_remote_state(self, state: dict[str, Any]) -> None:
        """Restores the workers' envs from a checkpoint's state."""
        self.collector.restore_env_state(state)

    def close(self) -> None:
        """Closes the collector (and with it the workers)."""
        self.collector.close()


class LearnerSide:
    """What both Ray collectors keep in the learner: normalisers, episode statistics, draws, env time."""

    def __init__(self, config: TrainConfig, adapter: SpaceAdapter, gamma: float, group: WorkerGroup) -> None:
        self.config = config
        self.adapter = adapter
        self.group = group
        env = config.env
        self.obs_normalizer = ObsNormalizer((adapter.obs_dim,), env.clip_obs, env.norm_obs, mask=adapter.normalized())
        # the running discounted returns live in the workers; this one holds the shared statistics
        self.reward_scaler = RewardScaler(env.num_envs * group.size, gamma, env.clip_reward, env.norm_reward)
        self.episodes = EpisodeStats.empty(config.run.episode_window)
        self.env_seconds = 0.0
        self.randomize_draws: list[dict[str, Any]] = []
        self.last_metrics: dict[str, float] = {}

    def normalizer_state(self) -> dict[str, dict[str, np.ndarray]]:
        """The observation normaliser's and the reward scaler's running statistics."""
        return {"obs": self.obs_normalizer.stats.state(), "reward": self.reward_scaler.stats.state()}

    def load_normalizer_state(self, state: dict[str, dict[str, np.ndarray]]) -> None:
        """Restores the observation normaliser's and the reward scaler's running statistics."""
        self.obs_normalizer.stats.load(state["obs"])
        self.reward_scaler.stats.load(state["reward"])

    def add_normalizer_increment(
        self, start: dict[str, dict[str, np.ndarray]], end: dict[str, dict[str, np.ndarray]]
    ) -> None:
        """Adds what a worker's statistics gained from ``start`` to ``end`` to the learner's (``add_increment``)."""
        current = self.normalizer_state()
        self.load_normalizer_state({name: add_increment(current[name], start[name], end[name]) for name in current})

    def take_result(self, index: int, result: WorkerResult) -> None:
        """The worker's episodes, draws and env time (its normalisers are the caller's: the rule differs)."""
        for episode_return, length in result.episodes:
            self.episodes.add(float(episode_return), int(length))
        offset = index * self.config.env.num_envs
        self.randomize_draws += [{**draw, "env": draw["env"] + offset} for draw in result.draws]
        self.env_seconds += result.env_seconds

    def take_randomize_draws(self) -> list[dict[str, Any]]:
        """The domain-randomisation draws since the last call; clears them."""
        draws, self.randomize_draws = self.randomize_draws, []
        return draws

    def reset_workers(self, seed: int) -> None:
        """Every worker's envs reset; worker i with seed + i x num_envs (one local vector env's seeds)."""
        group, num_envs = self.group, self.config.env.num_envs
        start = self.normalizer_state()
        refs = [handle.reset.remote(seed + i * num_envs, start) for i, handle in enumerate(group.handles)]
        for index, ref in enumerate(refs):
            self.add_normalizer_increment(start, group.get(ref, f"reset of worker {index}", starting=True))

    def replace(self, index: int, reason: str) -> None:
        """Replace failed worker ``index`` and start its first episodes (its own seed, their first observations
        counted); a replacement that fails at once counts as another failure. Past the cap: ``WorkersLost``."""
        while True:
            lost = self.group.replace_worker(index, reason)
            start = self.normalizer_state()
            ref = self.group.handles[index].reset.remote(self.group.seed_for(index), start)
            try:
                self.add_normalizer_increment(
                    start, self.group.get(ref, f"the first reset of worker {index}", starting=True)
                )
            except WorkerFailed as exc:
                if lost is not None:
                    raise lost from None
                reason = f"its replacement failed at once: {exc}"
                continue
            if lost is not None:
                raise lost
            return

    def round_metrics(self) -> dict[str, float]:
        """A copy of the last round's collector metrics."""
        return dict(self.last_metrics)

    def worker_pids(self) -> list[int]:
        """Each worker's process id."""
        return self.group.pids()

    def worker_node_ids(self) -> list[str]:
        """Each worker's Ray node id."""
        return self.group.node_ids()

    def close(self) -> None:
        """Kills the workers and closes the Ray session."""
        self.group.close()


def _pad_steps(rollout: Rollout, steps: int) -> Rollout:
    """``rollout`` lengthened to ``steps`` with invalid steps (whole-episode rollouts of unequal length): the
    added steps are masked like autoreset steps and marked done, so no return flows through them."""
    extra = steps - rollout.num_steps
    if extra == 0:
        return rollout

    def grow(array: np.ndarray, fill: Any) -> np.ndarray:
        pad = np.full((extra, *array.shape[1:]), fill, array.dtype)
        return np.concatenate([array, pad])

    last_obs = np.repeat(rollout.obs[-1:], extra, axis=0)
    return Rollout(
        obs=np.concatenate([rollout.obs, last_obs]),
        actions=grow(rollout.actions, 0),
        rewards=grow(rollout.rewards, 0.0),
        terminated=grow(rollout.terminated, True),
        truncated=grow(rollout.truncated, False),
        valid=grow(rollout.valid, False),
    )


class RayCollector(LearnerSide):
    """The synchronous collector: one rollout from every worker per update, concatenated along the env axis."""

    def __init__(self, config: TrainConfig, adapter: SpaceAdapter, gamma: float, group: WorkerGroup) -> None:
        super().__init__(config, adapter, gamma, group)
        self.num_envs = config.env.num_envs * group.size
        # worker 0 samples from the run's own generator; workers 1.. from these (kept here, so checkpoints hold them)
        self.worker_rngs = [
            np.random.default_rng(np.random.SeedSequence([config.run.seed, index])) for index in range(1, group.size)
        ]

    def reset(self, seed: int) -> None:
        """Resets every worker's envs with seeds derived from ``seed``."""
        self.reset_workers(seed)

    def collect(self, policy: ActingPolicy, rng: np.random.Generator, num_steps: int) -> Rollout:
        """One round: a ``num_steps`` rollout from every worker, concatenated along the env axis."""
        return self._round(policy, rng, num_steps, None)

    def collect_episodes(self, policy: ActingPolicy, rng: np.random.Generator, num_episodes: int) -> Rollout:
        """One round: ``num_episodes`` whole episodes across the workers, concatenated along the env axis."""
        return self._round(policy, rng, 0, num_episodes)

    def _round(
        self, policy: ActingPolicy, rng: np.random.Generator, num_steps: int, num_episodes: int | None
    ) -> Rollout:
        """Ask every worker, wait for all (each within the deadline); a failed worker is replaced and asked again."""
        ray, group = self.group.ray, self.group
        started = time.perf_counter()
        policy_ref = ray.put(policy)  # one copy in the object store, read by every worker
        generators = [rng, *self.worker_rngs]
        normalizers = self.normalizer_state()
        quotas: list[int | None] = [None] * group.size
        if num_episodes is not None:  # worker i runs its share of the episodes (the first ones one more)
            share, extra = divmod(num_episodes, group.size)
            quotas = [max(1, share + (i < extra)) for i in range(group.size)]

        def ask(index: int) -> Any:
            state = dict(generators[index].bit_generator.state)
            return group.handles[index].collect.remote(policy_ref, state, normalizers, num_steps, quotas[index], False)

        refs = {index: ask(index) for index in range(group.size)}
        results: dict[int, WorkerResult] = {}
        while refs:
            index = min(refs)
            try:
                results[index] = group.get(refs.pop(index), f"the rollout of worker {index}")
            except WorkerFailed as exc:
                self.replace(index, str(exc))
                refs[index] = ask(index)
        gathered = time.perf_counter()
        for index in range(group.size):
            result = results[index]
            generators[index].bit_generator.state = result.rng_state
            self.take_result(index, result)
            self.add_normalizer_increment(normalizers, result.normalizers)
        steps = max(result.rollout.num_steps for result in results.values())
        parts = [_pad_steps(results[index].rollout, steps) for index in range(group.size)]
        rollout = Rollout(
            obs=np.concatenate([part.obs for part in parts], axis=1),
            actions=np.concatenate([part.actions for part in parts], axis=1),
            rewards=np.concatenate([part.rewards for part in parts], axis=1),
            terminated=np.concatenate([part.terminated for part in parts], axis=1),
            truncated=np.concatenate([part.truncated for part in parts], axis=1),
            valid=np.concatenate([part.valid for part in parts], axis=1),
        )
        worker_seconds = max(result.collect_seconds for result in results.values())
        self.last_metrics = {
            "ray/workers": float(group.size),
            "ray/worker_restarts": float(group.restarts),
            "ray/worker_collect_seconds": worker_seconds,
            # the round's wall time beyond the slowest worker's own: sending the policy, moving the rollouts
            "ray/transfer_seconds": max(0.0, gathered - started - worker_seconds),
        }
        return rollout

    # ---- checkpoint support (the same arrays as a local run of workers x num_envs copies) ----------------------
    def state_arrays(self) -> dict[str, np.ndarray]:
        """The workers' env-side arrays, concatenated along the env axis."""
        parts = [arrays for arrays, _ in self.group.call_all("state")]
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Splits the env-side arrays by worker (``env.num_envs`` each) and loads each worker's part."""
        num_envs, group = self.config.env.num_envs, self.group
        refs = []
        for index, handle in enumerate(group.handles):
            part = {name: value[index * num_envs : (index + 1) * num_envs] for name, value in arrays.items()}
            refs.append(handle.load_state.remote(part, None))
        for index, ref in enumerate(refs):
            group.get(ref, f"loading the state of worker {index}")

    def inexact_reason(self) -> str | None:
        """Why the envs' state cannot be saved (the first worker's answer: the workers' envs are alike), or None."""
        reason: str | None = self.group.call_all("inexact_reason")[0]  # the workers' envs are alike: the first's
        return reason

    def capture_env_state(self) -> dict[str, Any] | None:
        """Every worker's envs' state and sampling generator's state, or None when any worker's cannot be saved."""
        envs = [state for _, state in self.group.call_all("state")]
        if any(state is None for state in envs):
            return None
        rngs = [dict(generator.bit_generator.state) for generator in self.worker_rngs]
        return {"ray_workers": envs, "ray_worker_rngs": rngs}

    def restore_env_state(self, state: dict[str, Any]) -> None:
        """Restores every worker's envs and sampling generator; refuses a checkpoint from a local env or another worker
        count."""
        envs = state.get("ray_workers")
        if envs is None or len(envs) != self.group.size:
            saved = "a local vector env" if envs is None else f"{len(envs)} Ray workers"
            raise ValueError(f"the checkpoint's environments ran on {saved}, not {self.group.size} Ray workers")
        group = self.group
        refs = [handle.load_state.remote(None, envs[index]) for index, handle in enumerate(group.handles)]
        for index, ref in enumerate(refs):
            group.get(ref, f"restoring the envs of worker {index}")
        for generator, saved_state in zip(self.worker_rngs, state["ray_worker_rngs"], strict=True):
            generator.bit_generator.state = saved_state


class ImpalaCollector(LearnerSide):
    """The asynchronous collector: ``queue`` rollouts requested from every worker at all times; ``collect`` hands
    the learner the first one finished and asks that worker for another with the newest weights."""

    def __init__(
        self, config: TrainConfig, adapter: SpaceAdapter, gamma: float, group: WorkerGroup, queue: int
    ) -> None:
        super().__init__(config, adapter, gamma, group)
        self.num_envs = config.env.num_envs  # one rollout is one worker's envs
        self.queue = queue
        self.version = 0  # learner updates so far: the version of the weights handed out next
        # in flight: ref -> (worker, weights version, normaliser statistics it was sent)
        self.in_flight: dict[Any, tuple[int, int, dict[str, dict[str, np.ndarray]]]] = {}
        self.policy_ref: Any = None

    def reset(self, seed: int) -> None:
        """Drops the rollouts in flight and resets every worker's envs with seeds derived from ``seed``."""
        self._drop_in_flight()
        self.reset_workers(seed)

    def collect_episodes(self, policy: ActingPolicy, rng: np.random.Generator, num_episodes: int) -> Rollout:
        """Refused (a ``ConfigError``): IMPALA collects fixed-length rollouts, not whole episodes."""
        raise ConfigError("impala collects fixed-length rollouts, not whole episodes")

    def collect(self, policy: ActingPolicy, rng: np.random.Generator, num_steps: int) -> Rollout:
        """The next finished rollout (any worker); ``rng`` is unused: each worker samples from its own stream."""
        ray, group = self.group.ray, self.group
        started = time.perf_counter()
        self.policy_ref = ray.put(policy)  # the learner's newest weights, picked up by every request from now on
        self._fill(num_steps)
        while True:
            ready, _ = ray.wait(list(self.in_flight), num_returns=1, timeout=group.timeout)
            if not ready:  # nobody finished within the deadline: the worker asked longest ago is the one stuck
                oldest = next(iter(self.in_flight))
                self._replace(self.in_flight[oldest][0], f"no rollout within ray.call_timeout_s={group.timeout:g} s")
                self._fill(num_steps)
                continue
            ref = ready[0]
            index, version, sent = self.in_flight.pop(ref)
            try:
                result: WorkerResult = group.get(ref, f"the rollout of worker {index}")
            except WorkerFailed as exc:
                self._replace(index, str(exc))
                self._fill(num_steps)
                continue
            break
        waited = time.perf_counter()
        self.take_result(index, result)
        self.add_normalizer_increment(sent, result.normalizers)
        ready_now, _ = ray.wait(list(self.in_flight), num_returns=len(self.in_flight), timeout=0)
        self._fill(num_steps)
        lag = self.version - version
        self.version += 1
        self.last_metrics = {
            "impala/policy_lag": float(lag),
            "impala/queue_ready": float(len(ready_now)),  # finished rollouts waiting for the learner
            "impala/queue_in_flight": float(len(self.in_flight)),
            "impala/actor_collect_seconds": result.collect_seconds,
            "impala/learner_wait_seconds": waited - started,
            "ray/worker_restarts": float(group.restarts),
        }
        # copies: Ray hands out read-only views of its object store, and the loop may write a rollout (drills)
        rollout = result.rollout
        assert rollout.behaviour_log_probs is not None
        return Rollout(
            obs=np.array(rollout.obs),
            actions=np.array(rollout.actions),
            rewards=np.array(rollout.rewards),
            terminated=np.array(rollout.terminated),
            truncated=np.array(rollout.truncated),
            valid=np.array(rollout.valid),
            behaviour_log_probs=np.array(rollout.behaviour_log_probs),
            policy_version=version,
            # a recurrent actor's state at each step (the learner unrolls from the first) and its episode starts
            states=None if rollout.states is None else np.array(rollout.states),
            episode_starts=None if rollout.episode_starts is None else np.array(rollout.episode_starts),
        )

    def _fill(self, num_steps: int) -> None:
        """Top every worker up to ``queue`` requests with the newest weights."""
        counts = [0] * self.group.size
        for index, _, _ in self.in_flight.values():
            counts[index] += 1
        normalizers = self.normalizer_state()
        for index, handle in enumerate(self.group.handles):
            for _ in range(self.queue - counts[index]):
                ref = handle.collect.remote(self.policy_ref, None, normalizers, num_steps, None, True)
                self.in_flight[ref] = (index, self.version, normalizers)

    def _replace(self, index: int, reason: str) -> None:
        for ref in [ref for ref, (owner, _, _) in self.in_flight.items() if owner == index]:
            del self.in_flight[ref]  # its partial rollouts are dropped with it
        self.replace(index, reason)

    def _drop_in_flight(self) -> None:
        # a worker runs its requests in order, so a reset asked after these runs after them whether or not they
        # are cancelled; cancelling only saves the work
        for ref in list(self.in_flight):
            try:
                self.group.ray.cancel(ref, force=False)
            except Exception:  # already finished, or its worker gone
                pass
        self.in_flight.clear()

    # ---- checkpoints: the workers act asynchronously, so a resume restarts their episodes -------------------------
    def state_arrays(self) -> dict[str, np.ndarray]:
        """Empty: IMPALA's actors run asynchronously, so no env-side state is saved."""
        return {}

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Nothing to load: IMPALA saves no env-side arrays."""
        pass

    def inexact_reason(self) -> str | None:
        """Always a reason: the actors run asynchronously, so a resume restarts their episodes."""
        return "impala's actors run asynchronously: a resume restarts their episodes"

    def capture_env_state(self) -> dict[str, Any] | None:
        """None: IMPALA saves no environment state."""
        return None

    def restore_env_state(self, state: dict[str, Any]) -> None:
        """Refused (a ``ValueError``): IMPALA saves no environment state."""
        raise ValueError("impala saves no environment state")


def ray_environment(
    config: TrainConfig, gamma: float, adapter: SpaceAdapter, asynchronous: bool, queue: int = 2, state_size: int = 0
) -> tuple[Environment, RayCollector | ImpalaCollector]:
    """The learner's ``Environment`` (``envs`` stands for the workers) and the collector for a Ray run; ``state_size``
    is a recurrent policy's state width (0: feed-forward)."""
    session = RaySession(config)
    try:
        group = WorkerGroup(config, gamma, session, state_size=state_size)
        collector: RayCollector | ImpalaCollector
        if asynchronous:
            collector = ImpalaCollector(config, adapter, gamma, group, queue)
        else:
            collector = RayCollector(config, adapter, gamma, group)
    except BaseException:
        session.close()
        raise
    envs = RemoteEnvs(collector, collector.num_envs)
    return Environment(envs, adapter, collector.obs_normalizer, collector.reward_scaler), collector
