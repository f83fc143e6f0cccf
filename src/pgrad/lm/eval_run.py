"""``pgrad eval RUN_DIR`` on a language-model run folder: the policy of one checkpoint on held-out prompts.

The policy is the checkpoint's (``lm_ppo``: the policy without its value head; ``lm_dpo``, ``lm_sft``: the
language model), the reference the one stored beside it (the frozen initial weights: the SFT model's when
the run started from one). ``eval/rm_score`` is what the run was trained on: the reward model of an
``lm_ppo`` run (or the true score with ``reward: true``); for SFT and DPO, which have no reward model, the
reward model of ``reward_model`` when given, else the task's true score. By default the prompts and sampling
noise are the run's own evaluations' (``run.seed + 1``), so ``eval`` of the latest checkpoint repeats the last
``eval/*`` row of a run that evaluated at its end.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from pgrad.checkpoint import CheckpointStore, TrainState, load_modules, read_train_state
from pgrad.errors import ConfigError
from pgrad.lm.build import (
    Task,
    add_lora,
    build_lm,
    build_policy,
    build_tasks,
    critic_from_reward_model,
    frozen_reference,
)
from pgrad.lm.config import ALGO, RM_ALGO, SFT_ALGO, LMDPOConfig, LMPPOConfig, LMSFTConfig
from pgrad.lm.dataset import DatasetTask
from pgrad.lm.evaluate import evaluate_policy
from pgrad.lm.model import AdapterDisabled, CausalLM, PolicyWithValue
from pgrad.lm.reward import ResponseScorer, TrueScoreReward
from pgrad.lm.reward_spec import refuse_untrusted_reward_code
from pgrad.lm.task import DigitsTask
from pgrad.runners.lm_ppo import RewardFunctions, build_scorer
from pgrad.runners.lm_rm import load_reward_model
from pgrad.runs import check_config_recorded, load_run_config, warn
from pgrad.threads import set_threads

EVAL_SEED_OFFSET = 1  # the runs' own evaluations use run.seed + 1 (lm_ppo, lm_sft, lm_dpo)


@dataclass(frozen=True)
class LMEvalResult:
    """``pgrad eval`` of a language-model run: its eval metrics, the checkpoint, prompts, seed and scorer."""

    metrics: dict[str, float]  # eval/true_score, eval/rm_score, eval/kl, eval/kl_k3, eval/response_length
    checkpoint: Path
    prompts: int
    seed: int
    scorer: str  # what eval/rm_score is


def _models(
    config: LMPPOConfig | LMSFTConfig | LMDPOConfig, algo: str, task: Task, state: TrainState, path: Path
) -> tuple[CausalLM, CausalLM | AdapterDisabled]:
    """(policy, reference) language models of checkpoint ``path`` (read: ``state``)."""
    if algo == ALGO:
        assert isinstance(config, LMPPOConfig)
        policy = checkpoint_policy(config, task)
        stored = reference_structure(policy.lm, config, task)
        # with LoRA (and no reference_model) the reference is the policy with its adapter off, not stored
        adapter_off = bool(config.lora_rank) and config.reference_model is None
        load_modules({"policy": policy} if adapter_off else {"policy": policy, "reference": stored}, state, path)
        for model in (policy, stored):
            model.requires_grad_(False)
            model.train(False)
        return policy.lm, AdapterDisabled(policy.lm) if adapter_off else stored
    lm = build_lm(config, task)
    initial = reference_structure(lm, config, task) if isinstance(config, LMDPOConfig) else build_lm(config, task)
    load_modules({"lm": lm, "initial" if algo == SFT_ALGO else "reference": initial}, state, path)
    for model in (lm, initial):
        model.requires_grad_(False)
        model.train(False)
    return lm, initial


def describe_reward(section: LMPPOConfig) -> str:
    """What an lm_ppo run's ``eval/rm_score`` is: its reward's terms with their weights."""
    parts = []
    for term in section.reward_terms:
        what = f"the reward model of {section.reward_model}" if term.kind == "model" else term.source
        what = "the true score" if term.kind == "true_score" else what
        parts.append(what if term.weight == 1 else f"{term.weight:g} x {what}")
    return " + ".join(parts)


def reference_structure(lm: CausalLM, config: LMPPOConfig | LMDPOConfig, task: Task) -> CausalLM:
    """A model of the run's reference's shape for its checkpoint to fill: ``reference_model``'s, else the policy's."""
    if config.reference_model is None:
        return build_lm(config, task)
    reference = frozen_reference(lm, config)
    assert not isinstance(reference, AdapterDisabled)
    return reference


def checkpoint_policy(config: LMPPOConfig, task: Task) -> PolicyWithValue:
    """An ``lm_ppo`` run's policy built as its runner builds it (the weights its checkpoints fill): the model, its
    critic (a copy of the reward model's trunk with ``value_model: reward_model``) and its LoRA adapter."""
    policy = build_policy(config, task)
    if config.value_model == "reward_model":
        scorer = build_scorer(config, task, torch.device("cpu"))
        assert scorer.learned is not None
        critic_from_reward_model(policy, scorer.learned.members[0])
    add_lora(policy, config)
    return policy


def evaluate_run(
    run_dir: Path,
    which: str = "latest",
    prompts: int | None = None,
    seed: int | None = None,
    reward_model: Path | None = None,
    trust_reward_code: bool = False,
    reward_functions: RewardFunctions | None = None,
) -> LMEvalResult:
    """Evaluate checkpoint ``which`` (latest, best or a name) of an lm_ppo, lm_sft or lm_dpo run folder. A run
    whose reward names a Python function is refused unless ``trust_reward_code`` (scoring imports it) or
    ``reward_model`` scores instead; ``reward_functions`` gives function terms as objects (``pgrad.lm.trainers``),
    which need no trust."""
    config = load_run_config(Path(run_dir))
    algo, section = config.algo, config.algo_config
    if algo == RM_ALGO:
        raise ConfigError(
            f"{run_dir} is a reward model ({RM_ALGO}): its held-out accuracy is in metrics.jsonl "
            "('eval/rm_accuracy'); pgrad eval evaluates a policy (lm_ppo, lm_sft, lm_dpo)"
        )
    assert isinstance(section, LMPPOConfig | LMSFTConfig | LMDPOConfig)
    count = prompts if prompts is not None else section.eval_prompts
    if count < 1:
        raise ConfigError(f"--prompts must be >= 1; got {count}")
    if seed is not None and not 0 <= seed <= 2**32 - 1:
        raise ConfigError(f"--seed must be in [0, 4294967295]; got {seed}")
    set_threads(config.run.torch_threads)
    device = torch.device("cpu")
    task = build_tasks(section, config.run.seed)[1]  # the held-out prompts (the digits task: its own)
    path = CheckpointStore(Path(run_dir), config.run.keep_checkpoints).readable(which)
    state = read_train_state(path)
    changed = check_config_recorded(config, state, path, Path(run_dir) / "config.yaml")
    lm, reference = _models(section, algo, task, state, path)
    warn(changed)
    scorer: ResponseScorer | None
    if reward_model is not None:
        tokenizer = task.tokenizer if isinstance(task, DatasetTask) else None
        scorer = load_reward_model(Path(reward_model), section.max_new_tokens, device, tokenizer=tokenizer)
        described = f"the reward model of {reward_model}"
    elif isinstance(section, LMPPOConfig):
        imported = tuple(term for term in section.code_terms if term.source not in (reward_functions or {}))
        refuse_untrusted_reward_code(imported, str(Path(run_dir) / "config.yaml"), trust_reward_code)
        scorer = build_scorer(section, task, device, reward_functions)
        described = describe_reward(section)
    elif isinstance(task, DigitsTask):
        scorer, described = TrueScoreReward(task), "the true score (no reward model: give --reward-model)"
    else:
        scorer, described = None, "absent (a data set has no true score: give --reward-model)"
    temperature = section.temperature if isinstance(section, LMPPOConfig) else 1.0
    used_seed = config.run.seed + EVAL_SEED_OFFSET if seed is None else seed
    metrics = evaluate_policy(lm, reference, task, scorer, count, used_seed, temperature)
    return LMEvalResult(metrics, path, count, used_seed, described)
