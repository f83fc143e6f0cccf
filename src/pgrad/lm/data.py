"""Data files for language-model runs: prompts, demonstrations and preference pairs, read and checked.

A data set is a file or a folder, named by ``dataset=`` (and ``eval_dataset=`` for the held-out split):

- ``.jsonl``: one JSON object per line (blank lines are skipped; rows are numbered by their line);
- ``.csv``: a header line, then one row per line (every value is text);
- ``.parquet``: a table (needs ``pyarrow``: ``pip install 'pgrad[lm-data]'``);
- a folder written by ``datasets``' ``save_to_disk`` (a ``Dataset``, or a ``DatasetDict`` whose ``train``
  split is read; needs ``datasets``).

What a row must hold depends on what is trained (TRL's column names):

- ``prompts`` (PPO, RLOO, GRPO): ``prompt``;
- ``demonstrations`` (SFT): ``prompt`` and ``completion``;
- ``pairs`` (reward model, DPO): ``prompt``, ``chosen`` and ``rejected``.

Each of those fields is text, or a conversation: a list of ``{"role": ..., "content": ...}`` messages (the
prompt goes through the tokenizer's chat template, ``pgrad.lm.dataset``). Every other column of a row is
kept in ``PromptRow.columns`` and goes with the row to the reward (a reference answer for a verifier).

A malformed file, row or field is one ``ConfigError`` line naming the file, the row number and the field,
raised while reading, so before anything trains. Nothing here imports torch or transformers.
"""

from __future__ import annotations

import csv
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pgrad.errors import ConfigError

DataKind = Literal["prompts", "demonstrations", "pairs"]
# the fields each kind of data set needs, in the order they are checked
REQUIRED: dict[str, tuple[str, ...]] = {
    "prompts": ("prompt",),
    "demonstrations": ("prompt", "completion"),
    "pairs": ("prompt", "chosen", "rejected"),
}
TEXT_FIELDS = ("prompt", "completion", "chosen", "rejected")
EXTENSIONS = (".jsonl", ".csv", ".parquet")
MAX_ROWS = 2**20  # rows held in memory (pgrad.lm.config.MAX_LM_DATA)
MAX_LINE_BYTES = 2**24  # one JSON line; a longer one is refused rather than read

# A field's value: plain text, or chat messages [{"role": "user", "content": "..."}, ...]
Text = str | list[dict[str, str]]


@dataclass(frozen=True)
class PromptRow:
    """One row of a data set: its ``prompt``, the response fields its kind needs (``completion`` for SFT,
    ``chosen`` / ``rejected`` for preference pairs; None otherwise), every other column by name in
    ``columns`` (passed with the row to the reward), and ``where`` (``file row N``) for messages."""

    prompt: Text
    columns: dict[str, Any] = field(default_factory=dict)
    where: str = ""
    completion: Text | None = None
    chosen: Text | None = None
    rejected: Text | None = None

    @property
    def is_chat(self) -> bool:
        """Whether the prompt is a conversation (a list of messages) rather than text."""
        return isinstance(self.prompt, list)


def _missing_extra(package: str, what: str) -> ConfigError:
    return ConfigError(f"{what} needs {package}: pip install 'pgrad[lm-data]'")


def check_text(value: Any, where: str, name: str) -> Text:
    """``value`` as a field's ``Text`` (non-empty text, or a non-empty list of ``{role, content}`` messages with
    text values), else one line naming ``where`` and the field."""
    if isinstance(value, str):
        if not value:
            raise ConfigError(f"{where}: field '{name}' is empty")
        return value
    if isinstance(value, list) and value:
        for index, message in enumerate(value):
            ok = isinstance(message, dict) and {"role", "content"} <= set(message)
            if not ok or not all(isinstance(message[k], str) for k in ("role", "content")):
                raise ConfigError(
                    f'{where}: field \'{name}\' message {index} must be {{"role": text, "content": text}}; '
                    f"got {_short(message)}"
                )
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise ConfigError(
        f"{where}: field '{name}' must be text or a list of {{role, content}} messages; got {_short(value)}"
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def make_row(record: Any, where: str, kind: DataKind) -> PromptRow:
    """A ``PromptRow`` from one record (a mapping of column to value) of a ``kind`` data set."""
    if not isinstance(record, dict):
        raise ConfigError(f"{where}: must be an object of column: value; got {_short(record)}")
    for name in REQUIRED[kind]:
        if name not in record or record[name] is None:
            raise ConfigError(f"{where}: missing field '{name}' (a {kind} row needs {', '.join(REQUIRED[kind])})")
    texts = {name: check_text(record[name], where, name) for name in REQUIRED[kind]}
    columns = {str(k): v for k, v in record.items() if k not in TEXT_FIELDS}
    return PromptRow(where=where, columns=columns, **texts)


def _records_jsonl(path: Path) -> list[tuple[int, Any]]:
    out = []
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if len(line) > MAX_LINE_BYTES:
                raise ConfigError(f"{path} row {number}: longer than {MAX_LINE_BYTES // 2**20} MiB")
            if not line.strip():
                continue
            try:
                out.append((number, json.loads(line)))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{path} row {number}: not a JSON object ({exc})") from None
            if len(out) > MAX_ROWS:
                raise ConfigError(f"{path}: more than {MAX_ROWS} rows")
    return out


def _records_csv(path: Path) -> list[tuple[int, Any]]:
    out: list[tuple[int, Any]] = []
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            for number, record in enumerate(reader, 1):
                if None in record:  # more values than the header has columns
                    raise ConfigError(f"{path} row {number}: more values than the header's columns")
                out.append((number, record))
                if len(out) > MAX_ROWS:
                    raise ConfigError(f"{path}: more than {MAX_ROWS} rows")
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{path}: not a readable CSV file ({exc})") from None
    return out


def _records_parquet(path: Path) -> list[tuple[int, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise _missing_extra("pyarrow", f"reading {path}") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises its own ArrowInvalid, OSError...: one line either way
        raise ConfigError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    if table.num_rows > MAX_ROWS:
        raise ConfigError(f"{path}: more than {MAX_ROWS} rows")
    return list(enumerate(table.to_pylist(), 1))


def _records_saved(path: Path) -> list[tuple[int, Any]]:
    try:
        import datasets
    except ImportError:
        raise _missing_extra("datasets", f"reading the saved data set {path}") from None
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises FileNotFoundError, its own errors...: one line either way
        raise ConfigError(f"{path}: not a folder written by datasets' save_to_disk ({exc})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise ConfigError(f"{path}: a DatasetDict without a 'train' split (has {', '.join(loaded)})")
        loaded = loaded["train"]
    if len(loaded) > MAX_ROWS:
        raise ConfigError(f"{path}: more than {MAX_ROWS} rows")
    return list(enumerate(loaded.to_list(), 1))


def _records(path: Path) -> list[tuple[int, Any]]:
    """(row number, record) of every row of a data file or saved folder."""
    try:
        info = os.stat(path)
    except OSError:
        raise ConfigError(f"{path}: no such file or folder") from None
    if stat.S_ISDIR(info.st_mode):
        if not (path / "dataset_dict.json").is_file() and not (path / "state.json").is_file():
            raise ConfigError(
                f"{path}: a folder, but not one datasets' save_to_disk wrote (no state.json or dataset_dict.json)"
            )
        return _records_saved(path)
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{path}: not a regular file (a device, FIFO or socket)")
    readers = {".jsonl": _records_jsonl, ".csv": _records_csv, ".parquet": _records_parquet}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise ConfigError(
            f"{path}: unknown data file type '{path.suffix}' (allowed: {', '.join(EXTENSIONS)}, or a folder "
            "datasets' save_to_disk wrote)"
        )
    return reader(path)


def read_rows(source: str | Path, kind: DataKind) -> list[PromptRow]:
    """Every row of the data set ``source`` as ``PromptRow``s of ``kind``, checked (module docstring)."""
    path = Path(source)
    records = _records(path)
    if not records:
        raise ConfigError(f"{path}: no rows (an empty data set)")
    return [make_row(record, f"{path} row {number}", kind) for number, record in records]


def split_rows(
    rows: list[PromptRow], fraction: float, seed: int, source: str
) -> tuple[list[PromptRow], list[PromptRow]]:
    """(training rows, held-out rows): ``fraction`` of the rows (at least one, at most all but one) drawn by a
    shuffle seeded by ``seed`` (``random.Random(seed)``, so the same split every time); the rest train, in their
    file order. ``fraction`` 0: every row trains and the evaluation reads the training rows too."""
    if fraction <= 0:
        return rows, rows
    if len(rows) < 2:
        raise ConfigError(
            f"{source}: {len(rows)} row; eval_fraction needs at least 2 to hold some out (give eval_dataset, or set "
            "eval_fraction=0)"
        )
    import random

    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = min(max(1, round(fraction * len(rows))), len(rows) - 1)
    heldout = set(order[:held])
    return [r for i, r in enumerate(rows) if i not in heldout], [r for i, r in enumerate(rows) if i in heldout]
