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

from pgrad.lm.model import RewardModel
from pgrad.lm.task import DigitsTask, PromptBatch


class ResponseScorer(Protocol):
    """Scores [B] of responses (CPU tensors in, a CPU tensor out)."""

    def score(self, prompts: PromptBatch, response: Tensor, response_mask: Tensor) -> Tensor: ...


class TrueScoreReward:
    """The task's true score as the reward (``lm_ppo.reward: true``)."""

    def __init__(self, task: DigitsTask) -> None:
        self.task = task

    def score(self, prompts: PromptBatch, response: Tensor, response_mask: Tensor) -> Tensor:
        return self.task.true_score(prompts.last_digit, response, response_mask)


class LearnedReward:
    """A trained ``RewardModel`` as the reward (``lm_ppo.reward: model``), frozen; scores come back on the CPU."""

    def __init__(self, model: RewardModel) -> None:
        self.model = model
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def score(self, prompts: PromptBatch, response: Tensor, response_mask: Tensor) -> Tensor:
        device = self.device
        scores: Tensor = self.model(
            prompts.ids.to(device), prompts.mask.to(device), response.to(device), response_mask.to(device)
        )
        return scores.cpu()
