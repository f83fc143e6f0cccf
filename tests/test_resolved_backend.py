"""The gradient backend a run resolved is recorded: at ``run.started`` and in config.yaml's ``resolved:``.

``gradient_backend: auto`` (PPO's and A2C's default) picks the NumPy hand gradients on the CPU, so the
config alone does not say which path computed a run's gradients; the record does, and reading the
config back ignores it (a resume resolves again from the same sections).
"""

from __future__ import annotations

import pytest
import yaml

from pgrad.algos.a2c import A2C, A2CConfig
from pgrad.algos.a3c import A3C, A3CConfig
from pgrad.algos.numpy_grad import choose_gradient_backend, resolved_record
from pgrad.algos.ppo import PPO, PPOConfig
from pgrad.config import NetworkConfig
from pgrad.monitor.sinks import read_jsonl
from pgrad.nets import ActionSpec
from pgrad.runners.off_policy import OffPolicyRunner
from pgrad.runners.on_policy import OnPolicyRunner
from pgrad.runs import load_run_config, resolve_config

QUIET = ["run.progress=false", "run.tensorboard=false"]
DISCRETE = ActionSpec("discrete", 2)


def test_each_choice_says_why():
    network = NetworkConfig()
    assert choose_gradient_backend("auto", "ppo", network, DISCRETE) == (
        "numpy",
        "ppo.gradient_backend is 'auto' and the NumPy backend implements this setting",
    )
    assert choose_gradient_backend("autograd", "a2c", network, DISCRETE) == (
        "autograd",
        "a2c.gradient_backend is 'autograd'",
    )
    assert choose_gradient_backend("auto", "ppo", network, DISCRETE, "cuda:0") == (
        "autograd",
        "ppo.gradient_backend is 'auto' and run.device is 'cuda:0' (the backend runs on the CPU only)",
    )


def test_record_of_learners_with_and_without_a_choice():
    assert resolved_record(A2C(A2CConfig(), 4, DISCRETE)) == {
        "gradient_backend": "numpy",
        "gradient_backend_reason": "a2c.gradient_backend is 'auto' and the NumPy backend implements this setting",
    }
    assert resolved_record(PPO(PPOConfig(gradient_backend="autograd"), 4, DISCRETE))["gradient_backend"] == "autograd"
    assert resolved_record(A3C(A3CConfig(), 4, DISCRETE)) == {
        "gradient_backend": "autograd",
        "gradient_backend_reason": "a3c has no NumPy backend",
    }


def started(run_dir):
    events = read_jsonl(run_dir / "events.jsonl")
    assert events[0]["kind"] == "run.started"
    return events[0]


@pytest.mark.parametrize(
    ("sets", "backend"),
    [([], "numpy"), (["ppo.gradient_backend=autograd"], "autograd")],
    ids=["auto", "autograd"],
)
def test_a_ppo_run_records_its_backend_and_its_config_loads_back(tmp_path, sets, backend):
    config, _ = resolve_config("ppo", "CartPole-v1", sets=QUIET + sets, total_steps=256)
    OnPolicyRunner(config, tmp_path, console=False).train()
    assert started(tmp_path)["resolved"]["gradient_backend"] == backend
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["resolved"]["gradient_backend"] == backend
    assert saved["ppo"]["gradient_backend"] == config.algo_config.gradient_backend  # the input is unchanged
    # read back (resume) and reused as a --config file: the same config, the record ignored
    assert load_run_config(tmp_path) == config
    assert resolve_config("ppo", config_file=tmp_path / "config.yaml")[0] == config


def test_resume_writes_the_record_once_and_the_same_run(tmp_path):
    config, _ = resolve_config("ppo", "CartPole-v1", sets=QUIET, total_steps=256)
    OnPolicyRunner(config, tmp_path, console=False).train()
    record = (tmp_path / "config.yaml").read_text()
    resumed = OnPolicyRunner(load_run_config(tmp_path, total_steps=512), tmp_path, resume=True, console=False)
    assert resumed.train().steps == 512
    text = (tmp_path / "config.yaml").read_text()
    assert text.count("resolved:") == 1
    assert text == record.replace("total_steps: 256", "total_steps: 512")
    assert [e["kind"] for e in read_jsonl(tmp_path / "events.jsonl")].count("run.started") == 1


def test_an_algorithm_without_a_choice_records_autograd(tmp_path):
    config, _ = resolve_config(
        "sac", "Pendulum-v1", sets=[*QUIET, "sac.loop.learning_starts=64", "sac.loop.batch_size=32"], total_steps=128
    )
    OffPolicyRunner(config, tmp_path, console=False).train()
    assert started(tmp_path)["resolved"] == {
        "gradient_backend": "autograd",
        "gradient_backend_reason": "sac has no NumPy backend",
    }
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["resolved"]["gradient_backend"] == "autograd"
    assert load_run_config(tmp_path) == config
