"""D4PG (issue 28, point 3): the categorical projection against hand values (identity on atoms, 50/50 between
atoms, clipping at both ends, terminal targets), the cross-entropy's scale, the n-step target through the
learner, config refusals, exact resume, evaluation from the CLI, and the guard's critic-divergence rule in a
drill that rolls the run back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pgrad import metric_names as names
from pgrad.algos.contract import UpdateContext
from pgrad.algos.d4pg import D4PG, D4PGConfig, categorical_cross_entropy, categorical_projection
from pgrad.cli import main
from pgrad.config import GuardConfig
from pgrad.errors import ConfigError
from pgrad.monitor.alerts import critic_divergence_rule
from pgrad.nets import ActionSpec
from pgrad.replay import TransitionBatch
from pgrad.runners.off_policy import OffPolicyRunner
from pgrad.runs import resolve_config

SUPPORT = torch.arange(5, dtype=torch.float32)  # atoms 0, 1, 2, 3, 4: v_min 0, v_max 4, spacing 1


def project(probs: list[float], reward: float, discount: float) -> list[float]:
    out = categorical_projection(torch.tensor([probs]), torch.tensor([reward]), torch.tensor([discount]), SUPPORT)
    return out[0].tolist()


@pytest.mark.parametrize(
    ("probs", "reward", "discount", "expected"),
    [
        ([0.1, 0.2, 0.3, 0.4, 0.0], 0.0, 1.0, [0.1, 0.2, 0.3, 0.4, 0.0]),  # on the atoms: the identity
        ([0.1, 0.2, 0.3, 0.4, 0.0], 1.0, 1.0, [0.0, 0.1, 0.2, 0.3, 0.4]),  # shifted one atom exactly
        ([0.0, 1.0, 0.0, 0.0, 0.0], 0.5, 1.0, [0.0, 0.5, 0.5, 0.0, 0.0]),  # halfway: 50/50
        ([0.2, 0.2, 0.2, 0.2, 0.2], 1.0, 0.5, [0.0, 0.3, 0.4, 0.3, 0.0]),  # Tz = 1, 1.5, 2, 2.5, 3
        ([0.1, 0.2, 0.3, 0.4, 0.0], 2.0, 1.0, [0.0, 0.0, 0.1, 0.2, 0.7]),  # beyond v_max piles on the last atom
        ([0.1, 0.2, 0.3, 0.4, 0.0], -10.0, 1.0, [1.0, 0.0, 0.0, 0.0, 0.0]),  # below v_min: all on the first
        ([0.1, 0.2, 0.3, 0.4, 0.0], 2.25, 0.0, [0.0, 0.0, 0.75, 0.25, 0.0]),  # terminal: the reward alone
    ],
)
def test_projection_against_hand_values(probs, reward, discount, expected):
    assert project(probs, reward, discount) == pytest.approx(expected, abs=1e-6)


def test_projection_keeps_mass_one_on_random_rows():
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(64, 5, generator=generator), -1)
    rewards, discounts = torch.randn(64, generator=generator) * 3, torch.rand(64, generator=generator)
    projected = categorical_projection(probs, rewards, discounts, SUPPORT)
    assert torch.allclose(projected.sum(-1), torch.ones(64)) and (projected >= 0).all()
    # the mean moves as the Bellman operator says wherever nothing is clipped: E[Tz] = r + d E[z]
    inside = (rewards >= 0) & (rewards + discounts * 4 <= 4)
    assert torch.allclose((projected @ SUPPORT)[inside], (rewards + discounts * (probs @ SUPPORT))[inside], atol=1e-5)


def test_cross_entropy_of_a_uniform_prediction_is_log_atoms():
    target = torch.tensor([[0.0, 0.5, 0.5, 0.0, 0.0]])
    assert categorical_cross_entropy(torch.zeros(1, 5), target).item() == pytest.approx(np.log(5))


def test_the_learner_target_uses_the_window_discount_and_stops_at_a_terminal():
    config = D4PGConfig(num_atoms=5, v_min=0.0, v_max=4.0, network={"hidden_sizes": [8]})
    learner = D4PG(config, 3, ActionSpec("continuous", 1))
    batch = TransitionBatch(
        obs=torch.zeros(2, 3),
        actions=torch.zeros(2, 1),
        rewards=torch.tensor([2.25, 1.0]),
        next_obs=torch.zeros(2, 3),
        terminated=torch.tensor([1.0, 0.0]),
        truncated=torch.zeros(2),
        discounts=torch.tensor([0.125, 0.0]),  # a 3-step window (gamma 0.5), and a window discounted to 0
    )
    target = learner.target_distribution(batch)
    assert target[0].tolist() == pytest.approx([0, 0, 0.75, 0.25, 0])  # terminated: no bootstrap at all
    assert target[1].tolist() == pytest.approx([0, 1, 0, 0, 0])  # gamma^m = 0: the reward alone
    metrics = learner.update(batch, UpdateContext(progress=0.0, lr_scale=1.0, rng=np.random.default_rng(0)))
    assert "replay/td_abs" not in metrics  # a uniform batch: no priorities to hand back
    assert metrics[names.CRITIC_LOSS_SCALE] == pytest.approx(np.log(5))


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["d4pg.v_min=10", "d4pg.v_max=0"], "d4pg.v_max must be a number above v_min = 10"),
        (["env.num_envs=2"], "env.num_envs must be 1 for d4pg with n_step > 1"),
        (["d4pg.num_atoms=1"], "d4pg.num_atoms must be in [2, 10000]"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(sets, message):
    with pytest.raises(ConfigError) as error:
        resolve_config("d4pg", "Pendulum-v1", sets=sets)
    assert message in str(error.value)


def test_the_guard_rule_reads_the_cross_entropy_against_log_atoms():
    row = {names.CRITIC_LOSS: 50.0, names.CRITIC_LOSS_SCALE: np.log(51)}  # threshold 10 x 2 x 3.93 = 78.6
    assert critic_divergence_rule([row], GuardConfig()) is None
    alert = critic_divergence_rule([{**row, names.CRITIC_LOSS: 1e4}], GuardConfig())
    assert alert is not None and alert.level == "critical" and alert.threshold == pytest.approx(20 * np.log(51))
    assert critic_divergence_rule([{names.CRITIC_LOSS: 1e4}], GuardConfig()) is None  # an MSE critic: no scale


SETS = [
    "run.progress=false",
    "run.tensorboard=false",
    "run.checkpoint_every=1000000",
    "d4pg.network.hidden_sizes=[16, 16]",
    "d4pg.loop.batch_size=16",
    "d4pg.loop.learning_starts=100",
    "d4pg.loop.log_every=100",
    "d4pg.loop.buffer_size=1000",
    "d4pg.v_min=-300",
    "d4pg.v_max=0",
]


def test_resume_is_bit_exact(tmp_path):
    config, _ = resolve_config("d4pg", "Pendulum-v1", sets=SETS, total_steps=300)
    whole = OffPolicyRunner(config, tmp_path / "a", console=False)
    whole.train()
    first = OffPolicyRunner(config, tmp_path / "b", console=False)
    first.train(stop_at_step=200)
    resumed = OffPolicyRunner(config, tmp_path / "b", resume=True, console=False)
    resumed.train()
    for name, module in whole.algo.modules().items():
        for key, value in module.state_dict().items():
            assert torch.equal(value, resumed.algo.modules()[name].state_dict()[key]), f"{name}.{key}"
    np.testing.assert_array_equal(whole.buffer.tree.nodes, resumed.buffer.tree.nodes)
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert (
        rows[-1][names.Q_MEAN]
        == json.loads((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[-1])[names.Q_MEAN]
    )
    assert {names.CRITIC_LOSS, names.TD_ERROR, "replay/beta"} <= rows[-1].keys()


def test_train_then_eval_through_the_cli(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "d4pg", "--env", "Pendulum-v1", "--total-steps", "200", "--run-dir", str(run), "--quiet"]
    assert main([*args, *[item for s in SETS for item in ("--set", s)]]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--episodes", "1", "--deterministic"]) == 0
    assert "evaluation (deterministic, 1 episodes, step_0000000200): mean return" in capsys.readouterr().out
    assert main(["list"]) == 0
    assert "d4pg:" in capsys.readouterr().out


def test_a_critic_blow_up_drill_is_rolled_back(tmp_path):
    """An lr spike of 1e5 knocks the critic's logits to extremes; the cross-entropy of that row is far above
    log(num_atoms), the guard calls it a critic divergence and restores the last healthy state."""
    sets = [*SETS, 'guard.inject=["lr_spike@200"]', "guard.lr_spike_factor=100000"]
    config, _ = resolve_config("d4pg", "Pendulum-v1", sets=sets, total_steps=400)
    OffPolicyRunner(config, tmp_path / "run", console=False).train()
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    kinds = [e["kind"] for e in events]
    assert "critical.critic_divergence" in kinds and "recovery.rollback" in kinds
    assert kinds.index("critical.critic_divergence") < kinds.index("recovery.rollback")
