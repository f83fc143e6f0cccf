"""PPO on a causal language model (``pgrad lm ppo``): rollout -> score -> token rewards -> GAE -> epochs.

One update (InstructGPT's recipe; "The N implementation details of RLHF with PPO"):

1. ``batch_size / samples_per_prompt`` prompts (the digits task's, or a data set's rows drawn uniformly with
   replacement, each batch carrying its ``PromptRow``s for the reward), ``samples_per_prompt`` responses each
   (1 by default), sampled with a KV cache at ``temperature``.
2. Per response token, in ``minibatch_size`` chunks in rollout order, no gradient: log pi_old and the
   values (policy), log pi_ref (the frozen initial weights: the SFT model's with ``init_from``).
3. The reward of each response (``lm_ppo.reward``: the weighted sum of its terms, ``CombinedReward``, each
   term's mean logged as ``reward/<name>``); per-token reward
   r_t = -beta (log pi_old - log pi_ref) + score on the last real token.
4. GAE over tokens (gamma, lambda), returns = A + V, advantages whitened over the real tokens. With
   ``advantage: rloo`` or ``grpo`` instead: no critic, one advantage per response from its prompt's
   group of score - beta x KL (``losses.group_token_advantages``; Dr. GRPO's without the std division),
   and no value loss in step 5; with ``kl_penalty: loss`` (GRPO's default) the KL leaves the score and
   beta x k3(pi, ref) joins the per-token loss instead, aggregated as ``loss_type`` says
   (``losses.aggregate_token_loss``: token mean, GRPO's per-response mean, or Dr. GRPO's constant).
5. ``num_epochs`` passes of minibatch steps on the clipped surrogate + vf_coef x clipped value loss. The
   first pass takes the minibatches in the order and shapes of step 2, so its first minibatch sees a
   ratio of exactly 1 (logged as ``lm/first_ratio_deviation``, which must be 0).
6. The adaptive KL controller moves beta toward ``kl_target`` from the batch's mean KL.

The run folder, logs, checkpoints and Ctrl-C belong to ``RunContext``. A checkpoint (typed
``TrainState``, safetensors + JSON) holds policy, reference, optimizer, the KL coefficient, the torch
RNG and the guard's state with its healthy states, so a resume continues bit for bit (given the same
reward-model checkpoint: it is read again on resume).

The guard is the shared one (``pgrad.monitor.guard.Guard``), fed the rules that read this loop's metrics:
non-finite values and the per-update approx KL of the RL rules, and the language-model rules of
``pgrad.lm.alerts`` (KL to the reference past ``kl_alert``, reward hacking, length collapse or explosion;
critical with ``rollback_on_alert``). On a critical alert it rolls back to the newest confirmed healthy
learner state in memory (``HealthyStates``: policy with its value head, optimizer moments, KL
coefficient; healthy = no critical alert, approx KL under ``guard.kl_warning``, finite steps) with a
learning-rate cut; on reward hacking, to the newest one from before its evidence began (``window_states``).
A non-finite gradient step is skipped (``OptimizerGuard``) and a sustained run of them halts the run (exit
code 3). The drills of ``pgrad.faults`` act here too: ``lr_spike`` and ``nan_grad`` on
the update, ``reward_flip`` on the scores PPO learns from (the logged scores stay the true ones).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import Tensor

from pgrad import metric_names as names
from pgrad.algos.common import make_optimizer
from pgrad.checkpoint import (
    CheckpointStore,
    LearnerState,
    TrainState,
    check_rollback_states,
    load_modules,
    load_optimizers,
    read_train_state,
)
from pgrad.config import TrainConfig
from pgrad.errors import CheckpointError, ConfigError
from pgrad.lm.alerts import CHECK_SCORE, EVAL_CHECK_SCORE, HACKING_RULES, RM_DISAGREEMENT, AlertThresholds, lm_alerts
from pgrad.lm.build import (
    Task,
    add_lora,
    build_policy,
    build_tasks,
    critic_from_reward_model,
    frozen_reference,
    model_label,
)
from pgrad.lm.config import ALGO, LMPPOConfig
from pgrad.lm.dataset import DatasetTask
from pgrad.lm.degeneration import degeneration_metrics
from pgrad.lm.evaluate import evaluate_policy, write_samples
from pgrad.lm.losses import (
    AdaptiveKLController,
    group_policy_loss,
    group_token_advantages,
    kl_k1,
    kl_k3,
    token_gae,
    token_rewards,
)
from pgrad.lm.model import (
    AdapterDisabled,
    PolicyWithValue,
    response_outputs,
    sample,
)
from pgrad.lm.precision import DeviceSetup
from pgrad.lm.reward import (
    CombinedReward,
    FunctionReward,
    LearnedReward,
    ResponseScorer,
    TrueScoreReward,
    VerifierReward,
)
from pgrad.lm.reward_spec import RewardTerm
from pgrad.lm.task import DigitsTask, PromptBatch
from pgrad.monitor.alerts import Alert, Level, grad_norm_rule, kl_rule, nonfinite_rule
from pgrad.monitor.guard import Action, Event, Halt, Rollback
from pgrad.monitor.recovery import parameters_finite, restore_captured
from pgrad.monitor.sinks import MetricSink, ProgressUnits, read_jsonl
from pgrad.numerics import clipped_surrogate, masked_mean, masked_whiten, value_clip_fraction, value_loss
from pgrad.runners import trunk
from pgrad.runners.context import TrainResult, resident_memory_mb
from pgrad.runners.lm_rm import load_reward_model
from pgrad.runners.lm_sft import load_sft_state


@dataclass(frozen=True)
class Rollout:
    """One batch of responses and everything the epochs need, per token [B, R] unless noted."""

    prompts: PromptBatch
    response: Tensor
    mask: Tensor  # float: 1 for real response tokens (EOS included)
    old_logprobs: Tensor
    ref_logprobs: Tensor
    old_values: Tensor
    advantages: Tensor
    returns: Tensor

    def rows(self, index: Tensor) -> Rollout:
        """The rollout restricted to the responses ``index`` selects (a minibatch)."""
        return Rollout(
            self.prompts.select(index),  # last_digit kept on the CPU
            self.response[index],
            self.mask[index],
            self.old_logprobs[index],
            self.ref_logprobs[index],
            self.old_values[index],
            self.advantages[index],
            self.returns[index],
        )


# the shared guard's rules that read this loop's metrics (the rest read environments' returns, critics' explained
# variance, replay Q values); the language-model rules come in as extra alerts (``guard_alerts``)
LM_GUARD_RULES = (nonfinite_rule, kl_rule, grad_norm_rule)
WINDOW_SLOT = "window_"  # checkpoint slots of the healthy states a reward-hacking window reaches back to


def guard_alerts(history: list[dict[str, Any]], limits: AlertThresholds, act: bool) -> list[Alert]:
    """The alerts of the newest row as the shared guard's ``Alert``s (``Guard.observe(extra_alerts=...)``).
    With ``act`` the reward-hacking rules (``HACKING_RULES``) are critical: the guard rolls back on them."""
    out = []
    for alert in lm_alerts(history, limits):
        critical = alert.kind.startswith("critical.") or (act and alert.rule in HACKING_RULES)
        level: Level = "critical" if critical else "warning"  # the rules here raise nothing milder
        out.append(Alert(level, alert.rule, alert.message, alert.metric, alert.value, alert.threshold, alert.evidence))
    return out


class LMLearner:
    """The learner as the guard's recovery helpers see it (``capture_learner``, ``restore_captured``): what a
    rollback restores. The policy with its value head, the optimizer moments and the KL coefficient; not the
    frozen reference, the step counters, the RNG or the guard's learning-rate scale (a rollback undoes
    learning, not experience). No normalisers: it is its own empty ``NormalizerOwner``."""

    def __init__(self, policy: PolicyWithValue, optimizer: torch.optim.Optimizer, kl: AdaptiveKLController) -> None:
        self.policy = policy
        self.optimizer = optimizer
        self.kl = kl

    def modules(self) -> dict[str, torch.nn.Module]:
        """The checkpoint contract: the policy (with its value head)."""
        return {"policy": self.policy}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The checkpoint contract: the policy's optimizer."""
        return {"policy": self.optimizer}

    def extra_state(self) -> dict[str, Any]:
        """The checkpoint contract: the KL coefficient's current value."""
        return {"kl_coef": self.kl.value}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """The checkpoint contract: restores the KL coefficient's value."""
        self.kl.value = float(state["kl_coef"])

    def normalizer_state(self) -> dict[str, Any]:
        """Empty: an LM run has no observation or reward normalisers."""
        return {}

    def load_normalizer_state(self, state: dict[str, Any]) -> None:
        """Nothing to restore: an LM run has no normalisers."""
        return None


def memory_metrics(device: torch.device) -> dict[str, float]:
    """Resident memory of the process, its peak so far (max RSS) and, on a GPU, the peak memory torch allocated
    there (MiB)."""
    out = {"perf/memory_mb": resident_memory_mb()}
    try:
        import resource

        out["perf/peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    except ImportError:  # not on Windows
        pass
    if device.type == "cuda":
        out["perf/cuda_peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


# a function term's source -> the Python object itself, given in-process (pgrad.lm.trainers): not imported
RewardFunctions = Mapping[str, Callable[..., Any]]


def build_term(
    term: RewardTerm,
    config: LMPPOConfig,
    task: Task,
    device: torch.device,
    reward_model: str | None = None,
    functions: RewardFunctions | None = None,
) -> ResponseScorer | VerifierReward | FunctionReward:
    """What computes one term of ``lm_ppo.reward``: the reward model (or ensemble; a 'pgrad lm rm' run or a
    sequence-classification model folder), the true score, a verifier or a Python function (imported here: trust
    is decided before a runner is built, ``refuse_untrusted_reward_code``; one in ``functions``, passed as an
    object, is used as it is). ``reward_model``: the folder a 'model' term loads (``lm_ppo.reward_model`` by
    default; ``check_reward_model`` for the check)."""
    if term.kind == "model":
        folder = reward_model or config.reward_model
        assert folder is not None  # LMPPOConfig.validate
        tokenizer = task.tokenizer if isinstance(task, DatasetTask) else None
        return load_reward_model(
            Path(folder),
            config.max_new_tokens,
            device,
            config.ensemble_combine,
            config.ensemble_k,
            tokenizer,
        )
    if term.kind == "true_score":
        assert isinstance(task, DigitsTask)  # LMPPOConfig.validate: the true score only on the digits task
        return TrueScoreReward(task)
    if term.kind == "verifier":
        return VerifierReward(term, task.column_names)
    return FunctionReward(term.source, (functions or {}).get(term.source))


def build_scorer(
    config: LMPPOConfig, task: Task, device: torch.device, functions: RewardFunctions | None = None
) -> CombinedReward:
    """The reward of a PPO run: the weighted sum of the terms of ``lm_ppo.reward`` (one term: its scores)."""
    terms = config.reward_terms
    return CombinedReward([(term, build_term(term, config, task, device, None, functions)) for term in terms], task)


def build_check(
    config: LMPPOConfig, task: Task, device: torch.device, functions: RewardFunctions | None = None
) -> CombinedReward | None:
    """The held-out check of a PPO run (``lm_ppo.check_reward``): scored beside the reward, never optimised; None
    without one."""
    if not config.check_terms:
        return None
    folder = config.check_reward_model
    terms = config.check_terms
    return CombinedReward([(term, build_term(term, config, task, device, folder, functions)) for term in terms], task)


# run.total_steps counts sampled responses; the progress line shows the reward's mean score of the last update
PPO_UNITS = ProgressUnits("responses", "lm/rm_score", "score", "8.3f")


class LMPPORunner:
    """``pgrad lm ppo`` / ``pgrad lm resume``: see the module docstring."""

    def __init__(
        self,
        config: TrainConfig,
        run_dir: Path,
        resume: bool = False,
        console: bool = True,
        overwrite: bool = False,
        reward_functions: RewardFunctions | None = None,
    ) -> None:
        if config.algo != ALGO or not isinstance(config.algo_config, LMPPOConfig):
            raise ConfigError(f"LMPPORunner runs '{ALGO}' configs; got '{config.algo}'")
        self.config = config
        self.ppo: LMPPOConfig = config.algo_config
        self.setup = DeviceSetup.of(config)  # device and precision, refused here before the run folder is touched
        self.device = self.setup.device
        self.run = trunk.begin_run(config, run_dir, resume, overwrite)
        self.run_dir = self.run.run_dir
        self.task, self.eval_task = build_tasks(self.ppo, config.run.seed)
        self.policy = build_policy(self.ppo, self.task).eval()  # eval: dropout off everywhere
        if self.ppo.init_from is not None:  # InstructGPT: PPO starts from the SFT model, which is the reference too
            sft_state, sft_path = load_sft_state(Path(self.ppo.init_from), self.ppo)
            load_modules({"lm": self.policy.lm}, sft_state, sft_path)
        add_lora(self.policy, self.ppo)
        # the reference is the initial weights (the SFT model's with init_from), frozen; it needs no value head
        self.reference = frozen_reference(self.policy.lm, self.ppo, self.task)
        self.setup.place(self.modules())  # policy (value head, critic) and reference; reward models load there
        # reward_functions: Python objects a library caller passed for function terms (pgrad.lm.trainers)
        self.scorer = build_scorer(self.ppo, self.task, self.device, reward_functions)
        self.check = build_check(self.ppo, self.task, self.device, reward_functions)
        from_rm = self.ppo.value_model == "reward_model"
        if self.ppo.init_value_from_rm or from_rm:  # InstructGPT: the value function starts as the reward model
            learned = self.scorer.learned
            assert isinstance(learned, LearnedReward)  # LMPPOConfig.validate: a term is 'model'
            try:
                if from_rm:
                    critic_from_reward_model(self.policy, learned.members[0])
                else:
                    self.policy.init_value_from(learned.members[0])
            except ValueError as exc:
                raise ConfigError(f"lm_ppo.init_value_from_rm: {exc}") from None
        self.setup.prepare_trained(self.policy.lm, self.policy.critic)  # with gradient_checkpointing
        trained = [p for p in self.policy.parameters() if p.requires_grad]  # with LoRA: adapters and value head
        self.optimizer = make_optimizer(trained, self.ppo.optimizer)
        self.kl = AdaptiveKLController(self.ppo.kl_coef, self.ppo.kl_target, self.ppo.kl_horizon)
        self.learner = LMLearner(self.policy, self.optimizer, self.kl)
        self.step = 0  # responses sampled
        self.updates = 0
        ppo = self.ppo
        self.alert_limits = AlertThresholds(
            ppo.kl_alert,
            ppo.hacking_window,
            ppo.hacking_drop,
            ppo.length_collapse,
            ppo.disagreement_rise,
            ppo.length_explosion,
            ppo.hacking_z,
            ppo.degeneration_floor,
        )
        self.history: list[dict[str, Any]] = []  # the run's metric rows, for the alert rules
        self.guard, self.optimizer_guard, self.healthy_states = trunk.guard_parts(
            config,
            self.run_dir,
            [self.optimizer],
            rules=LM_GUARD_RULES,
            rollback_rules=HACKING_RULES if ppo.rollback_on_alert else (),
            # no environment return: checkpoints are ranked by the check where there is one (after a hack the
            # optimised reward is highest on the most hacked weights), else by the optimised reward (said once);
            # with evaluations on, by the held-out score alone (the same prompts and noise each time; a training
            # batch's mean swings with its prompts, and a checkpoint between evaluations carries no score)
            score_metric=self.score_metric(),
        )
        self.window_states: list[LearnerState] = []  # confirmed healthy states a hacking window reaches back to
        subject = model_label(self.ppo, self.task)
        trunk.open_or_resume(
            self.run, console, f"{ALGO} {subject}", self.load, self.run.close, units=PPO_UNITS, subject=subject
        )

    # what the CLI, callbacks, tests and benchmarks reach through the runner: the run context's
    stop_requested: trunk.RunAttribute[bool] = trunk.RunAttribute("stop_requested")
    sinks: trunk.RunAttribute[list[MetricSink]] = trunk.RunAttribute("sinks")
    store: trunk.RunAttribute[CheckpointStore] = trunk.RunAttribute("store")

    # ---- checkpoints ----------------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        """The networks the checkpoints hold: the policy, and the reference unless it is the policy's LoRA base
        weights."""
        if isinstance(self.reference, AdapterDisabled):  # LoRA: the reference is the policy's base weights
            return {"policy": self.policy}
        return {"policy": self.policy, "reference": self.reference}

    def train_state(self) -> TrainState:
        """The Body protocol: the run as a ``TrainState``, with cloned weights, the optimizer, the guard, the rollback
        slots and the KL coefficient."""
        common = trunk.base_state(
            self.run,
            self.step,
            self.updates,
            trunk.module_tensors(self.modules(), clone=True),
            {"policy": self.optimizer},
            self.guard,
            self.rollback_slots(),
            self.healthy_states.last_capture_step,
        )
        return dataclasses.replace(common, algo_state=self.learner.extra_state())

    def rollback_slots(self) -> dict[str, LearnerState]:
        """The healthy states for the checkpoint: HealthyStates' slots and the window's. A window state is the
        confirmed one itself (the same tensors) until a newer one is confirmed: safetensors refuses two names for
        one tensor, so that one is written as a copy."""
        slots = self.healthy_states.slots()
        shared = {id(learner) for learner in slots.values()}
        for learner in self.window_states:
            slots[f"{WINDOW_SLOT}{learner.step}"] = copy.deepcopy(learner) if id(learner) in shared else learner
        return slots

    def load(self, state: TrainState, path: Path) -> None:
        """Restores a checkpoint: weights, optimizer, torch RNG, KL coefficient, counters, the metrics history the guard
        re-reads, its state and the healthy (and window) states; refuses one that does not fit."""
        load_modules(self.modules(), state, path)
        load_optimizers({"policy": self.optimizer}, state, path)
        check_rollback_states(self.learner.modules(), self.learner.optimizers(), state, path)
        if state.rng_torch is None or "kl_coef" not in state.algo_state:
            raise CheckpointError(f"checkpoint {path} lacks the torch RNG state or the KL coefficient")
        torch.set_rng_state(state.rng_torch)
        self.learner.load_extra_state(state.algo_state)
        self.step, self.updates = state.step, state.updates
        # the rows up to the checkpoint (``RunContext.open`` cut the log back to it): the alert rules go on
        # judging the same history as an uninterrupted run, and the guard decides as it would have
        self.history = read_jsonl(self.run_dir / "metrics.jsonl")
        try:
            self.guard.load(state.guard, [row for row in self.history if row.get("step", 0) <= state.step])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path} does not fit this configuration: {exc}") from None
        self.healthy_states.load(state.rollback_states, state.rollback_capture_step)
        kept = [learner for slot, learner in state.rollback_states.items() if slot.startswith(WINDOW_SLOT)]
        self.window_states = sorted(kept, key=lambda learner: learner.step)
        self.optimizer_guard.state = self.guard.state
        # no schedule reads run.total_steps here: after a raised total the learner continues as one run would

    # ---- one update -----------------------------------------------------------------------
    def chunks(self, batch: int) -> list[Tensor]:
        """The response indices 0..batch-1 split into minibatches of ``minibatch_size``."""
        return list(torch.arange(batch, device=self.device).split(self.ppo.minibatch_size))

    @torch.no_grad()
    def collect(self, flip_reward: bool = False) -> tuple[Rollout, dict[str, float]]:
        """Steps 1-4 of the module docstring: a scored rollout with advantages, and its statistics.
        ``flip_reward`` (the ``reward_flip`` drill): PPO learns from the negated scores; the logged ones stay."""
        ppo, tok = self.ppo, self.task.tokenizer
        cpu_prompts = self.task.prompts(ppo.batch_size // ppo.samples_per_prompt).repeat(ppo.samples_per_prompt)
        prompts = cpu_prompts.to(self.device)
        parts: dict[str, list[Tensor]] = {"logp": [], "values": [], "ref": []}
        with self.setup.autocast():  # the forward passes; what they return is float32 (response_outputs)
            samples = sample(
                self.policy.lm, prompts.ids, prompts.mask, ppo.max_new_tokens, tok.eos_id, tok.pad_id, ppo.temperature
            )
            for index in self.chunks(ppo.batch_size):  # the first epoch's minibatches, same order and shapes
                args = (prompts.ids[index], prompts.mask[index], samples.response[index], samples.mask[index])
                out = response_outputs(self.policy, *args, temperature=ppo.temperature)
                assert out.values is not None
                parts["logp"].append(out.logprobs)
                parts["values"].append(out.values)
                parts["ref"].append(response_outputs(self.reference, *args, temperature=ppo.temperature).logprobs)
            response_cpu, mask_cpu = samples.response.cpu(), samples.mask.cpu()
            score = self.scorer.score(cpu_prompts, response_cpu, mask_cpu).float().to(self.device)
        mask = samples.mask.float()
        logp, values, ref = (torch.cat(parts[key]) for key in ("logp", "values", "ref"))
        values = values * mask
        learned_score = -score if flip_reward else score
        if ppo.advantage == "gae":
            rewards = token_rewards(learned_score, logp, ref, mask, self.kl.value)
            advantages, returns = token_gae(rewards, values, mask, ppo.gamma, ppo.gae_lambda)
            if ppo.whiten_advantages:
                advantages = masked_whiten(advantages, mask)
        else:  # no critic: the value head is neither used nor trained
            reward_kl_coef = self.kl.value if ppo.kl_penalty == "reward" else 0.0  # else in the loss (step 5)
            rule = "dr_grpo" if ppo.loss_type == "dr_grpo" else ppo.advantage  # Dr. GRPO: no std division
            advantages = group_token_advantages(
                learned_score, logp, ref, mask, reward_kl_coef, ppo.samples_per_prompt, rule
            )
            returns = torch.zeros_like(advantages)
        kl_per_response = kl_k1(logp, ref, mask).sum(1)
        stats = {"lm/true_score": self.true_score(prompts, response_cpu, mask_cpu)} if self.task.has_true_score else {}
        stats |= {
            "lm/rm_score": float(score.mean()),
            "lm/kl": float(kl_per_response.mean()),
            "lm/kl_k3": float(kl_k3(logp, ref, mask).sum(1).mean()),
            "lm/kl_coef": self.kl.value,
            "lm/response_length": float(mask.sum(1).mean()),
            "lm/eos_fraction": float(((samples.response == tok.eos_id) & (samples.mask > 0)).any(1).float().mean()),
            **{f"reward/{name}": value for name, value in self.scorer.last_terms.items()},  # each term's batch mean
            **degeneration_metrics(response_cpu, mask_cpu),
        }
        if self.check is not None:  # the held-out check on the same responses (never in the learned reward)
            with self.setup.autocast():
                stats[CHECK_SCORE] = float(self.check.score(cpu_prompts, response_cpu, mask_cpu).float().mean())
        learned = self.scorer.learned
        if learned is not None and len(learned.members) > 1:
            stats[RM_DISAGREEMENT] = learned.last_disagreement  # std across members, batch mean
        return Rollout(prompts, samples.response, mask, logp, ref, values, advantages, returns), stats

    def policy_loss(self, logprobs: Tensor, batch: Rollout) -> tuple[Tensor, dict[str, Tensor]]:
        """The policy's part of the loss on a minibatch and its logged terms: PPO's clipped surrogate as a token
        mean, plus kl_coef x mean k3 with ``kl_penalty: loss``; for another ``loss_type``, GRPO's per-token
        objective aggregated that way (``losses.group_policy_loss``)."""
        ppo = self.ppo
        policy = clipped_surrogate(logprobs, batch.old_logprobs, batch.advantages, batch.mask, ppo.clip_eps)
        terms = {"diagnostics/approx_kl": policy.approx_kl, "diagnostics/clip_fraction": policy.clip_fraction}
        in_loss = ppo.kl_penalty == "loss"
        if ppo.loss_type != "token_mean":  # GRPO's aggregations (sequence_mean, dr_grpo)
            assert ppo.loss_type != "auto"  # resolved by LMPPOConfig.validate
            loss, terms["train/policy_loss"], kl_term = group_policy_loss(
                logprobs,
                batch.old_logprobs,
                batch.ref_logprobs,
                batch.advantages,
                batch.mask,
                ppo.clip_eps,
                self.kl.value if in_loss else 0.0,
                ppo.loss_type,
                ppo.max_new_tokens,
            )
            if in_loss:
                terms["train/kl_loss"] = kl_term
            return loss, terms
        terms["train/policy_loss"] = loss = policy.loss
        if in_loss:  # GRPO's KL in the loss: beta x mean k3(pi, ref) over the tokens, with gradient
            kl_term = masked_mean(kl_k3(logprobs, batch.ref_logprobs, batch.mask), batch.mask)
            loss = loss + self.kl.value * kl_term
            terms["train/kl_loss"] = kl_term
        return loss, terms

    def true_score(self, prompts: PromptBatch, response: Tensor, mask: Tensor) -> float:
        """The digits task's hidden true score of the responses, batch mean (a data set has none)."""
        assert isinstance(self.task, DigitsTask)
        return float(self.task.true_score(prompts.last_digit, response, mask).mean())

    def update(self, lr_scale: float = 1.0, flip_reward: bool = False) -> dict[str, Any]:
        """One rollout and its epochs at ``learning_rate`` x ``lr_scale`` (the guard's cuts and drills)."""
        started = time.perf_counter()
        ppo = self.ppo
        learning_rate = ppo.optimizer.learning_rate * lr_scale
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        rollout, stats = self.collect(flip_reward)
        sums: dict[str, float] = {}
        steps = 0
        norms: list[float] = []  # gradient norms of the steps taken (and of skips past the fp16 scale floor)
        first_ratio_deviation = float("nan")
        for epoch in range(ppo.num_epochs):
            order = (
                torch.arange(ppo.batch_size, device=self.device)
                if epoch == 0
                else torch.randperm(ppo.batch_size).to(self.device)
            )
            for index in order.split(ppo.minibatch_size):
                batch = rollout.rows(index)
                with self.setup.autocast():  # the forward pass only: the losses below are float32
                    out = response_outputs(
                        self.policy,
                        batch.prompts.ids,
                        batch.prompts.mask,
                        batch.response,
                        batch.mask.long(),
                        temperature=ppo.temperature,
                    )
                loss, terms = self.policy_loss(out.logprobs, batch)
                terms["diagnostics/entropy"] = masked_mean(out.entropy.detach(), batch.mask)
                if ppo.advantage == "gae":
                    assert out.values is not None
                    critic_loss = value_loss(
                        out.values, batch.returns, batch.mask, old_values=batch.old_values, clip_vf=ppo.clip_vf
                    )
                    loss = loss + ppo.vf_coef * critic_loss  # vf_coef x E[(V - R)^2], no 1/2 (as the RL sections)
                    terms["train/value_loss"] = critic_loss
                    terms["diagnostics/value_clip_fraction"] = value_clip_fraction(
                        out.values, batch.old_values, batch.mask, ppo.clip_vf
                    )
                counted = self.optimizer_guard.steps
                grad_norm, skipped = self.setup.step(
                    self.optimizer, list(self.policy.parameters()), loss, ppo.max_grad_norm
                )
                if self.optimizer_guard.steps == counted:
                    # fp16: the loss scaler skipped the step, or handed it to an optimizer that scales itself, and the
                    # step hook left it alone. A skip is non-finite for the guard only once the scale is below the
                    # floor (pgrad.lm.precision.FP16_SCALE_FLOOR): above it, skip and halve is the scaler's remedy
                    self.optimizer_guard.count_step(finite=not (skipped and self.setup.overflow_persists()))
                if not skipped or self.setup.overflow_persists():  # a calibration skip's norm is inf by design
                    norms.append(grad_norm)
                if steps == 0:
                    ratio = torch.exp(out.logprobs.detach() - batch.old_logprobs) * batch.mask
                    first_ratio_deviation = float(((ratio - 1.0) * batch.mask).abs().max())
                steps += 1
                for key, value in terms.items():
                    sums[key] = sums.get(key, 0.0) + float(value.detach())
        self.kl.update(stats["lm/kl"], ppo.batch_size)
        self.step += ppo.batch_size
        self.updates += 1
        seconds = time.perf_counter() - started
        return {
            "step": self.step,
            "update": self.updates,
            **stats,
            **{key: value / steps for key, value in sums.items()},
            **({"diagnostics/grad_norm": sum(norms) / len(norms)} if norms else {}),
            "lm/first_ratio_deviation": first_ratio_deviation,
            "train/learning_rate": learning_rate,
            "perf/seconds_per_update": seconds,
            "perf/steps_per_second": ppo.batch_size / seconds,  # steps are responses
            **memory_metrics(self.device),
            **self.setup.metrics(),
        }

    def evaluate(self) -> dict[str, float]:
        """Held-out prompts seeded by ``run.seed + 1``: the same prompts and noise at every evaluation; the
        responses are written to ``samples/step_<step>.jsonl`` for a person to read."""
        samples: list[dict[str, Any]] = []
        with self.setup.autocast():
            metrics = evaluate_policy(
                self.policy.lm,
                self.reference,
                self.eval_task,
                self.scorer,
                self.ppo.eval_prompts,
                self.config.run.seed + 1,
                self.ppo.temperature,
                check=self.check,
                samples_out=samples,
            )
        write_samples(self.run_dir, self.step, samples)
        return metrics

    def evaluation_due(self, previous_step: int) -> bool:
        """True when this update crossed a multiple of ``eval_every`` steps or reached ``run.total_steps``."""
        every = self.ppo.eval_every
        return every > 0 and (self.step // every > previous_step // every or self.step >= self.config.run.total_steps)

    # ---- the guard -------------------------------------------------------------------------
    def guarded_update(self) -> dict[str, Any]:
        """One update under the guard's drills and optimizer hook, with what its rules read added."""
        first_step = self.step
        faults = self.guard.begin_update(first_step, first_step + self.ppo.batch_size)
        self.optimizer_guard.start_update(faults)
        metrics = self.update(self.guard.lr_scale(), faults.flip_reward)
        metrics[names.NONFINITE_STEPS] = float(self.optimizer_guard.skipped)
        enabled = self.config.guard.enabled
        metrics[names.PARAMS_FINITE] = float(parameters_finite(self.learner.modules())) if enabled else 1.0
        return metrics

    def score_metric(self) -> str:
        """What ranks checkpoints: the check (else the optimised reward), held out when evaluations are on."""
        if self.check is not None:
            return EVAL_CHECK_SCORE if self.ppo.eval_every > 0 else CHECK_SCORE
        return "eval/rm_score" if self.ppo.eval_every > 0 else "lm/rm_score"

    def judge(self, metrics: dict[str, Any]) -> list[Action]:
        """The guard's rules (its own and the language-model ones, over the whole history) and its decision."""
        extra = []
        if self.config.guard.enabled:
            metrics[names.RECOVERIES] = float(self.guard.state.recoveries)  # the LM rules read rows since a rollback
            extra = guard_alerts(self.history + [metrics], self.alert_limits, self.ppo.rollback_on_alert)
        self.guard.observe(metrics, self.updates, extra)
        self.history.append(metrics)
        # an evaluated row is checkpointed too: only evaluated checkpoints carry the score that ranks best, and after
        # a rollback the checkpoint_every schedule no longer falls on evaluation steps
        evaluated = self.ppo.eval_every > 0 and self.score_metric() in metrics
        checkpoint_due = evaluated or self.step - self.run.last_checkpoint_step >= self.config.run.checkpoint_every
        return self.guard.decide(metrics, self.step, None, checkpoint_due)

    # ---- the body the trunk's loop drives (pgrad.runners.trunk) ---------------------------------
    def before_loop(self) -> None:
        """The Body protocol: a fresh run says what ranks its best checkpoint, and logs the starting model's
        evaluation as row 0."""
        if self.step == 0 and self.check is None:
            self.run.emit(
                "run.best_by_reward",
                0,
                f"no lm_ppo.check_reward: the best checkpoint is ranked by the optimised reward "
                f"({self.score_metric()}), which is highest on hacked weights after a hack unless the reward is a "
                "verifier; give a check (a verifier, a function, a second reward model) to rank by it and let the "
                "hacking rules compare with it",
            )
        if self.step == 0 and self.ppo.eval_every > 0:
            self.run.log({"step": 0, "update": 0, **self.evaluate()})  # the starting model

    def advance(self, stop_at_step: int | None = None) -> dict[str, Any]:
        """The Body protocol: one guarded update, with an evaluation when one is due; its metrics."""
        previous_step = self.step
        metrics = self.guarded_update()
        if self.evaluation_due(previous_step):
            metrics.update(self.evaluate())
        return metrics

    def take_events(self) -> list[Event]:
        """The Body protocol: the guard's events since the last call."""
        return self.guard.take_events()

    def halt(self, action: Halt) -> NoReturn:
        """The Body protocol: leaves the evidence, logs why and raises ``TrainingHalted``."""
        trunk.halted(self.run, self.step, action, self.guard.state.recoveries)

    def snapshot(self, healthy: bool) -> None:
        """The Body protocol: offers the learner after this update to the healthy states, and keeps it for the
        reward-hacking window."""
        self.healthy_states.after_update(healthy, self.step, self.learner, self.learner)
        self.keep_window_state()

    def final_score(self, metrics: dict[str, Any]) -> tuple[float | None, bool]:
        """The Body protocol: the last check score (else the optimised reward's; held-out where evaluated), and
        whether the guard judges the run healthy."""
        return self.guard.score(metrics), self.guard.healthy

    def close(self) -> None:
        """The Body protocol: removes the optimizer guard's hooks and closes the run context."""
        self.optimizer_guard.remove()
        self.run.close()

    def keep_window_state(self) -> None:
        """Keep each newly confirmed healthy state for as long as a reward-hacking window reaches back (the
        states of the last ``hacking_window`` + 2 updates and the newest one before them): the windowed rule
        sees a hack only once its window is full, by which time the newest confirmed state lies inside it."""
        confirmed = self.healthy_states.confirmed
        if confirmed is None or (self.window_states and self.window_states[-1].step >= confirmed.step):
            return
        self.window_states.append(confirmed)  # shared with HealthyStates, never written: restores copy from it
        horizon = self.step - (self.ppo.hacking_window + 2) * self.ppo.batch_size
        while len(self.window_states) > 1 and self.window_states[1].step <= horizon:
            self.window_states.pop(0)

    def before_the_hack(self) -> LearnerState | None:
        """For a rollback on reward hacking: the newest kept healthy state from before the evidence began (the
        window's first update, or the earlier evaluation of the held-out check), else the oldest kept; None for
        other rollbacks (they take the newest confirmed state)."""
        hacking = next((a for a in self.guard.alerts if a.level == "critical" and a.rule == "lm_reward_hacking"), None)
        if hacking is None or not self.window_states:
            return None
        if "since_step" in hacking.evidence:  # the held-out check: since the earlier evaluation
            bound = int(hacking.evidence["since_step"])
        elif "best_step" in hacking.evidence:  # the level test: back to the check's best evaluation
            bound = int(hacking.evidence["best_step"])
        else:  # the window's rows end at steps step - (window - 1) x batch ... step
            bound = self.step - int(hacking.evidence["window"]) * self.ppo.batch_size
        before = [state for state in self.window_states if state.step <= bound]
        return before[-1] if before else self.window_states[0]

    def roll_back(self, action: Rollback) -> None:
        """The newest confirmed healthy state in memory, else the newest checkpoint marked healthy (the guard
        has cut the learning rate already); the step counter, RNG and reference stay."""
        self.healthy_states.forget_candidate()
        memory = self.before_the_hack() or self.healthy_states.confirmed
        data: dict[str, Any]
        if memory is not None:
            restore_captured(memory, self.learner, self.learner)
            # the states after it belong to the weights the rollback threw away
            self.healthy_states.confirmed = memory
            self.window_states = [state for state in self.window_states if state.step <= memory.step]
            summary = f"restored the healthy state of step {memory.step} from memory"
            data = {"checkpoint": None, "restored_step": memory.step, "restored_from": "memory"}
        else:
            path = self.run.checkpoint_path("last_healthy")
            data = {"checkpoint": str(path) if path else None, "restored_from": "disk" if path else None}
            if path is None:
                summary = "no healthy state yet, kept the current weights"
            else:
                restored = read_train_state(path)
                load_modules(self.learner.modules(), restored, path)
                load_optimizers(self.learner.optimizers(), restored, path)
                self.learner.load_extra_state(restored.algo_state)
                summary = f"restored {path.name} (step {restored.step})"
                data["restored_step"] = restored.step
        if any(alert.level == "critical" and alert.rule in HACKING_RULES for alert in self.guard.alerts):
            # the restored policy would walk back into the same hack at the same KL price: raise it
            before = self.kl.value
            self.kl.value = before * self.ppo.hacking_kl_boost
            summary += f"; kl_coef {before:.4g} -> {self.kl.value:.4g} (lm_ppo.hacking_kl_boost)"
            data["kl_coef"] = [before, self.kl.value]
        trunk.log_events(self.run, self.step, [self.guard.rollback_event(action.reason, summary, data)])

    # ---- the loop -------------------------------------------------------------------------
    def train(self, stop_at_step: int | None = None) -> TrainResult:
        """Train to ``run.total_steps`` responses (or stop at ``stop_at_step``, as a kill would)."""
        return trunk.train_loop(self, stop_at_step)
