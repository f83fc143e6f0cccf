"""Every bad input gets one clear line naming the field and what is allowed, exit code 2."""

import subprocess
import sys
from pathlib import Path

import pytest

from pgrad.cli import main


def run_cli(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.err.strip()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "clip_eps=1.5"], "ppo.clip_eps must be in (0, 1); got 1.5"),
        (["--set", "clip_eps=0"], "ppo.clip_eps must be in (0, 1); got 0.0"),
        (["--set", "gamma=1.2"], "ppo.gamma must be in [0, 1]; got 1.2"),
        (["--set", "learning_rate=-0.001"], "ppo.optimizer.learning_rate must be > 0; got -0.001"),
        (["--set", "num_epochs=abc"], "ppo.num_epochs must be an integer; got 'abc'"),
        (["--set", "num_epochs=2.5"], "ppo.num_epochs must be an integer; got 2.5"),
        (["--set", "anneal_lr=3"], "ppo.optimizer.anneal_lr must be true/false; got 3"),
        (["--set", "activation=sigmoid"], "ppo.network.activation must be one of 'tanh', 'relu', 'Tanh', 'ReLU'"),
        (["--set", "env.num_envs=0"], "env.num_envs must be in [1, 4096]; got 0"),
        (
            ["--set", "minibatch_size=100"],
            "ppo.minibatch_size must divide the batch num_steps x env.num_envs = 32 x 8 = 256; got 100",
        ),
        (["--set", "clip_epss=0.1"], "unknown key 'clip_epss' in --set; did you mean 'clip_eps'?"),
        (["--set", "ppo.clip_epss=0.1"], "unknown key 'ppo.clip_epss'; did you mean 'clip_eps'?"),
        (["--set", "noequals"], "--set expects key=value; got 'noequals'"),
    ],
)
def test_bad_config_values(capsys, tmp_path, args, expected):
    code, err = run_cli(capsys, "train", "ppo", "--env", "CartPole-v1", "--run-dir", str(tmp_path / "run"), *args)
    assert code == 2
    assert err.startswith("pgrad: error: ")
    assert expected in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()  # nothing is created before the config is valid


def test_unknown_algorithm(capsys):
    code, err = run_cli(capsys, "train", "ppp", "--env", "CartPole-v1")
    assert code == 2
    assert err == "pgrad: error: unknown algorithm 'ppp' (allowed: " + err.split("(allowed: ")[1]
    assert "ppo" in err


def test_unknown_environment(capsys):
    code, err = run_cli(capsys, "train", "ppo", "--env", "CartPol-v1")
    assert code == 2
    assert "env.id: unknown environment 'CartPol-v1'; did you mean CartPole-v1" in err


def test_malformed_yaml(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ppo:\n  clip_eps: [0.1\n  gamma: 0.9\n")
    code, err = run_cli(capsys, "train", "ppo", "--config", str(bad))
    assert code == 2
    assert f"config file {bad} is not valid YAML at line" in err
    assert len(err.splitlines()) == 1


def test_yaml_with_unknown_section_and_key(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("pppo:\n  clip_eps: 0.1\n")
    code, err = run_cli(capsys, "train", "ppo", "--config", str(config))
    assert code == 2 and "unknown section 'pppo' (allowed: env, run, ppo" in err
    config.write_text("ppo:\n  clip_eps: 0.1\n  gama: 0.9\n")
    code, err = run_cli(capsys, "train", "ppo", "--config", str(config))
    assert code == 2 and "unknown key 'ppo.gama'; did you mean 'gamma'?" in err


def test_missing_config_file(capsys, tmp_path):
    code, err = run_cli(capsys, "train", "ppo", "--config", str(tmp_path / "nope.yaml"))
    assert code == 2 and "cannot read config file" in err


def test_resume_of_a_folder_that_is_not_a_run(capsys, tmp_path):
    code, err = run_cli(capsys, "resume", str(tmp_path))
    assert code == 2 and "is not a pgrad run folder" in err


def test_argparse_errors_are_one_line_exit_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pgrad", "train", "ppo", "--seed", "x"], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "--seed" in result.stderr


def test_no_traceback_from_subprocess(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pgrad", "train", "ppo", "--set", "gamma=2"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "pgrad: error: ppo.gamma must be in [0, 1]; got 2.0"
    assert not Path(tmp_path, "runs").exists()


def test_numbers_in_scientific_notation_are_numbers(tmp_path):
    # YAML 1.1 reads 3e-3 (no dot) as a string; pgrad reads it as the number it is.
    from pgrad.runs import resolve_config

    config, _ = resolve_config("ppo", "CartPole-v1", sets=["learning_rate=3e-3", "run.total_steps=1e5"])
    assert config.algo_config.optimizer.learning_rate == 0.003
    assert config.run.total_steps == 100_000 and isinstance(config.run.total_steps, int)
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("ppo:\n  learning_rate: 2.5e-4\n  ent_coef: 1e-2\nrun:\n  total_steps: 2e4\n")
    config, _ = resolve_config("ppo", "CartPole-v1", config_file=yaml_file)
    assert config.algo_config.ent_coef == 0.01 and config.run.total_steps == 20_000


def test_trainer_refuses_an_algorithm_with_its_own_trainer(tmp_path):
    from pgrad.errors import ConfigError
    from pgrad.runners.on_policy import OnPolicyRunner
    from pgrad.runs import resolve_config

    config, _ = resolve_config("a3c", "CartPole-v1")
    with pytest.raises(ConfigError, match="algorithm 'a3c' needs the asynchronous runner"):
        OnPolicyRunner(config, tmp_path / "run", console=False)
    assert not (tmp_path / "run").exists()
