"""Direct Preference Optimization on preference pairs (``pgrad lm dpo``): no reward model, no sampling loop.

The pairs are the reward model's (``DigitsTask.preference_pairs``, drawn from ``run.seed`` for training
and from ``run.seed + HELDOUT_SEED_OFFSET`` held out), or a data set's rows and held-out rows (``dataset``
with ``model`` a model folder). The policy starts from the SFT model (``init_from``), the model folder's
weights or the tiny GPT-2's random weights; the frozen reference is a copy of those initial weights (or
``reference_model``'s folder). Each gradient step takes ``batch_size`` training pairs uniformly with
replacement and descends ``losses.dpo_loss`` on whole-response log-probs (sums over the response's real tokens):

    h = beta * ((log pi(y_c) - log ref(y_c)) - (log pi(y_r) - log ref(y_r))),   L = -mean log sigmoid(h)

so while policy == reference h = 0 and L = log 2. ``beta x (log pi - log ref)`` is the implicit reward;
its held-out accuracy (``eval/dpo_accuracy``: the fraction of held-out pairs with h > 0) and loss
(``eval/dpo_loss``) come in every row with, sampled on held-out prompts, the true score, the KL to the
reference and the response length (``pgrad.lm.evaluate``, the keys PPO writes; ``eval/rm_score`` is
left out: there is no reward model). A row at step 0 is the starting model.

Checkpoints (safetensors + JSON through ``RunContext``: ``lm`` and ``reference``) are scored by the
held-out accuracy.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pgrad.algos.common import make_optimizer
from pgrad.checkpoint import CheckpointStore, load_modules
from pgrad.config import TrainConfig
from pgrad.errors import ConfigError
from pgrad.lm.build import build_lm, build_tasks, frozen_reference, model_label
from pgrad.lm.config import DPO_ALGO, LMDPOConfig
from pgrad.lm.evaluate import evaluate_policy
from pgrad.lm.losses import dpo_loss
from pgrad.lm.model import AdapterDisabled, CausalLM, response_outputs
from pgrad.lm.precision import DeviceSetup
from pgrad.lm.task import PreferencePairs
from pgrad.monitor.sinks import MetricSink, ProgressUnits
from pgrad.numerics import masked_sum
from pgrad.runners import trunk
from pgrad.runners.context import TrainResult
from pgrad.runners.lm_rm import pair_sets
from pgrad.runners.lm_rows import load_row_state, open_rows, row_train_state, train_in_rows
from pgrad.runners.lm_sft import load_sft_state

EVAL_SEED_OFFSET = 1  # the sampled evaluation's prompts and noise: run.seed + this (as SFT's)


def response_logprob(lm: CausalLM, pairs: PreferencePairs, index: Tensor, chosen: bool) -> Tensor:
    """log pi(y | x) of the chosen (or rejected) responses of the pairs at ``index``: [len(index)]."""
    prompts, device = pairs.prompts, next(lm.parameters()).device  # the rows go where the model is
    response = (pairs.chosen[index] if chosen else pairs.rejected[index]).to(device)
    mask = (pairs.chosen_mask[index] if chosen else pairs.rejected_mask[index]).to(device)
    out = response_outputs(lm, prompts.ids[index].to(device), prompts.mask[index].to(device), response, mask)
    return masked_sum(out.logprobs, mask.float(), dim=1)


# run.total_steps counts preference pairs
DPO_UNITS = ProgressUnits("pairs", "train/dpo_loss", "loss", "8.4f")


class DPORunner:
    """``pgrad lm dpo`` / ``pgrad lm resume`` of an ``lm_dpo`` run: see the module docstring."""

    def __init__(
        self, config: TrainConfig, run_dir: Path, resume: bool = False, console: bool = True, overwrite: bool = False
    ) -> None:
        if config.algo != DPO_ALGO or not isinstance(config.algo_config, LMDPOConfig):
            raise ConfigError(f"DPORunner runs '{DPO_ALGO}' configs; got '{config.algo}'")
        self.config = config
        self.dpo: LMDPOConfig = config.algo_config
        self.setup = DeviceSetup.of(config)  # device and precision, refused here before the run folder is touched
        sft_state = load_sft_state(Path(self.dpo.init_from), self.dpo) if self.dpo.init_from else None
        self.run = trunk.begin_run(config, run_dir, resume, overwrite)
        self.run_dir = self.run.run_dir
        seed = config.run.seed
        self.task, self.eval_task = build_tasks(self.dpo, seed)
        self.train_pairs, self.heldout = pair_sets(
            self.task, self.dpo.train_pairs, self.dpo.heldout_pairs, seed, self.eval_task
        )
        self.lm = build_lm(self.dpo, self.task)
        if sft_state is not None:
            load_modules({"lm": self.lm}, *sft_state)
        self.lm.train(False)  # dropout is off in the config; eval mode says so twice
        # the initial weights, frozen (or reference_model's folder)
        reference = frozen_reference(self.lm, self.dpo, self.task)
        assert not isinstance(reference, AdapterDisabled)  # DPO trains no LoRA adapter
        self.reference = reference
        self.setup.place(self.modules())
        self.setup.prepare_trained(self.lm)
        self.optimizer = make_optimizer(list(self.lm.parameters()), self.dpo.optimizer)
        self.step = 0  # pairs trained on
        self.updates = 0
        open_rows(
            self,
            console,
            f"{DPO_ALGO} {model_label(self.dpo, self.task)}",
            f", {len(self.train_pairs)} training and {len(self.heldout)} held-out pairs",
            DPO_UNITS,
        )

    # what the CLI, callbacks, tests and benchmarks reach through the runner: the run context's
    stop_requested: trunk.RunAttribute[bool] = trunk.RunAttribute("stop_requested")
    sinks: trunk.RunAttribute[list[MetricSink]] = trunk.RunAttribute("sinks")
    store: trunk.RunAttribute[CheckpointStore] = trunk.RunAttribute("store")

    def modules(self) -> dict[str, torch.nn.Module]:
        """The RowTrainer protocol: the networks the checkpoints hold, the trained LM and its frozen reference."""
        return {"lm": self.lm, "reference": self.reference}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The RowTrainer protocol: the LM's optimizer, for the checkpoints."""
        return {"lm": self.optimizer}

    train_state = row_train_state
    load = load_row_state

    def pair_loss(self, pairs: PreferencePairs, index: Tensor) -> tuple[Tensor, Tensor]:
        """(DPO loss, implicit-reward accuracy) of the pairs at ``index``; gradients reach the policy only."""
        with torch.no_grad(), self.setup.autocast():
            ref_chosen = response_logprob(self.reference, pairs, index, chosen=True)
            ref_rejected = response_logprob(self.reference, pairs, index, chosen=False)
        with self.setup.autocast():  # the forward passes; the loss below is float32
            chosen = response_logprob(self.lm, pairs, index, chosen=True)
            rejected = response_logprob(self.lm, pairs, index, chosen=False)
        return dpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.dpo.beta)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The DPO loss and accuracy on the held-out pairs, and sampled responses' true scores and KL to the reference
        (no reward model, so no ``eval/rm_score``)."""
        loss, accuracy = self.pair_loss(self.heldout, torch.arange(len(self.heldout)))
        with self.setup.autocast():
            sampled = evaluate_policy(  # no reward model, so no eval/rm_score
                self.lm,
                self.reference,
                self.eval_task,
                None,
                self.dpo.eval_prompts,
                self.config.run.seed + EVAL_SEED_OFFSET,
                1.0,
            )
        return {"eval/dpo_loss": float(loss), "eval/dpo_accuracy": float(accuracy), **sampled}

    def train_steps(self, until_step: int) -> dict[str, Any]:
        """The RowTrainer protocol: DPO gradient steps on random batches of training pairs until ``until_step`` pairs
        (or a stop request); the row's metrics with an evaluation."""
        started, losses, accuracies = time.perf_counter(), [], []
        size = self.dpo.batch_size
        while self.step < until_step and not self.run.stop_requested:
            loss, accuracy = self.pair_loss(self.train_pairs, torch.randint(0, len(self.train_pairs), (size,)))
            self.setup.step(self.optimizer, list(self.lm.parameters()), loss, self.dpo.max_grad_norm)
            losses.append(float(loss.detach()))
            accuracies.append(float(accuracy))
            self.step += size
            self.updates += 1
        seconds = time.perf_counter() - started
        return {
            "step": self.step,
            "update": self.updates,
            "train/dpo_loss": sum(losses) / max(len(losses), 1),
            "train/dpo_accuracy": sum(accuracies) / max(len(accuracies), 1),
            "train/dpo_first_loss": losses[0] if losses else float("nan"),
            **self.evaluate(),
            "perf/steps_per_second": size * len(losses) / max(seconds, 1e-9),
            **self.setup.metrics(),
        }

    def train(self, stop_at_step: int | None = None) -> TrainResult:
        """Trains in rows of ``eval_every`` pairs to ``run.total_steps``; checkpoints ranked by held-out DPO
        accuracy."""
        return train_in_rows(self, self.dpo.eval_every, lambda row: row["eval/dpo_accuracy"], stop_at_step)
