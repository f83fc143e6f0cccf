"""``pgrad lm export RUN --out DIR``: a run's trained policy as a Hugging Face model folder.

The policy of one checkpoint (``best`` by default) of an ``lm_ppo``, ``lm_sft`` or ``lm_dpo`` run: its language
model only (no value head, no reference), a LoRA adapter merged into the weights (W + alpha / r x B A), written
with ``save_pretrained`` (config.json, generation_config.json, model.safetensors) beside the tokenizer (the model
folder's; for the built-in GPT-2, its digits vocabulary as a ``PreTrainedTokenizerFast``) and
``pgrad_export.json`` (the run, checkpoint and step it came from). ``transformers`` loads the folder with
``AutoModelForCausalLM`` / ``AutoTokenizer`` and generates from it; its logits are pgrad's policy's.

The folder is written beside ``DIR`` under a temporary name, then renamed to ``DIR``: an existing ``DIR`` is
replaced only when it is a previous export (it holds ``pgrad_export.json``); any other non-empty one is refused.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import GPT2LMHeadModel

from pgrad.checkpoint import CheckpointStore, TrainState, read_train_state
from pgrad.errors import CheckpointError, ConfigError
from pgrad.lm.build import model_config
from pgrad.lm.config import ALGO, DPO_ALGO, SFT_ALGO, LMDPOConfig, LMPPOConfig, LMSFTConfig
from pgrad.lm.folders import FolderTokenizer, load_causal_lm, quiet_transformers
from pgrad.lm.model import CausalLM, PolicyWithValue, attach_lora
from pgrad.lm.task import CharTokenizer, DigitsTask
from pgrad.runs import load_run_config

MARKER = "pgrad_export.json"
# where each algorithm's checkpoint keeps the policy's language model: (module, key prefix)
POLICY_WEIGHTS = {ALGO: ("policy", "lm."), SFT_ALGO: ("lm", ""), DPO_ALGO: ("lm", "")}


@dataclass(frozen=True)
class ExportResult:
    """What ``export_policy`` wrote: the folder, the checkpoint it came from and that checkpoint's step."""

    folder: Path
    checkpoint: Path
    step: int


def check_out(out: Path) -> None:
    """``out`` may be missing, an empty folder or a previous export (it holds ``MARKER``); else one line."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConfigError(f"--out {out} is not a folder; give a new folder (or a previous 'pgrad lm export')")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise ConfigError(
            f"--out {out} exists and is not empty, and it is not a previous 'pgrad lm export' (no {MARKER}); "
            "give a new folder"
        )


def policy_weights(algo: str, state: TrainState, path: Path) -> dict[str, torch.Tensor]:
    """The policy's language-model tensors of a checkpoint (PPO's without the value head and critic)."""
    module, prefix = POLICY_WEIGHTS[algo]
    if module not in state.modules:
        raise CheckpointError(f"checkpoint {path} has no weights for module '{module}'")
    weights = {key[len(prefix) :]: value for key, value in state.modules[module].items() if key.startswith(prefix)}
    bad = next((key for key, value in weights.items() if not bool(torch.isfinite(value).all())), None)
    if bad is not None:
        raise CheckpointError(f"checkpoint {path}: tensor '{bad}' holds a NaN or infinity; not exported")
    return weights


def trained_lm(section: LMPPOConfig | LMSFTConfig | LMDPOConfig, algo: str, state: TrainState, path: Path) -> CausalLM:
    """The policy's language model of a checkpoint, LoRA merged: built as the run built it, then filled."""
    lm: nn.Module
    if section.model.path is not None:
        lm = load_causal_lm(section.model.path, f"{section.SECTION}.model")
    else:
        lm = GPT2LMHeadModel(model_config(section.model, DigitsTask(section.max_new_tokens), section.max_new_tokens))
    lora = isinstance(section, LMPPOConfig) and section.lora_rank > 0
    holder = PolicyWithValue(lm=lm)  # type: ignore[arg-type]
    if lora:
        assert isinstance(section, LMPPOConfig)
        attach_lora(holder, section.lora_rank, section.lora_alpha)
    try:
        holder.lm.load_state_dict(policy_weights(algo, state, path))
    except RuntimeError as exc:
        first = " ".join(line.strip() for line in str(exc).strip().splitlines()[:2])
        raise CheckpointError(f"checkpoint {path}: the policy does not fit its run's model ({first})") from None
    model: Any = holder.lm
    if lora:  # W + alpha / r x B A into the base weights; the peft wrapper goes
        model = model.merge_and_unload()
    model.requires_grad_(False)
    return model.eval()  # type: ignore[no-any-return]


def digits_tokenizer() -> Any:
    """The built-in GPT-2's vocabulary (``CharTokenizer``) as a transformers ``PreTrainedTokenizerFast``: one
    token per digit, ``:``, ``<bos>`` and ``<eos>`` (also the pad token)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    char = CharTokenizer()
    backend = Tokenizer(models.WordLevel({symbol: i for i, symbol in enumerate(char.symbols)}, unk_token="<eos>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("<bos>|<eos>|."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", bos_token="<bos>", pad_token="<eos>")  # type: ignore[no-untyped-call]


def export_policy(run_dir: Path, out: Path, which: str = "best") -> ExportResult:
    """Write checkpoint ``which`` of the language-model run ``run_dir`` as a model folder ``out`` (module
    docstring)."""
    out = Path(out)
    check_out(out)
    config = load_run_config(Path(run_dir))
    section = config.algo_config
    if config.algo not in POLICY_WEIGHTS or not isinstance(section, LMPPOConfig | LMSFTConfig | LMDPOConfig):
        raise ConfigError(
            f"{run_dir} is a '{config.algo}' run; pgrad lm export writes the policy of an lm_ppo, lm_sft or lm_dpo run"
        )
    path = CheckpointStore(Path(run_dir), config.run.keep_checkpoints).readable(which)
    state = read_train_state(path)
    model = trained_lm(section, config.algo, state, path)
    tokenizer = (
        FolderTokenizer(section.model.path, f"{section.SECTION}.model").hf
        if section.model.path is not None
        else digits_tokenizer()
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    quiet_transformers()  # no progress bar from save_pretrained
    staging = out.with_name(f".{out.name}.{secrets.token_hex(6)}.tmp")
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        marker = {"run": str(Path(run_dir).resolve()), "algo": config.algo, "checkpoint": path.name, "step": state.step}
        (staging / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        _replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(out, path, state.step)


def _replace(staging: Path, out: Path) -> None:
    """Rename ``staging`` to ``out``; a previous export there (checked by ``check_out``) is moved aside first and
    removed after."""
    if not out.exists():
        os.replace(staging, out)
        return
    check_out(out)  # again: between the first check and now the folder may have changed
    old = out.with_name(f".{out.name}.{secrets.token_hex(6)}.old")
    os.replace(out, old)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)
