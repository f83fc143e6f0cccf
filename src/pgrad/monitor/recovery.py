"""Recovery actions and the state the guard keeps between updates.

The trainer (``pgrad.runners.on_policy``) calls these; everything here works for any algorithm that keeps its
learnable state in ``modules()`` and ``optimizers()`` (the ``OnPolicyAlgorithm`` contract):

- ``OptimizerGuard`` hooks every torch optimizer of the algorithm, for one job only: before each
  ``step`` it applies the ``nan_grad`` drill, checks the gradients and, when they hold NaN/Inf,
  drops them so the step changes nothing (torch optimizers skip parameters whose ``.grad`` is
  None). The learning-rate scale is not its business: it reaches the algorithm explicitly, in the
  ``UpdateContext`` of each update.
- ``restore_learner`` loads model, optimizer and normaliser statistics from a ``TrainState`` and leaves
  the rest (env step counter, environments, RNG streams, drills already fired) where it is: a rollback
  undoes learning, not experience.
- ``TrajectoryRecorder`` keeps the last N episodes so a halted run can leave them behind as ``.npz``.
- ``GuardState`` is what of this lives in the checkpoint JSON, so resume stays exact.
"""

from __future__ import annotations

import math
import types
import typing
from collections import deque
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from pgrad import safe_io
from pgrad.checkpoint import LearnerState, TrainState, load_modules, load_optimizers
from pgrad.config import GuardConfig
from pgrad.faults import ActiveFaults
from pgrad.replay import TransitionBatch
from pgrad.rollout import Batch, Rollout, RolloutCollector


@dataclass
class GuardState:
    """Guard state that changes training, saved in every checkpoint."""

    lr_scale: float = 1.0
    lr_restore_step: int | None = None  # when the first rollback's learning-rate cut is lifted (Guard.observe)
    recoveries: int = 0
    lr_cuts: int = 0  # rollbacks that cut the learning rate (KL, update size); evaluation reloads do not
    recent_steps: list[int] = field(default_factory=list)  # 1 = that optimizer step was non-finite
    fired: list[str] = field(default_factory=list)  # one-shot drills already fired
    best_eval: float | None = None  # best confirmed evaluation return (see Guard._evaluation_collapsed)
    last_eval: float | None = None
    best_eval_se: float = 0.0  # standard errors of those means (std of the episode returns / sqrt(episodes))
    last_eval_se: float = 0.0
    best_eval_train: float | None = None  # the training return (rollout/return_mean) when those were taken
    last_eval_train: float | None = None
    eval_collapses: int = 0  # consecutive collapsed evaluations
    collapse_since: int | None = None  # the step of the first of them
    next_eval_step: int = 0
    next_recheck_step: int = 0  # the earliest step for an early evaluation (see Guard.evaluation_due)
    recovery_log: list[str] = field(default_factory=list)  # "step N: reason" per recovery, for the final report

    def to_dict(self) -> dict[str, Any]:
        """The state's fields as a dict, for the checkpoint."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> GuardState:
        """The saved state; a field that is unknown or of the wrong type (a checkpoint from someone
        else) is a ``ValueError`` naming it, before it can change training."""
        if not data:
            return cls()
        if not isinstance(data, dict):
            raise ValueError(f"the guard state must be a mapping; got {data!r:.60}")
        hints = typing.get_type_hints(cls)
        for key, value in data.items():
            if key not in hints:
                raise ValueError(f"the guard state has an unknown field {key!r}")
            if not _fits(value, hints[key]):
                hint = hints[key]
                allowed = hint.__name__ if isinstance(hint, type) else str(hint)  # int, float | None, list[int]
                raise ValueError(f"guard state field {key!r} must be {allowed}; got {value!r:.60}")
        return cls(**data)


def _fits(value: Any, annotation: Any) -> bool:
    """Whether a JSON value fits a ``GuardState`` field's annotation (float, int, list[...], X | None)."""
    if annotation is type(None):
        return value is None
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if typing.get_origin(annotation) is list:
        return isinstance(value, list) and all(_fits(item, args[0]) for item in value)
    if isinstance(value, bool):
        return annotation is bool
    if annotation is float:
        return isinstance(value, (int, float))
    return isinstance(value, annotation)


def nonfinite_fraction(state: GuardState, config: GuardConfig) -> float:
    """Non-finite optimizer steps among the last ``nonfinite_window``, over the full window size
    (so one bad step in a fresh run is 1/window, not 1/1)."""
    return sum(state.recent_steps[-config.nonfinite_window :]) / config.nonfinite_window


def should_halt(state: GuardState, config: GuardConfig) -> bool:
    """Whether non-finite optimizer steps passed ``guard.nonfinite_halt`` of the recent window."""
    return nonfinite_fraction(state, config) > config.nonfinite_halt


def eval_collapsed(
    eval_return: float, best: float | None, config: GuardConfig, se: float = 0.0, best_se: float = 0.0
) -> bool:
    """Below the absolute floor ``eval_min_return``; or below best - eval_max_drop x |best| *and*
    by more than ``eval_noise_z`` standard errors of the difference, sqrt(se^2 + best_se^2) (``se``,
    ``best_se``: standard errors of the two means, from the spread of their episode returns), so
    a drop that is within the noise of a few episodes is not a collapse."""
    if config.eval_min_return is not None and eval_return < config.eval_min_return:
        return True
    if best is None or config.eval_max_drop is None:
        return False
    drop = best - eval_return
    return drop > config.eval_max_drop * abs(best) and drop > config.eval_noise_z * math.hypot(se, best_se)


def gradients_finite(parameters: list[torch.Tensor]) -> bool:
    """Whether every gradient entry is finite (a sum per tensor: cheap, and NaN or Inf when any entry is)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return True
    # A sum is NaN/Inf when some entry is (or when it overflows, which is just as broken); per-tensor sums
    # are the cheapest such reduction (~50 us for a small MLP, against ~90 us for the global norm).
    return bool(torch.isfinite(torch.stack([g.sum() for g in grads])).all())


def update_groups(algo: Any) -> dict[str, list[torch.Tensor]]:
    """The learner's parameters grouped by what moves them: one group per optimizer (named after
    it) and ``step`` for those no optimizer owns (TRPO's and NPG's policy, moved by a natural-gradient
    step). An update's size is measured per group, so a critic wrecked by one huge optimizer step is
    not hidden by a policy that barely moved."""
    owned: set[int] = set()
    groups: dict[str, list[torch.Tensor]] = {}
    for name, optimizer in algo.optimizers().items():
        params = [p for group in optimizer.param_groups for p in group["params"]]
        owned.update(id(p) for p in params)
        groups[name] = params
    rest = [p for module in algo.modules().values() for p in module.parameters() if id(p) not in owned]
    if rest:
        groups["step"] = rest
    return {name: params for name, params in groups.items() if params}


class UpdateSizes:
    """||theta_after - theta_before|| per parameter group (``update_groups``), measured around each
    update: ``start()`` before it, ``finish()`` after. Parameters are updated in place (optimizers,
    ``load_state_dict``), so flat views taken once stay valid; each call concatenates them into a
    preallocated buffer. ~8 us of CPU per update for the A2C CartPole net with NumPy views (a fresh
    ``torch.cat`` per group and call was ~50 us, ~3 % of an A2C update); a torch buffer off the CPU."""

    def __init__(self, groups: dict[str, list[torch.Tensor]]) -> None:
        self.on_cpu = all(p.device.type == "cpu" for params in groups.values() for p in params)
        self.views: dict[str, list[Any]] = {}
        self.before: dict[str, Any] = {}
        self.after: dict[str, Any] = {}
        for name, params in groups.items():
            flat = [p.detach().reshape(-1) for p in params]
            size = sum(v.numel() for v in flat)
            if self.on_cpu:
                self.views[name] = [v.numpy() for v in flat]
                self.before[name] = np.empty(size, dtype=self.views[name][0].dtype)
                self.after[name] = np.empty_like(self.before[name])
            else:
                self.views[name] = flat
                self.before[name] = torch.empty(size, dtype=flat[0].dtype, device=flat[0].device)
                self.after[name] = torch.empty_like(self.before[name])

    def start(self) -> None:
        """Copies every parameter group's current values, before the update."""
        for name, views in self.views.items():
            self._concatenate(views, self.before[name])

    def finish(self) -> dict[str, float]:
        """After the update: ||theta_after - theta_before|| for each parameter group, by name."""
        sizes = {}
        for name, views in self.views.items():
            after, before = self.after[name], self.before[name]
            self._concatenate(views, after)
            if self.on_cpu:
                np.subtract(after, before, out=after)
                sizes[name] = float(np.sqrt(np.dot(after, after)))
            else:
                sizes[name] = float(torch.linalg.vector_norm(after.sub_(before)))
        return sizes

    def _concatenate(self, views: list[Any], out: Any) -> None:
        if self.on_cpu:
            np.concatenate(views, out=out)
        else:
            torch.cat(views, out=out)


def parameters_finite(modules: dict[str, torch.nn.Module]) -> bool:
    """One reduction over all parameters: the sum of a tensor holding NaN/Inf is NaN/Inf (an overflow
    of the sum itself would be just as broken). One cat and one sum, ~3x cheaper than a sum per tensor
    stacked (measured on the A2C CartPole net), and it runs every update."""
    flat = [p.detach().reshape(-1) for module in modules.values() for p in module.parameters()]
    return bool(torch.isfinite(torch.cat(flat).sum())) if flat else True


class OptimizerGuard:
    """Step pre/post hooks on the algorithm's optimizers (see the module docstring)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer], state: GuardState, config: GuardConfig) -> None:
        self.state = state
        self.config = config
        self.faults = ActiveFaults()
        self.nan_steps_left = 0
        self.steps = 0  # optimizer steps in the current update
        self.skipped = 0  # of which non-finite
        self.handles = []
        for optimizer in optimizers:
            self.handles.append(optimizer.register_step_pre_hook(self.before_step))

    def start_update(self, faults: ActiveFaults) -> None:
        """Arms the update's drilled faults (NaN-gradient steps) and zeroes the step counters."""
        self.faults = faults
        self.nan_steps_left = faults.nan_grad_steps
        self.steps = self.skipped = 0

    def before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """The pre-step hook: fills gradients with NaN while a drill asks, records whether they are finite, and with
        ``skip_nonfinite`` drops non-finite ones so the optimizer skips the step. A step a loss scaler hands to an
        optimizer that does its own scaling (fused Adam: ``optimizer.found_inf`` set, the gradients still scaled)
        is the scaler's to judge: it is neither drilled nor counted here (its caller counts it:
        ``pgrad.runners.lm_ppo``)."""
        if getattr(optimizer, "found_inf", None) is not None:
            return
        parameters = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if self.nan_steps_left:
            for p in parameters:
                p.grad.fill_(float("nan"))
            self.nan_steps_left -= 1 if self.nan_steps_left > 0 else 0
        finite = gradients_finite(parameters)
        self.count_step(finite)
        if not finite and self.config.skip_nonfinite:
            for p in parameters:
                p.grad = None  # the optimizer skips parameters without a gradient: no update, no moment change

    def count_step(self, finite: bool) -> None:
        """Counts one optimizer step, and whether its gradients were finite, for the non-finite rules."""
        self.steps += 1
        self.state.recent_steps = self.state.recent_steps[-(self.config.nonfinite_window - 1) :] + [int(not finite)]
        self.skipped += int(not finite)

    def remove(self) -> None:
        """Removes the step hooks from the optimizers."""
        for handle in self.handles:
            handle.remove()


def restore_learner(state: TrainState, source: Path, algo: Any, collector: RolloutCollector) -> None:
    """Load model, optimizer, algorithm extra state and normaliser statistics from a checkpoint.

    Environments, episode bookkeeping, RNG streams and the step counter are left as they are: a
    rollback undoes learning, not experience.
    """
    load_modules(algo.modules(), state, source)
    load_optimizers(algo.optimizers(), state, source)
    algo.load_extra_state(state.algo_state)
    if state.normalizers:
        collector.load_normalizer_state(state.normalizers)


# ---- the newest healthy learner state, in memory ----------------------------------------------


class NormalizerOwner(Protocol):
    """What a capture reads besides the learner: the normalisers' statistics (a ``RolloutCollector``;
    a loop without normalisers, the language-model loop, returns ``{}``)."""

    def normalizer_state(self) -> dict[str, Any]:
        """The normalisers' statistics (``{}`` without normalisers)."""

    def load_normalizer_state(self, state: dict[str, Any]) -> None:
        """Restores what ``normalizer_state`` returned."""


def _clone(value: Any) -> Any:
    """A deep copy of a state_dict-like tree; tensors are cloned (the copy shares no storage)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {key: _clone(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_clone(item) for item in value]
    if isinstance(value, np.ndarray):
        return value.copy()
    return value


def capture_learner(step: int, algo: Any, collector: NormalizerOwner) -> LearnerState:
    """A copy of the learner that shares no storage with it (what ``HealthyStates`` keeps).

    Not the environments, RNG streams, step counter or the guard's learning-rate scale: a rollback
    undoes learning, not experience, and the rate cut it applies must survive the restore.
    """
    return LearnerState(
        step=step,
        modules={name: _clone(module.state_dict()) for name, module in algo.modules().items()},
        optimizers={name: _clone(optimizer.state_dict()) for name, optimizer in algo.optimizers().items()},
        normalizers=_clone(collector.normalizer_state()),
        algo_state=_clone(algo.extra_state()),
    )


def restore_captured(learner: LearnerState, algo: Any, collector: NormalizerOwner) -> None:
    """Put a captured learner back; the capture stays usable for another rollback."""
    for name, module in algo.modules().items():
        module.load_state_dict(learner.modules[name])  # copies into the module's own tensors
    for name, optimizer in algo.optimizers().items():
        optimizer.load_state_dict(_clone(learner.optimizers[name]))
    collector.load_normalizer_state(_clone(learner.normalizers))
    algo.load_extra_state(_clone(learner.algo_state))


class HealthyStates:
    """The newest *confirmed* healthy learner state, and the candidate waiting for confirmation.

    After an update the guard judges healthy, the state is captured as a candidate (at most once
    every ``every`` env steps: a capture clones every tensor, ~0.2 ms for a small MLP); it becomes
    the confirmed state only when the *next* update is judged healthy too, i.e. once the weights it
    holds have collected a rollout and been updated without alarm. Any unhealthy update in between
    drops the candidate. So the state written just as damage starts (an update whose own metrics
    still looked fine) is never the one a rollback restores.
    """

    def __init__(self, every: int) -> None:
        self.every = every
        self.candidate: LearnerState | None = None
        self.confirmed: LearnerState | None = None
        self.last_capture_step: int | None = None

    def after_update(self, healthy: bool, step: int, algo: Any, collector: NormalizerOwner) -> None:
        """After an update: unhealthy drops the candidate; healthy confirms it, and captures a new candidate at most
        once every ``every`` steps."""
        if not healthy:
            self.candidate = None
            return
        if self.candidate is not None:
            self.confirmed, self.candidate = self.candidate, None
        if self.last_capture_step is None or step - self.last_capture_step >= self.every:
            self.candidate = capture_learner(step, algo, collector)
            self.last_capture_step = step

    def forget_candidate(self) -> None:
        """Drops the candidate waiting for confirmation."""
        self.candidate = None

    def slots(self) -> dict[str, LearnerState]:
        """For the checkpoint (``TrainState.rollback_states``)."""
        held = {"confirmed": self.confirmed, "candidate": self.candidate}
        return {slot: learner for slot, learner in held.items() if learner is not None}

    def load(self, slots: dict[str, LearnerState], capture_step: int | None) -> None:
        """Restores the confirmed and candidate states and the last capture step from a checkpoint."""
        self.confirmed = slots.get("confirmed")
        self.candidate = slots.get("candidate")
        self.last_capture_step = capture_step


# ---- what a halted run leaves behind -----------------------------------------------------------

TRAJECTORY_FIELDS = ("obs", "actions", "rewards", "terminated", "truncated", "valid")
MAX_OPEN_STEPS = 5000  # an unfinished episode keeps at most about this many recent steps per env


class TrajectoryRecorder:
    """The last ``capacity`` finished episodes of training, for the dump a halted run leaves behind.

    Recording must cost next to nothing on every update, while the dump happens at most once: so
    ``add`` only keeps a reference to the rollout (rollouts are never written after they are made)
    and counts its finished episodes, dropping the oldest rollouts once the newer ones hold
    ``capacity`` episodes (or, for episodes that never end, ``MAX_OPEN_STEPS`` steps per env).
    ``save`` cuts the kept rollouts into episodes.
    """

    def __init__(self, num_envs: int, capacity: int) -> None:
        self.num_envs = num_envs
        self.capacity = max(capacity, 1)
        self.enabled = capacity > 0
        self.rollouts: deque[tuple[Rollout, int]] = deque()  # (rollout, episodes finished in it)
        self.finished_kept = 0
        self.steps_kept = 0  # per env
        self.dropped = False

    def add(self, rollout: Rollout) -> None:
        """Keeps a reference to ``rollout`` (when enabled), dropping the oldest ones past ``capacity`` finished
        episodes or ``MAX_OPEN_STEPS`` steps."""
        if not self.enabled:
            return
        finished = int(np.count_nonzero((rollout.terminated | rollout.truncated) & rollout.valid))
        self.rollouts.append((rollout, finished))
        self.finished_kept += finished
        self.steps_kept += rollout.num_steps
        while len(self.rollouts) > 1 and (
            self.finished_kept - self.rollouts[0][1] >= self.capacity or self.steps_kept > MAX_OPEN_STEPS
        ):
            oldest, count = self.rollouts.popleft()
            self.finished_kept -= count
            self.steps_kept -= oldest.num_steps
            self.dropped = True

    def _episodes(self) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
        """(finished episodes, each env's unfinished one), each a dict of time-major arrays.

        An episode is cut after its last step; the autoreset step that follows opens the next one.
        Once old rollouts were dropped, each env's first piece lacks its beginning: it is left out
        if it ended, and kept (as the unfinished episode) if it never did.
        """
        joined = {
            k: np.concatenate([getattr(r, k)[: r.num_steps] for r, _ in self.rollouts]) for k in TRAJECTORY_FIELDS
        }
        done = (joined["terminated"] | joined["truncated"]) & joined["valid"]
        finished, unfinished = [], []
        for env in range(done.shape[1]):
            ends = list(np.flatnonzero(done[:, env]) + 1)
            starts = [0, *ends]
            for index, (start, end) in enumerate(zip(starts[:-1], ends, strict=True)):
                if index == 0 and self.dropped:
                    continue
                finished.append({k: v[start:end, env] for k, v in joined.items()})
            if starts[-1] < done.shape[0]:
                unfinished.append({k: v[starts[-1] :, env] for k, v in joined.items()})
        return finished, unfinished

    def save(self, path: Path) -> int:
        """Write the episodes to one ``.npz`` (no object arrays: loads with allow_pickle=False).

        The finished episodes come first, then each env's unfinished one (``episode_finished`` False),
        at most ``capacity`` in all, the most recent kept. Episode i is rows
        ``episode_start[i] : episode_start[i] + episode_length[i]`` of each field.
        """
        finished, unfinished = self._episodes() if self.rollouts else ([], [])
        episodes = (finished + unfinished)[-self.capacity :]
        is_finished = np.arange(len(episodes)) < len(episodes) - min(len(unfinished), len(episodes))
        lengths = np.array([len(e["rewards"]) for e in episodes], np.int64)
        arrays = {
            k: np.concatenate([e[k] for e in episodes]) if episodes else np.zeros(0, np.float32)
            for k in TRAJECTORY_FIELDS
        }
        starts = (np.cumsum(lengths) - lengths).astype(np.int64)
        columns = {"episode_start": starts, "episode_length": lengths, "episode_finished": is_finished, **arrays}
        # arg-type: numpy's stub lets a **dict fill savez's keyword-only allow_pickle (a bool), so mypy refuses
        # any dict of arrays. Naming allow_pickle instead would store it as an array before numpy 2.1.
        with safe_io.atomic_file(path) as handle:  # a run folder's file: never through a link
            np.savez(handle, **columns)  # type: ignore[arg-type]
        return len(episodes)


def save_batch(batch: Batch | TransitionBatch, path: Path) -> None:
    """An update's batch (a dataclass of tensors: an on-policy ``Batch``, a replay ``TransitionBatch``) as a
    pickle-free ``.npz``; fields that are not tensors are left out."""
    tensors = {f.name: getattr(batch, f.name) for f in fields(batch)}
    arrays = {name: t.detach().cpu().numpy() for name, t in tensors.items() if isinstance(t, torch.Tensor)}
    with safe_io.atomic_file(path) as handle:  # a run folder's file: never through a link
        np.savez(handle, **arrays)  # type: ignore[arg-type]  # numpy's stub, as in TrajectoryRecorder.save
