"""``network.recurrent_head_sizes`` and ``hidden_sizes=[]`` with a recurrent core: sb3-contrib's ``MlpLstmPolicy``
shape (the LSTM reads the observation, then one MLP per head), so that a comparison on the zoo's ``ppo_lstm`` values
trains the same network; its refusals; and a trained run with head layers exports equal to ``predict``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pgrad.config import NetworkConfig
from pgrad.errors import ConfigError
from pgrad.nets import ActionSpec
from pgrad.recurrent import RecurrentActorCritic
from pgrad.runs import resolve_config

SB3_SHAPE = NetworkConfig(
    hidden_sizes=(), activation="relu", recurrent="lstm", recurrent_size=64, recurrent_head_sizes=(64,)
)


def test_the_sb3_contrib_shape_by_hand() -> None:
    """Masked CartPole (2 observations, 2 actions): LSTM(2 -> 64) per branch, then Linear(64, 64) + ReLU + head."""
    model = RecurrentActorCritic(2, ActionSpec("discrete", 2), SB3_SHAPE)
    assert isinstance(model.actor_core.cell, nn.LSTMCell) and model.actor_core.cell.input_size == 2
    assert not list(model.actor_torso.parameters())  # no torso layers: the core reads the observation
    policy, value = model.policy_head, model.value_head
    assert isinstance(policy, nn.Sequential) and isinstance(value, nn.Sequential)
    assert [type(m) for m in policy] == [nn.Linear, nn.ReLU, nn.Linear]
    assert (policy[0].in_features, policy[0].out_features, policy[2].out_features) == (64, 64, 2)
    assert (value[0].in_features, value[2].out_features) == (64, 1)
    lstm = 4 * 64 * (2 + 64) + 2 * 4 * 64  # weight_ih, weight_hh, two biases
    heads = (64 * 64 + 64) * 2 + (64 * 2 + 2) + (64 + 1)
    assert sum(p.numel() for p in model.parameters()) == 2 * lstm + heads


def test_same_parameter_count_as_sb3_contrib() -> None:
    """The same number of parameters, tensor by tensor shape, as sb3-contrib's RecurrentPPO with the zoo's
    ``ppo_lstm`` policy_kwargs, on a discrete and on a continuous task."""
    sb3_contrib = pytest.importorskip("sb3_contrib")
    import gymnasium as gym

    for env_id, action in (("CartPole-v1", ActionSpec("discrete", 2)), ("Pendulum-v1", ActionSpec("continuous", 1))):
        env = gym.make(env_id)
        kwargs = {"lstm_hidden_size": 64, "enable_critic_lstm": True, "net_arch": {"pi": [64], "vf": [64]}}
        theirs = sb3_contrib.RecurrentPPO("MlpLstmPolicy", env, policy_kwargs=kwargs, device="cpu").policy
        ours = RecurrentActorCritic(env.observation_space.shape[0], action, SB3_SHAPE)
        shapes = sorted(tuple(p.shape) for p in ours.parameters())
        assert shapes == sorted(tuple(p.shape) for p in theirs.parameters()), env_id
        env.close()


def test_default_heads_keep_their_parameter_names() -> None:
    """Without head layers the heads stay bare linear layers: checkpoints written before the field still load."""
    model = RecurrentActorCritic(3, ActionSpec("discrete", 2), NetworkConfig(hidden_sizes=(8,), recurrent="gru"))
    assert {"policy_head.weight", "policy_head.bias", "value_head.weight"} <= set(model.state_dict())


def test_head_layers_change_the_output_and_take_gradients() -> None:
    model = RecurrentActorCritic(2, ActionSpec("discrete", 2), SB3_SHAPE)
    obs, state = torch.randn(5, 3, 2), torch.zeros(3, model.state_size)
    starts = torch.zeros(5, 3, dtype=torch.bool)
    head, values, _ = model.sequence(obs, state, starts)
    (head.sum() + values.sum()).backward()
    assert model.policy_head[0].weight.grad is not None and model.value_head[0].weight.grad.abs().sum() > 0
    packed_head, packed_values = model.outputs(obs, state, starts)
    torch.testing.assert_close(packed_head, head, rtol=0, atol=1e-6)
    torch.testing.assert_close(packed_values, values, rtol=0, atol=1e-6)


def test_refusals() -> None:
    with pytest.raises(ConfigError, match=r"network.hidden_sizes must be a list of 1 to \d+ integers"):
        NetworkConfig(hidden_sizes=())
    with pytest.raises(
        ConfigError, match=r"network.recurrent_head_sizes must be \[\] unless network.recurrent is set .*; got \(64,\)"
    ):
        NetworkConfig(recurrent_head_sizes=(64,))
    with pytest.raises(ConfigError, match=r"network.recurrent_head_sizes must be a list of 0 to \d+ integers"):
        NetworkConfig(recurrent="lstm", recurrent_head_sizes=(0,))
    with pytest.raises(ConfigError, match=r"ppo.network.recurrent_head_sizes must be \[\] unless"):
        resolve_config("ppo", "CartPole-v1", sets=["ppo.network.recurrent_head_sizes=[32]"])


def test_a_run_with_head_layers_resumes_and_exports(tmp_path) -> None:
    """Exact resume and ONNX equal to ``predict`` for the sb3-contrib-shaped network (the head layers are in
    both the checkpoint and the exported graph)."""
    import onnxruntime

    from pgrad.api import PPO
    from pgrad.config import EnvConfig
    from pgrad.envs import make_vector_env
    from pgrad.export import export

    sets = ["ppo.network.recurrent=lstm", "ppo.network.recurrent_size=8", "ppo.network.hidden_sizes=[]"]
    sets += ["ppo.network.recurrent_head_sizes=[8]", "ppo.network.activation=relu", "ppo.num_steps=16"]
    sets += ["ppo.minibatch_size=16", "ppo.network.sequence_length=8"]
    config = {"run": {"tensorboard": False, "progress": False}, "env": {"mask_velocity": True, "num_envs": 2}}
    agent = PPO("CartPole-v1", config=config, sets=sets, run_dir=tmp_path / "agent", use_preset=False)
    agent.learn(64)
    onnx_file, _ = export(tmp_path / "agent", "onnx")
    session = onnxruntime.InferenceSession(str(onnx_file))
    envs = make_vector_env(EnvConfig(id="CartPole-v1", num_envs=2, mask_velocity=True))
    obs, _ = envs.reset(seed=0)
    state, onnx_state = None, np.zeros((2, agent.policy.actor.state_size), np.float32)
    starts = np.ones(2, bool)
    for _ in range(10):
        action, state = agent.predict(obs, state=state, episode_start=starts)
        inputs = {"observation": obs.astype(np.float32), "state": onnx_state, "episode_start": starts}
        onnx_action, onnx_state = session.run(None, inputs)
        np.testing.assert_array_equal(onnx_action, action)
        np.testing.assert_allclose(onnx_state, state, rtol=0, atol=1e-5)
        obs, _, terminated, truncated, _ = envs.step(action)
        starts = terminated | truncated
    envs.close()
