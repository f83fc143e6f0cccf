"""Reward-model ensembles: bootstrap resamples, the one-model case unchanged, exact resume, the conservative
combination on real model outputs, PPO logging the members' disagreement, and its alert rule."""

import json

import pytest
import torch

pytest.importorskip("transformers")  # the lm extra

from pgrad.checkpoint import read_train_state  # noqa: E402
from pgrad.lm.alerts import AlertThresholds, lm_alerts  # noqa: E402
from pgrad.lm.losses import combine_ensemble  # noqa: E402
from pgrad.monitor.doctor import explain_alerts  # noqa: E402
from pgrad.runners.lm_ppo import LMPPORunner  # noqa: E402
from pgrad.runners.lm_rm import RewardModelRunner, bootstrap_indices, load_reward_model  # noqa: E402
from pgrad.runs import resolve_config  # noqa: E402

MACHINE_KEYS = {"time", "perf/seconds_per_update", "perf/steps_per_second", "perf/memory_mb", "perf/peak_memory_mb"}
SMALL = ["eval_every=128", "train_pairs=256", "heldout_pairs=128", "n_embd=32", "n_layer=1"]


def rows(run_dir):
    with open(run_dir / "metrics.jsonl") as handle:
        return [json.loads(line) for line in handle]


def rm_config(total, *sets, seed=5):
    return resolve_config("lm_rm", None, None, [*SMALL, *sets], seed=seed, total_steps=total)[0]


def test_bootstrap_resamples_differ_per_member_and_are_reproducible_by_seed():
    first, second = bootstrap_indices(500, 7, 0, 3), bootstrap_indices(500, 7, 1, 3)
    assert torch.equal(first, bootstrap_indices(500, 7, 0, 3))  # same seed and member: the same resample
    assert not torch.equal(first, second)
    assert not torch.equal(first, bootstrap_indices(500, 8, 0, 3))  # another run seed: another resample
    unique = len(torch.unique(first)) / 500
    print(f"bootstrap: {unique:.3f} of the pairs drawn at least once (1 - 1/e = 0.632 expected)")
    assert 0.58 < unique < 0.69 and first.min() >= 0 and first.max() < 500
    assert torch.equal(bootstrap_indices(500, 7, 0, 1), torch.arange(500))  # one model: the pairs themselves


def test_an_ensemble_of_one_reproduces_the_single_reward_model(tmp_path):
    """Numbers recorded from the single-model trainer before ensembles existed (commit 6007277, same seed and
    config): ensemble_size 1 must train and score the same model."""
    runner = RewardModelRunner(rm_config(256), tmp_path / "rm", console=False)
    runner.train()
    logged = rows(tmp_path / "rm")
    got = [(r["eval/rm_loss"], r["eval/rm_accuracy"], r["eval/rm_true_correlation"]) for r in logged]
    weight_sum = float(sum(v.double().sum() for v in runner.model.state_dict().values()))
    print(f"ensemble of 1: rows {got}, weight sum {weight_sum!r}, Brier {logged[-1]['eval/rm_brier']:.4f}")
    # Within 1e-5, not bit for bit: another CPU's BLAS kernels may round differently; a changed RNG draw or
    # resample (what this guards against) moves these by percents.
    expected = [
        (0.5517739057540894, 0.8111110925674438, 0.5684015154838562),
        (0.4092467427253723, 0.8666666746139526, 0.6410295367240906),
    ]
    assert [value for row in got for value in row] == pytest.approx([v for row in expected for v in row], rel=1e-5)
    # rel 1e-5 like the rows: 96.90332 on this machine's CPU (2026-12-07) at d46c705 already, 5e-6 from the
    # recorded value (another CPU's BLAS rounding), and the shared fused Adam (pgrad.algos.common.adam) rounds the
    # last bit unlike torch's for-loop Adam it was recorded with; a changed draw moves it by far more than 1e-5.
    assert weight_sum == pytest.approx(96.90284405187276, rel=1e-5)
    assert set(read_train_state(tmp_path / "rm" / "checkpoints" / "step_0000000256").modules) == {"reward_model"}
    # loaded as a scorer, one member's combination is its own score, for either rule
    prompts = runner.heldout.prompts
    response, mask = runner.heldout.chosen, runner.heldout.chosen_mask
    raw = runner.model(prompts.ids, prompts.mask, response, mask).detach()
    for rule in ("min", "mean_minus_std"):
        scorer = load_reward_model(tmp_path / "rm", 8, torch.device("cpu"), rule, 2.0)
        assert torch.equal(scorer.score(prompts, response, mask), raw)
        assert scorer.last_disagreement == 0.0


def test_an_ensemble_trains_members_apart_combines_below_each_and_resumes_exactly(tmp_path):
    straight = RewardModelRunner(rm_config(256, "ensemble_size=3"), tmp_path / "a", console=False)
    straight.train()
    halves = RewardModelRunner(rm_config(256, "ensemble_size=3"), tmp_path / "b", console=False)
    halves.train(stop_at_step=128)
    RewardModelRunner(rm_config(256, "ensemble_size=3"), tmp_path / "b", resume=True, console=False).train()
    a = read_train_state(tmp_path / "a" / "checkpoints" / "step_0000000256")
    b = read_train_state(tmp_path / "b" / "checkpoints" / "step_0000000256")
    assert set(a.modules) == {"reward_model", "reward_model_m1", "reward_model_m2"}
    assert sorted(p.name for p in (tmp_path / "a" / "checkpoints" / "step_0000000256").iterdir()) == [
        "state.json",
        "tensors.safetensors",
    ]
    for module in a.modules:
        for key, value in a.modules[module].items():
            assert torch.equal(value, b.modules[module][key]), f"{module}.{key}"
    strip = lambda row: {k: v for k, v in row.items() if k not in MACHINE_KEYS}  # noqa: E731
    assert [strip(r) for r in rows(tmp_path / "a")] == [strip(r) for r in rows(tmp_path / "b")]
    last = rows(tmp_path / "a")[-1]
    members = [last[f"eval/rm_accuracy_m{m}"] for m in range(3)]
    print(
        f"ensemble of 3: member accuracies {members}, min-combined {last['eval/rm_accuracy']:.4f}, Brier "
        f"{last['eval/rm_brier']:.4f}"
    )
    assert len(set(members)) > 1  # different initial weights and resamples: different models
    assert 0.6 < last["eval/rm_accuracy"] <= 1 and 0 < last["eval/rm_brier"] < 0.25
    # on real model outputs the combined scores are never above any member's, and the spread is real
    scorer = load_reward_model(tmp_path / "a", 8, torch.device("cpu"), "min")
    prompts, response, mask = straight.heldout.prompts, straight.heldout.rejected, straight.heldout.rejected_mask
    each = scorer.member_scores(prompts, response, mask)
    combined = scorer.score(prompts, response, mask)
    assert each.shape == (3, len(straight.heldout))
    assert bool((combined <= each).all()) and bool((combined == each.min(0).values).all())
    assert scorer.last_disagreement == pytest.approx(float(each.std(0, correction=0).mean()))
    assert scorer.last_disagreement > 0
    spread = load_reward_model(tmp_path / "a", 8, torch.device("cpu"), "mean_minus_std", 1.5)
    assert torch.allclose(spread.score(prompts, response, mask), combine_ensemble(each, "mean_minus_std", 1.5))


def test_ppo_on_an_ensemble_logs_the_members_disagreement(tmp_path):
    RewardModelRunner(
        rm_config(128, "ensemble_size=2", "n_embd=64", "n_layer=2"), tmp_path / "rm", console=False
    ).train()
    sets = ["checkpoint_every=64", "eval_every=0", "reward=model", f"reward_model={tmp_path / 'rm'}", "batch_size=32"]
    LMPPORunner(
        resolve_config("lm_ppo", None, None, sets, seed=3, total_steps=64)[0], tmp_path / "ppo", console=False
    ).train()
    logged = [r for r in rows(tmp_path / "ppo") if "lm/kl" in r]
    print(f"PPO on an ensemble of 2: disagreement per update {[round(r['lm/rm_disagreement'], 4) for r in logged]}")
    assert len(logged) == 2 and all(r["lm/rm_disagreement"] > 0 for r in logged)


LIMITS = AlertThresholds(
    kl_alert=None, hacking_window=4, hacking_drop=0.05, length_collapse=None, disagreement_rise=3.0
)


def row(disagreement):
    return {
        "lm/kl": 1.0,
        "lm/rm_score": 0.0,
        "lm/true_score": 0.5,
        "lm/response_length": 8.0,
        "lm/rm_disagreement": disagreement,
    }


def test_the_disagreement_rule_fires_on_a_rise_and_stays_silent_when_flat():
    def kinds(history):
        return [alert.kind for alert in lm_alerts(history, LIMITS)]

    # early level (first 2 rows) 0.1; later level (last 2 rows) (0.35 + 0.33) / 2 = 0.34 > 3 x 0.1
    rising = [row(0.1), row(0.1), row(0.2), row(0.35), row(0.33)]
    alerts = lm_alerts(rising, LIMITS)
    assert [a.kind for a in alerts] == ["warning.lm_rm_disagreement"]
    assert "lm_ppo.disagreement_rise 3" in alerts[0].message and "0.34" in alerts[0].message
    assert kinds([row(0.1), row(0.1), row(0.2), row(0.3), row(0.3)]) == []  # exactly 3 x: not above
    assert kinds([row(0.1 + 0.01 * (i % 3)) for i in range(20)]) == []  # flat with noise
    assert kinds(rising[:3]) == []  # fewer rows than the window
    assert kinds([row(0.0), row(0.0), row(0.5), row(0.5)]) == []  # no early level to compare against
    assert kinds([{k: v for k, v in row(9.0).items() if k != "lm/rm_disagreement"}] * 5) == []  # one model
    silent = AlertThresholds(None, 4, 0.05, None, None)
    assert lm_alerts(rising, silent) == []
    text = "\n".join(explain_alerts([{"step": 64, "kind": "warning.lm_rm_disagreement", "message": "rose"}]))
    assert "warning.lm_rm_disagreement: 1x, first at step 64: rose" in text
    assert "means: the reward-model ensemble's members disagree more and more" in text
