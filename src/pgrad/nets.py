"""Networks: MLP and CNN torsos with orthogonal initialisation, the actor-critic learner, and the
acting-only policy.

The learner (``ActorCritic``, torch) is what the optimiser updates. The acting policy
(``ActingPolicy``, NumPy) is a frozen copy of the actor that environments query step by step:
it is what ships to rollout workers and to deployment, it has no optimiser, and it is fast (a
64x64 MLP call costs ~5 us in NumPy against ~25 us in torch here, and torch's CPU ``tanh`` is far
slower than NumPy's). Log-probabilities and values for learning are recomputed by the learner
in one batched call after the rollout.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

import numpy as np
import torch
from torch import nn

from pgrad.config import Activation, NetworkConfig, class_entry_point
from pgrad.distributions import Categorical, DiagGaussian, TanhGaussian
from pgrad.entry_points import import_entry_module
from pgrad.errors import ConfigError

# numpy's stub types arithmetic on an ``np.ndarray`` (of unknown dtype) as Any, and torch's ``Module.__call__``
# returns Any: the annotated locals (``head: np.ndarray = ...``) before some returns are what lets the strict
# type checker see a declared type come back.
LOG_STD_BOUNDS = (-20.0, 2.0)
# config's lower-case spellings of torch.nn class names; every other name in config.ACTIVATIONS is one
_TORCH_NAMES = {"tanh": "Tanh", "relu": "ReLU"}


def _relu(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.maximum(x, 0.0)
    return out


# The activations the NumPy acting copy computes itself (the hot path of nearly every run). With any other,
# the actor's torso acts through a frozen torch copy instead (``ActingPolicy.torch_torso``).
NUMPY_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "tanh": np.tanh,
    "Tanh": np.tanh,
    "relu": _relu,
    "ReLU": _relu,
}


def activation_layer(name: Activation) -> nn.Module:
    """A new ``torch.nn`` activation module for a config name (``tanh``/``relu`` or a class name: ``GELU``)."""
    layer: nn.Module = getattr(nn, _TORCH_NAMES.get(name, name))()
    return layer


def torso_entry_point(cls: type) -> str:
    """``'module:QualName'`` of a feature-extractor class, what ``network.torso`` takes (SB3's
    ``features_extractor_class``); a class that cannot be imported back by that name (defined inside a
    function, or in ``__main__``) is one line."""
    return class_entry_point(cls)


@dataclass(frozen=True)
class ActionSpec:
    """What the policy outputs: ``discrete`` with ``size`` choices, or ``continuous`` of ``size`` dims."""

    kind: Literal["discrete", "continuous"]
    size: int


class ImageShape(NamedTuple):
    """An image observation as the policy sees it: channels first (the adapter transposes HxWxC)."""

    channels: int
    height: int
    width: int


@dataclass(frozen=True)
class ObsPart:
    """One key of a Dict observation (``key`` None: the whole observation) as a slice of the packed row."""

    key: str | None
    shape: tuple[int, ...]  # as the torso sees it: images channels first, a Discrete key as its one-hot (n,)
    offset: int  # where the slice starts in the packed float32 row
    image: bool  # raw 0-255 pixels: the Nature CNN's input, scaled by /255 in the torso, never normalised

    @property
    def size(self) -> int:
        """How many floats the part is in the packed row."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class ObsLayout:
    """How an observation sits in the flat float32 row the rollout, the replay buffer, the normaliser and the
    checkpoint all keep: the parts one after another, in the space's key order.

    The env boundary (``pgrad.envs.factory.SpaceAdapter``) packs a Dict observation into the row; the torso
    unpacks it by slicing (``unpack``). Built for a Dict observation space, and for any space when a custom
    torso (``network.torso``) needs the observation as its space shapes it. ``space`` is the space that torso
    is built with (images channels first, as SB3's ``VecTransposeImage`` gives them)."""

    parts: tuple[ObsPart, ...]
    space: Any = field(default=None, compare=False)

    @property
    def size(self) -> int:
        """Floats in one packed row."""
        return sum(part.size for part in self.parts)

    @property
    def has_images(self) -> bool:
        """Whether a part is an image (the Nature CNN's input)."""
        return any(part.image for part in self.parts)

    def normalized(self) -> np.ndarray:
        """[size] bool: the entries ``env.norm_obs`` normalises (all but image pixels)."""
        mask = np.ones(self.size, bool)
        for part in self.parts:
            if part.image:
                mask[part.offset : part.offset + part.size] = False
        return mask

    def unpack(self, packed: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """[B, size] packed rows -> what a custom torso takes: one tensor [B, *shape] (not a Dict space) or a dict
        of them by key; image parts scaled to [0, 1] (SB3's ``preprocess_obs``)."""
        tensors: dict[str, torch.Tensor] = {}
        for part in self.parts:
            value = packed[:, part.offset : part.offset + part.size].reshape(-1, *part.shape)
            tensors[str(part.key)] = value * (1.0 / 255.0) if part.image else value
        if self.parts[0].key is None:
            return tensors["None"]
        return tensors


# What an on-policy learner is built for: a flat float32 vector of this size, an image (flattened to C*H*W
# floats in the rollout, reshaped by the CNN torso), or a layout of parts (a Dict observation with an image,
# or any observation for a custom torso).
ObsShape = int | ImageShape | ObsLayout

NATURE_CNN_FEATURES = 512
# Nature-DQN (Mnih et al., 2015) layers (out channels, kernel, stride); an image needs at least
# 36x36 pixels for the three of them to leave one output pixel.
NATURE_CNN_LAYERS = ((32, 8, 4), (64, 4, 2), (64, 3, 1))
NATURE_CNN_MIN_SIZE = 36


def obs_size(obs_shape: ObsShape) -> int:
    """How many floats one observation is in the rollout."""
    if isinstance(obs_shape, ImageShape):
        return obs_shape.channels * obs_shape.height * obs_shape.width
    if isinstance(obs_shape, ObsLayout):
        return obs_shape.size
    return obs_shape


def orthogonal_init(layer: nn.Linear, gain: float) -> nn.Linear:
    """Orthogonal weights with ``gain`` and zero bias (the baselines' initialisation); returns the layer."""
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def mlp_torso(in_dim: int, hidden_sizes: tuple[int, ...], activation: Activation) -> nn.Sequential:
    """Linear + activation layers, orthogonal init with gain sqrt(2) (Engstrom et al., 2020)."""
    layers: list[nn.Module] = []
    for size in hidden_sizes:
        layers += [orthogonal_init(nn.Linear(in_dim, size), math.sqrt(2)), activation_layer(activation)]
        in_dim = size
    return nn.Sequential(*layers)


class NatureCNN(nn.Module):
    """The Nature-DQN torso on pixels scaled to [0, 1]: three ReLU convolutions, then a 512-unit
    ReLU layer (the shape of SB3's ``NatureCNN`` and CleanRL's Atari PPO, orthogonal gain sqrt(2)).

    Its input is the rollout's flat float32 row of C*H*W raw pixel values (0-255): keeping images
    flat leaves the rollout, minibatching and checkpoints unchanged; the reshape here is free.
    """

    def __init__(self, image: ImageShape) -> None:
        super().__init__()
        if min(image.height, image.width) < NATURE_CNN_MIN_SIZE:
            raise ValueError(f"the Nature CNN needs images of at least {NATURE_CNN_MIN_SIZE}x{NATURE_CNN_MIN_SIZE}")
        self.image = image
        convs: list[nn.Module] = []
        channels = image.channels
        for out_channels, kernel, stride in NATURE_CNN_LAYERS:
            conv = nn.Conv2d(channels, out_channels, kernel, stride)
            nn.init.orthogonal_(conv.weight, math.sqrt(2))
            assert conv.bias is not None  # Conv2d has one unless bias=False
            nn.init.zeros_(conv.bias)
            convs += [conv, nn.ReLU()]
            channels = out_channels
        self.convs = nn.Sequential(*convs, nn.Flatten())
        with torch.no_grad():
            flat = self.convs(torch.zeros(1, *image)).shape[1]
        self.linear = orthogonal_init(nn.Linear(flat, NATURE_CNN_FEATURES), math.sqrt(2))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """[..., C*H*W] raw pixels -> [..., 512] features."""
        leading = obs.shape[:-1]
        pixels = obs.reshape(-1, *self.image) * (1.0 / 255.0)
        return torch.relu(self.linear(self.convs(pixels))).reshape(*leading, NATURE_CNN_FEATURES)


class DictEncoder(nn.Module):
    """One encoder per key of a Dict observation, the outputs concatenated in key order: the Nature CNN for an
    image key, the key's own values for a vector key (the ``hidden_sizes`` MLP on top encodes them together:
    SB3's ``CombinedExtractor``, which flattens vector keys the same way)."""

    def __init__(self, layout: ObsLayout) -> None:
        super().__init__()
        self.layout = layout
        self.encoders = nn.ModuleList(
            NatureCNN(ImageShape(*part.shape)) if part.image else nn.Identity() for part in layout.parts
        )
        self.features_dim = sum(NATURE_CNN_FEATURES if part.image else part.size for part in layout.parts)

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        """[B, size] packed rows -> [B, features_dim]: each key's slice through its encoder, concatenated."""
        slices = (packed[:, part.offset : part.offset + part.size] for part in self.layout.parts)
        return torch.cat([encoder(x) for encoder, x in zip(self.encoders, slices, strict=True)], dim=-1)


class CustomTorso(nn.Module):
    """A user's feature extractor (``network.torso``) on the packed rows: it receives the observation as its
    space shapes it (``ObsLayout.unpack``: a tensor, or a dict of tensors for a Dict space) and returns
    [B, features_dim]."""

    def __init__(self, layout: ObsLayout, entry_point: str, kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.layout = layout
        self.extractor, self.features_dim = _build_extractor(
            load_torso_class(entry_point), layout.space, kwargs, entry_point
        )
        with torch.no_grad(), torch.random.fork_rng(devices=[]):  # a probe draws nothing from the run's RNG
            out = self(torch.zeros(2, layout.size))
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, self.features_dim):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(
                f"network.torso: {entry_point} returned {got} for a batch of 2; it must return (batch, features_dim) "
                f"= (2, {self.features_dim})"
            )

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        """[B, size] packed rows -> the extractor's [B, features_dim]."""
        features: torch.Tensor = self.extractor(self.layout.unpack(packed))
        return features


def load_torso_class(entry_point: str) -> type[nn.Module]:
    """The ``nn.Module`` class 'package.module:Class' names; importing the module runs its code (the caller decides
    trust: ``pgrad.runs.refuse_untrusted_env_code``). Anything else is one line."""
    module_name, _, qualname = entry_point.partition(":")
    try:
        found: Any = import_entry_module(module_name)
    except Exception as exc:  # ImportError, or the module's own code failing
        raise ConfigError(f"network.torso: cannot import module '{module_name}': {type(exc).__name__}: {exc}") from None
    for name in qualname.split("."):
        found = getattr(found, name, None)
    if found is None:
        hint = " (a class of the script that trained the run: move it into a module to load it here)"
        hint = hint if module_name == "__main__" else ""
        raise ConfigError(f"network.torso: module '{module_name}' has no class '{qualname}'{hint}")
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        raise ConfigError(
            f"network.torso: '{entry_point}' is {type(found).__name__}, not a torch.nn.Module class "
            "(SB3's BaseFeaturesExtractor contract: Class(observation_space, **torso_kwargs) with features_dim)"
        )
    return found


def _build_extractor(
    cls: type[nn.Module], space: Any, kwargs: dict[str, Any], entry_point: str
) -> tuple[nn.Module, int]:
    try:
        extractor = cls(space, **kwargs)
    except Exception as exc:  # the user's constructor: wrong kwargs, a space it does not handle
        raise ConfigError(f"network.torso: {entry_point}(observation_space, **torso_kwargs) failed: {exc}") from None
    dim = getattr(extractor, "features_dim", None)
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ConfigError(
            f"network.torso: {entry_point} has features_dim {dim!r}; it must set an integer features_dim >= 1 "
            "(the width of what forward returns)"
        )
    return extractor, dim


def make_torso(
    obs_shape: ObsShape,
    hidden_sizes: tuple[int, ...],
    activation: Activation,
    torso: str | None = None,
    torso_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """The Nature CNN for images (``hidden_sizes`` and ``activation`` are for vector observations:
    the heads sit on the CNN's 512 features, as in SB3's ``CnnPolicy``), else an MLP. For a layout (a Dict
    observation with an image, or a custom ``torso``): the feature extractor, then the MLP on its features
    (SB3's ``MultiInputPolicy``: extractor, then ``net_arch``)."""
    if isinstance(obs_shape, ObsLayout):
        extractor: DictEncoder | CustomTorso
        extractor = DictEncoder(obs_shape) if torso is None else CustomTorso(obs_shape, torso, torso_kwargs or {})
        return nn.Sequential(extractor, mlp_torso(extractor.features_dim, hidden_sizes, activation))
    if isinstance(obs_shape, ImageShape):
        return NatureCNN(obs_shape)
    return mlp_torso(obs_shape, hidden_sizes, activation)


def split_torso(torso: nn.Module) -> tuple[nn.Module | None, nn.Sequential | None]:
    """(feature extractor or None, the MLP of Linear + activation layers or None) of a ``make_torso`` result."""
    if isinstance(torso, NatureCNN):
        return torso, None
    if isinstance(torso, nn.Sequential) and len(torso) == 2 and isinstance(torso[0], (DictEncoder, CustomTorso)):
        extractor, mlp = torso
        assert isinstance(mlp, nn.Sequential)
        return extractor, mlp
    assert isinstance(torso, nn.Sequential)
    return None, torso


class ActorCritic(nn.Module):
    """Policy and state-value function, with separate or shared torsos (MLP, or CNN for images).

    Heads: policy head initialised with gain 0.01 (near-uniform initial policy), value head with
    gain 1. Gaussian policies use a state-independent learnable ``log_std`` by default, or a
    state-dependent one from the policy head, clamped to ``LOG_STD_BOUNDS``.
    """

    def __init__(
        self,
        obs_shape: ObsShape,
        action: ActionSpec,
        hidden_sizes: tuple[int, ...] = (64, 64),
        activation: Activation = "tanh",
        shared: bool = False,
        log_std_init: float = 0.0,
        state_dependent_std: bool = False,
        torso: str | None = None,
        torso_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.action = action
        self.activation = activation
        self.state_dependent_std = state_dependent_std and action.kind == "continuous"
        self.image = isinstance(obs_shape, ImageShape)
        if isinstance(obs_shape, ImageShape):
            width = NATURE_CNN_FEATURES
        else:
            width = hidden_sizes[-1] if hidden_sizes else obs_size(obs_shape)
        self.actor_torso = make_torso(obs_shape, hidden_sizes, activation, torso, torso_kwargs)
        self.critic_torso = None if shared else make_torso(obs_shape, hidden_sizes, activation, torso, torso_kwargs)
        head_size = action.size * (2 if self.state_dependent_std else 1)
        self.policy_head = orthogonal_init(nn.Linear(width, head_size), 0.01)
        self.value_head = orthogonal_init(nn.Linear(width, 1), 1.0)
        self.log_std: nn.Parameter | None
        if action.kind == "continuous" and not self.state_dependent_std:
            self.log_std = nn.Parameter(torch.full((action.size,), float(log_std_init)))
        else:
            self.log_std = None
            if self.state_dependent_std:
                with torch.no_grad():
                    self.policy_head.bias[action.size :] = float(log_std_init)

    @classmethod
    def from_config(cls, obs_shape: ObsShape, action: ActionSpec, network: NetworkConfig) -> ActorCritic:
        """The actor-critic a ``network`` section describes (on the CPU; ``.to(device)`` moves it)."""
        return cls(
            obs_shape,
            action,
            network.hidden_sizes,
            network.activation,
            network.shared_network,
            network.log_std_init,
            network.state_dependent_std,
            network.torso,
            network.torso_kwargs,
        )

    def _distribution(self, head: torch.Tensor) -> Categorical | DiagGaussian:
        if self.action.kind == "discrete":
            return Categorical(head)
        if self.state_dependent_std:
            mean, log_std = head.split(self.action.size, dim=-1)
            return DiagGaussian(mean, log_std.clamp(*LOG_STD_BOUNDS))
        assert self.log_std is not None  # continuous with a state-independent std: set in __init__
        return DiagGaussian(head, self.log_std)

    def forward(self, obs: torch.Tensor) -> tuple[Categorical | DiagGaussian, torch.Tensor]:
        """(policy distribution, state value) for a batch of observations."""
        features = self.actor_torso(obs)
        critic_features = features if self.critic_torso is None else self.critic_torso(obs)
        return self._distribution(self.policy_head(features)), self.value_head(critic_features).squeeze(-1)

    def distribution(self, obs: torch.Tensor) -> Categorical | DiagGaussian:
        """pi(.|s) for a batch of observations: Categorical logits or a diagonal Gaussian from the policy head."""
        return self._distribution(self.policy_head(self.actor_torso(obs)))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """V(s) [B], from the critic's torso, or the shared one when there is none."""
        torso = self.actor_torso if self.critic_torso is None else self.critic_torso
        value: torch.Tensor = self.value_head(torso(obs)).squeeze(-1)
        return value

    def acting_policy(self) -> ActingPolicy:
        """The actor as NumPy arrays, for acting in the envs."""
        return ActingPolicy.from_actor(self)


class ActingPolicy:
    """The actor as NumPy arrays: ``sample`` for training rollouts, ``mode`` for evaluation.

    Sampling uses a NumPy ``Generator`` whose state is checkpointed, so a resumed run draws the
    same actions as an uninterrupted one. A policy with a feature extractor (the CNN for images, a Dict
    observation's encoders, a custom torso) keeps it in torch (a frozen CPU copy, ``torch_torso``):
    convolutions are what torch is fast at; the MLP and the head stay NumPy. With an activation NumPy does
    not compute (``NUMPY_ACTIVATIONS``: tanh and relu), the whole torso acts through torch.
    """

    def __init__(
        self,
        layers: list[tuple[np.ndarray, np.ndarray]],
        head: tuple[np.ndarray, np.ndarray],
        activation: Activation,
        action: ActionSpec,
        log_std: np.ndarray | None,
        state_dependent_std: bool,
        torch_torso: nn.Module | None = None,
    ) -> None:
        self.torch_torso = torch_torso
        self.layers = layers
        self.head = head
        self.activation_name = activation  # what pgrad.export writes into the graph
        self.activation = NUMPY_ACTIVATIONS.get(activation, _relu)  # (unused without NumPy layers)
        self.action = action
        self.log_std = log_std
        self.state_dependent_std = state_dependent_std

    @classmethod
    def from_actor(cls, model: ActorCritic) -> ActingPolicy:
        """A NumPy copy of the actor, wherever the learner lives (``.cpu()`` is a no-op on the CPU)."""

        def arrays(layer: nn.Linear) -> tuple[np.ndarray, np.ndarray]:
            # Stored transposed so a batch [B, in] multiplies as obs @ W.
            return (layer.weight.detach().cpu().numpy().T.copy(), layer.bias.detach().cpu().numpy().copy())

        torch_torso, linears = acting_parts(model.actor_torso, model.activation)
        log_std = None if model.log_std is None else model.log_std.detach().cpu().numpy().copy()
        return cls(
            [arrays(layer) for layer in linears],
            arrays(model.policy_head),
            model.activation,
            model.action,
            log_std,
            model.state_dependent_std,
            torch_torso,
        )

    def _head(self, obs: np.ndarray) -> np.ndarray:
        x = obs
        if self.torch_torso is not None:
            with torch.no_grad():
                x = self.torch_torso(torch.from_numpy(np.ascontiguousarray(obs, np.float32))).numpy()
        for weight, bias in self.layers:
            x = self.activation(x @ weight + bias)
        head: np.ndarray = x @ self.head[0] + self.head[1]
        return head

    def _mean_log_std(self, head: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.state_dependent_std:
            mean, log_std = np.split(head, 2, axis=-1)
            return mean, np.clip(log_std, *LOG_STD_BOUNDS)
        assert self.log_std is not None
        return head, self.log_std

    def sample(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Training actions: inverse-CDF draws from softmax(logits) when discrete, mean + sigma x N(0, 1) otherwise,
        from ``rng``."""
        head = self._head(obs)
        if self.action.kind == "discrete":
            # Inverse-CDF sampling from softmax(logits), one uniform draw per row.
            logits = head - head.max(axis=-1, keepdims=True)
            probs = np.exp(logits)
            cdf = np.cumsum(probs, axis=-1)
            draws = rng.random(len(head))[:, None] * cdf[:, -1:]
            indices: np.ndarray = np.minimum((cdf < draws).sum(axis=-1), self.action.size - 1).astype(np.int64)
            return indices
        mean, log_std = self._mean_log_std(head)
        noise = rng.standard_normal(mean.shape).astype(np.float32)
        action: np.ndarray = (mean + noise * np.exp(log_std)).astype(np.float32)
        return action

    def mode(self, obs: np.ndarray) -> np.ndarray:
        """Evaluation actions: the argmax logit when discrete, the mean otherwise."""
        head = self._head(obs)
        if self.action.kind == "discrete":
            best: np.ndarray = head.argmax(axis=-1).astype(np.int64)
            return best
        return self._mean_log_std(head)[0].astype(np.float32)

    def log_prob(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """log pi(a|s) per row, in float64: the behaviour log-probabilities IMPALA's actors send with a rollout.

        Categorical: log softmax(logits)[a]; diagonal Gaussian: sum_i -(a_i - mu_i)^2 / (2 sigma_i^2)
        - log sigma_i - log(2 pi) / 2 (the unsquashed Gaussian the learner's ``DiagGaussian`` scores)."""
        head = self._head(obs).astype(np.float64)
        if self.action.kind == "discrete":
            shifted = head - head.max(axis=-1, keepdims=True)
            log_softmax = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
            return np.take_along_axis(log_softmax, actions.astype(np.int64)[:, None], axis=-1)[:, 0]
        mean, log_std = self._mean_log_std(head)
        log_std = np.broadcast_to(np.asarray(log_std, np.float64), mean.shape)
        z = (actions.astype(np.float64) - mean) * np.exp(-log_std)
        log_probs: np.ndarray = (-0.5 * z**2 - log_std - 0.5 * np.log(2.0 * np.pi)).sum(axis=-1)
        return log_probs


def frozen_copy(module: nn.Module) -> nn.Module:
    """A CPU copy of ``module`` for acting: no gradients, evaluation mode (dropout off, batch-norm statistics
    frozen), whatever happens to the learner's."""
    return copy.deepcopy(module).cpu().requires_grad_(False).eval()


def acting_parts(torso: nn.Module, activation: Activation) -> tuple[nn.Module | None, list[nn.Linear]]:
    """(frozen torch part, the Linear layers NumPy computes) of an actor's torso: the feature extractor in torch
    and its MLP in NumPy; all of it in torch when NumPy does not compute ``activation``."""
    if activation not in NUMPY_ACTIVATIONS:
        return frozen_copy(torso), []
    extractor, mlp = split_torso(torso)
    linears = [] if mlp is None else [m for m in mlp.children() if isinstance(m, nn.Linear)]
    return (None if extractor is None else frozen_copy(extractor)), linears


# ---- off-policy networks (DDPG, TD3, SAC) ---------------------------------------------------------
#
# Plain MLPs with torch's default initialisation, as SB3 and CleanRL build them for these algorithms
# (the orthogonal init above is the on-policy recipe). Every actor acts in [-1, 1]: the SpaceAdapter
# maps that range onto the env's bounds (env.rescale_actions).


class Actor(Protocol):
    """What environments query: ``sample`` while training (exploring), ``mode`` for evaluation.
    ``ActingPolicy`` (on-policy) and ``SquashedActingPolicy`` (off-policy) both are one."""

    def sample(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Exploring actions for a batch of observations, drawn from ``rng``."""

    def mode(self, obs: np.ndarray) -> np.ndarray:
        """Deterministic actions for a batch of observations, for evaluation."""


def plain_mlp(in_dim: int, hidden_sizes: tuple[int, ...], out_dim: int, activation: Activation) -> nn.Sequential:
    """Linear + activation layers, then a linear output layer; torch's default initialisation."""
    layers: list[nn.Module] = []
    for size in hidden_sizes:
        layers += [nn.Linear(in_dim, size), activation_layer(activation)]
        in_dim = size
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


def off_policy_extractor(
    obs_shape: int | ObsLayout, torso: str | None, torso_kwargs: dict[str, Any]
) -> tuple[nn.Module | None, int]:
    """(feature extractor, its width) before an off-policy MLP: none for a vector (the MLP takes it whole), the
    Dict encoders or the custom ``torso`` for a layout."""
    if isinstance(obs_shape, int):
        return None, obs_shape
    extractor = DictEncoder(obs_shape) if torso is None else CustomTorso(obs_shape, torso, torso_kwargs)
    return extractor, extractor.features_dim


def _features(extractor: nn.Module | None, obs: torch.Tensor) -> torch.Tensor:
    return obs if extractor is None else extractor(obs)


class QNetworks(nn.Module):
    """``count`` independent critics Q_i(s, a) = MLP_i([f(s), a]) (1 for DDPG, 2 for TD3 and SAC); f is the
    identity for a vector observation, else one feature extractor the critics share (SB3's critic: one
    extractor, ``n_critics`` heads).

    The critics' layers are stacked: layer j of every critic is one ``[count, in, out]`` weight and one
    ``[count, 1, out]`` bias, and h_j = act(h_{j-1} @ W_j + b_j) runs for all critics as one batched product
    (``torch.baddbmm``). The arithmetic is that of ``count`` separate MLPs (each critic's slice sees only
    its own weights), with a third of the operations: on a CPU, at batch 256, per-operation overhead is a
    large part of a gradient step. The initial weights are drawn as ``count`` ``nn.Linear`` MLPs (torch's
    default initialisation, in the same order as before stacking), and a checkpoint written with separate
    MLPs (``nets.<i>.<k>.weight``) still loads."""

    def __init__(
        self,
        obs_shape: int | ObsLayout,
        action_dim: int,
        hidden_sizes: tuple[int, ...],
        activation: Activation,
        count: int,
        torso: str | None = None,
        torso_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.extractor, width = off_policy_extractor(obs_shape, torso, torso_kwargs or {})
        self.count = count
        nets = [plain_mlp(width + action_dim, hidden_sizes, 1, activation) for _ in range(count)]
        per_net = [[m for m in net if isinstance(m, nn.Linear)] for net in nets]
        # weight j: [count, in, out] (x @ W, the transpose of nn.Linear's [out, in]); bias j: [count, 1, out]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([layers[j].weight.detach().T for layers in per_net]).contiguous())
            for j in range(len(per_net[0]))
        )
        self.biases = nn.ParameterList(
            nn.Parameter(torch.stack([layers[j].bias.detach()[None, :] for layers in per_net]).contiguous())
            for j in range(len(per_net[0]))
        )
        self.activation = activation_layer(activation)
        self.register_load_state_dict_pre_hook(_stack_separate_critics)  # type: ignore[no-untyped-call]  # torch's stub

    def stacked(self, obs: torch.Tensor, actions: torch.Tensor, detach_weights: bool = False) -> torch.Tensor:
        """Q_i(s, a) of every critic as one ``[count, N]`` tensor. ``detach_weights``: no gradient reaches the
        critics' weights (an actor's loss), only the inputs."""
        joint = torch.cat([_features(self.extractor, obs), actions], dim=-1)
        hidden = joint.expand(self.count, *joint.shape)
        last = len(self.weights) - 1
        for j, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            if detach_weights:
                weight, bias = weight.detach(), bias.detach()
            hidden = torch.baddbmm(bias, hidden, weight)
            if j < last:
                hidden = self.activation(hidden)
        return hidden.squeeze(-1)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> list[torch.Tensor]:
        """[Q_1(s, a), ..., Q_count(s, a)], each of shape [N]."""
        return list(self.stacked(obs, actions).unbind(0))

    def first(self, obs: torch.Tensor, actions: torch.Tensor, detach_weights: bool = False) -> torch.Tensor:
        """Q_1(s, a) alone (what drives DDPG's and TD3's actor): ``[N]``; ``detach_weights`` as ``stacked``."""
        hidden = torch.cat([_features(self.extractor, obs), actions], dim=-1)
        last = len(self.weights) - 1
        for j, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            if detach_weights:
                weight, bias = weight.detach(), bias.detach()
            hidden = torch.addmm(bias[0], hidden, weight[0])
            if j < last:
                hidden = self.activation(hidden)
        return hidden.squeeze(-1)


def _stack_separate_critics(
    module: nn.Module, state_dict: dict[str, torch.Tensor], prefix: str, *args: Any, **kwargs: Any
) -> None:
    """A load-state-dict pre-hook: rewrites the separate critics' keys of earlier checkpoints
    (``nets.<critic>.<position in the Sequential>.weight`` / ``.bias``, nn.Linear layout) as the stacked ones."""
    old = sorted(key for key in state_dict if key.startswith(prefix + "nets."))
    if not old:
        return
    # nets.<i>.<k>.<weight|bias>: group the Linear layers of each critic by their position k
    layers: dict[int, dict[int, dict[str, torch.Tensor]]] = {}
    for key in old:
        critic, index, name = key[len(prefix) + len("nets.") :].split(".")
        layers.setdefault(int(critic), {}).setdefault(int(index), {})[name] = state_dict.pop(key)
    critics = [layers[i] for i in sorted(layers)]
    for j, position in enumerate(sorted(critics[0])):
        state_dict[f"{prefix}weights.{j}"] = torch.stack([c[position]["weight"].T for c in critics]).contiguous()
        state_dict[f"{prefix}biases.{j}"] = torch.stack([c[position]["bias"][None, :] for c in critics]).contiguous()


class DeterministicActor(nn.Module):
    """mu(s) = tanh(MLP(f(s))) in [-1, 1] (DDPG, TD3); f: ``off_policy_extractor``."""

    def __init__(
        self,
        obs_shape: int | ObsLayout,
        action_dim: int,
        hidden_sizes: tuple[int, ...],
        activation: Activation,
        torso: str | None = None,
        torso_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.activation = activation
        self.extractor, width = off_policy_extractor(obs_shape, torso, torso_kwargs or {})
        self.net = plain_mlp(width, hidden_sizes, action_dim, activation)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """mu(s) = tanh(MLP(f(s)))."""
        return torch.tanh(self.net(_features(self.extractor, obs)))

    def acting_policy(self, noise: ExplorationNoise) -> SquashedActingPolicy:
        """The actor as NumPy arrays (its extractor, or all but the last layer for an activation NumPy does not
        compute, as a frozen torch copy), with ``noise`` added when sampling."""
        *hidden, last = list(self.net)
        assert isinstance(last, nn.Linear)
        body = nn.Sequential(*hidden)
        torso = body if self.extractor is None else nn.Sequential(self.extractor, *hidden)
        torch_torso, linears = _squashed_parts(self.extractor, body, torso, self.activation)
        return SquashedActingPolicy(
            [_numpy_layer(layer) for layer in linears],
            _numpy_layer(last),
            self.activation,
            noise=noise,
            torch_torso=torch_torso,
        )


def _squashed_parts(
    extractor: nn.Module | None, mlp: nn.Sequential, whole: nn.Module, activation: Activation
) -> tuple[nn.Module | None, list[nn.Linear]]:
    """(frozen torch part, NumPy Linear layers) of an off-policy actor's torso (see ``acting_parts``)."""
    if activation not in NUMPY_ACTIVATIONS:
        return frozen_copy(whole), []
    linears = [m for m in mlp if isinstance(m, nn.Linear)]
    return (None if extractor is None else frozen_copy(extractor)), linears


class SquashedGaussianActor(nn.Module):
    """a = tanh(u), u ~ N(mean(s), std(s)^2) (SAC): one torso, a mean head and a log-std head, the
    log-std clamped to ``LOG_STD_BOUNDS`` (SB3's [-20, 2]). Deterministic action: tanh(mean(s)). The torso
    starts with the feature extractor f of ``off_policy_extractor`` where there is one."""

    def __init__(
        self,
        obs_shape: int | ObsLayout,
        action_dim: int,
        hidden_sizes: tuple[int, ...],
        activation: Activation,
        torso: str | None = None,
        torso_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.activation = activation
        self.extractor, width = off_policy_extractor(obs_shape, torso, torso_kwargs or {})
        self.torso = plain_mlp(width, hidden_sizes[:-1], hidden_sizes[-1], activation)
        self.torso.append(activation_layer(activation))
        self.mean = nn.Linear(hidden_sizes[-1], action_dim)
        self.log_std = nn.Linear(hidden_sizes[-1], action_dim)

    def forward(self, obs: torch.Tensor) -> TanhGaussian:
        """The action distribution tanh(N(mean(s), std(s)^2)), its log-std clamped to ``LOG_STD_BOUNDS``."""
        features = self.torso(_features(self.extractor, obs))
        return TanhGaussian(self.mean(features), self.log_std(features).clamp(*LOG_STD_BOUNDS))

    def acting_policy(self) -> SquashedActingPolicy:
        """The actor as NumPy arrays (torso, mean head and log-std head; the extractor, or the whole torso for an
        activation NumPy does not compute, as a frozen torch copy)."""
        whole = self.torso if self.extractor is None else nn.Sequential(self.extractor, *self.torso)
        torch_torso, linears = _squashed_parts(self.extractor, self.torso, whole, self.activation)
        return SquashedActingPolicy(
            [_numpy_layer(layer) for layer in linears],
            _numpy_layer(self.mean),
            self.activation,
            log_std_head=_numpy_layer(self.log_std),
            torch_torso=torch_torso,
        )


def _numpy_layer(layer: nn.Linear) -> tuple[np.ndarray, np.ndarray]:
    # transposed so a batch [B, in] multiplies as obs @ W
    return (layer.weight.detach().cpu().numpy().T.copy(), layer.bias.detach().cpu().numpy().copy())


def _live_layer(layer: nn.Linear) -> tuple[np.ndarray, np.ndarray]:
    # views of a CPU layer's parameters, no copy: the optimizer's in-place steps show through (W^T is a strided
    # view, which NumPy's matmul hands to BLAS as a transposed operand)
    return (layer.weight.detach().numpy().T, layer.bias.detach().numpy())


def live_squashed_policy(
    actor: DeterministicActor | SquashedGaussianActor, noise: ExplorationNoise | None = None
) -> SquashedActingPolicy | None:
    """The actor's ``SquashedActingPolicy`` on VIEWS of its parameters: it acts with the current weights after
    every optimizer step without being rebuilt (``acting_policy`` copies every array: ~0.2 ms, once per env step
    of an off-policy loop here). None where it cannot be live: parameters off the CPU, a feature extractor or an
    activation NumPy does not compute (those parts would be frozen torch copies). Only for a loop that acts and
    learns in turn: a policy handed out (evaluation, deployment) must be ``acting_policy``'s snapshot."""
    if actor.extractor is not None or actor.activation not in NUMPY_ACTIVATIONS:
        return None
    if any(parameter.device.type != "cpu" for parameter in actor.parameters()):
        return None
    if isinstance(actor, DeterministicActor):
        layers = [m for m in actor.net if isinstance(m, nn.Linear)]
        return SquashedActingPolicy(
            [_live_layer(layer) for layer in layers[:-1]], _live_layer(layers[-1]), actor.activation, noise=noise
        )
    return SquashedActingPolicy(
        [_live_layer(m) for m in actor.torso if isinstance(m, nn.Linear)],
        _live_layer(actor.mean),
        actor.activation,
        log_std_head=_live_layer(actor.log_std),
    )


class ExplorationNoise:
    """Noise added to a deterministic actor's action while training, in action units of [-1, 1].

    ``gaussian``: eps ~ N(0, sigma^2) per step (TD3 paper, SB3 zoo). ``ornstein_uhlenbeck`` (DDPG
    paper): x <- x + theta (0 - x) dt + sigma sqrt(dt) N(0, 1), one process per env and action
    dimension; its state is checkpointed (``state``/``load``). ``none``: no noise."""

    def __init__(
        self,
        kind: Literal["gaussian", "ornstein_uhlenbeck", "none"],
        sigma: float,
        theta: float = 0.15,
        dt: float = 1e-2,
    ) -> None:
        self.kind = kind
        self.sigma = sigma
        self.theta = theta
        self.dt = dt
        self.process: np.ndarray | None = None  # OU state [num_envs, action_dim]

    def __call__(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        if self.kind == "none":
            return np.zeros(shape, np.float32)
        draw = rng.standard_normal(shape).astype(np.float32)
        if self.kind == "gaussian":
            scaled: np.ndarray = self.sigma * draw
            return scaled
        if self.process is None or self.process.shape != shape:
            self.process = np.zeros(shape, np.float32)
        process: np.ndarray = (
            self.process - self.theta * self.process * self.dt + self.sigma * np.sqrt(self.dt) * draw
        ).astype(np.float32)
        self.process = process.copy()  # the caller may change the returned array in place
        return process

    def end_episodes(self, done: np.ndarray) -> None:
        """Restart the OU process of the envs whose episode ended (``done``: [num_envs] bool), as SB3
        does: a new episode starts without the previous one's correlated drift."""
        if self.process is not None and done.any():
            self.process[done] = 0.0

    def state(self) -> list[list[float]] | None:
        """The Ornstein-Uhlenbeck process's current values, for the checkpoint (None when there are none)."""
        return None if self.process is None else self.process.tolist()

    def load(self, state: list[list[float]] | None) -> None:
        """Restores what ``state`` returned."""
        self.process = None if state is None else np.asarray(state, np.float32)


class SquashedActingPolicy:
    """An off-policy actor as NumPy arrays (see ``ActingPolicy`` for why NumPy).

    Without ``log_std_head`` (DDPG, TD3): mode = tanh(head(s)), sample = clip(mode + noise, -1, 1).
    With it (SAC): mode = tanh(mean(s)), sample = tanh(mean + std * N(0, 1))."""

    def __init__(
        self,
        layers: list[tuple[np.ndarray, np.ndarray]],
        head: tuple[np.ndarray, np.ndarray],
        activation: Activation,
        log_std_head: tuple[np.ndarray, np.ndarray] | None = None,
        noise: ExplorationNoise | None = None,
        torch_torso: nn.Module | None = None,
    ) -> None:
        self.layers = layers
        self.head = head
        self.log_std_head = log_std_head
        self.activation_name = activation  # what pgrad.export writes into the graph
        self.activation = NUMPY_ACTIVATIONS.get(activation, _relu)  # (unused without NumPy layers)
        self.noise = noise
        self.torch_torso = torch_torso

    def _features(self, obs: np.ndarray) -> np.ndarray:
        x = obs
        if self.torch_torso is not None:
            with torch.no_grad():
                x = self.torch_torso(torch.from_numpy(np.ascontiguousarray(obs, np.float32))).numpy()
        for weight, bias in self.layers:
            x = self.activation(x @ weight + bias)
        return x

    def mode(self, obs: np.ndarray) -> np.ndarray:
        """tanh(head(s)): the deterministic action."""
        features = self._features(obs)
        action: np.ndarray = np.tanh(features @ self.head[0] + self.head[1]).astype(np.float32)
        return action

    def sample(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Without a log-std head, clip(tanh(head(s)) + noise, -1, 1) (no noise: the mode); with one, tanh(mean + std
        x N(0, 1))."""
        features = self._features(obs)
        mean = features @ self.head[0] + self.head[1]
        if self.log_std_head is None:
            action = np.tanh(mean)
            if self.noise is not None:
                action = np.clip(action + self.noise(action.shape, rng), -1.0, 1.0)
            noisy: np.ndarray = action.astype(np.float32)
            return noisy
        log_std = np.clip(features @ self.log_std_head[0] + self.log_std_head[1], *LOG_STD_BOUNDS)
        noise = rng.standard_normal(mean.shape).astype(np.float32)
        squashed: np.ndarray = np.tanh(mean + np.exp(log_std) * noise).astype(np.float32)
        return squashed

    def log_prob(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """log pi(a|s) per row, in float64, of squashed actions a = tanh(u) (SAC's actor; the behaviour
        log-probabilities of SAC's Retrace target): the learner's ``TanhGaussian.log_prob`` on the same actions,
        u = atanh(a clamped to [-1 + 1e-6, 1 - 1e-6]), log N(u; mean, std^2) - sum_i log(1 - tanh(u_i)^2)."""
        if self.log_std_head is None:
            raise ValueError("a deterministic actor's noisy actions have no log-probability")
        features = self._features(obs)
        mean = (features @ self.head[0] + self.head[1]).astype(np.float64)
        log_std = np.clip(features @ self.log_std_head[0] + self.log_std_head[1], *LOG_STD_BOUNDS).astype(np.float64)
        pre_tanh = np.arctanh(np.clip(np.asarray(actions, np.float32), -1.0 + 1e-6, 1.0 - 1e-6).astype(np.float64))
        z = (pre_tanh - mean) * np.exp(-log_std)
        gaussian = -0.5 * z**2 - log_std - 0.5 * np.log(2.0 * np.pi)
        log_det = 2.0 * (np.log(2.0) - pre_tanh - np.logaddexp(0.0, -2.0 * pre_tanh))  # log(1 - tanh(u)^2), stable
        log_probs: np.ndarray = (gaussian - log_det).sum(axis=-1)
        return log_probs
