"""Alert rules: pure functions over the metric history.

``history`` is the list of per-update metric dicts, oldest first (what ``metrics.jsonl`` holds);
each rule looks at the newest entry, and at older ones where it needs a baseline (a starting value,
a running median). A rule returns an ``Alert`` or ``None``. To add a rule, write a function with the
signature ``rule(history, config) -> Alert | None`` and append it to ``RULES``.

Every threshold is a field of ``GuardConfig`` (section ``guard``), so users tune them per run.

The rules are built to stay silent on healthy runs: a single update's diagnostic is noisy (A2C
judges 40 samples), so the soft rules read the median of the recent window, not the newest value;
"after warm-up" is a share of the run (``warmup_fraction``), not a fixed count of updates; and each
soft rule asks whether the symptom matters right now (a low clip fraction while the learning rate
anneals to zero, a low entropy while the return climbs, a low explained variance on returns that
hardly vary, are all expected). A warning that fires carries its evidence (``Alert.evidence``),
which goes to ``events.jsonl`` and which ``pgrad doctor`` explains.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pgrad import metric_names as names
from pgrad.config import GuardConfig

Metrics = dict[str, Any]
Level = Literal["info", "warning", "critical"]

KL = names.APPROX_KL
CLIP_FRACTION = names.CLIP_FRACTION
EXPLAINED_VARIANCE = names.EXPLAINED_VARIANCE
ENTROPY = names.ENTROPY
LOG_STD = names.LOG_STD
GRAD_NORM = names.GRAD_NORM
GRAD_NORM_CLIPPED = names.GRAD_NORM_CLIPPED
STEPS_PER_SECOND = names.STEPS_PER_SECOND
NONFINITE_STEPS = names.NONFINITE_STEPS
PARAMS_FINITE = names.PARAMS_FINITE
RETURN = names.RETURN_MEAN
RETURN_STD = "rollout/return_std"
LEARNING_RATE = names.LEARNING_RATE
CLIP_EPS = "train/clip_eps"
PROGRESS = names.PROGRESS
UPDATE_NORM = names.UPDATE_NORM
GROUP_GRAD_NORM = names.GROUP_GRAD_NORM


@dataclass(frozen=True)
class Alert:
    """One alert: level, rule, message, and the metric and value that raised it."""

    level: Level
    rule: str
    message: str
    metric: str
    value: float
    threshold: float
    evidence: dict[str, float] = field(default_factory=dict)  # what else the rule looked at

    def to_dict(self) -> dict[str, Any]:
        """The alert's fields as a dict (for JSON)."""
        return asdict(self)


def number(metrics: Metrics, key: str) -> float | None:
    """A metric as a float; None when absent. Non-finite values arrive as floats or as the strings
    'nan'/'inf' (how ``metrics.jsonl`` stores them)."""
    value = metrics.get(key)
    if type(value) is float:  # nearly every value: the fast path (the rules call this ~200 times an update)
        return value
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def series(history: list[Metrics], key: str) -> list[float]:
    """The finite values of metric ``key`` over the history, oldest first (missing ones skipped)."""
    return [v for m in history if (v := number(m, key)) is not None]


def last_values(history: list[Metrics], key: str, count: int, skip_newest: bool = False) -> list[float]:
    """``series(history, key)[-count:]`` (without the newest entry with ``skip_newest``), read from the
    end so that only the entries needed are looked at (the rules run every update)."""
    values: list[float] = []
    entries = reversed(history[:-1] if skip_newest else history)
    for metrics in entries:
        if len(values) == count:
            break
        value = metrics.get(key)
        if type(value) is not float:  # the common case skips the call: this loop runs ~100 times an update
            value = number(metrics, key)
            if value is None:
                continue
        values.append(value)
    values.reverse()
    return values


def after_warmup(history: list[Metrics], config: GuardConfig) -> bool:
    """Past ``warmup_updates`` updates *and* past ``warmup_fraction`` of the run (the guard writes
    the run's progress into each entry; without it only the count of updates applies)."""
    if len(history) <= config.warmup_updates:
        return False
    progress = number(history[-1], PROGRESS)
    return progress is None or progress >= config.warmup_fraction


def running_median(history: list[Metrics], key: str, window: int) -> float | None:
    """Median of the ``window`` finite values before the newest entry (None with fewer than 5)."""
    values = [v for v in last_values(history, key, window, skip_newest=True) if math.isfinite(v)]
    # statistics.median: the same value as np.median, ~2 us instead of ~12 us on 20 floats (every update)
    return float(statistics.median(values)) if len(values) >= 5 else None


def recent(history: list[Metrics], key: str, count: int) -> list[float]:
    """The last ``count`` finite values of ``key``, the newest included."""
    return [v for v in last_values(history, key, count) if math.isfinite(v)]


def recent_median(history: list[Metrics], key: str, count: int) -> float | None:
    """Median of the last ``count`` finite values, the newest included (None without a full half)."""
    values = recent(history, key, count)
    return float(statistics.median(values)) if len(values) >= max(1, count // 2) else None


def first_value(history: list[Metrics], key: str) -> float | None:
    """The oldest finite value of ``key`` before the newest entry (the run's start: bounded
    histories keep the first update)."""
    values = (number(metrics, key) for metrics in history[:-1])
    return next((v for v in values if v is not None and math.isfinite(v)), None)


def improved(before: float, after: float) -> bool:
    """``after`` is more than 10% (of |before|, at least 1) above ``before`` (as ``pgrad doctor``)."""
    return after > before + 0.1 * max(abs(before), 1.0)


def return_improving(history: list[Metrics], config: GuardConfig) -> tuple[bool, dict[str, float]]:
    """Whether the training return has improved: over the run (the recent median above the first
    return) or within the recent window (its newer half above its older half). Evidence included."""
    half = max(config.history_window // 2, 2)
    latest = recent(history, RETURN, half)
    now = float(statistics.median(latest)) if len(latest) >= min(3, half) else None
    start = first_value(history, RETURN)
    older_values = [v for v in last_values(history, RETURN, 2 * half)[:-half] if math.isfinite(v)]
    older = float(statistics.median(older_values)) if older_values else None
    evidence = {
        k: v for k, v in {"return_now": now, "return_start": start, "return_before": older}.items() if v is not None
    }
    if now is None:
        return True, evidence  # no finished episodes to judge by: assume the best, stay silent
    learned = start is not None and improved(start, now)
    rising = older is not None and improved(older, now)
    return learned or rising, evidence


# ---- the rules ------------------------------------------------------------------------------


def kl_rule(history: list[Metrics], config: GuardConfig) -> Alert | None:
    """Critical above ``kl_critical`` in one update (a step that must be undone). Between the two
    levels one update is info and the median of the last three a warning: the healthy PPO CartPole
    preset (lr 1e-3, 20 epochs) reaches 0.054 and 0.092 once each on seed 3 and learns to 500; a rate
    that is too high keeps the KL up. Either way that update is not a healthy state to return to
    (``Guard.healthy`` uses the warning level on the single update)."""
    kl = number(history[-1], KL)
    if kl is None or not math.isfinite(kl):
        return None
    if kl > config.kl_critical:
        message = f"approx KL {kl:.3g} > {config.kl_critical}: the policy moved too far in one update"
        return Alert("critical", "kl", message, KL, kl, config.kl_critical)
    if kl > config.kl_warning:
        lasting = recent_median(history, KL, 3)
        level: Level = "warning" if lasting is not None and lasting > config.kl_warning else "info"
        message = f"approx KL {kl:.3g} > {config.kl_warning}" + (
            "" if level == "warning" else f"; a single update (median of the last 3: {lasting or 0:.3g})"
        )
        evidence = {"median_last_3": lasting} if lasting is not None else {}
        return Alert(level, "kl", message, KL, kl, config.kl_warning, evidence)
    return None


def clip_fraction_rule(history: list[Metrics], config: GuardConfig) -> Alert | None:
    """High: the newest update clipped most samples (steps too large), any time.

    Low ("the policy barely moves"): the median over the recent window is below
    ``clip_fraction_low`` after warm-up, while the step size is still at least half its starting
    value, and while the return is not improving. An annealed learning rate (or clip range) makes
    a falling clip fraction the expected end of a run, small steps that still raise the return are
    no problem, and one quiet update is noise."""
    fraction = number(history[-1], CLIP_FRACTION)
    if fraction is None or not math.isfinite(fraction):
        return None
    if fraction > config.clip_fraction_high:
        # One update above the line is info (healthy CartPole runs reach 0.52 once in a while; a step that
        # moved the policy too far shows in the KL rule); the median of the last three above it is a warning.
        lasting = recent_median(history, CLIP_FRACTION, 3)
        level: Level = "warning" if lasting is not None and lasting > config.clip_fraction_high else "info"
        return Alert(
            level,
            "clip_fraction",
            f"clip fraction {fraction:.3g} > {config.clip_fraction_high}: most samples are clipped (steps too large)"
            + ("" if level == "warning" else f"; a single update (median of the last 3: {lasting or 0:.3g})"),
            CLIP_FRACTION,
            fraction,
            config.clip_fraction_high,
            {"median_last_3": lasting} if lasting is not None else {},
        )
    if not after_warmup(history, config):
        return None
    median = recent_median(history, CLIP_FRACTION, config.history_window)
    if median is None or median >= config.clip_fraction_low:
        return None
    evidence = {"window_median": median}
    for key, name in ((LEARNING_RATE, "learning_rate"), (CLIP_EPS, "clip_eps")):
        start, now = first_value(history, key), number(history[-1], key)
        if start is not None and now is not None and start > 0:
            if now < 0.5 * start:
                return None  # annealed (or cut by a rollback): small steps are what was asked for
            evidence[f"{name}_ratio"] = now / start
    improving, more = return_improving(history, config)
    if improving:
        return None
    evidence.update(more)
    return Alert(
        "warning",
        "clip_fraction",
        f"clip fraction median {median:.3g} over the last {config.history_window} updates < "
        f"{config.clip_fraction_low} at full step size: the policy barely moves",
        CLIP_FRACTION,
        median,
        config.clip_fraction_low,
        evidence,
    )


def explained_variance_rule(history: list[Metrics], config: GuardConfig) -> Alert | None:
    """The median explained variance over the recent window is below ``explained_variance_low``
    after warm-up, on returns that vary. When the episode returns hardly vary (their std under
    ``flat_return_cv`` x |mean|: a task solved to its cap, CartPole at 500), the value targets are
    nearly constant and EV = 1 - Var(residual)/Var(target) measures noise, not the critic. And only
    while the return is not improving: a critic that lags a policy which keeps getting better is
    not what holds it back (``pgrad doctor`` still reports a lag over the whole run)."""
    ev = number(history[-1], EXPLAINED_VARIANCE)
    if ev is None or not math.isfinite(ev) or not after_warmup(history, config):
        return None
    median = recent_median(history, EXPLAINED_VARIANCE, config.history_window)
    if median is None or median >= config.explained_variance_low:
        return None
    mean = recent_median(history, RETURN, config.history_window)
    spread = recent_median(history, RETURN_STD, config.history_window)
    evidence = {"window_median": median}
    if mean is not None and spread is not None:
        evidence.update(return_mean=mean, return_std=spread)
        if spread <= config.flat_return_cv * max(abs(mean), 1.0):
            return None
    improving, more = return_improving(history, config)
    if improving:
        return None
    evidence.update(more)
    return Alert(
        "warning",
        "explained_variance",
        f"explained variance median {median:.3g} over the last {config.history_window} updates < "
        f"{config.explained_variance_low}: the value function lags the returns",
        EXPLAINED_VARIANCE,
        median,
        config.explained_variance_low,
        evidence,
    )


def entropy_collapse_rule(history: list[Metrics], config: GuardConfig) -> Alert | None:
    """Entropy below ``entropy_collapse`` x its first value while the return is not improving:
    neither above the run's first return (the policy never learned) nor rising over the recent
    window. A policy that grows deterministic as its return climbs, or once it has solved the task,
    is converging, not collapsing. Only for a positive starting entropy: a Gaussian's
    differential entropy can start negative, where a ratio means nothing."""
    # Only the first and the newest values matter: no need to walk the whole history.
    start = next((v for v in (number(m, ENTROPY) for m in history[:-1]) if v is not None), None)
    latest = number(history[-1], ENTROPY)
    if start is None or latest is None or not math.isfinite(start) or start <= 0 or not math.isfinite(latest):
        return None
    threshold = config.entropy_collapse * start
    if latest >= threshold:
        return None
    improving, evidence = return_improving(history, config)
    if improving:
        return None
    return Alert(
        "warning",
        "entropy_collapse",
        f"entropy {latest:.3g} < {config.entropy_collapse} x its starting value {start:.3g} while the return "
        f"is not improving (now {evidence.get('return_now', math.nan):.4g}, at the start "
        f"{evidence.get('return_start', math.nan):.4g}): exploration has collapsed",
        ENTROPY,
        latest,
        threshold,
        {"entropy_start": start, **evidence},
    )


def log_std_rule(history: list[Metrics], config: GuardConfig) -> Alert | None:
    """Warn when a Gaussian policy's mean log-std is below ``guard.log_std_min`` (exploration collapsing)."""
    log_std = number(history[-1], LOG_STD)
    if log_std is None or not math.isfinite(log_std) or log_std >= config.log_std_min:
        return None
    return Alert(
        "warning",
        "log_std",
        f"mean log-std {log_std:.3g} < {config.log_std_min}: the Gaussian policy is nearly deterministic",
        LOG_STD,
        log_std,
        config.log_std_min,
    )


def grad_norm_rule(history: list[Metrics], config: GuardConfig) -> Alert | None:
    """A spike against robust running statistics of the window before it: above
    ``grad_norm_spike`` x the median *and* above the median + ``grad_norm_spike`` x the scaled
    median absolute deviation (so a norm that is noisy by nature does not fire on its own noise),
    and above the run's first gradient norm (gradients that shrank a thousandfold as the policy
    converged may jump tenfold and still be tiny). Needs a full window: five early, still-growing
    norms are no baseline. When gradient clipping held the step under that threshold
    (``grad_norm_clipped``), the spike changed the weights no more than an ordinary update: an
    info event, not a warning."""
    norm = number(history[-1], GRAD_NORM)
    window = [v for v in last_values(history, GRAD_NORM, config.history_window, skip_newest=True) if math.isfinite(v)]
    if norm is None or not math.isfinite(norm) or len(window) < config.history_window:
        return None
    median = float(statistics.median(window))
    mad = 1.4826 * float(statistics.median(abs(v - median) for v in window))
    start = first_value(history, GRAD_NORM)
    threshold = max(config.grad_norm_spike * median, median + config.grad_norm_spike * mad, start or 0.0)
    if not norm > threshold:
        return None
    clipped = number(history[-1], GRAD_NORM_CLIPPED)
    contained = clipped is not None and math.isfinite(clipped) and clipped <= threshold
    evidence = {"median": median, "mad": mad, "start": start or 0.0} | (
        {"clipped": clipped} if clipped is not None else {}
    )
    return Alert(
        "info" if contained else "warning",
        "grad_norm",
        f"gradient norm {norm:.3g} > {threshold:.3g} (running median {median:.3g}, MAD {mad:.3g})"
        + (f"; clipping held the step to {clipped:.3g}" if contained else ""),
        GRAD_NORM,
        norm,
        threshold,
        evidence,
    )


def update_size_rule(history: list[Metrics], config: GuardConfig) -> Alert | None:
    """A destructive update: a parameter group moved (``update_norm/<group>``, ||theta_after -
    theta_before|| of the parameters one optimizer owns, or of those a natural-gradient step moves)
    more than ``update_spike`` x the median of the window before it, and more than the median +
    ``update_spike`` x its scaled median absolute deviation.

    Per unit of gradient wherever a gradient norm is measured: the group's own
    (``group_grad_norm/<group>``, TRPO/NPG's critic, which does not clip), else the update's clipped
    one (``grad_norm_clipped``). RMSprop and Adam divide by a running RMS of the gradients, so once a
    critic has converged its steps shrink to ~1/1000 of their early size and one large gradient (an
    episode that ends badly) moves it 80-280x its median step on a healthy run (A2C's CartPole preset;
    TRPO's, seed 3), while the step *per unit of gradient* stays within ~20x; a learning rate gone
    wrong multiplies exactly that ratio. Without any gradient norm (the natural-gradient policy step)
    the raw size: the trust region keeps it within ~3x of its median on healthy runs. This is what the
    policy's KL cannot see: a critic wrecked by one huge step while the policy barely moved. Needs
    ``history_window`` // 2 earlier updates (TRPO's 20th update is at 20k steps)."""
    latest = history[-1]
    clipped = number(latest, GRAD_NORM_CLIPPED)
    worst: Alert | None = None
    for key in latest:
        if not key.startswith(UPDATE_NORM + "/"):
            continue
        size = _step_per_gradient(latest, key)
        if size is None:
            continue
        window = [v for m in history[-config.history_window - 1 : -1] if (v := _step_per_gradient(m, key)) is not None]
        if len(window) < config.history_window // 2 or size <= config.update_spike * min(window):
            continue  # under update_spike x the window's minimum, so under it x the median: the common case
        median = float(statistics.median(window))
        mad = 1.4826 * float(statistics.median(abs(v - median) for v in window))
        threshold = max(config.update_spike * median, median + config.update_spike * mad)
        if (
            threshold <= 0
            or not size > threshold
            or (worst is not None and size / threshold <= worst.value / worst.threshold)
        ):
            continue
        per_group = number(latest, f"{GROUP_GRAD_NORM}/{key.rsplit('/', 1)[1]}")
        unit = " per unit of gradient" if per_group is not None else ""
        unit = " per unit of (clipped) gradient" if clipped is not None and per_group is None else unit
        worst = Alert(
            "critical",
            "update_size",
            f"{key.rsplit('/', 1)[1]} moved {size:.3g}{unit} in one update, {size / max(median, 1e-12):.3g}x its "
            f"running median {median:.3g} (threshold {threshold:.3g}): a destructive step (learning rate or "
            "optimizer state gone wrong)",
            key,
            size,
            threshold,
            {"median": median, "mad": mad},
        )
    return worst


def _step_per_gradient(metrics: Metrics, key: str) -> float | None:
    size = metrics.get(key)
    if type(size) is not float:  # the fast path skips number(): this runs ~20 times per group and update
        size = number(metrics, key)
    if size is None or not math.isfinite(size):
        return None
    group_norm = metrics.get(GROUP_GRAD_NORM + key[len(UPDATE_NORM) :])  # ".../update_norm/<group>"
    if group_norm is not None:
        norm = number(metrics, GROUP_GRAD_NORM + key[len(UPDATE_NORM) :])
        return size / norm if norm is not None and math.isfinite(norm) and norm > 0 else None
    clipped = metrics.get(GRAD_NORM_CLIPPED)
    if clipped is None:
        return size
    if type(clipped) is not float:
        clipped = number(metrics, GRAD_NORM_CLIPPED)
    return size / clipped if clipped is not None and math.isfinite(clipped) and clipped > 0 else None


def steps_per_second_rule(history: list[Metrics], config: GuardConfig) -> Alert | None:
    """Info, not a warning: the machine slowed down (another job on a shared machine), which says
    nothing about training. Only a sustained drop counts: the median of the last ``sps_sustain``
    updates below (1 - ``sps_drop``) x the median of the window before them."""
    sps = number(history[-1], STEPS_PER_SECOND)
    if sps is None:
        return None
    values = [v for v in series(history, STEPS_PER_SECOND) if math.isfinite(v)]
    now, before = (
        values[-config.sps_sustain :],
        values[-config.history_window - config.sps_sustain : -config.sps_sustain],
    )
    if len(now) < config.sps_sustain or len(before) < 5:
        return None
    current, median = float(statistics.median(now)), float(statistics.median(before))
    threshold = (1.0 - config.sps_drop) * median
    if current < threshold:
        return Alert(
            "info",
            "steps_per_second",
            f"{current:.0f} steps/s over the last {config.sps_sustain} updates, down more than "
            f"{config.sps_drop:.0%} from {median:.0f} (a busy machine slows training; it does not harm it)",
            STEPS_PER_SECOND,
            current,
            threshold,
            {"median_before": median},
        )
    return None


def nonfinite_rule(history: list[Metrics], config: GuardConfig) -> Alert | None:
    """NaN/Inf anywhere in a loss, the gradients (skipped optimizer steps) or the parameters."""
    latest = history[-1]
    for key in sorted(latest):
        if key.startswith("train/") and key.endswith("loss"):
            value = number(latest, key)
            if value is not None and not math.isfinite(value):
                return Alert("critical", "nonfinite", f"{key} is {value}", key, value, 0.0)
    skipped = number(latest, NONFINITE_STEPS)
    if skipped:
        return Alert(
            "critical",
            "nonfinite",
            f"{skipped:.0f} optimizer step(s) had non-finite gradients and were skipped",
            NONFINITE_STEPS,
            skipped,
            0.0,
        )
    norm = number(latest, GRAD_NORM)
    if norm is not None and not math.isfinite(norm):
        return Alert("critical", "nonfinite", f"gradient norm is {norm}", GRAD_NORM, norm, 0.0)
    if number(latest, PARAMS_FINITE) == 0.0:
        return Alert("critical", "nonfinite", "the parameters hold NaN or Inf", PARAMS_FINITE, 0.0, 1.0)
    return None


# ---- off-policy rules (DDPG, TD3, SAC): they read metrics only the off-policy loop writes ----------

Q_MEAN, Q_MIN, Q_MAX, Q_BOUND = names.Q_MEAN, names.Q_MIN, names.Q_MAX, names.Q_BOUND
TD_ERROR, ALPHA, ALPHA_LOSS = names.TD_ERROR, names.ALPHA, names.ALPHA_LOSS
CRITIC_LOSS, CRITIC_LOSS_SCALE = names.CRITIC_LOSS, names.CRITIC_LOSS_SCALE


def q_divergence_rule(history: list[Metrics], config: GuardConfig) -> Alert | None:
    """Critical: a Q value beyond ``q_bound_factor`` x r_max / (1 - gamma) (``q/bound``, with r_max the
    largest |reward| stored so far), which no discounted return of this env can reach: the critic is
    bootstrapping from its own over-estimates. The factor leaves room for SAC's entropy bonus
    (alpha |log pi| per step, also discounted). Warning: |Q mean| grew by ``q_growth`` x in each of the
    last ``q_growth_rows`` rows (geometric growth, before it crosses the bound)."""
    latest = history[-1]
    bound = number(latest, Q_BOUND)
    extreme = max((abs(v) for key in (Q_MIN, Q_MAX) if (v := number(latest, key)) is not None), default=None)
    if bound is not None and extreme is not None and math.isfinite(bound) and bound > 0:
        threshold = config.q_bound_factor * bound
        if not extreme <= threshold:  # NaN too (the nonfinite rule names it first)
            return Alert(
                "critical",
                "q_divergence",
                f"|Q| reached {extreme:.4g}, beyond {config.q_bound_factor:g} x r_max / (1 - gamma) = {threshold:.4g}: "
                "the critic is diverging (over-estimation feeding on itself)",
                Q_MAX,
                extreme,
                threshold,
                {"bound": bound},
            )
    means = [abs(v) for v in last_values(history, Q_MEAN, config.q_growth_rows + 1)]
    if len(means) <= config.q_growth_rows or min(means) < 1e-3:
        return None
    ratios = [after / before for before, after in zip(means[:-1], means[1:], strict=False)]
    if min(ratios) >= config.q_growth and means[-1] > 10.0:
        return Alert(
            "warning",
            "q_growth",
            f"|Q mean| grew {min(ratios):.3g}x or more in each of the last {config.q_growth_rows} rows, to "
            f"{means[-1]:.4g}: geometric growth, the critic may be diverging",
            Q_MEAN,
            means[-1],
            config.q_growth,
            {"first": means[0]},
        )
    return None


def critic_divergence_rule(history: list[Metrics], config: GuardConfig) -> Alert | None:
    """Critical: a distributional critic's cross-entropy above ``q_bound_factor`` x 10 x its scale
    (``q/critic_loss_scale`` = log(num_atoms), the loss of a uniform prediction). A categorical critic's Q
    cannot leave its support, so the Q-divergence rule never sees it diverge; its loss does: logits pushed to
    extremes put near-zero probability where the target's mass lands, and the cross-entropy explodes."""
    scale = number(history[-1], CRITIC_LOSS_SCALE)
    loss = number(history[-1], CRITIC_LOSS)
    if scale is None or loss is None or not scale > 0:
        return None
    threshold = 10.0 * config.q_bound_factor * scale
    if loss <= threshold:  # NaN passes here: the nonfinite rule names it
        return None
    return Alert(
        "critical",
        "critic_divergence",
        f"critic cross-entropy {loss:.4g} > {threshold:.4g} (10 x {config.q_bound_factor:g} x log(num_atoms)): the "
        "distributional critic is diverging",
        CRITIC_LOSS,
        loss,
        threshold,
        {"scale": scale},
    )


def td_error_rule(history: list[Metrics], config: GuardConfig) -> Alert | None:
    """Warning: the mean |TD error| of a row above ``td_error_spike`` x its running median and above the
    median + ``td_error_spike`` x its scaled MAD (a critic knocked off its targets: a bad batch, a
    learning-rate spike, a reward that changed scale)."""
    value = number(history[-1], TD_ERROR)
    window = [v for v in last_values(history, TD_ERROR, config.history_window, skip_newest=True) if math.isfinite(v)]
    if value is None or not math.isfinite(value) or len(window) < max(5, config.history_window // 2):
        return None
    median = float(statistics.median(window))
    mad = 1.4826 * float(statistics.median(abs(v - median) for v in window))
    threshold = max(config.td_error_spike * median, median + config.td_error_spike * mad)
    if threshold <= 0 or value <= threshold:
        return None
    return Alert(
        "warning",
        "td_error",
        f"mean |TD error| {value:.3g} > {threshold:.3g} (running median {median:.3g}, MAD {mad:.3g})",
        TD_ERROR,
        value,
        threshold,
        {"median": median, "mad": mad},
    )


def alpha_rule(history: list[Metrics], config: GuardConfig) -> Alert | None:
    """Warning: SAC's learned temperature left [``alpha_min``, ``alpha_max``]. Collapsed, the entropy
    bonus is gone and exploration with it; exploded, the reward no longer matters (usually a target
    entropy the policy cannot reach, or log pi broken by a saturated tanh). Only a learned temperature
    (a row with ``train/alpha_loss``): a fixed one is the user's choice."""
    alpha = number(history[-1], ALPHA)
    if alpha is None or not math.isfinite(alpha) or ALPHA_LOSS not in history[-1]:
        return None
    if alpha < config.alpha_min:
        return Alert(
            "warning",
            "alpha",
            f"entropy temperature alpha {alpha:.3g} < {config.alpha_min:g}: collapsed",
            ALPHA,
            alpha,
            config.alpha_min,
        )
    if alpha > config.alpha_max:
        return Alert(
            "warning",
            "alpha",
            f"entropy temperature alpha {alpha:.3g} > {config.alpha_max:g}: exploding",
            ALPHA,
            alpha,
            config.alpha_max,
        )
    return None


Rule = Callable[[list[Metrics], GuardConfig], "Alert | None"]
RULES: tuple[Rule, ...] = (
    nonfinite_rule,
    kl_rule,
    clip_fraction_rule,
    explained_variance_rule,
    entropy_collapse_rule,
    log_std_rule,
    grad_norm_rule,
    update_size_rule,
    steps_per_second_rule,
    q_divergence_rule,
    critic_divergence_rule,
    td_error_rule,
    alpha_rule,
)


START_KEYS = (ENTROPY, RETURN, LEARNING_RATE, CLIP_EPS, GRAD_NORM)  # the rules compare against their first values


def bounded_history(history: list[Metrics], config: GuardConfig) -> list[Metrics]:
    """All the rules need, in bounded memory: the first update, the first update holding each of
    ``START_KEYS`` (the starting entropy, return, learning rate, clip range: the first return may
    come updates later, once an episode ends) and the last max(history_window + sps_sustain,
    warmup_updates) + 1 updates (running medians, warm-up count). The rules give the same alerts
    on it as on the full history."""
    keep = max(config.history_window + config.sps_sustain, config.warmup_updates) + 1
    if len(history) <= keep + 1:
        return history
    head = history[:-keep]
    anchors = {0}
    for key in START_KEYS:
        index = next((i for i, m in enumerate(head) if (v := number(m, key)) is not None and math.isfinite(v)), None)
        if index is not None:
            anchors.add(index)
    return [head[i] for i in sorted(anchors)] + history[-keep:]


def check_alerts(history: list[Metrics], config: GuardConfig, rules: tuple[Rule, ...] = RULES) -> list[Alert]:
    """Every alert the newest entry of ``history`` raises, critical first."""
    if not history:
        return []
    alerts = [alert for rule in rules if (alert := rule(history, config)) is not None]
    order = {"critical": 0, "warning": 1, "info": 2}
    return sorted(alerts, key=lambda a: order[a.level])
