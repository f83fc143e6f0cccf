"""APE-X scaling (issue 28, Benchmarks: Scale): apex_td3 on Pendulum-v1 with 1, 2 and 4 actors.

For each actor count, one run of ``--seconds`` wall seconds (stopped as Ctrl-C would stop it), TD3's defaults
(400x300 networks, batch 256) with ``--gradient-steps`` gradient steps per block of ``apex.local_batch`` = 50 env
steps (10: an update-to-data ratio of 0.2; -1 makes the learner do one per env step, and then the learner bounds
every row whatever the actor count). Measured after ``loop.learning_starts`` (1000): env steps and learner
gradient steps per wall second between the first learning row and the last row, the mean weight lag, and the
load average before and after each run. ``--backend ray`` (default): one Ray actor per APE-X actor, acting while
the learner learns; ``--backend local``: the actors take turns in this process (no parallelism: the baseline).

    PYTHONPATH=src nice -n 19 .venv/bin/python benchmarks/bench_apex_scale.py --seconds 45
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def loadavg() -> str:
    """The 1-, 5- and 15-minute load averages."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run_once(actors: int, backend: str, seconds: float, gradient_steps: int, folder: Path) -> dict[str, Any]:
    """One apex_td3 run of ``actors`` actors for ``seconds``; its throughput after learning starts."""
    from pgrad.runners.off_policy import OffPolicyRunner
    from pgrad.runs import resolve_config

    sets = [
        "run.progress=false",
        "run.tensorboard=false",
        "run.checkpoint_every=10000000",
        "guard.eval_every=0",
        f"run.backend={backend}",
        f"apex.actors={actors}",
        "loop.learning_starts=1000",
        "loop.log_every=500",
        f"loop.gradient_steps={gradient_steps}",
    ]
    config, _ = resolve_config("apex_td3", "Pendulum-v1", sets=sets, total_steps=10_000_000)
    before = loadavg()
    runner = OffPolicyRunner(config, folder / f"{backend}-{actors}", console=False)
    timer = threading.Timer(seconds, lambda: setattr(runner.run, "stop_requested", True))
    timer.start()
    try:
        runner.train()
    finally:
        timer.cancel()
        runner.close()
    rows = [json.loads(line) for line in (folder / f"{backend}-{actors}" / "metrics.jsonl").read_text().splitlines()]
    learning = [row for row in rows if row.get("train/update_to_data", 0) > 0]
    first, last = learning[0], learning[-1]
    wall = last["perf/wall_seconds"] - first["perf/wall_seconds"]
    return {
        "actors": actors,
        "backend": backend,
        "env_steps_per_s": (last["step"] - first["step"]) / wall,
        "updates_per_s": (last["train/gradient_steps"] - first["train/gradient_steps"]) / wall,
        "weight_lag_mean": sum(row.get("apex/weight_lag_mean", 0.0) for row in learning) / len(learning),
        "measured_s": wall,
        "load_before": before,
        "load_after": loadavg(),
    }


def main() -> None:
    """Runs every actor count and prints one markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seconds", type=float, default=45.0, help="wall seconds per run (default 45)")
    parser.add_argument("--gradient-steps", type=int, default=10, help="gradient steps per block (default 10)")
    parser.add_argument("--backend", choices=["ray", "local"], default="ray")
    args = parser.parse_args()

    temp = Path(tempfile.mkdtemp(prefix="pgapex", dir="/tmp"))
    if args.backend == "ray":  # an isolated Ray: its own temp dir and auth token, no usage statistics
        (temp / "token").write_text(secrets.token_hex(32))
        os.environ.update(
            RAY_TMPDIR=str(temp),
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(temp / "token"),
            RAY_USAGE_STATS_ENABLED="0",
        )
        import ray

        # Ray started here, as bench_ray.py does: a Ray that the run's RaySession starts itself lost its GCS within
        # seconds on this machine (the driver aborts: "Failed to connect to GCS within 60 seconds")
        source = str(Path(__file__).resolve().parents[1] / "src")
        ray.init(
            num_cpus=max(args.actors),
            include_dashboard=False,
            log_to_driver=False,
            logging_level="WARNING",
            runtime_env={"env_vars": {"PYTHONPATH": source}},
        )
    print(f"## bench_apex_scale.py, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs")
    print(f"apex_td3 Pendulum-v1, backend {args.backend}, {args.gradient_steps} gradient steps per 50-step block\n")
    print("| actors | env steps/s | learner updates/s | weight lag (mean) | measured s | load before | load after |")
    print("|---:|---:|---:|---:|---:|---|---|")
    try:
        for actors in args.actors:
            r = run_once(actors, args.backend, args.seconds, args.gradient_steps, temp)
            print(
                f"| {actors} | {r['env_steps_per_s']:.0f} | {r['updates_per_s']:.0f} | {r['weight_lag_mean']:.0f} | "
                f"{r['measured_s']:.0f} | {r['load_before']} | {r['load_after']} |",
                flush=True,
            )
    finally:
        if args.backend == "ray":
            import ray

            ray.shutdown()


if __name__ == "__main__":
    main()
