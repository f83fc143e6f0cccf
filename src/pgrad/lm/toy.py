"""Tiny Hugging Face model folders and a verifiable arithmetic task, built locally: nothing is downloaded.

For trying pgrad's language-model commands (and for its tests and benchmarks) without a hub:

- ``build_tokenizer(folder, corpus)`` trains a byte-level BPE with ``tokenizers`` on a few texts and saves it as a
  ``PreTrainedTokenizerFast`` (``<eos>`` = id 0 ends a text, ``<bos>`` = id 1, ``<unk>`` = id 2; no pad token, so
  pad = eos). ``vocab_size=259`` (the 256 bytes and the 3 specials) learns no merges: every character one token,
  which suits arithmetic (a digit is always its own token).
- ``build_model_folder(folder, arch, size)`` saves a randomly initialised ``gpt2``, ``llama``, ``qwen2`` or
  ``mistral`` model of ``size`` (``ModelSize``: layers, width, heads...) with ``save_pretrained`` (safetensors
  only) and that tokenizer beside it: a folder ``AutoModelForCausalLM`` and ``AutoTokenizer`` load without
  remote code, and ``--set model=DIR`` names.
- ``arithmetic_rows(n, seed)`` makes distinct problems ``{"prompt": "12+7=", "answer": "19"}`` (the ``answer``
  column is what ``reward=verifier:exact_answer`` reads); ``demonstrations(rows)`` and ``preference_pairs(rows,
  seed)`` turn them into SFT rows and reward-model / DPO pairs; ``write_jsonl`` writes any of them as a data file.

Example (a model of about 2.7 million weights and its data, in a few seconds)::

    from pgrad.lm import toy
    rows = toy.arithmetic_rows(600, seed=0)
    train, heldout = rows[:500], rows[500:]
    toy.build_model_folder("tiny-llama", "llama", toy.ModelSize(layers=4, width=256, heads=4),
                           corpus=toy.arithmetic_corpus(rows), vocab_size=259)
    toy.write_jsonl("prompts.jsonl", train)
    toy.write_jsonl("heldout.jsonl", heldout)
    toy.write_jsonl("demos.jsonl", toy.demonstrations(train))
    toy.write_jsonl("pairs.jsonl", toy.preference_pairs(train, seed=0))
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pgrad.config import Checked, param
from pgrad.errors import ConfigError

ARCHITECTURES = ("gpt2", "llama", "qwen2", "mistral")
HEADS = ("causal-lm", "sequence-classification")
SPECIAL_TOKENS = ("<eos>", "<bos>", "<unk>")  # ids 0, 1, 2
BYTE_ALPHABET = 256  # byte-level BPE starts from the 256 bytes: vocab_size 259 learns no merges
# a Jinja chat template of the kind models ship in tokenizer_config.json (role tags, then the content)
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@dataclass(frozen=True)
class ModelSize(Checked):
    """The size of a toy model: ``layers`` blocks of ``width`` with ``heads`` attention heads. Llama, Qwen2 and
    Mistral also take ``kv_heads`` (grouped-query attention; must divide ``heads``) and ``intermediate`` (the
    MLP's width; 0: 2 x width); GPT-2's MLP is 4 x width. ``positions``: the longest text in tokens."""

    SECTION: ClassVar[str] = "size"

    layers: int = param(2, "transformer blocks")
    width: int = param(16, "hidden size (must be a multiple of heads)")
    heads: int = param(2, "attention heads")
    kv_heads: int = param(1, "key/value heads (not GPT-2); must divide heads")
    intermediate: int = param(0, "MLP width (not GPT-2); 0: 2 x width")
    positions: int = param(64, "context length in tokens")

    def validate(self) -> None:
        """Checks the ranges, that heads divide width and that kv_heads divide heads."""
        self.check_range("layers", 1, 64)
        self.check_range("width", 1, 4096)
        self.check_range("heads", 1, self.width)
        self.check_range("kv_heads", 1, self.heads)
        self.check_range("intermediate", 0, 16384)
        self.check_range("positions", 2, 8192)
        if self.width % self.heads:
            self._fail("heads", f"a divisor of width ({self.width})")
        if self.heads % self.kv_heads:
            self._fail("kv_heads", f"a divisor of heads ({self.heads})")


def build_tokenizer(
    folder: str | Path, corpus: list[str], vocab_size: int = 300, chat: bool = False, bos: bool = False
) -> Path:
    """A byte-level BPE tokenizer of at most ``vocab_size`` tokens (the 256 bytes, the 3 specials and the merges
    learnt from ``corpus``) saved in ``folder`` (tokenizer.json and tokenizer_config.json); returns ``folder``.
    ``bos``: a ``<bos>`` before every text encoded with special tokens, as Llama's tokenizer does. ``chat``: a
    chat template (``CHAT_TEMPLATE``). Deterministic: the same corpus gives the same tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    smallest = BYTE_ALPHABET + len(SPECIAL_TOKENS)
    if not smallest <= vocab_size <= 65536:
        raise ConfigError(f"vocab_size must be in [{smallest}, 65536] (the bytes and the specials); got {vocab_size}")
    if not corpus or not all(isinstance(text, str) for text in corpus):
        raise ConfigError("corpus must be a non-empty list of texts")
    special = list(SPECIAL_TOKENS)
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    if bos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", special.index("<bos>"))]
        )
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer, eos_token="<eos>", bos_token="<bos>" if bos else None, unk_token="<unk>"
    )
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    return Path(folder)


def model_config(arch: str, vocab_size: int, size: ModelSize | dict[str, int] | None = None) -> Any:
    """The transformers config of a toy model of ``arch`` with ``vocab_size`` embedding rows and ``size`` (a
    ``ModelSize`` or a dict of its fields; default ``ModelSize()``: 2 layers, width 16, 2 heads, 64 positions);
    eos id 0, bos id 1 (GPT-2: 0)."""
    from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    size = ModelSize(**size) if isinstance(size, dict) else size or ModelSize()
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size,
            n_positions=size.positions,
            n_embd=size.width,
            n_layer=size.layers,
            n_head=size.heads,
            eos_token_id=0,
            bos_token_id=0,
        )
    classes = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}
    if arch not in classes:
        raise ConfigError(f"arch must be one of {', '.join(ARCHITECTURES)}; got {arch!r}")
    return classes[arch](
        vocab_size=vocab_size,
        hidden_size=size.width,
        intermediate_size=size.intermediate or 2 * size.width,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads,
        max_position_embeddings=size.positions,
        eos_token_id=0,
        bos_token_id=1,
        tie_word_embeddings=True,
    )


def build_model_folder(
    folder: str | Path,
    arch: str = "llama",
    size: ModelSize | dict[str, int] | None = None,
    corpus: list[str] | None = None,
    vocab_size: int = 300,
    embedding_rows: int | None = None,
    chat: bool = False,
    head: str = "causal-lm",
    seed: int = 0,
) -> Path:
    """A model folder in ``folder`` (config.json, model.safetensors, the tokenizer): a randomly initialised
    (torch seed ``seed``) ``arch`` model of ``size`` with a tokenizer trained on ``corpus`` (``build_tokenizer``;
    a ``<bos>`` for the non-GPT-2 architectures; default corpus: the digits, signs and a pangram).
    ``embedding_rows``: the model's vocabulary (default: the tokenizer's size rounded up to a multiple of 64; the
    spare rows are there as in real models, and transformers' Qwen2 tokenizer class adds a pad token).
    ``head``: ``causal-lm``, or ``sequence-classification`` (one label: a reward-model folder).
    Returns ``folder``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    if arch not in ARCHITECTURES:
        raise ConfigError(f"arch must be one of {', '.join(ARCHITECTURES)}; got {arch!r}")
    if head not in HEADS:
        raise ConfigError(f"head must be one of {', '.join(HEADS)}; got {head!r}")
    texts = corpus if corpus is not None else ["0 1 2 3 4 5 6 7 8 9 + - = ?", "the quick brown fox jumps"]
    build_tokenizer(folder, texts, vocab_size, chat=chat, bos=arch != "gpt2")
    rows = embedding_rows or -(-len(AutoTokenizer.from_pretrained(folder)) // 64) * 64
    config = model_config(arch, rows, size)
    torch.manual_seed(seed)
    if head == "sequence-classification":
        config.num_labels = 1
        config.pad_token_id = 0  # transformers' own pooling needs one; pgrad reads the last real token itself
        model = AutoModelForSequenceClassification.from_config(config)  # type: ignore[no-untyped-call]
    else:
        model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    model.save_pretrained(folder)  # safetensors (transformers' default)
    return Path(folder)


# ---- a verifiable task: arithmetic with a reference answer ---------------------------------------------------

OPERATORS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def arithmetic_rows(n: int, seed: int, max_operand: int = 20, operators: str = "+") -> list[dict[str, str]]:
    """``n`` distinct problems ``{"prompt": "a+b=", "answer": "c"}`` with operands in [0, max_operand] and an
    operator from ``operators`` (any of ``+ - *``), drawn without replacement by ``random.Random(seed)``: the
    same seed gives the same rows, and any two slices of the list (a training and a held-out split) share no
    problem. The ``answer`` column is what ``reward=verifier:exact_answer`` compares the completion with."""
    if not operators or any(op not in OPERATORS for op in operators):
        raise ConfigError(f"operators must be a non-empty string of {' '.join(OPERATORS)}; got {operators!r}")
    if max_operand < 0:
        raise ConfigError(f"max_operand must be >= 0; got {max_operand}")
    ops = sorted(set(operators))
    total = len(ops) * (max_operand + 1) ** 2
    if not 1 <= n <= total:
        raise ConfigError(f"n must be in [1, {total}] (the distinct problems of these operands); got {n}")
    picks = random.Random(seed).sample(range(total), n)
    rows = []
    for index in picks:
        op_index, rest = divmod(index, (max_operand + 1) ** 2)
        a, b = divmod(rest, max_operand + 1)
        op = ops[op_index]
        rows.append({"prompt": f"{a}{op}{b}=", "answer": str(OPERATORS[op](a, b))})
    return rows


def demonstrations(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """SFT rows ``{"prompt", "completion"}``: each problem with its right answer as the completion."""
    return [{"prompt": row["prompt"], "completion": row["answer"]} for row in rows]


def preference_pairs(rows: list[dict[str, str]], seed: int, max_offset: int = 3) -> list[dict[str, str]]:
    """Reward-model / DPO rows ``{"prompt", "chosen", "rejected"}``: the right answer chosen over a wrong one
    (the answer plus a nonzero offset in [-max_offset, max_offset], drawn by ``random.Random(seed)``)."""
    if max_offset < 1:
        raise ConfigError(f"max_offset must be >= 1; got {max_offset}")
    rng = random.Random(seed)
    offsets = [k for k in range(-max_offset, max_offset + 1) if k]
    return [
        {"prompt": row["prompt"], "chosen": row["answer"], "rejected": str(int(row["answer"]) + rng.choice(offsets))}
        for row in rows
    ]


def arithmetic_corpus(rows: list[dict[str, str]]) -> list[str]:
    """Texts to train a tokenizer for these problems: each prompt followed by its answer."""
    return [row["prompt"] + row["answer"] for row in rows]


def write_jsonl(path: str | Path, rows: list[Any]) -> Path:
    """``rows`` as JSON lines in ``path`` (a row that is a ``str`` is written as it is); returns ``path``."""
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    Path(path).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return Path(path)
