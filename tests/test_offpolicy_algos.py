"""One gradient step of each learner, by value: what moves and what stays (TD3's delayed actor and
targets, SAC's fixed or learned temperature, Polyak targets), and the guard's non-finite drill."""

import json

import numpy as np
import pytest
import torch

from pgrad.algos.contract import UpdateContext
from pgrad.algos.ddpg import DDPG, DDPGConfig
from pgrad.algos.sac import SAC, SACConfig
from pgrad.algos.td3 import TD3, TD3Config
from pgrad.monitor.guard import Rollback
from pgrad.nets import ActionSpec
from pgrad.replay import ReplayBuffer
from pgrad.runners import trunk
from pgrad.runners.off_policy import OffPolicyRunner
from pgrad.runs import resolve_config

CONTEXT = UpdateContext(progress=0.0, lr_scale=1.0, rng=np.random.default_rng(0))


def batch(rows: int = 64):
    rng = np.random.default_rng(0)
    buffer = ReplayBuffer(rows, 3, 2)
    obs = rng.standard_normal((rows, 3)).astype(np.float32)
    actions = rng.uniform(-1, 1, (rows, 2)).astype(np.float32)
    buffer.add(
        obs,
        actions,
        rng.standard_normal(rows).astype(np.float32),
        obs[::-1].copy(),
        np.zeros(rows, bool),
        np.zeros(rows, bool),
    )
    return buffer.sample(32, rng, torch.device("cpu"))


def snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def moved(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


def test_td3_updates_actor_and_targets_only_every_policy_delay_steps():
    torch.manual_seed(0)
    algo = TD3(TD3Config(network={"hidden_sizes": (16,)}, policy_delay=2, tau=0.5), 3, ActionSpec("continuous", 2))
    actor, target_actor, target_critics = (
        snapshot(algo.actor),
        snapshot(algo.target_actor),
        snapshot(algo.target_critics),
    )
    critics = snapshot(algo.critics)
    metrics = algo.update(batch(), CONTEXT)
    assert "train/actor_loss" not in metrics and moved(critics, algo.critics)
    assert not moved(actor, algo.actor) and not moved(target_actor, algo.target_actor)
    assert not moved(target_critics, algo.target_critics)
    metrics = algo.update(batch(), CONTEXT)
    assert "train/actor_loss" in metrics and moved(actor, algo.actor)
    # targets after the second step: 0.5 online + 0.5 old target (online after its own step)
    for old, new, online in zip(target_actor, algo.target_actor.parameters(), algo.actor.parameters(), strict=True):
        assert torch.allclose(new, 0.5 * old + 0.5 * online)


def test_ddpg_moves_everything_every_step():
    torch.manual_seed(0)
    algo = DDPG(DDPGConfig(network={"hidden_sizes": (16,)}), 3, ActionSpec("continuous", 2))
    before = [snapshot(m) for m in (algo.actor, algo.critic, algo.target_actor, algo.target_critic)]
    metrics = algo.update(batch(), CONTEXT)
    for old, module in zip(before, (algo.actor, algo.critic, algo.target_actor, algo.target_critic), strict=True):
        assert moved(old, module)
    assert algo.critic.count == 1 and metrics["q/min"] <= metrics["q/mean"] <= metrics["q/max"]


def test_sac_fixed_alpha_stays_and_learned_alpha_moves_toward_the_target():
    torch.manual_seed(0)
    fixed = SAC(SACConfig(network={"hidden_sizes": (16,)}, alpha=0.05), 3, ActionSpec("continuous", 2))
    for _ in range(3):
        metrics = fixed.update(batch(), CONTEXT)
    assert float(metrics["train/alpha"]) == pytest.approx(0.05) and "train/alpha_loss" not in metrics
    learned = SAC(SACConfig(network={"hidden_sizes": (16,)}, target_entropy=-10.0), 3, ActionSpec("continuous", 2))
    assert learned.target_entropy == -10.0
    assert (
        SAC(SACConfig(network={"hidden_sizes": (16,)}), 3, ActionSpec("continuous", 2)).target_entropy == -2.0
    )  # -|A|
    # the fresh policy's entropy is far above -10: alpha must fall from 1 (lr 3e-4 per step)
    for _ in range(3):
        metrics = learned.update(batch(), CONTEXT)
    assert float(learned.alpha()) < 1.0 and float(metrics["train/entropy"]) > -10.0


def test_guard_lr_scale_reaches_every_optimizer():
    algo = SAC(SACConfig(network={"hidden_sizes": (16,)}), 3, ActionSpec("continuous", 2))
    algo.update(batch(), UpdateContext(progress=0.0, lr_scale=0.5, rng=np.random.default_rng(0)))
    for optimizer in algo.optimizers().values():
        assert optimizer.param_groups[0]["lr"] == pytest.approx(1.5e-4)
    assert algo.learning_rate_metrics() == {"train/learning_rate": pytest.approx(1.5e-4)}


def test_nan_gradient_drill_is_skipped_and_leaves_finite_weights(tmp_path):
    sets = [
        "run.progress=false",
        "run.tensorboard=false",
        "env.num_envs=1",
        "sac.network.hidden_sizes=[16, 16]",
        "sac.loop.batch_size=32",
        "sac.loop.log_every=200",
        "guard.inject=['nan_grad@300']",
    ]
    config, _ = resolve_config("sac", "Pendulum-v1", sets=sets, total_steps=600)
    runner = OffPolicyRunner(config, tmp_path / "run", console=False)
    runner.train()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["diagnostics/nonfinite_steps"] for r in rows] == [0.0, 1.0, 0.0]
    assert all(torch.isfinite(p).all() for m in runner.algo.modules().values() for p in m.parameters())
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert "drill.nan_grad" in kinds and "critical.nonfinite" in kinds and "run.finished" in kinds


def test_rollback_restores_the_confirmed_healthy_learner_and_keeps_the_buffer(tmp_path):
    sets = [
        "run.progress=false",
        "run.tensorboard=false",
        "env.num_envs=1",
        "sac.network.hidden_sizes=[16, 16]",
        "sac.loop.batch_size=32",
        "sac.loop.log_every=200",
        "guard.snapshot_every=200",
    ]
    config, _ = resolve_config("sac", "Pendulum-v1", sets=sets, total_steps=800)
    runner = OffPolicyRunner(config, tmp_path / "run", console=False)
    runner.train(stop_at_step=600)
    confirmed = runner.healthy_states.confirmed
    assert confirmed is not None and confirmed.step == 400
    with torch.no_grad():
        for module in runner.algo.modules().values():
            for parameter in module.parameters():
                parameter.add_(1.0)  # the damage a rollback must undo
    buffer_size = runner.buffer.size
    logged = []
    runner.log_events = logged.extend  # train() closed the run folder; keep the rollback's event here
    trunk.carry_out(runner, [Rollback("last_healthy", "test")])
    assert logged[0].kind == "recovery.rollback" and "from memory" in logged[0].message
    for name, module in runner.algo.modules().items():
        for key, value in module.state_dict().items():
            assert torch.equal(value, confirmed.modules[name][key]), f"{name}.{key}"
    assert runner.buffer.size == buffer_size  # a rollback undoes learning, not experience
