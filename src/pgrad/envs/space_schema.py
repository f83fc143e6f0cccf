"""The schema of ``spaces.json``: the observation and action spaces a saved agent is deployed with.

``predict``, ``pgrad export`` and ``Agent.load`` build the spaces from this file instead of an env, and
a run folder may come from someone else: 180 bytes naming ``"dtype": "U200000000"`` once made ``pgrad
export`` allocate 6.5 GB, and a wrong shape, a string bound or a missing key gave a traceback. So the file
is bounded in size and checked against the schema below before anything is built, and each violation is
one line naming the field and what it may be. The schema is what ``pgrad.policy.space_to_dict`` writes:

- the file: a JSON mapping with exactly ``observation`` and ``action``, at most ``MAX_SPACES_BYTES``;
- ``Box``: ``type``, ``shape`` (at most ``MAX_DIMS`` sizes >= 1, at most ``MAX_SPACE_ELEMENTS`` elements),
  ``dtype`` (one of ``BOX_DTYPES``), ``low`` and ``high`` (a number or nested lists of that shape; no NaN;
  infinite only for float dtypes; whole numbers in the dtype's range for integer ones; low <= high);
- ``Discrete``: ``type``, ``n`` (1 to ``MAX_SPACE_ELEMENTS``) and an optional ``start`` (an integer);
- ``Dict`` (observations): ``type`` and ``spaces``, a list of 1 to ``MAX_DICT_KEYS`` ``[key, space]`` pairs in the
  space's key order, each space a Box or a Discrete (no nesting), ``MAX_SPACE_ELEMENTS`` elements in all.
"""

from __future__ import annotations

import json
import math
import reprlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from pgrad import safe_io
from pgrad.errors import ConfigError

# Box spaces written by pgrad.policy.space_to_dict hold two full bound arrays: ~25 bytes per float64 element each,
# so a file this large holds the largest space allowed (MAX_SPACE_ELEMENTS) with room to spare.
# the HMAC a spaces.json written under PGRAD_CHECKPOINT_KEY carries (pgrad.checkpoint.HMAC_FIELD)
SIGNATURE_FIELD = "hmac_sha256"
MAX_SPACES_BYTES = 64 * 2**20
# One observation or action of at most 2**20 numbers: an Atari frame stack (4x84x84) is 28,224, a raw
# 210x160x3 frame 100,800. A Discrete space one-hot encodes (observations) or has one logit per value (actions).
MAX_SPACE_ELEMENTS = 2**20
MAX_DIMS = 8
BOX_DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32")
BOX_KEYS = frozenset({"type", "shape", "dtype", "low", "high"})
DISCRETE_KEYS = frozenset({"type", "n", "start"})
DICT_KEYS = frozenset({"type", "spaces"})
MAX_DICT_KEYS = 64  # as pgrad.envs.factory.MAX_DICT_KEYS
# Discrete's start is added to an int64 action: bounded so that start + n stays inside int64.
MAX_START = 2**62


def read_spaces_document(path: Path) -> dict[str, Any]:
    """A ``spaces.json`` file as JSON, bounded in size and shape: a mapping with 'observation' and 'action' (and,
    when the file was written under ``PGRAD_CHECKPOINT_KEY``, its HMAC); the spaces themselves are checked by
    ``space_from_json``."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_SPACES_BYTES:
            raise ConfigError(f"{path} is {size} bytes; pgrad reads at most {MAX_SPACES_BYTES}")
        data = json.loads(safe_io.read_bytes(path).decode("utf-8"))  # never through a link (pgrad.safe_io)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ConfigError(f"{path} is not valid JSON ({type(exc).__name__})") from None
    required = {"observation", "action"}
    if not isinstance(data, dict) or not required <= set(data) or not set(data) <= required | {SIGNATURE_FIELD}:
        got = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        # (a file written under a key also carries its HMAC, SIGNATURE_FIELD)
        raise ConfigError(f"{path} must be a mapping with exactly 'observation' and 'action'; got {got}")
    return data


def read_spaces(path: Path) -> tuple[gym.Space[Any], gym.Space[Any]]:
    """The (observation, action) spaces of a ``spaces.json`` file, checked against the schema (see the
    module docstring); a ``ConfigError`` naming the file and the first violation otherwise."""
    data = read_spaces_document(path)
    return space_from_json(data["observation"], f"{path}: observation"), space_from_json(
        data["action"], f"{path}: action", allow_dict=False
    )


def space_from_json(data: Any, where: str, allow_dict: bool = True) -> gym.Space[Any]:
    """One space from its JSON form, checked first (``where`` names it in errors: ``FILE: observation``).
    ``allow_dict``: a Dict of Box/Discrete keys (observations); actions are Box or Discrete only."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping with a 'type' (Box or Discrete); got {_short(data)}")
    kind = data.get("type")
    if kind == "Box":
        return _box(data, where)
    if kind == "Discrete":
        return _discrete(data, where)
    if allow_dict and kind == "Dict" and not where.endswith("]"):  # one level: a Dict's keys are Box or Discrete
        return _dict(data, where)
    allowed = "'Box', 'Discrete' or (not nested) 'Dict'" if allow_dict else "'Box' or 'Discrete'"
    raise ConfigError(f"{where}.type must be {allowed}; got {_short(kind)}")


def _dict(data: dict[str, Any], where: str) -> gym.spaces.Dict:
    _keys(data, DICT_KEYS, set(DICT_KEYS), where)
    pairs = data["spaces"]
    if (
        not isinstance(pairs, list)
        or not 1 <= len(pairs) <= MAX_DICT_KEYS
        or not all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) for p in pairs)
        or len({p[0] for p in pairs}) != len(pairs)
    ):
        raise ConfigError(
            f"{where}.spaces must be a list of 1 to {MAX_DICT_KEYS} [key, space] pairs with distinct text keys; "
            f"got {_short(pairs)}"
        )
    spaces = {key: space_from_json(sub, f"{where}.spaces[{key!r}]") for key, sub in pairs}
    if sum(math.prod(space.shape or (1,)) for space in spaces.values()) > MAX_SPACE_ELEMENTS:
        raise ConfigError(f"{where}: the keys hold more than {MAX_SPACE_ELEMENTS} elements in all")
    return gym.spaces.Dict(OrderedDict(spaces.items()))  # a plain dict would be sorted by key


def _keys(data: dict[str, Any], allowed: frozenset[str], required: set[str], where: str) -> None:
    unknown, missing = sorted(set(map(str, data)) - allowed), sorted(required - set(data))
    if unknown or missing:
        raise ConfigError(
            f"{where} must have the keys {', '.join(sorted(allowed))} "
            f"(unknown: {', '.join(unknown) or 'none'}; missing: {', '.join(missing) or 'none'})"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _box(data: dict[str, Any], where: str) -> gym.spaces.Box:
    _keys(data, BOX_KEYS, set(BOX_KEYS), where)
    shape, dtype_name = data["shape"], data["dtype"]
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(_is_int(n) and 1 <= n <= MAX_SPACE_ELEMENTS for n in shape)
        or math.prod(shape) > MAX_SPACE_ELEMENTS
    ):
        raise ConfigError(
            f"{where}.shape must be a list of at most {MAX_DIMS} sizes >= 1 with at most {MAX_SPACE_ELEMENTS} "
            f"elements in all; got {_short(shape)}"
        )
    if dtype_name not in BOX_DTYPES:
        raise ConfigError(f"{where}.dtype must be one of {', '.join(BOX_DTYPES)}; got {_short(dtype_name)}")
    dtype = np.dtype(dtype_name)
    low = _bound(data["low"], tuple(shape), dtype, f"{where}.low")
    high = _bound(data["high"], tuple(shape), dtype, f"{where}.high")
    if not bool(np.all(low <= high)):
        raise ConfigError(f"{where}: low must be <= high everywhere; it is not at {np.argwhere(~(low <= high))[0]}")
    return gym.spaces.Box(low.astype(dtype), high.astype(dtype), dtype=dtype.type)  # type: ignore[arg-type]


def _bound(value: Any, shape: tuple[int, ...], dtype: np.dtype[Any], where: str) -> np.ndarray:
    """A bound as float64 of ``shape`` (a number is broadcast), checked to fit ``dtype``."""
    allowed = f"a number or nested lists of shape {list(shape)}"
    try:
        array = np.array(value, dtype=np.float64)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise ConfigError(f"{where} must be {allowed} of numbers; got {_short(value)}") from None
    if array.shape not in (shape, ()):
        raise ConfigError(f"{where} must be {allowed}; got shape {list(array.shape)}")
    if np.isnan(array).any():
        raise ConfigError(f"{where} holds NaN (allowed: numbers, and -Infinity/Infinity for float dtypes)")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if not np.isfinite(array).all() or (array != np.round(array)).any():
            raise ConfigError(f"{where} must hold whole numbers for dtype {dtype.name}")
        if array.min() < info.min or array.max() > info.max:
            raise ConfigError(f"{where} must lie in [{info.min}, {info.max}] for dtype {dtype.name}")
    return np.broadcast_to(array, shape).copy()


def _discrete(data: dict[str, Any], where: str) -> gym.spaces.Discrete:
    _keys(data, DISCRETE_KEYS, {"type", "n"}, where)
    n, start = data["n"], data.get("start", 0)
    if not _is_int(n) or not 1 <= n <= MAX_SPACE_ELEMENTS:
        raise ConfigError(f"{where}.n must be an integer in [1, {MAX_SPACE_ELEMENTS}]; got {_short(n)}")
    if not _is_int(start) or not -MAX_START <= start <= MAX_START:
        raise ConfigError(f"{where}.start must be an integer in [-2**62, 2**62]; got {_short(start)}")
    return gym.spaces.Discrete(n, start=start)


def _short(value: Any) -> str:
    """A value for an error line: a short repr (a few items of a list, the start of a string)."""
    text = reprlib.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
