"""Tiny Hugging Face model folders and data files for the language-model tests, built locally (nothing downloaded).

``tiny_tokenizer(folder)`` trains a byte-level BPE of about 300 tokens with ``tokenizers`` on the small corpus
below and saves it as a ``PreTrainedTokenizerFast`` (``<eos>`` ends a text; the Llama-style ones put ``<bos>``
first in every text encoded; no pad token, so pgrad's pad = eos rule is exercised; ``chat=True`` adds a chat
template). The models have ``VOCAB_SIZE`` embedding rows: the 300 tokens and spares.
``tiny_model_folder(folder, arch)`` saves a model of a few thousand weights of that architecture
(``gpt2``, ``llama``, ``qwen2``, ``mistral``) with ``save_pretrained`` (safetensors) and its tokenizer beside it;
``head="sequence-classification"`` saves a one-label ``AutoModelForSequenceClassification`` instead (a reward
model folder). ``write_jsonl`` writes rows of a data file. Builders are cached per process: the same call
returns a copy of the same folder, so tests stay well under a second each.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from pgrad.lm.toy import ARCHITECTURES, CHAT_TEMPLATE, ModelSize, build_model_folder, build_tokenizer, write_jsonl

__all__ = ["ARCHITECTURES", "CHAT_TEMPLATE", "CORPUS", "VOCAB_SIZE", "model_config", "tiny_model_folder",
           "tiny_tokenizer", "write_jsonl"]  # fmt: skip

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "what is two plus three? the answer is five",
    "what is one plus one? the answer is two",
    "a short story about a cat who liked to sleep in the sun",
    "reinforcement learning from human feedback trains a policy on a reward",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 + - = ? : ! . ,",
    "user assistant system <|user|> <|assistant|> hello how are you today",
    "The answer: 4. The answer: 7. Say yes or no.",
]
VOCAB_SIZE = 320  # the models' embedding rows: the tokenizer's 300 tokens and spares
_CACHE: dict[tuple[Any, ...], Path] = {}


def _cache_root() -> Path:
    root = _CACHE.get(("root",))
    if root is None:
        root = Path(tempfile.mkdtemp(prefix="pgrad-lm-fixtures-"))
        _CACHE[("root",)] = root
    return root


def _cached(key: tuple[Any, ...], folder: Path, build: Any) -> Path:
    """Build once per process into a cache folder, then copy it to ``folder`` (which must not exist yet)."""
    source = _CACHE.get(key)
    if source is None:
        source = _cache_root() / "-".join(str(part) for part in key)
        build(source)
        _CACHE[key] = source
    shutil.copytree(source, folder, dirs_exist_ok=True)
    return folder


def tiny_tokenizer(folder: Path, chat: bool = False, bos: bool = False) -> Path:
    """A byte-level BPE tokenizer of 300 tokens trained on ``CORPUS`` saved in ``folder`` (``pgrad.lm.toy``)."""

    def build(out: Path) -> None:
        build_tokenizer(out, CORPUS, 300, chat=chat, bos=bos)

    return _cached(("tokenizer", chat, bos), Path(folder), build)


def model_config(arch: str, vocab_size: int) -> Any:
    """The transformers config of a tiny model of ``arch``: 2 layers, width 16, 2 heads, 64 positions."""
    from pgrad.lm import toy

    return toy.model_config(arch, vocab_size, ModelSize())


def tiny_model_folder(
    folder: Path, arch: str = "gpt2", chat: bool = False, head: str = "causal-lm", seed: int = 0
) -> Path:
    """A model folder of ``arch`` (``save_pretrained``: config.json, model.safetensors) with the tiny tokenizer
    (a chat template with ``chat``; a ``<bos>`` for the non-GPT-2 ones). ``head``: ``causal-lm`` or
    ``sequence-classification`` (one label, a reward model)."""

    def build(out: Path) -> None:
        # a few spare embedding rows, as real models have (transformers' Qwen2 tokenizer adds a pad token too)
        build_model_folder(out, arch, ModelSize(), CORPUS, 300, VOCAB_SIZE, chat=chat, head=head, seed=seed)

    return _cached(("model", arch, chat, head, seed), Path(folder), build)
