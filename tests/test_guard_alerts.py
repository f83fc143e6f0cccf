"""Alert rules on synthetic metric histories, the guard config, drills, and the optimizer hooks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pgrad.config import GuardConfig
from pgrad.errors import ConfigError
from pgrad.faults import FaultSpec, faults_for_update, parse_fault
from pgrad.monitor import alerts
from pgrad.monitor.recovery import (
    GuardState,
    OptimizerGuard,
    TrajectoryRecorder,
    UpdateSizes,
    eval_collapsed,
    nonfinite_fraction,
    should_halt,
    update_groups,
)
from pgrad.rollout import Rollout

CONFIG = GuardConfig()


def history(n: int, **series: object) -> list[dict]:
    """n updates; each keyword is a metric name (with '__' for '/') and a list or constant."""
    rows = []
    for i in range(n):
        row = {"step": 256 * (i + 1), "update": i + 1}
        for key, value in series.items():
            row[key.replace("__", "/")] = value[i] if isinstance(value, list) else value
        rows.append(row)
    return rows


def fired(rule, rows, config=CONFIG):
    return rule(rows, config)


# ---- each rule: fires on the bad history, stays quiet on the good one ------------------------


def test_kl_warning_and_critical_levels():
    assert fired(alerts.kl_rule, history(3, diagnostics__approx_kl=0.01)) is None
    warning = fired(alerts.kl_rule, history(3, diagnostics__approx_kl=[0.01, 0.01, 0.07]))
    assert (warning.level, warning.rule, warning.value, warning.threshold) == ("warning", "kl", 0.07, 0.05)
    critical = fired(alerts.kl_rule, history(3, diagnostics__approx_kl=[0.01, 0.01, 0.2]))
    assert (critical.level, critical.threshold, critical.metric) == ("critical", 0.1, "diagnostics/approx_kl")


STALLED = {"rollout__return_mean": 20.0, "rollout__return_std": 10.0}  # a return that never improved


def test_clip_fraction_high_any_time_low_only_after_warmup():
    assert fired(alerts.clip_fraction_rule, history(2, diagnostics__clip_fraction=0.6)).threshold == 0.5
    early = history(CONFIG.warmup_updates, diagnostics__clip_fraction=0.01, **STALLED)
    assert fired(alerts.clip_fraction_rule, early) is None  # still warming up
    late = history(CONFIG.warmup_updates + 1, diagnostics__clip_fraction=0.01, **STALLED)
    alert = fired(alerts.clip_fraction_rule, late)
    assert (alert.level, alert.threshold) == ("warning", 0.05)
    assert alert.evidence["window_median"] == 0.01 and alert.evidence["return_now"] == 20.0
    assert fired(alerts.clip_fraction_rule, history(20, diagnostics__clip_fraction=0.1, **STALLED)) is None


def test_low_clip_fraction_is_one_quiet_update_or_an_annealed_rate_not_a_warning():
    quiet_once = history(30, diagnostics__clip_fraction=[0.1] * 29 + [0.001], **STALLED)
    assert fired(alerts.clip_fraction_rule, quiet_once) is None  # the window median is 0.1
    # The learning rate annealed linearly to 0 (the CartPole preset): small steps were asked for.
    n = 40
    rate = [1e-3 * (1 - i / n) for i in range(n)]
    clip = [0.1 * (1 - i / n) for i in range(n)]
    annealed = history(n, diagnostics__clip_fraction=clip, train__learning_rate=rate, **STALLED)
    assert fired(alerts.clip_fraction_rule, annealed) is None
    constant = history(n, diagnostics__clip_fraction=clip, train__learning_rate=1e-3, **STALLED)
    assert fired(alerts.clip_fraction_rule, constant).evidence["learning_rate_ratio"] == 1.0
    # The same small steps while the return climbs: nothing is wrong.
    rising = history(n, diagnostics__clip_fraction=clip, train__learning_rate=1e-3, rollout__return_mean=list(range(n)))
    assert fired(alerts.clip_fraction_rule, rising) is None


def test_warmup_is_a_share_of_the_run():
    rows = history(30, diagnostics__clip_fraction=0.01, **STALLED)
    for i, row in enumerate(rows):
        row["train/progress"] = (i + 1) / 1000  # a long run: 30 updates are 3% of it
    assert fired(alerts.clip_fraction_rule, rows) is None
    rows[-1]["train/progress"] = 0.1
    assert fired(alerts.clip_fraction_rule, rows) is not None


def test_explained_variance_after_warmup():
    assert fired(alerts.explained_variance_rule, history(5, diagnostics__explained_variance=0.1, **STALLED)) is None
    alert = fired(alerts.explained_variance_rule, history(11, diagnostics__explained_variance=0.1, **STALLED))
    assert alert.value == 0.1 and alert.threshold == 0.3 and alert.evidence["return_std"] == 10.0
    assert fired(alerts.explained_variance_rule, history(11, diagnostics__explained_variance=0.9, **STALLED)) is None


def test_explained_variance_is_not_judged_on_flat_returns_or_while_the_return_rises():
    # CartPole solved: every episode returns 500, the value targets hardly vary, EV is noise.
    solved = history(40, diagnostics__explained_variance=-0.5, rollout__return_mean=500.0, rollout__return_std=0.0)
    assert fired(alerts.explained_variance_rule, solved) is None
    rising = history(40, diagnostics__explained_variance=0.1, rollout__return_mean=list(range(0, 400, 10)))
    assert fired(alerts.explained_variance_rule, rising) is None
    # One bad update among good ones: the window median decides.
    spiky = history(40, diagnostics__explained_variance=[0.8] * 39 + [-3.0], **STALLED)
    assert fired(alerts.explained_variance_rule, spiky) is None


def test_entropy_collapse_against_the_starting_value():
    entropy = [0.69, 0.6, 0.5, 0.36]
    assert fired(alerts.entropy_collapse_rule, history(4, diagnostics__entropy=entropy, **STALLED)) is None
    alert = fired(alerts.entropy_collapse_rule, history(4, diagnostics__entropy=[0.69, 0.6, 0.5, 0.3], **STALLED))
    assert alert.threshold == pytest.approx(0.345) and alert.rule == "entropy_collapse"
    assert alert.evidence["entropy_start"] == 0.69 and alert.evidence["return_start"] == 20.0
    # A Gaussian's differential entropy can start negative: no ratio rule there.
    assert fired(alerts.entropy_collapse_rule, history(3, diagnostics__entropy=[-1.0, -2.0, -5.0], **STALLED)) is None


def test_entropy_falling_while_the_return_rises_is_convergence_while_it_stalls_a_collapse():
    n = 60
    entropy = list(0.69 * np.exp(-np.arange(n) / 20))  # below half the start after 14 updates
    rng = np.random.default_rng(0)
    rising = list(20 + 8 * np.arange(n) + rng.normal(0, 5, n))
    assert (
        fired(alerts.entropy_collapse_rule, history(n, diagnostics__entropy=entropy, rollout__return_mean=rising))
        is None
    )
    solved = [min(500.0, 20 + 20 * i) for i in range(n)]  # learned, then flat at the cap: converged
    assert (
        fired(alerts.entropy_collapse_rule, history(n, diagnostics__entropy=entropy, rollout__return_mean=solved))
        is None
    )
    stalled = list(20 + rng.normal(0, 1, n))  # never left the random policy's level
    alert = fired(alerts.entropy_collapse_rule, history(n, diagnostics__entropy=entropy, rollout__return_mean=stalled))
    assert alert is not None and alert.evidence["return_now"] < 30
    # The first return arrives some updates in (no episode ended before): it is still the start.
    late_first = [None] * 5 + stalled[5:]
    rows = history(n, diagnostics__entropy=entropy, rollout__return_mean=late_first)
    bounded: list[dict] = []
    for row in rows:
        bounded = alerts.bounded_history(bounded + [row], CONFIG)
    assert alerts.entropy_collapse_rule(bounded, CONFIG) == alerts.entropy_collapse_rule(rows, CONFIG) is not None


def test_log_std_floor():
    assert fired(alerts.log_std_rule, history(2, diagnostics__log_std_mean=-4.9)) is None
    assert fired(alerts.log_std_rule, history(2, diagnostics__log_std_mean=-5.1)).threshold == -5.0
    assert fired(alerts.log_std_rule, history(2, diagnostics__entropy=1.0)) is None  # discrete: no log-std


def test_grad_norm_spike_against_robust_running_statistics():
    norms = [1.0, 0.5, 1.0, 3.0, 1.0, 1.0] * 4  # a full window of 20: median 1.0, MAD 0
    window = norms[:20]
    rows = history(21, diagnostics__grad_norm=window + [10.5])
    alert = fired(alerts.grad_norm_rule, rows)
    assert alert.threshold == pytest.approx(10.0 * np.median(window)) and alert.value == 10.5
    assert alert.level == "warning" and alert.evidence["median"] == 1.0
    assert fired(alerts.grad_norm_rule, history(21, diagnostics__grad_norm=window + [9.0])) is None
    assert (
        fired(alerts.grad_norm_rule, history(7, diagnostics__grad_norm=[1.0] * 6 + [100.0])) is None
    )  # no full window
    # A norm that is noisy by nature: 10x the median is within its own spread (median + 10 x MAD).
    noisy = [0.1, 10.0] * 10  # median 5.05, MAD 4.95
    threshold = alerts.grad_norm_rule(history(21, diagnostics__grad_norm=noisy + [1e9]), CONFIG).threshold
    assert threshold == pytest.approx(5.05 + 10 * 1.4826 * 4.95) and threshold > 10 * 5.05
    # Gradients that shrank as the policy converged: a tenfold jump that stays under the first norm.
    tiny = [5.0] + [0.001] * 20 + [0.02]
    assert fired(alerts.grad_norm_rule, history(22, diagnostics__grad_norm=tiny)) is None


def test_a_spike_that_gradient_clipping_held_is_info():
    rows = history(21, diagnostics__grad_norm=[1.0] * 20 + [30.0], diagnostics__grad_norm_clipped=[1.0] * 20 + [0.5])
    alert = fired(alerts.grad_norm_rule, rows)
    assert alert.level == "info" and alert.evidence["clipped"] == 0.5


def test_steps_per_second_drop_is_info_and_must_last():
    rows = history(30, perf__steps_per_second=[1000.0] * 25 + [400.0] * 5)
    alert = fired(alerts.steps_per_second_rule, rows)
    assert alert.threshold == pytest.approx(500.0) and alert.level == "info"
    blip = history(30, perf__steps_per_second=[1000.0] * 28 + [100.0] * 2)  # another job, briefly
    assert fired(alerts.steps_per_second_rule, blip) is None
    assert fired(alerts.steps_per_second_rule, history(30, perf__steps_per_second=[1000.0] * 25 + [600.0] * 5)) is None


@pytest.mark.parametrize(
    "latest, metric",
    [
        ({"train/policy_loss": float("nan")}, "train/policy_loss"),
        ({"train/value_loss": "inf"}, "train/value_loss"),  # how metrics.jsonl stores Inf
        ({"diagnostics/nonfinite_steps": 2.0}, "diagnostics/nonfinite_steps"),
        ({"diagnostics/grad_norm": float("inf")}, "diagnostics/grad_norm"),
        ({"diagnostics/params_finite": 0.0}, "diagnostics/params_finite"),
    ],
)
def test_nonfinite_is_critical(latest, metric):
    rows = history(2, train__policy_loss=0.1) + [{"step": 768, "update": 3, **latest}]
    alert = fired(alerts.nonfinite_rule, rows)
    assert (alert.level, alert.rule, alert.metric) == ("critical", "nonfinite", metric)


def test_nonfinite_quiet_on_finite_history():
    rows = history(3, train__policy_loss=0.1, diagnostics__nonfinite_steps=0.0, diagnostics__params_finite=1.0)
    assert fired(alerts.nonfinite_rule, rows) is None


def test_check_alerts_lists_critical_first_and_thresholds_come_from_config():
    rows = history(12, diagnostics__approx_kl=0.2, diagnostics__explained_variance=0.0, **STALLED)
    found = alerts.check_alerts(rows, CONFIG)
    assert [a.rule for a in found] == ["kl", "explained_variance"] and found[0].level == "critical"
    relaxed = GuardConfig(kl_warning=0.3, kl_critical=0.5, explained_variance_low=-1.0)
    assert alerts.check_alerts(rows, relaxed) == []


def test_bounded_history_gives_the_same_alerts_as_the_full_one():
    rng = np.random.default_rng(0)
    n = 300
    full = history(
        n,
        diagnostics__entropy=list(0.7 * np.exp(-np.arange(n) / 200)),
        diagnostics__grad_norm=list(rng.lognormal(0, 1, n)),
        perf__steps_per_second=list(rng.normal(1000, 300, n)),
        diagnostics__clip_fraction=list(rng.uniform(0, 0.1, n)),
        diagnostics__explained_variance=list(rng.uniform(-0.5, 0.6, n)),
        rollout__return_mean=[None] * 7 + list(20 + rng.normal(0, 3, n - 7)),
        rollout__return_std=10.0,
        train__learning_rate=[1e-3 * (1 - i / n) for i in range(n)],
    )
    bounded: list[dict] = []
    for i in range(n):
        bounded = alerts.bounded_history(bounded + [full[i]], CONFIG)
        keep = max(CONFIG.history_window + CONFIG.sps_sustain, CONFIG.warmup_updates) + 1
        assert len(bounded) <= keep + len(alerts.START_KEYS) + 1
        assert alerts.check_alerts(bounded, CONFIG) == alerts.check_alerts(full[: i + 1], CONFIG), i


# ---- config and drills ---------------------------------------------------------------------------


def test_guard_config_rejects_bad_values_with_the_field_name():
    with pytest.raises(ConfigError, match="guard.kl_critical"):
        GuardConfig(kl_warning=0.2, kl_critical=0.1)
    with pytest.raises(ConfigError, match="guard.lr_cut"):
        GuardConfig(lr_cut=1.5)
    with pytest.raises(ConfigError, match="guard.inject.*lr_spike"):
        GuardConfig(inject=("lr_spiek@100",))


def test_parse_fault():
    assert parse_fault("lr_spike@20000") == FaultSpec("lr_spike", 20000, 1)
    assert parse_fault("reward_flip@10000:5000") == FaultSpec("reward_flip", 10000, 5000)
    for bad in ("nan_grad", "nan_grad@x", "nan_grad@10:0", "boom@1"):
        with pytest.raises(ValueError):
            parse_fault(bad)


def test_one_shot_drill_fires_once_in_the_update_that_reaches_its_step():
    specs = (parse_fault("lr_spike@1000"), parse_fault("nan_grad@1000"))
    fired_set: set[str] = set()
    before = faults_for_update(specs, 0, 768, fired_set, 100.0)
    assert before.lr_factor == 1.0 and before.nan_grad_steps == 0 and not before.started
    hit = faults_for_update(specs, 768, 1024, fired_set, 100.0)
    assert hit.lr_factor == 100.0 and hit.nan_grad_steps == 1 and len(hit.started) == 2
    again = faults_for_update(specs, 1024, 1280, fired_set, 100.0)
    assert again.lr_factor == 1.0 and again.nan_grad_steps == 0


def test_window_drill_fires_in_every_update_inside_the_window():
    specs = (parse_fault("reward_flip@1000:600"), parse_fault("nan_grad@1000:600"))
    fired_set: set[str] = set()
    flags = [faults_for_update(specs, s, s + 256, fired_set, 100.0) for s in range(0, 2048, 256)]
    # [1000, 1600): the update straddling 1000 and those starting at 1024, 1280, 1536
    assert [f.flip_reward for f in flags] == [False, False, False, True, True, True, True, False]
    assert [f.nan_grad_steps for f in flags][3:7] == [-1, -1, -1, -1]
    assert sum(len(f.started) for f in flags) == 2  # announced once each


# ---- recovery decisions --------------------------------------------------------------------------


def test_eval_collapse_relative_and_absolute():
    config = GuardConfig(eval_max_drop=0.5)
    assert eval_collapsed(240.0, 500.0, config) and not eval_collapsed(260.0, 500.0, config)
    assert eval_collapsed(-350.0, -200.0, config) and not eval_collapsed(-290.0, -200.0, config)  # |best|
    assert not eval_collapsed(0.0, None, config)
    assert eval_collapsed(5.0, None, GuardConfig(eval_min_return=10.0, eval_max_drop=None))


def test_nonfinite_fraction_over_the_full_window():
    config = GuardConfig(nonfinite_window=100, nonfinite_halt=0.01)
    state = GuardState(recent_steps=[0] * 20 + [1])
    assert nonfinite_fraction(state, config) == 0.01 and not should_halt(state, config)  # one bad step: skip only
    state.recent_steps.append(1)
    assert should_halt(state, config)


def _model_and_grads(optimizer_cls=torch.optim.SGD, lr=0.1):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = optimizer_cls(model.parameters(), lr=lr)
    model(torch.ones(4, 3)).pow(2).sum().backward()
    return model, optimizer


def test_optimizer_guard_leaves_the_learning_rate_alone():
    """The lr scale reaches algorithms through UpdateContext; the hook only guards finiteness."""
    model, optimizer = _model_and_grads()
    before = [p.detach().clone() for p in model.parameters()]
    grads = [p.grad.clone() for p in model.parameters()]
    guard = OptimizerGuard([optimizer], GuardState(lr_scale=0.25), GuardConfig())
    optimizer.step()
    for p, p0, g in zip(model.parameters(), before, grads, strict=True):
        torch.testing.assert_close(p.detach(), p0 - 0.1 * g)
    assert optimizer.param_groups[0]["lr"] == 0.1
    guard.remove()


def test_optimizer_guard_skips_a_nonfinite_step_without_touching_adam_state():
    model, optimizer = _model_and_grads(torch.optim.Adam)
    state = GuardState()
    guard = OptimizerGuard([optimizer], state, GuardConfig())
    next(model.parameters()).grad[0, 0] = float("nan")
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step()
    assert all(torch.equal(p, p0) for p, p0 in zip(model.parameters(), before, strict=True))
    assert optimizer.state_dict()["state"] == {} and guard.skipped == 1 and state.recent_steps == [1]
    model(torch.ones(4, 3)).pow(2).sum().backward()  # a finite step afterwards goes through
    optimizer.step()
    assert not torch.equal(next(model.parameters()), before[0]) and state.recent_steps == [1, 0]


def test_trajectory_recorder_cuts_episodes_and_saves_without_pickle(tmp_path):
    steps, envs = 6, 2
    done = np.zeros((steps, envs), bool)
    done[1, 0] = done[4, 0] = done[3, 1] = True
    valid = np.ones((steps, envs), bool)
    valid[2, 0] = valid[5, 0] = valid[4, 1] = False  # autoreset steps after each done
    rollout = Rollout(
        obs=np.arange((steps + 1) * envs * 2, dtype=np.float32).reshape(steps + 1, envs, 2),
        actions=np.zeros((steps, envs), np.int64),
        rewards=np.arange(steps * envs, dtype=np.float32).reshape(steps, envs),
        terminated=done,
        truncated=np.zeros_like(done),
        valid=valid,
    )
    recorder = TrajectoryRecorder(envs, capacity=10)
    recorder.add(rollout)
    assert recorder.save(tmp_path / "t.npz") == 5
    data = np.load(tmp_path / "t.npz", allow_pickle=False)
    # finished: env 0 steps 0-1 and 2-4, env 1 steps 0-3; then the open ones: env 0 step 5, env 1 steps 4-5
    assert data["episode_length"].tolist() == [2, 3, 4, 1, 2]
    assert data["episode_finished"].tolist() == [True, True, True, False, False]
    assert data["rewards"][:2].tolist() == [0.0, 2.0]  # rewards[t, 0] = 2 t
    start = data["episode_start"][1]
    assert data["rewards"][start : start + 3].tolist() == [4.0, 6.0, 8.0] and not data["valid"][start]
    assert math.isclose(float(data["obs"][0, 0]), 0.0)


def test_trajectory_recorder_keeps_the_most_recent_and_bounds_open_episodes(tmp_path):
    from pgrad.monitor.recovery import MAX_OPEN_STEPS

    steps = 2000
    never_done = np.zeros((steps, 1), bool)
    rollout = Rollout(
        obs=np.zeros((steps + 1, 1, 3), np.float32),
        actions=np.zeros((steps, 1), np.int64),
        rewards=np.ones((steps, 1), np.float32),
        terminated=never_done,
        truncated=never_done,
        valid=np.ones((steps, 1), bool),
    )
    recorder = TrajectoryRecorder(1, capacity=2)
    for _ in range(5):
        recorder.add(rollout)
    assert recorder.steps_kept <= MAX_OPEN_STEPS
    assert recorder.save(tmp_path / "open.npz") == 1
    assert np.load(tmp_path / "open.npz", allow_pickle=False)["episode_length"].tolist() == [4000]


def test_trajectory_recorder_keeps_complete_recent_episodes_across_rollouts(tmp_path):
    # Episodes of length 3 (done at t = 2 mod 4, autoreset step after), split across rollouts of 5.
    def rollout(offset: int) -> Rollout:
        t = np.arange(offset, offset + 5)
        done = (t % 4 == 2)[:, None]
        return Rollout(
            obs=np.zeros((6, 1, 1), np.float32),
            actions=np.zeros((5, 1), np.int64),
            rewards=t[:, None].astype(np.float32),
            terminated=done,
            truncated=np.zeros_like(done),
            valid=(t % 4 != 3)[:, None],
        )

    recorder = TrajectoryRecorder(1, capacity=2)
    for offset in range(0, 40, 5):
        recorder.add(rollout(offset))
    assert recorder.save(tmp_path / "t.npz") == 2
    data = np.load(tmp_path / "t.npz", allow_pickle=False)
    # the two most recent complete episodes: steps 31-34 (autoreset 31) and 35-38; then open step 39
    # (capacity 2 keeps the last two of finished + open: 35-38 and 39)
    assert data["rewards"].tolist() == [35.0, 36.0, 37.0, 38.0, 39.0]
    assert data["episode_finished"].tolist() == [True, False]


def test_update_size_spike_is_critical_against_robust_running_statistics():
    """A learning-rate spike moves a parameter group ~100x further than the updates before it;
    annealing, noise and a short history do not fire. Thresholds: update_spike = 10 here."""
    config = GuardConfig(update_spike=10.0)
    window = [0.02, 0.018, 0.021, 0.019, 0.02] * 4  # median 0.02, MAD 0.001 x 1.4826
    rows = history(21, diagnostics__update_norm__value_optimizer=window + [2.0], diagnostics__update_norm__step=0.1)
    alert = alerts.update_size_rule(rows, config)
    assert alert.level == "critical" and alert.rule == "update_size" and alert.value == 2.0
    assert alert.metric == "diagnostics/update_norm/value_optimizer" and alert.message.startswith("value_optimizer")
    assert alert.threshold == pytest.approx(10 * 0.02) and alert.evidence["median"] == 0.02
    quiet = history(21, diagnostics__update_norm__optimizer=window + [0.19])
    assert alerts.update_size_rule(quiet, config) is None
    short = history(9, diagnostics__update_norm__optimizer=[0.02] * 8 + [2.0])  # fewer than history_window // 2
    assert alerts.update_size_rule(short, config) is None
    assert alerts.update_size_rule(history(11, diagnostics__update_norm__o=[0.02] * 10 + [2.0]), config) is not None
    annealed = list(np.linspace(0.02, 0.0005, 60))  # a linear schedule shrinks every update
    assert all(
        alerts.update_size_rule(history(i + 1, diagnostics__update_norm__o=annealed[: i + 1]), config) is None
        for i in range(60)
    )
    noisy = [0.001, 0.1] * 10  # a size that is noisy by nature: 10x its median is within its spread
    assert alerts.update_size_rule(history(21, diagnostics__update_norm__o=noisy + [0.6]), config) is None
    assert alerts.update_size_rule(history(21, diagnostics__update_norm__o=[0.0] * 20 + [0.1]), config) is None


def test_update_size_is_judged_per_unit_of_clipped_gradient():
    """A2C late in a healthy run: tiny gradients for thousands of updates, then one terminal
    transition whose gradient (clipped to 0.5) is 100x the usual; RMSprop's step grows with it.
    Per unit of gradient that step is ordinary. A learning rate x100 on an ordinary gradient is not."""
    config = GuardConfig(update_spike=10.0)
    sizes, grads = [0.002] * 20, [0.005] * 20
    healthy = history(
        21, diagnostics__update_norm__optimizer=sizes + [0.3], diagnostics__grad_norm_clipped=grads + [0.5]
    )
    assert alerts.update_size_rule(healthy, config) is None
    spike = history(
        21, diagnostics__update_norm__optimizer=sizes + [0.2], diagnostics__grad_norm_clipped=grads + [0.005]
    )
    alert = alerts.update_size_rule(spike, config)
    assert alert is not None and alert.value == pytest.approx(0.2 / 0.005) and "per unit" in alert.message


def test_a_groups_own_gradient_norm_takes_precedence_over_the_clipped_one():
    """TRPO's critic (Adam, no clipping) on a healthy CartPole run, seed 3: once it has converged its
    steps are ~1/1000 of their early size and one episode that ends badly moves it 77-280x its median
    step (measured; the raw rule stopped that healthy run with the recovery cap). Per unit of its own
    gradient norm that step is ordinary; the lr_spike drill's step is 118x per unit (52x raw)."""
    config = GuardConfig()
    sizes, grads = [0.0005] * 20, [0.05] * 20
    late_spike = history(
        21,
        diagnostics__update_norm__value_optimizer=sizes + [0.143],
        diagnostics__group_grad_norm__value_optimizer=grads + [20.0],
        diagnostics__grad_norm_clipped=[1.0] * 21,  # another group's clipped norm: not this group's unit
    )
    assert alerts.update_size_rule(late_spike, config) is None
    raw = history(21, diagnostics__update_norm__value_optimizer=sizes + [0.143])
    assert alerts.update_size_rule(raw, config) is not None  # what the raw rule made of it
    lr_spike = history(
        21,
        diagnostics__update_norm__value_optimizer=sizes + [0.06],
        diagnostics__group_grad_norm__value_optimizer=grads + [0.05],
    )
    alert = alerts.update_size_rule(lr_spike, config)
    assert alert is not None and alert.value == pytest.approx(0.06 / 0.05) and "per unit of gradient" in alert.message


def test_update_sizes_per_group_follow_in_place_updates_and_loads():
    """One group per optimizer, 'step' for parameters no optimizer owns (TRPO's policy); the size is
    ||after - before|| of exactly that group, also after a load_state_dict (parameters stay in place)."""

    class Learner:
        def __init__(self) -> None:
            self.policy, self.critic = torch.nn.Linear(3, 2), torch.nn.Linear(3, 1)
            self.critic_optimizer = torch.optim.Adam(self.critic.parameters())

        def modules(self):
            return {"policy": self.policy, "critic": self.critic}

        def optimizers(self):
            return {"value_optimizer": self.critic_optimizer}

    learner = Learner()
    sizes = UpdateSizes(update_groups(learner))
    assert set(sizes.views) == {"value_optimizer", "step"}
    sizes.start()
    with torch.no_grad():
        learner.critic.weight.add_(torch.tensor([[3.0, 0.0, 4.0]]))  # norm 5
    assert sizes.finish() == pytest.approx({"value_optimizer": 5.0, "step": 0.0})
    sizes.start()
    state = {k: v + 1.0 for k, v in learner.policy.state_dict().items()}  # 8 entries each +1: norm sqrt(8)
    learner.policy.load_state_dict(state)
    assert sizes.finish() == pytest.approx({"value_optimizer": 0.0, "step": math.sqrt(8)})
