"""The NumPy gradient backend: hand-derived gradients of the PPO and A2C losses.

Autograd of the loss functions (``ppo_loss``, ``actor_critic_loss``) is the reference; this backend computes
the same gradients by hand where it measurably wins, and says exactly what it implements
(``numpy_backend_refusal``): anything else is refused with a ConfigError, never ignored.
``gradient_backend: auto`` picks it only when it implements everything in use.

Why: a minibatch step on a 64x64 MLP needs ~0.15 ms of arithmetic, but autograd spends ~1.4 ms on
it here (dozens of small ops, each with dispatch and graph overhead; torch's CPU ``tanh`` alone is
~7x slower than NumPy's). The same numbers from ~30 NumPy calls take a fraction of that. Each
algorithm keeps its readable loss (``ppo_loss``, ``actor_critic_loss``) and, next to it, the derivative of
that loss with respect to log pi and V; this module turns those into parameter gradients. Tests
check every algorithm's hand gradient against autograd of its loss.

Derivatives used here (z the logits, p = softmax(z)):
    categorical: dlog pi(a)/dz = onehot(a) - p,          dH/dz = -p (log p + H)
    Gaussian:    dlog pi/dmu = (a - mu) / sigma^2,        dlog pi/dlog sigma = ((a - mu)/sigma)^2 - 1,
                 dH/dlog sigma = 1
    layer y = act(x W^T + b): dW = dz^T x, db = sum dz, dx = dz W, with dz = dy * act'(.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from pgrad.config import NetworkConfig
from pgrad.errors import ConfigError
from pgrad.nets import ActionSpec, ActorCritic

GradientBackend = Literal["auto", "autograd", "numpy"]
# What the backend implements, beyond the loss coefficients (all of PPO's and A2C's): the MLP
# actor-critic below with these activations and action kinds, a state-independent Gaussian log
# std, float32 parameters on the CPU (it works on NumPy views of the parameters).
NUMPY_ACTIVATIONS = ("tanh", "relu")
NUMPY_ACTION_KINDS = ("discrete", "continuous")


def numpy_backend_refusal(
    network: NetworkConfig, action: ActionSpec | None = None, device: str = "cpu", image: bool = False
) -> str | None:
    """Why the NumPy backend cannot run this setting (``field is value``), or None when it can."""
    if network.recurrent is not None:
        return f"network.recurrent is {network.recurrent!r} (the backend has feed-forward MLPs only)"
    if network.torso is not None:
        return f"network.torso is {network.torso!r} (the backend has MLP torsos only)"
    if image:
        return "the observations are images (the backend has MLP torsos only, not the CNN)"
    if network.state_dependent_std:
        return "network.state_dependent_std is true (the backend has a state-independent log std only)"
    if network.activation not in NUMPY_ACTIVATIONS:
        return f"network.activation is {network.activation!r} (the backend has {', '.join(NUMPY_ACTIVATIONS)})"
    if action is not None and action.kind not in NUMPY_ACTION_KINDS:
        return f"the action space is {action.kind} (the backend has {', '.join(NUMPY_ACTION_KINDS)})"
    if torch.device(device).type != "cpu":
        return f"run.device is {str(device)!r} (the backend runs on the CPU only)"
    return None


def choose_gradient_backend(
    requested: GradientBackend,
    section: str,
    network: NetworkConfig,
    action: ActionSpec | None = None,
    device: str = "cpu",
    image: bool = False,
) -> tuple[Literal["autograd", "numpy"], str]:
    """The backend a learner uses and why (the why is recorded: ``resolved_record``). ``auto``: numpy
    when it implements everything in use, else autograd. ``numpy`` where it does not: a ConfigError
    naming the field, the reason and the allowed values."""
    if requested == "autograd":
        return "autograd", f"{section}.gradient_backend is 'autograd'"
    refusal = numpy_backend_refusal(network, action, device, image)
    if refusal is None:
        return "numpy", f"{section}.gradient_backend is {requested!r} and the NumPy backend implements this setting"
    if requested == "auto":
        return "autograd", f"{section}.gradient_backend is 'auto' and {refusal}"
    raise ConfigError(f"{section}.gradient_backend must be 'auto' or 'autograd' when {refusal}; got 'numpy'")


def resolved_record(algorithm: object) -> dict[str, str]:
    """What a learner resolved when it was built, for the run's record (``run.started`` and
    ``config.yaml``): the gradient backend that really computes its gradients, and why.

    PPO and A2C choose (``gradient_backend``: ``auto`` picks numpy on the CPU where it can, so the
    config alone does not say which path ran); every other algorithm differentiates with autograd.
    """
    backend = getattr(algorithm, "gradient_backend", None)
    reason = getattr(algorithm, "gradient_backend_reason", None)
    if backend is None or reason is None:
        name = getattr(algorithm, "name", "this algorithm")
        return {"gradient_backend": "autograd", "gradient_backend_reason": f"{name} has no NumPy backend"}
    return {"gradient_backend": str(backend), "gradient_backend_reason": str(reason)}


LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)  # a Python float: keeps float32 arrays float32


def set_grad(parameter: torch.Tensor, grad: np.ndarray | None) -> None:
    """Write a gradient into ``parameter.grad`` (allocated once and reused); None writes zeros."""
    if parameter.grad is None:
        parameter.grad = torch.zeros_like(parameter)
    target = parameter.grad.numpy()
    if grad is None:
        target.fill(0.0)
    else:
        target[...] = grad


def normalize_advantages(advantages: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(A - mean) / (std + 1e-8) with the masked weights (w = mask / n), sample std as
    ``pgrad.numerics.masked_whiten``: sum_i w_i (A_i - mean)^2 x n / (n - 1)."""
    mean = float(weights @ advantages)
    count = np.count_nonzero(weights)
    correction = count / (count - 1) if count > 1 else 1.0
    return (advantages - mean) / (np.sqrt(weights @ (advantages - mean) ** 2 * correction) + 1e-8)


@dataclass
class Forward:
    """A NumPy forward pass with every activation kept for the backward."""

    actor: list[np.ndarray]  # the actor torso's input and layer outputs
    critic: list[np.ndarray]  # the critic torso's (the actor's when the torso is shared)
    head: np.ndarray  # policy head output: logits or Gaussian means
    values: np.ndarray  # V(s)


@dataclass
class PolicyTerms:
    """log pi(a|s) and the entropy per sample, with what their derivatives need."""

    log_probs: np.ndarray
    entropy: np.ndarray
    probs: np.ndarray | None = None  # categorical: softmax(z)
    log_p: np.ndarray | None = None  # categorical: log softmax(z)
    z: np.ndarray | None = None  # Gaussian: (a - mu) / sigma


class NumpyActorCritic:
    """NumPy views of an ``ActorCritic``'s parameters (they share memory, so optimizer steps and
    checkpoint loads, which write in place, are seen at once) and its forward and backward."""

    def __init__(self, model: ActorCritic) -> None:
        self.model = model
        self.discrete = model.action.kind == "discrete"
        self.tanh = model.activation == "tanh"

        def linears(torso: nn.Module) -> list[nn.Linear]:
            return [m for m in torso.children() if isinstance(m, nn.Linear)]

        self.actor_layers = linears(model.actor_torso)
        self.critic_layers = None if model.critic_torso is None else linears(model.critic_torso)

    def _torso(self, layers: list[nn.Linear], x: np.ndarray) -> list[np.ndarray]:
        outputs = [x]
        for layer in layers:
            z = outputs[-1] @ layer.weight.detach().numpy().T + layer.bias.detach().numpy()
            outputs.append(np.tanh(z) if self.tanh else np.maximum(z, 0.0))
        return outputs

    def forward(self, obs: np.ndarray, policy_rows: int | None = None) -> Forward:
        """``model(obs)``; the policy head only for the first ``policy_rows`` rows (A2C's extra
        bootstrap observation needs a value, not an action distribution)."""
        model = self.model
        actor = self._torso(self.actor_layers, obs)
        critic = actor if self.critic_layers is None else self._torso(self.critic_layers, obs)
        head_w, head_b = model.policy_head.weight.detach().numpy(), model.policy_head.bias.detach().numpy()
        value_w, value_b = model.value_head.weight.detach().numpy(), model.value_head.bias.detach().numpy()
        head = actor[-1][:policy_rows] @ head_w.T + head_b
        return Forward(actor, critic, head, critic[-1] @ value_w[0] + value_b[0])

    def policy_terms(self, head: np.ndarray, actions: np.ndarray) -> PolicyTerms:
        """log pi(a|s) and the entropy per sample from the policy head: softmax logits when discrete, a diagonal
        Gaussian with the learned log-std otherwise."""
        if self.discrete:
            shifted = head - head.max(axis=1, keepdims=True)
            log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            probs = np.exp(log_p)
            log_probs = log_p[np.arange(len(actions)), actions]
            return PolicyTerms(log_probs, -(probs * log_p).sum(axis=1), probs=probs, log_p=log_p)
        log_std = self._log_std().detach().numpy()
        z = (actions - head) * np.exp(-log_std)
        log_probs = (-0.5 * z * z - log_std - LOG_SQRT_2PI).sum(axis=1)
        entropy = np.full(len(actions), (log_std + 0.5 + LOG_SQRT_2PI).sum(), dtype=np.float32)
        return PolicyTerms(log_probs, entropy, z=z)

    def head_gradient(
        self, terms: PolicyTerms, actions: np.ndarray, d_log_probs: np.ndarray, ent_coef: float, weights: np.ndarray
    ) -> np.ndarray:
        """dL/dhead for L = (terms in log pi with dL/dlog pi = d_log_probs) - ent_coef sum_i w_i H_i.
        For a Gaussian it also sets the gradient of the state-independent log std."""
        if self.discrete:
            probs, log_p = terms.probs, terms.log_p
            if probs is None or log_p is None:
                raise ValueError("categorical policy terms need probs and log_p (policy_terms sets them)")
            d_head: np.ndarray = -d_log_probs[:, None] * probs  # numpy's stub types this product as Any
            d_head[np.arange(len(actions)), actions] += d_log_probs
            d_head += (ent_coef * weights)[:, None] * probs * (log_p + terms.entropy[:, None])
            return d_head
        z = terms.z
        if z is None:
            raise ValueError("Gaussian policy terms need z (policy_terms sets it)")
        log_std = self._log_std()
        set_grad(log_std, d_log_probs @ (z * z - 1.0) - ent_coef * float(weights.sum()))
        # Annotated: numpy's stub types this product as Any.
        d_mean: np.ndarray = d_log_probs[:, None] * z * np.exp(-log_std.detach().numpy())
        return d_mean

    def _log_std(self) -> nn.Parameter:
        """The Gaussian policy's state-independent log std (the only kind this backend runs)."""
        if self.model.log_std is None:
            raise ValueError("the NumPy backend needs a state-independent log std (numpy_backend_refusal)")
        return self.model.log_std

    def backward(self, forward: Forward, d_head: np.ndarray, d_values: np.ndarray) -> None:
        """Set the gradients of both heads and the torsos from dL/dhead and dL/dV (for the first
        ``len(d_values)`` rows of ``forward``)."""
        model, rows = self.model, len(d_values)
        actor = [x[:rows] for x in forward.actor]
        critic = [x[:rows] for x in forward.critic]
        set_grad(model.policy_head.weight, d_head.T @ actor[-1])
        set_grad(model.policy_head.bias, d_head.sum(axis=0))
        set_grad(model.value_head.weight, (d_values @ critic[-1])[None, :])
        set_grad(model.value_head.bias, np.array([d_values.sum()], dtype=np.float32))
        for layer in self.actor_layers + (self.critic_layers or []):
            set_grad(layer.weight, None)
            set_grad(layer.bias, None)
        d_actor = d_head @ model.policy_head.weight.detach().numpy()
        d_critic = d_values[:, None] * model.value_head.weight.detach().numpy()
        if self.critic_layers is None:
            self._torso_backward(self.actor_layers, actor, d_actor + d_critic)
        else:
            self._torso_backward(self.actor_layers, actor, d_actor)
            self._torso_backward(self.critic_layers, critic, d_critic)

    def _torso_backward(self, layers: list[nn.Linear], outputs: list[np.ndarray], grad: np.ndarray) -> None:
        for index in range(len(layers) - 1, -1, -1):
            y = outputs[index + 1]
            dz = grad * (1.0 - y * y) if self.tanh else grad * (y > 0)
            layer = layers[index]
            weight_grad, bias_grad = layer.weight.grad, layer.bias.grad
            if weight_grad is None or bias_grad is None:  # backward zeroes them before it comes here
                raise ValueError("_torso_backward adds to gradients that backward has set")
            weight_grad.numpy()[...] += dz.T @ outputs[index]
            bias_grad.numpy()[...] += dz.sum(axis=0)
            if index:
                grad = dz @ layer.weight.detach().numpy()
