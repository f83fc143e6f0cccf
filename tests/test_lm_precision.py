"""Precision and placement of language-model runs, tested on the CPU (CI has no GPU): dtype choices, refusals,
gradient checkpointing's equality with the plain backward pass, and placement on the ``meta`` device."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from pgrad.errors import ConfigError
from pgrad.lm.precision import (
    autocast,
    check_precision,
    devices_of,
    enable_gradient_checkpointing,
    grad_scaler,
    place,
)

CPU = torch.device("cpu")


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=13, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    return GPT2LMHeadModel(config).eval()


def test_refusals_name_the_field_and_the_way_out() -> None:
    with pytest.raises(ConfigError, match=r"^lm_ppo.precision must be one of fp32, bf16, fp16; got 'fp8'$"):
        check_precision("fp8", CPU)
    with pytest.raises(ConfigError, match=r"fp16 needs run.device cuda .* on cpu use bf16 or fp32"):
        check_precision("fp16", CPU)
    check_precision("bf16", CPU)  # CPU autocast runs bfloat16
    check_precision("fp32", CPU)


def test_autocast_dtypes_on_the_cpu() -> None:
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast(CPU, "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with autocast(CPU, "fp32"):
        assert (a @ b).dtype == torch.float32
    assert grad_scaler(CPU, "bf16") is None and grad_scaler(CPU, "fp32") is None


def test_bf16_forward_keeps_float32_weights_and_stays_close() -> None:
    model, ids = tiny_gpt2(), torch.tensor([[1, 2, 3, 4, 5]])
    exact = model(ids).logits
    with autocast(CPU, "bf16"):
        mixed = model(ids).logits
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # bfloat16 keeps 8 bits of mantissa: relative error about 2^-8 per product, a few times that after 2 blocks
    assert torch.allclose(mixed.float(), exact, atol=0.05, rtol=0.05)


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    plain, checkpointed = tiny_gpt2(), tiny_gpt2()
    enable_gradient_checkpointing(checkpointed)
    assert checkpointed.config.use_cache is False
    for model in (plain, checkpointed):
        model.train()
        model.config.attn_pdrop = model.config.resid_pdrop = model.config.embd_pdrop = 0.0
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        model(ids, labels=ids).loss.backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        assert a.grad is not None and b.grad is not None
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name
    with pytest.raises(ConfigError, match="Linear does not support gradient checkpointing"):
        enable_gradient_checkpointing(torch.nn.Linear(2, 2))


def test_place_moves_every_module_to_the_device() -> None:
    meta = torch.device("meta")
    modules = {"policy": tiny_gpt2(), "value": torch.nn.Linear(16, 1), "reference": tiny_gpt2()}
    placed = place(modules, meta)
    assert devices_of(placed) == {"policy": {"meta"}, "value": {"meta"}, "reference": {"meta"}}
    # a forward pass on the meta device runs shapes only: the placement chain reaches every tensor
    out = placed["policy"](torch.zeros(1, 5, dtype=torch.long, device=meta)).logits
    assert out.device == meta and out.shape == (1, 5, 13)
