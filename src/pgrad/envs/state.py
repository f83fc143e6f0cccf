"""Save and restore the internal state of vector environments without pickling.

Exact resume needs the environments exactly where they were: physical state, step counters,
autoreset flags and random generators. Pickling would execute code on load, so instead every
layer of every environment (vector env, wrappers, the base env) is walked and its *plain*
attributes are kept: NumPy arrays, numbers, booleans, None, tuples/lists of those, and NumPy
generators (as their bit-generator state). MuJoCo environments add their simulator state
(qpos, qvel, act, time). Everything is JSON.

This covers Gymnasium's classic-control and MuJoCo environments, their native vector versions
and ``SyncVectorEnv``. ``AsyncVectorEnv`` keeps its envs in other processes; it is not captured
(``capture`` returns None) and a resumed run re-seeds those environments instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_SCALARS = (bool, int, float, str, type(None), np.bool_, np.integer, np.floating)


def _encode(value: Any) -> Any:
    """JSON-able form of a plain value, or raise TypeError if it is not plain."""
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise TypeError("object array")
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype), "shape": list(value.shape)}
    if isinstance(value, np.random.Generator):
        return {"__generator__": value.bit_generator.state}
    if isinstance(value, (np.bool_, np.integer, np.floating)):
        return {"__npscalar__": value.item(), "dtype": str(value.dtype)}
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, (tuple, list)):
        items = [_encode(v) for v in value]
        return {"__tuple__": items} if isinstance(value, tuple) else {"__list__": items}
    raise TypeError(type(value).__name__)


def _decode(value: Any, current: Any) -> Any:
    if isinstance(value, dict):
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
        state["__mujoco__"] = {
            "qpos": _encode(np.array(data.qpos)),
            "qvel": _encode(np.array(data.qvel)),
            "act": _encode(np.array(data.act)),
            "time": float(data.time),
        }
    return state


def _restore_layer(obj: Any, state: dict[str, Any]) -> None:
    for name, value in state.items():
        if name == "__mujoco__":
            data = obj.data
            data.qpos[:] = _decode(value["qpos"], None)
            data.qvel[:] = _decode(value["qvel"], None)
            if data.act.size:
                data.act[:] = _decode(value["act"], None)
            data.time = value["time"]
            import mujoco  # only MuJoCo envs reach here

            mujoco.mj_forward(obj.model, data)
            continue
        setattr(obj, name, _decode(value, getattr(obj, name, None)))


def _chain(env: Any) -> list[Any]:
    layers = [env]
    while hasattr(layers[-1], "env"):
        layers.append(layers[-1].env)
    return layers


def capture(envs: Any) -> dict[str, Any] | None:
    """JSON-able state of a vector env, or None when it cannot be captured (async)."""
    from gymnasium.vector import AsyncVectorEnv

    layers = _chain(envs)
    if any(isinstance(layer, AsyncVectorEnv) for layer in layers):
        return None
    state: dict[str, Any] = {"layers": [_layer_state(layer) for layer in layers]}
    base = layers[-1]
    if hasattr(base, "envs"):
        state["sub_envs"] = [[_layer_state(layer) for layer in _chain(env)] for env in base.envs]
    return state


def restore(envs: Any, state: dict[str, Any]) -> None:
    """Put a freshly made (and reset) vector env back into a captured state."""
    layers = _chain(envs)
    if len(layers) != len(state["layers"]):
        raise ValueError("environment wrappers differ from the checkpoint's")
    for layer, layer_state in zip(layers, state["layers"], strict=True):
        _restore_layer(layer, layer_state)
    for env, env_state in zip(getattr(layers[-1], "envs", []), state.get("sub_envs", []), strict=True):
        for layer, layer_state in zip(_chain(env), env_state, strict=True):
            _restore_layer(layer, layer_state)
