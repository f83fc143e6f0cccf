"""Optional tracker sinks (run.wandb, run.mlflow): what reaches the tracker, and the refusal when the
package is missing. The trackers are stood in for by fake modules: neither is a pgrad dependency."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from pgrad.cli import main
from pgrad.runners.on_policy import OnPolicyRunner
from pgrad.runs import resolve_config

SHORT = ["env.num_envs=2", "ppo.num_steps=64", "ppo.minibatch_size=64", "run.tensorboard=false", "guard.eval_every=0"]


class FakeWandbRun:
    def __init__(self, **kwargs: Any) -> None:
        self.init_kwargs = kwargs
        self.logged: list[tuple[int, dict[str, float]]] = []
        self.finished = False

    def log(self, data: dict[str, float], step: int) -> None:
        self.logged.append((step, data))

    def finish(self) -> None:
        self.finished = True


def fake_wandb() -> types.ModuleType:
    module = types.ModuleType("wandb")
    module.runs = []  # type: ignore[attr-defined]

    def init(**kwargs: Any) -> FakeWandbRun:
        run = FakeWandbRun(**kwargs)
        module.runs.append(run)  # type: ignore[attr-defined]
        return run

    module.init = init  # type: ignore[attr-defined]
    return module


def fake_mlflow() -> types.ModuleType:
    module = types.ModuleType("mlflow")
    module.calls = []  # type: ignore[attr-defined]
    for name in ("start_run", "log_params", "set_tag", "log_metrics", "end_run"):

        def record(*args: Any, _name: str = name, **kwargs: Any) -> None:
            module.calls.append((_name, args, kwargs))  # type: ignore[attr-defined]

        setattr(module, name, record)
    return module


def logged_rows(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_wandb_gets_every_update_at_its_step_and_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wandb = fake_wandb()
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    config, _ = resolve_config("ppo", "CartPole-v1", sets=[*SHORT, "run.wandb=true"], seed=1, total_steps=384)
    OnPolicyRunner(config, tmp_path / "run", console=False).train()
    (run,) = wandb.runs  # type: ignore[attr-defined]
    assert run.init_kwargs["name"] == "run" and run.init_kwargs["config"]["ppo"]["num_steps"] == 64
    rows = logged_rows(tmp_path / "run")
    assert [step for step, _ in run.logged] == [row["step"] for row in rows] == [128, 256, 384]
    assert run.logged[-1][1]["train/value_loss"] == rows[-1]["train/value_loss"]
    assert "step" not in run.logged[0][1] and run.finished


def test_mlflow_gets_flat_params_metrics_and_an_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mlflow = fake_mlflow()
    monkeypatch.setitem(sys.modules, "mlflow", mlflow)
    config, _ = resolve_config("ppo", "CartPole-v1", sets=[*SHORT, "run.mlflow=true"], seed=1, total_steps=256)
    OnPolicyRunner(config, tmp_path / "run", console=False).train()
    calls = mlflow.calls  # type: ignore[attr-defined]
    names = [name for name, _, _ in calls]
    assert names == ["start_run", "log_params", "set_tag", "log_metrics", "log_metrics", "end_run"]
    params = calls[1][1][0]
    assert params["ppo.optimizer.learning_rate"] == str(config.algo_config.optimizer.learning_rate)
    assert params["env.id"] == "CartPole-v1"
    rows = logged_rows(tmp_path / "run")
    assert calls[4][2]["step"] == 256 and calls[4][1][0]["rollout/return_mean"] == rows[-1]["rollout/return_mean"]


def test_a_missing_tracker_is_refused_before_the_folder_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    code = main(["train", "ppo", "--env", "CartPole-v1", "--set", "run.wandb=true", "--run-dir", str(tmp_path / "r")])
    assert code == 2
    assert (
        capsys.readouterr().err.strip()
        == "pgrad: error: run.wandb is true but wandb is not installed: pip install wandb"
    )
    assert not (tmp_path / "r").exists()
