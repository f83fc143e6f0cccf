"""What the hostile-input tests share (tests/test_hostile_*.py): a CLI call that returns its exit code and
its error line, the check that an error is one line naming what it must, and a small trained PPO run."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgrad.cli import main

QUIET = ["--set", "run.progress=false", "--set", "run.tensorboard=false", "--set", "guard.eval_every=0"]


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``pgrad ARGS`` in this process: (exit code, stderr stripped)."""
    code = main(list(args))
    return code, capsys.readouterr().err.strip()


def one_line_error(code: int, err: str, *expected: str) -> None:
    """Exit 2 and one line ``pgrad: error: ...`` holding every one of ``expected``."""
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("pgrad: error: "), err
    for text in expected:
        assert text in err, err


def train_ppo(run: Path, total_steps: int, *sets: str) -> Path:
    """A quiet PPO CartPole run of ``total_steps`` into ``run`` (``sets``: more ``--set`` flags), unsigned."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("PGRAD_CHECKPOINT_KEY", raising=False)
        argv = ["train", "ppo", "--env", "CartPole-v1", "--total-steps", str(total_steps), "--run-dir", str(run)]
        assert main([*argv, "--quiet", *QUIET, *sets]) == 0
    return run
