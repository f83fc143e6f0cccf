"""A data set as a language-model run's task: its rows tokenized by the model folder's tokenizer, as tensors.

``DatasetTask`` stands where ``DigitsTask`` stands in the loops (``tokenizer``, ``name``, ``max_new_tokens``,
``max_prompt_length``, ``prompts``, ``demonstrations``, ``preference_pairs``) with no hidden true score
(``has_true_score`` is False). Every row is tokenized when the task is built, so a prompt longer than the
model's context or a response longer than ``max_new_tokens`` is one line naming the file, row and field
before anything trains.

Tokenization (TRL's conventions):

- a text prompt: ``tokenizer(prompt)`` with its special tokens (a Llama tokenizer's BOS);
- a conversation prompt: the tokenizer's chat template with the generation prompt
  (``apply_chat_template(messages, add_generation_prompt=True)``), then its ids without adding special tokens
  again; a tokenizer without a chat template refuses a conversation in one line;
- a response (``completion``, ``chosen``, ``rejected``): its ids without special tokens, then the EOS
  (a response ends with the EOS, as the sampled ones do). A conversation response is the text the chat
  template writes after the prompt's generation prompt (else its messages' contents joined).

Prompts are left-padded and responses right-padded with the pad id, with masks (``pgrad.lm.model``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from pgrad.errors import ConfigError
from pgrad.lm.data import PromptRow, Text
from pgrad.lm.folders import FolderTokenizer
from pgrad.lm.task import PreferencePairs, PromptBatch, TextBatch


class DatasetTask:
    """The rows of a data set, tokenized (module docstring); each ``PromptBatch`` it makes carries the
    ``PromptRow`` of every prompt in its ``rows``."""

    name = "dataset"
    has_true_score = False

    def __init__(
        self, rows: list[PromptRow], tokenizer: FolderTokenizer, max_new_tokens: int, context: int, field: str
    ) -> None:
        self.rows = rows
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.field = field
        self.prompt_ids = [self.encode_prompt(row, context) for row in rows]
        self.responses: dict[str, list[list[int]]] = {}
        for name in ("completion", "chosen", "rejected"):
            if rows and getattr(rows[0], name) is not None:
                self.responses[name] = [self.encode_response(row, name) for row in rows]

    @property
    def column_names(self) -> tuple[str, ...]:
        """The extra columns of the data set (those of its first row; every row has them, ``pgrad.lm.data``)."""
        return tuple(self.rows[0].columns) if self.rows else ()

    def texts(self, prompts: PromptBatch, response: Tensor, response_mask: Tensor) -> TextBatch:
        """The batch as a text reward reads it (``pgrad.lm.reward``): each prompt as the row gave it (a
        conversation: its messages' contents joined by newlines), the completions decoded without special tokens,
        and every extra column of the rows, each a list aligned with the batch."""
        assert prompts.rows is not None  # a data set's batches carry their rows (batch)
        rows = prompts.rows
        prompt_texts = [
            row.prompt if isinstance(row.prompt, str) else "\n".join(m["content"] for m in row.prompt) for row in rows
        ]
        completions = [
            self.tokenizer.decode([t for t, real in zip(ids, keep, strict=True) if real])
            for ids, keep in zip(response.tolist(), response_mask.tolist(), strict=True)
        ]
        columns = {name: [row.columns.get(name) for row in rows] for name in self.column_names}
        return TextBatch(prompt_texts, completions, columns)

    @property
    def max_prompt_length(self) -> int:
        """The longest prompt in tokens."""
        return max(len(ids) for ids in self.prompt_ids)

    def _chat_text(self, row: PromptRow, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        if not self.tokenizer.has_chat_template:
            raise ConfigError(
                f"{row.where}: a conversation (a list of messages), but the tokenizer of {self.tokenizer.folder} has "
                "no chat template; give the prompt as text, or use a model folder whose tokenizer has one"
            )
        text = self.tokenizer.hf.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)
        return str(text)

    def encode_prompt(self, row: PromptRow, context: int) -> list[int]:
        """The prompt's ids (module docstring); refused when the prompt and ``max_new_tokens`` exceed ``context``."""
        if isinstance(row.prompt, str):
            ids = self.tokenizer.encode(row.prompt, special=True)
        else:
            ids = self.tokenizer.encode(self._chat_text(row, row.prompt, True), special=False)
        if not ids:
            raise ConfigError(f"{row.where}: field 'prompt' has no tokens")
        if len(ids) + self.max_new_tokens > context:
            raise ConfigError(
                f"{row.where}: field 'prompt' is {len(ids)} tokens; with max_new_tokens {self.max_new_tokens} it "
                f"exceeds the model's context of {context} positions"
            )
        return ids

    def response_text(self, row: PromptRow, value: Text) -> str:
        """A response field as text: itself, or what the chat template writes after the prompt's generation
        prompt (a conversation), else its messages' contents joined."""
        if isinstance(value, str):
            return value
        if isinstance(row.prompt, list) and self.tokenizer.has_chat_template:
            prompt = self._chat_text(row, row.prompt, True)
            whole = self._chat_text(row, row.prompt + value, False)
            if whole.startswith(prompt):
                return whole[len(prompt) :]
        return "".join(message["content"] for message in value)

    def encode_response(self, row: PromptRow, name: str) -> list[int]:
        """A response field's ids and the EOS; refused when longer than ``max_new_tokens``."""
        value = getattr(row, name)
        ids = [*self.tokenizer.encode(self.response_text(row, value), special=False), self.tokenizer.eos_id]
        if len(ids) > self.max_new_tokens:
            raise ConfigError(
                f"{row.where}: field '{name}' is {len(ids)} tokens with the EOS, more than max_new_tokens "
                f"({self.max_new_tokens}); raise {self.field.rsplit('.', 1)[0]}.max_new_tokens"
            )
        return ids

    # ---- batches -------------------------------------------------------------------------
    def batch(self, index: Tensor) -> PromptBatch:
        """The prompts of rows ``index``, left-padded, with their ``PromptRow``s."""
        sequences = [self.prompt_ids[i] for i in index.tolist()]
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros(len(sequences), width, dtype=torch.long)
        for row, sequence in enumerate(sequences):
            ids[row, width - len(sequence) :] = torch.tensor(sequence)
            mask[row, width - len(sequence) :] = 1
        return PromptBatch(ids, mask, torch.full((len(sequences),), -1), tuple(self.rows[i] for i in index.tolist()))

    def prompts(self, count: int, generator: torch.Generator | None = None) -> PromptBatch:
        """``count`` prompts drawn uniformly with replacement (``generator``, else torch's global RNG)."""
        return self.batch(torch.randint(0, len(self.rows), (count,), generator=generator))

    def response_tensors(self, name: str, index: Tensor, width: int = 0) -> tuple[Tensor, Tensor]:
        """(ids [B, R], mask [B, R]) of response field ``name`` of rows ``index``, right-padded to the longest (at
        least ``width`` columns)."""
        sequences = [self.responses[name][i] for i in index.tolist()]
        width = max(width, *(len(s) for s in sequences))
        ids = torch.full((len(sequences), width), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros(len(sequences), width, dtype=torch.long)
        for row, sequence in enumerate(sequences):
            ids[row, : len(sequence)] = torch.tensor(sequence)
            mask[row, : len(sequence)] = 1
        return ids, mask

    def demonstrations(self) -> tuple[PromptBatch, Tensor, Tensor]:
        """Every row as a demonstration: (prompts, completions, masks)."""
        index = torch.arange(len(self.rows))
        return (self.batch(index), *self.response_tensors("completion", index))

    def preference_pairs(self) -> PreferencePairs:
        """Every row as a preference pair (its chosen and rejected responses)."""
        index = torch.arange(len(self.rows))
        # one width for both: the reward model and DPO score chosen and rejected in one batch
        width = max(len(ids) for name in ("chosen", "rejected") for ids in self.responses[name])
        chosen, chosen_mask = self.response_tensors("chosen", index, width)
        rejected, rejected_mask = self.response_tensors("rejected", index, width)
        return PreferencePairs(self.batch(index), chosen, chosen_mask, rejected, rejected_mask)
