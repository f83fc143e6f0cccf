"""The guard as a decision object: it reads each update's metrics and evaluations and says what to do.

``Guard`` knows nothing about which loop runs it, nor about modules, optimizers or files. A runner
calls, once per update:

1. ``begin_update(first_step, step)``: which fault drills act on this update (``ActiveFaults``);
   the update's learning-rate multiplier is then ``lr_scale(faults)``, passed to the algorithm
   explicitly (``UpdateContext.lr_scale``);
2. ``observe(metrics, step, updates)``: adds the guard's own diagnostics to ``metrics``, runs the
   alert rules on the recent history and returns the alerts;
3. ``evaluation_due(step)``: whether to run a deterministic evaluation now;
4. ``decide(metrics, step, evaluation, checkpoint_due)``: ``evaluation`` is the evaluation's
   per-episode returns (or just their mean, then without noise information); the actions, in order of precedence:
   ``Halt`` (non-finite steps past the limit, or the recovery cap), ``Rollback`` (critical KL or a
   critical update-size spike to the last healthy state; a confirmed evaluation collapse to the
   best one), ``Checkpoint`` (with its health mark and score).

Every action carries the events to log; the runner logs them and carries the action out
(restores a checkpoint, writes one, dumps the evidence and stops). What changes training lives
in ``GuardState`` and goes into every checkpoint, so a resumed run decides exactly as before.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pgrad import metric_names as names
from pgrad.config import GuardConfig
from pgrad.faults import ActiveFaults, faults_for_update, parse_fault
from pgrad.monitor.alerts import RULES, Alert, Rule, bounded_history, check_alerts, number
from pgrad.monitor.recovery import GuardState, eval_collapsed, nonfinite_fraction, should_halt


@dataclass(frozen=True)
class Event:
    """One line for ``events.jsonl`` (and the console unless ``show`` is false)."""

    kind: str
    message: str
    show: bool = True
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Checkpoint:
    """How the guard marks a checkpoint: its score (for the best one) and whether the state was healthy."""

    score: float | None
    healthy: bool


@dataclass(frozen=True)
class Rollback:
    """Restore the learner from ``source`` (falling back to ``last_healthy``); the guard has already
    cut the learning rate and counted the recovery."""

    source: Literal["last_healthy", "best"]
    reason: str


@dataclass(frozen=True)
class Snapshot:
    """After an update without a rollback or halt: ``healthy`` says whether the learner state may
    become the state a later rollback returns to (see ``Guard.healthy_for_rollback``)."""

    healthy: bool


@dataclass(frozen=True)
class Halt:
    """Stop the run (exit code 3). ``dump``: leave the recent trajectories and the batch behind."""

    kind: str
    message: str
    dump: bool


Action = Checkpoint | Rollback | Halt | Snapshot


def evaluation_summary(evaluation: float | Sequence[float]) -> tuple[float, float]:
    """(mean, standard error of the mean) of an evaluation's episode returns; a bare mean has 0."""
    if isinstance(evaluation, int | float):
        return float(evaluation), 0.0
    returns = [float(r) for r in evaluation]
    if not returns:
        raise ValueError("an evaluation needs at least one episode return")
    mean = statistics.fmean(returns)
    se = statistics.stdev(returns) / math.sqrt(len(returns)) if len(returns) > 1 else 0.0
    return mean, se


class Guard:
    """The guard as a decision object: reads each update's metrics and evaluations, returns what to do."""

    def __init__(
        self,
        config: GuardConfig,
        total_steps: int,
        run_dir: Path,
        early_evaluations: bool = True,
        rules: tuple[Rule, ...] = RULES,
        rollback_rules: Collection[str] = (),
        score_metric: str = names.RETURN_MEAN,
    ) -> None:
        """``rules``: the alert rules run on every update (a loop whose metrics are not an env's, the
        language-model loop, picks the ones that read its metrics); ``rollback_rules``: names of further
        rules whose critical alerts roll back to the last healthy state with a learning-rate cut, like
        ``kl`` (a loop's own rules reach ``observe`` as ``extra_alerts``); ``score_metric``: what ranks
        a checkpoint written without an evaluation (the training return; the language-model loop's score)."""
        self.config = config
        self.score_metric = score_metric
        self.rules = rules
        self.rollback_rules = frozenset(rollback_rules)
        # Off for A3C: its reports reach the guard after the shared weights have moved on, so the health
        # mark of a checkpoint written between schedule points could belong to weights a late report
        # will show damaged; on schedule, evaluations are few and far from a drill's window.
        self.early_evaluations = early_evaluations
        self.early_reason: str | None = None  # why the newest evaluation came early (None: on schedule)
        self.total_steps = total_steps
        self.run_dir = run_dir
        self.state = GuardState(next_eval_step=config.eval_every)
        self.drills = tuple(parse_fault(text) for text in config.inject)
        self.faults = ActiveFaults()
        self.history: list[dict[str, Any]] = []  # recent metrics (and the first): what the rules read
        self.alerts: list[Alert] = []  # the newest update's
        self.announced: dict[str, int] = {}  # "level.rule" -> update it was last logged at
        self.shown: set[str] = set()  # warnings already shown on the console
        self.firing: set[str] = set()  # "level.rule" of the previous update's alerts
        self.healthy = True  # the newest update's health mark
        self.pending: list[Event] = []  # events decided outside ``decide`` (drills, alerts)

    # ---- state that travels with checkpoints ------------------------------------------------
    def load(self, state: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """Resume: the saved ``GuardState`` and the metrics logged up to the checkpoint."""
        self.state = GuardState.from_dict(state)
        self.history = bounded_history(history, self.config)

    def take_events(self) -> list[Event]:
        """The events the guard produced since the last call; clears them."""
        events, self.pending = self.pending, []
        return events

    # ---- per update -------------------------------------------------------------------------
    def begin_update(self, first_step: int, step: int) -> ActiveFaults:
        """The drills acting on the update whose rollout covered env steps [first_step, step)."""
        fired = set(self.state.fired)
        self.faults = faults_for_update(self.drills, first_step, step, fired, self.config.lr_spike_factor)
        self.state.fired = sorted(fired)
        for spec in self.faults.started:
            self.pending.append(Event(f"drill.{spec.kind}", f"drill {spec.text} started", data={"drill": spec.text}))
        return self.faults

    def lr_scale(self) -> float:
        """The multiplier on every learning rate for this update: rollbacks' cuts x drills."""
        return self.state.lr_scale * self.faults.lr_factor

    def observe(self, metrics: dict[str, Any], updates: int, extra_alerts: Sequence[Alert] = ()) -> list[Alert]:
        """Add the guard's diagnostics to ``metrics`` (the runner has set ``NONFINITE_STEPS`` and
        ``PARAMS_FINITE``) and run the alert rules. Alerts to log are queued as events. ``extra_alerts``:
        what the loop's own rules found on this update (they read a history the guard does not keep);
        they are logged and acted on like the guard's."""
        step = metrics.get(names.STEP)
        if isinstance(step, int | float):
            self._lift_lr_cut(int(step))
        metrics[names.LR_SCALE] = self.state.lr_scale
        metrics[names.RECOVERIES] = float(self.state.recoveries)
        if isinstance(step, int | float) and self.total_steps > 0:
            metrics[names.PROGRESS] = min(float(step) / self.total_steps, 1.0)
        self.history = bounded_history(self.history + [metrics], self.config)
        if self.config.enabled:
            order = {"critical": 0, "warning": 1, "info": 2}
            found = check_alerts(self.history, self.config, self.rules) + list(extra_alerts)
            self.alerts = sorted(found, key=lambda a: order[a.level])
        else:
            self.alerts = []
        if self.config.enabled:
            metrics[names.ALERTS] = float(sum(a.level != "info" for a in self.alerts))
        for alert in self.alerts:
            # Critical alerts are always logged. A warning or info event is logged when it starts, and
            # repeated while it lasts at most once per max(history_window, 5% of the run's updates);
            # a warning is shown on the console only the first time, an info event never.
            kind = f"{alert.level}.{alert.rule}"
            last = self.announced.get(kind)
            due = alert.level == "critical" or last is None or updates - last >= self.repeat_every(metrics, updates)
            if alert.level == "info":
                due = due and kind not in self.firing
            if due:
                self.announced[kind] = updates
                show = alert.level == "critical" or (alert.level == "warning" and kind not in self.shown)
                data = {"metric": alert.metric, "value": alert.value, "threshold": alert.threshold, **alert.evidence}
                self.pending.append(Event(kind, alert.message, show, data))
                self.shown.add(kind)
        self.firing = {f"{alert.level}.{alert.rule}" for alert in self.alerts}
        return self.alerts

    def _lift_lr_cut(self, step: int) -> None:
        """A single rollback's learning-rate cut lasts ``lr_cut_duration`` x ``run.total_steps`` env
        steps, then the rate is back to what it was. One destructive update (a spike, a bad batch) is
        a one-off: the rollback removed it, and a rate halved for the rest of the run only slows
        learning (A2C at half its rate dips for longer, and those dips read as collapses). A second
        cut shows the fault recurs: from then on every cut stays."""
        state = self.state
        if state.lr_restore_step is None or step < state.lr_restore_step:
            return
        state.lr_restore_step = None
        if state.lr_cuts != 1 or state.lr_scale >= 1.0:
            return
        before, state.lr_scale = state.lr_scale, 1.0
        self.pending.append(
            Event(
                "recovery.lr_restored",
                f"learning rate x{before:g} -> x1: no recovery since the rollback at {state.recovery_log[-1]}",
                data={"lr_scale": 1.0, "before": before},
            )
        )

    def repeat_every(self, metrics: dict[str, Any], updates: int) -> int:
        """Updates between two logs of the same lasting warning: history_window, or 5% of the
        updates this run will make (estimated from the steps per update so far) when that is more."""
        step = metrics.get(names.STEP)
        if not isinstance(step, int | float) or step <= 0 or updates <= 0:
            return self.config.history_window
        return max(self.config.history_window, int(0.05 * self.total_steps * updates / step))

    def evaluation_due(self, step: int) -> bool:
        """Every ``guard.eval_every`` env steps and at the end of the run; and early, at most every
        ``eval_recheck`` x ``eval_every`` steps, while an evaluation has something to settle (see
        ``recheck_reason``). Evaluations run on their own envs with their own seeds: an extra one
        costs time, never changes training."""
        every = self.config.eval_every
        if not every:
            return False
        scheduled = step >= self.state.next_eval_step or step >= self.total_steps
        self.early_reason = None
        if not scheduled:
            reason = self.early_reason = self.recheck_reason() if step >= self.state.next_recheck_step else None
            if reason is None:
                return False
            message = f"early evaluation ({reason}; next scheduled at step {self.state.next_eval_step})"
            self.pending.append(Event("info.eval_early", message, show=False, data={"reason": reason}))
        while self.state.next_eval_step <= step:
            self.state.next_eval_step += every
        self.state.next_recheck_step = step + max(int(self.config.eval_recheck * every), 1)
        return True

    def recheck_reason(self) -> str | None:
        """Why an evaluation should not wait for the schedule, or None:

        - ``confirm``: there is no confirmed best yet, only one evaluation; a best counts once a second
          evaluation holds it (a lucky one is not a reference), and waiting ``eval_every`` for that
          leaves the run without a reference to detect a collapse against (later bests are confirmed
          on schedule: rechecking every new best would double the evaluations of a rising run);
        - ``collapse``: the last evaluation counted as a collapse; the next one decides whether it
          is one (``eval_patience``) before more damage is trained in;
        - ``train_drop``: the training return has fallen below its level at the confirmed best by
          more than ``eval_max_drop`` x |that level|: a corrupted reward or a damaged policy shows in
          the episodes it trains on long before the next scheduled evaluation."""
        config, state = self.config, self.state
        if not config.enabled or config.eval_recheck <= 0 or not self.early_evaluations:
            return None
        if state.eval_collapses:
            return "collapse"
        if state.last_eval is not None and state.best_eval is None:
            return "confirm"
        reference = state.best_eval_train
        train = number(self.history[-1], names.RETURN_MEAN) if self.history else None
        if reference is None or train is None or config.eval_max_drop is None:
            return None
        return "train_drop" if train < reference - config.eval_max_drop * abs(reference) else None

    def score(self, metrics: dict[str, Any]) -> float | None:
        """The row's ``score_metric`` (None when the row has none)."""
        return metrics.get(self.score_metric)

    def checkpoint_score(self, metrics: dict[str, Any]) -> float | None:
        """With evaluation on, only evaluated checkpoints carry a score (best = best evaluation)."""
        return None if self.config.eval_every else self.score(metrics)

    def decide(
        self,
        metrics: dict[str, Any],
        step: int,
        evaluation: float | Sequence[float] | None,
        checkpoint_due: bool,
    ) -> list[Action]:
        """Halt, roll back, or checkpoint (with its health mark), in that order of precedence.

        ``evaluation``: the episode returns of this update's evaluation (a bare mean is accepted,
        then the collapse rule has no noise estimate for it), or None."""
        config, state = self.config, self.state
        if config.enabled and should_halt(state, config):
            return [Halt("critical.halted", self._nonfinite_message(), dump=True)]
        self.healthy = metrics.get(names.PARAMS_FINITE, 1.0) == 1.0 and not any(
            a.level == "critical" for a in self.alerts
        )
        if config.enabled:
            for alert in self.alerts:
                if alert.level != "critical":
                    continue
                if alert.rule == "kl" and config.rollback_on_kl:
                    return self._rollback("last_healthy", f"approx KL {alert.value:.3g} > {config.kl_critical}", step)
                if alert.rule in ("q_divergence", "critic_divergence") and config.rollback_on_q_divergence:
                    return self._rollback("last_healthy", alert.message.split(":")[0], step)
                if alert.rule == "update_size" and config.rollback_on_update_spike:
                    reason = (
                        f"update size {alert.value:.3g} > {alert.threshold:.3g} "
                        f"({config.update_spike:g}x its running median {alert.evidence['median']:.3g})"
                    )
                    return self._rollback("last_healthy", reason, step)
                if alert.rule in self.rollback_rules:
                    return self._rollback("last_healthy", alert.message.split(":")[0], step)
        summary = evaluation_summary(evaluation) if evaluation is not None else None
        train_return = metrics.get(names.RETURN_MEAN)
        train = float(train_return) if isinstance(train_return, int | float) and math.isfinite(train_return) else None
        if summary is not None and self._evaluation_collapsed(*summary, train, step):
            reason = (
                f"evaluation return collapsed for {state.eval_collapses} evaluations in a row "
                f"over {self._collapse_length(step)} steps"
            )
            return self._rollback("best", reason, step)
        healthy = self.healthy_for_rollback(metrics)  # after the evaluation has been counted
        actions: list[Action] = [Snapshot(healthy)] if config.enabled else []
        # Every evaluation on schedule writes a checkpoint with its score (the best one is what a reload
        # returns to), and so does one confirming the first reference; one that follows a collapse or a
        # falling training return evaluates a policy no reload would return to: no checkpoint unless due.
        if summary is not None and self.early_reason in (None, "confirm"):
            actions.append(Checkpoint(summary[0], healthy))
        elif checkpoint_due:
            actions.append(Checkpoint(self.checkpoint_score(metrics), healthy))
        return actions

    def healthy_for_rollback(self, metrics: dict[str, Any]) -> bool:
        """Whether the state after this update may be returned to: no critical alert, finite
        parameters and gradients, approx KL under the *warning* level (not just the critical one),
        and no evaluation collapse under way. The runner confirms such a state only when the next
        update passes this test too (``HealthyStates``)."""
        if not self.healthy or self.state.eval_collapses:
            return False
        if metrics.get(names.NONFINITE_STEPS, 0.0):
            return False
        kl = metrics.get(names.APPROX_KL)
        return kl is None or float(kl) <= self.config.kl_warning  # NaN compares False: not healthy

    # ---- the rules behind decide ------------------------------------------------------------
    def _evaluation_collapsed(self, eval_return: float, se: float, train: float | None, step: int) -> bool:
        """Track the best confirmed evaluation and count collapses; True once ``eval_patience``
        evaluations in a row have collapsed over at least ``eval_collapse_span`` x ``eval_every``
        env steps. The span is what tells a collapse worth a reload from a dip the run climbs out of
        by itself: A2C on CartPole falls from 500 to under 100 and is back within ~5k steps, where
        a corrupted reward keeps the policy down for as long as it lasts; reloading (and cutting the
        learning rate) for a dip harms a healthy run.

        A collapse is a drop below the reference by more than ``eval_max_drop`` x |reference| and
        by more than ``eval_noise_z`` standard errors of the difference of the two means, so that
        evaluations whose few episodes spread widely (LunarLander) do not read as collapses; and,
        with ``eval_needs_train_drop``, only while the training return ``train`` is below what it
        was at the reference evaluation: damage to the policy (a destructive update, a corrupted
        reward) shows in the episodes it trains on as well, whereas a deterministic evaluation of a
        policy that keeps improving can swing on its own."""
        state, config = self.state, self.config
        collapsed = eval_collapsed(eval_return, state.best_eval, config, se, state.best_eval_se)
        below_floor = config.eval_min_return is not None and eval_return < config.eval_min_return
        if collapsed and not below_floor and config.eval_needs_train_drop:
            reference = state.best_eval_train
            if train is not None and reference is not None and train >= reference:
                collapsed = False
                self.pending.append(
                    Event(
                        "info.eval_drop",
                        f"evaluation return {eval_return:.4g} +- {se:.3g} is below the confirmed best "
                        f"{state.best_eval:.4g}, but the training return {train:.4g} is not below its "
                        f"{reference:.4g} at that evaluation: evaluation noise, not a collapse",
                        show=False,
                        data={
                            "value": eval_return,
                            "se": se,
                            "best": state.best_eval,
                            "train": train,
                            "best_train": reference,
                        },
                    )
                )
        if collapsed:
            if not state.eval_collapses:
                state.collapse_since = step
            state.eval_collapses += 1
            best = "none" if state.best_eval is None else f"{state.best_eval:.4g} +- {state.best_eval_se:.3g}"
            # Info while it lasts: a collapse the run climbs out of within the span is part of healthy
            # learning (A2C's dips), and the reload, when it comes, is logged (and shown) on its own.
            lasted = self._collapse_length(step)
            lasting = lasted >= config.eval_collapse_span * config.eval_every
            level = "warning" if lasting and not (config.enabled and config.rollback_on_eval) else "info"
            self.pending.append(
                Event(
                    f"{level}.eval_collapse",
                    f"evaluation return {eval_return:.4g} +- {se:.3g} (confirmed best {best}); "
                    f"collapsed {state.eval_collapses} time(s) in a row over {lasted} steps "
                    f"(a reload needs {config.eval_patience} over >= "
                    f"{config.eval_collapse_span * config.eval_every:.0f} steps)",
                    data={
                        "value": eval_return,
                        "se": se,
                        "best": state.best_eval,
                        "best_se": state.best_eval_se,
                        "drop": None if state.best_eval is None else state.best_eval - eval_return,
                        "noise": config.eval_noise_z * math.hypot(se, state.best_eval_se),
                        "train": train,
                        "best_train": state.best_eval_train,
                    },
                )
            )
        else:
            state.eval_collapses, state.collapse_since = 0, None
        # The level to hold is the best *confirmed* one: two evaluations in a row at or above it, so one
        # lucky evaluation early in training does not make every later one look like a collapse.
        if self.healthy and state.last_eval is not None:
            pair = ((eval_return, se, train), (state.last_eval, state.last_eval_se, state.last_eval_train))
            confirmed, confirmed_se, confirmed_train = min(pair, key=lambda entry: entry[0])
            if state.best_eval is None or confirmed > state.best_eval:
                state.best_eval, state.best_eval_se, state.best_eval_train = confirmed, confirmed_se, confirmed_train
        state.last_eval = eval_return if self.healthy else None
        state.last_eval_se = se if self.healthy else 0.0
        state.last_eval_train = train if self.healthy else None
        lasted = self._collapse_length(step)
        return (
            config.enabled
            and config.rollback_on_eval
            and state.eval_collapses >= config.eval_patience
            and lasted >= config.eval_collapse_span * config.eval_every
        )

    def _collapse_length(self, step: int) -> int:
        """Env steps since the first of the consecutive collapsed evaluations (0 when none)."""
        since = self.state.collapse_since
        return step - since if since is not None else 0

    def _rollback(self, source: Literal["last_healthy", "best"], reason: str, step: int) -> list[Action]:
        """Count the recovery and, for a destructive update (``last_healthy``), cut the learning rate;
        at the cap, stop, or for an evaluation collapse, keep going without the reload.

        A reload of the best checkpoint after a lasting evaluation collapse keeps the learning rate:
        nothing the guard saw says the step size caused it (a corrupted reward, a run that forgot),
        and a cut rate only makes a run that dips by nature (A2C) dip for longer. Past the cap, a run
        that keeps blowing up (KL, update size) stops; one whose evaluations keep collapsing is not
        stopped by the guard (stopping it saves nothing): the reload is skipped, with a warning."""
        state, config = self.state, self.config
        if state.recoveries >= config.max_recoveries:
            if source == "best":
                state.eval_collapses, state.collapse_since = 0, None
                self.pending.append(
                    Event(
                        "warning.recovery_budget",
                        f"{reason}; not reloaded: this run already used its {config.max_recoveries} recoveries "
                        "(guard.max_recoveries); training goes on",
                        data={"recoveries": state.recoveries},
                    )
                )
                return []
            message = (
                f"{reason}, and this run already used its {config.max_recoveries} recoveries (guard.max_recoveries); "
                f"stopping instead of looping. Earlier recoveries: {'; '.join(state.recovery_log) or 'none'}. "
                f"Events: {self.run_dir / 'events.jsonl'}; diagnose with 'pgrad doctor {self.run_dir}'"
            )
            return [Halt("critical.recovery_cap", message, dump=False)]
        state.recoveries += 1
        if source == "last_healthy":
            state.lr_scale *= config.lr_cut
            state.lr_cuts += 1
            duration = int(config.lr_cut_duration * self.total_steps)
            state.lr_restore_step = step + duration if state.lr_cuts == 1 and duration > 0 else None
        state.recovery_log.append(f"step {step}: {reason}")
        state.eval_collapses, state.collapse_since = 0, None
        state.last_eval = None
        self.announced.clear()
        self.healthy = True
        return [Rollback(source, reason)]

    def rollback_event(self, reason: str, summary: str, data: dict[str, Any]) -> Event:
        """The ``recovery.rollback`` event, once the runner has restored (or not) a checkpoint."""
        state, config = self.state, self.config
        message = (
            f"{reason}: {summary}; learning rate x{state.lr_scale:g} "
            f"(recovery {state.recoveries} of {config.max_recoveries})"
        )
        return Event(
            "recovery.rollback",
            message,
            data={**data, "lr_scale": state.lr_scale, "recoveries": state.recoveries, "reason": reason},
        )

    def _nonfinite_message(self) -> str:
        config = self.config
        return (
            f"{nonfinite_fraction(self.state, config):.0%} of the last {config.nonfinite_window} optimizer steps "
            f"had NaN/Inf gradients (limit {config.nonfinite_halt:.0%})"
        )
