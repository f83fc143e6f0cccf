"""Exporting a recurrent policy (``network.recurrent``): the state is an input and an output.

The exported graph is one step of ``Policy.predict_recurrent`` with ``deterministic=True``:
``(observation [N, *obs_shape], state [N, state_size], episode_start [N]) -> (action, next_state)``: the frozen
observation normaliser, the state zeroed where ``episode_start`` is true, the torso and recurrent cores, the
argmax (discrete) or the mean rescaled and clipped to the bounds (Box). A deployment keeps ``next_state`` and
passes it back with the next observation, as with sb3-contrib's RecurrentPPO.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pgrad import safe_io
from pgrad.errors import ConfigError
from pgrad.policy import Policy, space_to_dict
from pgrad.recurrent import RecurrentActorCritic


class RecurrentStep(nn.Module):
    """One deterministic step of a recurrent policy, normaliser and action bounds inside."""

    mean: torch.Tensor  # buffers (declared for the type checker)
    std: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor

    def __init__(self, policy: Policy) -> None:
        super().__init__()
        actor: Any = policy.actor
        assert getattr(actor, "recurrent", False), "a recurrent policy"
        adapter, normalizer = policy.adapter, policy.obs_normalizer
        if adapter.packings is not None or adapter.one_hot or adapter.image_axes is not None:
            raise ConfigError("export: a recurrent policy exports for flat Box observations only (no Dict, Discrete)")
        # or recurrent SAC's ActingModel (the same sequence()), which may be the learner's own modules: a frozen copy
        self.model: RecurrentActorCritic = copy.deepcopy(actor.model).requires_grad_(False).eval()
        self.squashed = bool(getattr(actor, "squashed", False))  # SAC's mode: tanh(mean)
        self.obs_dim = adapter.obs_dim
        self.discrete = adapter.action.kind == "discrete"
        self.normalize = normalizer.enabled
        stats = normalizer.stats
        self.register_buffer("mean", torch.as_tensor(np.asarray(stats.mean, np.float64)))
        self.register_buffer("std", torch.as_tensor(np.sqrt(np.asarray(stats.var, np.float64) + normalizer.epsilon)))
        self.clip = float(normalizer.clip)
        self.rescale = adapter.rescale
        self.bounded = adapter.low is not None and adapter.high is not None
        self.register_buffer("scale", torch.as_tensor(getattr(adapter, "scale", np.ones(1, np.float32))))
        self.register_buffer("offset", torch.as_tensor(getattr(adapter, "offset", np.zeros(1, np.float32))))
        self.register_buffer("low", torch.as_tensor(adapter.low if adapter.low is not None else np.zeros(1)))
        self.register_buffer("high", torch.as_tensor(adapter.high if adapter.high is not None else np.zeros(1)))

    def forward(
        self, observation: torch.Tensor, state: torch.Tensor, episode_start: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(action [N] or [N, action_dim], next state [N, state_size]) for one step of N envs."""
        x = observation.reshape(observation.shape[0], self.obs_dim)
        if self.normalize:  # as ObsNormalizer: clip((x - mean) / sqrt(var + eps)), computed in float64
            x = torch.clamp((x.double() - self.mean) / self.std, -self.clip, self.clip)
        x = x.float()
        head, _, next_state = self.model.sequence(x[None], state, episode_start.bool()[None])
        if self.discrete:
            return head[0].argmax(dim=-1), next_state
        action = torch.tanh(head[0]) if self.squashed else head[0]
        if self.rescale:
            action = action * self.scale + self.offset
        if self.bounded:
            action = torch.minimum(torch.maximum(action, self.low), self.high)
        return action, next_state


def example_inputs(policy: Policy, count: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Zeros shaped like one step's inputs for ``count`` envs (what tracing and the ONNX exporter run)."""
    actor: Any = policy.actor
    shape = tuple(policy.observation_space.shape or ())
    return torch.zeros((count, *shape)), torch.zeros((count, actor.state_size)), torch.ones(count, dtype=torch.bool)


def torchscript_bytes(policy: Policy) -> bytes:
    """The step as a traced TorchScript module, serialised."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(RecurrentStep(policy).eval(), example_inputs(policy))
    return bytes(traced.save_to_buffer())


def onnx_bytes(policy: Policy) -> bytes:
    """The step as an ONNX graph (torch's TorchScript-based exporter), inputs observation, state, episode_start and
    outputs action, next_state, the batch axis dynamic."""
    buffer = io.BytesIO()
    names = ["observation", "state", "episode_start"]
    axes = {name: {0: "batch"} for name in [*names, "action", "next_state"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            RecurrentStep(policy).eval(),
            example_inputs(policy),
            buffer,  # type: ignore[arg-type]  # torch's stub names paths; a file object is written to as well
            input_names=names,
            output_names=["action", "next_state"],
            dynamic_axes=axes,
            dynamo=False,
        )
    return buffer.getvalue()


def write(policy: Policy, fmt: str, target: Path, manifest: Path, record: dict[str, Any]) -> None:
    """Writes the step as ``fmt`` (onnx or torchscript) to ``target`` and its manifest; ``record`` holds the
    run's fields of the manifest (algo, env, checkpoint)."""
    actor: Any = policy.actor
    data = onnx_bytes(policy) if fmt == "onnx" else torchscript_bytes(policy)
    safe_io.write_atomic(target, data)
    discrete = policy.adapter.action.kind == "discrete"
    obs_shape, action_shape = list(policy.observation_space.shape or ()), list(policy.action_space.shape or ())
    document = {
        "format": fmt,
        "file": target.name,
        **record,
        "inputs": [
            {"name": "observation", "dtype": "float32", "shape": ["batch", *obs_shape]},
            {"name": "state", "dtype": "float32", "shape": ["batch", actor.state_size], "initial": "zeros"},
            {"name": "episode_start", "dtype": "bool", "shape": ["batch"]},
        ],
        "outputs": [
            {"name": "action", "dtype": "int64" if discrete else "float32", "shape": ["batch", *action_shape]},
            {"name": "next_state", "dtype": "float32", "shape": ["batch", actor.state_size]},
        ],
        "observation_space": space_to_dict(policy.observation_space),
        "action_space": space_to_dict(policy.action_space),
        "inside": {"obs_normalizer": policy.obs_normalizer.enabled, "deterministic": True, "recurrent": True},
    }
    safe_io.write_atomic(manifest, json.dumps(document, indent=2) + "\n")
