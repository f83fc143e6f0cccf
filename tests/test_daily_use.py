"""Paper cuts of daily use (issue 25): each test failed before its fix."""

from __future__ import annotations

import time

import pytest

from pgrad.runs import default_run_dir, resolve_config


def test_runs_started_in_the_same_second_get_different_folders(tmp_path, monkeypatch):
    # a sweep's jobs or a shell loop with & start several runs of the same algo, env and seed at once: before,
    # the folder name was ALGO-ENV-sSEED-TIMESTAMP and two processes shared (and overwrote) one folder
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda fmt: "20261207-120000")
    config, _ = resolve_config("ppo", "CartPole-v1", seed=1)
    names = {default_run_dir(config) for _ in range(50)}
    assert len(names) == 50
    assert all(name.name.startswith("ppo-CartPole-v1-s1-20261207-120000-") for name in names)
    # a name already on disk is never handed out again: the next draw is taken
    taken = default_run_dir(config)
    taken.mkdir(parents=True)
    draws = iter([taken.name.rsplit("-", 1)[1], "abcdef"])
    monkeypatch.setattr("secrets.token_hex", lambda nbytes: next(draws))
    assert default_run_dir(config).name == "ppo-CartPole-v1-s1-20261207-120000-abcdef"


def test_a_closed_pipe_ends_quietly():
    # `pgrad list | head -1`: before, Python printed a BrokenPipeError traceback when the reader went away
    import subprocess
    import sys

    reader = subprocess.Popen(
        [sys.executable, "-m", "pgrad", "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert reader.stdout is not None and reader.stderr is not None
    reader.stdout.readline()
    reader.stdout.close()  # the reader goes away after one line, as head does
    stderr = reader.stderr.read()
    reader.stderr.close()
    assert reader.wait(timeout=60) in (0, 141)
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


def test_event_lines_and_the_summary_neither_wrap_nor_cut_in_a_log(tmp_path, capsys):
    # a CI log is not a terminal: before, rich assumed 80 columns, broke an event line in two (a grep found
    # half of it) and cut the summary's checkpoint path with an ellipsis
    from types import SimpleNamespace

    from pgrad.cli import _print_summary
    from pgrad.monitor.sinks import ConsoleDisplay

    display = ConsoleDisplay(total_steps=1000, start_step=0, enabled=True, label="ppo")
    text = "restored checkpoints/step-000000000512 (step 512), learning rate x0.5 for 10% of the run; " * 3
    display.message("recovery.rollback", 1024, text)
    deep = tmp_path / ("a-long-folder-name-" * 8) / "checkpoints" / "step-000000001024"
    result = SimpleNamespace(
        last_metrics={"rollout/return_mean": 500.0},
        run_dir=deep.parent.parent,
        steps=1024,
        updates=2,
        seconds=1.0,
        checkpoint=deep,
        interrupted=False,
    )
    config = SimpleNamespace(algo="ppo", env=SimpleNamespace(id="CartPole-v1"))
    _print_summary(result, config, None)
    out, err = capsys.readouterr()
    event_lines = [line for line in err.splitlines() if line.strip()]
    assert [line.rstrip() for line in event_lines] == [f"recovery.rollback @ 1024: {text}".rstrip()]
    assert str(deep) in out and "…" not in out


def test_eval_acts_deterministically_unless_told_otherwise():
    # training's evaluations, predict() and pgrad.evaluate act with the mode; before, `pgrad eval` sampled
    # unless --deterministic was given, so the same policy scored differently from the CLI
    from pgrad.cli import _parser

    parse = _parser().parse_args
    assert parse(["eval", "runs/x"]).deterministic is True
    assert parse(["eval", "runs/x", "--deterministic"]).deterministic is True  # old scripts keep working
    assert parse(["eval", "runs/x", "--stochastic"]).deterministic is False


def test_list_takes_one_algorithm_or_section_and_names_the_allowed_ones(capsys):
    # before, `pgrad list` printed 500+ lines with no way to ask for one algorithm
    from pgrad.cli import main

    assert main(["list", "sac"]) == 0
    out = capsys.readouterr().out
    assert "sac:" in out and "loop.buffer_size" in out and "sac    " in out  # its fields and its presets
    assert "ppo:" not in out and "clip_eps" not in out and "[guard]" not in out
    assert main(["list", "guard"]) == 0
    out = capsys.readouterr().out
    assert "[guard]" in out and "eval_every" in out and "sac:" not in out
    assert main(["list", "ppx"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pgrad: error: list: unknown 'ppx'; did you mean 'ppo'? (allowed: ppo, ")
    assert "\n" not in err


def test_a_mistyped_metric_is_named_with_the_nearest_logged_one(tmp_path, capsys):
    # before, `compare --metric rollout/return_maen` printed "no rollout/return_maen logged yet" for every run
    # and failed with "has logged its metric yet", as if the runs had only to go on
    pytest.importorskip("matplotlib")
    from pgrad.cli import main
    from test_compare import fake_run

    runs = [fake_run(tmp_path, f"s{seed}", seed, 3e-4, [1.0, 2.0]) for seed in (1, 2)]
    assert main(["compare", *map(str, runs), "--metric", "rollout/return_maen", "--out", str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "pgrad: error: --metric 'rollout/return_maen' is not logged by any of these runs; "
        "did you mean 'rollout/return_mean'?"
    )


def test_an_off_policy_warm_up_is_announced_and_not_counted_as_the_learning_rate(tmp_path):
    # before, nothing said that the first loop.learning_starts steps are random actions without updates, and
    # their rows logged perf/steps_per_second about 30x the learning rate (the console's steps/s and time left)
    import json

    from pgrad.monitor.sinks import ConsoleDisplay
    from pgrad.runners.off_policy import OffPolicyRunner

    sets = [
        "run.progress=false",
        "run.tensorboard=false",
        "env.num_envs=1",
        "sac.network.hidden_sizes=[16, 16]",
        "sac.loop.batch_size=16",
        "sac.loop.learning_starts=400",
        "sac.loop.log_every=100",
    ]
    config, _ = resolve_config("sac", "Pendulum-v1", sets=sets, total_steps=500)
    OffPolicyRunner(config, tmp_path / "run", console=False).train()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    warm = [row["step"] for row in rows if "perf/warmup_steps_per_second" in row]
    learning = [row["step"] for row in rows if "perf/steps_per_second" in row]
    assert warm == [100, 200, 300, 400] and learning == [500]
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    warmup = [event for event in events if event["kind"] == "run.warmup"]
    assert len(warmup) == 1 and "random actions until step 400 (loop.learning_starts)" in warmup[0]["message"]
    display = ConsoleDisplay(total_steps=500, start_step=0, enabled=False, label="sac")
    assert display.fields(rows[0])[1] == "warm-up" and display.fields(rows[-1])[1].endswith(" steps/s")


def test_language_model_progress_is_in_their_own_units(tmp_path):
    # before, an LM run's progress line said "steps/s" and "return -" (no LM run has an episode return)
    pytest.importorskip("transformers")
    from pgrad.monitor.sinks import ConsoleDisplay
    from pgrad.runners.lm_dpo import DPO_UNITS
    from pgrad.runners.lm_ppo import PPO_UNITS
    from pgrad.runners.lm_rm import RM_UNITS
    from pgrad.runners.lm_sft import SFT_UNITS, SFTRunner

    row = {"step": 64, "perf/steps_per_second": 12.4, "train/sft_nll": 1.23456, "lm/rm_score": 0.5}
    row.update({"train/rm_accuracy": 0.75, "train/dpo_loss": 0.6931})
    shown = {
        units.step: ConsoleDisplay(100, 0, False, "lm", units).fields(row)[1:]
        for units in (SFT_UNITS, RM_UNITS, DPO_UNITS, PPO_UNITS)
    }
    assert shown == {
        "demonstrations": ("12 demonstrations/s", "nll   1.2346"),
        "pairs": ("12 pairs/s", "loss   0.6931"),  # RM_UNITS' entry is overwritten by DPO's, checked next
        "responses": ("12 responses/s", "score    0.500"),
    }
    assert ConsoleDisplay(100, 0, False, "lm", RM_UNITS).fields(row)[2] == "accuracy    0.750"
    config, _ = resolve_config("lm_sft", None, None, ["demonstrations=64", "eval_prompts=8"], total_steps=64)
    runner = SFTRunner(config, tmp_path / "sft", console=False)
    assert runner.run.console.units == SFT_UNITS  # the runner hands its units to the run's display
    runner.run.close()


ENV_MODULE = """
import gymnasium as gym
import numpy as np


class Still(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 1.0, True, False, {}
"""


def test_an_entry_point_in_the_current_folder_imports_as_python_would(tmp_path, monkeypatch):
    # `pgrad train ppo --env mymod:MyEnv` next to mymod.py: the pgrad console script (unlike `python train.py`)
    # does not put the current folder on sys.path, and the import failed with "No module named 'mymod'"
    import sys

    from pgrad.envs.factory import load_entry_point

    (tmp_path / "pgrad_test_cwd_env.py").write_text(ENV_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "pgrad_test_cwd_env", raising=False)
    make = load_entry_point("pgrad_test_cwd_env:Still")
    assert make is not None and make.__name__ == "Still"
    assert sys.path[-1] == str(tmp_path)  # searched last: it shadows nothing installed
    sys.modules.pop("pgrad_test_cwd_env", None)


def test_a_run_trained_on_an_env_object_says_how_to_resume_it(tmp_path, capsys):
    # before: `pgrad resume` rebuilt CartPole-v1 from the recorded id and failed inside the checkpoint with
    # "its environment state does not fit CartPole-v1 (zip() argument 2 is longer than argument 1)"
    import gymnasium as gym

    from pgrad.api import PPO
    from pgrad.cli import main

    class Wrapped(gym.Wrapper):
        pass

    run = tmp_path / "run"
    model = PPO(Wrapped(gym.make("CartPole-v1")), run_dir=run, sets=["run.progress=false", "ppo.num_steps=64"])
    model.learn(128)
    assert main(["resume", str(run), "--total-steps", "256"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"pgrad: error: {run} trained on an env passed to pgrad.api as a Python object")
    assert f"Agent.load('{run}', env=ENV).learn(STEPS)" in err and "\n" not in err
    resumed = PPO.load(run, env=Wrapped(gym.make("CartPole-v1")))
    resumed.learn(256)  # the way the line says works: 256 more steps
    assert resumed.num_timesteps == 384
