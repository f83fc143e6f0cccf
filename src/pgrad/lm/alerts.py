"""Alert rules for language-model runs: pure functions over the rows of ``metrics.jsonl`` so far.

Each rule judges the newest row (with the rows before it for context) and names the field that set
its threshold. The rules that compare a window of rows (reward hacking, disagreement) read only the rows
since the guard's last rollback (``diagnostics/recoveries`` unchanged): the rows before it belong to
weights the rollback threw away. ``pgrad.runners.lm_ppo.guard_alerts`` hands them to the shared guard
(``Guard.observe``), which logs them and, with ``lm_ppo.rollback_on_alert``, rolls back on the critical ones.

- ``critical.lm_kl``: the mean per-response KL to the reference is above ``kl_alert`` nats: the policy
  has left the region where the reward model was trained, and its scores stop meaning much.
- ``warning.lm_reward_hacking``: over the last ``hacking_window`` rows, the mean of the later half
  against the mean of the earlier half: the optimised reward rose while the check score (``lm_ppo.check_reward``;
  never the digits task's true score unless the user names it there) fell by
  more than ``hacking_drop``: the policy exploits the reward model. Half-window means, not two single
  rows: one row's check score is the mean of one batch (64 responses; on the digits task it swings by
  about 0.04 from update to update in a healthy run), so two single rows differ by 0.1 by chance. The
  held-out check is the same rule on two consecutive evaluations (same prompts, same noise). With
  ``hacking_z`` the fall must also exceed that many standard errors of the difference of the half means
  (from the rows' spread): GRPO's batches of 16 prompts x 4 swing about twice as far as 64 prompts.
- ``warning.lm_length_collapse``: the mean response length fell below ``length_collapse`` x its first
  value: responses shrink to the EOS (often a KL penalty too strong for the reward); ``length_explosion``
  (off by default: the digits task rewards long responses) the same for a length above that multiple.
- ``warning.lm_rm_disagreement`` (reward-model ensembles only: rows with ``lm/rm_disagreement``): the
  mean disagreement (std across members of the score) of the last ``hacking_window // 2`` rows is above
  ``disagreement_rise`` x its early level, the mean of the run's first ``hacking_window // 2`` rows. The
  members were trained on different resamples of the same pairs, so they agree where the pairs were
  dense and drift apart off that distribution: rising disagreement says the policy is moving its
  responses where the reward models are guessing, the usual start of reward hacking.
- the level test (``level_hacking``, on evaluation rows with a check): the held-out check is more than
  ``hacking_drop`` below its best while the optimised reward is not below its value there. The rate tests
  above see a fall while it happens; this one holds for as long as a hack persists, and catches a drift too
  slow for any window.
- ``warning.lm_degeneration`` (``degeneration_floor``, off by default): the batch's distinct bigrams per
  bigram fell below that multiple of their first value: the responses repeat a few tokens.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from pgrad import metric_names as names

KL = "lm/kl"
RM_SCORE = "lm/rm_score"
# The held-out check the hacking rules compare with the optimised reward: lm_ppo.check_reward's score (a verifier,
# a function, a second reward model; the digits task's hidden true score only when the user names it there). The
# rules never read lm/true_score itself: a real user has no true score.
CHECK_SCORE = "lm/check_score"
LENGTH = "lm/response_length"
RM_DISAGREEMENT = "lm/rm_disagreement"
EVAL_CHECK_SCORE = "eval/check_score"  # on the held-out prompts (evaluation rows)
EVAL_RM_SCORE = "eval/rm_score"
DISTINCT = "lm/distinct_2"  # pgrad.lm.degeneration


@dataclass(frozen=True)
class AlertThresholds:
    """The levels of the language-model alert rules (KL, reward hacking, length collapse, RM disagreement)."""

    kl_alert: float | None
    hacking_window: int
    hacking_drop: float
    length_collapse: float | None
    disagreement_rise: float | None = None
    length_explosion: float | None = None
    hacking_z: float = 0.0  # the fall must exceed this many standard errors of the half-window means too (0: off)
    degeneration_floor: float | None = None  # warning.lm_degeneration below this x the first distinct-2 (None: off)


@dataclass(frozen=True)
class LMAlert:
    """``kind`` is ``level.rule``; ``metric``, ``value``, ``threshold`` and ``evidence`` go to the event."""

    kind: str
    message: str
    metric: str = KL
    value: float = 0.0
    threshold: float = 0.0
    evidence: dict[str, float] = field(default_factory=dict)

    @property
    def rule(self) -> str:
        """The rule's name: ``kind`` without its level."""
        return self.kind.split(".", 1)[1]


# the rules whose alerts are reward hacking (or its symptoms): critical, and a rollback, when the guard acts
HACKING_RULES = ("lm_kl", "lm_reward_hacking", "lm_length_collapse", "lm_length_explosion", "lm_degeneration")


def since_last_rollback(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows logged since the guard's last rollback (same ``diagnostics/recoveries`` as the newest)."""
    recoveries = rows[-1].get(names.RECOVERIES, 0.0)
    start = len(rows)
    while start > 0 and rows[start - 1].get(names.RECOVERIES, 0.0) == recoveries:
        start -= 1
    return rows[start:]


def lm_alerts(history: list[dict[str, Any]], limits: AlertThresholds) -> list[LMAlert]:
    """The alerts true at the newest update row of ``history`` (rows without ``lm/kl`` are skipped)."""
    rows = [row for row in history if KL in row]
    if not rows:
        return []
    last, found = rows[-1], []
    if limits.kl_alert is not None and last[KL] > limits.kl_alert:
        found.append(
            LMAlert(
                "critical.lm_kl",
                f"mean KL to the reference {last[KL]:.2f} nats per response is above lm_ppo.kl_alert "
                f"{limits.kl_alert:g}: raise lm_ppo.kl_coef or set lm_ppo.kl_target",
                KL,
                float(last[KL]),
                limits.kl_alert,
            )
        )
    window = since_last_rollback(rows)[-limits.hacking_window :]
    # only with a check (lm_ppo.check_reward): without one the rows have nothing to compare the reward with
    if len(window) == limits.hacking_window and all(CHECK_SCORE in row for row in window):
        half = len(window) // 2
        earlier, later = window[:half], window[-half:]  # an odd window leaves its middle row out
        rm_gain = _mean(later, RM_SCORE) - _mean(earlier, RM_SCORE)
        check_drop = _mean(earlier, CHECK_SCORE) - _mean(later, CHECK_SCORE)
        noise = _half_means_se(earlier, later, CHECK_SCORE)
        if rm_gain > 0 and check_drop > limits.hacking_drop and check_drop > limits.hacking_z * noise:
            found.append(
                LMAlert(
                    "warning.lm_reward_hacking",
                    f"over the last {len(window)} updates (later half against earlier half) the reward-model score "
                    f"rose by {rm_gain:.3g} while the check score fell by {check_drop:.3g} (lm_ppo.hacking_drop "
                    f"{limits.hacking_drop:g}): the policy "
                    "exploits the reward model; raise kl_coef, retrain the reward model on the new responses, or "
                    "stop at the best checkpoint",
                    CHECK_SCORE,
                    _mean(later, CHECK_SCORE),
                    _mean(earlier, CHECK_SCORE) - limits.hacking_drop,
                    {"rm_gain": rm_gain, "check_drop": check_drop, "se": noise, "window": float(len(window))},
                )
            )
    if not any(alert.kind == "warning.lm_reward_hacking" for alert in found):
        found.extend(_heldout_hacking(history, limits))
    if not any(alert.kind == "warning.lm_reward_hacking" for alert in found) and EVAL_CHECK_SCORE in history[-1]:
        found.extend(level_hacking(history, EVAL_RM_SCORE, EVAL_CHECK_SCORE, limits.hacking_drop, "the held-out check"))
    first_length = float(rows[0][LENGTH])
    evidence = {"first_length": first_length}
    if limits.length_collapse is not None and last[LENGTH] < limits.length_collapse * first_length:
        found.append(
            LMAlert(
                "warning.lm_length_collapse",
                f"mean response length {last[LENGTH]:.2f} is below lm_ppo.length_collapse {limits.length_collapse:g} "
                f"x its first value {first_length:.2f}: responses shrink toward the EOS",
                LENGTH,
                float(last[LENGTH]),
                limits.length_collapse * first_length,
                evidence,
            )
        )
    if limits.length_explosion is not None and last[LENGTH] > limits.length_explosion * first_length:
        found.append(
            LMAlert(
                "warning.lm_length_explosion",
                f"mean response length {last[LENGTH]:.2f} is above lm_ppo.length_explosion "
                f"{limits.length_explosion:g} x its first value {first_length:.2f}: responses grow to the limit",
                LENGTH,
                float(last[LENGTH]),
                limits.length_explosion * first_length,
                evidence,
            )
        )
    found.extend(_disagreement_alert(rows, limits))
    found.extend(degeneration_alert(rows, DISTINCT, limits.degeneration_floor))
    return found


def _heldout_hacking(history: list[dict[str, Any]], limits: AlertThresholds) -> list[LMAlert]:
    """The held-out check: on the newest row that carries an evaluation, the reward-model score on the held-out
    prompts rose since the previous evaluation (since the last rollback; the starting model's counts) while the
    check score fell by more than ``hacking_drop``. Evaluations answer the same prompts with the same noise, so
    two of them differ by the policy alone, not by a batch's draw."""
    if EVAL_CHECK_SCORE not in history[-1]:
        return []
    evaluations = [row for row in since_last_rollback(history) if EVAL_CHECK_SCORE in row and EVAL_RM_SCORE in row]
    if len(evaluations) < 2:
        return []
    before, now = evaluations[-2], evaluations[-1]
    rm_gain = float(now[EVAL_RM_SCORE]) - float(before[EVAL_RM_SCORE])
    check_drop = float(before[EVAL_CHECK_SCORE]) - float(now[EVAL_CHECK_SCORE])
    if rm_gain <= 0 or check_drop <= limits.hacking_drop:
        return []
    return [
        LMAlert(
            "warning.lm_reward_hacking",
            f"on the held-out prompts, since the evaluation at step {before.get('step')}, the reward-model score rose "
            f"by {rm_gain:.3g} while the check score fell by {check_drop:.3g} (lm_ppo.hacking_drop "
            f"{limits.hacking_drop:g}): the policy exploits the reward model; raise kl_coef, retrain the reward "
            "model on the new responses, or stop at the best checkpoint",
            EVAL_CHECK_SCORE,
            float(now[EVAL_CHECK_SCORE]),
            float(before[EVAL_CHECK_SCORE]) - limits.hacking_drop,
            {"rm_gain": rm_gain, "check_drop": check_drop, "since_step": float(before.get("step", 0))},
        )
    ]


def level_hacking(
    rows: list[dict[str, Any]], optimised: str, check: str, drop: float, source: str = "the check reward"
) -> list[LMAlert]:
    """The level test: the newest row's ``check`` score is more than ``drop`` below the best ``check`` score of
    the rows before it while its ``optimised`` reward is at least the optimised reward of that best row.

    The rate tests (half windows, consecutive evaluations) see a fall while it happens; once a hack has set in
    and stays, or when the check falls too slowly for any window, they go quiet. This one compares with the
    best the run has reached, so it holds, and is raised again at every row that carries both scores, for as
    long as the policy stays below that level while its optimised reward does not. Only rows with both keys
    count (the held-out evaluations); the best row is searched over all of them, before a rollback too: the
    rollback returns to weights at least as good as that level, and falling below it again is the same hack."""
    scored = [row for row in rows if check in row and optimised in row]
    if len(scored) < 2:
        return []
    now, before = scored[-1], scored[:-1]
    best = max(before, key=lambda row: float(row[check]))
    fall = float(best[check]) - float(now[check])
    if fall <= drop or float(now[optimised]) < float(best[optimised]):
        return []
    return [
        LMAlert(
            "warning.lm_reward_hacking",
            f"{source} ({check}) is {float(now[check]):.3g}, {fall:.3g} below its best {float(best[check]):.3g} "
            f"(step {best.get('step')}), while the optimised reward ({optimised}) is {float(now[optimised]):.3g}, "
            f"not below its {float(best[optimised]):.3g} there (more than the allowed drop {drop:g}): the policy "
            "gains reward the check does not confirm; raise kl_coef, or keep the best checkpoint",
            check,
            float(now[check]),
            float(best[check]) - drop,
            {"best_step": float(best.get("step", 0)), "best_check": float(best[check]), "fall": fall, "level": 1.0},
        )
    ]


def degeneration_alert(rows: list[dict[str, Any]], key: str, floor: float | None) -> list[LMAlert]:
    """``warning.lm_degeneration``: the newest row's ``key`` (a distinct-n, ``pgrad.lm.degeneration``) is below
    ``floor`` x its value in the first row that has it: the batch's responses repeat the same n-grams."""
    measured = [row for row in rows if key in row and not math.isnan(float(row[key]))]
    if floor is None or len(measured) < 2 or measured[-1] is not rows[-1]:
        return []
    first, now = float(measured[0][key]), float(measured[-1][key])
    if now >= floor * first:
        return []
    return [
        LMAlert(
            "warning.lm_degeneration",
            f"{key} (distinct n-grams / n-grams over the batch) fell to {now:.3g}, below lm_ppo.degeneration_floor "
            f"{floor:g} x its first value {first:.3g}: the responses repeat the same few tokens",
            key,
            now,
            floor * first,
            {"first": first},
        )
    ]


def _disagreement_alert(rows: list[dict[str, Any]], limits: AlertThresholds) -> list[LMAlert]:
    """The early level is the run's first rows (what the members agreed on at the start); the late level
    only rows since the last rollback."""
    ensemble_rows = [row for row in rows if RM_DISAGREEMENT in row]
    recent_rows = [row for row in since_last_rollback(rows) if RM_DISAGREEMENT in row]
    half = limits.hacking_window // 2
    if limits.disagreement_rise is None or len(ensemble_rows) < 2 * half or len(recent_rows) < half:
        return []
    early, late = _mean(ensemble_rows[:half], RM_DISAGREEMENT), _mean(recent_rows[-half:], RM_DISAGREEMENT)
    if early <= 0 or late <= limits.disagreement_rise * early:
        return []
    return [
        LMAlert(
            "warning.lm_rm_disagreement",
            f"the reward-model ensemble's disagreement (std across members) rose from {early:.3g} over the first "
            f"{half} updates to {late:.3g} over the last {half}, above lm_ppo.disagreement_rise "
            f"{limits.disagreement_rise:g} x: the policy's responses are where the reward models guess; raise "
            "kl_coef, combine by min or a larger ensemble_k, or stop at the checkpoint before the rise",
            RM_DISAGREEMENT,
            late,
            limits.disagreement_rise * early,
            {"early": early},
        )
    ]


def _half_means_se(earlier: list[dict[str, Any]], later: list[dict[str, Any]], key: str) -> float:
    """Standard error of the difference of the two half-window means, sqrt(s_e^2 / n + s_l^2 / n) from the spread
    of the rows within each half (0 with one row per half: no spread to measure). Batches of few distinct prompts
    (GRPO/RLOO: 16 prompts x 4 responses) swing more from row to row than 64 prompts, and this widens with them."""
    if len(earlier) < 2 or len(later) < 2:
        return 0.0
    spread = [statistics.variance([float(row[key]) for row in half]) / len(half) for half in (earlier, later)]
    return math.sqrt(sum(spread))


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    return sum(float(row[key]) for row in rows) / len(rows)


def new_alerts(history: list[dict[str, Any]], limits: AlertThresholds) -> list[LMAlert]:
    """The alerts of the newest row that were not raised on the row before it (one event per episode of it)."""
    before = {alert.kind for alert in lm_alerts(history[:-1], limits)}
    return [alert for alert in lm_alerts(history, limits) if alert.kind not in before]
