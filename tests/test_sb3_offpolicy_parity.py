"""pgrad's TD3 and SAC gradient steps against Stable-Baselines3's ``train()`` on identical inputs.

Both sides start from the same weights (SB3's, copied into pgrad's modules), see the same sequence
of replay batches, and draw their random numbers (TD3's target smoothing noise, SAC's
reparameterisation noise) from torch's global generator seeded alike, in the same order. Several
gradient steps run (TD3's delayed actor and target updates included), then every parameter, target
and SAC's temperature must agree. What is left after that is a difference in what the two libraries
compute, so a learning gap between them is a matter of hyper-parameters or random streams.

Skipped without SB3 (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

from collections.abc import Iterator

import gymnasium as gym
import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")

from stable_baselines3 import SAC as SB3SAC  # noqa: E402
from stable_baselines3 import TD3 as SB3TD3  # noqa: E402
from stable_baselines3.common.logger import configure  # noqa: E402
from stable_baselines3.common.type_aliases import ReplayBufferSamples  # noqa: E402

from pgrad.algos.contract import UpdateContext  # noqa: E402
from pgrad.algos.sac import SAC, SACConfig  # noqa: E402
from pgrad.algos.td3 import TD3, TD3Config  # noqa: E402
from pgrad.distributions import TanhGaussian  # noqa: E402
from pgrad.nets import ActionSpec, QNetworks  # noqa: E402
from pgrad.replay import TransitionBatch  # noqa: E402

OBS_DIM, ACTION_DIM, BATCH, STEPS = 17, 6, 256, 6  # HalfCheetah's shapes, SB3's batch


class ShapesOnly(gym.Env):
    """An env that only carries HalfCheetah's spaces: SB3 needs one to build its policy."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)


def batches(count: int) -> list[TransitionBatch]:
    rng = np.random.default_rng(7)

    def tensor(*shape: int) -> torch.Tensor:
        return torch.as_tensor(rng.standard_normal(shape), dtype=torch.float32)

    return [
        TransitionBatch(
            obs=tensor(BATCH, OBS_DIM),
            actions=torch.as_tensor(rng.uniform(-1, 1, (BATCH, ACTION_DIM)), dtype=torch.float32),
            rewards=tensor(BATCH),
            next_obs=tensor(BATCH, OBS_DIM),
            terminated=torch.as_tensor(rng.random(BATCH) < 0.1, dtype=torch.float32),
            truncated=torch.zeros(BATCH),
        )
        for _ in range(count)
    ]


def feed_sb3(model: SB3TD3 | SB3SAC, replay: list[TransitionBatch]) -> None:
    """SB3's ``train()`` samples its replay buffer: hand it our batches in order instead. Its ``dones``
    are already ``terminated`` (timeouts removed), its rewards a column."""
    stream: Iterator[TransitionBatch] = iter(replay)

    def sample(batch_size: int, env: object = None) -> ReplayBufferSamples:
        batch = next(stream)
        return ReplayBufferSamples(
            batch.obs, batch.actions, batch.next_obs, batch.terminated[:, None], batch.rewards[:, None]
        )

    model.replay_buffer.sample = sample  # type: ignore[method-assign]
    model.set_logger(configure(None, [""]))


def linears(module: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight [out, in], bias [out]) of every linear layer, critic after critic. pgrad's critics are stacked
    (``QNetworks``: layer j of critic i is ``weights[j][i]``, [in, out]): their pairs are views into the
    stacked tensors, so copying into them writes the module."""
    if isinstance(module, QNetworks):
        depth = len(module.weights)
        return [(module.weights[j][i].T, module.biases[j][i, 0]) for i in range(module.count) for j in range(depth)]
    return [(layer.weight, layer.bias) for layer in module.modules() if isinstance(layer, torch.nn.Linear)]


def copy_linears(source: torch.nn.Module, target: torch.nn.Module) -> None:
    pairs = list(zip(linears(source), linears(target), strict=True))
    with torch.no_grad():
        for (their_weight, their_bias), (our_weight, our_bias) in pairs:
            assert their_weight.shape == our_weight.shape and their_bias.shape == our_bias.shape
            our_weight.copy_(their_weight)
            our_bias.copy_(their_bias)


def largest_difference(source: torch.nn.Module, target: torch.nn.Module) -> float:
    return max(
        max((wa - wb).abs().max().item(), (ba - bb).abs().max().item())
        for (wa, ba), (wb, bb) in zip(linears(source), linears(target), strict=True)
    )


def context() -> UpdateContext:
    return UpdateContext(progress=0.0, lr_scale=1.0, rng=np.random.default_rng(0))


def test_td3_gradient_steps_equal_sb3_train_including_delayed_actor_and_targets():
    torch.manual_seed(0)
    sb3 = SB3TD3("MlpPolicy", ShapesOnly(), device="cpu", seed=0)  # 400x300, lr 1e-3, delay 2, noise 0.2 / 0.5
    ours = TD3(TD3Config(), OBS_DIM, ActionSpec("continuous", ACTION_DIM))
    policy = sb3.policy
    pairs = [
        (policy.actor.mu, ours.actor),
        (policy.actor_target.mu, ours.target_actor),
        (policy.critic, ours.critics),
        (policy.critic_target, ours.target_critics),
    ]
    for theirs, mine in pairs:
        copy_linears(theirs, mine)
    replay = batches(STEPS)
    feed_sb3(sb3, replay)

    torch.manual_seed(123)
    sb3.train(gradient_steps=STEPS, batch_size=BATCH)
    torch.manual_seed(123)
    for batch in replay:
        ours.update(batch, context())

    assert ours.gradient_steps == sb3._n_updates == STEPS
    for theirs, mine in pairs:
        # the actor and targets moved STEPS / 2 times, the critics STEPS times; a wrong order would show
        assert largest_difference(theirs, mine) < 2e-5
    start = TD3(TD3Config(), OBS_DIM, ActionSpec("continuous", ACTION_DIM))
    assert largest_difference(policy.actor.mu, start.actor) > 1e-2  # they did move (not a vacuous match)


def sb3_log_det_jacobian(self: TanhGaussian, pre_tanh: torch.Tensor) -> torch.Tensor:
    """SB3's tanh correction, sum log(1 - tanh(u)^2 + 1e-6); pgrad's own is the exact
    2 (log 2 - u - softplus(-2u)), which differs by up to ~1e-6 per dimension near |a| = 1."""
    return torch.log(1 - torch.tanh(pre_tanh) ** 2 + 1e-6).sum(-1)


def test_sac_gradient_steps_equal_sb3_train_including_the_learned_temperature(monkeypatch):
    # with SB3's epsilon form of the tanh correction, so that the rest is compared exactly
    monkeypatch.setattr(TanhGaussian, "log_det_jacobian", sb3_log_det_jacobian)
    torch.manual_seed(0)
    sb3 = SB3SAC("MlpPolicy", ShapesOnly(), device="cpu", seed=0)  # 256x256, lr 3e-4, alpha auto from 1.0
    ours = SAC(SACConfig(), OBS_DIM, ActionSpec("continuous", ACTION_DIM))
    policy = sb3.policy
    actor_pairs = [
        (policy.actor.latent_pi, ours.actor.torso),
        (policy.actor.mu, ours.actor.mean),
        (policy.actor.log_std, ours.actor.log_std),
    ]
    critic_pairs = [(policy.critic, ours.critics), (policy.critic_target, ours.target_critics)]
    for theirs, mine in actor_pairs + critic_pairs:
        copy_linears(theirs, mine)
    assert sb3.target_entropy == ours.target_entropy == -ACTION_DIM
    replay = batches(STEPS)
    feed_sb3(sb3, replay)

    torch.manual_seed(321)
    sb3.train(gradient_steps=STEPS, batch_size=BATCH)
    torch.manual_seed(321)
    for batch in replay:
        ours.update(batch, context())

    for theirs, mine in actor_pairs + critic_pairs:
        assert largest_difference(theirs, mine) < 2e-5
    assert ours.temperature["log_alpha"].item() == pytest.approx(sb3.log_ent_coef.item(), abs=1e-6)
    assert ours.temperature["log_alpha"].item() < -1e-3  # the temperature did move
