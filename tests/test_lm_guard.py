"""The shared guard acting on language-model PPO: drills rolled back to the healthy state in memory (weights,
optimizer moments and KL coefficient restored, not kept), non-finite steps skipped or halting, the reward-hacking
rules as rollback triggers, and a healthy run bit for bit the same with the guard on and off."""

import json

import pytest
import torch

pytest.importorskip("transformers")  # the lm extra

from pgrad.checkpoint import read_train_state  # noqa: E402
from pgrad.cli import main  # noqa: E402
from pgrad.config import GuardConfig  # noqa: E402
from pgrad.errors import TrainingHalted  # noqa: E402
from pgrad.lm.alerts import HACKING_RULES, AlertThresholds  # noqa: E402
from pgrad.monitor.doctor import doctor  # noqa: E402
from pgrad.monitor.guard import Guard, Rollback, Snapshot  # noqa: E402
from pgrad.runners.lm_ppo import LM_GUARD_RULES, LMPPORunner, guard_alerts  # noqa: E402
from pgrad.runs import resolve_config  # noqa: E402


def config(total, *sets):
    # no evaluations, no checkpoints on the way: a rollback can only come from the healthy state in memory
    return resolve_config(
        "lm_ppo", None, None, ["eval_every=0", "checkpoint_every=100000", *sets], seed=3, total_steps=total
    )[0]


SPIKE, SPIKE_FACTOR = "guard.inject=['lr_spike@320']", "guard.lr_spike_factor=200"


def events(run_dir):
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def learner_of(run_dir):
    """(policy tensors, optimizer state, KL coefficient) of a run's latest checkpoint."""
    state = read_train_state(sorted((run_dir / "checkpoints").glob("step_*"))[-1])
    return state.modules["policy"], state.optimizers["policy"], state.algo_state["kl_coef"]


def assert_same_learner(a, b):
    (policy_a, optim_a, kl_a), (policy_b, optim_b, kl_b) = a, b
    assert policy_a.keys() == policy_b.keys()
    for key in policy_a:
        assert torch.equal(policy_a[key], policy_b[key]), key
    for index, moments in optim_a["state"].items():
        for name, value in moments.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(optim_b["state"][index][name])), (index, name)
    assert kl_a == kl_b


def test_a_learning_rate_spike_is_rolled_back_to_the_healthy_state_in_memory(tmp_path):
    # The drill multiplies the rate by 200 for the update starting at response 320 (logged at 384): its approx KL
    # (3.5) passes guard.kl_critical (0.4 for LM runs). Healthy states are captured every 128 responses and
    # confirmed by the next healthy update: the candidate of 320 is dropped, the confirmed one of 192 restored.
    # (x100 gave 0.87 with the population-std whitening of token advantages and gives 0.39 with the sample std
    # shared with env PPO: one update at x100 is on the edge for this seed, x200 is not.)
    drilled = tmp_path / "drilled"
    LMPPORunner(config(1024, SPIKE, SPIKE_FACTOR), drilled, console=False).train(stop_at_step=384)
    kinds = [(e["step"], e["kind"]) for e in events(drilled)]
    assert (384, "drill.lr_spike") in kinds and (384, "critical.kl") in kinds
    rollback = next(e for e in events(drilled) if e["kind"] == "recovery.rollback")
    assert rollback["step"] == 384 and rollback["restored_step"] == 192 and rollback["restored_from"] == "memory"
    assert rollback["lr_scale"] == 0.5 and "approx KL" in rollback["message"]
    # the checkpoint written when the run stopped (right after the rollback) holds the weights of step 192, bit for
    # bit: those of the same run without the drill stopped at 192; the spiked weights are gone
    clean = tmp_path / "clean"
    LMPPORunner(config(1024), clean, console=False).train(stop_at_step=192)
    assert_same_learner(learner_of(drilled), learner_of(clean))
    spiked = tmp_path / "spiked"  # the drill with the guard off keeps the damage: other weights
    LMPPORunner(config(1024, SPIKE, SPIKE_FACTOR, "guard.enabled=false"), spiked, console=False).train(stop_at_step=384)
    assert not torch.equal(
        learner_of(spiked)[0]["lm.transformer.wte.weight"], learner_of(drilled)[0]["lm.transformer.wte.weight"]
    )


def test_a_healthy_run_ends_bit_for_bit_the_same_with_the_guard_on_and_off(tmp_path):
    on, off = tmp_path / "on", tmp_path / "off"
    LMPPORunner(config(384), on, console=False).train()
    LMPPORunner(config(384, "guard.enabled=false"), off, console=False).train()
    assert not [e for e in events(on) if e["kind"].startswith(("recovery.", "critical."))]
    assert_same_learner(learner_of(on), learner_of(off))
    assert [r["lm/true_score"] for r in rows(on)] == [r["lm/true_score"] for r in rows(off)]


def test_an_isolated_nan_gradient_is_skipped_and_sustained_ones_halt_with_exit_code_3(tmp_path, capsys):
    # one NaN step out of the 16 of an update: 1 in the window of 100 steps, not above guard.nonfinite_halt (1%)
    single = tmp_path / "single"
    LMPPORunner(config(256, "guard.inject=['nan_grad@128']"), single, console=False).train()
    logged = rows(single)
    assert [r["diagnostics/nonfinite_steps"] for r in logged] == [0.0, 0.0, 1.0, 0.0]
    assert all(r["diagnostics/params_finite"] == 1.0 for r in logged)
    policy, _, _ = learner_of(single)
    assert all(torch.isfinite(value).all() for value in policy.values())
    # every step of the updates starting in [128, 192): 16 non-finite steps, the run stops (exit code 3)
    sustained = tmp_path / "sustained"
    argv = ["lm", "ppo", "--quiet", "--seed", "3", "--total-steps", "256", "--run-dir", str(sustained)]
    assert main([*argv, "--set", "eval_every=0", "--inject", "nan_grad@128:64"]) == 3
    assert "pgrad: halted:" in capsys.readouterr().err
    halted = [e for e in events(sustained) if e["kind"] == "critical.halted"]
    assert halted and halted[0]["step"] == 192 and "NaN/Inf gradients" in halted[0]["message"]
    with pytest.raises(TrainingHalted):
        LMPPORunner(config(256, "guard.inject=['nan_grad@128:64']"), tmp_path / "again", console=False).train()


def hacking_row(rm, true, recoveries=0.0, length=8.0):
    return {
        "lm/kl": 1.0,
        "lm/rm_score": rm,
        "lm/check_score": true,
        "lm/response_length": length,
        "diagnostics/recoveries": recoveries,
    }


LIMITS = AlertThresholds(kl_alert=10.0, hacking_window=4, hacking_drop=0.05, length_collapse=0.25)


def test_reward_hacking_is_critical_when_the_guard_acts_and_the_guard_rolls_back_on_it():
    hacked = [hacking_row(1.0, 0.6), hacking_row(1.2, 0.6), hacking_row(2.0, 0.4), hacking_row(2.2, 0.4)]
    acting = guard_alerts(hacked, LIMITS, act=True)
    assert [(a.level, a.rule) for a in acting] == [("critical", "lm_reward_hacking")]
    assert acting[0].metric == "lm/check_score" and acting[0].value == pytest.approx(0.4)
    assert acting[0].evidence["rm_gain"] == pytest.approx(1.0) and acting[0].evidence["check_drop"] == pytest.approx(
        0.2
    )
    assert [(a.level, a.rule) for a in guard_alerts(hacked, LIMITS, act=False)] == [("warning", "lm_reward_hacking")]
    # the rows before a rollback belong to discarded weights: the window restarts after it
    after = hacked[:3] + [hacking_row(2.2, 0.4, recoveries=1.0)]
    assert guard_alerts(after, LIMITS, act=True) == []
    # a length collapse is a reward-hacking symptom too; the explosion rule is off unless set
    collapsed = [hacking_row(1.0, 0.5, length=8.0), hacking_row(1.0, 0.5, length=1.5)]
    assert [a.rule for a in guard_alerts(collapsed, LIMITS, act=True)] == ["lm_length_collapse"]
    exploding = [hacking_row(1.0, 0.5, length=2.0), hacking_row(1.0, 0.5, length=7.0)]
    assert guard_alerts(exploding, LIMITS, act=True) == []
    limits = AlertThresholds(10.0, 4, 0.05, 0.25, None, length_explosion=3.0)
    assert [a.rule for a in guard_alerts(exploding, limits, act=True)] == ["lm_length_explosion"]

    # the held-out check: two consecutive evaluations (same prompts, same noise), RM up and true score down
    start = {"step": 0, "eval/check_score": 0.50, "eval/rm_score": 1.0}
    steady = [hacking_row(1.0, 0.5) for _ in range(2)]
    evaluated = {**hacking_row(1.0, 0.5), "step": 128, "eval/check_score": 0.44, "eval/rm_score": 1.5}
    heldout = guard_alerts([start, *steady, evaluated], LIMITS, act=True)
    assert [(a.rule, a.metric) for a in heldout] == [("lm_reward_hacking", "eval/check_score")]
    assert heldout[0].evidence["check_drop"] == pytest.approx(0.06) and "held-out prompts" in heldout[0].message
    assert guard_alerts([start, *steady, {**evaluated, "eval/check_score": 0.46}], LIMITS, act=True) == []  # 0.04
    assert guard_alerts([start, *steady, {**evaluated, "eval/rm_score": 0.9}], LIMITS, act=True) == []  # RM fell too
    assert guard_alerts([start, evaluated, hacking_row(1.0, 0.5)], LIMITS, act=True) == []  # no new evaluation
    # the rules never read the digits task's true score: without a check, a fall of it alone raises nothing
    hidden = [{k: v for k, v in row.items() if k != "lm/check_score"} | {"lm/true_score": row["lm/check_score"]}
              for row in hacked]  # fmt: skip
    assert guard_alerts(hidden, LIMITS, act=True) == []

    guard = Guard(GuardConfig(), 10_000, None, rules=LM_GUARD_RULES, rollback_rules=HACKING_RULES)
    metrics = {"step": 256, **hacked[-1]}
    guard.observe(metrics, 4, acting)
    actions = guard.decide(metrics, 256, None, checkpoint_due=False)
    assert len(actions) == 1 and isinstance(actions[0], Rollback)
    assert actions[0].reason.startswith("over the last 4 updates") and guard.state.lr_scale == 0.5
    reporting = Guard(GuardConfig(), 10_000, None, rules=LM_GUARD_RULES)  # rollback_on_alert: false
    reporting.observe(dict(metrics), 4, acting)
    assert [type(a) for a in reporting.decide(metrics, 256, None, checkpoint_due=False)] == [Snapshot]


def test_doctor_counts_responses_and_explains_the_rollback(tmp_path):
    run_dir = tmp_path / "r"
    LMPPORunner(config(448, SPIKE, SPIKE_FACTOR), run_dir, console=False).train()
    _, text = doctor(run_dir)
    assert text.splitlines()[0].endswith("7 updates, 448 responses") and "env steps" not in text
    assert "recovery.rollback" in text and "restored the healthy state of step 192 from memory" in text
    assert "drill.lr_spike" in text


def test_doctor_finds_reward_hacking_over_the_whole_run_from_the_held_out_evaluations():
    from pgrad.monitor.doctor import diagnose

    def evaluation(step, true, rm):
        return {"step": step, "update": step // 64, "eval/check_score": true, "eval/rm_score": rm}

    hacked = [evaluation(0, 0.40, 1.0), evaluation(1024, 0.62, 5.0), evaluation(2048, 0.55, 6.0)]
    hacked.append(evaluation(3072, 0.50, 6.5))
    findings = diagnose(hacked, [])
    assert [f.symptom for f in findings] == [
        "reward hacking (held-out check reward fell while the reward-model score rose)"
    ]
    assert findings[0].step == 3072 and "0.620 at step 1024 -> 0.500" in findings[0].evidence  # 0.07 at 2048: not yet
    assert diagnose(hacked[:3], []) == []  # 0.07 below the best: within 0.08
    falling_together = [*hacked[:3], evaluation(3072, 0.50, 4.0)]
    assert diagnose(falling_together, []) == []  # both scores fell: a worse policy, not an exploited reward model


def test_resume_across_rollbacks_is_exact(tmp_path):
    # two drills: one rolled back before the interruption at 256, one after it, which rolls back to a healthy
    # state the checkpoint carried (``TrainState.rollback_states``); the guard's cut and its lifting resume too
    from pgrad.runs import load_run_config

    sets = ("eval_every=0", "checkpoint_every=64", "guard.inject=['lr_spike@128', 'lr_spike@320']")
    drilled = resolve_config("lm_ppo", None, None, list(sets), seed=5, total_steps=448)[0]
    LMPPORunner(drilled, tmp_path / "a", console=False).train()
    LMPPORunner(drilled, tmp_path / "b", console=False).train(stop_at_step=256)
    LMPPORunner(load_run_config(tmp_path / "b"), tmp_path / "b", resume=True, console=False).train()

    def strip(row):
        return {k: v for k, v in row.items() if not k.startswith("perf/") and k != "time"}

    assert [strip(r) for r in rows(tmp_path / "a")] == [strip(r) for r in rows(tmp_path / "b")]
    rollbacks = [e for e in events(tmp_path / "b") if e["kind"] == "recovery.rollback"]
    assert [(e["step"], e["restored_step"]) for e in rollbacks] == [(192, 64), (384, 256)]
    assert_same_learner(learner_of(tmp_path / "a"), learner_of(tmp_path / "b"))


def test_a_reward_hacking_rollback_goes_back_before_the_window_that_showed_it(tmp_path, monkeypatch):
    # The windowed rule sees a hack only once its 10 updates are in, when the newest confirmed healthy state
    # (2 updates back) holds weights from inside the window. A hacking alert raised here by hand at the 14th
    # update (step 896): its window's rows end at 320 ... 896, so the state to return to is the newest kept one at
    # or before 896 - 10 x 64 = 256: the one confirmed at 192 (states are captured every 128 responses).
    import pgrad.runners.lm_ppo as runner_module
    from pgrad.monitor.alerts import Alert

    real = runner_module.guard_alerts

    def with_a_hack(history, limits, act):
        found = real(history, limits, act)
        if history[-1]["step"] == 896:
            evidence = {"rm_gain": 0.5, "true_drop": 0.2, "se": 0.01, "window": 10.0}
            found.append(
                Alert("critical", "lm_reward_hacking", "hack by hand: evidence", "lm/check_score", 0.3, 0.4, evidence)
            )
        return found

    monkeypatch.setattr(runner_module, "guard_alerts", with_a_hack)
    hacked = tmp_path / "hacked"
    LMPPORunner(config(1024), hacked, console=False).train(stop_at_step=896)
    rollback = next(e for e in events(hacked) if e["kind"] == "recovery.rollback")
    assert rollback["step"] == 896 and rollback["restored_step"] == 192 and "hack by hand" in rollback["message"]
    monkeypatch.setattr(runner_module, "guard_alerts", real)
    clean = tmp_path / "clean"
    LMPPORunner(config(1024), clean, console=False).train(stop_at_step=192)
    (policy, optim, kl), clean_learner = learner_of(hacked), learner_of(clean)
    # the restored learner is step 192's, except its KL coefficient: lm_ppo.hacking_kl_boost (2) raised it, so the
    # policy does not walk back into the same hack at the same price
    assert_same_learner((policy, optim, clean_learner[2]), clean_learner)
    assert kl == 2 * clean_learner[2] and rollback["kl_coef"] == [clean_learner[2], kl]
    assert "kl_coef 0.05 -> 0.1 (lm_ppo.hacking_kl_boost)" in rollback["message"]
