"""The running loop as callbacks see it (``pgrad.callbacks.Training``), and the collectors' per-step hooks.

A run with callbacks builds one ``LiveTraining`` when its loop starts. It counts env steps as the collector
takes them (``step`` is called once per vector step: ``num_envs`` env steps), tells the callbacks of each
collection and step, and lends them two things the run owns: ``evaluate`` (the live policy on an env of the
callback's choosing, through the guard's evaluation loop ``pgrad.monitor.evaluation.run_episodes``) and
``save`` (the agent as it is now, in ``pgrad.api``'s ``save`` format). A run without callbacks builds none,
and the collectors then make no call for it: their hooks are one ``is None`` test per vector step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from pathlib import Path
from typing import Any

from pgrad.builders import Environment, algo_gamma, build_environment, nominal_physics
from pgrad.callbacks import BaseCallback, CallbackError, Logger
from pgrad.checkpoint import STATE, save_checkpoint
from pgrad.envs.sources import env_source
from pgrad.errors import ConfigError
from pgrad.monitor.evaluation import EVAL_SEED_OFFSET, episode_step_cap, eval_num_envs, run_episodes
from pgrad.policy import write_spaces
from pgrad.rollout import RolloutCollector


class LiveTraining:
    """What callbacks reach of a running loop (``pgrad.callbacks.Training``). ``run``: the run context (its
    callbacks, logger, stop flag); ``body``: the loop (None for A3C's coordinator, which steps no envs here)."""

    def __init__(self, run: Any, body: Any, callbacks: list[BaseCallback]) -> None:
        self.run = run
        self.body = body
        self.callbacks = callbacks
        self.logger: Logger = run.logger
        self.num_timesteps = int(getattr(body, "step", run.last_checkpoint_step))
        environment = getattr(body, "env", None)
        self.env: Any = getattr(environment, "envs", None)
        collector = getattr(body, "collector", None)
        # per vector step where this process steps the envs; elsewhere (Ray, A3C, LM) once per logged update
        self.collector = collector if isinstance(collector, RolloutCollector) else None
        self.per_step = self.collector is not None
        self.num_envs = self.collector.num_envs if self.collector is not None else 0
        self.last_row: dict[str, Any] = {}
        self._eval_envs: dict[int, tuple[Any, Environment, bool]] = {}  # id(spec) -> (spec, envs, close them)

    # ---- the collectors' hooks ----------------------------------------------------------------
    def attach(self) -> None:
        """Route the collector's per-step hooks here."""
        if self.collector is not None:
            self.collector.hooks = self

    def rollout_start(self) -> None:
        """Before a collection: the step count is the loop's own."""
        self.num_timesteps = int(self.body.step)
        self._call("on_rollout_start", "_on_rollout_start")

    def step(self) -> None:
        """After one vector step: ``num_envs`` env steps more, then every callback's ``on_step``."""
        self.num_timesteps += self.num_envs
        try:
            self.run.ask_callbacks("on_step")
        except Exception as exc:
            raise CallbackError.wrapping(exc, "_on_step", self.num_timesteps) from exc

    def rollout_end(self) -> None:
        """After a collection, before the update learns from it."""
        self._call("on_rollout_end", "_on_rollout_end")

    def _call(self, driver: str, hook: str) -> None:
        """Every callback's ``driver``; what one raises becomes a ``CallbackError`` (the collectors' callers report
        any other exception as the env's failure)."""
        try:
            for callback in self.callbacks:
                getattr(callback, driver)()
        except Exception as exc:
            raise CallbackError.wrapping(exc, hook, self.num_timesteps) from exc

    # ---- what callbacks read --------------------------------------------------------------------
    @property
    def episodes(self) -> int:
        """Episodes finished in this run so far, all envs together."""
        if self.collector is not None:
            return int(self.collector.episodes.count)
        return int(self.last_row.get("rollout/episodes", 0))

    @property
    def run_dir(self) -> Path:
        """The run folder."""
        return Path(self.run.run_dir)

    def _needs(self, what: str, *attributes: str) -> None:
        if self.body is None or not all(hasattr(self.body, name) for name in attributes):
            raise ConfigError(
                f"callbacks: {what} needs the on- or off-policy loop in this process; "
                f"'{self.run.config.algo}' runs another loop"
            )

    # ---- evaluation -----------------------------------------------------------------------------
    def evaluate(self, env: Any, episodes: int, deterministic: bool) -> tuple[list[float], list[int]] | None:
        """The live policy's ``episodes`` episodes on ``env`` (see ``pgrad.callbacks.Training``), with the
        guard's evaluation loop: the training normaliser read, never updated; the seed of the guard's
        evaluations, so every evaluation plays the same starts. None when a Ctrl-C cut it short."""
        self._needs("an evaluation", "algo", "collector")
        environment = self._eval_environment(env, episodes)
        config = self.run.config
        obs_normalizer = getattr(self.body.collector, "obs_normalizer", None) or self.body.env.obs_normalizer
        returns, lengths = run_episodes(
            self.body.algo.acting_policy(),
            environment.envs,
            environment.adapter,
            obs_normalizer,
            episodes,
            deterministic,
            EVAL_SEED_OFFSET + config.run.seed,
            max_episode_steps=episode_step_cap(config),
            should_stop=lambda: self.run.stop_requested and self.run.stopped_by is None,  # Ctrl-C, not a callback
        )
        return None if len(returns) < episodes else (returns, lengths)

    def _eval_environment(self, spec: Any, episodes: int) -> Environment:
        """The envs to evaluate on, built at the first evaluation and kept for the run: None rebuilds the training
        env as the guard does (nominal physics); an id, class or factory is built like the training env; an env
        or vector env instance is used as it is (and left open: it is the caller's)."""
        found = self._eval_envs.get(id(spec))
        if found is not None:
            return found[1]
        training = self.body.env.envs
        if spec is not None and any(spec is env for env in getattr(training, "envs", ())):
            raise ConfigError(
                "EvalCallback: eval_env is the training env itself (evaluating would step its episodes); pass "
                "another instance, its id or class, or None"
            )
        config = nominal_physics(self.run.config)
        if spec is None:
            factory, count, owned = getattr(self.body, "env_factory", None), eval_num_envs(episodes), True
        else:
            source = env_source(spec, {})
            factory, count, owned = (
                source.factory(),
                source.num_envs or eval_num_envs(episodes),
                source.num_envs is None,
            )
            if factory is None:
                config = replace(config, env=replace(config.env, id=source.env_id))
        environment = build_environment(config, algo_gamma(config), num_envs=count, env_factory=factory)
        if (environment.envs.single_observation_space, environment.envs.single_action_space) != (
            training.single_observation_space,
            training.single_action_space,
        ):
            if owned:
                environment.envs.close()
            raise ConfigError(
                f"EvalCallback: eval_env's spaces ({environment.envs.single_observation_space}, "
                f"{environment.envs.single_action_space}) differ from the training env's "
                f"({training.single_observation_space}, {training.single_action_space})"
            )
        self._eval_envs[id(spec)] = (spec, environment, owned)
        return environment

    # ---- saving ---------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """The agent as it is now, written to the folder ``path`` as ``pgrad.api``'s ``save`` writes one
        (``tensors.safetensors``, ``state.json``, ``spaces.json``), without the replay buffer: a saved agent acts,
        it does not train. A folder that holds something else than a saved agent is refused."""
        self._needs("saving the agent", "train_state", "env")
        target = Path(path)
        if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / STATE).is_file())):
            raise ConfigError(f"save: {target} exists and is not a saved pgrad agent; choose another path")
        state = dataclasses.replace(self.body.train_state(), replay={})
        tensors, parts = state.to_parts()
        guard = getattr(self.body, "guard", None)
        healthy = bool(guard.healthy) if guard is not None else True
        save_checkpoint(target, tensors, {**parts, "healthy": healthy, "score": None})
        envs = self.body.env.envs
        write_spaces(target, envs.single_observation_space, envs.single_action_space, self.run.config)
        return target

    def close(self) -> None:
        """Closes the evaluation envs this object built; unhooks the collector."""
        if self.collector is not None:
            self.collector.hooks = None
        for _, environment, owned in self._eval_envs.values():
            if owned:
                environment.envs.close()
        self._eval_envs = {}
