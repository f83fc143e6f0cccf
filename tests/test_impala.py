"""IMPALA: the V-trace path of the learner against hand-computed values and the estimator, and learning CartPole
with asynchronous Ray actors (one of them killed mid-run; rho = 1 on the actors' own data at lag 0)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import gymnasium as gym
import numpy as np
import pytest
import torch

from pgrad.algos.impala import Impala, ImpalaConfig
from pgrad.envs.factory import SpaceAdapter
from pgrad.estimators import vtrace
from pgrad.monitor.sinks import read_jsonl
from pgrad.rollout import Rollout
from pgrad.runners import runner_for
from pgrad.runs import resolve_config
from ray_helpers import local_ray  # before ray: it sets Ray's auth variables

CARTPOLE = SpaceAdapter(gym.spaces.Box(-1.0, 1.0, (4,)), gym.spaces.Discrete(2), True)


def learner(**settings) -> Impala:
    torch.manual_seed(0)
    return Impala(ImpalaConfig(**settings), CARTPOLE.obs_shape, CARTPOLE.action)


def three_steps(algo: Impala, log_ratio: float, terminated_last: bool = True) -> Rollout:
    """Rewards [1, 1, 1] on one env, and behaviour log-probs = log pi(a|s) - log_ratio (so pi/mu = e^log_ratio)."""
    rng = np.random.default_rng(1)
    obs = rng.normal(size=(4, 1, 4)).astype(np.float32)
    actions = np.array([[0], [1], [0]])
    with torch.no_grad():
        log_pi = algo.model.distribution(torch.from_numpy(obs[:3, 0])).log_prob(torch.from_numpy(actions[:, 0]))
    return Rollout(
        obs=obs,
        actions=actions,
        rewards=np.ones((3, 1), np.float32),
        terminated=np.array([[False], [False], [terminated_last]]),
        truncated=np.zeros((3, 1), bool),
        valid=np.ones((3, 1), bool),
        behaviour_log_probs=(log_pi.numpy()[:, None] - log_ratio).astype(np.float64),
    )


def zero_critic(algo: Impala) -> None:
    """V = 0 everywhere: the value head's weights and bias zeroed."""
    with torch.no_grad():
        for parameter in algo.model.value_head.parameters():
            parameter.zero_()


@pytest.mark.parametrize(
    ("log_ratio", "v0", "advantage0", "clipped"),
    [
        # pi = mu: v_0 = 1 + 0.5 + 0.25 (the bootstrapped lambda = 1 return; terminated at the last step)
        (0.0, 1.75, 1.0 + 0.5 * 1.5, 0.0),
        # pi/mu = 2 > rho_bar = 1: every rho and c clipped to 1, the same targets as on-policy
        (np.log(2.0), 1.75, 1.75, 1.0),
        # pi/mu = 0.5: delta_t = 0.5 (r = 1, V = 0); v_2 = 0.5, v_1 = 0.5 + 0.5 x 0.5 x 0.5 = 0.625,
        # v_0 = 0.5 + 0.5 x 0.5 x 0.625 = 0.65625; advantage_0 = 0.5 (1 + 0.5 v_1) = 0.65625
        (np.log(0.5), 0.65625, 0.65625, 0.0),
    ],
)
def test_vtrace_targets_by_hand(log_ratio, v0, advantage0, clipped):
    algo = learner(gamma=0.5, rho_bar=1.0, c_bar=1.0)
    zero_critic(algo)
    batch, stats = algo.prepare(three_steps(algo, log_ratio))
    assert batch.returns[0].item() == pytest.approx(v0, abs=1e-5)
    assert batch.advantages[0].item() == pytest.approx(advantage0, abs=1e-5)
    assert stats["impala/rho_mean"] == pytest.approx(np.exp(log_ratio), rel=1e-5)
    assert stats["impala/rho_clipped_fraction"] == clipped


def test_the_learner_uses_the_estimator_with_its_own_values():
    """A random rollout with a truncation and an autoreset step: the batch's targets are ``estimators.vtrace`` of
    the learner's V and log pi, the autoreset step masked out."""
    algo = learner(gamma=0.9, rho_bar=1.5, c_bar=0.8, vtrace_lambda=0.95)
    rng = np.random.default_rng(3)
    steps, envs = 6, 3
    obs = rng.normal(size=(steps + 1, envs, 4)).astype(np.float32)
    actions = rng.integers(0, 2, size=(steps, envs))
    terminated = np.zeros((steps, envs), bool)
    truncated = np.zeros((steps, envs), bool)
    valid = np.ones((steps, envs), bool)
    terminated[2, 0], truncated[3, 1], valid[3, 0], valid[4, 1] = True, True, False, False
    log_mu = np.log(rng.uniform(0.2, 0.8, size=(steps, envs)))
    rollout = Rollout(
        obs, actions, rng.normal(size=(steps, envs)).astype(np.float32), terminated, truncated, valid, log_mu
    )
    batch, stats = algo.prepare(rollout)
    with torch.no_grad():
        flat = torch.from_numpy(obs.reshape(-1, 4))
        values = algo.model.value(flat).numpy().reshape(steps + 1, envs).astype(np.float64)
        dist = algo.model.distribution(flat[: steps * envs])
        log_pi = dist.log_prob(torch.from_numpy(actions.reshape(-1))).numpy().reshape(steps, envs)
    vs, advantages = vtrace(
        log_pi - log_mu, rollout.rewards.astype(np.float64), values[:-1], values[1:], terminated, truncated,
        0.9, 1.5, 0.8, 0.95,
    )  # fmt: skip
    np.testing.assert_allclose(batch.returns.numpy(), vs.reshape(-1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(batch.advantages.numpy(), np.where(valid, advantages, 0).reshape(-1), atol=1e-5)
    assert batch.mask.numpy().tolist() == valid.reshape(-1).astype(float).tolist()
    rhos = np.exp(log_pi - log_mu)[valid]
    assert stats["impala/rho_clipped_fraction"] == pytest.approx(np.mean(rhos > 1.5 * (1 + 1e-4)))
    assert stats["impala/c_clipped_fraction"] == pytest.approx(np.mean(rhos > 0.8 * (1 + 1e-4)))


def test_a_rollout_without_behaviour_log_probs_is_refused():
    algo = learner()
    rollout = three_steps(algo, 0.0)
    plain = Rollout(rollout.obs, rollout.actions, rollout.rewards, rollout.terminated, rollout.truncated, rollout.valid)
    with pytest.raises(ValueError, match="behaviour log-probabilities"):
        algo.prepare(plain)


# ---- with Ray actors (skipped where Ray is missing; the tests above still run) ----------------------------------


@pytest.fixture(scope="module")
def ray_session():
    pytest.importorskip("ray")
    with local_ray():
        yield


SETS = ["run.progress=false", "run.tensorboard=false", "run.backend=ray", "ray.workers=2", "env.num_envs=4"]


def impala_runner(tmp_path, total, extra=()):
    config, _ = resolve_config("impala", "CartPole-v1", None, [*SETS, *extra], 1, total)
    return runner_for(config)(config, tmp_path / "impala", console=False)


def test_impala_learns_cartpole_with_a_worker_killed(tmp_path, ray_session, hang_guard):
    runner = impala_runner(tmp_path, 40_000)
    pid = runner.collector.worker_pids()[0]

    def kill_later():
        while runner.step < 10_000:
            time.sleep(0.002)
        os.kill(pid, signal.SIGKILL)

    threading.Thread(target=kill_later, daemon=True).start()
    with hang_guard(180):
        result = runner.train()
    assert result.steps >= 40_000
    rows = [json.loads(line) for line in (tmp_path / "impala" / "metrics.jsonl").read_text().splitlines()]
    events = [json.loads(line) for line in (tmp_path / "impala" / "events.jsonl").read_text().splitlines()]
    assert [e["worker"] for e in events if e["kind"] == "ray.worker_replaced"] == [0]
    # the first rollout was sampled by the weights the learner still has (lag 0): the actors' own log mu, so rho = 1
    assert rows[0]["impala/policy_lag"] == 0
    assert rows[0]["impala/rho_mean"] == pytest.approx(1.0, abs=1e-5)
    assert rows[0]["impala/rho_clipped_fraction"] == 0.0
    lags = [row["impala/policy_lag"] for row in rows]
    assert min(lags) == 0 and max(lags) >= 1  # actors act on stale weights, and V-trace sees it
    assert all(row["impala/queue_in_flight"] <= 4 for row in rows)  # 2 workers x actor_queue 2
    assert rows[-1]["rollout/return_mean"] > 150, rows[-1]["rollout/return_mean"]


def test_a_stopped_impala_run_resumes_its_learner_from_the_checkpoint(tmp_path, ray_session, hang_guard):
    """Stopped as a kill would stop it and resumed: the learner's weights, Adam moments, step and normaliser
    come back as saved (its actors' episodes restart, which the run says before it trains), and the resumed
    run goes on from the saved step to the end: no step logged twice, none skipped past the checkpoint."""
    config, _ = resolve_config("impala", "CartPole-v1", None, [*SETS, "env.norm_obs=true"], 1, 8_000)
    first = runner_for(config)(config, tmp_path / "impala", console=False)
    with hang_guard(120):
        first.train(stop_at_step=4_000)
    saved_step = first.step
    saved = {k: v.clone() for k, v in first.algo.modules()["model"].state_dict().items()}
    saved_moments = {k: s["exp_avg"].clone() for k, s in first.algo.optimizer.state_dict()["state"].items()}
    saved_obs_stats = first.env.obs_normalizer.stats.state()
    assert saved_obs_stats["count"] > 1_000  # the actors' observations reached the learner's normaliser

    second = runner_for(config)(config, tmp_path / "impala", resume=True, console=False)
    try:
        assert second.step == saved_step >= 4_000
        restored = second.algo.modules()["model"].state_dict()
        assert all(torch.equal(saved[k], restored[k]) for k in saved)
        moments = {k: s["exp_avg"] for k, s in second.algo.optimizer.state_dict()["state"].items()}
        assert moments.keys() == saved_moments.keys() and len(moments) > 0
        assert all(torch.equal(saved_moments[k], moments[k]) for k in moments)
        # the normaliser as saved, plus the first observations of the 2 x 4 episodes the resume restarted
        restored_obs_stats = second.env.obs_normalizer.stats.state()
        assert float(restored_obs_stats["count"]) == float(saved_obs_stats["count"]) + 8
        for key in ("mean", "var"):
            np.testing.assert_allclose(restored_obs_stats[key], saved_obs_stats[key], rtol=0.05, atol=1e-3)
        with hang_guard(120):
            result = second.train()
    finally:
        second.close()
    assert result.steps >= 8_000
    events = read_jsonl(tmp_path / "impala" / "events.jsonl")
    assert any(e["kind"] == "warning.resume_inexact" and "restarts their episodes" in e["message"] for e in events)
    steps = [row["step"] for row in read_jsonl(tmp_path / "impala" / "metrics.jsonl")]
    assert steps == sorted(set(steps))  # each update logged once, in order, across the stop
    assert saved_step in steps and steps[-1] >= 8_000


@pytest.mark.slow
def test_impala_reaches_475_on_cartpole(tmp_path, ray_session):
    runner = impala_runner(tmp_path, 300_000)
    runner.train()
    rows = [json.loads(line) for line in (tmp_path / "impala" / "metrics.jsonl").read_text().splitlines()]
    assert max(row.get("rollout/return_mean", 0) for row in rows) >= 475
