"""Asynchronous advantage actor-critic, A3C (Mnih et al., 2016), on one machine.

``num_workers`` processes each own an environment copy (``env.num_envs`` sub-envs per worker)
and a local copy of the network. A worker repeatedly copies the shared parameters into its local
network, collects a short ``num_steps`` rollout, computes the A2C loss gradient on its local
network, and applies that gradient to the shared parameters with a shared optimizer, without
waiting for the other workers (Hogwild-style: Recht et al., 2011). The loss is A2C's
(``pgrad.algos.common.actor_critic_loss``: policy gradient with n-step/GAE advantages, value regression on
the detached n-step return, entropy bonus), then global gradient clipping. Parameters and optimizer
statistics live in shared memory, so every worker's step moves the same model; that memory is the
CPU's, so A3C runs on ``run.device: cpu`` only. Rollouts come from ``pgrad.rollout.RolloutCollector``
and batches from ``pgrad.rollout.rollout_to_batch``, as for the synchronous algorithms: the
Gymnasium autoreset step is masked out of the loss, and a truncated episode bootstraps from
V(final observation).

The main process does not learn: it is the coordinator (``A3CRunner``). It starts the workers,
reads their reports from a queue, writes ``metrics.jsonl`` / ``events.jsonl`` with the same
names as the synchronous algorithms, saves checkpoints in the same format, and stops the run at
``run.total_steps`` (a shared step counter), on Ctrl-C/SIGTERM (workers stop after their current
update, then a checkpoint is written), or when a worker raises, dies or stops reporting (its
traceback or exit code is reported, the others are stopped, stragglers are terminated after
``shutdown_timeout``, a checkpoint is written and the run ends with ``TrainingHalted``, exit code 3).

The guard (``guard`` section) runs on every worker report, as on every update of the synchronous
loop: alert rules, periodic evaluation, checkpoints whose health mark later reports confirm, halts
on sustained non-finite gradients (a worker skips a non-finite step: the shared parameters and statistics stay as they
were), rollbacks that copy the last healthy state back into the shared tensors while the workers
are paused, and the drills of ``guard.inject``. A2C's loss has no probability ratio, so each worker
measures the KL of its own update (the shared policy just before vs just after its step, on its
batch's states) for the KL rule. Details in ``pgrad.runners.asynchronous`` and ``pgrad.runners.a3c_worker``.

Resume is not bit-exact, by nature: the order in which asynchronous gradients land is decided
by the OS scheduler. A checkpoint restores the model, the optimizer statistics, the step and
update counters, the episode history and the observation/reward normaliser statistics; worker
environments are re-seeded from (seed, worker, step) rather than restored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from pgrad import glossary
from pgrad.config import MAX_ASYNC_ENVS, MAX_WINDOW, Checked, EnvConfig, NetworkConfig, OptimizerConfig, param
from pgrad.errors import ConfigError
from pgrad.nets import ActingPolicy, ActionSpec, ActorCritic, ObsShape


@dataclass(frozen=True)
class A3CConfig(Checked):
    """A3C hyper-parameters. Defaults follow the A3C paper's n-step setting (t_max = 5, RMSprop)."""

    SECTION: ClassVar[str] = "a3c"

    num_workers: int = param(2, "asynchronous worker processes (each with its own env copy and local network)")
    num_steps: int = param(5, "steps per environment per worker update (t_max of the paper)")
    gamma: float = glossary.gamma(0.99)
    gae_lambda: float = glossary.gae_lambda(1.0, "1.0: the paper's n-step returns bootstrapped from V(s_T)")
    ent_coef: float = glossary.ent_coef(0.01)
    vf_coef: float = glossary.vf_coef(0.5)
    max_grad_norm: float = glossary.max_grad_norm(0.5, "applied to each worker's gradient")
    norm_adv: bool = glossary.norm_adv(False, "within each worker's batch")
    network: NetworkConfig = param(NetworkConfig(), "the actor-critic MLP")
    optimizer: OptimizerConfig = param(
        OptimizerConfig(kind="rmsprop", learning_rate=7e-4, eps=1e-5, rms_alpha=0.99),
        "the shared optimizer (its statistics live in shared memory): RMSprop, lr 7e-4, alpha 0.99, eps 1e-5",
    )
    report_every: int = param(20, "worker updates between two reports to the coordinator (one metrics row each)")
    shutdown_timeout: float = param(10.0, "seconds to wait for workers to stop before terminating them")
    stall_timeout: float = param(
        120.0, "seconds without a message (workers report every report_every updates) after which a worker is stuck"
    )
    fail_worker_at_step: int | None = param(
        None, "test/drill only: worker 0 raises once the shared step count reaches this (None: off)"
    )

    def validate(self) -> None:
        """Checks each hyper-parameter's range, timeouts included."""
        self.check_range("num_workers", 1, MAX_ASYNC_ENVS)
        self.check_range("num_steps", 1, MAX_WINDOW)
        self.check_range("gamma", 0, 1)
        self.check_range("gae_lambda", 0, 1)
        self.check_range("ent_coef", 0)
        self.check_range("vf_coef", 0)
        self.check_range("max_grad_norm", 0, low_open=True)
        self.check_range("report_every", 1, MAX_WINDOW)
        self.check_range("shutdown_timeout", 0, low_open=True)
        self.check_range("stall_timeout", 0, low_open=True)
        self.check_range("fail_worker_at_step", 0)

    def check_with_env(self, env: EnvConfig) -> None:
        """Refuses ``env.vectorization: async``: A3C's workers are already processes."""
        if env.vectorization == "async":
            raise ConfigError(
                "env.vectorization must be auto, sync or native for a3c (its workers are already processes); "
                "got 'async'"
            )


# ---- the shared optimizer --------------------------------------------------------------------


class SharedOptimizer:
    """RMSprop or Adam whose statistics live in shared memory and exist from the start.

    Why not ``torch.optim`` in the workers: torch creates optimizer state lazily, per process, at
    the first ``step`` (each worker would get private statistics), and constructing any
    ``torch.optim`` optimizer imports ``torch._dynamo``, about 3 s of CPU per spawned worker.
    The updates are torch's (tested against ``torch.optim.RMSprop`` / ``torch.optim.Adam``):

        RMSprop:  v <- alpha v + (1 - alpha) g^2;              p <- p - lr g / (sqrt(v) + eps)
        Adam:     m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;  t <- t + 1
                  p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

    State names and ``state_dict()`` layout are torch's, so ``pgrad.checkpoint.optimizer_to_parts``
    and ``optimizer_from_parts`` save and load it like any other optimizer. Workers step without a
    lock (Hogwild): concurrent updates of the same statistics may interleave.
    """

    def __init__(
        self,
        parameters: list[torch.nn.Parameter],
        config: OptimizerConfig,
        states: list[dict[str, torch.Tensor]] | None = None,
    ) -> None:
        self.parameters = parameters
        self.kind = config.kind
        self.hyper: dict[str, Any] = {"lr": config.learning_rate, "eps": config.eps}
        if self.kind == "rmsprop":
            self.hyper["alpha"] = config.rms_alpha
        else:
            self.hyper["betas"] = (0.9, 0.999)  # torch's defaults
        self.states = states if states is not None else [self._fresh_state(p) for p in parameters]
        if len(self.states) != len(parameters):
            raise ValueError(f"{len(parameters)} parameters but {len(self.states)} optimizer states")

    def _fresh_state(self, parameter: torch.Tensor) -> dict[str, torch.Tensor]:
        state = {"step": torch.zeros((), dtype=torch.float32)}
        if self.kind == "rmsprop":
            state["square_avg"] = torch.zeros_like(parameter)
        else:
            state["exp_avg"] = torch.zeros_like(parameter)
            state["exp_avg_sq"] = torch.zeros_like(parameter)
        return state

    def share_memory(self) -> list[dict[str, torch.Tensor]]:
        """Move every statistic into shared memory; returns the states to hand to the workers."""
        for state in self.states:
            for tensor in state.values():
                tensor.share_memory_()
        return self.states

    @torch.no_grad()
    def step(self, gradients: list[torch.Tensor | None], learning_rate: float) -> None:
        """Apply ``gradients`` (one per parameter, None for an unused one) to the parameters."""
        eps = self.hyper["eps"]
        for parameter, grad, state in zip(self.parameters, gradients, self.states, strict=True):
            if grad is None:
                continue
            state["step"] += 1
            if self.kind == "rmsprop":
                alpha = self.hyper["alpha"]
                square_avg = state["square_avg"].mul_(alpha).addcmul_(grad, grad, value=1.0 - alpha)
                parameter.addcdiv_(grad, square_avg.sqrt().add_(eps), value=-learning_rate)
            else:
                beta1, beta2 = self.hyper["betas"]
                step = float(state["step"])
                state["exp_avg"].lerp_(grad, 1.0 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1.0 - beta2**step)).add_(eps)
                parameter.addcdiv_(state["exp_avg"], denom, value=-learning_rate / (1.0 - beta1**step))

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state in torch's ``state_dict`` layout (per-parameter statistics and one param group), for
        checkpoints."""
        group = {**self.hyper, "params": list(range(len(self.parameters)))}
        return {"state": dict(enumerate(self.states)), "param_groups": [group]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Copy saved statistics into the existing (possibly shared) tensors."""
        saved = state_dict["state"]
        if sorted(saved) != list(range(len(self.parameters))):
            raise ValueError(f"optimizer state covers parameters {sorted(saved)}, not 0..{len(self.parameters) - 1}")
        for index, state in enumerate(self.states):
            if set(saved[index]) != set(state):
                raise ValueError(f"optimizer state {index} has {sorted(saved[index])}, expected {sorted(state)}")
            for key, tensor in state.items():
                tensor.copy_(torch.as_tensor(saved[index][key]).reshape(tensor.shape))


class A3C:
    """The learner's state: the shared actor-critic and its shared optimizer.

    This is what checkpoints and ``pgrad eval`` see (``modules()``, ``optimizers()``,
    ``acting_policy()``). Learning itself happens in the workers (``pgrad.runners.a3c_worker``),
    so A3C has no ``prepare``/``update`` and runs on ``A3CRunner``, not on ``pgrad.runners.on_policy.OnPolicyRunner``.
    """

    name = "a3c"

    def __init__(
        self, config: A3CConfig, obs_shape: ObsShape, action: ActionSpec, device: torch.device | str = "cpu"
    ) -> None:
        if torch.device(device).type != "cpu":
            raise ConfigError(
                "run.device must be 'cpu' for a3c (its workers share parameters in CPU shared memory); "
                f"got {str(device)!r}"
            )
        self.config = config
        self.model = build_model(config, obs_shape, action)
        self.optimizer = SharedOptimizer(list(self.model.parameters()), config.optimizer)

    @property
    def rollout_length(self) -> int:
        """Steps per env per rollout: ``num_steps``."""
        return self.config.num_steps

    @property
    def gamma(self) -> float:
        """The discount factor, from the config."""
        return self.config.gamma

    def acting_policy(self) -> ActingPolicy:
        """The model's acting policy (the loop samples actions from it)."""
        return self.model.acting_policy()

    def share_memory(self) -> list[dict[str, torch.Tensor]]:
        """Move parameters and optimizer statistics to shared memory (before workers start)."""
        self.model.share_memory()
        return self.optimizer.share_memory()

    def restore_in_place(self, model_state: dict[str, torch.Tensor], optimizer_state: dict[str, Any]) -> None:
        """Copy saved weights and optimizer statistics into the model's and optimizer's own tensors.

        What a guard rollback does: once ``share_memory`` has run, the workers hold these very
        tensors, so the restore must write into them (``copy_``), never swap in new ones.
        """
        own = self.model.state_dict()  # views of the parameters' storage
        if set(own) != set(model_state):
            raise ValueError(f"model state has {sorted(model_state)}, expected {sorted(own)}")
        with torch.no_grad():
            for name, tensor in own.items():
                tensor.copy_(model_state[name])
        self.optimizer.load_state_dict(optimizer_state)  # copies into the existing statistics

    def modules(self) -> dict[str, torch.nn.Module]:
        """The checkpoint contract: the networks saved and restored (the actor-critic model)."""
        return {"model": self.model}

    def optimizers(self) -> dict[str, Any]:
        """The checkpoint contract: the shared optimizer (it duck-types torch's ``state_dict``/``load_state_dict``)."""
        return {"optimizer": self.optimizer}  # duck-types torch's state_dict()/load_state_dict()

    def extra_state(self) -> dict[str, Any]:
        """The checkpoint contract: nothing beyond the networks and optimizers."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """The checkpoint contract: nothing to restore beyond the networks and optimizers."""
        pass


def build_model(config: A3CConfig, obs_shape: ObsShape, action: ActionSpec) -> ActorCritic:
    """The shared model and each worker's local copy: the same ``network`` section, on the CPU."""
    return ActorCritic.from_config(obs_shape, action, config.network)
