"""What scores a response for PPO: the reward-model interface and the fixed scorer behind it.

PPO only calls ``score(prompts, response, response_mask) -> [B]`` and never learns what is behind it.
``TrueScoreReward`` puts the task's hidden score behind the interface (a perfect reward model: the
ceiling a learned one is measured against, and a check that the PPO loop itself learns).
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from pgrad.lm.task import DigitsTask, PromptBatch


class ResponseScorer(Protocol):
    def score(self, prompts: PromptBatch, response: Tensor, response_mask: Tensor) -> Tensor: ...


class TrueScoreReward:
    """The task's true score as the reward (``lm_ppo.reward: true``)."""

    def __init__(self, task: DigitsTask) -> None:
        self.task = task

    def score(self, prompts: PromptBatch, response: Tensor, response_mask: Tensor) -> Tensor:
        return self.task.true_score(prompts.last_digit, response, response_mask)
