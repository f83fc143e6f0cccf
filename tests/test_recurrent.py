"""Recurrent PPO (network.recurrent): chunking and masks by hand, the reset at episode starts, replay of a stored
sequence reproducing the acting log-probabilities, the refusals, and exact resume mid-episode."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from pgrad.algos.ppo import PPO, PPOConfig
from pgrad.config import EnvConfig, NetworkConfig
from pgrad.envs import ObsNormalizer, RewardScaler, SpaceAdapter, make_vector_env
from pgrad.errors import ConfigError
from pgrad.nets import ActionSpec
from pgrad.recurrent import RecurrentActorCritic
from pgrad.rollout import Rollout, RolloutCollector
from pgrad.runners.on_policy import OnPolicyRunner
from pgrad.runs import resolve_config
from pgrad.sequences import SequenceBatch, chunk, replay


def network(kind: str = "lstm", shared: bool = False, length: int = 2) -> NetworkConfig:
    return NetworkConfig(
        hidden_sizes=(8,), recurrent=kind, recurrent_size=4, recurrent_shared=shared, sequence_length=length
    )


def test_chunk_by_hand() -> None:
    # x[t, b] = 10 t + b, T = 4, B = 2, L = 2: row k B + b holds env b's steps 2k, 2k + 1
    x = 10 * np.arange(4)[:, None] + np.arange(2)[None, :]
    np.testing.assert_array_equal(chunk(x, 2), [[0, 10], [1, 11], [20, 30], [21, 31]])
    np.testing.assert_array_equal(chunk(torch.from_numpy(x), 4), [[0, 10, 20, 30], [1, 11, 21, 31]])


def hand_rollout() -> Rollout:
    """T = 4, B = 2. Env 0's episode terminates at t = 1; t = 2 is its autoreset step (invalid); its next episode
    begins with the observation of t = 3 (a start inside the second sequence). Env 1 runs on."""
    steps, envs = 4, 2
    obs = np.arange((steps + 1) * envs * 3, dtype=np.float32).reshape(steps + 1, envs, 3) / 10
    terminated = np.zeros((steps, envs), bool)
    terminated[1, 0] = True
    valid = np.ones((steps, envs), bool)
    valid[2, 0] = False
    starts = np.zeros((steps + 1, envs), bool)
    starts[0] = True
    starts[3, 0] = True
    states = np.arange(steps * envs * 16, dtype=np.float32).reshape(steps, envs, 16) / 100
    return Rollout(
        obs=obs,
        actions=np.array([[0, 1], [1, 1], [0, 0], [1, 0]]),
        rewards=np.ones((steps, envs), np.float32),
        terminated=terminated,
        truncated=np.zeros((steps, envs), bool),
        valid=valid,
        states=states,
        episode_starts=starts,
    )


def test_sequences_and_masks_of_a_hand_made_rollout() -> None:
    rollout = hand_rollout()
    model = RecurrentActorCritic(3, ActionSpec("discrete", 2), network())
    ppo = PPO(PPOConfig(num_steps=4, minibatch_size=4, network=network()), 3, ActionSpec("discrete", 2))
    ppo.model = model
    batch, stats = ppo.prepare(rollout)
    assert isinstance(batch, SequenceBatch) and len(batch) == 4 and batch.length == 2
    # rows: (k=0, env 0), (k=0, env 1), (k=1, env 0), (k=1, env 1)
    np.testing.assert_array_equal(batch.mask.numpy(), [[1, 1], [1, 1], [0, 1], [1, 1]])
    np.testing.assert_array_equal(batch.starts.numpy(), [[1, 0], [1, 0], [0, 1], [0, 0]])
    np.testing.assert_array_equal(batch.actions.numpy(), [[0, 1], [1, 1], [0, 1], [0, 0]])
    np.testing.assert_array_equal(batch.obs[2, 1].numpy(), rollout.obs[3, 0])
    # each sequence keeps the state stored at its first step: t = 0 and t = 2 of its env
    rows = [rollout.states[0, 0], rollout.states[0, 1], rollout.states[2, 0], rollout.states[2, 1]]
    np.testing.assert_array_equal(batch.states.numpy(), np.stack(rows))
    assert batch.advantages[2, 0] == 0.0  # the autoreset step's advantage is zeroed, as in the flat batch
    assert stats["diagnostics/valid_fraction"] == 7 / 8
    # minibatches are whole sequences: 4 steps of L = 2 -> 2 sequences each
    pieces = list(batch.minibatches(4, np.random.default_rng(0)))
    assert [len(piece) for piece in pieces] == [2, 2]
    assert sorted(torch.cat([p.states[:, 0] for p in pieces]).tolist()) == sorted(batch.states[:, 0].tolist())


@pytest.mark.parametrize(("kind", "shared"), [("lstm", False), ("gru", True), ("lstm", True), ("gru", False)])
def test_state_resets_at_episode_starts(kind: str, shared: bool) -> None:
    torch.manual_seed(0)
    model = RecurrentActorCritic(3, ActionSpec("continuous", 2), network(kind, shared))
    assert model.state_size == (8 if kind == "lstm" else 4) * (1 if shared else 2)
    obs = torch.randn(5, 2, 3)
    state = torch.randn(2, model.state_size)
    starts = torch.zeros(5, 2, dtype=torch.bool)
    starts[3, 0] = True
    head, values, _ = model.sequence(obs, state, starts)
    # from step 3 on, env 0 is exactly a fresh run from the zero state on obs[3:]
    _, _, carried = model.sequence(obs[:3], state, starts[:3])
    fresh_state = carried.clone()
    fresh_state[0] = 0.0
    fresh_head, fresh_values, _ = model.sequence(obs[3:], fresh_state, torch.zeros(2, 2, dtype=torch.bool))
    assert torch.equal(head[3:], fresh_head) and torch.equal(values[3:], fresh_values)
    # without the reset the memory of steps 0-2 changes step 3's output
    no_reset, _, _ = model.sequence(obs, state, torch.zeros(5, 2, dtype=torch.bool))
    assert not torch.equal(no_reset[3, 0], head[3, 0])
    assert torch.equal(no_reset[:, 1], head[:, 1])  # env 1 had no start


class Recording:
    """The acting policy, recording log pi(a|h) of the actions it draws."""

    recurrent = True

    def __init__(self, policy) -> None:
        self.policy = policy
        self.log_probs: list[np.ndarray] = []

    def step(self, obs, state, starts, rng):
        head, next_state = self.policy.head(obs, state, starts)
        actions = self.policy.choose(head, rng)
        log_softmax = torch.log_softmax(torch.from_numpy(head), dim=-1)
        self.log_probs.append(log_softmax.gather(-1, torch.from_numpy(actions)[:, None])[:, 0].numpy())
        return actions, next_state


def test_replaying_stored_sequences_reproduces_the_acting_log_probs_exactly() -> None:
    torch.manual_seed(1)
    envs = make_vector_env(EnvConfig(id="CartPole-v1", num_envs=4, mask_velocity=True))
    adapter = SpaceAdapter(envs.single_observation_space, envs.single_action_space, True)
    config = PPOConfig(num_steps=32, minibatch_size=32, network=network("lstm", False, 8))
    ppo = PPO(config, adapter.obs_shape, adapter.action)
    collector = RolloutCollector(
        envs, adapter, ObsNormalizer((4,), 10.0, False), RewardScaler(4, 0.99, 10.0, False), 10, 16
    )
    collector.reset(seed=3)
    rng = np.random.default_rng(0)
    collector.collect(ppo.acting_policy(), rng, 32)  # a second rollout starts from a carried, non-zero state
    recording = Recording(ppo.acting_policy())
    rollout = collector.collect(recording, rng, 32)
    envs.close()
    assert rollout.states is not None and rollout.episode_starts is not None
    assert np.abs(rollout.states[0]).sum() > 0
    assert rollout.episode_starts[1:32].any() and (~rollout.valid).any()  # episodes end inside the rollout
    batch = ppo.prepare(rollout)[0]
    acting = torch.as_tensor(chunk(np.stack(recording.log_probs), 8))
    assert torch.equal(batch.log_probs, acting)  # log pi_old, from the learner's pass over the whole rollout
    with torch.no_grad():
        for k in range(4):  # chunk k of every env, replayed step by step from its stored start state alone
            rows = batch.select(slice(4 * k, 4 * k + 4))
            head, _, _ = ppo.model.sequence(rows.obs.transpose(0, 1), rows.states, rows.starts.T, stepwise=True)
            log_probs = ppo.model.distribution(head.transpose(0, 1)).log_prob(rows.actions)
            assert torch.equal(log_probs, acting[4 * k : 4 * k + 4]), k
        # the learner's replay: all 16 at once, packed fused calls (other kernels): equal to float rounding
        dist, _, _ = replay(ppo.model, batch)
        torch.testing.assert_close(dist.log_prob(batch.actions), acting, rtol=0, atol=1e-6)
        dist, _, _ = replay(ppo.model, batch.with_states(torch.zeros_like(batch.states)))  # not the stored state
        assert (dist.log_prob(batch.actions) - acting).abs().max() > 2e-5  # 20x the tolerance above


def test_loss_is_ppo_loss_over_the_masked_sequences() -> None:
    rollout = hand_rollout()
    ppo = PPO(PPOConfig(num_steps=4, minibatch_size=4, network=network()), 3, ActionSpec("discrete", 2))
    batch, _ = ppo.prepare(rollout)
    terms = ppo.loss_terms(batch, 0.2)
    # the same loss on the valid steps alone, flattened: masked means over [S, L] are means over valid steps
    dist, values, _ = replay(ppo.model, batch)
    valid = batch.mask.bool()
    log_probs = dist.log_prob(batch.actions)
    advantages = batch.advantages[valid]
    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    ratio = torch.exp(log_probs[valid] - batch.log_probs[valid])
    surrogate = -torch.min(ratio * advantages, ratio.clamp(0.8, 1.2) * advantages).mean()
    assert torch.allclose(terms.policy_loss, surrogate, atol=1e-6)
    assert torch.allclose(terms.value_loss, ((values[valid] - batch.returns[valid]) ** 2).mean(), atol=1e-6)


def test_refusals() -> None:
    with pytest.raises(ConfigError, match=r"ppo.network.sequence_length must divide ppo.num_steps \(30\)"):
        PPOConfig(num_steps=30, network=network(length=16))
    with pytest.raises(ConfigError, match=r"ppo.gradient_backend must be 'auto' or 'autograd' when network.recurrent"):
        PPOConfig(gradient_backend="numpy", network=network())
    with pytest.raises(
        ConfigError, match=r"trpo.network.recurrent must be null for trpo \(recurrent policies: ppo, a2c, impala, sac\)"
    ):
        resolve_config("trpo", "CartPole-v1", sets=["trpo.network.recurrent=lstm"])
    with pytest.raises(ConfigError, match=r"run.backend must be 'local' with network.recurrent"):
        resolve_config("ppo", "CartPole-v1", sets=["ppo.network.recurrent=gru", "run.backend=ray"])
    with pytest.raises(ConfigError, match=r"network.recurrent must be one of"):
        NetworkConfig(recurrent="rnn")


def runner_config(total: int, algo: str = "ppo"):
    if algo == "a2c":
        sets = ["run.progress=false", "run.tensorboard=false", "run.checkpoint_every=1000000"]
        sets += ["env.mask_velocity=true", "env.num_envs=2", "a2c.network.recurrent=lstm", "a2c.num_steps=16"]
        sets += ["a2c.network.recurrent_size=8", "a2c.network.hidden_sizes=[16]"]
        return resolve_config("a2c", "CartPole-v1", sets=sets, total_steps=total, use_preset=False)[0]
    sets = [
        "run.progress=false",
        "run.tensorboard=false",
        "run.checkpoint_every=1000000",
        "env.mask_velocity=true",
        "env.num_envs=2",
        "ppo.network.recurrent=gru",
        "ppo.network.recurrent_size=8",
        "ppo.network.hidden_sizes=[16]",
        "ppo.num_steps=32",
        "ppo.minibatch_size=32",
        "ppo.num_epochs=2",
        "ppo.network.sequence_length=8",
    ]
    config, _ = resolve_config("ppo", "CartPole-v1", sets=sets, total_steps=total, use_preset=False)
    return config


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_resume_mid_episode_is_bit_exact(tmp_path, algo: str) -> None:
    config = runner_config(384, algo)
    uninterrupted = OnPolicyRunner(config, tmp_path / "a", console=False)
    uninterrupted.train()

    first = OnPolicyRunner(config, tmp_path / "b", console=False)
    first.train(stop_at_step=192)
    assert first.step < 384
    assert not first.collector.episode_start.all() and np.abs(first.collector.hidden).sum() > 0  # mid-episode
    resumed = OnPolicyRunner(config, tmp_path / "b", resume=True, console=False)
    np.testing.assert_array_equal(resumed.collector.hidden, first.collector.hidden)
    resumed.train()

    assert resumed.step == uninterrupted.step
    for name, tensor in uninterrupted.algo.model.state_dict().items():
        assert torch.equal(tensor, resumed.algo.model.state_dict()[name]), name
    np.testing.assert_array_equal(uninterrupted.collector.hidden, resumed.collector.hidden)


def test_predict_carries_the_state_like_recurrent_ppo(tmp_path) -> None:
    from pgrad.api import PPO as AgentPPO
    from pgrad.evaluate import evaluate

    agent = AgentPPO(
        "CartPole-v1",
        config={"run": {"tensorboard": False, "progress": False}, "env": {"mask_velocity": True, "num_envs": 2}},
        sets=[
            "ppo.network.recurrent=lstm",
            "ppo.network.recurrent_size=8",
            "ppo.num_steps=16",
            "ppo.minibatch_size=16",
            "ppo.network.sequence_length=8",
        ],
        run_dir=tmp_path / "agent",
        use_preset=False,
    )
    agent.learn(64)
    policy = agent.policy
    assert policy is not None and policy.recurrent
    envs = make_vector_env(EnvConfig(id="CartPole-v1", num_envs=2, mask_velocity=True))
    obs, _ = envs.reset(seed=0)
    action, state = agent.predict(obs, episode_start=np.ones(2, bool))
    assert action.shape == (2,) and state.shape == (2, 32)  # (h, c) of 8 units, actor and critic cores
    # step by step, predict equals the acting policy handed the same state and starts
    acting = agent.policy.actor
    features = policy.obs_normalizer(policy.adapter.observations(obs), update=False)
    expected_actions, expected_state = acting.step(features, np.zeros((2, 32), np.float32), np.ones(2, bool), None)
    np.testing.assert_array_equal(action, expected_actions)
    np.testing.assert_array_equal(state, expected_state)
    obs, *_ = envs.step(action)
    second, state2 = agent.predict(obs, state=state, episode_start=np.zeros(2, bool))
    _, fresh_state = agent.predict(obs, state=None, episode_start=np.zeros(2, bool))
    assert not np.array_equal(state2, fresh_state)  # the state carried the first step
    single, single_state = agent.predict(obs[0], state=state[:1], episode_start=[False])
    assert single == second[0]  # one observation: a batch of one (other matrix shapes: equal to rounding)
    np.testing.assert_allclose(single_state, state2[:1], rtol=0, atol=1e-6)
    envs.close()
    with pytest.raises(ConfigError, match=r"predict: state must have shape \(2, 32\)"):
        agent.predict(obs, state=np.zeros((2, 3)))
    # pgrad eval on the run folder carries the state across steps
    report = evaluate(tmp_path / "agent", episodes=2)
    assert report is not None
    # SB3's evaluate_policy hands predict's state back with the episode starts
    import gymnasium as gym

    from pgrad.envs.partial import MaskVelocity, velocity_indices
    from pgrad.sb3_compat import evaluate_policy

    single = MaskVelocity(gym.make("CartPole-v1"), *velocity_indices("CartPole-v1", None))
    returns, lengths = evaluate_policy(agent, single, n_eval_episodes=2, return_episode_rewards=True)
    assert len(returns) == 2 and returns == [float(n) for n in lengths]


class CountingPolicy:
    """A recurrent stand-in: its state counts the steps since the last reset; it records the starts it is given."""

    recurrent = True
    state_size = 1

    def __init__(self) -> None:
        self.starts: list[bool] = []
        self.states: list[float] = []

    def initial_state(self, num_envs: int) -> np.ndarray:
        return np.zeros((num_envs, 1), np.float32)

    def step(self, obs, state, starts, rng):
        self.starts.append(bool(starts[0]))
        state = state * ~starts[:, None]
        self.states.append(float(state[0, 0]))
        return np.zeros(len(obs), np.int64), state + 1


def test_evaluation_resets_the_state_on_each_new_episode() -> None:
    from pgrad.monitor.evaluation import run_episodes

    envs = make_vector_env(EnvConfig(id="CartPole-v1", num_envs=1))
    adapter = SpaceAdapter(envs.single_observation_space, envs.single_action_space, True)
    policy = CountingPolicy()
    returns, lengths = run_episodes(policy, envs, adapter, ObsNormalizer((4,), 10.0, False), 2, True, seed=5)
    envs.close()
    first = lengths[0]
    # steps 0 .. first - 1 play episode 1, step `first` is the autoreset step (its final observation), and
    # step first + 1 acts on episode 2's first observation: the only other start
    assert [i for i, start in enumerate(policy.starts) if start] == [0, first + 1]
    assert policy.states[: first + 1] == list(map(float, range(first + 1)))
    assert policy.states[first + 1] == 0.0 and len(returns) == 2


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_exports_equal_predict_step_by_step(tmp_path, env_id: str) -> None:
    import onnxruntime

    from pgrad.api import PPO as AgentPPO
    from pgrad.export import export

    agent = AgentPPO(
        env_id,
        config={
            "run": {"tensorboard": False, "progress": False},
            "env": {"mask_velocity": True, "num_envs": 2, "norm_obs": True},
        },
        sets=["ppo.network.recurrent=lstm", "ppo.network.recurrent_size=8", "ppo.num_steps=16"]
        + ["ppo.minibatch_size=16", "ppo.network.sequence_length=8"],
        run_dir=tmp_path / "agent",
        use_preset=False,
    )
    agent.learn(64)
    onnx_file, manifest = export(tmp_path / "agent", "onnx")
    script_file, _ = export(tmp_path / "agent", "torchscript")
    assert [i["name"] for i in json.loads(manifest.read_text())["inputs"]] == [
        "observation",
        "state",
        "episode_start",
    ]
    session = onnxruntime.InferenceSession(str(onnx_file))
    with warnings.catch_warnings():  # torch 2.10+ marks TorchScript deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        script = torch.jit.load(str(script_file))
    envs = make_vector_env(EnvConfig(id=env_id, num_envs=2, mask_velocity=True))
    obs, _ = envs.reset(seed=0)
    state, onnx_state, script_state = None, np.zeros((2, agent.policy.actor.state_size), np.float32), None
    starts = np.ones(2, bool)
    script_state = torch.from_numpy(onnx_state)
    for _ in range(12):
        action, state = agent.predict(obs, state=state, episode_start=starts)
        inputs = {"observation": obs.astype(np.float32), "state": onnx_state, "episode_start": starts}
        onnx_action, onnx_state = session.run(None, inputs)
        script_action, script_state = script(
            torch.from_numpy(obs.astype(np.float32)), script_state, torch.from_numpy(starts)
        )
        np.testing.assert_allclose(onnx_action, action, rtol=0, atol=1e-5)
        np.testing.assert_allclose(script_action.numpy(), action, rtol=0, atol=1e-5)
        np.testing.assert_allclose(onnx_state, state, rtol=0, atol=1e-5)
        np.testing.assert_allclose(script_state.numpy(), state, rtol=0, atol=1e-5)
        obs, _, terminated, truncated, _ = envs.step(action)
        starts = terminated | truncated  # (the autoreset step's start: any flags do, all three get the same)
    envs.close()
