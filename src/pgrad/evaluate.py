"""Evaluating a saved policy on fresh environments, with normaliser statistics frozen."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pgrad.checkpoint import CheckpointStore, load_checkpoint, tensors_to_numpy
from pgrad.errors import ConfigError
from pgrad.runs import load_run_config
from pgrad.train import algo_gamma, build_algorithm, build_environment

EVAL_SEED_OFFSET = 1_000_003  # evaluation episodes never reuse training seeds


@dataclass
class EvalResult:
    returns: list[float]
    lengths: list[int]
    checkpoint: Path

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))


def evaluate(
    run_dir: Path,
    episodes: int = 10,
    deterministic: bool = True,
    which: str = "latest",
    video_dir: Path | None = None,
    seed: int | None = None,
) -> EvalResult:
    if episodes < 1:
        raise ConfigError(f"--episodes must be >= 1; got {episodes}")
    config = load_run_config(run_dir)
    checkpoint = CheckpointStore(run_dir, config.run.keep_checkpoints).path(which)
    tensors, _ = load_checkpoint(checkpoint)
    torch.set_num_threads(config.run.torch_threads)
    num_envs = 1 if video_dir is not None else min(episodes, 10)
    render = "rgb_array" if video_dir is not None else None
    if video_dir is not None:
        try:
            import moviepy  # noqa: F401
        except ImportError:
            raise ConfigError("--video needs moviepy: pip install 'pgrad[video]'") from None
    env = build_environment(config, algo_gamma(config), num_envs=num_envs, render_mode=render)
    algo = build_algorithm(config, env.adapter)
    for name, module in algo.modules().items():
        prefix = f"module.{name}."
        module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    env.obs_normalizer.stats.load(
        {k[len("obs_norm_"):]: v for k, v in tensors_to_numpy("collector", tensors).items() if k.startswith("obs_norm_")}
    )
    policy = algo.acting_policy()
    rng = np.random.default_rng(EVAL_SEED_OFFSET + (config.run.seed if seed is None else seed))

    # Each sub-env runs a fixed quota so short episodes are not over-represented.
    quota = np.array([episodes // num_envs + (i < episodes % num_envs) for i in range(num_envs)])
    done_count = np.zeros(num_envs, int)
    returns: list[float] = []
    lengths: list[int] = []
    episode_return = np.zeros(num_envs)
    episode_length = np.zeros(num_envs, int)
    pending_reset = np.zeros(num_envs, bool)
    frames: list[np.ndarray] = []
    raw, _ = env.envs.reset(seed=EVAL_SEED_OFFSET + (config.run.seed if seed is None else seed))
    while (done_count < quota).any():
        obs = env.obs_normalizer(env.adapter.observations(raw), update=False)
        actions = policy.mode(obs) if deterministic else policy.sample(obs, rng)
        raw, reward, terminated, truncated, _ = env.envs.step(env.adapter.env_actions(actions))
        if video_dir is not None:
            frames.append(env.envs.envs[0].render())
        active = ~pending_reset & (done_count < quota)
        episode_return += np.where(active, reward, 0.0)
        episode_length += active
        done = np.logical_or(terminated, truncated)
        for index in np.flatnonzero(done & active):
            returns.append(float(episode_return[index]))
            lengths.append(int(episode_length[index]))
            done_count[index] += 1
            if video_dir is not None:
                _save_video(frames, Path(video_dir), len(returns) - 1, env.envs.metadata.get("render_fps", 30))
                frames = []
        episode_return[done] = 0.0
        episode_length[done] = 0
        pending_reset = done
    env.envs.close()
    return EvalResult(returns, lengths, checkpoint)


def _save_video(frames: list[np.ndarray], folder: Path, index: int, fps: int) -> None:
    from gymnasium.utils.save_video import save_video

    folder.mkdir(parents=True, exist_ok=True)
    save_video(frames, str(folder), fps=fps, name_prefix=f"episode-{index:03d}", episode_index=index)
