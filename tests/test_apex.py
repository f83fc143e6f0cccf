"""APE-X (apex_td3, apex_ddpg, apex_d4pg): the actors' noise schedule against hand values, actor-computed initial
priorities against the learner's own formula, the learner's priorities on the sampled rows, the weight lag, the
local backend's determinism and exact resume, the refusals; and on Ray (slow) an actor killed and replaced."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from pgrad.algos.apex import noise_scales
from pgrad.algos.contract import UpdateContext
from pgrad.builders import build_off_policy_algorithm
from pgrad.errors import ConfigError
from pgrad.replay import PRIORITY_KEY, PrioritizedReplayBuffer, PrioritySettings
from pgrad.runners.apex import ApexActor, ApexCollector, LocalActors, block_transitions
from pgrad.runners.off_policy import OffPolicyRunner, UniformActor
from pgrad.runs import resolve_config
from ray_helpers import local_ray  # before ray: it sets Ray's auth variables

SETS = [
    "run.progress=false",
    "run.tensorboard=false",
    "run.checkpoint_every=1000000",
    "network.hidden_sizes=[16,16]",
    "loop.batch_size=16",
    "loop.learning_starts=100",
    "loop.log_every=100",
    "loop.buffer_size=2000",
    "loop.gradient_steps=4",
    "apex.local_batch=10",
    "apex.refresh_every=20",
]


def apex_config(algo="apex_td3", extra=(), total=300):
    return resolve_config(algo, "Pendulum-v1", sets=[*SETS, *extra], total_steps=total)[0]


# ---- the noise schedule ------------------------------------------------------------------------------------------


def test_noise_scales_follow_apex_schedule():
    # eps_i = 0.4^(1 + 7 i / 3): 0.4, 0.4^(10/3) = e^(-0.91629 x 3.3333) = 0.04716, 0.4^(17/3) = 0.005559, 0.4^8
    np.testing.assert_allclose(noise_scales(4, 0.4, 7.0), [0.4, 0.04716, 0.005559, 0.00065536], rtol=1e-3)
    assert noise_scales(2, 0.5, 1.0) == [0.5, 0.25]
    assert noise_scales(1, 0.4, 7.0) == [0.4]  # one actor: eps itself (no division by N - 1 = 0)
    assert noise_scales(3, 0.3, 0.0) == [0.3, 0.3, 0.3]  # alpha 0: every actor the same


# ---- priorities ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "algo, extra",
    [("apex_td3", ["apex_td3.target_policy_noise=0"]), ("apex_ddpg", []), ("apex_d4pg", ["apex_d4pg.n_step=3"])],
)
def test_actor_priorities_equal_the_learners_formula_on_the_same_batch(algo, extra):
    """The actor's |delta| + eps lands in the tree as (|delta| + eps)^alpha, and equals what the learner's update
    hands back on the same rows (TD3 without its random target smoothing, so both see one target)."""
    config = apex_config(algo, extra)
    torch.manual_seed(0)
    actor = ApexActor(config, config.algo_config.gamma, 3, own_process=False)
    learner = build_off_policy_algorithm(config, actor.adapter)
    actor.reset(3, 0.3)
    actor.set_weights({name: module.state_dict() for name, module in learner.modules().items()}, 7)
    block = actor.act(12)
    assert block.version == 7 and block.priorities.shape == (12,)
    settings = PrioritySettings(alpha=0.6, eps=1e-6)
    n_step = int(getattr(learner, "n_step", 1))
    buffer = PrioritizedReplayBuffer(50, actor.adapter.obs_dim, 1, settings, n_step, learner.gamma)
    local = block_transitions(block.rollout, actor.adapter, n_step, learner.gamma)
    n = local.size
    buffer.add(local.obs[:n], local.actions[:n], local.rewards[:n], local.next_obs[:n], local.terminated[:n],
               local.truncated[:n], priorities=block.priorities)  # fmt: skip
    rows = np.arange(n)
    batch = replace(buffer.gather(rows, torch.device("cpu")), indices=rows, weights=torch.ones(n))
    errors = learner.update(batch, UpdateContext(progress=0.0, lr_scale=1.0, rng=np.random.default_rng(0)))
    learner_priority = np.abs(errors[PRIORITY_KEY].numpy().astype(np.float64)) + 1e-6
    np.testing.assert_allclose(block.priorities + 1e-6, learner_priority, rtol=1e-5)
    np.testing.assert_allclose(buffer.tree.leaves(n), learner_priority**0.6, rtol=1e-5)


def test_the_learners_priorities_land_on_the_sampled_rows(tmp_path):
    runner = OffPolicyRunner(apex_config(total=200), tmp_path / "run", console=False)
    try:
        runner.train()
        buffer = runner.buffer
        assert isinstance(buffer, PrioritizedReplayBuffer)
        before = buffer.tree.leaves(buffer.size)
        batch = buffer.sample(16, np.random.default_rng(5), torch.device("cpu"))
        stats = runner.algo.update(batch, UpdateContext(progress=0.5, lr_scale=1.0, rng=np.random.default_rng(0)))
        errors = np.abs(stats[PRIORITY_KEY].numpy().astype(np.float64))
        runner.replay_feedback(batch, stats)
        after = buffer.tree.leaves(buffer.size)
        assert batch.indices is not None
        alpha, eps = buffer.settings.alpha, buffer.settings.eps
        last = {int(row): float(err) for row, err in zip(batch.indices, errors, strict=True)}  # later duplicates win
        np.testing.assert_allclose([after[r] for r in last], [(e + eps) ** alpha for e in last.values()], rtol=1e-6)
        untouched = np.setdiff1d(np.arange(buffer.size), batch.indices)
        np.testing.assert_array_equal(after[untouched], before[untouched])
    finally:
        runner.close()


# ---- the weight lag ------------------------------------------------------------------------------------------------


def test_weight_lag_counts_learner_versions_since_the_actors_copy():
    """2 actors taking turns, a copy every 20 steps, blocks of 10, the learner 5 versions further at each block:
    copies at versions 0 (actor 0), 5 (actor 1), then 20 and 25; lags 0, 0, 10, 10, 0, 0."""
    config = apex_config()
    pool = LocalActors(config, config.algo_config.gamma)
    torch.manual_seed(0)
    learner = build_off_policy_algorithm(config, pool.actors[0].adapter)
    version = [0]
    collector = ApexCollector(config, pool.actors[0].adapter, learner, lambda: version[0], pool)  # type: ignore[arg-type]
    collector.reset(1)
    versions = []
    for k in range(6):
        version[0] = 5 * k
        with torch.no_grad():
            learner.actor.net[0].bias.fill_(float(k))  # the learner moves on: a copy made now carries k
        collector.collect(UniformActor(1), np.random.default_rng(0), 1)
        versions.append(collector.pending.version if collector.pending else None)
        collector.pending = None
    assert versions == [0, 5, 0, 5, 20, 25]
    assert [float(a.learner.actor.net[0].bias[0].detach()) for a in pool.actors] == [
        4.0,
        5.0,
    ]  # the copies at versions 20, 25
    metrics = collector.row_metrics(PrioritizedReplayBuffer(10, 3, 1, PrioritySettings()), 0, 1.0)
    assert metrics["apex/weight_lag_max"] == 10.0
    assert metrics["apex/weight_lag_mean"] == pytest.approx(20 / 6)
    assert metrics["apex/blocks"] == 6.0 and metrics["apex/actor_steps_per_second"] == 60.0
    collector.close()


# ---- the local backend: deterministic, exact on resume -------------------------------------------------------------


def test_local_backend_is_deterministic_and_resumes_bit_exactly(tmp_path):
    config = apex_config(total=300)
    whole = OffPolicyRunner(config, tmp_path / "a", console=False)
    whole.train()
    first = OffPolicyRunner(config, tmp_path / "b", console=False)
    first.train(stop_at_step=200)
    first.close()
    resumed = OffPolicyRunner(config, tmp_path / "b", resume=True, console=False)
    resumed.train()
    try:
        assert resumed.step == whole.step == 300 and resumed.updates == whole.updates > 0
        np.testing.assert_array_equal(whole.buffer.tree.nodes, resumed.buffer.tree.nodes)
        np.testing.assert_array_equal(whole.buffer.obs[: whole.buffer.size], resumed.buffer.obs[: resumed.buffer.size])
        for name, module in whole.algo.modules().items():
            for key, value in module.state_dict().items():
                assert torch.equal(value, resumed.algo.modules()[name].state_dict()[key]), f"{name}.{key}"
        for mine, theirs in zip(whole.collector.pool.actors, resumed.collector.pool.actors, strict=True):
            assert mine.version == theirs.version
            assert torch.equal(mine.learner.actor.net[0].weight, theirs.learner.actor.net[0].weight)
        rows = {
            "a": [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()],
            "b": [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()],
        }
        keys = ("step", "train/critic_loss", "apex/weight_lag_mean", "apex/priority_max", "replay/size")
        assert [[r.get(k) for k in keys] for r in rows["a"]] == [[r.get(k) for k in keys] for r in rows["b"]]
    finally:
        whole.close()
        resumed.close()


def test_apex_d4pg_blocks_end_in_a_cut_so_n_step_windows_stay_in_one_actors_steps(tmp_path):
    """Blocks of 10 steps from 2 actors alternate in the replay: every 10th row is marked truncated (the block's end),
    so no n-step window of the learner runs from one actor's steps into the other's."""
    config = apex_config("apex_d4pg", ["apex_d4pg.n_step=3", "apex_d4pg.v_min=-800", "apex_d4pg.v_max=0"], total=200)
    runner = OffPolicyRunner(config, tmp_path / "d4pg", console=False)
    try:
        runner.train()
        buffer = runner.buffer
        assert buffer.size == 200 and buffer.n_step == 3
        assert buffer.truncated[9:200:10].all() and not buffer.terminated[:200].any()
        # Pendulum's time limit (200) falls on no row here: only the block ends are cut
        assert buffer.truncated[:200].sum() == 20
        assert runner.updates > 0
    finally:
        runner.close()


# ---- refusals: one line each ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "algo, sets, message",
    [
        ("apex_td3", ["loop.replay=uniform"], "apex_td3.loop.replay must be 'prioritized'"),
        ("apex_ddpg", ["loop.replay=uniform"], "apex_ddpg.loop.replay must be 'prioritized'"),
        ("apex_td3", ["apex.actors=0"], r"apex_td3.apex.actors must be in \[1, 1024\]; got 0"),
        ("apex_d4pg", ["apex.noise_eps=1.5"], r"apex_d4pg.apex.noise_eps must be in \(0, 1\]; got 1.5"),
        ("apex_td3", ["apex.local_batch=0"], "apex_td3.apex.local_batch must be"),
        ("apex_td3", ["network.recurrent=lstm"], "apex_td3.network.recurrent must be null .APE-X"),
    ],
)
def test_bad_apex_settings_are_one_line(algo, sets, message):
    with pytest.raises(ConfigError, match=message) as caught:
        resolve_config(algo, "Pendulum-v1", sets=sets)
    assert "\n" not in str(caught.value)


def test_ray_without_apex_and_n_step_with_several_envs_are_refused(tmp_path):
    config = resolve_config("td3", "Pendulum-v1", sets=["run.backend=ray"])[0]
    with pytest.raises(ConfigError, match="'pgrad train apex_td3 --backend ray'") as caught:
        OffPolicyRunner(config, tmp_path / "td3", console=False)
    assert "\n" not in str(caught.value) and not (tmp_path / "td3").exists()
    config = apex_config("apex_d4pg", ["env.num_envs=2"])
    with pytest.raises(ConfigError, match="env.num_envs must be 1 for apex_d4pg with n_step > 1"):
        OffPolicyRunner(config, tmp_path / "d4pg", console=False)


# ---- on Ray: a killed actor is replaced (slow) ---------------------------------------------------------------------


@pytest.mark.slow
def test_apex_td3_on_ray_replaces_a_killed_actor(tmp_path, hang_guard):
    pytest.importorskip("ray")
    config = apex_config("apex_td3", ["run.backend=ray", "apex.actors=2"], total=600)
    with local_ray():
        runner = OffPolicyRunner(config, tmp_path / "ray", console=False)
        pid = runner.collector.pool.pids()[1]

        def kill_later():
            while runner.step < 250:
                time.sleep(0.01)
            os.kill(pid, signal.SIGKILL)

        threading.Thread(target=kill_later, daemon=True).start()
        try:
            with hang_guard(240):
                result = runner.train()
        finally:
            runner.close()
    assert result.steps >= 600
    events = [json.loads(line) for line in (tmp_path / "ray" / "events.jsonl").read_text().splitlines()]
    assert [e["worker"] for e in events if e["kind"] == "ray.worker_replaced"] == [1]
    rows = [json.loads(line) for line in (tmp_path / "ray" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["ray/worker_restarts"] == 1.0 and rows[-1]["apex/actors"] == 2.0
    assert max(row["apex/weight_lag_max"] for row in rows) > 0  # actors act on stale weights while the learner learns
