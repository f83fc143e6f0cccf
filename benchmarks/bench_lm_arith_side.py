"""One side of ``bench_lm.py arith`` (GRPO on the arithmetic task), run as a process of its own so that its time and
peak memory are its own: ``python bench_lm_arith_side.py pgrad|trl SETTINGS.json RESULT.json``.

- ``pgrad``: ``pgrad lm grpo --set model=START --set dataset=TRAIN --set reward=verifier:exact_answer ...`` through
  ``pgrad.cli.main`` (run by the project's venv), then ``pgrad lm export RUN --checkpoint latest --out FINAL``;
- ``trl``: TRL's ``GRPOTrainer`` (run by the benchmark's own venv, ``benchmarks/.venv-trl``) from the same start
  folder on the same rows, its reward function the same check (``pgrad.lm.verifiers.exact_answer``, pure Python),
  then ``trainer.save_model(FINAL)``.

RESULT.json: wall and CPU seconds of the whole training call (the libraries imported before it; model loading,
set-up and pgrad's two held-out evaluations included), ``ticks``: (wall, CPU) clock readings at each rollout's
reward call (the same point of the loop on both sides: after generation, before the update; the steady cost of a
rollout is the mean interval between them), the tokens generated per rollout (real tokens, the EOS included), the
mean training reward per rollout and ``ru_maxrss`` of this process in MiB. On the pgrad side the clock is read by
wrapping ``pgrad.lm.verifiers.exact_answer`` (which ``verifier:exact_answer`` calls), an observation that changes
nothing it computes. Nothing is downloaded (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"


def clock(ticks: list[tuple[float, float]]) -> None:
    """Reads both clocks into ``ticks``."""
    ticks.append((time.perf_counter(), time.process_time()))


def pgrad_side(s: dict[str, Any]) -> dict[str, Any]:
    """``pgrad lm grpo`` with the settings, timed; its per-update metrics read back from the run folder."""
    import pgrad.runners.lm_ppo  # noqa: F401 - imported before the clock starts, as TRL's side imports trl
    from pgrad.cli import main
    from pgrad.lm import verifiers

    ticks: list[tuple[float, float]] = []
    check = verifiers.exact_answer

    def observed(completions: Any, answers: Any) -> list[float]:
        if len(completions) == s["batch"]:  # a rollout (the held-out evaluations score eval_prompts = 64)
            clock(ticks)
        return check(completions, answers)

    verifiers.exact_answer = observed  # type: ignore[assignment]
    run = Path(s["work"]) / "pgrad-grpo"
    sets = {
        "model": s["start"],
        "dataset": s["train"],
        "eval_dataset": s["heldout"],
        "reward": "verifier:exact_answer",
        "samples_per_prompt": s["group"],
        "batch_size": s["batch"],
        "minibatch_size": s["minibatch"],
        "num_epochs": s["epochs"],
        "kl_coef": s["beta"],
        "loss_type": "sequence_mean",
        "optimizer.learning_rate": s["lr"],
        "optimizer.eps": 1e-8,  # TRL's (transformers' AdamW, weight decay 0); lm_ppo's own default is 1e-5
        "max_new_tokens": s["new_tokens"],
        "temperature": s["temperature"],
        "max_grad_norm": 1.0,
        "eval_every": s["batch"] * s["rollouts"],  # evaluations at the start and the end only
        "eval_prompts": 64,
    }
    argv = ["lm", "grpo", "--total-steps", str(s["batch"] * s["rollouts"]), "--seed", str(s["seed"])]
    argv += ["--run-dir", str(run), "--quiet", *[x for k, v in sets.items() for x in ("--set", f"{k}={v}")]]
    wall, cpu = time.perf_counter(), time.process_time()
    if main(argv) != 0:
        raise SystemExit("pgrad lm grpo failed")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    updates = [row for row in rows if "reward/exact_answer" in row]
    if main(["lm", "export", str(run), "--checkpoint", "latest", "--out", s["final_pgrad"]]) != 0:
        raise SystemExit("pgrad lm export failed")
    rewards = [row["reward/exact_answer"] for row in updates]
    tokens = [row["lm/response_length"] * s["batch"] for row in updates]
    return {"wall": wall, "cpu": cpu, "ticks": ticks, "tokens": tokens, "rewards": rewards}


def trl_side(s: dict[str, Any]) -> dict[str, Any]:
    """TRL's GRPOTrainer with the same settings (TRL's names beside pgrad's), timed; rewards and tokens counted in
    its reward function."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from pgrad.lm.verifiers import exact_answer

    torch.set_num_threads(1)  # pgrad's run.torch_threads default
    train = [json.loads(line) for line in Path(s["train"]).read_text().splitlines() if line.strip()]
    dataset = Dataset.from_list(train)
    tokenizer = AutoTokenizer.from_pretrained(s["start"])
    tokenizer.pad_token = tokenizer.eos_token  # pgrad's rule for a tokenizer without a pad token
    rewards: list[float] = []
    tokens: list[int] = []
    ticks: list[tuple[float, float]] = []

    def reward(completions: list[str], completion_ids: list[list[int]], answer: list[str], **_: Any) -> list[float]:
        clock(ticks)
        tokens.append(sum(len(ids) for ids in completion_ids))
        scores = exact_answer(completions, answer)
        rewards.append(statistics.fmean(scores))
        return scores

    steps_per_rollout = s["batch"] // s["minibatch"]
    args = GRPOConfig(
        output_dir=str(Path(s["work"]) / "trl-out"),
        per_device_train_batch_size=s["minibatch"],  # pgrad minibatch_size
        num_generations=s["group"],  # samples_per_prompt
        steps_per_generation=steps_per_rollout,  # batch_size / minibatch_size
        num_iterations=s["epochs"],  # num_epochs
        max_steps=s["rollouts"] * steps_per_rollout * s["epochs"],  # optimizer steps
        beta=s["beta"],  # kl_coef, k3 in the loss (pgrad's grpo default kl_penalty: loss)
        loss_type="grpo",  # per-response mean, then over responses (pgrad loss_type: sequence_mean)
        scale_rewards="group",  # (r - group mean) / group std (pgrad's grpo advantage)
        epsilon=0.2,  # clip_eps
        learning_rate=s["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=1.0,
        gradient_checkpointing=False,  # TRL's default is on; pgrad's (run.gradient_checkpointing) off
        max_completion_length=s["new_tokens"],
        temperature=s["temperature"],
        top_k=0,
        top_p=1.0,
        seed=s["seed"],
        report_to="none",
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        logging_steps=10**6,
        disable_tqdm=True,
    )
    wall, cpu = time.perf_counter(), time.process_time()
    trainer = GRPOTrainer(
        model=s["start"], reward_funcs=reward, args=args, train_dataset=dataset, processing_class=tokenizer
    )
    trainer.train()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    trainer.save_model(s["final_trl"])
    tokenizer.save_pretrained(s["final_trl"])
    return {"wall": wall, "cpu": cpu, "ticks": ticks, "tokens": tokens, "rewards": rewards}


def main() -> None:
    side, settings, result = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    s = json.loads(settings.read_text())
    out = {"pgrad": pgrad_side, "trl": trl_side}[side](s)
    out["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    result.write_text(json.dumps(out))


if __name__ == "__main__":
    main()
