"""Evaluating a saved policy on fresh environments, with normaliser statistics frozen."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from pgrad.builders import algo_gamma, build_environment, nominal_physics
from pgrad.checkpoint import CheckpointStore, read_train_state
from pgrad.config import RandomizeConfig, TrainConfig
from pgrad.errors import ConfigError
from pgrad.monitor.evaluation import EVAL_SEED_OFFSET, episode_step_cap, eval_num_envs, run_episodes
from pgrad.policy import build_policy
from pgrad.runs import check_config_recorded, load_run_config, warn
from pgrad.threads import set_threads


@dataclass
class EvalResult:
    """The returns and lengths of evaluation episodes, the checkpoint evaluated and the physics they ran on."""

    returns: list[float]
    lengths: list[int]
    checkpoint: Path
    physics: RandomizeConfig  # what the episodes ran on (defaults: nominal)
    videos: list[Path] = field(default_factory=list)  # with a video folder: one MP4 per episode, in order

    @property
    def mean(self) -> float:
        """The mean episode return."""
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        """The standard deviation of the episode returns (population, ddof 0)."""
        return float(np.std(self.returns))


def _video_ready(config: TrainConfig, video_dir: Path) -> TrainConfig:
    """``--video``'s checks, before any episode: moviepy installed, the folder writable, an env that renders
    rgb_array frames; returns the config with a sync vector env (frames are read from this process)."""
    try:
        import moviepy  # noqa: F401
    except ImportError:
        raise ConfigError("--video needs moviepy: pip install 'pgrad[video]'") from None
    if config.env.vectorization != "sync":
        # frames are read from the one sub-env in this process: an async worker's env cannot render here
        config = replace(config, env=replace(config.env, vectorization="sync"))
    probe = build_environment(config, algo_gamma(config), num_envs=1)
    modes = list(probe.envs.metadata.get("render_modes") or [])
    probe.envs.close()
    if "rgb_array" not in modes:
        raise ConfigError(f"--video: env {config.env.id} cannot render rgb_array frames (its render_modes: {modes})")
    try:  # an unwritable folder fails before any episode, in one line (not after them, in a traceback)
        video_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--video {video_dir}: cannot create the folder ({exc.strerror})") from None
    return config


def evaluate(
    run_dir: Path,
    episodes: int = 10,
    deterministic: bool = True,
    which: str = "latest",
    video_dir: Path | None = None,
    seed: int | None = None,
    trust_env_code: bool = False,
    physics: RandomizeConfig | None = None,
) -> EvalResult:
    """``physics``: domain randomisation for the evaluation envs (``pgrad eval --randomize``, robustness
    sweeps); None evaluates on the env's nominal physics, whatever the run trained on."""
    if episodes < 1:
        raise ConfigError(f"--episodes must be >= 1; got {episodes}")
    config = load_run_config(run_dir, trust_env_code=trust_env_code)
    checkpoint = CheckpointStore(run_dir, config.run.keep_checkpoints).readable(which)
    state = read_train_state(checkpoint)
    changed = check_config_recorded(config, state, checkpoint, Path(run_dir) / "config.yaml")
    config = nominal_physics(config)
    if physics is not None:
        config = replace(config, env=replace(config.env, randomize=physics))
    set_threads(config.run.torch_threads)
    num_envs = 1 if video_dir is not None else eval_num_envs(episodes)
    render = "rgb_array" if video_dir is not None else None
    if video_dir is not None:
        config = _video_ready(config, Path(video_dir))
    try:
        env = build_environment(config, algo_gamma(config), num_envs=num_envs, render_mode=render)
    except ConfigError as exc:
        if video_dir is None:
            raise
        raise ConfigError(f"--video needs an env that renders with render_mode='rgb_array'; {exc}") from None
    warn(changed)  # config.yaml built an env: the warning line is not followed by an error line
    # the deployed chain (pgrad.policy): the same weights, frozen normaliser and action mapping as predict and export
    policy = build_policy(config, state, checkpoint, env.envs.single_observation_space, env.envs.single_action_space)
    eval_seed = EVAL_SEED_OFFSET + (config.run.seed if seed is None else seed)
    frames: list[np.ndarray] = []
    videos: list[Path] = []

    def record(finished: np.ndarray) -> None:
        # One sub-env when recording: a finished episode closes the current video. (Only passed
        # to run_episodes with a video_dir; the check is for the type checker.)
        frame = env.envs.envs[0].render()
        if not isinstance(frame, np.ndarray) or frame.ndim != 3:
            env.envs.close()
            raise ConfigError(
                f"--video: env {config.env.id} gave no rgb_array frame from render() "
                f"(got {type(frame).__name__}); it does not support render_mode='rgb_array'"
            )
        frames.append(frame)
        if finished.size and video_dir is not None:
            videos.append(_save_video(frames, Path(video_dir), len(videos), env.envs.metadata.get("render_fps", 30)))
            frames.clear()

    returns, lengths = run_episodes(
        policy.actor,
        env.envs,
        policy.adapter,
        policy.obs_normalizer,
        episodes,
        deterministic,
        eval_seed,
        record if video_dir is not None else None,
        max_episode_steps=episode_step_cap(config),
    )
    env.envs.close()
    return EvalResult(returns, lengths, checkpoint, config.env.randomize, videos)


def _save_video(frames: list[np.ndarray], folder: Path, index: int, fps: int) -> Path:
    """``folder/episode-INDEX.mp4``, every episode. (Gymnasium's ``save_video`` keeps only episodes 0, 1, 8,
    27, ... by default and appends its own ``-episode-N`` to the name.)"""
    from moviepy.video.io.ImageSequenceClip import ImageSequenceClip  # type: ignore[import-untyped]

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"episode-{index:03d}.mp4"
    ImageSequenceClip(frames, fps=fps).write_videofile(str(path), logger=None)
    return path
