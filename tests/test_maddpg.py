"""MADDPG on PettingZoo teams: the critic target against a hand computation (Gumbel-softmax/argmax target actions
and a continuous agent beside a discrete one), the straight-through Gumbel-softmax sample, the critic's joint input
in agent order, the Polyak update, exact resume with the joint replay, each agent's ONNX file, and every refusal
in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pgrad.algos.contract import UpdateContext
from pgrad.algos.maddpg import MADDPGConfig, MADDPGLearner, MADDPGNetworkConfig, gumbel_softmax
from pgrad.algos.mappo import MultiAgentConfig
from pgrad.algos.team_replay import JointBatch, JointReplay
from pgrad.checkpoint import CheckpointStore, read_train_state
from pgrad.cli import main
from pgrad.envs.multiagent import TeamSpaces
from pgrad.errors import CheckpointError, ConfigError
from pgrad.monitor.sinks import read_jsonl
from pgrad.nets import ActionSpec
from pgrad.runners.team_replay import MADDPGRunner
from pgrad.runs import resolve_config
from pgrad.team_runs import TeamPolicy, export_team, load_team, train_team

pytest.importorskip("mpe2")
SPREAD = "mpe2:simple_spread_v3"
QUIET = ["run.progress=false", "run.tensorboard=false"]
SETS = ["--set", QUIET[0], "--set", QUIET[1]]
TINY = [
    *QUIET,
    "env.num_envs=2",
    "num_steps=5",
    "gradient_steps=2",
    "batch_size=32",
    "learning_starts=10",
    "hidden_sizes=[16, 16]",
    "eval_every=0",
    "env.kwargs={max_cycles: 10}",
]


def mixed_team() -> TeamSpaces:
    """Agent a: 2-wide observations, Discrete(3); agent b: 3-wide, a 2-D Box in [-2, 2]."""
    box = np.full(2, 2.0, np.float32)
    return TeamSpaces(
        ("a", "b"),
        (2, 3),
        (ActionSpec("discrete", 3), ActionSpec("continuous", 2)),
        5,
        False,
        (None, -box),
        (None, box),
    )


def linear(weight: list[list[float]]) -> nn.Linear:
    rows = torch.tensor(weight)
    layer = nn.Linear(rows.shape[1], rows.shape[0])
    with torch.no_grad():
        layer.weight.copy_(rows)
        layer.bias.zero_()
    return layer


def runner(run_dir: Path, total: int, *sets: str, env: str = SPREAD, resume: bool = False) -> MADDPGRunner:
    config, _ = resolve_config("maddpg", env, sets=[*TINY, *sets], seed=1, total_steps=total)
    return MADDPGRunner(config, run_dir, resume=resume, console=False)


# ---- the critic target -------------------------------------------------------------------------------------
def test_the_critic_target_against_a_hand_computation_with_argmax_and_tanh_target_actions():
    learner = MADDPGLearner(MADDPGConfig(gamma=0.5), mixed_team())
    # target actors by hand: agent a's logits are [o_0, o_1, 0]; agent b's action is tanh(o_0, o_1)
    learner.target_actors = nn.ModuleList([linear([[1, 0], [0, 1], [0, 0]]), linear([[1, 0, 0], [0, 1, 0]])])
    # target critics: Q'_a sums its joint input [o_a(2), o_b(3), a_a(3), a_b(2)]; Q'_b weighs entry k by k + 1
    learner.target_critics = nn.ModuleList([linear([[1.0] * 10]), linear([[k + 1.0 for k in range(10)]])])
    next_obs = torch.tensor(
        [[[-1.0, 2.0, 0.0], [0.2, 0.4, 1.0]], [[3.0, 1.0, 0.0], [0.5, -0.5, 2.0]]]
    )  # [B=2, A=2, max_obs=3]
    batch = JointBatch(
        obs=torch.zeros(2, 2, 3),
        actions=torch.zeros(2, 2, 3),
        rewards=torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
        next_obs=next_obs,
        terminated=torch.tensor([[0.0, 0.0], [1.0, 0.0]]),  # row 1: agent a terminated: y = r
        active=torch.tensor([[1.0, 1.0], [1.0, 0.0]]),  # row 1: agent b had finished: its next action is zeros
    )
    _, _, target = learner.critic_terms(batch)
    t1, t2 = np.tanh(0.2), np.tanh(0.4)
    # row 0: a's logits [-1, 2, 0] -> one-hot [0, 1, 0]; joint' = [-1, 2, 0.2, 0.4, 1, 0, 1, 0, t1, t2]
    joint0 = np.array([-1, 2, 0.2, 0.4, 1, 0, 1, 0, t1, t2])
    y_a0 = 1.0 + 0.5 * joint0.sum()
    y_b0 = 2.0 + 0.5 * (joint0 * np.arange(1, 11)).sum()
    # row 1: a's logits [3, 1, 0] -> [1, 0, 0]; b inactive -> action zeros; a terminated
    joint1 = np.array([3, 1, 0.5, -0.5, 2, 1, 0, 0, 0, 0])
    y_b1 = 4.0 + 0.5 * (joint1 * np.arange(1, 11)).sum()
    np.testing.assert_allclose(target.numpy(), [[y_a0, y_b0], [3.0, y_b1]], rtol=1e-6)


def test_the_critic_reads_every_agents_observation_then_every_agents_action_in_agent_order():
    learner = MADDPGLearner(MADDPGConfig(), mixed_team())
    obs = torch.tensor([[[1.0, 2.0, 99.0], [3.0, 4.0, 5.0]]])  # agent a's third entry is padding
    actions = [torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[-0.5, 0.5]])]
    for i in range(2):
        row = learner.critic_input(obs, actions, i)
        assert row.tolist() == [[1, 2, 3, 4, 5, 0, 0, 1, -0.5, 0.5]]
    assert learner.critics[0][0].in_features == learner.critics[1][0].in_features == 10
    # shared parameters: one critic for both, agent i's one-hot appended to the same joint input
    spaces = TeamSpaces(("a", "b"), (2, 2), (ActionSpec("discrete", 3),) * 2, 4, False, (None, None), (None, None))
    shared = MADDPGLearner(MADDPGConfig(marl=MultiAgentConfig(share_parameters=True)), spaces)
    obs2 = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    both = [torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])]
    assert shared.critic_input(obs2, both, 1).tolist() == [[1, 2, 3, 4, 1, 0, 0, 0, 1, 0, 0, 1]]
    assert len(shared.critics) == len(shared.actors) == 1


# ---- Gumbel-softmax ----------------------------------------------------------------------------------------
def test_the_straight_through_gumbel_sample_is_one_hot_forward_with_the_relaxed_gradient():
    logits = torch.tensor([[0.3, -1.2, 0.8, 0.1], [2.0, 0.0, -1.0, 0.5]], requires_grad=True)
    gumbels = torch.tensor([[0.5, 2.5, -0.3, 0.0], [-1.0, 0.2, 0.1, 0.4]])
    weights = torch.tensor([[1.0, -2.0, 3.0, 0.5], [0.2, 4.0, -1.0, 2.0]])
    hard = gumbel_softmax(logits, 0.7, gumbels)
    # forward: the one-hot of argmax(logits + g): index 1 (-1.2 + 2.5) and index 0 (2.0 - 1.0)
    assert hard.tolist() == [[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]
    (grad_hard,) = torch.autograd.grad((weights * hard).sum(), logits)
    soft = gumbel_softmax(logits, 0.7, gumbels, hard=False)
    np.testing.assert_allclose(soft.detach().numpy(), torch.softmax((logits + gumbels) / 0.7, -1).detach().numpy())
    (grad_soft,) = torch.autograd.grad((weights * soft).sum(), logits)
    torch.testing.assert_close(grad_hard, grad_soft, rtol=1e-6, atol=1e-7)
    # by hand: d/dz sum_k w_k y_k = y (w - sum_k w_k y_k) / T
    y = soft.detach()
    expected = y * (weights - (weights * y).sum(-1, keepdim=True)) / 0.7
    torch.testing.assert_close(grad_hard, expected, rtol=1e-5, atol=1e-6)


# ---- Polyak averaging --------------------------------------------------------------------------------------
def test_one_update_moves_the_targets_by_the_polyak_formula():
    torch.manual_seed(0)
    learner = MADDPGLearner(MADDPGConfig(tau=0.25, network=MADDPGNetworkConfig(hidden_sizes=(8,))), mixed_team())
    g = torch.Generator().manual_seed(1)
    batch = JointBatch(
        obs=torch.randn(16, 2, 3, generator=g),
        actions=torch.rand(16, 2, 3, generator=g),
        rewards=torch.randn(16, 2, generator=g),
        next_obs=torch.randn(16, 2, 3, generator=g),
        terminated=torch.zeros(16, 2),
        active=torch.ones(16, 2),
    )
    before = {n: [p.detach().clone() for p in m.parameters()] for n, m in learner.modules().items()}
    learner.update(batch, UpdateContext(progress=0.0, lr_scale=1.0, rng=np.random.default_rng(0)))
    for online, target in (("actors", "target_actors"), ("critics", "target_critics")):
        new = list(learner.modules()[online].parameters())
        assert not all(torch.equal(a, b) for a, b in zip(new, before[online], strict=True))  # the step moved them
        for theta, old, now in zip(new, before[target], learner.modules()[target].parameters(), strict=True):
            torch.testing.assert_close(now, 0.25 * theta.detach() + 0.75 * old, rtol=0, atol=1e-7)


# ---- exact resume, per-agent metrics ------------------------------------------------------------------------
def saved(run_dir: Path) -> dict[str, torch.Tensor]:
    state = read_train_state(CheckpointStore(run_dir, 3).readable("latest"))
    tensors = {f"{m}.{k}": v for m, tensors in state.modules.items() for k, v in tensors.items()}
    tensors.update({f"replay.{k}": torch.as_tensor(v) for k, v in state.replay.items()})
    return tensors


def test_a_killed_maddpg_run_resumes_bit_exactly_with_its_replay(tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    runner(whole, 60).train()
    runner(parts, 60).train(stop_at_step=30)  # a kill after round 3
    runner(parts, 60, resume=True).train()
    a, b = saved(whole), saved(parts)
    assert "replay.obs" in a and a["replay.obs"].shape == (60, 3, 18) and "target_critics.0.0.weight" in a
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [read_jsonl(run / "metrics.jsonl") for run in (whole, parts)]
    assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]] == [10, 20, 30, 40, 50, 60]
    for x, y in zip(*rows, strict=True):
        keep = [k for k in x if not k.startswith("perf/")]
        assert {k: x[k] for k in keep} == {k: y[k] for k in keep}
    last = rows[0][-1]
    assert last["train/gradient_steps"] == 12.0  # 10 steps stored after the first round: 6 rounds x 2
    for agent in ("agent_0", "agent_1", "agent_2"):
        for key in ("rollout/return_mean", "train/critic_loss", "train/actor_loss", "q/mean"):
            assert np.isfinite(last[f"agent/{agent}/{key}"]), key
    # a resume whose replay cannot hold the saved rows is one line, before anything changes
    with pytest.raises(CheckpointError, match=r"does not fit this configuration: replay size 60 .* capacity of 8$"):
        runner(parts, 100, "buffer_size=8", resume=True)


def test_the_joint_replay_keeps_final_observations_and_wraps_around():
    replay = JointReplay(3, 2, 2, 3)
    for t in range(4):
        obs = np.full((1, 2, 2), t, np.float32)
        replay.add(obs, np.zeros((1, 2, 3)), np.full((1, 2), t), obs + 0.5, np.zeros((1, 2)), np.ones((1, 2)))
    assert replay.size == 3 and replay.position == 1
    assert replay.rewards[:, 0].tolist() == [3, 1, 2] and replay.next_obs[0, 0].tolist() == [3.5, 3.5]
    copy = JointReplay(3, 2, 2, 3)
    copy.load_state_arrays(replay.state_arrays())
    batch = copy.sample(4, np.random.default_rng(0))
    assert torch.equal(batch.next_obs, batch.obs + 0.5) and batch.active.dtype == torch.float32


# ---- export and the Python API ------------------------------------------------------------------------------
@pytest.mark.parametrize("continuous", [False, True])
def test_each_agents_onnx_file_equals_predict_and_the_deterministic_actor(continuous, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from mpe2 import simple_spread_v3

    sets = [*TINY, f"env.kwargs={{max_cycles: 10, continuous_actions: {str(continuous).lower()}}}"]
    if continuous:
        sets.append("marl.share_parameters=true")
    run = tmp_path / "run"
    trained = train_team("maddpg", simple_spread_v3, 20, run, sets)
    assert isinstance(trained, MADDPGRunner) and trained.learner.shared is continuous
    files = export_team(run, "onnx", None, "latest", trust_env_code=True)
    _, learner, _ = load_team(run, "latest", trust_env_code=True)
    predicted_obs = np.random.default_rng(0).normal(size=(32, 3, 18)).astype(np.float32)
    acted = learner.act(predicted_obs, np.random.default_rng(0), deterministic=True)
    predicted = TeamPolicy.from_learner(learner).predict(
        {agent: predicted_obs[:, j] for j, agent in enumerate(learner.spaces.agents)}
    )
    for j, (agent, file) in enumerate(zip(learner.spaces.agents, files, strict=True)):
        manifest = json.loads(file.with_name(file.name + ".json").read_text())
        assert manifest["algo"] == "maddpg" and manifest["inside"]["agent_id_folded"] is continuous
        (onnx_action,) = ort.InferenceSession(str(file)).run(None, {"observation": predicted_obs[:, j]})
        if not continuous:
            np.testing.assert_array_equal(onnx_action, predicted[agent])
            np.testing.assert_array_equal(predicted[agent], acted[:, j, 0])
        else:
            np.testing.assert_allclose(onnx_action, predicted[agent], atol=1e-6)
            low, high = learner.spaces.lows[j], learner.spaces.highs[j]
            np.testing.assert_allclose(predicted[agent], low + (acted[:, j] + 1) * 0.5 * (high - low), atol=1e-5)


# ---- refusals ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("tau=0", "maddpg.tau must be"),
        ("gumbel_temperature=0", "maddpg.gumbel_temperature must be"),
        ("batch_size=0", "maddpg.batch_size must be"),
        ("gamma=1.5", "maddpg.gamma must be"),
        ("exploration_std=-1", "maddpg.exploration_std must be"),
        ("max_grad_norm=0", "maddpg.max_grad_norm must be"),
        ("buffer_size=4", "maddpg.buffer_size must be at least env.num_envs = 8; got 4"),
        ("hidden_sizes=[]", "maddpg.network.hidden_sizes must be"),
        ("network.activation=gelu", "activation"),
        ("marl.share=false", "share"),
    ],
)
def test_bad_maddpg_settings_are_refused_in_one_line(setting, message, capsys, tmp_path):
    code = main(["train", "maddpg", "--env", SPREAD, "--run-dir", str(tmp_path / "r"), "--set", setting, *SETS])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("env_id", "message"),
    [
        ("CartPole-v1", "a multi-agent env must be"),
        ("json:dumps", "'json:dumps' is a function, not a PettingZoo parallel env"),
        ("mpe2:no_such_task_v0", "module 'mpe2' has no 'no_such_task_v0'"),
    ],
)
def test_an_env_that_is_not_a_pettingzoo_team_is_refused_in_one_line(env_id, message, capsys, tmp_path):
    code = main(["train", "maddpg", "--env", env_id, "--run-dir", str(tmp_path / "r"), *SETS])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_sharing_on_a_heterogeneous_team_and_a_single_agent_algorithm_in_train_team_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"^maddpg\.marl\.share_parameters needs .*widths \[3, 2\].*=false$"):
        runner(tmp_path / "r", 20, "env.kwargs={widths: [3, 2]}", "marl.share_parameters=true", env="marl_envs:Relay")
    assert not (tmp_path / "r").exists()
    with pytest.raises(ConfigError, match=r"mappo, ippo, maddpg\); got 'sac'"):
        train_team("sac", SPREAD, 20, tmp_path / "sac")


def test_pgrad_list_shows_maddpgs_fields(capsys):
    assert main(["list", "maddpg"]) == 0
    out = capsys.readouterr().out
    for field in ("gumbel_temperature", "exploration_std", "buffer_size", "share_parameters", "tau"):
        assert field in out, field


@pytest.mark.slow  # ~8 s of CPU: 300 updates
def test_two_agents_learn_their_own_target_actions_from_the_centralised_critics(tmp_path):
    # TeamBandit: each agent is paid 1 per step for its own target action, 10 steps an episode; random play earns
    # 10/3 per agent and episode, the optimum 10
    sets = [*TINY[:-1], "env.num_envs=4", "num_steps=10", "gradient_steps=10", "batch_size=64", "learning_starts=40"]
    train_team("maddpg", "marl_envs:TeamBandit", 1200, tmp_path / "bandit", sets, seed=1)
    returns = [r["rollout/return_mean"] for r in read_jsonl(tmp_path / "bandit" / "metrics.jsonl")]
    assert returns[0] < 5.0 and returns[-1] > 9.0, returns
