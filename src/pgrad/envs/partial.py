"""A partially observed env from any Box env: velocities masked (``env.mask_velocity``).

Hiding the velocities turns a Markov task into a POMDP that a feed-forward policy cannot solve well and a
recurrent one can (it infers velocity from successive positions): sb3-contrib's ``CartPoleNoVel-v1`` and
``PendulumNoVel-v1``. The masked entries are set to 0 and keep their place, so the observation keeps its shape
(the zoo's ``MaskVelocityWrapper`` does the same); the space's bounds for them become [0, 0].
"""

from __future__ import annotations

import re
from typing import Any

import gymnasium as gym
import numpy as np

from pgrad.errors import ConfigError

# Which entries of the observation are velocities, with the observation size they assume (Gymnasium 1.x with its
# default kwargs; a different size means other kwargs changed the layout, and the user gives env.mask_indices).
# MuJoCo envs observe qpos (minus the excluded root coordinates), then qvel.
VELOCITY_INDICES: dict[str, tuple[int, tuple[int, ...]]] = {
    "CartPole": (4, (1, 3)),  # x, x_dot, theta, theta_dot
    "Pendulum": (3, (2,)),  # cos(theta), sin(theta), theta_dot
    "MountainCar": (2, (1,)),  # position, velocity
    "MountainCarContinuous": (2, (1,)),
    "Acrobot": (6, (4, 5)),  # cos/sin of both joints, then both angular velocities
    "LunarLander": (8, (2, 3, 5)),  # x, y, vx, vy, angle, angular velocity, legs
    "LunarLanderContinuous": (8, (2, 3, 5)),
    "HalfCheetah": (17, tuple(range(8, 17))),  # qpos[1:] (8), qvel (9)
    "Hopper": (11, tuple(range(5, 11))),  # qpos[1:] (5), qvel (6)
    "Walker2d": (17, tuple(range(8, 17))),  # qpos[1:] (8), qvel (9)
    "Swimmer": (8, tuple(range(3, 8))),  # qpos[2:] (3), qvel (5)
    "Ant": (105, tuple(range(13, 27))),  # qpos[2:] (13), qvel (14), contact forces
    "InvertedPendulum": (4, (2, 3)),  # qpos (2), qvel (2)
    "InvertedDoublePendulum": (9, (5, 6, 7)),  # x, sin (2), cos (2), qvel (3), constraint force
    "Reacher": (10, (6, 7)),  # cos (2), sin (2), target (2), qvel[:2], fingertip - target (2)
    "Pusher": (23, tuple(range(7, 14))),  # qpos[:7], qvel[:7], tip, object, goal
}


def env_family(env_id: str) -> str:
    """'CartPole' for 'CartPole-v1' (and for 'gymnasium.envs:CartPole-v1'): the id without module and version."""
    name = env_id.split(":", 1)[-1].split("/")[-1]
    return re.sub(r"-v\d+$", "", name)


def velocity_indices(env_id: str, given: tuple[int, ...] | None) -> tuple[tuple[int, ...], int | None]:
    """(indices to mask, the observation size they assume or None when the user gave them). ``given``
    (``env.mask_indices``) wins; otherwise the table's entry for the env, or one line naming the fix."""
    if given is not None:
        return tuple(given), None
    entry = VELOCITY_INDICES.get(env_family(env_id))
    if entry is None:
        known = ", ".join(sorted(VELOCITY_INDICES))
        raise ConfigError(
            f"env.mask_velocity: pgrad does not know which observation entries of '{env_id}' are velocities; give "
            f"them as env.mask_indices=[...] (known envs: {known})"
        )
    size, indices = entry
    return indices, size


class MaskVelocity(gym.ObservationWrapper[np.ndarray, Any, np.ndarray]):
    """Sets the observation entries ``indices`` (flat, of a Box observation) to 0: a partially observed env."""

    def __init__(self, env: gym.Env[np.ndarray, Any], indices: tuple[int, ...], expected_size: int | None) -> None:
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, gym.spaces.Box):
            raise ConfigError(f"env.mask_velocity: needs a Box observation space; this env's is {space}")
        size = int(np.prod(space.shape))
        if expected_size is not None and size != expected_size:
            raise ConfigError(
                f"env.mask_velocity: the table of velocity entries assumes {expected_size} observation entries; this "
                f"env has {size} (its kwargs change the layout): give env.mask_indices=[...]"
            )
        if not indices or max(indices) >= size:
            raise ConfigError(f"env.mask_indices: each index must be in [0, {size - 1}]; got {list(indices)}")
        self.keep = np.ones(size, dtype=space.dtype)
        self.keep[list(indices)] = 0
        low = np.where(self.keep == 0, 0, space.low.reshape(-1)).reshape(space.shape)  # bounds may be infinite
        high = np.where(self.keep == 0, 0, space.high.reshape(-1)).reshape(space.shape)
        self.observation_space = gym.spaces.Box(low, high, dtype=space.dtype)  # type: ignore[arg-type]

    def observation(self, observation: np.ndarray) -> np.ndarray:
        """The observation with the masked entries set to 0 (same shape and dtype)."""
        flat = np.where(self.keep == 0, 0, np.asarray(observation).reshape(-1))
        return flat.reshape(np.shape(observation)).astype(self.keep.dtype, copy=False)


def masker(env_id: str, mask_velocity: bool, mask_indices: tuple[int, ...] | None) -> Any:
    """The layer ``env.mask_velocity`` asks for (a function env -> wrapped env), or None when it is off; an env not
    in the table without ``env.mask_indices`` is refused here, before any env is built."""
    if not mask_velocity:
        return None
    indices, size = velocity_indices(env_id, mask_indices)

    def mask(env: gym.Env[Any, Any]) -> gym.Env[Any, Any]:
        return MaskVelocity(env, indices, size)

    return mask
