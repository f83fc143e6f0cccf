"""``pgrad tune``: trials are run folders with the sampled values, evaluations reach the pruner, a
pruned trial stops early, and best.yaml trains with the best trial's values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgrad.cli import main
from pgrad.errors import ConfigError
from pgrad.runners.on_policy import OnPolicyRunner
from pgrad.runs import resolve_config
from pgrad.tune import PrunerReport, nested, search_space, set_keys, trial_sets

pytest.importorskip("optuna")

QUICK = [
    "ppo.num_steps=32",
    "env.num_envs=4",
    "ppo.minibatch_size=64",
    "run.tensorboard=false",
    "guard.eval_episodes=2",
]


def test_nested_turns_set_keys_into_sections() -> None:
    assert nested({"ppo.optimizer.learning_rate": 1e-3, "ppo.gamma": 0.9, "env.num_envs": 4}) == {
        "ppo": {"optimizer": {"learning_rate": 1e-3}, "gamma": 0.9},
        "env": {"num_envs": 4},
    }


def test_set_keys_finds_the_full_key_of_a_bare_one() -> None:
    sets = ["learning_rate=1e-3", "clip_eps=0.1", "env.num_envs=4", "network.hidden_sizes=[8]"]
    assert set_keys("ppo", sets) == {
        "ppo.optimizer.learning_rate",
        "ppo.clip_eps",
        "env.num_envs",
        "ppo.network.hidden_sizes",
    }


def test_search_space_falls_back_to_learning_rate_and_gamma() -> None:
    assert [param.key for param in search_space("ppo_kl")] == ["ppo_kl.optimizer.learning_rate", "ppo_kl.gamma"]
    assert "ppo.minibatch_size" in [param.key for param in search_space("ppo")]


class AlwaysPrune:
    """An Optuna trial stand-in that records reports and prunes at the first."""

    def __init__(self) -> None:
        self.reports: list[tuple[float, int]] = []

    def report(self, value: float, step: int) -> None:
        self.reports.append((value, step))

    def should_prune(self) -> bool:
        return True


def test_the_guards_evaluation_reaches_the_pruner_and_pruning_stops_the_run(tmp_path: Path) -> None:
    sets = [*trial_sets(4096), *QUICK]  # an evaluation every 819 steps: the first after the 7th update (896)
    config, _ = resolve_config("ppo", "CartPole-v1", sets=sets, seed=1, total_steps=4096)
    runner = OnPolicyRunner(config, tmp_path / "trial", console=False)
    trial = AlwaysPrune()
    report = PrunerReport(trial, runner)
    runner.sinks.append(report)
    result = runner.train()
    rows = [json.loads(line) for line in (tmp_path / "trial" / "metrics.jsonl").read_text().splitlines()]
    evaluated = [row for row in rows if "eval/return_mean" in row]
    assert trial.reports == [(evaluated[0]["eval/return_mean"], 896)]
    assert report.pruned and result.steps == 896 < 4096  # stopped at the update of the first evaluation


def test_tune_cli_runs_trials_as_run_folders_and_writes_a_usable_best_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tune_dir = tmp_path / "tune"
    sets: list[str] = []
    for item in QUICK:
        sets += ["--set", item]
    code = main(
        ["tune", "ppo", "--env", "CartPole-v1", "--trials", "3", "--total-steps", "1024", "--tune-dir", str(tune_dir)]
        + sets
        + ["--set", "num_epochs=2", "--pruner", "none"]  # a bare key: fixed all the same
    )
    out = capsys.readouterr().out
    assert code == 0, out
    rows: list[dict[str, Any]] = [json.loads(line) for line in (tune_dir / "trials.jsonl").read_text().splitlines()]
    assert [row["number"] for row in rows] == [0, 1, 2] and {row["state"] for row in rows} == {"complete"}
    for row in rows:
        saved = yaml.safe_load((Path(row["run_dir"]) / "config.yaml").read_text())
        assert saved["ppo"]["optimizer"]["learning_rate"] == row["params"]["ppo.optimizer.learning_rate"]
        assert saved["ppo"]["num_epochs"] == 2 and "ppo.num_epochs" not in row["params"]  # --set fixes, not searched
        metrics = [json.loads(line) for line in (Path(row["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
        assert row["value"] == [m for m in metrics if "eval/return_mean" in m][-1]["eval/return_mean"]
    best = max(rows, key=lambda row: row["value"])
    assert f"best: trial {best['number']}, evaluation return {best['value']:.1f}" in out
    config, _ = resolve_config("ppo", config_file=tune_dir / "best.yaml")
    assert config.env.id == "CartPole-v1"
    assert config.algo_config.optimizer.learning_rate == best["params"]["ppo.optimizer.learning_rate"]
    assert config.algo_config.gae_lambda == best["params"]["ppo.gae_lambda"]
    assert config.algo_config.num_epochs == 2 and config.env.num_envs == 4  # what --set fixed


def test_tune_refuses_a_folder_in_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "tune").mkdir()
    (tmp_path / "tune" / "notes.txt").write_text("mine")
    code = main(["tune", "ppo", "--env", "CartPole-v1", "--trials", "1", "--tune-dir", str(tmp_path / "tune")])
    assert code == 2
    assert (
        capsys.readouterr().err.strip() == f"pgrad: error: --tune-dir {tmp_path / 'tune'} must be a new or empty folder"
    )


def test_unknown_algorithm_space_is_one_line() -> None:
    with pytest.raises(ConfigError, match="unknown algorithm"):
        search_space("nope")


def quick_tune(tune_dir: Path, *extra: str) -> list[str]:
    sets: list[str] = []
    for item in [*QUICK, "ppo.num_epochs=1"]:
        sets += ["--set", item]
    return ["tune", "ppo", "--env", "CartPole-v1", "--total-steps", "256", "--tune-dir", str(tune_dir), *sets, *extra]


def test_a_stored_study_resumes_and_every_trial_says_what_it_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # before: no --storage, no --study-name, no resume (a second call refused the folder), and nothing was
    # printed while a trial ran
    tune_dir, storage = tmp_path / "tune", f"sqlite:///{tmp_path / 'tune.db'}"
    assert main([*quick_tune(tune_dir, "--storage", storage, "--study-name", "s"), "--trials", "1"]) == 0
    out = capsys.readouterr().out
    started = next(line for line in out.splitlines() if line.startswith("trial 0: started, 256 steps, "))
    assert "learning_rate=" in started and str(tune_dir / "trial_000") in started
    assert "trial 0: step 256, evaluation return " in out  # each evaluation, while the trial runs
    assert main([*quick_tune(tune_dir, "--storage", storage, "--study-name", "s"), "--trials", "1"]) == 0
    out = capsys.readouterr().out
    assert "trial 1: started" in out and "2 trials in " in out  # the study went on where it stopped
    numbers = [json.loads(line)["number"] for line in (tune_dir / "trials.jsonl").read_text().splitlines()]
    assert numbers == [0, 1] and (tune_dir / "trial_001" / "metrics.jsonl").is_file()
    # without the storage the folder is another study's: refused, and the line says how to resume
    assert main([*quick_tune(tune_dir), "--trials", "1"]) == 2
    assert "give the --storage and --study-name it was started with" in capsys.readouterr().err


def test_n_jobs_share_the_trials_of_one_stored_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tune_dir = tmp_path / "tune"
    assert main([*quick_tune(tune_dir, "--n-jobs", "2"), "--trials", "2"]) == 2
    assert "--n-jobs needs --storage" in capsys.readouterr().err
    storage = f"sqlite:///{tmp_path / 'tune.db'}"
    assert main([*quick_tune(tune_dir, "--n-jobs", "2", "--storage", storage), "--trials", "2"]) == 0
    assert "2 trials in " in capsys.readouterr().out
    rows = [json.loads(line) for line in (tune_dir / "trials.jsonl").read_text().splitlines()]
    assert sorted(row["number"] for row in rows) == [0, 1]
    # the two jobs drew with different sampler seeds: their first trials did not repeat one another
    params = [json.dumps(row["params"], sort_keys=True) for row in rows]
    assert len(set(params)) == 2
