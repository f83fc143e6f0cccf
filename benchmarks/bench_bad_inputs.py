"""A sweep of bad command-line inputs: does each get one line and exit code 2?

    PYTHONPATH=src .venv/bin/python benchmarks/bench_bad_inputs.py             # every case, a table of the misses
    PYTHONPATH=src .venv/bin/python benchmarks/bench_bad_inputs.py --verbose   # every case's outcome
    PYTHONPATH=src .venv/bin/python benchmarks/bench_bad_inputs.py --only report

Table-driven: each case is a ``pgrad`` command line (``{run}`` a fresh copy of a small trained PPO CartPole
run, vandalised by the case's ``setup``; ``{tmp}`` the case's own folder, also its working directory) and
what a correct answer is: by default ONE line ``pgrad: error: ...`` on stderr and exit code 2 (an optional
``check`` adds what that line or the files must say); a few cases whose right answer is not an error give
their own ``check``. Each outcome is classed as "one line, exit 2", "traceback" (a Python traceback on
stderr) or "other" (any other exit code or output, a hang past ``--timeout``), and judged against the case.

Speed: the parent imports pgrad (and torch) once, then forks a child per case that calls
``pgrad.cli.main`` with stdout and stderr sent to files, as ``python -m pgrad`` would; an exception that
escapes ``main`` is printed as the interpreter would print it. About 2 s a case instead of 5.
Run it with ``PYTHONPATH`` pointing at another checkout's ``src`` to sweep that version (the trained run
is made by the version swept).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pgrad.cli import main

QUIET = ["--quiet", "--set", "run.progress=false", "--set", "run.tensorboard=false", "--set", "guard.eval_every=0"]
TRAIN = ["train", "ppo", "--env", "CartPole-v1", "--total-steps", "256", "--run-dir", "{tmp}/new", *QUIET]
MEMORY_LIMIT = 4 * 2**30  # bytes of address space a case may add (see run_case)
DEEP_BLOCK = "".join(f"{'  ' * depth}k{depth}:\n" for depth in range(600)) + "  " * 600 + "x: 1\n"
DEEP_FLOW = "env:\n  kwargs:\n    a: " + "[" * 1000 + "]" * 1000 + "\n"
ALIAS_BOMB = "env:\n  kwargs:\n    a: &a [1, 1]\n    b: &b [*a, *a]\n"


@dataclass
class Outcome:
    """What one command did."""

    code: int | None  # None: killed after the timeout
    out: str
    err: str
    tmp: Path

    @property
    def kind(self) -> str:
        """'one line, exit 2', 'traceback' or 'other'."""
        if "Traceback (most recent call last)" in self.err:
            return "traceback"
        if self.code == 2 and len(self.err.strip().splitlines()) == 1 and self.err.startswith("pgrad: error: "):
            return "one line, exit 2"
        return "other"


@dataclass
class Case:
    """A bad input and its right answer: ``check`` None means one line and exit 2, nothing more."""

    name: str
    args: list[str]
    setup: Callable[[Path, Path], None] | None = None  # (run copy, case folder)
    check: Callable[[Outcome], bool] | None = None
    error: bool = True  # False: the right answer is not an error; ``check`` says what it is
    signals: list[float] = field(default_factory=list)  # seconds after the start at which to send SIGINT
    note: str = ""


# ---- setups: how a case vandalises its copy of the run ---------------------------------------------
def write(name: str, data: bytes | str) -> Callable[[Path, Path], None]:
    def setup(run: Path, tmp: Path) -> None:
        target = run / name if not name.startswith("/") else tmp / name[1:]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data.encode() if isinstance(data, str) else data)

    return setup


def config_edit(addition: str, pattern: str = "", replacement: str = "") -> Callable[[Path, Path], None]:
    """Edit the run's config.yaml (a received folder's config): put ``addition`` in front, replace ``pattern``
    (a regular expression, first match) by ``replacement``."""

    def setup(run: Path, tmp: Path) -> None:
        text = (run / "config.yaml").read_text()
        if pattern:
            text, count = re.subn(pattern, replacement, text, count=1, flags=re.MULTILINE)
            assert count == 1, pattern
        (run / "config.yaml").write_text(addition + text)

    return setup


def rename_run(name: str) -> Callable[[Path, Path], None]:
    def setup(run: Path, tmp: Path) -> None:
        shutil.copytree(run, tmp / name)

    return setup


def make_dirs(*names: str) -> Callable[[Path, Path], None]:
    def setup(run: Path, tmp: Path) -> None:
        for name in names:
            (tmp / name).mkdir(parents=True, exist_ok=True)

    return setup


def both(*setups: Callable[[Path, Path], None]) -> Callable[[Path, Path], None]:
    def setup(run: Path, tmp: Path) -> None:
        for each in setups:
            each(run, tmp)

    return setup


DEEP_CONFIG = config_edit("deep:\n" + "".join(f"{'  ' * (d + 1)}k{d}:\n" for d in range(600)) + "  " * 601 + "x\n")
BINARY = bytes(range(256)) * 64
DEEP_JSON = b'{"step": 1, "a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"


# ---- checks for the cases whose right answer says more than "an error" -----------------------------
def says(*texts: str) -> Callable[[Outcome], bool]:
    return lambda o: all(text in o.out + o.err for text in texts)


def says_not(*texts: str) -> Callable[[Outcome], bool]:
    return lambda o: not any(text in o.out + o.err for text in texts)


def compare_into_folder(o: Outcome) -> bool:
    """compare --out DIR: a PNG inside DIR, and the path printed is the file written."""
    written = [line.removeprefix("plot: ") for line in o.out.splitlines() if line.startswith("plot: ")]
    return o.code == 0 and len(written) == 1 and Path(o.tmp, written[0]).is_file() and written[0].endswith(".png")


def interrupted_without_checkpoint(o: Outcome) -> bool:
    """Ctrl-C twice: exit 130, no traceback, and 'pgrad resume' named only where a checkpoint exists to resume
    from (the first Ctrl-C may also have had time to write the final checkpoint: then it is named rightly)."""
    checkpoints = list(Path(o.tmp, "new", "checkpoints").glob("step_*"))
    return o.code == 130 and "Traceback" not in o.err and ("pgrad resume" not in o.out + o.err or bool(checkpoints))


def top_level_and_train(r: str) -> list[Case]:
    """The top level, argparse, and train's config values, files and paths."""
    c: list[Case] = []
    add = c.append
    # ---- top level and argparse
    add(Case("no command", []))
    add(Case("unknown command", ["bogus"]))
    add(Case("unknown top-level flag", ["--bogus"], check=says_not("pgrad pgrad")))
    add(Case("lm without a command", ["lm"]))
    add(Case("lm sft unknown flag", ["lm", "sft", "--bogus"], check=says("pgrad lm sft --help")))
    add(Case("list with an argument", ["list", "extra"]))
    add(Case("train --seed x", ["train", "ppo", "--seed", "x"]))
    # ---- train: config values (tests/test_cli_errors.py, tests/test_hostile_inputs.py)
    for setting in [
        "clip_eps=1.5",
        "clip_eps=0",
        "gamma=1.2",
        "learning_rate=-0.001",
        "num_epochs=abc",
        "num_epochs=2.5",
        "anneal_lr=3",
        "activation=sigmoid",
        "env.num_envs=0",
        "minibatch_size=100",
        "clip_epss=0.1",
        "ppo.clip_epss=0.1",
        "noequals",
        "clip_eps=.nan",
        "guard.kl_critical=.nan",
        "gamma=.inf",
        "guard.eval_min_return=-.inf",
        "ppo.optimizer.learning_rate=1e999",
        "env.num_envs=100000000000000000000",
        "env.kwargs=" + "[" * 1000 + "]" * 1000,
        "env.kwargs={a: &x [1], b: *x}",
    ]:
        add(Case(f"train --set {setting[:40]}", [*TRAIN, "--set", setting]))
    add(Case("train unknown algorithm", ["train", "ppp", "--env", "CartPole-v1"]))
    add(Case("train unknown env", ["train", "ppo", "--env", "CartPol-v1"]))
    add(Case("train env entry point missing module", ["train", "ppo", "--env", "no_such_module_x:Env"]))
    add(Case("train empty env", ["train", "ppo", "--env", ""]))
    add(Case("train --seed 2**32", [*TRAIN, "--seed", "4294967296"]))
    add(Case("train --seed -1", [*TRAIN, "--seed", "-1"]))
    add(Case("train --total-steps 0", [*TRAIN, "--total-steps", "0"]))
    add(Case("train --total-steps -5", [*TRAIN, "--total-steps", "-5"]))
    add(Case("train --inject bogus", [*TRAIN, "--inject", "bogus"]))
    add(Case("train --inject nan_grad@x", [*TRAIN, "--inject", "nan_grad@x"]))
    add(Case("train --workers 2 without --backend ray", [*TRAIN, "--workers", "2"], check=says("--backend ray")))
    add(Case("train --address without --backend ray", [*TRAIN, "--address", "127.0.0.1:1"]))
    add(Case("train --workers 0 --backend ray", [*TRAIN, "--backend", "ray", "--workers", "0"]))
    add(Case("train --backend bogus", [*TRAIN, "--backend", "bogus"]))
    # ---- train: config files
    add(Case("--config missing", [*TRAIN, "--config", "{tmp}/nope.yaml"]))
    add(Case("--config a folder", [*TRAIN, "--config", "{tmp}"]))
    add(Case("--config /dev/zero", [*TRAIN, "--config", "/dev/zero"]))
    add(Case("--config malformed", [*TRAIN, "--config", "{tmp}/c.yaml"], write("/c.yaml", "ppo:\n  a: [0.1\n")))
    add(Case("--config unknown section", [*TRAIN, "--config", "{tmp}/c.yaml"], write("/c.yaml", "pppo:\n  a: 1\n")))
    add(Case("--config unknown key", [*TRAIN, "--config", "{tmp}/c.yaml"], write("/c.yaml", "ppo:\n  gama: 0.9\n")))
    add(Case("--config not a mapping", [*TRAIN, "--config", "{tmp}/c.yaml"], write("/c.yaml", "[1, 2]\n")))
    add(Case("--config section a scalar", [*TRAIN, "--config", "{tmp}/c.yaml"], write("/c.yaml", "env: 5\n")))
    add(Case("--config not UTF-8", [*TRAIN, "--config", "{tmp}/c.yaml"], write("/c.yaml", b"ppo:\n  a: \xff\n")))
    add(Case("--config binary", [*TRAIN, "--config", "{tmp}/c.yaml"], write("/c.yaml", BINARY)))
    add(Case("--config alias bomb", [*TRAIN, "--config", "{tmp}/c.yaml"], write("/c.yaml", ALIAS_BOMB)))
    add(
        Case(
            "--config !!binary",
            [*TRAIN, "--config", "{tmp}/c.yaml"],
            write("/c.yaml", "env:\n  kwargs:\n    b: !!binary aGk=\n"),
        )
    )
    add(
        Case(
            "--config date",
            [*TRAIN, "--config", "{tmp}/c.yaml"],
            write("/c.yaml", "env:\n  kwargs:\n    d: 2024-01-01\n"),
        )
    )
    add(
        Case(
            "--config python tag",
            [*TRAIN, "--config", "{tmp}/c.yaml"],
            write("/c.yaml", "env: !!python/object:os.system {}\n"),
        )
    )
    add(Case("--config 600 levels (block)", [*TRAIN, "--config", "{tmp}/c.yaml"], write("/c.yaml", DEEP_BLOCK)))
    add(Case("--config 1000 levels (flow)", [*TRAIN, "--config", "{tmp}/c.yaml"], write("/c.yaml", DEEP_FLOW)))
    # ---- train: run folders and paths
    add(Case("--run-dir a file", [*TRAIN[: -len(QUIET) - 2], "--run-dir", "{tmp}/f", *QUIET], write("/f", "x")))
    add(
        Case(
            "--run-dir under a file", [*TRAIN[: -len(QUIET) - 2], "--run-dir", "{tmp}/f/run", *QUIET], write("/f", "x")
        )
    )
    add(Case("--run-dir unwritable (/proc)", [*TRAIN[: -len(QUIET) - 2], "--run-dir", "/proc/pgrad-run", *QUIET]))
    add(Case("--run-dir a run's folder", [*TRAIN[: -len(QUIET) - 2], "--run-dir", r, *QUIET]))
    add(
        Case(
            "--run-dir another non-empty folder",
            [*TRAIN[: -len(QUIET) - 2], "--run-dir", "{tmp}/d", *QUIET],
            write("/d/x", "x"),
        )
    )
    return c


def resume_and_eval(r: str) -> list[Case]:
    """resume and eval of a vandalised run folder."""
    c: list[Case] = []
    add = c.append
    # ---- resume
    add(Case("resume a missing folder", ["resume", "{tmp}/nope"]))
    add(Case("resume a folder that is not a run", ["resume", "{tmp}"]))
    add(Case("resume a file", ["resume", "{tmp}/f"], write("/f", "x")))
    add(Case("resume --total-steps abc", ["resume", r, "--total-steps", "abc"]))
    add(Case("resume --total-steps -1", ["resume", r, "--total-steps", "-1", "--quiet"]))
    add(
        Case(
            "resume --total-steps below the run's",
            ["resume", r, "--total-steps", "10", "--quiet"],
            error=False,
            check=lambda o: o.code in (0, 2) and "Traceback" not in o.err,
        )
    )
    add(Case("resume config.yaml 600 levels", ["resume", r, "--quiet"], DEEP_CONFIG))
    add(Case("resume config.yaml binary", ["resume", r, "--quiet"], write("config.yaml", BINARY)))
    add(Case("resume config.yaml empty", ["resume", r, "--quiet"], write("config.yaml", "")))
    add(Case("resume config.yaml a list", ["resume", r, "--quiet"], write("config.yaml", "[1]\n")))
    add(
        Case(
            "resume config.yaml bad value",
            ["resume", r, "--quiet"],
            config_edit("", r"^  kl_critical: .*$", "  kl_critical: -1"),
        )
    )
    add(Case("resume config.yaml unknown algo", ["resume", r, "--quiet"], config_edit("", r"^algo: .*$", "algo: nope")))
    add(Case("resume index.json binary", ["resume", r, "--quiet"], write("checkpoints/index.json", BINARY)))
    add(
        Case(
            "resume state.json binary",
            ["resume", r, "--quiet"],
            write("checkpoints/step_0000001024/state.json", BINARY),
            error=False,
            check=says("skipped checkpoint step_0000001024"),
            note="falls back to the checkpoint before, with a warning",
        )
    )
    add(
        Case(
            "resume tensors truncated",
            ["resume", r, "--quiet"],
            write("checkpoints/step_0000001024/tensors.safetensors", b"\x08\x00"),
            error=False,
            check=says("skipped checkpoint step_0000001024"),
            note="falls back to the checkpoint before, with a warning",
        )
    )
    add(
        Case(
            "resume metrics.jsonl nested 100k",
            ["resume", r, "--total-steps", "1280", "--quiet"],
            write("metrics.jsonl", DEEP_JSON),
            error=False,
            check=lambda o: o.code == 0,
        )
    )
    add(Case("resume --trust-env-code on a folder that is not a run", ["resume", "{tmp}", "--trust-env-code"]))
    # ---- eval
    add(Case("eval a missing folder", ["eval", "{tmp}/nope"]))
    add(Case("eval a folder that is not a run", ["eval", "{tmp}"]))
    add(Case("eval --episodes 0", ["eval", r, "--episodes", "0"]))
    add(Case("eval --episodes -3", ["eval", r, "--episodes", "-3"]))
    add(Case("eval --episodes abc", ["eval", r, "--episodes", "abc"]))
    add(Case("eval --checkpoint nope", ["eval", r, "--checkpoint", "nope"]))
    add(Case("eval --checkpoint ../..", ["eval", r, "--checkpoint", "../../x"]))
    add(Case("eval --seed 2**32", ["eval", r, "--seed", "4294967296"]))
    add(Case("eval --randomize bogus", ["eval", r, "--randomize", "bogus"]))
    add(Case("eval --randomize mass=abc", ["eval", r, "--randomize", "mass=abc"]))
    add(Case("eval --randomize mass=-1", ["eval", r, "--randomize", "mass=-1"]))
    add(Case("eval --prompts on an env run", ["eval", r, "--prompts", "5"]))
    add(Case("eval --video unwritable (/proc)", ["eval", r, "--episodes", "1", "--video", "/proc/pgrad-video"]))
    add(Case("eval --video a file", ["eval", r, "--episodes", "1", "--video", "{tmp}/f"], write("/f", "x")))
    add(Case("eval config.yaml 600 levels", ["eval", r], DEEP_CONFIG))
    add(Case("eval config.yaml binary", ["eval", r], write("config.yaml", BINARY)))
    add(
        Case(
            "eval state.json binary",
            ["eval", r],
            write("checkpoints/step_0000001024/state.json", BINARY),
            error=False,
            check=says("skipped checkpoint step_0000001024"),
            note="falls back to the checkpoint before, with a warning",
        )
    )
    return c


def export_doctor_report(r: str) -> list[Case]:
    """export, doctor and report."""
    c: list[Case] = []
    add = c.append
    # ---- export
    add(Case("export --format bogus", ["export", r, "--format", "bogus"]))
    add(Case("export without --format", ["export", r]))
    add(Case("export a missing folder", ["export", "{tmp}/nope", "--format", "onnx"]))
    add(Case("export --checkpoint nope", ["export", r, "--format", "onnx", "--checkpoint", "nope"]))
    add(Case("export --out unwritable (/proc)", ["export", r, "--format", "onnx", "--out", "/proc/pgrad.onnx"]))
    add(Case("export --out /dev/full", ["export", r, "--format", "torchscript", "--out", "/dev/full"]))
    add(
        Case(
            "export --out under a file", ["export", r, "--format", "onnx", "--out", "{tmp}/f/p.onnx"], write("/f", "x")
        )
    )
    add(Case("export --out a folder", ["export", r, "--format", "onnx", "--out", "{tmp}/d"], make_dirs("d")))
    from_state = "export reads the config saved in the checkpoint's state.json, not config.yaml"
    add(
        Case(
            "export config.yaml 600 levels",
            ["export", r, "--format", "onnx"],
            DEEP_CONFIG,
            error=False,
            check=lambda o: o.code == 0,
            note=from_state,
        )
    )
    add(
        Case(
            "export config.yaml binary",
            ["export", r, "--format", "onnx"],
            write("config.yaml", BINARY),
            error=False,
            check=lambda o: o.code == 0,
            note=from_state,
        )
    )
    # ---- doctor
    add(Case("doctor a missing folder", ["doctor", "{tmp}/nope"]))
    add(Case("doctor a file", ["doctor", "{tmp}/f"], write("/f", "x")))
    add(Case("doctor an empty folder", ["doctor", "{tmp}/d"], make_dirs("d")))
    add(
        Case(
            "doctor metrics.jsonl binary",
            ["doctor", r],
            write("metrics.jsonl", BINARY),
            error=False,
            check=lambda o: o.code in (0, 1, 2) and "Traceback" not in o.err,
        )
    )
    add(
        Case(
            "doctor events.jsonl binary",
            ["doctor", r],
            write("events.jsonl", BINARY),
            error=False,
            check=lambda o: o.code in (0, 1, 2) and "Traceback" not in o.err,
        )
    )
    add(
        Case(
            "doctor metrics.jsonl nested 100k",
            ["doctor", r],
            write("metrics.jsonl", DEEP_JSON),
            error=False,
            check=lambda o: o.code in (0, 1, 2) and "Traceback" not in o.err,
        )
    )
    defaults = "the doctor reads only guard thresholds from config.yaml, the defaults when it is unreadable"
    add(
        Case(
            "doctor config.yaml 600 levels",
            ["doctor", r],
            DEEP_CONFIG,
            error=False,
            check=lambda o: o.code in (0, 1) and "Traceback" not in o.err,
            note=defaults,
        )
    )
    add(
        Case(
            "doctor config.yaml binary",
            ["doctor", r],
            write("config.yaml", BINARY),
            error=False,
            check=lambda o: o.code in (0, 1) and "Traceback" not in o.err,
            note=defaults,
        )
    )
    # ---- report
    add(Case("report a missing folder", ["report", "{tmp}/nope"]))
    add(Case("report a file", ["report", "{tmp}/f"], write("/f", "x")))
    add(Case("report --out unwritable (/proc)", ["report", r, "--out", "/proc/pgrad-report"]))
    add(Case("report --out a file", ["report", r, "--out", "{tmp}/f"], write("/f", "x")))
    add(Case("report --out under a file", ["report", r, "--out", "{tmp}/f/rep"], write("/f", "x")))
    add(
        Case(
            "report metrics.jsonl binary",
            ["report", r],
            write("metrics.jsonl", BINARY),
            error=False,
            check=lambda o: o.code in (0, 2) and "Traceback" not in o.err,
        )
    )
    add(
        Case(
            "report metrics.jsonl nested 100k",
            ["report", r],
            write("metrics.jsonl", DEEP_JSON),
            error=False,
            check=lambda o: o.code in (0, 2) and "Traceback" not in o.err,
        )
    )
    add(
        Case(
            "report config.yaml 600 levels",
            ["report", r],
            DEEP_CONFIG,
            error=False,
            check=lambda o: o.code == 0,
            note="the report reads only the step unit from config.yaml (doctor's rule)",
        )
    )
    for name in ["run$x", "a$\\frac{1}{$b", "r_{1}^$2$", "r\\$n"]:
        add(
            Case(
                f"report of a folder named {name!r}",
                ["report", "{tmp}/" + name],
                rename_run(name),
                error=False,
                check=lambda o: o.code == 0 and "Traceback" not in o.err,
            )
        )
    return c


def compare_tune_lm(r: str) -> list[Case]:
    """compare, tune, the language-model commands, Ctrl-C."""
    c: list[Case] = []
    add = c.append
    # ---- compare
    add(Case("compare a missing folder", ["compare", "{tmp}/nope"]))
    add(
        Case(
            "compare --out DIR",
            ["compare", r, "--out", "{tmp}/d"],
            make_dirs("d"),
            error=False,
            check=compare_into_folder,
        )
    )
    add(Case("compare --out unwritable (/proc)", ["compare", r, "--out", "/proc/pgrad.png"]))
    add(Case("compare --out /dev/full", ["compare", r, "--out", "/dev/full"]))
    add(Case("compare --out under a file", ["compare", r, "--out", "{tmp}/f/c.png"], write("/f", "x")))
    add(Case("compare --confidence 2", ["compare", r, "--confidence", "2"]))
    add(Case("compare --confidence nan", ["compare", r, "--confidence", "nan"]))
    add(Case("compare --statistic bogus", ["compare", r, "--statistic", "bogus"]))
    add(
        Case(
            "compare metrics.jsonl binary",
            ["compare", r, "--out", "{tmp}/c.png"],
            write("metrics.jsonl", BINARY),
            error=False,
            check=lambda o: o.code in (0, 2) and "Traceback" not in o.err,
        )
    )
    add(
        Case(
            "compare metrics.jsonl nested 100k",
            ["compare", r, "--out", "{tmp}/c.png"],
            write("metrics.jsonl", DEEP_JSON),
            error=False,
            check=lambda o: o.code in (0, 2) and "Traceback" not in o.err,
        )
    )
    add(Case("compare config.yaml 600 levels", ["compare", r, "--out", "{tmp}/c.png"], DEEP_CONFIG))
    add(Case("compare config.yaml binary", ["compare", r, "--out", "{tmp}/c.png"], write("config.yaml", BINARY)))
    add(
        Case(
            "compare a folder named with mathtext",
            ["compare", "{tmp}/a$\\frac{1}{$b", "--out", "{tmp}/c.png"],
            rename_run("a$\\frac{1}{$b"),
            error=False,
            check=lambda o: o.code == 0 and "Traceback" not in o.err,
        )
    )
    # ---- tune
    tune = ["tune", "ppo", "--env", "CartPole-v1", "--tune-dir", "{tmp}/tune"]
    add(Case("tune --total-steps 0", [*tune, "--trials", "1", "--total-steps", "0"]))
    add(Case("tune --total-steps -1", [*tune, "--trials", "1", "--total-steps", "-1"]))
    add(Case("tune --trials 0", [*tune, "--trials", "0", "--total-steps", "256"]))
    add(Case("tune --trials -2", [*tune, "--trials", "-2", "--total-steps", "256"]))
    add(Case("tune --seed -1", [*tune, "--trials", "1", "--total-steps", "256", "--seed", "-1"]))
    add(Case("tune unknown algorithm", ["tune", "ppp", "--env", "CartPole-v1", "--trials", "1"]))
    add(Case("tune --set bogus", [*tune, "--trials", "1", "--set", "bogus=1"]))
    add(
        Case(
            "tune --tune-dir a file",
            ["tune", "ppo", "--env", "CartPole-v1", "--tune-dir", "{tmp}/f", "--trials", "1", "--total-steps", "256"],
            write("/f", "x"),
        )
    )
    add(
        Case(
            "tune --config 600 levels",
            [*tune, "--trials", "1", "--config", "{tmp}/c.yaml"],
            write("/c.yaml", DEEP_BLOCK),
        )
    )
    add(Case("tune --config /dev/zero", [*tune, "--trials", "1", "--config", "/dev/zero"]))
    # ---- language models
    lm = ["--run-dir", "{tmp}/lm", "--total-steps", "8", "--quiet"]
    add(Case("lm sft --set bogus", ["lm", "sft", *lm, "--set", "bogus=1"]))
    add(Case("lm rm --set lm_rm.bogus", ["lm", "rm", *lm, "--set", "lm_rm.bogus=1"]))
    add(Case("lm ppo --inject bogus", ["lm", "ppo", *lm, "--inject", "bogus"]))
    add(Case("lm dpo --total-steps -1", ["lm", "dpo", "--run-dir", "{tmp}/lm", "--total-steps", "-1", "--quiet"]))
    add(
        Case("lm sft --config 600 levels", ["lm", "sft", *lm, "--config", "{tmp}/c.yaml"], write("/c.yaml", DEEP_BLOCK))
    )
    add(Case("lm sft --config /dev/zero", ["lm", "sft", *lm, "--config", "/dev/zero"]))
    add(
        Case(
            "lm sft --run-dir unwritable (/proc)",
            ["lm", "sft", "--run-dir", "/proc/pgrad-lm", "--total-steps", "8", "--quiet"],
        )
    )
    add(Case("lm resume a folder that is not a run", ["lm", "resume", "{tmp}"]))
    add(Case("lm resume config.yaml 600 levels", ["lm", "resume", r], DEEP_CONFIG))
    add(Case("lm bogus", ["lm", "bogus"]))
    # ---- Ctrl-C twice before the first checkpoint
    add(
        Case(
            "double Ctrl-C before the first checkpoint",
            [
                "train",
                "ppo",
                "--env",
                "CartPole-v1",
                "--total-steps",
                "10000000",
                "--run-dir",
                "{tmp}/new",
                *QUIET,
                "--set",
                "run.checkpoint_every=100000000",
            ],
            error=False,
            check=interrupted_without_checkpoint,
            signals=[3.0, 3.2],
        )
    )
    return c


def cases() -> list[Case]:
    """Every case, by command (``{run}``: the run copy, filled in per case)."""
    r = "{run}"
    return [*top_level_and_train(r), *resume_and_eval(r), *export_doctor_report(r), *compare_tune_lm(r)]


def run_case(case: Case, trained: Path, root: Path, timeout: float) -> Outcome:
    """Fork, run the case's command line in the child (cwd: the case's folder), collect what it printed."""
    tmp = Path(tempfile.mkdtemp(prefix="case-", dir=root))
    run = tmp / "run"
    shutil.copytree(trained, run)
    if case.setup is not None:
        case.setup(run, tmp)
    argv = [arg.replace("{run}", str(run)).replace("{tmp}", str(tmp)) for arg in case.args]
    out_path, err_path = tmp / ".stdout", tmp / ".stderr"
    pid = os.fork()
    if pid == 0:  # the child: never returns into the parent's code
        code = 1
        try:
            os.chdir(tmp)
            os.setpgid(0, 0)  # its own process group: a timeout kills whatever it started too
            # a memory bomb (reading /dev/zero whole) ends in MemoryError, not in the machine's swap
            used = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            resource.setrlimit(resource.RLIMIT_AS, (used * 4 + MEMORY_LIMIT, resource.RLIM_INFINITY))
            fd_out, fd_err = os.open(out_path, os.O_WRONLY | os.O_CREAT), os.open(err_path, os.O_WRONLY | os.O_CREAT)
            os.dup2(fd_out, 1)
            os.dup2(fd_err, 2)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            try:
                code = main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                if not isinstance(exc.code, int) and exc.code is not None:
                    print(exc.code, file=sys.stderr)
            except BaseException:  # what the interpreter prints for an exception that escapes main
                traceback.print_exc()
                code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code if isinstance(code, int) else 1)
    start = time.monotonic()
    pending = sorted(case.signals)
    status = None
    while time.monotonic() - start < timeout:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if pending and time.monotonic() - start >= pending[0]:
            pending.pop(0)
            os.kill(pid, signal.SIGINT)
        time.sleep(0.02)
    else:
        os.killpg(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status) if status is not None else None
    read = lambda p: p.read_bytes().decode("utf-8", "replace") if p.exists() else ""  # noqa: E731
    return Outcome(code, read(out_path), read(err_path), tmp)


def judge(case: Case, outcome: Outcome) -> bool:
    """Whether the outcome is the case's right answer."""
    if case.error and outcome.kind != "one line, exit 2":
        return False
    return case.check is None or bool(case.check(outcome))


def train_fixture(root: Path) -> Path:
    """A 1024-step PPO CartPole run with checkpoints at 256, 512, 768 and 1024 steps."""
    run = root / "trained"
    code = main(
        ["train", "ppo", "--env", "CartPole-v1", "--total-steps", "1024", "--run-dir", str(run), *QUIET]
        + ["--set", "run.checkpoint_every=256"]
    )
    if code != 0:
        raise SystemExit(f"could not train the fixture run (exit {code})")
    return run


def main_sweep() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="cases whose name contains this text")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a case may run (default: 60)")
    parser.add_argument("--verbose", action="store_true", help="every case's outcome, not only the misses")
    args = parser.parse_args()
    os.environ.pop("PGRAD_CHECKPOINT_KEY", None)
    import pgrad

    chosen = [case for case in cases() if args.only in case.name]
    print(f"pgrad from {Path(pgrad.__file__).parent}; {len(chosen)} cases", flush=True)
    with tempfile.TemporaryDirectory(prefix="pgrad-bad-inputs-") as root_name:
        root = Path(root_name)
        trained = train_fixture(root)
        counts: dict[str, int] = {}
        misses = 0
        for number, case in enumerate(chosen, 1):
            outcome = run_case(case, trained, root, args.timeout)
            right = judge(case, outcome)
            kind = outcome.kind if outcome.code is not None else "other"
            counts[kind] = counts.get(kind, 0) + 1
            misses += not right
            if args.verbose or not right:
                first = (outcome.err.strip().splitlines() or outcome.out.strip().splitlines() or [""])[-1]
                code = "timeout" if outcome.code is None else f"exit {outcome.code}"
                mark = "ok  " if right else "MISS"
                print(f"{mark} {number:3d} {case.name:<48} {kind:<17} {code:<8} {first[:110]}", flush=True)
            shutil.rmtree(outcome.tmp, ignore_errors=True)
        summary = ", ".join(f"{counts.get(kind, 0)} {kind}" for kind in ("one line, exit 2", "traceback", "other"))
        print(f"\n{len(chosen)} cases: {summary}; {len(chosen) - misses} answered right, {misses} not")
    return 0


if __name__ == "__main__":
    raise SystemExit(main_sweep())
