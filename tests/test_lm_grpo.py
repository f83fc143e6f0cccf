"""GRPO's forms (issue 23, part 4): the paper's per-sequence mean with the KL (k3) in the loss as the default,
DAPO's token mean and Dr. GRPO's constant normalisation as options, each against hand values on tiny tensors;
`pgrad lm grpo` is `pgrad lm ppo --set advantage=grpo`."""

import json
import math

import pytest
import torch

pytest.importorskip("transformers")  # the lm extra

from pgrad import cli  # noqa: E402
from pgrad.errors import ConfigError  # noqa: E402
from pgrad.lm.config import LMPPOConfig  # noqa: E402
from pgrad.lm.losses import aggregate_token_loss, group_policy_loss, grpo_advantages, kl_k3  # noqa: E402
from pgrad.numerics import clipped_surrogate, masked_mean  # noqa: E402
from pgrad.runners.lm_ppo import LMPPORunner  # noqa: E402
from pgrad.runs import resolve_config  # noqa: E402

TINY = ["batch_size=16", "minibatch_size=8", "num_epochs=1", "eval_every=0", "model.n_layer=1", "model.n_embd=16"]
K3_LN2 = 1.0 - math.log(2.0)  # k3 where pi_ref / pi = 2: (2 - 1) - log 2

# two responses: three real tokens, then one (garbage in the padding must change nothing)
PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, -100.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    ("loss_type", "expected"),
    [
        ("token_mean", (1 + 2 + 3 + 4) / 4),  # DAPO: every token alike
        ("sequence_mean", ((1 + 2 + 3) / 3 + 4 / 1) / 2),  # GRPO: every response alike
        ("dr_grpo", (1 + 2 + 3 + 4) / (2 * 5)),  # Dr. GRPO: over rows x max_length (5)
    ],
)
def test_each_aggregation_against_hand_values(loss_type, expected):
    assert aggregate_token_loss(PER_TOKEN, MASK, loss_type, max_length=5).item() == pytest.approx(expected)


def test_an_unknown_aggregation_is_refused():
    with pytest.raises(ValueError, match="loss_type must be"):
        aggregate_token_loss(PER_TOKEN, MASK, "mean", 5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("loss_type", "row_grads"),
    [
        ("token_mean", (-1 / 3, -1 / 3)),  # a token of either response: 1 / (all tokens)
        ("sequence_mean", (-1 / (2 * 2), -1 / (2 * 1))),  # 1 / (B x its response's length): short ones weigh more
        ("dr_grpo", (-1 / (2 * 4), -1 / (2 * 4))),  # 1 / (B x max_length): length plays no part
    ],
)
def test_the_weight_of_a_token_in_the_gradient_is_the_aggregations(loss_type, row_grads):
    # ratio 1 and advantage +1 everywhere: dL/dlogp[b, t] = -1 x (the token's weight in the aggregation)
    logp = torch.zeros(2, 2, requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, _, _ = group_policy_loss(logp, torch.zeros(2, 2), torch.zeros(2, 2), mask, mask, 0.2, 0.0, loss_type, 4)
    loss.backward()
    expected = torch.tensor([[row_grads[0], row_grads[0]], [row_grads[1], 0.0]])
    torch.testing.assert_close(logp.grad, expected)


@pytest.mark.parametrize(
    ("loss_type", "policy", "kl"),
    [
        ("sequence_mean", (-2 / 2 + 2 / 1) / 2, K3_LN2),
        ("token_mean", (-1 - 1 + 2) / 3, K3_LN2),
        ("dr_grpo", (-1 - 1 + 2) / (2 * 2), 3 * K3_LN2 / (2 * 2)),
    ],
)
def test_grpo_loss_is_the_clipped_surrogate_plus_beta_k3_aggregated_alike(loss_type, policy, kl):
    logp = torch.zeros(2, 2)
    ref = torch.full((2, 2), math.log(2.0))  # pi_ref / pi = 2 at every token: k3 = 1 - log 2
    advantages = torch.tensor([[1.0, 1.0], [-2.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, policy_term, kl_term = group_policy_loss(logp, logp, ref, advantages, mask, 0.2, 0.1, loss_type, 2)
    assert policy_term.item() == pytest.approx(policy)
    assert kl_term.item() == pytest.approx(kl)
    assert loss.item() == pytest.approx(policy + 0.1 * kl)


def test_the_surrogate_is_clipped_per_token():
    # ratio 1.5 with eps 0.2 and advantage +1: -min(1.5, 1.2) = -1.2 (and no gradient)
    logp = torch.full((1, 1), math.log(1.5), requires_grad=True)
    loss, _, _ = group_policy_loss(
        logp, torch.zeros(1, 1), logp.detach(), torch.ones(1, 1), torch.ones(1, 1), 0.2, 0.0, "sequence_mean", 1
    )
    loss.backward()
    assert loss.item() == pytest.approx(-1.2) and logp.grad.item() == 0.0


def test_token_mean_with_the_kl_in_the_loss_is_ppos_loss_plus_beta_mean_k3():
    # the runner keeps PPO's own code for token_mean: the two must be one loss
    torch.manual_seed(0)
    logp, old, ref, adv = (torch.randn(3, 4) * 0.3 for _ in range(4))
    mask = torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    ppo = clipped_surrogate(logp, old, adv * mask, mask, 0.2).loss + 0.05 * masked_mean(kl_k3(logp, ref, mask), mask)
    grpo, _, _ = group_policy_loss(logp, old, ref, adv * mask, mask, 0.2, 0.05, "token_mean", 4)
    torch.testing.assert_close(grpo, ppo)


def test_dr_grpo_advantages_are_not_divided_by_the_group_std():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    torch.testing.assert_close(grpo_advantages(rewards, scale=False), torch.tensor([[-1.0, 0, 1], [0, 0, 0]]))
    # the sample std of 1, 2, 3 is 1: the scaled ones differ by the eps alone
    torch.testing.assert_close(grpo_advantages(rewards), torch.tensor([[-1.0, 0, 1], [0, 0, 0]]) / (1 + 1e-4))


# ---- the config ------------------------------------------------------------------------------------------------


def test_grpos_defaults_are_the_papers_and_the_others_keep_theirs():
    grpo = LMPPOConfig(advantage="grpo")
    assert (grpo.samples_per_prompt, grpo.kl_penalty, grpo.loss_type) == (8, "loss", "sequence_mean")
    rloo = LMPPOConfig(advantage="rloo")
    assert (rloo.samples_per_prompt, rloo.kl_penalty, rloo.loss_type) == (8, "reward", "token_mean")
    gae = LMPPOConfig()
    assert (gae.samples_per_prompt, gae.kl_penalty, gae.loss_type) == (1, "reward", "token_mean")
    # the KL in the reward (then divided by the group's std with the score) stays reachable when asked for
    old_form = LMPPOConfig(advantage="grpo", kl_penalty="reward", loss_type="token_mean", samples_per_prompt=4)
    assert (old_form.kl_penalty, old_form.loss_type) == ("reward", "token_mean")
    assert LMPPOConfig(**{**grpo.to_dict(), "model": grpo.model}) == grpo  # resolved values read back the same


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"advantage": "rloo", "loss_type": "dr_grpo"}, "lm_ppo.loss_type must be 'token_mean' or 'sequence_mean'"),
        ({"loss_type": "dr_grpo"}, "lm_ppo.loss_type must be"),
        ({"kl_penalty": "loss"}, "lm_ppo.kl_penalty must be 'reward' with advantage 'gae'"),
        ({"advantage": "grpo", "samples_per_prompt": 1}, "lm_ppo.samples_per_prompt must be in [2, 64]"),
        ({"advantage": "grpo", "samples_per_prompt": 3}, "lm_ppo.samples_per_prompt must be a divisor of batch_size"),
        ({"loss_type": "mean"}, "lm_ppo.loss_type must be one of 'auto', 'token_mean'"),
    ],
)
def test_bad_grpo_settings_are_one_line(fields, message):
    with pytest.raises(ConfigError) as info:
        LMPPOConfig(**fields)
    assert str(info.value).startswith(message), str(info.value)


class Captured(Exception):
    pass


@pytest.fixture
def captured_config(monkeypatch):
    """Runs the CLI up to the runner and returns the config it would have trained."""
    import pgrad.runners

    def runner_for(config):
        raise Captured(config)

    monkeypatch.setattr(pgrad.runners, "runner_for", runner_for)

    def run(argv):
        with pytest.raises(Captured) as info:
            cli.main(argv)
        return info.value.args[0]

    return run


@pytest.mark.parametrize("extra", [[], ["--set", "loss_type=dr_grpo", "--set", "samples_per_prompt=4"]])
def test_lm_grpo_is_lm_ppo_with_advantage_grpo(captured_config, extra):
    grpo = captured_config(["lm", "grpo", "--seed", "5", *extra])
    ppo = captured_config(["lm", "ppo", "--seed", "5", "--set", "advantage=grpo", *extra])
    assert grpo.to_dict() == ppo.to_dict()
    assert grpo.algo_config.advantage == "grpo" and grpo.algo_config.kl_penalty == "loss"


def test_lm_grpo_refuses_another_advantage(capsys):
    assert cli.main(["lm", "grpo", "--set", "advantage=rloo"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "pgrad: error: pgrad lm grpo sets advantage; use 'pgrad lm ppo --set advantage=rloo'"


# ---- the loop --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_type", ["sequence_mean", "dr_grpo"])
def test_a_grpo_update_uses_the_forms_advantages_and_logs_the_kl_loss(tmp_path, loss_type):
    sets = [*TINY, "advantage=grpo", "samples_per_prompt=4", f"loss_type={loss_type}", "checkpoint_every=64"]
    config = resolve_config("lm_ppo", None, None, sets, seed=2, total_steps=32)[0]
    runner = LMPPORunner(config, tmp_path / "run", console=False)
    scores = []
    score = runner.scorer.score
    runner.scorer.score = lambda *args: scores.append(score(*args)) or scores[-1]  # type: ignore[method-assign]
    rollout, _ = runner.collect()
    grouped = scores[0].view(-1, 4)
    # the KL is in the loss, so the advantage is the score's alone: Dr. GRPO's not divided by the group std
    expected = grpo_advantages(grouped, scale=loss_type == "sequence_mean").reshape(-1)
    torch.testing.assert_close(rollout.advantages[:, 0], expected)
    runner.train()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [16, 32]
    assert all(row["train/kl_loss"] >= 0 and "train/value_loss" not in row for row in rows)
