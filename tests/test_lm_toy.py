"""pgrad.lm.toy: model folders built locally load with transformers' Auto classes, and the arithmetic task's rows
are right, distinct and the same for the same seed."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

from pgrad.errors import ConfigError  # noqa: E402
from pgrad.lm import toy  # noqa: E402
from pgrad.lm.data import read_rows  # noqa: E402
from pgrad.lm.verifiers import exact_answer  # noqa: E402

SMALL = toy.ModelSize(layers=1, width=8, heads=2, positions=32)


def test_arithmetic_answers_are_right():
    """Every answer is the operator applied to the prompt's operands (checked by eval of the prompt's left side)."""
    rows = toy.arithmetic_rows(200, seed=3, max_operand=30, operators="+-*")
    for row in rows:
        assert row["prompt"].endswith("=")
        assert int(row["answer"]) == eval(row["prompt"][:-1])  # noqa: S307 - digits and one operator
    assert toy.arithmetic_rows(1, seed=0, max_operand=0) == [{"prompt": "0+0=", "answer": "0"}]
    every = {row["prompt"]: row["answer"] for row in toy.arithmetic_rows(8, seed=0, max_operand=1, operators="-*")}
    assert every == {"0-0=": "0", "0-1=": "-1", "1-0=": "1", "1-1=": "0", "0*0=": "0", "0*1=": "0", "1*0=": "0",
                     "1*1=": "1"}  # fmt: skip


def test_arithmetic_rows_are_distinct_and_deterministic_per_seed():
    """The same seed gives the same rows; another seed others; no problem appears twice, so slices split cleanly."""
    a, b = toy.arithmetic_rows(50, seed=1), toy.arithmetic_rows(50, seed=1)
    assert a == b and a != toy.arithmetic_rows(50, seed=2)
    prompts = [row["prompt"] for row in toy.arithmetic_rows(441, seed=0)]  # all of 0..20 + 0..20
    assert len(set(prompts)) == 441 and "20+20=" in prompts and "0+0=" in prompts


def test_the_exact_answer_verifier_scores_the_rows():
    """The answer column is what verifier:exact_answer reads: a demonstration's completion scores 1, a pair's
    rejected answer 0."""
    rows = toy.arithmetic_rows(40, seed=0)
    demos = toy.demonstrations(rows)
    pairs = toy.preference_pairs(rows, seed=0)
    answers = [row["answer"] for row in rows]
    assert exact_answer([d["completion"] for d in demos], answers) == [1.0] * 40
    assert exact_answer([p["rejected"] for p in pairs], answers) == [0.0] * 40
    assert [p["chosen"] for p in pairs] == answers
    assert all(1 <= abs(int(p["rejected"]) - int(p["chosen"])) <= 3 for p in pairs)
    assert pairs == toy.preference_pairs(rows, seed=0)


def test_written_files_read_as_pgrad_data_sets(tmp_path):
    """write_jsonl's files read back as prompts (answer kept as a column), demonstrations and pairs."""
    rows = toy.arithmetic_rows(5, seed=0)
    prompts = read_rows(toy.write_jsonl(tmp_path / "p.jsonl", rows), "prompts")
    assert [r.columns["answer"] for r in prompts] == [row["answer"] for row in rows]
    demos = read_rows(toy.write_jsonl(tmp_path / "d.jsonl", toy.demonstrations(rows)), "demonstrations")
    assert demos[0].completion == rows[0]["answer"]
    pairs = read_rows(toy.write_jsonl(tmp_path / "c.jsonl", toy.preference_pairs(rows, 0)), "pairs")
    assert pairs[0].chosen == rows[0]["answer"]


@pytest.mark.parametrize("arch", toy.ARCHITECTURES)
def test_model_folder_loads_with_auto_classes(tmp_path, arch):
    """The folder loads with AutoModelForCausalLM and AutoTokenizer (no remote code), holds safetensors only, has
    the size asked for, and generates; pgrad's own loader accepts it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pgrad.lm.folders import load_causal_lm

    folder = toy.build_model_folder(tmp_path / arch, arch, SMALL, corpus=["1+2=3", "4+5=9"], vocab_size=259)
    assert (folder / "model.safetensors").is_file()
    assert not list(folder.glob("*.bin")) and "auto_map" not in json.loads((folder / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    # 259 tokens (Qwen2's tokenizer class adds a pad token: 260) within 320 embedding rows (a multiple of 64)
    assert len(tokenizer) in (259, 260) and model.config.vocab_size == 320 and model.config.model_type == arch
    assert model.config.num_hidden_layers == 1 and model.config.hidden_size == 8
    ids = tokenizer("12+7=", return_tensors="pt").input_ids
    # one token a character (no merges at 259), and a <bos> first for the non-GPT-2 architectures
    assert ids.shape[1] == 5 + (arch != "gpt2")
    out = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape[1] <= ids.shape[1] + 3
    load_causal_lm(folder, "lm_sft.model")


def test_model_folder_is_deterministic_per_seed(tmp_path):
    """The same seed writes the same weights; another seed others."""
    from safetensors.torch import load_file

    kwargs = {"size": {"layers": 1, "width": 8, "heads": 2}, "corpus": ["1+1=2"], "vocab_size": 259}
    a = load_file(toy.build_model_folder(tmp_path / "a", "llama", seed=4, **kwargs) / "model.safetensors")
    b = load_file(toy.build_model_folder(tmp_path / "b", "llama", seed=4, **kwargs) / "model.safetensors")
    c = load_file(toy.build_model_folder(tmp_path / "c", "llama", seed=5, **kwargs) / "model.safetensors")
    assert all((a[k] == b[k]).all() for k in a)
    assert any(not (a[k] == c[k]).all() for k in a)


def test_sequence_classification_head_and_chat_template(tmp_path):
    """head='sequence-classification' writes a one-label reward-model folder; chat=True a chat template."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = toy.build_model_folder(tmp_path / "rm", "qwen2", SMALL, head="sequence-classification", chat=True)
    assert AutoModelForSequenceClassification.from_pretrained(folder).config.num_labels == 1
    text = AutoTokenizer.from_pretrained(folder).apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|user|>hi\n<|assistant|>"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: toy.arithmetic_rows(0, 0), r"n must be in \[1, 441\]"),
        (lambda: toy.arithmetic_rows(5, 0, max_operand=1), r"n must be in \[1, 4\]"),
        (lambda: toy.arithmetic_rows(5, 0, operators="/"), "operators must be a non-empty string of"),
        (lambda: toy.arithmetic_rows(5, 0, max_operand=-1), "max_operand must be >= 0"),
        (lambda: toy.preference_pairs([], 0, max_offset=0), "max_offset must be >= 1"),
        (lambda: toy.ModelSize(width=10, heads=4), r"size.heads must be a divisor of width \(10\)"),
        (lambda: toy.ModelSize(heads=2, kv_heads=3), r"size.kv_heads must be in \[1, 2\]"),
        (lambda: toy.ModelSize(heads=4, width=16, kv_heads=3), r"size.kv_heads must be a divisor of heads"),
        (lambda: toy.build_tokenizer("unused", ["a"], vocab_size=100), r"vocab_size must be in \[259, 65536\]"),
        (lambda: toy.build_tokenizer("unused", [], vocab_size=300), "corpus must be a non-empty list of texts"),
        (lambda: toy.build_model_folder("unused", "bert"), "arch must be one of gpt2, llama, qwen2, mistral"),
        (lambda: toy.build_model_folder("unused", "llama", head="value"), "head must be one of causal-lm"),
    ],
)
def test_refusals(call, message):
    """Bad arguments: one ConfigError line naming the argument and what it may be; nothing is written."""
    with pytest.raises(ConfigError, match=message):
        call()
