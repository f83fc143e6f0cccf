"""The language-model pipeline on the tiny GPT-2: reward model, PPO, learning on the hidden true score,
exact resume, the CLI."""

import json
import time

import pytest
import torch

pytest.importorskip("transformers")  # the lm extra

from pgrad.checkpoint import read_train_state  # noqa: E402
from pgrad.cli import main  # noqa: E402
from pgrad.errors import ConfigError  # noqa: E402
from pgrad.lm.config import LMPPOConfig  # noqa: E402
from pgrad.runners.lm_ppo import LMPPORunner  # noqa: E402
from pgrad.runners.lm_rm import RewardModelRunner  # noqa: E402
from pgrad.runners.lm_sft import SFTRunner  # noqa: E402
from pgrad.runs import resolve_config  # noqa: E402

MACHINE_KEYS = {
    "time",
    "perf/seconds_per_update",
    "perf/steps_per_second",
    "perf/memory_mb",
    "perf/peak_memory_mb",
}  # not the run's own


def rows(run_dir):
    with open(run_dir / "metrics.jsonl") as handle:
        return [json.loads(line) for line in handle]


def config(total, *sets):
    return resolve_config("lm_ppo", None, None, ["checkpoint_every=64", *sets], seed=3, total_steps=total)[0]


def test_sft_then_reward_model_then_ppo_raise_the_hidden_true_score_while_kl_stays_bounded(tmp_path):
    """InstructGPT's pipeline end to end on the tiny model: SFT on demonstrations, a reward model from preference
    pairs, then PPO from the SFT model (also the reference) on the reward model's score. The true score is
    what the learner never sees; it must rise clearly above the SFT model's."""
    started = time.perf_counter()
    sft_config = resolve_config(
        "lm_sft", None, None, ["eval_every=2048", "demonstrations=2048"], seed=3, total_steps=2048
    )[0]
    SFTRunner(sft_config, tmp_path / "sft", console=False).train()
    sft_rows = rows(tmp_path / "sft")
    rm_config = resolve_config("lm_rm", None, None, ["eval_every=1024", "train_pairs=2048"], seed=3, total_steps=3072)[
        0
    ]
    RewardModelRunner(rm_config, tmp_path / "rm", console=False).train()
    rm_rows = rows(tmp_path / "rm")
    before_ppo = time.perf_counter()
    sets = ("eval_every=1600", "reward=model", f"reward_model={tmp_path / 'rm'}", f"init_from={tmp_path / 'sft'}")
    result = LMPPORunner(config(1600, *sets), tmp_path / "ppo", console=False).train()
    seconds = time.perf_counter() - started
    logged = rows(tmp_path / "ppo")
    before, after = logged[0], logged[-1]
    print(
        f"SFT: held-out NLL {sft_rows[0]['eval/sft_nll']:.3f} -> {sft_rows[-1]['eval/sft_nll']:.3f}, true score "
        f"{sft_rows[0]['eval/true_score']:.3f} -> {sft_rows[-1]['eval/true_score']:.3f}; reward model: held-out "
        f"accuracy {rm_rows[-1]['eval/rm_accuracy']:.3f}, correlation with the true score "
        f"{rm_rows[-1]['eval/rm_true_correlation']:.3f}; PPO: true score {before['eval/true_score']:.3f} -> "
        f"{after['eval/true_score']:.3f}, RM score {before['eval/rm_score']:.2f} -> {after['eval/rm_score']:.2f}, "
        f"KL {after['eval/kl']:.2f} nats (k3 {after['eval/kl_k3']:.2f}), length {before['eval/response_length']:.2f}"
        f" -> {after['eval/response_length']:.2f}; PPO {time.perf_counter() - before_ppo:.1f} s, {seconds:.1f} s in all"
    )
    assert sft_rows[-1]["eval/sft_nll"] < sft_rows[0]["eval/sft_nll"] - 0.1
    assert rm_rows[-1]["eval/rm_accuracy"] > 0.85
    # PPO starts from the SFT model: the same weights, prompts and noise give the SFT run's last evaluation
    assert before["eval/true_score"] == sft_rows[-1]["eval/true_score"] and before["eval/kl"] == 0.0
    assert result.updates == 25 and after["step"] == 1600
    # measured 0.331 -> 0.548 (the reward model's optimum: PPO on the true score itself reaches ~0.59 sooner)
    assert after["eval/true_score"] > before["eval/true_score"] + 0.15
    assert after["eval/rm_score"] > before["eval/rm_score"]
    assert after["eval/kl"] < 10.0
    # every update's first minibatch of its first epoch sees the rollout's own policy: ratio exactly 1
    assert all(row["lm/first_ratio_deviation"] == 0.0 for row in logged[1:])
    for key in ("lm/true_score", "lm/rm_score", "lm/kl", "lm/kl_k3", "lm/response_length", "train/policy_loss"):
        assert key in logged[1], key
    # the pipeline's cost, in work rather than wall-clock seconds (those are benchmarks/bench_lm.py's): steps of
    # 64 demonstrations or pairs, evaluated at each row; PPO's 25 updates are checked above
    assert [(r["step"], r["update"]) for r in sft_rows] == [(0, 0), (2048, 32)]
    assert [(r["step"], r["update"]) for r in rm_rows] == [(1024, 16), (2048, 32), (3072, 48)]


def test_ppo_refuses_an_sft_model_of_another_shape(tmp_path):
    sft_config = resolve_config("lm_sft", None, None, ["n_embd=32", "eval_every=64", "eval_prompts=8"], 1, 64)[0]
    SFTRunner(sft_config, tmp_path / "sft", console=False).train()
    with pytest.raises(ConfigError, match=r"lm_ppo.model.n_embd must be 32, the value of the SFT model in .*; got 64"):
        LMPPORunner(config(64, f"init_from={tmp_path / 'sft'}"), tmp_path / "ppo", console=False)
    with pytest.raises(ConfigError, match=r"lm_ppo.init_from: .* is a 'lm_ppo' run, not supervised fine-tuning"):
        LMPPORunner(config(64, f"init_from={tmp_path / 'sft'}", "n_embd=32"), tmp_path / "p2", console=False).train()
        LMPPORunner(config(64, f"init_from={tmp_path / 'p2'}"), tmp_path / "p3", console=False)


def test_ppo_refuses_a_reward_model_built_for_shorter_responses(tmp_path):
    rm_config = resolve_config("lm_rm", None, None, ["max_new_tokens=4", "eval_every=64"], seed=1, total_steps=64)[0]
    RewardModelRunner(rm_config, tmp_path / "rm", console=False).train()
    ppo_config = config(64, "reward=model", f"reward_model={tmp_path / 'rm'}")
    with pytest.raises(ConfigError, match=r"lm_ppo.max_new_tokens must be <= 4, the longest response .*; got 8"):
        LMPPORunner(ppo_config, tmp_path / "ppo", console=False)
    assert not (tmp_path / "ppo").exists()  # refused before anything was written
    with pytest.raises(ConfigError, match="lm_ppo.reward_model must be the run folder of 'pgrad lm rm'"):
        LMPPOConfig(reward="model")


@pytest.mark.parametrize("advantage", ["rloo", "grpo"])
def test_critic_free_advantages_raise_the_true_score_in_the_same_loop(tmp_path, advantage):
    sets = ("eval_every=1280", f"advantage={advantage}", "samples_per_prompt=4")
    LMPPORunner(config(1280, *sets), tmp_path / "run", console=False).train()
    logged = rows(tmp_path / "run")
    before, after = logged[0], logged[-1]
    print(
        f"{advantage}: true score {before['eval/true_score']:.3f} -> {after['eval/true_score']:.3f}, "
        f"KL {after['eval/kl']:.2f}"
    )
    assert after["eval/true_score"] > before["eval/true_score"] + 0.2
    assert after["eval/kl"] < 10.0
    assert "train/value_loss" not in logged[1]  # no critic
    assert all(row["lm/first_ratio_deviation"] == 0.0 for row in logged[1:])


def test_grpo_with_the_kl_in_the_loss_is_held_to_the_reference_by_its_coefficient(tmp_path):
    results = {}
    for coef in (0.05, 1.0):
        sets = ("eval_every=640", "advantage=grpo", "samples_per_prompt=4", "kl_penalty=loss", f"kl_coef={coef}")
        LMPPORunner(config(640, *sets), tmp_path / f"c{coef}", console=False).train()
        results[coef] = rows(tmp_path / f"c{coef}")
    small, large = results[0.05], results[1.0]
    print(
        f"GRPO, KL in the loss: coefficient 0.05: true score {small[0]['eval/true_score']:.3f} -> "
        f"{small[-1]['eval/true_score']:.3f}, KL {small[-1]['eval/kl']:.2f}; coefficient 1.0: true score "
        f"{large[-1]['eval/true_score']:.3f}, KL {large[-1]['eval/kl']:.2f}"
    )
    assert "train/kl_loss" in small[1] and "train/value_loss" not in small[1]
    assert small[-1]["eval/true_score"] > small[0]["eval/true_score"] + 0.15
    assert large[-1]["eval/kl"] < 0.5 * small[-1]["eval/kl"]


def test_checkpoints_are_safetensors_and_json_and_resume_is_exact(tmp_path):
    straight = LMPPORunner(config(192, "eval_every=0"), tmp_path / "a", console=False)
    straight.train()
    halves = LMPPORunner(config(192, "eval_every=0"), tmp_path / "b", console=False)
    halves.train(stop_at_step=128)
    LMPPORunner(config(192, "eval_every=0"), tmp_path / "b", resume=True, console=False).train()
    for name in ("a", "b"):
        files = sorted(p.name for p in (tmp_path / name / "checkpoints" / "step_0000000192").iterdir())
        assert files == ["state.json", "tensors.safetensors"]
    a = read_train_state(tmp_path / "a" / "checkpoints" / "step_0000000192")
    b = read_train_state(tmp_path / "b" / "checkpoints" / "step_0000000192")
    assert set(a.modules) == {"policy", "reference"}
    for module in a.modules:
        for key, value in a.modules[module].items():
            assert torch.equal(value, b.modules[module][key]), f"{module}.{key}"
    assert a.algo_state == b.algo_state and a.updates == b.updates == 3
    strip = lambda row: {k: v for k, v in row.items() if k not in MACHINE_KEYS}  # noqa: E731
    assert [strip(r) for r in rows(tmp_path / "a")] == [strip(r) for r in rows(tmp_path / "b")]


def test_reward_model_resume_is_exact(tmp_path):
    def rm_config():
        return resolve_config(
            "lm_rm", None, None, ["eval_every=64", "checkpoint_every=64", "heldout_pairs=64"], 2, 192
        )[0]

    RewardModelRunner(rm_config(), tmp_path / "a", console=False).train()
    RewardModelRunner(rm_config(), tmp_path / "b", console=False).train(stop_at_step=128)
    RewardModelRunner(rm_config(), tmp_path / "b", resume=True, console=False).train()
    a = read_train_state(tmp_path / "a" / "checkpoints" / "step_0000000192")
    b = read_train_state(tmp_path / "b" / "checkpoints" / "step_0000000192")
    for key, value in a.modules["reward_model"].items():
        assert torch.equal(value, b.modules["reward_model"][key]), key
    strip = lambda row: {k: v for k, v in row.items() if k not in MACHINE_KEYS}  # noqa: E731
    assert [strip(r) for r in rows(tmp_path / "a")] == [strip(r) for r in rows(tmp_path / "b")]
    assert len(rows(tmp_path / "a")) == 3


def test_adaptive_kl_coefficient_moves_toward_the_target(tmp_path):
    # Ziegler et al.: beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * 64 / horizon) after each update
    LMPPORunner(config(192, "eval_every=0", "kl_target=0.01", "kl_horizon=640"), tmp_path / "r", console=False).train()
    first, second, third = rows(tmp_path / "r")
    assert first["lm/kl_coef"] == 0.05 and first["lm/kl"] == 0.0  # the first rollout's policy is the reference
    assert second["lm/kl_coef"] == pytest.approx(0.05 * (1 - 0.2 * 64 / 640))  # KL 0: below target
    assert second["lm/kl"] > 0.012  # 20% over the target: the step up is clipped at 0.2
    assert third["lm/kl_coef"] == pytest.approx(second["lm/kl_coef"] * (1 + 0.2 * 64 / 640))


def test_a_reporting_alert_rule_writes_its_critical_event_while_it_lasts(tmp_path):
    sets = ("eval_every=0", "kl_alert=0.01", "rollback_on_alert=false")
    LMPPORunner(config(256, *sets), tmp_path / "r", console=False).train()
    events = [json.loads(line) for line in (tmp_path / "r" / "events.jsonl").read_text().splitlines()]
    kl_events = [e for e in events if e["kind"] == "critical.lm_kl"]
    # update 1 samples from the reference itself (KL 0); from update 2 on the KL is above 0.01: a critical alert
    # is logged on every update it holds (the guard's rule for critical alerts), and nothing rolls back
    assert [e["step"] for e in kl_events] == [128, 192, 256]
    assert "lm_ppo.kl_alert 0.01" in kl_events[0]["message"] and kl_events[0]["threshold"] == 0.01
    assert not [e for e in events if e["kind"].startswith("recovery.")]


def test_config_errors_are_one_line_naming_the_field():
    with pytest.raises(ConfigError, match=r"lm_ppo.minibatch_size must be a divisor of batch_size \(64\); got 10"):
        LMPPOConfig(minibatch_size=10)
    with pytest.raises(ConfigError, match=r"lm_ppo.samples_per_prompt must be in \[2, 64\]; got 1"):
        LMPPOConfig(advantage="rloo", samples_per_prompt=1)  # 0 (the default) is 8 for rloo and grpo
    with pytest.raises(ConfigError, match=r"lm_ppo.samples_per_prompt must be a divisor of batch_size \(64\); got 3"):
        LMPPOConfig(advantage="grpo", samples_per_prompt=3)
    with pytest.raises(ConfigError, match="lm_ppo.kl_penalty must be 'reward' with advantage 'gae'"):
        LMPPOConfig(kl_penalty="loss")
    with pytest.raises(ConfigError, match="lm_ppo.temperature must be > 0"):
        LMPPOConfig(temperature=0.0)
    with pytest.raises(ConfigError, match="unknown key 'lm_ppo.clip'"):
        resolve_config("lm_ppo", None, None, ["lm_ppo.clip=0.1"], None, None)[0]


def test_cli_trains_and_resumes(tmp_path, capsys):
    run_dir = tmp_path / "cli"
    common = ["--quiet"]
    assert (
        main(["lm", "ppo", "--total-steps", "64", "--run-dir", str(run_dir), "--set", "eval_prompts=16", *common]) == 0
    )
    assert main(["lm", "resume", str(run_dir), "--total-steps", "128", *common]) == 0
    assert [row["step"] for row in rows(run_dir)] == [0, 64, 128]
    assert main(["lm", "ppo", "--run-dir", str(tmp_path / "x"), "--set", "batch_size=0", *common]) == 2
    assert "pgrad: error: lm_ppo.batch_size must be in [1, 1048576]; got 0" in capsys.readouterr().err
