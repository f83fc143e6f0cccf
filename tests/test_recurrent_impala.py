"""Recurrent IMPALA (issue 26, point 1): the actors store the state at each rollout's start and the learner unrolls
from it, so the acting log-probabilities replay exactly (rho = 1 at lag 0); the state resets at an episode start
inside a rollout; V-trace runs over the masked sequence; local runs resume bit-exactly; Ray actors carry the state."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from net_runs import QUIET, resumed_equals_uninterrupted
from pgrad.algos.a2c import recurrent_forward
from pgrad.algos.contract import UpdateContext
from pgrad.algos.impala import Impala, ImpalaConfig, LocalActorCollector, behaviour_log_probs
from pgrad.config import EnvConfig, NetworkConfig
from pgrad.envs import ObsNormalizer, RewardScaler, SpaceAdapter, make_vector_env
from pgrad.errors import ConfigError
from pgrad.estimators import vtrace
from pgrad.nets import ActionSpec
from pgrad.rollout import Rollout
from pgrad.runners import runner_for
from pgrad.runs import resolve_config
from ray_helpers import local_ray  # before ray: it sets Ray's auth variables

RECURRENT = ["env.mask_velocity=true", "impala.network.recurrent=gru", "impala.network.recurrent_size=8"]
RECURRENT += ["impala.network.hidden_sizes=[16]", "impala.num_steps=16"]


def learner(kind: str = "lstm", shared: bool = False, **settings) -> Impala:
    torch.manual_seed(0)
    network = NetworkConfig(hidden_sizes=(8,), recurrent=kind, recurrent_size=4, recurrent_shared=shared)
    return Impala(ImpalaConfig(network=network, **settings), 4, ActionSpec("discrete", 2))


class Recording:
    """The acting policy, recording log pi(a|h) of each action it draws (step by step, as the actors act)."""

    recurrent = True

    def __init__(self, policy) -> None:
        self.policy = policy
        self.log_probs: list[np.ndarray] = []

    def sequence_log_probs(self, *args):
        return self.policy.sequence_log_probs(*args)

    def step(self, obs, state, starts, rng):
        head, next_state = self.policy.head(obs, state, starts)
        actions = self.policy.choose(head, rng)
        log_softmax = torch.log_softmax(torch.from_numpy(head), dim=-1)
        self.log_probs.append(log_softmax.gather(-1, torch.from_numpy(actions)[:, None])[:, 0].numpy())
        return actions, next_state


@pytest.mark.parametrize(("kind", "shared"), [("lstm", False), ("gru", True)])
def test_the_learner_replays_the_acting_log_probs_exactly_from_the_stored_state(kind: str, shared: bool) -> None:
    algo = learner(kind, shared)
    envs = make_vector_env(EnvConfig(id="CartPole-v1", num_envs=3, mask_velocity=True))
    adapter = SpaceAdapter(envs.single_observation_space, envs.single_action_space, True)
    collector = LocalActorCollector(
        envs, adapter, ObsNormalizer((4,), 10.0, False), RewardScaler(3, 0.99, 10.0, False), 10, algo.state_size
    )
    collector.reset(seed=5)
    rng = np.random.default_rng(0)
    collector.collect(algo.acting_policy(), rng, 24)  # the next rollout starts from a carried, non-zero state
    recording = Recording(algo.acting_policy())
    rollout = collector.collect(recording, rng, 24)
    envs.close()
    assert rollout.states is not None and rollout.episode_starts is not None
    assert np.abs(rollout.states[0]).sum() > 0 and rollout.episode_starts[1:24].any()  # episodes end inside
    # log mu, replayed from the stored start state, is what the actor computed step by step
    acting = np.stack(recording.log_probs)
    assert rollout.behaviour_log_probs is not None
    np.testing.assert_array_equal(rollout.behaviour_log_probs, acting)
    # and the learner (the same weights: lag 0) unrolls to the same log pi: every rho is exactly 1
    batch, stats = algo.prepare(rollout)
    assert stats["impala/rho_mean"] == 1.0 and stats["impala/rho_clipped_fraction"] == 0.0
    (dist, _), _ = recurrent_forward(algo.model, rollout, algo.device)
    log_pi = dist.log_prob(torch.from_numpy(rollout.actions.reshape(-1))).detach().numpy().reshape(24, 3)
    np.testing.assert_array_equal(log_pi, acting)
    metrics = algo.update(batch, _context())
    assert np.isfinite(metrics["train/policy_loss"])


def _context() -> UpdateContext:
    return UpdateContext(progress=0.0, lr_scale=1.0, rng=np.random.default_rng(0))


def hand_rollout(algo: Impala) -> Rollout:
    """One env, 6 steps: an episode terminates at t = 1, t = 2 is the autoreset step (masked), and the observation of
    t = 3 begins the next episode (the state resets before it); the rollout starts from a non-zero stored state."""
    rng = np.random.default_rng(2)
    obs = rng.normal(size=(7, 1, 4)).astype(np.float32)
    starts = np.zeros((7, 1), bool)
    starts[3] = True
    rollout = Rollout(
        obs=obs,
        actions=np.array([[0], [1], [0], [1], [1], [0]]),
        rewards=np.array([[1.0], [1.0], [0.0], [1.0], [1.0], [1.0]], np.float32),
        terminated=np.array([[False], [True], [False], [False], [False], [False]]),
        truncated=np.zeros((6, 1), bool),
        valid=np.array([[True], [True], [False], [True], [True], [True]]),
        states=np.repeat(rng.normal(size=(1, 1, algo.state_size)).astype(np.float32), 6, axis=0),
        episode_starts=starts,
    )
    return replace(rollout, behaviour_log_probs=behaviour_log_probs(algo.acting_policy(), rollout))


def test_the_state_resets_at_an_episode_start_inside_the_rollout_and_vtrace_runs_over_the_masked_sequence() -> None:
    algo = learner("lstm", gamma=0.9)
    rollout = hand_rollout(algo)
    batch, stats = algo.prepare(rollout)
    # from t = 3 on the learner's values are a fresh unroll from the zero state on obs[3:]: the past is forgotten
    with torch.no_grad():
        _, fresh_values, _ = algo.model.sequence(
            torch.from_numpy(rollout.obs[3:]), torch.zeros(1, algo.state_size), torch.zeros(4, 1, dtype=torch.bool)
        )
        _, all_values, _ = algo.model.sequence(
            torch.from_numpy(rollout.obs), torch.from_numpy(rollout.states[0]), torch.from_numpy(rollout.episode_starts)
        )
    np.testing.assert_array_equal(batch.values[3:].numpy(), fresh_values[:3, 0].numpy())
    other = Rollout(**{**rollout.__dict__, "obs": rollout.obs.copy(), "states": rollout.states * 3.0})
    other.obs[:3] += 1.0  # another past for the first episode: nothing from t = 3 on changes
    other_batch, _ = learner("lstm", gamma=0.9).prepare(other)
    np.testing.assert_array_equal(other_batch.values[3:].numpy(), batch.values[3:].numpy())
    assert not np.array_equal(other_batch.values[:2].numpy(), batch.values[:2].numpy())
    # V-trace: the estimator itself over the learner's sequence values (rho = 1 at lag 0), the autoreset step masked
    values = all_values[:, 0].double().numpy()
    vs, pg = vtrace(
        np.zeros((6, 1)),
        rollout.rewards.astype(np.float64),
        values[:-1, None],
        values[1:, None],
        rollout.terminated,
        rollout.truncated,
        0.9,
        1.0,
        1.0,
        1.0,
    )
    valid = rollout.valid[:, 0]
    np.testing.assert_allclose(batch.returns.numpy()[valid], vs[valid, 0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(batch.advantages.numpy()[valid], pg[valid, 0], rtol=0, atol=1e-6)
    assert batch.mask.tolist() == [1.0, 1.0, 0.0, 1.0, 1.0, 1.0] and batch.advantages[2] == 0.0
    # by hand at the episode end: v_1 = r_1 = 1 (terminated), v_0 = r_0 + 0.9 v_1 = 1.9 (lambda = c = rho = 1)
    assert batch.returns[1].item() == pytest.approx(1.0, abs=1e-6)
    assert batch.returns[0].item() == pytest.approx(1.9, abs=1e-6)
    assert stats["impala/rho_mean"] == 1.0


def test_a_recurrent_update_needs_the_batch_its_prepare_built() -> None:
    algo = learner("gru")
    batch, _ = algo.prepare(hand_rollout(algo))
    algo.update(batch, _context())
    with pytest.raises(ValueError, match="a recurrent IMPALA updates only on the batch its prepare built"):
        algo.update(batch, _context())


def test_local_recurrent_impala_resumes_bit_exactly_mid_episode(tmp_path) -> None:
    run = resumed_equals_uninterrupted("impala", "CartPole-v1", RECURRENT, 256, tmp_path)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(row["impala/rho_mean"] == 1.0 for row in rows)  # local actors: lag 0, exact replay


def test_feed_forward_impala_runs_on_the_local_backend(tmp_path) -> None:
    sets = [*QUIET, "env.num_envs=2", "impala.num_steps=16", "impala.network.hidden_sizes=[16]"]
    config, _ = resolve_config("impala", "CartPole-v1", sets=sets, seed=1, total_steps=128, use_preset=False)
    runner = runner_for(config)(config, tmp_path / "ff", console=False)
    runner.train()
    rows = [json.loads(line) for line in (tmp_path / "ff" / "metrics.jsonl").read_text().splitlines()]
    assert isinstance(runner.collector, LocalActorCollector) and runner.step == 128
    # log mu from the NumPy acting policy, log pi from torch: equal to float rounding (lag 0)
    assert all(row["impala/rho_mean"] == pytest.approx(1.0, abs=1e-5) for row in rows)
    assert all(row["impala/rho_clipped_fraction"] == 0.0 for row in rows)


def test_recurrent_refusals_name_the_backends() -> None:
    with pytest.raises(
        ConfigError, match=r"^run.backend must be 'local' with network.recurrent for ppo \(recurrent on"
    ):
        resolve_config("ppo", "CartPole-v1", sets=["ppo.network.recurrent=gru", "run.backend=ray"])
    config, _ = resolve_config("impala", "CartPole-v1", sets=["impala.network.recurrent=gru", "run.backend=ray"])
    assert config.algo_config.network.recurrent == "gru"


# ---- on Ray (skipped where Ray is missing; slow: a Ray start took 60 s of wall time at load 7 here) -------------


@pytest.mark.slow
def test_recurrent_impala_on_ray_actors(tmp_path, hang_guard) -> None:
    pytest.importorskip("ray")
    sets = [*QUIET, *RECURRENT, "run.backend=ray", "ray.workers=2", "env.num_envs=2"]
    config, _ = resolve_config("impala", "CartPole-v1", sets=sets, seed=1, total_steps=640, use_preset=False)
    with local_ray(), hang_guard(180):
        runner = runner_for(config)(config, tmp_path / "ray", console=False)
        runner.train()
    rows = [json.loads(line) for line in (tmp_path / "ray" / "metrics.jsonl").read_text().splitlines()]
    assert runner.step >= 640 and len(rows) >= 10
    # the first rollout: the actor's weights are the learner's (lag 0) and its stored state replays exactly
    assert rows[0]["impala/policy_lag"] == 0 and rows[0]["impala/rho_mean"] == 1.0
    assert all(np.isfinite(row["train/policy_loss"]) for row in rows)
