"""Building the language models of a run from its config section: the tiny GPT-2, PPO's policy with its
value head (and LoRA adapter), the frozen reference, the task. The learner side; the loops that train
them are in ``pgrad.runners.lm_*``."""

from __future__ import annotations

import copy

from transformers import GPT2Config, GPT2LMHeadModel

from pgrad.errors import ConfigError
from pgrad.lm.config import LMDPOConfig, LMModelConfig, LMPPOConfig, LMRewardModelConfig, LMSFTConfig
from pgrad.lm.model import AdapterDisabled, PolicyWithValue, RewardModel, attach_lora, tiny_gpt2_config
from pgrad.lm.task import DigitsTask


def model_config(section: LMModelConfig, task: DigitsTask, max_new_tokens: int) -> GPT2Config:
    """The GPT-2 config of a section's ``model:`` (blocks, width, heads), positions for the task's longest
    prompt and ``max_new_tokens`` response tokens, every dropout off."""
    return tiny_gpt2_config(
        task.tokenizer.vocab_size,
        n_positions=task.max_prompt_length + max_new_tokens,
        n_layer=section.n_layer,
        n_embd=section.n_embd,
        n_head=section.n_head,
    )


def build_lm(config: LMSFTConfig | LMPPOConfig | LMDPOConfig, task: DigitsTask) -> GPT2LMHeadModel:
    """The tiny GPT-2 language model of a section."""
    return GPT2LMHeadModel(model_config(config.model, task, config.max_new_tokens))


def build_task(config: LMPPOConfig) -> DigitsTask:
    """The task a PPO section names (``digits``), its responses up to ``max_new_tokens`` long."""
    return DigitsTask(config.max_new_tokens)


def build_policy(config: LMPPOConfig, task: DigitsTask) -> PolicyWithValue:
    """PPO's policy: the tiny GPT-2 with a value head (on its own trunk with ``critic: separate``)."""
    gpt2 = model_config(config.model, task, config.max_new_tokens)
    return PolicyWithValue(gpt2, separate_critic=config.critic == "separate")


def build_reward_model(config: LMRewardModelConfig, task: DigitsTask) -> RewardModel:
    """A reward model: the section's GPT-2 trunk with a scalar head on the response's last real token."""
    return RewardModel(model_config(config.model, task, config.max_new_tokens))


def add_lora(policy: PolicyWithValue, config: LMPPOConfig) -> None:
    """With ``lora_rank``: the policy's LM becomes a LoRA model of its (initial) weights."""
    if config.lora_rank:
        try:
            attach_lora(policy, config.lora_rank, config.lora_alpha)
        except ValueError as exc:
            raise ConfigError(f"lm_ppo.{exc}") from None


def frozen_reference(policy: PolicyWithValue, config: LMPPOConfig) -> GPT2LMHeadModel | AdapterDisabled:
    """The reference: the policy's LM with its LoRA adapter switched off, else a frozen copy of its weights."""
    if config.lora_rank:
        return AdapterDisabled(policy.lm)
    return frozen_copy(policy.lm)


def frozen_copy(lm: GPT2LMHeadModel) -> GPT2LMHeadModel:
    """A copy of ``lm``'s weights that no gradient reaches, in eval mode: a reference (PPO, DPO) or the
    initial weights an evaluation measures the KL to (SFT)."""
    copied: GPT2LMHeadModel = copy.deepcopy(lm)
    copied.requires_grad_(False)
    copied.train(False)
    return copied
