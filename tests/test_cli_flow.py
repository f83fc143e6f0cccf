"""The command line end to end: train -> run folder contents -> eval -> resume -> list."""

import json
import signal
import subprocess
import sys
import time

import pytest
import yaml

from pgrad.cli import main


def test_train_eval_resume_through_the_cli(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "ppo",
            "--env",
            "CartPole-v1",
            "--seed",
            "3",
            "--total-steps",
            "2048",
            "--run-dir",
            str(run),
            "--set",
            "num_epochs=2",
            "--set",
            "run.checkpoint_every=1024",
            "--quiet",
        ]
    )
    assert code == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["algo"] == "ppo" and config["ppo"]["num_epochs"] == 2 and config["ppo"]["gamma"] == 0.98  # preset
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in lines] == [256 * i for i in range(1, 9)]
    for key in (
        "train/policy_loss",
        "diagnostics/approx_kl",
        "diagnostics/clip_fraction",
        "diagnostics/entropy",
        "diagnostics/explained_variance",
        "diagnostics/grad_norm",
        "train/learning_rate",
        "perf/steps_per_second",
        "perf/wall_seconds",
        "rollout/return_mean",
        "rollout/return_median",
    ):
        assert key in lines[-1], key
    events = [json.loads(line)["kind"] for line in (run / "events.jsonl").read_text().splitlines()]
    assert events[0] == "run.started" and events[-1] == "run.finished" and "checkpoint" in events
    assert list((run / "tb").glob("events.out.tfevents.*"))
    capsys.readouterr()

    assert main(["eval", str(run), "--episodes", "3", "--deterministic"]) == 0
    out = capsys.readouterr().out
    assert "evaluation (deterministic, 3 episodes, step_0000002048): mean return" in out

    # A total below the steps taken is refused before anything is written.
    assert main(["resume", str(run), "--total-steps", "1024", "--quiet"]) == 2
    assert "--total-steps 1024 is below the 2048 steps this run has already taken" in capsys.readouterr().err
    assert yaml.safe_load((run / "config.yaml").read_text())["run"]["total_steps"] == 2048

    # A larger total extends the run; the schedules continue from step / new total (the preset
    # anneals the learning rate 1e-3 -> 0), which the run.extended event states.
    assert main(["resume", str(run), "--total-steps", "3072", "--quiet"]) == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 3072 and len(lines) == 12
    first_after = json.loads(lines[8])
    assert first_after["step"] == 2304
    assert first_after["train/learning_rate"] == pytest.approx(1e-3 * (1 - 2304 / 3072))
    extended = [json.loads(e) for e in (run / "events.jsonl").read_text().splitlines() if '"run.extended"' in e]
    assert len(extended) == 1 and extended[0]["previous_total"] == 2048 and extended[0]["total"] == 3072
    assert yaml.safe_load((run / "config.yaml").read_text())["run"]["total_steps"] == 3072


def test_sigint_writes_a_checkpoint_and_resume_continues(tmp_path):
    run = tmp_path / "run"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pgrad",
            "train",
            "ppo",
            "--env",
            "CartPole-v1",
            "--total-steps",
            "10000000",
            "--run-dir",
            str(run),
            "--quiet",
            "--set",
            "run.tensorboard=false",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline and not (run / "metrics.jsonl").exists():
        time.sleep(0.2)
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert events[-1]["kind"] == "run.interrupted"
    stopped_at = events[-1]["step"]
    assert (run / "checkpoints" / f"step_{stopped_at:010d}").is_dir()
    assert main(["resume", str(run), "--total-steps", str(stopped_at + 512), "--quiet"]) == 0
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == stopped_at + 512


def test_list_documents_every_field(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for text in (
        "ppo:",
        "clip_eps",
        "ratio clipped to [1 - clip_eps, 1 + clip_eps]",
        "[env]",
        "num_envs",
        "[run]",
        "torch_threads",
        "CartPole-v1",
        "rl-baselines3-zoo",
        "pgrad lm ppo:",
        "[lm_ppo]",
        "[lm_sft]",
        "[lm_rm]",
        "[lm_dpo]",
        "kl_coef",
        "kl_critical 0.4",
    ):
        assert text in out, text


def test_video_without_moviepy_is_a_clear_error(tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("moviepy") is not None:
        import pytest

        pytest.skip("moviepy is installed")
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "ppo",
                "--env",
                "CartPole-v1",
                "--total-steps",
                "256",
                "--run-dir",
                str(run),
                "--quiet",
                "--set",
                "run.tensorboard=false",
                "--set",
                "num_epochs=1",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["eval", str(run), "--video", str(tmp_path / "video")]) == 2
    assert "--video needs moviepy: pip install 'pgrad[video]'" in capsys.readouterr().err
