"""pgrad: policy-gradient reinforcement learning, from REINFORCE to PPO, built for production.

``from pgrad import PPO`` (or ``A2C``, ``A3C``, ``TRPO``, ``REINFORCE``, ``SAC``, ``TD3``, ``DDPG``, ``Agent``,
``Callback``) gives the Python API of ``pgrad.api``. Those names are loaded on first use, so ``import pgrad``
alone (``pgrad --version``, a config tool) does not import torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# what ``from pgrad import NAME`` finds in pgrad.api
API_NAMES = ("A2C", "A3C", "DDPG", "PPO", "REINFORCE", "SAC", "TD3", "TRPO", "Agent", "Callback")


def __getattr__(name: str) -> Any:
    """The Python API's classes, imported from ``pgrad.api`` when first asked for (PEP 562)."""
    if name in API_NAMES:
        from pgrad import api

        return getattr(api, name)
    raise AttributeError(f"module 'pgrad' has no attribute {name!r}")
