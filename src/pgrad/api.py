"""pgrad as a library, in the habits of Stable-Baselines3: ``PPO(env).learn(n)``, ``save``, ``load``, ``predict``.

``from pgrad.api import PPO, Callback`` (the package root stays light: ``import pgrad`` loads no torch).

A thin layer over what the command line runs: the config is resolved by ``pgrad.runs.resolve_config``
(defaults < the env kind's defaults or a preset < ``config`` < ``sets``, every field validated with the
CLI's one-line errors), training is the CLI's runner for the algorithm's kind (``pgrad.runners.runner_for``)
with its run folder, guard and checkpoints, and ``predict`` is the deployed chain of ``pgrad.policy``.
Nothing here is a second loop.

Global state: a run seeds Python's ``random``, NumPy's and torch's global RNGs and sets torch's and BLAS's
thread counts, as the CLI does (its exact resume depends on it). ``learn`` does that for the run only and
puts all of it back when it returns, even when it fails; ``predict`` and ``load`` touch none of it.
"""

from __future__ import annotations

import os
import random
import reprlib
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from threadpoolctl import threadpool_limits

from pgrad import safe_io
from pgrad.callbacks import BaseCallback, Callback, Logger, as_callbacks
from pgrad.checkpoint import STATE, TENSORS, read_train_state, save_checkpoint
from pgrad.config import TrainConfig, merge
from pgrad.envs.sources import EnvLike, EnvSource, env_source
from pgrad.errors import ConfigError, PgradError
from pgrad.policy import Policy, build_policy, checkpoint_path, load_policy, write_spaces
from pgrad.presets import preset_for
from pgrad.registry import get_algorithm
from pgrad.runners.context import TrainResult
from pgrad.sb3_compat import (
    check_policy,
    sb3_layer,
    sb3_names,
    sb3_vec_env,
    sb3_verbose,
    split_policy_and_env,
    tensorboard_run_dir,
)


@contextmanager
def kept_global_state() -> Iterator[None]:
    """Run the block, then restore the global RNGs (``random``, NumPy, torch, CUDA if started) and the
    torch and BLAS thread counts to what they were before it."""
    python_rng = random.getstate()
    numpy_rng = np.random.get_state()
    torch_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    torch_threads = torch.get_num_threads()
    blas = threadpool_limits(limits=None, user_api="blas")  # records the current limits, changes nothing
    try:
        yield
    finally:
        random.setstate(python_rng)
        np.random.set_state(numpy_rng)
        torch.set_rng_state(torch_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        torch.set_num_threads(torch_threads)
        blas.restore_original_limits()


def _short(value: Any) -> str:
    return reprlib.repr(value)  # a huge list or mapping in an error line: its start, then "..."


def check_arguments(config: Any, sets: Any, env_kwargs: Any, run_dir: Any, flags: Mapping[str, Any]) -> None:
    """The constructor's arguments by type, before anything is built: one ConfigError naming the argument
    (a list passed as ``config`` would otherwise end in an AttributeError deep inside)."""
    if config is not None and not isinstance(config, Mapping):
        raise ConfigError(
            f"config must be a mapping of sections, like {{'ppo': {{'num_steps': 256}}}}; got {_short(config)}"
        )
    if isinstance(sets, (str, bytes)) or not isinstance(sets, Sequence) or not all(isinstance(s, str) for s in sets):
        raise ConfigError(f"sets must be a list of 'key=value' texts, like ['ppo.num_epochs=4']; got {_short(sets)}")
    if env_kwargs is not None and not isinstance(env_kwargs, Mapping):
        raise ConfigError(f"env_kwargs must be a mapping of keyword: value; got {_short(env_kwargs)}")
    if run_dir is not None and not isinstance(run_dir, (str, os.PathLike)):
        raise ConfigError(f"run_dir must be a path (str or pathlib.Path); got {_short(run_dir)}")
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be True or False; got {_short(value)}")


def checked_callbacks(callbacks: Any, agent: Any = None) -> list[BaseCallback]:
    """``learn``'s callbacks as a list of ``BaseCallback``: None, one callback, a list or ``CallbackList``, SB3-shaped
    ``BaseCallback`` subclasses, pgrad ``Callback``s, functions of the update's row
    (``pgrad.callbacks.as_callbacks``); anything else is one ConfigError. Each is bound to ``agent``
    (``init_callback``), before the run folder is opened."""
    checked = as_callbacks(callbacks, "learn: callbacks")
    for callback in checked:
        callback.init_callback(agent)
    return checked


def parameters_from(source: Any) -> dict[str, Any]:
    """``set_parameters``' argument as ``{"<module>.<name>": tensor}``: SB3's ``{"policy": {...}}`` dict (from
    ``get_parameters``), or the path of a saved agent or run folder (its latest checkpoint's weights)."""
    if isinstance(source, (str, os.PathLike)):
        modules = read_train_state(checkpoint_path(sb3_path(source))).modules
        return {f"{module}.{key}": value for module, state in modules.items() for key, value in state.items()}
    if not isinstance(source, Mapping) or not isinstance(source.get("policy"), Mapping):
        raise ConfigError(
            f"set_parameters: pass get_parameters()'s dict {{'policy': {{name: tensor}}}} or a saved agent's path; "
            f"got {_short(source)}"
        )
    return dict(source["policy"])


def sb3_total_steps(total_steps: Any, total_timesteps: Any) -> int:
    """learn's step count from pgrad's ``total_steps`` or SB3's ``total_timesteps`` (one of them, a positive int)."""
    if total_steps is not None and total_timesteps is not None:
        raise ConfigError("learn: give total_steps or total_timesteps (SB3's name), not both")
    steps = total_steps if total_steps is not None else total_timesteps
    name = "total_steps" if total_steps is not None else "total_timesteps"
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"learn: {name} must be a positive int; got {steps!r}")
    return steps


def check_learn_options(log_interval: Any, tb_log_name: Any, reset_num_timesteps: Any, progress_bar: Any) -> None:
    """SB3's other ``learn`` arguments by type: one ConfigError naming the argument."""
    if log_interval is not None and (isinstance(log_interval, bool) or not isinstance(log_interval, int)):
        raise ConfigError(f"learn: log_interval must be an int; got {_short(log_interval)}")
    if tb_log_name is not None and (not isinstance(tb_log_name, str) or not tb_log_name or "/" in tb_log_name):
        raise ConfigError(f"learn: tb_log_name must be a folder name; got {_short(tb_log_name)}")
    for name, value in (("reset_num_timesteps", reset_num_timesteps), ("progress_bar", progress_bar)):
        if not isinstance(value, bool):
            raise ConfigError(f"learn: {name} must be True or False; got {_short(value)}")


def check_load_options(custom_objects: Any, print_system_info: Any, force_reset: Any) -> None:
    """SB3's ``load`` options pgrad has no use for, refused where they would change something."""
    if custom_objects:
        raise ConfigError("load: custom_objects is not offered; pgrad's saved agents hold no pickled objects")
    if print_system_info is not False:
        raise ConfigError("load: print_system_info is not offered; `pgrad doctor RUN_DIR` reports the system")
    if not isinstance(force_reset, bool):
        raise ConfigError(f"load: force_reset must be True or False; got {_short(force_reset)}")


def sb3_path(path: str | os.PathLike[str]) -> Path:
    """A saved agent's folder for SB3's habit of ``save("agent")`` / ``load("agent.zip")``: a path ending in
    ``.zip`` names the folder without the suffix (pgrad writes a folder of safetensors and JSON, never a zip).
    An existing ``.zip`` file (SB3's pickled model) is refused with one line."""
    path = Path(path)
    if path.suffix != ".zip":
        return path
    if path.is_file():
        raise ConfigError(f"{path} is an SB3 zip (pickled objects); pgrad cannot load it: retrain with pgrad")
    return path.with_suffix("")


def _given_spaces(env: EnvLike, source: EnvSource) -> tuple[gym.Space[Any], gym.Space[Any]]:
    """The (observation, action) spaces of an env handed over as a Python object: an instance or a vector env
    has them; a class or factory builds one env, closed again."""
    if isinstance(env, gym.vector.VectorEnv):
        return env.single_observation_space, env.single_action_space
    if isinstance(env, gym.Env):
        return env.observation_space, env.action_space
    factory = source.factory()
    assert factory is not None, "an env object has a factory"
    from pgrad.builders import one_line

    try:
        probe = factory(1, None)
    except PgradError:
        raise
    except Exception as exc:  # the env's own constructor, as build_environment reports it
        raise ConfigError(f"env {source.env_id} could not be created: {one_line(exc)}") from None
    try:
        return probe.single_observation_space, probe.single_action_space
    finally:
        probe.close()


class Agent:
    """An algorithm, its environment, its run folder and (after ``learn`` or ``load``) its policy.

    ``env``: a registered id (``"CartPole-v1"``), an entry point (``"pkg.module:Class"``, Gymnasium's
    ``"pkg.module:EnvId"``), a ``gymnasium.Env`` instance, class or factory, or a Gymnasium vector env.
    ``algo``: the algorithm (``pgrad list``); ``PPO``, ``A2C``... fix it. ``config``: nested sections as in a
    config file (``{"ppo": {"num_steps": 256}, "env": {"num_envs": 4}}``); ``sets``: ``--set`` overrides
    (``["ppo.optimizer.learning_rate=1e-3"]``), applied after ``config``; ``env_kwargs``: the env
    constructor's keyword arguments (``env.kwargs``). ``run_dir``: the run folder (default
    ``runs/<algo>-<env>-s<seed>-<time>``, as the CLI); ``overwrite``: as ``--overwrite``. ``verbose``: the
    progress bar and event lines of the CLI.

    SB3's form works beside it: ``PPO("MlpPolicy", env, n_steps=256, policy_kwargs=dict(net_arch=[64, 64]))`` or
    ``PPO(policy="MlpPolicy", env=env)``. ``policy`` is checked against the observation space; every other keyword
    is one of SB3's constructor arguments, read through ``pgrad.sb3_compat.SB3_ARGUMENTS`` (mapped onto the config,
    or refused with one line naming the pgrad way; the table is docs/sb3.md). ``verbose`` takes SB3's 0, 1, 2.
    """

    algo_name: ClassVar[str | None] = None  # PPO, A2C, ... set it

    def __init__(
        self,
        *positional: Any,
        env: EnvLike | None = None,
        policy: str | None = None,
        algo: str | None = None,
        config: Mapping[str, Any] | None = None,
        sets: Sequence[str] = (),
        seed: int | None = None,
        env_kwargs: Mapping[str, Any] | None = None,
        run_dir: str | Path | None = None,
        overwrite: bool = False,
        use_preset: bool = True,
        verbose: bool | int = False,
        **sb3_arguments: Any,
    ) -> None:
        from pgrad.runs import default_run_dir, resolve_config

        # SB3's PPO("MlpPolicy", env, n_steps=...) beside pgrad's PPO(env, config=...): the keywords beyond pgrad's
        # own are SB3's, each read through its table (pgrad.sb3_compat.SB3_ARGUMENTS), never passed on blindly.
        policy, passed = split_policy_and_env(positional, env, policy, type(self).__name__)
        env = sb3_vec_env(passed)  # make_vec_env's DummyVecEnv: a Gymnasium vector env over the same envs
        verbose = sb3_verbose(verbose)
        flags = {"overwrite": overwrite, "use_preset": use_preset, "verbose": verbose}
        use_kind_defaults = use_preset
        check_arguments(config, sets, env_kwargs, run_dir, flags)
        algo = self._algorithm(algo)
        layer = self._config_layer(algo, config, env_kwargs, sb3_arguments)
        tensorboard_log = sb3_arguments.get("tensorboard_log")
        if tensorboard_log is not None and run_dir is not None:
            raise ConfigError(
                "tensorboard_log: the run folder goes under it; give tensorboard_log or run_dir, not both"
            )
        self.source: EnvSource = env_source(env, dict(layer.get("env", {}).get("kwargs") or {}))
        if self.source.new_factory is not None and get_algorithm(algo).kind == "asynchronous":
            raise ConfigError(
                f"env: {algo}'s workers build their envs in their own processes; pass an env id or an importable "
                "'module:Class' instead of a Python object"
            )
        if self.source.num_envs is not None:
            chosen = layer.get("env", {}).get("num_envs")
            if chosen is not None and chosen != self.source.num_envs:
                raise ConfigError(
                    f"env.num_envs: the env passed holds {self.source.num_envs} env(s), not {chosen}; "
                    "pass a class or factory to choose the count"
                )
            layer.setdefault("env", {})["num_envs"] = self.source.num_envs
            # A preset's batch sizes are tuned for its env count (CartPole's: 8 envs x 32 steps, minibatch 256):
            # an env object with another count trains on the defaults instead of a preset it would not fit.
            preset = preset_for(algo, self.source.env_id) if use_preset else None
            if preset is not None and preset.values.get("env", {}).get("num_envs", self.source.num_envs) != (
                self.source.num_envs
            ):
                use_preset, use_kind_defaults = False, True
        with kept_global_state(), sb3_names(algo, sb3_arguments):  # a bad value names SB3's argument too
            # the defaults for the env's kind (where no preset applies) read its spaces: an env object has them
            given = _given_spaces(env, self.source) if self.source.new_factory is not None else None
            self.config, self.preset_source = resolve_config(
                algo,
                self.source.env_id,
                sets=list(sets),
                seed=seed,
                use_preset=use_preset,
                config_layer=layer,
                check_env=self.source.new_factory is None,
                spaces=given,
                use_kind_defaults=use_kind_defaults,
            )
            if self.source.new_factory is not None:
                self._check_builder_settings()
            self.observation_space, self.action_space = self._spaces(env)
        check_policy(policy, self.observation_space)
        self._tensorboard_log = Path(tensorboard_log) if tensorboard_log is not None else None
        self.run_dir = Path(run_dir) if run_dir is not None else default_run_dir(self.config)
        if self._tensorboard_log is not None:
            self.run_dir = tensorboard_run_dir(self._tensorboard_log, type(self).__name__)
        self.env: Any = passed if isinstance(passed, (gym.Env, gym.vector.VectorEnv)) or env is not passed else None
        self._parameters_set = False  # set_parameters changed the acting policy only (see there)
        self.overwrite = overwrite
        self.verbose = verbose
        self.num_timesteps = 0
        self.policy: Policy | None = None
        self.last_result: TrainResult | None = None
        self.trainable = True  # False for a saved agent: it has no run folder to continue
        # Where the config came from when it is not the caller's own (a loaded run folder), and what the caller
        # trusts of it: learn() builds envs and may start Ray from it (see refuse_untrusted_folder).
        self._received: Path | None = None
        self._trust_env_code = self._trust_ray = False
        self._resume = False  # a learn() wrote the run folder (or it was loaded): the next learn resumes it
        self._rng = np.random.default_rng(self.config.run.seed)  # stochastic predict only; never the global RNG

    @staticmethod
    def _config_layer(
        algo: str, config: Mapping[str, Any] | None, env_kwargs: Mapping[str, Any] | None, sb3: dict[str, Any]
    ) -> dict[str, Any]:
        """The caller's config layer: ``config``'s sections, ``env_kwargs`` as ``env.kwargs``, then SB3's keywords
        (``pgrad.sb3_compat.sb3_layer``), which win over ``config`` field by field."""
        layer: dict[str, Any] = {}
        for section, values in (config or {}).items():
            if not isinstance(values, Mapping):
                raise ConfigError(f"config['{section}'] must be a mapping of key: value; got {values!r}")
            layer[section] = dict(values)
        if env_kwargs is not None:
            layer.setdefault("env", {})["kwargs"] = dict(env_kwargs)
        return merge(layer, sb3_layer(algo, sb3, algo.upper()))

    @classmethod
    def _algorithm(cls, algo: str | None) -> str:
        if cls.algo_name is not None:
            if algo is not None and algo != cls.algo_name:
                raise ConfigError(f"algo: {cls.__name__} is '{cls.algo_name}'; use pgrad.Agent(env, algo='{algo}')")
            return cls.algo_name
        if algo is None:
            from pgrad.registry import ALGORITHMS

            raise ConfigError(f"algo: name the algorithm (allowed: {', '.join(ALGORITHMS)})")
        get_algorithm(algo)  # an unknown name: one line listing the allowed ones
        return algo

    def _check_builder_settings(self) -> None:
        """The env sections that ``make_vector_env`` applies while building from an id have no effect on an env
        passed as an object (it is built already, or built by the caller's own factory): refused, not ignored."""
        env = self.config.env
        if env.max_episode_steps is not None:
            raise ConfigError(
                "env.max_episode_steps: applies to envs built from an id; wrap the env passed in "
                "gymnasium.wrappers.TimeLimit instead"
            )
        if env.randomize.active:
            raise ConfigError(
                f"env.randomize.{env.randomize.active[0]}: domain randomisation wraps MuJoCo envs built from an id; "
                "pass the env id instead of an object"
            )
        if env.vectorization != "auto":
            raise ConfigError(
                f"env.vectorization: {env.vectorization!r} applies to envs built from an id; an env passed as an "
                "object is stepped in this process (pass a vector env to choose)"
            )

    @property
    def logger(self) -> Logger:
        """The run's logger (SB3's ``model.logger``): ``record(key, value)`` adds a custom scalar to the row of the
        update in progress in ``metrics.jsonl``, TensorBoard and the trackers (``pgrad.callbacks.Logger``)."""
        if "_logger" not in self.__dict__:  # load() builds agents without __init__
            self.__dict__["_logger"] = Logger()
        logger: Logger = self.__dict__["_logger"]
        return logger

    @property
    def algo(self) -> str:
        """The algorithm's name (``ppo``, ``sac``, ...), from the config."""
        return self.config.algo

    def _spaces(self, env: EnvLike) -> tuple[gym.Space[Any], gym.Space[Any]]:
        """The spaces, read before any training: an instance or vector env has them; an id, class or factory
        builds one env (so a bad id or kwarg fails here, with the CLI's one-line error)."""
        if isinstance(env, gym.vector.VectorEnv):
            return env.single_observation_space, env.single_action_space
        if isinstance(env, gym.Env):
            return env.observation_space, env.action_space
        from pgrad.builders import algo_gamma, build_environment

        probe = build_environment(self.config, algo_gamma(self.config), num_envs=1, env_factory=self.source.factory())
        try:
            return probe.envs.single_observation_space, probe.envs.single_action_space
        finally:
            probe.envs.close()

    # ---- training -------------------------------------------------------------------------------
    def learn(
        self,
        total_steps: int | None = None,
        callbacks: Any = (),
        *,
        total_timesteps: int | None = None,
        callback: Any = None,
        log_interval: int | None = None,
        tb_log_name: str | None = None,
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> Agent:
        """Train ``total_steps`` more env steps (all envs together) in the run folder; a second call continues
        the same run exactly as ``pgrad resume --total-steps`` would. ``callbacks`` (``pgrad.Callback``) hear
        of updates, evaluations and checkpoints, and stop the run by returning False. Returns ``self``.

        SB3's spelling works too: ``learn(total_timesteps=n, callback=cb, progress_bar=True)``. ``callback`` is
        one callback or a list; ``progress_bar`` shows the progress bar and event lines for this call;
        ``tb_log_name`` names the run folder under the constructor's ``tensorboard_log`` (``NAME_<n>``) before the
        first call; ``log_interval`` changes nothing (pgrad writes a row every update, ``loop.log_every`` off-policy).
        ``reset_num_timesteps``: either value trains ``n`` more steps and continues the run folder, its step counter
        and its learning-rate schedule (SB3's False); SB3's True would restart its counter and schedules at 0."""
        from pgrad.runners import runner_for

        if not self.trainable:
            raise ConfigError(
                "learn: a saved agent, or a run folder's non-latest checkpoint, is for acting (predict, export); "
                "to train further, load the run folder with checkpoint='latest'"
            )
        if self._parameters_set:
            raise ConfigError(
                "learn: set_parameters changed the acting policy only (predict, save); the run folder trains from "
                "its own checkpoint: load the saved agent's weights into a new run instead"
            )
        total_steps = sb3_total_steps(total_steps, total_timesteps)
        check_learn_options(log_interval, tb_log_name, reset_num_timesteps, progress_bar)
        if callback is not None:  # SB3's callback: one or a list, into the same check as callbacks=
            if callbacks:
                raise ConfigError("learn: give callbacks= or callback=, not both")
            callbacks = callback
        bound = checked_callbacks(callbacks, self)  # before the runner opens (and locks) the run folder
        if self._tensorboard_log is not None and not self._resume:  # SB3's DIR/NAME_<n>, numbered when it starts
            self.run_dir = tensorboard_run_dir(self._tensorboard_log, tb_log_name or type(self).__name__)
        config = replace(self.config, run=replace(self.config.run, total_steps=self.num_timesteps + total_steps))
        factory = self.source.factory()
        self._refuse_untrusted_folder(config, built_from_id=factory is None)
        with kept_global_state():
            runner = runner_for(config)(
                config,
                self.run_dir,
                resume=self._resume,
                console=self.verbose or progress_bar,
                overwrite=self.overwrite and not self._resume,
                **({"env_factory": factory} if factory is not None else {}),
            )
            runner.run.callbacks, runner.run.logger = bound, self.logger
            result = runner.train()
            self.config, self._resume, self.last_result, self.num_timesteps = config, True, result, result.steps
            write_spaces(self.run_dir, self.observation_space, self.action_space, config)  # export/load need no env
            self.policy, _, _ = load_policy(  # trusted: this run's own network (a received one was checked above)
                result.checkpoint or self.run_dir,
                spaces=(self.observation_space, self.action_space),
                trust_env_code=True,
            )
        return self

    def _refuse_untrusted_folder(self, config: TrainConfig, built_from_id: bool) -> None:
        """A loaded agent's config is the run folder's: training it must pass the checks ``pgrad resume``
        makes (an entry-point env imports its module; a Ray backend starts Ray or joins its address) unless
        ``load`` was told to trust them. An env passed to ``load`` as a Python object builds nothing from the
        folder's env.id."""
        from pgrad.runs import refuse_untrusted_env_code, refuse_untrusted_ray

        if self._received is None:
            return  # the caller's own config (Agent(...)): they chose its env and backend
        if built_from_id:
            refuse_untrusted_env_code(config, self._received, self._trust_env_code)
        refuse_untrusted_ray(config, self._received, self._trust_ray)

    # ---- acting ----------------------------------------------------------------------------------
    def predict(
        self, observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = True
    ) -> tuple[np.ndarray, Any]:
        """The env action for one observation, or actions for a batch (one more leading axis: a VecEnv's
        observations), with the normaliser and the action rescaling applied: what ``env.step`` takes.

        SB3's signature and return: ``(actions, state)``. For a feed-forward policy ``state`` comes back as given
        (None) and ``episode_start`` is not needed, as for SB3's own MLP policies, so
        ``action, _ = model.predict(obs)`` and SB3's ``evaluate_policy`` port unchanged. A recurrent policy
        (``network.recurrent``) works as sb3-contrib's RecurrentPPO: pass back the state it returned (a [N,
        state_size] array; None at the start) and ``episode_start`` [N] (true where an episode begins). Unlike SB3
        the default is deterministic (``deterministic=False`` samples from the agent's own generator)."""
        if isinstance(state, (bool, np.bool_)):
            raise ConfigError(
                f"predict: the second argument is SB3's recurrent state; pass deterministic={bool(state)} by keyword"
            )
        if self.policy is None:
            raise ConfigError("predict: this agent has no trained policy yet; call learn() or load a saved one")
        if self.policy.recurrent:
            return self.policy.predict_recurrent(observation, state, episode_start, deterministic, self._rng)
        return self.policy.predict(observation, deterministic, self._rng), state

    # ---- SB3's model accessors ------------------------------------------------------------------------
    def get_env(self) -> Any:
        """The env object given to the constructor (or to ``load``), unchanged: a ``gymnasium.Env``, a Gymnasium
        vector env or SB3's ``DummyVecEnv`` (``make_vec_env``'s, trained on as a Gymnasium vector env over its envs);
        a ``gymnasium.Env`` is not wrapped in SB3's ``VecEnv``. None when the env was an id, class or factory (pgrad
        builds its envs inside ``learn``). Also ``model.env``."""
        return self.env

    def get_parameters(self) -> dict[str, dict[str, torch.Tensor]]:
        """The weights in SB3's shape: ``{"policy": {"<module>.<name>": tensor}}`` (modules as in the checkpoint:
        ``model`` for the actor-critic; ``actor``, ``critic``... off-policy). Optimiser moments are not included
        (the checkpoint holds them for exact resume)."""
        return {
            "policy": {
                f"{module}.{key}": value
                for module, state in self._state().modules.items()
                for key, value in state.items()
            }
        }

    def set_parameters(
        self, load_path_or_dict: str | Path | Mapping[str, Any], exact_match: bool = True, device: Any = "auto"
    ) -> None:
        """Replace the acting policy's weights: a ``get_parameters()`` dict, or a saved agent or run folder's
        path. ``exact_match``: every weight present, no unknown one; False: the ones given, the rest kept.
        ``device`` is accepted for SB3's signature (acting runs on the CPU). The run folder is not changed:
        ``predict``, ``evaluate_policy`` and ``save`` use the new weights; ``learn`` refuses (one line)."""
        state = self._state()
        given = parameters_from(load_path_or_dict)
        modules = {module: dict(values) for module, values in state.modules.items()}
        known = {f"{module}.{key}" for module, values in modules.items() for key in values}
        unknown, missing = sorted(set(given) - known), sorted(known - set(given))
        if unknown or (exact_match and missing):
            what = f"unknown {unknown[:3]}" if unknown else f"missing {missing[:3]}"
            raise ConfigError(f"set_parameters: the weights do not match this {self.algo} agent ({what})")
        for name, value in given.items():
            module, key = name.split(".", 1)
            modules[module][key] = torch.as_tensor(value)
        assert self.last_result is not None and self.last_result.checkpoint is not None  # _state checked it
        self._modified = replace(state, modules=modules)
        self.policy = build_policy(
            self.config, self._modified, self.last_result.checkpoint, self.observation_space, self.action_space
        )
        self._parameters_set = True

    def _state(self) -> Any:
        """The latest checkpoint's train state (after ``set_parameters``, with its weights)."""
        if self._parameters_set:
            return self._modified
        if self.last_result is None or self.last_result.checkpoint is None:
            raise ConfigError("this agent has no weights yet; call learn() first, or load a saved one")
        return read_train_state(self.last_result.checkpoint)

    # ---- saving and loading ---------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the latest checkpoint to the folder ``path``: ``tensors.safetensors`` (weights, optimiser
        moments, normaliser statistics), ``state.json`` (config, counters, RNG states) and ``spaces.json``:
        the run folder's checkpoint format, no pickle. Returns the folder. ``"agent.zip"`` (SB3's habit) names the
        folder ``agent``, the one ``load("agent")`` and ``load("agent.zip")`` read."""
        if self.last_result is None or self.last_result.checkpoint is None:
            raise ConfigError("save: nothing to save yet; call learn() first")
        target = sb3_path(path)
        if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / STATE).is_file())):
            raise ConfigError(f"save: {target} exists and is not a saved pgrad agent; choose another path")
        target.mkdir(parents=True, exist_ok=True)
        if self._parameters_set:  # the weights set_parameters gave, with the rest of the latest checkpoint
            save_checkpoint(target, *self._modified.to_parts())
        elif target.resolve() != self.last_result.checkpoint.resolve():
            for name in (TENSORS, STATE):  # never through a link at the destination (a saved agent from elsewhere)
                with (
                    safe_io.open_read(self.last_result.checkpoint / name) as source,
                    safe_io.atomic_file(target / name) as copy,
                ):
                    shutil.copyfileobj(source, copy)
        write_spaces(target, self.observation_space, self.action_space, self.config)
        return target

    @classmethod
    def load(
        cls,
        path: str | Path,
        env: EnvLike | None = None,
        device: Any = "auto",
        custom_objects: Mapping[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        *,
        checkpoint: str = "latest",
        trust_env_code: bool = False,
        trust_ray: bool = False,
        verbose: bool | int = False,
    ) -> Agent:
        """A saved agent (``save``) or a run folder's ``checkpoint`` (latest, best or a name), ready to
        ``predict``. ``env`` is needed only where the spaces are not saved and the env cannot be rebuilt
        from its id. A run folder loaded at its latest checkpoint can be trained further (``learn`` resumes it,
        with ``env`` if it was trained on a Python object); a saved agent cannot.

        The folder is data, as for ``pgrad resume``: ``trust_env_code`` (``--trust-env-code``) allows its
        entry-point env ('module:attr', importing that module runs its code) to be built, here or by
        ``learn``; ``trust_ray`` (``--trust-ray``) allows ``learn`` to use its ``run.backend: ray`` (a Ray
        started here, or the cluster at its ``ray.address``).

        SB3's arguments: ``path`` may end in ``.zip`` (see ``save``); ``device`` changes nothing (acting runs on
        the CPU; a further ``learn`` keeps the run's ``run.device``); ``custom_objects`` must be None or empty
        (nothing is unpickled); ``print_system_info`` must be False (``pgrad doctor`` reports the
        system); ``force_reset`` changes nothing (a resumed run continues its envs exactly)."""
        check_load_options(custom_objects, print_system_info, force_reset)
        path = sb3_path(path)
        source = env_source(env, {}) if env is not None else None
        with kept_global_state():
            found = checkpoint_path(path, checkpoint)
            policy, config, _ = load_policy(
                found, env_factory=source.factory() if source else None, trust_env_code=trust_env_code
            )
        if cls.algo_name is not None and config.algo != cls.algo_name:
            raise ConfigError(f"load: {found} holds a '{config.algo}' agent, not '{cls.algo_name}'")
        agent = cls.__new__(cls)
        agent.config, agent.preset_source = config, None
        agent.source = source or EnvSource(config.env.id, None)
        agent.observation_space, agent.action_space = policy.observation_space, policy.action_space
        agent.run_dir, agent.overwrite, agent.verbose = path, False, bool(sb3_verbose(verbose))
        agent.env = env if isinstance(env, (gym.Env, gym.vector.VectorEnv)) else None
        agent._tensorboard_log, agent._parameters_set = None, False
        agent.num_timesteps = read_train_state(found).step
        agent.policy = policy
        agent.last_result = TrainResult(path, agent.num_timesteps, 0, 0.0, False, {}, found)
        # learn resumes the run folder's latest checkpoint (as pgrad resume): only an agent loaded from it can
        agent.trainable = agent._resume = (path / "config.yaml").is_file() and checkpoint == "latest"
        agent._received, agent._trust_env_code, agent._trust_ray = found / "state.json", trust_env_code, trust_ray
        agent._rng = np.random.default_rng(config.run.seed)
        return agent


class PPO(Agent):
    """Proximal Policy Optimization (clipped surrogate); ``pgrad train ppo``."""

    algo_name = "ppo"


class A2C(Agent):
    """Advantage actor-critic, synchronous; ``pgrad train a2c``."""

    algo_name = "a2c"


class A3C(Agent):
    """Asynchronous advantage actor-critic (worker processes; the env must be an id or importable entry point)."""

    algo_name = "a3c"


class TRPO(Agent):
    """Trust region policy optimisation; ``pgrad train trpo``."""

    algo_name = "trpo"


class REINFORCE(Agent):
    """Monte Carlo policy gradient; ``pgrad train reinforce``."""

    algo_name = "reinforce"


class SAC(Agent):
    """Soft actor-critic (Box actions); ``pgrad train sac``."""

    algo_name = "sac"


class TD3(Agent):
    """Twin delayed DDPG (Box actions); ``pgrad train td3``."""

    algo_name = "td3"


class DDPG(Agent):
    """Deep deterministic policy gradient (Box actions); ``pgrad train ddpg``."""

    algo_name = "ddpg"


__all__ = ["A2C", "A3C", "DDPG", "PPO", "REINFORCE", "SAC", "TD3", "TRPO", "Agent", "Callback", "kept_global_state"]
