"""Resolving a run's configuration from its layers, and reading it back from a run folder."""

from __future__ import annotations

import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym

from pgrad.algos.upgrade import upgrade_algo_section, upgrade_saved_section
from pgrad.checkpoint import KEY_VARIABLE, TrainState, check_run_folder, integrity_key
from pgrad.config import (
    RESOLVED_SECTION,
    EnvConfig,
    GuardConfig,
    RayConfig,
    RunConfig,
    TrainConfig,
    build,
    load_yaml,
    merge,
    name_in,
    parse_set,
)
from pgrad.envs.factory import check_env_id, image_layout, is_entry_point, make_vector_env
from pgrad.envs.multiagent import load_parallel_env
from pgrad.errors import CheckpointError, ConfigError, PgradError
from pgrad.presets import Preset, exploration_log_std, generic_defaults_for, has_generic_defaults, preset_for
from pgrad.registry import get_algorithm

SHARED_SECTIONS: dict[str, type] = {"env": EnvConfig, "run": RunConfig, "guard": GuardConfig, "ray": RayConfig}


def sections_for(algo: str) -> dict[str, type]:
    """The sections a config file or ``--set`` may hold for ``algo``, in the order a bare ``--set`` key is
    looked up: every shared one for an environment algorithm; ``run`` and its own (and ``guard`` for lm_ppo)
    for a language-model one."""
    spec = get_algorithm(algo)
    return {name: spec.config_cls if name == algo else SHARED_SECTIONS[name] for name in spec.section_names()}


def config_from_dict(data: dict[str, Any], algo: str) -> TrainConfig:
    """A ``TrainConfig`` from its sections (a saved config.yaml, or the merged layers of ``resolve_config``).

    A language-model run's ``env`` is its task (``env.id`` = the section's ``task``, one copy): a saved one
    must name the same task. Its ``guard`` section may be read back from a saved config (the default levels
    are written with it) even where the user may not set one."""
    spec = get_algorithm(algo)
    sections = sections_for(algo)
    readable = {*sections, "env", "guard"} if spec.language_model else set(sections)
    for key in data:
        if key not in ("algo", RESOLVED_SECTION) and key not in readable:
            # a nested section written at the top (randomize: instead of env: {randomize: ...}): say where it goes
            owners = [name for name, cls in sections.items() if name_in(cls, str(key))]
            hint = f"; '{key}' belongs under '{owners[0]}:'" if len(owners) == 1 else ""
            raise ConfigError(f"unknown section '{key}' (allowed: {', '.join(sections)}){hint}")
    algo_config = build(spec.config_cls, data.get(algo, {}), algo)
    if spec.language_model:
        env = EnvConfig(id=algo_config.task, num_envs=1)
        saved_env = data.get("env") or {}
        if saved_env.get("id", env.id) != env.id:
            raise ConfigError(f"env.id of a language-model run is its task ('{env.id}'); got {saved_env.get('id')!r}")
    else:
        env = build(EnvConfig, data.get("env", {}), "env")
    return TrainConfig(
        algo=algo,
        env=env,
        run=build(RunConfig, data.get("run", {}), "run"),
        algo_config=algo_config,
        guard=build(GuardConfig, data.get("guard", {}), "guard"),
        ray=build(RayConfig, data.get("ray", {}), "ray"),
    )


def resolve_config(
    algo: str,
    env_id: str | None = None,
    config_file: Path | None = None,
    sets: list[str] | None = None,
    seed: int | None = None,
    total_steps: int | None = None,
    use_preset: bool = True,
    config_layer: dict[str, Any] | None = None,
    check_env: bool = True,
    spaces: tuple[gym.Space[Any], gym.Space[Any]] | None = None,
    use_kind_defaults: bool | None = None,
) -> tuple[TrainConfig, str | None]:
    """defaults < the algorithm's env defaults < the defaults for the env's kind (``generic_defaults_for``,
    only where no preset applies) < preset < config file < ``config_layer`` (the library's nested dict) < --set
    < flags. Returns the config and the source of the preset or kind defaults applied (None: the field defaults
    alone). ``check_env=False``: env.id only labels an env handed over as a Python object
    (``pgrad.envs.sources``), nothing builds it; ``spaces`` (observation, action) are then its spaces, else
    the kind is read from one env built from the env section. ``use_kind_defaults`` (default: ``use_preset``)
    turns the kind layer off: ``--no-preset`` starts from the field defaults alone."""
    spec = get_algorithm(algo)
    if spec.language_model and env_id is not None:
        raise ConfigError(f"algorithm '{algo}' trains a language model on its task ({algo}.task); it takes no --env")
    file_layer = load_yaml(config_file) if config_file is not None else {}
    if "algo" in file_layer and file_layer["algo"] != algo:
        raise ConfigError(f"config file {config_file} is for algorithm '{file_layer['algo']}', not '{algo}'")
    file_layer = {k: v for k, v in file_layer.items() if k != "algo"}
    if algo in file_layer:  # a config file written before the nested network/optimizer sections
        file_layer[algo] = upgrade_algo_section(algo, file_layer[algo])
    if config_layer:
        for section, values in config_layer.items():
            if not isinstance(values, dict):
                raise ConfigError(f"config['{section}'] must be a mapping of key: value; got {values!r}")
        file_layer = merge(file_layer, config_layer)
    set_layer = parse_set(sets or [], sections_for(algo))
    flag_layer: dict[str, dict[str, Any]] = {"env": {}, "run": {}}
    if env_id is not None:
        flag_layer["env"]["id"] = env_id
    if seed is not None:
        flag_layer["run"]["seed"] = seed
    if total_steps is not None:
        flag_layer["run"]["total_steps"] = total_steps
    chosen_env = merge(file_layer, set_layer, flag_layer).get("env", {}).get("id", EnvConfig().id)
    preset = preset_for(algo, chosen_env) if use_preset and not spec.language_model else None
    algo_layer = {section: dict(values) for section, values in spec.defaults.items()}
    kind = None
    if preset is None and (use_preset if use_kind_defaults is None else use_kind_defaults):
        below = merge(algo_layer, file_layer, set_layer, flag_layer).get("env", {})
        kind = kind_defaults(algo, below, spaces if spaces is not None or not check_env else None, check_env)
    layers = merge(
        algo_layer, kind.values if kind else {}, preset.values if preset else {}, file_layer, set_layer, flag_layer
    )
    config = config_from_dict(layers, algo)
    if check_env and not spec.language_model:
        check_env_for(spec.kind, config.env.id)
    applied = preset or kind
    return config, applied.source if applied else None


def check_env_for(kind: str, env_id: str) -> None:
    """An env id that cannot be built is one line before anything else: a team env (multi-agent algorithms) by
    PettingZoo's trust rule (``pgrad.envs.multiagent``), any other by Gymnasium's."""
    if kind == "multi_agent":
        load_parallel_env(env_id)
    else:
        check_env_id(env_id)


def space_kinds(observation_space: gym.Space[Any], action_space: gym.Space[Any]) -> tuple[str, str] | None:
    """(action kind, observation kind) of an env's spaces, as ``generic_defaults_for`` names them: 'discrete'
    or 'continuous' (a Box), and 'image' (an image the CNN reads, ``image_layout``) or 'vector' (anything
    flattened into the MLP). None for actions of another space."""
    if isinstance(action_space, gym.spaces.Discrete):
        action = "discrete"
    elif isinstance(action_space, gym.spaces.Box):
        action = "continuous"
    else:
        return None
    image = isinstance(observation_space, gym.spaces.Box) and image_layout(observation_space) is not None
    return action, "image" if image else "vector"


def probe_spaces(env: EnvConfig) -> tuple[gym.Space[Any], gym.Space[Any]]:
    """The (observation, action) spaces of one env built from ``env`` (synchronously, whatever its
    vectorisation), closed again."""
    from pgrad.builders import one_line

    try:
        envs = make_vector_env(env, num_envs=1, vectorization="sync")
    except PgradError:
        raise
    except Exception as exc:  # the env's own constructor, as pgrad.builders.build_environment reports it
        kwargs = f" with env.kwargs {dict(env.kwargs)}" if env.kwargs else ""  # builders.env_label's wording
        raise ConfigError(f"env {env.id}{kwargs} could not be created: {one_line(exc)}") from None
    try:
        return envs.single_observation_space, envs.single_action_space
    finally:
        envs.close()


def kind_defaults(
    algo: str,
    env_layer: dict[str, Any],
    spaces: tuple[gym.Space[Any], gym.Space[Any]] | None,
    build_env: bool,
) -> Preset | None:
    """The defaults for the kind of env ``env_layer`` (the merged env section) names, read from ``spaces`` or,
    with ``build_env``, from one env built for the purpose; None where the algorithm has none or the kind
    cannot be read (an env object without spaces given)."""
    if not has_generic_defaults(algo):
        return None
    if spaces is None:
        if not build_env:
            return None
        env = build(EnvConfig, env_layer, "env")
        check_env_id(env.id)  # an unknown id: the one-line error, before anything is built
        spaces = probe_spaces(env)
    kinds = space_kinds(*spaces)
    chosen = generic_defaults_for(algo, *kinds) if kinds is not None else None
    action_space = spaces[1]
    if chosen is None or not isinstance(action_space, gym.spaces.Box):
        return chosen
    log_std = exploration_log_std([float(h) for h in ((action_space.high - action_space.low) / 2).ravel()])
    if log_std == 0.0:
        return chosen
    values = merge(chosen.values, {algo: {"network": {"log_std_init": log_std}}})
    return Preset(f"{chosen.source}; initial std 1 in the env's action units (log_std_init {log_std:g})", values)


def load_run_config(run_dir: Path, total_steps: int | None = None, trust_env_code: bool = False) -> TrainConfig:
    """The config a run folder was started with (optionally with a new total step count).

    A run folder may come from someone else: an entry-point env ('module:attr') in its config.yaml
    would import that module and call what it names, so it is refused unless ``trust_env_code``
    (``--trust-env-code``) says the user chose to run it.
    """
    if not Path(run_dir).is_dir():
        raise ConfigError(f"{run_dir} is not a pgrad run folder (not a directory)")
    check_run_folder(Path(run_dir))  # resume writes into these: none may be a symlink out
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a pgrad run folder (no config.yaml)")
    data = load_yaml(path)
    algo = data.get("algo")
    if not isinstance(algo, str):
        raise ConfigError(f"{path} does not name its algorithm")
    get_algorithm(algo)  # an unknown name: one line listing the allowed ones
    if total_steps is not None:
        data["run"] = {**(data.get("run") or {}), "total_steps": total_steps}
    if algo in data:  # saved before the nested network/optimizer sections or a section's version
        data[algo] = upgrade_saved_section(algo, data[algo])
    config = config_from_dict(data, algo)
    refuse_untrusted_env_code(config, path, trust_env_code)
    return config


def refuse_untrusted_env_code(config: TrainConfig, source: Path, trust_env_code: bool) -> None:
    """Refuse a config read from a run folder (``source``: its config.yaml or checkpoint) whose env is an
    entry point ('module:attr'), or whose network has a custom torso ('module:Class'), unless ``trust_env_code``
    (``--trust-env-code``): building that env or network imports the module, which runs its code."""
    if is_entry_point(config.env.id) and not trust_env_code:
        raise ConfigError(
            f"{source}: env.id '{config.env.id}' is an entry point: loading it imports module "
            f"'{config.env.id.split(':')[0]}' and runs its code; if you trust this run folder, pass --trust-env-code "
            "(trust_env_code=True in pgrad.api)"
        )
    refuse_untrusted_torso(config, source, trust_env_code)


def refuse_untrusted_torso(config: TrainConfig, source: Path, trust_env_code: bool) -> None:
    """Refuse a config read from a run folder whose network has a custom torso ('module:Class', a feature
    extractor) unless ``trust_env_code``: building the network imports that module, as an entry-point env."""
    torso = getattr(getattr(config.algo_config, "network", None), "torso", None)
    if isinstance(torso, str) and not trust_env_code:
        raise ConfigError(
            f"{source}: network.torso '{torso}' is an entry point: building the network imports module "
            f"'{torso.split(':')[0]}' and runs its code; if you trust this run folder, pass --trust-env-code "
            "(trust_env_code=True in pgrad.api)"
        )


def run_identity(config: TrainConfig) -> dict[str, Any]:
    """What makes a run this run: its whole config as JSON gives it back, except ``run.total_steps``
    (``pgrad resume --total-steps`` extends a run without making it another). ``spaces.json`` is signed
    bound to it, and a checkpoint's recorded config is compared with config.yaml through it."""
    identity: dict[str, Any] = json.loads(json.dumps(config.to_dict()))
    identity["run"].pop("total_steps", None)
    return identity


def recorded_config(state: TrainState) -> TrainConfig:
    """The config recorded in a checkpoint (signed with it under ``PGRAD_CHECKPOINT_KEY``), read as
    config.yaml is read (older sections upgraded)."""
    data = dict(state.config)
    if state.algo in data:
        data[state.algo] = upgrade_saved_section(state.algo, data[state.algo])
    return config_from_dict(data, state.algo)


def first_difference(ours: Any, theirs: Any, where: str = "") -> str | None:
    """The first dotted field where two JSON values differ, with both values, or None."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        for key in sorted(set(ours) | set(theirs), key=str):
            found = first_difference(ours.get(key), theirs.get(key), f"{where}.{key}" if where else str(key))
            if found is not None:
                return found
        return None
    return None if ours == theirs else f"{where or 'config'}: {ours!r} here, {theirs!r} in the checkpoint"


def check_config_recorded(config: TrainConfig, state: TrainState, checkpoint: Path, source: Path) -> str | None:
    """``config`` (read from ``source``, a run folder's config.yaml) is the config recorded in ``checkpoint``,
    but for ``run.total_steps``. A config.yaml is not signed and decides everything a resume or an evaluation
    does (learning rate, guard, env): under ``PGRAD_CHECKPOINT_KEY`` one that differs from the signed config is
    refused; without a key config.yaml is used, and the returned line says how it differs (None: it does not).
    The caller prints it once the command is past its own one-line errors (``warn``)."""
    try:
        change = first_difference(run_identity(config), run_identity(recorded_config(state)))
    except ConfigError as exc:  # the recorded config no longer builds (a pgrad too old or too new for it)
        change = f"the recorded config does not build: {exc}"
    if change is None:
        return None
    if integrity_key() is not None:
        raise CheckpointError(
            f"{source} differs from the config signed in checkpoint {checkpoint.name} ({change}); refusing it under "
            f"{KEY_VARIABLE}"
        )
    return f"{source} differs from the config recorded in checkpoint {checkpoint.name} ({change}); using config.yaml"


def warn(message: str | None) -> None:
    """One ``pgrad: warning:`` line on stderr (nothing for None)."""
    if message is not None:
        print(f"pgrad: warning: {message}", file=sys.stderr, flush=True)


def refuse_untrusted_ray(config: TrainConfig, source: Path, trust_ray: bool) -> None:
    """Refuse to train a config read from a run folder (``source``: its config.yaml or checkpoint) on Ray
    unless ``trust_ray`` (``--trust-ray``) says the user chose it.

    A received folder's ``run.backend: ray`` starts a Ray instance on this machine, and its ``ray.address``
    joins a cluster somebody else may run: Ray drivers and workers exchange pickled objects (code, in
    effect), so reaching the network is the user's decision, made on their own command line, never the
    folder's."""
    if config.run.backend != "ray" or trust_ray or get_algorithm(config.algo).language_model:
        return  # (the language-model runners collect nothing on Ray: they ignore run.backend)
    where = (
        f"joins the Ray cluster at ray.address {config.ray.address}"
        if config.ray.address is not None
        else "starts a Ray instance on this machine"
    )
    raise ConfigError(
        f"{source}: run.backend is 'ray': training this run {where}, which exchanges pickled objects (code) "
        "with this process; if you trust this run folder, pass --trust-ray (trust_ray=True in pgrad.api)"
    )


def default_run_dir(config: TrainConfig) -> Path:
    """``runs/ALGO-ENV-sSEED-YYYYmmdd-HHMMSS-ID``: readable, sorted by start time, and unique. ``ID`` is six
    random hex digits from the OS (never from the run's seeded RNG): runs of the same algorithm, env and
    seed started in the same second (a sweep's jobs, a shell loop with ``&``) get different folders
    instead of two processes sharing one, and a name already on disk is never returned."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe_env = config.env.id.replace(":", "_").replace("/", "_")
    while True:
        path = Path("runs") / f"{config.algo}-{safe_env}-s{config.run.seed}-{stamp}-{secrets.token_hex(3)}"
        if not path.exists():
            return path
