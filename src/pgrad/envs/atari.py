"""Atari (ALE) games: registering their ids and the standard preprocessing.

``ALE/<Game>-v5`` ids exist once ``ale_py`` (the ``atari`` extra, which ships the ROMs) is imported;
``ensure_registered`` imports it on first use of such an id. Every ALE env gets the settings of the
``<Game>NoFrameskip-v4`` recipe used by SB3's ``AtariWrapper`` and CleanRL's Atari PPO, expressed
over v5 ids: the emulator steps one frame (``frameskip=1``) without sticky actions
(``repeat_action_probability=0``), unless ``env.kwargs`` says otherwise, and then

- up to 30 no-op actions at reset, 4 frames per action with the max of the last two, 84x84 grayscale
  (Gymnasium's ``AtariPreprocessing``);
- rewards clipped to their sign (so logged training returns are clipped-reward returns);
- the last 4 frames stacked channels-first, (4, 84, 84) uint8: the policy's CNN sees motion.

Not included (SB3 adds them): fire-on-reset and end-of-life as end of episode.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from pgrad.errors import ConfigError

FRAME_STACK = 4
FRAME_SKIP = 4
NOOP_MAX = 30
SCREEN_SIZE = 84
# v5 defaults that the NoFrameskip-v4 recipe changes; user kwargs win.
EMULATOR_KWARGS = {"frameskip": 1, "repeat_action_probability": 0.0}


def is_ale_id(env_id: str) -> bool:
    """Whether ``env_id`` is an ALE game (``ALE/...``), which gets the Atari preprocessing."""
    return env_id.startswith("ALE/")


def ensure_registered(env_id: str) -> None:
    """Import ``ale_py`` (which registers the ALE ids) for an ``ALE/...`` id; one line if it is missing."""
    if not is_ale_id(env_id) or env_id in gym.registry:
        return
    try:
        import ale_py
    except ImportError:
        raise ConfigError(f"env.id: '{env_id}' needs ale-py: pip install 'pgrad[atari]'") from None
    gym.register_envs(ale_py)


def is_atari(spec: gym.envs.registration.EnvSpec) -> bool:
    """Whether a registered env is an ALE game (by its entry point, so v4/NoFrameskip ids count too)."""
    return isinstance(spec.entry_point, str) and spec.entry_point.startswith("ale_py")


def emulator_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``env.kwargs`` over the recipe's emulator settings."""
    return {**EMULATOR_KWARGS, **kwargs}


def preprocess(env: gym.Env) -> gym.Wrapper:
    """The standard Atari layers around one ALE env (see the module docstring)."""
    env = gym.wrappers.AtariPreprocessing(
        env, noop_max=NOOP_MAX, frame_skip=FRAME_SKIP, screen_size=SCREEN_SIZE, grayscale_obs=True
    )
    env = gym.wrappers.TransformReward(env, lambda reward: float(np.sign(float(reward))))
    return gym.wrappers.FrameStackObservation(env, FRAME_STACK)
