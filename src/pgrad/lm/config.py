"""The ``lm_ppo`` config section and how an LM run's config is resolved and read back.

An LM run is a ``TrainConfig`` like any other (so ``RunContext`` owns its folder, logs and checkpoints):
``algo: lm_ppo``, the shared ``run`` section (``run.total_steps`` counts sampled *responses*), the
``lm_ppo`` section below, and an ``env`` section whose ``id`` names the task (``digits``). Precedence:
defaults < ``LM_RUN_DEFAULTS`` < ``--config`` file < ``--set`` < flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pgrad.config import Checked, EnvConfig, GuardConfig, RunConfig, TrainConfig, build, load_yaml, merge, param
from pgrad.config import parse_set as parse_set_items
from pgrad.errors import ConfigError

ALGO = "lm_ppo"
TASKS = ("digits",)
# run-section defaults that fit the tiny model on 2 CPU cores (the shared defaults are for env steps)
LM_RUN_DEFAULTS: dict[str, Any] = {"total_steps": 4096, "checkpoint_every": 1024, "tensorboard": False}


@dataclass(frozen=True)
class LMPPOConfig(Checked):
    """PPO on a causal language model with a per-token KL penalty to the frozen initial weights."""

    SECTION: ClassVar[str] = ALGO

    task: Literal["digits"] = param("digits", "the shipped task: prompts and a hidden true score")
    reward: Literal["true"] = param(
        "true", "what scores a response: 'true' feeds the task's hidden score through the reward-model interface"
    )
    max_new_tokens: int = param(8, "longest response in tokens (a response ends earlier at its EOS)")
    batch_size: int = param(64, "prompts (one response each) per rollout")
    minibatch_size: int = param(16, "responses per gradient step; must divide batch_size")
    num_epochs: int = param(4, "passes over each rollout (the first in rollout order, later ones shuffled)")
    temperature: float = param(1.0, "sampling temperature; log-probs are taken of the same tempered distribution")
    gamma: float = param(1.0, "discount over tokens")
    gae_lambda: float = param(0.95, "GAE lambda over tokens")
    clip_eps: float = param(0.2, "surrogate clip range: ratio clipped to [1 - clip_eps, 1 + clip_eps]")
    clip_vf: float = param(0.2, "value clip range around the rollout's values")
    vf_coef: float = param(0.1, "value loss coefficient")
    whiten_advantages: bool = param(True, "whiten advantages over the rollout's real tokens")
    kl_coef: float = param(0.05, "initial coefficient beta of the per-token KL penalty beta (log pi - log pi_ref)")
    kl_target: float | None = param(
        None, "adaptive KL controller (Ziegler et al.): steer the mean per-response KL toward this (None: fixed)"
    )
    kl_horizon: int = param(10_000, "adaptive KL controller horizon, in responses")
    eval_every: int = param(
        1024, "evaluate on held-out prompts every this many responses, at the start and at the end (0: off)"
    )
    eval_prompts: int = param(256, "held-out prompts per evaluation (the same prompts and noise every time)")
    learning_rate: float = param(1e-3, "Adam learning rate (policy and value head)")
    max_grad_norm: float = param(1.0, "global L2 gradient-norm clip")
    n_layer: int = param(2, "GPT-2 blocks of the tiny model")
    n_embd: int = param(64, "GPT-2 width of the tiny model")
    n_head: int = param(4, "attention heads; must divide n_embd")

    def validate(self) -> None:
        self.check_range("max_new_tokens", 1, 256)
        self.check_range("batch_size", 1)
        self.check_range("minibatch_size", 1, self.batch_size)
        if self.batch_size % self.minibatch_size:
            self._fail("minibatch_size", f"a divisor of batch_size ({self.batch_size})")
        self.check_range("num_epochs", 1)
        self.check_range("temperature", 0, low_open=True)
        self.check_range("gamma", 0, 1)
        self.check_range("gae_lambda", 0, 1)
        self.check_range("clip_eps", 0, 1, low_open=True)
        self.check_range("clip_vf", 0, low_open=True)
        self.check_range("vf_coef", 0)
        self.check_range("kl_coef", 0)
        self.check_range("kl_target", 0, low_open=True)
        self.check_range("kl_horizon", 1)
        self.check_range("eval_every", 0)
        self.check_range("eval_prompts", 1)
        self.check_range("learning_rate", 0, low_open=True)
        self.check_range("max_grad_norm", 0, low_open=True)
        self.check_range("n_layer", 1)
        self.check_range("n_embd", 1)
        self.check_range("n_head", 1)
        if self.n_embd % self.n_head:
            self._fail("n_head", f"a divisor of n_embd ({self.n_embd})")


SECTIONS: dict[str, type] = {"run": RunConfig, ALGO: LMPPOConfig}


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """The run's config from its sections (``run``, ``lm_ppo``; ``env`` and ``guard`` as saved)."""
    allowed = {"algo", "env", "guard", *SECTIONS}
    for key in data:
        if key not in allowed:
            raise ConfigError(f"unknown section '{key}' (allowed: run, {ALGO})")
    if data.get("algo", ALGO) != ALGO:
        raise ConfigError(f"config is for algorithm '{data['algo']}', not '{ALGO}'")
    algo_config = build(LMPPOConfig, data.get(ALGO, {}), ALGO)
    env = EnvConfig(id=algo_config.task, num_envs=1)
    saved_env = data.get("env")
    if saved_env is not None and saved_env.get("id", env.id) != env.id:
        raise ConfigError(f"env.id of an LM run is its task ('{env.id}'); got {saved_env.get('id')!r}")
    return TrainConfig(
        algo=ALGO,
        env=env,
        run=build(RunConfig, data.get("run", {}), "run"),
        algo_config=algo_config,
        guard=build(GuardConfig, data.get("guard", {}), "guard"),
    )


def resolve_config(config_file: Path | None, sets: list[str], seed: int | None, total_steps: int | None) -> TrainConfig:
    file_layer = load_yaml(config_file) if config_file is not None else {}
    flags: dict[str, Any] = {}
    if seed is not None:
        flags["seed"] = seed
    if total_steps is not None:
        flags["total_steps"] = total_steps
    layers = merge({"run": LM_RUN_DEFAULTS}, file_layer, parse_set_items(sets, SECTIONS), {"run": flags})
    return config_from_dict(layers)


def load_run_config(run_dir: Path, total_steps: int | None = None) -> TrainConfig:
    """The config an LM run folder was started with (optionally with a new total)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a pgrad run folder (no config.yaml)")
    data = load_yaml(path)
    if data.get("algo") != ALGO:
        raise ConfigError(f"{run_dir} holds a '{data.get('algo')}' run; 'pgrad lm resume' continues {ALGO} runs")
    if total_steps is not None:
        data["run"] = {**(data.get("run") or {}), "total_steps": total_steps}
    return config_from_dict(data)
