"""Save and restore the internal state of vector environments without pickling.

Exact resume needs the environments exactly where they were: physical state, step counters,
autoreset flags and random generators. Pickling would execute code on load, so instead every
layer of every environment (vector env, wrappers, the base env) is walked and its *plain*
attributes are kept: NumPy arrays, numbers, booleans, None, tuples/lists of those, and NumPy
generators (as their bit-generator state). MuJoCo environments add their simulator data
(every array of ``MjData``, see ``_mujoco_state``). Everything is JSON.

This covers Gymnasium's classic-control, toy-text and MuJoCo environments, their native vector
versions and ``SyncVectorEnv``: arrays of every non-object dtype are kept (numbers and booleans as
lists; bytes, strings, datetimes, complex numbers and records as their raw bytes in base64, so
FrozenLake's and Taxi's maps save too). What cannot be kept is named before training starts
(``inexact_reason``): Box2D worlds (LunarLander, BipedalWalker, CarRacing) are C++ objects with no
plain state to read. A resumed run then restarts those environments' episodes instead of continuing them.

A layer that wrote into something never captured (domain randomisation writes its draws into the MuJoCo
model) defines ``pgrad_restored()``; it is called after that layer's attributes are restored.

``AsyncVectorEnv`` keeps its envs in worker processes: there each env's outermost layer is
``StateAccess`` (added by ``make_vector_env``), which captures and restores its own chain in the worker
when asked through ``AsyncVectorEnv.call``/``set_attr``, and replays the worker's pending autoreset.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import gymnasium as gym
import numpy as np

_SCALARS = (bool, int, float, str, type(None), np.bool_, np.integer, np.floating)
_LIST_KINDS = "biuf"  # dtype kinds whose .tolist() is JSON (bool, int, uint, float); the rest go as bytes


def _encode(value: Any) -> Any:
    """JSON-able form of a plain value, or raise TypeError if it is not plain."""
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise TypeError("object array")
        if value.dtype.names is not None:  # records: dtype.str would lose the fields
            raise TypeError("structured array")
        if value.dtype.kind not in _LIST_KINDS:
            return _array_bytes(value)
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype), "shape": list(value.shape)}
    if isinstance(value, np.random.Generator):
        return {"__generator__": value.bit_generator.state}
    if isinstance(value, np.generic) and value.dtype.kind in "SUMmc":
        return {**_array_bytes(np.asarray(value)), "scalar": True}
    if isinstance(value, (np.bool_, np.integer, np.floating)):
        return {"__npscalar__": value.item(), "dtype": str(value.dtype)}
    if isinstance(value, bytes):
        return {"__bytes__": base64.b64encode(value).decode("ascii")}
    if isinstance(value, complex):
        return {"__complex__": [value.real, value.imag]}
    if isinstance(value, _SCALARS):
        return value
    return _encode_container(value)


def _encode_container(value: Any) -> Any:
    """A tuple, a list or a mapping with text keys (a Dict observation, by key) of plain values, encoded."""
    if isinstance(value, (tuple, list)):
        items = [_encode(v) for v in value]
        return {"__tuple__": items} if isinstance(value, tuple) else {"__list__": items}
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return {"__dict__": [[key, _encode(v)] for key, v in value.items()]}
    raise TypeError(type(value).__name__)


def _array_bytes(value: np.ndarray) -> dict[str, Any]:
    """An array as its raw bytes: exact for every dtype without objects (``dtype.str`` keeps the byte order)."""
    data = np.ascontiguousarray(value).tobytes()
    return {
        "__ndarray_bytes__": base64.b64encode(data).decode("ascii"),
        "dtype": value.dtype.str,
        "shape": list(value.shape),
    }


def _decode(value: Any, current: Any) -> Any:
    if isinstance(value, dict):
        if "__ndarray_bytes__" in value:
            array = np.frombuffer(base64.b64decode(value["__ndarray_bytes__"]), dtype=np.dtype(value["dtype"]))
            array = array.reshape(value["shape"]).copy()
            return array[()] if value.get("scalar") else array
        if "__bytes__" in value:
            return base64.b64decode(value["__bytes__"])
        if "__complex__" in value:
            real, imag = value["__complex__"]
            return complex(real, imag)
        if "__ndarray__" in value:
            return np.array(value["__ndarray__"], dtype=value["dtype"]).reshape(value["shape"])
        if "__generator__" in value:
            if isinstance(current, np.random.Generator):
                current.bit_generator.state = value["__generator__"]
                return current
            generator = np.random.Generator(np.random.PCG64())
            generator.bit_generator.state = value["__generator__"]
            return generator
        if "__npscalar__" in value:
            return np.dtype(value["dtype"]).type(value["__npscalar__"])
        if "__tuple__" in value:
            return tuple(_decode(v, None) for v in value["__tuple__"])
        if "__list__" in value:
            return [_decode(v, None) for v in value["__list__"]]
        if "__dict__" in value:
            return {key: _decode(v, None) for key, v in value["__dict__"]}
    return value


def _layer_state(obj: Any) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for name, value in vars(obj).items():
        if name in ("env", "envs", "spec", "metadata"):
            continue
        try:
            state[name] = _encode(value)
        except TypeError:
            continue
    data = getattr(obj, "data", None)
    if data is not None and hasattr(data, "qpos") and hasattr(data, "qvel"):
        state["__mujoco__"] = _mujoco_state(data)
    return state


def _mujoco_state(data: Any) -> dict[str, Any]:
    """Every array of a MuJoCo ``MjData``, as raw bytes, and its time.

    Not only the integration state (qpos, qvel, act): the solver's warm start changes the next step's
    result, and Gymnasium's envs read derived quantities (body positions, contact forces) that the last
    ``mj_step`` computed at the state *before* its integration, so recomputing them (``mj_forward``)
    gives other rewards (Ant, Hopper). Restoring all arrays, with no ``mj_forward``, continues exactly;
    the constraint arrays whose size changes with the contacts are recomputed by the next step anyway.
    Tens of kilobytes per env.
    """
    arrays = {}
    for name in dir(data):
        if name.startswith("_"):
            continue
        try:
            value = getattr(data, name)
        except Exception:  # some accessors need arguments or are not available in this build
            continue
        if isinstance(value, np.ndarray) and not value.dtype.hasobject:
            arrays[name] = _array_bytes(value)
    return {"arrays": arrays, "time": float(data.time)}


def _restore_mujoco(model: Any, data: Any, value: dict[str, Any]) -> None:
    if "arrays" not in value:  # a checkpoint written before whole-MjData states: integration state only
        data.qpos[:] = _decode(value["qpos"], None)
        data.qvel[:] = _decode(value["qvel"], None)
        if data.act.size:
            data.act[:] = _decode(value["act"], None)
        data.time = value["time"]
        import mujoco  # only MuJoCo envs reach here

        mujoco.mj_forward(model, data)
        return
    for name, saved in value["arrays"].items():
        target = getattr(data, name, None) if name.isidentifier() and not name.startswith("_") else None
        array = _decode(saved, None)
        if isinstance(target, np.ndarray) and isinstance(array, np.ndarray) and target.shape == array.shape:
            target[...] = array  # contact-sized arrays of another shape are recomputed by the next step
    data.time = value["time"]


# Attributes ``capture`` skips without losing anything a resumed episode depends on: spaces (their
# generators only serve .sample(), which training never calls), construction arguments, fixed tables
# built from them (toy-text's transition table P), MuJoCo's model, renderer and data (its arrays are
# captured separately), rendering surfaces, and the env checker's record of its last call.
_NOT_STATE = frozenset(
    {
        "action_space",
        "observation_space",
        "single_action_space",
        "single_observation_space",
        "_action_space",  # a wrapper's own spaces (pgrad.envs.partial's masked bounds)
        "_observation_space",
        "autoreset_mode",
        "env_fns",
        "_saved_kwargs",
        "_ezpickle_args",
        "_ezpickle_kwargs",
        "observation_structure",
        "P",
        "model",
        "mujoco_renderer",
        "clock",
        "surf",
        "screen",
        "window",
        "viewer",
        "_previous_data",
    }
)


def _missed(obj: Any) -> list[str]:
    """Attributes of one layer that hold state ``capture`` cannot keep, as ``name (type)``."""
    missed = []
    for name, value in vars(obj).items():
        if name in ("env", "envs", "spec", "metadata") or name in _NOT_STATE:
            continue
        if name == "data" and hasattr(value, "qpos"):  # MuJoCo's, captured as __mujoco__
            continue
        try:
            _encode(value)
        except TypeError:
            missed.append(f"{name} ({type(value).__name__})")
    return missed


class StateAccess(gym.Wrapper):
    """The outermost layer of every env of an ``AsyncVectorEnv``: its state, read and restored in the worker.

    ``pgrad_capture`` returns the captured chain below it; ``pgrad_apply`` restores the state put in
    ``pgrad_incoming`` (one per worker, through ``AsyncVectorEnv.set_attr``). Both run through the vector
    env's pipes between pgrad's own processes; what comes from a checkpoint is the JSON of ``capture``.

    The one piece of worker state no layer holds is the worker's own next-step autoreset flag (a local
    variable of Gymnasium's worker loop): after an episode ends, the worker's next ``step`` is a reset. A
    resumed worker starts with that flag off, so this layer remembers whether the last step ended an
    episode (``ended_last_step``, captured with the rest) and, after a restore, turns the first ``step``
    into the reset the worker would have done: ``env.reset()``, reward 0, neither terminated nor truncated.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.ended_last_step = False
        self.reset_on_next_step = False
        self.pgrad_incoming: dict[str, Any] | None = None

    def reset(self, **kwargs: Any) -> Any:
        """Resets the env and clears the episode-end flags."""
        self.ended_last_step = self.reset_on_next_step = False
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> Any:
        """Steps the env and notes whether the episode ended; after a restore that ended an episode, the first step
        resets instead (reward 0)."""
        if self.reset_on_next_step:
            self.ended_last_step = self.reset_on_next_step = False
            observation, info = self.env.reset()
            return observation, 0, False, False, info
        observation, reward, terminated, truncated, info = self.env.step(action)
        self.ended_last_step = bool(terminated or truncated)
        return observation, reward, terminated, truncated, info

    def pgrad_capture(self) -> dict[str, Any]:
        """The state of every wrapper layer below, and whether the last step ended an episode."""
        return {"ended_last_step": self.ended_last_step, "layers": [_layer_state(layer) for layer in _chain(self.env)]}

    def pgrad_apply(self) -> None:
        """Restores the state put in ``pgrad_incoming`` into every wrapper layer; refuses a missing state or a
        different wrapper chain."""
        state, self.pgrad_incoming = self.pgrad_incoming, None
        if state is None:
            raise ValueError("no state to restore")
        layers = _chain(self.env)
        if len(layers) != len(state["layers"]):
            raise ValueError("environment wrappers differ from the checkpoint's")
        for layer, layer_state in zip(layers, state["layers"], strict=True):
            _restore_layer(layer, layer_state)
        self.ended_last_step = self.reset_on_next_step = bool(state["ended_last_step"])

    def pgrad_missed(self) -> list[str]:
        """The state a capture cannot keep, per wrapper layer, as ``Layer: name (type)``."""
        return [f"{type(layer).__name__}: {name}" for layer in _chain(self.env) for name in _missed(layer)]


def _async_workers(envs: Any) -> Any:
    """The ``AsyncVectorEnv`` whose envs carry ``StateAccess``, or None."""
    from gymnasium.vector import AsyncVectorEnv

    base = _chain(envs)[-1]
    return base if isinstance(base, AsyncVectorEnv) and getattr(base, "pgrad_state_access", False) else None


def inexact_reason(envs: Any) -> str | None:
    """Why a resume cannot put these environments back exactly where they were, or None when it can.

    Said before training starts, so nobody finds out after a resume: the state that cannot be saved
    without pickle (Box2D bodies and worlds are C++ objects), or async vectorisation.
    """
    if hasattr(envs, "inexact_remote_reason"):  # envs in other processes (Ray workers) answer for themselves
        return envs.inexact_remote_reason()
    from gymnasium.vector import AsyncVectorEnv

    layers = _chain(envs)
    workers = _async_workers(envs)
    if workers is not None:
        in_worker: list[str] = workers.call("pgrad_missed")[0]
        if not in_worker:
            return None
        return (
            f"its state is not all plain data ({'; '.join(in_worker)}) and cannot be saved without pickle; "
            "a resume restarts the episodes in progress instead of continuing them"
        )
    if any(isinstance(layer, AsyncVectorEnv) for layer in layers):
        return (
            "env.vectorization=async keeps the environments in worker processes, whose state is not saved; "
            "a resume restarts their episodes (use sync or native vectorisation for an exact resume)"
        )
    too_large = _too_large(envs)
    if too_large is not None:
        return too_large
    sub_envs = getattr(layers[-1], "envs", [])
    missed: dict[str, list[str]] = {}
    for layer in layers + (_chain(sub_envs[0]) if len(sub_envs) else []):
        names = _missed(layer)
        if names:
            missed.setdefault(type(layer).__name__, []).extend(names)
    if not missed:
        return None
    what = "; ".join(f"{owner}: {', '.join(names)}" for owner, names in missed.items())
    return (
        f"its state is not all plain data ({what}) and cannot be saved without pickle; "
        "a resume restarts the episodes in progress instead of continuing them"
    )


MAX_STATE_BYTES = 4 * 2**20  # an env state beyond this is a data set, not a position in an episode


def _too_large(envs: Any) -> str | None:
    """Why the environments' state is too large to copy into every checkpoint, or None.

    Measured once, before training: an env that holds a data set (a table of prices, a map, an
    image) would copy it into every checkpoint's ``state.json`` (a 16 MB data set in each of 40
    checkpoints), when what a resume needs is where each episode stands. Such an env is not
    captured; the warning names its largest attributes."""
    state = capture(envs)
    if state is None:
        return None
    size = len(json.dumps(state))
    if size <= MAX_STATE_BYTES:
        return None
    attributes: dict[str, int] = {}
    for layers in [state["layers"], *state.get("sub_envs", [])]:
        for layer in layers:
            for name, value in layer.items():
                attributes[name] = attributes.get(name, 0) + len(json.dumps(value))
    largest = sorted(attributes.items(), key=lambda item: -item[1])[:3]
    named = ", ".join(f"{name} {bytes_ / 2**20:.1f} MiB" for name, bytes_ in largest)
    return (
        f"its state is {size / 2**20:.1f} MiB (largest: {named}), more than {MAX_STATE_BYTES // 2**20} MiB to copy "
        "into every checkpoint (a data set held by the env?); it is not saved, and a resume restarts the episodes "
        "in progress instead of continuing them"
    )


def _restore_layer(obj: Any, state: dict[str, Any]) -> None:
    for name, value in state.items():
        if name == "__mujoco__":
            _restore_mujoco(obj.model, obj.data, value)
            continue
        setattr(obj, name, _decode(value, getattr(obj, name, None)))
    # A layer that wrote into something not captured here (domain randomisation writes its draws into the
    # MuJoCo model, which is never saved) says so with this method, and writes it again from its attributes.
    restored = getattr(obj, "pgrad_restored", None)
    if callable(restored):
        restored()


def _chain(env: Any) -> list[Any]:
    layers = [env]
    while hasattr(layers[-1], "env"):
        layers.append(layers[-1].env)
    return layers


def capture(envs: Any) -> dict[str, Any] | None:
    """JSON-able state of a vector env, or None when it cannot be captured (async)."""
    if hasattr(envs, "capture_remote_state"):
        return envs.capture_remote_state()
    from gymnasium.vector import AsyncVectorEnv

    layers = _chain(envs)
    workers = _async_workers(envs)
    if workers is not None:  # the vector env itself holds nothing to restore; each worker's env does
        return {"async_sub_envs": list(workers.call("pgrad_capture"))}
    if any(isinstance(layer, AsyncVectorEnv) for layer in layers):
        return None
    state: dict[str, Any] = {"layers": [_layer_state(layer) for layer in layers]}
    base = layers[-1]
    if hasattr(base, "envs"):
        state["sub_envs"] = [[_layer_state(layer) for layer in _chain(env)] for env in base.envs]
    return state


def restore(envs: Any, state: dict[str, Any]) -> None:
    """Put a freshly made (and reset) vector env back into a captured state."""
    if hasattr(envs, "restore_remote_state"):
        envs.restore_remote_state(state)
        return
    workers = _async_workers(envs)
    if "async_sub_envs" in state or workers is not None:
        if workers is None or "async_sub_envs" not in state:
            raise ValueError("the checkpoint's environments and these differ in env.vectorization")
        if len(state["async_sub_envs"]) != workers.num_envs:
            raise ValueError(f"the checkpoint has {len(state['async_sub_envs'])} environments, not {workers.num_envs}")
        workers.set_attr("pgrad_incoming", list(state["async_sub_envs"]))
        workers.call("pgrad_apply")
        return
    layers = _chain(envs)
    if len(layers) != len(state["layers"]):
        raise ValueError("environment wrappers differ from the checkpoint's")
    for layer, layer_state in zip(layers, state["layers"], strict=True):
        _restore_layer(layer, layer_state)
    for env, env_state in zip(getattr(layers[-1], "envs", []), state.get("sub_envs", []), strict=True):
        for layer, layer_state in zip(_chain(env), env_state, strict=True):
            _restore_layer(layer, layer_state)
