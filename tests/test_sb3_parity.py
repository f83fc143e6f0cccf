"""pgrad's PPO against Stable-Baselines3's on identical inputs, piece by piece, on Hopper-v5.

Both sides get the same initial weights, the same Gaussian noise for every sampled action and the
same minibatch order, so any difference left is a difference in what the libraries compute:

- ``update``: SB3's own ``train()`` and pgrad's ``PPO.update`` on the same batch (10 epochs x 32
  minibatches of 64), both gradient backends;
- ``collection``: pgrad's collector with its normalisers against SB3's ``collect_rollouts`` with
  ``VecNormalize``, through terminations and truncations: normalised observations, stored
  (unclipped) and sent (clipped) actions, log-probabilities, values, scaled rewards, GAE;
- ``iterations``: four whole PPO iterations (collect, GAE, update) through pgrad's real runner
  against SB3's ``learn()``, on a Hopper that never ends its episode (MuJoCo contact dynamics are
  chaotic: float rounding grows to visible differences after ~600 steps, so the rollouts are short).

Skipped without SB3 and MuJoCo (``pip install -e '.[bench,mujoco]'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("mujoco")
pytest.importorskip("stable_baselines3")

import gymnasium as gym  # noqa: E402
from stable_baselines3 import PPO as SB3PPO  # noqa: E402
from stable_baselines3.common.logger import configure  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize  # noqa: E402

from pgrad.algos.contract import UpdateContext  # noqa: E402
from pgrad.algos.ppo import PPO, PPOConfig  # noqa: E402
from pgrad.config import EnvConfig, OptimizerConfig  # noqa: E402
from pgrad.envs.factory import SpaceAdapter, make_vector_env  # noqa: E402
from pgrad.envs.normalize import ObsNormalizer, RewardScaler  # noqa: E402
from pgrad.nets import ActingPolicy, ActionSpec  # noqa: E402
from pgrad.rollout import Batch, RolloutCollector  # noqa: E402
from pgrad.runners.on_policy import OnPolicyRunner  # noqa: E402
from pgrad.runs import resolve_config  # noqa: E402

# pgrad's parameter name -> SB3 MlpPolicy's (separate 64x64 tanh torsos for pi and vf, state-independent log std)
SB3_NAMES = {
    "log_std": "log_std",
    "actor_torso.0.weight": "mlp_extractor.policy_net.0.weight",
    "actor_torso.0.bias": "mlp_extractor.policy_net.0.bias",
    "actor_torso.2.weight": "mlp_extractor.policy_net.2.weight",
    "actor_torso.2.bias": "mlp_extractor.policy_net.2.bias",
    "critic_torso.0.weight": "mlp_extractor.value_net.0.weight",
    "critic_torso.0.bias": "mlp_extractor.value_net.0.bias",
    "critic_torso.2.weight": "mlp_extractor.value_net.2.weight",
    "critic_torso.2.bias": "mlp_extractor.value_net.2.bias",
    "policy_head.weight": "action_net.weight",
    "policy_head.bias": "action_net.bias",
    "value_head.weight": "value_net.weight",
    "value_head.bias": "value_net.bias",
}


def copy_sb3_weights(sb3: SB3PPO, model: torch.nn.Module) -> None:
    theirs = dict(sb3.policy.named_parameters())
    ours = dict(model.named_parameters())
    assert set(ours) == set(SB3_NAMES)
    with torch.no_grad():
        for name, parameter in ours.items():
            assert parameter.shape == theirs[SB3_NAMES[name]].shape, name
            parameter.copy_(theirs[SB3_NAMES[name]])


def max_parameter_difference(sb3: SB3PPO, model: torch.nn.Module) -> float:
    theirs = dict(sb3.policy.named_parameters())
    return max((p - theirs[SB3_NAMES[n]]).abs().max().item() for n, p in model.named_parameters())


def sample_with_noise(sb3: SB3PPO, noise: np.ndarray) -> None:
    """SB3's policy samples mean + noise[i] * std, i counting every sampled row."""
    used = [0]

    def forward(obs: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dist = sb3.policy.get_distribution(obs)
        rows = torch.from_numpy(noise[used[0] : used[0] + len(obs)])
        used[0] += len(obs)
        actions = dist.distribution.mean + rows * dist.distribution.stddev
        return actions, sb3.policy.predict_values(obs), dist.log_prob(actions)

    sb3.policy.forward = forward  # type: ignore[method-assign]


def test_sb3_mlp_policy_has_pgrad_default_shape_and_initialisation():
    sb3 = SB3PPO("MlpPolicy", gym.make("Hopper-v5"), seed=0, device="cpu")
    model = PPO(PPOConfig(), 11, ActionSpec("continuous", 3)).model
    theirs = dict(sb3.policy.named_parameters())
    for name, parameter in model.named_parameters():
        other = theirs[SB3_NAMES[name]].detach()
        assert parameter.shape == other.shape
        if parameter.ndim == 2:  # orthogonal with the same gain: the same singular values
            torch.testing.assert_close(torch.linalg.svdvals(parameter.detach()), torch.linalg.svdvals(other))
        else:
            assert not parameter.detach().any() and not other.any()  # zero biases, log std 0
    assert sb3.policy.optimizer.defaults["eps"] == PPOConfig().optimizer.eps == 1e-5


@pytest.mark.parametrize("backend", ["autograd", "numpy"])
def test_one_update_on_the_same_batch_equals_sb3_train(backend, monkeypatch):
    sb3 = SB3PPO("MlpPolicy", gym.make("Hopper-v5"), seed=0, device="cpu")
    sb3.set_logger(configure(None, []))
    config = PPOConfig(
        num_steps=2048,
        optimizer=OptimizerConfig(learning_rate=3e-4, anneal_lr=False, eps=1e-5),
        gradient_backend=backend,
    )
    ppo = PPO(config, 11, ActionSpec("continuous", 3))
    assert ppo.gradient_backend == backend
    copy_sb3_weights(sb3, ppo.model)
    if ppo.numpy_net is not None:
        from pgrad.algos.numpy_grad import NumpyActorCritic

        ppo.numpy_net = NumpyActorCritic(ppo.model)

    rng = np.random.default_rng(1)
    n = 2048
    obs = torch.from_numpy(rng.normal(size=(n, 11)).astype(np.float32))
    with torch.no_grad():
        actions, values, log_probs = sb3.policy(obs)
    advantages = torch.from_numpy(rng.normal(3.0, 0.5, size=n).astype(np.float32))
    returns = values.flatten() + advantages
    buffer = sb3.rollout_buffer
    buffer.observations[:] = obs.numpy()[:, None]
    buffer.actions[:] = actions.numpy()[:, None]
    buffer.log_probs[:] = log_probs.numpy()[:, None]
    buffer.values[:] = values.numpy()
    buffer.advantages[:] = advantages.numpy()[:, None]
    buffer.returns[:] = returns.numpy()[:, None]
    buffer.full, buffer.generator_ready = True, False
    sb3._current_progress_remaining = 1.0

    # the same minibatch order: SB3's buffer draws np.random.permutation, pgrad context.rng.permutation
    monkeypatch.setattr(np.random, "permutation", np.random.default_rng(5).permutation)
    sb3.train()
    before = [p.detach().clone() for p in ppo.parameters]
    batch = Batch(obs, actions, log_probs, values.flatten(), advantages, returns, torch.ones(n))
    ppo.update(batch, UpdateContext(progress=0.0, lr_scale=1.0, rng=np.random.default_rng(5)))
    moved = max((p.detach() - q).abs().max().item() for p, q in zip(ppo.parameters, before, strict=True))
    assert moved > 1e-2
    assert max_parameter_difference(sb3, ppo.model) < 2e-6


def test_collection_with_normalisers_equals_sb3_through_terminations_and_truncations():
    steps, limit = 512, 30
    noise = np.random.default_rng(7).standard_normal((2 * steps, 3)).astype(np.float32)

    def make() -> gym.Env:
        return gym.make("Hopper-v5", max_episode_steps=limit)

    venv = VecNormalize(DummyVecEnv([make]), gamma=0.99)
    sb3 = SB3PPO("MlpPolicy", venv, seed=0, n_steps=steps, device="cpu")
    with torch.no_grad():
        sb3.policy.action_net.weight.mul_(100.0)  # a decisive policy: many actions fall outside the bounds
    sample_with_noise(sb3, noise)
    sent_by_sb3: list[np.ndarray] = []
    step_async = venv.venv.step_async

    def record_sb3(actions: np.ndarray) -> None:
        sent_by_sb3.append(np.array(actions))
        step_async(actions)

    venv.venv.step_async = record_sb3  # type: ignore[method-assign]
    _, callback = sb3._setup_learn(steps, None)
    callback.on_training_start(locals(), globals())
    sb3.collect_rollouts(sb3.env, callback, sb3.rollout_buffer, steps)
    buffer = sb3.rollout_buffer

    ppo = PPO(PPOConfig(num_steps=steps, gradient_backend="autograd"), 11, ActionSpec("continuous", 3))
    copy_sb3_weights(sb3, ppo.model)
    envs = make_vector_env(EnvConfig(id="Hopper-v5", num_envs=1, max_episode_steps=limit))
    adapter = SpaceAdapter(envs.single_observation_space, envs.single_action_space, True)
    collector = RolloutCollector(
        envs, adapter, ObsNormalizer((11,), 10.0, True), RewardScaler(1, 0.99, 10.0, True), episode_window=10
    )
    collector.reset(0)
    policy = ppo.acting_policy()
    used = [0]

    def sample(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if collector.autoreset_pending[0]:  # Gymnasium ignores this action; SB3 has no such step
            return np.zeros((1, 3), np.float32)
        assert policy.log_std is not None
        action = policy.mode(obs) + noise[used[0] : used[0] + 1] * np.exp(policy.log_std)
        used[0] += 1
        return action.astype(np.float32)

    policy.sample = sample  # type: ignore[method-assign]
    sent_by_pgrad: list[np.ndarray] = []
    env_actions = adapter.env_actions
    adapter.env_actions = lambda a: sent_by_pgrad.append(env_actions(a)) or sent_by_pgrad[-1]  # type: ignore[method-assign]
    rollout = collector.collect(policy, np.random.default_rng(0), steps + steps // 4)
    batch, _ = ppo.prepare(rollout)

    index = np.flatnonzero(rollout.valid[:, 0])[:steps]  # pgrad's steps that SB3 also takes
    assert len(index) == steps
    terminated, truncated = rollout.terminated[index, 0], rollout.truncated[index, 0]
    assert terminated.sum() >= 5 and truncated.sum() >= 2  # both kinds of episode end are exercised
    np.testing.assert_allclose(rollout.obs[index, 0], buffer.observations[:, 0], atol=1e-4)
    np.testing.assert_allclose(rollout.actions[index, 0], buffer.actions[:, 0], atol=1e-4)  # unclipped
    sent = np.concatenate(sent_by_pgrad)[index]
    np.testing.assert_allclose(sent, np.concatenate(sent_by_sb3), atol=1e-4)
    assert np.abs(sent).max() <= 1.0 < np.abs(rollout.actions[index, 0]).max()  # clipped for the env only
    np.testing.assert_allclose(batch.log_probs.numpy()[index], buffer.log_probs[:, 0], atol=1e-4)
    np.testing.assert_allclose(batch.values.numpy()[index], buffer.values[:, 0], atol=1e-4)
    # SB3 adds gamma V(final observation) to a truncated step's reward; pgrad bootstraps in GAE
    np.testing.assert_allclose(rollout.rewards[index, 0][~truncated], buffer.rewards[:, 0][~truncated], atol=1e-4)
    # GAE: steps whose episode ended inside SB3's window (the rest bootstrap from different places)
    complete = np.arange(steps) <= np.flatnonzero(terminated | truncated)[-1]
    # the final observation is normalised one sample apart (SB3 counts the reset observation
    # first), so V(final observation) of truncated steps differs in the 3rd digit
    np.testing.assert_allclose(batch.advantages.numpy()[index][complete], buffer.advantages[complete, 0], atol=1e-2)
    np.testing.assert_allclose(batch.returns.numpy()[index][complete], buffer.returns[complete, 0], atol=1e-2)
    assert np.abs(batch.advantages.numpy()[index][complete] - buffer.advantages[complete, 0]).mean() < 1e-4


@pytest.mark.parametrize("backend", ["autograd", "numpy"])
def test_four_ppo_iterations_through_the_runner_equal_sb3_learn(backend, monkeypatch, tmp_path: Path):
    steps, iterations, seed = 128, 4, 3
    noise = np.random.default_rng(11).standard_normal((steps * iterations, 3)).astype(np.float32)

    def make() -> gym.Env:
        return gym.make("Hopper-v5", terminate_when_unhealthy=False, max_episode_steps=100_000)

    venv = VecNormalize(DummyVecEnv([make]), gamma=0.99)
    sb3 = SB3PPO("MlpPolicy", venv, seed=seed, n_steps=steps, device="cpu")
    initial = {name: p.detach().clone() for name, p in sb3.policy.named_parameters()}
    sample_with_noise(sb3, noise)
    with monkeypatch.context() as patch:
        patch.setattr(np.random, "permutation", np.random.default_rng(seed).permutation)
        sb3.learn(total_timesteps=steps * iterations)

    settings = [
        "env.num_envs=1",
        "env.norm_obs=true",
        "env.norm_reward=true",
        "env.max_episode_steps=100000",
        "env.kwargs={terminate_when_unhealthy: false}",
        f"ppo.num_steps={steps}",
        "ppo.minibatch_size=64",
        "ppo.optimizer.anneal_lr=false",
        f"ppo.gradient_backend={backend}",
        "run.tensorboard=false",
        "run.progress=false",
        "guard.eval_every=0",  # an evaluation episode here would last 100k steps
    ]
    config, _ = resolve_config("ppo", "Hopper-v5", None, settings, seed, steps * iterations, use_preset=False)
    runner = OnPolicyRunner(config, tmp_path / "run", console=False)
    with torch.no_grad():
        for name, parameter in runner.algo.model.named_parameters():
            parameter.copy_(initial[SB3_NAMES[name]])
    if getattr(runner.algo, "numpy_net", None) is not None:
        from pgrad.algos.numpy_grad import NumpyActorCritic

        runner.algo.numpy_net = NumpyActorCritic(runner.algo.model)  # type: ignore[attr-defined]
    used = [0]

    def sample(self: ActingPolicy, obs: np.ndarray, rng: Any) -> np.ndarray:
        assert self.log_std is not None
        action = self.mode(obs) + noise[used[0] : used[0] + len(obs)] * np.exp(self.log_std)
        used[0] += len(obs)
        return action.astype(np.float32)

    monkeypatch.setattr(ActingPolicy, "sample", sample)
    runner.train()

    assert used[0] == steps * iterations
    # every parameter moved by ~2e-2; the libraries agree to float rounding
    assert max_parameter_difference(sb3, runner.algo.model) < 2e-5
    stats = runner.collector.obs_normalizer.stats
    assert stats.count == pytest.approx(venv.obs_rms.count)
    np.testing.assert_allclose(stats.mean, venv.obs_rms.mean, atol=1e-4)
    assert runner.collector.reward_scaler.stats.var == pytest.approx(float(venv.ret_rms.var), rel=1e-4)
