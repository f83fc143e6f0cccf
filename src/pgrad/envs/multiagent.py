"""PettingZoo's parallel API as an env source: N copies of a team env, as time-major arrays with an agent axis.

A team env is named by an entry point, under the same trust rule as a single-agent one: what the entry point
names is checked before it is ever called. ``env.id`` may be

- ``'package.module:EnvClass'``: a ``pettingzoo.ParallelEnv`` subclass;
- ``'package.module:make_env'``: a function annotated to return a ``ParallelEnv``;
- ``'package:task_vN'``: a PettingZoo task module (``mpe2:simple_spread_v3``) whose ``parallel_env`` is
  PettingZoo's own ``parallel_wrapper_fn`` (the convention every PettingZoo and MPE2 task module follows).

``TeamEnvs`` steps the copies and returns, per step, arrays over ``[num_envs, num_agents]`` in the fixed order of
``possible_agents``. An agent that finished before its team (``env.agents`` no longer lists it) is *inactive*:
its row is zero, its ``active`` flag is 0 and the learner masks every term it would contribute (death
masking), instead of repeating its last observation. A copy whose agents have all finished is reset in the same
step (its final observations and state are returned beside the reset ones, for the truncated bootstrap). The
arrays are what a joint-transition replay buffer (MADDPG) would store as well.

Exact resume: ``capture_state``/``restore_state`` walk each copy's objects (the wrappers, the raw env, its
world and entities) and keep their plain attributes (arrays, numbers, strings, NumPy generators) with
``pgrad.envs.state``'s pickle-free encoding.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, cast

import gymnasium as gym
import numpy as np

from pgrad.entry_points import import_entry_module
from pgrad.envs.factory import _ENTRY_POINT
from pgrad.envs.state import _decode, _encode
from pgrad.errors import ConfigError
from pgrad.nets import ActionSpec

PARALLEL_FORMS = (
    "'package:task_vN' (a PettingZoo task module, e.g. mpe2:simple_spread_v3), 'package.module:EnvClass' "
    "(a pettingzoo.ParallelEnv subclass) or 'package.module:make_env' (a function annotated to return a "
    "ParallelEnv)"
)


def parallel_base() -> type:
    """PettingZoo's ``ParallelEnv`` class; PettingZoo missing is one line naming the extra."""
    try:
        from pettingzoo.utils.env import ParallelEnv
    except ImportError:
        raise ConfigError("multi-agent algorithms need PettingZoo: pip install 'pgrad[marl]'") from None
    return cast(type, ParallelEnv)


def _annotated_parallel(function: Callable[..., Any], base: type) -> bool:
    """A function whose return annotation is a ParallelEnv (subclass), resolved without calling it."""
    try:
        annotation = inspect.signature(function, eval_str=True).return_annotation
    except Exception:  # an annotation that does not resolve is no promise
        return False
    return inspect.isclass(annotation) and issubclass(annotation, base)


def _pettingzoo_wrapper(function: Any) -> bool:
    """PettingZoo's ``parallel_wrapper_fn`` product: the ``parallel_env`` of its task modules."""
    return inspect.isfunction(function) and function.__module__.startswith("pettingzoo.utils")


def load_parallel_env(entry_point: str) -> Callable[..., Any]:
    """The constructor an entry point names, checked before it is ever called (see the module docstring);
    anything else is one line naming the allowed forms."""
    base = parallel_base()
    match = _ENTRY_POINT.fullmatch(entry_point)
    if match is None:
        raise ConfigError(f"env.id: a multi-agent env must be {PARALLEL_FORMS}; got {entry_point!r}")
    module_name, attr = match["module"], match["attr"]
    try:
        module = import_entry_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"env.id: cannot import module '{module_name}' of '{entry_point}': {exc}") from None
    target: Any = getattr(module, attr, None)
    if target is None and attr.isidentifier():  # a task module not imported by its package (mpe2.simple_spread_v3)
        try:
            target = importlib.import_module(f"{module_name}.{attr}")
        except ImportError:
            target = None
    if target is None:
        raise ConfigError(f"env.id: module '{module_name}' has no '{attr}' (expected {PARALLEL_FORMS})")
    if inspect.isclass(target) and issubclass(target, base):
        return cast(Callable[..., Any], target)
    if inspect.isfunction(target) and _annotated_parallel(target, base):
        return cast(Callable[..., Any], target)
    if isinstance(target, ModuleType) and _pettingzoo_wrapper(getattr(target, "parallel_env", None)):
        return cast(Callable[..., Any], target.parallel_env)
    raise ConfigError(
        f"env.id: '{entry_point}' is a {type(target).__name__}, not a PettingZoo parallel env; "
        f"it must be {PARALLEL_FORMS}"
    )


def action_spec(space: gym.Space[Any], agent: str) -> ActionSpec:
    """The policy's output for one agent's action space: Discrete or a 1-D Box; anything else is one line."""
    if isinstance(space, gym.spaces.Discrete):
        return ActionSpec("discrete", int(space.n))
    if isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
        return ActionSpec("continuous", int(space.shape[0]))
    raise ConfigError(
        f"env: agent '{agent}' has a {space} action space; multi-agent algorithms take Discrete or a 1-D Box"
    )


def obs_width(space: gym.Space[Any], agent: str) -> int:
    """The flat width of one agent's observation: a Box of any shape (flattened); anything else is one line."""
    if isinstance(space, gym.spaces.Box):
        return int(np.prod(space.shape))
    raise ConfigError(f"env: agent '{agent}' observes a {type(space).__name__}; multi-agent algorithms take a Box")


@dataclass(frozen=True)
class TeamSpaces:
    """What the learner needs to know about a team: its agents in a fixed order, each one's observation width
    and action, the width of the global state (``state()``, or the agents' observations concatenated), and the
    Box bounds of continuous actions (policy acts in [-1, 1], mapped linearly to them)."""

    agents: tuple[str, ...]
    obs_dims: tuple[int, ...]
    actions: tuple[ActionSpec, ...]
    state_dim: int
    has_state: bool
    lows: tuple[np.ndarray | None, ...]
    highs: tuple[np.ndarray | None, ...]

    @property
    def num_agents(self) -> int:
        """How many agents the team has (``possible_agents``)."""
        return len(self.agents)

    @property
    def max_obs(self) -> int:
        """The widest observation: the width of the stored observation rows (narrower ones are zero-filled)."""
        return max(self.obs_dims)

    @property
    def max_action(self) -> int:
        """The widest continuous action (1 for discrete): the width of the stored action rows."""
        return max(a.size if a.kind == "continuous" else 1 for a in self.actions)

    @property
    def homogeneous(self) -> bool:
        """Every agent has the same observation width and action: one shared network can serve them all."""
        return len(set(self.obs_dims)) == 1 and len(set(self.actions)) == 1


def _has_state(env: Any) -> bool:
    try:
        env.state()
    except (NotImplementedError, AttributeError):
        return False
    return True


def team_spaces(env: Any) -> TeamSpaces:
    """The ``TeamSpaces`` of a reset parallel env."""
    agents = tuple(env.possible_agents)
    has_state = _has_state(env)
    obs_dims = tuple(obs_width(env.observation_space(a), a) for a in agents)
    action_spaces = [env.action_space(a) for a in agents]
    actions = tuple(action_spec(s, a) for s, a in zip(action_spaces, agents, strict=True))
    state_dim = int(np.asarray(env.state()).size) if has_state else sum(obs_dims)
    boxes = [s if isinstance(s, gym.spaces.Box) else None for s in action_spaces]
    return TeamSpaces(
        agents,
        obs_dims,
        actions,
        state_dim,
        has_state,
        tuple(None if b is None else b.low.astype(np.float32) for b in boxes),
        tuple(None if b is None else b.high.astype(np.float32) for b in boxes),
    )


@dataclass
class TeamStep:
    """One step of every copy, over [num_envs, num_agents]: ``obs``/``state``/``active`` are where each copy is
    now (a finished copy's reset ones); ``final_obs``/``final_state`` where a finished agent's episode ended (the
    truncated bootstrap reads them)."""

    obs: np.ndarray  # [N, A, max_obs]
    state: np.ndarray  # [N, state_dim]
    active: np.ndarray  # [N, A] float32: 1 where the agent acts at the next step
    rewards: np.ndarray  # [N, A]
    terminated: np.ndarray  # [N, A] bool
    truncated: np.ndarray  # [N, A] bool
    final_obs: np.ndarray  # [N, A, max_obs]
    final_state: np.ndarray  # [N, state_dim]
    team_done: np.ndarray  # [N] bool: every agent of the copy finished (it was reset in this step)


class TeamEnvs:
    """``num_envs`` copies of a PettingZoo parallel env, stepped one after the other in this process."""

    def __init__(self, make: Callable[[], Any], num_envs: int) -> None:
        self.envs = [make() for _ in range(num_envs)]
        self.envs[0].reset(seed=0)
        self.spaces = team_spaces(self.envs[0])
        self.num_envs = num_envs
        self.obs: np.ndarray = np.zeros((num_envs, self.spaces.num_agents, self.spaces.max_obs), np.float32)
        self.state: np.ndarray = np.zeros((num_envs, self.spaces.state_dim), np.float32)
        self.active: np.ndarray = np.zeros((num_envs, self.spaces.num_agents), np.float32)

    def _write(self, i: int, observations: dict[str, Any], obs: np.ndarray, state: np.ndarray) -> None:
        """Copy ``i``'s observations into rows of ``obs`` (zero for absent agents) and its global state."""
        obs[i] = 0.0
        for j, agent in enumerate(self.spaces.agents):
            if agent in observations:
                row = np.asarray(observations[agent], np.float32).ravel()
                obs[i, j, : row.size] = row
        env = self.envs[i]
        if self.spaces.has_state:
            state[i] = np.asarray(env.state(), np.float32).ravel()
        else:  # no global state: the agents' observations, concatenated (finished agents' zero rows)
            state[i] = np.concatenate([obs[i, j, :d] for j, d in enumerate(self.spaces.obs_dims)])

    def _start(self, i: int, seed: int | None) -> None:
        observations, _ = self.envs[i].reset(seed=seed)
        self._write(i, observations, self.obs, self.state)
        live = set(self.envs[i].agents)
        self.active[i] = [agent in live for agent in self.spaces.agents]

    def reset(self, seed: int) -> None:
        """Every copy reset, copy ``i`` with ``seed + i``."""
        for i in range(self.num_envs):
            self._start(i, seed + i)

    def env_actions(self, actions: np.ndarray, j: int) -> Any:
        """Agent ``j``'s action in its env's form: an int, or a Box action mapped from [-1, 1] and clipped."""
        spec = self.spaces.actions[j]
        if spec.kind == "discrete":
            return int(actions[0])
        low, high = self.spaces.lows[j], self.spaces.highs[j]
        assert low is not None and high is not None
        scaled = low + (np.clip(actions[: spec.size], -1.0, 1.0) + 1.0) * 0.5 * (high - low)
        return np.clip(scaled, low, high).astype(np.float32)

    def step(self, actions: np.ndarray) -> TeamStep:
        """Every copy stepped with ``actions`` [N, A, max_action] (rows of inactive agents ignored)."""
        n, a = self.num_envs, self.spaces.num_agents
        out = TeamStep(
            self.obs,
            self.state,
            self.active,
            np.zeros((n, a), np.float32),
            np.zeros((n, a), bool),
            np.zeros((n, a), bool),
            np.zeros_like(self.obs),
            np.zeros_like(self.state),
            np.zeros(n, bool),
        )
        obs, state, active = np.zeros_like(self.obs), np.zeros_like(self.state), np.zeros_like(self.active)
        for i, env in enumerate(self.envs):
            live = list(env.agents)
            joint = {
                agent: self.env_actions(actions[i, j], j) for j, agent in enumerate(self.spaces.agents) if agent in live
            }
            observations, rewards, terminations, truncations, _ = env.step(joint)
            for j, agent in enumerate(self.spaces.agents):
                if agent in live:
                    out.rewards[i, j] = float(rewards.get(agent, 0.0))
                    out.terminated[i, j] = bool(terminations.get(agent, False))
                    out.truncated[i, j] = bool(truncations.get(agent, False))
            self._write(i, observations, out.final_obs, out.final_state)
            if env.agents:  # the agents still playing: a finished one's row is zero (in the state's concatenation too)
                remaining = set(env.agents)
                if remaining == set(observations):  # nobody left: the rows just written (state() is not cheap)
                    obs[i], state[i] = out.final_obs[i], out.final_state[i]
                else:
                    self._write(i, {k: v for k, v in observations.items() if k in remaining}, obs, state)
                active[i] = [agent in remaining for agent in self.spaces.agents]
            else:  # the whole team finished: a new episode starts now, from the env's own generator
                out.team_done[i] = True
                self._start(i, None)
                obs[i], state[i], active[i] = self.obs[i], self.state[i], self.active[i]
        self.obs, self.state, self.active = obs, state, active
        out.obs, out.state, out.active = obs, state, active
        return out

    def close(self) -> None:
        """Close every copy."""
        for env in self.envs:
            env.close()

    # ---- exact resume ------------------------------------------------------------------------------------
    def capture_state(self) -> dict[str, Any]:
        """Every copy's plain state (pickle-free JSON-able), and the team arrays of the step in progress."""
        return {
            "copies": [capture_objects(env) for env in self.envs],
            "obs": self.obs.tolist(),
            "state": self.state.tolist(),
            "active": self.active.tolist(),
        }

    def restore_state(self, saved: dict[str, Any]) -> None:
        """Put ``capture_state``'s output back into these copies."""
        for env, copy in zip(self.envs, saved["copies"], strict=True):
            restore_objects(env, copy)
        self.obs = np.asarray(saved["obs"], np.float32).reshape(self.obs.shape)
        self.state = np.asarray(saved["state"], np.float32).reshape(self.state.shape)
        self.active = np.asarray(saved["active"], np.float32).reshape(self.active.shape)


# ---- plain-state walk of an env's objects ----------------------------------------------------------------
_SKIP = ("metadata", "spec", "screen", "viewer", "render_mode", "game_font", "_ezpickle_args", "_ezpickle_kwargs")
_MAX_DEPTH = 8


def _walkable(value: Any) -> bool:
    """An object whose attributes the walk descends into: an instance with a ``__dict__``, not a type, a
    module, a function or a space (spaces are rebuilt by the constructor)."""
    return (
        hasattr(value, "__dict__")
        and not isinstance(value, (type, ModuleType, gym.Space))
        and not callable(value)
        or isinstance(value, (list, tuple))
        and any(hasattr(v, "__dict__") for v in value)
    )


def capture_objects(obj: Any, depth: int = 0, seen: set[int] | None = None) -> dict[str, Any]:
    """{attribute: encoded plain value, or a nested dict for an object (a list of objects by index)}."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > _MAX_DEPTH:
        return {}
    seen.add(id(obj))
    if isinstance(obj, (list, tuple)):
        return {"__items__": [capture_objects(v, depth + 1, seen) if hasattr(v, "__dict__") else {} for v in obj]}
    state: dict[str, Any] = {}
    for name, value in vars(obj).items():
        if name in _SKIP:
            continue
        try:
            state[name] = {"__plain__": _encode(value)}
        except TypeError:
            if _walkable(value):
                state[name] = {"__object__": capture_objects(value, depth + 1, seen)}
    return state


def restore_objects(obj: Any, state: dict[str, Any]) -> None:
    """Put ``capture_objects``' output back: plain values set (a dict updated in place, so a ``defaultdict``
    stays one), objects walked into."""
    if "__items__" in state:
        for value, item in zip(obj, state["__items__"], strict=True):
            if item:
                restore_objects(value, item)
        return
    for name, saved in state.items():
        current = getattr(obj, name, None)
        if "__object__" in saved:
            restore_objects(current, saved["__object__"])
            continue
        value = _decode(saved["__plain__"], current)
        if isinstance(current, dict) and isinstance(value, dict):
            current.clear()
            current.update(value)
        else:
            setattr(obj, name, value)
