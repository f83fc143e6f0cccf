"""Fault drills: deliberate, opt-in failures that check the guard reacts before it is trusted.

A drill is written ``KIND@STEP`` or ``KIND@STEP:DURATION`` (env steps), on the command line
(``pgrad train ... --inject lr_spike@20000``, repeatable) or in ``guard.inject``:

- ``lr_spike``: the learning rate is multiplied by ``guard.lr_spike_factor`` for the updates that
  start inside the window (without a duration: the first update at or after STEP);
- ``nan_grad``: the gradients of one optimizer step are replaced by NaN (with a duration: every
  optimizer step of the updates that start inside the window);
- ``reward_flip``: the training rewards of every rollout that starts inside the window are negated
  (what the agent learns from; episode returns and evaluations still see the true reward).

Each drill fires where it says and is recorded as a ``drill.*`` event. Which drills have fired is
part of the checkpoint, so a resumed or rolled-back run does not fire them twice.
"""

from __future__ import annotations

from dataclasses import dataclass

FAULT_KINDS = ("lr_spike", "nan_grad", "reward_flip")
DEFAULT_DURATION = {"lr_spike": 1, "nan_grad": 1, "reward_flip": 5000}


@dataclass(frozen=True)
class FaultSpec:
    """One drill from ``--inject KIND@STEP[:DURATION]``: its kind, the step it starts at and how long it lasts."""

    kind: str
    step: int
    duration: int

    @property
    def text(self) -> str:
        """The drill as ``--inject`` spells it: ``KIND@STEP:DURATION``."""
        return f"{self.kind}@{self.step}:{self.duration}"

    def window_contains(self, step: int) -> bool:
        """True when ``step`` lies in [step, step + duration): the drill is active then."""
        return self.step <= step < self.step + self.duration


def parse_fault(text: str) -> FaultSpec:
    """``"reward_flip@10000:5000"`` -> FaultSpec("reward_flip", 10000, 5000). ValueError says what is wrong."""
    usage = f"a drill KIND@STEP[:DURATION] with KIND one of {', '.join(FAULT_KINDS)}; got {text!r}"
    kind, at, when = text.strip().partition("@")
    if not at or kind not in FAULT_KINDS:
        raise ValueError(usage)
    step_text, colon, duration_text = when.partition(":")
    try:
        step = int(step_text)
        duration = int(duration_text) if colon else DEFAULT_DURATION[kind]
    except ValueError:
        raise ValueError(usage) from None
    if step < 0 or duration < 1:
        raise ValueError(f"drill {text!r}: STEP must be >= 0 and DURATION >= 1")
    return FaultSpec(kind, step, duration)


@dataclass
class ActiveFaults:
    """What the drills do during one update (decided once, before the update starts)."""

    lr_factor: float = 1.0
    nan_grad_steps: int = 0  # how many of this update's optimizer steps get NaN gradients (-1: all)
    flip_reward: bool = False
    started: tuple[FaultSpec, ...] = ()  # drills that fire for the first time in this update


def is_one_shot(spec: FaultSpec) -> bool:
    """Whether the drill acts on one update only (every kind but ``reward_flip``, with duration 1)."""
    return spec.kind != "reward_flip" and spec.duration == 1


def faults_for_update(
    specs: tuple[FaultSpec, ...], first_step: int, last_step: int, fired: set[str], lr_spike_factor: float
) -> ActiveFaults:
    """The drills active for an update whose rollout covers env steps [first_step, last_step).

    A one-shot drill (duration 1) fires once, in the first update that reaches its step; a drill with
    a window fires in every update whose rollout starts inside the window (or straddles its start).
    ``fired`` holds the ``text`` of drills that have fired before; it is updated in place.
    """
    active = ActiveFaults()
    started = []
    for spec in specs:
        if is_one_shot(spec):
            hit = spec.text not in fired and last_step > spec.step
        else:
            hit = spec.window_contains(first_step) or first_step < spec.step < last_step
        if not hit:
            continue
        if spec.text not in fired:
            fired.add(spec.text)
            started.append(spec)
        if spec.kind == "lr_spike":
            active.lr_factor *= lr_spike_factor
        elif spec.kind == "nan_grad":
            active.nan_grad_steps = 1 if is_one_shot(spec) and active.nan_grad_steps == 0 else -1
        else:
            active.flip_reward = True
    active.started = tuple(started)
    return active
