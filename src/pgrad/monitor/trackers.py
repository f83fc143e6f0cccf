"""Optional metric sinks for experiment trackers: Weights & Biases (``run.wandb``) and MLflow
(``run.mlflow``), off by default and imported only when switched on.

Each is a ``MetricSink`` beside ``metrics.jsonl`` (which stays the record the guard, doctor and
report read): every numeric ``group/name`` metric of each update at its env ``step``, and the run's
config as the tracker's config (W&B) or parameters (MLflow, flattened to ``section.field``). One
tracker run per training process, named after the run folder: a resumed run opens a new one. Where
to send them is the tracker's own business (``WANDB_PROJECT``, ``WANDB_MODE``; ``MLFLOW_TRACKING_URI``,
``MLFLOW_EXPERIMENT_NAME``). Switched on but not installed: one line naming the field and the package.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from pgrad.config import TrainConfig
from pgrad.errors import ConfigError

WANDB_PROJECT = "pgrad"  # when WANDB_PROJECT is not set


def numeric_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The metrics a tracker takes: numeric ``group/name`` values (``step`` is passed apart)."""
    return {
        key: float(value)
        for key, value in metrics.items()
        if "/" in key and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def flat_params(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"ppo": {"optimizer": {"learning_rate": 3e-4}}}`` -> ``{"ppo.optimizer.learning_rate": "0.0003"}``."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flat_params(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def _import(field: str, module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{field} is true but {module} is not installed: pip install {module}") from None


class WandbSink:
    """Send each update's metrics and the config to Weights & Biases (``run.wandb``)."""

    def __init__(self, config: TrainConfig, run_dir: Path) -> None:
        wandb = _import("run.wandb", "wandb")
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", WANDB_PROJECT),
            name=run_dir.name,
            dir=str(run_dir),
            config=config.to_dict(),
        )

    def write(self, metrics: dict[str, Any]) -> None:
        """The MetricSink protocol: logs the numeric metrics to W&B at ``step``."""
        self.run.log(numeric_metrics(metrics), step=int(metrics["step"]))

    def flush(self) -> None:
        """The MetricSink protocol: nothing; the W&B client sends from its own process."""
        pass  # the W&B client sends from its own process

    def close(self) -> None:
        """The MetricSink protocol: finishes the W&B run."""
        self.run.finish()


class MlflowSink:
    """Send each update's metrics and the flattened config to MLflow (``run.mlflow``)."""

    def __init__(self, config: TrainConfig, run_dir: Path) -> None:
        self.mlflow = _import("run.mlflow", "mlflow")
        self.mlflow.start_run(run_name=run_dir.name)
        self.mlflow.log_params(flat_params(config.to_dict()))
        self.mlflow.set_tag("pgrad.run_dir", str(run_dir.resolve()))

    def write(self, metrics: dict[str, Any]) -> None:
        """The MetricSink protocol: logs the numeric metrics to MLflow at ``step``."""
        self.mlflow.log_metrics(numeric_metrics(metrics), step=int(metrics["step"]))

    def flush(self) -> None:
        """The MetricSink protocol: nothing; this sink keeps no buffer of its own."""
        pass

    def close(self) -> None:
        """The MetricSink protocol: ends the MLflow run."""
        self.mlflow.end_run()


def check_trackers(config: TrainConfig) -> None:
    """Import the trackers switched on, so a missing one is refused before the run folder is touched."""
    if config.run.wandb:
        _import("run.wandb", "wandb")
    if config.run.mlflow:
        _import("run.mlflow", "mlflow")


def tracker_sinks(config: TrainConfig, run_dir: Path) -> list[Any]:
    """The trackers ``run.wandb`` and ``run.mlflow`` switch on (an empty list by default)."""
    sinks: list[Any] = []
    if config.run.wandb:
        sinks.append(WandbSink(config, run_dir))
    if config.run.mlflow:
        sinks.append(MlflowSink(config, run_dir))
    return sinks
