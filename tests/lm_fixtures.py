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

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

ARCHITECTURES = ("gpt2", "llama", "qwen2", "mistral")

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
# a Jinja chat template of the kind models ship in tokenizer_config.json (role tags, then the content)
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

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
    """A byte-level BPE tokenizer trained on ``CORPUS`` saved in ``folder`` (tokenizer.json and its config)."""

    def build(out: Path) -> None:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
        from transformers import PreTrainedTokenizerFast

        special = ["<eos>", "<bos>", "<unk>"]
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=300, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        )
        tokenizer.train_from_iterator(CORPUS, trainer)
        if bos:  # as Llama's tokenizer does: a BOS before every text encoded with its special tokens
            tokenizer.post_processor = processors.TemplateProcessing(
                single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", special.index("<bos>"))]
            )
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tokenizer, eos_token="<eos>", bos_token="<bos>" if bos else None, unk_token="<unk>"
        )
        if chat:
            fast.chat_template = CHAT_TEMPLATE
        fast.save_pretrained(out)

    return _cached(("tokenizer", chat, bos), Path(folder), build)


def model_config(arch: str, vocab_size: int) -> Any:
    """The transformers config of a tiny model of ``arch``: 2 layers, width 16, 2 heads, 64 positions."""
    from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size, n_positions=64, n_embd=16, n_layer=2, n_head=2, eos_token_id=0, bos_token_id=0
        )
    common: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 64,
        "eos_token_id": 0,
        "bos_token_id": 1,
        "tie_word_embeddings": True,
    }
    classes = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}
    if arch not in classes:
        raise ValueError(f"arch must be one of {ARCHITECTURES}; got {arch!r}")
    return classes[arch](**common)


def tiny_model_folder(
    folder: Path, arch: str = "gpt2", chat: bool = False, head: str = "causal-lm", seed: int = 0
) -> Path:
    """A model folder of ``arch`` (``save_pretrained``: config.json, model.safetensors) with the tiny tokenizer
    (a chat template with ``chat``; a ``<bos>`` for the non-GPT-2 ones). ``head``: ``causal-lm`` or
    ``sequence-classification`` (one label, a reward model)."""

    def build(out: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        tiny_tokenizer(out, chat=chat, bos=arch != "gpt2")
        # a few spare embedding rows, as real models have (transformers' Qwen2 tokenizer adds a pad token too)
        config = model_config(arch, VOCAB_SIZE)
        torch.manual_seed(seed)
        if head == "sequence-classification":
            config.num_labels = 1
            config.pad_token_id = 0  # transformers' own pooling needs one; pgrad reads the last real token itself
            model = AutoModelForSequenceClassification.from_config(config)
        else:
            model = AutoModelForCausalLM.from_config(config)
        model.save_pretrained(out)

    return _cached(("model", arch, chat, head, seed), Path(folder), build)


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    """``rows`` as JSON lines (a row that is a ``str`` is written as it is: a broken line for the error tests)."""
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    Path(path).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return Path(path)
