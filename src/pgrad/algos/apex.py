"""APE-X (Horgan et al., 2018) for the deterministic actor-critics: its config section and its pure pieces.

APE-X separates acting from learning: ``apex.actors`` actors, each with its own copy of the learner's networks
(refreshed every ``apex.refresh_every`` of its env steps) and its own exploration noise scale, collect blocks of
``apex.local_batch`` steps, compute each transition's initial priority |delta| with their copy of the critic and
send block and priorities to the prioritised replay; the learner samples prioritised batches and sends the new
|TD errors| back as priorities. The loop is ``pgrad.runners.apex`` (the off-policy loop with the actors as its
collector); this module holds what is pure:

- ``ApexConfig``: the ``apex`` section, and the ``apex_td3`` / ``apex_ddpg`` / ``apex_d4pg`` configs, which are
  the learner's config plus that section and prioritised replay by default (a config, not a new learner: the
  learner is TD3, DDPG or D4PG unchanged);
- ``noise_scales``: APE-X's per-actor exploration schedule, eps_i = eps^(1 + alpha i / (N - 1)), here the
  standard deviation of each actor's Gaussian action noise in [-1, 1] action units;
- ``initial_priorities``: the |TD error| the learner's own update would compute on a batch (the same formula, so
  a transition enters the replay with the priority the learner would give it).

SAC is not offered: APE-X's schedule scales a deterministic actor's noise, and SAC's exploration is its learned
entropy, not a scale the actors could vary.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import torch

from pgrad.algos.d4pg import D4PG, D4PGConfig, categorical_cross_entropy
from pgrad.algos.ddpg import DDPG, DDPGConfig
from pgrad.algos.off_policy import QNetworkConfig, check_off_policy_env, replay_priorities
from pgrad.algos.td3 import TD3, TD3Config
from pgrad.config import MAX_RAY_WORKERS, MAX_WINDOW, Checked, EnvConfig, OffPolicyLoopConfig, param
from pgrad.errors import ConfigError
from pgrad.replay import PRIORITY_KEY, TransitionBatch

# the learners APE-X drives: deterministic actors with an exploration noise scale and a critic to prioritise with
ApexLearner = TD3 | DDPG | D4PG


@dataclass(frozen=True)
class ApexConfig(Checked):
    """The actors of APE-X: how many, their noise scales, how often they fetch weights, how much they send."""

    SECTION: ClassVar[str] = "apex"

    actors: int = param(2, "actors, each with env.num_envs envs, its own noise scale and its own copy of the weights")
    noise_eps: float = param(
        0.4, "actor i's Gaussian noise std is noise_eps^(1 + noise_alpha i / (actors - 1)) (APE-X: eps 0.4)"
    )
    noise_alpha: float = param(7.0, "exponent spread of the actors' noise scales (APE-X: alpha 7)")
    refresh_every: int = param(
        400, "env steps of an actor (per env) between two copies of the learner's weights (APE-X: 400 frames)"
    )
    local_batch: int = param(
        50, "env steps (per env) an actor collects, prioritises and sends as one block (APE-X: 50)"
    )

    def validate(self) -> None:
        """Checks the actor count, the noise schedule (eps in (0, 1], alpha >= 0) and the block and refresh sizes."""
        self.check_range("actors", 1, MAX_RAY_WORKERS)
        self.check_range("noise_eps", 0, 1, low_open=True)
        self.check_range("noise_alpha", 0, 100)
        self.check_range("refresh_every", 1, MAX_WINDOW)
        self.check_range("local_batch", 1, MAX_WINDOW)


def noise_scales(actors: int, eps: float, alpha: float) -> list[float]:
    """APE-X's per-actor exploration: eps_i = eps^(1 + alpha i / (N - 1)) for i = 0 .. N - 1 (one actor: eps).

    Actor 0 explores most (eps), the last least (eps^(1 + alpha)); the scales are geometric in between."""
    if actors == 1:
        return [eps]
    return [eps ** (1.0 + alpha * i / (actors - 1)) for i in range(actors)]


def check_apex(section: str, loop: OffPolicyLoopConfig, network: QNetworkConfig) -> None:
    """APE-X's actors send priorities: the replay must be prioritised; and their networks are feed-forward (one
    line naming the field otherwise)."""
    if loop.replay != "prioritized":
        raise ConfigError(
            f"{section}.loop.replay must be 'prioritized' (APE-X's actors send initial priorities); got {loop.replay!r}"
        )
    if network.recurrent is not None:
        raise ConfigError(
            f"{section}.network.recurrent must be null (APE-X's actors and learner are feed-forward; recurrent "
            f"off-policy: sac); got {network.recurrent!r}"
        )


@dataclass(frozen=True)
class ApexTD3Config(TD3Config):
    """TD3 with APE-X's actors (``apex``) and prioritised replay (one level: TD3's fields plus one section)."""

    SECTION: ClassVar[str] = "apex_td3"

    loop: OffPolicyLoopConfig = param(
        OffPolicyLoopConfig(replay="prioritized"),
        "replay buffer and schedule: prioritized (the actors send priorities)",
    )
    apex: ApexConfig = param(ApexConfig(), "APE-X's actors: count, noise scales, weight refresh, block size")

    def validate(self) -> None:
        """TD3's checks, and prioritised replay."""
        super().validate()
        check_apex(self.SECTION, self.loop, self.network)


@dataclass(frozen=True)
class ApexDDPGConfig(DDPGConfig):
    """DDPG with APE-X's actors (``apex``) and prioritised replay (one level: DDPG's fields plus one section)."""

    SECTION: ClassVar[str] = "apex_ddpg"

    loop: OffPolicyLoopConfig = param(
        OffPolicyLoopConfig(replay="prioritized"),
        "replay buffer and schedule: prioritized (the actors send priorities)",
    )
    apex: ApexConfig = param(ApexConfig(), "APE-X's actors: count, noise scales, weight refresh, block size")

    def validate(self) -> None:
        """DDPG's checks, and prioritised replay."""
        super().validate()
        check_apex(self.SECTION, self.loop, self.network)


@dataclass(frozen=True)
class ApexD4PGConfig(D4PGConfig):
    """D4PG with APE-X's actors (``apex``): the paper's distributed D4PG (one level: D4PG's fields plus one section)."""

    SECTION: ClassVar[str] = "apex_d4pg"

    apex: ApexConfig = param(ApexConfig(), "APE-X's actors: count, noise scales, weight refresh, block size")

    def validate(self) -> None:
        """D4PG's checks, and prioritised replay."""
        super().validate()
        check_apex(self.SECTION, self.loop, self.network)

    def check_with_env(self, env: EnvConfig) -> None:
        """The env suits an off-policy algorithm; the one-env rule of n-step windows is per actor, checked where the
        actors are built (``pgrad.runners.apex``), since here ``env.num_envs`` may count every Ray worker's envs."""
        check_off_policy_env(self.SECTION, env)


def initial_priorities(learner: ApexLearner, batch: TransitionBatch) -> np.ndarray:
    """|delta| per transition, by the formula the learner's ``update`` hands back as ``PRIORITY_KEY``:
    max_i |Q_i(s, a) - y| for TD3 and DDPG (y their own target), the categorical cross-entropy to the projected
    n-step target for D4PG. No gradient, no step: an actor calls it with its copy of the learner's networks."""
    with torch.no_grad():
        if isinstance(learner, D4PG):
            errors = categorical_cross_entropy(
                learner.critic(batch.obs, batch.actions), learner.target_distribution(batch)
            )
        else:
            critics = learner.critics if isinstance(learner, TD3) else learner.critic
            q_values = critics.stacked(batch.obs, batch.actions)
            rows = np.arange(len(batch))
            errors = replay_priorities(replace(batch, indices=rows), q_values, learner.critic_target(batch))[
                PRIORITY_KEY
            ]
    out: np.ndarray = errors.detach().cpu().numpy().astype(np.float64)
    return out
