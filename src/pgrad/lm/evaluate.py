"""Evaluation of a language-model policy on held-out prompts: true score, reward-model score, KL to the
reference and response length.

The prompts and the sampling noise come from generators seeded by ``seed`` alone, so two evaluations
with one seed (the starting model and the trained one) answer the same prompts with the same random
numbers: their difference is the policy's, not the draw's. The training RNG is not touched, so an
evaluation changes nothing in the run it is part of.
"""

from __future__ import annotations

import torch

from pgrad.lm.dataset import DatasetTask
from pgrad.lm.losses import kl_k1, kl_k3
from pgrad.lm.model import AdapterDisabled, CausalLM, response_outputs, sample
from pgrad.lm.reward import ResponseScorer
from pgrad.lm.task import DigitsTask


@torch.no_grad()
def evaluate_policy(
    lm: CausalLM,
    reference: CausalLM | AdapterDisabled,
    task: DigitsTask | DatasetTask,
    scorer: ResponseScorer | None,
    count: int,
    seed: int,
    temperature: float,
) -> dict[str, float]:
    """Means over ``count`` held-out prompts, one sampled response each (keys ``eval/...``): the true score where
    the task has one (digits), the scorer's score where there is a scorer, the KL to the reference and the
    length."""
    device = next(lm.parameters()).device
    prompts = task.prompts(count, torch.Generator().manual_seed(seed))
    ids, mask = prompts.ids.to(device), prompts.mask.to(device)
    noise = torch.Generator(device=device).manual_seed(seed)
    tok = task.tokenizer
    samples = sample(lm, ids, mask, task.max_new_tokens, tok.eos_id, tok.pad_id, temperature, generator=noise)
    logp = response_outputs(lm, ids, mask, samples.response, samples.mask, temperature).logprobs
    ref = response_outputs(reference, ids, mask, samples.response, samples.mask, temperature).logprobs
    response_mask = samples.mask.float()
    response, response_cpu_mask = samples.response.cpu(), samples.mask.cpu()
    out: dict[str, float] = {}
    if isinstance(task, DigitsTask):
        out["eval/true_score"] = float(task.true_score(prompts.last_digit, response, response_cpu_mask).mean())
    if scorer is not None:
        out["eval/rm_score"] = float(scorer.score(prompts, response, response_cpu_mask).mean())
    out.update(
        {
            "eval/kl": float(kl_k1(logp, ref, response_mask).sum(1).mean()),
            "eval/kl_k3": float(kl_k3(logp, ref, response_mask).sum(1).mean()),
            "eval/response_length": float(response_mask.sum(1).mean()),
        }
    )
    return out
