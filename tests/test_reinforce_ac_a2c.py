"""REINFORCE, actor-critic and A2C: the estimators' hand values, the baseline's effect on the
gradient, the losses, whole-episode collection, learning from a fixed seed, Pendulum, exact resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pgrad.algos.a2c import A2C, A2CConfig, a2c_batch_loss, a2c_hand_gradients
from pgrad.algos.actor_critic import ActorCriticAlgorithm, ActorCriticConfig
from pgrad.algos.common import actor_critic_loss
from pgrad.algos.numpy_grad import NumpyActorCritic
from pgrad.algos.reinforce import Reinforce, ReinforceConfig, reinforce_loss
from pgrad.config import EnvConfig, NetworkConfig
from pgrad.distributions import Categorical
from pgrad.envs.factory import SpaceAdapter, make_vector_env
from pgrad.envs.normalize import ObsNormalizer, RewardScaler
from pgrad.errors import ConfigError
from pgrad.nets import ActionSpec
from pgrad.rollout import Batch, Rollout, RolloutCollector
from pgrad.runners.on_policy import OnPolicyRunner
from pgrad.runs import resolve_config

# ---- the baseline: unbiased, lower variance ----------------------------------------------------

BANDIT_MEANS = torch.tensor([10.0, 11.0, 13.0])  # a large common offset makes the baseline matter
BANDIT_NOISE = 0.5


def bandit_gradient_estimates(baseline: float, batches: int, batch_size: int, seed: int) -> torch.Tensor:
    """``batches`` REINFORCE estimates of grad_theta E[r] for a softmax bandit, each from
    ``batch_size`` samples through ``reinforce_loss`` (so the test covers the loss as written)."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.tensor([0.2, -0.3, 0.1], requires_grad=True)
    estimates = []
    for _ in range(batches):
        probs = torch.softmax(logits.detach(), -1)
        actions = torch.multinomial(probs, batch_size, replacement=True, generator=generator)
        rewards = BANDIT_MEANS[actions] + BANDIT_NOISE * torch.randn(batch_size, generator=generator)
        dist = Categorical(logits.expand(batch_size, 3))
        terms = reinforce_loss(
            log_probs=dist.log_prob(actions),
            weights=rewards - baseline,
            entropy=dist.entropy(),
            mask=torch.ones(batch_size),
            ent_coef=0.0,
            norm_adv=False,
        )
        (gradient,) = torch.autograd.grad(-terms.loss, logits)  # ascent direction
        estimates.append(gradient)
    return torch.stack(estimates)


def test_baseline_keeps_the_expected_gradient_and_lowers_its_variance():
    logits = torch.tensor([0.2, -0.3, 0.1])
    probs = torch.softmax(logits, -1)
    # d/dtheta sum_a pi_a mu_a = pi * (mu - pi . mu) for a softmax policy.
    true_gradient = probs * (BANDIT_MEANS - (probs * BANDIT_MEANS).sum())
    value = float((probs * BANDIT_MEANS).sum())  # b = V = E[r], the state value

    without = bandit_gradient_estimates(0.0, 2000, 4, seed=0)
    with_baseline = bandit_gradient_estimates(value, 2000, 4, seed=0)
    for estimates in (without, with_baseline):
        standard_error = estimates.std(0) / math.sqrt(len(estimates))
        assert torch.all((estimates.mean(0) - true_gradient).abs() < 4 * standard_error + 1e-6)
    variance_without = estimates_variance(without)
    variance_with = estimates_variance(with_baseline)
    # The offset of ~11 dominates without a baseline; with it only the spread of the arms remains.
    assert variance_with < 0.05 * variance_without


def estimates_variance(estimates: torch.Tensor) -> float:
    return float(estimates.var(0).sum())


# ---- losses -----------------------------------------------------------------------------------


def two_step_batch(mask: tuple[float, ...] = (1.0, 1.0)) -> Batch:
    return Batch(
        obs=torch.zeros(len(mask), 1),
        actions=torch.tensor([0, 1]),
        log_probs=torch.zeros(2),
        values=torch.zeros(2),
        advantages=torch.tensor([1.0, -2.0]),
        returns=torch.tensor([1.0, 0.0]),
        mask=torch.tensor(mask),
    )


def test_a2c_loss_hand_value():
    # pi uniform over 2 actions: log pi = log 0.5, H = log 2.
    # policy = -mean(log 0.5 * [1, -2]) = log(0.5) / 2; value = mean([0.25, 1]) = 0.625.
    terms = a2c_batch_loss(
        Categorical(torch.zeros(2, 2)),
        torch.tensor([0.5, 1.0]),
        two_step_batch(),
        vf_coef=0.5,
        ent_coef=0.1,
        norm_adv=False,
    )
    expected = math.log(0.5) / 2 + 0.5 * 0.625 - 0.1 * math.log(2)
    assert float(terms.loss) == pytest.approx(expected, rel=1e-6)
    assert float(terms.value_loss) == pytest.approx(0.625)
    assert float(terms.entropy) == pytest.approx(math.log(2))


def test_a2c_loss_ignores_masked_steps():
    masked = a2c_batch_loss(
        Categorical(torch.zeros(2, 2)),
        torch.tensor([0.5, 1.0]),
        two_step_batch((1.0, 0.0)),
        vf_coef=0.5,
        ent_coef=0.0,
        norm_adv=False,
    ).loss
    # Only the first step: -log(0.5) * 1 + 0.5 * 0.25.
    assert float(masked) == pytest.approx(-math.log(0.5) + 0.125, rel=1e-6)


def test_actor_critic_target_is_detached():
    """The critic's gradient is the semi-gradient (V(s) - y) grad V(s), even when y = r + gamma V(s')
    is built with gradients from the same critic; the full gradient would differ."""
    torch.manual_seed(0)
    config = ActorCriticConfig(vf_coef=1.0, ent_coef=0.0, network=NetworkConfig(hidden_sizes=(8,)))
    algo = ActorCriticAlgorithm(config, 3, ActionSpec("discrete", 2))
    obs, next_obs = torch.randn(5, 3), torch.randn(5, 3)
    rewards = torch.randn(5)
    value_params = list(algo.model.value_head.parameters())

    def critic_gradient(target: torch.Tensor, loss_fn) -> torch.Tensor:
        batch = Batch(
            obs, torch.zeros(5, dtype=torch.long), torch.zeros(5), torch.zeros(5), torch.zeros(5), target, torch.ones(5)
        )
        dist, values = algo.model(obs)
        loss = loss_fn(dist, values, batch)
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, value_params)])

    def with_grad_target() -> torch.Tensor:
        return rewards + 0.9 * algo.model.value(next_obs)

    def ours_loss(d, v, b):
        return actor_critic_loss(
            log_probs=d.log_prob(b.actions),
            advantages=b.advantages,
            values=v,
            returns=b.returns,
            entropy=d.entropy(),
            mask=b.mask,
            vf_coef=1.0,
            ent_coef=0.0,
            norm_adv=False,
        ).loss

    ours = critic_gradient(with_grad_target(), ours_loss)
    semi = critic_gradient(with_grad_target().detach(), lambda d, v, b: ((v - b.returns) ** 2).mean())
    full = critic_gradient(with_grad_target(), lambda d, v, b: ((v - b.returns) ** 2).mean())
    torch.testing.assert_close(ours, semi)
    assert (ours - full).abs().max() > 1e-3


@pytest.mark.parametrize("shared", [False, True])
def test_actor_critic_separate_learning_rates_cover_every_parameter_once(shared):
    config = ActorCriticConfig(
        network=NetworkConfig(shared_network=shared),
        optimizer={"learning_rate": 1e-3},
        critic_optimizer={"learning_rate": 5e-3},
    )
    algo = ActorCriticAlgorithm(config, 4, ActionSpec("continuous", 2))
    actor = {id(p) for group in algo.actor_optimizer.param_groups for p in group["params"]}
    critic = {id(p) for group in algo.critic_optimizer.param_groups for p in group["params"]}
    assert not actor & critic and actor | critic == {id(p) for p in algo.model.parameters()}
    assert id(algo.model.log_std) in actor and all(id(p) in critic for p in algo.model.value_head.parameters())
    torso = {id(p) for p in algo.model.actor_torso.parameters()}
    assert torso <= actor  # a shared torso learns at the actor's rate
    assert algo.actor_optimizer.param_groups[0]["lr"] == 1e-3 and algo.critic_optimizer.param_groups[0]["lr"] == 5e-3


# ---- prepare on hand-made rollouts ---------------------------------------------------------------


def hand_rollout() -> Rollout:
    """One env, gamma 0.5: an episode of 2 steps that terminates (t = 0, 1), an autoreset step (t = 2),
    an episode truncated after 1 step (t = 3), an autoreset step (t = 4). Observations encode t."""
    obs = np.arange(6, dtype=np.float32).reshape(6, 1, 1)
    return Rollout(
        obs=obs,
        actions=np.zeros((5, 1), np.int64),
        rewards=np.array([[1.0], [2.0], [0.0], [4.0], [0.0]], np.float32),
        terminated=np.array([[False], [True], [False], [False], [False]]),
        truncated=np.array([[False], [False], [False], [True], [False]]),
        valid=np.array([[True], [True], [False], [True], [False]]),
    )


def constant_critic(model, value: float) -> None:
    """Make V(s) = value everywhere (zero weights in the value head, bias = value)."""
    with torch.no_grad():
        model.value_head.weight.zero_()
        model.value_head.bias.fill_(value)


def test_actor_critic_td0_prepare_hand_values():
    algo = ActorCriticAlgorithm(ActorCriticConfig(gamma=0.5, nstep_horizon=1), 1, ActionSpec("discrete", 2))
    constant_critic(algo.model, 2.0)
    batch, _ = algo.prepare(hand_rollout())
    # y = r + 0.5 (1 - terminated) V(s'), V = 2: [1 + 1, 2 + 0, -, 4 + 1 (truncated bootstraps), -]
    np.testing.assert_allclose(batch.returns.numpy()[[0, 1, 3]], [2.0, 2.0, 5.0])
    np.testing.assert_allclose(batch.advantages.numpy(), [0.0, 0.0, 0.0, 3.0, 0.0])
    np.testing.assert_array_equal(batch.mask.numpy(), [1, 1, 0, 1, 0])


def test_reinforce_prepare_reward_to_go_and_truncation():
    rollout = hand_rollout()
    plain = Reinforce(ReinforceConfig(gamma=0.5, baseline=False), 1, ActionSpec("discrete", 2))
    batch, _ = plain.prepare(rollout)
    # Invalid steps are dropped; G = [1 + 0.5 * 2, 2, 4]: without a baseline the cut is not bootstrapped.
    np.testing.assert_allclose(batch.returns.numpy(), [2.0, 2.0, 4.0])
    np.testing.assert_allclose(batch.advantages.numpy(), [2.0, 2.0, 4.0])
    np.testing.assert_allclose(batch.obs.numpy()[:, 0], [0.0, 1.0, 3.0])

    with_baseline = Reinforce(ReinforceConfig(gamma=0.5, baseline=True), 1, ActionSpec("discrete", 2))
    constant_critic(with_baseline.model, 2.0)
    batch, _ = with_baseline.prepare(rollout)
    # The truncated step bootstraps from V(final observation) = 2: 4 + 0.5 * 2 = 5; A = G - 2.
    np.testing.assert_allclose(batch.returns.numpy(), [2.0, 2.0, 5.0])
    np.testing.assert_allclose(batch.advantages.numpy(), [0.0, 0.0, 3.0])


def test_a2c_nstep_equals_gae_lambda_one_over_the_rollout():
    rng = np.random.default_rng(0)
    rollout = Rollout(
        obs=rng.standard_normal((6, 3, 4)).astype(np.float32),
        actions=rng.integers(0, 2, (5, 3)),
        rewards=rng.standard_normal((5, 3)).astype(np.float32),
        terminated=rng.random((5, 3)) < 0.2,
        truncated=rng.random((5, 3)) < 0.2,
        valid=np.ones((5, 3), bool),
    )
    torch.manual_seed(0)
    gae_algo = A2C(A2CConfig(advantage="gae", gae_lambda=1.0), 4, ActionSpec("discrete", 2))
    nstep_algo = A2C(A2CConfig(advantage="nstep"), 4, ActionSpec("discrete", 2))
    nstep_algo.model.load_state_dict(gae_algo.model.state_dict())
    gae_batch, _ = gae_algo.prepare(rollout)
    nstep_batch, _ = nstep_algo.prepare(rollout)
    torch.testing.assert_close(gae_batch.returns, nstep_batch.returns)
    torch.testing.assert_close(gae_batch.advantages, nstep_batch.advantages)


# ---- whole episodes ------------------------------------------------------------------------------


def scripted_collector(num_envs: int, length: int) -> RolloutCollector:
    cfg = EnvConfig(id="pgrad.envs.toy:ScriptedEnv", num_envs=num_envs, kwargs={"episode_length": length})
    envs = make_vector_env(cfg)
    adapter = SpaceAdapter(envs.single_observation_space, envs.single_action_space, True)
    collector = RolloutCollector(
        envs, adapter, ObsNormalizer((1,), 10.0, False), RewardScaler(num_envs, 0.99, 10.0, False), episode_window=10
    )
    collector.reset(seed=0)
    return collector


def test_collect_episodes_runs_a_fixed_quota_per_env():
    collector = scripted_collector(num_envs=2, length=3)
    policy = Reinforce(ReinforceConfig(), 1, ActionSpec("discrete", 2)).acting_policy()
    rng = np.random.default_rng(0)
    collector.collect(policy, rng, num_steps=2)  # leave both envs mid-episode
    rollout = collector.collect_episodes(policy, rng, num_episodes=3)
    # Quotas [2, 1]: env 0 runs t = 0-2, autoresets at 3, runs 4-6; env 1 stops counting after t = 2.
    assert rollout.num_steps == 7
    np.testing.assert_array_equal(rollout.valid[:, 0], [1, 1, 1, 0, 1, 1, 1])
    np.testing.assert_array_equal(rollout.valid[:, 1], [1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(rollout.obs[:3, :, 0], [[0, 0], [1, 1], [2, 2]])  # fresh episodes
    assert collector.episodes.count == 3 and list(collector.episodes.returns) == [3.0, 3.0, 3.0]
    done = rollout.terminated | rollout.truncated
    assert int((done & rollout.valid).sum()) == 3


def test_reinforce_needs_an_episode_per_env():
    with pytest.raises(ConfigError, match="num_episodes"):
        resolve_config("reinforce", "CartPole-v1", sets=["num_episodes=4", "env.num_envs=8"])


# ---- learning, Pendulum, resume ------------------------------------------------------------------


class StopAt:
    """A metrics sink that stops training once the last-20-episode mean reaches ``threshold``."""

    def __init__(self, trainer: OnPolicyRunner, threshold: float) -> None:
        self.trainer, self.threshold, self.reached_at = trainer, threshold, None

    def write(self, metrics: dict) -> None:
        if metrics.get("rollout/episodes", 0) >= 20 and metrics.get("rollout/return_mean", 0.0) >= self.threshold:
            self.reached_at = self.reached_at or metrics["step"]
            self.trainer.stop_requested = True

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("algo", "budget"),
    # Seed 1 with the CartPole presets reaches 150 at about 13k (a2c), 13k (actor_critic) and 24k
    # (reinforce) steps; the budgets leave room and each test takes a few seconds.
    [("a2c", 30_000), ("actor_critic", 30_000), ("reinforce", 50_000)],
)
def test_learns_cartpole_from_fixed_seed(algo, budget, tmp_path, quiet_sets):
    config, _ = resolve_config(algo, "CartPole-v1", sets=quiet_sets, seed=1, total_steps=budget)
    trainer = OnPolicyRunner(config, tmp_path, console=False)
    stop = StopAt(trainer, 150.0)
    trainer.sinks.append(stop)
    trainer.train()
    assert stop.reached_at is not None and stop.reached_at <= budget


@pytest.mark.parametrize(
    ("algo", "sets"),
    [
        ("a2c", ["env.num_envs=4"]),
        ("actor_critic", ["env.num_envs=4"]),
        ("reinforce", ["env.num_envs=4", "num_episodes=4"]),
    ],
)
def test_takes_updates_on_pendulum_with_finite_metrics(algo, sets, tmp_path, quiet_sets):
    config, _ = resolve_config(algo, "Pendulum-v1", sets=[*quiet_sets, *sets], seed=1, total_steps=1600)
    trainer = OnPolicyRunner(config, tmp_path, console=False)
    before = {k: v.clone() for k, v in trainer.algo.model.state_dict().items()}
    result = trainer.train()
    assert result.updates >= 2
    metrics = result.last_metrics
    for key in ("train/policy_loss", "diagnostics/entropy", "diagnostics/log_std_mean"):
        assert math.isfinite(metrics[key]), key
    for key, value in metrics.items():
        if isinstance(value, float) and key != "diagnostics/explained_variance":  # NaN when Var[returns] = 0
            assert math.isfinite(value), key
    after = trainer.algo.model.state_dict()
    assert not torch.equal(before["log_std"], after["log_std"])  # the Gaussian policy was updated


@pytest.mark.parametrize(("algo", "total"), [("a2c", 2000), ("actor_critic", 2048), ("reinforce", 3000)])
def test_resume_is_exact(algo, total, tmp_path, quiet_sets):
    sets = [*quiet_sets, "run.checkpoint_every=100000000"]
    config, _ = resolve_config(algo, "CartPole-v1", sets=sets, seed=3, total_steps=total)
    straight = OnPolicyRunner(config, tmp_path / "straight", console=False)
    straight.train()
    first = OnPolicyRunner(config, tmp_path / "split", console=False)
    first.train(stop_at_step=total // 2)
    assert 0 < first.step < total
    resumed = OnPolicyRunner(config, tmp_path / "split", resume=True, console=False)
    resumed.train()
    assert resumed.step == straight.step
    expected, got = straight.algo.model.state_dict(), resumed.algo.model.state_dict()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    for name, optimizer in straight.algo.optimizers().items():
        other = resumed.algo.optimizers()[name].state_dict()["state"]
        for index, state in optimizer.state_dict()["state"].items():
            for key, value in state.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(other[index][key])), (name, key)


# ---- A2C's hand-derived gradient equals autograd of a2c_loss --------------------------------------


@pytest.mark.parametrize("kind", ["discrete", "continuous"])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("norm_adv", [False, True])
def test_a2c_hand_gradients_equal_autograd(kind, shared, activation, norm_adv):
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    action = ActionSpec(kind, 3 if kind == "discrete" else 2)
    network = NetworkConfig(hidden_sizes=(16, 8), activation=activation, shared_network=shared, log_std_init=-0.3)
    config = A2CConfig(ent_coef=0.01, vf_coef=0.7, norm_adv=norm_adv, network=network)
    algo = A2C(config, 5, action)
    with torch.no_grad():  # a policy far from uniform, so every term has a sizeable gradient
        algo.model.policy_head.weight.mul_(50.0)
    n = 48
    actions = rng.integers(0, 3, size=n) if kind == "discrete" else rng.normal(size=(n, 2)).astype(np.float32)
    batch = Batch(
        obs=torch.from_numpy(rng.normal(size=(n, 5)).astype(np.float32)),
        actions=torch.from_numpy(actions),
        log_probs=torch.zeros(n),
        values=torch.zeros(n),
        advantages=torch.from_numpy(rng.normal(size=n).astype(np.float32)),
        returns=torch.from_numpy(rng.normal(size=n).astype(np.float32)),
        mask=torch.from_numpy((rng.random(n) > 0.15).astype(np.float32)),
    )
    dist, values = algo.model(batch.obs)
    terms = a2c_batch_loss(dist, values, batch, vf_coef=0.7, ent_coef=0.01, norm_adv=norm_adv)
    algo.model.zero_grad()
    terms.loss.backward()
    expected = {name: p.grad.clone() for name, p in algo.model.named_parameters()}
    algo.model.zero_grad(set_to_none=True)

    net = NumpyActorCritic(algo.model)
    hand = a2c_hand_gradients(
        net, net.forward(batch.obs.numpy(), n), batch, vf_coef=0.7, ent_coef=0.01, norm_adv=norm_adv
    )
    for name, p in algo.model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=2e-4, atol=2e-6, msg=name)
    metrics = terms.metrics()
    assert set(hand) == set(metrics)
    for key, value in metrics.items():
        assert hand[key] == pytest.approx(float(value), rel=1e-4, abs=1e-6), key
