"""pgrad: policy-gradient reinforcement learning, from REINFORCE to PPO, built for production.

``from pgrad import PPO`` (or ``A2C``, ``A3C``, ``TRPO``, ``REINFORCE``, ``SAC``, ``TD3``, ``DDPG``, ``Agent``,
``Callback``) gives the Python API of ``pgrad.api``, and ``evaluate_policy`` SB3's helper of the same name
(``pgrad.sb3_compat``). Those names are loaded on first use, so ``import pgrad`` alone (``pgrad --version``, a
config tool) does not import torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# what ``from pgrad import NAME`` finds in pgrad.api
API_NAMES = ("A2C", "A3C", "DDPG", "PPO", "REINFORCE", "SAC", "TD3", "TRPO", "Agent", "Callback")


def __getattr__(name: str) -> Any:
    """The Python API's classes (``pgrad.api``) and ``evaluate_policy``, imported when first asked for (PEP 562)."""
    if name in API_NAMES:
        from pgrad import api

        return getattr(api, name)
    if name == "evaluate_policy":
        from pgrad.sb3_compat import evaluate_policy

        return evaluate_policy
    raise AttributeError(f"module 'pgrad' has no attribute {name!r}")
