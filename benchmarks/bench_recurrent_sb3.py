"""pgrad's recurrent PPO against sb3-contrib's RecurrentPPO on masked-velocity CartPole-v1 and Pendulum-v1 (issue 26).

Both libraries see the same env: pgrad's ``MaskVelocity`` wrapper (``env.mask_velocity=true``; the zoo's
CartPoleNoVel-v1 and PendulumNoVel-v1 are the same idea). Both use rl-baselines3-zoo's ``ppo_lstm`` values for those
tasks (hyperparams/ppo_lstm.yml), mapped onto pgrad's fields in ``PGRAD`` and written out for sb3-contrib in
``SB3``. The networks are the same shape: the LSTM reads the observation and one [64] ReLU layer per head follows it
(pgrad: ``hidden_sizes=[]``, ``recurrent_head_sizes=[64]``; same parameter shapes, checked in
tests/test_recurrent_heads.py). Differences that remain: sb3-contrib cuts sequences at episode ends and pads them,
pgrad trains fixed chunks of ``sequence_length`` that carry the state across episode starts (reset inside); the
zoo's Pendulum uses gSDE (``use_sde``), which pgrad has not: pgrad samples plain Gaussian noise. Per run: the final
evaluation (20 deterministic episodes on fresh envs, observation statistics frozen), wall-clock and process CPU
seconds, one torch thread. Seeds are interleaved (seed s of every variant, then s+1).

    .venv/bin/python benchmarks/bench_recurrent_sb3.py --task cartpole --seeds 1 2 3 4 5
    .venv/bin/python benchmarks/bench_recurrent_sb3.py --task pendulum --seeds 1 2 --steps 50000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pgrad.envs import make_vector_env
from pgrad.monitor.evaluation import EVAL_SEED_OFFSET, run_episodes
from pgrad.runners.on_policy import OnPolicyRunner
from pgrad.runs import resolve_config

EVAL_EPISODES = 20
TASKS: dict[str, dict[str, Any]] = {
    "cartpole": {"env_id": "CartPole-v1", "steps": 100_000, "target": 475.0},
    "pendulum": {"env_id": "Pendulum-v1", "steps": 100_000, "target": -200.0},
}
# The zoo's ppo_lstm values on pgrad's fields (the LSTM variant; "feed-forward" drops the recurrent lines).
PGRAD: dict[str, list[str]] = {
    "cartpole": [
        "env.num_envs=8",
        "env.norm_obs=true",
        "ppo.num_steps=32",
        "ppo.minibatch_size=256",
        "ppo.num_epochs=20",
        "ppo.gamma=0.98",
        "ppo.gae_lambda=0.8",
        "ppo.ent_coef=0.0",
        "ppo.clip_eps=0.2",
        "ppo.anneal_clip=true",
        "ppo.optimizer.learning_rate=0.001",
        "ppo.optimizer.anneal_lr=true",
        "ppo.network.hidden_sizes=[64]",
        "ppo.network.activation=relu",
    ],
    "pendulum": [
        "env.num_envs=4",
        "env.norm_obs=true",
        "env.norm_reward=true",
        "ppo.num_steps=1024",
        "ppo.minibatch_size=128",
        "ppo.num_epochs=10",
        "ppo.gamma=0.9",
        "ppo.gae_lambda=0.95",
        "ppo.ent_coef=0.0",
        "ppo.clip_eps=0.2",
        "ppo.optimizer.learning_rate=0.001",
        "ppo.optimizer.anneal_lr=false",
        "ppo.network.hidden_sizes=[64]",
        "ppo.network.activation=relu",
    ],
}
# sb3-contrib's MlpLstmPolicy: the LSTM reads the observation, then net_arch pi/vf [64] -> heads; pgrad the same with
# no torso layers and recurrent_head_sizes [64] (the feed-forward variant keeps hidden_sizes [64]).
LSTM_LIKE_SB3 = [
    "ppo.network.recurrent=lstm",
    "ppo.network.recurrent_size=64",
    "ppo.network.hidden_sizes=[]",
    "ppo.network.recurrent_head_sizes=[64]",
]
RECURRENT = {
    "cartpole": [*LSTM_LIKE_SB3, "ppo.network.sequence_length=32"],
    "pendulum": [*LSTM_LIKE_SB3, "ppo.network.sequence_length=32"],
}
SB3: dict[str, dict[str, Any]] = {
    "cartpole": {
        "n_envs": 8,
        "normalize": {"norm_obs": True, "norm_reward": False},
        "kwargs": {
            "n_steps": 32,
            "batch_size": 256,
            "n_epochs": 20,
            "gamma": 0.98,
            "gae_lambda": 0.8,
            "ent_coef": 0.0,
            "learning_rate": "lin_0.001",
            "clip_range": "lin_0.2",
        },
    },
    "pendulum": {
        "n_envs": 4,
        "normalize": {"norm_obs": True, "norm_reward": True},
        "kwargs": {
            "n_steps": 1024,
            "gae_lambda": 0.95,
            "gamma": 0.9,
            "n_epochs": 10,
            "ent_coef": 0.0,
            "learning_rate": 1e-3,
            "clip_range": 0.2,
            "use_sde": True,
            "sde_sample_freq": 4,
        },
    },
}


# pgrad as shipped: its preset for the unmasked task (pgrad-*-preset variants), plus the recurrent core (64 LSTM
# units, sequences of 32); the feed-forward preset variant is the same run without the core.
PRESET_RECURRENT = ["ppo.network.recurrent=lstm", "ppo.network.recurrent_size=64", "ppo.network.sequence_length=32"]


def pgrad_run(task: str, variant: str, seed: int, steps: int) -> dict[str, float]:
    """pgrad PPO on the masked task; final evaluation and seconds. ``variant``: pgrad-lstm / pgrad-ff (the zoo's
    ``ppo_lstm`` values), pgrad-lstm-preset / pgrad-ff-preset (pgrad's preset for the task)."""
    sets = ["env.mask_velocity=true", "run.progress=false", "run.tensorboard=false", "guard.eval_every=0"]
    preset = variant.endswith("-preset")
    if preset:
        sets += PRESET_RECURRENT if variant.startswith("pgrad-lstm") else []
    else:
        sets += PGRAD[task] + (RECURRENT[task] if variant == "pgrad-lstm" else [])
    env_id = TASKS[task]["env_id"]
    config, _ = resolve_config("ppo", env_id, sets=sets, seed=seed, total_steps=steps, use_preset=preset)
    with tempfile.TemporaryDirectory() as folder:
        runner = OnPolicyRunner(config, Path(folder) / "run", console=False)
        wall, cpu = time.perf_counter(), time.process_time()
        runner.train()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        envs = make_vector_env(config.env, num_envs=4)
        policy = runner.algo.acting_policy()
        normalizer = runner.collector.obs_normalizer
        returns, _ = run_episodes(
            policy, envs, runner.env.adapter, normalizer, EVAL_EPISODES, True, seed + EVAL_SEED_OFFSET
        )
        envs.close()
    return {"eval": float(np.mean(returns)), "wall": wall, "cpu": cpu}


def schedule(value: float | str) -> Any:
    """The zoo's ``lin_x``: x times the remaining progress (1 -> 0); a number stays constant."""
    if isinstance(value, str) and value.startswith("lin_"):
        initial = float(value[4:])
        return lambda remaining: remaining * initial
    return value


def sb3_run(task: str, seed: int, steps: int) -> dict[str, float]:
    """sb3-contrib RecurrentPPO with the zoo's ``ppo_lstm`` values on the same masked env."""
    import gymnasium as gym
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecNormalize

    from pgrad.envs.partial import MaskVelocity, velocity_indices

    env_id, spec = TASKS[task]["env_id"], SB3[task]

    def make() -> gym.Env[Any, Any]:
        return MaskVelocity(gym.make(env_id), *velocity_indices(env_id, None))

    gamma = spec["kwargs"]["gamma"]
    envs = VecNormalize(make_vec_env(make, n_envs=spec["n_envs"], seed=seed), gamma=gamma, **spec["normalize"])
    kwargs = {key: schedule(value) for key, value in spec["kwargs"].items()}
    policy_kwargs = {
        "ortho_init": False,
        "activation_fn": torch.nn.ReLU,
        "lstm_hidden_size": 64,
        "enable_critic_lstm": True,
        "net_arch": {"pi": [64], "vf": [64]},
    }
    model = RecurrentPPO("MlpLstmPolicy", envs, seed=seed, policy_kwargs=policy_kwargs, device="cpu", **kwargs)
    wall, cpu = time.perf_counter(), time.process_time()
    model.learn(steps)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    eval_envs = VecNormalize(make_vec_env(make, n_envs=1, seed=seed + EVAL_SEED_OFFSET), training=False)
    eval_envs.obs_rms = envs.obs_rms
    eval_envs.norm_reward = False
    returns, _ = evaluate_policy(
        model, eval_envs, n_eval_episodes=EVAL_EPISODES, deterministic=True, return_episode_rewards=True
    )
    return {"eval": float(np.mean(returns)), "wall": wall, "cpu": cpu}


def load() -> str:
    """The 1-minute load average now."""
    return Path("/proc/loadavg").read_text().split()[0]


def main() -> None:
    """Runs the variants seed by seed (interleaved), one JSON line per run, then a markdown table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", choices=list(TASKS), default="cartpole")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--steps", type=int, help="env steps per run (default: the zoo's budget)")
    parser.add_argument("--variants", nargs="+", default=["pgrad-lstm", "sb3-contrib"])
    parser.add_argument("--out", type=Path, help="append the JSON lines here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps = args.steps or TASKS[args.task]["steps"]
    print(f"{args.task}, {steps} steps, torch {torch.__version__}, Python {sys.version.split()[0]}", flush=True)
    rows = []
    for seed in args.seeds:
        for variant in args.variants:
            before = load()
            result = sb3_run(args.task, seed, steps) if variant == "sb3-contrib" else None
            result = result or pgrad_run(args.task, variant, seed, steps)
            row = {"task": args.task, "variant": variant, "seed": seed, "steps": steps, **result}
            row["load"] = f"{before}/{load()}"
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.out is not None:
                with args.out.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
    for variant in args.variants:
        mine = [row for row in rows if row["variant"] == variant]
        print(
            f"- {variant}: eval median {statistics.median(r['eval'] for r in mine):.1f}, "
            f"wall median {statistics.median(r['wall'] for r in mine):.0f} s"
        )


if __name__ == "__main__":
    main()
