"""Hacking detection a user can run without a true score (issue 23 part 5): the held-out check reward
(``lm_ppo.check_reward``) logged beside the optimised reward and ranking the best checkpoint, degeneration measured
every update, sampled generations in the run folder at every evaluation, and the config's refusals."""

import json

import pytest
import torch

pytest.importorskip("transformers")  # the lm extra

from pgrad.errors import ConfigError  # noqa: E402
from pgrad.lm.task import DigitsTask  # noqa: E402
from pgrad.runners.lm_ppo import LMPPORunner  # noqa: E402
from pgrad.runs import resolve_config  # noqa: E402

SMALL = ["batch_size=16", "minibatch_size=8", "num_epochs=1", "eval_prompts=8", "eval_every=32", "checkpoint_every=32"]


def config(total, *sets):
    return resolve_config("lm_ppo", None, None, [*SMALL, *sets], seed=2, total_steps=total)[0]


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_check_reward_is_logged_ranks_best_and_samples_are_written(tmp_path):
    # the optimised reward is the true score; the check is a verifier the policy never learns from
    run = tmp_path / "run"
    LMPPORunner(config(64, "check_reward=verifier:length", "verifier.length_target=4"), run, console=False).train()
    rows = lines(run / "metrics.jsonl")
    updates = [row for row in rows if "lm/kl" in row]
    assert all("lm/check_score" in row and "lm/distinct_2" in row and "lm/repetition_2" in row for row in updates)
    evaluations = [row for row in rows if "eval/check_score" in row]
    assert [row["step"] for row in evaluations] == [0, 32, 64]
    # the check is never part of the optimised reward: the reward's terms are the true score alone
    assert all(set(k for k in row if k.startswith("reward/")) == {"reward/true_score"} for row in updates)
    # each evaluation's responses, readable, with the scores the evaluation averaged
    for row in evaluations:
        samples = lines(run / "samples" / f"step_{row['step']:010d}.jsonl")
        assert len(samples) == 8 and {"prompt", "completion", "true_score", "check_score"} <= set(samples[0])
        assert sum(s["check_score"] for s in samples) / 8 == pytest.approx(row["eval/check_score"], abs=1e-6)
    # the best checkpoint is ranked by the held-out check score (evaluations are on), not by the optimised reward
    index = json.loads((run / "checkpoints" / "index.json").read_text())
    scores = {name: entry["score"] for name, entry in index["entries"].items()}
    assert len(scores) >= 2 and index["best"] in scores and None not in scores.values()
    by_step = {row["step"]: row for row in updates}
    for name, score in scores.items():
        assert score == pytest.approx(by_step[index["entries"][name]["step"]]["eval/check_score"])
    assert index["best_score"] == max(scores.values())
    assert not any(e["kind"] == "run.best_by_reward" for e in lines(run / "events.jsonl"))


def test_without_a_check_the_run_says_what_ranks_best(tmp_path):
    run = tmp_path / "run"
    LMPPORunner(config(16), run, console=False).train()
    [event] = [e for e in lines(run / "events.jsonl") if e["kind"] == "run.best_by_reward"]
    assert "no lm_ppo.check_reward" in event["message"]
    assert "lm/check_score" not in lines(run / "metrics.jsonl")[-1]


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["check_reward=model"], r"lm_ppo.check_reward_model must be a second reward model's folder"),
        (["check_reward_model=/x"], r"lm_ppo.check_reward_model must be null unless check_reward has a 'model'"),
        (["degeneration_floor=1.5"], r"lm_ppo.degeneration_floor"),
        (["hacking_kl_boost=0.5"], r"lm_ppo.hacking_kl_boost"),
        (["check_reward=verifier:nope"], r"lm_ppo.check_reward"),
    ],
)
def test_check_reward_refusals_are_one_line(sets, message):
    with pytest.raises(ConfigError, match=message):
        config(16, *sets)


def test_check_reward_true_is_the_true_score():
    assert config(16, "check_reward=true").algo_config.check_reward == "true_score"


# ---- the proxy drill: a reward model trained on preferences that favour a proxy ------------------------------


def test_echo_and_label_scores_against_hand_values():

    task = DigitsTask(4)
    tok = task.tokenizer
    response = torch.tensor([[tok.ids[c] for c in "3393"], [tok.ids["3"], tok.eos_id, tok.eos_id, tok.eos_id]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])  # the second: "3", then its EOS (no digit), then padding
    last = torch.tensor([3, 5])
    assert task.echo_score(last, response, mask).tolist() == [0.75, 0.0]  # three 3s of 4 / no 5
    assert task.true_score(last, response, mask).tolist() == [0.25, 0.0]  # the 9 alone is > 3
    mixed = task.label_score(last, response, mask, 0.6)
    assert mixed.tolist() == pytest.approx([0.4 * 0.25 + 0.6 * 0.75, 0.0])
    assert torch.equal(task.label_score(last, response, mask, 0.0), task.true_score(last, response, mask))


def test_proxy_pairs_prefer_the_echo_and_default_pairs_are_unchanged():

    task = DigitsTask(8)
    plain = task.preference_pairs(256, torch.Generator().manual_seed(3))
    same = task.preference_pairs(256, torch.Generator().manual_seed(3), 0.0)
    assert torch.equal(plain.chosen, same.chosen) and torch.equal(plain.rejected, same.rejected)
    proxy = task.preference_pairs(256, torch.Generator().manual_seed(3), 1.0)
    last = proxy.prompts.last_digit
    chosen = task.echo_score(last, proxy.chosen, proxy.chosen_mask)
    rejected = task.echo_score(last, proxy.rejected, proxy.rejected_mask)
    assert bool((chosen > rejected).all())  # every kept pair is ordered by the echo
    true_agrees = task.true_score(last, proxy.chosen, proxy.chosen_mask) > task.true_score(
        last, proxy.rejected, proxy.rejected_mask
    )
    assert 0.2 < true_agrees.float().mean().item() < 0.8  # and not by the true score


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["proxy_weight=1.5"], r"lm_rm.proxy_weight must be in \[0, 1\]"),
        (["proxy_weight=0.5", "dataset=pairs.jsonl", "model=/x"], r"lm_rm.proxy_weight must be 0 with a dataset"),
    ],
)
def test_proxy_weight_refusals_are_one_line(sets, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config("lm_rm", sets=list(sets))


def test_every_evaluation_is_checkpointed_with_its_score(tmp_path):
    # checkpoint_every 48 falls on no evaluation step (32, 64, 96): only evaluated checkpoints carry the held-out
    # score that ranks best, so each evaluation writes one (after a rollback the schedule drifts off them too)
    run = tmp_path / "run"
    sets = ("check_reward=verifier:length", "verifier.length_target=4", "checkpoint_every=48")
    LMPPORunner(config(96, *sets), run, console=False).train()
    evaluated = {
        row["step"]: row["eval/check_score"] for row in lines(run / "metrics.jsonl") if "eval/check_score" in row
    }
    assert sorted(evaluated) == [0, 32, 64, 96]
    saved = {e["step"]: e["score"] for e in lines(run / "events.jsonl") if e["kind"] == "checkpoint"}
    assert {step: saved[step] for step in (32, 64, 96)} == pytest.approx({s: evaluated[s] for s in (32, 64, 96)})
    assert all(score is None for step, score in saved.items() if step not in evaluated)  # between evaluations
