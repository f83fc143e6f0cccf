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
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from pgrad.algos.common import clip_gradients, optimizer_step
from pgrad.config import TrainConfig
from pgrad.errors import ConfigError

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}

# A skipped fp16 step is the loss scaler's calibration while its scale S is at or above this (it halves S and tries
# again: from 2^16, 16 skips in a row reach 1); below it no scale gives finite gradients, and each skip is a
# non-finite step for the guard's rules (a halt past guard.nonfinite_halt)
FP16_SCALE_FLOOR = 1.0


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
    # A layer recomputes only while its own ``training`` flag is set (and gradients are on); pgrad's runners keep
    # their models in eval mode so that no dropout runs. Set that flag on the checkpointed layers alone: the
    # dropouts and attention modules below them keep theirs, so the forward pass computes what it did before
    # (the model's own flag stays off too: GPT-2's would drop the key/value cache that sampling uses).
    from transformers.modeling_layers import GradientCheckpointingLayer

    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer) and module.gradient_checkpointing:
            module.training = True


def place(modules: dict[str, torch.nn.Module], device: torch.device) -> dict[str, torch.nn.Module]:
    """Every module of the run (policy, reference, value model, reward model) moved to ``device``, by name;
    a module left elsewhere would fail only at its first use, on a CUDA run after minutes of work."""
    return {name: module.to(device) for name, module in modules.items()}


def devices_of(modules: dict[str, torch.nn.Module]) -> dict[str, set[str]]:
    """For each module, the devices its parameters and buffers are on (a placement check for tests and doctor)."""
    return {
        name: {str(t.device) for t in (*module.parameters(), *module.buffers())} for name, module in modules.items()
    }


@dataclass
class DeviceSetup:
    """Where and in what precision one language-model run computes, decided once in its prologue
    (``DeviceSetup.of(config)``) from ``run.device`` and the section's ``model.precision`` and
    ``model.gradient_checkpointing``; the runners ask it, never ``torch.cuda`` themselves.

    The weights and optimizer moments stay float32 in every precision (autocast casts per operation), so a
    checkpoint is float32 and, written through safetensors, on the CPU: a run resumes on another device. The
    fp16 loss scaler is not in the checkpoint: a resumed fp16 run starts its scale again at 2^16."""

    device: torch.device
    precision: Precision = "fp32"
    gradient_checkpointing: bool = False
    field: str = "lm_ppo.model"  # the section's model field, for the refusals
    scaler: torch.amp.GradScaler | None = None
    skipped_steps: int = 0  # fp16 steps the scaler skipped (an inf/nan gradient), whole run

    @classmethod
    def of(cls, config: TrainConfig) -> DeviceSetup:
        """The run's setup; one ConfigError line, before anything is built or written, for a precision the device
        cannot run (``run.device`` itself, cuda without CUDA included, ``RunConfig`` has refused already)."""
        section = config.algo_config
        model = section.model
        device = torch.device(config.run.device)
        prefix = f"{section.SECTION}.model"
        check_precision(model.precision, device, f"{prefix}.precision")
        return cls(device, model.precision, model.gradient_checkpointing, prefix, grad_scaler(device, model.precision))

    def autocast(self) -> AbstractContextManager[Any]:
        """The context of every forward pass: autocast to bf16 or fp16, nothing for fp32."""
        return autocast(self.device, self.precision)

    def place(self, modules: dict[str, torch.nn.Module]) -> None:
        """Every module on the run's device (in place: ``Module.to`` moves parameters and buffers)."""
        place(modules, self.device)

    def prepare_trained(self, *models: torch.nn.Module | None) -> None:
        """Gradient checkpointing on the models the run trains (the frozen ones run without gradients and store
        no activations), when ``model.gradient_checkpointing`` asks for it."""
        if self.gradient_checkpointing:
            for model in models:
                if model is not None:
                    enable_gradient_checkpointing(model, f"{self.field}.gradient_checkpointing")

    def step(
        self, optimizer: torch.optim.Optimizer, parameters: list[torch.nn.Parameter], loss: Tensor, max_grad_norm: float
    ) -> tuple[float, bool]:
        """One optimizer step on ``loss``: (gradient norm before clipping, whether it was skipped). fp32 and bf16:
        ``optimizer_step``. fp16: backward of S x loss, gradients divided by S (``unscale_``), clipped, and the step
        skipped with S halved when a gradient is inf or nan (S doubles after 2000 clean steps: ``GradScaler``)."""
        if self.scaler is None:
            return optimizer_step(optimizer, parameters, loss, max_grad_norm)[0], False
        for parameter in parameters:
            parameter.grad = None
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)
        norm, _ = clip_gradients(parameters, max_grad_norm)
        scale = self.scaler.get_scale()
        self.scaler.step(optimizer)  # skips optimizer.step() when unscale_ found an inf or nan
        self.scaler.update()
        skipped = self.scaler.get_scale() < scale  # update() halves the scale after a skipped step, only then
        self.skipped_steps += int(skipped)
        return norm, skipped

    def overflow_persists(self) -> bool:
        """Whether the fp16 loss scale has fallen below ``FP16_SCALE_FLOOR``: the gradients stay inf or nan at any
        scale, which is damage, not the scaler's calibration (False without a scaler)."""
        return self.scaler is not None and self.scaler.get_scale() < FP16_SCALE_FLOOR

    def metrics(self) -> dict[str, float]:
        """What a row reports of the setup: with fp16, the loss scale and the steps skipped so far; else nothing."""
        if self.scaler is None:
            return {}
        return {"train/loss_scale": self.scaler.get_scale(), "train/fp16_skipped_steps": float(self.skipped_steps)}
