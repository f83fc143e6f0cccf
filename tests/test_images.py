"""Image observations: which spaces get the CNN, how pixels reach it, and a tiny image task learned.

The learning test trains PPO on ``BrightQuadrantEnv`` (36x36 pixels, 8-step episodes: a random
policy returns 2, a perfect one 8) from seed 1; measured: the mean return reached 8.0 at 1,536 steps,
in about 2.5 s. The budget, 3,072 steps, is twice that.
"""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from pgrad.algos.ppo import PPO, PPOConfig
from pgrad.cli import main
from pgrad.envs.factory import SpaceAdapter, image_layout
from pgrad.envs.toy import BrightQuadrantEnv
from pgrad.errors import ConfigError
from pgrad.nets import ActionSpec, ActorCritic, ImageShape, NatureCNN
from pgrad.runners.on_policy import OnPolicyRunner
from pgrad.runs import resolve_config

QUADRANT_ENV = "pgrad.envs.toy:BrightQuadrantEnv"
# Short rollouts, a few epochs, one shared CNN and a short horizon (every step's reward is immediate).
QUADRANT_SETTINGS = [
    "ppo.num_steps=32",
    "ppo.num_epochs=4",
    "ppo.optimizer.learning_rate=0.0005",
    "ppo.network.shared_network=true",
    "ppo.gamma=0.5",
    "run.tensorboard=false",
    "run.progress=false",
    "guard.eval_every=0",
    "run.episode_window=16",
]


def box(shape: tuple[int, ...], dtype: type = np.uint8) -> gym.spaces.Box:
    return gym.spaces.Box(0, 255, shape, dtype)


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((84, 84, 3), ImageShape(3, 84, 84)),  # HxWxC
        ((4, 84, 84), ImageShape(4, 84, 84)),  # CxHxW (an Atari frame stack)
        ((84, 84), ImageShape(1, 84, 84)),  # HxW
        ((36, 40, 1), ImageShape(1, 36, 40)),  # the smallest the Nature CNN takes
        ((12, 12, 1), None),  # too small for the CNN: flattened into the MLP
        ((84, 84, 3, 2), None),  # 4-D: not an image layout pgrad knows
    ],
)
def test_image_layout_finds_the_channel_axis(shape: tuple[int, ...], expected: ImageShape | None) -> None:
    layout = image_layout(box(shape))
    assert (None if layout is None else layout[0]) == expected


def test_float_boxes_are_not_images() -> None:
    assert image_layout(box((84, 84, 3), np.float32)) is None


def test_adapter_flattens_hwc_images_channels_first() -> None:
    adapter = SpaceAdapter(box((36, 38, 3)), gym.spaces.Discrete(2), rescale=True)
    batch = np.random.default_rng(0).integers(0, 256, (2, 36, 38, 3)).astype(np.uint8)
    flat = adapter.observations(batch)
    assert adapter.obs_shape == ImageShape(3, 36, 38) and adapter.obs_dim == 3 * 36 * 38
    assert flat.dtype == np.float32 and flat.shape == (2, 3 * 36 * 38)
    # pixel (row 5, column 7, channel 2) of the second image, at C-major position c*H*W + r*W + col
    assert flat[1, 2 * 36 * 38 + 5 * 38 + 7] == batch[1, 5, 7, 2]
    np.testing.assert_array_equal(flat.reshape(2, 3, 36, 38), batch.transpose(0, 3, 1, 2))


def test_a_dict_observation_with_an_image_key_packs_it_for_the_cnn() -> None:
    """(Dict observations are supported since issue 24: tests/test_dict_obs.py; a key of another kind is not.)"""
    space = gym.spaces.Dict({"image": box((84, 84, 3)), "speed": gym.spaces.Box(-1, 1, (1,))})
    assert SpaceAdapter(space, gym.spaces.Discrete(2), rescale=True).obs_dim == 3 * 84 * 84 + 1
    tupled = gym.spaces.Dict({"pair": gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.Discrete(2)))})
    with pytest.raises(ConfigError, match=r"^env\.id: Dict observation key 'pair' is Tuple"):
        SpaceAdapter(tupled, gym.spaces.Discrete(2), rescale=True)


def test_nature_cnn_shape_and_pixel_scaling() -> None:
    torch.manual_seed(0)
    cnn = NatureCNN(ImageShape(4, 84, 84))
    assert cnn.linear.in_features == 64 * 7 * 7  # 84 -> 20 -> 9 -> 7, as in the Nature paper
    pixels = torch.randint(0, 256, (3, 4 * 84 * 84)).float()
    features = cnn(pixels)
    assert features.shape == (3, 512)
    by_hand = torch.relu(cnn.linear(cnn.convs(pixels.reshape(3, 4, 84, 84) / 255.0)))
    torch.testing.assert_close(features, by_hand)


def test_acting_policy_of_a_cnn_matches_the_learner() -> None:
    torch.manual_seed(0)
    model = ActorCritic(ImageShape(1, 36, 36), ActionSpec("discrete", 4), shared=True)
    policy = model.acting_policy()
    obs = np.random.default_rng(1).integers(0, 256, (16, 36 * 36)).astype(np.float32)
    with torch.no_grad():
        logits = model.policy_head(model.actor_torso(torch.from_numpy(obs))).numpy()
    np.testing.assert_allclose(policy._head(obs), logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(policy.mode(obs), logits.argmax(-1))
    # the acting copy is frozen: a later change to the learner does not reach it
    with torch.no_grad():
        model.actor_torso.linear.bias.add_(1.0)
    np.testing.assert_allclose(policy._head(obs), logits, rtol=1e-5, atol=1e-6)


def test_numpy_backend_is_refused_for_images() -> None:
    config = PPOConfig(gradient_backend="numpy")
    with pytest.raises(ConfigError, match="gradient_backend must be 'auto' or 'autograd' when the observations"):
        PPO(config, ImageShape(1, 36, 36), ActionSpec("discrete", 4))
    assert PPO(PPOConfig(), ImageShape(1, 36, 36), ActionSpec("discrete", 4)).gradient_backend == "autograd"


def test_norm_obs_is_refused_for_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "ppo", "--env", QUADRANT_ENV, "--set", "env.norm_obs=true", "--run-dir", str(tmp_path / "r")])
    assert code == 2
    assert "env.norm_obs must be false for the image observations" in capsys.readouterr().err


def test_ppo_learns_the_bright_quadrant_from_pixels(tmp_path: Path) -> None:
    config, _ = resolve_config("ppo", QUADRANT_ENV, sets=QUADRANT_SETTINGS, seed=1, total_steps=3072)
    runner = OnPolicyRunner(config, tmp_path / "run", console=False)
    assert isinstance(runner.algo.model.actor_torso, NatureCNN)
    runner.train()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    final = rows[-1]["rollout/return_mean"]
    assert final >= 7.5, f"mean return {final} after 3,072 steps (random: 2, perfect: 8)"


def test_bright_quadrant_pays_for_the_lit_quadrant() -> None:
    env = BrightQuadrantEnv()
    obs, _ = env.reset(seed=3)
    row, col = divmod(env.quadrant, 2)
    assert obs[row * 18 + 9, col * 18 + 9, 0] == 255 and obs.sum() == 255 * 18 * 18
    assert env.step(env.quadrant ^ 1)[1] == 0.0  # a wrong quadrant pays nothing (the image redraws)
    assert env.step(env.quadrant)[1] == 1.0


def test_ale_games_get_the_standard_atari_layers_and_a_cnn() -> None:
    pytest.importorskip("ale_py")
    pytest.importorskip("cv2")
    from pgrad.builders import build_algorithm, build_environment

    config, source = resolve_config("ppo", "ALE/Pong-v5", sets=["env.num_envs=2"])
    assert source is not None and source.startswith("CleanRL ppo_atari.py")  # the ALE/* preset
    assert config.algo_config.network.shared_network and config.algo_config.clip_eps == 0.1
    env = build_environment(config, 0.99)
    try:
        space = env.envs.single_observation_space
        assert (space.shape, space.dtype) == ((4, 84, 84), np.uint8)  # 4 stacked 84x84 grayscale frames
        assert isinstance(env.envs, gym.vector.SyncVectorEnv)  # not ALE's own vector env
        assert env.adapter.obs_shape == ImageShape(4, 84, 84) and env.adapter.image_axes is None
        inner = env.envs.envs[0].unwrapped
        assert inner._frameskip == 1 and inner.ale.getFloat("repeat_action_probability") == 0.0  # NoFrameskip-v4
        algo = build_algorithm(config, env.adapter)
        assert isinstance(algo.model.actor_torso, NatureCNN) and algo.model.actor_torso.linear.in_features == 3136
        obs, _ = env.envs.reset(seed=1)
        _, rewards, *_ = env.envs.step(np.zeros(2, np.int64))
        assert set(np.unique(rewards)) <= {-1.0, 0.0, 1.0}  # rewards clipped to their sign
    finally:
        env.envs.close()


def test_off_policy_algorithms_refuse_images_in_one_line() -> None:
    from pgrad.builders import build_learner

    config, _ = resolve_config("sac", "Pendulum-v1")
    adapter = SpaceAdapter(box((36, 36, 3)), gym.spaces.Box(-1.0, 1.0, (1,)), rescale=True)
    with pytest.raises(ConfigError, match="algorithm 'sac' has MLP networks only; the image observations of Pendulum"):
        build_learner(config, adapter)


def test_an_image_run_resumes_bit_exactly(tmp_path: Path) -> None:
    """Stopped at 256 steps and resumed to 512: the CNN's weights and Adam state equal an
    uninterrupted run's (the env's state, the RNGs and the acting copy of the CNN all carry over)."""
    sets = [*QUADRANT_SETTINGS, "env.num_envs=4", "run.checkpoint_every=100000000"]
    config, _ = resolve_config("ppo", QUADRANT_ENV, sets=sets, seed=1, total_steps=512)
    uninterrupted = OnPolicyRunner(config, tmp_path / "a", console=False)
    uninterrupted.train()
    OnPolicyRunner(config, tmp_path / "b", console=False).train(stop_at_step=256)
    resumed = OnPolicyRunner(config, tmp_path / "b", resume=True, console=False)
    resumed.train()
    assert resumed.step == uninterrupted.step == 512
    expected, actual = uninterrupted.algo.model.state_dict(), resumed.algo.model.state_dict()
    assert "actor_torso.convs.0.weight" in expected
    assert all(torch.equal(expected[key], actual[key]) for key in expected)
    before = uninterrupted.algo.optimizers()["optimizer"].state_dict()["state"]
    after = resumed.algo.optimizers()["optimizer"].state_dict()["state"]
    assert all(torch.equal(before[i]["exp_avg_sq"], after[i]["exp_avg_sq"]) for i in before)
