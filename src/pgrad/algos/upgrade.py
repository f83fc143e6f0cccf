"""Reading algorithm sections written before the nested ``network`` / ``optimizer`` layout.

Saved ``config.yaml`` files (and hand-written ``--config`` files) from before had flat fields:
``ppo: {hidden_sizes: [64, 64], learning_rate: 3e-4, adam_eps: 1e-5, hand_gradients: true}``.
``upgrade_algo_section`` moves each of them to where it lives now
(``ppo: {network: {hidden_sizes: ...}, optimizer: {learning_rate: ..., eps: ...}, gradient_backend: auto}``);
a section already in the new layout comes back unchanged. Unknown keys are left alone, so the
usual "unknown key" error still names them.

Values whose meaning changed are converted by the section's ``version`` (``SECTION_VERSIONS``): the
``lm_ppo`` value loss lost its 1/2 in version 2 (one value loss, E[(V - R)^2], for environments and
tokens), so a version-1 ``vf_coef`` is halved and the run's loss stays what it was. A run folder's
``config.yaml`` holds every field, so a section read from one without ``version`` predates it
(``upgrade_saved_section``); a hand-written config file without it is in the current version.
"""

from __future__ import annotations

import copy
from typing import Any

NETWORK_KEYS = ("hidden_sizes", "activation", "shared_network", "log_std_init", "state_dependent_std")

# old flat key -> the paths it now sets, for the algorithms with one optimizer
_ONE_OPTIMIZER: dict[str, tuple[str, ...]] = {
    "learning_rate": ("optimizer.learning_rate",),
    "anneal_lr": ("optimizer.anneal_lr",),
    "adam_eps": ("optimizer.eps",),
    "optimizer_eps": ("optimizer.eps",),
    "rms_alpha": ("optimizer.rms_alpha",),
}
MOVED: dict[str, dict[str, tuple[str, ...]]] = {
    "ppo": _ONE_OPTIMIZER,
    "ppo_kl": _ONE_OPTIMIZER,
    "a2c": _ONE_OPTIMIZER,
    "a3c": _ONE_OPTIMIZER,
    "actor_critic": {
        "actor_learning_rate": ("optimizer.learning_rate",),
        "critic_learning_rate": ("critic_optimizer.learning_rate",),
        "adam_eps": ("optimizer.eps", "critic_optimizer.eps"),  # one epsilon served both optimizers
    },
    "reinforce": {
        "learning_rate": ("optimizer.learning_rate",),
        "value_learning_rate": ("value_optimizer.learning_rate",),
        "adam_eps": ("optimizer.eps", "value_optimizer.eps"),
    },
    "trpo": {
        "learning_rate": ("value_optimizer.learning_rate",),
        "anneal_lr": ("value_optimizer.anneal_lr",),
        "adam_eps": ("value_optimizer.eps",),
    },
}
MOVED["npg"] = MOVED["trpo"]
# the language-model sections before their optimizer: and model: sections (issue 21)
_LM_MOVES: dict[str, tuple[str, ...]] = {
    "learning_rate": ("optimizer.learning_rate",),
    "n_layer": ("model.n_layer",),
    "n_embd": ("model.n_embd",),
    "n_head": ("model.n_head",),
}
for _lm in ("lm_ppo", "lm_rm", "lm_sft", "lm_dpo"):
    MOVED[_lm] = _LM_MOVES

# the current version of the sections that have one (the ``version`` field of their config class)
SECTION_VERSIONS: dict[str, int] = {"lm_ppo": 2}


def upgrade_algo_section(algo: str, data: dict[str, Any]) -> dict[str, Any]:
    """The algorithm section ``data`` (of algorithm ``algo``) in the current nested layout.

    Moves ``hidden_sizes``, ``activation``, ``shared_network``, ``log_std_init``,
    ``state_dependent_std`` into ``network``; learning rates, ``anneal_lr``, ``adam_eps`` /
    ``optimizer_eps`` (now ``eps``) and ``rms_alpha`` into the algorithm's optimizer section(s);
    A2C/A3C's ``optimizer: rmsprop`` into ``optimizer.kind``; ``hand_gradients: true/false`` into
    ``gradient_backend: auto/autograd``. Returns a new mapping; ``data`` is not modified.
    """
    if not isinstance(data, dict):
        return data  # let the config builder report the malformed section
    out = copy.deepcopy(data)
    moves = {key: (f"network.{key}",) for key in NETWORK_KEYS} | MOVED.get(algo, {})
    if isinstance(out.get("optimizer"), str):  # a2c / a3c: the optimizer's name
        _put(out, "optimizer.kind", out.pop("optimizer"))
    for key, paths in moves.items():
        if key in out:
            value = out.pop(key)
            for path in paths:
                _put(out, path, value)
    if "hand_gradients" in out:
        value = out.pop("hand_gradients")
        out["gradient_backend"] = ("auto" if value else "autograd") if isinstance(value, bool) else value
    if algo == "lm_ppo" and out.get("version") == 1:
        # version 1: L = ... + vf_coef x 0.5 E[(V - R)^2]; version 2: vf_coef x E[(V - R)^2] (the RL sections').
        # Halving is exact in binary floating point, so the loss is bit for bit the same.
        if isinstance(out.get("vf_coef"), (int, float)) and not isinstance(out["vf_coef"], bool):
            out["vf_coef"] = out["vf_coef"] / 2
        out["version"] = 2
    return out


def upgrade_saved_section(algo: str, data: dict[str, Any]) -> dict[str, Any]:
    """``upgrade_algo_section`` for a section read from a run folder's ``config.yaml``.

    Every run writes all its fields there, so a versioned section (``SECTION_VERSIONS``) saved
    without ``version`` was written before the field existed: it is read as version 1 (an ``lm_ppo``
    run started before the shared value loss has its ``vf_coef`` halved). A missing ``vf_coef``
    is left missing: the old default (0.1 of the half loss) and the new one (0.05) are the same loss.
    """
    if isinstance(data, dict) and algo in SECTION_VERSIONS and "version" not in data:
        data = {**data, "version": 1}
    if isinstance(data, dict) and algo == "lm_ppo" and "loss_type" not in data:
        data = {**data, "loss_type": "token_mean"}  # saved before the field: every loss was a token mean then
    return upgrade_algo_section(algo, data)


def _put(data: dict[str, Any], path: str, value: Any) -> None:
    section, name = path.split(".")
    nested = data.get(section)
    if not isinstance(nested, dict):
        nested = data[section] = {}
    nested[name] = value
