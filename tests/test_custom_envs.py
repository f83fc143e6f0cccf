"""Custom environments: Gymnasium's 'module:EnvId' form, one-line env kwarg errors, eval --video's one line."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from pgrad.api import PPO
from pgrad.cli import main

QUIET = ["--quiet", "--set", "run.tensorboard=false", "--set", "num_epochs=1"]


def train(tmp_path, env_id, *extra, name="run"):
    return main(
        ["train", "ppo", "--env", env_id, "--total-steps", "256", "--run-dir", str(tmp_path / name), *QUIET, *extra]
    )


@pytest.mark.parametrize(
    ("env_id", "label", "parameters"),
    [
        ("corridor_env:Corridor-v0", "corridor_env:Corridor-v0", "length, slip"),  # Gymnasium's module:EnvId
        ("corridor_env:Corridor", "corridor_env:Corridor", "length, slip"),  # an entry point class
        ("corridor_env:make_corridor", "corridor_env:make_corridor", "length"),  # an annotated factory
        ("Pendulum-v1", "Pendulum-v1", "render_mode, g"),  # any registered id
    ],
)
def test_a_wrong_env_kwarg_is_one_line_naming_the_constructors_parameters(tmp_path, capsys, env_id, label, parameters):
    assert train(tmp_path, env_id, "--set", "env.kwargs={lenght: 5}") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"pgrad: error: env.kwargs: {label} does not take 'lenght'" in err
    assert f"(its parameters: {parameters})" in err
    assert not (tmp_path / "run").exists()


def test_module_env_id_form_trains_and_takes_its_kwargs(tmp_path):
    assert train(tmp_path, "corridor_env:Corridor-v0", "--set", "env.kwargs={length: 2}") == 0
    agent = PPO.load(tmp_path / "run", trust_env_code=True)
    assert agent.config.env.id == "corridor_env:Corridor-v0" and agent.config.env.kwargs == {"length": 2}
    assert agent.observation_space.high.tolist() == [2.0]  # built with length 2, not the default 5
    assert agent.predict(np.array([1.0], np.float32))[0] in (0, 1)


@pytest.mark.parametrize(
    ("env_id", "reason"),
    [
        ("corridor_env:Corridor-v0", "cannot render rgb_array frames (its render_modes: [])"),
        ("corridor_env:ClaimsToRender", "unexpected keyword argument 'render_mode'"),
    ],
)
def test_eval_video_on_an_env_that_cannot_render_says_why_in_one_line(tmp_path, capsys, env_id, reason):
    if importlib.util.find_spec("moviepy") is None:
        pytest.skip("without moviepy, --video says so first (tests/test_cli_flow.py)")
    assert train(tmp_path, env_id) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--video", str(tmp_path / "v"), "--trust-env-code"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pgrad: error: --video") and err.count("\n") == 1 and reason in err


def test_eval_video_records_one_mp4_per_episode(tmp_path, capsys):
    if importlib.util.find_spec("moviepy") is None:
        pytest.skip("the video extra (moviepy) is not installed")
    assert train(tmp_path, "CartPole-v1") == 0
    assert main(["eval", str(tmp_path / "run"), "--video", str(tmp_path / "v"), "--episodes", "3"]) == 0
    videos = sorted(p.name for p in (tmp_path / "v").glob("*.mp4"))
    # every episode, named once (before: Gymnasium's schedule kept episodes 0, 1, 8, 27, ... only, and the
    # names were episode-000-episode-0.mp4; nothing said where they went)
    assert videos == ["episode-000.mp4", "episode-001.mp4", "episode-002.mp4"]
    assert all((tmp_path / "v" / name).stat().st_size > 1000 for name in videos)
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("video: ")]
    assert printed == [f"video: {tmp_path / 'v' / name}" for name in videos]
