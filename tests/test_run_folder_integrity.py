"""Run folders that stay consistent under kills, signals, full disks, concurrent runs and careless reuse
(issue 13, part B): every failure is one clear line, and nothing that was logged or checkpointed is lost."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from pgrad.cli import main

QUIET = ["--quiet", "--set", "run.tensorboard=false"]
# a small PPO batch (2 envs x 64 steps) for entry-point envs, which have no preset
SMALL_ENTRY_POINT_RUN = ["--set", "env.num_envs=2", "--set", "ppo.num_steps=64", "--set", "ppo.minibatch_size=64"]


def cli(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err.strip()


def train_args(run: Path, total: int, *extra: str) -> list[str]:
    return ["train", "ppo", "--env", "CartPole-v1", "--total-steps", str(total), "--run-dir", str(run), *QUIET, *extra]


def rows(path: Path) -> list[dict]:
    """Every line must parse: a half-written or glued line fails the test."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pgrad", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def has_event(run: Path, kind: str) -> bool:
    path = run / "events.jsonl"
    return path.is_file() and f'"kind": "{kind}"' in path.read_text()


# ---- row 5: every evaluation has a step cap; a signal during one still checkpoints --------------------


def test_evaluation_of_an_env_without_time_limit_ends(tmp_path):
    # CliffWalking-v1 has no time limit and an untrained deterministic policy never reaches the goal:
    # the end-of-run evaluation used to loop forever.
    run = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pgrad",
            *train_args(run, 512, "--env", "CliffWalking-v1", "--set", "guard.eval_max_steps=50"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    last = rows(run / "metrics.jsonl")[-1]
    assert last["eval/length_mean"] <= 50
    assert has_event(run, "run.finished")


def test_sigterm_during_a_long_evaluation_checkpoints_and_exits_130(tmp_path):
    run = tmp_path / "run"
    process = spawn(*train_args(run, 512, "--env", "CliffWalking-v1", "--set", "guard.eval_max_steps=100000000"))
    try:
        wait_for(lambda: has_event(run, "run.started"))
        time.sleep(3.0)  # the one update takes well under a second: the evaluation is running now
        assert not (run / "metrics.jsonl").read_text()  # its row is logged after the evaluation
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert "Traceback" not in err
    events = rows(run / "events.jsonl")
    assert events[-1]["kind"] == "run.interrupted"
    assert (run / "checkpoints" / f"step_{events[-1]['step']:010d}").is_dir()


def test_double_ctrl_c_is_one_line_and_exit_130(tmp_path):
    run = tmp_path / "run"
    process = spawn(*train_args(run, 512, "--env", "CliffWalking-v1", "--set", "guard.eval_max_steps=100000000"))
    try:
        wait_for(lambda: has_event(run, "run.started"))
        time.sleep(2.0)
        process.send_signal(signal.SIGINT)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


# ---- row 6: one run per folder at a time -----------------------------------------------------------


def test_a_second_train_or_resume_of_a_folder_in_use_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    process = spawn(*train_args(run, 10_000_000, "--set", "run.checkpoint_every=1024"))
    try:
        wait_for(lambda: (run / "checkpoints" / "index.json").is_file())
        for args in (train_args(run, 2048), train_args(run, 2048, "--overwrite"), ["resume", str(run), "--quiet"]):
            code, err = cli(capsys, *args)
            assert code == 2, err
            assert err == (
                f"pgrad: error: run folder {run} is in use by another pgrad run (pid {process.pid}); "
                "wait for it to end or stop it, or choose another --run-dir"
            )
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err
    steps = [row["step"] for row in rows(run / "metrics.jsonl")]
    assert steps == sorted(set(steps))  # one writer: no interleaved or repeated rows
    # the lock dies with its holder: the folder can be resumed now
    assert cli(capsys, "resume", str(run), "--quiet", "--total-steps", str(steps[-1] + 256))[0] == 0


# ---- row 7: a non-empty folder that is not a run is refused unless --overwrite ---------------------


def test_a_foreign_non_empty_folder_is_refused_and_overwrite_keeps_other_files(tmp_path, capsys):
    run = tmp_path / "P"
    run.mkdir()
    (run / "config.yaml").write_text("mine\n")
    (run / "notes.txt").write_text("keep me\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("x")
    (run / "tb").symlink_to(outside)  # --overwrite must remove the link, never what it points to

    code, err = cli(capsys, *train_args(run, 512))
    assert code == 2
    assert err.startswith(
        f"pgrad: error: run folder {run} is not empty and holds no run to resume (config.yaml, notes.txt, tb)"
    )
    assert "--overwrite" in err and "\n" not in err
    assert (run / "config.yaml").read_text() == "mine\n"
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "notes.txt", "tb"]  # no lock file left behind

    assert cli(capsys, *train_args(run, 512, "--overwrite"))[0] == 0
    assert "algo: ppo" in (run / "config.yaml").read_text()
    assert (run / "notes.txt").read_text() == "keep me\n"
    assert (outside / "precious").is_file()
    assert [row["step"] for row in rows(run / "metrics.jsonl")] == [256, 512]

    # a folder that holds a run: resume it, or --overwrite starts afresh
    code, err = cli(capsys, *train_args(run, 512))
    assert code == 2 and "already holds a run" in err
    assert cli(capsys, *train_args(run, 256, "--overwrite"))[0] == 0
    assert [row["step"] for row in rows(run / "metrics.jsonl")] == [256]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["index.json", "step_0000000256"]


# ---- rows 11 and 13: resume cuts the logs back to its checkpoint -----------------------------------


def test_resume_repairs_a_half_written_last_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(capsys, *train_args(run, 512))[0] == 0
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 4352, "upd')
    with open(run / "events.jsonl", "a") as handle:
        handle.write('{"time": 17, "st')
    assert cli(capsys, "resume", str(run), "--quiet", "--total-steps", "768")[0] == 0
    assert [row["step"] for row in rows(run / "metrics.jsonl")] == [256, 512, 768]
    events = rows(run / "events.jsonl")
    kinds = [event["kind"] for event in events]
    assert "run.resumed" in kinds and kinds[-1] == "run.finished"
    truncated = [event for event in events if event["kind"] == "run.logs_truncated"]
    assert truncated[0]["dropped"]["metrics.jsonl"] == {"after_checkpoint": 0, "unreadable": 1}


def test_a_resume_with_nothing_to_cut_logs_no_truncation(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(capsys, *train_args(run, 512))[0] == 0
    assert cli(capsys, "resume", str(run), "--quiet", "--total-steps", "768")[0] == 0
    kinds = [event["kind"] for event in rows(run / "events.jsonl")]
    assert "run.resumed" in kinds and "run.logs_truncated" not in kinds


def test_resume_after_a_kill_logs_no_step_twice(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    args = ["train", "ppo", "--env", "CartPole-v1", "--total-steps", "2048", "--run-dir", str(run), "--quiet"]
    assert main([*args, "--set", "run.checkpoint_every=1024"]) == 0
    # As if killed just before the checkpoint at 2048: its rows and events (up to 2048) are on disk,
    # the newest checkpoint is the one at 1024.
    checkpoints = run / "checkpoints"
    import shutil

    shutil.rmtree(checkpoints / "step_0000002048")
    index = json.loads((checkpoints / "index.json").read_text())
    index["latest"] = "step_0000001024"
    del index["entries"]["step_0000002048"]
    (checkpoints / "index.json").write_text(json.dumps(index))
    capsys.readouterr()

    assert main(["resume", str(run), "--quiet", "--total-steps", "2560"]) == 0
    steps = [row["step"] for row in rows(run / "metrics.jsonl")]
    assert steps == list(range(256, 2561, 256))
    event_steps = [event["step"] for event in rows(run / "events.jsonl")]
    assert event_steps == sorted(event_steps)
    accumulator = EventAccumulator(str(run / "tb"))
    accumulator.Reload()
    tb_steps = [event.step for event in accumulator.Scalars("rollout/return_mean")]
    assert tb_steps == list(range(256, 2561, 256))


# ---- row 12: the newest loadable checkpoint, whatever the index says --------------------------------


def test_resume_finds_a_checkpoint_the_index_does_not_list(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(capsys, *train_args(run, 512))[0] == 0
    (run / "checkpoints" / "index.json").unlink()  # killed between the rename and the index update
    code, err = cli(capsys, *train_args(run, 512))
    assert code == 2 and "already holds a run; continue it with 'pgrad resume" in err
    assert cli(capsys, "resume", str(run), "--quiet", "--total-steps", "768")[0] == 0
    repaired = [event for event in rows(run / "events.jsonl") if event["kind"] == "run.index_repaired"]
    assert repaired and repaired[0]["used"] == "step_0000000512"
    assert json.loads((run / "checkpoints" / "index.json").read_text())["latest"] == "step_0000000768"
    assert [row["step"] for row in rows(run / "metrics.jsonl")] == [256, 512, 768]


def test_resume_skips_a_corrupt_latest_for_the_previous_good_one(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(capsys, *train_args(run, 1024, "--set", "run.checkpoint_every=512"))[0] == 0
    tensors = run / "checkpoints" / "step_0000001024" / "tensors.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-8:] = b"\xff" * 8
    tensors.write_bytes(bytes(data))
    code, err = cli(capsys, "resume", str(run), "--quiet", "--total-steps", "1280")
    assert code == 0
    assert err == (
        "pgrad: warning: skipped checkpoint step_0000001024: tensors.safetensors does not match the checksum "
        "recorded in state.json"
    )
    events = rows(run / "events.jsonl")
    skipped = [event for event in events if event["kind"] == "run.checkpoint_skipped"]
    assert skipped and skipped[0]["checkpoint"] == "step_0000001024"
    resumed = [event for event in events if event["kind"] == "run.resumed"]
    assert resumed[-1]["step"] == 512
    assert [row["step"] for row in rows(run / "metrics.jsonl")] == [256, 512, 768, 1024, 1280]


def test_eval_and_export_of_latest_skip_a_corrupt_newest_checkpoint_and_say_so(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(capsys, *train_args(run, 1024, "--set", "run.checkpoint_every=512"))[0] == 0
    tensors = run / "checkpoints" / "step_0000001024" / "tensors.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-8:] = b"\xff" * 8
    tensors.write_bytes(bytes(data))
    warning = (
        "pgrad: warning: skipped checkpoint step_0000001024: tensors.safetensors does not match the checksum "
        "recorded in state.json"
    )
    assert main(["eval", str(run), "--episodes", "1"]) == 0
    out, err = capsys.readouterr()
    assert err.strip() == warning and "step_0000000512" in out  # the newest whole one was evaluated
    assert main(["export", str(run), "--format", "torchscript"]) == 0
    out, err = capsys.readouterr()
    assert err.strip() == warning
    assert json.loads((run / "export" / "policy.pt.json").read_text())["checkpoint_step"] == 512
    # An exact name is never replaced by another checkpoint: asking for the damaged one fails, naming it.
    code, err = cli(capsys, "eval", str(run), "--episodes", "1", "--checkpoint", "step_0000001024")
    assert code == 2 and "step_0000001024" in err


def test_a_whole_latest_checkpoint_that_does_not_load_is_refused_not_skipped(tmp_path, capsys):
    # Damage is skipped; a checkpoint that is whole but does not load (here another format version; also
    # invalid fields or a failed HMAC) was written or edited on purpose, so the user hears of it.
    run = tmp_path / "run"
    assert cli(capsys, *train_args(run, 1024, "--set", "run.checkpoint_every=512"))[0] == 0
    state_path = run / "checkpoints" / "step_0000001024" / "state.json"
    state_path.write_text(state_path.read_text().replace('"format_version": 1', '"format_version": 99'))
    code, err = cli(capsys, "resume", str(run), "--quiet", "--total-steps", "1280")
    assert code == 2
    assert err == (
        f"pgrad: error: checkpoint {run / 'checkpoints' / 'step_0000001024'} has format version 99; "
        "this pgrad reads version 1"
    )


# ---- row 10: a full disk during a checkpoint -----------------------------------------------------------


def test_disk_full_during_a_checkpoint_is_one_line_and_keeps_the_last_good_one(tmp_path, capsys, monkeypatch):
    import pgrad.checkpoint

    real_save = pgrad.checkpoint.save_file
    calls = []

    def save_until_full(tensors, path):
        calls.append(path)
        if len(calls) > 1:
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        real_save(tensors, path)

    monkeypatch.setattr(pgrad.checkpoint, "save_file", save_until_full)
    run = tmp_path / "run"
    code, err = cli(capsys, *train_args(run, 1024, "--set", "run.checkpoint_every=512"))
    assert code == 2
    assert err == (
        f"pgrad: error: could not write checkpoint step_0000001024 in {run / 'checkpoints'}: No space left on "
        f"device; the last good checkpoint step_0000000512 is kept ('pgrad resume {run}' continues from it)"
    )
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["index.json", "step_0000000512"]
    failed = [event for event in rows(run / "events.jsonl") if event["kind"] == "run.checkpoint_failed"]
    assert failed and failed[0]["step"] == 1024
    monkeypatch.setattr(pgrad.checkpoint, "save_file", real_save)
    assert cli(capsys, "resume", str(run), "--quiet")[0] == 0
    assert [row["step"] for row in rows(run / "metrics.jsonl")] == [256, 512, 768, 1024]


# ---- row 4: env state always saves; what cannot be saved exactly is said before training ----------------


class OddStateEnv:
    """An env holding state JSON has no type for: bytes, datetimes, complex numbers, records."""

    def __init__(self) -> None:
        import gymnasium as gym
        import numpy as np

        self.observation_space = gym.spaces.Box(-1.0, 1.0, (1,))
        self.action_space = gym.spaces.Discrete(2)
        self.metadata: dict = {}
        self.render_mode = None
        self.spec = None
        self.np_random = np.random.default_rng(0)
        self.when = np.array(["2024-01-01T00:00", "2025-06-30T12:30"], dtype="datetime64[m]")
        self.phase = np.array([1 + 2j, -0.5j])
        self.tag = b"\x00\xffraw"
        self.record = np.zeros(2, dtype=[("x", "<f4"), ("n", "<i2")])
        self.map = np.array([[b"S", b"F"], [b"H", b"G"]], dtype="S1")
        self.scalar_phase = np.complex64(3 - 1j)
        self.delta = 0.5 + 1.5j


def test_env_state_with_non_json_types_round_trips_exactly():
    import numpy as np

    from pgrad.envs import state as env_state

    original, fresh = OddStateEnv(), OddStateEnv()
    original.when += np.timedelta64(7, "m")
    original.phase *= 3
    original.tag = b"\x01changed"
    original.record["n"] = [4, -5]
    original.map[0, 0] = b"X"
    original.scalar_phase = np.complex64(2j)
    original.delta = -1j
    saved = json.loads(json.dumps(env_state._layer_state(original)))  # through JSON, as in state.json
    env_state._restore_layer(fresh, saved)
    for name in ("when", "phase", "map"):
        got, want = getattr(fresh, name), getattr(original, name)
        assert got.dtype == want.dtype and np.array_equal(got, want), name
    assert fresh.tag == original.tag and fresh.delta == original.delta
    assert fresh.scalar_phase == original.scalar_phase and fresh.scalar_phase.dtype == np.complex64
    # records are not kept (their field layout has no plain form here): named, so a run says so up front
    assert env_state._missed(original) == ["record (ndarray)"]


@pytest.mark.parametrize("env_id", ["FrozenLake-v1", "Taxi-v4"])
def test_toy_text_runs_checkpoint_and_resume_bit_exactly(tmp_path, env_id):
    import torch

    from pgrad.runners.on_policy import OnPolicyRunner
    from pgrad.runs import resolve_config

    sets = ["run.progress=false", "run.tensorboard=false", "ppo.num_epochs=1"]
    config, _ = resolve_config("ppo", env_id, sets=sets, total_steps=1024)
    uninterrupted = OnPolicyRunner(config, tmp_path / "a", console=False)
    uninterrupted.train()
    first = OnPolicyRunner(config, tmp_path / "b", console=False)
    first.train(stop_at_step=512)
    resumed = OnPolicyRunner(config, tmp_path / "b", resume=True, console=False)
    resumed.train()
    expected, actual = uninterrupted.algo.modules(), resumed.algo.modules()
    for name in expected:
        for key, value in expected[name].state_dict().items():
            assert torch.equal(value, actual[name].state_dict()[key]), (name, key)
    assert not has_event(tmp_path / "b", "warning.resume_inexact")


def test_box2d_env_says_before_training_that_resume_is_not_exact(tmp_path, capsys):
    pytest.importorskip("Box2D")
    run = tmp_path / "run"
    args = train_args(run, 256, "--set", "ppo.num_steps=128", "--set", "env.num_envs=2")
    code, err = cli(capsys, *[a if a != "CartPole-v1" else "LunarLander-v3" for a in args])
    assert code == 0
    warning = [line for line in err.splitlines() if line.startswith("pgrad: warning:")]
    assert warning == [
        "pgrad: warning: resume will not be exact for LunarLander-v3: its state is not all plain data "
        "(LunarLander: world (b2World), moon (b2Body), lander (b2Body), legs (list), drawlist (list)) and "
        "cannot be saved without pickle; a resume restarts the episodes in progress instead of continuing them"
    ]
    kinds = [event["kind"] for event in rows(run / "events.jsonl")]
    assert kinds.index("warning.resume_inexact") < kinds.index("checkpoint")  # before any training result
    code, err = cli(capsys, "resume", str(run), "--quiet", "--total-steps", "512")
    assert code == 0 and "pgrad: warning: resume will not be exact for LunarLander-v3" in err
    restarted = [event for event in rows(run / "events.jsonl") if event["kind"] == "run.envs_restarted"]
    assert len(restarted) == 1 and restarted[0]["step"] == 256
    assert [row["step"] for row in rows(run / "metrics.jsonl")] == [256, 512]


def test_an_env_holding_a_data_set_is_not_copied_into_every_checkpoint(tmp_path, capsys):
    """Row 14: a 5 MiB table held by the env would go into every state.json; it is not captured, and the
    run says before training that resume restarts the episodes, naming the attribute."""
    run = tmp_path / "run"
    args = [
        "train", "ppo", "--env", "pgrad.envs.toy:ScriptedEnv", "--total-steps", "256", "--run-dir", str(run), *QUIET,
        "--set", "env.kwargs={data_set_mib: 5}", *SMALL_ENTRY_POINT_RUN,
    ]  # fmt: skip
    code, err = cli(capsys, *args)
    assert code == 0
    (warning,) = [line for line in err.splitlines() if line.startswith("pgrad: warning:")]
    assert "resume will not be exact for pgrad.envs.toy:ScriptedEnv: its state is" in warning
    assert "largest: data_set" in warning and "a data set held by the env?" in warning
    states = list((run / "checkpoints").glob("step_*/state.json"))
    assert states and all(path.stat().st_size < 2**20 for path in states)  # not 5 MiB each
    code, err = cli(capsys, "resume", str(run), "--quiet", "--total-steps", "512", "--trust-env-code")
    assert code == 0 and [event for event in rows(run / "events.jsonl") if event["kind"] == "run.envs_restarted"]


# ---- row 9: an async resume is exact: each worker's env is saved and restored in its worker -----------


@pytest.mark.parametrize(
    ("env_id", "extra", "stop_at"),
    [
        ("CartPole-v1", [], 512),
        # 4-step episodes take 5 vector steps with the autoreset step; 64 steps per env in: the checkpoint
        # falls right after an episode's end, so the worker's pending autoreset must be replayed
        ("pgrad.envs.toy:ScriptedEnv", ["env.kwargs={episode_length: 4}", *SMALL_ENTRY_POINT_RUN[1::2]], 128),
    ],
)
def test_async_resume_is_bit_exact(tmp_path, capsys, env_id, extra, stop_at):
    import torch

    from pgrad.runners.on_policy import OnPolicyRunner
    from pgrad.runs import resolve_config

    sets = ["run.progress=false", "run.tensorboard=false", "env.vectorization=async", "ppo.num_epochs=2", *extra]
    config, _ = resolve_config("ppo", env_id, sets=sets, total_steps=1024)
    uninterrupted = OnPolicyRunner(config, tmp_path / "a", console=False)
    uninterrupted.train()
    first = OnPolicyRunner(config, tmp_path / "b", console=False)
    first.train(stop_at_step=stop_at)
    resumed = OnPolicyRunner(config, tmp_path / "b", resume=True, console=False)
    resumed.train()
    assert resumed.step == uninterrupted.step == 1024
    expected, actual = uninterrupted.algo.modules(), resumed.algo.modules()
    for name in expected:
        for key, value in expected[name].state_dict().items():
            assert torch.equal(value, actual[name].state_dict()[key]), (name, key)
    assert "pgrad: warning" not in capsys.readouterr().err
    assert not has_event(tmp_path / "b", "run.envs_restarted")


# ---- row 8: Ctrl-C to the process group with async envs ------------------------------------------------


def test_ctrl_c_to_the_process_group_with_async_envs_checkpoints_and_exits_130(tmp_path):
    run = tmp_path / "run"
    args = train_args(run, 10_000_000, "--set", "env.vectorization=async")
    # A terminal sends Ctrl-C to the whole foreground process group: the env workers get it too.
    process = subprocess.Popen(
        [sys.executable, "-m", "pgrad", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for(lambda: (run / "metrics.jsonl").is_file() and bool((run / "metrics.jsonl").read_text()))
        time.sleep(0.5)
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert "Traceback" not in err and "BrokenPipe" not in err and "KeyboardInterrupt" not in err
    events = rows(run / "events.jsonl")
    assert events[-1]["kind"] == "run.interrupted"
    assert (run / "checkpoints" / f"step_{events[-1]['step']:010d}").is_dir()


# ---- new-user items: an env that raises, wrong kwargs, --video without rgb_array --------------------------


class RaisingEnv(gym.Env):
    """A small env whose sensor fails after 100 steps (per sub-env)."""

    metadata: dict = {"render_modes": []}

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.steps = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.steps += 1
        if self.steps > 100:
            raise RuntimeError("sensor cable unplugged\nsecond line of detail")
        return np.zeros(1, np.float32), 1.0, self.steps % 10 == 0, False, {}


def test_an_env_raising_in_step_is_one_line_naming_env_and_step_and_keeps_the_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    args = train_args(run, 1024, "--env", "test_run_folder_integrity:RaisingEnv", *SMALL_ENTRY_POINT_RUN)
    code, err = cli(capsys, *args, "--set", "run.checkpoint_every=128")
    assert code == 3
    assert err == (
        "pgrad: halted: env test_run_folder_integrity:RaisingEnv raised RuntimeError: sensor cable unplugged "
        "while collecting the rollout after env step 128; the last checkpoint step_0000000128 is kept "
        f"('pgrad resume {run}' continues from it)"
    )
    failed = rows(run / "events.jsonl")[-1]
    assert failed["kind"] == "run.env_failed" and "in step" in failed["traceback"]  # the details are kept
    assert [row["step"] for row in rows(run / "metrics.jsonl")] == [128]


@pytest.mark.parametrize(
    ("env_args", "expected"),
    [
        (
            ["--env", "FrozenLake-v1", "--set", "env.kwargs={map_name: 9x9}"],
            "pgrad: error: env FrozenLake-v1 with env.kwargs {'map_name': '9x9'} could not be created: KeyError: '9x9'",
        ),
        (
            ["--env", "pgrad.envs.toy:ScriptedEnv", "--set", "env.kwargs={lenght: 3}"],
            # checked against the constructor's signature before anything is built (issue 12 item 3)
            "pgrad: error: env.kwargs: pgrad.envs.toy:ScriptedEnv does not take 'lenght' "
            "(its parameters: episode_length, reward, ending, data_set_mib, action)",
        ),
    ],
)
def test_wrong_env_kwargs_are_one_line(tmp_path, capsys, env_args, expected):
    run = tmp_path / "run"
    code, err = cli(capsys, *train_args(run, 256, *env_args))
    assert (code, err) == (2, expected)
    assert not run.exists()


def test_video_of_an_env_without_rgb_array_rendering_is_one_line(tmp_path, capsys, monkeypatch):
    import types

    monkeypatch.setitem(sys.modules, "moviepy", types.ModuleType("moviepy"))  # installed or not
    # a custom env registered with Gymnasium, as users add theirs; it declares no render modes
    gym.register("PgradTest/NoRender-v0", entry_point="pgrad.envs.toy:ScriptedEnv", max_episode_steps=50)
    try:
        run = tmp_path / "run"
        args = train_args(run, 128, "--env", "PgradTest/NoRender-v0", *SMALL_ENTRY_POINT_RUN)
        assert cli(capsys, *args)[0] == 0
        code, err = cli(capsys, "eval", str(run), "--episodes", "1", "--video", str(tmp_path / "video"))
    finally:
        gym.registry.pop("PgradTest/NoRender-v0")
    assert (code, err) == (
        2,
        "pgrad: error: --video: env PgradTest/NoRender-v0 cannot render rgb_array frames (its render_modes: [])",
    )
    assert not (tmp_path / "video").exists()


def test_kill_9_after_a_checkpoint_then_resume_logs_every_step_once(tmp_path, capsys):
    run = tmp_path / "run"
    process = spawn(*train_args(run, 10_000_000, "--set", "run.checkpoint_every=4096"))
    index = run / "checkpoints" / "index.json"

    def rows_past_the_checkpoint() -> bool:
        if not index.is_file():
            return False
        latest = json.loads(index.read_text())["entries"]
        steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()[:-1]]
        return bool(steps) and steps[-1] > max(entry["step"] for entry in latest.values()) + 256

    try:
        wait_for(rows_past_the_checkpoint)
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    finally:
        process.kill()
    logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()[:-1]]
    code, err = cli(capsys, "resume", str(run), "--quiet", "--total-steps", str(logged[-1] + 512))
    assert code == 0, err
    steps = [row["step"] for row in rows(run / "metrics.jsonl")]
    assert steps == list(range(256, logged[-1] + 513, 256))
    # The kill can land just after another checkpoint (the poll and the kill race): then there is
    # nothing to cut. Rows past the checkpoint the run resumed from are always cut, and said so.
    resumed_from = [e["step"] for e in rows(run / "events.jsonl") if e["kind"] == "run.resumed"][-1]
    if logged[-1] > resumed_from:
        assert has_event(run, "run.logs_truncated")


def test_disk_full_while_logging_is_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    from pgrad.monitor import sinks

    real_flush = sinks.JsonlSink.flush
    flushes = []

    def flush_until_full(self):
        flushes.append(1)
        if len(flushes) >= 3:  # the flush before the third checkpoint
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "run" / "metrics.jsonl"))
        real_flush(self)

    monkeypatch.setattr(sinks.JsonlSink, "flush", flush_until_full)
    run = tmp_path / "run"
    code, err = cli(capsys, *train_args(run, 2048, "--set", "run.checkpoint_every=512"))
    assert code == 2
    assert err == (
        f"pgrad: error: could not write the logs of {run}: No space left on device (metrics.jsonl); the last "
        f"good checkpoint step_0000001024 is kept ('pgrad resume {run}' continues from it)"
    )
    assert [event["kind"] for event in rows(run / "events.jsonl")].count("run.write_failed") == 1
    monkeypatch.setattr(sinks.JsonlSink, "flush", real_flush)
    assert cli(capsys, "resume", str(run), "--quiet")[0] == 0  # the lock was released; nothing lost before 1024
    assert [row["step"] for row in rows(run / "metrics.jsonl")] == list(range(256, 2049, 256))


def test_video_of_an_async_run_renders_in_this_process(tmp_path, capsys, monkeypatch):
    import types

    import pgrad.evaluate

    monkeypatch.setitem(sys.modules, "moviepy", types.ModuleType("moviepy"))
    saved = []
    monkeypatch.setattr(pgrad.evaluate, "_save_video", lambda frames, folder, index, fps: saved.append(len(frames)))
    run = tmp_path / "run"
    assert cli(capsys, *train_args(run, 256, "--set", "env.vectorization=async"))[0] == 0
    assert cli(capsys, "eval", str(run), "--episodes", "1", "--video", str(tmp_path / "video"))[0] == 0
    assert len(saved) == 1 and saved[0] > 1


BUILTIN_EXACT = [
    *["CartPole-v1", "MountainCar-v0", "MountainCarContinuous-v0", "Pendulum-v1", "Acrobot-v1"],
    *["FrozenLake-v1", "FrozenLake8x8-v1", "Taxi-v4", "CliffWalking-v1", "Blackjack-v1"],
    # Hopper and Ant diverged after a restore of qpos/qvel/act + mj_forward: the solver's warm start and
    # the stale body positions Ant's reward reads were not restored
    *["Hopper-v5", "Ant-v5", "HalfCheetah-v5", "Walker2d-v5", "Reacher-v5", "InvertedDoublePendulum-v5"],
]


@pytest.mark.parametrize("env_id", BUILTIN_EXACT)
def test_builtin_env_state_continues_bit_exactly(env_id):
    if env_id.endswith("-v5"):
        pytest.importorskip("mujoco")
    import numpy as np

    from pgrad.config import EnvConfig
    from pgrad.envs import state as env_state
    from pgrad.envs.factory import make_vector_env

    config = EnvConfig(id=env_id, num_envs=2)
    first, copy = make_vector_env(config), make_vector_env(config)
    first.reset(seed=3)
    first.action_space.seed(0)
    for _ in range(50):
        first.step(first.action_space.sample())
    saved = json.loads(json.dumps(env_state.capture(first)))
    copy.reset(seed=99)
    env_state.restore(copy, saved)
    assert env_state.inexact_reason(first) is None
    for _ in range(200):
        action = first.action_space.sample()
        for x, y in zip(first.step(action)[:4], copy.step(action)[:4], strict=True):
            np.testing.assert_array_equal(x, y)
    first.close()
    copy.close()


@pytest.mark.parametrize("env_id", ["LunarLander-v3", "BipedalWalker-v3", "CarRacing-v3"])
def test_box2d_envs_are_named_inexact(env_id):
    pytest.importorskip("Box2D")
    from pgrad.config import EnvConfig
    from pgrad.envs import state as env_state
    from pgrad.envs.factory import make_vector_env

    envs = make_vector_env(EnvConfig(id=env_id, num_envs=1))
    envs.reset(seed=0)
    reason = env_state.inexact_reason(envs)
    envs.close()
    assert reason is not None and "world (b2World)" in reason
