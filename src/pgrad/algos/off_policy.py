"""What DDPG, TD3 and SAC share, as plain functions and one config section (no base class).

- ``QNetworkConfig``: their ``network`` section (``pgrad.config.OffPolicyLoopConfig`` is their ``loop``
  section: the replay buffer and the schedule of ``pgrad.runners.off_policy``);
- the targets and losses, pure functions of tensors with the equation in each docstring;
- Polyak averaging of target networks, the learning-rate scale (their optimizer step is
  ``pgrad.algos.common.optimizer_step``, without clipping).

Targets are written with ``terminated`` only: a transition cut by a time limit (truncated) still
bootstraps from Q(s', .), s' being its true final observation (see ``pgrad.replay``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

import torch
from torch import nn

from pgrad import metric_names as names
from pgrad.algos.common import make_optimizer, scheduled_learning_rate
from pgrad.algos.contract import UpdateContext
from pgrad.config import (
    MAX_LAYER_WIDTH,
    Activation,
    Checked,
    EnvConfig,
    OptimizerConfig,
    check_torso,
    class_entry_point,
    param,
)
from pgrad.errors import ConfigError
from pgrad.estimators import td_targets_torch
from pgrad.replay import PRIORITY_KEY, TransitionBatch


@dataclass(frozen=True)
class QNetworkConfig(Checked):
    """The actor and critic MLPs of DDPG, TD3 and SAC: each algorithm's ``network`` section
    (``--set network.hidden_sizes=[64,64]``). Plain MLPs with torch's default initialisation, as SB3."""

    SECTION: ClassVar[str] = "network"

    hidden_sizes: tuple[int, ...] = param((256, 256), "hidden layers of the actor and of each critic")
    activation: Activation = param("relu", "hidden activation: a torch.nn class name or tanh/relu (SB3: ReLU)")
    torso: str | None = param(
        None,
        "custom feature extractor 'package.module:Class' (SB3's BaseFeaturesExtractor) before the actor's and the "
        "critics' MLPs (one for the actor, one the critics share)",
    )
    torso_kwargs: dict[str, Any] = param({}, "keyword arguments of network.torso's class")
    recurrent: Literal["lstm", "gru"] | None = param(
        None,
        "SAC: a recurrent core on the observations before the actor's and the critics' MLPs, trained on "
        "replayed sequences with stored states and burn-in (pgrad.algos.recurrent_sac); None: feed-forward",
    )
    recurrent_size: int = param(64, "units of each recurrent core (network.recurrent)")
    sequence_length: int = param(16, "recurrent: steps with a loss per replayed sequence, after loop.burn_in")

    def __post_init__(self) -> None:
        """A class given as ``torso`` (Python API) is recorded as its 'module:Class' name, then every field is
        checked."""
        if isinstance(self.torso, type):
            object.__setattr__(self, "torso", class_entry_point(self.torso))
        super().__post_init__()

    def validate(self) -> None:
        """Checks hidden_sizes is a non-empty list of positive integers, and the torso (``check_torso``)."""
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            self._fail("hidden_sizes", "a non-empty list of positive integers")
        check_torso(self.torso, self.torso_kwargs)
        self.check_range("recurrent_size", 1, MAX_LAYER_WIDTH)
        self.check_range("sequence_length", 1, MAX_LAYER_WIDTH)
        if self.recurrent is not None and self.torso is not None:
            self._fail("torso", "null with network.recurrent (the recurrent core reads the flat observation)")


def check_off_policy_env(section: str, env: EnvConfig) -> None:
    """What the replay algorithms refuse in the env section, with the field named.

    Normalised observations or rewards would be stored in the buffer under the statistics of the
    moment and replayed later under others (SB3 stores raw values and normalises on sampling);
    pgrad does not implement that, so it refuses rather than learn from stale scales."""
    for name in ("norm_obs", "norm_reward"):
        if getattr(env, name):
            raise ConfigError(
                f"env.{name} must be false for {section} (the replay buffer stores raw values; running "
                f"normalisation would mix scales across the buffer); got true"
            )


# ---- targets and losses ----------------------------------------------------------------------


def twin_min(q_values: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """min_i Q_i over the critics: of a list of ``[N]`` tensors, or of one stacked ``[count, N]`` tensor
    (``QNetworks.stacked``); one critic is its own minimum."""
    if isinstance(q_values, torch.Tensor):
        return q_values.min(dim=0).values if q_values.shape[0] > 1 else q_values[0]
    return torch.stack(q_values).min(dim=0).values if len(q_values) > 1 else q_values[0]


def twin_min_target(
    rewards: torch.Tensor,
    terminated: torch.Tensor,
    next_qs: list[torch.Tensor] | torch.Tensor,
    gamma: float,
    next_log_prob: torch.Tensor | None = None,
    alpha: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    """y = r + gamma (1 - terminated) (min_i Q'_i(s', a') - alpha log pi(a'|s')) (TD3; SAC with the
    entropy term). With one critic, min_i is that critic (DDPG). ``next_qs``: a list of ``[N]`` tensors or
    one stacked ``[count, N]`` tensor."""
    next_q = twin_min(next_qs)
    if next_log_prob is not None:
        next_q = next_q - alpha * next_log_prob
    return td_targets_torch(rewards, next_q, terminated, gamma)


def smoothed_target_actions(
    target_actions: torch.Tensor, noise_std: float, noise_clip: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """TD3's target policy smoothing: a' = clip(mu'(s') + clip(eps, -c, c), -1, 1), eps ~ N(0, sigma^2)."""
    noise = torch.randn(
        target_actions.shape, generator=generator, dtype=target_actions.dtype, device=target_actions.device
    )
    noise = (noise * noise_std).clamp(-noise_clip, noise_clip)
    return (target_actions + noise).clamp(-1.0, 1.0)


def critic_loss(
    q_values: list[torch.Tensor] | torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """L_Q = sum_i E[(Q_i(s, a) - y)^2] (y carries no gradient); ``q_values`` a list of ``[N]`` tensors or one
    stacked ``[count, N]`` tensor (then one mean per row, summed: the same sum). With prioritised replay's
    importance weights L_Q = sum_i E[w (Q_i(s, a) - y)^2], which undoes the bias of the non-uniform draw (fully at
    beta = 1)."""
    if isinstance(q_values, torch.Tensor):
        squared = (q_values - target) ** 2
        return torch.mean(squared if weights is None else weights * squared, dim=-1).sum()
    if weights is None:
        return sum((torch.mean((q - target) ** 2) for q in q_values), torch.zeros((), device=target.device))
    return sum((torch.mean(weights * (q - target) ** 2) for q in q_values), torch.zeros((), device=target.device))


def replay_priorities(
    batch: TransitionBatch, q_values: list[torch.Tensor] | torch.Tensor, target: torch.Tensor
) -> dict[str, Any]:
    """For a prioritised batch, ``{PRIORITY_KEY: max_i |Q_i(s, a) - y|}`` (the larger of the twin critics' TD
    errors, as Fujimoto et al.'s LAP), which the loop turns into the rows' new priorities; nothing otherwise."""
    if batch.indices is None:
        return {}
    stacked = q_values if isinstance(q_values, torch.Tensor) else torch.stack(list(q_values))
    return {PRIORITY_KEY: (stacked.detach() - target).abs().max(dim=0).values}


def sac_actor_loss(
    q_values: list[torch.Tensor] | torch.Tensor, log_prob: torch.Tensor, alpha: float | torch.Tensor
) -> torch.Tensor:
    """L_pi = E[alpha log pi(a~|s) - min_i Q_i(s, a~)], a~ = tanh(mean + std eps) reparameterised; ``q_values`` a
    list of ``[N]`` tensors or one stacked ``[count, N]`` tensor."""
    return torch.mean(alpha * log_prob - twin_min(q_values))


def temperature_loss(log_alpha: torch.Tensor, log_prob: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """L_alpha = -E[log alpha (log pi(a~|s) + H_target)] (log pi detached), as SB3.

    dL/dlog alpha = E[-log pi] - H_target = (entropy estimate) - (target): gradient descent lowers alpha
    while the policy's entropy is above the target and raises it while below. Learning log alpha
    rather than alpha keeps alpha positive."""
    return -torch.mean(log_alpha * (log_prob.detach() + target_entropy))


def deterministic_actor_loss(q_value: torch.Tensor) -> torch.Tensor:
    """L_mu = -E[Q_1(s, mu(s))] (DDPG, TD3: only the first critic drives the actor)."""
    return -torch.mean(q_value)


# ---- target networks, learning rates ------------------------------------------------


def polyak_update(source: nn.Module, target: nn.Module, tau: float) -> None:
    """theta' <- tau theta + (1 - tau) theta' for every parameter, in place (one fused lerp)."""
    with torch.no_grad():
        torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def frozen_copy(module: ModuleT) -> ModuleT:
    """A target network: a copy of ``module`` that no optimizer owns and autograd ignores."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


def make_optimizers(config: OptimizerConfig, *parameter_groups: list[nn.Parameter]) -> list[torch.optim.Optimizer]:
    """One optimizer per parameter group (actor, critics, temperature), all from the ``optimizer`` section."""
    return [make_optimizer(parameters, config) for parameters in parameter_groups]


def schedule_learning_rates(
    optimizers: list[torch.optim.Optimizer], config: OptimizerConfig, context: UpdateContext
) -> float:
    """lr = learning_rate x (1 - progress if anneal_lr) x context.lr_scale on every optimizer; returns it."""
    rate = 0.0
    for optimizer in optimizers:
        rate = scheduled_learning_rate(optimizer, config, context)
    return rate


def q_statistics(q_values: list[torch.Tensor] | torch.Tensor, target: torch.Tensor) -> dict[str, Any]:
    """Q mean/min/max over the batch (first critic) and the mean absolute TD error |Q_1 - y|."""
    q = q_values[0].detach()
    return {
        names.Q_MEAN: q.mean(),
        names.Q_MIN: q.min(),
        names.Q_MAX: q.max(),
        names.TD_ERROR: (q - target).abs().mean(),
        "q/target_mean": target.mean(),
    }
