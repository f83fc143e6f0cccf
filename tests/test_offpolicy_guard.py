"""The off-policy guard rules (Q divergence and geometric growth, TD-error spikes, alpha collapse and
explosion) as pure functions over metric histories, the rollback a diverging critic gets, and silence
on a healthy run's recorded rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgrad import metric_names as names
from pgrad.config import GuardConfig
from pgrad.monitor.alerts import alpha_rule, check_alerts, q_divergence_rule, td_error_rule
from pgrad.monitor.guard import Guard, Rollback, Snapshot

CONFIG = GuardConfig()


def row(step: int, q_mean: float = -50.0, td: float = 1.0, alpha: float = 0.2, bound: float = 1600.0) -> dict:
    return {
        names.STEP: step,
        names.Q_MEAN: q_mean,
        names.Q_MIN: q_mean * 2,
        names.Q_MAX: q_mean / 2,
        names.Q_BOUND: bound,
        names.TD_ERROR: td,
        names.ALPHA: alpha,
        names.ALPHA_LOSS: 0.1,
        names.PARAMS_FINITE: 1.0,
        names.NONFINITE_STEPS: 0.0,
    }


def test_q_beyond_the_discounted_reward_bound_is_critical():
    # r_max 16.3 (Pendulum), gamma 0.99: bound 1630; the factor 2 puts the line at 3260
    assert q_divergence_rule([row(1000, q_mean=-1600.0, bound=1630.0)], CONFIG) is None  # Q min -3200: inside
    alert = q_divergence_rule([row(1000, q_mean=-1700.0, bound=1630.0)], CONFIG)
    assert alert is not None and alert.level == "critical" and alert.rule == "q_divergence"
    assert alert.value == 3400.0 and alert.threshold == 3260.0
    # a positive blow-up counts the same
    assert q_divergence_rule([{**row(1000), names.Q_MAX: 1e6}], CONFIG) is not None


def test_geometric_growth_of_q_warns_before_the_bound():
    growing = [row(1000 * (i + 1), q_mean=-3.0 * 2.5**i, bound=1e9) for i in range(5)]  # x2.5 per row
    alert = q_divergence_rule(growing, CONFIG)
    assert alert is not None and alert.level == "warning" and alert.rule == "q_growth"
    # one row that grew only 1.5x breaks the streak; healthy early learning looks like that
    early = [row(1000 * (i + 1), q_mean=q, bound=1e9) for i, q in enumerate([-14.0, -40.0, -64.0, -150.0, -400.0])]
    assert q_divergence_rule(early, CONFIG) is None


def test_td_error_spike_against_its_running_median():
    history = [row(1000 * i, td=1.0 + 0.05 * (i % 3)) for i in range(20)]
    assert td_error_rule([*history, row(21_000, td=3.0)], CONFIG) is None  # 3x: within a healthy swing
    alert = td_error_rule([*history, row(21_000, td=15.0)], CONFIG)
    assert alert is not None and alert.level == "warning" and alert.threshold == pytest.approx(10.5)
    assert td_error_rule([*history[:4], row(5000, td=100.0)], CONFIG) is None  # too few rows for a baseline


@pytest.mark.parametrize(("alpha", "fires"), [(0.2, False), (1e-6, True), (500.0, True), (2e-5, False)])
def test_alpha_collapse_and_explosion(alpha, fires):
    alert = alpha_rule([row(1000, alpha=alpha)], CONFIG)
    assert (alert is not None) == fires
    if fires:
        assert alert.level == "warning" and alert.rule == "alpha"
        fixed = {k: v for k, v in row(1000, alpha=alpha).items() if k != names.ALPHA_LOSS}
        assert alpha_rule([fixed], CONFIG) is None  # a fixed temperature (no alpha loss) is the user's choice


def test_a_diverging_critic_rolls_back_to_the_last_healthy_state():
    guard = Guard(GuardConfig(eval_every=0, lr_cut=0.5), total_steps=100_000, run_dir=Path("run"))
    for step in (1000, 2000):
        guard.begin_update(step - 1000, step)
        metrics = row(step)
        guard.observe(metrics, updates=step // 1000)
        assert guard.decide(metrics, step, None, False) == [Snapshot(True)]
    guard.begin_update(2000, 3000)
    metrics = row(3000, q_mean=-1e5)
    guard.observe(metrics, updates=3)
    (action,) = guard.decide(metrics, 3000, None, False)
    assert isinstance(action, Rollback) and action.source == "last_healthy"
    assert action.reason.startswith("|Q| reached 2e+05") and guard.state.lr_scale == 0.5


def test_rules_stay_silent_on_on_policy_metrics():
    """An on-policy row carries none of the off-policy metrics: none of the new rules fires."""
    history = [{names.STEP: 100 * i, names.APPROX_KL: 0.01, names.ENTROPY: 0.6} for i in range(1, 30)]
    assert not [a for a in check_alerts(history, CONFIG) if a.rule in ("q_divergence", "q_growth", "td_error", "alpha")]


def test_doctor_explains_the_off_policy_alerts():
    from pgrad.monitor.doctor import explain_alerts

    events = [
        {"step": 3000, "kind": "critical.q_divergence", "message": "|Q| reached 2e+05", "bound": 1630.0},
        {"step": 4000, "kind": "warning.alpha", "message": "alpha collapsed"},
    ]
    text = "\n".join(explain_alerts(events))
    assert "critical.q_divergence: 1x, first at step 3000" in text and "bound=1630" in text
    assert "over-estimates" in text and "target_entropy" in text
