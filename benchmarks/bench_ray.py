"""Ray rollout workers against the local vector env (issue 11): steps/s, scaling, where the time goes.

Three tables, printed as markdown:

1. Synchronous PPO (run.backend ray) with 1, 2 and 4 workers of ``--envs`` envs each, beside the local vector
   env of the same total envs: env steps per wall second over ``--updates`` updates (after two warm-up
   updates), scaling efficiency sps(W) / (W x sps(1 worker)), the collection and learner seconds per update,
   the part of collection that is neither a worker's own stepping nor the learner (sending the policy,
   moving the rollouts), and CPU seconds (this process plus the Ray workers, from /proc) beside wall seconds.
2. The cost of moving a rollout: the round trip of an empty actor call, and of one that returns a rollout of
   CartPole's and HalfCheetah's size (``--envs`` x 128 steps).
3. IMPALA (2 actors x 4 envs) on CartPole-v1: env steps and wall seconds to a last-20-episode mean of 475.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_ray.py                   # all three, ~3 min here
    PYTHONPATH=src .venv/bin/python benchmarks/bench_ray.py --skip-impala

Wall-clock depends on what else runs: the load average before and after is printed with each table.
RLlib is not compared: ``ray[rllib]==2.60.*`` pins gymnasium 1.2.2, and this venv has 1.4.0 (see RESULTS.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (/proc/PID/stat fields 14 and 15)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def load() -> str:
    return "/".join(f"{value:.2f}" for value in os.getloadavg())


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def make_runner(backend: str, workers: int, envs: int, steps: int, run_dir: Path) -> Any:
    from pgrad.runners import runner_for
    from pgrad.runs import resolve_config

    sets = [
        f"run.backend={backend}",
        f"ray.workers={workers}",
        f"env.num_envs={envs if backend == 'ray' else envs * workers}",
        f"ppo.num_steps={steps}",
        f"ppo.minibatch_size={steps * envs * workers // 4}",
        "run.progress=false",
        "run.tensorboard=false",
        "guard.eval_every=0",
    ]
    config, _ = resolve_config("ppo", "CartPole-v1", None, sets, 1, 10**7)
    return runner_for(config)(config, run_dir, console=False)


def throughput(backend: str, workers: int, envs: int, steps: int, updates: int, tmp: Path) -> dict[str, float]:
    runner = make_runner(backend, workers, envs, steps, tmp / f"{backend}{workers}")
    try:
        pids = [os.getpid()] + (runner.collector.worker_pids() if backend == "ray" else [])
        for _ in range(2):  # warm-up: first rollouts, torch's first backward
            runner.train_one_update()
        rows = []
        cpu_before, wall_before, step_before = cpu_seconds(pids), time.perf_counter(), runner.step
        for _ in range(updates):
            rows.append(runner.train_one_update())
        wall = time.perf_counter() - wall_before
        cpu = cpu_seconds(pids) - cpu_before
        steps_done = runner.step - step_before
    finally:
        runner.close()

    def mean(key: str) -> float:
        return float(np.mean([row.get(key, 0.0) for row in rows]))

    return {
        "sps": steps_done / wall,
        "collect_sps": steps_done / updates / mean("perf/rollout_seconds"),
        "wall": wall,
        "cpu": cpu,
        "collect": mean("perf/rollout_seconds"),
        "learn": mean("perf/update_seconds"),
        "worker": mean("ray/worker_collect_seconds") if backend == "ray" else mean("perf/rollout_seconds"),
        "transfer": mean("ray/transfer_seconds"),
    }


def throughput_table(envs: int, steps: int, updates: int, counts: list[int], tmp: Path) -> None:
    print(f"\n### Synchronous PPO on CartPole-v1: {envs} envs per worker, {steps} steps per env per update\n")
    print(f"load before: {load()}\n")
    print(
        "| backend | workers | total envs | steps/s | scaling efficiency | collection steps/s | collect s/update "
        "| learner s/update | worker's own s | transfer s | wall s | CPU s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    single = None
    for workers in counts:
        for backend in ("local", "ray"):
            result = throughput(backend, workers, envs, steps, updates, tmp)
            if backend == "ray" and workers == 1:
                single = result["sps"]
            efficiency = f"{result['sps'] / (workers * single):.2f}" if backend == "ray" and single else ""
            print(
                f"| {backend} | {workers if backend == 'ray' else '-'} | {workers * envs} | {result['sps']:,.0f} "
                f"| {efficiency} | {result['collect_sps']:,.0f} | {result['collect']:.4f} | {result['learn']:.4f} "
                f"| {result['worker']:.4f} "
                f"| {result['transfer']:.4f} | {result['wall']:.1f} | {result['cpu']:.1f} |",
                flush=True,
            )
    print(f"\nload after: {load()}")


FIELDS = ("obs", "actions", "rewards", "terminated", "truncated", "valid")


def zero_rollout(obs_dim: int, action_dim: int, steps: int, envs: int) -> Any:
    from pgrad.rollout import Rollout

    return Rollout(
        obs=np.zeros((steps + 1, envs, obs_dim), np.float32),
        actions=np.zeros((steps, envs, action_dim), np.float32),
        rewards=np.zeros((steps, envs), np.float32),
        terminated=np.zeros((steps, envs), bool),
        truncated=np.zeros((steps, envs), bool),
        valid=np.ones((steps, envs), bool),
    )


def transfer_table(envs: int, repeats: int) -> None:
    import ray

    from pgrad.rollout import Rollout

    @ray.remote(num_cpus=0)
    class Echo:
        def nothing(self) -> None:
            return None

        def rollout(self, obs_dim: int, action_dim: int, steps: int, envs: int) -> Rollout:
            return zero_rollout(obs_dim, action_dim, steps, envs)

    echo = Echo.remote()  # type: ignore[attr-defined]
    ray.get(echo.nothing.remote(), timeout=120)
    print(f"\n### Moving a rollout (actor round trip, median of {repeats}; {envs} envs x 128 steps)\n")
    print("| payload | bytes | round trip ms |")
    print("|---|---:|---:|")

    def median_ms(call: Any) -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            ray.get(call(), timeout=60)
            times.append(time.perf_counter() - started)
        return 1000 * float(np.median(times))

    print(f"| empty call | 0 | {median_ms(lambda: echo.nothing.remote()):.2f} |")
    for name, obs_dim, action_dim in (("CartPole rollout", 4, 1), ("HalfCheetah rollout", 17, 6)):
        size = sum(np.asarray(getattr(zero_rollout(obs_dim, action_dim, 128, envs), name)).nbytes for name in FIELDS)
        ms = median_ms(lambda o=obs_dim, a=action_dim: echo.rollout.remote(o, a, 128, envs))
        print(f"| {name} | {size:,} | {ms:.2f} |")
    ray.kill(echo)


def impala_table(max_steps: int, seeds: list[int], tmp: Path) -> None:
    from pgrad.monitor.sinks import read_jsonl
    from pgrad.runners import runner_for
    from pgrad.runs import resolve_config

    print("\n### IMPALA on CartPole-v1: 2 actors x 4 envs, to a last-20-episode mean of 475\n")
    print(f"load before: {load()}\n")
    print("| seed | steps to 475 | wall s to 475 | final return | steps run | wall s | learner CPU s | mean lag |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    sets = ["run.progress=false", "run.tensorboard=false", "run.backend=ray", "ray.workers=2", "env.num_envs=4"]
    for seed in seeds:
        config, _ = resolve_config("impala", "CartPole-v1", None, sets, seed, max_steps)
        run_dir = tmp / f"impala{seed}"
        runner = runner_for(config)(config, run_dir, console=False)
        cpu = time.process_time()
        result = runner.train()
        cpu = time.process_time() - cpu
        rows = read_jsonl(run_dir / "metrics.jsonl")
        reached = next(
            (row for row in rows if row.get("rollout/episodes", 0) >= 20 and row.get("rollout/return_mean", 0) >= 475),
            None,
        )
        lag = float(np.mean([row["impala/policy_lag"] for row in rows]))
        first = f"{reached['step']:,} | {reached['perf/wall_seconds']:.1f}" if reached else "not reached | -"
        print(
            f"| {seed} | {first} | {rows[-1].get('rollout/return_mean', 0):.1f} | {result.steps:,} "
            f"| {result.seconds:.1f} | {cpu:.1f} | {lag:.1f} |",
            flush=True,
        )
    print(f"\nload after: {load()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", type=int, default=8, help="envs per worker (default 8)")
    parser.add_argument("--steps", type=int, default=128, help="steps per env per update (default 128)")
    parser.add_argument("--updates", type=int, default=30, help="measured updates per row (default 30)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--impala-steps", type=int, default=300_000)
    parser.add_argument("--impala-seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--skip-impala", action="store_true")
    args = parser.parse_args()

    # an isolated Ray: its own temp dir and auth token, no usage statistics
    temp = Path(tempfile.mkdtemp(prefix="pgbench", dir="/tmp"))
    (temp / "token").write_text(secrets.token_hex(32))
    os.environ.update(
        RAY_TMPDIR=str(temp),
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(temp / "token"),
        RAY_USAGE_STATS_ENABLED="0",
    )
    import ray

    source = str(Path(__file__).resolve().parents[1] / "src")
    print(f"## bench_ray.py: commit {commit()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, ray {ray.__version__}")
    ray.init(
        num_cpus=max(args.workers),
        include_dashboard=False,
        log_to_driver=False,
        logging_level="WARNING",
        runtime_env={"env_vars": {"PYTHONPATH": source}},
    )
    try:
        throughput_table(args.envs, args.steps, args.updates, args.workers, temp)
        transfer_table(args.envs, 50)
        if not args.skip_impala:
            impala_table(args.impala_steps, args.impala_seeds, temp)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
