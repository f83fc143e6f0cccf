"""Callbacks for library use (``pgrad.api``): they see the agent, the step counter and the run's logger, hear
of every env step, update, evaluation and checkpoint, and can stop training.

Two spellings of one class, pick either:

- pgrad's hooks, public: ``on_update(metrics)`` after every logged update (the row of ``metrics.jsonl``),
  ``on_evaluation(metrics)`` after the guard's periodic evaluations, ``on_checkpoint(path, step)``;
- Stable-Baselines3's hooks, with an underscore: ``_on_training_start``, ``_on_rollout_start``, ``_on_step``,
  ``_on_rollout_end``, ``_on_training_end`` (and ``_init_callback``), so an SB3 callback ports by changing
  its import to ``from pgrad.callbacks import BaseCallback``.

Any hook that returns ``False`` stops the run (``None`` or ``True`` go on): the loop finishes the update in
progress (an on-policy rollout is completed and learned from; off-policy, the current round of
``loop.train_freq`` steps and its gradient steps), writes its final checkpoint and returns, and
``events.jsonl`` records ``run.stopped_by_callback`` naming the hook. Stopping at an update boundary is what
lets ``learn`` continue the run afterwards exactly as if it had never stopped.

**When ``_on_step`` fires.** As in SB3, once per vector-env step (``num_envs`` env steps) in the on-policy
and off-policy collectors, ``n_calls`` counting the calls and ``num_timesteps`` the env steps so far. Where
the steps are taken elsewhere (Ray workers, A3C's worker processes, the language-model loops) it fires once
per logged update instead, with ``num_timesteps`` the update's step. ``_on_rollout_start`` and
``_on_rollout_end`` bracket each collection (on-policy: one per update; off-policy: one per round).

**What a callback sees** (set by the loop; ``self.locals`` does not exist, SB3's view of the loop's local
variables has no counterpart here, and a callback cannot change a run behind the guard's back):

- ``self.model`` (SB3's name; ``self.agent`` too): the ``pgrad.api`` agent passed to ``learn``, None when a
  runner is driven directly. Its ``predict`` uses the policy of the last *finished* ``learn``.
- ``self.num_timesteps``, ``self.n_calls``;
- ``self.logger``: the run's ``Logger``: ``record(key, value)`` adds a scalar to the row of the update in
  progress (``metrics.jsonl``, TensorBoard, W&B / MLflow alike);
- ``self.metrics``: the last logged row (``step``, ``rollout/return_mean``, ``train/...``), {} before the first;
- ``self.training_env``: the training envs, a Gymnasium vector env (not an SB3 ``VecEnv``); read it, do not
  step or reset it (that would break the run and its exact resume);
- ``self.training``: the running loop (``Training``): ``evaluate`` the live policy on an env and ``save`` the
  agent as it is now, as the built-in callbacks do.

Built-ins, named and shaped as SB3's: ``EvalCallback``, ``CheckpointCallback``,
``StopTrainingOnRewardThreshold``, ``StopTrainingOnMaxEpisodes``, ``StopTrainingOnNoModelImprovement``,
``EveryNTimesteps``, ``CallbackList``; and pgrad's ``StopOnReturn``. See docs/callbacks.md.
"""

from __future__ import annotations

import inspect
import math
import numbers
import reprlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from pgrad import metric_names as names
from pgrad.errors import ConfigError, PgradError

# the names pgrad's loops write whatever the algorithm: a custom scalar may not take one (the row is
# checked again when the scalars join it, for the algorithm's own names)
PGRAD_NAMES = frozenset(value for key, value in vars(names).items() if key.isupper() and isinstance(value, str)) | {
    "eval/return_min",
    "eval/return_max",
    "eval/length_mean",
    "perf/eval_seconds",
}
# SB3's logger sinks that pgrad has no counterpart of: excluding a value from them changes nothing
NO_SUCH_SINKS = frozenset({"stdout", "log"})


def _short(value: Any) -> str:
    return reprlib.repr(value)


class CallbackError(PgradError):
    """A callback raised while the envs were being stepped: said as the callback's failure, not the env's (the
    callback's own exception is its ``__cause__``, with the traceback)."""

    @classmethod
    def wrapping(cls, exc: Exception, hook: str, step: int) -> CallbackError:
        """The error for ``exc`` raised in ``hook``: a pgrad error keeps its one line; anything else is named."""
        if isinstance(exc, ConfigError):
            return CallbackConfigError(str(exc))  # still a ConfigError to whoever catches those
        if isinstance(exc, PgradError):
            return cls(str(exc))
        first = (str(exc).strip().splitlines() or [""])[0]
        return cls(f"a callback's {hook} raised {type(exc).__name__}: {first} at env step {step}")


# ---- the logger ---------------------------------------------------------------------------------


class Logger:
    """Custom scalars for the row of the update in progress: ``record(key, value)`` (SB3's name) and
    ``record_mean(key, value)`` (the mean of the values recorded before the row is written).

    The loop adds what was recorded to the update's row just before writing it, so a scalar recorded in
    ``_on_step``, ``_on_rollout_end`` or ``on_update`` lands in the same ``metrics.jsonl`` line, TensorBoard step
    and tracker step as that update's own metrics; one recorded after the row was written (``on_checkpoint``,
    or outside ``learn`` on ``agent.logger``) goes with the next row. Keys are ``group/name`` (TensorBoard and
    the trackers take only grouped names), values finite numbers; a key pgrad writes itself is refused. Each
    refusal is one ``ConfigError`` line."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self.means: dict[str, tuple[float, int]] = {}

    @property
    def name_to_value(self) -> dict[str, float]:
        """What the next row will get (SB3's attribute), means included."""
        return {**self.values, **{key: total / count for key, (total, count) in self.means.items()}}

    def record(self, key: str, value: Any, exclude: str | tuple[str, ...] | None = None) -> None:
        """``key`` = ``value`` in the next row (a second record of the key before then replaces the first).
        ``exclude``: SB3's sink filter; pgrad writes every value to every sink, so only ``"stdout"`` and
        ``"log"`` (sinks pgrad does not have) are taken."""
        self.values[key] = self._checked("record", key, value, exclude)
        self.means.pop(key, None)

    def record_mean(self, key: str, value: Any, exclude: str | tuple[str, ...] | None = None) -> None:
        """The mean of the values recorded under ``key`` before the next row is written."""
        value = self._checked("record_mean", key, value, exclude)
        total, count = self.means.get(key, (0.0, 0))
        self.means[key] = (total + value, count + 1)
        self.values.pop(key, None)

    def dump(self, step: int = 0) -> None:
        """SB3 writes the recorded values here; in pgrad the loop writes them with each update's row, so
        this does nothing (kept so that SB3 code calling it runs)."""

    def take(self) -> dict[str, float]:
        """What was recorded since the last call, means averaged; clears it (the loop calls this per row)."""
        taken = self.name_to_value
        self.values, self.means = {}, {}
        return taken

    @staticmethod
    def _checked(method: str, key: Any, value: Any, exclude: Any) -> float:
        where = f"logger.{method}({_short(key)}, ...)"
        if not isinstance(key, str) or "/" not in key.strip("/") or key != key.strip() or "//" in key:
            raise ConfigError(
                f"{where}: the key must be a 'group/name' text, like 'custom/score' (TensorBoard and the trackers "
                "take grouped names)"
            )
        if key in PGRAD_NAMES:
            raise ConfigError(f"{where}: '{key}' is a metric pgrad writes itself; choose another name")
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            hint = " (a tensor or array: pass value.item())" if hasattr(value, "item") else ""
            raise ConfigError(f"{where}: the value must be a number; got {_short(value)}{hint}")
        if not math.isfinite(float(value)):
            raise ConfigError(f"{where}: the value must be finite; got {float(value)}")
        excluded = (exclude,) if isinstance(exclude, str) else tuple(exclude or ())
        if not set(excluded) <= NO_SUCH_SINKS:
            raise ConfigError(
                f"{where}: exclude={exclude!r}: pgrad writes every recorded value to metrics.jsonl, TensorBoard "
                "and the trackers alike; leave exclude out"
            )
        return float(value)


def merge_recorded(metrics: dict[str, Any], recorded: Mapping[str, float]) -> None:
    """Add the recorded scalars to the row ``metrics``; a key the row holds already (the algorithm's own
    metric) is one ``ConfigError`` line, since the custom value would silently replace pgrad's."""
    taken = [key for key in recorded if key in metrics]
    if taken:
        raise ConfigError(
            f"logger.record: '{taken[0]}' is a metric pgrad writes in this run (the row of step "
            f"{metrics.get('step')} has it); choose another name"
        )
    metrics.update(recorded)


class CallbackConfigError(CallbackError, ConfigError):
    """A callback's ``ConfigError`` (a bad argument found once the run is going: an eval env of other spaces)."""


# ---- the running loop, as callbacks see it ----------------------------------------------------


class Training(Protocol):
    """The running loop as callbacks reach it (``callback.training``); the runners provide it."""

    num_timesteps: int
    logger: Logger
    env: Any  # the training envs (a Gymnasium vector env), or None where they live in other processes

    @property
    def episodes(self) -> int:
        """Episodes finished in this run so far (all envs)."""

    @property
    def run_dir(self) -> Path:
        """The run folder."""

    def evaluate(self, env: Any, episodes: int, deterministic: bool) -> tuple[list[float], list[int]] | None:
        """The live policy's ``episodes`` episodes on ``env`` (an id, a gymnasium env or vector env, a class or
        factory; None: the training env rebuilt as the guard's evaluations build it), the normaliser frozen:
        (returns, lengths), or None when a Ctrl-C cut it short."""

    def save(self, path: str | Path) -> Path:
        """The agent as it is now, in ``pgrad.api``'s ``save`` format (``PPO.load(path)`` acts with it)."""


# ---- the base class ---------------------------------------------------------------------------


class BaseCallback:
    """A callback: override the hooks you need (see the module docstring); every one may return False to stop.

    ``verbose`` is SB3's: the built-ins print a line on their events when it is 1 or more."""

    # class-level defaults: a subclass whose __init__ does not call super().__init__() (pgrad's Callback had none)
    # still works; every one is assigned on the instance, never mutated in place
    verbose = 0
    model: Any = None
    parent: BaseCallback | None = None
    training: Training | None = None
    training_env: Any = None
    logger: Logger | None = None
    n_calls = 0
    num_timesteps = 0
    metrics: Mapping[str, Any] = {}

    def __init__(self, verbose: int = 0) -> None:
        self.verbose = verbose

    @property
    def agent(self) -> Any:
        """``self.model`` by pgrad's word for it."""
        return self.model

    @property
    def locals(self) -> dict[str, Any]:
        """SB3 hands its loop's local variables over here; pgrad does not (see the module docstring)."""
        raise AttributeError(
            "pgrad callbacks have no self.locals: read self.num_timesteps, self.metrics (the last logged row), "
            "self.training.episodes or self.training_env instead"
        )

    def callback_name(self) -> str:
        """How ``events.jsonl`` names this callback when it stops a run."""
        return type(self).__name__

    # ---- what the loop calls (SB3's drivers); override the hooks below instead -------------------
    def init_callback(self, model: Any) -> None:
        """Bind the agent (``learn`` does it before the run starts), then ``_init_callback``."""
        self.model = model
        self.logger = getattr(model, "logger", None) if model is not None else None
        self._init_callback()

    def on_training_start(self, training: Training) -> None:
        """Bind the running loop, then ``_on_training_start``."""
        self.training, self.logger, self.training_env = training, training.logger, training.env
        self.num_timesteps = training.num_timesteps
        self._on_training_start()

    def on_rollout_start(self) -> None:
        """Before each collection: ``_on_rollout_start``."""
        self._sync()
        self._on_rollout_start()

    def on_step(self) -> bool:
        """After each vector-env step: counts the call, then ``_on_step``; False stops training."""
        self.n_calls += 1
        self._sync()
        return self._on_step() is not False

    def on_rollout_end(self) -> None:
        """After each collection: ``_on_rollout_end``."""
        self._sync()
        self._on_rollout_end()

    def on_training_end(self) -> None:
        """After the final checkpoint: ``_on_training_end``."""
        self._sync()
        self._on_training_end()

    def update_event(self, metrics: dict[str, Any]) -> bool | None:
        """A logged update: ``self.metrics`` becomes its row, then ``on_update``."""
        self.metrics = row = dict(metrics)  # a copy: what a callback changes in it is not written
        self._sync()
        return self.on_update(row)

    def evaluation_event(self, metrics: dict[str, Any]) -> bool | None:
        """A guard evaluation in the row: ``on_evaluation``."""
        return self.on_evaluation(dict(metrics))

    def checkpoint_event(self, path: Path, step: int) -> bool | None:
        """A checkpoint written: ``on_checkpoint``."""
        return self.on_checkpoint(path, step)

    def _sync(self) -> None:
        if self.training is not None:
            self.num_timesteps = self.training.num_timesteps

    # ---- SB3's hooks ----------------------------------------------------------------------------
    def _init_callback(self) -> None:
        """Once, when ``learn`` binds the agent (before the run folder is opened)."""

    def _on_training_start(self) -> None:
        """Once per ``learn``, before the first step."""

    def _on_rollout_start(self) -> None:
        """Before each collection of env steps."""

    def _on_step(self) -> bool:
        """After each vector-env step (see the module docstring); False stops training."""
        return True

    def _on_rollout_end(self) -> None:
        """After each collection, before the update learns from it."""

    def _on_training_end(self) -> None:
        """Once per ``learn``, after the final checkpoint."""

    # ---- pgrad's hooks --------------------------------------------------------------------------
    def on_update(self, metrics: Mapping[str, Any]) -> bool | None:
        """After every logged update: the row written to ``metrics.jsonl`` (``step``, ``rollout/return_mean``...),
        before it is written (a scalar recorded here joins it)."""
        return None

    def on_evaluation(self, metrics: Mapping[str, Any]) -> bool | None:
        """After a periodic evaluation (``guard.eval_every``): the same row, with ``eval/return_mean`` in it."""
        return None

    def on_checkpoint(self, path: Path, step: int) -> bool | None:
        """After a checkpoint was written (``run.checkpoint_every``, the guard's marks, the final one)."""
        return None


class Callback(BaseCallback):
    """pgrad's name for ``BaseCallback``: override ``on_update``, ``on_evaluation``, ``on_checkpoint`` (or SB3's
    underscore hooks); each returns ``False`` to stop training."""


class CallbackList(BaseCallback):
    """Several callbacks as one (SB3's ``CallbackList``); ``learn`` also takes a plain list."""

    def __init__(self, callbacks: Sequence[Any]) -> None:
        super().__init__()
        self.callbacks = as_callbacks(callbacks, "CallbackList")

    def init_callback(self, model: Any) -> None:
        """Binds the agent to every callback of the list."""
        super().init_callback(model)
        for callback in self.callbacks:
            callback.init_callback(model)

    def on_training_start(self, training: Training) -> None:
        """Binds the running loop to every callback of the list."""
        super().on_training_start(training)
        for callback in self.callbacks:
            callback.on_training_start(training)

    def on_step(self) -> bool:
        """Every callback's ``on_step``; False when any of them returned False."""
        return all([callback.on_step() for callback in self.callbacks])  # a list: every one is called


class FunctionCallback(BaseCallback):
    """A plain function of the update's row, ``fn(metrics) -> bool | None``, called once per logged update."""

    def __init__(self, function: Callable[[dict[str, Any]], bool | None]) -> None:
        super().__init__()
        self.function = function

    def callback_name(self) -> str:
        """The function's name."""
        return getattr(self.function, "__qualname__", type(self.function).__name__)

    def on_update(self, metrics: Mapping[str, Any]) -> bool | None:
        """Calls the function with the row."""
        return self.function(dict(metrics))


class HookCallback(BaseCallback):
    """An object with pgrad's three hooks that does not derive from ``BaseCallback`` (older pgrad code)."""

    def __init__(self, hooks: Any) -> None:
        super().__init__()
        self.hooks = hooks

    def callback_name(self) -> str:
        """The wrapped object's class name."""
        return type(self.hooks).__name__

    def on_update(self, metrics: Mapping[str, Any]) -> bool | None:
        """Forwards ``on_update``."""
        result: bool | None = self.hooks.on_update(metrics)
        return result

    def on_evaluation(self, metrics: Mapping[str, Any]) -> bool | None:
        """Forwards ``on_evaluation``."""
        result: bool | None = self.hooks.on_evaluation(metrics)
        return result

    def on_checkpoint(self, path: Path, step: int) -> bool | None:
        """Forwards ``on_checkpoint``."""
        result: bool | None = self.hooks.on_checkpoint(path, step)
        return result


PGRAD_HOOKS = ("on_update", "on_evaluation", "on_checkpoint")


def as_callbacks(value: Any, where: str = "learn: callbacks") -> list[BaseCallback]:
    """What ``learn`` takes as callbacks, as a list of ``BaseCallback``: None, one callback, a list (or
    ``CallbackList``) of them, a function of the update's row, or an object with pgrad's three hooks.
    Anything else is one ``ConfigError`` line."""
    if value is None:
        return []
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_one_callback(item, f"{where}[{number}]") for number, item in enumerate(value)]
    return [_one_callback(value, where)]


def _one_callback(value: Any, where: str) -> BaseCallback:
    if isinstance(value, BaseCallback):
        return value
    if isinstance(value, type):
        raise ConfigError(f"{where} is the class {value.__name__}; pass an instance, {value.__name__}(...)")
    if all(callable(getattr(value, hook, None)) for hook in PGRAD_HOOKS):
        return HookCallback(value)
    if callable(value) and not isinstance(value, Mapping):
        _check_function(value, where)
        return FunctionCallback(value)
    raise ConfigError(
        f"{where}: expected a pgrad.callbacks.BaseCallback, a list of them, a function of the update's metrics "
        f"or None; got {_short(value)}"
    )


def _check_function(function: Callable[..., Any], where: str) -> None:
    """A function callback takes the row; SB3's old ``fn(locals, globals)`` form is refused with a hint."""
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return  # a builtin without a signature: let the call say
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p for p in parameters if p.kind in positional and p.default is inspect.Parameter.empty]
    takes_one = len(required) == 1 or (not required and any(p.kind in positional for p in parameters))
    if not takes_one and not any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        raise ConfigError(
            f"{where}: a function callback is called as fn(metrics) once per update; "
            f"{getattr(function, '__name__', 'it')} takes {len(required)} arguments (SB3's fn(locals, globals) "
            "has no pgrad form: write a BaseCallback with _on_step)"
        )


def leaves(callbacks: Iterable[BaseCallback]) -> list[BaseCallback]:
    """The callbacks with every ``CallbackList`` opened, so a stop names the callback that asked for it."""
    found: list[BaseCallback] = []
    for callback in callbacks:
        found += leaves(callback.callbacks) if isinstance(callback, CallbackList) else [callback]
    return found


HOOK_NAMES = {
    "on_step": "_on_step",
    "update_event": "on_update",
    "evaluation_event": "on_evaluation",
    "checkpoint_event": "on_checkpoint",
}


def stop_reason(callbacks: Sequence[BaseCallback], hook: str, *args: Any) -> str | None:
    """Call the driver ``hook`` on every callback (all of them, even after one asked to stop); the first
    hook that returned False, named ``Class.hook`` (the hook the user wrote), or None."""
    reason = None
    for callback in callbacks:
        if getattr(callback, hook)(*args) is False and reason is None:
            reason = f"{callback.callback_name()}.{HOOK_NAMES.get(hook, hook)}"
    return reason


# ---- built-ins ----------------------------------------------------------------------------------


def _positive_int(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where} must be a positive int; got {_short(value)}")
    return value


def _finite(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ConfigError(f"{where} must be a finite number; got {_short(value)}")
    return float(value)


def _child(where: str, value: Any) -> BaseCallback | None:
    if value is None or isinstance(value, BaseCallback):
        return value
    raise ConfigError(f"{where} must be a pgrad.callbacks.BaseCallback or None; got {_short(value)}")


def _path(where: str, value: Any) -> Path | None:
    import os

    if value is None or isinstance(value, (str, os.PathLike)):
        return None if value is None else Path(value)
    raise ConfigError(f"{where} must be a path (str or pathlib.Path) or None; got {_short(value)}")


class StopOnReturn(Callback):
    """Stop once the mean evaluation return (or, without evaluations, the training return) reaches ``threshold``."""

    def __init__(self, threshold: float, metric: str = "eval/return_mean") -> None:
        super().__init__()
        self.threshold = threshold
        self.metric = metric

    def on_update(self, metrics: Mapping[str, Any]) -> bool | None:
        """False (stop) once the row's ``metric`` reaches ``threshold``; None while it is below or absent."""
        value = metrics.get(self.metric)
        return None if value is None or value < self.threshold else False


class EventCallback(BaseCallback):
    """A callback that triggers another, ``callback``, on its events (SB3's ``EventCallback``)."""

    def __init__(self, callback: BaseCallback | None = None, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.callback = _child(f"{type(self).__name__}: callback", callback)
        if self.callback is not None:
            self.callback.parent = self

    def init_callback(self, model: Any) -> None:
        """Binds the agent to this callback and its child."""
        super().init_callback(model)
        if self.callback is not None:
            self.callback.init_callback(model)

    def on_training_start(self, training: Training) -> None:
        """Binds the running loop to this callback and its child."""
        super().on_training_start(training)
        if self.callback is not None:
            self.callback.on_training_start(training)

    def _on_event(self) -> bool:
        """The child's ``on_step`` (True without a child)."""
        return self.callback.on_step() if self.callback is not None else True

    def _live(self) -> Training:
        if self.training is None:
            raise ConfigError(f"{type(self).__name__}: runs only inside learn()")
        return self.training


class EveryNTimesteps(EventCallback):
    """Trigger ``callback`` (its ``_on_step``) every ``n_steps`` env steps (checked at every vector step)."""

    def __init__(self, n_steps: int, callback: BaseCallback) -> None:
        if callback is None:
            raise ConfigError("EveryNTimesteps: callback is required (the callback to trigger)")
        super().__init__(callback)
        self.n_steps = _positive_int("EveryNTimesteps: n_steps", n_steps)
        self.last_time_trigger = 0

    def _on_step(self) -> bool:
        if self.num_timesteps - self.last_time_trigger >= self.n_steps:
            self.last_time_trigger = self.num_timesteps
            return self._on_event()
        return True


class EvalCallback(EventCallback):
    """Evaluate the live policy every ``eval_freq`` calls of ``_on_step`` (as in SB3: vector steps, so every
    ``eval_freq * num_envs`` env steps) for ``n_eval_episodes`` episodes on ``eval_env``, with pgrad's
    evaluation loop (the guard's: separate envs, the observation normaliser frozen, the same seed each time).

    Logs ``eval/mean_reward`` and ``eval/mean_ep_length`` (SB3's names, beside the guard's own
    ``eval/return_mean``); keeps ``last_mean_reward`` and ``best_mean_reward``; with ``best_model_save_path``
    saves the agent at each new best to ``best_model_save_path/best_model`` (``PPO.load`` reads it); with
    ``log_path`` writes ``log_path/evaluations.npz`` (timesteps, results, ep_lengths). On a new best it
    triggers ``callback_on_new_best`` (``StopTrainingOnRewardThreshold``), after every evaluation
    ``callback_after_eval`` (``StopTrainingOnNoModelImprovement``); either returning False stops training.

    ``eval_env``: an env id, a ``gymnasium.Env`` (evaluated on as it is), a Gymnasium vector env, a class or
    factory, or None (the training env, rebuilt as the guard's evaluations build it)."""

    def __init__(
        self,
        eval_env: Any,
        callback_on_new_best: BaseCallback | None = None,
        callback_after_eval: BaseCallback | None = None,
        n_eval_episodes: int = 5,
        eval_freq: int = 10_000,
        log_path: str | Path | None = None,
        best_model_save_path: str | Path | None = None,
        deterministic: bool = True,
        render: bool = False,
        verbose: int = 1,
        warn: bool = True,
    ) -> None:
        super().__init__(callback_after_eval, verbose)
        _check_eval_env(eval_env)
        self.eval_env = eval_env
        self.callback_on_new_best = _child("EvalCallback: callback_on_new_best", callback_on_new_best)
        if self.callback_on_new_best is not None:
            self.callback_on_new_best.parent = self
        self.n_eval_episodes = _positive_int("EvalCallback: n_eval_episodes", n_eval_episodes)
        self.eval_freq = _positive_int("EvalCallback: eval_freq", eval_freq)
        self.log_path = _path("EvalCallback: log_path", log_path)
        self.best_model_save_path = _path("EvalCallback: best_model_save_path", best_model_save_path)
        if not isinstance(deterministic, bool):
            raise ConfigError(f"EvalCallback: deterministic must be True or False; got {_short(deterministic)}")
        if render is not False:
            raise ConfigError(
                "EvalCallback: render=True is not supported; watch a saved agent with 'pgrad eval --video'"
            )
        self.deterministic = deterministic
        self.warn = warn
        self.best_mean_reward = -math.inf
        self.last_mean_reward = -math.inf
        self.evaluations_timesteps: list[int] = []
        self.evaluations_results: list[list[float]] = []
        self.evaluations_length: list[list[int]] = []

    def init_callback(self, model: Any) -> None:
        """Binds the agent to this callback and both children; creates the output folders."""
        super().init_callback(model)
        if self.callback_on_new_best is not None:
            self.callback_on_new_best.init_callback(model)
        for folder in (self.best_model_save_path, self.log_path):
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)

    def on_training_start(self, training: Training) -> None:
        """Binds the running loop to this callback and both children."""
        super().on_training_start(training)
        if self.callback_on_new_best is not None:
            self.callback_on_new_best.on_training_start(training)

    def _on_step(self) -> bool:
        if self.n_calls % self.eval_freq != 0:
            return True
        evaluated = self._live().evaluate(self.eval_env, self.n_eval_episodes, self.deterministic)
        if evaluated is None:  # a Ctrl-C during the evaluation: the run is stopping anyway
            return True
        returns, lengths = evaluated
        self._record(returns, lengths)
        mean = sum(returns) / len(returns)
        self.last_mean_reward = mean
        if self.verbose >= 1:
            spread = math.sqrt(sum((r - mean) ** 2 for r in returns) / len(returns))
            print(f"Eval num_timesteps={self.num_timesteps}, episode_reward={mean:.2f} +/- {spread:.2f}")
        go_on = True
        if mean > self.best_mean_reward:
            self.best_mean_reward = mean
            if self.best_model_save_path is not None:
                self._live().save(self.best_model_save_path / "best_model")
            if self.verbose >= 1:
                print("New best mean reward!")
            if self.callback_on_new_best is not None:
                go_on = self.callback_on_new_best.on_step()
        return self._on_event() and go_on

    def _record(self, returns: list[float], lengths: list[int]) -> None:
        """The evaluation into the row (SB3's names) and the history (``log_path/evaluations.npz``)."""
        assert self.logger is not None
        self.logger.record("eval/mean_reward", sum(returns) / len(returns))
        self.logger.record("eval/mean_ep_length", sum(lengths) / len(lengths))
        self.evaluations_timesteps.append(self.num_timesteps)
        self.evaluations_results.append(returns)
        self.evaluations_length.append(lengths)
        if self.log_path is not None:
            import numpy as np

            np.savez(
                self.log_path / "evaluations.npz",
                timesteps=np.array(self.evaluations_timesteps),
                results=np.array(self.evaluations_results),
                ep_lengths=np.array(self.evaluations_length),
            )


def _check_eval_env(env: Any) -> None:
    """An env pgrad can evaluate on (an SB3 ``VecEnv`` is not one): else one line."""
    import gymnasium as gym

    if env is None or isinstance(env, (str, gym.Env, gym.vector.VectorEnv)):
        return
    if callable(env) and not hasattr(env, "step_async"):
        return
    hint = " (an SB3 VecEnv: pass the gymnasium env or its id)" if hasattr(env, "step_async") else ""
    raise ConfigError(
        "EvalCallback: eval_env must be an env id, a gymnasium.Env, a gymnasium vector env, a class or factory, "
        f"or None; got {type(env).__name__}{hint}"
    )


class _NeedsEvalParent(BaseCallback):
    """A callback that reads its parent ``EvalCallback``'s ``best_mean_reward``."""

    role = "callback_on_new_best"

    def _init_callback(self) -> None:
        self._check_parent()

    def _on_training_start(self) -> None:
        self._check_parent()

    def _check_parent(self) -> None:
        if not isinstance(self.parent, EvalCallback):
            raise ConfigError(
                f"{type(self).__name__}: pass it to EvalCallback as {self.role}=...; it reads the evaluations' "
                "best mean reward"
            )

    def _best(self) -> float:
        assert isinstance(self.parent, EvalCallback)
        return self.parent.best_mean_reward


class StopTrainingOnRewardThreshold(_NeedsEvalParent):
    """Stop training once the best mean evaluation reward reaches ``reward_threshold`` (EvalCallback's
    ``callback_on_new_best``)."""

    def __init__(self, reward_threshold: float, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.reward_threshold = _finite("StopTrainingOnRewardThreshold: reward_threshold", reward_threshold)

    def _on_step(self) -> bool:
        go_on = self._best() < self.reward_threshold
        if not go_on and self.verbose >= 1:
            print(f"Stopping training: the mean reward {self._best():.2f} reached {self.reward_threshold}")
        return go_on


class StopTrainingOnNoModelImprovement(_NeedsEvalParent):
    """Stop training when ``max_no_improvement_evals`` evaluations in a row did not raise the best mean reward,
    counting only after ``min_evals`` evaluations (EvalCallback's ``callback_after_eval``)."""

    role = "callback_after_eval"

    def __init__(self, max_no_improvement_evals: int, min_evals: int = 0, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.max_no_improvement_evals = _positive_int(
            "StopTrainingOnNoModelImprovement: max_no_improvement_evals", max_no_improvement_evals
        )
        if isinstance(min_evals, bool) or not isinstance(min_evals, int) or min_evals < 0:
            raise ConfigError(f"StopTrainingOnNoModelImprovement: min_evals must be an int >= 0; got {min_evals!r}")
        self.min_evals = min_evals
        self.last_best_mean_reward = -math.inf
        self.no_improvement_evals = 0

    def _on_step(self) -> bool:
        go_on = True
        if self.n_calls > self.min_evals:
            if self._best() > self.last_best_mean_reward:
                self.no_improvement_evals = 0
            else:
                self.no_improvement_evals += 1
                go_on = self.no_improvement_evals <= self.max_no_improvement_evals
        self.last_best_mean_reward = self._best()
        if not go_on and self.verbose >= 1:
            print(f"Stopping training: no new best mean reward in {self.no_improvement_evals} evaluations")
        return go_on


class StopTrainingOnMaxEpisodes(BaseCallback):
    """Stop training after ``max_episodes`` episodes per env, ``max_episodes * num_envs`` in all (SB3's
    meaning), counted from the callback's first ``learn``; the update in progress is finished first."""

    def __init__(self, max_episodes: int, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.max_episodes = _positive_int("StopTrainingOnMaxEpisodes: max_episodes", max_episodes)
        self.n_episodes = 0
        self._total_max_episodes = max_episodes
        self._seen = 0

    def _on_training_start(self) -> None:
        assert self.training is not None
        self._seen = self.training.episodes
        num_envs = getattr(self.training_env, "num_envs", 1)
        self._total_max_episodes = self.max_episodes * num_envs

    def _on_step(self) -> bool:
        assert self.training is not None
        now = self.training.episodes
        self.n_episodes += now - self._seen
        self._seen = now
        go_on = self.n_episodes < self._total_max_episodes
        if not go_on and self.verbose >= 1:
            print(f"Stopping training: {self.n_episodes} episodes reached max_episodes={self.max_episodes}")
        return go_on


class CheckpointCallback(BaseCallback):
    """Save the agent every ``save_freq`` calls of ``_on_step`` (as in SB3: vector steps, so every
    ``save_freq * num_envs`` env steps) to ``save_path/{name_prefix}_{num_timesteps}_steps``, a folder in
    ``pgrad.api``'s ``save`` format that ``PPO.load`` reads (SB3 writes a ``.zip``). The observation
    normaliser is inside it (``save_vecnormalize`` changes nothing); a replay buffer is not (a saved agent acts
    and does not train: the run folder's own checkpoints hold everything a resume needs)."""

    def __init__(
        self,
        save_freq: int,
        save_path: str | Path,
        name_prefix: str = "rl_model",
        save_replay_buffer: bool = False,
        save_vecnormalize: bool = False,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        self.save_freq = _positive_int("CheckpointCallback: save_freq", save_freq)
        folder = _path("CheckpointCallback: save_path", save_path)
        if folder is None:
            raise ConfigError("CheckpointCallback: save_path must be a path (str or pathlib.Path); got None")
        self.save_path = folder
        if not isinstance(name_prefix, str) or not name_prefix or "/" in name_prefix:
            raise ConfigError(f"CheckpointCallback: name_prefix must be a file-name text; got {_short(name_prefix)}")
        self.name_prefix = name_prefix
        if save_replay_buffer:
            raise ConfigError(
                "CheckpointCallback: save_replay_buffer: a saved agent holds no replay buffer; the run folder's "
                "checkpoints do (loop.save_buffer, run.checkpoint_every), and learn() resumes from them"
            )
        self.save_vecnormalize = save_vecnormalize

    def _init_callback(self) -> None:
        self.save_path.mkdir(parents=True, exist_ok=True)

    def _on_step(self) -> bool:
        if self.n_calls % self.save_freq == 0:
            assert self.training is not None
            path = self.training.save(self.save_path / f"{self.name_prefix}_{self.num_timesteps}_steps")
            if self.verbose >= 1:
                print(f"Saving model checkpoint to {path}")
        return True


__all__ = [
    "BaseCallback",
    "Callback",
    "CallbackError",
    "CallbackList",
    "CheckpointCallback",
    "EvalCallback",
    "EventCallback",
    "EveryNTimesteps",
    "Logger",
    "StopOnReturn",
    "StopTrainingOnMaxEpisodes",
    "StopTrainingOnNoModelImprovement",
    "StopTrainingOnRewardThreshold",
    "Training",
]
