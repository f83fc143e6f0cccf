"""Defaults per kind of env (issue 24, part 1): where no preset exists, PPO takes the defaults for the env's
action and observation spaces; presets, config files and --set still win over them, and ``pgrad train`` and
``pgrad.api`` say which applied."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import yaml

from pgrad.api import PPO
from pgrad.cli import applied_defaults_line, main
from pgrad.envs.toy import BrightQuadrantEnv
from pgrad.presets import KIND_DEFAULTS, PRESETS, generic_defaults_for, has_generic_defaults
from pgrad.runs import resolve_config, space_kinds

VECTOR = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
IMAGE = gym.spaces.Box(0, 255, (84, 84, 3), np.uint8)
BOX = gym.spaces.Box(-2.0, 2.0, (2,), np.float32)
DISCRETE = gym.spaces.Discrete(4)
CONTINUOUS_SOURCE = "generic defaults for continuous-action vector envs: CleanRL ppo_continuous_action.py"


# ---- the pure choice ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("observation", "action", "expected"),
    [
        (VECTOR, BOX, ("continuous", "vector")),
        (VECTOR, DISCRETE, ("discrete", "vector")),
        (IMAGE, DISCRETE, ("discrete", "image")),
        (IMAGE, BOX, ("continuous", "image")),
        (gym.spaces.Box(0, 255, (4, 84, 84), np.uint8), DISCRETE, ("discrete", "image")),  # a CxHxW frame stack
        (gym.spaces.Box(0, 255, (8, 8, 1), np.uint8), DISCRETE, ("discrete", "vector")),  # under 36 px: the MLP's
        (gym.spaces.Box(0.0, 1.0, (84, 84, 3), np.float32), DISCRETE, ("discrete", "vector")),  # not uint8 pixels
        (gym.spaces.Discrete(16), DISCRETE, ("discrete", "vector")),  # FrozenLake: one-hot, a vector
        (VECTOR, gym.spaces.MultiDiscrete([2, 3]), None),
    ],
)
def test_space_kinds_names_the_action_and_observation_kind(observation, action, expected):
    assert space_kinds(observation, action) == expected


def test_continuous_vector_ppo_takes_cleanrl_continuous_recipe():
    chosen = generic_defaults_for("ppo", "continuous", "vector")
    assert chosen is not None and chosen.source.startswith(CONTINUOUS_SOURCE)
    assert chosen.values["env"] == {"num_envs": 1, "norm_obs": True, "norm_reward": True}
    ppo = chosen.values["ppo"]
    assert (ppo["num_steps"], ppo["minibatch_size"], ppo["num_epochs"], ppo["clip_vf"]) == (2048, 64, 10, 0.2)
    assert ppo["optimizer"] == {"learning_rate": 3e-4, "anneal_lr": True}
    assert "run" not in chosen.values  # the run's length stays the user's (100k by default)
    # the MuJoCo presets are the same recipe with 1M steps
    assert PRESETS[("ppo", "Hopper-v5")].values["ppo"] == ppo


def test_discrete_vector_ppo_keeps_the_field_defaults_and_images_share_one_cnn():
    discrete = generic_defaults_for("ppo", "discrete", "vector")
    assert discrete is not None and discrete.values == {}
    assert discrete.source.startswith("generic defaults for discrete-action vector envs: 8 envs x 128 steps")
    for action in ("discrete", "continuous"):
        image = generic_defaults_for("ppo", action, "image")
        assert image is not None and image.source.startswith(f"generic defaults for {action}-action image envs")
        # only the shared CNN: no batch shape that would refuse another env count, no norm_obs (refused for images)
        assert image.values == {"ppo": {"network": {"shared_network": True}}}


@pytest.mark.parametrize("algo", ["a2c", "sac", "td3", "trpo", "reinforce"])
def test_other_algorithms_have_no_kind_defaults(algo):
    assert not has_generic_defaults(algo)
    assert all(
        generic_defaults_for(algo, a, o) is None for a in ("discrete", "continuous") for o in ("vector", "image")
    )


def test_every_kind_entry_builds_into_a_valid_config():
    for (algo, action, observation), preset in KIND_DEFAULTS.items():
        assert generic_defaults_for(algo, action, observation) is not None
        resolve_config(algo, "CartPole-v1", config_layer=preset.values, use_preset=False)


# ---- resolve_config: the layer's place ---------------------------------------------------------------


def test_resolve_config_applies_the_kind_layer_where_no_preset_exists():
    config, source = resolve_config("ppo", "MountainCarContinuous-v0")
    assert source is not None and source.startswith(CONTINUOUS_SOURCE)
    assert (config.env.num_envs, config.env.norm_obs, config.env.norm_reward) == (1, True, True)
    assert (config.algo_config.num_steps, config.algo_config.clip_vf, config.run.total_steps) == (2048, 0.2, 100_000)
    config, source = resolve_config("ppo", "MountainCar-v0")
    assert source is not None and source.startswith("generic defaults for discrete-action vector envs")
    assert (config.env.num_envs, config.env.norm_obs, config.algo_config.num_steps) == (8, False, 128)


def test_set_and_config_file_beat_the_kind_layer(tmp_path):
    sets = ["env.num_envs=4", "ppo.clip_vf=0.3", "env.norm_reward=false"]
    config, source = resolve_config("ppo", "MountainCarContinuous-v0", sets=sets)
    assert (config.env.num_envs, config.algo_config.clip_vf, config.env.norm_reward) == (4, 0.3, False)
    assert config.env.norm_obs and config.algo_config.num_steps == 2048  # the rest of the layer still applies
    assert source is not None and source.startswith(CONTINUOUS_SOURCE)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"env": {"norm_obs": False}, "ppo": {"num_steps": 512}}))
    config, _ = resolve_config("ppo", "MountainCarContinuous-v0", config_file=path)
    assert (config.env.norm_obs, config.algo_config.num_steps, config.env.norm_reward) == (False, 512, True)


def test_presets_still_win_and_no_preset_means_the_field_defaults():
    config, source = resolve_config("ppo", "Pendulum-v1")  # its own preset: 4 envs x 1024, gamma 0.9
    assert source is not None and source.startswith("rl-baselines3-zoo hyperparams/ppo.yml, Pendulum-v1")
    assert (config.env.num_envs, config.algo_config.num_steps, config.algo_config.gamma) == (4, 1024, 0.9)
    assert config.algo_config.clip_vf is None and not config.env.norm_reward  # nothing of the kind layer under it
    config, source = resolve_config("ppo", "Pendulum-v1", use_preset=False)
    assert source is None
    assert (config.env.num_envs, config.env.norm_obs, config.algo_config.num_steps) == (8, False, 128)
    config, source = resolve_config("a2c", "MountainCarContinuous-v0")  # no kind defaults for a2c: no env built
    assert source is None and config.env.num_envs == 8


def test_a_bad_env_id_is_still_one_line_before_anything_is_built():
    from pgrad.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown environment 'MountainCarContinuous-v9'"):
        resolve_config("ppo", "MountainCarContinuous-v9")


# ---- what pgrad train and pgrad.api say --------------------------------------------------------------


def test_applied_defaults_line_names_preset_kind_or_field_defaults():
    line = applied_defaults_line("ppo", "Swimmer-v5", "generic defaults for continuous-action vector envs: X", True)
    assert line == "defaults: generic defaults for continuous-action vector envs: X (no preset for ppo on Swimmer-v5)"
    assert applied_defaults_line("ppo", "CartPole-v1", "rl-zoo", True) == "preset: rl-zoo"
    assert applied_defaults_line("ppo", "CartPole-v1", None, False) == (
        "defaults: pgrad's ppo field defaults (--no-preset; pgrad list ppo shows them)"
    )
    assert applied_defaults_line("a2c", "Swimmer-v5", None, True) == (
        "defaults: pgrad's a2c field defaults (no preset for a2c on Swimmer-v5; pgrad list a2c shows them)"
    )


def test_pgrad_train_prints_the_kind_defaults_it_applied(tmp_path, capsys):
    small = ["--set", "ppo.num_steps=32", "--set", "ppo.minibatch_size=32", "--set", "ppo.num_epochs=1"]
    args = [
        "train",
        "ppo",
        "--env",
        "MountainCarContinuous-v0",
        "--total-steps",
        "32",
        "--run-dir",
        str(tmp_path / "r"),
    ]
    assert main([*args, *small, "--set", "run.progress=false", "--set", "run.tensorboard=false"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == (
        "defaults: "
        + generic_defaults_for("ppo", "continuous", "vector").source  # type: ignore[union-attr]
        + " (no preset for ppo on MountainCarContinuous-v0)"
    )


def test_api_records_the_kind_defaults_for_ids_and_env_objects(tmp_path):
    agent = PPO("MountainCarContinuous-v0", run_dir=tmp_path / "a")
    assert agent.preset_source is not None and agent.preset_source.startswith(CONTINUOUS_SOURCE)
    assert agent.config.env.norm_obs
    # an env instance: its spaces decide; its own count (1) stays
    agent = PPO(gym.make("MountainCar-v0"), run_dir=tmp_path / "b")
    assert agent.preset_source is not None and agent.preset_source.startswith("generic defaults for discrete-action")
    assert agent.config.env.num_envs == 1
    # a factory of image envs: one shared CNN, and --set still wins
    agent = PPO(lambda: BrightQuadrantEnv(), run_dir=tmp_path / "c", sets=["ppo.num_epochs=2"])
    assert agent.preset_source is not None and agent.preset_source.startswith(
        "generic defaults for discrete-action image"
    )
    assert agent.config.algo_config.network.shared_network and agent.config.algo_config.num_epochs == 2
    # an env object whose count does not fit the preset: the preset is dropped, the kind layer applies
    agent = PPO(gym.make("CartPole-v1"), run_dir=tmp_path / "d")
    assert agent.preset_source is not None and agent.preset_source.startswith("generic defaults for discrete-action")
    agent = PPO("MountainCarContinuous-v0", run_dir=tmp_path / "e", use_preset=False)
    assert agent.preset_source is None and not agent.config.env.norm_obs


def test_exploration_std_is_one_in_the_envs_action_units() -> None:
    """A Gaussian in [-1, 1] rescaled to [-h, h] explores with std h in the env's units; SB3's unscaled one with 1.
    The continuous kind layer starts at std 1 in env units (log std -log h), never wider than [-1, 1]."""
    from pgrad.presets import exploration_log_std
    from pgrad.runs import resolve_config

    assert exploration_log_std([3.0]) == pytest.approx(-math.log(3.0), abs=1e-4)
    assert exploration_log_std([2.0, 2.0, 0.5]) == pytest.approx(-2 * math.log(2.0) / 3, abs=1e-4)  # 0.5 -> 1
    assert exploration_log_std([1.0]) == 0.0 and exploration_log_std([math.inf]) == 0.0
    config, source = resolve_config("ppo", "InvertedPendulum-v5")  # Box [-3, 3]
    assert config.algo_config.network.log_std_init == pytest.approx(-math.log(3.0), abs=1e-4)
    assert source is not None and "initial std 1 in the env's action units" in source
    swimmer, _ = resolve_config("ppo", "Swimmer-v5")  # Box [-1, 1]: unchanged
    assert swimmer.algo_config.network.log_std_init == 0.0
    explicit, _ = resolve_config("ppo", "InvertedPendulum-v5", sets=["network.log_std_init=0.5"])
    assert explicit.algo_config.network.log_std_init == 0.5  # --set beats the kind layer
