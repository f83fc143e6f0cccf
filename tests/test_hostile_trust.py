"""A received run folder runs no code and reaches no network unless the user says so, and the key signs what
decides behaviour (issue 22, findings 4, 5 and 6).

- 4: a folder's ``run.backend: ray`` / ``ray.address`` needs ``--trust-ray`` (``trust_ray=True`` in pgrad.api);
  ``ray.init`` has a deadline (``ray.connect_timeout_s``) and Ctrl-C works while it waits. Ray itself is
  replaced by a stand-in (``FakeRay``): no cluster, no Ray install needed; the one test of the real ``ray.init``
  against a listener that never answers runs in a subprocess and is marked slow.
- 5: ``Agent.load(run).learn(n)`` passes the entry-point check ``pgrad resume`` makes.
- 6: under ``PGRAD_CHECKPOINT_KEY``, spaces.json is signed for its run, a config.yaml that differs from the
  signed config is refused (warned about without a key), and a step folder holds the step its name says.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import yaml

import pgrad
from hostile import one_line_error, run_cli
from pgrad.api import PPO, Agent
from pgrad.cli import main
from pgrad.errors import CheckpointError, ConfigError

KEY = "PGRAD_CHECKPOINT_KEY"
QUIET = ["--quiet", "--set", "run.tensorboard=false", "--set", "guard.eval_every=0"]


def train(run: Path, seed: int = 1) -> None:
    """A 512-step PPO CartPole run with checkpoints at 256 and 512 (signed when the key is set)."""
    args = ["train", "ppo", "--env", "CartPole-v1", "--total-steps", "512", "--run-dir", str(run), "--seed", str(seed)]
    assert main([*args, *QUIET, "--set", "run.checkpoint_every=256"]) == 0


@pytest.fixture(autouse=True)
def no_integrity_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test chooses whether a key is set; one in the caller's environment would change every answer."""
    monkeypatch.delenv(KEY, raising=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Trained once per module: an unsigned run, and two runs signed with key 's3cret' (seeds 1 and 2)."""
    root = tmp_path_factory.mktemp("trust")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(KEY, raising=False)
        train(root / "plain")
        patch.setenv(KEY, "s3cret")
        train(root / "signed")
        train(root / "signed_other", seed=2)
    return {name: root / name for name in ("plain", "signed", "signed_other")}


def received(runs: dict[str, Path], name: str, tmp_path: Path) -> Path:
    """A private copy of one of the module's runs, to be vandalised."""
    copy = tmp_path / f"received-{name}"
    shutil.copytree(runs[name], copy)
    return copy


def edit_config_yaml(run: Path, change) -> None:  # type: ignore[no-untyped-def]
    data = yaml.safe_load((run / "config.yaml").read_text())
    change(data)
    (run / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def edit_latest_state(run: Path, change) -> None:  # type: ignore[no-untyped-def]
    """Edit state.json of the latest checkpoint (what ``Agent.load`` reads its config from). Unsigned runs only:
    the SHA-256 covers the tensors, not state.json."""
    path = run / "checkpoints" / "step_0000000512" / "state.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def ray_sections(data: dict[str, Any], address: str = "127.0.0.1:6379", timeout: float | None = None) -> None:
    data["run"]["backend"] = "ray"
    data["ray"] = {"workers": 1, "address": address}
    if timeout is not None:
        data["ray"]["connect_timeout_s"] = timeout


# ---- finding 4: a Ray address or backend read from a received folder ---------------------------------------


class FakeRay:
    """Stands in for the ``ray`` module where ``RaySession`` starts or joins Ray. ``init`` records its options and
    then raises (``fail``), or blocks with SIGINT masked in its thread (``block``): Ray's C++ client joining a
    silent address keeps Python from handling Ctrl-C there in just this way."""

    def __init__(self, block: bool = False) -> None:
        self.calls: list[dict[str, Any]] = []
        self.block = block
        self.entered = threading.Event()
        self.entered_at = 0.0
        self.released = threading.Event()

    def is_initialized(self) -> bool:
        return False

    def init(self, **options: Any) -> None:
        self.calls.append(options)
        if not self.block:
            raise RuntimeError("the fake cluster refuses")
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self.entered_at = time.monotonic()
            self.entered.set()
            self.released.wait(5.0)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        raise RuntimeError("the fake cluster never answered")

    def shutdown(self) -> None:
        pass


@pytest.fixture
def fake_ray(monkeypatch: pytest.MonkeyPatch) -> FakeRay:
    fake = FakeRay()
    monkeypatch.setattr("pgrad.runners.ray_backend.require_ray", lambda: fake)
    return fake


@pytest.mark.parametrize("command", [["resume"], ["lm", "resume"]])
def test_resume_refuses_a_received_ray_address_without_trust_ray(capsys, runs, tmp_path, fake_ray, command):
    run = received(runs, "plain", tmp_path)
    edit_config_yaml(run, ray_sections)
    code, err = run_cli(capsys, *command, str(run), "--quiet")
    one_line_error(code, err, "config.yaml: run.backend is 'ray'", "ray.address 127.0.0.1:6379", "--trust-ray")
    assert fake_ray.calls == []  # nothing was started or joined

    # the user's opt-in: the address is joined (here the stand-in refuses, in one line)
    code, err = run_cli(capsys, *command, str(run), "--quiet", "--trust-ray")
    one_line_error(
        code, err, "could not join the Ray cluster at ray.address 127.0.0.1:6379:", "the fake cluster refuses"
    )
    assert [call["address"] for call in fake_ray.calls] == ["127.0.0.1:6379"]


def test_a_received_local_ray_backend_needs_trust_ray_too(capsys, runs, tmp_path, fake_ray):
    run = received(runs, "plain", tmp_path)
    edit_config_yaml(run, lambda data: (ray_sections(data), data["ray"].pop("address")))
    code, err = run_cli(capsys, "resume", str(run), "--quiet")
    one_line_error(code, err, "starts a Ray instance on this machine", "--trust-ray")
    assert fake_ray.calls == []


def test_api_load_learn_refuses_a_received_ray_backend_without_trust_ray(runs, tmp_path, fake_ray):
    run = received(runs, "plain", tmp_path)
    edit_latest_state(run, lambda state: ray_sections(state["config"]))
    with pytest.raises(ConfigError, match=r"run.backend is 'ray'.*trust_ray=True in pgrad.api"):
        Agent.load(run).learn(256)
    assert fake_ray.calls == []
    with pytest.raises(ConfigError, match="could not join the Ray cluster at ray.address 127.0.0.1:6379"):
        Agent.load(run, trust_ray=True).learn(256)
    assert len(fake_ray.calls) == 1


def test_joining_ray_has_a_deadline_of_one_line(capsys, runs, tmp_path, monkeypatch, hang_guard):
    fake = FakeRay(block=True)
    monkeypatch.setattr("pgrad.runners.ray_backend.require_ray", lambda: fake)
    run = received(runs, "plain", tmp_path)
    edit_config_yaml(run, lambda data: ray_sections(data, timeout=0.5))
    try:
        with hang_guard(60):
            code, err = run_cli(capsys, "resume", str(run), "--quiet", "--trust-ray")
            answered = time.monotonic()
    finally:
        fake.released.set()
    one_line_error(
        code, err, "could not join the Ray cluster at ray.address 127.0.0.1:6379 within ray.connect_timeout_s=0.5 s"
    )
    assert fake.entered.is_set() and answered - fake.entered_at < 2.0  # at the deadline, not when init gave up (5 s)


def test_ctrl_c_stops_a_ray_init_that_does_not_answer(capsys, runs, tmp_path, monkeypatch, hang_guard):
    fake = FakeRay(block=True)
    monkeypatch.setattr("pgrad.runners.ray_backend.require_ray", lambda: fake)
    run = received(runs, "plain", tmp_path)
    edit_config_yaml(run, lambda data: ray_sections(data, timeout=30))
    sent: list[float] = []

    def press_ctrl_c() -> None:
        if fake.entered.wait(30):
            sent.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGINT)

    # Ctrl-C as a fresh CLI process meets it (Python's default handler): a test run earlier in this pytest worker may
    # have left SIGINT ignored or handled (CI at a1c2e6b: this test alone got exit 2 after the fake's 5 s, in a
    # worker where it passes when run alone, 3 of 3)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    presser = threading.Thread(target=press_ctrl_c, daemon=True)
    presser.start()
    try:
        with hang_guard(60):
            code, err = run_cli(capsys, "resume", str(run), "--quiet", "--trust-ray")
            answered = time.monotonic()
    finally:
        fake.released.set()
        presser.join(5)
        signal.signal(signal.SIGINT, previous)
    assert code == 130, err
    assert err.startswith("pgrad: interrupted:") and len(err.splitlines()) == 1, err
    assert sent and answered - sent[0] < 2.0  # at once, not after ray.init gives up (5 s here, minutes for Ray)


def test_connect_timeout_is_a_checked_field(capsys):
    code, err = run_cli(capsys, "train", "ppo", "--env", "CartPole-v1", "--set", "ray.connect_timeout_s=0")
    one_line_error(code, err, "ray.connect_timeout_s must be > 0; got 0")


@pytest.mark.slow
def test_real_ray_init_against_a_silent_listener_stops_at_the_deadline(tmp_path):
    """The real ``ray.init`` (no cluster: a socket on 127.0.0.1 that accepts and never answers), in a subprocess
    so that the ``init`` left blocked in its thread dies with it: TimeoutError at the deadline, then a prompt exit."""
    pytest.importorskip("ray")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    script = (
        "import sys, time, ray_helpers, ray\n"
        "from pgrad.runners.ray_backend import init_within\n"
        "start = time.monotonic()\n"
        "try:\n"
        f"    init_within(ray, 3.0, {{'address': '127.0.0.1:{listener.getsockname()[1]}', 'log_to_driver': False}})\n"
        "except TimeoutError as exc:\n"
        "    print('timeout', round(time.monotonic() - start, 1), exc, flush=True)\n"
    )
    tests = str(Path(__file__).parent)
    source = str(Path(pgrad.__file__).resolve().parent.parent)  # the pgrad under test, as ray_helpers does
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([source, tests, os.environ.get("PYTHONPATH", "")])}
    try:
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=environment
        )
    finally:
        listener.close()
    assert done.stdout.startswith("timeout "), done.stdout + done.stderr
    assert float(done.stdout.split()[1]) < 10


# ---- finding 5: Agent.load(run).learn(n) and an entry-point env -------------------------------------------


def test_api_load_learn_refuses_a_received_entry_point_env(runs, tmp_path, monkeypatch):
    """The folder names a module: learn would import it (its top-level code runs). Its spaces are in
    spaces.json, so load itself builds no env; learn must refuse as pgrad resume does."""
    from pgrad.policy import space_to_dict

    module = f"planted_env_{os.getpid()}"
    marker = tmp_path / "MARKER"
    (tmp_path / f"{module}.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "import gymnasium\n"
        "gymnasium.register('Planted-v0', entry_point='gymnasium.envs.classic_control:CartPoleEnv', "
        "max_episode_steps=500)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    run = received(runs, "plain", tmp_path)
    edit_latest_state(run, lambda state: state["config"]["env"].update(id=f"{module}:Planted-v0"))
    cartpole = gym.make("CartPole-v1")
    spaces = {"observation": space_to_dict(cartpole.observation_space), "action": space_to_dict(cartpole.action_space)}
    (run / "spaces.json").write_text(json.dumps(spaces))

    agent = Agent.load(run)  # acting needs no env: allowed
    assert agent.predict(np.zeros(4, np.float32))[0] in (0, 1)
    with pytest.raises(ConfigError, match=rf"env.id '{module}:Planted-v0' is an entry point.*trust_env_code=True"):
        agent.learn(256)
    assert not marker.exists()

    try:
        # the user's choice: the module is imported (the CartPole-v1 env state saved in the checkpoint need not fit
        # the planted registration's wrappers; only the import matters here)
        with contextlib.suppress(CheckpointError):
            Agent.load(run, trust_env_code=True).learn(256)
        assert marker.exists()
    finally:
        sys.modules.pop(module, None)


# ---- finding 6: what the key signs -----------------------------------------------------------------------


def test_with_a_key_an_edited_config_yaml_is_refused(capsys, runs, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY, "s3cret")
    run = received(runs, "signed", tmp_path)

    def louder(data: dict[str, Any]) -> None:
        data["ppo"]["optimizer"]["learning_rate"] *= 200
        data["guard"]["enabled"] = False

    edit_config_yaml(run, louder)
    for command in (["resume", str(run), "--total-steps", "768", "--quiet"], ["eval", str(run), "--episodes", "1"]):
        code, err = run_cli(capsys, *command)
        one_line_error(
            code, err, "config.yaml differs from the config signed in checkpoint step_0000000512", "guard.enabled"
        )
        assert "refusing it under PGRAD_CHECKPOINT_KEY" in err
    assert not (run / "checkpoints" / "step_0000000768").exists()


def test_without_a_key_an_edited_config_yaml_is_one_warning_line(capsys, runs, tmp_path):
    run = received(runs, "plain", tmp_path)
    code, err = run_cli(capsys, "resume", str(run), "--total-steps", "768", "--quiet")
    assert code == 0 and err == ""  # a longer total is no change: no warning
    edit_config_yaml(run, lambda data: data["ppo"].update(ent_coef=0.01))
    for command in (["eval", str(run), "--episodes", "1"], ["resume", str(run), "--total-steps", "1024", "--quiet"]):
        code, err = run_cli(capsys, *command)
        assert code == 0, err
        assert err == (
            f"pgrad: warning: {run / 'config.yaml'} differs from the config recorded in checkpoint step_0000000768 "
            "(ppo.ent_coef: 0.01 here, 0.0 in the checkpoint); using config.yaml"
        )


def test_a_signed_step_folder_renamed_from_another_step_is_refused(capsys, runs, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY, "s3cret")
    run = received(runs, "signed", tmp_path)
    checkpoints = run / "checkpoints"
    shutil.rmtree(checkpoints / "step_0000000512")
    (checkpoints / "step_0000000256").rename(checkpoints / "step_0000000512")
    code, err = run_cli(capsys, "eval", str(run), "--episodes", "1")
    one_line_error(code, err, "step_0000000512 holds step 256, not the step its name says")


def test_a_signed_step_folder_from_another_run_is_refused(capsys, runs, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY, "s3cret")
    run = received(runs, "signed", tmp_path)
    latest = run / "checkpoints" / "step_0000000512"
    shutil.rmtree(latest)
    shutil.copytree(runs["signed_other"] / "checkpoints" / "step_0000000512", latest)  # same key, same step
    for command in (["eval", str(run), "--episodes", "1"], ["resume", str(run), "--total-steps", "768", "--quiet"]):
        code, err = run_cli(capsys, *command)
        one_line_error(code, err, "differs from the config signed in checkpoint step_0000000512 (run.seed: 1 here, 2")


@pytest.fixture(scope="module")
def signed_pendulum(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A PPO Pendulum agent (Box actions) trained and saved through pgrad.api under key 's3cret': (run, saved)."""
    root = tmp_path_factory.mktemp("pendulum")
    small = {
        "env": {"num_envs": 1},
        "run": {"tensorboard": False, "progress": False},
        "ppo": {"num_steps": 64, "num_epochs": 1, "minibatch_size": 64},
        "guard": {"eval_every": 0},
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY, "s3cret")
        agent = PPO("Pendulum-v1", config=small, run_dir=root / "run", use_preset=False).learn(64)
        saved = agent.save(root / "saved")
    return root / "run", saved


def widen_actions(path: Path) -> None:
    data = json.loads(path.read_text())
    data["action"]["low"] = [value * 1000 for value in data["action"]["low"]]
    data["action"]["high"] = [value * 1000 for value in data["action"]["high"]]
    path.write_text(json.dumps(data))


def test_with_a_key_widened_action_bounds_in_spaces_json_are_refused(capsys, signed_pendulum, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY, "s3cret")
    run, saved = (shutil.copytree(path, tmp_path / path.name) for path in signed_pendulum)
    observation = np.zeros(3, np.float32)
    assert abs(float(PPO.load(saved).predict(observation)[0][0])) <= 2.0  # signed and untouched: loads, acts

    widen_actions(saved / "spaces.json")
    with pytest.raises(CheckpointError, match="spaces.json has an HMAC that does not match this run"):
        PPO.load(saved)
    widen_actions(run / "spaces.json")
    with pytest.raises(CheckpointError, match="spaces.json has an HMAC that does not match this run"):
        PPO.load(run)
    code, err = run_cli(capsys, "export", str(run), "--format", "torchscript", "--out", str(tmp_path / "p.pt"))
    one_line_error(code, err, "spaces.json has an HMAC that does not match this run")
    assert not (tmp_path / "p.pt").exists()


def test_with_a_key_spaces_json_of_another_run_or_unsigned_is_refused(signed_pendulum, tmp_path, monkeypatch):
    from dataclasses import replace

    from pgrad.policy import write_spaces

    monkeypatch.setenv(KEY, "s3cret")
    saved = shutil.copytree(signed_pendulum[1], tmp_path / "saved")
    agent = PPO.load(saved)
    other = replace(agent.config, run=replace(agent.config.run, seed=2))  # another run, signed with the same key
    wide = gym.spaces.Box(-2000.0, 2000.0, (1,), np.float32)
    write_spaces(tmp_path, agent.observation_space, wide, other)
    shutil.copyfile(tmp_path / "spaces.json", saved / "spaces.json")
    with pytest.raises(CheckpointError, match="has an HMAC that does not match this run"):
        PPO.load(saved)

    monkeypatch.delenv(KEY)
    write_spaces(saved, agent.observation_space, agent.action_space, agent.config)  # no key: no HMAC
    assert PPO.load(saved).action_space == agent.action_space  # without a key nothing is checked
    monkeypatch.setenv(KEY, "s3cret")
    with pytest.raises(CheckpointError, match=r"spaces.json carries no HMAC under PGRAD_CHECKPOINT_KEY"):
        PPO.load(saved)


def test_old_signed_checkpoints_verify_as_before(runs):
    """The HMAC over state.json is unchanged (it always covered the step and the config; what is new is that
    they are now checked against the folder's name and config.yaml): checkpoints signed by earlier versions
    keep loading under their key. The signature is recomputed here the way d46c705 computed it."""
    from pgrad.checkpoint import load_checkpoint

    state = json.loads((runs["signed"] / "checkpoints" / "step_0000000512" / "state.json").read_text())
    body = json.loads(json.dumps({k: v for k, v in state.items() if k != "hmac_sha256"}))
    old = hmac.new(b"s3cret", json.dumps(body, sort_keys=True).encode(), hashlib.sha256).hexdigest()
    assert state["hmac_sha256"] == old
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY, "s3cret")
        assert load_checkpoint(runs["signed"] / "checkpoints" / "step_0000000512")[1]["step"] == 512


def test_the_spaces_schema_knows_the_signature_field():
    # pgrad.envs.space_schema sits below pgrad.checkpoint and keeps its own copy of the field's name
    from pgrad.checkpoint import HMAC_FIELD
    from pgrad.envs.space_schema import SIGNATURE_FIELD

    assert SIGNATURE_FIELD == HMAC_FIELD
