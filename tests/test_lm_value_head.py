"""Value-head options of language-model PPO: on the policy's trunk or a critic of its own, initialised from the
reward model (InstructGPT); a LoRA policy whose reference is the adapter switched off; peak memory logged."""

import json

import pytest
import torch

pytest.importorskip("transformers")  # the lm extra

from pgrad.checkpoint import read_train_state  # noqa: E402
from pgrad.errors import ConfigError  # noqa: E402
from pgrad.lm.config import LMPPOConfig  # noqa: E402
from pgrad.lm.eval_run import evaluate_run  # noqa: E402
from pgrad.lm.model import PolicyWithValue, join, tiny_gpt2_config  # noqa: E402
from pgrad.lm.task import DigitsTask  # noqa: E402
from pgrad.numerics import masked_mean  # noqa: E402
from pgrad.runners.lm_ppo import LMPPORunner  # noqa: E402
from pgrad.runners.lm_rm import RewardModelRunner  # noqa: E402
from pgrad.runs import resolve_config  # noqa: E402


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def config(total, *sets):
    return resolve_config(
        "lm_ppo", None, None, ["eval_every=0", "checkpoint_every=100000", *sets], seed=4, total_steps=total
    )[0]


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("lm") / "rm"
    rm_config = resolve_config("lm_rm", None, None, ["eval_every=128", "train_pairs=256", "heldout_pairs=64"], 1, 128)[
        0
    ]
    RewardModelRunner(rm_config, run_dir, console=False).train()
    return run_dir


@pytest.mark.parametrize("separate", [False, True])
def test_a_separate_critic_keeps_the_value_loss_off_the_policy_weights(separate):
    task = DigitsTask(4)
    torch.manual_seed(0)
    policy = PolicyWithValue(tiny_gpt2_config(task.tokenizer.vocab_size, 10), separate_critic=separate)
    with torch.no_grad():
        policy.value_head.weight.normal_()  # zero-initialised: no gradient would reach any trunk
    prompts = task.prompts(4, torch.Generator().manual_seed(1))
    response, mask = task.random_responses(4, torch.Generator().manual_seed(2))
    ids, full_mask = join(prompts.ids, prompts.mask, response, mask)
    _, values = policy(ids, full_mask)
    masked_mean(values**2, full_mask.float()).backward()  # a value loss alone
    lm_grads = [p.grad for p in policy.lm.parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert (len(lm_grads) == 0) == separate  # shared: the value loss moves the policy's trunk too
    if separate:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.critic.parameters() if p.dim() > 1)


def test_the_critic_initialised_from_the_reward_model_values_a_response_as_its_score(rm_dir, tmp_path):
    runner = LMPPORunner(
        config(64, "reward=model", f"reward_model={rm_dir}", "critic=separate", "init_value_from_rm=true"),
        tmp_path / "ppo",
        console=False,
    )
    reward_model = runner.scorer.learned.members[0]
    prompts = runner.task.prompts(8, torch.Generator().manual_seed(3))
    response, mask = runner.task.random_responses(8, torch.Generator().manual_seed(4))
    ids, full_mask = join(prompts.ids, prompts.mask, response, mask)
    with torch.no_grad():
        _, values = runner.policy(ids, full_mask)
        scores = reward_model(prompts.ids, prompts.mask, response, mask)
    last = prompts.ids.shape[1] + mask.sum(1) - 1  # the response's last real token: where the reward model reads
    # the value at a response's last token is the reward model's score of it (same trunk, head and positions)
    torch.testing.assert_close(values[torch.arange(8), last], scores, rtol=0, atol=1e-6)
    runner.train()
    assert "critic.h.0.attn.c_attn.weight" in read_train_state(runner.run.checkpoint_path("latest")).modules["policy"]
    runner_shared = LMPPORunner(
        config(64, "reward=model", f"reward_model={rm_dir}"), tmp_path / "shared", console=False
    )
    assert runner_shared.policy.critic is None
    runner_shared.run.close()


def test_value_head_options_are_checked():
    with pytest.raises(ConfigError, match="lm_ppo.init_value_from_rm must be false unless critic is 'separate'"):
        LMPPOConfig(reward="model", reward_model="x", init_value_from_rm=True)
    with pytest.raises(ConfigError, match="lm_ppo.critic must be 'shared' with advantage 'rloo' or 'grpo'"):
        LMPPOConfig(advantage="grpo", samples_per_prompt=4, critic="separate")
    with pytest.raises(ConfigError, match=r"lm_ppo.lora_rank must be in \[0, 64\]"):
        LMPPOConfig(lora_rank=-1)


def test_a_reward_model_of_another_shape_cannot_start_the_critic(tmp_path):
    rm_config = resolve_config(
        "lm_rm", None, None, ["n_embd=32", "eval_every=64", "train_pairs=64", "heldout_pairs=8"], 1, 64
    )[0]
    RewardModelRunner(rm_config, tmp_path / "rm32", console=False).train()
    sets = ("reward=model", f"reward_model={tmp_path / 'rm32'}", "critic=separate", "init_value_from_rm=true")
    with pytest.raises(
        ConfigError, match="lm_ppo.init_value_from_rm: the reward model's weights do not fit the critic"
    ):
        LMPPORunner(config(64, *sets), tmp_path / "ppo", console=False)


def test_a_lora_policy_trains_only_its_adapters_and_its_reference_is_the_adapter_switched_off(tmp_path):
    pytest.importorskip("peft")
    run_dir = tmp_path / "lora"
    runner = LMPPORunner(config(192, "lora_rank=4"), run_dir, console=False)
    base = {k: v.clone() for k, v in runner.policy.lm.base_model.model.state_dict().items() if "lora_" not in k}
    trained = {name for name, p in runner.policy.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in name or name.startswith("value_head.") for name in trained)
    runner.train()
    after = runner.policy.lm.base_model.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items() if "base_layer" in k or "lora_" not in k)
    lora_b = [p for name, p in runner.policy.named_parameters() if "lora_B" in name]
    assert any(p.abs().sum() > 0 for p in lora_b)  # the adapters moved
    logged = rows(run_dir)
    assert logged[0]["lm/kl"] == 0.0 and logged[-1]["lm/kl"] > 0.0  # the reference: the adapter switched off
    assert logged[-1]["perf/peak_memory_mb"] >= logged[-1]["perf/memory_mb"] > 0
    state = read_train_state(runner.run.checkpoint_path("latest"))
    assert set(state.modules) == {"policy"}  # no second copy of the weights
    evaluation = evaluate_run(run_dir, prompts=32)
    assert evaluation.metrics["eval/kl"] > 0.0
