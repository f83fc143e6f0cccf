"""Supervised fine-tuning on demonstrations (``pgrad lm sft``), and loading its result as PPO's start.

The demonstrations (``DigitsTask.demonstrations``: per prompt the best of 4 random responses by the
hidden true score) are drawn once from ``run.seed`` (training) and once from another seed (held out).
Each gradient step takes ``batch_size`` demonstrations uniformly with replacement and descends the mean
negative log-likelihood of their response tokens (``losses.sft_loss``). Every ``eval_every``
demonstrations (and at the end) a row: the training loss since the last row, the held-out loss
(``eval/sft_nll``), and, on held-out prompts, the sampled responses' true score and KL to the initial
weights (``pgrad.lm.evaluate``).

On a data set (``dataset``, with ``model`` a model folder: ``pgrad.lm.data``, ``pgrad.lm.build.build_tasks``)
the demonstrations are its rows (``prompt``, ``completion``) and the held-out ones its held-out rows, and the
sampled evaluation has no true score.

Checkpoints are scored by minus the held-out loss (the true score is the task's secret; selecting by
it would leak it), so the ``best`` checkpoint is the one ``lm_ppo.init_from`` loads.
"""

from __future__ import annotations

import time
from operator import attrgetter
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pgrad.algos.common import make_optimizer
from pgrad.checkpoint import CheckpointStore, TrainState, read_train_state
from pgrad.config import TrainConfig
from pgrad.errors import ConfigError
from pgrad.lm.build import Task, build_lm, build_tasks, frozen_copy, model_label
from pgrad.lm.config import SFT_ALGO, LMDPOConfig, LMPPOConfig, LMSFTConfig
from pgrad.lm.dataset import DatasetTask
from pgrad.lm.evaluate import evaluate_policy
from pgrad.lm.losses import sft_loss
from pgrad.lm.model import CausalLM, response_outputs
from pgrad.lm.precision import DeviceSetup
from pgrad.monitor.sinks import MetricSink, ProgressUnits
from pgrad.runners import trunk
from pgrad.runners.context import TrainResult
from pgrad.runners.lm_rows import load_row_state, open_rows, row_train_state, train_in_rows
from pgrad.runs import load_run_config

HELDOUT_SEED_OFFSET = 2_000_003  # held-out demonstrations: run.seed + this (the training ones: run.seed)
# what PPO and DPO must share to start from an SFT model
ARCHITECTURE = ("max_new_tokens", "model.path", "model.n_layer", "model.n_embd", "model.n_head")


class Demonstrations:
    """Prompts with one demonstrated response each (right-padded, with masks): ``count`` of the digits task's
    drawn from ``seed``, or every row of a data set."""

    def __init__(self, task: Task, count: int, seed: int) -> None:
        if isinstance(task, DatasetTask):
            self.prompts, self.response, self.mask = task.demonstrations()
        else:
            self.prompts, self.response, self.mask = task.demonstrations(count, torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return int(self.response.shape[0])

    def to(self, device: torch.device) -> Demonstrations:
        """The demonstrations moved to ``device``, once (``last_digit`` stays on the CPU); returns itself."""
        self.prompts, self.response, self.mask = self.prompts.to(device), self.response.to(device), self.mask.to(device)
        return self

    def nll(self, lm: CausalLM, index: Tensor) -> Tensor:
        """The mean per-token negative log-likelihood of the demonstrated responses ``index`` selects under ``lm``."""
        prompts = self.prompts
        out = response_outputs(lm, prompts.ids[index], prompts.mask[index], self.response[index], self.mask[index])
        return sft_loss(out.logprobs, self.mask[index].float())


# run.total_steps counts demonstrations; the progress line shows the training NLL of the last row
SFT_UNITS = ProgressUnits("demonstrations", "train/sft_nll", "nll", "8.4f")


class SFTRunner:
    """``pgrad lm sft`` / ``pgrad lm resume`` of an ``lm_sft`` run: see the module docstring."""

    def __init__(
        self, config: TrainConfig, run_dir: Path, resume: bool = False, console: bool = True, overwrite: bool = False
    ) -> None:
        if config.algo != SFT_ALGO or not isinstance(config.algo_config, LMSFTConfig):
            raise ConfigError(f"SFTRunner runs '{SFT_ALGO}' configs; got '{config.algo}'")
        self.config = config
        self.sft: LMSFTConfig = config.algo_config
        self.setup = DeviceSetup.of(config)  # device and precision, refused here before the run folder is touched
        self.run = trunk.begin_run(config, run_dir, resume, overwrite)
        self.run_dir = self.run.run_dir
        seed = config.run.seed
        self.task, self.eval_task = build_tasks(self.sft, seed)
        device = self.setup.device
        self.train_demos = Demonstrations(self.task, self.sft.demonstrations, seed).to(device)
        self.heldout = Demonstrations(self.eval_task, self.sft.heldout_demonstrations, seed + HELDOUT_SEED_OFFSET)
        self.heldout.to(device)
        self.lm = build_lm(self.sft, self.task)
        self.lm.train(False)  # dropout is off in the config; eval mode says so twice
        self.initial = frozen_copy(self.lm)  # for the KL of the evaluations
        self.setup.place(self.modules())
        self.setup.prepare_trained(self.lm)
        self.optimizer = make_optimizer(list(self.lm.parameters()), self.sft.optimizer)
        self.step = 0  # demonstrations trained on
        self.updates = 0
        detail = f", {len(self.train_demos)} demonstrations"
        open_rows(self, console, f"{SFT_ALGO} {model_label(self.sft, self.task)}", detail, SFT_UNITS)

    # what the CLI, callbacks, tests and benchmarks reach through the runner: the run context's
    stop_requested: trunk.RunAttribute[bool] = trunk.RunAttribute("stop_requested")
    sinks: trunk.RunAttribute[list[MetricSink]] = trunk.RunAttribute("sinks")
    store: trunk.RunAttribute[CheckpointStore] = trunk.RunAttribute("store")

    def modules(self) -> dict[str, torch.nn.Module]:
        """The RowTrainer protocol: the trained LM and the initial model (for the evaluation's KL)."""
        return {"lm": self.lm, "initial": self.initial}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The RowTrainer protocol: the LM's optimizer."""
        return {"lm": self.optimizer}

    train_state = row_train_state
    load = load_row_state

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The held-out demonstrations' NLL, and sampled responses' true scores (the digits task) and KL to the
        initial model (no ``eval/rm_score``: there is no reward model)."""
        with self.setup.autocast():
            heldout_nll = self.heldout.nll(self.lm, torch.arange(len(self.heldout)))
            sampled = evaluate_policy(
                self.lm, self.initial, self.eval_task, None, self.sft.eval_prompts, self.config.run.seed + 1, 1.0
            )
        return {"eval/sft_nll": float(heldout_nll), **sampled}

    def train_steps(self, until_step: int) -> dict[str, Any]:
        """The RowTrainer protocol: SFT gradient steps on random demonstration batches until ``until_step`` (or a stop
        request); the row's metrics with an evaluation."""
        started, losses = time.perf_counter(), []
        size = self.sft.batch_size
        while self.step < until_step and not self.run.stop_requested:
            with self.setup.autocast():
                loss = self.train_demos.nll(self.lm, torch.randint(0, len(self.train_demos), (size,)))
            self.setup.step(self.optimizer, list(self.lm.parameters()), loss, self.sft.max_grad_norm)
            losses.append(float(loss.detach()))
            self.step += size
            self.updates += 1
        seconds = time.perf_counter() - started
        return {
            "step": self.step,
            "update": self.updates,
            "train/sft_nll": sum(losses) / max(len(losses), 1),
            **self.evaluate(),
            "perf/steps_per_second": size * len(losses) / max(seconds, 1e-9),
            **self.setup.metrics(),
        }

    def train(self, stop_at_step: int | None = None) -> TrainResult:
        """Trains in rows of ``eval_every`` demonstrations to ``run.total_steps``; checkpoints ranked by held-out NLL
        (lower is better)."""
        return train_in_rows(self, self.sft.eval_every, lambda row: -row["eval/sft_nll"], stop_at_step)


def load_sft_state(run_dir: Path, starting: LMPPOConfig | LMDPOConfig) -> tuple[TrainState, Path]:
    """The best checkpoint of an ``lm_sft`` run (its ``lm`` module is the model), checked to fit the
    architecture of ``starting`` (the PPO or DPO section whose ``init_from`` names it)."""
    config = load_run_config(Path(run_dir))
    sft = config.algo_config
    section = starting.SECTION
    if config.algo != SFT_ALGO or not isinstance(sft, LMSFTConfig):
        raise ConfigError(
            f"{section}.init_from: {run_dir} is a '{config.algo}' run, not supervised fine-tuning ({SFT_ALGO})"
        )
    for name in ARCHITECTURE:
        wanted, got = attrgetter(name)(sft), attrgetter(name)(starting)
        if got != wanted:
            raise ConfigError(f"{section}.{name} must be {wanted}, the value of the SFT model in {run_dir}; got {got}")
    path = CheckpointStore(Path(run_dir), config.run.keep_checkpoints).path("best")
    return read_train_state(path), path
