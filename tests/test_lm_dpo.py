"""DPO (pgrad lm dpo) on the task's preference pairs: log 2 at the start, the implicit reward learning the
held-out preferences, exact resume, the CLI."""

import json
import time

import pytest
import torch

pytest.importorskip("transformers")  # the lm extra

from pgrad.checkpoint import read_train_state  # noqa: E402
from pgrad.cli import main  # noqa: E402
from pgrad.errors import ConfigError  # noqa: E402
from pgrad.runners.lm_dpo import DPORunner  # noqa: E402
from pgrad.runners.lm_sft import SFTRunner  # noqa: E402
from pgrad.runs import resolve_config  # noqa: E402

MACHINE_KEYS = {"time", "perf/seconds_per_update", "perf/steps_per_second", "perf/memory_mb", "perf/peak_memory_mb"}
SMALL = ["train_pairs=1024", "heldout_pairs=256", "eval_prompts=128"]
LOG_2 = float(torch.tensor(2.0).log())  # float32, the dtype of the loss


def rows(run_dir):
    with open(run_dir / "metrics.jsonl") as handle:
        return [json.loads(line) for line in handle]


def dpo_config(total, *sets):
    return resolve_config("lm_dpo", None, None, [*SMALL, *sets], seed=3, total_steps=total)[0]


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("sft") / "sft"
    sets = ["eval_every=1024", "demonstrations=1024", "eval_prompts=64"]
    SFTRunner(resolve_config("lm_sft", None, None, sets, seed=3, total_steps=1024)[0], run_dir, console=False).train()
    return run_dir


def test_the_first_loss_is_log_2_while_the_policy_is_its_reference(sft_dir, tmp_path):
    runner = DPORunner(dpo_config(64, f"init_from={sft_dir}", "eval_every=64"), tmp_path / "dpo", console=False)
    # the policy starts as the SFT model: every weight equal to the reference's
    for (name, value), ref in zip(runner.lm.state_dict().items(), runner.reference.state_dict().values(), strict=True):
        assert torch.equal(value, ref), name
    loss, accuracy = runner.pair_loss(runner.train_pairs, torch.arange(64))
    assert float(loss.detach()) == LOG_2 and float(accuracy) == 0.0  # h = 0 for every pair: -log sigmoid(0), no h > 0
    runner.train()
    first, second = rows(tmp_path / "dpo")
    print(
        f"DPO step 0: held-out loss {first['eval/dpo_loss']!r}; "
        f"first training step's loss {second['train/dpo_first_loss']!r}"
    )
    # the mean of 256 equal float32 losses: log 2 up to the summation's rounding (1 ulp measured)
    assert first["eval/dpo_loss"] == pytest.approx(LOG_2, abs=1e-6) and first["eval/kl"] == 0.0
    assert second["train/dpo_first_loss"] == LOG_2


def test_the_implicit_reward_learns_the_held_out_preferences(sft_dir, tmp_path):
    started = time.perf_counter()
    sets = (f"init_from={sft_dir}", "eval_every=768")
    DPORunner(dpo_config(1536, *sets), tmp_path / "dpo", console=False).train()
    seconds = time.perf_counter() - started
    logged = rows(tmp_path / "dpo")
    before, after = logged[0], logged[-1]
    print(
        f"DPO from SFT, 1536 pairs in {seconds:.1f} s: held-out implicit-reward accuracy "
        f"{before['eval/dpo_accuracy']:.3f} -> {[round(r['eval/dpo_accuracy'], 3) for r in logged[1:]]}, loss "
        f"{before['eval/dpo_loss']:.4f} -> {after['eval/dpo_loss']:.4f}; true score {before['eval/true_score']:.3f} -> "
        f"{after['eval/true_score']:.3f}, KL {after['eval/kl']:.3f}, length {before['eval/response_length']:.2f} -> "
        f"{after['eval/response_length']:.2f}"
    )
    assert [r["step"] for r in logged] == [0, 768, 1536]
    assert before["eval/dpo_accuracy"] == 0.0  # ties (h = 0) count as misses
    assert after["eval/dpo_accuracy"] > 0.65  # measured 0.709
    assert after["eval/dpo_loss"] < before["eval/dpo_loss"] - 0.03
    assert 0.0 < after["eval/kl"] < 5.0
    for key in ("eval/true_score", "eval/kl_k3", "eval/response_length"):
        assert key in after, key
    assert "eval/rm_score" not in after
    # the run's cost, in work rather than wall-clock seconds (those are benchmarks/bench_lm.py's): 1536 pairs
    # in steps of batch_size 64 are 24 gradient steps, with 3 held-out evaluations (the rows)
    assert [r["update"] for r in logged] == [0, 12, 24]


def test_dpo_resume_is_exact(tmp_path):
    sets = ("eval_every=64", "train_pairs=256", "heldout_pairs=64", "eval_prompts=16", "checkpoint_every=64")
    DPORunner(dpo_config(192, *sets), tmp_path / "a", console=False).train()
    DPORunner(dpo_config(192, *sets), tmp_path / "b", console=False).train(stop_at_step=128)
    DPORunner(dpo_config(192, *sets), tmp_path / "b", resume=True, console=False).train()
    a = read_train_state(tmp_path / "a" / "checkpoints" / "step_0000000192")
    b = read_train_state(tmp_path / "b" / "checkpoints" / "step_0000000192")
    assert set(a.modules) == {"lm", "reference"}
    for module in a.modules:
        for key, value in a.modules[module].items():
            assert torch.equal(value, b.modules[module][key]), f"{module}.{key}"
    strip = lambda row: {k: v for k, v in row.items() if k not in MACHINE_KEYS}  # noqa: E731
    assert [strip(r) for r in rows(tmp_path / "a")] == [strip(r) for r in rows(tmp_path / "b")]


def test_dpo_refuses_an_sft_model_of_another_shape_and_runs_from_the_cli(sft_dir, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"lm_dpo.model.n_embd must be 64, the value of the SFT model in .*; got 32"):
        DPORunner(dpo_config(64, f"init_from={sft_dir}", "n_embd=32"), tmp_path / "x", console=False)
    assert not (tmp_path / "x").exists()  # refused before anything was written
    run_dir = tmp_path / "cli"
    common = ["--set", "eval_prompts=16", "--set", "heldout_pairs=64", "--set", "train_pairs=128", "--quiet"]
    assert main(["lm", "dpo", "--total-steps", "64", "--run-dir", str(run_dir), *common]) == 0
    assert main(["lm", "resume", str(run_dir), "--total-steps", "128", "--quiet"]) == 0
    assert [row["step"] for row in rows(run_dir)] == [0, 64, 128]
    assert main(["lm", "dpo", "--run-dir", str(tmp_path / "y"), "--set", "beta=0", "--quiet"]) == 2
    assert "pgrad: error: lm_dpo.beta must be > 0; got 0" in capsys.readouterr().err
