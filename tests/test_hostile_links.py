"""A received run folder is data: no command writes (or reads) through a link planted in it (issue 22).

The property: for every command of ``pgrad --help`` and ``pgrad lm --help`` that takes a run folder, and
for every name pgrad uses in one (``pgrad.checkpoint.RUN_ENTRIES``, plus the report's PNGs), a symbolic
link, a dangling symbolic link and a hard link to a file outside leave that file unchanged (bytes and
modification time; a dangling link's target is not created), and the command either refuses in one line
(exit 2, no traceback) or works. Both the commands (read from the CLI's own parser) and the names (the list
itself) are parameters: a new command or a new name joins the matrix without an edit here, and a new command
that is neither classified below nor runnable with the defaults fails ``test_every_command_is_classified``.

Then the findings of issue 22 this part fixes, each shown directly: the lock and the temporaries (1), the
language-model resume (2), report and export outputs (3), randomization.jsonl (8), a read-only checkpoints
folder (9) and the checksum scan (14).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from pgrad import safe_io
from pgrad.checkpoint import RUN_ENTRIES, RUN_FOLDERS
from pgrad.cli import _parser, main
from pgrad.errors import PgradError
from pgrad.monitor.report import PANELS

QUIET = ["--quiet", "--set", "run.progress=false", "--set", "run.tensorboard=false", "--set", "guard.eval_every=0"]
LM_SETS = ["--set", "eval_every=64", "--set", "eval_prompts=4", "--set", "demonstrations=64", "--set", "n_embd=16"]
# Commands that take no run folder: list prints; tune refuses a --tune-dir that is not new or empty.
NO_RUN_FOLDER = {("list",), ("tune",)}
# The arguments a command needs besides its run folder(s) to run quickly on the fixtures below.
EXTRA = {
    ("resume",): ["--total-steps", "768", "--quiet"],
    ("lm", "resume"): ["--total-steps", "128", "--quiet"],
    ("eval",): ["--episodes", "1"],
    ("export",): ["--format", "torchscript"],
    ("train",): ["ppo", "--env", "CartPole-v1", "--total-steps", "64", *QUIET],
    ("lm", "sft"): ["--total-steps", "64", "--quiet", *LM_SETS],
    ("lm", "rm"): ["--total-steps", "64", "--quiet", "--set", "eval_every=64", "--set", "n_embd=16"],
    ("lm", "ppo"): ["--total-steps", "64", "--quiet", "--set", "eval_every=64", "--set", "n_embd=16"],
    ("lm", "dpo"): ["--total-steps", "64", "--quiet", "--set", "eval_every=64", "--set", "n_embd=16"],
}


def run_folder_commands() -> dict[tuple[str, ...], str]:
    """Each command (``("lm", "resume")``) that takes a run folder, from the CLI's parser: ``"reads"`` an
    existing one (a positional RUN_DIR or RUN_DIRS) or ``"starts"`` one (``--run-dir``)."""
    found: dict[tuple[str, ...], str] = {}

    def walk(parser: argparse.ArgumentParser, prefix: tuple[str, ...]) -> None:
        subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for action in subcommands:
            for name, sub in action.choices.items():
                walk(sub, (*prefix, name))
        if subcommands:
            return
        for action in parser._actions:
            if action.dest in ("run_dir", "run_dirs"):
                found[prefix] = "starts" if action.option_strings else "reads"
        found.setdefault(prefix, "none")

    walk(_parser(), ())
    return found


COMMANDS = {command: kind for command, kind in run_folder_commands().items() if kind != "none"}
REPORT_FILES = ("report/overview.png", *(f"report/{name}.png" for name, _, _ in PANELS))
ENTRIES = (*RUN_ENTRIES, *REPORT_FILES)
KINDS = ("symlink", "dangling", "hardlink")
CASES = [(entry, kind) for entry in ENTRIES for kind in KINDS if not (kind == "hardlink" and entry in RUN_FOLDERS)]


def test_every_command_is_classified() -> None:
    """A new command either takes a run folder (and joins the matrix) or is listed as taking none."""
    commands = run_folder_commands()
    assert {c for c, kind in commands.items() if kind == "none"} == NO_RUN_FOLDER
    assert {("resume",), ("eval",), ("export",), ("doctor",), ("report",), ("compare",), ("train",)} <= set(COMMANDS)
    assert {("lm", "resume"), ("lm", "sft"), ("lm", "rm"), ("lm", "ppo"), ("lm", "dpo")} <= set(COMMANDS)


@pytest.fixture(autouse=True)
def no_integrity_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGRAD_CHECKPOINT_KEY", raising=False)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 512-step PPO CartPole run (checkpoints at 256 and 512), trained once per session."""
    run = tmp_path_factory.mktemp("links") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("PGRAD_CHECKPOINT_KEY", raising=False)
        argv = ["train", "ppo", "--env", "CartPole-v1", "--total-steps", "512", "--run-dir", str(run)]
        assert main([*argv, *QUIET, "--set", "run.checkpoint_every=256"]) == 0
    return run


@pytest.fixture(scope="session")
def trained_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64-demonstration supervised language-model run (the tiny model the LM tests use), once per session."""
    pytest.importorskip("transformers")
    run = tmp_path_factory.mktemp("links_lm") / "sft"
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("PGRAD_CHECKPOINT_KEY", raising=False)
        assert main(["lm", "sft", "--total-steps", "64", "--run-dir", str(run), "--quiet", *LM_SETS]) == 0
    return run


def outside_files(root: Path) -> Path:
    """A folder outside the run: a file and a folder holding one, the targets of the planted links."""
    outside = root / "outside"
    (outside / "victim_dir").mkdir(parents=True)
    (outside / "victim").write_text("precious\n")
    (outside / "victim_dir" / "precious.txt").write_text("keep me\n")
    os.utime(outside / "victim", ns=(10**18, 10**18))  # a time no write could leave
    return outside


def snapshot(outside: Path) -> dict[str, tuple[bytes, int] | None]:
    """Every name under ``outside`` with its bytes and modification time (None for a folder)."""
    return {
        str(p.relative_to(outside)): None if p.is_dir() else (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(outside.rglob("*"))
    }


def plant(run: Path, entry: str, kind: str, outside: Path) -> None:
    """Replace ``run/entry`` (whatever it is, if anything) with a link of ``kind`` to a target in ``outside``."""
    path = run / entry
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    if kind == "hardlink":
        os.link(outside / "victim", path)
    elif kind == "symlink":
        path.symlink_to(outside / ("victim_dir" if entry in RUN_FOLDERS else "victim"))
    else:
        path.symlink_to(outside / "absent")


def argv_for(command: tuple[str, ...], run: Path, tmp_path: Path) -> list[str]:
    if COMMANDS[command] == "starts":
        return [*command, "--run-dir", str(run), *EXTRA.get(command, [])]
    extra = EXTRA.get(command, ["--out", str(tmp_path / "compare.png")] if command == ("compare",) else [])
    return [*command, str(run), *extra]


def refused_in_one_line_or_worked(code: int, err: str) -> None:
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("pgrad: error: "), err
    else:
        assert code in (0, 1), err  # doctor exits 1 when it finds problems: it worked
        assert "Traceback" not in err, err


# The fast suite keeps a planted symbolic link at every name for every command, and every kind of link at every
# name for the commands that write into a run folder (resume, lm resume, train, report, export). The rest (the
# read-only commands' dangling and hard links: each either refuses in one line or, for a hard link to a file it
# only reads, works, which for report or compare means seconds of plotting) is marked slow; so are the hard links
# that report and export only read (they work), but export's metrics.jsonl. The rest of the matrix:
# `pytest -m slow tests/test_hostile_links.py`.
WRITERS = {("resume",), ("lm", "resume"), ("train",), ("report",), ("export",)}


def is_slow(command: tuple[str, ...], entry: str, kind: str) -> bool:
    if kind == "symlink":
        return False
    if command not in WRITERS:
        return True
    if kind == "hardlink" and command in (("report",), ("export",)):  # a hard link to a file they only read: works
        return not entry.startswith(f"{command[0]}/") and (command, entry) != (("export",), "metrics.jsonl")
    return False


MATRIX = [
    pytest.param(
        command,
        entry,
        kind,
        id=f"{' '.join(command)}-{entry}-{kind}",
        marks=[pytest.mark.slow] * is_slow(command, entry, kind),
    )
    for command in sorted(COMMANDS)
    for entry, kind in CASES
]


@pytest.mark.parametrize(("command", "entry", "kind"), MATRIX)
def test_no_command_writes_through_a_planted_link(
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
    tmp_path: Path,
    command: tuple[str, ...],
    entry: str,
    kind: str,
) -> None:
    outside = outside_files(tmp_path)
    run = tmp_path / "received"
    if COMMANDS[command] == "reads":
        source = request.getfixturevalue("trained_lm" if command[0] == "lm" else "trained")
        shutil.copytree(source, run)
    elif command[0] == "lm":
        pytest.importorskip("transformers")
    before = snapshot(outside)
    plant(run, entry, kind, outside)
    try:
        code = main(argv_for(command, run, tmp_path))
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0)
    refused_in_one_line_or_worked(code, capsys.readouterr().err)
    assert snapshot(outside) == before


# ---- the findings, one by one ------------------------------------------------------------------------------


def victim_file(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    return victim


def one_line_error(capsys: pytest.CaptureFixture[str], code: int, *expected: str) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("pgrad: error: "), err
    for text in expected:
        assert text in err, err


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "received"
    shutil.copytree(trained, copy)
    return copy


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_resume_never_writes_its_pid_through_a_planted_lock(capsys, run, tmp_path, link):
    """Finding 1: ``ln -s ../victim s/.pgrad.lock; pgrad resume s`` left the victim holding a pid."""
    victim = victim_file(tmp_path)
    (run / ".pgrad.lock").unlink(missing_ok=True)
    if link == "symlink":
        (run / ".pgrad.lock").symlink_to(victim)
    else:
        os.link(victim, run / ".pgrad.lock")
    code = main(["resume", str(run), "--total-steps", "768", "--quiet"])
    one_line_error(capsys, code, ".pgrad.lock")
    assert victim.read_text() == "precious\n"


def test_train_does_not_count_a_linked_lock_as_an_empty_folder(capsys, tmp_path):
    """Finding 1: ``train --run-dir D`` took a folder holding only a ``.pgrad.lock`` link for an empty one."""
    victim = victim_file(tmp_path)
    folder = tmp_path / "new"
    folder.mkdir()
    (folder / ".pgrad.lock").symlink_to(victim)
    code = main(["train", "ppo", "--env", "CartPole-v1", "--total-steps", "64", "--run-dir", str(folder), *QUIET])
    one_line_error(capsys, code, ".pgrad.lock")
    assert victim.read_text() == "precious\n"
    assert sorted(p.name for p in folder.iterdir()) == [".pgrad.lock"]


def test_the_temporaries_of_atomic_writes_are_fresh_files(tmp_path):
    """Finding 1: ``open(tmp, "w")`` followed a link already at the temporary's name (``.metrics.jsonl.tmp``,
    ``checkpoints/.index.json.tmp``) and overwrote its target. The index and a log cut back on resume are written
    through fresh temporaries now; a link at the old names is never opened."""
    from pgrad.checkpoint import write_json_atomic
    from pgrad.monitor.sinks import truncate_jsonl

    victim = victim_file(tmp_path)
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ".index.json.tmp").symlink_to(victim)
    write_json_atomic(folder / "index.json", {"latest": None})
    (folder / ".metrics.jsonl.tmp").symlink_to(victim)
    (folder / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    assert truncate_jsonl(folder / "metrics.jsonl", 1) == (1, 0)
    assert victim.read_text() == "precious\n"
    assert json.loads((folder / "index.json").read_text()) == {"latest": None}
    assert (folder / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert sorted(p.name for p in folder.iterdir()) == [
        ".index.json.tmp",
        ".metrics.jsonl.tmp",
        "index.json",
        "metrics.jsonl",
    ]


@pytest.mark.parametrize("link", ["symlink", "dangling", "hardlink", "fifo"])
def test_appends_and_atomic_writes_refuse_a_link(tmp_path, link):
    """The one helper: an append, an atomic write and a read refuse a symbolic link (dangling too) and a special
    file; the writers refuse a hard link. Nothing is created or changed outside."""
    victim = victim_file(tmp_path)
    path = tmp_path / "metrics.jsonl"
    if link == "symlink":
        path.symlink_to(victim)
    elif link == "dangling":
        path.symlink_to(tmp_path / "absent")
    elif link == "hardlink":
        os.link(victim, path)
    else:
        os.mkfifo(path)
    with pytest.raises(PgradError, match="metrics.jsonl"):
        safe_io.open_append(path)
    with pytest.raises(PgradError, match="metrics.jsonl"):
        safe_io.write_atomic(path, "x")
    if link != "hardlink":  # reading a hard-linked file is harmless (a folder copied with cp -al)
        with pytest.raises(PgradError, match="metrics.jsonl"):
            safe_io.read_bytes(path)
    assert victim.read_text() == "precious\n" and not (tmp_path / "absent").exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "index.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), safe_io.atomic_file(path) as handle:
        handle.write(b"half")
        raise RuntimeError("disk gone")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["index.json"]


def test_a_full_disk_during_an_atomic_write_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "index.json"
    path.write_text("old")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left on device") as raised:
        safe_io.write_atomic(path, "new")
    assert raised.value.filename == str(path)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["index.json"]


@pytest.mark.parametrize("name", ["events.jsonl", "metrics.jsonl"])
@pytest.mark.parametrize("link", ["dangling", "hardlink"])
def test_language_model_resume_checks_its_folder(capsys, trained_lm, tmp_path, name, link):
    """Finding 2: ``pgrad lm resume`` appended to a linked metrics.jsonl and created a file outside through a
    dangling events.jsonl."""
    run = tmp_path / "sft"
    shutil.copytree(trained_lm, run)
    victim = victim_file(tmp_path)
    (run / name).unlink()
    if link == "dangling":
        (run / name).symlink_to(tmp_path / "absent")
    else:
        os.link(victim, run / name)
    code = main(["lm", "resume", str(run), "--total-steps", "128", "--quiet"])
    one_line_error(capsys, code, name)
    assert victim.read_text() == "precious\n" and not (tmp_path / "absent").exists()


@pytest.mark.parametrize("name", ["report/report.html", "report/overview.png", "report/return.png"])
@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_report_never_writes_through_a_link_in_its_folder(capsys, run, tmp_path, name, link):
    """Finding 3: ``pgrad report`` wrote report.html and the PNGs through links inside ``report/``."""
    pytest.importorskip("matplotlib")
    victim = victim_file(tmp_path)
    (run / "report").mkdir(exist_ok=True)
    (run / name).symlink_to(victim) if link == "symlink" else os.link(victim, run / name)
    code = main(["report", str(run)])
    one_line_error(capsys, code, name.split("/")[1])
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("name", ["export", "export/policy.pt", "export/policy.pt.json"])
def test_export_never_writes_through_a_link(capsys, run, tmp_path, name):
    """Finding 3: ``export/`` was not checked at all, nor ``export/policy.onnx[.json]``."""
    victim = victim_file(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run / "export").mkdir()
    if name == "export":
        (run / "export").rmdir()
        (run / "export").symlink_to(elsewhere)
    else:
        (run / name).symlink_to(victim)
    code = main(["export", str(run), "--format", "torchscript"])
    one_line_error(capsys, code, name.split("/")[-1])
    assert victim.read_text() == "precious\n" and not any(elsewhere.iterdir())


def test_the_python_api_refuses_a_received_folder_with_a_link(run, tmp_path):
    """Every command: ``PPO.load`` (and so ``load().learn()``) reads no run folder holding a planted link."""
    from pgrad.api import PPO

    victim = victim_file(tmp_path)
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").symlink_to(victim)
    with pytest.raises(PgradError, match="metrics.jsonl"):
        PPO.load(run)
    (run / "metrics.jsonl").unlink()
    os.link(victim, run / "metrics.jsonl")
    agent = PPO.load(run)  # reading is fine; learning would append to the hard-linked file
    with pytest.raises(PgradError, match="hard links"):
        agent.learn(256)
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_a_randomised_run_never_appends_its_draws_through_a_link(capsys, tmp_path, link):
    """Finding 8: a resumed run with domain randomisation appended to a linked ``randomization.jsonl``."""
    pytest.importorskip("mujoco")
    run = tmp_path / "hopper"
    sets = ["--set", "ppo.num_steps=128", "--set", "run.checkpoint_every=128", "--set", "randomize.mass=0.2"]
    argv = ["train", "ppo", "--env", "Hopper-v5", "--no-preset", "--total-steps", "128", "--run-dir", str(run)]
    assert main([*argv, *QUIET, "--set", "env.num_envs=1", *sets]) == 0
    assert (run / "randomization.jsonl").is_file()
    victim = victim_file(tmp_path)
    (run / "randomization.jsonl").unlink()
    (run / "randomization.jsonl").symlink_to(victim) if link == "symlink" else os.link(
        victim, run / "randomization.jsonl"
    )
    code = main(["resume", str(run), "--total-steps", "256", "--quiet"])
    one_line_error(capsys, code, "randomization.jsonl")
    assert victim.read_text() == "precious\n"


def test_a_read_only_checkpoints_folder_is_one_line_and_one_event(capsys, run, monkeypatch):
    """Finding 9: a read-only checkpoints folder (a disk remounted read-only) gave two chained tracebacks and no
    event: the cleanup's ``unlink`` raised inside the error handler. Now: one line, a ``run.checkpoint_failed``
    event, and the checkpoints already saved are kept. (As root, a chmod would not stop a write: the read-only
    disk is simulated at the calls that write in ``checkpoints/``.)"""
    checkpoints = run / "checkpoints"
    before = sorted(p.name for p in checkpoints.iterdir())
    real_mkdir, real_unlink = Path.mkdir, Path.unlink

    def read_only(path: Path) -> bool:
        return path.parent == checkpoints and path.name.startswith(".")

    def mkdir(self: Path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if read_only(self):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    def unlink(self: Path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if read_only(self):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    monkeypatch.setattr(Path, "unlink", unlink)
    code = main(["resume", str(run), "--total-steps", "768", "--quiet"])
    one_line_error(
        capsys, code, "could not write checkpoint step_0000000768", "Read-only file system", "step_0000000512"
    )
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in events].count("run.checkpoint_failed") == 1
    assert sorted(p.name for p in checkpoints.iterdir()) == before


def test_the_checksum_scan_never_follows_a_linked_tensor_file(capsys, run, tmp_path):
    """Finding 14: the checksum scan read and hashed the target of a symlinked ``tensors.safetensors``, however
    large, then blamed the checksum; now the link is named and its target never opened."""
    large = tmp_path / "large.bin"
    large.write_bytes(bytes(1 << 22))
    tensors = run / "checkpoints" / "step_0000000512" / "tensors.safetensors"
    tensors.unlink()
    tensors.symlink_to(large)
    opened: list[str] = []
    real_open = os.open

    def spy(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(os.path.realpath(path))
        return real_open(path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "open", spy)
        code = main(["eval", str(run), "--episodes", "1"])
    err = capsys.readouterr().err
    assert code == 0, err  # the damaged latest is skipped (as resume does), with a warning naming why
    assert "skipped checkpoint step_0000000512: tensors.safetensors is a symbolic link (never followed)" in err
    assert str(large) not in opened
