"""Evaluation of a language-model policy on held-out prompts: true score, reward-model score, the held-out check,
KL to the reference, response length and degeneration; and the sampled responses, for a person to read.

The prompts and the sampling noise come from generators seeded by ``seed`` alone, so two evaluations
with one seed (the starting model and the trained one) answer the same prompts with the same random
numbers: their difference is the policy's, not the draw's. The training RNG is not touched, so an
evaluation changes nothing in the run it is part of.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pgrad import safe_io
from pgrad.lm.dataset import DatasetTask
from pgrad.lm.degeneration import degeneration_metrics
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
    *,
    check: ResponseScorer | None = None,
    samples_out: list[dict[str, Any]] | None = None,
) -> dict[str, float]:
    """Means over ``count`` held-out prompts, one sampled response each (keys ``eval/...``): the true score where
    the task has one (digits), the scorer's score where there is a scorer, the held-out ``check``'s score
    (``eval/check_score``) where there is one, the KL to the reference, the length and the degeneration measures.
    ``samples_out``: a list that receives one record per response (prompt, completion and their scores)."""
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
    per_response: dict[str, torch.Tensor] = {}
    if isinstance(task, DigitsTask):
        per_response["true_score"] = task.true_score(prompts.last_digit, response, response_cpu_mask)
    if scorer is not None:
        per_response["rm_score"] = scorer.score(prompts, response, response_cpu_mask)
    if check is not None:
        per_response["check_score"] = check.score(prompts, response, response_cpu_mask)
    out.update({f"eval/{key}": float(values.float().mean()) for key, values in per_response.items()})
    out.update(degeneration_metrics(response, response_cpu_mask, prefix="eval"))
    if samples_out is not None:
        texts = task.texts(prompts, response, response_cpu_mask)
        for index, (prompt, completion) in enumerate(zip(texts.prompts, texts.completions, strict=True)):
            scores = {key: float(values[index]) for key, values in per_response.items()}
            samples_out.append({"prompt": prompt, "completion": completion, **scores})
    out.update(
        {
            "eval/kl": float(kl_k1(logp, ref, response_mask).sum(1).mean()),
            "eval/kl_k3": float(kl_k3(logp, ref, response_mask).sum(1).mean()),
            "eval/response_length": float(response_mask.sum(1).mean()),
        }
    )
    return out


SAMPLES = "samples"  # the run folder's entry of sampled evaluation responses (pgrad.checkpoint.RUN_ENTRIES)


def write_samples(run_dir: Path, step: int, records: list[dict[str, Any]]) -> Path:
    """``records`` (``evaluate_policy``'s ``samples_out``) as ``samples/step_<step>.jsonl`` in the run folder, one
    JSON object per line, written atomically and never through a link (``pgrad.safe_io``)."""
    folder = Path(run_dir) / SAMPLES
    safe_io.refuse_link(folder)  # the run folder's checks refused one at the start (check_run_folder); and now
    folder.mkdir(exist_ok=True)
    path = folder / f"step_{step:010d}.jsonl"
    safe_io.write_atomic(path, "".join(json.dumps(record) + "\n" for record in records))
    return path
