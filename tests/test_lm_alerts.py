"""The language-model alert rules (pgrad.lm.alerts) on hand-made metric histories."""

from pgrad.lm.alerts import AlertThresholds, lm_alerts, new_alerts

LIMITS = AlertThresholds(kl_alert=10.0, hacking_window=3, hacking_drop=0.05, length_collapse=0.25)


def row(kl=1.0, rm=0.0, true=0.5, length=8.0):
    return {"lm/kl": kl, "lm/rm_score": rm, "lm/check_score": true, "lm/response_length": length}


def kinds(history, limits=LIMITS):
    return [alert.kind for alert in lm_alerts(history, limits)]


def test_a_healthy_history_raises_nothing():
    history = [{"step": 0, "eval/check_score": 0.3}] + [row(kl=k, rm=k, true=0.3 + 0.05 * k) for k in range(6)]
    assert kinds(history) == []


def test_kl_above_its_bound_is_critical_and_names_the_field():
    alerts = lm_alerts([row(), row(kl=10.5)], LIMITS)
    assert [a.kind for a in alerts] == ["critical.lm_kl"]
    assert "lm_ppo.kl_alert 10" in alerts[0].message and "10.50 nats" in alerts[0].message
    assert kinds([row(kl=10.0)]) == []  # at the bound: not above it
    assert kinds([row(kl=99.0)], AlertThresholds(None, 3, 0.05, None)) == []


def test_reward_hacking_compares_half_window_means():
    # window 3: the earlier half is row 0, the later half row 2 (the middle row is left out)
    hacked = [row(rm=1.0, true=0.60), row(rm=1.5, true=0.20), row(rm=2.0, true=0.54)]
    assert kinds(hacked) == ["warning.lm_reward_hacking"]
    # true score down by exactly 0.05: not more than hacking_drop
    assert kinds([row(rm=1.0, true=0.60), row(rm=1.5), row(rm=2.0, true=0.55)]) == []
    # both falling: a bad policy, not hacking
    assert kinds([row(rm=2.0, true=0.60), row(rm=1.5), row(rm=1.0, true=0.40)]) == []
    assert kinds(hacked[1:]) == []  # fewer rows than the window
    # window 4: means of two rows each: true (0.6 + 0.5) / 2 -> (0.58 + 0.44) / 2 = 0.55 -> 0.51, rm 1 -> 2
    four = AlertThresholds(None, 4, 0.035, None)
    history = [row(rm=0.5, true=0.6), row(rm=1.5, true=0.5), row(rm=2.0, true=0.58), row(rm=2.0, true=0.44)]
    assert kinds(history, four) == ["warning.lm_reward_hacking"]
    # one noisy row alone does not make it: the later half's mean stays within 0.035
    history[-1] = row(rm=2.0, true=0.46)
    assert kinds(history, four) == []


def test_length_collapse_is_relative_to_the_first_row():
    assert kinds([row(length=8.0), row(length=2.1)]) == []
    assert kinds([row(length=8.0), row(length=1.9)]) == ["warning.lm_length_collapse"]


def test_an_alert_is_new_only_on_the_row_where_it_starts():
    history = [row(), row(kl=11.0), row(kl=12.0), row(kl=1.0), row(kl=13.0)]
    started = [i for i in range(1, len(history) + 1) if new_alerts(history[:i], LIMITS)]
    assert started == [2, 5]


def test_doctor_explains_the_language_model_alerts():
    from pgrad.monitor.doctor import explain_alerts

    events = [
        {"step": 640, "kind": "warning.lm_reward_hacking", "message": "over the last 5 updates ..."},
        {"step": 960, "kind": "critical.lm_kl", "message": "mean KL to the reference 30.00 nats ..."},
        {"step": 1280, "kind": "critical.lm_kl", "message": "mean KL to the reference 31.00 nats ..."},
    ]
    lines = explain_alerts(events)
    assert lines[0] == "    warning.lm_reward_hacking: 1x, first at step 640: over the last 5 updates ..."
    assert "exploits the reward model" in lines[1] and "retrain the reward model" in lines[1]
    assert lines[2].startswith("    critical.lm_kl: 2x, first at step 960")
    assert "kl_coef" in lines[3]


def test_reward_hacking_needs_a_fall_beyond_the_noise_of_the_rows_with_hacking_z():
    # window 4: halves of two rows; a fall of 0.1 > hacking_drop 0.05 either way
    noisy = [row(rm=1.0, true=0.7), row(rm=1.0, true=0.5), row(rm=2.0, true=0.6), row(rm=2.0, true=0.4)]
    steady = [row(rm=1.0, true=0.6), row(rm=1.0, true=0.6), row(rm=2.0, true=0.5), row(rm=2.0, true=0.5)]
    off, three = AlertThresholds(None, 4, 0.05, None), AlertThresholds(None, 4, 0.05, None, hacking_z=3.0)
    assert kinds(noisy, off) == ["warning.lm_reward_hacking"]
    # se = sqrt(0.02 / 2 + 0.02 / 2) = 0.141: a fall of 0.1 is 0.7 standard errors
    assert kinds(noisy, three) == []
    alerts = lm_alerts(steady, three)  # rows that do not spread: the fall is beyond any noise
    assert [a.kind for a in alerts] == ["warning.lm_reward_hacking"] and alerts[0].evidence["se"] == 0.0
