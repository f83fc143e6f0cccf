"""Acceptance drills for the production guard, on real short CartPole-v1 runs (PPO preset, seed 1).

Each run injects one fault with the drill option and checks what the guard did: the events it wrote,
the checkpoint it restored, the learning rate it left, and what the run achieved afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pgrad.cli import main
from pgrad.errors import TrainingHalted
from pgrad.monitor.sinks import read_jsonl
from pgrad.runners.on_policy import OnPolicyRunner
from pgrad.runs import resolve_config

QUIET = ["run.progress=false", "run.tensorboard=false"]


def train(
    run_dir: Path, total_steps: int, *sets: str, stop_at: int | None = None, resume: bool = False
) -> OnPolicyRunner:
    config, _ = resolve_config("ppo", "CartPole-v1", sets=QUIET + list(sets), seed=1, total_steps=total_steps)
    trainer = OnPolicyRunner(config, run_dir, resume=resume, console=False)
    trainer.train(stop_at_step=stop_at)
    return trainer


def events(run_dir: Path, prefix: str) -> list[dict]:
    return [e for e in read_jsonl(run_dir / "events.jsonl") if e["kind"].startswith(prefix)]


def evaluations(run_dir: Path) -> list[tuple[int, float]]:
    rows = read_jsonl(run_dir / "metrics.jsonl")
    return [(m["step"], m["eval/return_mean"]) for m in rows if "eval/return_mean" in m]


@pytest.mark.slow  # 40k steps and a learning assertion; the KL rollback path is also in the resume and cap drills
def test_lr_spike_triggers_kl_alert_rollback_and_halved_lr_then_recovers(tmp_path):
    run = tmp_path / "spike"
    # Evaluation collapses are their own test; here only the KL path may act.
    trainer = train(
        run, 40_000, "eval_every=2560", "checkpoint_every=2560", "rollback_on_eval=false", "inject=[lr_spike@20000]"
    )
    (drill,) = events(run, "drill.lr_spike")
    (kl,) = [e for e in events(run, "critical.kl") if e["step"] == drill["step"]]
    assert kl["value"] > 0.1
    (rollback,) = events(run, "recovery.rollback")
    assert rollback["step"] == drill["step"] and rollback["lr_scale"] == 0.5
    assert rollback["restored_from"] == "memory" and rollback["restored_step"] < 20_000  # the confirmed healthy state
    # Training went on at half the rate for lr_cut_duration x 40k steps, then at the full rate again.
    (restored,) = events(run, "recovery.lr_restored")
    assert restored["step"] >= rollback["step"] + 4_000 and restored["before"] == 0.5
    assert trainer.step >= 40_000 and trainer.guard.state.lr_scale == 1.0
    before = [r for s, r in evaluations(run) if s < drill["step"]]
    final = evaluations(run)[-1][1]
    assert final >= 0.9 * max(before), (final, before)


def test_one_nonfinite_gradient_is_skipped_and_logged(tmp_path):
    run = tmp_path / "one_nan"
    trainer = train(run, 4096, "inject=[nan_grad@2000]")
    (alert,) = events(run, "critical.nonfinite")
    skipped = [m for m in read_jsonl(run / "metrics.jsonl") if m["diagnostics/nonfinite_steps"] > 0]
    assert [m["step"] for m in skipped] == [alert["step"]] and skipped[0]["diagnostics/nonfinite_steps"] == 1.0
    assert events(run, "run.finished") and trainer.step >= 4096
    assert all(torch.isfinite(p).all() for p in trainer.algo.model.parameters())
    assert not events(run, "recovery.") and not events(run, "critical.halted")


def test_repeated_nonfinite_gradients_halt_with_exit_3_and_dumps(tmp_path, capsys):
    run = tmp_path / "many_nan"
    code = main(
        [
            "train",
            "ppo",
            "--env",
            "CartPole-v1",
            "--run-dir",
            str(run),
            "--total-steps",
            "6000",
            "--quiet",
            "--set",
            "run.tensorboard=false",
            "--inject",
            "nan_grad@3000:2000",
        ]
    )
    assert code == 3
    assert "NaN/Inf gradients" in capsys.readouterr().err
    trajectories = np.load(run / "halt_trajectories.npz", allow_pickle=False)
    lengths = trajectories["episode_length"]
    assert 0 < len(lengths) <= 100 and lengths.sum() == len(trajectories["rewards"]) == len(trajectories["obs"])
    assert np.all(trajectories["rewards"][trajectories["valid"]] == 1.0)  # CartPole pays 1 per valid step
    batch = np.load(run / "halt_batch.npz", allow_pickle=False)
    assert batch["obs"].shape == (256, 4) and set(batch.files) >= {"actions", "advantages", "returns", "mask"}
    (halt,) = events(run, "critical.halted")
    assert halt["step"] <= 3072 + 256


@pytest.mark.slow  # 20k steps; needs a policy that has learned before the flip
def test_reward_flip_collapses_evaluation_and_reloads_the_best_checkpoint(tmp_path):
    run = tmp_path / "flip"
    trainer = train(run, 20_480, "eval_every=2048", "checkpoint_every=100000", "inject=[reward_flip@10000:5000]")
    (rollback,) = events(run, "recovery.rollback")
    assert "evaluation return collapsed" in rollback["message"] and rollback["lr_scale"] == 1.0  # a reload keeps it
    collapses = events(run, "info.eval_collapse")
    # Rechecked every update once collapsed; reloaded once the collapse lasted eval_collapse_span x 2048 steps.
    assert len(collapses) >= 2 and all(e["step"] > 10_000 for e in collapses)
    assert rollback["step"] - collapses[0]["step"] >= 1024 and rollback["step"] == collapses[-1]["step"]
    best_before = max(r for s, r in evaluations(run) if s < 10_000)
    assert rollback["restored_healthy"] and rollback["restored_score"] == best_before
    assert max(r for s, r in evaluations(run) if s < rollback["step"]) == best_before
    assert trainer.guard.state.recoveries == 1


def test_recovery_cap_stops_a_run_that_keeps_failing(tmp_path):
    run = tmp_path / "cap"
    with pytest.raises(TrainingHalted, match="already used its 2 recoveries"):
        train(
            run,
            20_000,
            "checkpoint_every=1024",
            "lr_spike_factor=1000",
            "max_recoveries=2",
            "inject=[lr_spike@4000:100000]",
        )
    assert len(events(run, "recovery.rollback")) == 2
    (cap,) = events(run, "critical.recovery_cap")
    assert "Earlier recoveries: step" in cap["message"]
    assert json.loads((run / "checkpoints" / "index.json").read_text())["latest"] < "step_0000004096"


def test_resume_is_exact_across_a_rollback(tmp_path):
    sets = ("checkpoint_every=1024", "eval_every=1024", "lr_spike_factor=1000", "inject=[lr_spike@4000]")
    whole = train(tmp_path / "a", 6144, *sets)
    train(tmp_path / "b", 6144, *sets, stop_at=3072)
    resumed = train(tmp_path / "b", 6144, *sets, resume=True)
    assert len(events(tmp_path / "a", "recovery.rollback")) == len(events(tmp_path / "b", "recovery.rollback")) == 1
    assert resumed.guard.state == whole.guard.state
    for name, tensor in whole.algo.model.state_dict().items():
        assert torch.equal(tensor, resumed.algo.model.state_dict()[name]), name


DAMAGE = [
    "checkpoint_every=256",
    "snapshot_every=256",
    "eval_every=0",
    "lr_spike_factor=1000",
    "inject=[nan_grad@2000, lr_spike@2100]",
]


def test_rollback_returns_to_the_newest_confirmed_healthy_state_in_memory(tmp_path):
    # The NaN step makes the update ending at 2048 critical; the lr spike one update later trips the KL
    # rule at 2304. The state after 1792 was followed by that sick update, so it was never confirmed:
    # the rollback lands on 1536, whose next update (1792) was healthy too.
    run = tmp_path / "memory"
    train(run, 2816, *DAMAGE)
    index = json.loads((run / "checkpoints" / "index.json").read_text())
    assert index["entries"]["step_0000002048"]["healthy"] is False
    (rollback,) = events(run, "recovery.rollback")
    assert rollback["step"] == 2304 and rollback["restored_from"] == "memory" and rollback["restored_step"] == 1536


def test_with_nothing_confirmed_in_memory_the_rollback_uses_the_newest_healthy_checkpoint(tmp_path):
    # A spike in the second update (256 steps each): the state after the first is only a candidate, not
    # confirmed yet, so the rollback falls back to disk, where the checkpoint at 256 is marked healthy.
    run = tmp_path / "disk"
    train(run, 1024, "checkpoint_every=256", "eval_every=0", "lr_spike_factor=1000", "inject=[lr_spike@300]")
    (rollback,) = events(run, "recovery.rollback")
    assert rollback["step"] == 512 and rollback["restored_from"] == "disk"
    assert rollback["restored_step"] == 256 and rollback["restored_healthy"]


def test_restore_learner_brings_back_model_optimizer_and_normaliser(tmp_path):
    from pgrad.monitor.recovery import restore_learner

    trainer = train(tmp_path / "restore", 2048, "env.norm_obs=true", "env.norm_reward=true", "eval_every=0")
    path = trainer.store.path("latest")
    model = {k: v.clone() for k, v in trainer.algo.model.state_dict().items()}
    adam = {k: v["exp_avg"].clone() for k, v in trainer.algo.optimizer.state_dict()["state"].items()}
    obs_mean = trainer.collector.obs_normalizer.stats.state()["mean"].copy()
    reward_var = trainer.collector.reward_scaler.stats.state()["var"].copy()
    with torch.no_grad():
        for p in trainer.algo.model.parameters():
            p.add_(1.0)
    for state in trainer.algo.optimizer.state.values():
        state["exp_avg"].zero_()
    trainer.collector.obs_normalizer.stats.update(np.full((64, 4), 100.0))
    trainer.collector.reward_scaler.stats.update(np.full(64, 100.0))
    from pgrad.checkpoint import read_train_state

    state = read_train_state(path)
    assert state.step == 2048
    restore_learner(state, path, trainer.algo, trainer.collector)
    assert all(torch.equal(v, trainer.algo.model.state_dict()[k]) for k, v in model.items())
    assert all(torch.equal(v, trainer.algo.optimizer.state_dict()["state"][k]["exp_avg"]) for k, v in adam.items())
    np.testing.assert_array_equal(trainer.collector.obs_normalizer.stats.state()["mean"], obs_mean)
    np.testing.assert_array_equal(trainer.collector.reward_scaler.stats.state()["var"], reward_var)


@pytest.mark.parametrize("algo", ["ppo", "a2c", "trpo"])
def test_on_a_healthy_run_the_guard_changes_nothing_but_its_own_evaluations(tmp_path, algo):
    """Guard on (alerts, evaluations, in-memory healthy states, checkpoints) and guard off: the same
    seed ends with bit-identical parameters. Evaluations use their own envs and seeds."""
    finals = []
    for enabled, eval_every in ((True, 1024), (False, 0)):
        sets = [
            *QUIET,
            f"guard.enabled={str(enabled).lower()}",
            f"guard.eval_every={eval_every}",
            f"run.checkpoint_every={1024 if enabled else 10**8}",
        ]
        config, _ = resolve_config(algo, "CartPole-v1", sets=sets, seed=2, total_steps=4096)
        trainer = OnPolicyRunner(config, tmp_path / f"{algo}-{enabled}", console=False)
        trainer.train()
        finals.append([p.detach().clone() for p in trainer.algo.model.parameters()])
        if enabled:
            assert not events(tmp_path / f"{algo}-{enabled}", "recovery")
    assert all(torch.equal(a, b) for a, b in zip(*finals, strict=True))


def test_lr_spike_drill_end_to_end_restores_the_weights_and_the_return_recovers(tmp_path):
    """CI-sized acceptance drill: the spike's update is undone (the restored state is an earlier,
    confirmed one, not the damaged weights), and evaluation afterwards is back near the level before."""
    run = tmp_path / "ci_spike"
    trainer = train(run, 12_288, "eval_every=2048", "inject=[lr_spike@6000]")
    (drill,) = events(run, "drill.lr_spike")
    (rollback,) = events(run, "recovery.rollback")
    assert rollback["step"] == drill["step"] and rollback["restored_from"] == "memory"
    assert rollback["restored_step"] < drill["step"]  # the weights were restored, not kept
    before = max(r for s, r in evaluations(run) if s < drill["step"])
    assert evaluations(run)[-1][1] >= 0.8 * before, (evaluations(run), before)
    assert trainer.guard.state.recoveries == 1
