"""Environments handed over as Python objects (the library API): what ``config.env.id`` records for them and
how the runners build vector envs from them.

An env id (``"CartPole-v1"``, ``"pkg.module:Class"``, ``"pkg.module:EnvId"``) is rebuilt from the config alone,
so ``pgrad eval`` and ``pgrad resume`` work on the run folder. A class or an annotated factory that can be
imported back by ``module:qualname`` becomes such an id too. Anything else (an instance, a vector env, a
lambda or a local function) is used through a ``VectorEnvFactory`` for this process only; ``env.id`` then
records the instance's registered id (``env.spec.id``) or a label, and the run folder can only be evaluated
or resumed from Python (``pgrad.load(path, env=...)``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import gymnasium as gym
from gymnasium.vector import AutoresetMode

from pgrad.envs.factory import check_env_kwargs, load_entry_point
from pgrad.errors import ConfigError


class VectorEnvFactory(Protocol):
    """``(num_envs, render_mode) -> VectorEnv``: what the runners call instead of ``make_vector_env``."""

    def __call__(self, num_envs: int, render_mode: str | None) -> gym.vector.VectorEnv: ...


@dataclass(frozen=True)
class EnvSource:
    """Where a run's envs come from: the id recorded in the config, and a factory when an env object was passed."""

    env_id: str  # what config.env.id records
    # A new factory per run (an instance is the training env of each run in turn); None: env_id rebuilds the env.
    new_factory: Callable[[], VectorEnvFactory] | None
    num_envs: int | None = None  # fixed by the object (an instance: 1; a vector env: its num_envs)

    def factory(self) -> VectorEnvFactory | None:
        """A new vector-env factory when an env object was passed, else None."""
        return None if self.new_factory is None else self.new_factory()


EnvLike = str | gym.Env | gym.vector.VectorEnv | Callable[..., gym.Env]


def env_source(env: Any, kwargs: dict[str, Any]) -> EnvSource:
    """Classify what the user passed as ``env``; ``kwargs`` are the constructor's (``env.kwargs``)."""
    if isinstance(env, str):
        return EnvSource(env, None)
    if isinstance(env, gym.vector.VectorEnv):
        if kwargs:
            raise ConfigError("env.kwargs: an already built vector env takes no constructor kwargs")
        return EnvSource(_spec_id(env) or _label(type(env)), lambda: _VectorInstance(env), env.num_envs)
    if isinstance(env, gym.Env):
        if kwargs:
            raise ConfigError("env.kwargs: an already built env takes no constructor kwargs; pass its class instead")
        return EnvSource(_spec_id(env) or _label(type(env.unwrapped)), lambda: _Instance(env), 1)
    if callable(env):
        entry_point = _importable_entry_point(env)
        if entry_point is not None:
            return EnvSource(entry_point, None)
        check_env_kwargs(env, kwargs, _label(env))
        return EnvSource(_label(env), lambda: _Factory(env, dict(kwargs)))
    raise ConfigError(
        f"env: expected an env id, a gymnasium.Env (instance, class or factory) or a gymnasium vector env; "
        f"got {type(env).__name__}"
    )


def _label(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', type(obj).__name__)}"


def _spec_id(env: Any) -> str | None:
    # the innermost env's spec: a wrapper's ``spec`` property caches a copy on itself, which pgrad.envs.state
    # would then find in the env's state and call not plain data (a needless "resume will not be exact")
    spec = getattr(env.unwrapped if isinstance(env, gym.Env) else env, "spec", None)
    return spec.id if isinstance(spec, gym.envs.registration.EnvSpec) else None


def _importable_entry_point(factory: Callable[..., Any]) -> str | None:
    """``module:qualname`` when importing it gives back this very class or annotated factory (then the run
    folder is rebuilt from config.yaml alone, as for an id); None for lambdas, local or unannotated functions."""
    label = _label(factory)
    if "<" in label or label.startswith("__main__:"):
        return None
    try:
        loaded = load_entry_point(label)
    except ConfigError:
        return None
    return label if loaded is factory else None


def _returning(env: gym.Env) -> Callable[[], gym.Env]:
    return lambda: env


def _as_vector(make: Callable[[], gym.Env], num_envs: int) -> gym.vector.VectorEnv:
    return gym.vector.SyncVectorEnv([make] * num_envs, autoreset_mode=AutoresetMode.NEXT_STEP)


class _Factory:
    """A class or factory called with ``env.kwargs`` for each copy."""

    def __init__(self, make: Callable[..., gym.Env], kwargs: dict[str, Any]) -> None:
        self.make = make
        self.kwargs = kwargs

    def __call__(self, num_envs: int, render_mode: str | None) -> gym.vector.VectorEnv:
        kwargs = self.kwargs if render_mode is None else {**self.kwargs, "render_mode": render_mode}
        return _as_vector(lambda: self.make(**kwargs), num_envs)


class _Instance:
    """One env instance: the training env is the instance itself (so ``env.num_envs`` must be 1); every
    later call (evaluation envs) gets deep copies, so evaluations never step the training episodes."""

    def __init__(self, env: gym.Env) -> None:
        self.env = env
        self.handed_out = False

    def __call__(self, num_envs: int, render_mode: str | None) -> gym.vector.VectorEnv:
        if render_mode is not None and getattr(self.env, "render_mode", None) != render_mode:
            raise ConfigError(
                f"env: this env instance was made with render_mode={getattr(self.env, 'render_mode', None)!r}; "
                f"pass its class or a factory to render {render_mode!r} frames"
            )
        if not self.handed_out:
            if num_envs != 1:
                raise ConfigError(
                    f"env.num_envs: an env instance is one env, not {num_envs}; pass its class or a factory"
                )
            self.handed_out = True
            return _as_vector(_returning(self.env), 1)
        try:
            copies = [copy.deepcopy(self.env) for _ in range(num_envs)]
        except Exception as exc:
            raise ConfigError(
                f"env: evaluation needs copies of the env instance, and deepcopy failed ({type(exc).__name__}: "
                f"{exc}); pass its class or a factory, or set guard.eval_every=0"
            ) from None
        return gym.vector.SyncVectorEnv([_returning(e) for e in copies], autoreset_mode=AutoresetMode.NEXT_STEP)


class _VectorInstance:
    """A vector env: trained on as it is; evaluation envs are rebuilt from its registered spec."""

    def __init__(self, envs: gym.vector.VectorEnv) -> None:
        self.envs = envs
        self.handed_out = False

    def __call__(self, num_envs: int, render_mode: str | None) -> gym.vector.VectorEnv:
        if not self.handed_out and render_mode is None:
            self.handed_out = True
            autoreset = self.envs.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
            if autoreset != AutoresetMode.NEXT_STEP:
                raise ConfigError(f"env: the vector env uses autoreset mode {autoreset}; pgrad needs next-step")
            return self.envs
        spec = getattr(self.envs, "spec", None)
        if not isinstance(spec, gym.envs.registration.EnvSpec):
            raise ConfigError(
                "env: evaluation needs more envs like this vector env, and it has no registered spec to build "
                "them from; pass an env id, class or factory, or set guard.eval_every=0"
            )
        kwargs = {k: v for k, v in spec.kwargs.items() if k not in ("num_envs", "vectorization_mode")}
        if render_mode is not None:
            kwargs["render_mode"] = render_mode
        return gym.make_vec(
            spec.id,
            num_envs=num_envs,
            vectorization_mode="sync",
            vector_kwargs={"autoreset_mode": AutoresetMode.NEXT_STEP},
            **kwargs,
        )
