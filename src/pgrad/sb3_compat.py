"""Stable-Baselines3's constructor arguments, one table per algorithm, and SB3's ``evaluate_policy``.

``SB3_ARGUMENTS[algo][name]`` says what every argument of SB3's ``PPO``, ``A2C``, ``SAC``, ``TD3`` and ``DDPG``
constructors is in pgrad; ``POLICY_KWARGS[algo][name]`` does the same for the keys of ``policy_kwargs``. The
constructors of ``pgrad.api`` read these tables to turn SB3's keywords into a config layer, and the docs' migration
table (``docs/sb3.md``, written by ``docs/hooks.py``) is generated from the same tables, so the two cannot drift.

An argument is either *mapped* (``convert`` turns its value into pgrad config fields: ``n_steps=256`` is
``ppo.num_steps: 256``) or accepted only at the values in ``allowed``, where pgrad does what SB3 does
(``use_sde=False``); any other value is refused with one ``ConfigError`` line naming the pgrad way.

No torch at import: ``pgrad.evaluate_policy`` lives here and ``import pgrad`` stays light.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pgrad.errors import ConfigError

# value, algorithm name -> {dotted config path: value}, e.g. {"ppo.num_steps": 256}
Convert = Callable[[Any, str], dict[str, Any]]

POLICIES = ("MlpPolicy", "CnnPolicy", "MultiInputPolicy")
SB3_ALGOS = ("ppo", "a2c", "sac", "td3", "ddpg")
OWN = "pgrad's constructor"  # the pgrad spelling of an argument pgrad's constructor takes under the same name


@dataclass(frozen=True)
class Sb3Argument:
    """How one SB3 argument lands in pgrad: ``convert`` maps its value onto config fields, or (``convert`` None)
    the values in ``allowed`` are accepted because pgrad does the same, and any other is refused naming ``pgrad``."""

    pgrad: str  # the pgrad spelling ("{algo}.num_steps"), or the pgrad way in words
    convert: Convert | None = None
    allowed: tuple[Any, ...] = ()
    note: str = ""  # what differs, for the migration table

    @property
    def mapped(self) -> bool:
        """Whether any value is translated (else only the ``allowed`` ones pass)."""
        return self.convert is not None

    def spelling(self, algo: str) -> str:
        """The pgrad spelling with the algorithm's section filled in."""
        return self.pgrad.replace("{algo}", algo)

    def apply(self, name: str, value: Any, algo: str) -> dict[str, Any]:
        """The config fields for ``name=value`` (dotted paths), or one ConfigError naming the pgrad way."""
        if self.convert is not None:
            return self.convert(value, algo)
        if any(_same(value, allowed) for allowed in self.allowed):
            return {}
        shown = " or ".join(repr(a) for a in self.allowed)
        raise ConfigError(f"{name}={_short(value)} is not offered by pgrad (only {shown}); {self.spelling(algo)}")


def _same(value: Any, allowed: Any) -> bool:
    """``value`` is the allowed one: None and True/False by identity (0 is not False), others by ``==``."""
    if allowed is None or isinstance(allowed, bool):
        return value is allowed
    if isinstance(value, bool):
        return False
    try:
        return bool(value == allowed)
    except (TypeError, ValueError):  # an array compared with a number
        return False


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ---- converters ---------------------------------------------------------------------------------------------


def field(path: str) -> Convert:
    """The value unchanged, at ``path`` (``{algo}`` is the algorithm's section)."""
    return lambda value, algo: {path.replace("{algo}", algo): value}


def _probe(name: str, schedule: Callable[[float], Any]) -> list[float]:
    """The schedule's values at progress_remaining 1, 0.75, ..., 0 (SB3 calls it with 1 at the start, 0 at the end)."""
    try:
        values = [float(schedule(p)) for p in (1.0, 0.75, 0.5, 0.25, 0.0)]
    except Exception as exc:  # noqa: BLE001 - the user's callable; its failure becomes one line
        raise ConfigError(f"{name}: calling the schedule with progress_remaining=1.0 failed: {exc!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise ConfigError(f"{name}: the schedule returned a non-finite value ({values})")
    return values


def schedule(name: str, value: Any, pgrad: str) -> tuple[float, bool]:
    """(initial value, linearly annealed to 0?) of a number or an SB3 schedule (progress_remaining -> value):
    a constant or ``value x progress_remaining`` (SB3's ``get_linear_fn(v, 0, 1)``, ``lambda p: p * v``) map;
    any other shape is refused naming ``pgrad``, the fields that express a schedule."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value), False
    if not callable(value):
        raise ConfigError(f"{name} must be a number or a schedule (progress_remaining -> value); got {_short(value)}")
    values = _probe(name, value)
    start = values[0]
    if all(math.isclose(v, start, rel_tol=1e-9, abs_tol=1e-12) for v in values):
        return start, False
    progress = (1.0, 0.75, 0.5, 0.25, 0.0)
    if all(math.isclose(v, start * p, rel_tol=1e-6, abs_tol=1e-12) for v, p in zip(values, progress, strict=True)):
        return start, True
    raise ConfigError(
        f"{name}: a schedule other than a constant or a linear one to 0 is not offered "
        f"(values at progress_remaining 1..0: {[round(v, 8) for v in values]}); pgrad: {pgrad}"
    )


def _learning_rate(value: Any, algo: str) -> dict[str, Any]:
    pgrad = f"{algo}.optimizer.learning_rate, {algo}.optimizer.anneal_lr (linear to 0)"
    rate, anneal = schedule("learning_rate", value, pgrad)
    return {f"{algo}.optimizer.learning_rate": rate, f"{algo}.optimizer.anneal_lr": anneal}


def _clip_range(value: Any, algo: str) -> dict[str, Any]:
    clip, anneal = schedule("clip_range", value, f"{algo}.clip_eps, {algo}.anneal_clip (linear to 0)")
    return {f"{algo}.clip_eps": clip, f"{algo}.anneal_clip": anneal}


def _clip_range_vf(value: Any, algo: str) -> dict[str, Any]:
    if value is None:
        return {f"{algo}.clip_vf": None}
    clip, anneal = schedule("clip_range_vf", value, f"{algo}.clip_vf (a constant)")
    if anneal:
        raise ConfigError(f"clip_range_vf: a schedule is not offered; pgrad: {algo}.clip_vf (a constant)")
    return {f"{algo}.clip_vf": clip}


def _use_rms_prop(value: Any, algo: str) -> dict[str, Any]:
    if not isinstance(value, bool):
        raise ConfigError(f"use_rms_prop must be True or False; got {_short(value)}")
    return {f"{algo}.optimizer.kind": "rmsprop" if value else "adam"}


def _sac_ent_coef(value: Any, algo: str) -> dict[str, Any]:
    """SB3's ``ent_coef``: ``"auto"`` (learned from 1.0), ``"auto_0.1"`` (learned from 0.1) or a fixed number."""
    if isinstance(value, str) and (value == "auto" or value.startswith("auto_")):
        try:
            start = float(value[5:]) if value != "auto" else 1.0
        except ValueError:
            raise ConfigError(f"ent_coef must be 'auto', 'auto_<float>' or a number; got {value!r}") from None
        return {f"{algo}.alpha": "auto", f"{algo}.alpha_init": start}
    return {f"{algo}.alpha": value}


def _train_freq(value: Any, algo: str) -> dict[str, Any]:
    """An int, or SB3's ``(n, "step")``; ``(n, "episode")`` is refused (pgrad's schedule counts env steps)."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        count, unit = value
        unit = str(getattr(unit, "value", unit))
        if unit != "step":
            raise ConfigError(
                f"train_freq={_short(value)}: a frequency in episodes is not offered; pgrad: "
                f"{algo}.loop.train_freq (env steps per env)"
            )
        value = count
    return {f"{algo}.loop.train_freq": value}


def _noise_parts(noise: Any) -> tuple[str, float, float | None]:
    """(kind, sigma, OU theta) of one of SB3's action-noise objects, read by duck typing (no SB3 import)."""
    kind = type(noise).__name__
    if kind == "VectorizedActionNoise":  # one copy per env: pgrad's noise is per env already
        return _noise_parts(noise.base_noise)
    if kind not in ("NormalActionNoise", "OrnsteinUhlenbeckActionNoise"):
        raise ConfigError(
            f"action_noise: {kind} is not offered; pgrad takes SB3's NormalActionNoise or "
            "OrnsteinUhlenbeckActionNoise (as exploration_noise and exploration_std), or None"
        )
    mean, sigma = np.asarray(noise._mu, float), np.asarray(noise._sigma, float)
    if np.any(mean != 0) or np.ptp(sigma) != 0:
        raise ConfigError(
            f"action_noise: pgrad's exploration noise has mean 0 and one sigma for every action dimension; "
            f"got mean {mean.tolist()}, sigma {sigma.tolist()}"
        )
    if kind == "NormalActionNoise":
        return "gaussian", float(sigma.flat[0]), None
    if not math.isclose(float(noise._dt), 1e-2) or getattr(noise, "initial_noise", None) is not None:
        raise ConfigError(
            f"action_noise: pgrad's Ornstein-Uhlenbeck noise has dt=0.01 and starts at 0; got dt={noise._dt}, "
            f"initial_noise={getattr(noise, 'initial_noise', None)!r}"
        )
    return "ornstein_uhlenbeck", float(sigma.flat[0]), float(noise._theta)


def _action_noise(value: Any, algo: str) -> dict[str, Any]:
    """None: no noise (SB3's default; pgrad's own default is Gaussian 0.1); SB3's noise objects by their values."""
    if value is None:
        return {f"{algo}.exploration_noise": "none"}
    kind, sigma, theta = _noise_parts(value)
    out: dict[str, Any] = {f"{algo}.exploration_noise": kind, f"{algo}.exploration_std": sigma}
    if theta is not None:
        if algo == "ddpg":
            out[f"{algo}.ou_theta"] = theta
        elif not math.isclose(theta, 0.15):
            raise ConfigError(f"action_noise: {algo}'s Ornstein-Uhlenbeck noise has theta 0.15; got {theta}")
    return out


def _device(value: Any, algo: str) -> dict[str, Any]:
    """SB3's ``"auto"`` is CUDA when torch sees a GPU; a ``torch.device`` is read by its text."""
    text = str(value)
    if text == "auto":
        import torch  # here only: "auto" asks whether torch sees a GPU

        text = "cuda" if torch.cuda.is_available() else "cpu"
    return {"run.device": text}


def _tensorboard_log(value: Any, algo: str) -> dict[str, Any]:
    """TensorBoard on (the constructor puts the run folder under the directory: see ``pgrad.api``)."""
    return {"run.tensorboard": True} if value is not None else {}


def _policy_kwargs(value: Any, algo: str) -> dict[str, Any]:
    """Each key of ``policy_kwargs`` through ``POLICY_KWARGS[algo]``."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"policy_kwargs must be a dict; got {_short(value)}")
    table = POLICY_KWARGS[algo]
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key not in table:
            hint = difflib.get_close_matches(str(key), table, n=1)
            close = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(
                f"policy_kwargs[{key!r}] is not a policy argument of SB3's {algo.upper()}{close}; "
                f"pgrad maps: {', '.join(table)}"
            )
        out.update(table[key].apply(f"policy_kwargs[{key!r}]", item, algo))
    return out


def _sizes(value: Any, what: str) -> list[int]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"{what} must be a list of layer sizes; got {_short(value)}")
    return list(value)


def _net_arch(heads: tuple[str, str]) -> Convert:
    """``net_arch``: a list is every network's hidden layers; ``dict(pi=..., vf=...)`` (on-policy) or
    ``dict(pi=..., qf=...)`` (off-policy) maps when both are equal (pgrad has one ``network.hidden_sizes``)."""

    def convert(value: Any, algo: str) -> dict[str, Any]:
        path = f"{algo}.network.hidden_sizes"
        if isinstance(value, dict):
            if set(value) != set(heads):
                raise ConfigError(
                    f"policy_kwargs['net_arch'] as a dict takes the keys {' and '.join(heads)}; got {sorted(value)}"
                )
            first, second = (_sizes(value[h], f"net_arch[{h!r}]") for h in heads)
            if first != second:
                raise ConfigError(
                    f"policy_kwargs['net_arch']: pgrad's actor and critic have the same layers, {path}; "
                    f"got {heads[0]}={first}, {heads[1]}={second}"
                )
            return {path: first}
        return {path: _sizes(value, "policy_kwargs['net_arch']")}

    return convert


def _activation(value: Any, algo: str) -> dict[str, Any]:
    """A ``torch.nn`` activation class by its name: ``nn.ReLU`` -> ``"relu"``, ``nn.Tanh`` -> ``"tanh"`` (pgrad's
    spelling of those two), any other -> its class name (``"ELU"``)."""
    if not isinstance(value, type):
        raise ConfigError(f"policy_kwargs['activation_fn'] must be a torch.nn activation class; got {_short(value)}")
    name = value.__name__
    return {f"{algo}.network.activation": name.lower() if name.lower() in ("tanh", "relu") else name}


def _optimizer_class(value: Any, algo: str) -> dict[str, Any]:
    kinds = {"torch.optim.adam.Adam": "adam", "torch.optim.rmsprop.RMSprop": "rmsprop"}
    qualified = f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', '')}"
    if qualified not in kinds:
        raise ConfigError(
            f"policy_kwargs['optimizer_class']={_short(value)} is not offered; pgrad: {algo}.optimizer.kind "
            "(torch.optim.Adam or torch.optim.RMSprop)"
        )
    return {f"{algo}.optimizer.kind": kinds[qualified]}


def _optimizer_kwargs(value: Any, algo: str) -> dict[str, Any]:
    """``eps`` and RMSprop's ``alpha``; ``weight_decay=0`` (torch's default) is accepted, any other key refused."""
    if not isinstance(value, dict):
        raise ConfigError(f"policy_kwargs['optimizer_kwargs'] must be a dict; got {_short(value)}")
    names = {"eps": f"{algo}.optimizer.eps", "alpha": f"{algo}.optimizer.rms_alpha"}
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key == "weight_decay" and item == 0:
            continue
        if key not in names:
            raise ConfigError(
                f"policy_kwargs['optimizer_kwargs'][{key!r}] is not offered; pgrad: {algo}.optimizer.eps, "
                f"{algo}.optimizer.rms_alpha"
            )
        out[names[key]] = item
    return out


def torso_entry_point(cls: Any) -> str:
    """``module:Qualname`` of a class, the text ``network.torso`` takes (``pgrad.nets.torso_entry_point`` checks
    that it can be imported again by that name)."""
    if not isinstance(cls, type):
        raise ConfigError(f"policy_kwargs['features_extractor_class'] must be a class; got {_short(cls)}")
    from pgrad.nets import torso_entry_point as checked  # torch: only when a torso is named

    return checked(cls)


def _features_extractor(value: Any, algo: str) -> dict[str, Any]:
    if isinstance(value, type) and value.__name__ == "FlattenExtractor":
        return {}  # SB3's default for vector observations: pgrad's MLP reads the flat observation too
    return {f"{algo}.network.torso": torso_entry_point(value)}


def _features_extractor_kwargs(value: Any, algo: str) -> dict[str, Any]:
    if value is None or value == {}:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"policy_kwargs['features_extractor_kwargs'] must be a dict; got {_short(value)}")
    return {f"{algo}.network.torso_kwargs": dict(value)}


# ---- the tables ---------------------------------------------------------------------------------------------

SDE = "gSDE is not offered; pgrad explores with its policy's own Gaussian (or {algo}'s exploration noise)"
CONSTRUCTOR = {
    "policy": Sb3Argument(
        OWN + ": 'MlpPolicy', 'CnnPolicy' or 'MultiInputPolicy', checked against the observation space",
        note="pgrad builds the network (an MLP, the Nature CNN for images, one encoder per key of a Dict); "
        "a policy class is refused",
    ),
    "env": Sb3Argument(OWN + " (an id, entry point, gymnasium.Env, class, factory or vector env)"),
    "seed": Sb3Argument(OWN + " (run.seed)", field("run.seed"), note="None: run.seed's default 1, not a random seed"),
    "verbose": Sb3Argument(OWN + " (0: quiet; 1 or 2: progress bar and event lines)"),
    "device": Sb3Argument(
        "run.device", _device, note="'auto': cuda when torch sees a GPU; acting (predict) stays on the CPU"
    ),
    "tensorboard_log": Sb3Argument(
        "run.tensorboard",
        _tensorboard_log,
        note="the run folder goes to DIR/<tb_log_name>_<n> (SB3's naming) and its events to its tb/; without it "
        "pgrad still writes tb/ in its run folder",
    ),
    "stats_window_size": Sb3Argument("run.episode_window", field("run.episode_window")),
    "_init_setup_model": Sb3Argument("nothing to set up later: pgrad builds the learner in learn()", allowed=(True,)),
}
ON_POLICY_COMMON = {
    "n_steps": Sb3Argument("{algo}.num_steps", field("{algo}.num_steps"), note="per env, as SB3"),
    "gamma": Sb3Argument("{algo}.gamma", field("{algo}.gamma")),
    "gae_lambda": Sb3Argument("{algo}.gae_lambda", field("{algo}.gae_lambda")),
    "ent_coef": Sb3Argument("{algo}.ent_coef", field("{algo}.ent_coef")),
    "vf_coef": Sb3Argument("{algo}.vf_coef", field("{algo}.vf_coef")),
    "max_grad_norm": Sb3Argument("{algo}.max_grad_norm", field("{algo}.max_grad_norm")),
    "normalize_advantage": Sb3Argument("{algo}.norm_adv", field("{algo}.norm_adv")),
    "use_sde": Sb3Argument(SDE, allowed=(False,)),
    "sde_sample_freq": Sb3Argument(SDE, allowed=(-1,)),
    "rollout_buffer_class": Sb3Argument(
        "pgrad's rollout is fixed (pgrad.rollout); Dict observations: policy 'MultiInputPolicy'", allowed=(None,)
    ),
    "rollout_buffer_kwargs": Sb3Argument("pgrad's rollout takes no options (pgrad.rollout)", allowed=(None, {})),
}
LEARNING_RATE = Sb3Argument(
    "{algo}.optimizer.learning_rate, {algo}.optimizer.anneal_lr",
    _learning_rate,
    note="a number is constant (anneal_lr false); a schedule linear to 0 sets anneal_lr; other schedules refused",
)
OFF_POLICY_COMMON = {
    "learning_rate": LEARNING_RATE,
    "buffer_size": Sb3Argument("{algo}.loop.buffer_size", field("{algo}.loop.buffer_size")),
    "learning_starts": Sb3Argument("{algo}.loop.learning_starts", field("{algo}.loop.learning_starts")),
    "batch_size": Sb3Argument("{algo}.loop.batch_size", field("{algo}.loop.batch_size")),
    "tau": Sb3Argument("{algo}.tau", field("{algo}.tau")),
    "gamma": Sb3Argument("{algo}.gamma", field("{algo}.gamma")),
    "train_freq": Sb3Argument(
        "{algo}.loop.train_freq", _train_freq, note="an int or (n, 'step'); (n, 'episode') is refused"
    ),
    "gradient_steps": Sb3Argument(
        "{algo}.loop.gradient_steps",
        field("{algo}.loop.gradient_steps"),
        note="-1 as SB3's; pgrad's own default is -1",
    ),
    "replay_buffer_class": Sb3Argument(
        "pgrad's replay buffer is fixed (pgrad.replay; saved in every checkpoint); HER is not offered",
        allowed=(None,),
    ),
    "replay_buffer_kwargs": Sb3Argument("pgrad's replay buffer takes no options (pgrad.replay)", allowed=(None, {})),
    "optimize_memory_usage": Sb3Argument(
        "pgrad stores next observations beside observations ({algo}.loop.buffer_size bounds the memory)",
        allowed=(False,),
    ),
    "n_steps": Sb3Argument("pgrad's replay learners use one-step TD targets", allowed=(1,)),
}
NOISE = Sb3Argument(
    "{algo}.exploration_noise, {algo}.exploration_std",
    _action_noise,
    note="NormalActionNoise -> gaussian, OrnsteinUhlenbeckActionNoise -> ornstein_uhlenbeck (zero mean, one sigma); "
    "None -> none; not given: pgrad's default (gaussian 0.1)",
)

SB3_ARGUMENTS: dict[str, dict[str, Sb3Argument]] = {
    "ppo": {
        **CONSTRUCTOR,
        **ON_POLICY_COMMON,
        "learning_rate": LEARNING_RATE,
        "batch_size": Sb3Argument("ppo.minibatch_size", field("ppo.minibatch_size"), note="the minibatch, as SB3"),
        "n_epochs": Sb3Argument("ppo.num_epochs", field("ppo.num_epochs")),
        "clip_range": Sb3Argument(
            "ppo.clip_eps, ppo.anneal_clip", _clip_range, note="a schedule linear to 0 sets anneal_clip"
        ),
        "clip_range_vf": Sb3Argument("ppo.clip_vf", _clip_range_vf, note="None or a constant"),
        "target_kl": Sb3Argument("ppo.target_kl", field("ppo.target_kl")),
        "policy_kwargs": Sb3Argument("ppo.network, ppo.optimizer (POLICY_KWARGS below)", _policy_kwargs),
    },
    "a2c": {
        **CONSTRUCTOR,
        **ON_POLICY_COMMON,
        "learning_rate": LEARNING_RATE,
        "rms_prop_eps": Sb3Argument("a2c.optimizer.eps", field("{algo}.optimizer.eps")),
        "use_rms_prop": Sb3Argument("a2c.optimizer.kind", _use_rms_prop, note="True: rmsprop, False: adam"),
        "policy_kwargs": Sb3Argument("a2c.network, a2c.optimizer (POLICY_KWARGS below)", _policy_kwargs),
    },
    "sac": {
        **CONSTRUCTOR,
        **OFF_POLICY_COMMON,
        "action_noise": Sb3Argument("SAC explores by sampling its policy: no action noise", allowed=(None,)),
        "ent_coef": Sb3Argument(
            "sac.alpha, sac.alpha_init", _sac_ent_coef, note="'auto', 'auto_0.1' (learned from 0.1) or a number"
        ),
        "target_update_interval": Sb3Argument("sac.target_update_interval", field("sac.target_update_interval")),
        "target_entropy": Sb3Argument("sac.target_entropy", field("sac.target_entropy")),
        "use_sde": Sb3Argument(SDE, allowed=(False,)),
        "sde_sample_freq": Sb3Argument(SDE, allowed=(-1,)),
        "use_sde_at_warmup": Sb3Argument(SDE, allowed=(False,)),
        "policy_kwargs": Sb3Argument("sac.network, sac.optimizer (POLICY_KWARGS below)", _policy_kwargs),
    },
    "td3": {
        **CONSTRUCTOR,
        **OFF_POLICY_COMMON,
        "action_noise": NOISE,
        "policy_delay": Sb3Argument("td3.policy_delay", field("td3.policy_delay")),
        "target_policy_noise": Sb3Argument("td3.target_policy_noise", field("td3.target_policy_noise")),
        "target_noise_clip": Sb3Argument("td3.target_noise_clip", field("td3.target_noise_clip")),
        "policy_kwargs": Sb3Argument("td3.network, td3.optimizer (POLICY_KWARGS below)", _policy_kwargs),
    },
    "ddpg": {
        **CONSTRUCTOR,
        **OFF_POLICY_COMMON,
        "action_noise": Sb3Argument(
            "ddpg.exploration_noise, ddpg.exploration_std, ddpg.ou_theta", _action_noise, note=NOISE.note
        ),
        "policy_kwargs": Sb3Argument("ddpg.network, ddpg.optimizer (POLICY_KWARGS below)", _policy_kwargs),
    },
}
# SB3's A2C and PPO share every argument of OnPolicyAlgorithm but batch_size/n_epochs/clip_*/target_kl (PPO) and
# the RMSprop pair (A2C); the off-policy three share OffPolicyAlgorithm's. stats_window_size is not DDPG's.
del SB3_ARGUMENTS["ddpg"]["stats_window_size"]

FEATURES = {
    "features_extractor_class": Sb3Argument(
        "{algo}.network.torso ('module:Class')",
        _features_extractor,
        note="an nn.Module class, by its entry point; FlattenExtractor (SB3's default) changes nothing",
    ),
    "features_extractor_kwargs": Sb3Argument("{algo}.network.torso_kwargs", _features_extractor_kwargs),
    "normalize_images": Sb3Argument("pgrad's CNN always divides uint8 images by 255", allowed=(True,)),
    "optimizer_class": Sb3Argument("{algo}.optimizer.kind", _optimizer_class, note="torch.optim.Adam or RMSprop"),
    "optimizer_kwargs": Sb3Argument(
        "{algo}.optimizer.eps, {algo}.optimizer.rms_alpha", _optimizer_kwargs, note="eps, alpha; weight_decay=0"
    ),
    "activation_fn": Sb3Argument(
        "{algo}.network.activation", _activation, note="a torch.nn class by name: nn.ReLU -> relu, nn.ELU -> ELU"
    ),
}
ON_POLICY_KWARGS = {
    **FEATURES,
    "share_features_extractor": Sb3Argument(
        "no effect on an MLP (SB3's extractor for vectors has no weights); {algo}.network.shared_network shares "
        "the hidden layers too",
        allowed=(True, False),
    ),
    "net_arch": Sb3Argument(
        "{algo}.network.hidden_sizes", _net_arch(("pi", "vf")), note="a list, or dict(pi=, vf=) with pi == vf"
    ),
    "log_std_init": Sb3Argument("{algo}.network.log_std_init", field("{algo}.network.log_std_init")),
    "ortho_init": Sb3Argument(
        "pgrad always initialises orthogonally (gains sqrt(2), 0.01 policy, 1 value)", allowed=(True,)
    ),
    "use_sde": Sb3Argument(SDE, allowed=(False,)),
    "full_std": Sb3Argument(SDE, allowed=(True,)),
    "use_expln": Sb3Argument(SDE, allowed=(False,)),
    "squash_output": Sb3Argument(
        "Box actions are clipped to the bounds (env.rescale_actions); SB3 squashes only with gSDE", allowed=(False,)
    ),
}
Q_NETWORK = {
    **FEATURES,
    "share_features_extractor": Sb3Argument(
        "no effect: pgrad's actor and critics are MLPs on the flat observation (SB3's extractor has no weights)",
        allowed=(True, False),
    ),
    "net_arch": Sb3Argument(
        "{algo}.network.hidden_sizes", _net_arch(("pi", "qf")), note="a list, or dict(pi=, qf=) with pi == qf"
    ),
}
POLICY_KWARGS: dict[str, dict[str, Sb3Argument]] = {
    "ppo": ON_POLICY_KWARGS,
    "a2c": ON_POLICY_KWARGS,
    "sac": {
        **Q_NETWORK,
        "n_critics": Sb3Argument("pgrad's SAC has twin critics", allowed=(2,)),
        "use_sde": Sb3Argument(SDE, allowed=(False,)),
        "log_std_init": Sb3Argument(SDE + " (SAC's log_std_init acts only with gSDE)", allowed=(-3,)),
        "use_expln": Sb3Argument(SDE, allowed=(False,)),
        "clip_mean": Sb3Argument(SDE + " (SAC's clip_mean acts only with gSDE)", allowed=(2,)),
    },
    "td3": {**Q_NETWORK, "n_critics": Sb3Argument("pgrad's TD3 has twin critics", allowed=(2,))},
    "ddpg": {**Q_NETWORK, "n_critics": Sb3Argument("pgrad's DDPG has one critic", allowed=(1,))},
}


# ---- the constructor's use of the tables -----------------------------------------------------------------------


def split_policy_and_env(positional: tuple[Any, ...], env: Any, policy: Any, cls_name: str) -> tuple[Any, Any]:
    """(policy, env) from SB3's ``PPO("MlpPolicy", env)`` / ``PPO(policy=..., env=...)`` or pgrad's ``PPO(env)``
    (policy None). Too many positional arguments, a missing env or a policy given twice: one line each."""
    if len(positional) > 2:
        raise ConfigError(
            f"{cls_name}(...) takes at most two positional arguments, the policy and the env, as SB3; pass "
            "hyper-parameters by keyword (n_steps=256)"
        )
    given = list(positional)
    if policy is None and (len(given) == 2 or (given and env is not None)):
        policy = given.pop(0)
    elif policy is not None and len(given) == 2:
        raise ConfigError(f"{cls_name}: policy given twice (positionally and as policy=)")
    if given:
        if env is not None:
            raise ConfigError(f"{cls_name}: env given twice (positionally and as env=)")
        env = given[0]
    if env is None:
        raise ConfigError(f"{cls_name}: no env; {cls_name}(env) or {cls_name}('MlpPolicy', env)")
    if policy is None and isinstance(env, str) and env in POLICIES:
        raise ConfigError(f"{cls_name}({env!r}): name the env too: {cls_name}({env!r}, env)")
    if policy is not None and not (isinstance(policy, str) and policy in POLICIES):
        shown = "a policy class" if isinstance(policy, type) else _short(policy)
        raise ConfigError(
            f"policy: {shown} is not offered; pgrad builds its own network: pass "
            f"{', '.join(repr(p) for p in POLICIES)}, and change it through policy_kwargs (net_arch, activation_fn, "
            "features_extractor_class)"
        )
    return policy, env


def _returning(env: Any) -> Callable[[], Any]:
    return lambda: env


def sb3_vec_env(env: Any) -> Any:
    """An SB3 ``DummyVecEnv`` (``make_vec_env``'s) as a Gymnasium ``SyncVectorEnv`` over the same env instances,
    which pgrad trains on; any other SB3 VecEnv (subprocesses, VecNormalize, frame stacks) is one line naming
    pgrad's own settings for it; anything else is returned unchanged."""
    if not hasattr(env, "step_async"):
        return env
    envs = getattr(env, "envs", None)
    if type(env).__name__ == "DummyVecEnv" and isinstance(envs, list):
        import gymnasium as gym

        # SB3's Monitor only counts episodes (pgrad counts its own) and holds state pgrad cannot save without pickle
        inner = [one.env if type(one).__name__ == "Monitor" else one for one in envs]
        vector = gym.vector.SyncVectorEnv([_returning(one) for one in inner])
        # evaluation builds more of the same env from the registered id (the innermost spec: a wrapper's property
        # caches a copy on itself, which pgrad would find in the env's state)
        vector.spec = inner[0].unwrapped.spec
        return vector
    raise ConfigError(
        f"env: SB3's {type(env).__name__} is not taken; pass the env id with pgrad's own settings: "
        "config={'env': {'num_envs': N, 'vectorization': 'async', 'norm_obs': True, 'norm_reward': True}}"
    )


def check_policy(policy: str | None, observation_space: Any) -> None:
    """The policy string against the observation space: a Dict needs ``MultiInputPolicy``, an image (pgrad's
    Nature CNN reads it) ``CnnPolicy``, anything else ``MlpPolicy``; a mismatch is one line naming the right one."""
    if policy is None:
        return
    import gymnasium as gym

    from pgrad.envs.factory import image_layout

    if isinstance(observation_space, gym.spaces.Dict):
        needed = "MultiInputPolicy"
    elif isinstance(observation_space, gym.spaces.Box) and image_layout(observation_space) is not None:
        needed = "CnnPolicy"
    else:
        needed = "MlpPolicy"
    if policy != needed:
        raise ConfigError(f"policy: {policy!r} does not fit the observation space {observation_space}; use {needed!r}")


def sb3_layer(algo: str, arguments: dict[str, Any], cls_name: str) -> dict[str, Any]:
    """SB3's keyword arguments as a nested config layer (``{"ppo": {"num_steps": 256}}``), through
    ``SB3_ARGUMENTS[algo]``; an unknown name, or a value pgrad does not offer, is one ConfigError line."""
    if not arguments:
        return {}
    if algo not in SB3_ARGUMENTS:
        raise ConfigError(
            f"{cls_name}: SB3's keyword arguments ({', '.join(sorted(arguments))}) are mapped for "
            f"{', '.join(a.upper() for a in SB3_ALGOS)}; for {algo} use config= or sets="
        )
    table = SB3_ARGUMENTS[algo]
    layer: dict[str, Any] = {}
    for name, value in arguments.items():
        if name not in table:
            hint = difflib.get_close_matches(name, list(table), n=1)
            close = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(f"{cls_name}: {name!r} is not an argument of SB3's {algo.upper()} nor of pgrad's{close}")
        for path, item in table[name].apply(name, value, algo).items():
            *sections, leaf = path.split(".")
            target = layer
            for section in sections:
                target = target.setdefault(section, {})
            target[leaf] = item
    return layer


@contextmanager
def sb3_names(algo: str, arguments: dict[str, Any]) -> Iterator[None]:
    """A ConfigError about a field that an SB3 argument set names that argument too:
    ``ppo.num_epochs must be in [1, ...]; got 0 (from SB3's n_epochs=0)``."""
    try:
        yield
    except ConfigError as exc:
        message = str(exc)
        for name, value in arguments.items():
            entry = SB3_ARGUMENTS.get(algo, {}).get(name)
            paths = entry.apply(name, value, algo) if entry is not None else {}
            if any(message.startswith(f"{path} ") for path in paths):
                raise ConfigError(f"{message} (from SB3's {name}={_short(value)})") from None
        raise


def sb3_verbose(verbose: Any) -> Any:
    """SB3's ``verbose`` 0, 1 or 2 as pgrad's True/False (1 and 2: the progress bar and event lines); anything else
    is passed on for pgrad's own check."""
    if isinstance(verbose, int) and not isinstance(verbose, bool) and verbose in (0, 1, 2):
        return verbose > 0
    return verbose


# ---- evaluate_policy ------------------------------------------------------------------------------------------


def evaluate_policy(
    model: Any,
    env: Any,
    n_eval_episodes: int = 10,
    deterministic: bool = True,
    render: bool = False,
    callback: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
    reward_threshold: float | None = None,
    return_episode_rewards: bool = False,
    warn: bool = True,
) -> tuple[float, float] | tuple[list[float], list[int]]:
    """SB3's ``evaluate_policy`` with its signature and return shape: ``(mean, std)`` of ``n_eval_episodes``
    episode returns, or ``(returns, lengths)`` with ``return_episode_rewards``. ``model`` is anything with
    SB3's ``predict(obs, state=, episode_start=, deterministic=)`` (a pgrad or an SB3 model).

    ``env``: one ``gymnasium.Env``, whose episodes run one after another (the returns are the rewards this env
    gives, wrappers included), or an SB3 ``VecEnv``, handed to SB3's own function. ``callback(locals, globals)``
    hears every step, as SB3's; ``reward_threshold``: an ``AssertionError`` when the mean is not above it, as
    SB3's. ``warn``: SB3's Monitor warning, for a VecEnv only."""
    import gymnasium as gym

    if hasattr(env, "step_async"):  # an SB3 VecEnv: SB3 is installed, and its function knows VecEnv's ways
        from stable_baselines3.common.evaluation import evaluate_policy as sb3_evaluate_policy

        return sb3_evaluate_policy(  # type: ignore[no-any-return]
            model, env, n_eval_episodes, deterministic, render, callback, reward_threshold, return_episode_rewards, warn
        )
    if not isinstance(env, gym.Env):
        raise ConfigError(f"evaluate_policy: env must be one gymnasium.Env (or an SB3 VecEnv); got {_short(env)}")
    if isinstance(n_eval_episodes, bool) or not isinstance(n_eval_episodes, int) or n_eval_episodes < 1:
        raise ConfigError(f"evaluate_policy: n_eval_episodes must be a positive int; got {n_eval_episodes!r}")
    returns, lengths = [], []
    for episode in range(n_eval_episodes):
        episode_return, length = _episode(model, env, deterministic, render, callback, episode)
        returns.append(episode_return)
        lengths.append(length)
    mean, std = float(np.mean(returns)), float(np.std(returns))
    if reward_threshold is not None:
        assert mean > reward_threshold, f"Mean reward below threshold: {mean:.2f} < {reward_threshold:.2f}"
    if return_episode_rewards:
        return returns, lengths
    return mean, std


def _episode(
    model: Any,
    env: Any,
    deterministic: bool,
    render: bool,
    callback: Callable[[dict[str, Any], dict[str, Any]], None] | None,
    episode: int,
) -> tuple[float, int]:
    """One episode of ``env`` under ``model``: (return, length)."""
    observation, _ = env.reset()
    state, episode_start = None, np.ones((1,), dtype=bool)
    total, length, done = 0.0, 0, False
    while not done:
        action, state = model.predict(
            observation, state=state, episode_start=episode_start, deterministic=deterministic
        )
        observation, reward, terminated, truncated, info = env.step(action)
        total, length = total + float(reward), length + 1
        done = bool(terminated or truncated)
        episode_start = np.array([done])
        if callback is not None:
            callback(
                {"episode": episode, "observation": observation, "reward": reward, "done": done, "info": info},
                {},
            )
        if render:
            env.render()
    return total, length


def tensorboard_run_dir(log_dir: Path, name: str) -> Path:
    """SB3's folder for a new run under ``tensorboard_log``: ``DIR/NAME_<n>``, n one above the highest taken."""
    taken = [int(p.name[len(name) + 1 :]) for p in log_dir.glob(f"{name}_*") if p.name[len(name) + 1 :].isdigit()]
    return log_dir / f"{name}_{max(taken, default=0) + 1}"
