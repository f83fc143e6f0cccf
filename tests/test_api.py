"""The library API (pgrad.api): env forms, learn/save/load/predict, callbacks, config errors, global state."""

from __future__ import annotations

import json
import random

import gymnasium as gym
import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info

from pgrad.api import A3C, PPO, Agent, Callback
from pgrad.builders import build_learner
from pgrad.checkpoint import load_modules, read_train_state
from pgrad.envs.factory import SpaceAdapter
from pgrad.errors import ConfigError

# 2 envs x 64 steps = 128 env steps per update, one epoch: an update takes milliseconds.
SMALL = {
    "env": {"num_envs": 2},
    "run": {"tensorboard": False, "progress": False},
    "ppo": {"num_steps": 64, "num_epochs": 1, "minibatch_size": 64},
}


def small_ppo(env, tmp_path, name="run", **options):
    return PPO(env, config=SMALL, run_dir=tmp_path / name, use_preset=False, **options)


def events(run_dir):
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


class Recorder(Callback):
    """Records what it hears; stops (returns False) once ``step`` reaches ``stop_at``."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at = stop_at
        self.steps: list[int] = []
        self.evaluations: list[float] = []
        self.checkpoints: list[tuple[str, int]] = []
        self.threads_seen: set[int] = set()

    def on_update(self, metrics):
        self.steps.append(metrics["step"])
        self.threads_seen.add(torch.get_num_threads())
        return None if self.stop_at is None or metrics["step"] < self.stop_at else False

    def on_evaluation(self, metrics):
        self.evaluations.append(metrics["eval/return_mean"])

    def on_checkpoint(self, path, step):
        self.checkpoints.append((path.name, step))


def test_learn_save_load_predict_round_trip(tmp_path):
    agent = small_ppo("CartPole-v1", tmp_path, seed=3)
    assert agent.learn(512) is agent
    assert agent.num_timesteps == 512
    obs = np.random.default_rng(0).uniform(-2, 2, (200, 4)).astype(np.float32)
    actions, state = agent.predict(obs)
    assert state is None and actions.shape == (200,) and actions.dtype == np.int64
    assert set(np.unique(actions)) <= {0, 1}

    saved = agent.save(tmp_path / "saved")
    assert sorted(p.name for p in saved.iterdir()) == ["spaces.json", "state.json", "tensors.safetensors"]
    for loaded in (PPO.load(saved), Agent.load(tmp_path / "run")):
        np.testing.assert_array_equal(loaded.predict(obs)[0], actions)
        assert loaded.num_timesteps == 512 and loaded.algo == "ppo"
    with pytest.raises(ConfigError, match="holds a 'ppo' agent, not 'a3c'"):
        A3C.load(saved)
    with pytest.raises(ConfigError, match="a saved agent, or a run folder's non-latest checkpoint, is for acting"):
        PPO.load(saved).learn(128)
    # a run folder trains further from where it stopped, as 'pgrad resume --total-steps' would
    resumed = PPO.load(tmp_path / "run").learn(128)
    assert resumed.num_timesteps == 640 and "run.resumed" in [event["kind"] for event in events(tmp_path / "run")]


def test_predict_one_observation_and_a_batch(tmp_path):
    agent = small_ppo("CartPole-v1", tmp_path).learn(128)
    one = np.array([0.01, -0.2, 0.03, 0.4], np.float32)
    action, _ = agent.predict(one)
    assert action.shape == () and int(action) == int(agent.predict(one[None])[0][0])
    with pytest.raises(ConfigError, match=r"observation of shape \(3,\) is neither one observation \(4,\)"):
        agent.predict(np.zeros(3))
    # stochastic actions come from the agent's own generator: the global RNG is neither read nor moved
    np.random.seed(0)
    drawn = agent.predict(np.zeros((500, 4), np.float32), deterministic=False)[0]
    assert 0 < drawn.mean() < 1 and np.random.random() == np.random.RandomState(0).random_sample()


def test_predict_applies_the_normaliser_and_the_action_rescaling(tmp_path):
    """Pendulum (actions in [-2, 2]) with norm_obs: predict equals the torch learner on the normalised
    observation, its Gaussian mean mapped by a = 2u and clipped to [-2, 2]."""
    config = {**SMALL, "env": {"num_envs": 2, "norm_obs": True}}
    agent = PPO("Pendulum-v1", config=config, run_dir=tmp_path / "run", use_preset=False).learn(256)
    obs = np.stack([agent.observation_space.sample() for _ in range(300)])
    state = read_train_state(agent.last_result.checkpoint)
    mean, var = (state.normalizers["obs"][key] for key in ("mean", "var"))
    assert np.abs(mean).max() > 0.01  # the statistics moved: the test would see a missing normaliser
    normalised = np.clip((obs - mean) / np.sqrt(var + 1e-8), -10, 10).astype(np.float32)
    adapter = SpaceAdapter(agent.observation_space, agent.action_space, True)
    learner = build_learner(agent.config, adapter)
    load_modules(learner.modules(), state, agent.last_result.checkpoint)
    with torch.no_grad():
        u = learner.model.distribution(torch.from_numpy(normalised)).mean.numpy()
    expected = np.clip(2.0 * u, -2.0, 2.0)
    assert (np.abs(u) > 1).any() or (np.abs(expected) > 0).all()
    np.testing.assert_allclose(agent.predict(obs)[0], expected, atol=1e-5)


def test_callbacks_hear_updates_evaluations_checkpoints_and_stop_the_run(tmp_path):
    agent = small_ppo("CartPole-v1", tmp_path, sets=["guard.eval_every=256", "guard.eval_episodes=2"])
    recorder = Recorder(stop_at=512)
    agent.learn(100_000, callbacks=[recorder])
    assert agent.num_timesteps == 512 and recorder.steps == [128, 256, 384, 512]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evaluated = [row["eval/return_mean"] for row in rows if "eval/return_mean" in row]
    assert len(evaluated) >= 2 and recorder.evaluations == evaluated
    assert recorder.checkpoints[-1] == (agent.last_result.checkpoint.name, 512)
    kinds = [event["kind"] for event in events(tmp_path / "run")]
    assert "run.stopped_by_callback" in kinds and "run.interrupted" not in kinds
    # learn again: the same run continues from its checkpoint, as 'pgrad resume --total-steps' would
    agent.learn(256, callbacks=[second := Recorder()])
    assert agent.num_timesteps == 768 and second.steps == [640, 768]
    assert "run.resumed" in [event["kind"] for event in events(tmp_path / "run")]


def test_learn_puts_global_rngs_and_thread_counts_back(tmp_path):
    torch.set_num_threads(2)
    blas_before = [pool["num_threads"] for pool in threadpool_info()]
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    agent = small_ppo("CartPole-v1", tmp_path, seed=5)  # run.torch_threads = 1, seeds 5 during the run
    recorder = Recorder()
    agent.learn(256, callbacks=[recorder])
    assert recorder.threads_seen == {1}  # the run did change them...
    assert torch.get_num_threads() == 2  # ...and learn put them back
    assert [pool["num_threads"] for pool in threadpool_info()] == blas_before
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    expected = (random.random(), np.random.random(), torch.rand(1).item())
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    PPO.load(tmp_path / "run")  # loading builds a network (random init) from a forked RNG
    assert (random.random(), np.random.random(), torch.rand(1).item()) == expected
    torch.set_num_threads(1)


class CountingSteps(gym.Wrapper):
    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.steps = 0
        self.resets = 0

    def reset(self, **kwargs):
        self.resets += 1
        return self.env.reset(**kwargs)

    def step(self, action):
        self.steps += 1
        return self.env.step(action)


def test_env_forms_id_instance_class_factory_and_vector_env(tmp_path):
    from corridor_env import Corridor

    instance = CountingSteps(gym.make("CartPole-v1"))
    # the CartPole preset (8 envs, minibatch 256) does not fit one env: it is left out, not an error (the defaults
    # for discrete-action vector envs apply instead)
    assert str(PPO(gym.make("CartPole-v1")).preset_source).startswith("generic defaults for discrete-action vector")
    agent = PPO(instance, config={**SMALL, "env": {}}, run_dir=tmp_path / "instance", use_preset=False)
    assert agent.config.env.id == "CartPole-v1" and agent.config.env.num_envs == 1
    agent.learn(128)
    # trained on the instance itself: each of the 128 vector steps stepped it or (next-step autoreset) reset it
    assert instance.steps + instance.resets - 1 == 128 and instance.resets > 1

    by_class = PPO(Corridor, config={**SMALL, "env": {"kwargs": {"length": 3}}}, run_dir=tmp_path / "class")
    assert by_class.config.env.id == "corridor_env:Corridor"  # importable: config.yaml rebuilds it alone
    by_class.learn(128)
    assert Agent.load(tmp_path / "class", trust_env_code=True).predict(np.array([1.0], np.float32))[0] in (0, 1)

    made: list[int] = []

    def local_factory(length: int = 4) -> gym.Env:  # not importable: used through a factory
        made.append(length)
        return Corridor(length)

    by_factory = PPO(local_factory, config=SMALL, env_kwargs={"length": 6}, run_dir=tmp_path / "factory")
    assert by_factory.config.env.id.endswith("local_factory")
    by_factory.learn(128)
    assert set(made) == {6} and len(made) >= 3  # the spaces probe and the two training envs
    # its run folder loads and acts without the factory: the spaces are in RUN_DIR/spaces.json
    positions = np.arange(7, dtype=np.float32)[:, None]
    reloaded = Agent.load(tmp_path / "factory")
    np.testing.assert_array_equal(reloaded.predict(positions)[0], by_factory.predict(positions)[0])

    vector = gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="sync")
    by_vector = PPO(vector, config={**SMALL, "env": {}}, run_dir=tmp_path / "vector", use_preset=False)
    assert by_vector.config.env.num_envs == 3
    by_vector.learn(192)
    assert by_vector.num_timesteps == 192  # 3 envs x 64 steps: one update


def test_config_errors_are_one_line_and_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'ppo.num_epoch'; did you mean 'num_epochs'\?"):
        PPO("CartPole-v1", config={"ppo": {"num_epoch": 3}})
    with pytest.raises(ConfigError, match="ppo.clip_eps"):
        PPO("CartPole-v1", sets=["ppo.clip_eps=-1"])
    with pytest.raises(ConfigError, match="algo: name the algorithm \\(allowed: ppo, "):
        Agent("CartPole-v1")
    with pytest.raises(ConfigError, match="env.num_envs: the env passed holds 1 env\\(s\\), not 4"):
        PPO(gym.make("CartPole-v1"), config={"env": {"num_envs": 4}})
    with pytest.raises(ConfigError, match="env.max_episode_steps: applies to envs built from an id; wrap the env"):
        PPO(gym.make("CartPole-v1"), config={"env": {"max_episode_steps": 10}})
    with pytest.raises(ConfigError, match="a3c's workers build their envs in their own processes"):
        A3C(gym.make("CartPole-v1"))
    from corridor_env import Corridor

    with pytest.raises(
        ConfigError, match=r"does not take 'lenght'; did you mean 'length'\? \(its parameters: length, slip\)"
    ):
        PPO(Corridor, env_kwargs={"lenght": 3})
    with pytest.raises(ConfigError, match="learn: total_steps must be a positive int"):
        small_ppo("CartPole-v1", tmp_path).learn(0)
    with pytest.raises(ConfigError, match="predict: this agent has no trained policy yet"):
        small_ppo("CartPole-v1", tmp_path).predict(np.zeros(4))


def test_off_policy_runs_hear_callbacks_and_stop_too(tmp_path):
    from pgrad.api import SAC

    # a log row (what on_update hears) every 50 env steps; small batches keep the gradient steps cheap
    loop = {"learning_starts": 50, "batch_size": 32, "log_every": 50, "buffer_size": 1000}
    config = {"env": {"num_envs": 1}, "run": {"tensorboard": False}, "sac": {"loop": loop}}
    agent = SAC("Pendulum-v1", config=config, run_dir=tmp_path / "sac", use_preset=False)
    recorder = Recorder(stop_at=150)
    agent.learn(5_000, callbacks=[recorder])
    assert recorder.steps == [50, 100, 150] and agent.num_timesteps == 150
    assert recorder.checkpoints == [(agent.last_result.checkpoint.name, agent.num_timesteps)]
    assert "run.stopped_by_callback" in [event["kind"] for event in events(tmp_path / "sac")]


def test_learn_from_another_thread(tmp_path):
    """Signal handlers can only be set from the main thread: a run in a worker thread goes without them."""
    import threading

    agent = small_ppo("CartPole-v1", tmp_path)
    failures: list[BaseException] = []

    def train() -> None:
        try:
            agent.learn(256)
        except BaseException as exc:  # reported to the main thread below
            failures.append(exc)

    thread = threading.Thread(target=train)
    thread.start()
    thread.join(60)
    assert not failures and agent.num_timesteps == 256


def test_the_agents_import_from_the_package_and_the_package_alone_imports_no_torch():
    # an SB3 script's first line is `from stable_baselines3 import PPO`; before, `from pgrad import PPO` failed
    import subprocess
    import sys

    import pgrad
    from pgrad import PPO, SAC, Agent, api

    assert PPO is api.PPO and SAC is api.SAC and Agent is api.Agent
    with pytest.raises(AttributeError, match="module 'pgrad' has no attribute 'PPX'"):
        pgrad.PPX  # noqa: B018
    probe = "import sys, pgrad; print('torch' in sys.modules, pgrad.__version__)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60).stdout.split()
    assert out == ["False", pgrad.__version__]
