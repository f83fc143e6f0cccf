"""Reward-model training on preference pairs (``pgrad lm rm``), and loading a trained one for PPO.

The task's synthetic pairs (``DigitsTask.preference_pairs``: the response with the higher hidden true
score is the chosen one) are drawn once from ``run.seed`` (training) and once from another seed
(held out). Each gradient step takes ``batch_size`` training pairs uniformly with replacement and
descends the Bradley-Terry loss -log sigmoid(s_chosen - s_rejected). Every ``eval_every`` pairs (and
at the end) a row of metrics: training loss and accuracy since the last row, held-out loss and
accuracy, and the correlation of the score with the true score over the held-out responses.

Checkpoints (safetensors + JSON through ``RunContext``) are scored by the held-out accuracy, so the
``best`` checkpoint is the one PPO loads (``lm_ppo.reward: model``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pgrad import __version__
from pgrad.checkpoint import CheckpointStore, TrainState, load_modules, load_optimizers, read_train_state
from pgrad.config import TrainConfig
from pgrad.errors import CheckpointError, ConfigError
from pgrad.lm.config import RM_ALGO, LMRewardModelConfig, load_run_config
from pgrad.lm.losses import bradley_terry_loss
from pgrad.lm.model import RewardModel, tiny_gpt2_config
from pgrad.lm.reward import LearnedReward
from pgrad.lm.task import DigitsTask, PreferencePairs
from pgrad.runners.context import RunContext, TrainResult, seed_everything
from pgrad.threads import set_threads

HELDOUT_SEED_OFFSET = 1_000_003  # the held-out pairs' generator: run.seed + this (the training pairs': run.seed)


def build_reward_model(config: LMRewardModelConfig, task: DigitsTask) -> RewardModel:
    model_config = tiny_gpt2_config(
        task.tokenizer.vocab_size,
        n_positions=task.max_prompt_length + config.max_new_tokens,
        n_layer=config.n_layer,
        n_embd=config.n_embd,
        n_head=config.n_head,
    )
    return RewardModel(model_config)


def pair_scores(model: RewardModel, pairs: PreferencePairs, index: Tensor) -> tuple[Tensor, Tensor]:
    """(chosen scores, rejected scores) of the pairs at ``index``, in one forward pass of both."""
    prompts = pairs.prompts
    ids, mask = prompts.ids[index], prompts.mask[index]
    both = model(
        torch.cat([ids, ids]),
        torch.cat([mask, mask]),
        torch.cat([pairs.chosen[index], pairs.rejected[index]]),
        torch.cat([pairs.chosen_mask[index], pairs.rejected_mask[index]]),
    )
    return both[: len(index)], both[len(index) :]


class RewardModelRunner:
    """``pgrad lm rm`` / ``pgrad lm resume`` of an ``lm_rm`` run: see the module docstring."""

    def __init__(
        self, config: TrainConfig, run_dir: Path, resume: bool = False, console: bool = True, overwrite: bool = False
    ) -> None:
        if config.algo != RM_ALGO or not isinstance(config.algo_config, LMRewardModelConfig):
            raise ConfigError(f"RewardModelRunner runs '{RM_ALGO}' configs; got '{config.algo}'")
        self.config = config
        self.rm: LMRewardModelConfig = config.algo_config
        self.run = RunContext(config, run_dir, resume, overwrite)
        self.run_dir = self.run.run_dir
        set_threads(config.run.torch_threads)
        seed_everything(config.run.seed)
        self.task = DigitsTask(self.rm.max_new_tokens)
        seed = config.run.seed
        self.train_pairs = self.task.preference_pairs(self.rm.train_pairs, torch.Generator().manual_seed(seed))
        self.heldout = self.task.preference_pairs(
            self.rm.heldout_pairs, torch.Generator().manual_seed(seed + HELDOUT_SEED_OFFSET)
        )
        self.model = build_reward_model(self.rm, self.task).eval()  # dropout is off in the config anyway
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.rm.learning_rate)
        self.step = 0  # pairs trained on
        self.updates = 0
        resume_from = self.run.latest_state() if resume else None
        self.run.open(console, f"{RM_ALGO} {self.task.name}")
        if resume_from is not None:
            try:
                self.load(*resume_from)
            except BaseException:
                self.run.close()
                raise
        else:
            self.run.started_event(f", {len(self.train_pairs)} training and {len(self.heldout)} held-out pairs")

    @property
    def stop_requested(self) -> bool:
        return self.run.stop_requested

    def train_state(self) -> TrainState:
        return TrainState(
            algo=RM_ALGO,
            step=self.step,
            updates=self.updates,
            elapsed_seconds=self.run.elapsed(),
            config=self.config.to_dict(),
            modules={"reward_model": {k: v.detach().clone() for k, v in self.model.state_dict().items()}},
            optimizers={"reward_model": self.optimizer.state_dict()},
            rng_torch=torch.get_rng_state(),
            pgrad_version=__version__,
        )

    def load(self, state: TrainState, path: Path) -> None:
        load_modules({"reward_model": self.model}, state, path)
        load_optimizers({"reward_model": self.optimizer}, state, path)
        if state.rng_torch is None:
            raise CheckpointError(f"checkpoint {path} lacks the torch RNG state")
        torch.set_rng_state(state.rng_torch)
        self.step, self.updates = state.step, state.updates

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out loss and accuracy, and the Pearson correlation of score with true score over the
        held-out responses (chosen and rejected together)."""
        index = torch.arange(len(self.heldout))
        chosen, rejected = pair_scores(self.model, self.heldout, index)
        loss, accuracy = bradley_terry_loss(chosen, rejected)
        pairs = self.heldout
        true = torch.cat(
            [
                self.task.true_score(pairs.prompts.last_digit, pairs.chosen, pairs.chosen_mask),
                self.task.true_score(pairs.prompts.last_digit, pairs.rejected, pairs.rejected_mask),
            ]
        )
        correlation = torch.corrcoef(torch.stack([torch.cat([chosen, rejected]), true]))[0, 1]
        return {
            "eval/rm_loss": float(loss),
            "eval/rm_accuracy": float(accuracy),
            "eval/rm_true_correlation": float(correlation),
        }

    def train_steps(self, until_step: int) -> dict[str, Any]:
        """Gradient steps until ``until_step`` pairs; returns the row (training means, held-out metrics)."""
        started, losses, accuracies = time.perf_counter(), [], []
        size = self.rm.batch_size
        while self.step < until_step and not self.run.stop_requested:
            index = torch.randint(0, len(self.train_pairs), (size,))
            chosen, rejected = pair_scores(self.model, self.train_pairs, index)
            loss, accuracy = bradley_terry_loss(chosen, rejected)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.rm.max_grad_norm)
            self.optimizer.step()
            losses.append(float(loss.detach()))
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
            "perf/steps_per_second": size * len(losses) / max(seconds, 1e-9),
        }

    def train(self, stop_at_step: int | None = None) -> TrainResult:
        self.run.started = time.perf_counter()
        metrics: dict[str, Any] = {}
        total = self.config.run.total_steps
        every = self.rm.eval_every
        try:
            with self.run.stop_signals():
                try:
                    while self.step < total and not self.run.stop_requested:
                        row_end = min((self.step // every + 1) * every, total)
                        if stop_at_step is not None:
                            row_end = min(row_end, stop_at_step)
                        metrics = self.train_steps(row_end)
                        self.run.log(metrics)
                        if self.step - self.run.last_checkpoint_step >= self.config.run.checkpoint_every:
                            self.run.save_checkpoint(self.train_state(), metrics["eval/rm_accuracy"])
                        if stop_at_step is not None and self.step >= stop_at_step:
                            break
                finally:
                    self.run.flush()
                self.run.second_interrupts = False
                checkpoint = None
                if self.run.needs_final_checkpoint(self.step):
                    checkpoint = self.run.save_checkpoint(self.train_state(), metrics.get("eval/rm_accuracy"))
            result = self.run.finish(self.step, self.updates, metrics, checkpoint)
        finally:
            self.run.close()
        return result


def load_reward_model(run_dir: Path, max_new_tokens: int, device: torch.device) -> LearnedReward:
    """The best checkpoint (held-out accuracy) of an ``lm_rm`` run folder, frozen, as a PPO scorer."""
    config = load_run_config(Path(run_dir))
    if config.algo != RM_ALGO or not isinstance(config.algo_config, LMRewardModelConfig):
        raise ConfigError(f"lm_ppo.reward_model: {run_dir} is a '{config.algo}' run, not a reward model ({RM_ALGO})")
    if max_new_tokens > config.algo_config.max_new_tokens:
        raise ConfigError(
            f"lm_ppo.max_new_tokens must be <= {config.algo_config.max_new_tokens}, the longest response the reward "
            f"model in {run_dir} was built for; got {max_new_tokens}"
        )
    task = DigitsTask(config.algo_config.max_new_tokens)
    model = build_reward_model(config.algo_config, task)
    path = CheckpointStore(Path(run_dir), config.run.keep_checkpoints).path("best")
    load_modules({"reward_model": model}, read_train_state(path), path)
    model.requires_grad_(False)
    model.train(False)
    return LearnedReward(model.to(device))
