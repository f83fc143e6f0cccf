"""The guard as a decision object: it reads each update's metrics and evaluations and says what to do.

``Guard`` knows nothing about which loop runs it, nor about modules, optimizers or files. A runner
calls, once per update:

1. ``begin_update(first_step, step)``: which fault drills act on this update (``ActiveFaults``);
   the update's learning-rate multiplier is then ``lr_scale(faults)``, passed to the algorithm
   explicitly (``UpdateContext.lr_scale``);
2. ``observe(metrics, step, updates)``: adds the guard's own diagnostics to ``metrics``, runs the
   alert rules on the recent history and returns the alerts;
3. ``evaluation_due(step)``: whether to run a deterministic evaluation now;
4. ``decide(metrics, step, evaluation, checkpoint_due)``: the actions, in order of precedence:
   ``Halt`` (non-finite steps past the limit, or the recovery cap), ``Rollback`` (critical KL to
   the last healthy checkpoint; a confirmed evaluation collapse to the best one), ``Checkpoint``
   (with its health mark and score).

Every action carries the events to log; the runner logs them and carries the action out
(restores a checkpoint, writes one, dumps the evidence and stops). What changes training lives
in ``GuardState`` and goes into every checkpoint, so a resumed run decides exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pgrad import metric_names as names
from pgrad.config import GuardConfig
from pgrad.faults import ActiveFaults, faults_for_update, parse_fault
from pgrad.monitor.alerts import Alert, bounded_history, check_alerts
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


class Guard:
    def __init__(self, config: GuardConfig, total_steps: int, run_dir: Path) -> None:
        self.config = config
        self.total_steps = total_steps
        self.run_dir = run_dir
        self.state = GuardState(next_eval_step=config.eval_every)
        self.drills = tuple(parse_fault(text) for text in config.inject)
        self.faults = ActiveFaults()
        self.history: list[dict[str, Any]] = []  # recent metrics (and the first): what the rules read
        self.alerts: list[Alert] = []  # the newest update's
        self.announced: dict[str, int] = {}  # "level.rule" -> update it was last logged at
        self.shown: set[str] = set()  # warnings already shown on the console
        self.healthy = True  # the newest update's health mark
        self.pending: list[Event] = []  # events decided outside ``decide`` (drills, alerts)

    # ---- state that travels with checkpoints ------------------------------------------------
    def load(self, state: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """Resume: the saved ``GuardState`` and the metrics logged up to the checkpoint."""
        self.state = GuardState.from_dict(state)
        self.history = bounded_history(history, self.config)

    def take_events(self) -> list[Event]:
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

    def observe(self, metrics: dict[str, Any], updates: int) -> list[Alert]:
        """Add the guard's diagnostics to ``metrics`` (the runner has set ``NONFINITE_STEPS`` and
        ``PARAMS_FINITE``) and run the alert rules. Alerts to log are queued as events."""
        metrics[names.LR_SCALE] = self.state.lr_scale
        metrics[names.RECOVERIES] = float(self.state.recoveries)
        self.history = bounded_history(self.history + [metrics], self.config)
        self.alerts = check_alerts(self.history, self.config) if self.config.enabled else []
        if self.config.enabled:
            metrics[names.ALERTS] = float(len(self.alerts))
        for alert in self.alerts:
            # Critical alerts are always logged. A warning is logged once per history_window updates,
            # and shown on the console only the first time (its repeats are in events.jsonl).
            kind = f"{alert.level}.{alert.rule}"
            last = self.announced.get(kind)
            if alert.level == "critical" or last is None or updates - last >= self.config.history_window:
                self.announced[kind] = updates
                show = alert.level == "critical" or kind not in self.shown
                data = {"metric": alert.metric, "value": alert.value, "threshold": alert.threshold}
                self.pending.append(Event(kind, alert.message, show, data))
                self.shown.add(kind)
        return self.alerts

    def evaluation_due(self, step: int) -> bool:
        """Every ``guard.eval_every`` env steps, and at the end of the run."""
        every = self.config.eval_every
        if not every or (step < self.state.next_eval_step and step < self.total_steps):
            return False
        while self.state.next_eval_step <= step:
            self.state.next_eval_step += every
        return True

    def checkpoint_score(self, metrics: dict[str, Any]) -> float | None:
        """With evaluation on, only evaluated checkpoints carry a score (best = best evaluation)."""
        return None if self.config.eval_every else metrics.get(names.RETURN_MEAN)

    def decide(
        self, metrics: dict[str, Any], step: int, evaluation: float | None, checkpoint_due: bool
    ) -> list[Action]:
        """Halt, roll back, or checkpoint (with its health mark), in that order of precedence."""
        config, state = self.config, self.state
        if config.enabled and should_halt(state, config):
            return [Halt("critical.halted", self._nonfinite_message(), dump=True)]
        self.healthy = metrics.get(names.PARAMS_FINITE, 1.0) == 1.0 and not any(
            a.level == "critical" for a in self.alerts
        )
        critical_kl = any(a.rule == "kl" and a.level == "critical" for a in self.alerts)
        if config.enabled and config.rollback_on_kl and critical_kl:
            reason = f"approx KL {metrics[names.APPROX_KL]:.3g} > {config.kl_critical}"
            return self._rollback("last_healthy", reason, step)
        if evaluation is not None and self._evaluation_collapsed(evaluation):
            reason = f"evaluation return collapsed for {state.eval_collapses} evaluations in a row"
            return self._rollback("best", reason, step)
        healthy = self.healthy_for_rollback(metrics)  # after the evaluation has been counted
        actions: list[Action] = [Snapshot(healthy)] if config.enabled else []
        if evaluation is not None:
            actions.append(Checkpoint(evaluation, healthy))
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
    def _evaluation_collapsed(self, eval_return: float) -> bool:
        """Track the best confirmed evaluation and count collapses; True once ``eval_patience`` is reached."""
        state, config = self.state, self.config
        if eval_collapsed(eval_return, state.best_eval, config):
            state.eval_collapses += 1
            self.pending.append(
                Event(
                    "warning.eval_collapse",
                    f"evaluation return {eval_return:.4g} (best {state.best_eval}); "
                    f"{state.eval_collapses} of {config.eval_patience} before a reload",
                    data={"value": eval_return, "best": state.best_eval},
                )
            )
        else:
            state.eval_collapses = 0
        # The level to hold is the best *confirmed* one: two evaluations in a row at or above it, so one
        # lucky evaluation early in training does not make every later one look like a collapse.
        if self.healthy and state.last_eval is not None:
            confirmed = min(eval_return, state.last_eval)
            state.best_eval = confirmed if state.best_eval is None else max(state.best_eval, confirmed)
        state.last_eval = eval_return if self.healthy else None
        return config.enabled and config.rollback_on_eval and state.eval_collapses >= config.eval_patience

    def _rollback(self, source: Literal["last_healthy", "best"], reason: str, step: int) -> list[Action]:
        """Cut the learning rate and count the recovery, or stop at the cap."""
        state, config = self.state, self.config
        if state.recoveries >= config.max_recoveries:
            message = (
                f"{reason}, and this run already used its {config.max_recoveries} recoveries (guard.max_recoveries); "
                f"stopping instead of looping. Earlier recoveries: {'; '.join(state.recovery_log) or 'none'}. "
                f"Events: {self.run_dir / 'events.jsonl'}; diagnose with 'pgrad doctor {self.run_dir}'"
            )
            return [Halt("critical.recovery_cap", message, dump=False)]
        state.lr_scale *= config.lr_cut
        state.recoveries += 1
        state.recovery_log.append(f"step {step}: {reason}")
        state.eval_collapses = 0
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
