"""What scores a response for PPO: the reward interface and the scorers behind it.

PPO only calls ``score(prompts, response, response_mask) -> [B]`` and never learns what is behind it.
``LearnedReward`` is a reward model trained on preference pairs (``pgrad lm rm``). ``TrueScoreReward``
puts the task's hidden score behind the interface (a perfect reward model: the ceiling a learned one
is measured against, and a check that the PPO loop itself learns). ``VerifierReward`` (the built-in
verifiers of ``pgrad.lm.verifiers``) and ``FunctionReward`` (a user's ``fn(prompts, completions,
**columns) -> list[float]``) score the batch as text. ``CombinedReward`` is what PPO holds: the weighted
sum of the terms of ``lm_ppo.reward`` (``pgrad.lm.reward_spec``), each term's batch mean kept for the
``reward/<name>`` metrics.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor

from pgrad.entry_points import import_entry_module
from pgrad.errors import ConfigError, PgradError
from pgrad.lm import verifiers
from pgrad.lm.losses import EnsembleRule, combine_ensemble
from pgrad.lm.model import RewardModel
from pgrad.lm.reward_spec import RewardTerm
from pgrad.lm.task import DigitsTask, PromptBatch, TextBatch


class RewardError(PgradError):
    """A reward function raised, or returned something other than one finite number per completion."""


class ResponseScorer(Protocol):
    """Scores [B] of responses (CPU tensors in, a CPU tensor out)."""

    def score(self, prompts: PromptBatch, response: Tensor, response_mask: Tensor) -> Tensor:
        """The score [B] of each response to its prompt."""


class TrueScoreReward:
    """The task's true score as the reward (``lm_ppo.reward: true``)."""

    def __init__(self, task: DigitsTask) -> None:
        self.task = task

    def score(self, prompts: PromptBatch, response: Tensor, response_mask: Tensor) -> Tensor:
        """The task's hidden true score [B] of each response."""
        return self.task.true_score(prompts.last_digit, response, response_mask)


class LearnedReward:
    """Trained ``RewardModel``s as the reward (``lm_ppo.reward: model``), frozen: one, or an ensemble whose
    member scores are combined by ``rule`` (``combine_ensemble``: min, or mean - std_coef x std). Scores come
    back on the CPU; ``last_disagreement`` is the mean over the batch of the population std across members of
    the last batch scored (0 for one model), the reward-hacking signal PPO logs."""

    def __init__(self, members: list[RewardModel], rule: EnsembleRule = "min", std_coef: float = 1.0) -> None:
        if not members:
            raise ValueError("LearnedReward needs at least one reward model")
        self.members = members
        self.rule: EnsembleRule = rule
        self.std_coef = std_coef
        self.device = next(members[0].parameters()).device
        self.last_disagreement = 0.0

    @torch.no_grad()
    def member_scores(self, prompts: PromptBatch, response: Tensor, response_mask: Tensor) -> Tensor:
        """Each member's scores [M, B], on the CPU."""
        device = self.device
        args = (prompts.ids.to(device), prompts.mask.to(device), response.to(device), response_mask.to(device))
        return torch.stack([model(*args) for model in self.members]).float().cpu()  # float32 under autocast too

    def score(self, prompts: PromptBatch, response: Tensor, response_mask: Tensor) -> Tensor:
        """The members' scores combined by ``rule``; records their mean disagreement (std across members) in
        ``last_disagreement``."""
        scores = self.member_scores(prompts, response, response_mask)
        self.last_disagreement = float(scores.std(0, correction=0).mean())
        return combine_ensemble(scores, self.rule, self.std_coef)


class TextTask(Protocol):
    """What a combined reward needs of its task: the batch decoded to texts and the rows' columns (the digits task
    and a data set's task, ``pgrad.lm.dataset.DatasetTask``, both)."""

    def texts(self, prompts: PromptBatch, response: Tensor, response_mask: Tensor) -> TextBatch:
        """Prompt and completion texts and the columns, aligned with the batch."""
        ...


class TextScorer(Protocol):
    """Scores a batch given as text (prompts, completions, columns): one float per completion."""

    def score_texts(self, batch: TextBatch) -> list[float]:
        """One reward per completion of ``batch``."""


class VerifierReward:
    """A built-in verifier (``verifier:NAME``, ``pgrad.lm.verifiers``) with its options from the term."""

    def __init__(self, term: RewardTerm, columns: tuple[str, ...]) -> None:
        self.term = term
        if term.verifier == "exact_answer" and term.option("answer_column") not in columns:
            raise ConfigError(
                f"lm_ppo.reward: {term.source} compares with column {term.option('answer_column')!r}, which the "
                f"prompts do not have (their columns: {', '.join(columns) or 'none'}; set answer_column)"
            )

    def score_texts(self, batch: TextBatch) -> list[float]:
        """The verifier's reward of each completion."""
        term, completions = self.term, batch.completions
        if term.verifier == "exact_answer":
            return verifiers.exact_answer(completions, batch.columns[term.option("answer_column")])
        if term.verifier == "regex":
            return verifiers.regex_match(completions, term.option("pattern"))
        if term.verifier == "format":
            return verifiers.format_match(completions, term.option("pattern"))
        return verifiers.length_penalty(completions, term.option("length_target"), term.option("length_scale"))


def load_reward_function(source: str) -> Callable[..., Any]:
    """The function ``module:function`` names (trust is decided before: ``refuse_untrusted_reward_code``).
    An import that fails, a missing name or something not callable is one line naming ``source``."""
    module_name, attr = source.split(":", 1)
    try:
        found: Any = import_entry_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"lm_ppo.reward: cannot import module '{module_name}' of '{source}': {exc} (pgrad searches the "
            f"installed packages, PYTHONPATH and then the current folder {os.getcwd()})"
        ) from None
    except Exception as exc:  # the module's own code failed while importing
        raise ConfigError(f"lm_ppo.reward: importing '{module_name}' failed: {type(exc).__name__}: {exc}") from None
    for part in attr.split("."):
        found = getattr(found, part, None)
    if found is None or not callable(found):
        raise ConfigError(f"lm_ppo.reward: module '{module_name}' has no function '{attr}' ('{source}')")
    return found  # type: ignore[no-any-return]


def check_rewards(values: Any, source: str, batch: TextBatch) -> list[float]:
    """``values`` as one finite float per completion of ``batch``; anything else is a ``RewardError`` line
    naming the function and the first bad row."""
    if hasattr(values, "tolist") and not isinstance(values, list | tuple):  # a tensor or an ndarray
        values = values.tolist()
    if not isinstance(values, list | tuple):
        raise RewardError(
            f"reward function '{source}' returned a {type(values).__name__}; it must return a list of floats, one "
            f"per completion ({len(batch.completions)})"
        )
    if len(values) != len(batch.completions):
        raise RewardError(
            f"reward function '{source}' returned {len(values)} rewards for a batch of {len(batch.completions)} "
            "completions (one per completion, in their order)"
        )
    out = []
    for row, value in enumerate(values):
        number = float(value) if isinstance(value, numbers.Real) else None
        if number is None or not math.isfinite(number):
            raise RewardError(
                f"reward function '{source}' returned {value!r} for row {row} (prompt {batch.prompts[row]!r}, "
                f"completion {batch.completions[row]!r}); each reward must be a finite number"
            )
        out.append(number)
    return out


class FunctionReward:
    """A user's reward function ``fn(prompts, completions, **columns) -> list[float]`` (``module:function``,
    imported only with ``--trust-reward-code``); its output is checked at every call (``check_rewards``) and an
    exception inside it is reported with its name."""

    def __init__(self, source: str, function: Callable[..., Any] | None = None) -> None:
        self.source = source
        self.function = function if function is not None else load_reward_function(source)

    def score_texts(self, batch: TextBatch) -> list[float]:
        """The function's rewards of the batch, checked."""
        try:
            values = self.function(list(batch.prompts), list(batch.completions), **batch.columns)
        except Exception as exc:  # the user's code: its failure is reported as theirs, in one line
            raise RewardError(f"reward function '{self.source}' raised {type(exc).__name__}: {exc}") from None
        return check_rewards(values, self.source, batch)


class CombinedReward:
    """The reward PPO optimises: sum_i w_i r_i over the terms of ``lm_ppo.reward``, each term's batch mean of
    r_i kept in ``last_terms`` (logged as ``reward/<name>``). A term is a ``ResponseScorer`` (reward model, true
    score) or a ``TextScorer`` (verifier, function), whose batch is decoded once per call by the task."""

    def __init__(
        self, terms: list[tuple[RewardTerm, ResponseScorer | VerifierReward | FunctionReward]], task: TextTask
    ) -> None:
        if not terms:
            raise ValueError("CombinedReward needs at least one term")
        self.terms = terms
        self.task = task
        self.last_terms: dict[str, float] = {}

    @property
    def learned(self) -> LearnedReward | None:
        """The reward-model term (the first one), or None."""
        return next((scorer for _, scorer in self.terms if isinstance(scorer, LearnedReward)), None)

    def score(self, prompts: PromptBatch, response: Tensor, response_mask: Tensor) -> Tensor:
        """The weighted sum [B] of the terms' scores (one term of weight 1: its scores exactly)."""
        texts: TextBatch | None = None
        total: Tensor | None = None
        self.last_terms = {}
        for term, scorer in self.terms:
            if isinstance(scorer, VerifierReward | FunctionReward):
                if texts is None:  # decoded once, for every text term
                    texts = self.task.texts(prompts, response, response_mask)
                values = torch.tensor(scorer.score_texts(texts), dtype=torch.float32)
            else:
                values = scorer.score(prompts, response, response_mask).float()
            self.last_terms[term.name] = float(values.mean())
            total = values * term.weight if total is None else total + values * term.weight
        assert total is not None
        return total
