"""Degeneration measures of sampled responses against hand-counted values."""

from __future__ import annotations

import math

import pytest
import torch

from pgrad.config import GuardConfig
from pgrad.lm.alerts import degeneration_alert, level_hacking
from pgrad.lm.degeneration import degeneration_metrics, distinct_n, ngrams, repetition_rate, response_tokens
from pgrad.monitor.doctor import check_lm_degeneration, check_lm_reward_hacking


def test_ngrams_in_order_and_none_when_shorter() -> None:
    assert ngrams([1, 2, 3, 4], 2) == [(1, 2), (2, 3), (3, 4)]
    assert ngrams([1, 2], 3) == []
    with pytest.raises(ValueError, match="n must be at least 1"):
        ngrams([1], 0)


def test_distinct_n_pools_the_batch() -> None:
    # bigrams: (1,2) (2,1) (1,2) | (1,2) (2,3): 5 bigrams, distinct {(1,2), (2,1), (2,3)} = 3
    assert distinct_n([[1, 2, 1, 2], [1, 2, 3]], 2) == pytest.approx(3 / 5)
    assert distinct_n([[5, 5, 5, 5]], 1) == pytest.approx(1 / 4)
    assert distinct_n([[1, 2, 3]], 1) == 1.0
    assert math.isnan(distinct_n([[1], []], 2))


def test_repetition_rate_is_within_each_response() -> None:
    # [1,2,1,2]: bigrams (1,2) (2,1) (1,2): one repeat of 3; [3,4]: (3,4): none; [7]: no bigram, left out
    assert repetition_rate([[1, 2, 1, 2], [3, 4], [7]], 2) == pytest.approx((1 / 3 + 0.0) / 2)
    # the same bigram in two different responses is no repetition within either
    assert repetition_rate([[1, 2], [1, 2]], 2) == 0.0
    assert repetition_rate([[9, 9, 9, 9, 9]], 1) == pytest.approx(4 / 5)
    assert math.isnan(repetition_rate([[1]], 2))


def test_response_tokens_reads_only_the_mask() -> None:
    response = torch.tensor([[4, 5, 0, 0], [6, 6, 6, 7]])
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])
    assert response_tokens(response, mask) == [[4, 5], [6, 6, 6]]
    with pytest.raises(ValueError, match="one shape"):
        response_tokens(response, mask[:, :2])


def test_metrics_of_a_looping_batch() -> None:
    response = torch.tensor([[3, 3, 3, 3], [3, 3, 3, 3]])
    out = degeneration_metrics(response, torch.ones_like(response), n=2, prefix="eval")
    # 6 bigrams, all (3,3): distinct 1/6; within each response 2 of 3 repeat
    assert out == {"eval/distinct_2": pytest.approx(1 / 6), "eval/repetition_2": pytest.approx(2 / 3)}


# ---- the level test and the degeneration alert (pgrad.lm.alerts) -------------------------------------------

OPT, CHECK = "eval/reward", "eval/check_score"


def rows_of(pairs: list[tuple[float, float]]) -> list[dict[str, float]]:
    return [{"step": 100.0 * i, OPT: opt, CHECK: check} for i, (opt, check) in enumerate(pairs)]


def test_level_test_flags_a_slow_drift_that_no_step_flags() -> None:
    # the check falls 0.02 per evaluation: never more than 0.05 between two, 0.08 below its best after 4
    rows = rows_of([(0.1, 0.50), (0.2, 0.48), (0.3, 0.46), (0.4, 0.44), (0.5, 0.42)])
    assert all(a[CHECK] - b[CHECK] < 0.05 for a, b in zip(rows, rows[1:], strict=False))  # no step falls by the drop
    assert level_hacking(rows[:3], OPT, CHECK, 0.05) == []  # 0.04 below the best: within the drop
    [alert] = level_hacking(rows, OPT, CHECK, 0.05)
    assert alert.kind == "warning.lm_reward_hacking" and alert.metric == CHECK
    assert alert.evidence["best_step"] == 0.0 and alert.evidence["fall"] == pytest.approx(0.08)
    assert alert.threshold == pytest.approx(0.45)


def test_level_test_holds_while_the_hack_persists() -> None:
    rows = rows_of([(0.1, 0.5), (0.9, 0.2), (0.9, 0.2), (0.95, 0.21)])
    for end in (2, 3, 4):  # raised again at every evaluation while it holds, not once
        assert len(level_hacking(rows[:end], OPT, CHECK, 0.1)) == 1


def test_level_test_quiet_when_reward_falls_with_the_check() -> None:
    # both fell: a worse policy, not a hack (the other rules see a collapse)
    assert level_hacking(rows_of([(0.5, 0.5), (0.2, 0.2)]), OPT, CHECK, 0.1) == []
    assert level_hacking(rows_of([(0.5, 0.5)]), OPT, CHECK, 0.1) == []
    # rows without both scores do not count
    assert level_hacking([{OPT: 1.0}, {CHECK: 0.0}], OPT, CHECK, 0.1) == []


def test_degeneration_alert_against_the_first_value() -> None:
    key = "lm/distinct_2"
    rows = [{key: 0.8}, {key: float("nan")}, {key: 0.5}, {key: 0.3}]
    assert degeneration_alert(rows[:3], key, 0.5) == []  # 0.5 >= 0.4
    [alert] = degeneration_alert(rows, key, 0.5)
    assert alert.kind == "warning.lm_degeneration" and alert.threshold == pytest.approx(0.4)
    assert degeneration_alert(rows, key, None) == []
    assert degeneration_alert([*rows, {"other": 1.0}], key, 0.5) == []  # judged only on rows that measure it


# ---- pgrad doctor's language-model checks ------------------------------------------------------------------


def evaluation_rows(check_key: str, pairs: list[tuple[float, float]]) -> list[dict[str, float]]:
    return [
        {"step": 64.0 * i, "update": float(i), "eval/rm_score": rm, check_key: c} for i, (rm, c) in enumerate(pairs)
    ]


@pytest.mark.parametrize(("key", "label"), [("eval/check_score", "check reward"), ("eval/true_score", "true score")])
def test_doctor_reads_the_users_check_reward_or_the_true_score(key: str, label: str) -> None:
    rows = evaluation_rows(key, [(0.1, 0.6), (0.3, 0.65), (0.6, 0.5), (0.9, 0.4)])
    finding = check_lm_reward_hacking(rows, [], GuardConfig())
    assert finding is not None and label in finding.symptom
    assert finding.step == 128  # the first evaluation more than 0.08 below the best (0.65 at step 64)
    assert (
        check_lm_reward_hacking(evaluation_rows(key, [(0.1, 0.6), (0.3, 0.65), (0.6, 0.6)]), [], GuardConfig()) is None
    )


def test_doctor_prefers_the_check_reward_over_the_true_score() -> None:
    # the check reward holds while the true score falls: the user's own check is what the doctor judges by
    rows = [
        {**a, **b}
        for a, b in zip(
            evaluation_rows("eval/check_score", [(0.1, 0.6), (0.5, 0.6), (0.9, 0.61)]),
            evaluation_rows("eval/true_score", [(0.1, 0.6), (0.5, 0.3), (0.9, 0.1)]),
            strict=True,
        )
    ]
    assert check_lm_reward_hacking(rows, [], GuardConfig()) is None


def test_doctor_finds_degenerate_responses() -> None:
    rows = [{"step": float(i), "update": float(i), "lm/distinct_2": v} for i, v in enumerate([0.8, 0.7, 0.35, 0.3])]
    finding = check_lm_degeneration(rows, [], GuardConfig())
    assert finding is not None and finding.step == 2 and finding.severity == "warning"
    assert check_lm_degeneration(rows[:2], [], GuardConfig()) is None


def test_doctor_leaves_digits_runs_alone() -> None:
    # on the digits task a response of one large digit repeated is the optimum: not degeneration
    rows = [{"step": float(i), "lm/distinct_2": v, "lm/true_score": 0.5} for i, v in enumerate([0.8, 0.3])]
    assert check_lm_degeneration(rows, [], GuardConfig()) is None
