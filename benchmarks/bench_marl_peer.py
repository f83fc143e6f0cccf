"""BenchMARL (TorchRL) as the peer for issue 27: MAPPO, IPPO and MADDPG on MPE2 tasks.

Run with the BenchMARL venv's python (built by benchmarks/setup_benchmarl.sh), never the
project's .venv: BenchMARL and TorchRL bring their own pins.

    nice -n 10 benchmarks/.venv-benchmarl/bin/python benchmarks/bench_marl_peer.py \
        --task simple_spread --algo mappo --seed 0 --frames 300000 --threads 1

One JSON line per run on stdout (and appended to --out): the task and algorithm, the seed,
the frame budget (BenchMARL's frames are env steps of the whole team: one frame is one
step of one env copy, all agents acting), the final mean episode return, env steps/s,
wall and CPU seconds, and the load average before and after.

Returns: BenchMARL's own number (`Experiment.mean_return`, what its progress bar and
`collection/reward/episode_reward_mean` show) is the mean over agents of each agent's
episode return, averaged over the episodes that ended in the last collected batch, with
the stochastic (training) policy. We report that as `train_return_agent_mean`, and also
the team sum (the agents' returns added), and the same two for BenchMARL's own final
evaluation (10 episodes, deterministic actions, its default).

The env: pettingzoo 1.27 moved MPE out to the mpe2 package, which torchrl 0.11's
PettingZooEnv does not know (it looks in pettingzoo.utils.all_modules, which no longer
lists MPE and fails to import without the Atari extras). We put a module of that name in
sys.modules that lists mpe2's environments, so BenchMARL's PettingZoo task builds
`mpe2.<task>.parallel_env(...)`, the implementation pgrad uses. Task parameters default to
mpe2's own defaults (max_cycles=25, discrete actions, local_ratio=0.5 for simple_spread,
num_good=1 for simple_tag), not BenchMARL's task yaml (max_cycles=100, num_good=2, and
continuous actions from its `prefer_continuous_actions: True`); --max-cycles and
--actions change them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
import types
from typing import Any


def _register_mpe2() -> None:
    """Make torchrl's PettingZooEnv find mpe2's tasks under their usual names."""
    import mpe2.all_modules

    stub = types.ModuleType("pettingzoo.utils.all_modules")
    stub.all_environments = dict(mpe2.all_modules.mpe_environments)  # type: ignore[attr-defined]
    sys.modules["pettingzoo.utils.all_modules"] = stub


TASKS = {
    "simple_spread": "SIMPLE_SPREAD",
    "simple_adversary": "SIMPLE_ADVERSARY",
    "simple_tag": "SIMPLE_TAG",
    "simple_speaker_listener": "SIMPLE_SPEAKER_LISTENER",
}
# mpe2's defaults where BenchMARL's task yaml differs (BenchMARL: max_cycles 100,
# simple_tag num_good 2).
MPE2_TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "simple_spread": {"N": 3, "local_ratio": 0.5},
    "simple_adversary": {"N": 2},
    "simple_tag": {"num_good": 1, "num_adversaries": 3, "num_obstacles": 2},
    "simple_speaker_listener": {},
}


def _cpu_seconds() -> float:
    """User+system CPU seconds of this process and its waited-for children."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _loadavg() -> str:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg writes them."""
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def _episode_returns(td: Any, groups: dict[str, list[str]]) -> dict[str, Any]:
    """Per-group episode returns of the episodes that end in a batch: [n_episodes, n_agents].

    `td` is a collected batch [n_envs, T]; BenchMARL's RewardSum transform keeps each
    agent's running return in ("next", group, "episode_reward"), read where the team's
    global done is set.
    """
    done = td.get(("next", "done")).squeeze(-1)
    return {g: td.get(("next", g, "episode_reward"))[done].squeeze(-1) for g in groups}


def _rollout_returns(rollout: Any, groups: dict[str, list[str]]) -> dict[str, Any]:
    """Per-group return of one evaluation rollout [T]: rewards summed up to the first done.

    The evaluation env has no RewardSum; BenchMARL's logger cuts each rollout at its first
    global done and sums ("next", group, "reward") over time, as here. Shape [1, n_agents].
    """
    done = rollout.get(("next", "done")).squeeze(-1).nonzero()
    end = int(done[0, 0]) + 1 if done.numel() else rollout.batch_size[0]
    return {g: rollout.get(("next", g, "reward"))[:end].sum(0).reshape(1, -1) for g in groups}


def _summarise(returns: dict[str, Any]) -> dict[str, float]:
    """Mean per agent (BenchMARL's convention: mean over agents, then over groups) and team sum."""
    import torch

    per_group = {g: r.mean().item() for g, r in returns.items() if r.numel()}
    if not per_group:
        return {"agent_mean": float("nan"), "team_sum": float("nan"), "episodes": 0}
    agent_mean = sum(per_group.values()) / len(per_group)
    team = torch.cat([r for r in returns.values()], dim=-1).sum(-1)
    out = {
        "agent_mean": agent_mean,
        "team_sum": team.mean().item(),
        "episodes": int(team.numel()),
    }
    if len(per_group) > 1:
        out.update({f"group_{g}_agent_mean": v for g, v in per_group.items()})
    return out


class Recorder:
    """Callback that keeps the last collected batch's and last evaluation's episode returns.

    Duck-typed to BenchMARL's Callback (its manager calls every hook and sets
    `experiment`); defined at module level so BenchMARL can pickle it with the experiment.
    """

    def __init__(self) -> None:
        """Start with no returns recorded."""
        self.record: dict[str, Any] = {"collect_cpu_s": 0.0, "train_cpu_s": 0.0}
        self.experiment: Any = None
        self._mark = time.process_time()

    def on_setup(self) -> None:
        """Nothing to set up."""

    def on_load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore."""

    def on_train_step(self, batch: Any, group: str) -> None:
        """No extra loss terms."""

    def on_train_end(self, training_td: Any, group: str) -> None:
        """Count the CPU time since the batch came in as training (the last group's end)."""
        now = time.process_time()
        self.record["train_cpu_s"] += now - self._mark
        self._mark = now

    def on_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to save."""

    def on_batch_collected(self, batch: Any) -> None:
        """Keep the episode returns of the episodes that ended in this batch."""
        self.record["train"] = _episode_returns(batch, self.experiment.group_map)
        now = time.process_time()
        self.record["collect_cpu_s"] += now - self._mark
        self._mark = now

    def on_evaluation_end(self, rollouts: list[Any]) -> None:
        """Keep the episode returns of this evaluation's rollouts."""
        import torch

        per = [_rollout_returns(r, self.experiment.group_map) for r in rollouts]
        self.record["eval"] = {g: torch.cat([p[g] for p in per]) for g in per[0]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train one BenchMARL experiment and return its JSON record."""
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    _register_mpe2()

    import benchmarl
    import torchrl
    from benchmarl.algorithms import IppoConfig, MaddpgConfig, MappoConfig
    from benchmarl.environments import PettingZooTask
    from benchmarl.experiment import Experiment, ExperimentConfig
    from benchmarl.models.mlp import MlpConfig

    algo_cfg = {
        "mappo": MappoConfig,
        "ippo": IppoConfig,
        "maddpg": MaddpgConfig,
    }[args.algo].get_from_yaml()
    task = getattr(PettingZooTask, TASKS[args.task]).get_from_yaml()
    task.config.update(MPE2_TASK_DEFAULTS[args.task])
    task.config["max_cycles"] = args.max_cycles

    cfg = ExperimentConfig.get_from_yaml()
    cfg.prefer_continuous_actions = args.actions == "continuous"
    on_policy = args.algo in ("mappo", "ippo")
    per_batch = cfg.on_policy_collected_frames_per_batch if on_policy else cfg.off_policy_collected_frames_per_batch
    n_iters = max(1, -(-args.frames // per_batch))
    cfg.max_n_frames = n_iters * per_batch
    # No wandb/csv; create_json keeps BenchMARL's evaluation on (it runs only with a logger
    # or json); evaluate at iteration 0 and at the end only.
    cfg.loggers = []
    cfg.create_json = True
    cfg.render = False
    cfg.evaluation_interval = cfg.max_n_frames
    cfg.checkpoint_at_end = False
    cfg.checkpoint_interval = 0
    save_dir = tempfile.mkdtemp(prefix="benchmarl_")
    cfg.save_folder = save_dir

    recorder = Recorder()
    record = recorder.record

    experiment = Experiment(
        task=task,
        algorithm_config=algo_cfg,
        model_config=MlpConfig.get_from_yaml(),
        critic_model_config=MlpConfig.get_from_yaml(),
        seed=args.seed,
        config=cfg,
        callbacks=[recorder],
    )
    load0 = _loadavg()
    recorder._mark = time.process_time()
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    experiment.run()
    wall = time.perf_counter() - t0
    cpu = _cpu_seconds() - cpu0
    train = _summarise(record["train"])
    ev = _summarise(record.get("eval", {}))
    return {
        "bench": "benchmarl_peer",
        "task": f"mpe2:{args.task}",
        "algo": args.algo,
        "seed": args.seed,
        "frames": experiment.total_frames,
        "frames_asked": args.frames,
        "actions": args.actions,
        "max_cycles": args.max_cycles,
        "task_config": dict(task.config),
        "threads": threads,
        "threads_setting": "1" if args.threads == 1 else f"{args.threads or 'default'}",
        "benchmarl_mean_return": experiment.mean_return,
        "train_return_agent_mean": train["agent_mean"],
        "train_return_team_sum": train["team_sum"],
        "train_episodes": train["episodes"],
        "eval_return_agent_mean": ev["agent_mean"],
        "eval_return_team_sum": ev["team_sum"],
        "eval_episodes": ev["episodes"],
        "train_groups": {k: v for k, v in train.items() if k.startswith("group_")},
        "env_steps_per_s": experiment.total_frames / wall,
        "agent_steps_per_s": experiment.total_frames * sum(len(a) for a in experiment.group_map.values()) / wall,
        "wall_s": wall,
        "collect_cpu_s": record["collect_cpu_s"],
        "train_cpu_s": record["train_cpu_s"],
        "cpu_s": cpu,
        "load_before": load0,
        "load_after": _loadavg(),
        "versions": {
            "benchmarl": benchmarl.__version__,
            "torchrl": torchrl.__version__,
            "torch": torch.__version__,
        },
        "nice": os.nice(0),
    }


def main() -> None:
    """Parse the arguments, run one experiment, print and append its JSON line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=sorted(TASKS), default="simple_spread")
    p.add_argument("--algo", choices=["mappo", "ippo", "maddpg"], default="mappo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=60_000, help="env-step budget, rounded up to 6000")
    p.add_argument("--threads", type=int, default=1, help="torch threads; 0 = torch's default")
    p.add_argument("--actions", choices=["discrete", "continuous"], default="discrete")
    p.add_argument("--max-cycles", type=int, default=25)
    p.add_argument("--out", default="", help="append the JSON line to this file too")
    args = p.parse_args()
    line = json.dumps(run(args), sort_keys=True)
    print(line, flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
