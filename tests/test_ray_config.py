"""The Ray backend's configuration and the learner-side math; none of these needs Ray itself."""

from __future__ import annotations

import builtins

import numpy as np
import pytest

from pgrad.cli import main
from pgrad.envs.normalize import RunningMeanStd
from pgrad.errors import ConfigError, PgradError
from pgrad.runs import resolve_config


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["run.backend=spark"], "run.backend must be one of 'local', 'ray'; got 'spark'"),
        (["ray.workers=0"], "ray.workers must be in [1, 1024]; got 0"),
        (["ray.address=nowhere"], "ray.address must be HOST:PORT (e.g. 127.0.0.1:6379), 'auto' or null"),
        (["ray.call_timeout_s=0"], "ray.call_timeout_s must be > 0; got 0"),
        (["ray.max_worker_restarts=-1"], "ray.max_worker_restarts must be >= 0; got -1"),
        (["ray.wrokers=2"], "unknown key 'ray.wrokers'; did you mean 'workers'?"),
    ],
)
def test_ray_settings_are_checked_naming_the_field(sets, message):
    with pytest.raises(ConfigError) as error:
        resolve_config("ppo", "CartPole-v1", None, sets)
    assert message in str(error.value)


def test_the_batch_rule_counts_every_workers_envs():
    """PPO's minibatch must divide num_steps x num_envs x workers: the learner's batch with Ray workers."""
    sets = ["env.num_envs=2", "ppo.num_steps=64", "ppo.minibatch_size=256", "run.backend=ray"]
    resolve_config("ppo", "CartPole-v1", None, [*sets, "ray.workers=2"])  # 64 x 2 x 2 = 256
    with pytest.raises(ConfigError, match="minibatch_size must divide"):
        resolve_config("ppo", "CartPole-v1", None, [*sets, "ray.workers=1"])


def test_ray_flags_are_config_fields(capsys):
    code = main(["train", "ppo", "--env", "CartPole-v1", "--backend", "ray", "--workers", "0", "--quiet"])
    assert code == 2
    assert "pgrad: error: ray.workers must be in [1, 1024]; got 0" in capsys.readouterr().err


def test_a_missing_ray_is_one_line(monkeypatch):
    from pgrad.runners.ray_backend import require_ray

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(PgradError, match=r"run.backend 'ray' needs Ray: pip install 'pgrad\[ray\]'"):
        require_ray()


def test_worker_increments_add_up_to_one_running_statistic():
    """Two workers start from the learner's statistics, each sees its own rows; adding both increments gives the
    statistics of all rows, as if one normaliser had seen them."""
    from pgrad.runners.ray_backend import add_increment

    rng = np.random.default_rng(0)
    seen, rows_a, rows_b = rng.normal(size=(50, 3)), rng.normal(2, 3, size=(40, 3)), rng.normal(-1, 0.5, size=(7, 3))
    learner = RunningMeanStd((3,))
    learner.update(seen)
    start = learner.state()
    ends = []
    for rows in (rows_a, rows_b):
        worker = RunningMeanStd((3,))
        worker.load(start)
        for chunk in np.array_split(rows, 3):  # a worker updates step by step
            worker.update(chunk)
        ends.append(worker.state())
    merged = add_increment(add_increment(start, start, ends[0]), start, ends[1])
    everything = RunningMeanStd((3,))
    everything.update(np.concatenate([seen, rows_a, rows_b]))
    np.testing.assert_allclose(merged["mean"], everything.mean, rtol=1e-10)
    np.testing.assert_allclose(merged["var"], everything.var, rtol=1e-8)
    assert float(merged["count"]) == pytest.approx(everything.count)
    # one worker, nothing else in between: exactly its own statistics (one worker equals the local run)
    assert add_increment(start, start, ends[0]) is ends[0]


def test_impala_runs_on_either_backend():
    # local: the learner's own envs act (impala.LocalActorCollector, lag 0); ray: asynchronous actors
    assert resolve_config("impala", "CartPole-v1", None, ["run.backend=local"])[0].run.backend == "local"
    config, _ = resolve_config("impala", "CartPole-v1", None, ["run.backend=ray", "impala.rho_bar=2"])
    assert config.algo_config.rho_bar == 2.0
    with pytest.raises(ConfigError, match=r"impala.c_bar must be > 0; got 0"):
        resolve_config("impala", "CartPole-v1", None, ["run.backend=ray", "impala.c_bar=0"])


def test_a_ray_the_run_starts_listens_on_the_loopback_only(monkeypatch):
    """``pgrad train --backend ray`` without ``ray.address`` starts Ray on 127.0.0.1 (its GCS was unreachable on
    the machine's network address here: the driver aborted after 60 s); joining an address passes it unchanged."""
    import types

    from pgrad.runners import ray_backend

    calls: list[dict] = []
    fake = types.SimpleNamespace(is_initialized=lambda: False, init=lambda **options: calls.append(options))
    monkeypatch.setattr(ray_backend, "require_ray", lambda: fake)
    config, _ = resolve_config("ppo", "CartPole-v1", None, ["run.backend=ray", "ray.workers=2"])
    ray_backend.RaySession(config)
    assert calls[-1]["_node_ip_address"] == "127.0.0.1" and calls[-1]["include_dashboard"] is False
    config, _ = resolve_config("ppo", "CartPole-v1", None, ["run.backend=ray", "ray.address=10.0.0.5:6379"])
    ray_backend.RaySession(config)
    assert calls[-1]["address"] == "10.0.0.5:6379" and "_node_ip_address" not in calls[-1]


def test_the_thread_that_started_ray_stays_alive_until_the_session_closes():
    """Ray starts its GCS and raylet with PR_SET_PDEATHSIG, which fires when the *thread* that started them ends:
    ``init_within``'s thread must outlive ``ray.init`` until the session closes (else the driver aborts after 60 s
    with "Failed to connect to GCS"), and end once released."""
    import threading
    import types

    from pgrad.runners.ray_backend import init_within

    threads: list[threading.Thread] = []
    fake = types.SimpleNamespace(init=lambda **options: threads.append(threading.current_thread()))
    release = init_within(fake, 5.0, {})
    assert threads and threads[0] is not threading.current_thread()
    threads[0].join(0.3)
    assert threads[0].is_alive()  # parked: Ray's processes keep their parent thread
    release.set()
    threads[0].join(5.0)
    assert not threads[0].is_alive()


def test_a_failing_ray_init_is_raised_and_a_silent_one_times_out():
    import threading
    import types

    from pgrad.runners.ray_backend import init_within

    def refuse(**options):
        raise RuntimeError("no Ray here")

    with pytest.raises(RuntimeError, match="no Ray here"):
        init_within(types.SimpleNamespace(init=refuse), 5.0, {})
    hang = threading.Event()
    with pytest.raises(TimeoutError, match=r"ray.init did not return within 0.3 s"):
        init_within(types.SimpleNamespace(init=lambda **options: hang.wait(10)), 0.3, {})
    hang.set()
