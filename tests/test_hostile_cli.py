"""Bad inputs to the command line and the Python API get one clear answer (issue 22, findings 12, 13, 15).

The command line runs in-process (``pgrad.cli.main``): a bad input is one line ``pgrad: error: ...`` and
exit code 2, never a traceback, and nothing is created or half-written before it. ``benchmarks/bench_bad_inputs.py``
sweeps the same inputs and many more through the whole command line.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hostile import one_line_error
from pgrad.api import PPO, Callback
from pgrad.cli import main
from pgrad.errors import ConfigError

QUIET = ["--quiet", "--set", "run.progress=false", "--set", "run.tensorboard=false", "--set", "guard.eval_every=0"]
SMALL = {
    "env": {"num_envs": 2},
    "run": {"tensorboard": False, "progress": False},
    "ppo": {"num_steps": 64, "num_epochs": 1, "minibatch_size": 64},
}
ROWS = "".join(
    json.dumps({"step": 128 * i, "rollout/return_mean": float(10 + i), "train/policy_loss": 0.1}) + "\n"
    for i in range(1, 6)
).encode()
DEEP_YAML = "".join(f"{'  ' * depth}k{depth}:\n" for depth in range(600)) + "  " * 600 + "x: 1\n"


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        code = main([str(arg) for arg in args])
    except SystemExit as exc:  # argparse's errors
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


@pytest.fixture(autouse=True)
def no_integrity_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGRAD_CHECKPOINT_KEY", raising=False)


def fake_run(folder: Path, config: str = "algo: ppo\nenv:\n  id: CartPole-v1\n", metrics: bytes | None = None) -> Path:
    """A run folder as report, doctor and compare read it: config.yaml and a few metric rows, no checkpoint."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(config)
    (folder / "metrics.jsonl").write_bytes(metrics if metrics is not None else ROWS)
    (folder / "events.jsonl").write_text("")
    return folder


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> PPO:
    """A PPO CartPole agent after one 128-step update: enough to predict with."""
    return PPO("CartPole-v1", config=SMALL, run_dir=tmp_path_factory.mktemp("agent") / "run", use_preset=False).learn(
        128
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 256-step PPO CartPole run folder with its checkpoint."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "ppo", "--env", "CartPole-v1", "--total-steps", "256", "--run-dir", str(run), *QUIET]) == 0
    return run


# ---- finding 12: the Python API checks its arguments first, with one clear error ----------------------------
# one Callback() is taken now (issue 24, as SB3's callback=); the class itself and SB3's fn(locals, globals) are not
@pytest.mark.parametrize(
    "callbacks", [5, "cb", [5], [Callback(), object()], Callback, {"on_update": print}, lambda lo, gl: True]
)
def test_learn_with_bad_callbacks_refuses_before_opening_the_run_folder(tmp_path, callbacks):
    agent = PPO("CartPole-v1", config=SMALL, run_dir=tmp_path / "run", use_preset=False)
    with pytest.raises(ConfigError, match=r"learn: callbacks"):
        agent.learn(128, callbacks=callbacks)
    assert not (tmp_path / "run").exists()  # nothing opened, nothing locked: the same agent can still learn


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"config": [1, 2]}, "config must be a mapping of sections"),
        ({"config": "ppo: {}"}, "config must be a mapping of sections"),
        ({"sets": "clip_eps=0.1"}, "sets must be a list of 'key=value' texts"),
        ({"sets": [1]}, "sets must be a list of 'key=value' texts"),
        ({"env_kwargs": [1]}, "env_kwargs must be a mapping"),
        ({"run_dir": 5}, "run_dir must be a path"),
        ({"overwrite": "yes"}, "overwrite must be True or False; got 'yes'"),
    ],
)
def test_agent_arguments_of_the_wrong_type_are_one_config_error(tmp_path, options, expected):
    with pytest.raises(ConfigError, match=expected):
        PPO("CartPole-v1", **options)


@pytest.mark.parametrize(
    ("observation", "expected"),
    [
        (np.array([0.0, np.nan, 0.0, 0.0]), r"the observation \[.*\] holds nan at index \(1,\)"),
        (
            np.array([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, np.inf, 0.0]]),
            r"observation 1 of the batch holds inf at index \(2,\)",
        ),
        (np.full(4, -np.inf, np.float32), "holds -inf"),
    ],
)
def test_predict_refuses_a_non_finite_observation(agent, observation, expected):
    with pytest.raises(ValueError, match=expected):  # a ValueError (pgrad's ObservationError), never an action
        agent.predict(observation)
    with pytest.raises(ValueError, match=expected):
        agent.predict(observation, deterministic=False)


@pytest.mark.parametrize("deterministic", ["no", 0, None, 1.0])
def test_predict_deterministic_must_be_a_bool(agent, deterministic):
    with pytest.raises(ConfigError, match="predict: deterministic must be True or False"):
        agent.predict(np.zeros(4, np.float32), deterministic=deterministic)
    assert agent.predict(np.zeros(4, np.float32), deterministic=np.bool_(True))[0] in (0, 1)


# ---- finding 13: tracebacks become one line ----------------------------------------------------------------
def test_yaml_nested_hundreds_deep_is_one_line(capsys, tmp_path):
    config = tmp_path / "deep.yaml"
    config.write_text(DEEP_YAML)
    code, _, err = run_cli(capsys, "train", "ppo", "--config", config, "--run-dir", tmp_path / "r", *QUIET)
    one_line_error(code, err, "nested deeper than 32 levels")
    code, _, err = run_cli(capsys, "train", "ppo", "--set", "env.kwargs=" + "[" * 1000 + "]" * 1000, *QUIET)
    one_line_error(code, err, "env.kwargs")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", ["eval", "resume", "compare", "lm resume"])
def test_a_received_config_yaml_nested_hundreds_deep_is_one_line(capsys, tmp_path, command):
    run = fake_run(tmp_path / "received", config=DEEP_YAML)
    code, _, err = run_cli(
        capsys, *command.split(), run, *(["--out", tmp_path / "c.png"] if command == "compare" else [])
    )
    one_line_error(code, err, "nested deeper than 32 levels")


@pytest.mark.parametrize("command", ["doctor", "report"])
def test_doctor_and_report_read_a_run_whose_config_yaml_is_nested_hundreds_deep(capsys, tmp_path, command):
    run = fake_run(tmp_path / "received", config=DEEP_YAML)
    code, _, err = run_cli(capsys, command, run)  # they read only the guard section and the step unit: defaults
    assert code in (0, 1) and not err


def test_config_dev_zero_is_read_with_a_bound(tmp_path):
    # a subprocess with its address space capped: an unbounded read of /dev/zero (stat says 0 bytes) would
    # otherwise fill this machine's memory before failing
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, resource.RLIM_INFINITY))

    result = subprocess.run(
        [sys.executable, "-m", "pgrad", "train", "ppo", "--config", "/dev/zero", "--run-dir", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=cap,
    )
    one_line_error(
        result.returncode, result.stderr.strip(), "config file /dev/zero is larger than", "pgrad reads at most"
    )


@pytest.mark.parametrize("command", ["doctor", "report", "compare"])
def test_a_binary_or_deeply_nested_metrics_file_is_skipped_line_by_line(capsys, tmp_path, command):
    binary, deep = bytes(range(256)) * 8, b'{"step": 1, "a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    run = fake_run(tmp_path / "received", metrics=binary + b"\n" + deep + ROWS)
    out = ["--out", tmp_path / "c.png"] if command == "compare" else []
    code, _, err = run_cli(capsys, command, run, *out)
    assert code in (0, 1) and "Traceback" not in err, err


@pytest.mark.parametrize(
    ("args", "where"),
    [
        (["train", "ppo", "--env", "CartPole-v1", "--total-steps", "256", "--run-dir", "{f}/run", *QUIET], "{f}/run"),
        (["train", "ppo", "--env", "CartPole-v1", "--total-steps", "256", "--run-dir", "/proc/pgrad-run", *QUIET], ""),
        (["report", "{run}", "--out", "{f}/report"], "{f}/report"),
        (["report", "{run}", "--out", "/proc/pgrad-report"], "/proc/pgrad-report"),
        (["compare", "{run}", "--out", "/proc/pgrad.png"], "/proc/pgrad.png"),
        (["compare", "{run}", "--out", "{f}/c.png"], "{f}"),
        (["compare", "{run}", "--out", "/dev/full"], "/dev/full"),
    ],
)
def test_unwritable_output_paths_are_one_line(capsys, tmp_path, args, where):
    run = fake_run(tmp_path / "run")
    (tmp_path / "f").write_text("a file, not a folder")
    fill = {"{f}": str(tmp_path / "f"), "{run}": str(run)}
    for key, value in fill.items():
        args = [arg.replace(key, value) for arg in args]
        where = where.replace(key, value)
    code, _, err = run_cli(capsys, *args)
    one_line_error(code, err, where)


def test_eval_video_and_export_out_that_cannot_be_written(capsys, trained, tmp_path):
    code, _, err = run_cli(capsys, "eval", trained, "--episodes", "1", "--video", "/proc/pgrad-video")
    one_line_error(code, err, "/proc/pgrad-video")
    code, _, err = run_cli(capsys, "export", trained, "--format", "onnx", "--out", "/proc/pgrad.onnx")
    one_line_error(code, err, "/proc/pgrad.onnx")


def test_export_to_a_full_disk_is_one_line_not_an_abort(trained):
    # a subprocess: TorchScript's own writer aborts the whole process on ENOSPC (SIGABRT, a C++ trace)
    result = subprocess.run(
        [sys.executable, "-m", "pgrad", "export", str(trained), "--format", "torchscript", "--out", "/dev/full"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    # a device is no file pgrad writes (pgrad.safe_io: a write replaces the file through a rename; issue 22)
    one_line_error(result.returncode, result.stderr.strip(), "/dev/full", "not a regular file")


@pytest.mark.parametrize("name", ["a$\\frac{1}{$b"])
def test_report_of_a_run_folder_named_with_mathtext_characters(capsys, tmp_path, name):
    run = fake_run(tmp_path / name)
    code, out, err = run_cli(capsys, "report", run)
    assert code == 0 and not err, err
    assert (run / "report" / "overview.png").is_file()


# ---- finding 15: misleading behaviour ------------------------------------------------------------------
def test_tune_total_steps_zero_is_refused_not_the_default(capsys, tmp_path, monkeypatch):
    called: list[int] = []
    monkeypatch.setattr("pgrad.tune.tune", lambda *args: called.append(1))  # no trial runs, whatever happens
    code, _, err = run_cli(
        capsys,
        "tune",
        "ppo",
        "--env",
        "CartPole-v1",
        "--trials",
        "1",
        "--total-steps",
        "0",
        "--tune-dir",
        tmp_path / "t",
    )
    one_line_error(code, err, "run.total_steps must be >= 1; got 0")
    assert not called


@pytest.mark.parametrize(
    "flags", [["--workers", "2"], ["--address", "127.0.0.1:1"], ["--workers", "2", "--backend", "local"]]
)
def test_ray_flags_without_the_ray_backend_are_refused(capsys, tmp_path, flags):
    args = ["train", "ppo", "--env", "CartPole-v1", "--total-steps", "256", "--run-dir", tmp_path / "r", *QUIET]
    code, _, err = run_cli(capsys, *args, *flags)
    one_line_error(code, err, "apply to --backend ray (run.backend is 'local')", flags[0])
    assert not (tmp_path / "r").exists()


def test_compare_out_a_folder_writes_inside_it_and_says_where(capsys, tmp_path):
    run = fake_run(tmp_path / "run")
    (tmp_path / "plots").mkdir()
    code, out, err = run_cli(capsys, "compare", run, "--out", tmp_path / "plots")
    assert code == 0, err
    assert f"plot: {tmp_path / 'plots' / 'compare.png'}" in out.splitlines()
    assert (tmp_path / "plots" / "compare.png").is_file()


class Interrupted:
    """A runner whose train() is a second Ctrl-C: after the run folder exists, before (or after) a checkpoint."""

    checkpoint = False

    def __init__(self, config, run_dir, **options):
        Path(run_dir).mkdir(parents=True)
        if self.checkpoint:
            (Path(run_dir) / "checkpoints" / "step_0000000256").mkdir(parents=True)

    def train(self):
        raise KeyboardInterrupt


class InterruptedAfterACheckpoint(Interrupted):
    checkpoint = True


@pytest.mark.parametrize("runner", [Interrupted, InterruptedAfterACheckpoint])
def test_double_ctrl_c_names_resume_only_when_there_is_a_checkpoint(capsys, tmp_path, monkeypatch, runner):
    monkeypatch.setattr("pgrad.runners.runner_for", lambda config: runner)
    code, _, err = run_cli(capsys, "train", "ppo", "--env", "CartPole-v1", "--run-dir", tmp_path / "r", *QUIET)
    assert code == 130 and len(err.splitlines()) == 1, err
    if runner.checkpoint:
        assert f"'pgrad resume {tmp_path / 'r'}' continues from its last checkpoint" in err
    else:
        assert "pgrad resume" not in err and "no checkpoint was written yet" in err


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["--bogus"], "(see 'pgrad --help')"),
        (["lm", "sft", "--bogus"], "(see 'pgrad lm sft --help')"),
        (["train", "ppo", "--seed", "x"], "(see 'pgrad train --help')"),
    ],
)
def test_argparse_errors_name_the_real_help_command(capsys, args, hint):
    code, _, err = run_cli(capsys, *args)
    one_line_error(code, err, hint)
