"""SAC with Retrace(lambda) critic targets (issue 28, point 5, ``sac`` with ``loop.q_target=retrace``): the stored
behaviour log-probabilities are the acting policy's, the replay hands them out with their sequences, the critic
target equals a hand computation through the NumPy estimator, lambda = 0 is SAC's one-step soft target (one
sequence step: the whole update equals plain SAC's), pi = mu with lambda = 1 is the n-step soft return, a resumed
run equals the uninterrupted one, and every refusal is one line."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from pgrad import metric_names as names
from pgrad.algos.contract import UpdateContext
from pgrad.algos.off_policy import twin_min, twin_min_target
from pgrad.algos.retrace_sac import BehaviourReplay, RetraceBatch, RetraceSAC
from pgrad.algos.sac import SAC
from pgrad.distributions import TanhGaussian
from pgrad.errors import ConfigError
from pgrad.estimators import retrace, retrace_torch
from pgrad.nets import ActionSpec
from pgrad.replay import TransitionBatch
from pgrad.rollout import Rollout
from pgrad.runners.off_policy import OffPolicyRunner
from pgrad.runs import resolve_config

QUIET = ["run.progress=false", "run.tensorboard=false", "run.checkpoint_every=1000000"]
SMALL = [
    "sac.loop.q_target=retrace",
    "sac.network.hidden_sizes=[16]",
    "sac.loop.batch_size=16",
    "sac.loop.buffer_size=400",
    "sac.loop.log_every=20",
]
GAMMA, ALPHA = 0.9, 0.2


def small_config(total: int, extra: tuple[str, ...] = ()):
    config, _ = resolve_config("sac", "Pendulum-v1", sets=[*QUIET, *SMALL, *extra], total_steps=total, use_preset=False)
    return config


def learner(steps: int, lam: float, seed: int = 3) -> RetraceSAC:
    extra = (f"sac.loop.retrace_steps={steps}", f"sac.loop.retrace_lambda={lam}", f"sac.alpha={ALPHA}")
    config = small_config(100, (*extra, f"sac.gamma={GAMMA}")).algo_config
    torch.manual_seed(seed)
    return RetraceSAC(config, 3, ActionSpec("continuous", 1))


def hand_batch(steps: int, count: int = 2, seed: int = 0) -> RetraceBatch:
    """``count`` sequences of ``steps`` steps of Pendulum-shaped data; column 1's episode terminates at step 1."""
    g = torch.Generator().manual_seed(seed)
    terminated = torch.zeros(steps, count)
    if steps > 1:
        terminated[1, 1] = 1.0
    return RetraceBatch(
        obs=torch.randn(steps + 1, count, 3, generator=g),
        actions=torch.rand(steps, count, 1, generator=g) * 1.8 - 0.9,
        rewards=torch.randn(steps, count, generator=g),
        terminated=terminated,
        truncated=torch.zeros(steps, count),
        starts=torch.zeros(steps + 1, count, dtype=torch.bool),
        mask=torch.ones(steps, count, dtype=torch.bool),
        states=torch.zeros(count, 0),
        behaviour_log_probs=torch.randn(steps, count, generator=g) * 0.6 - 0.9,  # log pi is about -0.9 here
    )


def gaussian_parts(algo: RetraceSAC, obs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(mean, log std) of the actor at ``obs``, in float64, through its layers one by one."""
    actor = algo.sac.actor
    with torch.no_grad():
        features = actor.torso(obs)
        mean, log_std = actor.mean(features), actor.log_std(features).clamp(-20.0, 2.0)
    return mean.double().numpy(), log_std.double().numpy()


def squashed_log_density(pre_tanh: np.ndarray, mean: np.ndarray, log_std: np.ndarray) -> np.ndarray:
    """log N(u; mean, std^2) - log(1 - tanh(u)^2), summed over the action, written plainly."""
    normal = -0.5 * ((pre_tanh - mean) / np.exp(log_std)) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
    return (normal - np.log(1.0 - np.tanh(pre_tanh) ** 2)).sum(-1)


def min_target_q(algo: RetraceSAC, obs: torch.Tensor, actions: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return twin_min(algo.sac.target_critics.stacked(obs, actions)).double().numpy()


def test_the_torch_twin_equals_the_numpy_estimator_with_flags_inside() -> None:
    rng = np.random.default_rng(0)
    log_rhos, rewards, q, next_v = (rng.normal(size=(6, 4)) for _ in range(4))
    terminated, truncated = rng.random((6, 4)) < 0.2, rng.random((6, 4)) < 0.1
    for lam in (0.0, 0.6, 1.0):
        expected = retrace(log_rhos, rewards, q, next_v, terminated, truncated, 0.95, lam)
        tensors = [torch.from_numpy(a) for a in (log_rhos, rewards, q, next_v, terminated, truncated)]
        np.testing.assert_allclose(retrace_torch(*tensors, 0.95, lam).numpy(), expected, rtol=1e-12)


def test_the_critic_target_equals_a_hand_computation_through_the_estimator() -> None:
    """n = 3, lambda 0.7, two sequences (one terminates at step 1), ratios above and below 1: the learner's target
    equals the NumPy estimator fed with soft values written out by hand from the same sampled noise."""
    steps, count = 3, 2
    algo, batch = learner(steps, 0.7), hand_batch(steps, count)
    torch.manual_seed(11)
    target, traces = algo.critic_target(batch, torch.tensor(ALPHA))
    torch.manual_seed(11)
    noise = torch.randn(steps, count, 1).double().numpy()  # what rsample draws for a'_t ~ pi(.|s_{t+1})

    mean, log_std = gaussian_parts(algo, batch.obs)
    pre_tanh = mean[1:] + np.exp(log_std[1:]) * noise
    sampled = torch.from_numpy(np.tanh(pre_tanh).astype(np.float32))
    soft_values = np.stack(
        [min_target_q(algo, batch.obs[t + 1], sampled[t]) for t in range(steps)]
    ) - ALPHA * squashed_log_density(pre_tanh, mean[1:], log_std[1:])
    taken_q = np.stack([min_target_q(algo, batch.obs[t], batch.actions[t]) for t in range(steps)])
    taken = batch.actions.double().numpy()
    log_pi = squashed_log_density(np.arctanh(taken), mean[:-1], log_std[:-1])
    log_rhos = log_pi - batch.behaviour_log_probs.double().numpy()
    assert (log_rhos[1:] > 0).any() and (log_rhos[1:] < 0).any()  # both sides of min(1, pi/mu) are exercised
    flags = batch.terminated.numpy().astype(bool)
    expected = retrace(
        log_rhos, batch.rewards.double().numpy(), taken_q, soft_values, flags, np.zeros_like(flags), GAMMA, 0.7
    )
    np.testing.assert_allclose(target.numpy(), expected[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(traces.numpy(), 0.7 * np.minimum(1.0, np.exp(log_rhos)), rtol=1e-5)


def test_lambda_zero_is_sacs_one_step_soft_target() -> None:
    steps, count = 4, 3
    algo, batch = learner(steps, 0.0), hand_batch(steps, count, seed=1)
    torch.manual_seed(5)
    target, _ = algo.critic_target(batch, torch.tensor(ALPHA))
    torch.manual_seed(5)
    noise = torch.randn(steps, count, 1)[0]
    with torch.no_grad():
        policy = algo.sac.actor(batch.obs[1])
        pre_tanh = policy.base.mean + torch.exp(policy.base.log_std) * noise
        next_q = algo.sac.target_critics.stacked(batch.obs[1], torch.tanh(pre_tanh))
        expected = twin_min_target(
            batch.rewards[0], batch.terminated[0], next_q, GAMMA, policy.log_prob_pre_tanh(pre_tanh), ALPHA
        )
    torch.testing.assert_close(target, expected, rtol=1e-6, atol=1e-6)


def test_one_step_sequences_update_exactly_as_plain_sac() -> None:
    """n = 1 (any lambda): the whole gradient step, temperature learned, equals plain SAC's on the same
    transitions from the same weights and the same random draws."""
    extra = ("sac.loop.retrace_steps=1",)
    config = small_config(100, extra).algo_config
    torch.manual_seed(3)
    retrace_sac = RetraceSAC(config, 3, ActionSpec("continuous", 1))
    plain = SAC(small_config(100, ("sac.loop.q_target=one_step",)).algo_config, 3, ActionSpec("continuous", 1))
    for name, module in retrace_sac.modules().items():
        plain.modules()[name].load_state_dict(module.state_dict())
    batch = hand_batch(1, 16, seed=2)
    transitions = TransitionBatch(
        batch.obs[0], batch.actions[0], batch.rewards[0], batch.obs[1], batch.terminated[0], batch.truncated[0]
    )
    context = UpdateContext(progress=0.0, lr_scale=1.0, rng=np.random.default_rng(0))
    torch.manual_seed(9)
    got = retrace_sac.update(batch, context)
    torch.manual_seed(9)
    want = plain.update(transitions, context)
    for key in ("q/target_mean", "train/critic_loss", "train/actor_loss", "train/alpha"):
        torch.testing.assert_close(got[key], want[key], rtol=1e-6, atol=1e-6)
    for name, module in retrace_sac.modules().items():
        for key, value in module.state_dict().items():
            torch.testing.assert_close(value, plain.modules()[name].state_dict()[key], rtol=1e-6, atol=1e-6)


def test_pi_equal_mu_with_lambda_one_is_the_n_step_soft_return() -> None:
    """mu = pi (so every c_t = 1) and the actions taken at s_1 .. s_(n-1) are the ones the target samples there:
    the corrections turn each V(s_k) - Q'(s_k, a_k) into -alpha log pi(a_k|s_k), and Q^ret_0 =
    r_0 + sum_k gamma^k (r_k - alpha log pi(a_k|s_k)) + gamma^n V(s_n)."""
    steps, count = 3, 4
    algo, batch = learner(steps, 1.0), hand_batch(steps, count, seed=3)
    batch = RetraceBatch(**{**batch.__dict__, "terminated": torch.zeros(steps, count)})
    torch.manual_seed(21)
    noise = torch.randn(steps, count, 1).double().numpy()
    mean, log_std = gaussian_parts(algo, batch.obs)
    pre_tanh = mean[1:] + np.exp(log_std[1:]) * noise  # a'_t ~ pi(.|s_{t+1})
    sampled = np.tanh(pre_tanh).astype(np.float32)
    actions = batch.actions.clone()
    actions[1:] = torch.from_numpy(sampled[:-1])  # a_k = a'_{k-1} at s_k
    with torch.no_grad():
        policy = algo.sac.actor(batch.obs[:-1])
        log_mu = TanhGaussian(policy.base.mean, policy.base.log_std).log_prob(actions)  # mu = pi: ratios exactly 1
    batch = RetraceBatch(**{**batch.__dict__, "actions": actions, "behaviour_log_probs": log_mu})
    torch.manual_seed(21)
    target, traces = algo.critic_target(batch, torch.tensor(ALPHA))
    assert torch.equal(traces, torch.ones(steps, count))

    log_pi_sampled = squashed_log_density(pre_tanh, mean[1:], log_std[1:])  # log pi(a'_t|s_{t+1})
    rewards = batch.rewards.double().numpy()
    last = min_target_q(algo, batch.obs[steps], torch.from_numpy(sampled[-1])) - ALPHA * log_pi_sampled[-1]
    expected = rewards[0] + GAMMA**steps * last
    for k in range(1, steps):
        expected = expected + GAMMA**k * (rewards[k] - ALPHA * log_pi_sampled[k - 1])
    np.testing.assert_allclose(target.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_the_replay_hands_out_each_steps_behaviour_log_prob_with_its_sequence() -> None:
    """Two envs, log mu = 100 t + env: a gathered sequence carries the log-probabilities of its own steps, also
    after the ring went round; a rollout without them is refused."""
    replay = BehaviourReplay(12, 2, 1, 1, steps=2)  # 6 steps per env
    for start in (0, 4):
        t = np.arange(start, start + 4)[:, None]
        obs = np.repeat(np.arange(start, start + 5)[:, None, None], 2, axis=1).astype(np.float32)
        replay.add_rollout(
            Rollout(
                obs=obs,
                actions=obs[:4] / 10,
                rewards=np.zeros((4, 2), np.float32),
                terminated=np.zeros((4, 2), bool),
                truncated=np.zeros((4, 2), bool),
                valid=np.ones((4, 2), bool),
                behaviour_log_probs=(100 * t + np.arange(2)).astype(np.float32),
            )
        )
    assert replay.start_range() == (2, 4)  # steps 2..7 kept; starts 2..5 have their 3 observations
    batch = replay.gather(np.array([2, 5]), np.array([1, 0]), torch.device("cpu"))
    np.testing.assert_array_equal(batch.behaviour_log_probs.numpy(), [[201, 500], [301, 600]])
    np.testing.assert_array_equal(batch.obs[:, :, 0].numpy(), [[2, 5], [3, 6], [4, 7]])
    with pytest.raises(ValueError, match="behaviour log-probabilities"):
        replay.add_rollout(Rollout(obs, obs[:4], *(np.zeros((4, 2), t) for t in (np.float32, bool, bool, bool))))


@pytest.mark.parametrize("learning_starts", [0, 20])
def test_stored_behaviour_log_probs_are_the_acting_policys(tmp_path, learning_starts: int) -> None:
    """After one round of 20 steps: with the actor acting, log mu of every stored step equals the log-density of
    its action under the actor's weights when it acted (the learner's TanhGaussian, to 1e-5); during the warm-up,
    the uniform draw's -log 2."""
    extra = (f"sac.loop.learning_starts={learning_starts}", "sac.loop.train_freq=20")
    runner = OffPolicyRunner(small_config(20, extra), tmp_path / "run", console=False)
    acting_actor = copy.deepcopy(runner.algo.sac.actor)
    runner.train()
    assert runner.updates == (20 if learning_starts == 0 else 0)  # updates after the round changed the actor
    buffer = runner.buffer
    stored = buffer.behaviour_log_probs[:20, 0]
    if learning_starts:
        np.testing.assert_array_equal(stored, np.full(20, -math.log(2.0), np.float32))
    else:
        with torch.no_grad():
            expected = acting_actor(torch.from_numpy(buffer.obs[:20, 0])).log_prob(
                torch.from_numpy(buffer.actions[:20, 0])
            )
        np.testing.assert_allclose(stored, expected.numpy(), rtol=1e-5, atol=1e-5)
        with torch.no_grad():
            now = runner.algo.sac.actor(torch.from_numpy(buffer.obs[:20, 0])).log_prob(
                torch.from_numpy(buffer.actions[:20, 0])
            )
        assert not np.allclose(stored, now.numpy(), atol=1e-5)  # not the weights after the updates
    runner.close()


def test_the_numpy_log_prob_equals_the_learners_even_near_the_bounds() -> None:
    algo = learner(2, 1.0)
    policy = algo.acting_policy()
    obs = torch.randn(64, 3, generator=torch.Generator().manual_seed(4))
    actions = torch.rand(64, 1, generator=torch.Generator().manual_seed(5)) * 2 - 1
    actions[:4, 0] = torch.tensor([1.0, -1.0, 0.9999999, -0.99999])  # clamped as the learner clamps
    with torch.no_grad():
        expected = algo.sac.actor(obs).log_prob(actions).numpy()
    np.testing.assert_allclose(policy.log_prob(obs.numpy(), actions.numpy()), expected, rtol=1e-5, atol=1e-4)


def learner_state(runner: OffPolicyRunner) -> dict[str, torch.Tensor]:
    state = {}
    for name, module in runner.algo.modules().items():
        state.update({f"{name}.{k}": v.clone() for k, v in module.state_dict().items()})
    for name, optimizer in runner.algo.optimizers().items():
        for index, slots in optimizer.state_dict()["state"].items():
            state.update({f"optim.{name}.{index}.{slot}": torch.as_tensor(v).clone() for slot, v in slots.items()})
    return state


def test_a_killed_and_resumed_run_equals_the_uninterrupted_one(tmp_path) -> None:
    """Two envs, episodes of 30 steps (ends inside the sequences), a checkpoint at 60 and a stop there as a kill:
    the resumed run's learner, optimizers and replay (log-probabilities included) equal the uninterrupted run's."""
    extra = ("env.num_envs=2", "env.max_episode_steps=30", "sac.loop.learning_starts=30", "sac.loop.retrace_steps=4")
    config = small_config(100, extra)
    uninterrupted = OffPolicyRunner(config, tmp_path / "a", console=False)
    uninterrupted.train()
    first = OffPolicyRunner(config, tmp_path / "b", console=False)
    first.train(stop_at_step=60)
    resumed = OffPolicyRunner(config, tmp_path / "b", resume=True, console=False)
    assert resumed.buffer.written == 30
    resumed.train()
    assert resumed.step == uninterrupted.step == 100 and resumed.updates == uninterrupted.updates > 0
    expected, actual = learner_state(uninterrupted), learner_state(resumed)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    for name in ("obs", "actions", "rewards", "terminated", "valid", "behaviour_log_probs"):
        np.testing.assert_array_equal(getattr(uninterrupted.buffer, name), getattr(resumed.buffer, name))
    assert uninterrupted.buffer.terminated.any() or uninterrupted.buffer.truncated.any()
    for runner in (uninterrupted, first, resumed):
        runner.close()


def test_the_guard_sees_a_drill_and_the_run_evaluates_from_the_cli(tmp_path, capsys) -> None:
    """NaN gradients injected at step 50 are dropped and counted, the parameters stay finite, the off-policy rules'
    metrics are logged (with the traces' mean), and ``pgrad eval`` reads the run folder."""
    from pgrad.cli import main

    extra = ("sac.loop.learning_starts=20", "guard.inject=[nan_grad@50]")
    runner = OffPolicyRunner(small_config(80, extra), tmp_path / "run", console=False)
    runner.train()
    runner.close()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert max(row[names.NONFINITE_STEPS] for row in rows) > 0
    assert all(row[names.PARAMS_FINITE] == 1.0 for row in rows)
    assert {"q/mean", "q/td_error", "train/alpha", "retrace/trace_mean"} <= set(rows[-1])
    assert 0.0 < rows[-1]["retrace/trace_mean"] <= 1.0
    assert main(["eval", str(tmp_path / "run"), "--episodes", "1"]) == 0
    assert "return" in capsys.readouterr().out.lower()


@pytest.mark.parametrize(
    ("algo", "sets", "expected"),
    [
        ("td3", ["td3.loop.q_target=retrace"], "td3.loop.q_target must be 'one_step' for td3"),
        ("ddpg", ["ddpg.loop.q_target=retrace"], "ddpg.loop.q_target must be 'one_step' for ddpg"),
        ("sac", ["sac.loop.q_target=retrace", "sac.network.recurrent=gru"], "'one_step' with network.recurrent"),
        ("sac", ["sac.loop.q_target=retrace", "sac.loop.replay=prioritized"], "'one_step' with loop.replay"),
        ("sac", ["sac.loop.q_target=retrace", "sac.loop.retrace_lambda=1.5"], "sac.loop.retrace_lambda must be"),
        ("sac", ["sac.loop.q_target=retrace", "sac.loop.retrace_lambda=-0.1"], "sac.loop.retrace_lambda must be"),
        ("sac", ["sac.loop.q_target=retrace", "sac.loop.retrace_steps=0"], "sac.loop.retrace_steps must be"),
        ("sac", ["sac.loop.q_target=retrace", "sac.loop.buffer_size=5"], "must hold at least retrace_steps + 1 = 6"),
        ("sac", ["sac.loop.q_target=nstep"], "q_target"),
        ("sac", ["sac.loop.retrace_lambda=0.5"], "sac.loop.retrace_lambda needs sac.loop.q_target=retrace"),
        ("sac", ["sac.loop.retrace_steps=8"], "sac.loop.retrace_steps needs sac.loop.q_target=retrace"),
    ],
)
def test_bad_values_are_refused_in_one_line(algo: str, sets: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        resolve_config(algo, "Pendulum-v1", sets=sets, use_preset=False)
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_pgrad_list_shows_the_retrace_fields_under_sac_only(capsys) -> None:
    from pgrad.cli import main

    assert main(["list", "sac"]) == 0
    sac = capsys.readouterr().out
    assert all(name in sac for name in ("loop.q_target", "loop.retrace_lambda", "loop.retrace_steps"))
    assert main(["list", "td3"]) == 0
    assert "retrace" not in capsys.readouterr().out
