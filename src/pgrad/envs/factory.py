"""Building vector environments from an ``EnvConfig``, and adapting their spaces to the policy."""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, cast

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from pgrad.config import EnvConfig
from pgrad.entry_points import import_entry_module
from pgrad.envs import atari, memory, partial
from pgrad.envs.state import StateAccess
from pgrad.envs.workers import async_worker
from pgrad.errors import ConfigError
from pgrad.nets import NATURE_CNN_MIN_SIZE, ActionSpec, ImageShape, ObsLayout, ObsPart, ObsShape

# 'package.module:Class', 'package.module:make_env' or Gymnasium's own 'package.module:EnvId' (the
# module registers EnvId when imported). Anything else is refused before anything is imported.
_ENTRY_POINT = re.compile(r"(?P<module>[A-Za-z_]\w*(\.[A-Za-z_]\w*)*):(?P<attr>[A-Za-z_][\w.\-/]*)")
_ENTRY_POINT_FORMS = (
    "'package.module:Class' (a gymnasium.Env subclass), 'package.module:make_env' (a function annotated "
    "to return a gymnasium.Env) or 'package.module:EnvId' (a module that registers EnvId)"
)


def is_entry_point(env_id: str) -> bool:
    """True for 'module:attr' ids: building one imports and runs code from that module."""
    return ":" in env_id


def load_entry_point(entry_point: str) -> Callable[..., gym.Env] | None:
    """The env class or factory an entry point names, or None for Gymnasium's 'module:EnvId' form.

    What it names is checked before it is ever called: a ``gymnasium.Env`` subclass, or a Python
    function whose return annotation is one. ``os:system`` or ``os:getcwd`` would otherwise be
    called with the env kwargs as arguments.
    """
    match = _ENTRY_POINT.fullmatch(entry_point)
    if match is None:
        raise ConfigError(f"env.id: entry point {entry_point!r} must be {_ENTRY_POINT_FORMS}")
    module_name, attr = match["module"], match["attr"]
    try:
        module = import_entry_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"env.id: cannot import module '{module_name}' of entry point '{entry_point}': {exc} (pgrad searches "
            f"the installed packages, PYTHONPATH and then the current folder {os.getcwd()})"
        ) from None
    except Exception as exc:  # the module's own code failed while importing
        raise ConfigError(f"env.id: importing module '{module_name}' failed: {type(exc).__name__}: {exc}") from None
    if attr in gym.registry:  # Gymnasium's form: importing the module registered the id
        return None
    factory = getattr(module, attr, None)
    if factory is None:
        raise ConfigError(f"env.id: module '{module_name}' has no callable '{attr}' (nor registers an env '{attr}')")
    if inspect.isclass(factory) and issubclass(factory, gym.Env):
        return cast(Callable[..., gym.Env], factory)
    if inspect.isfunction(factory) and _returns_env(factory):
        return cast(Callable[..., gym.Env], factory)
    raise ConfigError(
        f"env.id: '{entry_point}' is a {type(factory).__name__}, not an environment; it must be {_ENTRY_POINT_FORMS}"
    )


def check_env_kwargs(make: Callable[..., Any], kwargs: dict[str, Any], label: str) -> None:
    """A keyword the env's constructor does not take is one line naming its parameters (instead of the
    ``TypeError`` traceback from deep inside Gymnasium); a constructor with ``**kwargs`` takes anything."""
    if not kwargs:
        return
    try:
        signature = inspect.signature(make)
    except (TypeError, ValueError):  # a builtin or C extension without a signature: let it decide
        return
    parameters = signature.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = [
        name
        for name, p in parameters.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    for key in kwargs:
        if key not in accepted:
            import difflib

            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"env.kwargs: {label} does not take '{key}'{hint} "
                f"(its parameters: {', '.join(accepted) if accepted else 'none'})"
            )


def _registered_creator(spec: gym.envs.registration.EnvSpec) -> Callable[..., Any] | None:
    """The constructor a registered id calls, or None when it cannot be loaded without building the env."""
    entry = spec.entry_point
    if callable(entry):
        return entry
    if isinstance(entry, str):
        try:
            return cast(Callable[..., Any], gym.envs.registration.load_env_creator(entry))
        except Exception:  # gymnasium reports a broken entry point itself when the env is made
            return None
    return None


def _returns_env(function: Callable[..., Any]) -> bool:
    """Whether ``function`` is annotated to return a ``gymnasium.Env`` (or a subclass)."""
    try:
        returned = inspect.signature(function, eval_str=True).return_annotation
    except Exception:  # an annotation that does not evaluate: not declared as an env factory
        return False
    return inspect.isclass(returned) and issubclass(returned, gym.Env)


def _registered_spec(env_id: str) -> gym.envs.registration.EnvSpec | None:
    atari.ensure_registered(env_id)
    memory.ensure_registered(env_id)
    try:
        return gym.spec(env_id)
    except Exception:  # gymnasium raises several error types (and ImportError for 'module:id')
        return None


def check_env_id(env_id: str) -> None:
    """Fail early, with a helpful line, on an id that is neither registered nor an entry point."""
    if is_entry_point(env_id):  # checked before Gymnasium would import its module
        load_entry_point(env_id)
        return
    if _registered_spec(env_id) is not None:
        return
    import difflib

    close = difflib.get_close_matches(env_id, list(gym.registry), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"env.id: unknown environment '{env_id}'{hint} (allowed: a registered Gymnasium id, "
        "or an entry point 'package.module:Class')"
    )


# MuJoCo 3.4+ warns, for every model it compiles, that Gymnasium's own XML files (HalfCheetah, Hopper, Walker2d,
# ...) use the deprecated 'settotalmass' compiler attribute: a note about Gymnasium's assets that a pgrad user can
# do nothing about, printed again for every env and every evaluation (hundreds of lines in a benchmark log).
KNOWN_MUJOCO_DEPRECATION = "compiler attribute 'settotalmass' is deprecated"


@contextlib.contextmanager
def _without_known_mujoco_deprecation(spec: gym.envs.registration.EnvSpec) -> Iterator[None]:
    """While Gymnasium's MuJoCo envs are built in this process: drop that one message, pass every other
    MuJoCo warning on as before (to the handler in place, or to stderr as MuJoCo prints it), and put the
    previous handler back after. Async workers build their envs in their own processes and still print it."""
    entry = spec.entry_point if isinstance(spec.entry_point, str) else ""
    if not entry.startswith("gymnasium.envs.mujoco"):
        yield
        return
    import mujoco

    previous = mujoco.get_mju_user_warning()

    def forward(message: str) -> None:
        if message.startswith(KNOWN_MUJOCO_DEPRECATION):
            return
        if previous is not None:
            previous(message)
        else:
            print(f"WARNING: {message}", file=sys.stderr)

    mujoco.set_mju_user_warning(forward)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)


def make_vector_env(
    cfg: EnvConfig,
    num_envs: int | None = None,
    render_mode: str | None = None,
    vectorization: str | None = None,
) -> gym.vector.VectorEnv:
    """A Gymnasium vector env with next-step autoreset (the loop masks the reset step)."""
    check_env_id(cfg.id)
    env_id, factory = cfg.id, None
    if is_entry_point(cfg.id):
        factory = load_entry_point(cfg.id)
        if factory is None:  # 'module:EnvId': importing the module registered EnvId
            env_id = cfg.id.split(":", 1)[1]
    count = num_envs or cfg.num_envs
    mode = vectorization or cfg.vectorization
    kwargs: dict[str, Any] = dict(cfg.kwargs)
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    randomize = _randomizer(cfg, count)
    mask = partial.masker(cfg.id, cfg.mask_velocity, cfg.mask_indices)
    if factory is not None:  # an entry point 'module:Class' or 'module:make_env'
        check_env_kwargs(factory, dict(cfg.kwargs), cfg.id)

        def make_one() -> gym.Env:
            env = factory(**kwargs)
            if cfg.max_episode_steps is not None:
                env = gym.wrappers.TimeLimit(env, cfg.max_episode_steps)
            for layer in (randomize, mask):
                env = env if layer is None else layer(env)
            return StateAccess(env) if mode == "async" else env

        vector_cls = gym.vector.AsyncVectorEnv if mode == "async" else gym.vector.SyncVectorEnv
        if mode == "native":
            raise ConfigError(f"env.vectorization: '{cfg.id}' has no native vector version; use auto, sync or async")
        return _mark_async(vector_cls([make_one] * count, **_vector_kwargs(mode)))

    spec = _registered_spec(env_id)
    assert spec is not None, "check_env_id found it registered"
    creator = _registered_creator(spec)
    if creator is not None:
        check_env_kwargs(creator, dict(cfg.kwargs), cfg.id)
    if cfg.max_episode_steps is not None:
        kwargs["max_episode_steps"] = cfg.max_episode_steps
    is_atari = atari.is_atari(spec)
    if is_atari:  # ALE's own vector env has its own preprocessing: the standard layers need sync or async
        kwargs = atari.emulator_kwargs(kwargs)
        mode = "sync" if mode == "auto" else mode
    mode = _registered_mode(cfg, spec, mode, render_mode is not None, randomize is not None, mask is not None)
    vector_kwargs = {} if mode == "vector_entry_point" else _vector_kwargs(mode)
    # Each env's layers, innermost first: Atari preprocessing or popgym/MiniGrid's spaces, domain randomisation,
    # velocity masking, then (each async worker's env) the layer that saves and restores it (pgrad.envs.state),
    # which must be outermost.
    first = atari.preprocess if is_atari else memory.adapt if memory.suite(spec) else None
    layers = (first, randomize, mask, StateAccess if mode == "async" else None)
    wrappers = [layer for layer in layers if layer is not None]
    try:
        with _without_known_mujoco_deprecation(spec):
            envs = gym.make_vec(
                env_id,
                num_envs=count,
                vectorization_mode=mode,
                vector_kwargs=vector_kwargs,
                wrappers=wrappers or None,
                **kwargs,
            )
    except TypeError as exc:
        raise ConfigError(f"env.kwargs: {cfg.id} rejected its arguments: {exc}") from None
    _mark_async(envs)
    autoreset = envs.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
    if autoreset != AutoresetMode.NEXT_STEP:
        raise ConfigError(f"env.id: '{cfg.id}' uses autoreset mode {autoreset}; pgrad needs next-step autoreset")
    return envs


def _registered_mode(
    cfg: EnvConfig, spec: gym.envs.registration.EnvSpec, mode: str, rendering: bool, randomize: bool, mask: bool
) -> str:
    """The vectorisation ``gym.make_vec`` is asked for: the env's native vector version where auto finds one and
    nothing wraps each env (rendering, domain randomisation and velocity masking need sync or async)."""
    if mode == "native" and spec.vector_entry_point is None:
        raise ConfigError(f"env.vectorization: '{cfg.id}' has no native vector version; use auto, sync or async")
    if mode == "native" and mask:
        raise ConfigError("env.vectorization: env.mask_velocity wraps each env; use auto, sync or async")
    if mode == "auto":
        native = spec.vector_entry_point is not None and not rendering and not mask
        mode = "vector_entry_point" if native else "sync"
    elif mode == "native":
        mode = "vector_entry_point"
    if mode == "vector_entry_point" and randomize:  # MuJoCo envs have no native vector version
        raise ConfigError(
            f"env.randomize.{cfg.randomize.active[0]}: domain randomisation needs a MuJoCo environment (built by "
            f"sync or async vectorisation); {cfg.id} is not one"
        )
    return mode


def _vector_kwargs(mode: str) -> dict[str, Any]:
    """A sync or async vector env's arguments: next-step autoreset; async workers that die with this process
    (``pgrad.envs.workers``)."""
    if mode == "async":
        return {"autoreset_mode": AutoresetMode.NEXT_STEP, "worker": async_worker}
    return {"autoreset_mode": AutoresetMode.NEXT_STEP}


def _randomizer(cfg: EnvConfig, num_envs: int) -> Callable[[gym.Env], gym.Wrapper] | None:
    """The domain-randomisation layer ``env.randomize`` asks for, or None when it is off."""
    if not cfg.randomize.active:
        return None
    from pgrad.envs.randomize import DomainRandomization

    def randomize(env: gym.Env) -> gym.Wrapper:
        return DomainRandomization(env, cfg.randomize, steps_per_env_step=num_envs)

    return randomize


def _mark_async(envs: gym.vector.VectorEnv) -> gym.vector.VectorEnv:
    """Flag an ``AsyncVectorEnv`` whose envs carry ``StateAccess`` (what ``pgrad.envs.state`` looks for)."""
    if isinstance(envs, gym.vector.AsyncVectorEnv):
        envs.pgrad_state_access = True  # type: ignore[attr-defined]
    return envs


def image_layout(space: gym.spaces.Box) -> tuple[ImageShape, tuple[int, ...]] | None:
    """(channels-first shape, axes that put one observation's channels first) for a uint8 image Box
    of HxW, HxWxC or CxHxW at least ``NATURE_CNN_MIN_SIZE`` pixels a side; None for anything else
    (smaller images are flattened into the MLP, as before). The channel axis of a 3-D image is the
    smaller of the first and the last: (84, 84, 3) is HxWxC, (4, 84, 84) a CxHxW frame stack."""
    shape = space.shape
    axes: tuple[int, ...]
    if space.dtype != np.uint8 or len(shape) not in (2, 3):
        return None
    if len(shape) == 2:
        image, axes = ImageShape(1, shape[0], shape[1]), (0, 1)
    elif shape[-1] < shape[0]:
        image, axes = ImageShape(shape[2], shape[0], shape[1]), (2, 0, 1)
    else:
        image, axes = ImageShape(*shape), (0, 1, 2)
    return (image, axes) if min(image.height, image.width) >= NATURE_CNN_MIN_SIZE else None


# A Dict observation's keys, each a Box or a Discrete space (one-hot), packed one after another.
MAX_DICT_KEYS = 64


class _Packing(NamedTuple):
    """How one part of an observation goes into the packed row: its place, its transpose (images) and one-hot."""

    part: ObsPart
    axes: tuple[int, ...] | None  # per-observation transpose to channels first (an HxWxC image)
    one_hot: int  # n of a Discrete space (its value minus ``start`` is the index), else 0
    start: int
    space: gym.Space[Any]  # the part as a custom torso sees it (an image channels first)
    raw_shape: tuple[int, ...]  # one observation's shape as the env gives it


def _packing(key: str | None, space: gym.Space[Any], offset: int) -> _Packing:
    """One key's (or the whole observation's) place in the packed row; a space that is neither Box nor Discrete
    is one line."""
    where = "observation" if key is None else f"Dict observation key {key!r}"
    if isinstance(space, gym.spaces.Discrete):
        n = int(space.n)
        return _Packing(ObsPart(key, (n,), offset, False), None, n, int(space.start), space, ())
    if not isinstance(space, gym.spaces.Box):
        raise ConfigError(f"env.id: {where} is {space} (allowed: Box, Discrete)")
    layout = image_layout(space)
    if layout is None:
        shape = tuple(int(n) for n in space.shape) or (1,)
        return _Packing(ObsPart(key, shape, offset, False), None, 0, 0, space, tuple(space.shape))
    image, axes = layout
    channels_first = gym.spaces.Box(
        space.low.reshape(space.shape[: len(axes)]).transpose(axes).reshape(image),
        space.high.reshape(space.shape[: len(axes)]).transpose(axes).reshape(image),
        dtype=np.uint8,
    )
    moved = None if axes == tuple(range(len(axes))) else axes
    return _Packing(ObsPart(key, tuple(image), offset, True), moved, 0, 0, channels_first, tuple(space.shape))


def observation_layout(space: gym.Space[Any]) -> tuple[ObsLayout, list[_Packing]]:
    """The packed row of an observation space (``pgrad.nets.ObsLayout``) and how to fill it: a Dict space key by
    key in its own order, any other space as one part."""
    if not isinstance(space, gym.spaces.Dict):
        packing = _packing(None, space, 0)
        return ObsLayout((packing.part,), packing.space), [packing]
    if not space.spaces or len(space.spaces) > MAX_DICT_KEYS:
        raise ConfigError(f"env.id: a Dict observation space needs 1 to {MAX_DICT_KEYS} keys; got {len(space.spaces)}")
    packings, offset = [], 0
    for key, sub in space.spaces.items():
        if not isinstance(key, str):
            raise ConfigError(f"env.id: Dict observation keys must be strings; got {key!r}")
        packing = _packing(key, sub, offset)
        packings.append(packing)
        offset += packing.part.size
    # an OrderedDict keeps the env's key order (Gymnasium sorts the keys of a plain dict)
    torso_space = gym.spaces.Dict(OrderedDict((str(p.part.key), p.space) for p in packings))
    return ObsLayout(tuple(p.part for p in packings), torso_space), packings


class SpaceAdapter:
    """Flattens observations to float32 vectors and turns policy actions into env actions.

    Image observations (``image_layout``) are flattened channels first and keep their raw 0-255
    values: the policy's CNN torso scales them (``obs_shape`` tells the learner the image's shape).

    A Dict observation is packed into one float32 row, key after key in the space's order (``layout``: each
    key's offset and shape; images channels first, Discrete keys one-hot), so the rollout, the replay buffer,
    the normaliser and checkpoints keep flat rows; the torso slices the row back into keys. Vector keys only:
    the row is exactly the concatenation an MLP takes (``obs_shape`` is its size); with an image key the
    learner gets the layout (the Nature CNN on the image's slice).

    Box actions: with ``rescale`` the policy acts in [-1, 1] and a = low + (u + 1)(high - low)/2;
    either way the result is clipped to the bounds (the unclipped action is what is learned from).
    """

    def __init__(self, observation_space: gym.Space, action_space: gym.Space, rescale: bool) -> None:
        self.image_axes: tuple[int, ...] | None = None  # per-observation transpose to channels first
        self.obs_shape: ObsShape
        self.packings: list[_Packing] | None = None  # how a Dict observation is packed; None for others
        self.layout, packings = observation_layout(observation_space)
        if isinstance(observation_space, gym.spaces.Dict):
            self.packings = packings
            self.obs_dim, self.one_hot = self.layout.size, 0
            self.obs_shape = self.layout if self.layout.has_images else self.obs_dim
        elif isinstance(observation_space, gym.spaces.Box):
            self.obs_dim = int(np.prod(observation_space.shape))
            self.one_hot = 0
            layout = image_layout(observation_space)
            self.obs_shape = self.obs_dim if layout is None else layout[0]
            if layout is not None and layout[1] != tuple(range(len(layout[1]))):
                self.image_axes = layout[1]
        elif isinstance(observation_space, gym.spaces.Discrete):
            self.obs_dim = int(observation_space.n)
            self.one_hot = int(observation_space.n)
            self.obs_shape = self.obs_dim
        else:
            raise ConfigError(
                f"env.id: observation space {observation_space} is not supported (allowed: Box, Discrete)"
            )
        self.low: np.ndarray | None = None  # Box bounds; None for Discrete actions
        self.high: np.ndarray | None = None
        self.rescale = False
        if isinstance(action_space, gym.spaces.Discrete):
            self.action = ActionSpec("discrete", int(action_space.n))
        elif isinstance(action_space, gym.spaces.Box):
            self.action = ActionSpec("continuous", int(np.prod(action_space.shape)))
            low = action_space.low.astype(np.float32).ravel()
            high = action_space.high.astype(np.float32).ravel()
            self.low, self.high, self.shape = low, high, action_space.shape
            self.rescale = rescale and bool(np.all(np.isfinite(low)) and np.all(np.isfinite(high)))
            if self.rescale:
                # a = low + (u + 1)(high - low)/2 = u * scale + offset
                self.scale = 0.5 * (high - low)
                self.offset = low + self.scale
        else:
            raise ConfigError(f"env.id: action space {action_space} is not supported (allowed: Discrete, Box)")

    def use_torso(self) -> None:
        """A custom torso takes the observation as its space shapes it: the learner gets the layout (for any
        space), which the torso unpacks."""
        self.obs_shape = self.layout

    def normalized(self) -> np.ndarray | None:
        """[obs_dim] bool: the entries ``env.norm_obs`` normalises; None when that is all of them (no image part)."""
        return self.layout.normalized() if self.packings is not None and self.layout.has_images else None

    def pack(self, obs: Any) -> np.ndarray:
        """A batch of Dict observations (a mapping of key -> [B, ...]) as packed float32 rows [B, obs_dim]."""
        assert self.packings is not None
        rows = []
        for part, axes, one_hot, start, _, _ in self.packings:
            value = np.asarray(obs[part.key])
            if one_hot:
                value = np.eye(one_hot, dtype=np.float32)[value.astype(np.int64).reshape(-1) - start]
            elif axes is not None:
                value = value.transpose(0, *(axis + 1 for axis in axes))
            rows.append(np.asarray(value, np.float32).reshape(value.shape[0], part.size))
        return np.concatenate(rows, axis=1)

    def observations(self, obs: np.ndarray) -> np.ndarray:
        """The env's observations as float32 rows [B, obs_dim]: one-hot for discrete ones, images transposed channels
        first, a Dict observation packed (``pack``)."""
        if self.packings is not None:
            return self.pack(obs)
        if self.one_hot:
            return np.eye(self.one_hot, dtype=np.float32)[np.asarray(obs, dtype=np.int64)]
        if self.image_axes is not None:  # [B, H, W, C] -> [B, C, H, W]
            obs = np.asarray(obs).transpose(0, *(axis + 1 for axis in self.image_axes))
        return np.asarray(obs, dtype=np.float32).reshape(obs.shape[0], self.obs_dim)

    def env_actions(self, actions: np.ndarray) -> np.ndarray:
        """Policy actions as env actions: for a box, rescaled from [-1, 1] where ``rescale`` is set, clipped to the
        bounds and reshaped; others unchanged."""
        if self.low is None or self.high is None:
            return actions
        if self.rescale:
            actions = actions * self.scale + self.offset
        # minimum/maximum: same result as np.clip, a few microseconds cheaper per step
        return np.minimum(np.maximum(actions, self.low), self.high).reshape((actions.shape[0], *self.shape))
