"""The hand-derived PPO gradient (ppo_hand_gradients) equals autograd of ppo_loss, and so does its loss."""

import itertools

import numpy as np
import pytest
import torch

from pgrad.algos.numpy_grad import NumpyActorCritic
from pgrad.algos.ppo import PPOConfig, ppo_hand_gradients, ppo_loss
from pgrad.nets import ActionSpec, ActorCritic
from pgrad.rollout import Batch

CASES = list(itertools.product(["discrete", "continuous"], [False, True], ["tanh", "relu"], [None, 0.2], [True, False]))


def random_batch(model: ActorCritic, kind: str, n: int, rng: np.random.Generator) -> Batch:
    obs = torch.from_numpy(rng.normal(size=(n, 5)).astype(np.float32))
    if kind == "discrete":
        actions = torch.from_numpy(rng.integers(0, 3, size=n))
    else:
        actions = torch.from_numpy(rng.normal(size=(n, 2)).astype(np.float32))
    with torch.no_grad():
        dist, values = model(obs)
        # old log-probs spread so ratios fall on both sides of the clip range
        old = dist.log_prob(actions) + torch.from_numpy(rng.normal(0, 0.3, size=n).astype(np.float32))
        old_values = values + torch.from_numpy(rng.normal(0, 0.5, size=n).astype(np.float32))
    mask = (rng.random(n) > 0.15).astype(np.float32)
    return Batch(
        obs, actions, old, old_values,
        torch.from_numpy(rng.normal(size=n).astype(np.float32)),
        torch.from_numpy(rng.normal(size=n).astype(np.float32)),
        torch.from_numpy(mask),
    )


@pytest.mark.parametrize(("kind", "shared", "activation", "clip_vf", "norm_adv"), CASES)
def test_hand_gradients_equal_autograd(kind, shared, activation, clip_vf, norm_adv):
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    action = ActionSpec(kind, 3 if kind == "discrete" else 2)
    model = ActorCritic(5, action, (16, 8), activation, shared=shared, log_std_init=-0.3)
    with torch.no_grad():  # larger policy weights than the 0.01 init, so ratios move
        model.policy_head.weight.mul_(50.0)
    config = PPOConfig(clip_vf=clip_vf, ent_coef=0.01, vf_coef=0.7, norm_adv=norm_adv)
    batch = random_batch(model, kind, 64, rng)

    dist, values = model(batch.obs)
    loss, stats = ppo_loss(dist, values, batch, 0.2, config)
    model.zero_grad()
    loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    hand = ppo_hand_gradients(NumpyActorCritic(model), batch, 0.2, config)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=2e-4, atol=2e-6, msg=name)
    for key, value in stats.items():
        assert hand[key] == pytest.approx(float(value), rel=1e-4, abs=1e-6), key
    assert 0.0 < hand["diagnostics/clip_fraction"] < 1.0  # both branches of the clip were exercised


def test_hand_gradients_are_the_default_and_state_dependent_std_falls_back():
    from pgrad.algos.ppo import PPO

    assert PPO(PPOConfig(), 4, ActionSpec("discrete", 2)).hand_gradients is not None
    assert PPO(PPOConfig(hand_gradients=False), 4, ActionSpec("discrete", 2)).hand_gradients is None
    assert PPO(PPOConfig(state_dependent_std=True), 4, ActionSpec("continuous", 2)).hand_gradients is None
