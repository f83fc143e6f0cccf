"""The loss functions as pure functions of tensors: hand-computed values, masks of any shape (a
[B, T] token mask gives the 1-D loss of the valid entries), no host copies (they run on the meta
device, which has no data), and the batch statistics that must ignore masked steps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pgrad.algos.a2c import A2C, A2CConfig
from pgrad.algos.common import LossTerms, actor_critic_loss, optimizer_step
from pgrad.algos.ppo import ppo_loss
from pgrad.algos.ppo_kl import ppo_kl_loss
from pgrad.algos.reinforce import reinforce_loss
from pgrad.algos.trpo import trpo_surrogate
from pgrad.nets import ActionSpec
from pgrad.rollout import Rollout, rollout_to_batch


def tensors(shape: tuple[int, ...], device: str = "cpu", seed: int = 0) -> dict[str, torch.Tensor]:
    """Every tensor a loss may take, of one shape; about a third of the mask is 0."""
    generator = torch.Generator().manual_seed(seed)

    def normal(scale: float = 1.0) -> torch.Tensor:
        return (scale * torch.randn(shape, generator=generator, dtype=torch.float64)).to(device)

    old_log_probs = -1.0 + 0.3 * normal()
    return {
        "log_probs": (old_log_probs + 0.3 * normal()).requires_grad_(),
        "old_log_probs": old_log_probs,
        "advantages": normal(),
        "values": normal().requires_grad_(),
        "old_values": normal(0.5),
        "returns": normal(),
        "entropy": (1.0 + 0.1 * normal()).requires_grad_(),
        "kl": (0.1 * normal()).abs().requires_grad_(),
        "weights": normal(),
        "mask": (torch.rand(shape, generator=generator, dtype=torch.float64) > 0.33).double().to(device),
    }


def call(name: str, t: dict[str, torch.Tensor]) -> LossTerms | torch.Tensor:
    """Each loss with non-trivial coefficients (every option that changes the value switched on)."""
    common = {"mask": t["mask"]}
    if name == "ppo":
        return ppo_loss(
            log_probs=t["log_probs"],
            old_log_probs=t["old_log_probs"],
            advantages=t["advantages"],
            values=t["values"],
            returns=t["returns"],
            entropy=t["entropy"],
            clip_eps=0.2,
            vf_coef=0.7,
            ent_coef=0.01,
            norm_adv=True,
            clip_vf=0.3,
            old_values=t["old_values"],
            **common,
        )
    if name == "ppo_kl":
        return ppo_kl_loss(
            log_probs=t["log_probs"],
            old_log_probs=t["old_log_probs"],
            advantages=t["advantages"],
            kl=t["kl"],
            values=t["values"],
            returns=t["returns"],
            entropy=t["entropy"],
            kl_coef=0.8,
            vf_coef=0.7,
            ent_coef=0.01,
            norm_adv=True,
            **common,
        )
    if name == "actor_critic":  # A2C's, A3C's and n-step actor-critic's one loss
        return actor_critic_loss(
            log_probs=t["log_probs"],
            advantages=t["advantages"],
            values=t["values"],
            returns=t["returns"],
            entropy=t["entropy"],
            vf_coef=0.7,
            ent_coef=0.01,
            norm_adv=True,
            **common,
        )
    if name == "reinforce":
        return reinforce_loss(
            log_probs=t["log_probs"],
            weights=t["weights"],
            entropy=t["entropy"],
            ent_coef=0.01,
            norm_adv=True,
            **common,
        )
    return trpo_surrogate(
        log_probs=t["log_probs"], old_log_probs=t["old_log_probs"], advantages=t["advantages"], **common
    )


def named_terms(result: LossTerms | torch.Tensor) -> dict[str, torch.Tensor]:
    if isinstance(result, torch.Tensor):
        return {"loss": result}
    return {"loss": result.loss, **result.metrics()}


LOSSES = ["ppo", "ppo_kl", "actor_critic", "reinforce", "trpo"]
DIFFERENTIABLE = ("log_probs", "values", "entropy", "kl")


@pytest.mark.parametrize("name", LOSSES)
def test_a_2d_mask_gives_the_1d_loss_of_the_valid_entries(name):
    """Token-level use: [B, T] tensors with a padding mask equal the flat loss over the kept tokens,
    in every term and in the gradient (zero on the padding)."""
    grid = tensors((3, 7))
    flat = {key: value.detach()[grid["mask"].bool()].requires_grad_(value.requires_grad) for key, value in grid.items()}
    flat["mask"] = torch.ones_like(flat["mask"])
    assert 0 < len(flat["mask"]) < 21
    grid_terms, flat_terms = named_terms(call(name, grid)), named_terms(call(name, flat))
    assert grid_terms.keys() == flat_terms.keys()
    for key in grid_terms:
        torch.testing.assert_close(grid_terms[key], flat_terms[key], rtol=1e-12, atol=1e-12, msg=key)
    used = [key for key in DIFFERENTIABLE if grid[key].requires_grad]
    grid_grads = torch.autograd.grad(grid_terms["loss"], [grid[k] for k in used], allow_unused=True)
    flat_grads = torch.autograd.grad(flat_terms["loss"], [flat[k] for k in used], allow_unused=True)
    for key, grid_grad, flat_grad in zip(used, grid_grads, flat_grads, strict=True):
        if flat_grad is None:
            assert grid_grad is None or not grid_grad.any(), key
            continue
        padding = ~grid["mask"].bool()
        assert not grid_grad[padding].any(), key
        torch.testing.assert_close(grid_grad[~padding], flat_grad, rtol=1e-12, atol=1e-12, msg=key)


@pytest.mark.parametrize("name", LOSSES)
def test_losses_make_no_host_copy(name):
    """On the meta device (shapes, no data) any .numpy(), .item() or float() would raise: the losses
    stay on the tensors' device, as a GPU run needs."""
    terms = named_terms(call(name, tensors((2, 5), device="meta")))
    assert all(value.device.type == "meta" and value.dim() == 0 for value in terms.values())


def test_ppo_guide_value_ratio_1_3_gradient_is_zero():
    # ratio 1.3, eps 0.2, A = +1: min(1.3 A, 1.2 A) = 1.2 A does not depend on theta.
    log_probs = torch.tensor([math.log(1.3)], requires_grad=True)
    one, zero = torch.ones(1), torch.zeros(1)
    terms = ppo_loss(
        log_probs=log_probs,
        old_log_probs=zero,
        advantages=one,
        values=zero,
        returns=zero,
        entropy=zero,
        mask=one,
        clip_eps=0.2,
        vf_coef=0.5,
        ent_coef=0.0,
        norm_adv=False,
    )
    (gradient,) = torch.autograd.grad(terms.loss, log_probs)
    assert gradient.item() == 0.0
    assert terms.policy_loss.item() == pytest.approx(-1.2) and terms.clip_fraction.item() == 1.0
    assert terms.approx_kl.item() == pytest.approx(0.3 - math.log(1.3), rel=1e-5)


def test_ppo_loss_hand_values():
    # Two entries, the second masked. r = 0.9, A = 2: min(1.8, 1.8) = 1.8; V - R = 1 -> value 1;
    # clipped value: V_old = 0.5, clip(2 - 0.5, -1, 1) -> 1.5, (1.5 - 1)^2 = 0.25 < 1, so 1 stays.
    log_probs = torch.tensor([math.log(0.9), 5.0])
    terms = ppo_loss(
        log_probs=log_probs,
        old_log_probs=torch.zeros(2),
        advantages=torch.tensor([2.0, 100.0]),
        values=torch.tensor([2.0, -9.0]),
        returns=torch.tensor([1.0, 9.0]),
        entropy=torch.tensor([0.6, 50.0]),
        mask=torch.tensor([1.0, 0.0]),
        clip_eps=0.2,
        vf_coef=0.5,
        ent_coef=0.1,
        norm_adv=False,
        clip_vf=1.0,
        old_values=torch.tensor([0.5, 0.0]),
    )
    assert terms.policy_loss.item() == pytest.approx(-1.8)
    assert terms.value_loss.item() == pytest.approx(1.0)
    assert terms.entropy.item() == pytest.approx(0.6)
    assert terms.loss.item() == pytest.approx(-1.8 + 0.5 * 1.0 - 0.1 * 0.6)
    assert terms.clip_fraction.item() == 0.0


def test_actor_critic_loss_hand_values():
    # A2C's, A3C's and actor-critic's one loss. pi uniform over 2 actions: log pi = log 0.5, H = log 2;
    # A = [1, -2]; V - R = [-0.5, 1].
    terms = actor_critic_loss(
        log_probs=torch.full((2,), math.log(0.5)),
        advantages=torch.tensor([1.0, -2.0]),
        values=torch.tensor([0.5, 1.0]),
        returns=torch.tensor([1.0, 0.0]),
        entropy=torch.full((2,), math.log(2)),
        mask=torch.ones(2),
        vf_coef=0.5,
        ent_coef=0.1,
        norm_adv=False,
    )
    assert terms.policy_loss.item() == pytest.approx(math.log(0.5) / 2)
    assert terms.value_loss.item() == pytest.approx(0.625)
    assert terms.loss.item() == pytest.approx(math.log(0.5) / 2 + 0.5 * 0.625 - 0.1 * math.log(2))


def test_reinforce_loss_hand_value():
    # -(2 log 0.25 - 1 log 0.5) / 2 - 0.1 * (1 + 2) / 2; the masked third entry counts nowhere.
    terms = reinforce_loss(
        log_probs=torch.tensor([math.log(0.25), math.log(0.5), -7.0]),
        weights=torch.tensor([2.0, -1.0, 50.0]),
        entropy=torch.tensor([1.0, 2.0, 9.0]),
        mask=torch.tensor([1.0, 1.0, 0.0]),
        ent_coef=0.1,
        norm_adv=False,
    )
    policy = -(2 * math.log(0.25) - math.log(0.5)) / 2
    assert terms.policy_loss.item() == pytest.approx(policy)
    assert terms.loss.item() == pytest.approx(policy - 0.1 * 1.5)


def test_trpo_surrogate_hand_value():
    surrogate = trpo_surrogate(
        log_probs=torch.log(torch.tensor([1.3, 0.7])),
        old_log_probs=torch.zeros(2),
        advantages=torch.tensor([1.0, 2.0]),
        mask=torch.tensor([1.0, 0.0]),
    )
    assert surrogate.item() == pytest.approx(1.3)


def test_optimizer_step_clips_over_every_parameter_and_steps_every_optimizer():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
    first, second = torch.optim.SGD([a], lr=1.0), torch.optim.SGD([b], lr=1.0)
    loss = (torch.tensor([3.0, 0.0]) * a).sum() + 4.0 * b.sum()  # gradient (3, 0, 4): norm 5
    before, after = optimizer_step((first, second), [a, b], loss, max_grad_norm=1.0)
    assert (before, after) == (pytest.approx(5.0), 1.0)
    torch.testing.assert_close(torch.cat([a.detach(), b.detach()]), -torch.tensor([3.0, 0.0, 4.0]) / (5.0 + 1e-6))
    # loss=None: the gradients already set are applied (the NumPy backend's path); max_grad_norm None:
    # nothing clipped, the norm comes back as a tensor (the replay learners' step: no host copy)
    a.grad, b.grad = torch.tensor([0.3, 0.0]), torch.tensor([0.4])
    norm = optimizer_step(first, [a, b], None, None)
    assert isinstance(norm, torch.Tensor) and norm.item() == pytest.approx(0.5)
    torch.testing.assert_close(a.detach(), torch.tensor([-3.0 / (5.0 + 1e-6) - 0.3, 0.0]))
    torch.testing.assert_close(b.grad, torch.tensor([0.4]))  # not clipped; ``second`` did not step
    torch.testing.assert_close(b.detach(), torch.tensor([-4.0 / (5.0 + 1e-6)]))


def test_optimizer_step_drops_earlier_gradients_before_the_backward():
    # gradients accumulate in torch; the one step sets them (zero_grad(set_to_none) of the LM loops before)
    a = torch.nn.Parameter(torch.ones(2))
    a.grad = torch.tensor([100.0, 100.0])
    optimizer = torch.optim.SGD([a], lr=0.5)
    before, after = optimizer_step(optimizer, [a], (a * torch.tensor([1.0, 2.0])).sum(), max_grad_norm=10.0)
    assert (before, after) == (pytest.approx(5**0.5), pytest.approx(5**0.5))
    torch.testing.assert_close(a.detach(), torch.tensor([0.5, 0.0]))


# ---- batch statistics ignore masked (autoreset) steps ------------------------------------------


def masked_rollout() -> Rollout:
    """2 steps x 3 envs; env 1's second step is an autoreset step (invalid)."""
    valid = np.array([[True, True, True], [True, False, True]])
    return Rollout(
        obs=np.arange(9, dtype=np.float32).reshape(3, 3, 1),
        actions=np.zeros((2, 3), np.int64),
        rewards=np.ones((2, 3), np.float32),
        terminated=np.zeros((2, 3), bool),
        truncated=np.zeros((2, 3), bool),
        valid=valid,
    )


def test_rollout_to_batch_statistics_cover_valid_steps_only():
    rollout = masked_rollout()
    values = np.array([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0]], np.float32)
    advantages = np.array([[1.0, 2.0, 3.0], [4.0, 1000.0, 6.0]], np.float32)
    returns = values[:-1] + advantages
    batch, stats = rollout_to_batch(rollout, values, advantages, returns)
    kept = np.array([1.0, 2.0, 3.0, 4.0, 6.0])
    assert stats["diagnostics/advantage_mean"] == pytest.approx(kept.mean())
    assert stats["diagnostics/advantage_std"] == pytest.approx(kept.std())
    assert stats["diagnostics/valid_fraction"] == pytest.approx(5 / 6)
    assert stats["diagnostics/explained_variance"] == pytest.approx(1 - kept.var() / returns[rollout.valid].var())
    np.testing.assert_array_equal(batch.advantages.numpy(), [1, 2, 3, 4, 0, 6])  # zeroed, and masked
    np.testing.assert_array_equal(batch.mask.numpy(), [1, 1, 1, 1, 0, 1])
    np.testing.assert_array_equal(batch.values.numpy(), values[:-1].reshape(-1))
    assert not batch.log_probs.any()

    dropped, same_stats = rollout_to_batch(rollout, values, advantages, returns, valid_only=True)
    assert same_stats == stats
    np.testing.assert_array_equal(dropped.advantages.numpy(), kept)
    np.testing.assert_array_equal(dropped.obs.numpy()[:, 0], [0, 1, 2, 3, 5])
    assert dropped.mask.all() and len(dropped) == 5


def test_a2c_advantage_mean_ignores_autoreset_steps():
    # Before, A2C averaged the zeros it writes on autoreset steps into diagnostics/advantage_mean.
    torch.manual_seed(0)
    algo = A2C(A2CConfig(num_steps=2), 1, ActionSpec("discrete", 2))
    batch, stats = algo.prepare(masked_rollout())
    valid = batch.mask.bool()
    assert stats["diagnostics/advantage_mean"] == pytest.approx(float(batch.advantages[valid].mean()), rel=1e-6)
    assert stats["diagnostics/advantage_mean"] != pytest.approx(float(batch.advantages.mean()), rel=1e-3)


def test_batch_to_the_device_it_is_on_is_the_batch_itself():
    batch, _ = rollout_to_batch(masked_rollout(), np.zeros((3, 3), np.float32), np.zeros((2, 3)), np.zeros((2, 3)))
    assert batch.to("cpu") is batch
    moved = batch.to("meta")
    assert moved.obs.device.type == "meta" and moved.obs.shape == batch.obs.shape


def test_advantage_normalisation_uses_the_sample_std_of_the_valid_entries():
    # SB3 and CleanRL divide by torch's std() (n - 1); the population std made every PPO policy
    # gradient 0.8 % larger than theirs at minibatch 64 (tests/test_sb3_parity.py compares whole updates).
    from pgrad.algos.numpy_grad import normalize_advantages as normalize_numpy
    from pgrad.numerics import masked_whiten

    advantages = torch.tensor([1.0, -2.0, 0.5, 4.0, 9.0])
    mask = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])
    valid = advantages[:4]
    expected = (valid - valid.mean()) / (valid.std() + 1e-8)
    torch.testing.assert_close(masked_whiten(advantages, mask)[:4], expected)
    weights = (mask / mask.sum()).numpy()
    np.testing.assert_allclose(normalize_numpy(advantages.numpy(), weights)[:4], expected.numpy(), rtol=1e-6)
