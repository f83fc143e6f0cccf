"""A run folder from someone else is data, never code (issue 13, the security and input rows).

Each test edits a small trained run the way an attacker or a careless user would, then runs the
command line in-process: the answer is one line and exit code 2, nothing runs that the user did not
choose, and nothing outside the run folder is read or deleted.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from hostile import QUIET, one_line_error, run_cli, train_ppo
from pgrad.cli import main
from pgrad.errors import CheckpointError


@pytest.fixture(autouse=True)
def no_integrity_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests choose when a checkpoint key is set; one in the caller's environment would sign
    or refuse their checkpoints."""
    monkeypatch.delenv("PGRAD_CHECKPOINT_KEY", raising=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1024-step PPO CartPole run with three checkpoints (512, 768, 1024), trained once per module."""
    return train_ppo(tmp_path_factory.mktemp("trained") / "run", 1024, "--set", "run.checkpoint_every=256")


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    """A private copy of the trained run, to be vandalised."""
    copy = tmp_path / "received"
    shutil.copytree(trained, copy)
    return copy


def edit_json(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# ---- rows 1 and 18: paths from a run folder stay inside it ------------------------------------


@pytest.mark.parametrize("bad_name", ["VICTIM", "../../VICTIM", "step_0000000001/../../../VICTIM"])
def test_resume_never_deletes_outside_the_run_folder(capsys, run, tmp_path, bad_name):
    victim = tmp_path / "VICTIM"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    name = str(victim) if bad_name == "VICTIM" else bad_name
    edit_json(
        run / "checkpoints" / "index.json",
        lambda index: index["entries"].update({name: {"step": 0, "healthy": True, "score": None}}),
    )
    code, err = run_cli(capsys, "resume", str(run), "--total-steps", "1280", "--quiet")
    one_line_error(code, err, "index.json: entry", "must be named step_<10 digits>")
    assert (victim / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize("field", ["latest", "best"])
def test_index_pointing_outside_the_run_is_refused(capsys, run, tmp_path, field):
    other = tmp_path / "other"
    shutil.copytree(run, other)
    edit_json(run / "checkpoints" / "index.json", lambda index: index.update({field: "../../other/checkpoints/x"}))
    code, err = run_cli(capsys, "eval", str(run), "--checkpoint", field, "--episodes", "1")
    one_line_error(code, err, f"'{field}' must be step_<10 digits>")


def test_checkpoint_symlinked_out_of_the_run_is_refused(capsys, run, tmp_path):
    """A name that looks right but is a symlink to another run's checkpoint is not loaded."""
    other = tmp_path / "other"
    shutil.copytree(run, other)
    latest = run / "checkpoints" / "step_0000001024"
    shutil.rmtree(latest)
    latest.symlink_to(other / "checkpoints" / "step_0000001024")
    code, err = run_cli(capsys, "eval", str(run), "--episodes", "1")
    one_line_error(code, err, "checkpoint 'latest' ('step_0000001024') leads outside", "through a symlink")


def test_pruning_unlinks_a_symlink_and_never_follows_it(run, tmp_path):
    """An old checkpoint replaced by a symlink to a folder elsewhere: pruning drops the entry and
    leaves that folder alone."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    oldest = run / "checkpoints" / "step_0000000512"
    shutil.rmtree(oldest)
    oldest.symlink_to(victim)
    code = main(["resume", str(run), "--total-steps", "1280", "--quiet"])
    assert code == 0
    assert (victim / "precious.txt").read_text() == "keep me"
    index = json.loads((run / "checkpoints" / "index.json").read_text())
    assert "step_0000000512" not in index["entries"]


# ---- row 17: report.html escapes what it reads ---------------------------------------------


def test_report_escapes_every_value_and_skips_malformed_events(capsys, run):
    pytest.importorskip("matplotlib")
    from pgrad.monitor.report import render_html

    summary, config = [("<script>2</script>", "<b>")], [("ppo.x", "<script>3</script>")]
    page = render_html(
        "t", {"overview": b""}, "", [{"step": "<script>1</script>", "kind": "critical.kl"}], summary, config
    )
    # the page's own panel check is its only script; every value read from the run folder is escaped
    assert page.count("<script>") == 1 and "<script>addEventListener(" in page
    for payload in (
        "&lt;script&gt;1&lt;/script&gt;",
        "&lt;script&gt;2&lt;/script&gt;",
        "&lt;script&gt;3&lt;/script&gt;",
    ):
        assert payload in page
    assert "<b>" not in page

    with open(run / "events.jsonl", "a") as events:
        events.write(json.dumps({"step": "<script>alert(1)</script>", "kind": "critical.kl", "message": "x"}) + "\n")
        events.write(json.dumps({"step": 8, "kind": "critical.kl", "message": "<img src=x onerror=alert(2)>"}) + "\n")
        events.write("5\n")
    code, _ = run_cli(capsys, "report", str(run))
    assert code == 0
    page = (run / "report" / "report.html").read_text()
    assert page.count("<script>") == 1 and "<img src=x" not in page  # only the page's own panel check
    assert "&lt;img src=x onerror=alert(2)&gt;" in page  # a well-formed event is shown, escaped
    code, _ = run_cli(capsys, "doctor", str(run))
    assert code in (0, 1)  # a diagnosis, not a traceback


# ---- row 15: numbers are finite, seeds in range --------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--seed", "4294967296"], "run.seed must be in [0, 4294967295]; got 4294967296"),
        (["--seed", "-1"], "run.seed must be in [0, 4294967295]; got -1"),
        (["--set", "clip_eps=.nan"], "ppo.clip_eps must be a finite number; got nan"),
        (["--set", "guard.kl_critical=.nan"], "guard.kl_critical must be a finite number; got nan"),
        (["--set", "gamma=.inf"], "ppo.gamma must be a finite number; got inf"),
        (["--set", "guard.eval_min_return=-.inf"], "guard.eval_min_return must be a finite number; got -inf"),
        (["--set", "ppo.optimizer.learning_rate=1e999"], "ppo.optimizer.learning_rate must be a finite number"),
        (["--set", "env.num_envs=100000000000000000000"], "env.num_envs must be an integer in [-2**63, 2**63)"),
    ],
)
def test_non_finite_numbers_and_out_of_range_seeds(capsys, tmp_path, args, expected):
    code, err = run_cli(capsys, "train", "ppo", "--env", "CartPole-v1", "--run-dir", str(tmp_path / "r"), *args)
    one_line_error(code, err, expected)
    assert not (tmp_path / "r").exists()


def test_eval_seed_out_of_range(capsys, run):
    code, err = run_cli(capsys, "eval", str(run), "--seed", "4294967296")
    one_line_error(code, err, "--seed must be in [0, 4294967295]; got 4294967296")


# ---- row 14 and row 4's config part: config values are plain data --------------------------

ALIAS_BOMB = """env:
  id: CartPole-v1
  kwargs:
    a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
    b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
    c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
    d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
    e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
    f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (ALIAS_BOMB, "at line 5, column 12: alias '*a' (aliases are not allowed in pgrad configs)"),
        ("env:\n  kwargs:\n    when: 2024-01-01\n", "env.kwargs.when must be plain data"),
        ("env:\n  kwargs:\n    blob: !!binary aGVsbG8=\n", "env.kwargs.blob must be plain data"),
        ("env:\n  kwargs:\n    tags: !!set {a, b}\n", "env.kwargs.tags must be plain data"),
        ("env:\n  kwargs:\n    deep: [{at: 2024-01-01T10:00:00}]\n", "env.kwargs.deep[0].at must be plain data"),
        ("env:\n  kwargs:\n    1: x\n", "env.kwargs must have text keys; got key 1"),
    ],
)
def test_config_values_are_plain_data(capsys, tmp_path, text, expected):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    code, err = run_cli(capsys, "train", "ppo", "--config", str(config), "--run-dir", str(tmp_path / "r"))
    one_line_error(code, err, expected)
    assert not (tmp_path / "r").exists()


def test_a_received_config_yaml_with_an_alias_bomb_is_refused(capsys, run):
    text = (run / "config.yaml").read_text().replace("  kwargs: {}\n", "\n".join(ALIAS_BOMB.splitlines()[2:]) + "\n")
    (run / "config.yaml").write_text(text)
    code, err = run_cli(capsys, "resume", str(run), "--total-steps", "1280", "--quiet")
    one_line_error(code, err, "alias '*a' (aliases are not allowed in pgrad configs)")


def test_env_kwargs_from_python_are_bounded():
    from pgrad.config import MAX_PLAIN_VALUES, EnvConfig
    from pgrad.errors import ConfigError

    shared = list(range(1000))
    with pytest.raises(ConfigError, match=f"env.kwargs must hold at most {MAX_PLAIN_VALUES} values"):
        EnvConfig(kwargs={"x": [shared] * 200})


def test_non_utf8_config_file(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_bytes(b"env:\n  id: Cart\xffPole-v1\n")
    code, err = run_cli(capsys, "train", "ppo", "--config", str(config), "--run-dir", str(tmp_path / "r"))
    one_line_error(code, err, f"config file {config} is not UTF-8 text (byte 0xff at offset 15)")


# ---- row 2 and row 16's env rows: a run folder's env entry point runs nothing unasked -------


def plant_command(run: Path, marker: Path) -> None:
    text = (run / "config.yaml").read_text()
    text = text.replace("  id: CartPole-v1\n", "  id: os:system\n")
    text = text.replace("  kwargs: {}\n", f"  kwargs:\n    command: touch {marker}\n")
    (run / "config.yaml").write_text(text)


@pytest.mark.parametrize("command", ["eval", "resume"])
def test_received_entry_point_env_needs_trust(capsys, run, tmp_path, command):
    marker = tmp_path / "MARKER"
    plant_command(run, marker)
    extra = ["--episodes", "1"] if command == "eval" else ["--quiet"]
    code, err = run_cli(capsys, command, str(run), *extra)
    one_line_error(code, err, "env.id 'os:system' is an entry point", "pass --trust-env-code")
    assert not marker.exists()
    # Trusting the folder still never calls what is not an environment.
    code, err = run_cli(capsys, command, str(run), *extra, "--trust-env-code")
    one_line_error(code, err, "'os:system' is a builtin_function_or_method, not an environment")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("env_id", "expected"),
    [
        (":Foo", "env.id: entry point ':Foo' must be 'package.module:Class'"),
        ("os:", "env.id: entry point 'os:' must be"),
        ("os:getcwd", "env.id: 'os:getcwd' is a builtin_function_or_method, not an environment"),
        ("shutil:rmtree", "env.id: 'shutil:rmtree' is a function, not an environment"),
        ("os:path", "env.id: 'os:path' is a module, not an environment"),
        ("pgrad.envs.toy:Nope", "module 'pgrad.envs.toy' has no callable 'Nope'"),
    ],
)
def test_entry_points_must_name_an_environment(capsys, tmp_path, env_id, expected):
    code, err = run_cli(capsys, "train", "ppo", "--env", env_id, "--run-dir", str(tmp_path / "r"))
    one_line_error(code, err, expected)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("env: 5\n", "section 'env' in config file"),
        ("env:\n  id: 5\n", "env.id must be a string; got 5"),
        ("5\n", "must be a mapping of sections; got int"),
    ],
)
def test_env_section_of_the_wrong_type(capsys, tmp_path, text, expected):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    code, err = run_cli(capsys, "train", "ppo", "--config", str(config), "--run-dir", str(tmp_path / "r"))
    one_line_error(code, err, expected)
    assert not (tmp_path / "r").exists()


ANNOTATED_FACTORY = """
import gymnasium as gym
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

if "HostileCorridor-v0" not in gym.registry:
    gym.register("HostileCorridor-v0", entry_point=CartPoleEnv, max_episode_steps=50)


def make_env(**kwargs) -> gym.Env:
    return CartPoleEnv(**kwargs)


def make_unannotated(**kwargs):
    return CartPoleEnv(**kwargs)
"""


def test_gymnasium_module_env_id_form_and_annotated_factories(capsys, tmp_path, monkeypatch):
    (tmp_path / "hostile_envs_mod.py").write_text(ANNOTATED_FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    for env_id in ("hostile_envs_mod:HostileCorridor-v0", "hostile_envs_mod:make_env"):
        run = tmp_path / env_id.replace(":", "_")
        code = main(["train", "ppo", "--env", env_id, "--total-steps", "256", "--run-dir", str(run), "--quiet", *QUIET])
        assert code == 0, capsys.readouterr().err
        # The user trusts the folder they trained themselves.
        assert main(["eval", str(run), "--episodes", "1", "--trust-env-code"]) == 0
    code, err = run_cli(
        capsys, "train", "ppo", "--env", "hostile_envs_mod:make_unannotated", "--run-dir", str(tmp_path / "r")
    )
    one_line_error(code, err, "'hostile_envs_mod:make_unannotated' is a function, not an environment")


# ---- rows 3, 16 and 19: checkpoints validated before use -----------------------------------


def vandalise(run: Path, tensors=None, state=None) -> None:  # type: ignore[no-untyped-def]
    """Edit the latest checkpoint and recompute its SHA-256, as anyone can (it is not a signature)."""
    import hashlib

    from safetensors.torch import load_file, save_file

    folder = run / "checkpoints" / "step_0000001024"
    loaded = load_file(str(folder / "tensors.safetensors"))
    if tensors is not None:
        tensors(loaded)
    save_file(loaded, str(folder / "tensors.safetensors"))
    data = json.loads((folder / "state.json").read_text())
    if state is not None:
        state(data)
    data["tensors_sha256"] = hashlib.sha256((folder / "tensors.safetensors").read_bytes()).hexdigest()
    (folder / "state.json").write_text(json.dumps(data))


def first_key(tensors: dict, suffix: str) -> str:
    return next(key for key in tensors if key.endswith(suffix))


def set_lr(data: dict, value: object) -> None:
    data["optimizers"]["optimizer"]["param_groups"][0]["lr"] = value


@pytest.mark.parametrize(
    ("tensors", "state", "expected"),
    [
        (  # row 3: the fused-Adam segfault
            lambda t: t.update({first_key(t, ".exp_avg"): torch.zeros(1)}),
            None,
            "optimizer 'optimizer' state does not fit: state.0.exp_avg has shape (1,) dtype float32; "
            "its parameter needs shape (64, 4) dtype float32",
        ),
        (
            lambda t: t.update({first_key(t, ".exp_avg_sq"): t[first_key(t, ".exp_avg_sq")].double()}),
            None,
            "state.0.exp_avg_sq has shape (64, 4) dtype float64",
        ),
        (lambda t: t.update({first_key(t, ".step"): torch.zeros(5)}), None, "state.0.step must be a single number"),
        (
            lambda t: t.update({first_key(t, ".exp_avg").replace("exp_avg", "bogus"): torch.zeros(1)}),
            None,
            "state.0.bogus is not a slot this optimizer keeps",
        ),
        (
            lambda t: t.update({"rollback.confirmed.optim.optimizer.state.0.exp_avg": torch.zeros(1)}),
            None,
            "(rollback slot confirmed): optimizer 'optimizer' state does not fit",
        ),
        (lambda t: t.update({first_key(t, "episode_length"): torch.zeros(1)}), None, "collector.episode_length"),
        (None, lambda s: set_lr(s, "abc"), "param_groups[0].lr must be a number; got 'abc'"),
        (None, lambda s: set_lr(s, float("nan")), "param_groups[0].lr must be a number; got nan"),
        (None, lambda s: s["optimizers"]["optimizer"].update(param_groups=5), "param_groups must be a list of 1"),
        (None, lambda s: s.update(step="abc"), "is malformed: ValueError"),
        (None, lambda s: s.update(guard=[1]), "'guard' must be a mapping; got [1]"),
        (None, lambda s: s["guard"].update(lr_scale="x"), "guard state field 'lr_scale' must be float; got 'x'"),
        (None, lambda s: s.update(episodes={"returns": "x"}), "'episodes' must hold lists of returns"),
        (None, lambda s: s.update(rng_python=[3, [1, 2], None]), "does not fit this configuration"),
        (  # row 19: 13 KB of JSON that would allocate gigabytes
            None,
            lambda s: s["env_state"]["layers"][0].update(
                bomb={"__ndarray__": ["a"] * 200, "dtype": "U10000000", "shape": [200]}
            ),
            "env_state holds an array of dtype 'U10000000' (allowed: plain dtypes of at most 64 bytes per item)",
        ),
    ],
)
def test_resume_validates_every_checkpoint_tensor_and_field(capsys, run, tensors, state, expected):
    vandalise(run, tensors, state)
    code, err = run_cli(capsys, "resume", str(run), "--total-steps", "1280", "--quiet")
    one_line_error(code, err, expected)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda t: t.update({first_key(t, "actor_torso.0.weight"): torch.zeros(3)}), "has shape (3,) dtype float32"),
        (
            lambda t: t.update({first_key(t, "actor_torso.0.bias"): t[first_key(t, "actor_torso.0.bias")].half()}),
            "'actor_torso.0.bias' has shape (64,) dtype float16; this configuration needs shape (64,) dtype float32",
        ),
        (lambda t: t.pop(first_key(t, "actor_torso.0.bias")), "module 'model' does not fit this configuration"),
        (
            lambda t: t.update({"collector.obs_norm_mean": torch.zeros(2, dtype=torch.float64)}),
            "normalizers.obs.mean has shape (2,) dtype float64; this configuration needs shape (4,) dtype float64",
        ),
    ],
)
def test_eval_of_wrong_shaped_weights(capsys, run, change, expected):
    vandalise(run, change)
    code, err = run_cli(capsys, "eval", str(run), "--episodes", "1")
    one_line_error(code, err, expected)


def test_oversized_state_json_is_refused_before_parsing(capsys, run, monkeypatch):
    monkeypatch.setattr("pgrad.checkpoint.MAX_STATE_BYTES", 1000)
    code, err = run_cli(capsys, "eval", str(run), "--episodes", "1")
    one_line_error(code, err, "state.json is", "bytes, over the 1000 bytes pgrad reads")


def test_integrity_key_gives_tamper_evidence(capsys, run, tmp_path, monkeypatch):
    """Without a key, a recomputed SHA-256 passes (corruption detection only); with
    PGRAD_CHECKPOINT_KEY, a checkpoint must carry a matching HMAC."""
    from pgrad.checkpoint import KEY_VARIABLE, load_checkpoint, save_checkpoint

    monkeypatch.setenv(KEY_VARIABLE, "s3cret")
    signed = save_checkpoint(tmp_path / "signed", {"w": torch.ones(3)}, {"step": 1})
    tensors, state = load_checkpoint(signed)
    assert torch.equal(tensors["w"], torch.ones(3)) and state["step"] == 1

    # The received run was written without the key: refused while the key is set.
    code, err = run_cli(capsys, "eval", str(run), "--episodes", "1")
    one_line_error(code, err, "carries no HMAC under PGRAD_CHECKPOINT_KEY")

    state_path = signed / "state.json"
    data = json.loads(state_path.read_text())
    data["step"] = 2  # tampered, SHA-256 still fine (the tensors did not change)
    state_path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="has an HMAC that does not match"):
        load_checkpoint(signed)
    monkeypatch.setenv(KEY_VARIABLE, "another key")
    data["step"] = 1
    state_path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="has an HMAC that does not match"):
        load_checkpoint(signed)


@pytest.mark.parametrize("command", ["eval", "resume", "doctor", "report", "train"])
def test_a_run_dir_that_is_a_file(capsys, tmp_path, command):
    path = tmp_path / "afile"
    path.write_text("not a run")
    args = ["train", "ppo", "--run-dir", str(path)] if command == "train" else [command, str(path)]
    if command == "report":
        pytest.importorskip("matplotlib")
    code, err = run_cli(capsys, *args)
    one_line_error(code, err, str(path))
    assert path.read_text() == "not a run"


def test_doctor_and_report_stay_inside_the_run_folder(capsys, run, tmp_path):
    pytest.importorskip("matplotlib")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run / "report").symlink_to(elsewhere)
    code, err = run_cli(capsys, "report", str(run))
    one_line_error(code, err, "the report folder ('report') leads outside")
    assert not any(elsewhere.iterdir())
    (run / "report").unlink()
    secret = tmp_path / "secret.jsonl"
    secret.write_text('{"step": 1, "kind": "critical.kl", "message": "a secret"}\n')
    (run / "events.jsonl").unlink()
    (run / "events.jsonl").symlink_to(secret)
    code, err = run_cli(capsys, "doctor", str(run))
    one_line_error(code, err, "events.jsonl ('events.jsonl') leads outside")


def test_compare_skips_malformed_rows(capsys, run, tmp_path):
    pytest.importorskip("matplotlib")
    with open(run / "metrics.jsonl", "a") as metrics:
        metrics.write(json.dumps({"step": "<b>", "rollout/return_mean": 1.0}) + "\n[]\n")
    code, _ = run_cli(capsys, "compare", str(run), "--out", str(tmp_path / "c.png"))
    assert code == 0 and (tmp_path / "c.png").is_file()


def test_optimizer_kernel_choice_is_this_machines_not_the_checkpoints(run):
    """A checkpoint from a torch without fused Adam resumes; none can switch a kernel on or off."""

    def other_machine(data: dict) -> None:
        data["optimizers"]["optimizer"]["param_groups"][0].update(fused=None, foreach=None, capturable=True)

    vandalise(run, state=other_machine)
    from pgrad.runners.on_policy import OnPolicyRunner
    from pgrad.runs import load_run_config

    runner = OnPolicyRunner(load_run_config(run, total_steps=1280), run, resume=True, console=False)
    try:
        group = runner.algo.optimizer.param_groups[0]
        assert group["capturable"] is False
        assert group["fused"] is True or group["foreach"] is True  # pgrad's own choice (algos/common.py)
    finally:
        runner.close()


def test_oversized_config_and_index_are_refused(capsys, run, monkeypatch):
    monkeypatch.setattr("pgrad.config.MAX_CONFIG_BYTES", 100)
    code, err = run_cli(capsys, "eval", str(run), "--episodes", "1")
    one_line_error(code, err, "bytes; pgrad reads at most 100")
    monkeypatch.undo()
    monkeypatch.setattr("pgrad.checkpoint.MAX_STATE_BYTES", 100)
    code, err = run_cli(capsys, "eval", str(run), "--episodes", "1")
    one_line_error(code, err, "index.json is", "over the 100 bytes pgrad reads")


def test_a_signed_run_trains_resumes_and_evaluates_with_its_key(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PGRAD_CHECKPOINT_KEY", "s3cret")
    run = tmp_path / "signed"
    train = ["train", "ppo", "--env", "CartPole-v1", "--total-steps", "512", "--run-dir", str(run), "--quiet"]
    assert main([*train, *QUIET, "--set", "run.checkpoint_every=256"]) == 0
    assert main(["resume", str(run), "--total-steps", "768", "--quiet"]) == 0
    assert main(["eval", str(run), "--episodes", "1"]) == 0
    state = json.loads((run / "checkpoints" / "step_0000000768" / "state.json").read_text())
    assert len(state["hmac_sha256"]) == 64


@pytest.mark.parametrize("name", ["events.jsonl", "metrics.jsonl", "config.yaml", "halt_batch.npz"])
def test_resume_never_writes_through_a_symlink_out_of_the_run(capsys, run, tmp_path, name):
    target = tmp_path / "bashrc"
    target.write_text("precious\n")
    if (run / name).exists():
        (run / name).unlink()
    (run / name).symlink_to(target)
    code, err = run_cli(capsys, "resume", str(run), "--total-steps", "1280", "--quiet")
    one_line_error(code, err, f"{name} ('{name}') leads outside")
    assert target.read_text() == "precious\n"


def test_a_checkpoint_too_large_to_read_back_is_refused_before_writing(tmp_path, monkeypatch):
    from pgrad.checkpoint import save_checkpoint

    monkeypatch.setattr("pgrad.checkpoint.MAX_STATE_BYTES", 1000)
    with pytest.raises(CheckpointError, match="'env_state' alone is"):
        save_checkpoint(tmp_path / "step_0000000001", {"w": torch.ones(1)}, {"step": 1, "env_state": "x" * 2000})
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("command", [["resume"], ["lm", "resume"]])
@pytest.mark.parametrize("name", ["metrics.jsonl", "config.yaml"])
def test_language_model_resume_never_writes_through_a_symlink_out_of_the_run(capsys, tmp_path, command, name):
    """The LM commands read a run folder through the same checks as 'pgrad resume' (one load_run_config)."""
    pytest.importorskip("transformers")
    run = tmp_path / "sft"
    sets = ["--set", "eval_every=64", "--set", "eval_prompts=4", "--set", "demonstrations=64", "--set", "n_embd=16"]
    assert main(["lm", "sft", "--total-steps", "64", "--run-dir", str(run), "--quiet", *sets]) == 0
    target = tmp_path / "bashrc"
    target.write_text("precious\n")
    (run / name).unlink()
    (run / name).symlink_to(target)
    code, err = run_cli(capsys, *command, str(run), "--total-steps", "128", "--quiet")
    one_line_error(code, err, f"{name} ('{name}') leads outside")
    assert target.read_text() == "precious\n"
