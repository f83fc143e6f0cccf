"""Domain randomisation for MuJoCo environments: new physics every episode (the sim-to-real recipe of
Tobin et al. 2017 and Peng et al. 2018).

At every reset the wrapper draws one scale per body (mass, and inertia with it: the same shape with another
density), per geom (its friction coefficients), per degree of freedom (joint damping) and per actuator
(gear, the torque per unit of control of the motors Gymnasium's MuJoCo envs use), each from U(low, high),
and writes ``nominal x scale`` into the MuJoCo model. The nominal values are read once, when the wrapper is
built, so scales never compound across episodes. Each episode also draws an action delay k: the action
applied at step t is the one chosen at step t - k (the neutral action, the middle of the action bounds,
during the first k steps). Observations get Gaussian noise of std ``obs_noise`` at every step.

Curriculum: with ``curriculum_steps`` > 0 the ranges widen linearly around the nominal value,
``[1 + f (low - 1), 1 + f (high - 1)]`` with ``f = start + (1 - start) min(1, steps / curriculum_steps)``,
where steps counts this env's steps x the number of envs (all envs step together); the noise std and the
delay bounds are scaled by the same f (delays rounded down).

Reproducible and resumable: the draws come from the wrapper's own generator, seeded from the env's reset
seed (``[seed, SALT]``, a stream apart from the env's own ``np_random``). Everything it holds is a plain
attribute (NumPy arrays, numbers, the generator), so ``pgrad.envs.state`` captures it in checkpoints; the
model parameters it wrote are not captured there (MuJoCo's model never is), so after a restore
``pgrad_restored`` writes them again from the restored scales.

Logging: the reset ``info`` carries the episode's draws under ``"randomize"`` (scales per element for the
parameters that are on, ``obs_noise`` std, ``action_delay``, ``range_fraction``); the on-policy runner
writes them to ``randomization.jsonl`` and per-update ``randomize/*`` metrics.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from pgrad.config import RandomizeConfig
from pgrad.errors import ConfigError

SCALES = RandomizeConfig.SCALES  # mass, friction, damping, actuator_gain
SALT = 0x52414E44  # "RAND": the randomiser's stream is not the env's own np_random for the same seed


def is_mujoco(env: gym.Env) -> bool:
    """Whether the env underneath its wrappers is a MuJoCo env (a model with body masses and a data object)."""
    base = env.unwrapped
    return hasattr(getattr(base, "model", None), "body_mass") and hasattr(getattr(base, "data", None), "qpos")


class DomainRandomization(gym.Wrapper):
    """Redraws a MuJoCo env's physics at every reset; adds observation noise and action delay.

    ``steps_per_env_step``: how many training steps one step of this env stands for (the number of envs),
    so that the curriculum counts steps as ``run.total_steps`` does.
    """

    def __init__(self, env: gym.Env, config: RandomizeConfig, steps_per_env_step: int = 1) -> None:
        super().__init__(env)
        if not is_mujoco(env):
            name = env.spec.id if env.spec is not None else type(env.unwrapped).__name__
            field = config.active[0] if config.active else "mass"
            raise ConfigError(
                f"env.randomize.{field}: domain randomisation changes a MuJoCo model (body_mass, geom_friction, "
                f"dof_damping, actuator_gear) and {name} is not a MuJoCo environment; leave env.randomize at its "
                "defaults (off) for it"
            )
        if not isinstance(env.action_space, gym.spaces.Box):
            raise ConfigError(f"env.randomize: needs Box actions; got {env.action_space}")
        model = self.unwrapped.model  # type: ignore[attr-defined]
        # The configuration, as plain attributes (captured and restored unchanged with the rest).
        self.active = tuple(config.active)
        self.full_ranges = np.array([config.scale_range(name) for name in SCALES])  # [4, 2]: low, high
        self.full_delay = config.delay_range()
        self.full_obs_noise = float(config.obs_noise)
        self.curriculum_steps = int(config.curriculum_steps)
        self.curriculum_start = float(config.curriculum_start)
        self.steps_per_env_step = int(steps_per_env_step)
        # Nominal values, read once: every episode's values are nominal x scale, never scale x scale.
        self.nominal_mass = model.body_mass.copy()
        self.nominal_inertia = model.body_inertia.copy()
        self.nominal_friction = model.geom_friction.copy()
        self.nominal_damping = model.dof_damping.copy()
        self.nominal_gear = model.actuator_gear.copy()
        # This episode's draws (ones until the first reset).
        self.mass_scale = np.ones(model.nbody)
        self.friction_scale = np.ones(model.ngeom)
        self.damping_scale = np.ones(model.nv)
        self.actuator_gain_scale = np.ones(model.nu)
        self.obs_noise = 0.0
        self.action_delay = 0
        self.range_fraction = 1.0
        self.env_steps = 0
        self.rng = np.random.default_rng()  # reseeded by the first reset with a seed
        low, high = env.action_space.low, env.action_space.high
        self.neutral_action = np.where(np.isfinite(low + high), (low + high) / 2, 0).astype(env.action_space.dtype)
        # past_actions[i]: the action chosen i + 1 steps ago (room for the longest delay of the range)
        self.past_actions = np.repeat(self.neutral_action[None], self.full_delay[1], axis=0)

    # ---- drawing and applying -------------------------------------------------------------------
    def current_fraction(self) -> float:
        """f of the curriculum: the share of the full ranges this episode draws from."""
        if self.curriculum_steps == 0:
            return 1.0
        progress = min(1.0, self.env_steps * self.steps_per_env_step / self.curriculum_steps)
        return self.curriculum_start + (1.0 - self.curriculum_start) * progress

    def draw(self) -> None:
        """This episode's scales, delay and noise std, from ranges widened to the curriculum's fraction."""
        fraction = self.range_fraction = self.current_fraction()
        for name, (low, high), scale in zip(SCALES, self.full_ranges, self.scales(), strict=True):
            if name in self.active:  # an off parameter draws nothing: the others' draws do not depend on it
                scale[:] = self.rng.uniform(1 + fraction * (low - 1), 1 + fraction * (high - 1), scale.shape)
        if "action_delay" in self.active:
            low_delay, high_delay = (int(np.floor(fraction * bound + 1e-9)) for bound in self.full_delay)
            self.action_delay = int(self.rng.integers(low_delay, high_delay + 1))
        self.obs_noise = fraction * self.full_obs_noise

    def scales(self) -> list[np.ndarray]:
        """This episode's scale arrays, in the order of ``SCALES``."""
        return [self.mass_scale, self.friction_scale, self.damping_scale, self.actuator_gain_scale]

    def apply(self) -> None:
        """Write nominal x scale into the model (also after a checkpoint restore: the model is not saved)."""
        model = self.unwrapped.model  # type: ignore[attr-defined]
        model.body_mass[:] = self.nominal_mass * self.mass_scale
        model.body_inertia[:] = self.nominal_inertia * self.mass_scale[:, None]
        model.geom_friction[:] = self.nominal_friction * self.friction_scale[:, None]
        model.dof_damping[:] = self.nominal_damping * self.damping_scale
        model.actuator_gear[:] = self.nominal_gear * self.actuator_gain_scale[:, None]
        if any(name in self.active for name in SCALES):
            import mujoco

            # Constants the compiler derives from masses and gears (subtree masses, the solver's inverse
            # weights, actuator_acc0): recomputed as for a model compiled with these values. A scratch
            # MjData keeps the env's own simulation state untouched.
            mujoco.mj_setConst(model, mujoco.MjData(model))

    def pgrad_restored(self) -> None:
        """Called by ``pgrad.envs.state`` after this layer's attributes were restored from a checkpoint."""
        self.apply()

    def drawn(self) -> dict[str, Any]:
        """This episode's draws, for the reset ``info`` (only the parameters that are on)."""
        scales = zip(SCALES, self.scales(), strict=True)
        out: dict[str, Any] = {name: scale.copy() for name, scale in scales if name in self.active}
        if "obs_noise" in self.active:
            out["obs_noise"] = float(self.obs_noise)
        if "action_delay" in self.active:
            out["action_delay"] = int(self.action_delay)
        out["range_fraction"] = float(self.range_fraction)
        return out

    # ---- the env interface ----------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        """Reseeds when given a seed, redraws and applies the physics before the env's reset, clears the action
        history; the observation is noised and the info carries the draws."""
        if seed is not None:
            self.rng = np.random.default_rng([seed, SALT])
        self.draw()
        self.apply()  # before the env's reset: its first observation is of the new physics
        observation, info = self.env.reset(seed=seed, options=options)
        self.past_actions[:] = self.neutral_action
        return self.noisy(observation), {**info, "randomize": self.drawn()}

    def step(self, action: Any) -> Any:
        """Steps the env with the delayed action; the observation is noised."""
        self.env_steps += 1
        observation, reward, terminated, truncated, info = self.env.step(self.delayed(action))
        return self.noisy(observation), reward, terminated, truncated, info

    def delayed(self, action: Any) -> Any:
        """The action chosen ``action_delay`` steps ago (this one when the delay is 0); remembers this one."""
        if len(self.past_actions) == 0:
            return action
        chosen = np.asarray(action, dtype=self.past_actions.dtype)
        applied = chosen if self.action_delay == 0 else self.past_actions[self.action_delay - 1].copy()
        self.past_actions[1:] = self.past_actions[:-1]
        self.past_actions[0] = chosen
        return applied

    def noisy(self, observation: Any) -> Any:
        """The observation plus N(0, obs_noise^2) noise per entry, in its dtype (unchanged when obs_noise is 0)."""
        if self.obs_noise == 0:
            return observation
        noise = self.rng.normal(0.0, self.obs_noise, np.shape(observation))
        return (observation + noise).astype(np.asarray(observation).dtype)


def draw_metrics(draws: list[dict[str, Any]]) -> dict[str, float]:
    """Per-update metrics from the episodes' draws (``RolloutCollector.take_randomize_draws``):
    ``randomize/<scale>_mean|min|max`` over every element drawn, the mean noise std and delay, the
    curriculum's current fraction, and how many episodes drew."""
    if not draws:
        return {}
    metrics = {"randomize/episodes": float(len(draws))}
    for name in SCALES:
        values = np.concatenate([np.ravel(draw[name]) for draw in draws if name in draw] or [np.empty(0)])
        if values.size:
            metrics[f"randomize/{name}_scale_mean"] = float(values.mean())
            metrics[f"randomize/{name}_scale_min"] = float(values.min())
            metrics[f"randomize/{name}_scale_max"] = float(values.max())
    for name, metric in (
        ("obs_noise", "obs_noise_mean"),
        ("action_delay", "action_delay_mean"),
        ("range_fraction", "range_fraction"),
    ):
        drawn = [draw[name] for draw in draws if name in draw]
        if drawn:
            metrics[f"randomize/{metric}"] = float(np.mean(drawn))
    return metrics


def parse_perturbation(items: list[str], trained: RandomizeConfig) -> RandomizeConfig:
    """``pgrad eval --randomize`` items to the physics an evaluation runs on.

    ``mass=1.3``: every body's mass x 1.3 (a number is a fixed scale here, not a half-width);
    ``friction=0.5:1.5``: each geom's scale drawn from U(0.5, 1.5) every episode; ``obs_noise=0.05``: the
    noise std; ``action_delay=2`` or ``action_delay=0:3``: the delay in steps; ``train``: the run's own
    ``env.randomize`` ranges at their full width. Items combine (``train`` first, then the others over it).
    """
    fields: dict[str, Any] = {}
    for item in items:
        if item.strip() == "train":
            fields.update({k: v for k, v in trained.to_dict().items() if not k.startswith("curriculum")})
            continue
        name, sep, text = item.partition("=")
        name = name.strip()
        allowed = (*SCALES, "obs_noise", "action_delay")
        if not sep or name not in allowed:
            raise ConfigError(
                f"--randomize {item!r}: expected NAME=SCALE or NAME=LOW:HIGH with NAME one of {', '.join(allowed)}, "
                "or 'train' (the run's own ranges)"
            )
        try:
            bounds = [float(part) for part in text.split(":")]
        except ValueError:
            raise ConfigError(f"--randomize {item!r}: {text!r} is not a number or LOW:HIGH") from None
        if name == "obs_noise":
            if len(bounds) != 1:
                raise ConfigError(f"--randomize {item!r}: obs_noise takes one number, the noise std")
            fields[name] = bounds[0]
        elif len(bounds) in (1, 2):
            low, high = bounds[0], bounds[-1]
            if not (0 <= low <= high if name == "action_delay" else 0 < low <= high) or not np.isfinite(high):
                floor = "0 <=" if name == "action_delay" else "0 <"
                raise ConfigError(f"--randomize {item!r}: {name} must be a value or LOW:HIGH with {floor} LOW <= HIGH")
            if name == "action_delay" and not (low.is_integer() and high.is_integer()):
                raise ConfigError(f"--randomize {item!r}: action_delay is a whole number of steps")
            fields[name] = [int(low), int(high)] if name == "action_delay" else [low, high]
        else:
            raise ConfigError(f"--randomize {item!r}: expected one number or LOW:HIGH")
    try:
        return RandomizeConfig(**fields)
    except ConfigError as exc:
        raise ConfigError(f"--randomize: {str(exc).replace(RandomizeConfig.SECTION + '.', '', 1)}") from None


def describe(config: RandomizeConfig) -> str:
    """One line for the physics an evaluation ran on: ``mass x1.3, friction x[0.5, 1.5]`` or ``nominal``."""
    parts = []
    for name in config.active:
        if name in SCALES:
            low, high = config.scale_range(name)
            parts.append(f"{name} x{low:g}" if low == high else f"{name} x[{low:g}, {high:g}]")
        elif name == "obs_noise":
            parts.append(f"obs_noise std {config.obs_noise:g}")
        else:
            low_delay, high_delay = config.delay_range()
            delay = f"{low_delay}" if low_delay == high_delay else f"{low_delay}-{high_delay}"
            parts.append(f"action_delay {delay} steps")
    return ", ".join(parts) or "nominal"
