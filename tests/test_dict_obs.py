"""Dict observations: packed into one float32 row at the env boundary (key order, images channels first,
Discrete keys one-hot), unpacked by the torso; normalised but for image pixels; trained by PPO, A2C and SAC,
checkpointed, resumed exactly and exported to ONNX with one input per key (equal to ``predict``)."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from net_runs import onnx_matches_predict, resumed_equals_uninterrupted
from pgrad.cli import main
from pgrad.envs.factory import SpaceAdapter
from pgrad.envs.normalize import ObsNormalizer
from pgrad.envs.space_schema import space_from_json
from pgrad.errors import ConfigError
from pgrad.nets import ActionSpec, ActorCritic, DictEncoder, ObsLayout, ObsPart
from pgrad.policy import load_policy, space_to_dict

VECTOR_ENV = "dict_envs:VectorDict"
IMAGE_ENV = "dict_envs:ImageDict"
BOX = gym.spaces.Box
DISCRETE = gym.spaces.Discrete(3)


def hand_space() -> gym.spaces.Dict:
    """Keys in a non-sorted order: b (2x2 floats), a (Discrete(3)), c (one float)."""
    return gym.spaces.Dict(
        OrderedDict(b=BOX(-9.0, 9.0, (2, 2), np.float32), a=DISCRETE, c=BOX(-9.0, 9.0, (1,), np.float32))
    )


def test_a_dict_observation_packs_key_by_key_in_the_spaces_order() -> None:
    adapter = SpaceAdapter(hand_space(), gym.spaces.Discrete(2), rescale=True)
    assert adapter.layout.parts == (
        ObsPart("b", (2, 2), 0, False),
        ObsPart("a", (3,), 4, False),
        ObsPart("c", (1,), 7, False),
    )
    assert adapter.obs_dim == 8 and adapter.obs_shape == 8  # vector keys only: the plain MLP path
    batch = {
        "b": np.array([[[1, 2], [3, 4]], [[5, 6], [7, 8]]], np.float32),
        "a": np.array([2, 0]),
        "c": np.array([[-1.5], [0.25]], np.float32),
    }
    packed = adapter.observations(batch)
    np.testing.assert_array_equal(packed, [[1, 2, 3, 4, 0, 0, 1, -1.5], [5, 6, 7, 8, 1, 0, 0, 0.25]])
    unpacked = adapter.layout.unpack(torch.from_numpy(packed))
    assert isinstance(unpacked, dict) and list(unpacked) == ["b", "a", "c"]
    assert torch.equal(unpacked["b"], torch.from_numpy(batch["b"]))  # round trip
    assert torch.equal(unpacked["a"], torch.tensor([[0.0, 0, 1], [1, 0, 0]]))
    assert torch.equal(unpacked["c"], torch.from_numpy(batch["c"]))


def test_an_image_key_is_packed_channels_first_and_gets_the_cnn() -> None:
    space = gym.spaces.Dict({"image": BOX(0, 255, (36, 36, 3), np.uint8), "v": BOX(-1, 1, (2,), np.float32)})
    adapter = SpaceAdapter(space, gym.spaces.Discrete(2), rescale=True)
    assert isinstance(adapter.obs_shape, ObsLayout) and adapter.obs_shape.has_images
    assert adapter.layout.parts[0] == ObsPart("image", (3, 36, 36), 0, True)
    image = np.zeros((1, 36, 36, 3), np.uint8)
    image[0, 5, 7, 2] = 200  # row 5, column 7, channel 2 -> c*H*W + r*W + col
    packed = adapter.observations({"image": image, "v": np.array([[0.5, -0.5]], np.float32)})
    assert packed.shape == (1, 3 * 36 * 36 + 2) and packed[0, 2 * 36 * 36 + 5 * 36 + 7] == 200.0
    np.testing.assert_array_equal(packed[0, -2:], [0.5, -0.5])
    model = ActorCritic(adapter.obs_shape, ActionSpec("discrete", 2))
    encoder = model.actor_torso[0]
    assert isinstance(encoder, DictEncoder) and encoder.features_dim == 512 + 2
    assert model(torch.from_numpy(packed))[1].shape == (1,)


def test_the_normaliser_skips_image_pixels() -> None:
    space = gym.spaces.Dict({"image": BOX(0, 255, (36, 36, 1), np.uint8), "v": BOX(-9, 9, (2,), np.float32)})
    adapter = SpaceAdapter(space, gym.spaces.Discrete(2), rescale=True)
    mask = adapter.normalized()
    assert mask is not None and mask.sum() == 2 and not mask[: 36 * 36].any()
    normalizer = ObsNormalizer((adapter.obs_dim,), clip=5.0, enabled=True, mask=mask)
    rows = np.zeros((2, adapter.obs_dim), np.float32)
    rows[:, :3] = 255.0  # pixels far above the clip: kept as they are
    rows[:, -2:] = [[1.0, 3.0], [3.0, 5.0]]  # mean (2, 4), variance (1, 1)
    out = normalizer(rows, update=True)
    np.testing.assert_array_equal(out[:, :3], 255.0)
    np.testing.assert_allclose(out[:, -2:], [[-1.0, -1.0], [1.0, 1.0]], atol=1e-3)
    assert SpaceAdapter(hand_space(), gym.spaces.Discrete(2), rescale=True).normalized() is None  # all of it


def test_unsupported_keys_are_one_line() -> None:
    nested = gym.spaces.Dict({"inner": gym.spaces.Dict({"x": BOX(-1, 1, (1,))})})
    with pytest.raises(
        ConfigError, match=r"^env\.id: Dict observation key 'inner' is Dict\(.*\(allowed: Box, Discrete\)$"
    ):
        SpaceAdapter(nested, gym.spaces.Discrete(2), rescale=True)


def test_spaces_json_keeps_a_dict_and_its_key_order() -> None:
    data = json.loads(json.dumps(space_to_dict(hand_space())))
    assert [key for key, _ in data["spaces"]] == ["b", "a", "c"]
    back = space_from_json(data, "spaces.json: observation")
    assert isinstance(back, gym.spaces.Dict) and list(back.spaces) == ["b", "a", "c"] and back == hand_space()
    duplicated = {"type": "Dict", "spaces": [["b", data["spaces"][0][1]], ["b", data["spaces"][1][1]]]}
    with pytest.raises(
        ConfigError, match=r"^spaces\.json: observation\.spaces must be a list of 1 to 64 \[key, space\] pairs"
    ):
        space_from_json(duplicated, "spaces.json: observation")
    nested = {"type": "Dict", "spaces": [["x", data]]}
    with pytest.raises(ConfigError, match=r"must be 'Box', 'Discrete' or \(not nested\) 'Dict'"):
        space_from_json(nested, "spaces.json: observation")


def vector_batch(count: int = 200) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    obs = {"target": rng.uniform(-1, 1, (count, 2)), "position": rng.uniform(-1, 1, (count, 3))}
    obs = {key: value.astype(np.float32) for key, value in obs.items()}
    return obs, obs


def image_batch(count: int = 50) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    obs = {
        "image": rng.integers(0, 256, (count, 36, 36, 3), dtype=np.uint8),
        "speed": rng.uniform(-1, 1, (count, 2)).astype(np.float32),
    }
    return obs, {"image": obs["image"].astype(np.float32), "speed": obs["speed"]}


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_a_vector_dict_env_trains_resumes_exactly_and_exports(algo: str, tmp_path: Path) -> None:
    run = resumed_equals_uninterrupted(algo, VECTOR_ENV, ["env.norm_obs=true"], 128, tmp_path)
    obs, feed = vector_batch()
    actions = onnx_matches_predict(run, obs, feed)
    assert 0 < actions.mean() < 1  # both actions occur
    policy, _, _ = load_policy(run, trust_env_code=True)
    single = {key: value[3] for key, value in obs.items()}
    assert policy.predict(single) == actions[3]  # one observation as a dict, not a batch
    with pytest.raises(
        ConfigError, match=r"^predict: a Dict observation must be a dict with the keys position, target"
    ):
        policy.predict({"target": obs["target"]})
    if algo == "ppo":  # pgrad eval drives the Dict env through the same packing
        assert main(["eval", str(run), "--episodes", "1", "--trust-env-code"]) == 0
        assert main(["export", str(run), "--format", "torchscript", "--trust-env-code"]) == 2  # ONNX only


def test_an_image_and_vector_dict_env_trains_resumes_exactly_and_exports(tmp_path: Path) -> None:
    sets = ["env.norm_obs=true", "ppo.network.hidden_sizes=[16]"]
    run = resumed_equals_uninterrupted("ppo", IMAGE_ENV, sets, 64, tmp_path)
    obs, feed = image_batch()
    actions = onnx_matches_predict(run, obs, feed)
    assert actions.shape == (50, 1) and actions.std() > 0
    manifest = json.loads((run / "export" / "policy.onnx.json").read_text())
    assert manifest["observation_space"]["type"] == "Dict"


@pytest.mark.parametrize("image", [False, True], ids=["vector", "image"])
def test_sac_takes_a_vector_dict_and_an_image_dict(image: bool, tmp_path: Path) -> None:
    """(An image key gets the Dict encoder's CNN in the actor and in the critics' shared extractor.)"""
    if image:
        sets = ["sac.loop.buffer_size=1000", "sac.loop.gradient_steps=1", "sac.loop.learning_starts=16"]
        run = resumed_equals_uninterrupted("sac", IMAGE_ENV, sets, 48, tmp_path)
        obs, feed = image_batch()
    else:
        run = resumed_equals_uninterrupted("sac", "dict_envs:VectorBoxDict", [], 96, tmp_path)
        obs, feed = vector_batch()
    onnx_matches_predict(run, obs, feed)


def test_a_dict_key_named_like_a_node_of_the_graph_is_refused_in_one_line() -> None:
    from pgrad.export import Chain, onnx_model

    pytest.importorskip("onnx")
    chain = Chain(
        obs_shape=(),
        one_hot=0,
        obs_dim=3,
        norm=None,
        layers=[],
        activation="tanh",
        head=(np.ones((3, 2), np.float32), np.zeros(2, np.float32)),
        output="argmax",
        rescale=None,
        bounds=None,
        action_shape=(),
        keys=(("head", (2,), None, 0, 0), ("v", (1,), None, 0, 0)),
    )
    with pytest.raises(ConfigError, match=r"^--format onnx: Dict observation key 'head' is also a name inside"):
        onnx_model(chain)
    onnx_model(Chain(**{**chain.__dict__, "keys": (("position", (2,), None, 0, 0), ("v", (1,), None, 0, 0))}))
