"""Typed, validated configuration.

Every setting is a field of a frozen dataclass with a default and a one-line doc (``param``).
Values are type-checked and range-checked on construction, so a bad value fails before any
environment is built or any file is written. The same classes drive ``pgrad list`` and the
YAML/``--set`` parsing, and the resolved config is saved to every run folder.

Precedence when a run is built: field defaults < the env kind's defaults (where no preset exists,
``pgrad.presets.generic_defaults_for``) < environment preset < ``--config`` file <
``--set key=value`` < explicit flags (``--seed``, ``--total-steps``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from pgrad import safe_io
from pgrad.errors import ConfigError
from pgrad.faults import parse_fault


def param(default: Any, doc: str) -> Any:
    """A config field with its one-line documentation (shown by ``pgrad list``)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


# --------------------------------------------------------------------------------------------
# type checking and range checks
# --------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    if _is_section(tp):
        return f"a mapping of {tp.SECTION} settings"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def _number_from_text(value: Any) -> float | None:
    """YAML 1.1 reads ``3e-4`` (no dot) as a string; a number written that way is still a number.
    Integral floats (``1e5``) count too. Anything else: None."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)
    if isinstance(value, float):
        return value
    return None


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """Return (ok, value converted to the declared type). Strict: no str->number guessing."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True, value
    if origin is Literal:
        return value in typing.get_args(tp), value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, converted = _coerce(value, arg)
            if ok:
                return True, converted
        return False, value
    if tp is type(None):
        return value is None, value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False, value
        item_type = typing.get_args(tp)[0]
        converted = []
        for item in value:
            ok, item = _coerce(item, item_type)
            if not ok:
                return False, value
            converted.append(item)
        return True, tuple(converted)
    if origin is dict:
        return isinstance(value, dict), dict(value) if isinstance(value, dict) else value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        number = _number_from_text(value)
        if isinstance(number, float) and number.is_integer() and abs(number) < 2**53:
            return True, int(number)  # 1e5 or 100000.0 written for an integer field
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        number = _number_from_text(value)
        if number is not None:
            return True, number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, value
        return True, float(value)
    if tp is str:
        return isinstance(value, str), value
    return isinstance(value, tp), value


# Integers go on to NumPy and torch as int64 (seeds as uint32, checked where they are declared).
INT64_LIMIT = 2**63

# Upper bounds of the size fields. A config may come from someone else's run folder (a resume reads its
# config.yaml), and a size with no bound became a fork bomb (env.num_envs: 5000 async workers), an abort in
# libgomp (run.torch_threads: 100000) or memory growth until the machine gave out (loop.buffer_size: 1e15,
# network.hidden_sizes: [1e8, 1e5]). Each bound is far above any setting that trains on one machine; the
# replay buffer is also checked against this machine's memory when it is allocated (pgrad.replay).
MAX_NUM_ENVS = 4096  # environment copies in one process (sync or a native vector env)
MAX_ASYNC_ENVS = 256  # async: one worker process per copy
MAX_THREADS = 1024  # torch and BLAS threads
MAX_LAYER_WIDTH = 2**15  # units in one hidden layer
MAX_LAYERS = 64  # hidden layers
MAX_HIDDEN_WEIGHTS = 2**28  # weights between consecutive hidden layers, all together (1 GiB in float32)
MAX_BUFFER_SIZE = 2**31  # replay transitions (the memory check against this machine usually binds first)
MAX_BATCH = 2**20  # samples in one gradient step or one sampled batch
MAX_RAY_WORKERS = 1024
MAX_WINDOW = 2**20  # rows, episodes or steps kept in memory for a statistic
MAX_ACTION_DELAY = 10_000  # env steps (domain randomisation keeps that many past actions per env)


def available_memory() -> int | None:
    """Bytes of memory this machine can still hand out: Linux's ``MemAvailable``, else the physical memory
    (``sysconf``), else None where neither can be read."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, AttributeError):
        return None


def check_memory(needed: int, field_name: str, what: str) -> None:
    """Refuse, before allocating, ``needed`` bytes (``what``, sized by the field ``field_name``) that this machine
    does not have: NumPy's pages come on first write, so an oversized buffer would otherwise fail (or swap the
    machine to a halt) hours into a run instead of at its start."""
    available = available_memory()
    if available is not None and needed > available:
        raise ConfigError(
            f"{field_name}: {what} needs {needed / 2**30:,.1f} GiB when full; this machine has "
            f"{available / 2**30:,.1f} GiB available (lower {field_name})"
        )


def _unbounded_number(value: Any) -> str | None:
    """What a number must be instead, when ``value`` (or an item of it) is NaN, infinite or too big
    for int64; else None. A NaN passes every ``<``/``>`` range check (every comparison is false),
    so ``clip_eps=.nan`` would train on NaN losses and ``guard.kl_critical=.nan`` would switch the
    KL alert off: no field takes one."""
    if isinstance(value, float) and not math.isfinite(value):
        return "a finite number"
    if isinstance(value, int) and not isinstance(value, bool) and not -INT64_LIMIT <= value < INT64_LIMIT:
        return "an integer in [-2**63, 2**63)"
    if isinstance(value, tuple):
        return next((bad for bad in map(_unbounded_number, value) if bad is not None), None)
    return None


class Checked:
    """Mixin for frozen config dataclasses: type-checks every field, then calls ``validate``.

    Subclasses set ``SECTION`` (the prefix in error messages) and implement ``validate`` with
    the range checks below, each of which names the field and the allowed values.
    """

    SECTION: ClassVar[str] = ""
    # Declared so that the type checker sees every subclass as a dataclass (``dataclasses.fields``
    # takes only those); each subclass is one, and the decorator sets the attribute.
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if _is_section(hints[f.name]) and isinstance(value, dict):
                value = self._nested(f, hints[f.name], value)
            ok, converted = _coerce(value, hints[f.name])
            if not ok:
                raise ConfigError(f"{self._name(f.name)} must be {_type_name(hints[f.name])}; got {value!r}")
            bad = _unbounded_number(converted)
            if bad is not None:
                raise ConfigError(f"{self._name(f.name)} must be {bad}; got {value!r}")
            object.__setattr__(self, f.name, converted)
        self.validate()

    def validate(self) -> None:  # pragma: no cover - overridden
        """The section's own checks, run after the type checks; a subclass overrides it (here: none)."""
        pass

    def _nested(self, f: dataclasses.Field[Any], cls: type[Checked], data: dict[str, Any]) -> Any:
        """A nested section (``network``, ``optimizer``) given as a mapping: its keys over this
        class's default for it, so ``ppo: {optimizer: {eps: 1e-8}}`` keeps PPO's learning rate.
        Errors name the full path (``ppo.optimizer.eps``), the one ``--set`` takes."""
        default = _field_default(f)
        base = default.to_dict() if isinstance(default, Checked) else {}
        path = self._name(f.name)
        try:
            return build(cls, {**base, **data}, path)
        except ConfigError as exc:
            message, own = str(exc), f"{cls.SECTION}."
            raise ConfigError(path + message[len(own) - 1 :] if message.startswith(own) else message) from None

    def _name(self, field_name: str) -> str:
        return f"{self.SECTION}.{field_name}" if self.SECTION else field_name

    def _fail(self, field_name: str, allowed: str) -> typing.NoReturn:
        raise ConfigError(f"{self._name(field_name)} must be {allowed}; got {getattr(self, field_name)!r}")

    def check_range(
        self,
        name: str,
        low: float | None = None,
        high: float | None = None,
        *,
        low_open: bool = False,
        high_open: bool = False,
    ) -> None:
        """Fails with a ``ConfigError`` naming the field and the allowed range unless ``name``'s value lies in [low,
        high] (ends open where asked; None bounds and a None value pass)."""
        value = getattr(self, name)
        if value is None:
            return
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            if low is not None and high is not None:
                allowed = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
            elif low is not None:
                allowed = f"{'>' if low_open else '>='} {low}"
            else:
                allowed = f"{'<' if high_open else '<='} {high}"
            self._fail(name, allowed)

    def to_dict(self) -> dict[str, Any]:
        """The section as plain data: nested sections as dicts, tuples as lists."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Checked):
                value = value.to_dict()
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


def field_docs(cls: type) -> list[tuple[str, Any, str]]:
    """(name, default, doc) for every field of a config class, for ``pgrad list``; a nested section's
    fields as ``network.hidden_sizes`` with the defaults this class gives them."""
    rows = []
    for f in dataclasses.fields(cls):
        default = _field_default(f)
        if isinstance(default, Checked):
            for name, _, doc in field_docs(type(default)):
                rows.append((f"{f.name}.{name}", getattr(default, name), doc))
        else:
            rows.append((f.name, default, f.metadata.get("doc", "")))
    return rows


def _field_default(f: dataclasses.Field[Any]) -> Any:
    """A field's default value (a fresh one from its factory, for a list or a nested section)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"config field {f.name!r} has no default")


def _is_section(tp: Any) -> bool:
    """A nested config section: a ``Checked`` dataclass used as a field type."""
    return isinstance(tp, type) and issubclass(tp, Checked)


def section_paths(cls: type, name: str) -> list[str]:
    """Where the field ``name`` lives in ``cls``: ``["clip_eps"]``, ``["optimizer.learning_rate"]``,
    or several paths when two nested sections both have it (actor_critic's two optimizers)."""
    if name_in(cls, name):
        return [name]
    hints = typing.get_type_hints(cls)
    return [f"{section}.{name}" for section in _nested_names(cls) if name_in(hints[section], name)]


def _nested_names(cls: type) -> list[str]:
    """The nested sections of a config class (``network``, ``optimizer``, ...)."""
    hints = typing.get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls) if _is_section(hints[f.name])]


def build(cls: type, data: dict[str, Any], section: str) -> Any:
    """Construct ``cls`` from a mapping, rejecting unknown keys with a suggestion."""
    if not isinstance(data, dict):
        raise ConfigError(f"section '{section}' must be a mapping of key: value; got {data!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            hint = difflib.get_close_matches(str(key), names, n=1)
            suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
            raise ConfigError(f"unknown key '{section}.{key}'{suggestion} (allowed: {', '.join(names)})")
    return cls(**data)


# Environment kwargs are copied into config.yaml and every checkpoint's state.json: a bound on
# their size keeps a shared reference (a YAML alias, a list repeated in Python) from expanding there.
MAX_PLAIN_VALUES = 100_000


def check_plain_data(value: Any, name: str) -> None:
    """``value`` must be plain data that YAML and JSON both round-trip: text, numbers, true/false,
    null, lists and mappings with text keys, at most ``MAX_PLAIN_VALUES`` values in all. YAML's
    dates, ``!!binary`` and ``!!set`` (and tuples, bytes, objects from the Python API) are refused
    naming the field: a checkpoint could not save them, and the run would be lost at the first one."""
    count = 0
    stack: list[tuple[str, Any]] = [(name, value)]
    while stack:
        path, item = stack.pop()
        count += 1
        if count > MAX_PLAIN_VALUES:
            raise ConfigError(f"{name} must hold at most {MAX_PLAIN_VALUES} values (are YAML aliases expanding?)")
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise ConfigError(f"{path} must have text keys; got key {key!r}")
                stack.append((f"{path}.{key}", child))
        elif isinstance(item, list):
            stack.extend((f"{path}[{index}]", child) for index, child in enumerate(item))
        elif item is not None and not isinstance(item, (str, bool, int, float)):
            is_date = type(item).__name__ in ("date", "datetime")
            kind = {"bytes": "binary data", "set": "a set"}.get(type(item).__name__, f"a {type(item).__name__}")
            raise ConfigError(
                f"{path} must be plain data (text, number, true/false, null, list, mapping); got "
                + (f"a date {item} (quote it to keep it as text)" if is_date else f"{kind} {item!r}")
            )


# --------------------------------------------------------------------------------------------
# sections nested in the algorithms' configs: the network and the optimizer
# --------------------------------------------------------------------------------------------


# The hidden activations a network section takes: torch.nn class names (``nn.GELU``), and the lower-case
# ``tanh``/``relu`` spellings configs have always used. A fixed list, so this module needs no torch
# (tests/test_nets_custom.py holds every name to a class of torch.nn that builds).
Activation = Literal[
    "tanh",
    "relu",
    "Tanh",
    "ReLU",
    "ReLU6",
    "LeakyReLU",
    "ELU",
    "SELU",
    "CELU",
    "GELU",
    "SiLU",
    "Mish",
    "Softplus",
    "Softsign",
    "Sigmoid",
    "Hardtanh",
    "Hardswish",
    "Hardsigmoid",
    "Tanhshrink",
    "LogSigmoid",
]
ACTIVATIONS: tuple[str, ...] = typing.get_args(Activation)

# 'package.module:Class' (the Class may be nested: 'package.module:Outer.Inner'), as env entry points.
_CLASS_ENTRY_POINT = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def class_entry_point(cls: type) -> str:
    """``'module:QualName'`` for a class that can be imported back by that name (what ``network.torso``
    records); a class defined inside a function (``<locals>`` in its name) cannot be, and is one line. A class
    of the script being run (``__main__:Class``) is found while that script runs, as SB3 scripts define their
    extractors; ``pgrad resume``/``eval``/``export`` from the command line need it in an importable module."""
    name = f"{cls.__module__}:{cls.__qualname__}"
    if not _CLASS_ENTRY_POINT.fullmatch(name):
        raise ConfigError(
            f"network.torso: class {cls.__qualname__} of module {cls.__module__} cannot be imported back by name "
            "(define it at the top level of a module, not inside a function)"
        )
    return name


@dataclass(frozen=True)
class NetworkConfig(Checked):
    """The actor-critic MLP: every algorithm's ``network`` section (``--set network.hidden_sizes=[128,128]``)."""

    SECTION: ClassVar[str] = "network"

    hidden_sizes: tuple[int, ...] = param(
        (64, 64), "MLP hidden layer sizes (may be [] with network.recurrent: the core reads the observation itself)"
    )
    activation: Activation = param("tanh", "hidden activation: a torch.nn class name (GELU, SiLU, ...) or tanh/relu")
    shared_network: bool = param(False, "share the MLP torso between actor and critic")
    log_std_init: float = param(0.0, "initial log std of Gaussian policies")
    state_dependent_std: bool = param(
        False, "Gaussian log std from the policy head (clamped) instead of a free parameter"
    )
    torso: str | None = param(
        None,
        "custom feature extractor 'package.module:Class': Class(observation_space, **torso_kwargs) with features_dim "
        "(SB3's BaseFeaturesExtractor); hidden_sizes and the heads go on top (imported: --trust-env-code for a "
        "received run)",
    )
    torso_kwargs: dict[str, Any] = param({}, "keyword arguments of network.torso's class")
    recurrent: Literal["lstm", "gru"] | None = param(
        None, "a recurrent core after the torso: lstm or gru (None: feed-forward); PPO, A2C, IMPALA (pgrad.recurrent)"
    )
    recurrent_size: int = param(64, "units of the recurrent core (network.recurrent)")
    recurrent_shared: bool = param(False, "actor and critic share one torso and recurrent core (else one each)")
    recurrent_head_sizes: tuple[int, ...] = param(
        (),
        "hidden layers between the recurrent core and each head, one MLP for the policy and one for the value "
        "(sb3-contrib's net_arch after its LSTM; [] : the heads read the core directly)",
    )
    sequence_length: int = param(
        16, "recurrent training sequences: steps per chunk (divides num_steps; minibatch_size is whole chunks)"
    )
    burn_in: int = param(
        0, "recurrent PPO: the first burn_in steps of each chunk only warm the state (no loss, no gradient)"
    )

    def __post_init__(self) -> None:
        """A class given as ``torso`` (Python API) is recorded as its 'module:Class' name, then every field is
        checked."""
        if isinstance(self.torso, type):
            object.__setattr__(self, "torso", class_entry_point(self.torso))
        super().__post_init__()

    def validate(self) -> None:
        """Checks hidden_sizes: 1 to ``MAX_LAYERS`` layers of 1 to ``MAX_LAYER_WIDTH`` units, at most
        ``MAX_HIDDEN_WEIGHTS`` weights between them; torso is 'module:Class' and torso_kwargs plain data."""
        sizes = self.hidden_sizes
        fewest = 0 if self.recurrent is not None else 1  # a recurrent core can read the observation itself
        if (
            len(sizes) < fewest
            or len(sizes) > MAX_LAYERS
            or min(sizes, default=1) < 1
            or max(sizes, default=1) > MAX_LAYER_WIDTH
        ):
            self._fail("hidden_sizes", f"a list of {fewest} to {MAX_LAYERS} integers in [1, {MAX_LAYER_WIDTH}]")
        heads = self.recurrent_head_sizes
        if len(heads) > MAX_LAYERS or min(heads, default=1) < 1 or max(heads, default=1) > MAX_LAYER_WIDTH:
            self._fail("recurrent_head_sizes", f"a list of 0 to {MAX_LAYERS} integers in [1, {MAX_LAYER_WIDTH}]")
        if heads and self.recurrent is None:
            self._fail("recurrent_head_sizes", "[] unless network.recurrent is set (the layers would be unused)")
        if sum(a * b for a, b in zip(sizes, sizes[1:], strict=False)) > MAX_HIDDEN_WEIGHTS:
            self._fail("hidden_sizes", f"layers with at most {MAX_HIDDEN_WEIGHTS} weights between them in all")
        check_torso(self.torso, self.torso_kwargs)
        self.check_range("recurrent_size", 1, MAX_LAYER_WIDTH)
        self.check_range("sequence_length", 1, MAX_LAYER_WIDTH)
        self.check_range("burn_in", 0, self.sequence_length, high_open=True)


def check_torso(torso: str | None, torso_kwargs: dict[str, Any]) -> None:
    """``network.torso`` is None or 'package.module:Class'; ``network.torso_kwargs`` plain data, and only with a
    torso (they would be ignored)."""
    if torso is not None and not _CLASS_ENTRY_POINT.fullmatch(torso):
        raise ConfigError(f"network.torso must be null or 'package.module:Class'; got {torso!r}")
    if torso is None and torso_kwargs:
        raise ConfigError(f"network.torso_kwargs: set network.torso too (these would be unused); got {torso_kwargs!r}")
    check_plain_data(torso_kwargs, "network.torso_kwargs")


@dataclass(frozen=True)
class OptimizerConfig(Checked):
    """One optimizer: every algorithm's ``optimizer`` section (actor_critic and reinforce also have
    ``critic_optimizer`` / ``value_optimizer``; TRPO and NPG only ``value_optimizer``)."""

    SECTION: ClassVar[str] = "optimizer"

    kind: Literal["adam", "rmsprop"] = param("adam", "adam, or rmsprop (SB3's A2C and the A3C paper)")
    learning_rate: float = param(3e-4, "learning rate (the initial value when annealed)")
    anneal_lr: bool = param(False, "anneal the learning rate linearly to 0 over run.total_steps")
    eps: float = param(1e-5, "epsilon added to the denominator (1e-5, not torch's 1e-8, as in the baselines)")
    rms_alpha: float = param(0.99, "RMSprop smoothing constant (kind rmsprop only)")

    def validate(self) -> None:
        """Checks the learning rate and eps are positive and rms_alpha lies in (0, 1)."""
        self.check_range("learning_rate", 0, low_open=True)
        self.check_range("eps", 0, low_open=True)
        self.check_range("rms_alpha", 0, 1, low_open=True, high_open=True)


@dataclass(frozen=True)
class OffPolicyLoopConfig(Checked):
    """The replay buffer and the collect/update schedule. Defaults are SB3's (``OffPolicyAlgorithm``
    and each of SAC/TD3/DDPG: buffer_size 1e6, batch_size 256, learning_starts 100, train_freq 1, one
    gradient step per env step). ``gradient_steps=-1`` (the default) is SB3's -1: as many gradient
    steps as env steps in the round (``train_freq x env.num_envs``), so the update-to-data ratio stays 1
    when a user raises ``env.num_envs``; with SB3's single env it is SB3's ``gradient_steps=1``."""

    SECTION: ClassVar[str] = "loop"

    buffer_size: int = param(1_000_000, "replay capacity in transitions (SB3: 1e6)")
    save_buffer: bool = param(
        True,
        "save the replay buffer with every checkpoint (safetensors), so resume is exact; false for very large "
        "buffers: a resume then refills it before updating again, and says so",
    )
    batch_size: int = param(256, "transitions per gradient step, drawn uniformly with replacement (SB3: 256)")
    learning_starts: int = param(
        100, "env steps (all envs together) of uniformly random actions before the first update (SB3: 100)"
    )
    train_freq: int = param(1, "env steps per env between two rounds of updates (SB3: 1)")
    gradient_steps: int = param(
        -1, "gradient steps per round of updates; -1: one per env step of the round, train_freq x num_envs (SB3's -1)"
    )
    log_every: int = param(
        1000, "env steps between two rows of metrics; the guard judges each row (alerts, rollback, evaluation)"
    )
    replay: Literal["uniform", "prioritized"] = param(
        "uniform", "uniform sampling (SB3), or prioritized: P(i) ~ (|TD error| + eps)^alpha (Schaul et al., 2016)"
    )
    priority_alpha: float = param(0.6, "prioritized replay: exponent alpha of the priorities (0: uniform; PER: 0.6)")
    priority_beta: float = param(
        0.4, "prioritized replay: importance-weight exponent beta at the start, annealed linearly to 1 (PER: 0.4)"
    )
    priority_beta_end: float = param(1.0, "prioritized replay: fraction of run.total_steps at which beta reaches 1")
    priority_eps: float = param(1e-6, "prioritized replay: p_i = |TD error| + eps, so no row becomes undrawable")
    # recurrent SAC (network.recurrent, pgrad.sequence_replay): R2D2's sequences of burn_in + sequence_length steps
    burn_in: int = param(
        8, "recurrent: steps at a replayed sequence's start that only unroll the networks (no loss), as R2D2"
    )
    sequence_stride: int = param(
        8, "recurrent: env steps between two stored sequences' starts (< burn_in + sequence_length: they overlap)"
    )
    recurrent_state: Literal["stored", "zero"] = param(
        "stored", "recurrent: a replayed sequence starts from the state the actor had (stored) or from zeros (zero)"
    )
    # SAC's Retrace(lambda) critic target (pgrad.algos.retrace_sac): replayed sequences with behaviour log-probs
    q_target: Literal["one_step", "retrace"] = param(
        "one_step",
        "sac: the critic's target: SAC's one-step soft TD target, or retrace: Retrace(lambda) over loop.retrace_steps "
        "replayed steps with the behaviour policy's stored log-probabilities (Munos et al., 2016)",
    )
    retrace_lambda: float = param(1.0, "retrace: lambda of the traces c_t = lambda min(1, pi/mu), in [0, 1]")
    retrace_steps: int = param(
        5, "retrace: steps n of each replayed sequence: Q(s_0, a_0)'s target reads r_0 .. r_(n-1), bootstraps at s_n"
    )

    def validate(self) -> None:
        """Checks the buffer, batch and schedule ranges; gradient_steps is -1 (one per env step of the round) or at
        least 1; the priority exponents in [0, 1], eps > 0."""
        self.check_range("buffer_size", 1, MAX_BUFFER_SIZE)
        self.check_range("batch_size", 1, MAX_BATCH)
        self.check_range("learning_starts", 0)
        self.check_range("train_freq", 1, MAX_WINDOW)
        if self.gradient_steps != -1 and not 1 <= self.gradient_steps <= MAX_WINDOW:
            self._fail("gradient_steps", f"-1 (one per env step of the round) or an integer >= 1, at most {MAX_WINDOW}")
        self.check_range("log_every", 1)
        self.check_range("priority_alpha", 0, 1)
        self.check_range("priority_beta", 0, 1)
        self.check_range("priority_beta_end", 0, 1)
        self.check_range("priority_eps", 0, 1, low_open=True)
        self.check_range("burn_in", 0, MAX_WINDOW)
        self.check_range("sequence_stride", 1, MAX_WINDOW)
        self.check_range("retrace_lambda", 0, 1)
        self.check_range("retrace_steps", 1, MAX_WINDOW)


# --------------------------------------------------------------------------------------------
# shared sections: environment and run
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RandomizeConfig(Checked):
    """Domain randomisation of a MuJoCo env (``env.randomize``, ``--set randomize.mass=0.2``): physical
    parameters redrawn at every episode reset, observation noise and action delay. Off by default.

    A scale field is a half-width ``w``, each element drawn from U(1 - w, 1 + w) (0: off), or an explicit
    range ``[low, high]`` (``[1.3, 1.3]``: a fixed scale, as ``pgrad eval --randomize mass=1.3`` uses).
    Scales multiply the model's nominal values, read once when the env is built. The usual sim-to-real
    recipe: mass 0.2, friction 0.5 (``pgrad.envs.randomize``)."""

    SECTION: ClassVar[str] = "randomize"

    mass: float | tuple[float, ...] = param(
        0.0, "body-mass scale half-width (0.2: +-20 %) or [low, high]; each body independently, inertia with it"
    )
    friction: float | tuple[float, ...] = param(
        0.0, "friction scale half-width (0.5: +-50 %) or [low, high]; each geom's coefficients independently"
    )
    damping: float | tuple[float, ...] = param(
        0.0, "joint-damping scale half-width (or [low, high]); each degree of freedom independently"
    )
    actuator_gain: float | tuple[float, ...] = param(
        0.0, "actuator gear (torque per unit of control) scale half-width (or [low, high]); each actuator"
    )
    obs_noise: float = param(0.0, "std of Gaussian noise added to every observation, every step (obs units)")
    action_delay: int | tuple[int, ...] = param(
        0, "action delay in steps: each episode draws k from {0..action_delay} (or [low, high]); 0: off"
    )
    curriculum_steps: int = param(
        0, "widen the ranges linearly from curriculum_start to full over this many env steps (0: full at once)"
    )
    curriculum_start: float = param(0.0, "fraction of the full ranges at step 0 when curriculum_steps > 0")

    SCALES: ClassVar[tuple[str, ...]] = ("mass", "friction", "damping", "actuator_gain")

    def validate(self) -> None:
        """Checks each physical scale is a half-width in [0, 1) or a range 0 < low <= high, the observation noise,
        the action delay range and the curriculum."""
        for name in self.SCALES:
            value = getattr(self, name)
            fits = len(value) == 2 and 0 < value[0] <= value[1] if isinstance(value, tuple) else 0 <= value < 1
            if not fits:  # a scale of 0 or below would zero a mass or flip a friction
                self._fail(name, "a half-width in [0, 1) or a range [low, high] with 0 < low <= high")
        self.check_range("obs_noise", 0)
        low, high = self.delay_range() if isinstance(self.action_delay, int) or len(self.action_delay) == 2 else (1, 0)
        if not 0 <= low <= high <= MAX_ACTION_DELAY:  # every env keeps the last `high` actions
            allowed = "a step count >= 0 or a range [low, high] with 0 <= low <= high"
            self._fail("action_delay", f"{allowed}, at most {MAX_ACTION_DELAY}")
        self.check_range("curriculum_steps", 0)
        self.check_range("curriculum_start", 0, 1)

    def scale_range(self, name: str) -> tuple[float, float]:
        """The full [low, high] of one scale parameter (``SCALES``): (1, 1) when off."""
        value = getattr(self, name)
        if isinstance(value, tuple):
            return float(value[0]), float(value[1])
        return 1.0 - value, 1.0 + value

    def delay_range(self) -> tuple[int, int]:
        """The action delay as (low, high) steps: a range as given, a single count n as (0, n)."""
        if isinstance(self.action_delay, tuple):
            return int(self.action_delay[0]), int(self.action_delay[1])
        return 0, int(self.action_delay)

    @property
    def active(self) -> list[str]:
        """The fields that change anything (a scale range other than [1, 1], noise, a delay)."""
        on = [name for name in self.SCALES if self.scale_range(name) != (1.0, 1.0)]
        if self.obs_noise > 0:
            on.append("obs_noise")
        if self.delay_range() != (0, 0):
            on.append("action_delay")
        return on


@dataclass(frozen=True)
class EnvConfig(Checked):
    """Which environment, how many copies, and how observations/rewards/actions are treated."""

    SECTION: ClassVar[str] = "env"

    id: str = param("CartPole-v1", "Gymnasium id (e.g. CartPole-v1) or entry point 'module:Class'")
    num_envs: int = param(8, "number of parallel environment copies")
    vectorization: Literal["auto", "sync", "async", "native"] = param(
        "auto", "auto: the env's own vectorised version if it has one, else sync"
    )
    norm_obs: bool = param(False, "normalise observations by running mean/std (frozen at eval)")
    norm_reward: bool = param(False, "scale rewards by the running std of the discounted return")
    clip_obs: float = param(10.0, "clip normalised observations to [-clip_obs, clip_obs]")
    clip_reward: float = param(10.0, "clip scaled rewards to [-clip_reward, clip_reward]")
    rescale_actions: bool = param(
        True, "Box actions: policy acts in [-1, 1], mapped linearly to the bounds, then clipped"
    )
    max_episode_steps: int | None = param(None, "override the env's time limit (truncation)")
    kwargs: dict[str, Any] = param({}, "keyword arguments passed to the environment constructor")
    randomize: RandomizeConfig = param(RandomizeConfig(), "domain randomisation (MuJoCo envs only)")
    mask_velocity: bool = param(
        False,
        "hide the velocities (set them to 0): a partially observed env for recurrent policies (pgrad.envs.partial)",
    )
    mask_indices: tuple[int, ...] | None = param(
        None, "with mask_velocity: the flat observation entries to hide (None: pgrad's table for known envs)"
    )

    def validate(self) -> None:
        """Checks the env id is not blank, the env count (async allows fewer), the clip ranges, the episode cap and
        that kwargs are plain data."""
        if not self.id.strip():
            self._fail("id", "a Gymnasium id or 'module:Class'")
        self.check_range("num_envs", 1, MAX_ASYNC_ENVS if self.vectorization == "async" else MAX_NUM_ENVS)
        self.check_range("clip_obs", 0, low_open=True)
        self.check_range("clip_reward", 0, low_open=True)
        self.check_range("max_episode_steps", 1)
        check_plain_data(self.kwargs, "env.kwargs")
        if self.mask_indices is not None and (not self.mask_velocity or min(self.mask_indices, default=-1) < 0):
            self._fail("mask_indices", "null, or indices >= 0 with env.mask_velocity true")


@dataclass(frozen=True)
class RunConfig(Checked):
    """Length of the run, seeding, threads, checkpoints and logging."""

    SECTION: ClassVar[str] = "run"

    total_steps: int = param(100_000, "environment steps to train for (all envs together)")
    seed: int = param(1, "seed for Python, NumPy, torch and the environments")
    torch_threads: int = param(1, "torch intra-op threads (1 is fastest for small networks)")
    checkpoint_every: int = param(25_000, "write a checkpoint every this many env steps")
    keep_checkpoints: int = param(3, "how many recent checkpoints to keep (the best is kept too)")
    episode_window: int = param(20, "recent episodes used for return statistics")
    progress: bool = param(True, "show a progress bar on a terminal")
    tensorboard: bool = param(True, "write TensorBoard event files when tensorboard is installed")
    wandb: bool = param(False, "send metrics to Weights & Biases (needs wandb; project: WANDB_PROJECT or pgrad)")
    mlflow: bool = param(False, "send metrics and the config to MLflow (needs mlflow; MLFLOW_TRACKING_URI)")
    device: str = param("cpu", "torch device of the learner: cpu, cuda or cuda:N (acting stays NumPy on the CPU)")
    backend: Literal["local", "ray"] = param(
        "local",
        "where rollouts are collected: local (this process's vector env) or ray (rollout workers as Ray actors, "
        "the ray section; needs pgrad[ray])",
    )

    def validate(self) -> None:
        """Checks the device (CUDA only where torch sees one), the step total, seed, threads, checkpoint and
        episode-window ranges."""
        if not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            self._fail("device", "'cpu', 'cuda' or 'cuda:N'")
        if self.device != "cpu":
            import torch  # only for a CUDA device: keep torch out of plain config parsing

            if not torch.cuda.is_available():
                self._fail("device", "'cpu' here (torch.cuda.is_available() is false: no GPU or a CPU-only torch)")
        self.check_range("total_steps", 1)
        self.check_range("seed", 0, 2**32 - 1)  # NumPy's seed range
        self.check_range("torch_threads", 1, MAX_THREADS)
        self.check_range("checkpoint_every", 1)
        self.check_range("keep_checkpoints", 1, 10_000)
        self.check_range("episode_window", 1, MAX_WINDOW)


@dataclass(frozen=True)
class RayConfig(Checked):
    """Rollout workers on Ray (``run.backend: ray``): how many, where, and how failures are handled.

    Each worker is a Ray actor holding its own vector env of ``env.num_envs`` copies and the acting policy; the
    learner, the run folder, the checkpoints and the guard stay in the training process."""

    SECTION: ClassVar[str] = "ray"

    workers: int = param(2, "rollout workers (Ray actors), each with env.num_envs environment copies")
    address: str | None = param(
        None, "HOST:PORT of a running Ray cluster to join (None: start a local Ray for the run, shut down after)"
    )
    num_cpus: int | None = param(None, "CPUs of the local Ray started for the run (None: one per worker)")
    worker_cpus: float = param(1.0, "CPUs each worker reserves in Ray's scheduler (0: no reservation)")
    connect_timeout_s: float = param(
        60.0,
        "seconds to join ray.address (or start the local Ray) before the run stops with one line; Ctrl-C works "
        "while it waits",
    )
    call_timeout_s: float = param(
        120.0, "seconds a call to a worker (a rollout, its state) may take before the worker counts as failed"
    )
    max_worker_restarts: int = param(
        3, "worker failures replaced per run; one more stops the run with a checkpoint and a ray.workers_lost event"
    )

    def validate(self) -> None:
        """Checks the worker count, the address (HOST:PORT, 'auto' or null), the CPUs, the timeouts and the restart
        cap."""
        self.check_range("workers", 1, MAX_RAY_WORKERS)
        if self.address is not None and not re.fullmatch(r"[^\s:]+:\d{1,5}|auto", self.address):
            self._fail("address", "HOST:PORT (e.g. 127.0.0.1:6379), 'auto' or null")
        self.check_range("num_cpus", 1, 64 * MAX_RAY_WORKERS)
        self.check_range("worker_cpus", 0, 1024)
        self.check_range("connect_timeout_s", 0, low_open=True)
        self.check_range("call_timeout_s", 0, low_open=True)
        self.check_range("max_worker_restarts", 0)


@dataclass(frozen=True)
class GuardConfig(Checked):
    """The production guard: alert thresholds, recovery actions, periodic evaluation, fault drills."""

    SECTION: ClassVar[str] = "guard"

    enabled: bool = param(True, "check alert rules and take recovery actions after every update")
    warmup_updates: int = param(10, "updates before the 'after warm-up' rules (low clip fraction, low EV) apply")
    warmup_fraction: float = param(
        0.1, "share of run.total_steps before the 'after warm-up' rules apply (as well as warmup_updates)"
    )
    history_window: int = param(20, "updates in the running medians (gradient norm, steps/s, clip fraction, EV)")
    kl_warning: float = param(0.05, "approx KL above this: warning")
    kl_critical: float = param(0.1, "approx KL above this: critical (rollback when rollback_on_kl)")
    clip_fraction_high: float = param(0.5, "clip fraction above this: warning")
    clip_fraction_low: float = param(0.05, "clip fraction below this after warm-up: warning")
    explained_variance_low: float = param(
        0.3, "median explained variance over history_window below this after warm-up: warning"
    )
    flat_return_cv: float = param(
        0.05, "episode-return std under this x |mean|: returns too flat for explained variance to mean anything"
    )
    entropy_collapse: float = param(0.5, "entropy below this fraction of its starting value: warning")
    log_std_min: float = param(-5.0, "mean Gaussian log-std below this: warning")
    grad_norm_spike: float = param(10.0, "gradient norm above this multiple of its running median: warning")
    update_spike: float = param(
        25.0,
        "an update that moves a parameter group (per unit of clipped gradient) more than this multiple of its "
        "running median (and of its spread): critical (rollback when rollback_on_update_spike). Measured: healthy "
        "runs <= 7x (PPO, TRPO), <= 22x (A2C); a 100x learning-rate spike 33-118x",
    )
    sps_drop: float = param(0.5, "steps/s down more than this fraction from its running median: info event")
    sps_sustain: int = param(5, "updates the steps/s drop must last (their median is compared)")
    snapshot_every: int = param(
        2048, "capture the state a rollback returns to at most every this many env steps (confirmed by the next update)"
    )
    rollback_on_kl: bool = param(True, "on critical KL, restore the last healthy checkpoint and cut the lr")
    rollback_on_update_spike: bool = param(
        True, "on a critical update-size spike, restore the last healthy state and cut the lr"
    )
    lr_cut: float = param(0.5, "learning-rate multiplier applied by every rollback")
    lr_cut_duration: float = param(
        0.1,
        "the first rollback's cut lasts this fraction of run.total_steps, then the rate is restored (a one-off "
        "fault); after a second recovery every cut stays (0: cuts always stay)",
    )
    max_recoveries: int = param(3, "rollbacks allowed per run; one more stops the run with a report")
    skip_nonfinite: bool = param(True, "skip optimizer steps whose gradients hold NaN/Inf")
    nonfinite_window: int = param(100, "recent optimizer steps over which non-finite ones are counted")
    nonfinite_halt: float = param(0.01, "halt when more than this fraction of that window was non-finite (1: never)")
    dump_episodes: int = param(100, "recent trajectories written to the run folder when the run halts")
    eval_every: int = param(25_000, "evaluate every this many env steps on separate envs (0: off)")
    eval_episodes: int = param(5, "episodes per evaluation (deterministic policy, frozen normaliser)")
    eval_max_steps: int = param(
        1000,
        "step cap of one evaluation episode when the env has no time limit (env.max_episode_steps or its "
        "registered limit wins); a capped episode counts as truncated, so no evaluation loops forever",
    )
    eval_min_return: float | None = param(None, "evaluation return below this is a collapse (None: off)")
    eval_max_drop: float | None = param(
        0.5, "evaluation return below best - eval_max_drop x |best| is a collapse (None: off)"
    )
    eval_noise_z: float = param(
        3.0,
        "a drop counts only beyond this many standard errors of the two evaluations' means "
        "(std of the episode returns / sqrt(episodes)): noise is not a collapse",
    )
    eval_needs_train_drop: bool = param(
        True,
        "count an evaluation drop as a collapse only while the training return is below its level at the "
        "reference evaluation too (a deterministic evaluation can swing while the policy improves)",
    )
    eval_collapse_span: float = param(
        1.0,
        "reload only a collapse that lasted this fraction of eval_every (every evaluation in between collapsed): "
        "a dip the run climbs out of by itself is not worth a reload and a cut learning rate",
    )
    eval_recheck: float = param(
        0.1,
        "evaluate early, at most every this fraction of eval_every, to confirm a new best, to settle a collapse, or "
        "when the training return fell below half its level at the confirmed best (0: only on schedule)",
    )
    eval_patience: int = param(2, "consecutive collapsed evaluations before reloading the best checkpoint")
    rollback_on_eval: bool = param(True, "on an evaluation collapse, reload the best checkpoint and cut the lr")
    q_bound_factor: float = param(
        2.0,
        "off-policy: |Q| above this x r_max / (1 - gamma) (r_max: largest |reward| stored) is critical, a diverging "
        "critic (rollback when rollback_on_q_divergence); the margin covers SAC's entropy bonus",
    )
    rollback_on_q_divergence: bool = param(
        True,
        "off-policy: on a critical Q divergence (or a D4PG critic's cross-entropy divergence), restore the last "
        "healthy state and cut the lr",
    )
    q_growth: float = param(2.0, "off-policy: |Q mean| growing this many times per row for q_growth_rows rows: warning")
    q_growth_rows: int = param(4, "off-policy: consecutive rows of q_growth that make the geometric-growth warning")
    td_error_spike: float = param(
        10.0, "off-policy: mean |TD error| above this x its running median (and MAD): warning"
    )
    alpha_min: float = param(1e-5, "SAC: learned temperature below this: warning (collapsed)")
    alpha_max: float = param(100.0, "SAC: learned temperature above this: warning (exploding)")
    inject: tuple[str, ...] = param((), "fault drills KIND@STEP[:DURATION]: lr_spike, nan_grad, reward_flip")
    lr_spike_factor: float = param(100.0, "learning-rate multiplier of the lr_spike drill")

    def validate(self) -> None:
        """Checks every threshold's range (critical levels above warning ones, lows below highs) and that each
        ``inject`` drill parses."""
        self.check_range("warmup_updates", 0)
        self.check_range("warmup_fraction", 0, 1)
        self.check_range("history_window", 5, MAX_WINDOW)
        self.check_range("kl_warning", 0, low_open=True)
        self.check_range("kl_critical", self.kl_warning, low_open=True)
        self.check_range("clip_fraction_high", 0, 1)
        self.check_range("clip_fraction_low", 0, self.clip_fraction_high)
        self.check_range("entropy_collapse", 0, 1)
        self.check_range("grad_norm_spike", 1, low_open=True)
        self.check_range("update_spike", 1, low_open=True)
        self.check_range("sps_drop", 0, 1, low_open=True, high_open=True)
        self.check_range("sps_sustain", 1, MAX_WINDOW)
        self.check_range("flat_return_cv", 0)
        self.check_range("eval_noise_z", 0)
        self.check_range("lr_cut", 0, 1, low_open=True)
        self.check_range("lr_cut_duration", 0, 1)
        self.check_range("snapshot_every", 1)
        self.check_range("max_recoveries", 0)
        self.check_range("nonfinite_window", 1, MAX_WINDOW)
        self.check_range("nonfinite_halt", 0, 1)
        self.check_range("dump_episodes", 0, 10_000)  # whole trajectories, kept in memory
        self.check_range("eval_every", 0)
        self.check_range("eval_episodes", 1, MAX_WINDOW)
        self.check_range("eval_max_steps", 1)
        self.check_range("eval_max_drop", 0, 1, low_open=True)
        self.check_range("eval_patience", 1, MAX_WINDOW)
        self.check_range("eval_recheck", 0, 1)
        self.check_range("eval_collapse_span", 0)
        self.check_range("lr_spike_factor", 0, low_open=True)
        self.check_range("q_bound_factor", 1, low_open=True)
        self.check_range("q_growth", 1, low_open=True)
        self.check_range("q_growth_rows", 1, MAX_WINDOW)
        self.check_range("td_error_spike", 1, low_open=True)
        self.check_range("alpha_min", 0)
        self.check_range("alpha_max", self.alpha_min, low_open=True)
        for text in self.inject:
            try:
                parse_fault(text)
            except ValueError as exc:
                raise ConfigError(f"guard.inject: {exc}") from None


# --------------------------------------------------------------------------------------------
# the whole run
# --------------------------------------------------------------------------------------------


# Algorithms whose learner and loop carry a recurrent state (network.recurrent), on the local backend; and those
# whose Ray actors carry it too (IMPALA's asynchronous actors store it with each rollout).
RECURRENT_ALGOS = ("ppo", "a2c", "impala", "sac")
RECURRENT_ON_RAY = ("impala",)
# The network's recurrent fields and the algorithms that read each (``pgrad list`` shows a field only under those):
# every recurrent algorithm reads the core's; PPO cuts rollouts into sequence_length chunks and SAC replays
# sequences of that many loss steps (A2C and IMPALA unroll each env's whole rollout as one sequence); SAC's actor and
# critics always have cores of their own (no recurrent_shared).
RECURRENT_FIELDS: dict[str, tuple[str, ...]] = {
    "network.recurrent": RECURRENT_ALGOS,
    "network.recurrent_size": RECURRENT_ALGOS,
    "network.recurrent_shared": ("ppo", "a2c", "impala"),
    "network.recurrent_head_sizes": ("ppo", "a2c", "impala"),
    "network.sequence_length": ("ppo", "sac"),
    "network.burn_in": ("ppo",),
    # recurrent SAC's sequence replay (the off-policy loop section is shared by sac, td3, ddpg and d4pg)
    "loop.burn_in": ("sac",),
    "loop.sequence_stride": ("sac",),
    "loop.recurrent_state": ("sac",),
    # SAC's Retrace target (the deterministic actors have no log-probabilities to correct with)
    "loop.q_target": ("sac",),
    "loop.retrace_lambda": ("sac",),
    "loop.retrace_steps": ("sac",),
}


def listed_fields(algo: str, cls: type) -> list[tuple[str, Any, str]]:
    """``field_docs`` of algorithm ``algo``'s section as ``pgrad list`` and the docs show it: the network's recurrent
    fields only for the algorithms that read them (``RECURRENT_FIELDS``)."""
    rows = []
    for name, default, doc in field_docs(cls):
        if algo not in RECURRENT_FIELDS.get(name, (algo,)):
            continue
        rows.append((name, default, doc))
    return rows


def check_recurrent(config: TrainConfig) -> None:
    """``network.recurrent`` only where it is implemented: PPO, A2C and SAC collected locally; IMPALA local or on
    Ray."""
    network = getattr(config.algo_config, "network", None)
    loop = getattr(config.algo_config, "loop", None)
    if isinstance(loop, OffPolicyLoopConfig):
        check_sequence_loop(config.algo, loop, network, config.env.num_envs)
        check_retrace_loop(config.algo, loop, network, config.env.num_envs)
    burn_in = getattr(network, "burn_in", 0)
    if burn_in and (config.algo != "ppo" or getattr(network, "recurrent", None) is None):
        raise ConfigError(
            f"{config.algo}.network.burn_in must be 0 unless ppo.network.recurrent is set (recurrent PPO's chunks; "
            f"A2C and IMPALA unroll whole rollouts, SAC's is loop.burn_in); got {burn_in}"
        )
    if getattr(network, "recurrent", None) is None:
        return
    assert network is not None
    if config.algo not in RECURRENT_ALGOS:
        raise ConfigError(
            f"{config.algo}.network.recurrent must be null for {config.algo} (recurrent policies: "
            f"{', '.join(RECURRENT_ALGOS)}); got {network.recurrent!r}"
        )
    if config.run.backend != "local" and config.algo not in RECURRENT_ON_RAY:
        raise ConfigError(
            f"run.backend must be 'local' with network.recurrent for {config.algo} (recurrent on Ray: "
            f"{', '.join(RECURRENT_ON_RAY)}); got {config.run.backend!r}"
        )


def check_sequence_loop(algo: str, loop: OffPolicyLoopConfig, network: Any, num_envs: int) -> None:
    """The sequence replay's fields (``loop.burn_in``, ``sequence_stride``, ``recurrent_state``) only with
    ``network.recurrent`` (else they would be ignored); with it, sequences that overlap or touch, and a buffer
    that holds at least one sequence per env."""
    recurrent = getattr(network, "recurrent", None)
    if recurrent is None:
        for name in ("burn_in", "sequence_stride", "recurrent_state"):
            if getattr(loop, name) != getattr(OffPolicyLoopConfig, name):
                raise ConfigError(
                    f"{algo}.loop.{name} needs {algo}.network.recurrent (lstm or gru; it would be unused); "
                    f"got {getattr(loop, name)!r}"
                )
        return
    if loop.replay != "uniform":
        raise ConfigError(
            f"{algo}.loop.replay must be 'uniform' with network.recurrent (the sequence replay draws sequences "
            f"uniformly; prioritized sequences are not built); got {loop.replay!r}"
        )
    length = loop.burn_in + int(network.sequence_length)
    if loop.sequence_stride > length:
        raise ConfigError(
            f"{algo}.loop.sequence_stride must be at most burn_in + sequence_length = {length} (longer strides "
            f"would skip steps); got {loop.sequence_stride}"
        )
    if loop.buffer_size // num_envs < length + loop.sequence_stride + 1:
        raise ConfigError(
            f"{algo}.loop.buffer_size must hold at least burn_in + sequence_length + sequence_stride + 1 = "
            f"{length + loop.sequence_stride + 1} steps per env ({num_envs} envs); got {loop.buffer_size}"
        )


def check_retrace_loop(algo: str, loop: OffPolicyLoopConfig, network: Any, num_envs: int) -> None:
    """``loop.q_target=retrace`` only for feed-forward SAC with uniform replay (pgrad.algos.retrace_sac), its
    ``retrace_*`` fields only with it (else unused), and a buffer that holds a sequence per env."""
    if loop.q_target == "one_step":
        for name in ("retrace_lambda", "retrace_steps"):
            if getattr(loop, name) != getattr(OffPolicyLoopConfig, name):
                raise ConfigError(
                    f"{algo}.loop.{name} needs {algo}.loop.q_target=retrace (it would be unused); "
                    f"got {getattr(loop, name)!r}"
                )
        return
    problem = None
    if algo != "sac":
        problem = f"'one_step' for {algo} (retrace needs a stochastic policy's log-probabilities: sac)"
    elif getattr(network, "recurrent", None) is not None:
        problem = "'one_step' with network.recurrent (recurrent SAC's sequence replay has no Retrace target)"
    elif loop.replay != "uniform":
        problem = f"'one_step' with loop.replay={loop.replay} (retrace samples sequences uniformly)"
    if problem is not None:
        raise ConfigError(f"{algo}.loop.q_target must be {problem}; got 'retrace'")
    if loop.buffer_size // num_envs < loop.retrace_steps + 1:
        raise ConfigError(
            f"{algo}.loop.buffer_size must hold at least retrace_steps + 1 = {loop.retrace_steps + 1} steps per env "
            f"({num_envs} envs); got {loop.buffer_size}"
        )


@dataclass(frozen=True)
class TrainConfig:
    """An algorithm name plus its sections (env, run, the algorithm's, guard). Cross-section rules are checked here."""

    algo: str
    env: EnvConfig
    run: RunConfig
    algo_config: Any
    guard: GuardConfig = field(default_factory=GuardConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        check = getattr(self.algo_config, "check_with_env", None)
        if check is not None:
            # with Ray rollout workers the learner's batch has ray.workers x env.num_envs columns
            columns = self.env.num_envs * (self.ray.workers if self.run.backend == "ray" else 1)
            check(self.env if columns == self.env.num_envs else dataclasses.replace(self.env, num_envs=columns))
        check_recurrent(self)
        if getattr(self.algo_config, "needs_ray", False) and self.run.backend != "ray":
            raise ConfigError(
                f"run.backend must be 'ray' for {self.algo} (its actors run as Ray actors); got "
                f"{self.run.backend!r} (--backend ray)"
            )

    def to_dict(self) -> dict[str, Any]:
        """The whole config as plain data; the ray section only when the Ray backend is used or the section was set."""
        out = {
            "algo": self.algo,
            "env": self.env.to_dict(),
            "run": self.run.to_dict(),
            self.algo: self.algo_config.to_dict(),
            "guard": self.guard.to_dict(),
        }
        # The ray section only where it is used or set: the config.yaml and checkpoints of local runs stay as they
        # were (and readers that know only their own sections, the LM runs', read them as before).
        if self.run.backend == "ray" or self.ray != RayConfig():
            out["ray"] = self.ray.to_dict()
        return out

    def save(self, path: Path) -> None:
        """Write the config as YAML to ``path``, atomically and never through a link (``pgrad.safe_io``)."""
        safe_io.write_atomic(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


# config.yaml's record of what the run resolved when it was built (``pgrad.algos.numpy_grad.resolved_record``:
# the gradient backend that ``auto`` picked). A record, not an input: reading a config ignores it, so a resume
# or a new run from this file resolves again from the sections above it, exactly as before.
RESOLVED_SECTION = "resolved"


def append_resolved(path: Path, resolved: dict[str, str]) -> None:
    """Append the ``resolved:`` record under a saved config (see ``RESOLVED_SECTION``)."""
    with safe_io.open_append(path) as handle:
        handle.write("# resolved when the run was built; a record, not an input (loading ignores it)\n")
        handle.write(yaml.safe_dump({RESOLVED_SECTION: resolved}, sort_keys=False))


# A resolved config is a few kilobytes; the bound keeps a received config.yaml from being a memory bomb.
MAX_CONFIG_BYTES = 4 * 2**20
# Sections, then fields, then a list or mapping in env.kwargs: a few levels. YAML nested hundreds deep
# (a received config.yaml, a --set value) would exhaust Python's recursion limit inside PyYAML.
MAX_CONFIG_DEPTH = 32


class _PlainLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without aliases: ``*name`` repeats a node by reference, so a few hundred
    bytes of nested aliases (an "alias bomb") stand for gigabytes once written out as JSON in every
    checkpoint. A config file has no need for them; each is refused with its line and column."""

    depth = 0  # of the node being composed: PyYAML composes nested nodes by recursion

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, f"alias '*{event.anchor}' (aliases are not allowed in pgrad configs)", event.start_mark
            )
        if self.depth >= MAX_CONFIG_DEPTH:  # refused before Python's recursion limit turns it into a traceback
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None,
                None,
                f"nested deeper than {MAX_CONFIG_DEPTH} levels (a pgrad config needs a few)",
                event.start_mark,
            )
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def parse_yaml(text: str) -> Any:
    """YAML text to plain data, refusing aliases (see ``_PlainLoader``). Raises ``yaml.YAMLError``."""
    return yaml.load(text, Loader=_PlainLoader)  # a SafeLoader subclass: builds no Python objects


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML config file; a missing or malformed file is a ConfigError naming the problem."""
    try:
        # read at most one byte past the bound: a size from stat() says nothing of /dev/zero or a pipe
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file {path} is larger than {MAX_CONFIG_BYTES} bytes; pgrad reads at most {MAX_CONFIG_BYTES}"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start})"
        ) from None
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of sections; got {type(data).__name__}")
    for key, value in data.items():  # checked here: merging with other layers would drop `env: 5` silently
        if key != "algo" and value is not None and not isinstance(value, dict):
            raise ConfigError(f"section '{key}' in config file {path} must be a mapping of key: value; got {value!r}")
    return data


def parse_set(items: list[str], sections: dict[str, type]) -> dict[str, dict[str, Any]]:
    """Turn ``["clip_eps=0.1", "env.num_envs=4"]`` into ``{"ppo": {...}, "env": {...}}``.

    A bare key is looked up in every section (names are unique across sections), then in the
    nested sections of each (``hidden_sizes`` is ``ppo.network.hidden_sizes``); a nested section
    may be named without its owner (``network.hidden_sizes``). The value is read as YAML, so
    ``0.1`` is a number, ``true`` a bool, ``[64, 64]`` a list.
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value; got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = parse_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if "." in key:
            section, name = key.split(".", 1)
            if section not in sections:
                owners = [s for s, cls in sections.items() if section in _nested_names(cls)]
                if len(owners) != 1:
                    raise ConfigError(f"unknown section '{section}' in --set {key}; allowed: {', '.join(sections)}")
                section, name = owners[0], key
        else:
            owners = [s for s, cls in sections.items() if name_in(cls, key)]
            if owners:
                section, name = owners[0], key
            else:
                paths = [(s, path) for s, cls in sections.items() for path in section_paths(cls, key)]
                if not paths:
                    every = sorted({f.name for cls in sections.values() for f in dataclasses.fields(cls)})
                    hint = difflib.get_close_matches(key, every, n=1)
                    suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
                    raise ConfigError(f"unknown key '{key}' in --set{suggestion}")
                if len(paths) > 1:
                    choices = ", ".join(f"{s}.{path}" for s, path in paths)
                    raise ConfigError(f"key '{key}' in --set is ambiguous; use one of {choices}")
                section, name = paths[0]
        *parents, leaf = name.split(".")
        target = out.setdefault(section, {})
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return out


def name_in(cls: type, name: str) -> bool:
    """Whether the config class ``cls`` has a field called ``name``."""
    return any(f.name == name for f in dataclasses.fields(cls))


def merge(*layers: dict[str, Any]) -> dict[str, Any]:
    """Merge section mappings; later layers win key by key, at every depth (a preset's
    ``ppo.optimizer.learning_rate`` survives a ``--set ppo.optimizer.eps=...``)."""
    out: dict[str, Any] = {}
    for layer in layers:
        _merge_into(out, layer)
    return out


def _merge_into(target: dict[str, Any], layer: dict[str, Any]) -> None:
    for key, value in layer.items():
        if isinstance(value, dict):
            existing = target.get(key)
            if not isinstance(existing, dict):
                existing = target[key] = {}
            _merge_into(existing, value)
        else:
            target[key] = value
