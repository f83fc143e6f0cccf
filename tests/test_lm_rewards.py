"""Rewards of language-model PPO (issue 23, part 3): built-in verifiers against hand values, Python reward
functions behind --trust-reward-code with their output checked at every call, weighted sums logged per term,
and `reward: true` (YAML's boolean) read as the true score."""

import json
import math
import sys

import pytest
import torch

pytest.importorskip("transformers")  # the lm extra

from pgrad import cli  # noqa: E402
from pgrad.errors import ConfigError  # noqa: E402
from pgrad.lm import verifiers  # noqa: E402
from pgrad.lm.config import LMPPOConfig  # noqa: E402
from pgrad.lm.reward import CombinedReward, FunctionReward, RewardError, TrueScoreReward, VerifierReward  # noqa: E402
from pgrad.lm.reward_spec import VerifierConfig, refuse_untrusted_reward_code, reward_terms  # noqa: E402
from pgrad.lm.task import DigitsTask, TextBatch  # noqa: E402
from pgrad.runners.lm_ppo import LMPPORunner  # noqa: E402
from pgrad.runs import config_from_dict, load_run_config, resolve_config  # noqa: E402

# a run of two updates of 16 responses on a one-block model: about a second on 2 cores
TINY = ["batch_size=16", "minibatch_size=16", "num_epochs=1", "eval_every=0", "model.n_layer=1", "model.n_embd=16"]


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def config(total, *sets):
    return resolve_config("lm_ppo", None, None, [*TINY, "checkpoint_every=16", *sets], seed=3, total_steps=total)[0]


def one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert err.startswith("pgrad: error: ") and "\n" not in err, err
    return err


# ---- verifiers: pure functions against hand values ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("so the sum is 12 and then 42", "42"),  # the last number
        ("total: 1,234 apples", "1,234"),
        ("x = -3.5", "-3.5"),
        ("The answer is 7.\nCheck: 3 + 4", "7."),  # an answer line beats a later number
        ("Final Answer: forty two", "forty two"),
        ("we get \\boxed{\\frac{1}{2}} answer: 3", "\\frac{1}{2}"),  # \boxed beats everything
        ("\\boxed{5} and later \\boxed{6}", "6"),
        ("no digits here", None),
        ("\\boxed{unclosed 9", "9"),  # an unclosed box is no box: the last number
    ],
)
def test_extract_answer_by_its_documented_rules(text, answer):
    assert verifiers.extract_answer(text) == answer


def test_normalize_answer_makes_equal_numbers_and_cases_agree():
    assert verifiers.normalize_answer(" $1,234. ") == "1234"
    assert verifiers.normalize_answer("1234.0") == "1234"
    assert verifiers.normalize_answer("0.50") == "0.5"
    assert verifiers.normalize_answer("+7") == "7"
    assert verifiers.normalize_answer(12345678901234567891) == "12345678901234567891"  # no float rounding
    assert verifiers.normalize_answer(" Paris ") == "paris"


def test_exact_answer_scores_one_for_a_match_and_zero_otherwise():
    completions = ["2 + 2 = 4", "the answer is 5", "\\boxed{4.0}", "nothing", "Answer: PARIS"]
    answers = ["4", 4, 4, "4", "Paris"]
    assert verifiers.exact_answer(completions, answers) == [1.0, 0.0, 1.0, 0.0, 1.0]


def test_regex_searches_format_matches_the_whole_completion():
    completions = ["abc 123", "123", " 123 \n", "12a"]
    assert verifiers.regex_match(completions, r"\d+") == [1.0, 1.0, 1.0, 1.0]
    assert verifiers.format_match(completions, r"\d+") == [0.0, 1.0, 1.0, 0.0]


def test_length_penalty_is_zero_at_the_target_and_linear_around_it():
    assert verifiers.length_penalty(["", "abc", "abcdef"], target=3, scale=0.5) == [-1.5, 0.0, -1.5]


# ---- the config: terms, weights, names, refusals --------------------------------------------------------------


def test_a_reward_list_reads_into_weighted_named_terms_with_their_options():
    section = LMPPOConfig(
        reward=[
            "verifier:exact_answer",
            {"reward": "verifier:format", "weight": 0.5, "pattern": r"\d"},
            {"reward": "verifier:length", "weight": -1, "name": "short", "length_target": 2},
            {"reward": "true", "weight": 0},  # weight 0: logged, not optimised
        ],
        verifier={"length_scale": 0.25},
    )
    terms = section.reward_terms
    assert [(t.name, t.weight, t.kind) for t in terms] == [
        ("exact_answer", 1.0, "verifier"),
        ("format", 0.5, "verifier"),
        ("short", -1.0, "verifier"),
        ("true_score", 0.0, "true_score"),
    ]
    assert terms[0].option("answer_column") == "answer"
    assert terms[2].options == (("length_scale", 0.25), ("length_target", 2))  # the section's scale, its target
    assert section.to_dict()["reward"][3] == {"reward": "true_score", "weight": 0}  # saved canonical
    # one term may be a mapping of its own: --set "reward={reward: verifier:regex, pattern: '[0-9]'}"
    (term,) = LMPPOConfig(reward={"reward": "verifier:regex", "pattern": "[0-9]"}).reward_terms
    assert (term.name, term.option("pattern")) == ("regex", "[0-9]")


@pytest.mark.parametrize(
    ("reward", "message"),
    [
        ("verifier:nope", "lm_ppo.reward: unknown verifier 'verifier:nope' (allowed: exact_answer, regex"),
        ("not a function", "lm_ppo.reward must be 'model', 'true_score', 'verifier:NAME'"),
        (False, "lm_ppo.reward must be"),
        ([], "lm_ppo.reward must name at least one reward"),
        ("verifier:regex", "lm_ppo.reward: verifier:regex needs a pattern"),
        ([{"weight": 2}], "lm_ppo.reward[0] needs 'reward:'"),
        ([{"reward": "true_score", "weight": "heavy"}], "lm_ppo.reward[0].weight must be a finite number"),
        ([{"reward": "true_score", "weight": math.inf}], "lm_ppo.reward[0].weight must be a finite number"),
        ([{"reward": "true_score", "colour": 1}], "lm_ppo.reward[0]: unknown key 'colour'"),
        ([{"reward": "true_score", "pattern": "x"}], "lm_ppo.reward[0].pattern is not an option of 'true_score'"),
        ([{"reward": "verifier:regex", "pattern": "("}], "lm_ppo.reward[0].pattern must be a regular expression"),
        ([{"reward": "verifier:length", "length_scale": -1}], "lm_ppo.reward[0].length_scale must be >= 0"),
        (["true_score", "true"], "lm_ppo.reward[1]: two terms are named 'true_score'"),
        ([{"reward": "true_score", "name": "a b"}], "lm_ppo.reward[0].name must be letters"),
    ],
)
def test_each_bad_reward_is_one_line_naming_the_field(reward, message):
    with pytest.raises(ConfigError) as info:
        LMPPOConfig(reward=reward)
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_reward_model_is_required_by_a_model_term_inside_a_list():
    with pytest.raises(ConfigError, match="lm_ppo.reward_model must be the run folder"):
        LMPPOConfig(reward=["true_score", {"reward": "model", "weight": 0.5}])


def test_reward_true_in_yaml_and_in_set_is_the_true_score(tmp_path):
    # the README's and the guide's spelling: YAML reads `true` as a boolean
    path = tmp_path / "ppo.yaml"
    path.write_text("lm_ppo:\n  reward: true\n")
    from_file = resolve_config("lm_ppo", None, path, [], None, None)[0]
    from_set = resolve_config("lm_ppo", None, None, ["reward=true"], None, None)[0]
    quoted = resolve_config("lm_ppo", None, None, ["reward='true'"], None, None)[0]
    assert from_file.algo_config.reward == from_set.algo_config.reward == quoted.algo_config.reward == "true_score"
    assert from_file.algo_config.reward_terms[0].kind == "true_score"


def test_a_run_folder_saved_with_reward_true_and_no_loss_type_reads_as_it_ran(tmp_path):
    # a run folder from before: reward 'true' and no loss_type field (every loss was a token mean then)
    data = config(16).to_dict()
    data["lm_ppo"]["reward"] = "true"
    for key in ("loss_type", "verifier"):
        data["lm_ppo"].pop(key)
    data["lm_ppo"].update(advantage="grpo", samples_per_prompt=4, kl_penalty="reward")
    (tmp_path / "config.yaml").write_text(json.dumps(data))
    section = load_run_config(tmp_path).algo_config
    assert (section.reward, section.loss_type, section.kl_penalty) == ("true_score", "token_mean", "reward")
    assert config_from_dict(data, "lm_ppo").algo_config.loss_type == "sequence_mean"  # a new config: GRPO's


# ---- reward functions: checked at every call -------------------------------------------------------------------

BATCH = TextBatch(["1:", "2:", "3:"], ["7", "42", ""], {"answer": ["7", "4", "0"]})


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        ([1.0, 2.0], "reward function 'm:f' returned 2 rewards for a batch of 3 completions"),
        ([1.0, float("nan"), 0.0], "reward function 'm:f' returned nan for row 1 (prompt '2:', completion '42')"),
        ([1.0, 2.0, None], "reward function 'm:f' returned None for row 2 (prompt '3:', completion '')"),
        ([1.0, "2", 0.0], "reward function 'm:f' returned '2' for row 1"),
        ([1.0, math.inf, 0.0], "reward function 'm:f' returned inf for row 1"),
        (0.5, "reward function 'm:f' returned a float; it must return a list of floats, one per completion (3)"),
    ],
)
def test_a_bad_output_is_one_line_naming_the_function_and_the_row(returned, message):
    with pytest.raises(RewardError) as info:
        FunctionReward("m:f", lambda prompts, completions, **columns: returned).score_texts(BATCH)
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_a_function_gets_prompts_completions_and_columns_and_may_return_a_tensor():
    seen = {}

    def reward(prompts, completions, **columns):
        seen.update(prompts=prompts, completions=completions, **columns)
        return torch.tensor([0.5, 1, -2])

    assert FunctionReward("m:reward", reward).score_texts(BATCH) == [0.5, 1.0, -2.0]
    assert seen == {"prompts": ["1:", "2:", "3:"], "completions": ["7", "42", ""], "answer": ["7", "4", "0"]}


def test_an_exception_inside_the_function_is_reported_with_its_name():
    def reward(prompts, completions, **columns):
        raise KeyError("solution")

    with pytest.raises(RewardError, match=r"^reward function 'mymod:reward' raised KeyError: 'solution'$"):
        FunctionReward("mymod:reward", reward).score_texts(BATCH)


def test_loading_a_missing_module_or_function_is_one_line(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "rewards_here.py").write_text("VALUE = 3\n")
    with pytest.raises(ConfigError, match="cannot import module 'no_such_module_xyz' of 'no_such_module_xyz:f'"):
        FunctionReward("no_such_module_xyz:f")
    with pytest.raises(ConfigError, match="module 'rewards_here' has no function 'VALUE'"):
        FunctionReward("rewards_here:VALUE")


def test_the_untrusted_refusal_names_the_function_and_the_flag():
    terms = reward_terms(["true_score", "pkg.mod:score"], VerifierConfig())
    refuse_untrusted_reward_code(terms, "x", trust_reward_code=True)  # trusted: nothing
    refuse_untrusted_reward_code(reward_terms("verifier:length", VerifierConfig()), "x", False)  # no code: nothing
    with pytest.raises(ConfigError, match=r"^x: lm_ppo.reward names the Python function 'pkg.mod:score'.*--trust-re"):
        refuse_untrusted_reward_code(terms, "x", trust_reward_code=False)


# ---- the weighted sum on the digits task -----------------------------------------------------------------------


def test_the_combined_reward_is_the_weighted_sum_and_keeps_each_term():
    task = DigitsTask(8)
    prompts = task.prompts_from_digits([[1, 2], [5]])
    tok = task.tokenizer
    # "7<eos>" to "12:" (answer "2"), "5" to "5:" (answer "5")
    response = torch.tensor([[tok.ids["7"], tok.eos_id], [tok.ids["5"], tok.eos_id]])
    mask = torch.tensor([[1, 1], [1, 0]])
    texts = task.texts(prompts, response, mask)
    assert (texts.prompts, texts.completions, texts.columns) == (
        ["12:", "5:"],
        ["7", "5"],
        {"answer": ["2", "5"], "last_digit": [2, 5]},
    )
    exact, true = reward_terms(["verifier:exact_answer", {"reward": "true_score", "weight": 2.0}], VerifierConfig())
    combined = CombinedReward([(exact, VerifierReward(exact, task.column_names)), (true, TrueScoreReward(task))], task)
    # exact: [0, 1]; true score: 7 > 2 in row 0 (1/8), nothing above 5 in row 1: 2 x [0.125, 0] + [0, 1]
    assert combined.score(prompts, response, mask).tolist() == [0.25, 1.0]
    assert combined.last_terms == {"exact_answer": 0.5, "true_score": 0.0625}


def test_exact_answer_on_a_column_the_prompts_lack_is_refused_before_training():
    (term,) = reward_terms({"reward": "verifier:exact_answer", "answer_column": "solution"}, VerifierConfig())
    with pytest.raises(ConfigError, match="compares with column 'solution', which the prompts do not have"):
        VerifierReward(term, DigitsTask(8).column_names)


def test_ppo_on_digits_with_the_exact_answer_verifier_logs_it(tmp_path):
    LMPPORunner(config(32, "reward=verifier:exact_answer"), tmp_path / "run", console=False).train()
    row = rows(tmp_path / "run")[-1]
    assert row["step"] == 32 and row["reward/exact_answer"] == row["lm/rm_score"]
    assert 0.0 <= row["reward/exact_answer"] <= 1.0


REWARD_MODULE = """
CALLS = []

def digit_count(prompts, completions, answer, last_digit, **others):
    CALLS.append(len(completions))
    assert len(answer) == len(last_digit) == len(prompts) == len(completions)
    return [float(sum(c.isdigit() for c in text)) for text in completions]

def too_short(prompts, completions, **columns):
    return [1.0] * (len(completions) - 1)
"""


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards_23.py").write_text(REWARD_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_rewards_23"
    sys.modules.pop("my_rewards_23", None)


def test_a_user_function_combined_with_weights_is_logged_per_term(tmp_path, reward_module):
    reward = (
        f"reward=[{{reward: '{reward_module}:digit_count', weight: 0.5}}, "
        "{reward: 'verifier:length', weight: 2, length_target: 4, length_scale: 0.1}, true_score]"
    )
    runner = LMPPORunner(config(32, reward), tmp_path / "run", console=False)
    runner.train()
    assert sys.modules[reward_module].CALLS == [16, 16]  # once per update, the whole batch
    for row in rows(tmp_path / "run")[1:]:
        weighted = 0.5 * row["reward/digit_count"] + 2 * row["reward/length"] + row["reward/true_score"]
        assert row["lm/rm_score"] == pytest.approx(weighted, abs=1e-5)  # the optimised reward: the weighted sum
        assert row["reward/length"] <= 0.0


def test_the_cli_refuses_a_reward_function_without_the_flag_and_imports_nothing(tmp_path, reward_module, capsys):
    argv = ["lm", "ppo", "--run-dir", str(tmp_path / "run"), "--quiet", "--total-steps", "16"]
    argv += [arg for item in TINY for arg in ("--set", item)] + ["--set", f"reward={reward_module}:digit_count"]
    assert cli.main(argv) == 2
    assert "names the Python function 'my_rewards_23:digit_count'" in one_line_error(capsys)
    assert reward_module not in sys.modules and not (tmp_path / "run").exists()
    # trusted: it trains; a resume of that folder needs the flag again (the folder may come from someone else)
    assert cli.main([*argv, "--trust-reward-code"]) == 0
    capsys.readouterr()
    resume = ["resume", str(tmp_path / "run"), "--total-steps", "32", "--quiet"]
    assert cli.main(resume) == 2
    assert f"{tmp_path / 'run' / 'config.yaml'}: lm_ppo.reward names the Python function" in one_line_error(capsys)
    assert cli.main(["lm", *resume, "--trust-reward-code"]) == 0
    assert [row["step"] for row in rows(tmp_path / "run")] == [16, 32]
    assert cli.main(["eval", str(tmp_path / "run"), "--prompts", "4"]) == 2
    assert "--trust-reward-code" in one_line_error(capsys)
    assert cli.main(["eval", str(tmp_path / "run"), "--prompts", "4", "--trust-reward-code"]) == 0
    assert f"rm_score is {reward_module}:digit_count)" in capsys.readouterr().out


def test_a_function_returning_a_bad_batch_stops_the_run_with_one_line(tmp_path, reward_module, capsys):
    argv = ["lm", "ppo", "--run-dir", str(tmp_path / "run"), "--quiet", "--total-steps", "16", "--trust-reward-code"]
    argv += [arg for item in TINY for arg in ("--set", item)] + ["--set", f"reward={reward_module}:too_short"]
    assert cli.main(argv) == 2
    assert one_line_error(capsys).endswith(
        f"reward function '{reward_module}:too_short' returned 15 rewards for a batch of 16 completions (one per "
        "completion, in their order)"
    )
    assert (tmp_path / "run" / "config.yaml").is_file()  # the run folder is left as it was
