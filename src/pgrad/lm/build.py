"""Building the language models of a run from its config section: the tiny GPT-2 or a model folder's model
(``pgrad.lm.folders``), PPO's policy with its value head (and LoRA adapter), the frozen reference, the task
(the digits task, or a data set: ``pgrad.lm.dataset``). The learner side; the loops that train them are in
``pgrad.runners.lm_*``."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import cast

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from pgrad.errors import ConfigError
from pgrad.lm.config import LMDPOConfig, LMModelConfig, LMPPOConfig, LMRewardModelConfig, LMSFTConfig
from pgrad.lm.data import DataKind, read_rows, split_rows
from pgrad.lm.dataset import DatasetTask
from pgrad.lm.folders import (
    FolderTokenizer,
    check_model_folder,
    load_causal_lm,
    load_sequence_classifier,
    load_trunk,
)
from pgrad.lm.model import AdapterDisabled, CausalLM, PolicyWithValue, RewardModel, attach_lora, tiny_gpt2_config
from pgrad.lm.reward import LearnedReward
from pgrad.lm.task import DigitsTask

LMSection = LMSFTConfig | LMPPOConfig | LMDPOConfig | LMRewardModelConfig
Task = DigitsTask | DatasetTask
# what each section trains on (pgrad.lm.data.REQUIRED)
DATA_KINDS: dict[type, DataKind] = {
    LMPPOConfig: "prompts",
    LMSFTConfig: "demonstrations",
    LMRewardModelConfig: "pairs",
    LMDPOConfig: "pairs",
}


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


def folder_context(config: dict[str, object]) -> int:
    """The longest sequence of a model folder's config.json (``max_position_embeddings``, GPT-2's
    ``n_positions``), read without building the model."""
    for name in ("max_position_embeddings", "n_positions"):
        value = config.get(name)
        if isinstance(value, int) and value > 0:
            return value
    return 2**31 - 1


def build_tasks(section: LMSection, seed: int) -> tuple[Task, Task]:
    """(training task, evaluation task) of a section: the digits task twice, or its data set's rows and held-out
    rows (``eval_dataset``, else ``eval_fraction`` of them split off by ``run.seed``), tokenized by the model
    folder's tokenizer and checked against its context before any model is built."""
    if section.dataset is None:
        task = DigitsTask(section.max_new_tokens)
        return task, task
    assert section.model.path is not None  # check_shared_sections
    field = f"{section.SECTION}.model"
    folder_config = check_model_folder(section.model.path, field)
    context = folder_context(folder_config)
    tokenizer = FolderTokenizer(section.model.path, field)
    vocab = folder_config.get("vocab_size")
    if isinstance(vocab, int) and tokenizer.vocab_size > vocab:
        raise ConfigError(
            f"{field}: the tokenizer of {section.model.path} has {tokenizer.vocab_size} tokens, more than the "
            f"model's vocab_size ({vocab}) in its config.json: some ids would have no embedding"
        )
    kind = DATA_KINDS[type(section)]
    rows = read_rows(section.dataset, kind)
    if section.eval_dataset is not None:
        heldout = read_rows(section.eval_dataset, kind)
    else:
        rows, heldout = split_rows(rows, section.eval_fraction, seed, section.dataset)
    where = f"{section.SECTION}.max_new_tokens"
    train = DatasetTask(rows, tokenizer, section.max_new_tokens, context, where)
    return train, DatasetTask(heldout, tokenizer, section.max_new_tokens, context, where)


def build_task(config: LMPPOConfig, seed: int = 0) -> Task:
    """The training task of a PPO section (``build_tasks``)."""
    return build_tasks(config, seed)[0]


def build_lm(config: LMSFTConfig | LMPPOConfig | LMDPOConfig, task: Task) -> CausalLM:
    """The language model of a section: its model folder's, else the tiny GPT-2."""
    if config.model.path is not None:
        # a model folder's causal LM (Llama, Qwen2, ...): not a GPT2LMHeadModel, but called the same way
        return cast(CausalLM, load_causal_lm(config.model.path, f"{config.SECTION}.model"))
    assert isinstance(task, DigitsTask)
    return GPT2LMHeadModel(model_config(config.model, task, config.max_new_tokens))


def build_policy(config: LMPPOConfig, task: Task) -> PolicyWithValue:
    """PPO's policy: the language model with a value head (on its own trunk with ``critic: separate``, or on
    ``value_model``'s folder trunk)."""
    if config.model.path is None:
        assert isinstance(task, DigitsTask)
        gpt2 = model_config(config.model, task, config.max_new_tokens)
        return PolicyWithValue(gpt2, separate_critic=config.critic == "separate")
    lm = build_lm(config, task)
    critic = None
    if config.value_model not in (None, "reward_model"):
        assert config.value_model is not None
        critic = load_trunk(config.value_model, f"{config.SECTION}.value_model")
        _check_tokens(config.value_model, task, f"{config.SECTION}.value_model")
    elif config.critic == "separate":
        critic = load_trunk(config.model.path, f"{config.SECTION}.model")
    return PolicyWithValue(lm=lm, critic=critic)


def _check_tokens(folder: str, task: Task, field: str) -> None:
    """A model folder read beside the policy must share its tokenizer (it reads the policy's token ids)."""
    assert isinstance(task, DatasetTask)
    if not FolderTokenizer(folder, field).same_vocabulary(task.tokenizer):
        raise ConfigError(f"{field}: the tokenizer of {folder} differs from the policy's ({task.tokenizer.folder})")


def build_reward_model(config: LMRewardModelConfig, task: Task) -> RewardModel:
    """A reward model: the section's GPT-2 trunk, or its model folder's base model, with a scalar head on the
    response's last real token."""
    if config.model.path is not None:
        return RewardModel(trunk=load_trunk(config.model.path, f"{config.SECTION}.model"))
    assert isinstance(task, DigitsTask)
    return RewardModel(model_config(config.model, task, config.max_new_tokens))


def is_model_folder(path: Path) -> bool:
    """Whether ``path`` is a Hugging Face model folder (a config.json) rather than a pgrad run (a config.yaml)."""
    return (path / "config.json").exists() and not (path / "config.yaml").exists()


def folder_reward_model(
    folder: Path, device: torch.device, field: str, tokenizer: FolderTokenizer | None
) -> LearnedReward:
    """A one-label sequence-classification model folder as a frozen scorer: its trunk, and its score head read at
    the response's last real token. It must share the policy's tokenizer (it reads the policy's ids)."""
    if tokenizer is None:
        raise ConfigError(
            f"{field}: {folder} is a model folder; it reads a model folder's tokens, and the policy is the built-in "
            "GPT-2 (give model=DIR and dataset=FILE, or a 'pgrad lm rm' run of the digits task)"
        )
    trunk, head = load_sequence_classifier(folder, field)
    if not FolderTokenizer(folder, field).same_vocabulary(tokenizer):
        raise ConfigError(f"{field}: the tokenizer of {folder} differs from the policy's ({tokenizer.folder})")
    model = RewardModel(trunk=trunk, head=head).requires_grad_(False).eval()
    return LearnedReward([model.to(device)])


def check_reward_tokens(section: LMRewardModelConfig, run_dir: Path, tokenizer: FolderTokenizer | None) -> None:
    """A ``pgrad lm rm`` run scores the policy's ids: both on the built-in vocabulary, or both from model folders
    with the same tokenizer."""
    field = "lm_ppo.reward_model"
    if (section.model.path is None) != (tokenizer is None):
        what = "the built-in GPT-2's digits" if section.model.path is None else f"the folder {section.model.path}"
        raise ConfigError(f"{field}: the reward model of {run_dir} reads {what} tokens, and the policy does not")
    if tokenizer is not None and section.model.path is not None:
        if not FolderTokenizer(section.model.path, field).same_vocabulary(tokenizer):
            raise ConfigError(
                f"{field}: the reward model of {run_dir} ({section.model.path}) has another tokenizer than the "
                f"policy's ({tokenizer.folder})"
            )


def critic_from_reward_model(policy: PolicyWithValue, reward_model: RewardModel) -> None:
    """``value_model: reward_model``: a separate critic that starts as a copy of the reward model's trunk and
    head (InstructGPT), trained from there."""
    policy.critic = copy.deepcopy(reward_model.trunk).requires_grad_(True)
    policy.init_value_from(reward_model)


def add_lora(policy: PolicyWithValue, config: LMPPOConfig) -> None:
    """With ``lora_rank``: the policy's LM becomes a LoRA model of its (initial) weights."""
    if config.lora_rank:
        try:
            attach_lora(policy, config.lora_rank, config.lora_alpha)
        except ValueError as exc:
            raise ConfigError(f"lm_ppo.{exc}") from None


def frozen_reference(
    lm: CausalLM, config: LMPPOConfig | LMDPOConfig, task: Task | None = None
) -> CausalLM | AdapterDisabled:
    """The reference of the policy's language model ``lm``: ``reference_model``'s folder, frozen (its tokenizer
    checked against ``task``'s); else ``lm`` with its LoRA adapter switched off; else a frozen copy of it."""
    if config.reference_model is not None:
        field = f"{config.SECTION}.reference_model"
        reference = load_causal_lm(config.reference_model, field)
        if task is not None:
            _check_tokens(config.reference_model, task, field)
        reference.requires_grad_(False)
        return cast(CausalLM, reference)
    if isinstance(config, LMPPOConfig) and config.lora_rank:
        return AdapterDisabled(lm)
    return frozen_copy(lm)


def frozen_copy(lm: CausalLM) -> CausalLM:
    """A copy of ``lm``'s weights that no gradient reaches, in eval mode: a reference (PPO, DPO) or the
    initial weights an evaluation measures the KL to (SFT)."""
    copied: CausalLM = copy.deepcopy(lm)
    copied.requires_grad_(False)
    copied.train(False)
    return copied


def model_label(section: LMSection, task: Task) -> str:
    """What a run's first line calls its model and task: ``digits`` or ``dataset FILE (model DIR)``."""
    if section.model.path is None:
        return task.name
    return f"{Path(str(section.dataset)).name} ({Path(section.model.path).name})"
