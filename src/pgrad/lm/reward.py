"""What scores a response for PPO: the reward-model interface and the two scorers behind it.

PPO only calls ``score(prompts, response, response_mask) -> [B]`` and never learns what is behind it.
``LearnedReward`` is a reward model trained on preference pairs (``pgrad lm rm``). ``TrueScoreReward``
puts the task's hidden score behind the interface (a perfect reward model: the ceiling a learned one
is measured against, and a check that the PPO loop itself learns).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from pgrad.lm.losses import EnsembleRule, combine_ensemble
from pgrad.lm.model import RewardModel
from pgrad.lm.task import DigitsTask, PromptBatch


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
        return torch.stack([model(*args) for model in self.members]).cpu()

    def score(self, prompts: PromptBatch, response: Tensor, response_mask: Tensor) -> Tensor:
        """The members' scores combined by ``rule``; records their mean disagreement (std across members) in
        ``last_disagreement``."""
        scores = self.member_scores(prompts, response, response_mask)
        self.last_disagreement = float(scores.std(0, correction=0).mean())
        return combine_ensemble(scores, self.rule, self.std_coef)
