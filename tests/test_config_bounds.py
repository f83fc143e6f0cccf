"""Every size a config gives has an upper bound (issue 22, finding 11).

A config may come from someone else's run folder: ``env.num_envs: 5000`` with async envs forked thousands
of processes that outlived their parent, ``run.torch_threads: 100000`` aborted in libgomp, a huge
``loop.buffer_size`` or ``hidden_sizes`` grew memory until the machine gave out. Each is now one line
naming the field and the allowed range, before anything is built; the replay buffer is also measured
against this machine's memory; async env workers die with their parent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pgrad.cli import main
from pgrad.errors import ConfigError
from pgrad.runs import resolve_config

TESTS = Path(__file__).parent


@pytest.mark.parametrize(
    ("algo", "sets", "expected"),
    [
        ("ppo", ["env.num_envs=5000"], "env.num_envs must be in [1, 4096]; got 5000"),
        ("ppo", ["env.num_envs=300", "env.vectorization=async"], "env.num_envs must be in [1, 256]; got 300"),
        ("ppo", ["run.torch_threads=100000"], "run.torch_threads must be in [1, 1024]; got 100000"),
        ("ppo", ["run.episode_window=1e12"], "run.episode_window must be in [1, 1048576]"),
        ("ppo", ["run.keep_checkpoints=1e9"], "run.keep_checkpoints must be in [1, 10000]"),
        ("ppo", ["network.hidden_sizes=[1e8, 1e5]"], "network.hidden_sizes must be a list of 1 to 64 integers"),
        ("ppo", ["network.hidden_sizes=[30000, 30000, 30000]"], "at most 268435456 weights between them"),
        ("ppo", ["network.hidden_sizes=" + str([8] * 65)], "network.hidden_sizes must be a list of 1 to 64"),
        ("sac", ["loop.buffer_size=1e15"], "loop.buffer_size must be in [1, 2147483648]"),
        ("sac", ["loop.batch_size=1e12"], "loop.batch_size must be in [1, 1048576]"),
        ("sac", ["loop.gradient_steps=1e12"], "loop.gradient_steps must be -1 (one per env step of the round) or"),
        ("ppo", ["guard.dump_episodes=1e9"], "guard.dump_episodes must be in [0, 10000]"),
        ("ppo", ["guard.history_window=1e12"], "guard.history_window must be in [5, 1048576]"),
        ("ppo", ["guard.nonfinite_window=1e12"], "guard.nonfinite_window must be in [1, 1048576]"),
        ("ppo", ["guard.eval_episodes=1e12"], "guard.eval_episodes must be in [1, 1048576]"),
        ("ppo", ["ray.workers=100000"], "ray.workers must be in [1, 1024]"),
        ("ppo", ["randomize.action_delay=1e9"], "env.randomize.action_delay must be a step count >= 0"),
        ("ppo", ["randomize.action_delay=[0, 1e9]"], "at most 10000"),
    ],
)
def test_every_size_field_has_an_upper_bound(algo, sets, expected):
    env = "Pendulum-v1" if algo == "sac" else "CartPole-v1"
    with pytest.raises(ConfigError) as caught:
        resolve_config(algo, env, sets=sets)
    assert expected in str(caught.value)
    assert len(str(caught.value).splitlines()) == 1


@pytest.mark.parametrize(
    ("algo", "sets"),
    [
        ("ppo", ["env.num_envs=4096", "run.torch_threads=1024", "network.hidden_sizes=[16384, 16384]"]),
        ("ppo", ["env.num_envs=256", "env.vectorization=async", "randomize.action_delay=[0, 10000]"]),
        ("sac", ["loop.buffer_size=2147483648", "loop.batch_size=1048576", "guard.dump_episodes=10000"]),
    ],
)
def test_the_bounds_themselves_are_allowed(algo, sets):
    resolve_config(algo, "Pendulum-v1" if algo == "sac" else "CartPole-v1", sets=sets)


@pytest.mark.parametrize(
    ("section", "data", "expected"),
    [
        ("lm_sft", {"model": {"n_embd": 100_000, "n_head": 1}}, "lm_sft.model.n_embd must be in [1, 4096]"),
        ("lm_sft", {"model": {"n_layer": 10_000}}, "lm_sft.model.n_layer must be in [1, 64]"),
        ("lm_ppo", {"model": {"n_layer": 64, "n_embd": 4096}}, "lm_ppo.model.n_embd must be small enough"),
        ("lm_sft", {"demonstrations": 10**9}, "lm_sft.demonstrations must be in [1, 1048576]"),
        ("lm_sft", {"heldout_demonstrations": 10**9}, "lm_sft.heldout_demonstrations must be in [1, 1048576]"),
        ("lm_rm", {"train_pairs": 10**9}, "lm_rm.train_pairs must be in [2, 1048576]"),
        ("lm_dpo", {"heldout_pairs": 10**9}, "lm_dpo.heldout_pairs must be in [2, 1048576]"),
        ("lm_ppo", {"batch_size": 2**30, "minibatch_size": 2**30}, "lm_ppo.batch_size must be in [1, 1048576]"),
        ("lm_ppo", {"lora_rank": 10**6}, "lm_ppo.lora_rank must be in [0, 64]"),
        ("lm_ppo", {"eval_prompts": 10**9}, "lm_ppo.eval_prompts must be in [1, 1048576]"),
    ],
)
def test_language_model_sizes_are_bounded(section, data, expected):
    from pgrad.config import build
    from pgrad.lm.config import CONFIG_CLASSES

    with pytest.raises(ConfigError) as caught:
        build(CONFIG_CLASSES[section], data, section)
    assert expected in str(caught.value)


def test_a_received_config_yaml_with_a_fork_bomb_is_one_line(capsys, tmp_path):
    """The sizes of a received config.yaml are checked before anything is built or forked."""
    run = tmp_path / "run"
    base = ["--quiet", "--set", "run.progress=false", "--set", "run.tensorboard=false", "--set", "guard.eval_every=0"]
    assert main(["train", "ppo", "--env", "CartPole-v1", "--total-steps", "256", "--run-dir", str(run), *base]) == 0
    config = run / "config.yaml"
    config.write_text(
        config.read_text()
        .replace("vectorization: auto", "vectorization: async")
        .replace("num_envs: 8", "num_envs: 5000")
    )
    assert "num_envs: 5000" in config.read_text()
    code = main(["resume", str(run), "--total-steps", "512", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.splitlines() == [f"pgrad: error: {err.removeprefix('pgrad: error: ')}"]
    assert "env.num_envs must be in [1, 256]; got 5000" in err


def test_the_replay_buffer_is_measured_against_this_machines_memory(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("pgrad.config.available_memory", lambda: 2**30)  # a 1 GiB machine
    from pgrad.replay import ReplayBuffer

    with pytest.raises(ConfigError, match=r"loop.buffer_size: the replay buffer needs 3.2 GiB when full; this machine"):
        ReplayBuffer(10**8, 3, 1)
    ReplayBuffer(10**6, 3, 1)  # 34 MB: fine
    sets = ["--set", "loop.buffer_size=100000000", "--set", "run.progress=false", "--set", "run.tensorboard=false"]
    code = main(
        ["train", "sac", "--env", "Pendulum-v1", "--total-steps", "64", "--run-dir", str(tmp_path / "r"), *sets]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "this machine has 1.0 GiB available (lower loop.buffer_size)" in err, err


# ---- async env workers die with their parent --------------------------------------------------------

PROBE = """
import sys, time
import numpy as np
from pgrad.config import EnvConfig
from pgrad.envs.factory import make_vector_env
config = EnvConfig(id="a3c_stuck_env:StuckCartPole", num_envs=2, vectorization="async", kwargs={"stuck_after": 0})
envs = make_vector_env(config)
envs.reset(seed=0)
print(" ".join(str(p.pid) for p in envs.processes), flush=True)
envs.step_async(np.zeros(2, dtype=np.int64))  # each worker now sleeps in step (a hung simulator)
time.sleep(120)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie is dead, waiting for whoever adopted it to reap it


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_async_env_workers_die_with_their_parent():
    paths = [str(TESTS), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    parent = subprocess.Popen([sys.executable, "-c", PROBE], stdout=subprocess.PIPE, env=env, text=True)
    workers: list[int] = []
    try:
        assert parent.stdout is not None
        workers = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(workers) == 2 and all(alive(pid) for pid in workers)
        parent.send_signal(signal.SIGKILL)  # no cleanup runs: only the kernel can tell the workers
        parent.wait(timeout=10)
        deadline = time.monotonic() + 5
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(pid) for pid in workers), "async env workers outlived their parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
        for pid in workers:  # the processes this test started, if the assertion above failed
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize(
    ("algo", "field", "high"),
    [
        ("ppo", "num_steps", 2**20),
        ("ppo", "num_epochs", 2**20),
        ("ppo", "minibatch_size", 2**20),
        ("a2c", "num_steps", 2**20),
        ("a2c", "nstep_horizon", 2**20),
        ("actor_critic", "num_steps", 2**20),
        ("ppo_kl", "num_epochs", 2**20),
        ("trpo", "cg_iterations", 2**20),
        ("trpo", "backtrack_iters", 2**20),
        ("trpo", "value_epochs", 2**20),
        ("reinforce", "num_episodes", 2**20),
        ("a3c", "num_workers", 256),
        ("a3c", "report_every", 2**20),
        ("impala", "actor_queue", 2**20),
        ("sac", "target_update_interval", 2**20),
        ("td3", "policy_delay", 2**20),
    ],
)
def test_the_algorithms_sizes_are_bounded(algo, field, high):
    # a3c.num_workers forks that many processes; the others size arrays or loops (issue 22, finding 11)
    env = "Pendulum-v1" if algo in ("sac", "td3") else "CartPole-v1"
    with pytest.raises(ConfigError) as caught:
        resolve_config(algo, env, sets=[f"{algo}.{field}={high + 1}"], use_preset=False)
    assert str(caught.value) == f"{algo}.{field} must be in [1, {high}]; got {high + 1}"


def test_a_rollout_is_measured_against_this_machines_memory(capsys, tmp_path, monkeypatch):
    # num_steps x env.num_envs may each be within bounds and together need more memory than the machine has
    monkeypatch.setattr("pgrad.config.available_memory", lambda: 2**30)  # a 1 GiB machine
    sets = ["ppo.num_steps=1000000", "env.num_envs=64", "env.vectorization=sync", "run.progress=false"]
    args = ["train", "ppo", "--env", "CartPole-v1", "--no-preset", "--run-dir", str(tmp_path / "r")]
    assert main([*args, *(item for s in sets for item in ("--set", s))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pgrad: error: ppo.num_steps: a rollout of num_steps x env.num_envs and its batch needs ")
    assert "this machine has 1.0 GiB available" in err and "\n" not in err
