"""MAPPO and IPPO on PettingZoo teams: the centralised critic's input, per-agent GAE with agents finishing at
different steps, the masking of finished agents in the loss, exact resume, the lr_spike drill rolled back for
the whole team, per-agent metrics, export equal to predict, and bad inputs refused in one line."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pgrad.algos.mappo import IPPOConfig, MAPPOConfig, MultiAgentConfig, TeamBatch, TeamLearner, team_gae
from pgrad.checkpoint import CheckpointStore, read_train_state
from pgrad.cli import main
from pgrad.envs.multiagent import TeamEnvs, load_parallel_env
from pgrad.errors import ConfigError
from pgrad.monitor.sinks import read_jsonl
from pgrad.runners.multi_agent import MultiAgentRunner
from pgrad.runs import resolve_config
from pgrad.team_runs import TeamPolicy, export_team, load_team, train_team

pytest.importorskip("mpe2")
SPREAD = "mpe2:simple_spread_v3"
RELAY = "marl_envs:Relay"
QUIET = ["run.progress=false", "run.tensorboard=false"]
SETS = ["--set", QUIET[0], "--set", QUIET[1]]
TINY = [*QUIET, "env.num_envs=2", "num_steps=25", "num_epochs=2", "hidden_sizes=[16, 16]", "eval_every=0"]


def team(env_id: str, num_envs: int = 2, **kwargs: object) -> TeamEnvs:
    make = load_parallel_env(env_id)
    envs = TeamEnvs(lambda: make(**kwargs), num_envs)
    envs.reset(3)
    return envs


def runner(algo: str, run_dir: Path, total: int, *sets: str, env: str = SPREAD, resume: bool = False):
    config, _ = resolve_config(algo, env, sets=[*TINY, *sets], seed=1, total_steps=total)
    return MultiAgentRunner(config, run_dir, resume=resume, console=False)


# ---- the centralised critic ------------------------------------------------------------------------------
def test_the_centralised_critic_reads_the_same_global_state_for_every_agent():
    envs = team(SPREAD, max_cycles=5)
    mappo = TeamLearner(MAPPOConfig(), envs.spaces)
    rows = mappo.critic_input(envs.obs, envs.state)  # [N, A, 54 + 3]: state() and the agent's one-hot
    assert rows.shape == (2, 3, 57)
    for i, env in enumerate(envs.envs):
        for j in range(3):
            np.testing.assert_array_equal(rows[i, j, :54], np.asarray(env.state(), np.float32))
            np.testing.assert_array_equal(rows[i, j, 54:], np.eye(3)[j])
    ippo = TeamLearner(IPPOConfig(), envs.spaces)  # IPPO: the agent's own observation
    np.testing.assert_array_equal(ippo.critic_input(envs.obs, envs.state)[..., :18], envs.obs)


def test_without_state_the_critic_reads_the_observations_concatenated_and_a_finished_agent_as_zeros():
    envs = team(RELAY, 1, widths=(3, 2))
    np.testing.assert_array_equal(envs.state, [[0, 0, 0, 1, 1]])
    envs.step(np.zeros((1, 2, 1)))
    step = envs.step(np.zeros((1, 2, 1)))  # agent a terminates here
    assert step.terminated.tolist() == [[True, False]] and step.active.tolist() == [[0.0, 1.0]]
    np.testing.assert_array_equal(step.final_state, [[2, 2, 2, 3, 3]])  # where a's episode ended
    np.testing.assert_array_equal(step.state, [[0, 0, 0, 3, 3]])  # what b's critic sees next: a is gone
    np.testing.assert_array_equal(step.obs[0, 0], [0, 0, 0])  # no repeated last observation


# ---- per-agent GAE ---------------------------------------------------------------------------------------
def test_per_agent_gae_with_agents_finishing_at_different_steps_against_hand_values():
    # gamma = lambda = 0.5, rewards 1, V = 0 (GUIDE's values). Agent 0 terminates at t = 1 and is inactive at t = 2
    # (garbage reward and value there must not matter); agent 1 terminates at t = 2.
    rewards = np.array([[[1.0, 1.0]], [[1.0, 1.0]], [[5.0, 1.0]]], np.float32)
    values = np.zeros_like(rewards)
    values[2, 0, 0] = 100.0
    terminated = np.zeros((3, 1, 2), bool)
    terminated[1, 0, 0] = terminated[2, 0, 1] = True
    active = np.ones_like(rewards)
    active[2, 0, 0] = 0.0
    adv, ret = team_gae(rewards, values, values.copy(), terminated, np.zeros_like(terminated), active, 0.5, 0.5)
    np.testing.assert_allclose(adv[:, 0, 0], [1.25, 1.0, 0.0])  # A1 = 1, A0 = 1 + 0.25 x 1
    np.testing.assert_allclose(adv[:, 0, 1], [1.3125, 1.25, 1.0])
    np.testing.assert_allclose(ret, adv)  # V = 0 where active
    # agent 1 truncated (not terminated) at t = 2 with V(final observation) = 2: A0 = 1.375
    truncated = np.zeros_like(terminated)
    truncated[2, 0, 1], terminated[2, 0, 1] = True, False
    next_values = np.zeros_like(rewards)
    next_values[2, 0, 1] = 2.0
    adv, _ = team_gae(rewards, values, next_values, terminated, truncated, active, 0.5, 0.5)
    assert adv[0, 0, 1] == pytest.approx(1.375) and adv[:, 0, 0].tolist() == pytest.approx([1.25, 1.0, 0.0])


# ---- masking in the loss ---------------------------------------------------------------------------------
def random_batch(learner: TeamLearner, rows: int, seed: int) -> TeamBatch:
    g = torch.Generator().manual_seed(seed)
    a, s = learner.spaces.num_agents, learner.spaces
    actor_w = s.max_obs + (a if learner.agent_id else 0)
    critic_w = (s.state_dim if learner.centralised else s.max_obs) + (a if learner.agent_id else 0)
    mask = torch.ones(rows, a)
    mask[rows // 2 :, 0] = 0.0  # agent 0 finished half-way
    return TeamBatch(
        actor_in=torch.randn(rows, a, actor_w, generator=g),
        critic_in=torch.randn(rows, a, critic_w, generator=g),
        actions=torch.randint(0, 3, (rows, a, 1), generator=g).float(),
        log_probs=torch.full((rows, a), -1.1),
        advantages=torch.randn(rows, a, generator=g),
        returns=torch.randn(rows, a, generator=g),
        values=torch.randn(rows, a, generator=g),
        mask=mask,
    )


@pytest.mark.parametrize("algo_config", [MAPPOConfig(marl=MultiAgentConfig(share_parameters=False)), IPPOConfig()])
def test_a_finished_agent_contributes_nothing_to_the_loss_or_its_gradient(algo_config):
    envs = team(RELAY, 1, widths=(3, 3))
    learner = TeamLearner(algo_config, envs.spaces)
    batch = random_batch(learner, 8, 0)
    dead = batch.mask == 0
    garbage = replace(
        batch,
        advantages=torch.where(dead, 1e6, batch.advantages),
        returns=torch.where(dead, -1e6, batch.returns),
        log_probs=torch.where(dead, 50.0, batch.log_probs),
        actions=torch.where(dead[..., None], 2.0, batch.actions),
    )
    grads = []
    for each in (batch, garbage):
        learner.optimizer.zero_grad()
        loss, _ = learner.loss(each, 0.2)
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in learner.parameters if p.grad is not None]))
    assert torch.equal(grads[0][0], grads[1][0])
    assert all(torch.equal(x, y) for x, y in zip(grads[0][1], grads[1][1], strict=True))
    # the masked entries do count once they are unmasked: the test can fail
    learner.optimizer.zero_grad()
    assert not torch.equal(learner.loss(replace(garbage, mask=torch.ones_like(batch.mask)), 0.2)[0], grads[0][0])


# ---- a heterogeneous team --------------------------------------------------------------------------------
def test_shared_parameters_on_a_heterogeneous_team_are_refused_in_one_line_and_nothing_is_written(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"^ippo\.marl\.share_parameters needs .*widths \[3, 2\].*=false$"):
        runner("ippo", run_dir, 100, "env.kwargs={widths: [3, 2]}", env=RELAY)
    assert not run_dir.exists()
    # without sharing, each agent has its own actor and critic, on its own width; agent a finishes early
    trainer = runner("mappo", run_dir, 100, "env.kwargs={widths: [3, 2]}", "marl.share_parameters=false", env=RELAY)
    trainer.train()
    assert [a.actor_torso[0].in_features for a in trainer.learner.actors] == [3, 2]
    assert [c.body[0].in_features for c in trainer.learner.critics] == [5, 5]  # the concatenated observations
    last = read_jsonl(run_dir / "metrics.jsonl")[-1]
    # agent a: 2 steps of reward 1 per episode, agent b: 4; the team: their mean
    assert last["agent/a/rollout/return_mean"] == 2.0 and last["agent/b/rollout/return_mean"] == 4.0
    assert last["rollout/return_mean"] == 3.0 and last["rollout/length_mean"] == 4.0


# ---- bad inputs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("env_id", "message"),
    [
        ("mpe2:no_such_task_v0", "module 'mpe2' has no 'no_such_task_v0'"),
        ("no_such_package:thing", "cannot import module 'no_such_package'"),
        ("os:getcwd", "'os:getcwd' is a builtin_function_or_method, not a PettingZoo parallel env"),
        ("json:dumps", "'json:dumps' is a function, not a PettingZoo parallel env"),
        ("CartPole-v1", "a multi-agent env must be"),
    ],
)
def test_an_env_that_is_not_a_pettingzoo_team_is_refused_in_one_line(env_id, message, capsys, tmp_path):
    code = main(["train", "mappo", "--env", env_id, "--run-dir", str(tmp_path / "r"), *SETS])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_unknown_team_settings_are_refused_in_one_line(capsys):
    assert main(["train", "mappo", "--env", SPREAD, "--set", "marl.share=false"]) == 2
    assert main(["train", "ippo", "--env", SPREAD, "--set", "num_minibatches=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "share" in err[0] and "ippo.num_minibatches" in err[1]


# ---- exact resume, per-agent metrics ---------------------------------------------------------------------
def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state = read_train_state(CheckpointStore(run_dir, 3).readable("latest"))
    return {f"{m}.{k}": v for m, tensors in state.modules.items() for k, v in tensors.items()}


def test_a_killed_mappo_run_resumes_bit_exactly(tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    runner("mappo", whole, 150, "env.kwargs={max_cycles: 10}").train()
    runner("mappo", parts, 150, "env.kwargs={max_cycles: 10}").train(stop_at_step=50)  # a kill after update 1
    runner("mappo", parts, 150, "env.kwargs={max_cycles: 10}", resume=True).train()
    a, b = weights(whole), weights(parts)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [read_jsonl(run / "metrics.jsonl") for run in (whole, parts)]
    assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]] == [50, 100, 150]
    for x, y in zip(*rows, strict=True):
        keep = [k for k in x if not k.startswith("perf/")]
        assert {k: x[k] for k in keep} == {k: y[k] for k in keep}
    last = rows[0][-1]
    for agent in ("agent_0", "agent_1", "agent_2"):  # per-agent metrics beside the team's
        for key in ("rollout/return_mean", "diagnostics/approx_kl", "diagnostics/entropy"):
            assert np.isfinite(last[f"agent/{agent}/{key}"])
    assert np.isfinite(last["diagnostics/explained_variance"]) and "rollout/return_mean" in last


# ---- the guard -------------------------------------------------------------------------------------------
def test_the_lr_spike_drill_on_mappo_rolls_the_whole_team_back(tmp_path):
    run = tmp_path / "spike"
    trainer = runner(
        "mappo",
        run,
        500,
        "env.kwargs={max_cycles: 10}",
        "inject=[lr_spike@300]",
        "lr_spike_factor=1000",
        "snapshot_every=50",
        "checkpoint_every=100000",
    )
    trainer.train()
    events = read_jsonl(run / "events.jsonl")
    (drill,) = [e for e in events if e["kind"] == "drill.lr_spike"]
    critical = [e for e in events if e["kind"] == "critical.kl" and e["step"] == drill["step"]]
    assert critical and critical[0]["value"] > 0.1
    (rollback,) = [e for e in events if e["kind"] == "recovery.rollback"]
    assert rollback["step"] == drill["step"] and rollback["restored_from"] == "memory"
    assert rollback["restored_step"] < drill["step"] and rollback["lr_scale"] == 0.5
    rows = read_jsonl(run / "metrics.jsonl")
    after = [r for r in rows if r["step"] > drill["step"]]
    assert after and all(r["diagnostics/approx_kl"] < 0.1 for r in after)  # healthy again after the rollback


# ---- export ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("algo", "sets"),
    [("mappo", []), ("ippo", ["env.kwargs={max_cycles: 10, continuous_actions: true}", "marl.share_parameters=false"])],
)
def test_each_agents_onnx_file_equals_predict_and_the_trained_policy(algo, sets, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    run = tmp_path / algo
    runner(algo, run, 50, "env.kwargs={max_cycles: 10}", *sets).train()
    files = export_team(run, "onnx", None, "latest", trust_env_code=True)
    _, learner, _ = load_team(run, "latest", trust_env_code=True)
    policy = TeamPolicy.from_learner(learner)
    obs = np.random.default_rng(0).normal(size=(64, 3, 18)).astype(np.float32)
    acted = learner.act(obs, np.random.default_rng(0), deterministic=True)  # the training chain's mode
    predicted = policy.predict({agent: obs[:, j] for j, agent in enumerate(learner.spaces.agents)})
    for j, (agent, file) in enumerate(zip(learner.spaces.agents, files, strict=True)):
        assert file.name == f"{agent}.onnx"
        manifest = json.loads(file.with_name(file.name + ".json").read_text())
        assert manifest["agent"] == agent and manifest["input"]["shape"] == ["batch", 18]
        assert manifest["inside"]["agent_id_folded"] is (algo == "mappo")
        (onnx_action,) = ort.InferenceSession(str(file)).run(None, {"observation": obs[:, j]})
        if learner.spaces.actions[j].kind == "discrete":
            np.testing.assert_array_equal(onnx_action, predicted[agent])
            np.testing.assert_array_equal(predicted[agent], acted[:, j, 0])
        else:
            np.testing.assert_allclose(onnx_action, predicted[agent], atol=1e-6)
            low, high = learner.spaces.lows[j], learner.spaces.highs[j]
            mapped = np.clip(low + (np.clip(acted[:, j], -1, 1) + 1) * 0.5 * (high - low), low, high)
            np.testing.assert_allclose(predicted[agent], mapped, atol=1e-5)


# ---- the Python API --------------------------------------------------------------------------------------
def test_the_python_api_takes_a_task_module_a_class_or_an_instance(tmp_path):
    from mpe2 import simple_spread_v3

    from marl_envs import Relay

    sets = [*TINY, "num_epochs=1"]
    spread = train_team("mappo", simple_spread_v3, 50, tmp_path / "module", [*sets, "env.kwargs={max_cycles: 5}"])
    assert spread.config.env.id == SPREAD and spread.step == 50  # an id: eval, export and resume work from the folder
    by_class = train_team("ippo", Relay, 50, tmp_path / "class", sets)
    assert by_class.config.env.id == "marl_envs:Relay"
    instance = Relay(widths=(3, 2), finish=(1, 3))
    by_instance = train_team("ippo", instance, 50, tmp_path / "instance", [*sets, "marl.share_parameters=false"])
    assert by_instance.learner.spaces.obs_dims == (3, 2)
    assert read_jsonl(tmp_path / "instance" / "metrics.jsonl")[-1]["agent/a/rollout/return_mean"] == 1.0
    with pytest.raises(ConfigError, match="trained on an env passed to pgrad.api as a Python object"):
        runner("ippo", tmp_path / "instance", 100, env=RELAY, resume=True)
    with pytest.raises(ConfigError, match="expected a PettingZoo parallel env"):
        train_team("mappo", 3, 50, tmp_path / "bad")


@pytest.mark.slow  # ~20 updates; benchmarks/RESULTS.md cites it
def test_a_shared_policy_learns_each_agents_own_target_action_by_its_id(tmp_path):
    sets = [*QUIET, "env.num_envs=4", "num_steps=50", "eval_every=0"]
    train_team("mappo", "marl_envs:TeamBandit", 4000, tmp_path / "bandit", sets, seed=1)
    returns = [r["rollout/return_mean"] for r in read_jsonl(tmp_path / "bandit" / "metrics.jsonl")]
    assert returns[0] < 4.0 and returns[-1] > 9.0, returns


def test_a_network_setting_the_team_learner_cannot_honour_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^mappo\.network\.shared_network must be false"):
        resolve_config("mappo", SPREAD, sets=["shared_network=true"])
    with pytest.raises(ConfigError, match=r"^ippo\.network takes an MLP"):
        resolve_config("ippo", SPREAD, sets=["network.recurrent=lstm"])


def test_an_agents_own_kl_spike_is_a_critical_alert_naming_it_while_the_team_kl_is_quiet():
    from pgrad.config import GuardConfig
    from pgrad.monitor.alerts import check_alerts
    from pgrad.runners.multi_agent import team_rules

    row = {"step": 100, "diagnostics/approx_kl": 0.01, "agent/a/diagnostics/approx_kl": 0.01}
    spiked = {**row, "agent/b/diagnostics/approx_kl": 0.5}
    rules = team_rules(("a", "b"))
    assert [x for x in check_alerts([row], GuardConfig(), rules) if x.rule == "kl"] == []
    (alert,) = [x for x in check_alerts([row, spiked], GuardConfig(), rules) if x.rule == "kl"]
    assert alert.level == "critical" and alert.message.startswith("agent b: approx KL 0.5 > 0.1")
    assert alert.metric == "agent/b/diagnostics/approx_kl" and alert.value == 0.5
