"""``pgrad eval``, ``pgrad report`` and ``pgrad doctor`` on language-model run folders."""

import json

import pytest

pytest.importorskip("transformers")  # the lm extra

from pgrad.cli import main  # noqa: E402
from pgrad.errors import ConfigError  # noqa: E402
from pgrad.lm.eval_run import evaluate_run  # noqa: E402
from pgrad.runners.lm_ppo import LMPPORunner  # noqa: E402
from pgrad.runners.lm_rm import RewardModelRunner  # noqa: E402
from pgrad.runners.lm_sft import SFTRunner  # noqa: E402
from pgrad.runs import resolve_config  # noqa: E402

EVAL_KEYS = ("eval/true_score", "eval/rm_score", "eval/kl", "eval/kl_k3", "eval/response_length")
EVAL_KEYS += ("eval/distinct_2", "eval/repetition_2")  # the degeneration measures (pgrad.lm.degeneration)


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def ppo_dir(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("lm") / "ppo"
    config = resolve_config("lm_ppo", None, None, ["eval_every=256", "eval_prompts=64"], seed=2, total_steps=256)[0]
    LMPPORunner(config, run_dir, console=False).train()
    return run_dir


def test_eval_of_the_latest_checkpoint_repeats_the_runs_last_evaluation(ppo_dir, capsys):
    last = rows(ppo_dir)[-1]
    result = evaluate_run(ppo_dir)
    # the same weights, held-out prompts (run.seed + 1) and sampling noise as the run's own evaluation at its end
    assert result.metrics == {key: last[key] for key in EVAL_KEYS}
    assert result.prompts == 64 and result.seed == 3 and result.scorer == "the true score"
    assert result.metrics["eval/kl"] > 0.0  # the trained policy, not its reference
    first = rows(ppo_dir)[0]
    assert evaluate_run(ppo_dir, prompts=64, seed=3).metrics["eval/kl"] != first["eval/kl"]
    assert main(["eval", str(ppo_dir), "--prompts", "32", "--seed", "9"]) == 0
    out = capsys.readouterr().out
    assert "32 held-out prompts, seed 9" in out and "eval/true_score" in out and "eval/response_length" in out
    assert main(["eval", str(ppo_dir), "--randomize", "mass=1.2"]) == 2
    assert "--randomize apply to environments" in capsys.readouterr().err


def test_report_draws_the_language_model_panels_over_responses(ppo_dir):
    pytest.importorskip("matplotlib")
    from pgrad.monitor.report import report

    path, panels = report(ppo_dir)
    by_name = {panel.name: panel for panel in panels}
    assert list(by_name)[:4] == ["true_score", "rm_score", "kl_reference", "response_length"]
    steps, values = by_name["true_score"].series["lm/true_score"]
    assert list(steps) == [64, 128, 192, 256] and list(values) == [row["lm/true_score"] for row in rows(ppo_dir)[1:]]
    assert list(by_name["kl_reference"].series["eval/kl"][0]) == [0, 256]
    html = path.read_text()
    assert "4 updates, 256 responses" in html and "env steps" not in html


def test_eval_of_sft_and_the_reward_model_run(tmp_path, capsys):
    sft = tmp_path / "sft"
    config = resolve_config("lm_sft", None, None, ["eval_every=128", "eval_prompts=32", "demonstrations=256"], 1, 128)[
        0
    ]
    SFTRunner(config, sft, console=False).train()
    last = rows(sft)[-1]
    metrics = evaluate_run(sft).metrics
    assert metrics["eval/true_score"] == last["eval/true_score"] and metrics["eval/kl"] == last["eval/kl"]
    assert metrics["eval/rm_score"] == metrics["eval/true_score"]  # no reward model: the true score
    rm = tmp_path / "rm"
    rm_config = resolve_config("lm_rm", None, None, ["eval_every=128", "train_pairs=256", "heldout_pairs=64"], 1, 128)[
        0
    ]
    RewardModelRunner(rm_config, rm, console=False).train()
    scored = evaluate_run(sft, reward_model=rm)
    assert scored.metrics["eval/true_score"] == metrics["eval/true_score"]  # same samples, another scorer
    assert scored.metrics["eval/rm_score"] != metrics["eval/rm_score"] and str(rm) in scored.scorer
    with pytest.raises(ConfigError, match=r"is a reward model \(lm_rm\)"):
        evaluate_run(rm)
    assert main(["doctor", str(sft)]) in (0, 1)
    assert "demonstrations" in capsys.readouterr().out.splitlines()[0]
