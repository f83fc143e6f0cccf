"""Ray rollout workers (issue 11): one worker is the local run, resume is exact, killed workers are replaced.

One Ray instance serves the whole module (``ray_session``); each run joins it (``pgrad.runners.ray_backend``
uses a Ray this process already runs) and its workers are killed with the run."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

from pgrad.errors import TrainingHalted
from pgrad.runners import runner_for
from pgrad.runs import resolve_config
from ray_helpers import local_ray  # before ray: it sets Ray's auth variables

ray = pytest.importorskip("ray")

# Small PPO on CartPole: 2 envs per worker, 64 steps per env per update.
SETS = [
    "env.num_envs=2",
    "ppo.num_steps=64",
    "ppo.minibatch_size=64",
    "ppo.num_epochs=4",
    "run.progress=false",
    "run.tensorboard=false",
    "guard.eval_every=0",
]


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    with local_ray():
        yield


def make_runner(tmp_path, name, backend="ray", workers=1, total=1024, extra=(), resume=False):
    sets = [*SETS, f"run.backend={backend}", f"ray.workers={workers}", *extra]
    config, _ = resolve_config("ppo", "CartPole-v1", None, sets, 3, total)
    return runner_for(config)(config, tmp_path / name, resume=resume, console=False)


def rows(run_dir):
    """The logged metrics without timings and the Ray-only columns (the values that must match)."""
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        out.append({k: v for k, v in row.items() if not k.startswith(("perf/", "ray/", "time"))})
    return out


def parameters(runner):
    return {k: v.clone() for k, v in runner.algo.modules()["model"].state_dict().items()}


def events(run_dir):
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def test_one_ray_worker_is_the_local_run(tmp_path):
    local = make_runner(tmp_path, "local", backend="local")
    local.train()
    remote = make_runner(tmp_path, "ray")
    remote.train()
    a, b = parameters(local), parameters(remote)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert rows(tmp_path / "local") == rows(tmp_path / "ray")
    assert len(rows(tmp_path / "ray")) == 8  # 1024 steps / (64 x 2)


def test_two_workers_resume_exactly(tmp_path):
    straight = make_runner(tmp_path, "straight", workers=2)
    straight.train()
    assert straight.step == 1024 and straight.collector.num_envs == 4
    first = make_runner(tmp_path, "split", workers=2)
    first.train(stop_at_step=512)
    assert first.step == 512
    second = make_runner(tmp_path, "split", workers=2, resume=True)
    second.train()
    a, b = parameters(straight), parameters(second)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert rows(tmp_path / "straight")[-1] == rows(tmp_path / "split")[-1]


@pytest.mark.slow
def test_two_workers_differ_from_one_and_are_seeded_apart(tmp_path):
    """Worker 1's envs are seeded run.seed + num_envs, its actions from its own stream: its columns are not
    a copy of worker 0's."""
    runner = make_runner(tmp_path, "two", workers=2, total=128)
    rollout = runner.collector.collect(runner.algo.acting_policy(), runner.rng, 16)
    assert rollout.obs.shape == (17, 4, 4)
    assert not np.array_equal(rollout.obs[:, :2], rollout.obs[:, 2:])
    runner.close()


def kill_when(runner, pid, step):
    """SIGKILL ``pid`` once the run has passed ``step`` (from a thread: the kill lands mid-run, maybe mid-rollout)."""

    def watch():
        while runner.step < step:
            time.sleep(0.002)
        os.kill(pid, signal.SIGKILL)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_killed_worker_is_replaced_and_the_run_learns(tmp_path, hang_guard):
    extra = ["ppo.num_steps=128", "ppo.num_epochs=10", "ppo.minibatch_size=128", "ppo.optimizer.learning_rate=1e-3"]
    runner = make_runner(tmp_path, "kill", workers=2, total=24_576, extra=extra)
    pids = runner.collector.worker_pids()
    assert len(set(pids)) == 2 and os.getpid() not in pids
    with hang_guard(240):
        watcher = kill_when(runner, pids[1], 2048)
        result = runner.train()
        watcher.join(timeout=5)
    assert result.steps == 24_576
    replaced = [e for e in events(tmp_path / "kill") if e["kind"] == "ray.worker_replaced"]
    assert len(replaced) == 1 and replaced[0]["worker"] == 1 and replaced[0]["restarts"] == 1
    logged = rows(tmp_path / "kill")
    first, last = logged[0]["rollout/return_mean"], logged[-1]["rollout/return_mean"]
    assert last > 100 and last > 4 * first, (first, last)


def test_past_the_restart_cap_the_run_stops_with_a_checkpoint(tmp_path, hang_guard):
    runner = make_runner(tmp_path, "cap", workers=2, total=100_000, extra=["ray.max_worker_restarts=0"])
    pid = runner.collector.worker_pids()[0]
    with hang_guard(120):
        kill_when(runner, pid, 256)
        with pytest.raises(TrainingHalted, match="more than ray.max_worker_restarts=0"):
            runner.train()
    lost = [e for e in events(tmp_path / "cap") if e["kind"] == "ray.workers_lost"]
    assert len(lost) == 1 and "wrote checkpoint step_" in lost[0]["message"]
    (checkpoint,) = (tmp_path / "cap" / "checkpoints").glob("step_*")
    assert json.loads((checkpoint / "state.json").read_text())["step"] == lost[0]["step"]


@pytest.mark.slow
def test_a_hung_worker_times_out_and_is_replaced(tmp_path, hang_guard):
    """SIGSTOP: the worker neither answers nor dies; the deadline (ray.call_timeout_s) catches it."""
    runner = make_runner(tmp_path, "hung", workers=1, total=512, extra=["ray.call_timeout_s=5"])
    pid = runner.collector.worker_pids()[0]
    os.kill(pid, signal.SIGSTOP)
    try:
        with hang_guard(120):
            result = runner.train()
    finally:
        os.kill(pid, signal.SIGKILL)
    assert result.steps == 512
    (replaced,) = [e for e in events(tmp_path / "hung") if e["kind"] == "ray.worker_replaced"]
    assert "ray.call_timeout_s=5" in replaced["message"]
