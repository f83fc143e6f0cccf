"""Resolving a run's configuration from its layers, and reading it back from a run folder."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pgrad.algos.upgrade import upgrade_algo_section
from pgrad.checkpoint import check_run_folder
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
from pgrad.envs.factory import check_env_id, is_entry_point
from pgrad.errors import ConfigError
from pgrad.presets import preset_for
from pgrad.registry import get_algorithm


def sections_for(algo: str) -> dict[str, type]:
    return {
        "env": EnvConfig,
        "run": RunConfig,
        algo: get_algorithm(algo).config_cls,
        "guard": GuardConfig,
        "ray": RayConfig,
    }


def config_from_dict(data: dict[str, Any], algo: str) -> TrainConfig:
    sections = sections_for(algo)
    for key in data:
        if key not in ("algo", RESOLVED_SECTION) and key not in sections:
            # a nested section written at the top (randomize: instead of env: {randomize: ...}): say where it goes
            owners = [name for name, cls in sections.items() if name_in(cls, str(key))]
            hint = f"; '{key}' belongs under '{owners[0]}:'" if len(owners) == 1 else ""
            raise ConfigError(f"unknown section '{key}' (allowed: {', '.join(sections)}){hint}")
    return TrainConfig(
        algo=algo,
        env=build(EnvConfig, data.get("env", {}), "env"),
        run=build(RunConfig, data.get("run", {}), "run"),
        algo_config=build(sections[algo], data.get(algo, {}), algo),
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
) -> tuple[TrainConfig, str | None]:
    """defaults < the algorithm's env defaults < preset < config file < ``config_layer`` (the library's
    nested dict) < --set < flags. Returns the config and the preset's source. ``check_env=False``:
    env.id only labels an env handed over as a Python object (``pgrad.envs.sources``), nothing builds it."""
    spec = get_algorithm(algo)
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
    preset = preset_for(algo, chosen_env) if use_preset else None
    algo_layer = {"env": {"num_envs": spec.num_envs}} if spec.num_envs is not None else {}
    layers = merge(algo_layer, preset.values if preset else {}, file_layer, set_layer, flag_layer)
    config = config_from_dict(layers, algo)
    if check_env:
        check_env_id(config.env.id)
    return config, preset.source if preset else None


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
    if total_steps is not None:
        data["run"] = {**(data.get("run") or {}), "total_steps": total_steps}
    if algo in data:  # saved before the nested network/optimizer sections
        data[algo] = upgrade_algo_section(algo, data[algo])
    config = config_from_dict(data, algo)
    if is_entry_point(config.env.id) and not trust_env_code:
        raise ConfigError(
            f"{path}: env.id '{config.env.id}' is an entry point: loading it imports module "
            f"'{config.env.id.split(':')[0]}' and runs its code; if you trust this run folder, pass --trust-env-code"
        )
    return config


def default_run_dir(config: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe_env = config.env.id.replace(":", "_").replace("/", "_")
    return Path("runs") / f"{config.algo}-{safe_env}-s{config.run.seed}-{stamp}"
