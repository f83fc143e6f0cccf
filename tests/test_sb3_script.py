"""Issue 24's acceptance: a script written for Stable-Baselines3 runs on pgrad by changing only its import line.

``SCRIPT`` is held once and run three ways: with SB3's classes (the reference, skipped without SB3), with pgrad's
classes and SB3's ``evaluate_policy`` (skipped without SB3), and with pgrad's classes and ``pgrad.evaluate_policy``.
The harness gives the script only a working folder; the script's callback is SB3-shaped (``BaseCallback`` with
``_on_step``), imported by the same import line.
"""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch

SB3_IMPORT = (
    "from stable_baselines3 import PPO, SAC; from stable_baselines3.common.callbacks import BaseCallback; "
    "from stable_baselines3.common.evaluation import evaluate_policy"
)
PGRAD_WITH_SB3_EVALUATION = (
    "from pgrad import PPO, SAC; from pgrad.callbacks import BaseCallback; "
    "from stable_baselines3.common.evaluation import evaluate_policy"
)
PGRAD_IMPORT = "from pgrad import PPO, SAC, evaluate_policy; from pgrad.callbacks import BaseCallback"

SCRIPT = """
import gymnasium as gym
import numpy as np
import torch.nn as nn


class CountSteps(BaseCallback):
    # counts the env steps it hears of, and sees the model it trains

    def __init__(self):
        super().__init__()
        self.calls = 0

    def _on_step(self):
        self.calls += 1
        assert self.model is not None and self.num_timesteps > 0
        return True

# PPO on CartPole: hyper-parameters and policy_kwargs as in an SB3 script
env = gym.make("CartPole-v1")
model = PPO(
    "MlpPolicy",
    env,
    learning_rate=1e-3,
    n_steps=256,
    batch_size=64,
    n_epochs=4,
    gamma=0.98,
    gae_lambda=0.9,
    ent_coef=0.0,
    policy_kwargs=dict(net_arch=dict(pi=[32, 32], vf=[32, 32]), activation_fn=nn.Tanh),
    tensorboard_log=f"{workdir}/tb",
    seed=0,
    verbose=0,
)
ppo_callback = CountSteps()
model.learn(total_timesteps=512, callback=ppo_callback)
model.save(f"{workdir}/ppo_cartpole")
del model
model = PPO.load(f"{workdir}/ppo_cartpole", env=env)

obs, _ = env.reset(seed=0)
state, episode_start = None, np.ones((1,), dtype=bool)
for _ in range(20):
    action, state = model.predict(obs, state=state, episode_start=episode_start, deterministic=True)
    obs, reward, terminated, truncated, info = env.step(action)
    episode_start = np.array([terminated or truncated])
    if terminated or truncated:
        obs, _ = env.reset()
ppo_mean, ppo_std = evaluate_policy(model, env, n_eval_episodes=3, deterministic=True, warn=False)

# SAC on Pendulum
env = gym.make("Pendulum-v1")
model = SAC(
    "MlpPolicy",
    env,
    learning_rate=1e-3,
    buffer_size=10_000,
    learning_starts=100,
    batch_size=64,
    tau=0.01,
    gamma=0.98,
    train_freq=(1, "step"),
    gradient_steps=1,
    ent_coef="auto",
    policy_kwargs=dict(net_arch=[32, 32]),
    seed=0,
    verbose=0,
)
sac_callback = CountSteps()
model.learn(total_timesteps=150, callback=sac_callback)
model.save(f"{workdir}/sac_pendulum")
model = SAC.load(f"{workdir}/sac_pendulum")
obs, _ = env.reset(seed=0)
action, state = model.predict(obs, state=None, episode_start=np.ones((1,), dtype=bool), deterministic=True)
assert env.action_space.contains(np.asarray(action, dtype=np.float32)), action
sac_rewards, sac_lengths = evaluate_policy(model, env, n_eval_episodes=1, return_episode_rewards=True, warn=False)
"""


def run_script(import_line, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # pgrad's run folders (runs/...) and SB3's files land in the test's folder
    namespace = {"workdir": str(tmp_path)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # SB3 leaves torch's threads as they are (pgrad sets 1 while it learns): small nets
    try:
        exec(compile(import_line + "\n" + SCRIPT, "sb3_script.py", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    return namespace


def check(namespace):
    # _on_step once per vector step on both libraries (one env each here: one call per env step)
    assert namespace["ppo_callback"].calls >= 512 and namespace["sac_callback"].calls == 150
    assert 1 <= namespace["ppo_mean"] <= 500 and namespace["ppo_std"] >= 0
    assert namespace["sac_lengths"] == [200] and -2000 < namespace["sac_rewards"][0] <= 0  # Pendulum's range


def test_the_script_on_sb3(tmp_path, monkeypatch):
    pytest.importorskip("stable_baselines3")
    check(run_script(SB3_IMPORT, tmp_path, monkeypatch))


def test_the_script_on_pgrad_with_sb3s_evaluate_policy(tmp_path, monkeypatch):
    pytest.importorskip("stable_baselines3")
    namespace = run_script(PGRAD_WITH_SB3_EVALUATION, tmp_path, monkeypatch)
    check(namespace)
    assert namespace["model"].num_timesteps == 150
    assert any((tmp_path / "tb" / "PPO_1" / "tb").iterdir())  # tensorboard_log: the run folder under it


def test_the_script_on_pgrad_alone(tmp_path, monkeypatch):
    namespace = run_script(PGRAD_IMPORT, tmp_path, monkeypatch)
    check(namespace)
    assert (tmp_path / "ppo_cartpole" / "state.json").is_file()  # save("name") writes a folder, never a pickle
    assert isinstance(namespace["env"], gym.Env)
