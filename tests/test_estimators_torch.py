"""The torch estimators (GAE, TD target) equal their NumPy twins, keep device and dtype, and give the guide's values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pgrad import estimators as est

# Every device this machine has; the meta device has shapes and dtypes but no data, so a twin that
# ran there never read a value on the host (no .numpy(), no .item(), no Python branch on data).
DEVICES = ["cpu", "meta"] + (["cuda"] if torch.cuda.is_available() else [])


def episode_batch(rng: np.random.Generator, steps: int, envs: int) -> dict[str, np.ndarray]:
    """Random [T, B] inputs with terminations and truncations (never both on one step)."""
    terminated = rng.random((steps, envs)) < 0.2
    return {
        "rewards": rng.normal(size=(steps, envs)),
        "values": rng.normal(size=(steps, envs)),
        "next_values": rng.normal(size=(steps, envs)),
        "log_rhos": rng.normal(scale=0.5, size=(steps, envs)),
        "terminated": terminated,
        "truncated": (rng.random((steps, envs)) < 0.2) & ~terminated,
    }


def tensors(batch: dict[str, np.ndarray], dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    # Flags stay boolean, values take ``dtype``: the twins must cast flags themselves.
    return {k: torch.from_numpy(v) if v.dtype == bool else torch.from_numpy(v).to(dtype) for k, v in batch.items()}


def all_pairs(b: dict[str, np.ndarray], t: dict[str, torch.Tensor], gamma: float, lam: float):
    """(name, numpy result, torch result) for every estimator with a torch twin, on the same inputs."""
    args = ("rewards", "values", "next_values", "terminated", "truncated")
    for index, (mine, theirs) in enumerate(
        zip(est.gae(*(b[k] for k in args), gamma, lam), est.gae_torch(*(t[k] for k in args), gamma, lam), strict=True)
    ):
        yield f"gae[{index}]", mine, theirs
    yield (
        "td_targets",
        est.td_targets(b["rewards"], b["next_values"], b["terminated"], gamma),
        est.td_targets_torch(t["rewards"], t["next_values"], t["terminated"], gamma),
    )


@settings(max_examples=60, deadline=None)
@given(
    steps=st.integers(1, 10),
    envs=st.integers(1, 3),
    gamma=st.floats(0.0, 1.0),
    lam=st.floats(0.0, 1.0),
    seed=st.integers(0, 10_000),
)
def test_torch_twins_equal_numpy_on_random_episodes(steps, envs, gamma, lam, seed):
    batch = episode_batch(np.random.default_rng(seed), steps, envs)
    for name, expected, actual in all_pairs(batch, tensors(batch), gamma, lam):
        assert actual.dtype == torch.float64 and actual.shape == expected.shape, name
        np.testing.assert_allclose(actual.numpy(), expected, rtol=1e-10, atol=1e-10, err_msg=name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_twins_stay_on_the_device_and_dtype(device, dtype):
    batch = episode_batch(np.random.default_rng(0), 6, 3)
    moved = {k: v.to(device) for k, v in tensors(batch, dtype).items()}
    for name, expected, actual in all_pairs(batch, moved, 0.9, 0.95):
        assert (actual.device.type, actual.dtype, actual.shape) == (torch.device(device).type, dtype, expected.shape)
        if device != "meta":
            tolerance = 1e-5 if dtype == torch.float32 else 1e-10
            np.testing.assert_allclose(actual.cpu().numpy(), expected, rtol=tolerance, atol=tolerance, err_msg=name)


def test_torch_flags_may_be_zero_one_floats():
    batch = episode_batch(np.random.default_rng(1), 8, 2)
    as_bool = tensors(batch)
    as_float = {**as_bool, "terminated": as_bool["terminated"].double(), "truncated": as_bool["truncated"].double()}
    for (name, _, from_bool), (_, _, from_float) in zip(
        all_pairs(batch, as_bool, 0.9, 0.9), all_pairs(batch, as_float, 0.9, 0.9), strict=True
    ):
        torch.testing.assert_close(from_float, from_bool, rtol=0, atol=0, msg=name)


def test_gradients_flow_through_the_torch_targets():
    # A learned value (GAE's returns A + V) may be differentiated through; no in-place writes.
    batch = tensors(episode_batch(np.random.default_rng(2), 5, 2))
    values = batch["values"].clone().requires_grad_(True)
    advantages, returns = est.gae_torch(
        batch["rewards"], values, batch["next_values"], batch["terminated"], batch["truncated"], 0.9, 0.95
    )
    (advantages.sum() + returns.sum()).backward()
    assert values.grad is not None and torch.isfinite(values.grad).all() and values.grad.abs().sum() > 0


# ---- the guide's values (gamma = lambda = 0.5, rewards [1, 1, 1], V = 0) ------------------------


def column(values: list[float], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)[:, None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gae_torch_terminated_at_the_last_step_gives_1_3125(dtype):
    rewards, zeros = column([1, 1, 1], dtype), column([0, 0, 0], dtype)
    terminated = column([0, 0, 1]).bool()
    advantages, returns = est.gae_torch(rewards, zeros, zeros, terminated, torch.zeros_like(terminated), 0.5, 0.5)
    # A0 = 1 + 0.25 * 1 + 0.0625 * 1
    assert advantages[0, 0].item() == pytest.approx(1.3125)
    torch.testing.assert_close(advantages[:, 0], torch.tensor([1.3125, 1.25, 1.0], dtype=dtype))
    torch.testing.assert_close(returns, advantages)


def test_gae_torch_truncated_at_the_last_step_bootstraps_to_1_375():
    rewards, values = column([1, 1, 1]), column([0, 0, 0])
    next_values = column([0, 0, 2])  # V(final observation) = 2
    truncated = column([0, 0, 1]).bool()
    advantages, _ = est.gae_torch(rewards, values, next_values, torch.zeros_like(truncated), truncated, 0.5, 0.5)
    # delta_2 = 1 + 0.5 * 2 = 2, so A0 = 1 + 0.25 * 1 + 0.0625 * 2
    assert advantages[0, 0].item() == pytest.approx(1.375)
