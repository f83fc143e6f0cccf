"""Where and in what precision a language-model run computes: the device, mixed precision, gradient checkpointing.

- ``fp32``: everything in float32 (the default; what every test on a CPU runs).
- ``bf16``: the forward passes under ``torch.autocast(dtype=bfloat16)``; weights, optimizer moments and the
  loss's reductions stay float32. bfloat16 has float32's exponent range, so no loss scaling is needed. CPUs
  run it too (slowly on most: it is for memory, or for CUDA cards from Ampere on).
- ``fp16``: autocast to float16 with a ``GradScaler``: float16's range (max 65504, smallest normal 6e-5)
  underflows small gradients, so the loss is multiplied by a scale S before ``backward`` and the gradients
  divided by S before the step (a step with an inf/nan gradient is skipped and S halved). CUDA only here.

Gradient checkpointing (``gradient_checkpointing``) keeps only each block's input in the forward pass and
recomputes the rest during ``backward``: activation memory per block goes from O(layers) to O(1) at about
one more forward pass of compute. Hugging Face models switch it on with ``activation_checkpointing_enable``
(``gradient_checkpointing_enable`` before transformers 5);
their key/value cache must be off while training with it (generation turns it back on for itself).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal

import torch

from pgrad.errors import ConfigError

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device, field: str = "lm_ppo.precision") -> None:
    """One ConfigError line for a precision the device cannot run: an unknown name, fp16 off CUDA (no loss
    scaling on the CPU here), bf16 on a CUDA card without bfloat16 (before Ampere)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"{field} must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"{field}: fp16 needs run.device cuda (loss scaling); on {device.type} use bf16 or fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{field}: this CUDA card has no bfloat16 (before Ampere); use fp16 or fp32")


def autocast(device: torch.device, precision: str) -> AbstractContextManager[Any]:
    """The forward passes' context: ``torch.autocast`` to the precision's dtype, or nothing for fp32."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A ``GradScaler`` for fp16 (on CUDA), None otherwise: bf16 and fp32 need no loss scaling."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


def enable_gradient_checkpointing(model: torch.nn.Module, field: str = "lm_ppo.gradient_checkpointing") -> None:
    """Recompute activations in ``backward`` (Hugging Face's ``gradient_checkpointing_enable``) and turn the
    key/value cache off for training; one ConfigError line for a model that does not support it."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(f"{field}: {type(model).__name__} does not support gradient checkpointing; set it false")
    # transformers 5 renamed it activation_checkpointing_enable (the old name warns); 4.x has only the old one
    name = "activation_checkpointing_enable" if hasattr(model, "activation_checkpointing_enable") else None
    enable: Callable[[], None] = getattr(model, name or "gradient_checkpointing_enable")
    enable()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "use_cache"):
        config.use_cache = False


def place(modules: dict[str, torch.nn.Module], device: torch.device) -> dict[str, torch.nn.Module]:
    """Every module of the run (policy, reference, value model, reward model) moved to ``device``, by name;
    a module left elsewhere would fail only at its first use, on a CUDA run after minutes of work."""
    return {name: module.to(device) for name, module in modules.items()}


def devices_of(modules: dict[str, torch.nn.Module]) -> dict[str, set[str]]:
    """For each module, the devices its parameters and buffers are on (a placement check for tests and doctor)."""
    return {
        name: {str(t.device) for t in (*module.parameters(), *module.buffers())} for name, module in modules.items()
    }
