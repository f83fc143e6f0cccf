"""``pgrad tune ALGO --env ENV --trials N``: hyper-parameter search on Optuna.

Each trial is an ordinary run folder (``TUNE_DIR/trial_000`` ...) trained by the algorithm's own
runner, guard included: ``pgrad report``, ``doctor``, ``eval`` and ``compare`` work on it. The
guard's periodic evaluations (deterministic episodes, every ``guard.eval_every`` steps; tuning sets
it to a fifth of the trial unless ``--set`` says otherwise) are reported to Optuna's pruner, which
may stop a trial that trails the others at the same step (the run then ends as after Ctrl-C, with a
checkpoint). A trial's value is its last evaluation's mean return. The sampler is TPE (seeded), the
pruner the median rule after ``PRUNER_STARTUP_TRIALS`` complete trials.

A sampled combination the config refuses (a minibatch larger than the batch) is skipped as pruned.
Writes ``trials.jsonl`` (one row per trial: number, state, value, params, run folder) and
``best.yaml``, a config file with the env, the ``--set`` values and the best trial's sampled values:
``pgrad train ALGO --config TUNE_DIR/best.yaml`` trains with them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from pgrad import safe_io
from pgrad.config import TrainConfig, merge, parse_set
from pgrad.errors import ConfigError, PgradError, TrainingHalted
from pgrad.registry import get_algorithm
from pgrad.runs import sections_for

DEFAULT_TRIAL_STEPS = 20_000  # per trial, when neither --total-steps nor the config says otherwise
EVALUATIONS_PER_TRIAL = 5  # guard.eval_every = total_steps / this, unless --set guard.eval_every=...
PRUNER_STARTUP_TRIALS = 3  # complete trials before the median rule prunes anything


@dataclass(frozen=True)
class Param:
    """One searched field: ``key`` as ``--set`` writes it (``ppo.optimizer.learning_rate``); ``log``
    draws uniformly in log space between ``low`` and ``high``; ``choices`` makes it categorical."""

    key: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if not self.choices and not self.low < self.high:
            raise ValueError(f"Param {self.key}: low must be below high (or give choices)")


# Ranges in the spirit of rl-baselines3-zoo's samplers; minibatch sizes and rollout lengths are powers
# of two so that every combination divides the batch (num_steps x num_envs, num_envs a power of two).
PPO_SPACE = (
    Param("ppo.optimizer.learning_rate", 1e-5, 3e-3, log=True),
    Param("ppo.num_steps", choices=(32, 64, 128, 256, 512)),
    Param("ppo.minibatch_size", choices=(32, 64, 128, 256)),
    Param("ppo.num_epochs", 3, 20, integer=True),
    Param("ppo.gamma", choices=(0.95, 0.98, 0.99, 0.995, 0.999)),
    Param("ppo.gae_lambda", choices=(0.8, 0.9, 0.95, 0.98, 1.0)),
    Param("ppo.clip_eps", choices=(0.1, 0.2, 0.3)),
    Param("ppo.ent_coef", 1e-8, 0.05, log=True),
)
A2C_SPACE = (
    Param("a2c.optimizer.learning_rate", 1e-5, 3e-3, log=True),
    Param("a2c.num_steps", choices=(5, 8, 16, 32, 64)),
    Param("a2c.gamma", choices=(0.95, 0.98, 0.99, 0.995, 0.999)),
    Param("a2c.gae_lambda", choices=(0.8, 0.9, 0.95, 0.98, 1.0)),
    Param("a2c.ent_coef", 1e-8, 0.05, log=True),
    Param("a2c.vf_coef", 0.2, 1.0),
)
SPACES = {"ppo": PPO_SPACE, "a2c": A2C_SPACE}


def search_space(algo: str) -> tuple[Param, ...]:
    """The algorithm's space; for one without its own, the learning rate and the discount where it has them."""
    if algo in SPACES:
        return SPACES[algo]
    defaults = get_algorithm(algo).config_cls()
    space = []
    if hasattr(defaults, "optimizer"):
        space.append(Param(f"{algo}.optimizer.learning_rate", 1e-5, 3e-3, log=True))
    if hasattr(defaults, "gamma"):
        space.append(Param(f"{algo}.gamma", choices=(0.95, 0.98, 0.99, 0.995, 0.999)))
    if not space:
        raise ConfigError(f"pgrad tune has no search space for algorithm '{algo}' (it has: {', '.join(SPACES)})")
    return tuple(space)


def set_keys(algo: str, sets: list[str]) -> set[str]:
    """The full keys ``--set`` items name, as the search space spells them: ``learning_rate=1e-3``
    is ``ppo.optimizer.learning_rate`` (``parse_set`` finds a bare key's section, as for train)."""

    def leaves(data: dict[str, Any], prefix: str) -> set[str]:
        keys: set[str] = set()
        for key, value in data.items():
            keys |= leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}"}
        return keys

    return leaves(parse_set(sets, sections_for(algo)), "")


def suggest(trial: Any, space: tuple[Param, ...]) -> dict[str, Any]:
    """Draw one value per parameter of the search space from an Optuna trial."""
    values: dict[str, Any] = {}
    for param in space:
        if param.choices:
            values[param.key] = trial.suggest_categorical(param.key, list(param.choices))
        elif param.integer:
            values[param.key] = trial.suggest_int(param.key, int(param.low), int(param.high), log=param.log)
        else:
            values[param.key] = trial.suggest_float(param.key, param.low, param.high, log=param.log)
    return values


def nested(values: dict[str, Any]) -> dict[str, Any]:
    """``{"ppo.optimizer.learning_rate": 1e-3}`` -> ``{"ppo": {"optimizer": {"learning_rate": 1e-3}}}``."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = out
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return out


def trial_sets(total_steps: int) -> list[str]:
    """What tuning sets before the user's --set: evaluations the pruner can read, no progress bars."""
    return [f"guard.eval_every={max(total_steps // EVALUATIONS_PER_TRIAL, 1)}", "run.progress=false"]


class PrunerReport:
    """A metrics sink that reports each evaluation to the Optuna trial (and a line to ``echo``) and, when the
    pruner says so, asks the runner to stop (at the end of this update, with a checkpoint, as Ctrl-C does)."""

    def __init__(self, trial: Any, runner: Any, echo: Callable[[str], None] | None = None) -> None:
        self.trial, self.runner, self.echo = trial, runner, echo
        self.last_evaluation: float | None = None
        self.pruned = False

    def write(self, metrics: dict[str, Any]) -> None:
        """The MetricSink protocol: reports an evaluation return to the trial (and ``echo``) and, when the pruner
        says so, marks the trial pruned and asks the runner to stop; rows without one are ignored."""
        value = metrics.get("eval/return_mean")
        if value is None:
            return
        self.last_evaluation = float(value)
        step = int(metrics["step"])
        self.trial.report(self.last_evaluation, step)
        if self.echo is not None:  # progress during a trial, not only at its end
            self.echo(f"trial {self.trial.number}: step {step:,}, evaluation return {self.last_evaluation:.1f}")
        if self.trial.should_prune():
            self.pruned = True
            self.runner.stop_requested = True

    def flush(self) -> None:
        """The MetricSink protocol: nothing to flush."""
        pass

    def close(self) -> None:
        """The MetricSink protocol: nothing to close."""
        pass


@dataclass(frozen=True)
class TuneResult:
    """A search's state after it ran: the best trial's number, value and parameters, the best.yaml written,
    every trial of the study that trials.jsonl holds (every process and every resumed invocation)."""

    best_number: int
    best_value: float
    best_params: dict[str, Any]
    best_file: Path
    trials: list[dict[str, Any]]
    seconds: float


ConfigFor = Callable[[list[str]], TrainConfig]  # extra --set items -> the trial's resolved config
TRIALS_FILE = "trials.jsonl"


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise PgradError("pgrad tune needs Optuna: pip install 'pgrad[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def open_study(
    tune_dir: Path,
    storage: str | None = None,
    study_name: str | None = None,
    seed: int = 1,
    pruner: Literal["median", "none"] = "median",
) -> Any:
    """The Optuna study of ``tune_dir``: in memory, or in ``storage`` (an SQLite file ``sqlite:///tune.db`` or a
    database URL) under ``study_name`` (default: the folder's name), created or, when it exists, resumed; several
    processes may share it. The folder must be new or empty unless it is the folder of the study resumed."""
    optuna = _optuna()
    tune_dir = Path(tune_dir)
    name = study_name or tune_dir.name
    existing = optuna.study.get_all_study_names(storage) if storage is not None else []
    if tune_dir.exists() and (not tune_dir.is_dir() or any(tune_dir.iterdir())):
        ours = tune_dir.is_dir() and (tune_dir / TRIALS_FILE).is_file()
        if not (ours and name in existing):
            hint = " (to resume a study, give the --storage and --study-name it was started with)" if ours else ""
            raise ConfigError(f"--tune-dir {tune_dir} must be a new or empty folder{hint}")
    tune_dir.mkdir(parents=True, exist_ok=True)
    return optuna.create_study(
        storage=storage,
        study_name=name if storage is not None else None,
        load_if_exists=True,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS)
        if pruner == "median"
        else optuna.pruners.NopPruner(),
    )


def run_trials(
    study: Any,
    algo: str,
    config_for: ConfigFor,
    user_sets: list[str],
    trials: int,
    tune_dir: Path,
    echo: Callable[[str], None] = print,
) -> None:
    """Run ``trials`` more trials of ``study``, each a run folder ``tune_dir/trial_NNN`` (N: the study's trial
    number, unique across processes), with a line when a trial starts, at each evaluation and when it ends."""
    optuna = _optuna()
    from pgrad.runners import runner_for

    if trials < 1:
        raise ConfigError(f"--trials must be at least 1; got {trials}")
    fixed = set_keys(algo, user_sets)
    space = tuple(param for param in search_space(algo) if param.key not in fixed)  # what --set fixes stays fixed

    def log_row(row: dict[str, Any]) -> None:
        with safe_io.open_append(
            tune_dir / TRIALS_FILE
        ) as log:  # one short line per write: processes may share the file
            log.write(json.dumps(row) + "\n")

    def objective(trial: Any) -> float:
        values = suggest(trial, space)
        run_dir = tune_dir / f"trial_{trial.number:03d}"
        try:
            config = config_for([*user_sets, *(f"{key}={json.dumps(value)}" for key, value in values.items())])
        except ConfigError as exc:  # a combination the config refuses (a minibatch larger than the batch): skipped
            log_row({"number": trial.number, "state": "invalid", "reason": str(exc), "params": values})
            echo(f"trial {trial.number}: invalid combination, skipped: {exc}")
            raise optuna.TrialPruned() from None
        shown = ", ".join(
            f"{key.split('.')[-1]}={value:.3g}" if isinstance(value, float) else f"{key.split('.')[-1]}={value}"
            for key, value in values.items()
        )
        echo(f"trial {trial.number}: started, {config.run.total_steps:,} steps, {shown}, {run_dir}")
        runner = runner_for(config)(config, run_dir, console=False)
        report = PrunerReport(trial, runner, echo)
        runner.sinks.append(report)
        trial_started = time.perf_counter()
        try:
            result = runner.train()
        except TrainingHalted as exc:  # the guard halted it: a failed trial, the study goes on
            log_row({"number": trial.number, "state": "halted", "reason": str(exc), "run_dir": str(run_dir)})
            echo(f"trial {trial.number}: halted by the guard, {run_dir}")
            raise
        row = {
            "number": trial.number,
            "state": "pruned" if report.pruned else "complete",
            "value": report.last_evaluation,
            "steps": result.steps,
            "seconds": round(time.perf_counter() - trial_started, 2),
            "params": values,
            "run_dir": str(run_dir),
        }
        log_row(row)
        value = "-" if report.last_evaluation is None else f"{report.last_evaluation:.1f}"
        echo(f"trial {trial.number}: {row['state']} at step {result.steps:,}, evaluation return {value}, {run_dir}")
        if report.pruned:
            raise optuna.TrialPruned()
        if report.last_evaluation is None:
            raise PgradError(f"trial {trial.number} finished without an evaluation (guard.eval_every is 0?)")
        return report.last_evaluation

    study.optimize(objective, n_trials=trials, catch=(TrainingHalted,))


def summarize_study(study: Any, algo: str, config_for: ConfigFor, user_sets: list[str], tune_dir: Path) -> TuneResult:
    """The study's best trial (over every process and invocation) as ``tune_dir/best.yaml``, and its trial rows."""
    path = tune_dir / TRIALS_FILE
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    if not any(row["state"] == "complete" for row in rows):
        raise PgradError(f"no trial of {tune_dir} completed (see {TRIALS_FILE})")
    best = study.best_trial
    first_config = config_for([])
    best_file = tune_dir / "best.yaml"
    best_values = {key: value for key, value in best.params.items()}
    # the env, what --set fixed and the best values: what the trial trained with, less tuning's own settings
    # (its step budget and evaluation schedule) and the --config file, which the user passes again
    layers = merge({"env": {"id": first_config.env.id}}, parse_set(user_sets, sections_for(algo)), nested(best_values))
    safe_io.write_atomic(best_file, yaml.safe_dump({"algo": algo, **layers}, sort_keys=True))
    assert best.value is not None  # a complete trial
    return TuneResult(best.number, float(best.value), best_values, best_file, rows, seconds=0.0)  # tune() times it


def tune(
    algo: str,
    config_for: ConfigFor,
    user_sets: list[str],
    trials: int,
    tune_dir: Path,
    seed: int = 1,
    pruner: Literal["median", "none"] = "median",
    echo: Callable[[str], None] = print,
    storage: str | None = None,
    study_name: str | None = None,
) -> TuneResult:
    """Run ``trials`` trials in ``tune_dir`` (new or empty, or the folder of a stored study resumed); see the
    module docstring."""
    started = time.perf_counter()
    if trials < 1:
        raise ConfigError(f"--trials must be at least 1; got {trials}")
    study = open_study(Path(tune_dir), storage, study_name, seed, pruner)
    run_trials(study, algo, config_for, user_sets, trials, Path(tune_dir), echo)
    result = summarize_study(study, algo, config_for, user_sets, Path(tune_dir))
    return replace(result, seconds=time.perf_counter() - started)
