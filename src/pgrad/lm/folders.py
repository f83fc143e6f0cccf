"""Hugging Face model folders as pgrad's policy, reference, critic or reward model: checked, then loaded.

A model folder is user input, and it may come from anyone, so it is read as data, never as code:

1. ``check_model_folder`` reads ``config.json`` itself, *before* ``transformers`` sees the folder, and refuses
   in one line naming the file: a folder asking for remote code (``auto_map`` in ``config.json`` or
   ``tokenizer_config.json``, a ``trust_remote_code`` key), an architecture ``transformers`` does not ship
   (its ``model_type`` would need the folder's own code), weights only in pickle files
   (``pytorch_model.bin``, ``*.pt``, ``*.pth``, ``*.ckpt``: unpickling runs code) without a
   ``model.safetensors``, a missing tokenizer, and a symbolic link or special file among its files (as in run
   folders, ``pgrad.safe_io``: a link may point anywhere, a FIFO would hang the read; a Hugging Face cache
   snapshot links its files into ``blobs/``: copy it with ``cp -rL``).
2. Only then ``transformers`` loads it with ``trust_remote_code=False``, ``use_safetensors=True`` and
   ``local_files_only=True`` (no network), in float32.

``FolderTokenizer`` is the folder's tokenizer behind the small interface the loops use (``eos_id``,
``pad_id``, ``vocab_size``, ``decode``). A tokenizer without a pad token pads with its EOS (GPT-2's
convention; padding is told apart by the masks, never by its id), and says so once on stderr; prompts are
left-padded by pgrad itself (``pgrad.lm.dataset``), whatever the tokenizer's ``padding_side``.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pgrad.errors import ConfigError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
MAX_CONFIG_BYTES = 16 * 2**20  # a config.json is a few kB; a bigger one is not read into memory


def _refuse(field: str, message: str) -> ConfigError:
    return ConfigError(f"{field}: {message}")


def _read_json(path: Path, field: str) -> dict[str, Any]:
    """A JSON object from a model folder's file (bounded in size), or a one-line refusal."""
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise _refuse(field, f"{path} is larger than {MAX_CONFIG_BYTES // 2**20} MiB; not a model config")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _refuse(field, f"{path} is not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise _refuse(field, f"{path} must hold a JSON object")
    return data


def _check_entries(folder: Path, field: str) -> list[str]:
    """The names of the folder's files; a symbolic link or a special file among them is refused."""
    names = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        info = entry.stat(follow_symlinks=False)
        if stat.S_ISLNK(info.st_mode):
            raise _refuse(
                field,
                f"{Path(entry.path)} is a symbolic link; pgrad reads no model file through a link (it may point "
                "anywhere): copy the folder with its files ('cp -rL')",
            )
        if stat.S_ISREG(info.st_mode):
            names.append(entry.name)
        elif not stat.S_ISDIR(info.st_mode):
            raise _refuse(field, f"{Path(entry.path)} is not a regular file (a device, FIFO or socket)")
    return names


def _asks_for_code(data: dict[str, Any]) -> str | None:
    """The key of a config that asks for the folder's own code, else None."""
    for key in ("auto_map", "trust_remote_code"):
        if key in data:
            return key
    return None


def check_model_folder(folder: str | Path, field: str, tokenizer: bool = True) -> dict[str, Any]:
    """The folder's ``config.json`` after the checks of the module docstring (1); ``field`` names the config field
    in every refusal. ``tokenizer``: the folder must hold one too (a causal LM; a critic trunk need not)."""
    path = Path(folder)
    if not path.is_dir():
        raise _refuse(field, f"{path} is not a folder (a Hugging Face model folder: config.json, model.safetensors)")
    names = _check_entries(path, field)
    if "config.json" not in names:
        raise _refuse(field, f"{path} has no config.json; not a Hugging Face model folder")
    config = _read_json(path / "config.json", field)
    key = _asks_for_code(config)
    if key is not None:
        raise _refuse(field, f"{path / 'config.json'} asks for remote code ({key}); pgrad runs no code from a folder")
    if "tokenizer_config.json" in names:
        key = _asks_for_code(_read_json(path / "tokenizer_config.json", field))
        if key is not None:
            raise _refuse(
                field,
                f"{path / 'tokenizer_config.json'} asks for remote code ({key}); pgrad runs no code from a folder",
            )
    _check_architecture(path, config, field)
    if not any(name in names for name in SAFETENSORS):
        pickles = [name for name in names if name.endswith(PICKLE_SUFFIXES)]
        if pickles:
            raise _refuse(
                field,
                f"{path / pickles[0]} is a pickle file (loading it runs code) and the folder has no model.safetensors; "
                "convert it to safetensors where you trust it",
            )
        raise _refuse(field, f"{path} has no model.safetensors (pgrad loads safetensors weights only)")
    if tokenizer and not any(name in names for name in TOKENIZER_FILES):
        raise _refuse(field, f"{path} has no tokenizer (tokenizer.json or tokenizer_config.json)")
    return config


def _check_architecture(path: Path, config: dict[str, Any], field: str) -> None:
    """``model_type`` must name an architecture transformers ships (else only the folder's own code builds it)."""
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise _refuse(
            field,
            f"{path / 'config.json'} has model_type {model_type!r}, not an architecture transformers ships (gpt2, "
            "llama, qwen2, mistral, ...); its own code would be needed, and pgrad runs none",
        )


_QUIET: list[bool] = []


def quiet_transformers() -> None:
    """No progress bars or info lines from transformers' loading (the run's own lines say what loads)."""
    if not _QUIET:
        from transformers.utils import logging

        logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        logging.set_verbosity_error()  # type: ignore[no-untyped-call]
        _QUIET.append(True)


SAFE_LOADING: dict[str, Any] = {
    "trust_remote_code": False,
    "use_safetensors": True,
    "local_files_only": True,
    "dtype": torch.float32,
}


def _load(loader: Any, folder: str | Path, field: str, **extra: Any) -> Any:
    """``loader.from_pretrained`` with ``SAFE_LOADING`` (a tokenizer: no code, no network); transformers' own
    errors become one line."""
    quiet_transformers()
    options = (
        SAFE_LOADING if loader.__name__ != "AutoTokenizer" else {"trust_remote_code": False, "local_files_only": True}
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # transformers' notes on unused weights: the checks above were ours
            return loader.from_pretrained(str(folder), **options, **extra)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _refuse(field, f"transformers could not load {folder}: {first}") from None


def load_causal_lm(folder: str | Path, field: str) -> nn.Module:
    """A causal LM from a checked folder (``AutoModelForCausalLM``), in eval mode: pgrad's loops turn no dropout
    on (with dropout the rollout's and the update's log-probs of one token differ)."""
    check_model_folder(folder, field)
    from transformers import AutoModelForCausalLM

    model: nn.Module = _load(AutoModelForCausalLM, folder, field)
    return model.eval()


def load_trunk(folder: str | Path, field: str) -> nn.Module:
    """The base model (no LM head) of a checked folder (``AutoModel``): a reward model's or a critic's trunk."""
    check_model_folder(folder, field, tokenizer=False)
    from transformers import AutoModel

    model: nn.Module = _load(AutoModel, folder, field)
    return model.eval()


def load_sequence_classifier(folder: str | Path, field: str) -> tuple[nn.Module, nn.Module]:
    """(trunk, score head) of a one-label ``AutoModelForSequenceClassification`` folder (a reward model): pgrad
    applies the head at the response's last real token itself (transformers' pooling finds the last token by
    the pad id, which is the EOS here)."""
    config = check_model_folder(folder, field)
    labels = config.get("num_labels", len(config.get("id2label") or {}) or None)
    if labels not in (None, 1):
        raise _refuse(
            field, f"{Path(folder) / 'config.json'} has {labels} labels; a reward model has one (num_labels=1)"
        )
    from transformers import AutoModelForSequenceClassification

    model = _load(AutoModelForSequenceClassification, folder, field, num_labels=1)
    head = getattr(model, "score", None) or getattr(model, "classifier", None)
    if not isinstance(head, nn.Linear):
        raise _refuse(field, f"{folder}: its sequence-classification head is not one linear layer ('score')")
    return model.base_model.eval(), head


_NOTED: set[Path] = set()  # the folders whose missing pad token was told


class FolderTokenizer:
    """A model folder's tokenizer for the loops: ``eos_id`` (ends a response), ``pad_id`` (the EOS when the
    folder sets no pad token), ``vocab_size``, ``decode``; ``hf`` is the transformers tokenizer."""

    def __init__(self, folder: str | Path, field: str) -> None:
        check_model_folder(folder, field)
        from transformers import AutoTokenizer

        self.folder = Path(folder)
        self.hf: Any = _load(AutoTokenizer, folder, field)
        if self.hf.eos_token_id is None:
            raise _refuse(field, f"the tokenizer of {folder} has no EOS token; pgrad ends every response with one")
        self.eos_id: int = int(self.hf.eos_token_id)
        if self.hf.pad_token_id is None:
            if self.folder.resolve() not in _NOTED:  # once per folder and process, however often it is read
                _NOTED.add(self.folder.resolve())
                print(
                    f"pgrad: note: the tokenizer of {folder} has no pad token; padding with its EOS "
                    f"({self.hf.eos_token!r}), told apart by the masks",
                    file=sys.stderr,
                )
            self.pad_id = self.eos_id
        else:
            self.pad_id = int(self.hf.pad_token_id)
        self.has_chat_template = bool(getattr(self.hf, "chat_template", None))

    @property
    def vocab_size(self) -> int:
        """The number of ids the tokenizer can produce (special tokens included)."""
        return len(self.hf)

    def decode(self, ids: list[int]) -> str:
        """The ids as text, special tokens dropped."""
        return str(self.hf.decode(ids, skip_special_tokens=True))

    def encode(self, text: str, special: bool) -> list[int]:
        """The ids of ``text``; ``special``: with the tokenizer's BOS (a plain-text prompt), else without (a
        completion, or a prompt a chat template wrote)."""
        return list(self.hf(text, add_special_tokens=special)["input_ids"])

    def same_vocabulary(self, other: FolderTokenizer) -> bool:
        """Whether ``other`` maps every token to the same id (a reward model or reference that can read this
        policy's ids)."""
        return bool(self.hf.get_vocab() == other.hf.get_vocab())
