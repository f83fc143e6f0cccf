"""A small sweep: two learning rates x two seeds, then the runs compared over seeds (IQM, bootstrap intervals).

Runs whose configs differ only in ``run.seed`` form one group, as ``pgrad compare RUN ...`` groups them (the CLI
also draws the curves with their bands into a PNG: ``pip install 'pgrad[plots]'``). For a real search,
``pgrad tune`` samples the space with Optuna and keeps every trial as a run folder.
Runs in a few seconds: ``python examples/sweep_compare.py``.
"""

from __future__ import annotations

from pathlib import Path

from pgrad.api import PPO
from pgrad.monitor.compare import group_runs, read_curve, summarize, table_lines

METRIC = "rollout/return_mean"

if __name__ == "__main__":
    run_dirs: list[Path] = []
    for learning_rate in (3e-4, 1e-3):
        for seed in (1, 2):
            run_dir = Path(f"runs/sweep-lr{learning_rate:g}-s{seed}")
            model = PPO(
                "CartPole-v1",
                seed=seed,
                run_dir=run_dir,
                sets=[f"optimizer.learning_rate={learning_rate}"],
                config={"run": {"tensorboard": False}},
            )
            model.learn(2048)
            run_dirs.append(run_dir)

    groups = group_runs([read_curve(run_dir, METRIC) for run_dir in run_dirs])
    print("\n".join(table_lines(summarize(groups, 0.95), METRIC, 0.95)))
    assert len(groups) == 2, "one group per learning rate"
