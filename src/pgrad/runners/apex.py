"""APE-X's actors as the off-policy loop's collector (``apex_td3``, ``apex_ddpg``, ``apex_d4pg``).

The learner, the prioritised replay, the guard and the checkpoints are the off-policy loop's
(``pgrad.runners.off_policy``); only its collector changes. Each call of ``ApexCollector.collect`` hands the loop
one actor's block: ``apex.local_batch`` steps of that actor's ``env.num_envs`` envs, acted with its own copy of the
learner's networks and its own Gaussian noise scale (``pgrad.algos.apex.noise_scales``), with each transition's
initial priority |delta| computed by the actor from its copy of the critic (``initial_priorities``). The loop puts
the block into the replay at those priorities (``add_to_replay``) and runs its gradient steps; the learner's new
|TD errors| go back to the sampled rows as before (``OffPolicyRunner.replay_feedback``). An actor copies the
learner's weights before a block once it has stepped ``apex.refresh_every`` steps (per env) since its last copy;
the weight lag of a block is the learner's gradient steps at its arrival minus those of the weights it acted with.

Two ways to run the actors, the same blocks either way:
- ``run.backend: local`` (the default): the actors live in this process and take turns in a fixed order (0, 1, ...
  N - 1, 0, ...), each acting at once with the weights it holds. A run is reproducible from its seed, and a
  checkpoint holds every actor's envs, sampling generator, weights and counters, so a resumed run is bit for bit
  the uninterrupted one. This is the fallback the tests use.
- ``run.backend: ray``: each actor is a Ray actor (``pgrad.runners.ray_backend.WorkerGroup``: deadlines, and a dead
  or stuck actor replaced by a fresh one, re-seeded, with a ``ray.worker_replaced`` event). Every actor always has
  one block requested, so actors act while the learner learns; the loop takes whichever block is done first. A
  resume restores the learner and the replay; the actors restart their episodes with fresh weights (the run says so).

An n-step learner (D4PG) reads windows over consecutive replay rows: each block's rows are its actor's
consecutive steps (one env per actor), and the block's last row is marked truncated, so a window stops there and
bootstraps from that row's true next observation instead of running into the next actor's block.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from pgrad.algos.apex import ApexConfig, ApexLearner, initial_priorities, noise_scales
from pgrad.builders import Environment, build_environment, build_off_policy_algorithm
from pgrad.config import TrainConfig
from pgrad.envs import state as env_state
from pgrad.envs.factory import SpaceAdapter
from pgrad.envs.normalize import ObsNormalizer, RewardScaler
from pgrad.errors import ConfigError
from pgrad.replay import PrioritizedReplayBuffer, ReplayBuffer
from pgrad.rollout import EpisodeStats, Rollout, RolloutCollector
from pgrad.threads import set_threads

_UNBOUNDED_WINDOW = 2**31  # an actor's own episode statistics are emptied after every block
Weights = dict[str, dict[str, torch.Tensor]]  # module name -> state_dict (actor, critics and their targets)
# (actor index, fresh) -> the weights and their version when that actor is due a copy, else (None, 0)
WeightsFor = Callable[[int, bool], tuple[Weights | None, int]]


@dataclass
class ActorBlock:
    """What an actor sends: its block of steps, their initial priorities and what the loop logs of it."""

    rollout: Rollout  # [local_batch, env.num_envs], as a local collector returns it
    priorities: np.ndarray  # |delta| of each valid transition, in the replay's order (time-major, then env)
    version: int  # the learner's gradient steps when the weights the actor acted with were copied
    episodes: list[tuple[float, int]]  # (return, length) of the episodes that ended in the block
    env_seconds: float
    collect_seconds: float  # the actor's wall time for the block, priorities included


def block_transitions(rollout: Rollout, adapter: SpaceAdapter, n_step: int, gamma: float) -> ReplayBuffer:
    """The valid transitions of ``rollout`` as a small buffer of their own (``ReplayBuffer.add_rollout``: the rows the
    replay will hold, in its order). With ``n_step > 1`` the last row is marked truncated: an n-step window stops
    there (bootstrapping from its true next observation) rather than run into the next block in the replay."""
    count = max(int(rollout.valid.sum()), 1)
    local = ReplayBuffer(count, adapter.obs_dim, adapter.action.size, n_step, gamma)
    local.add_rollout(rollout)
    if n_step > 1 and local.size:
        local.truncated[local.size - 1] = True
    return local


class ApexActor:
    """One actor: a vector env, its collector and sampling generator, and a copy of the learner's networks that
    acts (with this actor's noise scale) and prioritises. In this process (local backend) or as a Ray actor."""

    def __init__(self, config: TrainConfig, gamma: float, seed: int, state_size: int = 0, own_process: bool = True):
        """``WorkerGroup``'s signature (``state_size`` unused: APE-X refuses recurrent networks); ``own_process``: a
        Ray actor takes one torch thread, an in-process actor leaves the learner's setting alone."""
        if own_process:
            set_threads(1)
        self.env = build_environment(config, gamma)
        self.adapter = self.env.adapter
        self.collector = RolloutCollector(
            self.env.envs, self.adapter, self.env.obs_normalizer, self.env.reward_scaler, _UNBOUNDED_WINDOW
        )
        self.learner: ApexLearner = build_off_policy_algorithm(config, self.adapter)  # type: ignore[assignment]
        self.policy = self.learner.acting_policy()
        self.n_step = int(getattr(self.learner, "n_step", 1))
        self.gamma = gamma
        self.rng = np.random.default_rng(seed)
        self.version = 0

    def pid(self) -> int:
        """The actor's process id."""
        import os

        return os.getpid()

    def reset(self, seed: int, noise_std: float) -> None:
        """Fresh episodes seeded with ``seed``, a sampling generator from it, and this actor's noise scale."""
        self.collector.reset(seed)
        self.rng = np.random.default_rng(seed)
        self.learner.noise.sigma = noise_std

    def set_weights(self, weights: Weights, version: int) -> None:
        """Copy the learner's networks (``version``: its gradient steps then) and rebuild the acting policy."""
        for name, module in self.learner.modules().items():
            module.load_state_dict(weights[name])
        self.policy = self.learner.acting_policy()
        self.version = version

    def act(self, num_steps: int, warmup: Any = None) -> ActorBlock:
        """``num_steps`` steps of every env, with ``warmup`` (the loop's uniform actions before learning starts) or
        else this actor's own policy, and the initial priority of each valid transition from its copy of the critic."""
        started = time.perf_counter()
        env_before = self.collector.env_seconds
        policy = self.policy if warmup is None else warmup
        rollout = self.collector.collect(policy, self.rng, num_steps)
        self.learner.end_episodes(((rollout.terminated | rollout.truncated) & rollout.valid).any(axis=0))
        local = block_transitions(rollout, self.adapter, self.n_step, self.gamma)
        rows = np.arange(local.size)
        priorities = initial_priorities(self.learner, local.gather(rows, torch.device("cpu")))
        episodes = list(zip(self.collector.episodes.returns, self.collector.episodes.lengths, strict=True))
        self.collector.episodes.returns.clear()
        self.collector.episodes.lengths.clear()
        return ActorBlock(
            rollout,
            priorities,
            self.version,
            episodes,
            self.collector.env_seconds - env_before,
            time.perf_counter() - started,
        )

    # ---- the local backend's exact checkpoints ------------------------------------------------------------------
    def state_arrays(self) -> dict[str, np.ndarray]:
        """The collector's env-side arrays and the copied weights, as arrays (the checkpoint's safetensors)."""
        arrays = {f"collector.{k}": np.array(v) for k, v in self.collector.state_arrays().items()}
        for name, module in self.learner.modules().items():
            for key, tensor in module.state_dict().items():
                arrays[f"weights.{name}.{key}"] = tensor.detach().cpu().numpy().copy()
        arrays["version"] = np.array([self.version], np.int64)
        return arrays

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restores the collector's arrays, the copied weights and their version."""
        self.collector.load_state_arrays({k[10:]: v for k, v in arrays.items() if k.startswith("collector.")})
        weights: Weights = {name: {} for name in self.learner.modules()}
        for key, value in arrays.items():
            if key.startswith("weights."):
                name, _, tensor = key[8:].partition(".")
                weights[name][tensor] = torch.from_numpy(np.array(value))
        self.set_weights(weights, int(np.asarray(arrays["version"]).reshape(-1)[0]))

    def env_state(self) -> dict[str, Any] | None:
        """The envs' own state, the sampling generator's and the noise's (None when the envs' cannot be saved)."""
        envs = env_state.capture(self.env.envs)
        if envs is None:
            return None
        return {"envs": envs, "rng": dict(self.rng.bit_generator.state), "noise": self.learner.noise.state()}

    def load_env_state(self, state: dict[str, Any]) -> None:
        """Restores what ``env_state`` saved."""
        env_state.restore(self.env.envs, state["envs"])
        self.rng.bit_generator.state = state["rng"]
        self.learner.noise.load(state["noise"])


# ---- the learner's side --------------------------------------------------------------------------------------------


class ApexCollector:
    """The off-policy loop's collector for APE-X: one actor's block per ``collect``; the block's priorities go into
    the replay with it (``add_to_replay``); the actors' throughput, weight lag and the replay's priorities per row
    (``row_metrics``)."""

    def __init__(
        self,
        config: TrainConfig,
        adapter: SpaceAdapter,
        learner: ApexLearner,
        version: Callable[[], int],
        pool: LocalActors | RayActors,
    ) -> None:
        """``version``: the learner's gradient steps so far (the version of the weights an actor copies now)."""
        self.config = config
        self.apex: ApexConfig = config.algo_config.apex
        self.learner = learner
        self.version = version
        self.pool = pool
        self.num_envs = config.env.num_envs  # one block is one actor's envs
        self.scales = noise_scales(self.apex.actors, self.apex.noise_eps, self.apex.noise_alpha)
        env = config.env
        self.obs_normalizer = ObsNormalizer((adapter.obs_dim,), env.clip_obs, env.norm_obs, mask=adapter.normalized())
        self.reward_scaler = RewardScaler(env.num_envs, 1.0, env.clip_reward, env.norm_reward)
        self.episodes = EpisodeStats.empty(config.run.episode_window)
        self.env_seconds = 0.0
        self.adapter, self.gamma = adapter, learner.gamma
        self.n_step = int(getattr(learner, "n_step", 1))
        # per actor: env steps (per env) since its last copy of the weights; -1: it has none yet (fresh or restarted)
        self.since_refresh = [-1] * self.apex.actors
        self.pending: ActorBlock | None = None
        self.row: dict[str, list[float]] = {"lag": [], "steps": [], "seconds": []}

    # ---- what the loop calls ------------------------------------------------------------------------------------
    def reset(self, seed: int) -> None:
        """Every actor's envs reset, actor i with seed + i x env.num_envs, and its noise scale; all fetch weights."""
        self.since_refresh = [-1] * self.apex.actors
        self.pool.reset_all([seed + i * self.num_envs for i in range(self.apex.actors)], self.scales)

    def weights_for(self, index: int, fresh: bool = False) -> tuple[Weights | None, int]:
        """The learner's weights and version when actor ``index`` is due a copy (``fresh``: a replaced actor; none
        yet; or ``refresh_every`` steps since its last), else None; counts the block it is about to act."""
        due = fresh or self.since_refresh[index] < 0 or self.since_refresh[index] >= self.apex.refresh_every
        self.since_refresh[index] = (0 if due else self.since_refresh[index]) + self.apex.local_batch
        if not due:
            return None, 0
        return {name: module.state_dict() for name, module in self.learner.modules().items()}, self.version()

    def collect(self, policy: Any, rng: np.random.Generator, num_steps: int) -> Rollout:
        """The next actor's block (``apex.local_batch`` steps; ``num_steps``, the loop's train_freq, and ``rng`` are
        not read: each actor samples from its own generator). ``policy`` only says whether the loop is still in its
        warm-up (its ``UniformActor``, marked ``warmup``): the actors then act with it instead of their own."""
        warmup = policy if getattr(policy, "warmup", False) else None
        block = self.pool.next_block(self.weights_for, self.apex.local_batch, warmup)
        for episode_return, length in block.episodes:
            self.episodes.add(float(episode_return), int(length))
        self.env_seconds += block.env_seconds
        self.row["lag"].append(float(self.version() - block.version))
        self.row["steps"].append(float(block.rollout.valid.sum()))
        self.row["seconds"].append(block.collect_seconds)
        self.pending = block
        return block.rollout

    def add_to_replay(self, buffer: ReplayBuffer, rollout: Rollout) -> None:
        """The last block's valid transitions into the replay at the priorities its actor computed."""
        assert self.pending is not None and self.pending.rollout is rollout
        assert isinstance(buffer, PrioritizedReplayBuffer)  # ApexConfig's validation: loop.replay is prioritized
        local = block_transitions(rollout, self.adapter, self.n_step, self.gamma)
        n = local.size
        buffer.add(
            local.obs[:n],
            local.actions[:n],
            local.rewards[:n],
            local.next_obs[:n],
            local.terminated[:n],
            local.truncated[:n],
            priorities=self.pending.priorities,
        )
        self.pending = None

    def row_metrics(self, buffer: ReplayBuffer, updates: int, seconds: float) -> dict[str, float]:
        """The row's actor env steps/s (all actors, per wall second of the row) and learner updates/s, the weight lag
        (learner version minus the acting weights', over the row's blocks), the replay's priorities p_i^alpha
        (what the sum-tree holds: mean and max over the stored rows) and the actors' state."""
        row, self.row = self.row, {"lag": [], "steps": [], "seconds": []}
        wall = max(seconds, 1e-9)
        metrics = {
            "apex/actors": float(self.apex.actors),
            "apex/actor_steps_per_second": sum(row["steps"]) / wall,
            "apex/learner_updates_per_second": updates / wall,
            "apex/blocks": float(len(row["lag"])),
            **self.pool.metrics(),
        }
        if row["lag"]:
            metrics["apex/weight_lag_mean"] = float(np.mean(row["lag"]))
            metrics["apex/weight_lag_max"] = float(np.max(row["lag"]))
        if isinstance(buffer, PrioritizedReplayBuffer) and buffer.size:
            leaves = buffer.tree.leaves(buffer.size)
            metrics["apex/priority_mean"] = float(leaves.mean())
            metrics["apex/priority_max"] = float(leaves.max())
        return metrics

    def normalizer_state(self) -> dict[str, dict[str, np.ndarray]]:
        """The (unused: the replay algorithms refuse normalisation) normaliser statistics, as a local collector's."""
        return {"obs": self.obs_normalizer.stats.state(), "reward": self.reward_scaler.stats.state()}

    def load_normalizer_state(self, state: dict[str, dict[str, np.ndarray]]) -> None:
        """Restores the normaliser statistics."""
        self.obs_normalizer.stats.load(state["obs"])
        self.reward_scaler.stats.load(state["reward"])

    def take_randomize_draws(self) -> list[dict[str, Any]]:
        """None: the actors' envs keep their domain-randomisation draws (not gathered for APE-X)."""
        return []

    # ---- checkpoints ---------------------------------------------------------------------------------------------
    def state_arrays(self) -> dict[str, np.ndarray]:
        """The refresh counters and (local backend) every actor's env-side arrays and copied weights."""
        arrays = {"since_refresh": np.array(self.since_refresh, np.int64), **self.pool.state_arrays()}
        return arrays

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restores the refresh counters and the actors' arrays."""
        self.since_refresh = [int(v) for v in np.asarray(arrays["since_refresh"]).reshape(-1)]
        self.pool.load_state_arrays(arrays)

    def close(self) -> None:
        """Closes the actors (their envs; on Ray, the actors and the session)."""
        self.pool.close()


class LocalActors:
    """The actors in this process, taking turns in a fixed order: reproducible from the seed, exact on resume."""

    def __init__(self, config: TrainConfig, gamma: float) -> None:
        actors = config.algo_config.apex.actors
        self.actors = [ApexActor(config, gamma, config.run.seed + i, own_process=False) for i in range(actors)]
        self.turn = 0

    def reset_all(self, seeds: list[int], scales: list[float]) -> None:
        """Every actor's envs reset with its seed, and its noise scale."""
        for actor, seed, scale in zip(self.actors, seeds, scales, strict=True):
            actor.reset(seed, scale)

    def next_block(self, weights_for: WeightsFor, steps: int, warmup: Any) -> ActorBlock:
        """The actor whose turn it is copies the weights if due, acts ``steps`` steps and hands over its block."""
        index = self.turn
        self.turn = (self.turn + 1) % len(self.actors)
        weights, version = weights_for(index, False)
        if weights is not None:
            self.actors[index].set_weights(weights, version)
        return self.actors[index].act(steps, warmup)

    def metrics(self) -> dict[str, float]:
        """Nothing beyond the collector's: local actors never fail apart from the run."""
        return {}

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Whose turn it is and every actor's arrays (``actor<i>.``-prefixed)."""
        arrays = {"turn": np.array([self.turn], np.int64)}
        for index, actor in enumerate(self.actors):
            arrays.update({f"actor{index}.{k}": v for k, v in actor.state_arrays().items()})
        return arrays

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restores the turn and every actor's arrays."""
        self.turn = int(np.asarray(arrays["turn"]).reshape(-1)[0])
        for index, actor in enumerate(self.actors):
            prefix = f"actor{index}."
            actor.load_state_arrays({k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)})

    def inexact_reason(self) -> str | None:
        """Why the actors' envs' state cannot be saved (the first actor's answer: the envs are alike), or None."""
        return env_state.inexact_reason(self.actors[0].env.envs)

    def capture_env_state(self) -> dict[str, Any] | None:
        """Every actor's envs, generator and noise state, or None when they cannot be saved."""
        states = [actor.env_state() for actor in self.actors]
        return None if any(s is None for s in states) else {"apex_actors": states}

    def restore_env_state(self, state: dict[str, Any]) -> None:
        """Restores every actor's envs, generator and noise; refuses another actor count."""
        saved = state.get("apex_actors")
        if saved is None or len(saved) != len(self.actors):
            raise ValueError(f"the checkpoint's environments are not those of {len(self.actors)} APE-X actors")
        for actor, actor_state in zip(self.actors, saved, strict=True):
            actor.load_env_state(actor_state)

    def close(self) -> None:
        """Closes every actor's envs."""
        for actor in self.actors:
            actor.env.envs.close()


class RayActors:
    """The actors as Ray actors (``WorkerGroup``: deadlines, replacement of a dead or stuck actor); each always has
    one block requested, and ``next_block`` hands over whichever is done first."""

    def __init__(self, config: TrainConfig, gamma: float, on_event: Callable[..., None]) -> None:
        from pgrad.runners.ray_backend import RaySession, WorkerGroup

        actors = config.algo_config.apex.actors
        # the group sizes itself (and a local Ray's CPUs) by ray.workers: here the actor count
        config = replace(config, ray=replace(config.ray, workers=actors))
        session = RaySession(config)
        try:
            self.group = WorkerGroup(config, gamma, session, on_event, worker_class=ApexActor)
        except BaseException:
            session.close()
            raise
        self.ray = session.ray
        self.seeds: list[int] = []
        self.scales: list[float] = []
        self.in_flight: dict[Any, int] = {}  # ref of a requested block -> actor
        self.fresh: set[int] = set()  # replaced actors: they copy the weights before their first block
        self.weights_ref: tuple[int, Any] | None = None  # (version, object ref): one copy per version in the store

    def reset_all(self, seeds: list[int], scales: list[float]) -> None:
        """Drops the blocks in flight and resets every actor's envs with its seed and noise scale."""
        self.in_flight.clear()
        self.seeds, self.scales = seeds, scales
        refs = [
            handle.reset.remote(seed, scale)
            for handle, seed, scale in zip(self.group.handles, seeds, scales, strict=True)
        ]
        for index, ref in enumerate(refs):
            self.group.get(ref, f"reset of APE-X actor {index}", starting=True)

    def request(self, index: int, weights_for: WeightsFor, steps: int, warmup: Any) -> None:
        """Ask actor ``index`` for its next block, sending the weights first when it is due a copy."""
        weights, version = weights_for(index, index in self.fresh)
        self.fresh.discard(index)
        handle = self.group.handles[index]
        if weights is not None:
            if self.weights_ref is None or self.weights_ref[0] != version:
                self.weights_ref = (version, self.ray.put(weights))
            handle.set_weights.remote(self.weights_ref[1], version)  # a Ray actor runs its calls in order
        self.in_flight[handle.act.remote(steps, warmup)] = index

    def next_block(self, weights_for: WeightsFor, steps: int, warmup: Any) -> ActorBlock:
        """The first block done (any actor); that actor is asked for its next one. A failed actor is replaced and
        asked again (its block in flight is dropped)."""
        from pgrad.runners.ray_backend import WorkerFailed

        group = self.group
        while True:
            asked = set(self.in_flight.values())
            for index in range(group.size):
                if index not in asked:
                    self.request(index, weights_for, steps, warmup)
            ready, _ = self.ray.wait(list(self.in_flight), num_returns=1, timeout=group.timeout)
            if not ready:  # nobody finished within the deadline: the actor asked longest ago is the one stuck
                oldest = next(iter(self.in_flight))
                self.replace(self.in_flight.pop(oldest), f"no block within ray.call_timeout_s={group.timeout:g} s")
                continue
            index = self.in_flight.pop(ready[0])
            try:
                block: ActorBlock = group.get(ready[0], f"the block of APE-X actor {index}")
            except WorkerFailed as exc:
                self.replace(index, str(exc))
                continue
            self.request(index, weights_for, steps, warmup)
            # copies: Ray hands out read-only views of its object store, and the loop may write a rollout (drills)
            rollout = block.rollout
            block.rollout = replace(
                rollout,
                obs=np.array(rollout.obs),
                actions=np.array(rollout.actions),
                rewards=np.array(rollout.rewards),
                terminated=np.array(rollout.terminated),
                truncated=np.array(rollout.truncated),
                valid=np.array(rollout.valid),
            )
            return block

    def replace(self, index: int, reason: str) -> None:
        """A fresh actor in place of ``index`` (``WorkerGroup.replace_worker``: re-seeded, logged; past the cap
        ``WorkersLost``), reset with its new seed and the same noise scale; it copies the weights before acting."""
        lost = self.group.replace_worker(index, reason)
        if lost is not None:
            raise lost
        self.group.get(
            self.group.handles[index].reset.remote(self.group.seed_for(index), self.scales[index]),
            f"the first reset of APE-X actor {index}",
            starting=True,
        )
        self.fresh.add(index)

    def metrics(self) -> dict[str, float]:
        """The actors replaced so far and the blocks in flight."""
        return {"ray/worker_restarts": float(self.group.restarts), "apex/blocks_in_flight": float(len(self.in_flight))}

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Nothing: Ray actors act asynchronously, so a resume restarts them."""
        return {}

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Nothing to load (``state_arrays``)."""

    def inexact_reason(self) -> str | None:
        """Always a reason: the actors run asynchronously."""
        return (
            "APE-X's Ray actors run asynchronously: a resume restores the learner and the replay, and the actors "
            "restart their episodes with fresh weights"
        )

    def capture_env_state(self) -> dict[str, Any] | None:
        """None: no environment state is saved."""
        return None

    def restore_env_state(self, state: dict[str, Any]) -> None:
        """Refused (a ``ValueError``): no environment state is saved."""
        raise ValueError("APE-X on Ray saves no environment state")

    def pids(self) -> list[int]:
        """Each actor's process id."""
        return self.group.pids()

    def close(self) -> None:
        """Kills the actors and closes the Ray session."""
        for ref in list(self.in_flight):
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # already finished, or its actor gone
                pass
        self.in_flight.clear()
        self.weights_ref = None  # no object reference may outlive the session
        self.group.close()


class ActorEnvs:
    """Stands where the loop keeps its vector env (``Environment.envs``): one actor's env count, closing, and the
    actors' envs' state for checkpoints (``pgrad.envs.state`` asks through the ``*_remote_*`` methods)."""

    def __init__(self, collector: ApexCollector) -> None:
        self.collector = collector
        self.num_envs = collector.num_envs

    def inexact_remote_reason(self) -> str | None:
        """Why the actors' envs' state cannot be saved, or None."""
        return self.collector.pool.inexact_reason()

    def capture_remote_state(self) -> dict[str, Any] | None:
        """The actors' envs' state for a checkpoint, or None when it cannot be saved."""
        return self.collector.pool.capture_env_state()

    def restore_remote_state(self, state: dict[str, Any]) -> None:
        """Restores the actors' envs from a checkpoint's state."""
        self.collector.pool.restore_env_state(state)

    def close(self) -> None:
        """Closes the actors."""
        self.collector.close()


def apex_environment(
    config: TrainConfig,
    probe: Environment,
    learner: ApexLearner,
    version: Callable[[], int],
    on_event: Callable[..., None],
    env_object: bool,
) -> tuple[Environment, ApexCollector]:
    """The loop's env stand-in and collector for APE-X; ``probe`` (the loop's own env, for the spaces) is closed.
    ``version``: the learner's gradient steps; ``on_event``: (kind, message, **data) -> None, the run's event log."""
    probe.envs.close()
    if env_object:
        raise ConfigError(
            f"{config.algo}'s actors build their envs from env.id; an env handed over as a Python object cannot be "
            "copied to them (use td3, ddpg or d4pg)"
        )
    n_step = int(getattr(learner, "n_step", 1))
    if n_step > 1 and config.env.num_envs != 1:
        raise ConfigError(
            f"env.num_envs must be 1 for {config.algo} with n_step > 1 (each actor's n-step windows run over its "
            f"consecutive steps); got {config.env.num_envs} (more actors: {config.algo}.apex.actors)"
        )
    pool: LocalActors | RayActors
    pool = (
        RayActors(config, learner.gamma, on_event)
        if config.run.backend == "ray"
        else LocalActors(config, learner.gamma)
    )
    collector = ApexCollector(config, probe.adapter, learner, version, pool)
    return Environment(
        ActorEnvs(collector), probe.adapter, collector.obs_normalizer, collector.reward_scaler
    ), collector
