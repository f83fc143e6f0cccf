"""PPO: the loss against its definition, the clipping gradient, early stopping, and learning."""

import math

import numpy as np
import pytest
import torch

from pgrad.algos.common import LossTerms
from pgrad.algos.contract import UpdateContext
from pgrad.algos.ppo import PPO, PPOConfig, ppo_loss
from pgrad.config import OptimizerConfig
from pgrad.distributions import Categorical
from pgrad.nets import ActionSpec
from pgrad.rollout import Batch
from pgrad.runners.on_policy import OnPolicyRunner
from pgrad.runs import resolve_config


def one_sample_batch(old_log_prob: float, advantage: float, mask: float = 1.0) -> Batch:
    return Batch(
        obs=torch.zeros(1, 1),
        actions=torch.tensor([0]),
        log_probs=torch.tensor([old_log_prob]),
        values=torch.tensor([0.0]),
        advantages=torch.tensor([advantage]),
        returns=torch.tensor([0.0]),
        mask=torch.tensor([mask]),
    )


def batch_loss(
    dist, values, batch: Batch, clip_eps: float = 0.2, *, norm_adv=True, vf_coef=0.5, ent_coef=0.0, clip_vf=None
) -> LossTerms:
    """``ppo_loss`` of a distribution and values on a ``Batch``."""
    return ppo_loss(
        log_probs=dist.log_prob(batch.actions),
        old_log_probs=batch.log_probs,
        advantages=batch.advantages,
        values=values,
        returns=batch.returns,
        entropy=dist.entropy(),
        mask=batch.mask,
        clip_eps=clip_eps,
        vf_coef=vf_coef,
        ent_coef=ent_coef,
        norm_adv=norm_adv,
        clip_vf=clip_vf,
        old_values=batch.values,
    )


def test_clipped_objective_has_zero_gradient_beyond_the_clip():
    # ratio 1.3, eps 0.2, advantage +1: min(1.3, 1.2) = 1.2 is constant in theta -> zero gradient.
    logits = torch.tensor([[0.0, 0.0]], requires_grad=True)
    dist = Categorical(logits)
    old = dist.log_prob(torch.tensor([0])).item() - math.log(1.3)
    terms = batch_loss(dist, torch.zeros(1), one_sample_batch(old, 1.0), norm_adv=False, vf_coef=0.0)
    terms.loss.backward()
    assert torch.count_nonzero(logits.grad) == 0
    assert terms.loss.item() == pytest.approx(-1.2)
    assert terms.clip_fraction.item() == 1.0
    # Inside the clip range (ratio 1.1) the gradient is the plain surrogate's: nonzero.
    logits.grad = None
    dist = Categorical(logits)
    old = dist.log_prob(torch.tensor([0])).item() - math.log(1.1)
    batch_loss(dist, torch.zeros(1), one_sample_batch(old, 1.0), norm_adv=False, vf_coef=0.0).loss.backward()
    assert torch.count_nonzero(logits.grad) > 0


def test_negative_advantage_is_clipped_below():
    # ratio 0.7 < 1 - eps with A = -1: min(-0.7, -0.8) = -0.8, clipped -> zero gradient.
    logits = torch.tensor([[0.3, -0.2]], requires_grad=True)
    dist = Categorical(logits)
    old = dist.log_prob(torch.tensor([0])).item() - math.log(0.7)
    loss = batch_loss(dist, torch.zeros(1), one_sample_batch(old, -1.0), norm_adv=False, vf_coef=0.0).loss
    loss.backward()
    assert loss.item() == pytest.approx(0.8)
    assert torch.count_nonzero(logits.grad) == 0


def test_loss_matches_definition_on_random_batch():
    torch.manual_seed(0)
    n = 16
    logits = torch.randn(n, 3)
    dist = Categorical(logits)
    actions = torch.randint(0, 3, (n,))
    old = dist.log_prob(actions) + 0.3 * torch.randn(n)
    values = torch.randn(n)
    batch = Batch(torch.zeros(n, 1), actions, old, torch.randn(n), torch.randn(n), torch.randn(n), torch.ones(n))
    terms = batch_loss(dist, values, batch, norm_adv=True, vf_coef=0.7, ent_coef=0.01, clip_vf=0.5)

    ratio = (dist.log_prob(actions) - old).exp()
    adv = (batch.advantages - batch.advantages.mean()) / (batch.advantages.std() + 1e-8)
    policy = -torch.min(ratio * adv, ratio.clamp(0.8, 1.2) * adv).mean()
    clipped_v = batch.values + (values - batch.values).clamp(-0.5, 0.5)
    value = torch.max((values - batch.returns) ** 2, (clipped_v - batch.returns) ** 2).mean()
    entropy = dist.entropy().mean()
    assert terms.loss.item() == pytest.approx((policy + 0.7 * value - 0.01 * entropy).item(), rel=1e-5)
    assert terms.policy_loss.item() == pytest.approx(policy.item(), rel=1e-5)
    assert terms.value_loss.item() == pytest.approx(value.item(), rel=1e-5)
    approx_kl = ((ratio - 1) - (dist.log_prob(actions) - old)).mean()
    assert terms.approx_kl.item() == pytest.approx(approx_kl.item(), rel=1e-5)
    clipped = ((ratio - 1).abs() > 0.2).float().mean()
    assert terms.clip_fraction.item() == pytest.approx(clipped.item())


def test_masked_steps_do_not_affect_the_loss():
    torch.manual_seed(1)
    logits = torch.randn(4, 2, requires_grad=True)
    actions = torch.tensor([0, 1, 1, 0])
    base = dict(obs=torch.zeros(4, 1), actions=actions, log_probs=torch.full((4,), -0.7), values=torch.zeros(4))
    returns = torch.tensor([1.0, 2.0, 3.0, 4.0])
    a = Batch(
        **base, advantages=torch.tensor([1.0, -1.0, 0.5, 99.0]), returns=returns, mask=torch.tensor([1.0, 1, 1, 0])
    )
    b = Batch(
        **base, advantages=torch.tensor([1.0, -1.0, 0.5, -5.0]), returns=returns, mask=torch.tensor([1.0, 1, 1, 0])
    )
    loss_a = batch_loss(Categorical(logits), torch.zeros(4), a).loss
    loss_b = batch_loss(Categorical(logits), torch.zeros(4), b).loss
    assert loss_a.item() == pytest.approx(loss_b.item())


def test_target_kl_stops_the_update_early():
    torch.manual_seed(0)
    ppo = PPO(
        PPOConfig(
            num_epochs=50,
            minibatch_size=32,
            target_kl=0.001,
            optimizer=OptimizerConfig(learning_rate=0.05, anneal_lr=False),
        ),
        4,
        ActionSpec("discrete", 2),
    )
    n = 64
    obs = torch.randn(n, 4)
    actions = torch.randint(0, 2, (n,))
    with torch.no_grad():
        old = ppo.model.distribution(obs).log_prob(actions)
    batch = Batch(obs, actions, old, torch.zeros(n), torch.randn(n), torch.randn(n), torch.ones(n))
    stats = ppo.update(batch, UpdateContext(progress=0.0, lr_scale=1.0, rng=np.random.default_rng(0)))
    assert stats["train/stopped_early"] == 1.0
    assert 1 <= stats["train/gradient_steps"] < 100


def test_learning_rate_and_clip_annealing():
    ppo = PPO(
        PPOConfig(num_epochs=1, minibatch_size=8, anneal_clip=True, optimizer={"learning_rate": 1e-3}),
        2,
        ActionSpec("discrete", 2),
    )
    batch = Batch(
        torch.zeros(8, 2),
        torch.zeros(8, dtype=torch.long),
        torch.full((8,), -0.69),
        torch.zeros(8),
        torch.randn(8),
        torch.zeros(8),
        torch.ones(8),
    )
    stats = ppo.update(batch, UpdateContext(progress=0.75, lr_scale=1.0, rng=np.random.default_rng(0)))
    assert stats["train/learning_rate"] == pytest.approx(2.5e-4)
    assert stats["train/clip_eps"] == pytest.approx(0.05)
    assert ppo.optimizer.param_groups[0]["lr"] == pytest.approx(2.5e-4)


def train(env_id: str, total: int, tmp_path, extra=()):
    config, _ = resolve_config(
        "ppo", env_id, sets=["run.progress=false", "run.tensorboard=false", *extra], seed=1, total_steps=total
    )
    trainer = OnPolicyRunner(config, tmp_path, console=False)
    return trainer.train()


@pytest.mark.slow  # 50k steps; tests/test_learning_smoke.py keeps a short PPO run in CI
def test_ppo_learns_cartpole_from_fixed_seed(tmp_path):
    # The rl-zoo preset; 50k steps (~8 s here). Threshold well below what it reaches (~450+).
    result = train("CartPole-v1", 50_000, tmp_path)
    assert result.last_metrics["rollout/return_mean"] >= 300


def test_ppo_runs_on_pendulum_with_finite_metrics(tmp_path):
    result = train("Pendulum-v1", 4096, tmp_path, ["ppo.num_steps=256"])
    metrics = result.last_metrics
    for key in ("train/policy_loss", "train/value_loss", "diagnostics/approx_kl", "diagnostics/log_std_mean"):
        assert np.isfinite(metrics[key]), key
    assert metrics["step"] == 4096


@pytest.mark.parametrize("algo", ["ppo", "a2c", "ppo_kl", "trpo", "reinforce", "actor_critic"])
def test_update_applies_the_context_lr_scale_and_reports_the_rate_it_used(algo):
    """The guard's lr scale arrives explicitly; the optimizer runs at scale x schedule and says so."""
    from pgrad.builders import build_algorithm, build_environment

    config, _ = resolve_config(algo, "CartPole-v1", sets=["env.num_envs=2"], use_preset=False)
    env = build_environment(config, 0.99)
    learner = build_algorithm(config, env.adapter)
    from pgrad.rollout import RolloutCollector

    collector = RolloutCollector(env.envs, env.adapter, env.obs_normalizer, env.reward_scaler, 5)
    collector.reset(0)
    rng = np.random.default_rng(0)
    if getattr(learner, "episodes_per_update", None) is not None:
        rollout = collector.collect_episodes(learner.acting_policy(), rng, learner.episodes_per_update)
    else:
        rollout = collector.collect(learner.acting_policy(), rng, learner.rollout_length)
    batch, _ = learner.prepare(rollout)
    metrics = learner.update(batch, UpdateContext(progress=0.5, lr_scale=0.25, rng=rng))
    env.envs.close()
    algo_config = config.algo_config
    if algo == "actor_critic":
        assert metrics["train/actor_learning_rate"] == pytest.approx(0.25 * algo_config.optimizer.learning_rate)
        assert metrics["train/critic_learning_rate"] == pytest.approx(0.25 * algo_config.critic_optimizer.learning_rate)
        return
    optimizer_config = algo_config.value_optimizer if algo == "trpo" else algo_config.optimizer
    base = optimizer_config.learning_rate * (0.5 if optimizer_config.anneal_lr else 1.0)
    assert metrics["train/learning_rate"] == pytest.approx(0.25 * base)
    optimizer = next(iter(learner.optimizers().values()))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.25 * base)
    if algo == "trpo":  # the trust region scales with the guard's lr scale too
        assert metrics["train/max_kl"] == pytest.approx(0.25 * algo_config.max_kl)
        assert metrics["diagnostics/kl_after_step"] <= 0.25 * algo_config.max_kl + 1e-9
        assert "diagnostics/grad_norm" not in metrics and metrics["diagnostics/surrogate_grad_norm"] > 0
