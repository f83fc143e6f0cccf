"""Reward-model training on preference pairs (``pgrad lm rm``), and loading a trained one for PPO.

The task's synthetic pairs (``DigitsTask.preference_pairs``: the response with the higher hidden true
score is the chosen one) are drawn once from ``run.seed`` (training) and once from another seed
(held out). Each gradient step takes ``batch_size`` training pairs uniformly with replacement and
descends the Bradley-Terry loss -log sigmoid(s_chosen - s_rejected). Every ``eval_every`` pairs (and
at the end) a row of metrics: training loss and accuracy since the last row, held-out loss and
accuracy, and the correlation of the score with the true score over the held-out responses.

On a data set (``dataset``, with ``model`` a model folder: its base model is the trunk) the pairs are its
rows (``prompt``, ``chosen``, ``rejected``) and the held-out ones its held-out rows; there is no true score to
correlate with.

An ensemble (``ensemble_size`` K > 1) trains K models side by side in the same steps: member m starts
from its own initial weights (built one after another from the run's seed) and draws its minibatches
from its own bootstrap resample of the training pairs (``len(train_pairs)`` indices drawn uniformly
with replacement by a generator seeded ``run.seed + BOOTSTRAP_SEED_OFFSET + m``). K = 1 is one model on
the pairs themselves, exactly as before ensembles existed. The rows then add each member's held-out
accuracy (``eval/rm_accuracy_m{m}``); ``eval/rm_accuracy``, ``eval/rm_loss`` and the correlation are
those of the combination by the minimum (PPO's default ``lm_ppo.ensemble_combine``). Calibration is
``eval/rm_brier``: the Brier score mean (1 - p)^2 of the ensemble's mean probability
p = mean_m sigmoid(s_m(chosen) - s_m(rejected)) that the chosen response wins; the chosen response
always wins on this task (its hidden score is higher), so 0 is perfect and 0.25 is a coin.

Checkpoints (safetensors + JSON through ``RunContext``; member 0 is ``reward_model``, member m > 0
``reward_model_m{m}``) are scored by the held-out accuracy, so the ``best`` checkpoint is the one PPO
loads (``lm_ppo.reward: model``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pgrad.algos.common import make_optimizer
from pgrad.checkpoint import CheckpointStore, load_modules, read_train_state
from pgrad.config import TrainConfig
from pgrad.errors import ConfigError
from pgrad.lm.build import (
    Task,
    build_reward_model,
    build_tasks,
    check_reward_tokens,
    folder_reward_model,
    is_model_folder,
    model_label,
)
from pgrad.lm.config import RM_ALGO, LMRewardModelConfig
from pgrad.lm.dataset import DatasetTask
from pgrad.lm.folders import FolderTokenizer
from pgrad.lm.losses import EnsembleRule, bradley_terry_loss, combine_ensemble
from pgrad.lm.model import RewardModel
from pgrad.lm.precision import DeviceSetup
from pgrad.lm.reward import LearnedReward
from pgrad.lm.task import DigitsTask, PreferencePairs
from pgrad.monitor.sinks import MetricSink, ProgressUnits
from pgrad.runners import trunk
from pgrad.runners.context import TrainResult
from pgrad.runners.lm_rows import load_row_state, open_rows, row_train_state, train_in_rows
from pgrad.runs import load_run_config

HELDOUT_SEED_OFFSET = 1_000_003  # the held-out pairs' generator: run.seed + this (the training pairs': run.seed)


def pair_sets(
    task: Task, train: int, heldout: int, seed: int, eval_task: Task | None = None, proxy_weight: float = 0.0
) -> tuple[PreferencePairs, PreferencePairs]:
    """The training pairs (drawn from ``seed``) and the held-out ones (from ``seed + HELDOUT_SEED_OFFSET``) that
    the reward model and DPO both learn from: the same pairs for the same seed and counts, both labelled by
    ``DigitsTask.label_score`` with ``proxy_weight`` (``lm_rm.proxy_weight``). A data set's: every row of
    ``task`` and of ``eval_task`` (the counts do not apply)."""
    if isinstance(task, DatasetTask):
        assert isinstance(eval_task, DatasetTask)
        return task.preference_pairs(), eval_task.preference_pairs()
    training = task.preference_pairs(train, torch.Generator().manual_seed(seed), proxy_weight)
    held_out = task.preference_pairs(heldout, torch.Generator().manual_seed(seed + HELDOUT_SEED_OFFSET), proxy_weight)
    return training, held_out


BOOTSTRAP_SEED_OFFSET = 2_000_003  # member m's bootstrap resample: run.seed + this + m


def member_name(member: int) -> str:
    """The checkpoint module name of ensemble member ``member`` (member 0 keeps the single model's name)."""
    return "reward_model" if member == 0 else f"reward_model_m{member}"


def bootstrap_indices(pair_count: int, seed: int, member: int, ensemble_size: int) -> Tensor:
    """Member ``member``'s training pairs as indices into the training pairs: for an ensemble, ``pair_count``
    drawn uniformly with replacement (a bootstrap resample: about 63% of the pairs, some several times);
    for one model, every pair once, in order."""
    if ensemble_size == 1:
        return torch.arange(pair_count)
    generator = torch.Generator().manual_seed(seed + BOOTSTRAP_SEED_OFFSET + member)
    return torch.randint(0, pair_count, (pair_count,), generator=generator)


def pair_scores(model: RewardModel, pairs: PreferencePairs, index: Tensor) -> tuple[Tensor, Tensor]:
    """(chosen scores, rejected scores) of the pairs at ``index``, in one forward pass of both."""
    prompts, device = pairs.prompts, next(model.parameters()).device  # the rows go where the model is
    ids, mask = prompts.ids[index], prompts.mask[index]
    both = model(
        torch.cat([ids, ids]).to(device),
        torch.cat([mask, mask]).to(device),
        torch.cat([pairs.chosen[index], pairs.rejected[index]]).to(device),
        torch.cat([pairs.chosen_mask[index], pairs.rejected_mask[index]]).to(device),
    ).float()  # float32 under autocast too
    return both[: len(index)], both[len(index) :]


# run.total_steps counts preference pairs
RM_UNITS = ProgressUnits("pairs", "train/rm_accuracy", "accuracy", "8.3f")


class RewardModelRunner:
    """``pgrad lm rm`` / ``pgrad lm resume`` of an ``lm_rm`` run: see the module docstring."""

    def __init__(
        self, config: TrainConfig, run_dir: Path, resume: bool = False, console: bool = True, overwrite: bool = False
    ) -> None:
        if config.algo != RM_ALGO or not isinstance(config.algo_config, LMRewardModelConfig):
            raise ConfigError(f"RewardModelRunner runs '{RM_ALGO}' configs; got '{config.algo}'")
        self.config = config
        self.rm: LMRewardModelConfig = config.algo_config
        self.setup = DeviceSetup.of(config)  # device and precision, refused here before the run folder is touched
        self.run = trunk.begin_run(config, run_dir, resume, overwrite)
        self.run_dir = self.run.run_dir
        seed = config.run.seed
        self.task, eval_task = build_tasks(self.rm, seed)
        self.train_pairs, self.heldout = pair_sets(
            self.task, self.rm.train_pairs, self.rm.heldout_pairs, seed, eval_task, self.rm.proxy_weight
        )
        size = self.rm.ensemble_size
        self.members = [build_reward_model(self.rm, self.task).eval() for _ in range(size)]  # no dropout anyway
        self.model = self.members[0]
        self.setup.place(self.modules())
        self.setup.prepare_trained(*(member.trunk for member in self.members))
        self.member_optimizers = [make_optimizer(list(m.parameters()), self.rm.optimizer) for m in self.members]
        self.resamples = [bootstrap_indices(len(self.train_pairs), seed, m, size) for m in range(size)]
        self.step = 0  # pairs trained on
        self.updates = 0
        open_rows(
            self,
            console,
            f"{RM_ALGO} {model_label(self.rm, self.task)}",
            f", {len(self.train_pairs)} training and {len(self.heldout)} held-out pairs",
            RM_UNITS,
        )

    # what the CLI, callbacks, tests and benchmarks reach through the runner: the run context's
    stop_requested: trunk.RunAttribute[bool] = trunk.RunAttribute("stop_requested")
    sinks: trunk.RunAttribute[list[MetricSink]] = trunk.RunAttribute("sinks")
    store: trunk.RunAttribute[CheckpointStore] = trunk.RunAttribute("store")

    def modules(self) -> dict[str, torch.nn.Module]:
        """The RowTrainer protocol: the ensemble's reward models, by member name."""
        return {member_name(m): model for m, model in enumerate(self.members)}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The RowTrainer protocol: each member's optimizer, by member name."""
        return {member_name(m): optimizer for m, optimizer in enumerate(self.member_optimizers)}

    train_state = row_train_state
    load = load_row_state

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out loss and accuracy of the combination by the minimum (and each member's accuracy for an
        ensemble), the Brier score of the mean member probability, and the Pearson correlation of the combined
        score with the true score over the held-out responses (chosen and rejected together)."""
        index = torch.arange(len(self.heldout))
        with self.setup.autocast():
            member_scores = [pair_scores(model, self.heldout, index) for model in self.members]
        member_chosen = torch.stack([c for c, _ in member_scores])
        member_rejected = torch.stack([r for _, r in member_scores])
        chosen, rejected = combine_ensemble(member_chosen, "min"), combine_ensemble(member_rejected, "min")
        loss, accuracy = bradley_terry_loss(chosen, rejected)
        win_probability = torch.sigmoid(member_chosen - member_rejected).mean(0)
        per_member: dict[str, float] = {}
        if len(self.members) > 1:
            per_member = {
                f"eval/rm_accuracy_m{m}": float((member_chosen[m] > member_rejected[m]).float().mean())
                for m in range(len(self.members))
            }
        pairs = self.heldout
        correlation: dict[str, float] = {}
        if isinstance(self.task, DigitsTask):  # a data set has no true score
            true = torch.cat(
                [
                    self.task.true_score(pairs.prompts.last_digit, pairs.chosen, pairs.chosen_mask),
                    self.task.true_score(pairs.prompts.last_digit, pairs.rejected, pairs.rejected_mask),
                ]
            )
            scores = torch.cat([chosen, rejected]).cpu()
            correlation["eval/rm_true_correlation"] = float(torch.corrcoef(torch.stack([scores, true]))[0, 1])
        return {
            "eval/rm_loss": float(loss),
            "eval/rm_accuracy": float(accuracy),
            **correlation,
            "eval/rm_brier": float(((1 - win_probability) ** 2).mean()),
            **per_member,
        }

    def train_steps(self, until_step: int) -> dict[str, Any]:
        """Gradient steps until ``until_step`` pairs; returns the row (training means, held-out metrics)."""
        started, losses, accuracies = time.perf_counter(), [], []
        size = self.rm.batch_size
        while self.step < until_step and not self.run.stop_requested:
            for model, optimizer, resample in zip(self.members, self.member_optimizers, self.resamples, strict=True):
                index = resample[torch.randint(0, len(resample), (size,))]
                with self.setup.autocast():
                    chosen, rejected = pair_scores(model, self.train_pairs, index)
                loss, accuracy = bradley_terry_loss(chosen, rejected)
                self.setup.step(optimizer, list(model.parameters()), loss, self.rm.max_grad_norm)
                losses.append(float(loss.detach()))  # the training means are over members and steps
                accuracies.append(float(accuracy))
            self.step += size
            self.updates += 1
        seconds = time.perf_counter() - started
        return {
            "step": self.step,
            "update": self.updates,
            "train/rm_loss": sum(losses) / max(len(losses), 1),
            "train/rm_accuracy": sum(accuracies) / max(len(accuracies), 1),
            **self.evaluate(),
            "perf/steps_per_second": size * len(losses) / len(self.members) / max(seconds, 1e-9),
            **self.setup.metrics(),
        }

    def train(self, stop_at_step: int | None = None) -> TrainResult:
        """Trains in rows of ``eval_every`` pairs to ``run.total_steps``; checkpoints ranked by held-out accuracy, no
        row 0."""
        return train_in_rows(
            self, self.rm.eval_every, lambda row: row["eval/rm_accuracy"], stop_at_step, log_start=False
        )


def load_reward_model(
    run_dir: Path,
    max_new_tokens: int,
    device: torch.device,
    rule: EnsembleRule = "min",
    std_coef: float = 1.0,
    tokenizer: FolderTokenizer | None = None,
) -> LearnedReward:
    """The best checkpoint (held-out accuracy) of an ``lm_rm`` run folder, frozen, as a PPO scorer: all its
    ensemble members, combined by ``rule`` (``combine_ensemble``); or a sequence-classification model folder
    (``folder_reward_model``). ``tokenizer``: the policy's, when it comes from a model folder (the reward model
    must read the same ids)."""
    if is_model_folder(Path(run_dir)):
        return folder_reward_model(Path(run_dir), device, "lm_ppo.reward_model", tokenizer)
    config = load_run_config(Path(run_dir))
    if config.algo != RM_ALGO or not isinstance(config.algo_config, LMRewardModelConfig):
        raise ConfigError(f"lm_ppo.reward_model: {run_dir} is a '{config.algo}' run, not a reward model ({RM_ALGO})")
    check_reward_tokens(config.algo_config, run_dir, tokenizer)
    if config.algo_config.model.path is None and max_new_tokens > config.algo_config.max_new_tokens:
        raise ConfigError(
            f"lm_ppo.max_new_tokens must be <= {config.algo_config.max_new_tokens}, the longest response the reward "
            f"model in {run_dir} was built for; got {max_new_tokens}"
        )
    task = DigitsTask(config.algo_config.max_new_tokens)
    members = [build_reward_model(config.algo_config, task) for _ in range(config.algo_config.ensemble_size)]
    path = CheckpointStore(Path(run_dir), config.run.keep_checkpoints).path("best")
    load_modules({member_name(m): model for m, model in enumerate(members)}, read_train_state(path), path)
    for model in members:
        model.requires_grad_(False)
        model.train(False)
    return LearnedReward([model.to(device) for model in members], rule, std_coef)
