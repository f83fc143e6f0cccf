"""Networks beyond tanh/relu MLPs: any torch.nn activation by name, and a custom torso (``network.torso``,
SB3's BaseFeaturesExtractor contract) that trains, checkpoints, resumes exactly, evaluates and exports; each
refusal one line. The torsos live in tests/dict_envs.py (importable as ``dict_envs``)."""

from __future__ import annotations

import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from dict_envs import Spy, TinyExtractor
from net_runs import onnx_matches_predict, resumed_equals_uninterrupted
from pgrad.algos.ppo import PPOConfig
from pgrad.cli import main
from pgrad.config import ACTIVATIONS, NetworkConfig
from pgrad.envs.factory import SpaceAdapter
from pgrad.errors import ConfigError
from pgrad.nets import ActionSpec, ActorCritic, CustomTorso, activation_layer, torso_entry_point

TORSO = "dict_envs:TinyExtractor"


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_every_listed_activation_is_a_torch_nn_class_that_builds(name: str) -> None:
    layer = activation_layer(name)
    assert isinstance(layer, nn.Module) and type(layer).__name__.lower() == name.lower()
    assert layer(torch.linspace(-2, 2, 5)).shape == (5,)
    assert NetworkConfig(activation=name).activation == name


def test_an_unknown_activation_is_one_line_listing_the_names() -> None:
    with pytest.raises(
        ConfigError, match=r"^network\.activation must be one of 'tanh', 'relu', 'Tanh', .*'GELU'.*; got 'gelu'$"
    ):
        NetworkConfig(activation="gelu")


def _obs(count: int = 64) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).normal(size=(count, 4)).astype(np.float32))


@pytest.mark.parametrize("name", ["tanh", "Tanh", "relu", "ReLU"])
def test_tanh_and_relu_keep_the_numpy_acting_path(name: str) -> None:
    acting = ActorCritic(4, ActionSpec("continuous", 2), (8, 8), name).acting_policy()
    assert acting.torch_torso is None and len(acting.layers) == 2


@pytest.mark.parametrize("kind", ["discrete", "continuous"])
def test_other_activations_act_through_torch_and_equal_the_learner(kind: str) -> None:
    torch.manual_seed(0)
    model = ActorCritic(4, ActionSpec(kind, 3), (8, 8), "GELU")
    acting = model.acting_policy()
    assert acting.torch_torso is not None and acting.layers == []
    with torch.no_grad():
        distribution = model.distribution(_obs())
    expected = distribution.mode()
    np.testing.assert_allclose(acting.mode(_obs().numpy()), expected.numpy(), atol=1e-6)


def test_torso_entry_point_names_a_class_that_imports_back() -> None:
    assert torso_entry_point(TinyExtractor) == TORSO
    assert NetworkConfig(torso=TinyExtractor).torso == TORSO  # a class given to the Python API is recorded by name

    class Local(TinyExtractor):
        pass

    with pytest.raises(
        ConfigError, match=r"^network\.torso: class .*<locals>\.Local of module .* cannot be imported back"
    ):
        torso_entry_point(Local)
    gone = NetworkConfig(torso="__main__:Gone")  # a script's class, loaded where that script is not running
    with pytest.raises(
        ConfigError, match=r"^network\.torso: module '__main__' has no class 'Gone' \(a class of the script"
    ):
        ActorCritic.from_config(layout_of(gym.spaces.Box(-1, 1, (4,))), ActionSpec("discrete", 2), gone)


def layout_of(space: gym.Space) -> object:
    adapter = SpaceAdapter(space, gym.spaces.Discrete(2), rescale=True)
    adapter.use_torso()
    return adapter.obs_shape


def test_the_torso_gets_the_space_and_the_observation_as_shaped_there() -> None:
    space = gym.spaces.Dict(
        {"image": gym.spaces.Box(0, 255, (36, 36, 3), np.uint8), "v": gym.spaces.Box(-1, 1, (2,), np.float32)}
    )
    torso = CustomTorso(layout_of(space), "dict_envs:Spy", {})
    spy = torso.extractor
    assert isinstance(spy, Spy) and spy.space["image"].shape == (3, 36, 36)  # channels first, as SB3's CnnPolicy
    image = np.zeros((1, 36, 36, 3), np.uint8)
    image[0, 5, 7, 2] = 204
    adapter = SpaceAdapter(space, gym.spaces.Discrete(2), rescale=True)
    packed = adapter.observations({"image": image, "v": np.array([[0.25, -0.5]], np.float32)})
    assert torso(torch.from_numpy(packed)).shape == (1, 4)
    assert torch.equal(spy.seen["v"], torch.tensor([[0.25, -0.5]]))
    assert spy.seen["image"].shape == (1, 3, 36, 36) and spy.seen["image"][0, 2, 5, 7] == pytest.approx(0.8)
    assert float(spy.seen["image"].sum()) == pytest.approx(0.8)  # scaled by /255, nothing else set

    box = CustomTorso(layout_of(gym.spaces.Box(-1, 1, (2, 3), np.float32)), "dict_envs:Spy", {"features_dim": 5})
    assert box(torch.arange(12.0).reshape(2, 6)).shape == (2, 5)
    assert torch.equal(box.extractor.seen, torch.arange(12.0).reshape(2, 2, 3))  # the Box's own shape


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("dict_envs:NoFeaturesDim", r"has features_dim None; it must set an integer features_dim >= 1"),
        (
            "dict_envs:WrongWidth",
            r"returned \(2, 7\) for a batch of 2; it must return \(batch, features_dim\) = \(2, 8\)",
        ),
        ("dict_envs:EPISODE", r"'dict_envs:EPISODE' is int, not a torch\.nn\.Module class"),
        ("no_such_module_here:Torso", r"cannot import module 'no_such_module_here'"),
    ],
)
def test_a_broken_torso_is_one_line(entry: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^network\.torso: .*" + message) as caught:
        ActorCritic.from_config(
            layout_of(gym.spaces.Box(-1, 1, (4,))), ActionSpec("discrete", 2), NetworkConfig(torso=entry)
        )
    assert "\n" not in str(caught.value)


def test_torso_fields_are_checked() -> None:
    with pytest.raises(
        ConfigError, match=r"^network\.torso must be null or 'package\.module:Class'; got 'os\.system'$"
    ):
        NetworkConfig(torso="os.system")
    with pytest.raises(ConfigError, match=r"^network\.torso_kwargs: set network\.torso too"):
        NetworkConfig(torso_kwargs={"features_dim": 3})
    assert PPOConfig(network={"torso": TORSO}).gradient_backend == "auto"  # numpy refused: autograd


def test_a_custom_torso_trains_resumes_exactly_evaluates_and_exports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sets = [f"ppo.network.torso={TORSO}", "ppo.network.torso_kwargs={features_dim: 6}", "ppo.network.activation=SiLU"]
    run = resumed_equals_uninterrupted("ppo", "CartPole-v1", sets, 128, tmp_path)
    obs = np.random.default_rng(0).normal(size=(300, 4)).astype(np.float32)
    actions = onnx_matches_predict(run, obs, {"observation": obs})
    assert 0 < actions.mean() < 1
    capsys.readouterr()
    # a received run folder: its torso's module is imported only with --trust-env-code (as an entry-point env)
    for command in (
        ["resume", str(run), "--total-steps", "256"],
        ["eval", str(run), "--episodes", "1"],
        ["export", str(run), "--format", "onnx"],
    ):
        assert main(command) == 2, command
        err = capsys.readouterr().err.strip()
        assert f"network.torso '{TORSO}' is an entry point" in err and "--trust-env-code" in err and "\n" not in err
    assert main(["eval", str(run), "--episodes", "1", "--trust-env-code"]) == 0
    script = tmp_path / "policy.pt"
    assert main(["export", str(run), "--format", "torchscript", "--out", str(script), "--trust-env-code"]) == 0
    with warnings.catch_warnings():  # torch.jit.load is deprecated in torch 2.10+, still what libtorch loads
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(script))
    np.testing.assert_array_equal(module(torch.from_numpy(obs)).numpy(), actions)


@pytest.mark.parametrize(
    ("algo", "env"), [("a2c", "dict_envs:VectorDict"), ("sac", "Pendulum-v1"), ("td3", "dict_envs:VectorBoxDict")]
)
def test_other_families_take_a_custom_torso(algo: str, env: str, tmp_path: Path) -> None:
    sets = [f"{algo}.network.torso={TORSO}", f"{algo}.network.activation=ELU"]
    run = resumed_equals_uninterrupted(algo, env, sets, 96, tmp_path)
    rng = np.random.default_rng(0)
    if env == "Pendulum-v1":
        obs = rng.uniform(-1, 1, (100, 3)).astype(np.float32)
        feed = {"observation": obs}
    else:
        obs = {
            key: rng.uniform(-1, 1, (100, size)).astype(np.float32) for key, size in (("position", 3), ("target", 2))
        }
        feed = obs
    onnx_matches_predict(run, obs, feed)


def test_a_saved_agent_with_a_torso_loads_only_when_trusted(tmp_path: Path) -> None:
    from pgrad.api import PPO

    config = {
        "env": {"num_envs": 2},
        "run": {"tensorboard": False, "progress": False},
        "ppo": {"num_steps": 16, "minibatch_size": 16, "network": {"torso": TinyExtractor}},
    }
    agent = PPO("CartPole-v1", config=config, run_dir=tmp_path / "run", use_preset=False).learn(32)
    saved = agent.save(tmp_path / "agent")
    with pytest.raises(ConfigError, match=rf"network\.torso '{TORSO}' is an entry point: .* pass --trust-env-code"):
        PPO.load(saved)
    obs = _obs().numpy()
    np.testing.assert_array_equal(PPO.load(saved, trust_env_code=True).predict(obs)[0], agent.predict(obs)[0])
