"""Language-model benchmarks (issue 10): PPO step cost against a hand-written loop, generation speed, TRL's
GRPOTrainer side by side, and PPO / ensemble / RLOO / GRPO / DPO on the digits task. Markdown tables out.

    .venv/bin/python benchmarks/bench_lm.py step --repeats 15        # a: one PPO step, pgrad vs a minimal loop
    .venv/bin/python benchmarks/bench_lm.py generate                 # b: tokens/s of pgrad's sampler and HF generate
    .venv/bin/python benchmarks/bench_lm.py trl --seeds 1            # c: pgrad GRPO vs TRL GRPOTrainer (trl 1.16)
    .venv/bin/python benchmarks/bench_lm.py table --seeds 1 2 3      # d: true score and KL per method
    .venv/bin/python benchmarks/bench_lm.py arith                    # e: GRPO vs TRL on your own model/data/reward

Everything runs on the CPU with one torch thread and the tiny GPT-2 (2 layers, width 64) of ``pgrad.lm``; nothing
is downloaded (TRL gets the model and tokenizer as a local folder written here, and HF_HUB_OFFLINE=1). Every
table comes with the commit, the date, the 1-minute load average (before and after) and CPU seconds
(``time.process_time``, the whole process) beside wall seconds: on a shared machine the CPU seconds are the
steadier measure.

a. ``step``: one PPO update (sampling 64 responses of up to 8 tokens with a KV cache, log-probs of policy and
   reference, values, reward-model scores, token rewards, GAE, whitening, 4 epochs x 4 minibatches of the
   clipped surrogate + value loss) in pgrad (``LMPPORunner``'s update with the guard on, and without) and in a
   minimal hand-written loop below (plain transformers + torch: the same model, reward model, batch, lengths,
   epochs and minibatches; no guard, no metrics, no chunking of the no-gradient passes). The two alternate,
   each round in the other order, after warm-up steps; the table gives medians and the median of the
   per-round ratios.
b. ``generate``: tokens generated per second (real tokens, the EOS included) by ``pgrad.lm.model.sample`` and by
   ``GPT2LMHeadModel.generate`` (do_sample, same temperature), same prompts and model.
c. ``trl``: from the same SFT model, on the same reward model, GRPO with 4 responses per prompt, 64 responses
   per rollout, minibatches of 16, 4 passes, beta 0.05 with k3 in the loss, constant learning rate 1e-3, 4096
   responses in all: pgrad (``advantage: grpo``, ``kl_penalty: loss``) and TRL's ``GRPOTrainer`` (reward function
   = the reward model's score). Seconds per rollout of 64 responses and the true score reached, both evaluated
   by ``pgrad.lm.evaluate.evaluate_policy`` on the same held-out prompts and noise.
d. ``table``: SFT then (same SFT start, 4096 responses or pairs each) PPO on one reward model, PPO on the
   minimum of an ensemble of 3, RLOO and GRPO (4 per prompt, on the single reward model) and DPO: held-out
   true score and KL to the SFT model at the end.
e. ``arith`` (issue 23): a Llama-architecture model of 2.7 million weights built here (``pgrad.lm.toy``) and the
   arithmetic task (``a+b=`` with an ``answer`` column, train and held-out JSONL): SFT on the demonstrations with
   ``pgrad lm sft --set model=DIR --set dataset=FILE``, ``pgrad lm export``, then from that same start folder GRPO
   with ``pgrad lm grpo --set reward=verifier:exact_answer`` and with TRL's ``GRPOTrainer`` (reward function: the
   same check), same data and settings, each side in a process of its own (``bench_lm_arith_side.py``), one after
   the other. TRL runs in its own venv, ``benchmarks/.venv-trl`` (made here on first use: torch==2.13.0 first, then
   trl 1.16 and this venv's transformers, pip held to that torch). Held-out accuracy: greedy decoding of both final
   folders, loaded with transformers here.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import GPT2LMHeadModel, GPT2Model

from pgrad.lm.evaluate import evaluate_policy
from pgrad.lm.model import RewardModel, sample, tiny_gpt2_config
from pgrad.lm.reward import CombinedReward, LearnedReward
from pgrad.lm.reward_spec import RewardTerm
from pgrad.lm.task import DigitsTask
from pgrad.runners import trunk
from pgrad.runners.lm_dpo import DPORunner
from pgrad.runners.lm_ppo import LMPPORunner
from pgrad.runners.lm_rm import RewardModelRunner, load_reward_model
from pgrad.runners.lm_sft import SFTRunner, load_sft_state
from pgrad.runs import resolve_config

BATCH, MINIBATCH, EPOCHS, NEW_TOKENS = 64, 16, 4, 8
LEARNING_RATE, KL_COEF, CLIP, VF_COEF, GAMMA, LAMBDA = 1e-3, 0.05, 0.2, 0.1, 1.0, 0.95


def header(title: str) -> list[str]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    return [
        f"### {title}",
        "",
        f"`python benchmarks/bench_lm.py {' '.join(sys.argv[1:])}`; commit {commit}"
        f"{' (with uncommitted changes)' if dirty.stdout.strip() else ''}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, 1 torch thread; load (1 min) {os.getloadavg()[0]:.2f} at the start",
        "",
    ]


def footer(started_wall: float, started_cpu: float) -> list[str]:
    wall, cpu = time.perf_counter() - started_wall, time.process_time() - started_cpu
    return ["", f"load (1 min) {os.getloadavg()[0]:.2f} at the end; {wall:.0f} s wall, {cpu:.0f} s CPU in all", ""]


# ---- a. one PPO step: a minimal hand-written loop --------------------------------------------------------


def positions(mask: Tensor) -> Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


class HandPPO:
    """PPO on a causal LM as one would write it by hand with transformers and torch (InstructGPT's recipe)."""

    def __init__(self, vocab: int, n_positions: int, eos: int, seed: int) -> None:
        torch.manual_seed(seed)
        config = tiny_gpt2_config(vocab, n_positions)
        self.policy = GPT2LMHeadModel(config).eval()
        self.value_head = nn.Linear(config.n_embd, 1)
        self.reference = GPT2LMHeadModel(config).eval()
        self.reference.load_state_dict(self.policy.state_dict())
        self.rm_trunk, self.rm_head = GPT2Model(config).eval(), nn.Linear(config.n_embd, 1)
        params = list(self.policy.parameters()) + list(self.value_head.parameters())
        self.params = params
        self.optimizer = torch.optim.Adam(params, lr=LEARNING_RATE, eps=1e-5)
        self.eos = eos

    def forward(self, model: GPT2LMHeadModel, ids: Tensor, mask: Tensor, start: int) -> tuple[Tensor, Tensor]:
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), output_hidden_states=True)
        logits = out.logits[:, start - 1 : -1].float()
        return torch.log_softmax(logits, -1), out.hidden_states[-1][:, start - 1 : -1]

    @torch.no_grad()
    def generate(self, prompt: Tensor, prompt_mask: Tensor) -> tuple[Tensor, Tensor]:
        mask, out = (
            prompt_mask,
            self.policy(input_ids=prompt, attention_mask=prompt_mask, position_ids=positions(prompt_mask)),
        )
        done = torch.zeros(prompt.shape[0], dtype=torch.bool)
        tokens, real = [], []
        for step in range(NEW_TOKENS):
            token = torch.multinomial(torch.softmax(out.logits[:, -1].float(), -1), 1).squeeze(1)
            token = torch.where(done, self.eos, token)
            real.append(~done)
            tokens.append(token)
            done = done | (token == self.eos)
            if bool(done.all()) or step == NEW_TOKENS - 1:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            out = self.policy(
                input_ids=token[:, None],
                attention_mask=mask,
                position_ids=positions(mask)[:, -1:],
                cache=out.cache,
                use_cache=True,
            )
        return torch.stack(tokens, 1), torch.stack(real, 1).float()

    def step(self, prompt: Tensor, prompt_mask: Tensor) -> None:
        response, rmask = self.generate(prompt, prompt_mask)
        ids, mask = torch.cat([prompt, response], 1), torch.cat([prompt_mask, rmask.long()], 1)
        start, last = prompt.shape[1], (rmask.sum(1) - 1).long()
        with torch.no_grad():
            logp_all, hidden = self.forward(self.policy, ids, mask, start)
            old_logp = logp_all.gather(-1, response[..., None]).squeeze(-1) * rmask
            old_values = self.value_head(hidden).squeeze(-1) * rmask
            ref_logp = self.forward(self.reference, ids, mask, start)[0].gather(-1, response[..., None]).squeeze(-1)
            rm_hidden = self.rm_trunk(
                input_ids=ids, attention_mask=mask, position_ids=positions(mask)
            ).last_hidden_state
            score = self.rm_head(rm_hidden[torch.arange(len(ids)), start + last]).squeeze(-1)
            rewards = -KL_COEF * (old_logp - ref_logp * rmask)
            rewards[torch.arange(len(ids)), last] += score
            advantages, running = torch.zeros_like(rewards), torch.zeros(len(ids))
            for t in reversed(range(rewards.shape[1])):
                next_value = old_values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros(len(ids))
                delta = rewards[:, t] + GAMMA * next_value - old_values[:, t]
                running = (delta + GAMMA * LAMBDA * running) * rmask[:, t]
                advantages[:, t] = running
            returns = advantages + old_values
            count = rmask.sum()
            mean = (advantages * rmask).sum() / count
            var = (((advantages - mean) ** 2) * rmask).sum() / count
            advantages = (advantages - mean) * torch.rsqrt(var + 1e-8) * rmask
        for epoch in range(EPOCHS):
            order = torch.arange(len(ids)) if epoch == 0 else torch.randperm(len(ids))
            for index in order.split(MINIBATCH):
                m = rmask[index]
                logp_all, hidden = self.forward(self.policy, ids[index], mask[index], start)
                logp = logp_all.gather(-1, response[index][..., None]).squeeze(-1)
                values = self.value_head(hidden).squeeze(-1)
                ratio = torch.exp(logp - old_logp[index])
                surrogate = torch.min(ratio * advantages[index], ratio.clamp(1 - CLIP, 1 + CLIP) * advantages[index])
                clipped = old_values[index] + (values - old_values[index]).clamp(-CLIP, CLIP)
                value_loss = 0.5 * torch.max((values - returns[index]) ** 2, (clipped - returns[index]) ** 2)
                loss = -(surrogate * m).sum() / m.sum() + VF_COEF * (value_loss * m).sum() / m.sum()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.params, 1.0)
                self.optimizer.step()


def timed(function: Any) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_step(args: argparse.Namespace) -> list[str]:
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench-lm-"))
    config = resolve_config("lm_ppo", None, None, ["eval_every=0", "checkpoint_every=100000000"], 1, 10**9)[0]
    runner = LMPPORunner(config, work / "ppo", console=False)
    task = runner.task
    # the same reward-model architecture on both sides (fresh weights: the cost, not the score, is measured)
    model_config = tiny_gpt2_config(task.tokenizer.vocab_size, task.max_prompt_length + NEW_TOKENS)
    learned = LearnedReward([RewardModel(model_config).eval()])
    runner.scorer = CombinedReward([(RewardTerm("model", name="model"), learned)], task)  # reward: model
    hand = HandPPO(task.tokenizer.vocab_size, task.max_prompt_length + NEW_TOKENS, task.tokenizer.eos_id, 1)
    prompt_gen = torch.Generator().manual_seed(7)

    def pgrad_guarded() -> None:
        metrics = runner.guarded_update()
        trunk.carry_out(runner, runner.judge(metrics))
        runner.history.append(metrics)

    def pgrad_bare() -> None:
        runner.update()

    def hand_step() -> None:
        prompts = task.prompts(BATCH, prompt_gen)
        hand.step(prompts.ids, prompts.mask)

    sides = {"pgrad (guard on)": pgrad_guarded, "pgrad update() alone": pgrad_bare, "hand-written loop": hand_step}
    for _ in range(args.warmup):
        for function in sides.values():
            function()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    names = list(sides)
    for round_index in range(args.repeats):
        for name in names if round_index % 2 == 0 else names[::-1]:
            times[name].append(timed(sides[name]))
    runner.run.close()
    hand_wall = [w for w, _ in times["hand-written loop"]]
    hand_cpu = [c for _, c in times["hand-written loop"]]
    lines = [
        "| loop | median wall s / step | median CPU s / step | median ratio to the hand loop (wall) | (CPU) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in names:
        wall = [w for w, _ in times[name]]
        cpu = [c for _, c in times[name]]
        ratio_wall = statistics.median(w / h for w, h in zip(wall, hand_wall, strict=True))
        ratio_cpu = statistics.median(c / h for c, h in zip(cpu, hand_cpu, strict=True))
        lines.append(
            f"| {name} | {statistics.median(wall):.4f} | {statistics.median(cpu):.4f} | {ratio_wall:.3f} | "
            f"{ratio_cpu:.3f} |"
        )
    note = (
        f"{args.repeats} rounds after {args.warmup} warm-up rounds, the order reversed every other round; one step = "
        f"{BATCH} responses of up to {NEW_TOKENS} tokens, {EPOCHS} epochs x {BATCH // MINIBATCH} minibatches."
    )
    return [*lines, "", note]


# ---- b. generation tokens/s -------------------------------------------------------------------------------


def generation_rates(batch: int, new_tokens: int, repeats: int) -> dict[str, tuple[float, float]]:
    """{"pgrad": (tokens/s wall, tokens/s CPU), "hf": ...}: medians over ``repeats`` alternating calls."""
    task = DigitsTask(new_tokens)
    tok = task.tokenizer
    torch.manual_seed(0)
    model = GPT2LMHeadModel(tiny_gpt2_config(tok.vocab_size, task.max_prompt_length + new_tokens)).eval()
    # the EOS logit pushed down: a random model would stop after ~13 tokens; both samplers see the same model
    with torch.no_grad():
        model.lm_head.weight[tok.eos_id] -= 3.0
    prompts = task.prompts(batch, torch.Generator().manual_seed(1))

    def run_pgrad() -> int:
        out = sample(model, prompts.ids, prompts.mask, new_tokens, tok.eos_id, tok.pad_id, 1.0)
        return int(out.mask.sum())

    def run_hf() -> int:
        with torch.no_grad():
            out = model.generate(
                input_ids=prompts.ids,
                attention_mask=prompts.mask,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                max_new_tokens=new_tokens,
                pad_token_id=tok.pad_id,
                eos_token_id=tok.eos_id,
            )
        new = out[:, prompts.ids.shape[1] :]
        is_eos = (new == tok.eos_id).long()
        return int((is_eos.cumsum(1) - is_eos == 0).sum())  # real tokens: up to and including the first EOS

    counts: dict[str, list[tuple[float, float, int]]] = {"pgrad": [], "hf": []}
    for repeat in range(repeats + 1):
        order = (("pgrad", run_pgrad), ("hf", run_hf))
        for name, function in order if repeat % 2 else order[::-1]:
            wall, cpu = time.perf_counter(), time.process_time()
            tokens = function()
            if repeat:  # the first round warms up
                counts[name].append((time.perf_counter() - wall, time.process_time() - cpu, tokens))
    return {
        name: (
            statistics.median(n / w for w, _, n in values),
            statistics.median(n / max(c, 1e-9) for _, c, n in values),
        )
        for name, values in counts.items()
    }


def bench_generate(args: argparse.Namespace) -> list[str]:
    torch.set_num_threads(1)
    lines = [
        "| batch | max new tokens | pgrad sample: tokens/s (wall) | tokens/s (CPU) | HF generate: tokens/s (wall) "
        "| tokens/s (CPU) | pgrad / HF (wall) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for batch, new_tokens in ((64, 8), (256, 8), (64, 64)):
        rates = generation_rates(batch, new_tokens, args.repeats)
        lines.append(
            f"| {batch} | {new_tokens} | {rates['pgrad'][0]:,.0f} | {rates['pgrad'][1]:,.0f} | {rates['hf'][0]:,.0f} | "
            f"{rates['hf'][1]:,.0f} | {rates['pgrad'][0] / rates['hf'][0]:.2f} |"
        )
    note = (
        f"Median over {args.repeats} calls each (alternating, after one warm-up call): real tokens (up to and "
        "including the EOS) per second, temperature 1, no top-k/top-p, the EOS logit lowered by 3 so responses run "
        "longer; HF generate with do_sample and its KV cache."
    )
    return [*lines, "", note]


# ---- the pipeline the comparisons start from ---------------------------------------------------------------


@dataclass
class Pipeline:
    sft: Path
    rm: Path
    rm3: Path | None


def pipeline(work: Path, seed: int, ensemble: bool) -> Pipeline:
    """SFT (8192 demonstrations) and the reward model (16384 pairs), the README's commands with ``seed``."""
    SFTRunner(resolve_config("lm_sft", None, None, [], seed, None)[0], work / "sft", console=False).train()
    RewardModelRunner(resolve_config("lm_rm", None, None, [], seed, None)[0], work / "rm", console=False).train()
    rm3 = None
    if ensemble:
        rm3 = work / "rm3"
        RewardModelRunner(
            resolve_config("lm_rm", None, None, ["ensemble_size=3"], seed, None)[0], rm3, console=False
        ).train()
    return Pipeline(work / "sft", work / "rm", rm3)


def evaluations(run_dir: Path) -> list[dict[str, float]]:
    import json

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if "eval/true_score" in row]


def last_eval(run_dir: Path) -> dict[str, float]:
    return evaluations(run_dir)[-1]


# token_mean: the loss this comparison was recorded with (GRPO's default became the per-response mean since)
GRPO_SETS = ["advantage=grpo", "samples_per_prompt=4", "kl_penalty=loss", f"kl_coef={KL_COEF}", "loss_type=token_mean"]


def ppo_run(name: str, work: Path, seed: int, sets: list[str], responses: int) -> tuple[dict[str, float], float, float]:
    config = resolve_config("lm_ppo", None, None, ["eval_every=4096", *sets], seed, responses)[0]
    wall, cpu = time.perf_counter(), time.process_time()
    LMPPORunner(config, work / name, console=False).train()
    return last_eval(work / name), time.perf_counter() - wall, time.process_time() - cpu


# ---- c. TRL's GRPOTrainer ------------------------------------------------------------------------------------


def trl_grpo(work: Path, seed: int, pipe: Pipeline, responses: int) -> tuple[dict[str, float], float, float, int]:
    """TRL 1.16 GRPOTrainer from the same SFT model on the same reward model; returns (evaluation, wall, cpu,
    rollouts). The model and an in-process tokenizer go to TRL as a local folder (nothing is downloaded)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from datasets import Dataset
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from trl import GRPOConfig, GRPOTrainer

    from pgrad.lm.config import LMPPOConfig

    task = DigitsTask(NEW_TOKENS)
    tok = task.tokenizer
    backend = Tokenizer(models.WordLevel({s: i for i, s in enumerate(tok.symbols)}, unk_token="<eos>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    backend.decoder = decoders.Fuse()
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<eos>", bos_token="<bos>")
    start = GPT2LMHeadModel(tiny_gpt2_config(tok.vocab_size, task.max_prompt_length + NEW_TOKENS))
    from pgrad.checkpoint import load_modules

    load_modules({"lm": start}, *load_sft_state(pipe.sft, LMPPOConfig()))
    model_dir = work / "trl-start"
    start.save_pretrained(model_dir)
    hf_tok.save_pretrained(model_dir)
    prompts = task.prompts(responses, torch.Generator().manual_seed(seed))
    digits = [
        [tok.digit_values(t).item() for t in row[m > 0][1:-1]] for row, m in zip(prompts.ids, prompts.mask, strict=True)
    ]
    texts = [tok.decode([int(t) for t in row[m > 0]]) for row, m in zip(prompts.ids, prompts.mask, strict=True)]
    dataset = Dataset.from_dict({"prompt": texts, "digits": digits})
    scorer = load_reward_model(pipe.rm, NEW_TOKENS, torch.device("cpu"))
    rollouts = []

    def reward(
        prompts: list[str], completions: list[str], completion_ids: list[list[int]], digits: list[list[int]], **_: Any
    ) -> list[float]:
        rollouts.append(len(completions))
        batch = task.prompts_from_digits(digits)
        width = max(len(ids) for ids in completion_ids)
        response = torch.full((len(completion_ids), width), tok.pad_id)
        mask = torch.zeros(len(completion_ids), width, dtype=torch.long)
        for row, ids in enumerate(completion_ids):
            response[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        return scorer.score(batch, response, mask).tolist()

    steps = responses // MINIBATCH * EPOCHS  # optimizer steps: each rollout of 64 feeds 4 minibatches x 4 passes
    trl_args = GRPOConfig(
        output_dir=str(work / "trl"),
        per_device_train_batch_size=MINIBATCH,
        num_generations=4,
        steps_per_generation=BATCH // MINIBATCH,
        num_iterations=EPOCHS,
        max_completion_length=NEW_TOKENS,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="constant",
        beta=KL_COEF,
        temperature=1.0,
        max_grad_norm=1.0,
        max_steps=steps,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        logging_steps=steps,
        seed=seed,
        bf16=False,
        disable_tqdm=True,
    )
    trainer = GRPOTrainer(
        model=str(model_dir), reward_funcs=reward, args=trl_args, train_dataset=dataset, processing_class=hf_tok
    )
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    trained = trainer.model.eval()
    evaluation = evaluate_policy(trained, start.eval(), task, scorer, 256, seed + 1, 1.0)
    return evaluation, wall, cpu, len(rollouts)


def bench_trl(args: argparse.Namespace) -> list[str]:
    torch.set_num_threads(1)
    lines = [
        "| seed | library | rollouts of 64 | wall s | CPU s | wall s / rollout | CPU s / rollout "
        "| true score (held-out) | RM score | KL to SFT (nats) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for seed in args.seeds:
        work = Path(tempfile.mkdtemp(prefix="bench-lm-trl-"))
        pipe = pipeline(work, seed, ensemble=False)
        sets = ["reward=model", f"reward_model={pipe.rm}", f"init_from={pipe.sft}", *GRPO_SETS]
        ours, wall, cpu = ppo_run("grpo", work, seed, sets, args.responses)
        start = evaluations(work / "grpo")[0]  # step 0: the SFT model on the same held-out prompts and noise
        lines.append(
            f"| {seed} | SFT start | | | | | | {start['eval/true_score']:.3f} | {start['eval/rm_score']:.2f} | 0 |"
        )
        count = args.responses // BATCH
        lines.append(
            f"| {seed} | pgrad GRPO | {count} | {wall:.1f} | {cpu:.1f} | {wall / count:.3f} | {cpu / count:.3f} | "
            f"{ours['eval/true_score']:.3f} | {ours['eval/rm_score']:.2f} | {ours['eval/kl']:.2f} |"
        )
        try:
            theirs, wall, cpu, count = trl_grpo(work, seed, pipe, args.responses)
        except Exception as exc:  # noqa: BLE001 - the table says why TRL did not run
            lines.append(f"| {seed} | TRL GRPOTrainer | failed: {type(exc).__name__}: {exc} | | | | | | | |")
            continue
        lines.append(
            f"| {seed} | TRL GRPOTrainer | {count} | {wall:.1f} | {cpu:.1f} | {wall / count:.3f} | {cpu / count:.3f} | "
            f"{theirs['eval/true_score']:.3f} | {theirs['eval/rm_score']:.2f} | {theirs['eval/kl']:.2f} |"
        )
    note = (
        f"{args.responses} responses each (16 prompts x 4 per rollout), minibatches of {MINIBATCH}, {EPOCHS} passes, "
        f"lr {LEARNING_RATE} constant, beta {KL_COEF} x k3 in the loss; evaluation: 256 held-out prompts, seed + 1, "
        "one sample each (pgrad's evaluate_policy for both). TRL computes its own loss normalisation (loss_type "
        "default) and position ids (arange, prompts left-padded) and Adam eps 1e-8; pgrad position ids count real "
        "tokens and Adam eps is 1e-5. pgrad's wall and CPU seconds include its two evaluations (start and end) "
        "and checkpoints; TRL's are those of trainer.train()."
    )
    return [*lines, "", note]


# ---- d. the methods side by side on the digits task -------------------------------------------------------


def bench_table(args: argparse.Namespace) -> list[str]:
    torch.set_num_threads(1)
    methods = ["SFT start", "PPO, one RM", "PPO, ensemble min (3)", "RLOO (4 per prompt)", "GRPO (4 per prompt)", "DPO"]
    results: dict[str, list[tuple[float, float, float]]] = {m: [] for m in methods}
    rows: list[tuple[str, dict[str, float], float]]
    lines = [
        "| seed | method | true score (held-out) | KL to SFT (nats / response) | wall s |",
        "|---:|---|---:|---:|---:|",
    ]
    for seed in args.seeds:
        work = Path(tempfile.mkdtemp(prefix="bench-lm-table-"))
        pipe = pipeline(work, seed, ensemble=True)
        rows = []
        base = [f"init_from={pipe.sft}", "reward=model"]
        for method, name, sets in (
            ("PPO, one RM", "ppo", [*base, f"reward_model={pipe.rm}"]),
            ("PPO, ensemble min (3)", "ppo3", [*base, f"reward_model={pipe.rm3}", "ensemble_combine=min"]),
            (
                "RLOO (4 per prompt)",
                "rloo",
                [*base, f"reward_model={pipe.rm}", "advantage=rloo", "samples_per_prompt=4"],
            ),
            ("GRPO (4 per prompt)", "grpo", [*base, f"reward_model={pipe.rm}", *GRPO_SETS]),
        ):
            evaluation, wall, _ = ppo_run(name, work, seed, sets, args.responses)
            if not rows:  # step 0 of the first run: the SFT model on the same held-out prompts and noise
                rows.append(("SFT start", evaluations(work / name)[0], 0.0))
            rows.append((method, evaluation, wall))
        dpo_config = resolve_config(
            "lm_dpo", None, None, [f"init_from={pipe.sft}", "eval_every=4096"], seed, args.responses
        )[0]
        wall = time.perf_counter()
        DPORunner(dpo_config, work / "dpo", console=False).train()
        rows.append(("DPO", last_eval(work / "dpo"), time.perf_counter() - wall))
        for method, evaluation, seconds in rows:
            results[method].append((evaluation["eval/true_score"], evaluation["eval/kl"], seconds))
            lines.append(
                f"| {seed} | {method} | {evaluation['eval/true_score']:.3f} | {evaluation['eval/kl']:.2f} | "
                f"{seconds:.1f} |"
            )
    if len(args.seeds) > 1:
        lines += ["", "| method | mean true score | min | max | mean KL |", "|---|---:|---:|---:|---:|"]
        for method, values in results.items():
            scores = [v[0] for v in values]
            lines.append(
                f"| {method} | {statistics.fmean(scores):.3f} | {min(scores):.3f} | {max(scores):.3f} | "
                f"{statistics.fmean(v[1] for v in values):.2f} |"
            )
    note = (
        f"Each seed: SFT on 8192 demonstrations, reward models on 16384 pairs (one, and an ensemble of 3), then "
        f"{args.responses} responses (PPO, RLOO, GRPO; batch 64, lr 1e-3, kl_coef 0.05) or {args.responses} pairs "
        "(DPO, beta 0.1, batch 64) from the best SFT checkpoint; evaluation on 256 held-out prompts (seed + 1), "
        "the SFT row being the same prompts and noise on the SFT model."
    )
    return [*lines, "", note]


# ---- e. GRPO against TRL on a model, data and reward of your own (issue 23) -----------------------------------

BENCH_DIR = Path(__file__).resolve().parent
TRL_VENV = BENCH_DIR / ".venv-trl"


def trl_python() -> Path:
    """The TRL venv's python, made on first use: torch==2.13.0 first (the CPU wheel; an unpinned torch pulls CUDA
    gigabytes), then trl 1.16, datasets and this venv's transformers with pip held to that torch (a constraint:
    pip stops rather than change it)."""
    import transformers

    python = TRL_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(TRL_VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, f"torch=={torch.__version__.split('+')[0]}"], check=True)
        pin = TRL_VENV / "torch-pin.txt"
        pin.write_text(f"torch=={torch.__version__.split('+')[0]}\n")
        subprocess.run([*pip, "-c", str(pin), "trl==1.16.*", f"transformers=={transformers.__version__}", "datasets"])
    versions = subprocess.run(
        [
            str(python),
            "-c",
            "import torch, trl, transformers as t; print(torch.__version__, trl.__version__, t.__version__)",
        ],
        capture_output=True,
        text=True,
    ).stdout.split()
    if versions[:1] != [torch.__version__] or not versions[1].startswith("1.16"):
        raise SystemExit(f"{TRL_VENV}: torch/trl/transformers are {versions}; expected {torch.__version__}, 1.16.*")
    return python


def child_env() -> dict[str, str]:
    """The environment of the children: this pgrad first on the path, nothing downloaded, one OpenMP thread."""
    import pgrad

    source = str(Path(pgrad.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": source, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def pgrad_cli(*argv: str) -> float:
    """``python -m pgrad ARGV`` in a process of its own; its wall seconds."""
    wall = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pgrad", *argv], env=child_env(), check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - wall


def greedy_accuracy(folder: Path, rows_file: Path, new_tokens: int) -> float:
    """Exact-answer accuracy of greedy decoding (``verifier:exact_answer``'s check) on every row of ``rows_file``,
    the model and tokenizer loaded from ``folder`` with transformers' Auto classes. Prompts are batched by their
    length in tokens, so no batch is padded: position ids are 0, 1, 2... in every convention (pgrad counts real
    tokens, TRL and ``generate`` count from the first column, padding included)."""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pgrad.lm.verifiers import exact_answer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    rows = [json.loads(line) for line in rows_file.read_text().splitlines() if line.strip()]
    by_length: dict[int, list[tuple[list[int], str]]] = {}
    for row in rows:
        ids = tokenizer(row["prompt"])["input_ids"]
        by_length.setdefault(len(ids), []).append((ids, row["answer"]))
    scores: list[float] = []
    for group in by_length.values():
        ids = torch.tensor([ids for ids, _ in group])
        with torch.no_grad():
            out = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                pad_token_id=tokenizer.eos_token_id,
            )  # fmt: skip
        texts = tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
        scores += exact_answer(texts, [answer for _, answer in group])
    return statistics.fmean(scores)


def arith_data(work: Path, args: argparse.Namespace) -> tuple[dict[str, Path], float]:
    """The model folder and the JSONL files (``pgrad.lm.toy``), and the seconds they took."""
    from pgrad.lm import toy

    wall = time.perf_counter()
    rows = toy.arithmetic_rows(args.train + args.heldout, seed=0, max_operand=args.max_operand)
    train, heldout = rows[: args.train], rows[args.train :]
    size = toy.ModelSize(layers=4, width=256, heads=4, kv_heads=4, intermediate=512, positions=32)
    files = {
        "model": toy.build_model_folder(work / "model", "llama", size, toy.arithmetic_corpus(rows), vocab_size=259),
        "train": toy.write_jsonl(work / "train.jsonl", train),
        "heldout": toy.write_jsonl(work / "heldout.jsonl", heldout),
        "demos": toy.write_jsonl(work / "demos.jsonl", toy.demonstrations(train)),
        "demos_heldout": toy.write_jsonl(work / "demos-heldout.jsonl", toy.demonstrations(heldout)),
    }
    return files, time.perf_counter() - wall


def run_side(python: Path, side: str, settings: Path, work: Path) -> dict[str, Any]:
    """One side in a process of its own, with the 1-minute load before and after."""
    import json

    result = work / f"{side}.json"
    before = os.getloadavg()[0]
    subprocess.run(
        [str(python), str(BENCH_DIR / "bench_lm_arith_side.py"), side, str(settings), str(result)],
        env=child_env(),
        check=True,
    )
    return {**json.loads(result.read_text()), "load": (before, os.getloadavg()[0])}


def grpo_sides(
    python: Path, work: Path, start: Path, files: dict[str, Path], args: argparse.Namespace, seed: int
) -> list[str]:
    """pgrad's GRPO, then TRL's, from ``start`` with ``seed``, each in its own process: one table row each."""
    import json

    work.mkdir()
    settings = {
        "work": str(work), "start": str(start), "train": str(files["train"]), "heldout": str(files["heldout"]),
        "group": args.group, "batch": args.batch, "minibatch": args.minibatch, "epochs": args.epochs,
        "beta": args.beta, "lr": args.lr, "new_tokens": args.new_tokens, "temperature": 1.0,
        "rollouts": args.rollouts, "seed": seed,
        "final_pgrad": str(work / "final-pgrad"), "final_trl": str(work / "final-trl"),
    }  # fmt: skip
    settings_file = work / "settings.json"
    settings_file.write_text(json.dumps(settings))
    lines = []
    for name, key, side_python in (("pgrad", "pgrad", Path(sys.executable)), ("TRL GRPOTrainer", "trl", python)):
        r = run_side(side_python, key, settings_file, work)
        accuracy = greedy_accuracy(work / f"final-{key}", files["heldout"], args.new_tokens)
        ticks, n = r["ticks"], len(r["ticks"])
        wall_each = (ticks[-1][0] - ticks[0][0]) / (n - 1)  # steady: between the first and the last rollout
        cpu_each = (ticks[-1][1] - ticks[0][1]) / (n - 1)
        rate = sum(r["tokens"][1:]) / (ticks[-1][0] - ticks[0][0])
        quarter = r["rewards"][-max(1, n // 4) :]
        lines.append(
            f"| {seed} | {name} | {n} | {wall_each:.3f} | {cpu_each:.3f} | {rate:,.0f} | {r['wall']:.1f} | "
            f"{r['cpu']:.1f} | {r['maxrss_mib']:,.0f} | {statistics.fmean(r['rewards']):.3f} | "
            f"{statistics.fmean(quarter):.3f} | {accuracy:.3f} | {r['load'][0]:.2f} / {r['load'][1]:.2f} |"
        )
    return lines


def bench_arith(args: argparse.Namespace) -> list[str]:
    torch.set_num_threads(1)
    os.environ["HF_HUB_OFFLINE"] = "1"
    python = trl_python()
    work = Path(tempfile.mkdtemp(prefix="bench-lm-arith-"))
    files, build_seconds = arith_data(work, args)
    from safetensors.torch import load_file

    weights = sum(t.numel() for t in load_file(files["model"] / "model.safetensors").values())
    sft_seconds = pgrad_cli(
        "lm", "sft", "--set", f"model={files['model']}", "--set", f"dataset={files['demos']}",
        "--set", f"eval_dataset={files['demos_heldout']}", "--set", f"max_new_tokens={args.new_tokens}",
        "--set", "eval_every=4096", "--set", "eval_prompts=64", "--total-steps", str(args.sft_demonstrations),
        "--seed", str(args.seeds[0]), "--run-dir", str(work / "sft"), "--quiet",
    )  # fmt: skip
    start = work / "start"
    export_seconds = pgrad_cli("lm", "export", str(work / "sft"), "--checkpoint", "latest", "--out", str(start))
    lines = [
        "| seed | library | rollouts | wall s / rollout | CPU s / rollout | generated tokens/s (wall) | whole call: "
        "wall s | CPU s | peak RSS (MiB) | mean reward (all) | (last quarter) | held-out accuracy (greedy) "
        "| load before / after |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        f"| | SFT start | | | | | | | | | | {greedy_accuracy(start, files['heldout'], args.new_tokens):.3f} | |",
    ]
    for seed in args.seeds:
        lines += grpo_sides(python, work / f"seed-{seed}", start, files, args, seed)
    note = (
        f"Model: Llama architecture, 4 layers, width 256, 4 heads, MLP 512, 259-token character-level BPE "
        f"({weights / 1e6:.2f} M weights, tied embeddings), built by pgrad.lm.toy in {build_seconds:.0f} s with "
        "the data: "
        f"a+b= with operands 0-{args.max_operand}, {args.train} training and {args.heldout} held-out problems "
        f"(disjoint). SFT: {args.sft_demonstrations} demonstrations, batch 64, lr 1e-3 ({sft_seconds:.0f} s wall, "
        f"export {export_seconds:.0f} s). GRPO from the exported start, both sides: {args.rollouts} rollouts of "
        f"{args.batch} responses ({args.batch // args.group} prompts x {args.group}), minibatch {args.minibatch}, "
        f"{args.epochs} epoch(s), beta {args.beta} (k3 in the loss), per-response loss mean (pgrad sequence_mean, "
        f"TRL loss_type grpo), clip 0.2, Adam lr {args.lr} constant, eps 1e-8, no weight decay, no gradient "
        f"checkpointing, max {args.new_tokens} new tokens, temperature 1, "
        f"grad-norm clip 1, one torch thread, seeds {args.seeds} (SFT: seed {args.seeds[0]}); "
        "reward: exact answer (pgrad verifier:exact_answer; "
        "TRL: a function calling the same check). Per rollout: the mean interval between consecutive rollouts' reward "
        "calls (generation, scoring and the update; set-up excluded), wall and CPU (time.process_time of that "
        "side's own process); tokens/s: real generated tokens (EOS included) over the same interval; whole call: "
        "pgrad's main() / TRL's GRPOTrainer(...) + train(), model loading and set-up included (pgrad's also its "
        "held-out evaluations at the start and the end, 64 prompts each); peak RSS: ru_maxrss of that process. "
        "Held-out accuracy: greedy decoding of each final model folder (pgrad: pgrad lm export --checkpoint latest; "
        "TRL: save_model) loaded with transformers in the parent, every held-out problem."
    )
    return [*lines, "", note]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    step = sub.add_parser("step", help="a: one PPO step, pgrad vs a hand-written loop")
    step.add_argument("--repeats", type=int, default=15)
    step.add_argument("--warmup", type=int, default=3)
    generate = sub.add_parser("generate", help="b: generation tokens/s")
    generate.add_argument("--repeats", type=int, default=9)
    trl = sub.add_parser("trl", help="c: pgrad GRPO vs TRL GRPOTrainer")
    trl.add_argument("--seeds", type=int, nargs="+", default=[1])
    trl.add_argument("--responses", type=int, default=4096)
    table = sub.add_parser("table", help="d: PPO, ensemble, RLOO, GRPO, DPO on the digits task")
    table.add_argument("--seeds", type=int, nargs="+", default=[1])
    table.add_argument("--responses", type=int, default=4096)
    arith = sub.add_parser("arith", help="e: GRPO vs TRL on a local Llama model, arithmetic data and a verifier")
    arith.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="GRPO seeds (the SFT: the first)")
    arith.add_argument("--rollouts", type=int, default=120)
    arith.add_argument("--group", type=int, default=4)
    arith.add_argument("--batch", type=int, default=32)
    arith.add_argument("--minibatch", type=int, default=16)
    arith.add_argument("--epochs", type=int, default=1)
    arith.add_argument("--beta", type=float, default=0.04)
    arith.add_argument("--lr", type=float, default=2e-4)
    arith.add_argument("--new-tokens", type=int, default=4)
    arith.add_argument("--max-operand", type=int, default=30)
    arith.add_argument("--train", type=int, default=800)
    arith.add_argument("--heldout", type=int, default=161)
    arith.add_argument("--sft-demonstrations", type=int, default=32768)
    args = parser.parse_args()
    titles = {
        "step": "a. One PPO step: pgrad against a minimal hand-written loop",
        "generate": "b. Generation speed",
        "trl": "c. GRPO: pgrad against TRL's GRPOTrainer",
        "table": "d. The digits task: PPO, ensemble, RLOO, GRPO, DPO from one SFT model",
        "arith": "e. GRPO against TRL on your own model, data and reward (issue 23)",
    }
    lines = header(titles[args.what])
    wall, cpu = time.perf_counter(), time.process_time()
    body = {
        "step": bench_step,
        "generate": bench_generate,
        "trl": bench_trl,
        "table": bench_table,
        "arith": bench_arith,
    }[args.what](args)
    print("\n".join(lines + body + footer(wall, cpu)))


if __name__ == "__main__":
    main()
