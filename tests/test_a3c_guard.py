"""The guard on A3C: non-finite steps skipped in the workers and counted, sustained ones halting the
run, an lr spike rolled back by restoring the shared tensors in place, and drills decided from the
shared step counter. The process-free tests check the pieces; short runs check the whole."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pgrad import metric_names as names
from pgrad.algos.a3c import A3C, build_model
from pgrad.cli import main
from pgrad.envs.factory import SpaceAdapter, make_vector_env
from pgrad.envs.normalize import ObsNormalizer, RewardScaler
from pgrad.faults import parse_fault
from pgrad.monitor.guard import Checkpoint, Rollback, Snapshot
from pgrad.monitor.sinks import read_jsonl
from pgrad.rollout import RolloutCollector
from pgrad.runners.a3c_worker import Report, copy_parameters, drills_for_update, gradient_step
from pgrad.runners.asynchronous import A3CRunner, PendingState, report_verdict, update_metrics
from pgrad.runs import resolve_config
from test_a3c import process_alive, worker_pids

QUIET = ["run.progress=false", "run.tensorboard=false"]


def events(run: Path, prefix: str) -> list[dict]:
    return [e for e in read_jsonl(run / "events.jsonl") if e["kind"].startswith(prefix)]


def learner_tensors(algo: A3C) -> list[torch.Tensor]:
    """Every shared tensor: the parameters, then the optimizer statistics."""
    return [*algo.model.parameters(), *(t for state in algo.optimizer.states for t in state.values())]


def clones(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t.detach().clone() for t in tensors]


# ---- the pieces, without processes ----------------------------------------------------------------


def worker_setup(env_id: str = "CartPole-v1") -> tuple[A3C, Any, Any, Any]:
    """A shared learner, a worker's local copy of it, and a rollout collected with that copy."""
    config, _ = resolve_config("a3c", env_id, sets=["env.num_envs=2", "num_steps=8"], use_preset=False)
    algo_config = config.algo_config
    envs = make_vector_env(config.env)
    adapter = SpaceAdapter(envs.single_observation_space, envs.single_action_space, True)
    collector = RolloutCollector(
        envs, adapter, ObsNormalizer((adapter.obs_dim,), 10.0, False), RewardScaler(2, 0.99, 10.0, False), 20
    )
    collector.reset(3)
    learner = A3C(algo_config, adapter.obs_dim, adapter.action)
    learner.share_memory()
    local = build_model(algo_config, adapter.obs_dim, adapter.action)
    copy_parameters(list(learner.model.parameters()), list(local.parameters()))
    rollout = collector.collect(local.acting_policy(), np.random.default_rng(3), algo_config.num_steps)
    envs.close()
    return learner, local, rollout, algo_config


def test_a_nonfinite_gradient_is_skipped_leaving_shared_parameters_and_statistics_alone():
    learner, local, rollout, algo_config = worker_setup()
    before = clones(learner_tensors(learner))
    stats = gradient_step(
        local, learner.optimizer, rollout, algo_config, 0.01, shared_model=learner.model, nan_grad=True
    )
    assert stats[names.NONFINITE_STEPS] == 1.0 and names.APPROX_KL not in stats
    for tensor, saved in zip(learner_tensors(learner), before, strict=True):
        assert torch.equal(tensor, saved)  # not a parameter, not a square average, not a step count moved

    # The same step with a finite gradient moves the shared model, and says how far (approx KL).
    stats = gradient_step(local, learner.optimizer, rollout, algo_config, 0.01, shared_model=learner.model)
    assert stats[names.NONFINITE_STEPS] == 0.0 and 0.0 < stats[names.APPROX_KL] < 1.0
    assert float(learner.optimizer.states[0]["step"]) == 1.0


def test_the_kl_of_an_update_counts_this_workers_step_only_not_other_workers_steps_since_the_copy():
    learner, local, rollout, algo_config = worker_setup()
    # Another worker moves the shared policy after this worker's copy (as under Hogwild, often many times).
    with torch.no_grad():
        for parameter in learner.model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    shared_before = learner.model.distribution(torch.as_tensor(rollout.obs[:-1]).reshape(-1, rollout.obs.shape[-1]))
    # A zero learning rate moves nothing, so this update's KL is exactly 0 whatever happened before it.
    stats = gradient_step(local, learner.optimizer, rollout, algo_config, 0.0, shared_model=learner.model)
    assert stats[names.APPROX_KL] == pytest.approx(0.0, abs=1e-7)
    # A real step: the KL is the closed form KL(pi_before || pi_after) averaged over the batch's states.
    stats = gradient_step(local, learner.optimizer, rollout, algo_config, 0.05, shared_model=learner.model)
    after = learner.model.distribution(torch.as_tensor(rollout.obs[:-1]).reshape(-1, rollout.obs.shape[-1]))
    expected = float(shared_before.kl(after).mean().detach())
    assert expected > 1e-4 and stats[names.APPROX_KL] == pytest.approx(expected, rel=1e-4)


def test_with_skip_nonfinite_off_a_nan_gradient_reaches_the_parameters():
    learner, local, rollout, algo_config = worker_setup()
    stats = gradient_step(
        local,
        learner.optimizer,
        rollout,
        algo_config,
        0.01,
        shared_model=learner.model,
        nan_grad=True,
        skip_nonfinite=False,
    )
    assert stats[names.NONFINITE_STEPS] == 1.0
    assert not all(torch.isfinite(p).all() for p in learner.model.parameters())


def test_a_report_counts_skipped_steps_and_leaves_their_statistics_out_of_the_means():
    report = Report(worker=1, generation=2)
    report.add({names.POLICY_LOSS: 1.0, names.APPROX_KL: 0.01, names.NONFINITE_STEPS: 0.0}, 0.1, 40, 80)
    report.add({names.POLICY_LOSS: float("nan"), names.NONFINITE_STEPS: 1.0}, 0.1, 80, 120)
    report.add({names.POLICY_LOSS: 3.0, names.APPROX_KL: 0.05, names.NONFINITE_STEPS: 0.0}, 0.1, 160, 200)

    class Episodes:
        count, returns, lengths = 0, [], []

    class Collector:
        episodes = Episodes()

        def normalizer_state(self) -> dict:
            return {}

    payload = report.payload(160, Collector(), 0)  # type: ignore[arg-type]
    assert payload["nonfinite"] == [0, 1, 0] and payload["metrics"][names.NONFINITE_STEPS] == 1.0
    assert payload["metrics"][names.POLICY_LOSS] == 2.0  # the NaN of the skipped step is not in the mean
    assert payload["metrics"][names.APPROX_KL] == pytest.approx(0.03)
    assert payload["metrics"][names.APPROX_KL + "_max"] == 0.05
    assert (payload["generation"], payload["updates"]) == (2, 3)
    # Per update, in order: when it copied the shared weights, when it landed, its own KL (NaN: skipped).
    assert payload["synced_steps"] == [40, 80, 160] and payload["landed_steps"] == [80, 120, 200]
    assert payload["kls"][0::2] == [0.01, 0.05] and np.isnan(payload["kls"][1])


def updates(synced: list[int], landed: list[int], kls: list[float], nonfinite: list[int] | None = None) -> dict:
    """A report's per-update lists, as a worker sends them."""
    return {"synced_steps": synced, "landed_steps": landed, "kls": kls, "nonfinite": nonfinite or [0] * len(kls)}


def kl_rule(payload: dict):
    """The guard's health rule with its defaults (kl_warning 0.05), on some of the report's updates."""
    return lambda indices: (
        update_metrics(payload, indices)[names.NONFINITE_STEPS] == 0
        and update_metrics(payload, indices).get(names.APPROX_KL, 0.0) <= 0.05
    )


def test_a_reports_verdict_on_a_state_reads_the_updates_inside_it_and_those_that_started_from_it():
    # Worker updates of 40 steps: each copies the shared weights (synced) after the previous one landed.
    payload = updates(synced=[100, 140, 180, 220], landed=[140, 180, 220, 260], kls=[0.01, 0.02, 0.9, 0.01])
    rule = kl_rule(payload)
    # A state copied with the count at 200: updates 0-1 landed by then (may be inside it), update 3 copied
    # after it (started from it), update 2 did neither; its KL of 0.9 says nothing about this state.
    assert report_verdict(200, payload, rule) is True
    assert report_verdict(150, payload, rule) is False  # updates 2-3 started from it: mean KL 0.455 > 0.05
    assert report_verdict(230, payload, rule) is False  # update 2 may be inside it: mean KL (0.93 / 3) > 0.05
    assert report_verdict(260, payload, rule) is False
    healthy = updates(synced=[100, 140], landed=[140, 180], kls=[0.01, 0.02])
    assert report_verdict(220, healthy, kl_rule(healthy)) is None  # both may be inside it: none from it yet
    assert report_verdict(140, healthy, kl_rule(healthy)) is None  # update 1 copied at 140: not after it
    assert report_verdict(139, healthy, kl_rule(healthy)) is True
    # A skipped update is unhealthy, and so is a KL that is not finite; skipped steps leave the mean.
    skipped = updates([100, 140], [140, 180], [float("nan"), 0.01], nonfinite=[0, 1])
    assert report_verdict(120, skipped, kl_rule(skipped)) is False
    assert report_verdict(160, skipped, kl_rule(skipped)) is False
    assert update_metrics(skipped, [0, 1]) == {
        names.NONFINITE_STEPS: 1.0,
        names.APPROX_KL: pytest.approx(float("nan"), nan_ok=True),
    }
    assert update_metrics(updates([0, 40], [40, 80], [0.02, float("nan")], [0, 1]), [0, 1]) == {
        names.NONFINITE_STEPS: 1.0,
        names.APPROX_KL: 0.02,
    }


def test_a_pending_state_is_confirmed_once_every_running_worker_vouched_and_refuted_by_one_unhealthy_verdict():
    pending = PendingState(fence=1000, waiting={0, 1})
    assert pending.hear(0, None, {0, 1}) is None  # no update from the state yet
    assert pending.hear(0, True, {0, 1}) is None and pending.waiting == {1}
    assert pending.hear(0, False, {0, 1}) is None  # worker 0 vouched: its later updates judge later states
    assert pending.hear(1, True, {0, 1}) is True
    assert PendingState(1000, {0, 1}).hear(1, False, {0, 1}) is False
    # A last report read after the other worker stopped confirms nothing unless it vouches.
    assert PendingState(1000, {0, 1}).hear(0, None, set()) is None
    assert PendingState(1000, {0, 1}).hear(0, True, {0}) is True


def test_drills_fire_once_across_workers_through_the_shared_flags():
    drills = (parse_fault("lr_spike@100"), parse_fault("nan_grad@100:80"), parse_fault("reward_flip@300:100"))
    fired = [0, 0, 0]  # what multiprocessing.Array('b', 3) holds, in the coordinator's order
    first = drills_for_update(drills, fired, 80, 120, 100.0)  # worker 0's rollout covers [80, 120)
    assert first.lr_factor == 100.0 and first.nan_grad_steps == -1 and not first.flip_reward
    assert [spec.kind for spec in first.started] == ["lr_spike", "nan_grad"] and fired == [1, 1, 0]
    second = drills_for_update(drills, fired, 120, 160, 100.0)  # worker 1, next: the one-shot spike is spent
    assert second.lr_factor == 1.0 and second.nan_grad_steps == -1 and not second.started
    third = drills_for_update(drills, fired, 300, 340, 100.0)
    assert third.flip_reward and third.nan_grad_steps == 0 and fired == [1, 1, 1]


@pytest.mark.parametrize("source", ["memory", "disk"])
def test_a_rollback_copies_the_healthy_state_into_the_shared_tensors_in_place(tmp_path, source):
    """The restore the workers depend on: same storage, new values (no process is started). From the
    confirmed healthy state in memory, or without one from the newest checkpoint marked healthy."""
    config, _ = resolve_config("a3c", "CartPole-v1", sets=QUIET, total_steps=10_000)
    runner = A3CRunner(config, tmp_path / "run", console=False)
    runner.share()
    shared = learner_tensors(runner.algo)
    storage = [t.data_ptr() for t in shared]
    if source == "memory":
        runner.healthy_states.confirmed = runner.capture(step=400)
    else:
        runner.step = 400
        runner.save_checkpoint(None, healthy=True)
    expected = clones(shared)

    # Damage: a few large optimizer steps, as an lr spike would take.
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=generator) for p in runner.algo.model.parameters()]
        runner.algo.optimizer.step(grads, 1.0)
    assert not all(torch.equal(t, e) for t, e in zip(shared, expected, strict=True))

    # A critical KL on a report: the guard decides a rollback, the runner carries it out.
    metrics = {names.STEP: 800, names.UPDATE: 20, names.APPROX_KL: 5.0, names.PARAMS_FINITE: 1.0}
    runner.guard.observe(metrics, 20)
    actions = runner.guard.decide(metrics, 800, None, False)
    runner.log_events(runner.guard.take_events(), 800)
    runner.carry_out(actions, 0, {"row_step": 800, "generation": 0}, None)

    after = learner_tensors(runner.algo)
    for tensor, saved, pointer, original in zip(after, expected, storage, shared, strict=True):
        assert tensor is original and tensor.data_ptr() == pointer and tensor.is_shared()
        assert torch.equal(tensor, saved)
    assert runner.lr_scale.value == 0.5 and runner.generation.value == 1  # workers read both every update
    (rollback,) = events(runner.run_dir, "recovery.rollback")
    assert rollback["restored_from"] == source and rollback["restored_step"] == 400
    assert rollback["lr_scale"] == 0.5 and "approx KL 5 > 0.1" in rollback["message"]
    runner.close()


def test_a_checkpoint_is_marked_healthy_once_reports_confirm_the_weights_it_was_written_from(tmp_path, monkeypatch):
    """A checkpoint written on a healthy report waits unmarked until each running worker has reported
    healthy updates that copied the shared weights after it was written, with the updates that may be
    in it healthy too; a rollback drops the ones still waiting (no process is started)."""
    config, _ = resolve_config("a3c", "CartPole-v1", sets=QUIET, total_steps=10_000)
    runner = A3CRunner(config, tmp_path / "run", console=False)
    runner.share()
    monkeypatch.setattr(runner, "running_workers", lambda: {0, 1})
    store = runner.run.store

    def checkpoint(step: int) -> str:
        runner.step = runner.step_counter.value = step  # the shared count, read after the write: its fence
        runner.carry_out([Checkpoint(score=None, healthy=True)], 0, {"row_step": step}, None)
        return f"step_{step:010d}"

    def report(worker: int, synced: list[int], kls: list[float]) -> None:
        payload = {"row_step": runner.step, **updates(synced, [s + 40 for s in synced], kls)}
        runner.carry_out([Snapshot(True)], worker, payload, None)

    first = checkpoint(1000)
    assert not store.is_healthy(first) and runner.run.checkpoint_path("last_healthy") is None
    report(0, synced=[920, 960], kls=[0.01, 0.01])  # landed by 1000: may be in it, healthy; none from it
    report(1, synced=[980, 1020], kls=[0.01, 0.02])  # 1020: from it
    assert not store.is_healthy(first)
    report(0, synced=[1000, 1040], kls=[0.01, 0.01])  # 1000 is not after the write, 1040 is
    assert store.is_healthy(first) and store.path("last_healthy").name == first
    assert [e["checkpoint"] for e in events(runner.run_dir, "checkpoint.confirmed")] == [first]

    second = checkpoint(2000)  # an update that landed at 1960 had a KL of 3: the damage may be in it
    report(0, synced=[1920, 2000, 2040], kls=[3.0, 0.01, 0.01])
    report(1, synced=[2040], kls=[0.01])
    assert not store.is_healthy(second) and store.path("last_healthy").name == first
    assert [e["checkpoint"] for e in events(runner.run_dir, "checkpoint.refuted")] == [second]

    third = checkpoint(3000)  # an update copied before and landed after it: not in it, not from it
    report(0, synced=[2980, 3020], kls=[5.0, 0.01])
    report(1, synced=[3010], kls=[0.01])
    assert store.is_healthy(third)

    fourth = checkpoint(4000)
    runner.roll_back(Rollback(source="last_healthy", reason="test"), 4000)
    report(0, synced=[4040], kls=[0.01])
    report(1, synced=[4040], kls=[0.01])
    assert not store.is_healthy(fourth) and store.path("last_healthy").name == third
    (rollback,) = events(runner.run_dir, "recovery.rollback")
    assert rollback["restored_from"] == "disk" and rollback["restored_step"] == 3000 and rollback["restored_healthy"]
    runner.close()


def test_the_candidate_in_memory_is_confirmed_by_the_same_rule(tmp_path, monkeypatch):
    config, _ = resolve_config("a3c", "CartPole-v1", sets=[*QUIET, "snapshot_every=100"], total_steps=10_000)
    runner = A3CRunner(config, tmp_path / "run", console=False)
    runner.share()
    monkeypatch.setattr(runner, "running_workers", lambda: {0, 1})
    states = runner.healthy_states

    def report(worker: int, step: int, synced: list[int], kls: list[float]) -> None:
        runner.step = runner.step_counter.value = step
        payload = {"row_step": step, **updates(synced, [s + 40 for s in synced], kls)}
        runner.carry_out([Snapshot(True)], worker, payload, None)

    report(0, 1000, synced=[920, 960], kls=[0.01, 0.01])
    assert states.candidate is not None and states.candidate.step == 1000 and states.confirmed is None
    report(1, 1040, synced=[960, 1000], kls=[0.01, 0.01])  # nothing from it yet
    report(1, 1080, synced=[1040], kls=[0.01])
    report(0, 1120, synced=[1000, 1080], kls=[0.01, 0.01])
    assert states.confirmed is not None and states.confirmed.step == 1000
    assert states.candidate is not None and states.candidate.step == 1120  # the next one, taken on this report
    report(1, 1160, synced=[1100, 1120], kls=[0.01, 0.01])  # landed by its fence, healthy
    report(0, 1200, synced=[1090, 1160], kls=[0.01, 2.0])  # the update from it is not healthy
    assert states.confirmed.step == 1000 and states.candidate is None  # dropped; the next waits for snapshot_every
    report(1, 1240, synced=[1160], kls=[0.01])
    assert states.candidate is not None and states.candidate.step == 1240
    runner.close()


@pytest.mark.parametrize(
    ("memory", "disk", "restored"), [(400, 800, "disk"), (1200, 800, "memory"), (None, None, "start")]
)
def test_a_rollback_restores_the_newest_confirmed_state_else_the_one_the_run_started_from(
    tmp_path, memory, disk, restored
):
    """Memory or disk, whichever confirmed state is newer; with none, the run's first state: never the
    damaged weights."""
    config, _ = resolve_config("a3c", "CartPole-v1", sets=QUIET, total_steps=10_000)
    runner = A3CRunner(config, tmp_path / "run", console=False)
    runner.share()  # the state the run starts from (step 0) is captured here
    initial = clones(learner_tensors(runner.algo))
    if memory is not None:
        runner.healthy_states.confirmed = runner.capture(step=memory)
    if disk is not None:
        runner.step = disk
        runner.save_checkpoint(None, healthy=True)
    for _ in range(3):  # damage
        runner.algo.optimizer.step([torch.ones_like(p) for p in runner.algo.model.parameters()], 1.0)
    runner.roll_back(Rollback(source="last_healthy", reason="test"), 1500)
    (rollback,) = events(runner.run_dir, "recovery.rollback")
    expected_step = {"disk": disk, "memory": memory, "start": 0}[restored]
    assert rollback["restored_from"] == restored and rollback["restored_step"] == expected_step
    for tensor, saved in zip(learner_tensors(runner.algo), initial, strict=True):
        assert torch.equal(tensor, saved)  # every state above holds the initial tensors: nothing moved them
    runner.close()


# ---- short runs ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def drilled_run(tmp_path_factory) -> Path:
    """One A3C CartPole run (2 workers, the preset) with two drills: one NaN gradient at 1000 steps and a
    1000x learning rate for the one update that reaches step 7600.

    One update, so that a rollback coming before the drill's window ends is not followed by updates the
    drill spikes again; 1000x, so that the report holding it reads a KL well over kl_critical (0.1): the
    report's KL is the mean of its 10 updates (8 runs at load 6: 1.5-4.2, where a 100x spike of one update
    read under 0.1 in 1 run of 8). A report covers report_every updates of one worker (~400 env steps
    here) and arrives late on a busy machine: states in memory and on disk are confirmed healthy only by
    reports of updates from their weights (``report_verdict``), so none holds the spike. Left to the
    guard's KL rule: at load 8-9 (two busy loops beside the run), 3 runs in 26 failed here, one on a
    healthy report over 0.1 before the spike and two on a spike whose report read under 0.05.
    The spike comes at 7600, with a candidate every 200 steps: with it at 5600 and candidates every 400,
    a CI run (2 test processes on 2 cores) had no candidate confirmed before the spike and restored the
    start (1 run in 12 here under two busy loops had no rollback at all); at 7600/200, 14 of 14 runs under
    two busy loops restored a confirmed state of step 6000-7040."""
    run = tmp_path_factory.mktemp("a3c_guard") / "run"
    config, _ = resolve_config(
        "a3c",
        "CartPole-v1",
        sets=[
            *QUIET,
            "report_every=10",
            "snapshot_every=200",  # candidates often enough that one is confirmed before the spike
            "eval_every=3000",
            "eval_episodes=2",
            "checkpoint_every=4000",
            "inject=[nan_grad@1000, lr_spike@7600]",
            "lr_spike_factor=1000",
            "lr_cut_duration=0",  # the cut stays: its lift is the guard's (test_guard_decisions), timing-free
        ],
        seed=1,
        total_steps=12_000,  # room after the rollback for judged reports, however late it comes
    )
    A3CRunner(config, run, console=False).train()  # neither drill may stop the run
    return run


def test_one_nan_gradient_on_a3c_is_skipped_and_logged_without_a_halt(drilled_run):
    (drill,) = events(drilled_run, "drill.nan_grad")
    assert drill["drill"] == "nan_grad@1000:1" and drill["fired_at"] >= 1000
    rows = read_jsonl(drilled_run / "metrics.jsonl")
    skipped = [row for row in rows if row.get(names.NONFINITE_STEPS, 0.0) > 0]
    assert len(skipped) == 1 and skipped[0][names.NONFINITE_STEPS] == 1.0 and skipped[0]["worker"] == drill["worker"]
    alerts = events(drilled_run, "critical.nonfinite")
    assert [a["step"] for a in alerts] == [skipped[0]["step"]] and "skipped" in alerts[0]["message"]
    assert all(row.get(names.PARAMS_FINITE, 1.0) == 1.0 for row in rows)
    assert not events(drilled_run, "critical.halted") and events(drilled_run, "run.finished")


def test_an_lr_spike_on_a3c_is_rolled_back_with_restored_weights_and_a_cut_learning_rate(drilled_run):
    (drill,) = events(drilled_run, "drill.lr_spike")
    rollbacks = events(drilled_run, "recovery.rollback")
    assert rollbacks, "the spike was not rolled back"
    rollback = rollbacks[0]
    (kl,) = [e for e in events(drilled_run, "critical.kl") if e["step"] == rollback["step"]]
    assert kl["value"] > 0.1 and rollback["step"] >= drill["fired_at"] and "approx KL" in rollback["reason"]
    # A confirmed healthy state from before the spike (in memory, or the checkpoint near 3000-4000 when it is
    # newer), with every worker paused for the copy.
    assert rollback["restored_from"] in ("memory", "disk") and rollback["restored_step"] < drill["fired_at"]
    assert rollback.get("restored_healthy", True)
    assert rollback["lr_scale"] == 0.5 and rollback["unpaused_workers"] == []
    # The run went on at half the learning rate (the preset's 1.5e-3, not annealed), and no other rollback
    # followed the spike (reports holding pre-restore updates are logged, not judged).
    assert len(rollbacks) == 1
    rows = read_jsonl(drilled_run / "metrics.jsonl")
    later = [row for row in rows if row["step"] > rollback["step"] and names.LR_SCALE in row]
    assert later and all(row[names.LR_SCALE] == 0.5 for row in later)
    # Rows of reports begun before the restore can still hold the spiked update: the rate is read at the end.
    assert later[-1][names.LEARNING_RATE] == pytest.approx(0.75e-3) and later[-1]["step"] >= 10000
    assert events(drilled_run, "run.finished")[0]["step"] >= 10000


def test_a3c_evaluates_and_marks_checkpoints_healthy_or_not(drilled_run):
    rows = read_jsonl(drilled_run / "metrics.jsonl")
    evaluated = [row["step"] for row in rows if names.EVAL_RETURN_MEAN in row]
    # At least one mid-run evaluation (eval_every) and one at the end. The coordinator reads the shared
    # step counter when a report arrives, so under load a crossing can be seen late: no exact count.
    assert len(evaluated) >= 2 and evaluated[0] < 6000 <= evaluated[-1]
    checkpoints = [e for e in events(drilled_run, "checkpoint") if e["kind"] == "checkpoint"]
    assert checkpoints and all(isinstance(c["healthy"], bool) for c in checkpoints)
    # Mid-run checkpoints are written unmarked; the reports that confirm one mark it in the index.
    confirmed = [e["checkpoint"] for e in events(drilled_run, "checkpoint.confirmed")]
    index = json.loads((drilled_run / "checkpoints" / "index.json").read_text())["entries"]
    assert confirmed and all(index[name]["healthy"] for name in confirmed if name in index)
    assert checkpoints[-1]["score"] is not None  # the final checkpoint carries the final evaluation


def test_sustained_nan_gradients_halt_a3c_with_exit_3_and_every_worker_stopped(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "a3c",
            "--env",
            "CartPole-v1",
            "--run-dir",
            str(run),
            "--quiet",
            "--total-steps",
            "10000000",  # the halt must end the run
            "--inject",
            "nan_grad@1000:10000000",
            "--set",
            "run.tensorboard=false",
        ]
    )
    assert code == 3
    assert "NaN/Inf gradients" in capsys.readouterr().err
    kinds = [e["kind"] for e in read_jsonl(run / "events.jsonl")]
    assert kinds[-1] == "critical.halted" and "critical.nonfinite" in kinds
    assert "run.failed" not in kinds and "warning.worker_terminated" not in kinds
    assert not any(process_alive(pid) for pid in worker_pids(run))
    (halted,) = events(run, "critical.halted")
    assert "workers were stopped" in halted["message"] and halted["step"] < 10_000


@pytest.mark.slow  # 44k steps: the policy must have learned before the flip
def test_reward_flip_on_a3c_collapses_evaluation_and_reloads_the_best_checkpoint(tmp_path):
    run = tmp_path / "run"
    config, _ = resolve_config(
        "a3c",
        "CartPole-v1",
        sets=[*QUIET, "eval_every=4000", "checkpoint_every=100000", "inject=[reward_flip@16000:16000]"],
        seed=1,
        total_steps=44_000,
    )
    runner = A3CRunner(config, run, console=False)
    runner.train()
    (drill,) = events(run, "drill.reward_flip")
    rollbacks = events(run, "recovery.rollback")
    assert rollbacks and "evaluation return collapsed" in rollbacks[0]["message"], rollbacks
    # The best-evaluated checkpoint (possibly one written just after the flip began: its weights had not
    # learned from flipped rewards yet), and the run goes on at the same rate (a reload does not cut it).
    rollback = rollbacks[0]
    evaluations = [
        (m["step"], m[names.EVAL_RETURN_MEAN]) for m in read_jsonl(run / "metrics.jsonl") if names.EVAL_RETURN_MEAN in m
    ]
    assert rollback["restored_from"] == "disk" and rollback["restored_healthy"]
    assert rollback["restored_score"] == max(r for s, r in evaluations if s < rollback["step"])
    assert rollback["lr_scale"] == 1.0 and events(run, "run.finished")
    assert all(e["step"] > drill["fired_at"] for e in events(run, "info.eval_collapse"))
    assert runner.guard.state.recoveries == len(rollbacks)
