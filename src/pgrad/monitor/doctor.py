"""``pgrad doctor RUN_DIR``: read a run's metrics and events, name what went wrong, when, why, and what to do.

Alert rules (``pgrad.monitor.alerts``) judge one update as it happens; the doctor judges the whole
run afterwards, so it can ask questions an alert cannot: did the return ever improve after the
entropy collapsed? did the loss keep falling while the return stood still? Each check is a pure
function ``check(history, events, config) -> Finding | None``; add one by appending it to ``CHECKS``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pgrad.checkpoint import CheckpointStore, check_run_folder, read_train_state
from pgrad.config import GuardConfig, build, load_yaml
from pgrad.errors import PgradError
from pgrad.monitor.alerts import CLIP_FRACTION, ENTROPY, EXPLAINED_VARIANCE, GRAD_NORM, KL, NONFINITE_STEPS, number
from pgrad.monitor.sinks import read_jsonl

Metrics = dict[str, Any]
RETURN = "rollout/return_mean"
VALUE_LOSS = "train/value_loss"
CLIP_NEAR_ZERO = 0.005  # a median clip fraction below this: the ratio never leaves [1 - eps, 1 + eps]
MIN_UPDATES = 12  # whole-run checks need this many updates to say anything


@dataclass(frozen=True)
class Finding:
    """One problem ``pgrad doctor`` found: symptom, severity, where it started, evidence, cause and fix."""

    symptom: str
    severity: str  # "critical" or "warning"
    update: int  # the update where it started
    step: int
    evidence: str
    cause: str
    fix: str


def values(history: list[Metrics], key: str) -> np.ndarray:
    """The metric per update as floats (NaN where absent)."""
    return np.array([np.nan if (v := number(m, key)) is None else v for m in history], dtype=float)


def smoothed(x: np.ndarray) -> np.ndarray:
    """Trailing mean over ~5% of the run (at least 3 updates), ignoring NaN."""
    width = max(3, len(x) // 20)
    out = np.full(len(x), np.nan)
    for i in range(len(x)):
        window = x[max(0, i - width + 1) : i + 1]
        if np.isfinite(window).any():
            out[i] = np.nanmean(window)
    return out


def improved(before: float, after: float) -> bool:
    """``after`` is more than 10% (of |before|, at least 1) above ``before``."""
    return after > before + 0.1 * max(abs(before), 1.0)


def _at(history: list[Metrics], index: int) -> tuple[int, int]:
    entry = history[index]
    return int(entry.get("update", index + 1)), int(entry.get("step", 0))


# ---- the checks ----------------------------------------------------------------------------------


def check_nonfinite(history: list[Metrics], events: list[Metrics], config: GuardConfig) -> Finding | None:
    """NaN or Inf in a loss or the gradient norm: the first update where one appeared."""
    for i, m in enumerate(history):
        bad = [k for k in m if k.startswith("train/") and k.endswith("loss") and not math.isfinite(number(m, k) or 0.0)]
        grad = number(m, GRAD_NORM)
        if grad is not None and not math.isfinite(grad):
            bad.append(GRAD_NORM)
        if (number(m, NONFINITE_STEPS) or 0.0) > 0:
            bad.append(f"{number(m, NONFINITE_STEPS):.0f} skipped optimizer steps")
        if bad:
            update, step = _at(history, i)
            halted = any(e.get("kind") == "critical.halted" for e in events)
            return Finding(
                "loss or gradients went NaN/Inf",
                "critical",
                update,
                step,
                f"non-finite: {', '.join(bad)}" + ("; the run was halted" if halted else ""),
                "a step too large for the loss surface (learning rate), exploding gradients, or extreme "
                "advantages/rewards",
                "lower learning_rate, keep max_grad_norm clipping on (e.g. 0.5), normalise advantages "
                "(norm_adv) and rewards (env.norm_reward); inspect halt_batch.npz if the run halted",
            )
    return None


def check_kl(history: list[Metrics], events: list[Metrics], config: GuardConfig) -> Finding | None:
    """Approx KL above ``guard.kl_warning`` in many updates, or once above the critical level."""
    kl = values(history, KL)
    high = np.flatnonzero(kl > config.kl_warning)
    if not high.size or (high.size < max(3, 0.1 * len(kl)) and not (kl > config.kl_critical).any()):
        return None
    update, step = _at(history, int(high[0]))
    return Finding(
        "KL too high",
        "critical" if (kl > config.kl_critical).any() else "warning",
        update,
        step,
        f"approx KL > {config.kl_warning} in {high.size} of {len(kl)} updates (max {np.nanmax(kl):.3g})",
        "each update moves the policy too far: learning rate, epochs or minibatch count too high",
        "lower learning_rate or num_epochs, set target_kl (e.g. 0.02) for early stopping, or lower clip_eps",
    )


def check_clip_fraction(history: list[Metrics], events: list[Metrics], config: GuardConfig) -> Finding | None:
    """The clip fraction stuck near 0 (steps too small) or near 1 (too large) after the warm-up."""
    clip = values(history, CLIP_FRACTION)[config.warmup_updates :]
    if np.isfinite(clip).sum() < MIN_UPDATES:
        return None
    median = float(np.nanmedian(clip))
    if median < CLIP_NEAR_ZERO:
        stuck, where = "near 0", np.flatnonzero(smoothed(clip) < CLIP_NEAR_ZERO)
        cause = "the policy barely changes per update: learning rate too low, or clip_eps annealed to nothing"
        fix = "raise learning_rate or num_epochs; check anneal_clip/anneal_lr"
    elif median > config.clip_fraction_high:
        stuck, where = "near 1", np.flatnonzero(smoothed(clip) > config.clip_fraction_high)
        cause = "most samples leave the trust region every update: steps far too large"
        fix = "lower learning_rate or num_epochs, or raise clip_eps"
    else:
        return None
    update, step = _at(history, config.warmup_updates + int(where[0]) if where.size else config.warmup_updates)
    return Finding(
        f"clip fraction stuck {stuck}",
        "warning",
        update,
        step,
        f"median clip fraction {median:.3g} after warm-up",
        cause,
        fix,
    )


def check_value_lag(history: list[Metrics], events: list[Metrics], config: GuardConfig) -> Finding | None:
    """Explained variance low over the second half of the run: the value function lags the returns."""
    ev = values(history, EXPLAINED_VARIANCE)
    half = ev[len(ev) // 2 :]
    if len(ev) < MIN_UPDATES or not np.isfinite(half).any():
        return None
    median = float(np.nanmedian(half))
    if median >= config.explained_variance_low:
        return None
    low = np.flatnonzero(smoothed(ev) < config.explained_variance_low)
    start = int(low[low >= config.warmup_updates][0]) if (low >= config.warmup_updates).any() else len(ev) // 2
    update, step = _at(history, start)
    return Finding(
        "value function lagging",
        "warning",
        update,
        step,
        f"explained variance median {median:.3g} over the second half (< {config.explained_variance_low})",
        "the critic cannot follow the returns: too little value training, unscaled rewards, or too short a horizon",
        "raise vf_coef or num_epochs, normalise rewards (env.norm_reward), use a separate critic network",
    )


def check_entropy_collapse(history: list[Metrics], events: list[Metrics], config: GuardConfig) -> Finding | None:
    """Entropy fallen below ``guard.entropy_collapse`` of its start without the return improving."""
    entropy, ret = values(history, ENTROPY), smoothed(values(history, RETURN))
    if len(entropy) < MIN_UPDATES or not np.isfinite(entropy[0]) or entropy[0] <= 0:
        return None
    below = np.flatnonzero(entropy < config.entropy_collapse * entropy[0])
    if not below.size:
        return None
    start = int(below[0])
    at_collapse = ret[start] if np.isfinite(ret[start]) else np.nanmin(ret)
    first = ret[np.flatnonzero(np.isfinite(ret))[0]] if np.isfinite(ret).any() else np.nan
    if not np.isfinite(at_collapse) or improved(at_collapse, float(np.nanmax(ret[start:]))):
        return None  # the return kept climbing after the entropy fell: that is convergence, not collapse
    if improved(first, at_collapse):
        return None  # the policy had already learned when it settled: convergence again
    update, step = _at(history, start)
    return Finding(
        "entropy collapse",
        "warning",
        update,
        step,
        f"entropy {entropy[start]:.3g} < {config.entropy_collapse} x its start {entropy[0]:.3g}, and the return "
        f"did not improve afterwards (about {at_collapse:.4g})",
        "the policy became nearly deterministic before it found a good behaviour (premature convergence)",
        "raise ent_coef (e.g. 0.01), lower learning_rate, or raise log_std_init for Gaussian policies",
    )


def check_plateau(history: list[Metrics], events: list[Metrics], config: GuardConfig) -> Finding | None:
    """The return flat while the value loss keeps falling: learning the critic, not the policy."""
    ret, loss = smoothed(values(history, RETURN)), values(history, VALUE_LOSS)
    n = len(ret)
    if n < MIN_UPDATES or not np.isfinite(ret).any() or not np.isfinite(loss).any():
        return None
    early = float(np.nanmean(ret[: n // 4])) if np.isfinite(ret[: n // 4]).any() else float(np.nanmin(ret))
    late_best = float(np.nanmax(ret[n // 2 :]))
    first_loss, last_loss = np.nanmedian(loss[: n // 4]), np.nanmedian(loss[-n // 4 :])
    if improved(early, late_best) or not last_loss < 0.5 * first_loss:
        return None
    start = next(i for i in range(n) if np.isfinite(ret[i]) and not improved(ret[i], float(np.nanmax(ret[i:]))))
    update, step = _at(history, start)
    return Finding(
        "return plateau while the loss falls",
        "warning",
        update,
        step,
        f"return stays near {early:.4g} while the value loss fell from {first_loss:.3g} to {last_loss:.3g}",
        "the losses are being minimised but the policy learns nothing useful: reward scale off, the value loss "
        "dominating the shared gradient, or too little exploration",
        "normalise or rescale rewards (env.norm_reward), lower vf_coef or use separate actor/critic networks, "
        "raise ent_coef",
    )


def check_return_collapse(history: list[Metrics], events: list[Metrics], config: GuardConfig) -> Finding | None:
    """The return fallen well below its peak and not recovered by the end."""
    ret = smoothed(values(history, RETURN))
    if len(ret) < MIN_UPDATES or not np.isfinite(ret).any():
        return None
    peak_index = int(np.nanargmax(ret))
    peak, start_value = float(ret[peak_index]), float(ret[np.flatnonzero(np.isfinite(ret))[0]])
    drop = config.eval_max_drop if config.eval_max_drop is not None else 0.5
    threshold = peak - drop * abs(peak)
    after = np.flatnonzero(ret[peak_index:] < threshold)
    if not improved(start_value, peak) or not after.size or not ret[-1] < threshold:
        return None
    update, step = _at(history, peak_index + int(after[0]))
    peak_update, peak_step = _at(history, peak_index)
    return Finding(
        "return collapse after a peak",
        "critical",
        update,
        step,
        f"return peaked at {peak:.4g} (update {peak_update}, step {peak_step}) and ended at {ret[-1]:.4g}",
        "catastrophic forgetting or a destructive update (too large a step), or a change in the reward",
        "lower learning_rate, anneal it (anneal_lr), set target_kl; evaluate and use the best checkpoint "
        "('pgrad eval RUN --checkpoint best')",
    )


LM_HACKING_DROP = 0.08  # lm_ppo.hacking_drop's default (the doctor reads the guard section only)


# The held-out check the doctor reads: the user's check reward where the run has one (lm_ppo.check_reward), else
# the digits task's hidden true score (the test bench of the hacking rules).
LM_CHECK_SCORES = (("eval/check_score", "check reward"), ("eval/true_score", "true score"))


def check_lm_reward_hacking(history: list[Metrics], events: list[Metrics], config: GuardConfig) -> Finding | None:
    """Language-model runs, over the whole run: the held-out check (``eval/check_score``, the user's check reward,
    else the digits task's ``eval/true_score``; the same prompts and noise at every evaluation) ended more than 0.08
    below its best while the held-out reward-model score ended above its level there: the reward was exploited."""
    for key, label in LM_CHECK_SCORES:
        evaluations = [
            row for row in history if number(row, key) is not None and number(row, "eval/rm_score") is not None
        ]
        if len(evaluations) >= 3:
            return _held_out_fall(evaluations, key, label)
    return None


def _held_out_fall(evaluations: list[Metrics], key: str, label: str) -> Finding | None:
    check = [float(number(row, key) or 0.0) for row in evaluations]
    best_index = int(np.argmax(check))
    best, last = evaluations[best_index], evaluations[-1]
    rm_best, rm_last = float(number(best, "eval/rm_score") or 0.0), float(number(last, "eval/rm_score") or 0.0)
    if check[best_index] - check[-1] <= LM_HACKING_DROP or rm_last <= rm_best:
        return None
    after_best = next(i for i in range(best_index + 1, len(check)) if check[best_index] - check[i] > LM_HACKING_DROP)
    row = evaluations[after_best]
    return Finding(
        f"reward hacking (held-out {label} fell while the reward-model score rose)",
        "critical",
        int(row.get("update", 0)),
        int(row.get("step", 0)),
        f"held-out {label} {check[best_index]:.3f} at step {best.get('step')} -> {check[-1]:.3f} at the end, while "
        f"the held-out reward-model score went {rm_best:.3g} -> {rm_last:.3g}",
        f"the policy found responses the reward model scores highly and the {label} does not",
        f"use the checkpoint of the best held-out {label} ('pgrad eval RUN --checkpoint NAME'), raise "
        "lm_ppo.kl_coef or set kl_target, combine a reward-model ensemble by min, or retrain the reward model on "
        "the policy's responses",
    )


LM_DEGENERATION_FLOOR = 0.5  # lm_ppo.degeneration_floor's default


def check_lm_degeneration(history: list[Metrics], events: list[Metrics], config: GuardConfig) -> Finding | None:
    """Language-model runs: the batch's distinct bigrams per bigram (``lm/distinct_2``) ended below half its first
    value: the responses repeat a few tokens (``pgrad.lm.degeneration``). Not on the digits task (rows with its
    ``lm/true_score``), where a response of one large digit repeated is the optimum, not a hack."""
    if any("lm/true_score" in row for row in history):
        return None
    rows = [row for row in history if number(row, "lm/distinct_2") is not None]
    measured = [(row, float(number(row, "lm/distinct_2") or 0.0)) for row in rows]
    measured = [(row, value) for row, value in measured if not math.isnan(value)]
    if len(measured) < 2 or measured[-1][1] >= LM_DEGENERATION_FLOOR * measured[0][1]:
        return None
    first = measured[0][1]
    row = next(row for row, value in measured if value < LM_DEGENERATION_FLOOR * first)
    return Finding(
        "degenerate responses (distinct bigrams fell)",
        "warning",
        int(row.get("update", 0)),
        int(row.get("step", 0)),
        f"distinct bigrams per bigram in the batch {first:.3f} at the start -> {measured[-1][1]:.3f} at the end",
        "the policy repeats a few tokens the reward scores; the text stops carrying anything",
        "read the samples of the last evaluations, raise lm_ppo.kl_coef, or add a repetition or format check to the "
        "reward",
    )


Check = Callable[[list[Metrics], list[Metrics], GuardConfig], "Finding | None"]
CHECKS: tuple[Check, ...] = (
    check_nonfinite,
    check_kl,
    check_return_collapse,
    check_entropy_collapse,
    check_plateau,
    check_clip_fraction,
    check_value_lag,
    check_lm_reward_hacking,
    check_lm_degeneration,
)


def diagnose(history: list[Metrics], events: list[Metrics], config: GuardConfig | None = None) -> list[Finding]:
    """Every finding for a run, critical first, each list in the order the problems started."""
    config = config or GuardConfig()
    if not history:
        return []
    findings = [f for check in CHECKS if (f := check(history, events, config)) is not None]
    return sorted(findings, key=lambda f: (f.severity != "critical", f.update))


def guard_actions(events: list[Metrics]) -> list[str]:
    """What the guard did during the run (drills, rollbacks, halts), one line each."""
    kinds = ("drill.", "recovery.", "critical.halted", "critical.recovery_cap")
    return [
        f"step {e.get('step')}: {e.get('kind')}: {e.get('message')}"
        for e in events
        if str(e.get("kind", "")).startswith(kinds)
    ]


# What each guard alert means and what to do, for the warnings a run logged (``events.jsonl``).
ALERT_HELP: dict[str, tuple[str, str]] = {
    "kl": ("the policy moved too far in one update", "lower learning_rate or num_epochs, or set target_kl"),
    "clip_fraction": (
        "high: most samples clipped (steps too large); low: the policy barely moves at full step size "
        "while the return stalls",
        "high: lower learning_rate/num_epochs; low: raise learning_rate or num_epochs",
    ),
    "explained_variance": (
        "the critic explains little of the returns (window median) while the return does not improve",
        "raise vf_coef or num_epochs, normalise rewards (env.norm_reward)",
    ),
    "entropy_collapse": (
        "the policy became nearly deterministic while its return stalled near where it started",
        "raise ent_coef, lower learning_rate, or raise log_std_init",
    ),
    "log_std": ("the Gaussian policy is nearly deterministic", "raise ent_coef or log_std_init"),
    "grad_norm": (
        "a gradient norm far above its recent median, its spread and the run's first norm",
        "keep max_grad_norm clipping on; lower learning_rate if KL alerts follow",
    ),
    "update_size": (
        "one update moved a parameter group (per unit of clipped gradient) an order of magnitude further than "
        "its recent median: a learning rate or optimizer state gone wrong; the guard restored the last healthy "
        "state",
        "lower learning_rate; if it recurs on a healthy run, raise guard.update_spike",
    ),
    "eval_early": (
        "an evaluation ahead of the schedule: to confirm the first reference, to follow a collapse, or because "
        "the training return fell below half its level at the confirmed best (info only)",
        "nothing; guard.eval_recheck sets how often (0: only on schedule)",
    ),
    "steps_per_second": ("the machine slowed down (info only)", "nothing for training; check other jobs"),
    "nonfinite": ("NaN/Inf in a loss, the gradients or the parameters", "see the non-finite finding above"),
    "eval_collapse": (
        "a deterministic evaluation fell below the confirmed best by more than guard.eval_max_drop x |best|, "
        "beyond guard.eval_noise_z standard errors, while the training return fell too",
        "two in a row reload the best checkpoint; if it recurs, lower learning_rate",
    ),
    "eval_drop": (
        "an evaluation well below the best while the training return was not: noise (info only)",
        "nothing; more guard.eval_episodes give steadier evaluations",
    ),
    # off-policy (DDPG, TD3, SAC)
    "q_divergence": (
        "a Q value beyond guard.q_bound_factor x r_max / (1 - gamma), which no return of this env reaches: the "
        "critic bootstraps from its own over-estimates; the guard restored the last healthy state",
        "lower the learning rate or tau, scale the rewards down; TD3's twin critics over-estimate less than DDPG",
    ),
    "critic_divergence": (
        "a distributional critic's cross-entropy far above log(num_atoms), a uniform guess's: its logits went to "
        "extremes (its Q cannot leave the support, so the Q bound never fires); the guard restored the last healthy "
        "state",
        "lower the learning rate; widen d4pg.v_min/v_max if the returns leave the support",
    ),
    "q_growth": (
        "|Q mean| multiplied by guard.q_growth or more row after row: geometric growth, divergence under way",
        "lower the learning rate or tau; check the reward scale",
    ),
    "td_error": (
        "the critic's mean |TD error| jumped an order of magnitude above its running median",
        "lower the learning rate; check for a reward that changed scale",
    ),
    "alpha": (
        "SAC's learned temperature collapsed (exploration gone) or exploded (the reward no longer matters)",
        "set a reachable target_entropy, or fix alpha; an exploding alpha often means a saturated tanh policy",
    ),
    # language-model runs (pgrad.lm.alerts)
    "lm_kl": (
        "the language model drifted far from its reference: the reward model scores text unlike what it was "
        "trained on, so its scores stop meaning much",
        "raise lm_ppo.kl_coef or set lm_ppo.kl_target; lower learning_rate; keep the checkpoint before the drift",
    ),
    "lm_reward_hacking": (
        "the reward-model score rose while the true score (or a held-out check) fell: the policy exploits the "
        "reward model's errors",
        "stop at the checkpoint before it, raise lm_ppo.kl_coef, or retrain the reward model on pairs of the "
        "policy's own responses",
    ),
    "lm_rm_disagreement": (
        "the reward-model ensemble's members disagree more and more on the policy's responses: the policy has "
        "moved to text the reward models never saw enough of, where their scores are guesses (reward hacking "
        "starts here, before the true score falls)",
        "raise lm_ppo.kl_coef or set lm_ppo.kl_target, combine with ensemble_combine: min or a larger ensemble_k, "
        "or stop at the checkpoint before the rise and retrain the ensemble on the policy's responses",
    ),
    "lm_degeneration": (
        "the batch's responses repeat the same few n-grams (distinct bigrams per bigram fell below its floor x its "
        "first value): a reward paid for a pattern, not for content",
        "read the sampled generations in the run folder, raise lm_ppo.kl_coef, or add a repetition or format check "
        "to the reward",
    ),
    "lm_length_collapse": (
        "responses shrank toward the EOS: an empty answer avoids the KL penalty when the reward cannot pay for it",
        "lower lm_ppo.kl_coef, or check that the reward model does not score short responses highest",
    ),
    "lm_length_explosion": (
        "responses grew far beyond their starting length: the reward model pays for length itself, a classic "
        "reward hack",
        "raise lm_ppo.kl_coef, retrain the reward model with pairs that do not favour length, or cap max_new_tokens",
    ),
}
# What a run's ``step`` counts, by its config's ``algo`` (the doctor reads no algorithm registry); env steps else.
STEP_UNITS = {
    "lm_ppo": "responses",
    "lm_rm": "preference pairs",
    "lm_dpo": "preference pairs",
    "lm_sft": "demonstrations",
}


def step_unit(run_dir: Path) -> str:
    """What ``step`` counts in this run folder: env steps, or the language-model runs' responses, pairs, ..."""
    try:
        algo = load_yaml(Path(run_dir) / "config.yaml").get("algo")
    except PgradError:
        return "env steps"
    return STEP_UNITS.get(algo, "env steps") if isinstance(algo, str) else "env steps"


def explain_alerts(events: list[Metrics]) -> list[str]:
    """One entry per warning kind the guard logged: how often, the first occurrence with its
    evidence (every field the event carries), and what it means."""
    lines: list[str] = []
    logged = [
        e
        for e in events
        if str(e.get("kind", "")).startswith(
            (
                "critical.update_size",
                "critical.q_divergence",
                "critical.critic_divergence",
                "critical.lm_",
                "warning.",
                "info.",
            )
        )
    ]
    for kind in dict.fromkeys(str(e["kind"]) for e in logged):
        same = [e for e in logged if e["kind"] == kind]
        first = same[0]
        skip = {"time", "step", "kind", "message"}
        evidence = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in first.items() if k not in skip
        )
        meaning, fix = ALERT_HELP.get(kind.split(".", 1)[1], ("", ""))
        lines.append(f"    {kind}: {len(same)}x, first at step {first.get('step')}: {first.get('message')}")
        if evidence:
            lines.append(f"        evidence: {evidence}")
        if meaning:
            lines.append(f"        means: {meaning}; fix: {fix}")
    return lines


def format_report(
    run_dir: Path, history: list[Metrics], findings: list[Finding], events: list[Metrics], unit: str = "env steps"
) -> str:
    """``unit``: what ``step`` counts (``step_unit``)."""
    steps = history[-1].get("step", 0) if history else 0
    updates = len(history)
    if unit != "env steps" and history and isinstance(history[-1].get("update"), int):
        updates = history[-1]["update"]  # language-model runs log an evaluation row at step 0 (update 0)
    lines = [f"pgrad doctor {run_dir}: {updates} updates, {steps} {unit}"]
    if not history:
        return lines[0] + "\nno metrics yet (metrics.jsonl is empty)"
    if not findings:
        lines.append("healthy: no problems found")
    recoveries = [e for e in events if str(e.get("kind", "")).startswith("recovery.")]
    for f in findings:
        lines += [
            f"[{f.severity}] {f.symptom}: since update {f.update} (step {f.step})",
            f"    evidence: {f.evidence}",
            f"    likely cause: {f.cause}",
            f"    fix: {f.fix}",
        ]
        handled = [e for e in recoveries if e.get("step", -1) >= f.step]
        if handled:
            lines.append(f"    guard: {handled[0]['kind']} at step {handled[0]['step']} (see below)")
    explained = explain_alerts(events)
    if explained:
        lines.append("guard warnings and info events:")
        lines += explained
    actions = guard_actions(events)
    if actions:
        lines.append("guard actions:")
        lines += [f"    {line}" for line in actions]
    return "\n".join(lines)


def load_run(run_dir: Path) -> tuple[list[Metrics], list[Metrics], GuardConfig]:
    """A run folder's metric history, its events and its guard thresholds (defaults if unreadable)."""
    run_dir = Path(run_dir)
    check_run_folder(run_dir)  # links planted in a received folder: one line, nothing read through them
    if not (run_dir / "metrics.jsonl").is_file():
        raise PgradError(f"{run_dir} is not a pgrad run folder (no metrics.jsonl)")
    # Only the guard section is read (no algorithm registry, no environment): the doctor works on
    # any run folder, whatever algorithm wrote it.
    try:
        config = build(GuardConfig, load_yaml(run_dir / "config.yaml").get("guard", {}), "guard")
    except PgradError:
        config = GuardConfig()
    return (
        well_formed_rows(read_jsonl(run_dir / "metrics.jsonl")),
        well_formed_rows(read_jsonl(run_dir / "events.jsonl")),
        config,
    )


def well_formed_rows(rows: list[Any]) -> list[Metrics]:
    """The rows pgrad could have written: mappings whose ``step`` is a whole number (and whose
    ``kind``, for an event, is text). A run folder may come from someone else; a row like
    ``{"step": "<script>"}`` or ``5`` is skipped rather than plotted, diagnosed or put in HTML."""
    return [
        row
        for row in rows
        if isinstance(row, dict)
        and isinstance(row.get("step"), int)
        and not isinstance(row.get("step"), bool)
        and isinstance(row.get("kind", ""), str)
    ]


def check_checkpoints(run_dir: Path, history: list[Metrics]) -> list[Finding]:
    """The checkpoints that resume, eval and export would read (latest and best), loaded and checked as they
    would load them: one they would refuse (NaN/Inf weights, a negative variance, an invalid optimizer
    state, damage) is a finding, since the metrics alone can look healthy (an edited or corrupted file)."""
    store = CheckpointStore(Path(run_dir), keep=1)
    findings, seen = [], set()
    for which in ("latest", "best"):
        try:
            path = store.path(which)
        except PgradError:  # none yet, or an index the commands refuse with their own line
            continue
        if path.name in seen:
            continue
        seen.add(path.name)
        try:
            read_train_state(path)
        except PgradError as exc:
            step = int(path.name.removeprefix("step_"))
            before = [i for i, m in enumerate(history) if int(m.get("step", 0)) <= step]
            update = _at(history, before[-1])[0] if before else 0
            findings.append(
                Finding(
                    f"{which} checkpoint refused",
                    "critical",
                    update,
                    step,
                    str(exc),
                    "values no training run writes (NaN/Inf weights, a negative variance, an invalid optimizer "
                    "state), or a damaged or edited file: resume, eval and export refuse it",
                    "use an earlier checkpoint ('pgrad eval RUN --checkpoint NAME'); if this run wrote it, its "
                    "weights diverged: keep the guard on (guard.enabled) and lower the learning rate",
                )
            )
    return findings


def doctor(run_dir: Path) -> tuple[list[Finding], str]:
    """Read a run folder and diagnose it: the findings and the report ``pgrad doctor`` prints."""
    history, events, config = load_run(run_dir)
    findings = diagnose(history, events, config) + check_checkpoints(Path(run_dir), history)
    return findings, format_report(Path(run_dir), history, findings, events, step_unit(Path(run_dir)))
