"""Data sets for language-model runs (pgrad.lm.data, pgrad.lm.dataset): every file form, chat rows, extra
columns, the held-out split, and one line naming file, row and field for every malformed input."""

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

from lm_fixtures import tiny_model_folder, write_jsonl  # noqa: E402
from pgrad.cli import main  # noqa: E402
from pgrad.errors import ConfigError  # noqa: E402
from pgrad.lm.data import PromptRow, read_rows, split_rows  # noqa: E402
from pgrad.lm.dataset import DatasetTask  # noqa: E402
from pgrad.lm.folders import FolderTokenizer  # noqa: E402

PAIRS = [
    {"prompt": "what is one plus one?", "chosen": " two", "rejected": " no", "answer": "2"},
    {"prompt": "what is two plus three?", "chosen": " five", "rejected": " the cat", "answer": "5"},
]
CHAT = [
    {"prompt": [{"role": "user", "content": "what is one plus one?"}], "completion": "the answer is two"},
    {
        "prompt": [{"role": "system", "content": "say yes"}, {"role": "user", "content": "hello"}],
        "completion": [{"role": "assistant", "content": "yes"}],
    },
]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A GPT-2 folder (no chat template) and a Llama folder whose tokenizer has one (and a BOS)."""
    root = tmp_path_factory.mktemp("data-models")
    return {"gpt2": tiny_model_folder(root / "gpt2", "gpt2"), "chat": tiny_model_folder(root / "llama", "llama", True)}


@pytest.fixture(scope="module")
def tokenizers(models: dict[str, Path]) -> dict[str, FolderTokenizer]:
    """The folders' tokenizers."""
    return {name: FolderTokenizer(folder, "lm_sft.model") for name, folder in models.items()}


def rows_error(path: Path, kind: str = "pairs") -> str:
    """The one-line ConfigError of reading ``path``."""
    with pytest.raises(ConfigError) as caught:
        read_rows(path, kind)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "\n" not in message
    return message


# ---- the file forms ---------------------------------------------------------------------------


def test_jsonl_pairs_keep_their_extra_columns(tmp_path):
    """JSONL preference pairs: the three text fields, and every other column in ``columns`` (for the reward);
    blank lines are skipped and rows keep their line numbers."""
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(PAIRS[0]) + "\n\n" + json.dumps(PAIRS[1]) + "\n")
    rows = read_rows(path, "pairs")
    assert [r.chosen for r in rows] == [" two", " five"] and rows[1].rejected == " the cat"
    assert rows[0].columns == {"answer": "2"} and rows[1].where == f"{path} row 3"
    assert rows[0].completion is None and not rows[0].is_chat


def test_csv_rows(tmp_path):
    """CSV: a header and text values; extra columns kept as text."""
    path = tmp_path / "demos.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "completion", "id"])
        writer.writerow(["what is one plus one?", " two", "7"])
    rows = read_rows(path, "demonstrations")
    assert rows == [PromptRow("what is one plus one?", {"id": "7"}, f"{path} row 1", completion=" two")]


def test_parquet_rows(tmp_path):
    """Parquet (pyarrow, the lm-data extra): the same rows as the JSONL, with typed extra columns."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist([{**row, "answer": int(row["answer"])} for row in PAIRS]), path)
    rows = read_rows(path, "pairs")
    assert [(r.prompt, r.chosen, r.rejected, r.columns) for r in rows] == [
        (p["prompt"], p["chosen"], p["rejected"], {"answer": int(p["answer"])}) for p in PAIRS
    ]


def test_save_to_disk_folder_and_dataset_dict(tmp_path):
    """A folder written by datasets' save_to_disk: a Dataset, or a DatasetDict's 'train' split."""
    datasets = pytest.importorskip("datasets")
    data = datasets.Dataset.from_list(CHAT[:1] + [{"prompt": [{"role": "user", "content": "hi"}], "completion": "yo"}])
    data.save_to_disk(str(tmp_path / "one"))
    rows = read_rows(tmp_path / "one", "demonstrations")
    assert rows[1].prompt == [{"role": "user", "content": "hi"}] and rows[1].completion == "yo"
    datasets.DatasetDict({"train": data, "test": data}).save_to_disk(str(tmp_path / "dict"))
    assert [r.completion for r in read_rows(tmp_path / "dict", "demonstrations")] == ["the answer is two", "yo"]
    datasets.DatasetDict({"test": data}).save_to_disk(str(tmp_path / "no-train"))
    assert "a DatasetDict without a 'train' split (has test)" in rows_error(tmp_path / "no-train", "demonstrations")


def test_missing_extras_name_the_extra(tmp_path, monkeypatch):
    """Without pyarrow / datasets: one line naming the lm-data extra (they are imported only when needed)."""
    (tmp_path / "a.parquet").write_bytes(b"PAR1")
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "state.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    monkeypatch.setitem(sys.modules, "datasets", None)
    assert (
        rows_error(tmp_path / "a.parquet")
        == f"reading {tmp_path / 'a.parquet'} needs pyarrow: pip install 'pgrad[lm-data]'"
    )
    assert "needs datasets: pip install 'pgrad[lm-data]'" in rows_error(tmp_path / "saved")


# ---- tokenization ------------------------------------------------------------------------------


def test_text_rows_tokenize_with_bos_and_end_with_eos(tmp_path, tokenizers):
    """A text prompt is the tokenizer's ids with its special tokens (the Llama one's BOS); a response is its ids
    and the EOS; prompts are left-padded and carry their row index; pairs share one response width."""
    tok = tokenizers["chat"]
    rows = read_rows(write_jsonl(tmp_path / "p.jsonl", PAIRS), "pairs")
    task = DatasetTask(rows, tok, 8, 64, "lm_rm.max_new_tokens")
    assert task.prompt_ids[0] == list(tok.hf("what is one plus one?")["input_ids"])
    assert task.prompt_ids[0][0] == tok.hf.bos_token_id
    assert task.responses["chosen"][0] == [*tok.hf(" two", add_special_tokens=False)["input_ids"], tok.eos_id]
    pairs = task.preference_pairs()
    assert pairs.chosen.shape == pairs.rejected.shape
    width = pairs.prompts.ids.shape[1]
    short = len(task.prompt_ids[0])
    assert pairs.prompts.mask[0].tolist() == [0] * (width - short) + [1] * short
    assert pairs.prompts.ids[0, width - short :].tolist() == task.prompt_ids[0]
    assert pairs.rejected_mask.sum(1).tolist() == [len(ids) for ids in task.responses["rejected"]]
    batch = task.prompts(5, torch.Generator().manual_seed(0)).repeat(2)
    assert batch.rows is not None and len(batch.rows) == 10 and batch.rows[0] is batch.rows[1]
    for row, ids, mask in zip(batch.rows, batch.ids, batch.mask, strict=True):  # each row's prompt is its ids
        assert ids[mask > 0].tolist() == task.prompt_ids[rows.index(row)]
    assert {row.columns["answer"] for row in batch.rows} <= {"2", "5"}
    picked = batch.select(torch.tensor([3, 0]))
    assert picked.rows == (batch.rows[3], batch.rows[0]) and picked.ids.shape[0] == 2


def test_chat_rows_go_through_the_chat_template(tmp_path, tokenizers):
    """A conversation prompt is the chat template with the generation prompt; a conversation completion is what
    the template writes after it (here the assistant's content and the template's newline)."""
    tok = tokenizers["chat"]
    rows = read_rows(write_jsonl(tmp_path / "c.jsonl", CHAT), "demonstrations")
    task = DatasetTask(rows, tok, 16, 64, "lm_sft.max_new_tokens")
    text = "<|system|>say yes\n<|user|>hello\n<|assistant|>"
    assert tok.hf.apply_chat_template(CHAT[1]["prompt"], add_generation_prompt=True, tokenize=False) == text
    assert task.prompt_ids[1] == list(tok.hf(text, add_special_tokens=False)["input_ids"])
    assert task.response_text(rows[1], rows[1].completion) == "yes\n"
    assert task.responses["completion"][0][-1] == tok.eos_id


def test_chat_rows_without_a_chat_template_are_one_line(tmp_path, tokenizers):
    """The GPT-2 folder's tokenizer has no chat template: a conversation is refused naming file and row."""
    path = write_jsonl(tmp_path / "c.jsonl", CHAT)
    with pytest.raises(ConfigError, match=rf"{path} row 1: a conversation .* has no chat template"):
        DatasetTask(read_rows(path, "demonstrations"), tokenizers["gpt2"], 16, 64, "lm_sft.max_new_tokens")


def test_prompt_longer_than_the_context_and_long_completion(tmp_path, tokenizers):
    """A prompt whose tokens and max_new_tokens exceed the model's context, and a completion longer than
    max_new_tokens: one line each, naming file, row and field."""
    long = " ".join(["the quick brown fox"] * 20)
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"prompt": "hi", "completion": " two"}, {"prompt": long, "completion": "x"}]
    )
    with pytest.raises(ConfigError, match=rf"{path} row 2: field 'prompt' is \d+ tokens; with max_new_tokens 8 it "
                       "exceeds the model's context of 64 positions"):  # fmt: skip
        DatasetTask(read_rows(path, "demonstrations"), tokenizers["gpt2"], 8, 64, "lm_sft.max_new_tokens")
    path = write_jsonl(tmp_path / "e.jsonl", [{"prompt": "hi", "completion": long}])
    with pytest.raises(ConfigError, match=rf"{path} row 1: field 'completion' is \d+ tokens with the EOS, more "
                       r"than max_new_tokens \(8\); raise lm_sft.max_new_tokens"):  # fmt: skip
        DatasetTask(read_rows(path, "demonstrations"), tokenizers["gpt2"], 8, 64, "lm_sft.max_new_tokens")


# ---- malformed files, rows and fields ----------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "suffix", "expected"),
    [
        ([json.dumps(PAIRS[0]), '{"prompt": "a", "chosen": '], ".jsonl", "row 2: not a JSON object"),
        ([json.dumps(PAIRS[0]), "[1, 2]"], ".jsonl", "row 2: must be an object of column: value"),
        (['{"prompt": "a", "chosen": "b"}'], ".jsonl", "row 1: missing field 'rejected' (a pairs row needs prompt"),
        (['{"prompt": 3, "chosen": "b", "rejected": "c"}'], ".jsonl", "row 1: field 'prompt' must be text or a list"),
        (['{"prompt": "a", "chosen": "", "rejected": "c"}'], ".jsonl", "row 1: field 'chosen' is empty"),
        (
            ['{"prompt": [{"role": "user"}], "chosen": "b", "rejected": "c"}'],
            ".jsonl",
            "row 1: field 'prompt' message 0 must be",
        ),
        (["prompt,chosen", "a,b"], ".csv", "row 1: missing field 'rejected'"),
        (["prompt,chosen,rejected", "a,b,c,d"], ".csv", "row 1: more values than the header's columns"),
        ([], ".jsonl", "no rows (an empty data set)"),
        (["", "  "], ".jsonl", "no rows (an empty data set)"),
        (["prompt,chosen,rejected"], ".csv", "no rows (an empty data set)"),
        (["{}"], ".json", "unknown data file type '.json' (allowed: .jsonl, .csv, .parquet"),
    ],
)
def test_malformed_data_is_one_line_naming_file_row_and_field(tmp_path, lines, suffix, expected):
    """Every malformed form: one line that starts with the file (and the row and field where there is one)."""
    path = tmp_path / f"data{suffix}"
    path.write_text("".join(line + "\n" for line in lines))
    message = rows_error(path)
    assert message.startswith(str(path)) and expected in message, message


def test_missing_file_and_foreign_folder(tmp_path):
    """A missing path, and a folder that save_to_disk did not write."""
    assert rows_error(tmp_path / "nope.jsonl") == f"{tmp_path / 'nope.jsonl'}: no such file or folder"
    assert "not one datasets' save_to_disk wrote" in rows_error(tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="pyarrow (the lm-data extra) not installed")
def test_damaged_parquet_is_one_line(tmp_path):
    """A file named .parquet that is not one."""
    (tmp_path / "bad.parquet").write_text("not parquet")
    assert "not a readable Parquet file" in rows_error(tmp_path / "bad.parquet")


# ---- the held-out split ------------------------------------------------------------------------


def test_eval_fraction_split_is_seeded_disjoint_and_in_file_order():
    """eval_fraction: round(fraction x rows) held out (at least 1, at most all but one) by a shuffle seeded by
    run.seed: the same split for the same seed, another for another; both parts keep the file order."""
    rows = [PromptRow(f"p{i}", where=f"f row {i}") for i in range(20)]
    train, held = split_rows(rows, 0.25, seed=3, source="f")
    assert len(held) == 5 and len(train) == 15
    assert {r.prompt for r in train}.isdisjoint({r.prompt for r in held})
    assert train == sorted(train, key=rows.index) and held == sorted(held, key=rows.index)
    assert split_rows(rows, 0.25, seed=3, source="f") == (train, held)
    assert split_rows(rows, 0.25, seed=4, source="f")[1] != held
    assert len(split_rows(rows, 0.01, 0, "f")[1]) == 1 and len(split_rows(rows[:2], 0.9, 0, "f")[1]) == 1
    assert split_rows(rows, 0.0, 0, "f") == (rows, rows)
    with pytest.raises(ConfigError, match="f: 1 row; eval_fraction needs at least 2"):
        split_rows(rows[:1], 0.1, 0, "f")


def test_cli_eval_dataset_and_bad_data_before_anything_trains(tmp_path, models, capsys):
    """eval_dataset= is the held-out split of the evaluations (its rows are never trained on); a bad row in
    either file is one line, and no run folder is written."""
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "hi", "completion": " two"}] * 4)
    held = write_jsonl(tmp_path / "held.jsonl", [{"prompt": "hello", "completion": " yes"}] * 2)
    base = ["lm", "sft", "--set", f"model={models['gpt2']}", "--set", f"dataset={train}", "--set", "batch_size=2",
            "--set", "eval_prompts=2", "--total-steps", "2", "--quiet", "--set", "run.progress=false"]  # fmt: skip
    from pgrad.runners.lm_sft import SFTRunner
    from pgrad.runs import resolve_config

    config, _ = resolve_config("lm_sft", sets=[f"model={models['gpt2']}", f"dataset={train}", f"eval_dataset={held}"])
    runner = SFTRunner(config, tmp_path / "direct", console=False)
    assert len(runner.train_demos) == 4 and len(runner.heldout) == 2
    assert runner.eval_task.rows[0].prompt == "hello"
    runner.run.close()
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "hi"}])
    capsys.readouterr()
    assert main([*base, "--set", f"eval_dataset={bad}", "--run-dir", str(tmp_path / "run")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("pgrad: note:")]
    assert err == [
        f"pgrad: error: {bad} row 1: missing field 'completion' (a demonstrations row needs prompt, completion)"
    ]
    assert not (tmp_path / "run").exists()
