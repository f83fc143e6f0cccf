"""A two-node Ray cluster on 127.0.0.1 (head + one more node, one CPU each): the run joins it by address, its
rollout workers land on both nodes, one is killed mid-run, and the run completes and learns."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from pgrad.cli import main
from pgrad.runners import runner_for
from pgrad.runs import resolve_config
from ray_helpers import ray_environment  # before ray: it sets Ray's auth variables

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    with ray_environment():
        node = {"num_cpus": 1, "node_ip_address": "127.0.0.1"}
        two_nodes = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
        try:
            two_nodes.add_node(**node)
            two_nodes.wait_for_nodes()
            yield two_nodes
        finally:
            if ray.is_initialized():
                ray.shutdown()
            two_nodes.shutdown()


SETS = [
    "env.num_envs=4",
    "ppo.num_steps=128",
    "ppo.num_epochs=10",
    "ppo.minibatch_size=256",
    "ppo.optimizer.learning_rate=1e-3",
    "run.progress=false",
    "run.tensorboard=false",
    "guard.eval_every=0",
    "run.backend=ray",
    "ray.workers=2",
]


def test_workers_on_both_nodes_survive_a_kill_and_learn(tmp_path, cluster, hang_guard):
    config, _ = resolve_config("ppo", "CartPole-v1", None, [*SETS, f"ray.address={cluster.address}"], 1, 20_480)
    runner = runner_for(config)(config, tmp_path / "run", console=False)
    nodes = runner.collector.worker_node_ids()
    cluster_nodes = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    assert len(set(nodes)) == 2 and set(nodes) == cluster_nodes  # one worker per node (1 CPU each)
    pid = runner.collector.worker_pids()[1]

    def kill_later():
        while runner.step < 4096:
            time.sleep(0.002)
        os.kill(pid, signal.SIGKILL)

    threading.Thread(target=kill_later, daemon=True).start()
    with hang_guard(240):
        result = runner.train()
    assert result.steps == 20_480
    assert not ray.is_initialized()  # the run joined the cluster and left it; the cluster itself runs on
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert [e["worker"] for e in events if e["kind"] == "ray.worker_replaced"] == [1]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert (
        rows[-1]["rollout/return_mean"] > 100 and rows[-1]["rollout/return_mean"] > 4 * rows[0]["rollout/return_mean"]
    )


@pytest.mark.slow
def test_the_command_line_joins_the_cluster(tmp_path, cluster, capsys):
    code = main(
        [
            "train", "ppo", "--env", "CartPole-v1", "--backend", "ray", "--workers", "2",
            "--address", cluster.address, "--total-steps", "1024", "--quiet", "--run-dir", str(tmp_path / "cli"),
            "--set", "env.num_envs=2", "--set", "ppo.num_steps=64", "--set", "ppo.minibatch_size=64",
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    config = (tmp_path / "cli" / "config.yaml").read_text()
    assert "backend: ray" in config and f"address: {cluster.address}" in config
