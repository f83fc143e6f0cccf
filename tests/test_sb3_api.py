"""SB3's constructor, learn, predict and model accessors on pgrad (issue 24, part 2): every SB3 argument of PPO, A2C,
SAC, TD3 and DDPG is in pgrad.sb3_compat's table, every mapped one lands in its pgrad field (values written here by
hand), every other one is accepted at SB3's value where pgrad does the same and refused with one line otherwise."""

from __future__ import annotations

import inspect
import subprocess
import sys
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from pgrad import A2C, DDPG, PPO, SAC, TD3, TRPO, Agent, Callback, evaluate_policy
from pgrad.errors import ConfigError
from pgrad.sb3_compat import POLICY_KWARGS, SB3_ALGOS, SB3_ARGUMENTS, check_policy, schedule

ROOT = Path(__file__).resolve().parents[1]
CLASSES = {"ppo": PPO, "a2c": A2C, "sac": SAC, "td3": TD3, "ddpg": DDPG}
QUIET = {"run": {"tensorboard": False, "progress": False}}


def env_for(algo):
    return gym.make("CartPole-v1" if algo in ("ppo", "a2c") else "Pendulum-v1")


def build(algo, tmp_path, **arguments):
    return CLASSES[algo]("MlpPolicy", env_for(algo), run_dir=tmp_path / "run", config=QUIET, **arguments)


def field_value(agent, path):
    """A dotted config path (``ppo.optimizer.eps``, ``run.device``) read from the agent's resolved config."""
    section, *names = path.split(".")
    value = agent.config.algo_config if section == agent.algo else getattr(agent.config, section)
    for name in names:
        value = getattr(value, name)
    return list(value) if isinstance(value, tuple) else value


class NormalActionNoise:
    """Duck-typed like SB3's (pgrad reads its class name and _mu/_sigma; no SB3 import)."""

    def __init__(self, mean, sigma):
        self._mu, self._sigma = np.asarray(mean), np.asarray(sigma)


class OrnsteinUhlenbeckActionNoise(NormalActionNoise):
    """Duck-typed like SB3's."""

    def __init__(self, mean, sigma, theta=0.15, dt=1e-2, initial_noise=None):
        super().__init__(mean, sigma)
        self._theta, self._dt, self.initial_noise = theta, dt, initial_noise


# name -> (value, {field: expected}) per algorithm; "{algo}" is the algorithm's section. Written by hand: a table
# entry that maps to the wrong field, or converts wrongly, fails here.
ON_POLICY = {
    "n_steps": (64, {"{algo}.num_steps": 64}),
    "gamma": (0.9, {"{algo}.gamma": 0.9}),
    "gae_lambda": (0.8, {"{algo}.gae_lambda": 0.8}),
    "ent_coef": (0.01, {"{algo}.ent_coef": 0.01}),
    "vf_coef": (0.3, {"{algo}.vf_coef": 0.3}),
    "max_grad_norm": (0.7, {"{algo}.max_grad_norm": 0.7}),
    "learning_rate": (1e-3, {"{algo}.optimizer.learning_rate": 1e-3, "{algo}.optimizer.anneal_lr": False}),
    "policy_kwargs": ({"net_arch": [16]}, {"{algo}.network.hidden_sizes": [16]}),
}
OFF_POLICY = {
    "learning_rate": (lambda p: 2e-3 * p, {"{algo}.optimizer.learning_rate": 2e-3, "{algo}.optimizer.anneal_lr": True}),
    "buffer_size": (5000, {"{algo}.loop.buffer_size": 5000}),
    "learning_starts": (50, {"{algo}.loop.learning_starts": 50}),
    "batch_size": (64, {"{algo}.loop.batch_size": 64}),
    "tau": (0.01, {"{algo}.tau": 0.01}),
    "gamma": (0.95, {"{algo}.gamma": 0.95}),
    "train_freq": ((2, "step"), {"{algo}.loop.train_freq": 2}),
    "gradient_steps": (3, {"{algo}.loop.gradient_steps": 3}),
    "policy_kwargs": ({"net_arch": {"pi": [32], "qf": [32]}}, {"{algo}.network.hidden_sizes": [32]}),
}
COMMON = {
    "stats_window_size": (7, {"run.episode_window": 7}),
    "device": ("cpu", {"run.device": "cpu"}),
    "tensorboard_log": (None, {}),
}
MAPPED = {
    "ppo": {
        **COMMON,
        **ON_POLICY,
        "normalize_advantage": (False, {"ppo.norm_adv": False}),
        "batch_size": (32, {"ppo.minibatch_size": 32}),
        "n_epochs": (3, {"ppo.num_epochs": 3}),
        "clip_range": (0.1, {"ppo.clip_eps": 0.1, "ppo.anneal_clip": False}),
        "clip_range_vf": (0.2, {"ppo.clip_vf": 0.2}),
        "target_kl": (0.02, {"ppo.target_kl": 0.02}),
    },
    "a2c": {
        **COMMON,
        **ON_POLICY,
        "normalize_advantage": (True, {"a2c.norm_adv": True}),
        "rms_prop_eps": (1e-4, {"a2c.optimizer.eps": 1e-4}),
        "use_rms_prop": (False, {"a2c.optimizer.kind": "adam"}),
    },
    "sac": {
        **COMMON,
        **OFF_POLICY,
        "ent_coef": ("auto_0.5", {"sac.alpha": "auto", "sac.alpha_init": 0.5}),
        "target_update_interval": (2, {"sac.target_update_interval": 2}),
        "target_entropy": (-0.5, {"sac.target_entropy": -0.5}),
    },
    "td3": {
        **COMMON,
        **OFF_POLICY,
        "action_noise": (
            NormalActionNoise([0.0], [0.3]),
            {"td3.exploration_noise": "gaussian", "td3.exploration_std": 0.3},
        ),
        "policy_delay": (3, {"td3.policy_delay": 3}),
        "target_policy_noise": (0.3, {"td3.target_policy_noise": 0.3}),
        "target_noise_clip": (0.4, {"td3.target_noise_clip": 0.4}),
    },
    "ddpg": {
        **{k: v for k, v in COMMON.items() if k != "stats_window_size"},
        **OFF_POLICY,
        "action_noise": (
            OrnsteinUhlenbeckActionNoise([0.0], [0.2], theta=0.3),
            {"ddpg.exploration_noise": "ornstein_uhlenbeck", "ddpg.exploration_std": 0.2, "ddpg.ou_theta": 0.3},
        ),
    },
}
OWN = {"policy", "env", "seed", "verbose", "_init_setup_model"}  # the constructor's own, tested below


def mapped_cases():
    return [(algo, name) for algo, table in SB3_ARGUMENTS.items() for name, entry in table.items() if entry.mapped]


def allowed_cases():
    return [
        (algo, name, value)
        for algo, table in SB3_ARGUMENTS.items()
        for name, entry in table.items()
        if not entry.mapped and name not in OWN
        for value in entry.allowed
    ]


def refused_cases():
    return [
        (algo, name)
        for algo, table in SB3_ARGUMENTS.items()
        for name, entry in table.items()
        if not entry.mapped and name not in OWN
    ]


@pytest.mark.parametrize(("algo", "name"), mapped_cases())
def test_every_mapped_argument_lands_in_its_pgrad_field(tmp_path, algo, name):
    if name in OWN:
        return  # seed: test_seed_device_verbose_and_init_setup_model
    value, expected = MAPPED[algo][name]
    agent = build(algo, tmp_path, **{name: value})
    for path, wanted in expected.items():
        path = path.replace("{algo}", algo)
        assert field_value(agent, path) == wanted, path
    assert set(MAPPED[algo]) == {n for n, e in SB3_ARGUMENTS[algo].items() if e.mapped} - OWN


@pytest.mark.parametrize(("algo", "name", "value"), allowed_cases())
def test_arguments_pgrad_does_as_sb3_are_accepted_at_sb3s_value(tmp_path, algo, name, value):
    build(algo, tmp_path, **{name: value})


@pytest.mark.parametrize(("algo", "name"), refused_cases())
def test_any_other_value_is_one_line_naming_the_pgrad_way(tmp_path, algo, name):
    with pytest.raises(ConfigError) as error:
        build(algo, tmp_path, **{name: "something else"})
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{name}='something else' is not offered by pgrad")
    assert SB3_ARGUMENTS[algo][name].spelling(algo) in message


@pytest.mark.parametrize("algo", SB3_ALGOS)
def test_the_table_covers_every_argument_of_sb3s_constructor_and_policy(algo):
    sb3 = pytest.importorskip("stable_baselines3")
    cls = getattr(sb3, algo.upper())
    assert set(SB3_ARGUMENTS[algo]) == set(inspect.signature(cls.__init__).parameters) - {"self"}
    policy_cls = cls.policy_aliases["MlpPolicy"]
    skipped = {"self", "observation_space", "action_space", "lr_schedule"}
    assert set(POLICY_KWARGS[algo]) == set(inspect.signature(policy_cls.__init__).parameters) - skipped


def test_seed_device_verbose_and_init_setup_model(tmp_path):
    agent = build("ppo", tmp_path, seed=11, verbose=2, device="auto", _init_setup_model=True)
    assert agent.config.run.seed == 11 and agent.verbose is True
    assert agent.config.run.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert build("ppo", tmp_path, verbose=0).verbose is False
    with pytest.raises(ConfigError, match=r"^_init_setup_model=False is not offered by pgrad \(only True\)"):
        build("ppo", tmp_path, _init_setup_model=False)


# ---- converters with hand-computed values ----------------------------------------------------------------------


def test_schedules_constant_and_linear_to_zero_map_others_are_refused():
    assert schedule("learning_rate", 3e-4, "x") == (3e-4, False)
    assert schedule("learning_rate", lambda p: 3e-4, "x") == (3e-4, False)
    assert schedule("learning_rate", lambda p: p * 3e-4, "x") == (3e-4, True)
    with pytest.raises(ConfigError, match=r"^learning_rate: a schedule other than .* pgrad: OPT$"):
        schedule("learning_rate", lambda p: 3e-4 * p**2, "OPT")
    with pytest.raises(ConfigError, match=r"^learning_rate: a schedule other than"):
        schedule("learning_rate", lambda p: 1e-4 + 2e-4 * p, "OPT")  # linear, but not to 0
    with pytest.raises(ConfigError, match=r"^clip_range: calling the schedule .* failed: ZeroDivisionError"):
        schedule("clip_range", lambda p: 1 / 0, "x")
    with pytest.raises(ConfigError, match=r"^learning_rate must be a number or a schedule"):
        schedule("learning_rate", "fast", "x")


def test_sb3s_own_schedules_map(tmp_path):
    utils = pytest.importorskip("stable_baselines3.common.utils")
    agent = build(
        "ppo",
        tmp_path,
        learning_rate=utils.LinearSchedule(1e-3, 0.0, 1.0),
        clip_range=utils.LinearSchedule(0.3, 0.0, 1.0),
    )
    ppo = agent.config.algo_config
    assert (ppo.optimizer.learning_rate, ppo.optimizer.anneal_lr) == (pytest.approx(1e-3), True)
    assert (ppo.clip_eps, ppo.anneal_clip) == (pytest.approx(0.3), True)
    with pytest.raises(ConfigError, match=r"^learning_rate: a schedule other than a constant or a linear one to 0"):
        build("ppo", tmp_path, learning_rate=utils.LinearSchedule(1e-3, 1e-4, 0.5))
    with pytest.raises(ConfigError, match=r"^clip_range_vf: a schedule is not offered; pgrad: ppo.clip_vf"):
        build("ppo", tmp_path, clip_range_vf=lambda p: 0.2 * p)


def test_sac_ent_coef_forms(tmp_path):
    sac = build("sac", tmp_path, ent_coef="auto").config.algo_config
    assert (sac.alpha, sac.alpha_init) == ("auto", 1.0)
    assert build("sac", tmp_path, ent_coef=0.2).config.algo_config.alpha == 0.2
    with pytest.raises(ConfigError, match=r"^ent_coef must be 'auto', 'auto_<float>' or a number; got 'auto_x'$"):
        build("sac", tmp_path, ent_coef="auto_x")


def test_train_freq_in_episodes_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"^train_freq=\(4, 'episode'\): .* pgrad: sac.loop.train_freq"):
        build("sac", tmp_path, train_freq=(4, "episode"))
    sb3 = pytest.importorskip("stable_baselines3.common.type_aliases")
    frequency = sb3.TrainFreq(3, sb3.TrainFrequencyUnit.STEP)
    assert build("td3", tmp_path, train_freq=frequency).config.algo_config.loop.train_freq == 3


def test_action_noise(tmp_path):
    assert build("td3", tmp_path, action_noise=None).config.algo_config.exploration_noise == "none"
    with pytest.raises(ConfigError, match=r"^action_noise: pgrad's exploration noise has mean 0 and one sigma"):
        build("td3", tmp_path, action_noise=NormalActionNoise([0.1], [0.2]))
    with pytest.raises(ConfigError, match=r"^action_noise: td3's Ornstein-Uhlenbeck noise has theta 0.15; got 0.3$"):
        build("td3", tmp_path, action_noise=OrnsteinUhlenbeckActionNoise([0.0], [0.2], theta=0.3))
    with pytest.raises(ConfigError, match=r"^action_noise: pgrad's Ornstein-Uhlenbeck noise has dt=0.01"):
        build("ddpg", tmp_path, action_noise=OrnsteinUhlenbeckActionNoise([0.0], [0.2], dt=0.1))
    with pytest.raises(ConfigError, match=r"^action_noise=.* is not offered by pgrad \(only None\); SAC explores"):
        build("sac", tmp_path, action_noise=NormalActionNoise([0.0], [0.2]))


def test_sb3s_own_noise_objects(tmp_path):
    noise = pytest.importorskip("stable_baselines3.common.noise")
    td3 = build("td3", tmp_path, action_noise=noise.NormalActionNoise(np.zeros(1), 0.25 * np.ones(1))).config
    assert (td3.algo_config.exploration_noise, td3.algo_config.exploration_std) == ("gaussian", 0.25)
    vectorized = noise.VectorizedActionNoise(noise.OrnsteinUhlenbeckActionNoise(np.zeros(1), 0.2 * np.ones(1)), 2)
    ddpg = build("ddpg", tmp_path, action_noise=vectorized).config.algo_config
    assert (ddpg.exploration_noise, ddpg.exploration_std, ddpg.ou_theta) == ("ornstein_uhlenbeck", 0.2, 0.15)


def test_policy_kwargs(tmp_path):
    ppo = build(
        "ppo",
        tmp_path,
        policy_kwargs={
            "net_arch": {"pi": [32, 32], "vf": [32, 32]},
            "activation_fn": nn.ReLU,
            "log_std_init": -0.5,
            "optimizer_class": torch.optim.RMSprop,
            "optimizer_kwargs": {"eps": 1e-7, "alpha": 0.9, "weight_decay": 0},
            "ortho_init": True,
        },
    ).config.algo_config
    assert ppo.network.hidden_sizes == (32, 32) and ppo.network.activation == "relu"
    assert ppo.network.log_std_init == -0.5
    assert (ppo.optimizer.kind, ppo.optimizer.eps, ppo.optimizer.rms_alpha) == ("rmsprop", 1e-7, 0.9)
    assert (
        build("sac", tmp_path, policy_kwargs={"activation_fn": nn.Tanh}).config.algo_config.network.activation == "tanh"
    )
    refusals = [
        (
            {"net_arch": {"pi": [64], "vf": [32]}},
            r"\['net_arch'\]: pgrad's actor and critic have the same layers, ppo.network.hidden_sizes",
        ),
        ({"net_arch": {"pi": [64], "qf": [64]}}, r"\['net_arch'\] as a dict takes the keys pi and vf"),
        ({"optimizer_class": torch.optim.SGD}, r"\['optimizer_class'\]=.* is not offered; pgrad: ppo.optimizer.kind"),
        (
            {"optimizer_kwargs": {"betas": (0.9, 0.99)}},
            r"\['optimizer_kwargs'\]\['betas'\] is not offered; pgrad: ppo.optimizer.eps",
        ),
        ({"ortho_init": False}, r"\['ortho_init'\]=False is not offered by pgrad \(only True\); pgrad always"),
        ({"activation_fn": "relu"}, r"\['activation_fn'\] must be a torch.nn activation class"),
        ({"net_arc": [64]}, r"\['net_arc'\] is not a policy argument of SB3's PPO \(did you mean 'net_arch'\?\)"),
    ]
    for policy_kwargs, message in refusals:
        with pytest.raises(ConfigError, match=r"^policy_kwargs" + message) as error:
            build("ppo", tmp_path, policy_kwargs=policy_kwargs)
        assert "\n" not in str(error.value)


POLICY_MAPPED = {
    "net_arch": ([8, 8], {"{algo}.network.hidden_sizes": [8, 8]}),
    "activation_fn": (nn.Tanh, {"{algo}.network.activation": "tanh"}),
    "optimizer_class": (torch.optim.RMSprop, {"{algo}.optimizer.kind": "rmsprop"}),
    "optimizer_kwargs": ({"eps": 1e-6}, {"{algo}.optimizer.eps": 1e-6}),
    "log_std_init": (-1.0, {"{algo}.network.log_std_init": -1.0}),
}
TORSO_KEYS = ("features_extractor_class", "features_extractor_kwargs")


@pytest.mark.parametrize(
    ("algo", "key"), [(a, k) for a, table in POLICY_KWARGS.items() for k, e in table.items() if e.mapped]
)
def test_every_mapped_policy_kwarg_lands_in_its_field(tmp_path, algo, key):
    if key in TORSO_KEYS:
        return  # test_features_extractor_class_becomes_network_torso (network.torso comes with the nets branch)
    value, expected = POLICY_MAPPED[key]
    agent = build(algo, tmp_path, policy_kwargs={key: value})
    for path, wanted in expected.items():
        assert field_value(agent, path.replace("{algo}", algo)) == wanted


@pytest.mark.parametrize(
    ("algo", "key", "value"),
    [(a, k, v) for a, table in POLICY_KWARGS.items() for k, e in table.items() if not e.mapped for v in e.allowed],
)
def test_policy_kwargs_pgrad_does_as_sb3_are_accepted_and_others_refused(tmp_path, algo, key, value):
    build(algo, tmp_path, policy_kwargs={key: value})
    with pytest.raises(ConfigError) as error:
        build(algo, tmp_path, policy_kwargs={key: "something else"})
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"policy_kwargs[{key!r}]='something else' is not offered")
    assert POLICY_KWARGS[algo][key].spelling(algo) in message


def test_sb3s_default_features_extractor_changes_nothing(tmp_path):
    torch_layers = pytest.importorskip("stable_baselines3.common.torch_layers")
    kwargs = {"features_extractor_class": torch_layers.FlattenExtractor, "features_extractor_kwargs": {}}
    assert build("ppo", tmp_path, policy_kwargs=kwargs).config == build("ppo", tmp_path).config


def test_activation_by_any_torch_name_where_the_network_takes_it(tmp_path):
    assert (
        build("ppo", tmp_path, policy_kwargs={"activation_fn": nn.ELU}).config.algo_config.network.activation == "ELU"
    )


class Torso(nn.Module):
    """A custom features extractor for the torso mapping."""


def test_features_extractor_class_becomes_network_torso(tmp_path):
    network = build(
        "ppo", tmp_path, policy_kwargs={"features_extractor_class": Torso, "features_extractor_kwargs": {"width": 8}}
    ).config.algo_config.network
    assert network.torso == f"{__name__}:Torso" and network.torso_kwargs == {"width": 8}


# ---- the constructor's forms -----------------------------------------------------------------------------------


def test_sb3_and_pgrad_constructor_forms(tmp_path):
    env = gym.make("CartPole-v1")
    for agent in (
        PPO("MlpPolicy", env, config=QUIET),
        PPO(policy="MlpPolicy", env=env, config=QUIET),
        PPO("MlpPolicy", env=env, config=QUIET),
        PPO(env, config=QUIET),
        PPO(env=env, config=QUIET),
        Agent("MlpPolicy", env, algo="a2c", n_steps=7, config=QUIET),
    ):
        assert agent.get_env() is env and agent.env is env
    assert Agent("MlpPolicy", env, algo="a2c", n_steps=7).config.algo_config.num_steps == 7
    assert PPO("MlpPolicy", "CartPole-v1", n_steps=64).get_env() is None  # pgrad builds it inside learn


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda env: PPO("MlpPolicy"), r"PPO\('MlpPolicy'\): name the env too"),
        (lambda env: PPO("MyPolicy", env), r"policy: 'MyPolicy' is not offered; pgrad builds its own network"),
        (lambda env: PPO(nn.Module, env), r"policy: a policy class is not offered"),
        (lambda env: PPO("MlpPolicy", env, 3e-4), r"PPO\(...\) takes at most two positional arguments"),
        (lambda env: PPO("CnnPolicy", env), r"policy: 'CnnPolicy' does not fit .* use 'MlpPolicy'$"),
        (lambda env: PPO("MultiInputPolicy", env), r"policy: 'MultiInputPolicy' does not fit .* use 'MlpPolicy'$"),
        (lambda env: PPO("MlpPolicy", env, n_step=64), r"PPO: 'n_step' is not an argument .*did you mean 'n_steps'"),
        (
            lambda env: PPO("MlpPolicy", env, clip_range=0.1, n_epochs=0),
            r"ppo.num_epochs must be in \[1, .*\]; got 0 \(from SB3's n_epochs=0\)$",
        ),
        (lambda env: TRPO("MlpPolicy", env, n_steps=64), r"SB3's keyword arguments \(n_steps\) are mapped for PPO"),
        (lambda env: PPO("MlpPolicy", env, tensorboard_log="tb", run_dir="r"), r"give tensorboard_log or run_dir"),
        (lambda env: PPO("MlpPolicy", env, env=env), r"PPO: env given twice"),
        (lambda env: PPO(env, verbose=3), r"verbose must be True or False; got 3"),
        (
            lambda env: PPO("MlpPolicy", env, n_steps=96, batch_size=64),
            r"ppo.minibatch_size must divide .* = 96 x 1 = 96; got 64 \(from SB3's batch_size=64\)$",
        ),
        (
            lambda env: PPO("MlpPolicy", env, policy_kwargs={"net_arch": [0]}),
            r"^ppo.network.hidden_sizes must be .* \(from SB3's policy_kwargs=\{'net_arch': \[0\]\}\)$",
        ),
    ],
)
def test_constructor_refusals_are_one_line(call, message):
    with pytest.raises(ConfigError, match=message) as error:
        call(gym.make("CartPole-v1"))
    assert "\n" not in str(error.value)


def test_make_vec_env_and_sb3s_own_loop(tmp_path):
    env_util = pytest.importorskip("stable_baselines3.common.env_util")
    vec_env = env_util.make_vec_env("CartPole-v1", n_envs=2, seed=0)
    model = PPO("MlpPolicy", vec_env, n_steps=32, batch_size=64, n_epochs=1, run_dir=tmp_path / "run", config=QUIET)
    assert model.config.env.num_envs == 2 and model.get_env() is vec_env
    model.learn(total_timesteps=128)
    assert model.num_timesteps == 128
    obs = model.get_env().reset()  # SB3's documented loop, on SB3's VecEnv
    for _ in range(5):
        action, _states = model.predict(obs, deterministic=True)
        obs, rewards, dones, info = vec_env.step(action)
    assert action.shape == (2,)
    vec_normalize = pytest.importorskip("stable_baselines3.common.vec_env").VecNormalize(vec_env)
    with pytest.raises(ConfigError, match=r"^env: SB3's VecNormalize is not taken; pass the env id with pgrad's own"):
        PPO("MlpPolicy", vec_normalize)


def test_policy_strings_against_observation_spaces():
    image = gym.spaces.Box(0, 255, (84, 84, 3), np.uint8)
    check_policy("CnnPolicy", image)
    with pytest.raises(ConfigError, match=r"'MlpPolicy' does not fit .* use 'CnnPolicy'$"):
        check_policy("MlpPolicy", image)
    check_policy("MlpPolicy", gym.spaces.Box(0, 255, (8, 8), np.uint8))  # too small for the CNN: flattened
    dict_space = gym.spaces.Dict({"a": gym.spaces.Box(-1, 1, (2,))})
    check_policy("MultiInputPolicy", dict_space)
    with pytest.raises(ConfigError, match=r"'MlpPolicy' does not fit .* use 'MultiInputPolicy'$"):
        check_policy("MlpPolicy", dict_space)


# ---- learn, predict, parameters, save and load -----------------------------------------------------------------

SMALL = {"n_steps": 64, "batch_size": 64, "n_epochs": 1}


class Counter(Callback):
    """Counts updates."""

    def __init__(self):
        self.updates = 0

    def on_update(self, metrics):
        self.updates += 1


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sb3")
    model = PPO("MlpPolicy", gym.make("CartPole-v1"), seed=1, run_dir=folder / "run", config=QUIET, **SMALL)
    return model.learn(total_timesteps=128), folder


def test_learn_in_sb3s_spelling(tmp_path):
    counter = Counter()
    model = PPO("MlpPolicy", gym.make("CartPole-v1"), tensorboard_log=tmp_path / "tb", **SMALL)
    (tmp_path / "tb" / "first_3").mkdir(parents=True)
    model.learn(total_timesteps=128, callback=counter, log_interval=10, tb_log_name="first", progress_bar=False)
    assert counter.updates == 2 and model.num_timesteps == 128
    assert model.run_dir == tmp_path / "tb" / "first_4"  # SB3's naming: one above the highest taken
    assert any((model.run_dir / "tb").iterdir())  # the TensorBoard events
    model.learn(total_timesteps=64, callback=[Counter()], reset_num_timesteps=True, tb_log_name="other")
    assert model.num_timesteps == 192 and model.run_dir == tmp_path / "tb" / "first_4"  # pgrad continues its run
    for options, message in [
        ({"total_steps": 64, "total_timesteps": 64}, r"give total_steps or total_timesteps"),
        ({"total_timesteps": 0}, r"learn: total_timesteps must be a positive int; got 0"),
        ({"total_timesteps": 64, "callbacks": [Counter()], "callback": Counter()}, r"give callbacks= or callback="),
        ({"total_timesteps": 64, "progress_bar": "yes"}, r"learn: progress_bar must be True or False"),
        ({"total_timesteps": 64, "callback": object()}, r"learn: callbacks: expected a pgrad.callbacks.BaseCallback"),
    ]:
        with pytest.raises(ConfigError, match=message):
            model.learn(**options)


def test_tensorboard_log_numbers_runs_when_they_start(tmp_path):
    first, second = (PPO("MlpPolicy", gym.make("CartPole-v1"), tensorboard_log=tmp_path, **SMALL) for _ in range(2))
    second.learn(total_timesteps=64)
    first.learn(total_timesteps=64)
    assert (second.run_dir, first.run_dir) == (tmp_path / "PPO_1", tmp_path / "PPO_2")


def test_predict_in_sb3s_order(trained):
    model, _ = trained
    observations = np.stack([gym.make("CartPole-v1").reset(seed=s)[0] for s in range(3)])
    actions, state = model.predict(observations, state=None, episode_start=np.ones(3, bool), deterministic=True)
    assert actions.shape == (3,) and state is None
    assert model.predict(observations[0], deterministic=True)[0] == actions[0]
    assert model.predict(observations[0], ("kept",))[1] == ("kept",)  # SB3's feed-forward policies give it back
    with pytest.raises(
        ConfigError, match=r"^predict: the second argument is SB3's recurrent state; pass deterministic=True"
    ):
        model.predict(observations[0], True)


def test_get_and_set_parameters(trained, tmp_path):
    model, _ = trained
    parameters = model.get_parameters()
    assert set(parameters) == {"policy"} and "model.policy_head.weight" in parameters["policy"]
    fresh = PPO.load(model.run_dir)
    observation = np.array([0.01, 0.2, -0.03, -0.3], np.float32)
    zeros = {"policy": {k: torch.zeros_like(v) for k, v in parameters["policy"].items()}}
    fresh.set_parameters(zeros)
    assert fresh.predict(observation)[0] == 0  # all logits 0: argmax is the first action
    fresh.save(tmp_path / "zeroed")
    assert PPO.load(tmp_path / "zeroed").predict(observation)[0] == 0
    fresh.set_parameters(model.run_dir)  # a path: that agent's weights back
    assert fresh.predict(observation)[0] == model.predict(observation)[0]
    with pytest.raises(ConfigError, match=r"^learn: set_parameters changed the acting policy only"):
        fresh.learn(64)
    partial = {"policy": {"model.policy_head.bias": torch.zeros(2)}}
    with pytest.raises(ConfigError, match=r"^set_parameters: the weights do not match this ppo agent \(missing"):
        fresh.set_parameters(partial)
    fresh.set_parameters(partial, exact_match=False)
    with pytest.raises(ConfigError, match=r"\(unknown \['model.nope'\]\)"):
        fresh.set_parameters({"policy": {"model.nope": torch.zeros(1)}}, exact_match=False)
    with pytest.raises(ConfigError, match=r"^this agent has no weights yet"):
        PPO("MlpPolicy", gym.make("CartPole-v1")).get_parameters()


def test_save_and_load_with_sb3s_zip_habit(trained, tmp_path):
    model, _ = trained
    assert model.save(tmp_path / "agent.zip") == tmp_path / "agent"
    observation = np.zeros(4, np.float32)
    for path in (tmp_path / "agent", tmp_path / "agent.zip", str(tmp_path / "agent.zip")):
        loaded = PPO.load(path, env=None, device="cpu", force_reset=True)
        assert loaded.predict(observation)[0] == model.predict(observation)[0] and loaded.env is None
    with zipfile.ZipFile(tmp_path / "sb3.zip", "w") as archive:
        archive.writestr("data", "{}")
    with pytest.raises(ConfigError, match=r"sb3.zip is an SB3 zip \(pickled objects\); pgrad cannot load it"):
        PPO.load(tmp_path / "sb3.zip")
    with pytest.raises(ConfigError, match=r"^load: custom_objects is not offered"):
        PPO.load(tmp_path / "agent", custom_objects={"learning_rate": 0.0})


# ---- evaluate_policy -----------------------------------------------------------------------------------------------


class ThreeSteps(gym.Env):
    """Episodes of three steps; the reward is the action + 1 (so always-1 scores 6 an episode)."""

    observation_space = gym.spaces.Box(-1, 1, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(1, np.float32), float(action) + 1.0, self.t == 3, False, {}


class AlwaysOne:
    """An SB3-shaped predictor."""

    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        return np.ones(np.asarray(observation).shape[:-1], np.int64), state


def test_evaluate_policy_values_and_shapes():
    assert evaluate_policy(AlwaysOne(), ThreeSteps(), n_eval_episodes=4) == (6.0, 0.0)
    assert evaluate_policy(AlwaysOne(), ThreeSteps(), 2, return_episode_rewards=True) == ([6.0, 6.0], [3, 3])
    seen = []
    evaluate_policy(AlwaysOne(), ThreeSteps(), 1, callback=lambda local, _: seen.append(local["reward"]))
    assert seen == [2.0, 2.0, 2.0]
    with pytest.raises(AssertionError, match="Mean reward below threshold: 6.00 < 7.00"):
        evaluate_policy(AlwaysOne(), ThreeSteps(), 1, reward_threshold=7.0)
    with pytest.raises(ConfigError, match=r"^evaluate_policy: n_eval_episodes must be a positive int; got 0$"):
        evaluate_policy(AlwaysOne(), ThreeSteps(), 0)
    with pytest.raises(ConfigError, match=r"^evaluate_policy: env must be one gymnasium.Env"):
        evaluate_policy(AlwaysOne(), gym.vector.SyncVectorEnv([ThreeSteps]))


def test_sb3s_evaluate_policy_drives_a_pgrad_model(trained):
    evaluation = pytest.importorskip("stable_baselines3.common.evaluation")
    vec_env = pytest.importorskip("stable_baselines3.common.vec_env")
    model, _ = trained
    assert evaluation.evaluate_policy(AlwaysOne(), ThreeSteps(), 2, warn=False) == (6.0, 0.0)
    rewards, lengths = evaluation.evaluate_policy(
        model, gym.make("CartPole-v1"), 3, return_episode_rewards=True, warn=False
    )
    assert len(rewards) == 3 and rewards == [float(n) for n in lengths]  # CartPole: reward 1 a step
    two = vec_env.DummyVecEnv([lambda: gym.make("CartPole-v1")] * 2)  # batched observations
    assert len(evaluate_policy(model, two, 4, return_episode_rewards=True, warn=False)[0]) == 4


def test_import_pgrad_and_evaluate_policy_load_no_torch():
    code = "import sys, pgrad; from pgrad import evaluate_policy; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_docs_page_is_generated_from_the_tables():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import hooks
    finally:
        sys.path.remove(str(ROOT / "docs"))
    page = hooks.expand((ROOT / "docs" / "sb3.md").read_text())
    for algo in SB3_ALGOS:
        section = page.split(f"## {algo.upper()}\n", 1)[1].split("\n## ", 1)[0]
        for name in [*SB3_ARGUMENTS[algo], *POLICY_KWARGS[algo]]:
            assert f"| `{name}` |" in section, (algo, name)
    assert "| `n_steps` | `ppo.num_steps` | mapped; per env, as SB3 |" in page
    assert "| `use_sde` | gSDE is not offered" in page and "only `False` (any other: one line)" in page
