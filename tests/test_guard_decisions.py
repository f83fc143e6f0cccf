"""The guard as a decision object: metrics in, actions out, no loop, model or file involved."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pgrad import metric_names as names
from pgrad.config import GuardConfig
from pgrad.monitor.guard import Checkpoint, Guard, Halt, Rollback, Snapshot


def healthy_metrics(step: int, kl: float = 0.01) -> dict[str, float]:
    return {
        names.STEP: step,
        names.APPROX_KL: kl,
        names.ENTROPY: 0.69,
        names.PARAMS_FINITE: 1.0,
        names.NONFINITE_STEPS: 0.0,
        names.STEPS_PER_SECOND: 1000.0,
        names.GRAD_NORM: 1.0,
    }


def run_update(
    guard: Guard, step: int, metrics: dict[str, float], evaluation: float | None = None, checkpoint_due: bool = False
) -> list:
    guard.begin_update(step - 100, step)
    guard.observe(metrics, updates=step // 100)
    return guard.decide(metrics, step, evaluation, checkpoint_due)


def test_a_healthy_update_asks_for_nothing_or_a_healthy_checkpoint():
    guard = Guard(GuardConfig(eval_every=0), total_steps=10_000, run_dir=Path("run"))
    assert run_update(guard, 100, healthy_metrics(100)) == [Snapshot(True)]
    metrics = {**healthy_metrics(200), names.RETURN_MEAN: 42.0}
    assert run_update(guard, 200, metrics, checkpoint_due=True) == [Snapshot(True), Checkpoint(42.0, True)]


def test_only_an_update_under_the_kl_warning_level_may_be_returned_to():
    """A state taken as the damage starts must never be the one restored: KL between the warning and
    the critical level is no alarm, but such a state is not kept as the rollback target either."""
    guard = Guard(GuardConfig(kl_warning=0.05, kl_critical=0.1), total_steps=10_000, run_dir=Path("run"))
    assert run_update(guard, 100, healthy_metrics(100, kl=0.07)) == [Snapshot(False)]
    assert run_update(guard, 200, healthy_metrics(200, kl=float("nan"))) == [Snapshot(False)]
    assert run_update(guard, 300, {**healthy_metrics(300), names.NONFINITE_STEPS: 1.0}) == [Snapshot(False)]
    assert run_update(guard, 400, healthy_metrics(400, kl=0.05)) == [Snapshot(True)]


def test_critical_kl_rolls_back_to_the_last_healthy_state_and_cuts_the_lr():
    guard = Guard(GuardConfig(kl_critical=0.1, lr_cut=0.5), total_steps=10_000, run_dir=Path("run"))
    actions = run_update(guard, 100, healthy_metrics(100, kl=0.5))
    assert actions == [Rollback("last_healthy", "approx KL 0.5 > 0.1")]
    assert guard.state.lr_scale == 0.5 and guard.state.recoveries == 1 and guard.lr_scale() == 0.5
    assert guard.state.recovery_log == ["step 100: approx KL 0.5 > 0.1"]


def test_past_the_recovery_cap_the_guard_halts_instead_of_looping():
    guard = Guard(GuardConfig(max_recoveries=1), total_steps=10_000, run_dir=Path("run"))
    assert isinstance(run_update(guard, 100, healthy_metrics(100, kl=0.5))[0], Rollback)
    (halt,) = run_update(guard, 200, healthy_metrics(200, kl=0.5))
    assert isinstance(halt, Halt) and halt.kind == "critical.recovery_cap" and not halt.dump
    assert "already used its 1 recoveries" in halt.message and "step 100: approx KL" in halt.message


def test_sustained_nonfinite_steps_halt_with_a_dump():
    guard = Guard(GuardConfig(nonfinite_window=10, nonfinite_halt=0.1), total_steps=10_000, run_dir=Path("run"))
    guard.state.recent_steps = [1, 1]  # what the optimizer hook records: two non-finite steps of the last 10
    (halt,) = run_update(guard, 100, healthy_metrics(100))
    assert halt == Halt("critical.halted", halt.message, dump=True) and "20% of the last 10" in halt.message


def test_an_evaluation_collapse_reloads_the_best_only_after_patience_and_a_confirmed_best():
    config = GuardConfig(eval_every=1000, eval_max_drop=0.5, eval_patience=2)
    guard = Guard(config, total_steps=100_000, run_dir=Path("run"))
    # One lucky evaluation is not a reference: the best is confirmed by two in a row.
    assert run_update(guard, 1000, healthy_metrics(1000), evaluation=300.0) == [Snapshot(True), Checkpoint(300.0, True)]
    assert guard.state.best_eval is None
    run_update(guard, 2000, healthy_metrics(2000), evaluation=200.0)
    assert guard.state.best_eval == 200.0
    # A collapse under way: the checkpoint is kept, but neither it nor this state counts as healthy.
    assert run_update(guard, 3000, healthy_metrics(3000), evaluation=90.0) == [Snapshot(False), Checkpoint(90.0, False)]
    assert [e.kind for e in guard.take_events()] == ["info.eval_collapse"]  # the reload, if it comes, is shown
    actions = run_update(guard, 4000, healthy_metrics(4000), evaluation=80.0)
    assert actions == [Rollback("best", "evaluation return collapsed for 2 evaluations in a row over 1000 steps")]


def test_drills_fire_once_and_scale_the_learning_rate_only_for_their_update():
    config = GuardConfig(inject=("lr_spike@150",), lr_spike_factor=100.0)
    guard = Guard(config, total_steps=10_000, run_dir=Path("run"))
    guard.begin_update(0, 100)
    assert guard.lr_scale() == 1.0
    guard.begin_update(100, 200)
    assert guard.lr_scale() == 100.0
    assert [e.kind for e in guard.take_events()] == ["drill.lr_spike"]
    guard.begin_update(200, 300)
    assert guard.lr_scale() == 1.0 and guard.state.fired == ["lr_spike@150:1"]


@pytest.mark.parametrize("enabled", [True, False])
def test_a_disabled_guard_raises_no_alert_and_takes_no_action(enabled):
    guard = Guard(GuardConfig(enabled=enabled), total_steps=10_000, run_dir=Path("run"))
    actions = run_update(guard, 100, healthy_metrics(100, kl=0.5))
    assert (actions != []) == enabled
    assert (names.ALERTS in guard.history[-1]) == enabled


def evaluation_run(guard: Guard, evaluations: list[list[float]], train_returns: list[float]) -> list:
    """One evaluation per update (every 1000 steps); returns every action list."""
    out = []
    for i, (episodes, train) in enumerate(zip(evaluations, train_returns, strict=True)):
        step = 1000 * (i + 1)
        out.append(run_update(guard, step, {**healthy_metrics(step), names.RETURN_MEAN: train}, evaluation=episodes))
    return out


def test_noisy_evaluations_that_do_not_collapse_are_never_a_rollback():
    """LunarLander-like: 5 deterministic episodes spread by ~100 around a mean that slowly rises;
    the means swing by well over half of |best|, which the old rule read as collapses."""
    rng = np.random.default_rng(0)
    config = GuardConfig(eval_every=1000, eval_max_drop=0.5, eval_patience=2)
    for seed in range(20):
        rng = np.random.default_rng(seed)
        guard = Guard(config, total_steps=10**6, run_dir=Path("run"))
        means = np.linspace(-150, 100, 30)
        episodes = [list(m + rng.normal(0, 100, 5)) for m in means]
        actions = evaluation_run(guard, episodes, list(np.linspace(-150, 150, 30)))
        assert not any(isinstance(a, Rollback | Halt) for step in actions for a in step), seed


def test_a_lucky_evaluation_against_a_rising_training_return_is_noise_not_a_collapse():
    """The LunarLander seed-1 run: a confirmed reference, then evaluations well below it while the
    training return improves. Logged as info (with the evidence), never counted."""
    config = GuardConfig(eval_every=1000, eval_max_drop=0.5, eval_patience=2)
    guard = Guard(config, total_steps=10**6, run_dir=Path("run"))
    spread = [-40.0, -20.0, 0.0, 20.0, 40.0]
    evaluations = [[60.0 + d for d in spread], [50.0 + d for d in spread]] + [[-150.0 + d for d in spread]] * 3
    actions = evaluation_run(guard, evaluations, [-120.0, -100.0, -60.0, -40.0, 0.0])
    assert guard.state.best_eval == 50.0 and guard.state.best_eval_train == -100.0
    assert not any(isinstance(a, Rollback) for step in actions for a in step)
    drops = [e for e in guard.take_events() if e.kind == "info.eval_drop"]
    assert drops and not drops[0].show and drops[0].data["train"] == -60.0
    assert guard.state.eval_collapses == 0


def test_a_real_collapse_under_noise_is_still_caught():
    config = GuardConfig(eval_every=1000, eval_max_drop=0.5, eval_patience=2)
    guard = Guard(config, total_steps=10**6, run_dir=Path("run"))
    rng = np.random.default_rng(3)
    evaluations = [list(m + rng.normal(0, 30, 5)) for m in (200.0, 210.0, 205.0, -300.0, -320.0)]
    actions = evaluation_run(guard, evaluations, [150.0, 160.0, 170.0, -200.0, -250.0])
    assert actions[-1] == [Rollback("best", "evaluation return collapsed for 2 evaluations in a row over 1000 steps")]
    (first, second) = [e for e in guard.take_events() if e.kind == "info.eval_collapse"]
    assert first.data["drop"] > first.data["noise"] > 0 and first.data["train"] == -200.0


def test_a_drop_within_the_noise_of_the_episodes_is_not_a_collapse():
    config = GuardConfig(
        eval_every=1000, eval_max_drop=0.5, eval_patience=1, eval_needs_train_drop=False, eval_collapse_span=0
    )
    guard = Guard(config, total_steps=10**6, run_dir=Path("run"))
    wide = [-100.0, -50.0, 0.0, 50.0, 100.0]  # standard error 35 per evaluation
    evaluation_run(guard, [[40.0 + d for d in wide], [40.0 + d for d in wide]], [0.0, 0.0])
    assert guard.state.best_eval == 40.0
    assert evaluation_run(guard, [[-60.0 + d for d in wide]], [0.0]) == [[Snapshot(True), Checkpoint(-60.0, True)]]
    assert guard.state.eval_collapses == 0  # a drop of 100 < 3 x sqrt(35^2 + 35^2) = 150
    # No spread in this one: the noise is the reference's alone, 3 x 35 = 105 < a drop of 140.
    assert isinstance(evaluation_run(guard, [[-100.0, -100.0, -100.0]], [0.0])[0][0], Rollback)


CRITIC = f"{names.UPDATE_NORM}/value_optimizer"


def test_a_critical_update_size_spike_rolls_back_like_a_critical_kl():
    """TRPO whose critic took one huge step: the policy's KL stays small, the parameters jumped."""
    guard = Guard(GuardConfig(eval_every=0, update_spike=10.0), total_steps=100_000, run_dir=Path("run"))
    for step in range(100, 2100, 100):
        assert run_update(guard, step, {**healthy_metrics(step), CRITIC: 0.02}) == [Snapshot(True)]
    (action,) = run_update(guard, 2100, {**healthy_metrics(2100, kl=0.005), CRITIC: 1.5})
    assert isinstance(action, Rollback) and action.source == "last_healthy"
    assert action.reason == "update size 1.5 > 0.2 (10x its running median 0.02)"
    assert guard.state.lr_scale == 0.5
    off = Guard(GuardConfig(eval_every=0, rollback_on_update_spike=False), total_steps=100_000, run_dir=Path("run"))
    for step in range(100, 2100, 100):
        run_update(off, step, {**healthy_metrics(step), CRITIC: 0.02})
    assert run_update(off, 2100, {**healthy_metrics(2100), CRITIC: 1.5}) == [Snapshot(False)]


def test_early_evaluations_confirm_a_new_best_and_follow_a_training_return_drop():
    """Scheduled every 10,000 steps; early ones at most every 1,000 (eval_recheck 0.1), each for a reason."""
    config = GuardConfig(eval_every=10_000, eval_recheck=0.1)
    guard = Guard(config, total_steps=100_000, run_dir=Path("run"))

    def update(step: int, train: float, evaluation: float | None = None) -> bool:
        metrics = {**healthy_metrics(step), names.RETURN_MEAN: train}
        guard.begin_update(step - 500, step)
        guard.observe(metrics, updates=step // 500)
        due = guard.evaluation_due(step)
        guard.decide(metrics, step, [evaluation] * 5 if due and evaluation is not None else None, False)
        return due

    assert not update(9_500, 100.0)
    assert update(10_000, 100.0, 200.0)  # scheduled; 200 is not confirmed yet
    assert not update(10_500, 100.0)  # too soon after the last evaluation
    assert update(11_000, 110.0, 210.0)  # early: confirm the new best
    assert [e.data["reason"] for e in guard.take_events() if e.kind == "info.eval_early"] == ["confirm"]
    assert guard.state.best_eval == 200.0 and guard.state.best_eval_train == 100.0
    assert not any(update(step, 90.0) for step in range(11_500, 15_000, 500))  # a dip of 10%: nothing to check
    assert update(15_000, 40.0, 20.0)  # the training return fell below half its level at the best
    assert guard.state.eval_collapses == 1
    assert not update(15_500, 30.0)
    assert update(16_000, 30.0, 15.0)  # rechecked within 1,000 steps, not 10,000
    assert guard.state.eval_collapses == 2 and guard.state.recoveries == 0  # a collapse must last eval_collapse_span
    assert update(17_000, 30.0, 15.0) and guard.state.recoveries == 0
    assert all(update(step, 30.0, 15.0) for step in range(18_000, 25_000, 1_000))  # 9,000 steps: under 1 x 10,000
    assert guard.state.recoveries == 0
    assert update(25_000, 30.0, 15.0)  # collapsed for 10,000 steps (eval_collapse_span x eval_every): reload the best
    events = guard.take_events()
    reasons = [e.data["reason"] for e in events if e.kind == "info.eval_early"]
    assert reasons == ["train_drop"] + ["collapse"] * 9
    assert guard.state.recoveries == 1
    quiet = Guard(GuardConfig(eval_every=10_000, eval_recheck=0.0), total_steps=100_000, run_dir=Path("run"))
    guard = quiet
    assert update(10_000, 100.0, 200.0) and not any(update(s, 1.0, 0.0) for s in range(10_500, 20_000, 500))


def test_a_dip_the_run_climbs_out_of_by_itself_is_never_reloaded():
    """A2C on CartPole: from 500 to under 100 and back within a few thousand steps. Rechecked every
    1,000 steps, collapsed twice in a row, but back before eval_collapse_span x eval_every."""
    config = GuardConfig(eval_every=10_000, eval_recheck=0.1, eval_collapse_span=0.5)
    guard = Guard(config, total_steps=10**6, run_dir=Path("run"))
    steps = [10_000, 11_000, 20_000, 21_000, 22_000, 23_000, 24_000, 30_000]
    evaluations = [500.0, 500.0, 90.0, 60.0, 80.0, 300.0, 500.0, 500.0]
    trains = [480.0, 490.0, 300.0, 70.0, 90.0, 250.0, 450.0, 490.0]
    for step, evaluation, train in zip(steps, evaluations, trains, strict=True):
        metrics = {**healthy_metrics(step), names.RETURN_MEAN: train}
        actions = run_update(guard, step, metrics, evaluation=[evaluation] * 5)
        assert not any(isinstance(a, Rollback | Halt) for a in actions), step
    assert guard.state.recoveries == 0 and guard.state.eval_collapses == 0


def test_the_first_rollbacks_cut_is_lifted_after_its_duration_a_second_ones_stay():
    """One destructive update is a one-off; a second recovery shows the fault recurs."""
    config = GuardConfig(eval_every=0, lr_cut=0.5, lr_cut_duration=0.1)
    guard = Guard(config, total_steps=10_000, run_dir=Path("run"))
    assert isinstance(run_update(guard, 100, healthy_metrics(100, kl=0.5))[0], Rollback)
    assert guard.state.lr_scale == 0.5 and guard.state.lr_restore_step == 1_100
    run_update(guard, 1_000, healthy_metrics(1_000))
    assert guard.state.lr_scale == 0.5
    run_update(guard, 1_100, healthy_metrics(1_100))
    assert guard.state.lr_scale == 1.0 and guard.history[-1][names.LR_SCALE] == 1.0
    (event,) = [e for e in guard.take_events() if e.kind == "recovery.lr_restored"]
    assert event.data == {"lr_scale": 1.0, "before": 0.5}
    assert isinstance(run_update(guard, 2_000, healthy_metrics(2_000, kl=0.5))[0], Rollback)
    run_update(guard, 9_000, healthy_metrics(9_000))
    assert guard.state.lr_scale == 0.5 and guard.state.lr_restore_step is None  # the second cut stays
    permanent = Guard(GuardConfig(eval_every=0, lr_cut_duration=0.0), total_steps=10_000, run_dir=Path("run"))
    run_update(permanent, 100, healthy_metrics(100, kl=0.5))
    run_update(permanent, 9_000, healthy_metrics(9_000))
    assert permanent.state.lr_scale == 0.5


def test_an_evaluation_reload_keeps_the_learning_rate_and_past_the_cap_is_skipped_not_a_halt():
    """A reload after a lasting collapse returns to the best state; nothing says the step size caused
    it. Past guard.max_recoveries a run whose evaluations keep collapsing goes on (stopping saves
    nothing); a run that keeps blowing up (critical KL) still stops."""
    config = GuardConfig(eval_every=1000, eval_max_drop=0.5, eval_patience=2, eval_recheck=0.0, max_recoveries=1)
    guard = Guard(config, total_steps=100_000, run_dir=Path("run"))

    def evaluate(step: int, value: float, train: float) -> list:
        return run_update(guard, step, {**healthy_metrics(step), names.RETURN_MEAN: train}, evaluation=[value] * 5)

    for step, value, train in ((1000, 200.0, 150.0), (2000, 200.0, 150.0), (3000, 20.0, 10.0)):
        evaluate(step, value, train)
    (action,) = evaluate(4000, 20.0, 10.0)
    assert isinstance(action, Rollback) and action.source == "best"
    assert guard.state.lr_scale == 1.0 and guard.state.recoveries == 1 and guard.state.lr_cuts == 0
    for step, value, train in ((5000, 200.0, 150.0), (6000, 200.0, 150.0), (7000, 20.0, 10.0)):
        evaluate(step, value, train)
    actions = evaluate(8000, 20.0, 10.0)
    assert not any(isinstance(a, Rollback | Halt) for a in actions)
    assert [e.kind for e in guard.take_events() if e.kind.startswith("warning.")] == ["warning.recovery_budget"]
    (halt,) = run_update(guard, 10_000, healthy_metrics(10_000, kl=0.5))
    assert isinstance(halt, Halt) and halt.kind == "critical.recovery_cap"


def test_only_scheduled_and_confirming_evaluations_write_checkpoints():
    """A checkpoint's score makes it a reload target; an evaluation that follows a collapse or a falling
    training return evaluates a policy no reload would return to."""
    guard = Guard(GuardConfig(eval_every=10_000, eval_recheck=0.1), total_steps=100_000, run_dir=Path("run"))

    def update(step: int, train: float, evaluation: float) -> list:
        metrics = {**healthy_metrics(step), names.RETURN_MEAN: train}
        guard.begin_update(step - 1_000, step)
        guard.observe(metrics, updates=step // 1_000)
        due = guard.evaluation_due(step)
        return guard.decide(metrics, step, [evaluation] * 5 if due else None, False)

    checkpoints = {}
    for step, train, evaluation in ((10_000, 100.0, 200.0), (11_000, 100.0, 200.0), (12_000, 30.0, 20.0)):
        checkpoints[step] = [a for a in update(step, train, evaluation) if isinstance(a, Checkpoint)]
    assert checkpoints[10_000] == [Checkpoint(200.0, True)]  # on schedule
    assert checkpoints[11_000] == [Checkpoint(200.0, True)]  # early, confirming the first reference
    assert guard.early_reason == "train_drop" and checkpoints[12_000] == []
