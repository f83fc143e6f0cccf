"""Recurrent PPO's time per 1k env steps, rollout and update apart (issue 26), on masked CartPole-v1.

pgrad's CartPole-v1 PPO preset (8 envs x 32 steps, 20 epochs, minibatch 256) with ``network.recurrent=lstm``
(64 units, separate actor and critic cores, sequences of 16), one torch thread. The rollout time is the
collector's (acting + envs), the update time is ``prepare`` (the gradient-free pass and GAE) plus ``update``.
The feed-forward PPO row is the same loop without the core. Times are this process's CPU seconds (one
thread), so that a loaded machine slows them less than wall-clock; the load average is printed beside them.
Run it with ``PYTHONPATH`` on another checkout's ``src`` to time that one (before/after).

    .venv/bin/python benchmarks/bench_recurrent_speed.py --rollouts 20
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from pgrad.algos.contract import UpdateContext
from pgrad.algos.ppo import PPO
from pgrad.envs import ObsNormalizer, RewardScaler, SpaceAdapter, make_vector_env
from pgrad.rollout import RolloutCollector
from pgrad.runs import resolve_config

LSTM = ["ppo.network.recurrent=lstm", "ppo.network.recurrent_size=64", "ppo.network.sequence_length=16"]


def per_thousand(sets: list[str], rollouts: int) -> tuple[float, float]:
    """(rollout, update) CPU seconds of this process per 1k env steps, over ``rollouts`` rollouts after one
    warm-up (CPU time, not wall-clock: on a shared machine the wall-clock measures the neighbours)."""
    config, _ = resolve_config("ppo", "CartPole-v1", sets=["env.mask_velocity=true", *sets], seed=1)
    ppo_config = config.algo_config
    envs = make_vector_env(config.env)
    adapter = SpaceAdapter(envs.single_observation_space, envs.single_action_space, True)
    ppo = PPO(ppo_config, adapter.obs_shape, adapter.action)
    collector = RolloutCollector(
        envs,
        adapter,
        ObsNormalizer(adapter.obs_dim, 10.0, False),
        RewardScaler(envs.num_envs, 0.99, 10.0, False),
        20,
        ppo.state_size,
    )
    collector.reset(seed=1)
    rng = np.random.default_rng(1)
    collect = update = 0.0
    for index in range(rollouts + 1):
        started = time.process_time()
        rollout = collector.collect(ppo.acting_policy(), rng, ppo_config.num_steps)
        middle = time.process_time()
        batch, _ = ppo.prepare(rollout)
        ppo.update(batch, UpdateContext(progress=index / (rollouts + 1), lr_scale=1.0, rng=rng))
        ended = time.process_time()
        if index:  # the first is a warm-up
            collect += middle - started
            update += ended - middle
    envs.close()
    steps = rollouts * ppo_config.num_steps * envs.num_envs / 1000
    return collect / steps, update / steps


def main() -> None:
    """Prints the rollout and update seconds per 1k steps of the recurrent and the feed-forward PPO."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--rollouts", type=int, default=20)
    parser.add_argument("--variants", nargs="+", default=["lstm", "feed-forward"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    with open("/proc/loadavg") as handle:
        load = handle.read().split()[:3]
    print(f"torch {torch.__version__}, load average {' '.join(load)}")
    for variant in args.variants:
        rollout, update = per_thousand(LSTM if variant == "lstm" else [], args.rollouts)
        print(f"{variant}: rollout {rollout:.3f} CPU s / 1k steps, update {update:.3f} CPU s / 1k steps", flush=True)
    with open("/proc/loadavg") as handle:
        print(f"load average after: {' '.join(handle.read().split()[:3])}")


if __name__ == "__main__":
    main()
