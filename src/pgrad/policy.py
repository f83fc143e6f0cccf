"""A trained policy as it is deployed: the raw observation in, the env's action out.

``Policy`` chains what training put between the env and the network, read from a checkpoint: the
space adapter (flattening, one-hot for Discrete observations), the observation normaliser with its
statistics frozen, the acting network, and the action mapping (a = low + (u + 1)(high - low)/2, then
clipped to the bounds). ``predict`` is this chain in NumPy; ``pgrad.export`` writes the same chain into
ONNX and TorchScript files, and the tests hold the two equal.

Loading never runs code from the checkpoint: tensors come from safetensors, the rest from JSON, and the
spaces from ``spaces.json`` when the checkpoint has one (an agent saved by ``pgrad.api``). A run folder
without it builds one env to read its spaces, which for an entry-point env ('module:Class') imports
that module: refused unless ``trust_env_code``.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from pgrad.builders import algo_gamma, build_environment, build_learner, network_torso
from pgrad.checkpoint import (
    HMAC_FIELD,
    KEY_VARIABLE,
    CheckpointStore,
    TrainState,
    check_arrays_fit,
    check_run_folder,
    integrity_key,
    load_modules,
    read_train_state,
    signature,
    write_json_atomic,
)
from pgrad.config import TrainConfig
from pgrad.envs.factory import SpaceAdapter, is_entry_point
from pgrad.envs.normalize import ObsNormalizer
from pgrad.envs.sources import VectorEnvFactory
from pgrad.envs.space_schema import read_spaces_document, space_from_json
from pgrad.errors import CheckpointError, ConfigError, ObservationError
from pgrad.nets import Actor

SPACES = "spaces.json"  # beside state.json in a saved agent, at the top of a run folder trained by pgrad.api


@dataclass
class Policy:
    """A trained policy that only acts: spaces, observation adapter, frozen normaliser and actor."""

    observation_space: gym.Space[Any]
    action_space: gym.Space[Any]
    adapter: SpaceAdapter
    obs_normalizer: ObsNormalizer
    actor: Actor

    def predict(self, obs: Any, deterministic: bool = True, rng: np.random.Generator | None = None) -> np.ndarray:
        """The env action for one observation (shaped like the observation space) or for a batch of them
        (one more leading axis); stochastic actions (``deterministic=False``) draw from ``rng``."""
        if not isinstance(deterministic, (bool, np.bool_)):  # "no" is truthy: it would act deterministically
            raise ConfigError(f"predict: deterministic must be True or False; got {deterministic!r}")
        features, single = self._features(obs)
        if deterministic:
            actions = self.actor.mode(features)
        else:
            if rng is None:
                raise ConfigError("predict: deterministic=False needs an rng (numpy.random.Generator) to sample with")
            actions = self.actor.sample(features, rng)
        env_actions = self.adapter.env_actions(actions)
        return env_actions[0] if single else env_actions

    @property
    def recurrent(self) -> bool:
        """Whether the actor carries a hidden state (``network.recurrent``: use ``predict_recurrent``)."""
        return bool(getattr(self.actor, "recurrent", False))

    def predict_recurrent(
        self,
        obs: Any,
        state: np.ndarray | None,
        episode_start: Any,
        deterministic: bool = True,
        rng: np.random.Generator | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(env actions, next state) of a recurrent policy, as sb3-contrib's RecurrentPPO: ``state`` [N, state_size]
        (None: zeros, an episode's start), ``episode_start`` [N] true where the observation begins an episode (the
        state is zeroed before acting on it; None: no starts). One observation is a batch of N = 1 for the state."""
        if not isinstance(deterministic, (bool, np.bool_)):
            raise ConfigError(f"predict: deterministic must be True or False; got {deterministic!r}")
        if not deterministic and rng is None:
            raise ConfigError("predict: deterministic=False needs an rng (numpy.random.Generator) to sample with")
        features, single = self._features(obs)
        count = len(features)
        actor: Any = self.actor
        if state is None:
            state = actor.initial_state(count)
        state = np.asarray(state, np.float32)
        if state.shape != (count, actor.state_size):
            raise ConfigError(
                f"predict: state must have shape ({count}, {actor.state_size}) (None at an episode's start); "
                f"got {state.shape}"
            )
        starts = np.zeros(count, bool) if episode_start is None else np.asarray(episode_start, bool).reshape(-1)
        if starts.shape != (count,):
            raise ConfigError(f"predict: episode_start must hold {count} flags; got {np.shape(episode_start)}")
        actions, next_state = actor.step(features, state, starts, None if deterministic else rng)
        env_actions = self.adapter.env_actions(actions)
        return (env_actions[0] if single else env_actions), next_state

    def _features(self, obs: Any) -> tuple[np.ndarray, bool]:
        """(normalised float32 rows [N, obs_dim], whether ``obs`` was one observation)."""
        batch: Any
        if self.adapter.packings is not None:
            batch, single = self._dict_batch(obs)
        else:
            raw = np.asarray(obs)
            single = self._is_single(raw)
            check_finite_observation(raw, single)
            batch = raw[None] if single else raw
        return self.obs_normalizer(self.adapter.observations(batch), update=False), single

    def _dict_batch(self, obs: Any) -> tuple[dict[str, np.ndarray], bool]:
        """A Dict observation (a mapping with the space's keys) or a batch of them (each value with one more
        leading axis) as a batch, and whether it was one observation."""
        space = self.observation_space
        assert isinstance(space, gym.spaces.Dict)
        keys = list(space.spaces)
        if not isinstance(obs, dict) or sorted(map(str, obs)) != sorted(keys):
            got = sorted(map(str, obs)) if isinstance(obs, dict) else type(obs).__name__
            raise ConfigError(f"predict: a Dict observation must be a dict with the keys {', '.join(keys)}; got {got}")
        arrays = {key: np.asarray(obs[key]) for key in keys}
        singles = {key: self._is_single(arrays[key], space.spaces[key], key) for key in keys}
        single = singles[keys[0]]
        sizes = {len(value) for value in arrays.values()} if not single else {1}
        if any(flag != single for flag in singles.values()) or len(sizes) != 1:
            raise ConfigError("predict: the keys of a Dict observation must all be one observation or one batch of N")
        for value in arrays.values():
            check_finite_observation(value, single)
        return ({key: value[None] for key, value in arrays.items()} if single else arrays), single

    def _is_single(self, obs: np.ndarray, space: gym.Space[Any] | None = None, key: str | None = None) -> bool:
        if space is None:
            space = self.observation_space
        shape = space.shape or ()
        if obs.shape == shape:
            return True
        if obs.ndim == len(shape) + 1 and obs.shape[1:] == shape:
            return False
        if key is not None:
            raise ConfigError(
                f"predict: key {key!r} of shape {obs.shape} is neither one observation {shape} "
                f"nor a batch (N, {', '.join(map(str, shape))}) of {space}"
            )
        return self._shape_error(obs)

    def _shape_error(self, obs: np.ndarray) -> bool:
        shape = self.observation_space.shape or ()
        shape = self.observation_space.shape or ()
        raise ConfigError(
            f"predict: observation of shape {obs.shape} is neither one observation {shape} "
            f"nor a batch (N, {', '.join(map(str, shape))}) of {self.observation_space}"
        )


def check_finite_observation(raw: np.ndarray, single: bool) -> None:
    """Refuse an observation with NaN or infinite values: the network would turn it into a NaN action, or
    (through clipping and argmax) into an arbitrary one, and nothing downstream would notice."""
    if raw.dtype.kind not in "fc" or np.isfinite(raw).all():
        return
    where = tuple(int(i) for i in np.argwhere(~np.isfinite(raw))[0])
    value = raw[where]
    if single:
        shown = np.array2string(raw, threshold=12, precision=4)
        raise ObservationError(
            f"predict: the observation {shown} holds {value} at index {where}; actions need finite values"
        )
    raise ObservationError(
        f"predict: observation {where[0]} of the batch holds {value} at index {where[1:]}; actions need finite values"
    )


def build_policy(
    config: TrainConfig,
    state: TrainState,
    source: Path,
    observation_space: gym.Space[Any],
    action_space: gym.Space[Any],
) -> Policy:
    """The deployed chain from a checkpoint's weights and normaliser statistics. The learner built to hold
    the weights draws its initial parameters from a forked torch RNG: loading touches no global state."""
    adapter = SpaceAdapter(observation_space, action_space, config.env.rescale_actions)
    if network_torso(config) is not None:
        adapter.use_torso()
    with torch.random.fork_rng(devices=[]):
        learner = build_learner(replace(config, run=replace(config.run, device="cpu")), adapter)
    load_modules(learner.modules(), state, source)
    obs_normalizer = ObsNormalizer(
        (adapter.obs_dim,), config.env.clip_obs, config.env.norm_obs, mask=adapter.normalized()
    )
    if "obs" in state.normalizers:
        check_arrays_fit(obs_normalizer.stats.state(), state.normalizers["obs"], "normalizers.obs", source)
        obs_normalizer.stats.load(state.normalizers["obs"])
    return Policy(observation_space, action_space, adapter, obs_normalizer, learner.acting_policy())


def checkpoint_path(path: Path, which: str = "latest") -> Path:
    """A saved agent (a folder with state.json) is its own checkpoint; a run folder gives its ``which``."""
    path = Path(path)
    if (path / "state.json").is_file():
        return path
    if (path / "config.yaml").is_file():
        check_run_folder(path)  # links planted in a received folder: one line, nothing read through them
        return CheckpointStore(path, keep=1).readable(which)
    raise ConfigError(f"{path} is neither a pgrad run folder (config.yaml) nor a saved agent (state.json)")


def config_of(state: TrainState) -> TrainConfig:
    """The training config recorded in a checkpoint's state."""
    from pgrad.runs import config_from_dict

    return config_from_dict(dict(state.config), state.algo)


def spaces_of(
    checkpoint: Path,
    config: TrainConfig,
    env_factory: VectorEnvFactory | None = None,
    trust_env_code: bool = False,
) -> tuple[gym.Space[Any], gym.Space[Any]]:
    """The observation and action spaces: from ``spaces.json`` when saved, else from one env built like the
    run's (``env_factory`` for an env handed over as a Python object)."""
    # a saved agent holds spaces.json itself; a run folder trained through pgrad.api holds it at its top
    # (RUN_DIR/checkpoints/step_N -> RUN_DIR/spaces.json)
    saved = checkpoint / SPACES if (checkpoint / SPACES).is_file() else checkpoint.parent.parent / SPACES
    if saved.is_file():
        # bounded and checked against a schema, and under a key its HMAC: the folder may come from anyone
        data = read_spaces_document(saved)
        check_spaces_signature(data, config, saved)
        return space_from_json(data["observation"], f"{saved}: observation"), space_from_json(
            data["action"], f"{saved}: action", allow_dict=False
        )
    if env_factory is None and is_entry_point(config.env.id) and not trust_env_code:
        raise ConfigError(
            f"env.id '{config.env.id}' is an entry point: reading its spaces imports module "
            f"'{config.env.id.split(':')[0]}' and runs its code; if you trust this run, pass trust_env_code "
            "(--trust-env-code), or the env itself (env=...)"
        )
    probe = build_environment(config, algo_gamma(config), num_envs=1, env_factory=env_factory)
    try:
        return probe.envs.single_observation_space, probe.envs.single_action_space
    finally:
        probe.envs.close()


def load_policy(
    path: Path,
    which: str = "latest",
    env_factory: VectorEnvFactory | None = None,
    trust_env_code: bool = False,
    spaces: tuple[gym.Space[Any], gym.Space[Any]] | None = None,
) -> tuple[Policy, TrainConfig, Path]:
    """The policy of a run folder's ``which`` checkpoint or of a saved agent, with its config and checkpoint.
    ``spaces``: (observation, action) when the caller knows them (nothing is built then)."""
    checkpoint = checkpoint_path(path, which)
    state = read_train_state(checkpoint)
    config = config_of(state)
    if network_torso(config) is not None:  # building its network imports the torso's module
        from pgrad.runs import refuse_untrusted_torso

        refuse_untrusted_torso(config, checkpoint, trust_env_code)
    observation_space, action_space = spaces or spaces_of(checkpoint, config, env_factory, trust_env_code)
    return build_policy(config, state, checkpoint, observation_space, action_space), config, checkpoint


def write_spaces(
    folder: Path, observation_space: gym.Space[Any], action_space: gym.Space[Any], config: TrainConfig
) -> None:
    """``folder/spaces.json``: what ``predict`` and ``pgrad export`` need of the env, so they need no env.
    Signed under ``PGRAD_CHECKPOINT_KEY`` (``spaces_signature``) for the run of ``config``."""
    data: dict[str, Any] = {"observation": space_to_dict(observation_space), "action": space_to_dict(action_space)}
    key = integrity_key()
    if key is not None:
        data[HMAC_FIELD] = spaces_signature(key, data, config)
    write_json_atomic(Path(folder) / SPACES, data)


def spaces_signature(key: bytes, data: dict[str, Any], config: TrainConfig) -> str:
    """The HMAC of a ``spaces.json``. The action bounds decide every action ``predict`` and ``export`` give
    (a = low + (u + 1)(high - low)/2), so the key signs them, bound to the run (``run_identity``: its config
    but the step count): spaces.json from another run, even one signed with the same key, does not pass."""
    from pgrad.runs import run_identity

    document = {
        "signs": SPACES,
        "observation": data.get("observation"),
        "action": data.get("action"),
        "run": run_identity(config),
    }
    return signature(key, document)


def check_spaces_signature(data: Any, config: TrainConfig, path: Path) -> None:
    """Under ``PGRAD_CHECKPOINT_KEY``, ``spaces.json`` must carry its HMAC for this run (``spaces_signature``).
    One written without the key, by a pgrad before spaces.json was signed, edited or taken from another run is
    refused: delete it to read the spaces from the env instead (``env=`` for an env that is a Python object)."""
    key = integrity_key()
    if key is None:
        return
    recorded = data.get(HMAC_FIELD) if isinstance(data, dict) else None
    if not isinstance(recorded, str) or not hmac.compare_digest(recorded, spaces_signature(key, data, config)):
        what = "carries no HMAC" if recorded is None else "has an HMAC that does not match this run"
        raise CheckpointError(
            f"{path} {what} under {KEY_VARIABLE} (written without this key or before pgrad signed it, edited, or "
            "from another run); refusing to use it (delete it to read the spaces from the env)"
        )


# ---- spaces as JSON (Box, Discrete and a Dict of them: what the adapter supports) ----------------------------
def space_to_dict(space: gym.Space[Any]) -> dict[str, Any]:
    """A Box, Discrete or Dict space as plain JSON data (``spaces.json``)."""
    if isinstance(space, gym.spaces.Box):
        return {
            "type": "Box",
            "shape": list(space.shape),
            "dtype": str(space.dtype),
            "low": space.low.tolist(),
            "high": space.high.tolist(),
        }
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, gym.spaces.Dict):  # a list of [key, space] pairs: JSON keeps the key order explicit
        return {"type": "Dict", "spaces": [[str(key), space_to_dict(sub)] for key, sub in space.spaces.items()]}
    raise ConfigError(f"space {space} is not supported (allowed: Box, Discrete, Dict)")


def space_from_dict(data: dict[str, Any]) -> gym.Space[Any]:
    """The inverse of ``space_to_dict``, checked against ``spaces.json``'s schema (``pgrad.envs.space_schema``)."""
    return space_from_json(data, SPACES)
