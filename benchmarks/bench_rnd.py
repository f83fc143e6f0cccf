"""PPO against PPO + RND (issue 26) on a sparse-reward chain, several seeds.

The chain (defined here, ``ChainEnv``): ``length`` cells, one-hot observation of the cell, two actions, start
at cell 0; in each cell one action (fixed per cell, drawn once from a fixed seed, as in DeepSea) moves right and
the other left; reward 1 (and the episode ends) only on reaching the last cell, 0 everywhere else; truncated
after ``2 x length`` steps. A random walk almost never reaches the end and a policy that drifts to one action
does not either, so PPO alone sees no reward; RND's bonus for rarely seen cells walks the policy further each
update until it finds it.

Both arms run the same PPO settings (4 envs x 128 steps, 4 epochs of 4 minibatches, ent_coef 0.01); the RND arm
adds ``ppo.rnd.enabled=true`` with its defaults (ext_coef 2, int_coef 1, int_gamma 0.99, update_proportion 0.25).
Per seed: the step at which the mean return of the last 20 episodes first reaches 0.9 (None: never) and the
final one.

    .venv/bin/python benchmarks/bench_rnd.py                        # seeds 1-3, 40k steps each arm
    .venv/bin/python benchmarks/bench_rnd.py --seeds 1 --steps 20000 --length 20   # a quick check
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from pgrad.runners.on_policy import OnPolicyRunner
from pgrad.runs import resolve_config

TARGET = 0.9


class ChainEnv(gym.Env[np.ndarray, int]):
    """Walk right along ``length`` cells (the action that moves right differs per cell): reward 1 at the last
    one, 0 elsewhere; one-hot observations."""

    def __init__(self, length: int = 30) -> None:
        self.length = length
        self.observation_space = gym.spaces.Box(0.0, 1.0, (length,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.right = np.random.default_rng(1234).integers(0, 2, length)  # the action that moves right, per cell
        self.cell = 0
        self.steps = 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.length, np.float32)
        obs[self.cell] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Back to cell 0."""
        super().reset(seed=seed)
        self.cell, self.steps = 0, 0
        return self._obs(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        """One cell right (the cell's own right action) or left; the last cell pays 1 and ends the episode."""
        step = 1 if int(action) == self.right[self.cell] else -1
        self.cell = max(0, min(self.length - 1, self.cell + step))
        self.steps += 1
        reached = self.cell == self.length - 1
        return self._obs(), float(reached), reached, self.steps >= 2 * self.length, {}


def run(seed: int, steps: int, length: int, rnd: bool, root: Path) -> dict[str, Any]:
    """One training run; the first step whose 20-episode mean return reached TARGET, the final mean, seconds."""
    sets = [
        f"env.kwargs={{length: {length}}}",
        "env.num_envs=4",
        "ppo.num_steps=128",
        "ppo.num_epochs=4",
        "ppo.minibatch_size=128",
        "ppo.ent_coef=0.01",
        "run.progress=false",
        "run.tensorboard=false",
        "run.checkpoint_every=100000000",
        "guard.eval_every=0",
        f"ppo.rnd.enabled={str(rnd).lower()}",
    ]
    config, _ = resolve_config("ppo", "bench_rnd:ChainEnv", sets=sets, seed=seed, total_steps=steps, use_preset=False)
    folder = root / f"{'rnd' if rnd else 'ppo'}-{seed}"
    start = time.perf_counter()
    OnPolicyRunner(config, folder, console=False).train()
    seconds = time.perf_counter() - start
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    returns = [(row["step"], row.get("rollout/return_mean", 0.0)) for row in rows]
    first = next((step for step, value in returns if value >= TARGET), None)
    return {"first": first, "final": returns[-1][1], "seconds": seconds}


def main() -> None:
    """Both arms per seed, interleaved; prints a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=40_000)
    parser.add_argument("--length", type=int, default=30)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))  # the env's entry point, bench_rnd:ChainEnv
    lines = [
        f"chain length {args.length}, {args.steps} steps per run; first step with 20-episode mean return >= {TARGET}",
        "",
        "| seed | PPO first | PPO final | PPO s | PPO+RND first | PPO+RND final | PPO+RND s |",
        "|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for index, seed in enumerate(args.seeds):
            arms = [False, True] if index % 2 == 0 else [True, False]  # alternate which runs first
            result = {arm: run(seed, args.steps, args.length, arm, Path(tmp)) for arm in arms}
            ppo, rnd = result[False], result[True]
            lines.append(
                f"| {seed} | {ppo['first']} | {ppo['final']:.2f} | {ppo['seconds']:.0f} "
                f"| {rnd['first']} | {rnd['final']:.2f} | {rnd['seconds']:.0f} |"
            )
            print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
