"""The digits task, the tiny GPT-2 policy, per-token log-probs and KV-cache sampling (pgrad.lm)."""

import copy

import pytest
import torch

pytest.importorskip("transformers")  # the lm extra

from pgrad.lm.losses import kl_k1, kl_k3  # noqa: E402
from pgrad.lm.model import (  # noqa: E402
    PolicyWithValue,
    RewardModel,
    filter_top_k,
    filter_top_p,
    response_outputs,
    sample,
    tiny_gpt2_config,
)
from pgrad.lm.task import DigitsTask  # noqa: E402


@pytest.fixture(scope="module")
def task():
    return DigitsTask(max_new_tokens=4)


@pytest.fixture(scope="module")
def policy(task):
    torch.manual_seed(0)
    return PolicyWithValue(tiny_gpt2_config(task.tokenizer.vocab_size, n_positions=16)).eval()


def test_tokenizer_is_built_in_process_and_round_trips(task):
    tok = task.tokenizer
    assert tok.vocab_size == 13 and tok.pad_id == tok.eos_id == 0
    ids = tok.encode("<bos>4071:<eos>")
    assert ids == [1, 6, 2, 9, 3, 12, 0]
    assert tok.decode(ids) == "<bos>4071:<eos>"
    with pytest.raises(ValueError, match="not in the digits vocabulary"):
        tok.encode("a")


def test_prompts_are_left_padded_with_masks(task):
    prompts = task.prompts_from_digits([[3, 5], [7]])
    tok = task.tokenizer
    assert prompts.ids.tolist() == [tok.encode("<bos>35:"), [tok.pad_id, *tok.encode("<bos>7:")]]
    assert prompts.mask.tolist() == [[1, 1, 1, 1], [0, 1, 1, 1]]
    assert prompts.last_digit.tolist() == [5, 7]


def test_true_score_by_hand(task):
    tok = task.tokenizer
    prompts = task.prompts_from_digits([[3, 5], [9]])
    # row 0: last digit 5; "729<eos>": 7 and 9 are larger -> 2 / 4. Row 1: last digit 9: nothing is larger.
    response = torch.tensor([tok.encode("729<eos>"), tok.encode("99<eos><eos>")])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    assert task.true_score(prompts.last_digit, response, mask).tolist() == [0.5, 0.0]
    # padding never counts, even when it holds digit ids
    padded = torch.tensor([tok.encode("7999")])
    assert task.true_score(torch.tensor([5]), padded, torch.tensor([[1, 0, 0, 0]])).tolist() == [0.25]


def test_preference_pairs_prefer_the_higher_true_score(task):
    pairs = task.preference_pairs(200, torch.Generator().manual_seed(0))
    chosen = task.true_score(pairs.prompts.last_digit, pairs.chosen, pairs.chosen_mask)
    rejected = task.true_score(pairs.prompts.last_digit, pairs.rejected, pairs.rejected_mask)
    assert 100 < len(pairs) <= 200
    assert bool((chosen > rejected).all())
    lengths = pairs.chosen_mask.sum(1)
    assert int(lengths.min()) >= 1 and int(lengths.max()) == 4


def test_tiny_gpt2_has_two_layers_of_width_64_and_no_dropout(policy):
    config = policy.lm.config
    assert (config.n_layer, config.n_embd) == (2, 64)
    assert config.resid_pdrop == config.embd_pdrop == config.attn_pdrop == 0.0
    assert not policy.training


def test_log_probs_are_unchanged_by_padding_and_batch_composition(task, policy):
    tok = task.tokenizer
    long = task.prompts_from_digits([[1, 2, 3, 4], [5]])
    response = torch.tensor([tok.encode("12<eos><eos>"), tok.encode("3456")])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    batch = response_outputs(policy, long.ids, long.mask, response, mask)
    alone = task.prompts_from_digits([[5]])
    single = response_outputs(policy, alone.ids, alone.mask, response[1:], mask[1:])
    torch.testing.assert_close(batch.logprobs[1], single.logprobs[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(batch.values[1], single.values[0], atol=1e-5, rtol=0)
    # the short response alone, without the padded column: the same three numbers
    first = task.prompts_from_digits([[1, 2, 3, 4]])
    trimmed = response_outputs(policy, first.ids, first.mask, response[:1, :3], mask[:1, :3])
    torch.testing.assert_close(batch.logprobs[0, :3], trimmed.logprobs[0], atol=1e-5, rtol=0)
    assert batch.logprobs[0, 3].item() == 0.0


def test_kl_is_zero_when_the_policy_equals_the_reference(task, policy):
    reference = copy.deepcopy(policy.lm)
    prompts = task.prompts(8, torch.Generator().manual_seed(1))
    samples = sample(policy.lm, prompts.ids, prompts.mask, 4, 0, 0, generator=torch.Generator().manual_seed(2))
    mask = samples.mask.float()
    logp = response_outputs(policy, prompts.ids, prompts.mask, samples.response, samples.mask).logprobs
    ref = response_outputs(reference, prompts.ids, prompts.mask, samples.response, samples.mask).logprobs
    assert kl_k1(logp, ref, mask).abs().max().item() == 0.0
    assert kl_k3(logp, ref, mask).abs().max().item() == 0.0


def test_greedy_sampling_with_kv_cache_equals_the_argmax_of_a_full_forward(task, policy):
    prompts = task.prompts(6, torch.Generator().manual_seed(3))
    samples = sample(policy.lm, prompts.ids, prompts.mask, 4, eos_id=0, pad_id=0, top_k=1)
    out = response_outputs(policy, prompts.ids, prompts.mask, samples.response, samples.mask)
    # greedy: every real token is the most likely one, so its log-prob is the row's maximum
    ids, mask = prompts.ids, prompts.mask
    full_ids = torch.cat([ids, samples.response], 1)
    full_mask = torch.cat([mask, samples.mask], 1)
    logits, _ = policy(full_ids, full_mask)
    start = ids.shape[1] - 1
    argmax = logits[:, start : start + samples.response.shape[1]].argmax(-1)
    real = samples.mask.bool()
    assert torch.equal(samples.response[real], argmax[real])
    assert out.logprobs.shape == samples.response.shape


def test_sampling_masks_everything_after_the_eos(task, policy):
    prompts = task.prompts(64, torch.Generator().manual_seed(4))
    samples = sample(policy.lm, prompts.ids, prompts.mask, 4, 0, 0, generator=torch.Generator().manual_seed(5))
    for row, real in zip(samples.response.tolist(), samples.mask.tolist(), strict=True):
        n = sum(real)
        assert real == [1] * n + [0] * (len(real) - n)  # contiguous from column 0
        assert 0 not in row[: n - 1]  # no EOS before the last real token
        if n < len(row):
            assert row[n - 1] == 0 and row[n:] == [0] * (len(row) - n)  # ended by its EOS, then padding
    assert samples.response.shape[1] <= 4


def test_top_k_and_top_p_filters_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.05, 0.3, 0.15]]))
    inf = float("-inf")
    assert filter_top_k(logits, 2).isinf().tolist() == [[False, True, False, True]]
    assert filter_top_k(logits, 0).isinf().sum() == 0
    # cumulative mass of the more likely tokens: 0.5 -> 0, 0.3 -> 0.5, 0.15 -> 0.8, 0.05 -> 0.95
    kept = filter_top_p(logits, 0.75)
    assert kept.isinf().tolist() == [[False, True, False, True]]
    assert filter_top_p(logits, 0.1).isinf().tolist() == [[False, True, True, True]]  # the top token stays
    assert filter_top_p(logits, 1.0).eq(inf).sum() == 0


def test_reward_model_reads_the_last_real_token(task):
    torch.manual_seed(0)
    model = RewardModel(tiny_gpt2_config(task.tokenizer.vocab_size, n_positions=16)).eval()
    tok = task.tokenizer
    prompts = task.prompts_from_digits([[3], [3]])
    response = torch.tensor([tok.encode("45<eos><eos>"), tok.encode("45<eos>9")])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]])
    scores = model(prompts.ids, prompts.mask, response, mask)
    torch.testing.assert_close(scores[0], scores[1])  # what sits in the padding does not matter
