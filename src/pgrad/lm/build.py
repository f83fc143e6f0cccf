"""Building the language models of a run from its config section: the tiny GPT-2, PPO's policy with its
value head (and LoRA adapter), the frozen reference, the task. The learner side; the loops that train
them are in ``pgrad.runners.lm_*``."""

from __future__ import annotations

import copy

from transformers import GPT2LMHeadModel

from pgrad.errors import ConfigError
from pgrad.lm.config import LMDPOConfig, LMPPOConfig, LMSFTConfig
from pgrad.lm.model import AdapterDisabled, PolicyWithValue, attach_lora, tiny_gpt2_config
from pgrad.lm.task import DigitsTask


def build_lm(config: LMSFTConfig | LMPPOConfig | LMDPOConfig, task: DigitsTask) -> GPT2LMHeadModel:
    """The tiny GPT-2 of a section's ``n_layer``, ``n_embd`` and ``n_head``, sized for the task's prompts."""
    model_config = tiny_gpt2_config(
        task.tokenizer.vocab_size,
        n_positions=task.max_prompt_length + config.max_new_tokens,
        n_layer=config.n_layer,
        n_embd=config.n_embd,
        n_head=config.n_head,
    )
    return GPT2LMHeadModel(model_config)


def build_task(config: LMPPOConfig) -> DigitsTask:
    """The task a PPO section names (``digits``), its responses up to ``max_new_tokens`` long."""
    return DigitsTask(config.max_new_tokens)


def build_policy(config: LMPPOConfig, task: DigitsTask) -> PolicyWithValue:
    """PPO's policy: the tiny GPT-2 with a value head (on its own trunk with ``critic: separate``)."""
    model_config = tiny_gpt2_config(
        task.tokenizer.vocab_size,
        n_positions=task.max_prompt_length + config.max_new_tokens,
        n_layer=config.n_layer,
        n_embd=config.n_embd,
        n_head=config.n_head,
    )
    return PolicyWithValue(model_config, separate_critic=config.critic == "separate")


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
    reference: GPT2LMHeadModel = copy.deepcopy(policy.lm)
    reference.requires_grad_(False)
    reference.train(False)
    return reference
