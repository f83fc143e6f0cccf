"""One name and one meaning per shared hyper-parameter: the fields every algorithm section declares alike.

The GUIDE's habit, "one glossary name per hyperparameter, everywhere", made concrete: a section declares
``gamma: float = glossary.gamma(0.99)`` instead of writing the meaning again, so ``pgrad list``, the docs
and every section say the same thing; a section adds its own note (SB3's value, what it applies to) in
brackets after the shared meaning.
"""

from __future__ import annotations

from typing import Any

from pgrad.config import param


def _doc(meaning: str, note: str) -> str:
    return f"{meaning} ({note})" if note else meaning


def gamma(default: float, note: str = "") -> Any:
    """The discount factor of returns and bootstrapped targets."""
    return param(default, _doc("discount factor", note))


def gae_lambda(default: float, note: str = "") -> Any:
    """GAE's lambda: the trade between one-step TD (0) and Monte Carlo (1) advantages."""
    return param(default, _doc("GAE lambda: 0 is one-step TD, 1 is Monte Carlo", note))


def clip_eps(default: float) -> Any:
    """PPO's surrogate clip range."""
    return param(default, "surrogate clip range: ratio clipped to [1 - clip_eps, 1 + clip_eps]")


def ent_coef(default: float) -> Any:
    """The weight of the entropy bonus in the loss."""
    return param(default, "entropy bonus coefficient")


def vf_coef(default: float, note: str = "") -> Any:
    """The weight of the value loss mean((V - R)^2) (no 1/2) in a shared loss."""
    return param(default, _doc("value loss coefficient; value loss = mean((V - R)^2)", note))


def max_grad_norm(default: float | None, note: str = "") -> Any:
    """The global L2 norm gradients are clipped to before a step."""
    return param(default, _doc("global L2 gradient-norm clip", note))


def norm_adv(default: bool, scope: str) -> Any:
    """Whether advantages are whitened (mean 0, std 1), and over what."""
    return param(default, f"normalise advantages {scope}")


def num_epochs(default: int, unit: str = "batch") -> Any:
    """Passes of gradient steps over each collected batch."""
    return param(default, f"passes over each {unit}")


def tau(default: float, note: str = "") -> Any:
    """The Polyak coefficient of target networks: theta' <- tau theta + (1 - tau) theta'."""
    return param(default, _doc("Polyak coefficient of the targets: theta' <- tau theta + (1 - tau) theta'", note))
