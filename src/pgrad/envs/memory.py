"""Memory and sparse-reward task suites: popgym and MiniGrid, by their registered ids.

``popgym-<Task><Level>-v0`` ids (``popgym-RepeatPreviousEasy-v0``) exist once ``popgym`` is imported, and
``MiniGrid-...`` / ``BabyAI-...`` ids (``MiniGrid-DoorKey-5x5-v0``) once ``minigrid`` is; ``ensure_registered``
imports the package on first use of such an id (a fixed, installed package, as ``ale_py`` for Atari: nothing
named by the user is imported), or says in one line that the ``memory`` extra is missing.

Their spaces, made into ones pgrad's torsos take (``adapt``, one layer around each env):

- MiniGrid: the observation is a Dict of ``image`` (7x7x3 uint8: object, colour and state of each cell of the
  egocentric view), ``direction`` (Discrete(4)) and ``mission`` (a text). The mission is dropped (it is the same
  sentence for every episode of the non-BabyAI tasks and pgrad has no text torso); ``image`` and ``direction``
  stay a Dict, which pgrad packs into one row (the 147 image entries as numbers, the direction one-hot: 151
  floats; the image is smaller than the Nature CNN takes, so the MLP sees it).
- popgym: Discrete and Box observations are taken as they are (Discrete one-hot by pgrad); MultiDiscrete and
  Tuple observations (``CountRecall``, ``Autoencode``, ``Concentration``) become one float32 vector, each
  discrete part one-hot and each Box part as it is (``OneHotObservation``); MultiDiscrete actions
  (``Battleship``, ``MineSweeper``) become one Discrete action over all their combinations
  (``FlatDiscreteAction``, in C order: the last part varies fastest).
"""

from __future__ import annotations

import importlib
from typing import Any

import gymnasium as gym
import numpy as np

from pgrad.errors import ConfigError

# id prefix -> the package whose import registers those ids
PACKAGES = {"popgym-": "popgym", "MiniGrid-": "minigrid", "BabyAI-": "minigrid"}
EXTRA = "pgrad[memory]"
# Flattened MultiDiscrete actions beyond this many combinations would make a categorical head too wide to learn.
MAX_FLAT_ACTIONS = 4096


def package_for(env_id: str) -> str | None:
    """The package that registers ``env_id`` (popgym or minigrid), or None for any other id."""
    return next((package for prefix, package in PACKAGES.items() if env_id.startswith(prefix)), None)


def ensure_registered(env_id: str) -> None:
    """Import popgym or MiniGrid for one of their ids (importing registers them); one line if it is missing."""
    package = package_for(env_id)
    if package is None or env_id in gym.registry:
        return
    try:
        importlib.import_module(package)
    except ImportError:
        raise ConfigError(f"env.id: '{env_id}' needs {package}: pip install '{EXTRA}'") from None


def suite(spec: gym.envs.registration.EnvSpec) -> str | None:
    """'popgym' or 'minigrid' for an env of those packages (by its entry point), else None."""
    entry = spec.entry_point if isinstance(spec.entry_point, str) else ""
    return next((name for name in ("popgym", "minigrid") if entry.startswith(f"{name}.")), None)


def adapt(env: gym.Env) -> gym.Wrapper:
    """The layers that make one popgym or MiniGrid env's spaces ones pgrad takes (see the module docstring); a
    plain ``gym.Wrapper`` where the spaces need nothing (``gym.make_vec`` takes wrappers)."""
    layer: gym.Env = env
    space = env.observation_space
    if isinstance(space, gym.spaces.Dict) and "mission" in space.spaces:
        layer = DropKeys(layer, ("mission",))
    elif isinstance(space, (gym.spaces.MultiDiscrete, gym.spaces.Tuple)):
        layer = OneHotObservation(layer)
    if isinstance(layer.action_space, gym.spaces.MultiDiscrete):
        layer = FlatDiscreteAction(layer)
    return layer if isinstance(layer, gym.Wrapper) else gym.Wrapper(layer)


class DropKeys(gym.ObservationWrapper[dict[str, Any], Any, dict[str, Any]]):
    """A Dict observation without some of its keys (MiniGrid's text ``mission``); the others keep their order."""

    def __init__(self, env: gym.Env, keys: tuple[str, ...]) -> None:
        super().__init__(env)
        space = env.observation_space
        assert isinstance(space, gym.spaces.Dict)
        self.kept = tuple(key for key in space.spaces if key not in keys)
        self.observation_space = gym.spaces.Dict({key: space.spaces[key] for key in self.kept})

    def observation(self, observation: dict[str, Any]) -> dict[str, Any]:
        """The observation with only the kept keys."""
        return {key: observation[key] for key in self.kept}


def _parts(space: gym.Space[Any]) -> list[gym.Space[Any]]:
    """The Discrete, MultiDiscrete and Box parts of a (possibly nested) Tuple space, in order; one line for others."""
    if isinstance(space, gym.spaces.Tuple):
        return [part for sub in space.spaces for part in _parts(sub)]
    if isinstance(space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.Box)):
        return [space]
    raise ConfigError(f"env.id: observation part {space} is not supported (allowed: Discrete, MultiDiscrete, Box)")


def _values(observation: Any) -> list[Any]:
    """A (possibly nested) tuple observation's parts in the order of ``_parts``."""
    if isinstance(observation, tuple):
        return [value for sub in observation for value in _values(sub)]
    return [observation]


def _layout(part: gym.Space[Any]) -> tuple[int, tuple[tuple[int, int], ...]]:
    """One part as plain numbers (so that ``pgrad.envs.state`` can save the wrapper): (its flat size, 0) for a
    Box part, (0, (n, start) of each discrete entry) for a Discrete or MultiDiscrete one."""
    if isinstance(part, gym.spaces.Box):
        return int(np.prod(part.shape)), ()
    if isinstance(part, gym.spaces.Discrete):
        nvec, start = np.asarray([part.n]), np.asarray([part.start])
    else:
        assert isinstance(part, gym.spaces.MultiDiscrete)
        nvec, start = np.asarray(part.nvec).ravel(), np.asarray(part.start).ravel()
    return 0, tuple((int(n), int(s)) for n, s in zip(nvec, start, strict=True))


class OneHotObservation(gym.ObservationWrapper[np.ndarray, Any, Any]):
    """A MultiDiscrete or Tuple observation as one float32 vector: each discrete entry one-hot (value minus its
    start), each Box part flattened as it is: CountRecallEasy's MultiDiscrete([2, 2]) value (1, 0) is
    [0, 1, 1, 0]."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        parts = _parts(env.observation_space)
        self.layout = tuple(_layout(part) for part in parts)
        low = [np.asarray(p.low, np.float32).ravel() if isinstance(p, gym.spaces.Box) else None for p in parts]
        high = [np.asarray(p.high, np.float32).ravel() if isinstance(p, gym.spaces.Box) else None for p in parts]
        ones = [np.ones(sum(n for n, _ in entries), np.float32) for _, entries in self.layout]
        lows = np.concatenate([b if b is not None else 0 * one for b, one in zip(low, ones, strict=True)])
        highs = np.concatenate([b if b is not None else one for b, one in zip(high, ones, strict=True)])
        self.observation_space = gym.spaces.Box(lows, highs, lows.shape, np.float32)

    def observation(self, observation: Any) -> np.ndarray:
        """The flat vector: the parts' one-hot blocks and Box values one after another."""
        blocks = []
        for (box_size, entries), value in zip(self.layout, _values(observation), strict=True):
            if box_size:
                blocks.append(np.asarray(value, np.float32).ravel())
                continue
            for (n, start), entry in zip(entries, np.asarray(value).ravel(), strict=True):
                block = np.zeros(n, np.float32)
                block[int(entry) - start] = 1.0
                blocks.append(block)
        return np.concatenate(blocks)


class FlatDiscreteAction(gym.ActionWrapper[Any, np.int64, Any]):
    """A MultiDiscrete action space as one Discrete space over every combination; action ``i`` is
    ``np.unravel_index(i, nvec) + start`` (the last entry varies fastest). Battleship's 8x8 board: 64 actions."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        space = env.action_space
        assert isinstance(space, gym.spaces.MultiDiscrete)
        self.nvec = tuple(int(n) for n in np.asarray(space.nvec).ravel())
        self.start = np.asarray(space.start).ravel()
        self.shape = space.shape
        count = int(np.prod(self.nvec))
        if count > MAX_FLAT_ACTIONS:
            raise ConfigError(
                f"env.id: action space {space} has {count} combinations; pgrad flattens MultiDiscrete actions of "
                f"at most {MAX_FLAT_ACTIONS}"
            )
        self.action_space = gym.spaces.Discrete(count)

    def action(self, action: np.int64) -> Any:
        """The MultiDiscrete action of flat index ``action``."""
        index = np.asarray(np.unravel_index(int(action), self.nvec)) + self.start
        return index.reshape(self.shape).astype(np.int64)
