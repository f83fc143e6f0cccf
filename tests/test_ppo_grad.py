"""The NumPy backend's PPO gradient (ppo_hand_gradients) equals autograd of ppo_loss, and so do its
loss terms; the backend is chosen (auto) only where it implements the setting, and refused (numpy)
elsewhere with a ConfigError that names the field."""

import itertools

import numpy as np
import pytest
import torch

from pgrad.algos.numpy_grad import NumpyActorCritic
from pgrad.algos.ppo import PPO, PPOConfig, ppo_hand_gradients, ppo_loss
from pgrad.config import NetworkConfig
from pgrad.errors import ConfigError
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
        obs,
        actions,
        old,
        old_values,
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
    coefficients = dict(clip_eps=0.2, vf_coef=0.7, ent_coef=0.01, norm_adv=norm_adv, clip_vf=clip_vf)
    batch = random_batch(model, kind, 64, rng)

    dist, values = model(batch.obs)
    terms = ppo_loss(
        log_probs=dist.log_prob(batch.actions),
        old_log_probs=batch.log_probs,
        advantages=batch.advantages,
        values=values,
        returns=batch.returns,
        entropy=dist.entropy(),
        mask=batch.mask,
        old_values=batch.values,
        **coefficients,
    )
    model.zero_grad()
    terms.loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    hand = ppo_hand_gradients(NumpyActorCritic(model), batch, **coefficients)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=2e-4, atol=2e-6, msg=name)
    metrics = terms.metrics()
    assert set(hand) == set(metrics)
    for key, value in metrics.items():
        assert hand[key] == pytest.approx(float(value), rel=1e-4, abs=1e-6), key
    assert 0.0 < hand["diagnostics/clip_fraction"] < 1.0  # both branches of the clip were exercised


def test_auto_picks_numpy_on_the_cpu_and_autograd_where_numpy_lacks_the_setting():
    discrete, continuous = ActionSpec("discrete", 2), ActionSpec("continuous", 2)
    assert PPO(PPOConfig(), 4, discrete).gradient_backend == "numpy"
    assert PPO(PPOConfig(gradient_backend="autograd"), 4, discrete).numpy_net is None
    state_dependent = NetworkConfig(state_dependent_std=True)
    assert PPO(PPOConfig(network=state_dependent), 4, continuous).gradient_backend == "autograd"


def test_numpy_backend_refuses_what_it_does_not_implement():
    with pytest.raises(ConfigError) as error:
        PPOConfig(gradient_backend="numpy", network=NetworkConfig(state_dependent_std=True))
    assert str(error.value) == (
        "ppo.gradient_backend must be 'auto' or 'autograd' when network.state_dependent_std is true "
        "(the backend has a state-independent log std only); got 'numpy'"
    )
    # The device is only known when the learner is built; the refusal comes before anything touches CUDA.
    with pytest.raises(
        ConfigError,
        match=r"ppo.gradient_backend must be 'auto' or 'autograd' when run.device is "
        r"'cuda:0' \(the backend runs on the CPU only\); got 'numpy'",
    ):
        PPO(PPOConfig(gradient_backend="numpy"), 4, ActionSpec("discrete", 2), "cuda:0")
