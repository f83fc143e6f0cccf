"""Language models (RLHF): PPO on a causal LM with a per-token KL penalty to a frozen reference.

``losses`` is pure torch math and imports nothing else; every other module here may import
``transformers`` (the ``lm`` extra), and no module outside this package does.

``from pgrad.lm import GRPOTrainer, GRPOConfig`` (and ``PPOTrainer``, ``RLOOTrainer``, ``DPOTrainer``,
``SFTTrainer``, ``RewardTrainer`` with their configs) gives the TRL-style Python API of ``pgrad.lm.trainers``,
loaded on first use: ``import pgrad.lm`` alone imports no torch.
"""

from __future__ import annotations

from typing import Any

TRAINER_NAMES = ("DPOTrainer", "GRPOTrainer", "PPOTrainer", "RLOOTrainer", "RewardTrainer", "SFTTrainer", "TrainOutput")
CONFIG_NAMES = ("DPOConfig", "GRPOConfig", "PPOConfig", "RLOOConfig", "RewardConfig", "SFTConfig")


def __getattr__(name: str) -> Any:
    """The trainers (``pgrad.lm.trainers``) and their TRL-named configs (``pgrad.lm.trl_compat``), imported when
    first asked for (PEP 562)."""
    if name in TRAINER_NAMES:
        from pgrad.lm import trainers

        return getattr(trainers, name)
    if name in CONFIG_NAMES:
        from pgrad.lm import trl_compat

        return getattr(trl_compat, name)
    raise AttributeError(f"module 'pgrad.lm' has no attribute {name!r}")
