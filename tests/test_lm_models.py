"""Hugging Face model folders as policy, reference, critic and reward model (pgrad.lm.folders, pgrad.lm.build):
the four architectures load, sample and train through the CLI; every refusal is one line and runs nothing."""

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

from lm_fixtures import ARCHITECTURES, VOCAB_SIZE, tiny_model_folder, write_jsonl  # noqa: E402
from pgrad.cli import main  # noqa: E402
from pgrad.errors import ConfigError  # noqa: E402
from pgrad.lm.folders import FolderTokenizer, check_model_folder, load_causal_lm, load_sequence_classifier  # noqa: E402
from pgrad.lm.model import PolicyWithValue, response_outputs, sample  # noqa: E402

QUIET = ["--quiet", "--set", "run.progress=false", "--set", "run.tensorboard=false"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each architecture's tiny model folder, a sequence-classification reward model and small data files."""
    root = tmp_path_factory.mktemp("models")
    out = {arch: tiny_model_folder(root / arch, arch) for arch in ARCHITECTURES}
    out["rm_llama"] = tiny_model_folder(root / "rm_llama", "llama", head="sequence-classification")
    out["rm_gpt2"] = tiny_model_folder(root / "rm_gpt2", "gpt2", head="sequence-classification")
    out["prompts"] = write_jsonl(root / "prompts.jsonl", [{"prompt": f"what is {i} plus one?"} for i in range(8)])
    demos = [{"prompt": f"what is {i} plus one?", "completion": f" the answer is {i + 1}"} for i in range(8)]
    out["demos"] = write_jsonl(root / "demos.jsonl", demos)
    return out


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the CLI, expect exit 2 with one 'pgrad: error:' line on stderr, and return that line."""
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("pgrad: note:")]
    assert len(err) == 1 and err[0].startswith("pgrad: error: "), err
    return err[0]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_each_architecture_loads_samples_and_pads_on_the_left(folders, arch, capsys, monkeypatch):
    """AutoModelForCausalLM from the folder (no remote code, safetensors); the tokenizer without a pad token pads
    with its EOS and says so (once per folder); a prompt's left padding changes none of its logits (position ids
    count real tokens), and sampling with the KV cache runs on the architecture's own cache."""
    import pgrad.lm.folders

    monkeypatch.setattr(pgrad.lm.folders, "_NOTED", set())
    lm = load_causal_lm(folders[arch], "lm_ppo.model")
    tok = FolderTokenizer(folders[arch], "lm_ppo.model")
    FolderTokenizer(folders[arch], "lm_ppo.model")  # read again: no second note
    if arch == "qwen2":  # transformers' Qwen2 tokenizer brings its own pad token, <|endoftext|>
        assert (tok.pad_id, tok.eos_id) == (300, 0) and "no pad token" not in capsys.readouterr().err
    else:
        assert tok.pad_id == tok.eos_id == 0
        assert capsys.readouterr().err.count("no pad token; padding with its EOS") == 1
    ids = torch.tensor([tok.encode("what is one plus one?", special=True)])
    padded = torch.cat([torch.full((1, 3), tok.pad_id), ids], 1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(ids)], 1)
    response, response_mask = torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.long)
    plain = response_outputs(lm, ids, torch.ones_like(ids), response, response_mask).logprobs
    left = response_outputs(lm, padded, mask, response, response_mask).logprobs
    torch.testing.assert_close(left, plain, atol=1e-5, rtol=1e-5)
    policy = PolicyWithValue(lm=lm)
    assert policy.value_head.in_features == 16  # the folder's hidden size
    out = sample(lm, padded, mask, 4, tok.eos_id, tok.pad_id, generator=torch.Generator().manual_seed(0))
    assert out.response.shape[0] == 1 and 1 <= out.response.shape[1] <= 4
    assert int(out.response.max()) < VOCAB_SIZE


def test_remote_code_is_refused_before_transformers_runs_anything(folders, tmp_path, capsys):
    """config.json's auto_map names the folder's own modeling file: refused in one line naming config.json, and
    the file (which would write a marker when imported) never runs."""
    folder = tiny_model_folder(tmp_path / "remote", "llama")
    marker = tmp_path / "ran"
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    line = one_line_error(capsys, ["lm", "sft", "--set", f"model={folder}", "--set", f"dataset={folders['demos']}"])
    assert f"{folder / 'config.json'} asks for remote code (auto_map)" in line
    assert not marker.exists()
    with pytest.raises(ConfigError, match="asks for remote code"):
        load_causal_lm(folder, "lm_ppo.model")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ({"trust_remote_code": True}, "config.json asks for remote code (trust_remote_code)"),
        ({"model_type": "evil_arch"}, "model_type 'evil_arch', not an architecture transformers ships"),
    ],
)
def test_config_asking_for_code_or_unknown_architecture_is_refused(tmp_path, edit, expected):
    """A trust_remote_code key, or a model_type only the folder's own code could build: one line each."""
    folder = tiny_model_folder(tmp_path / "m", "gpt2")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **edit}))
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        check_model_folder(folder, "lm_sft.model")


def test_tokenizer_asking_for_remote_code_is_refused(tmp_path):
    """tokenizer_config.json's auto_map (a custom tokenizer class) is refused too, naming that file."""
    folder = tiny_model_folder(tmp_path / "m", "gpt2")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"tokenizer_config.json asks for remote code \(auto_map\)"):
        FolderTokenizer(folder, "lm_sft.model")


def test_pickle_only_weights_are_refused_naming_the_file(tmp_path, capsys, folders):
    """Weights only in pytorch_model.bin (unpickling runs code): refused naming that file; the file is never
    opened (it holds bytes that are no pickle at all)."""
    folder = tiny_model_folder(tmp_path / "m", "gpt2")
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not a pickle: never opened")
    line = one_line_error(capsys, ["lm", "sft", "--set", f"model={folder}", "--set", f"dataset={folders['demos']}"])
    assert f"{folder / 'pytorch_model.bin'} is a pickle file" in line and "no model.safetensors" in line
    (folder / "pytorch_model.bin").unlink()
    with pytest.raises(ConfigError, match="has no model.safetensors"):
        check_model_folder(folder, "lm_sft.model")


def test_missing_tokenizer_config_or_folder_is_refused(tmp_path):
    """No tokenizer files, no config.json, or no folder at all: one line each."""
    folder = tiny_model_folder(tmp_path / "m", "gpt2")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    with pytest.raises(ConfigError, match="has no tokenizer"):
        load_causal_lm(folder, "lm_sft.model")
    (folder / "config.json").unlink()
    with pytest.raises(ConfigError, match="has no config.json"):
        check_model_folder(folder, "lm_sft.model")
    with pytest.raises(ConfigError, match="is not a folder"):
        check_model_folder(tmp_path / "missing", "lm_sft.model")


def test_symlinked_weights_are_refused(tmp_path):
    """A model file that is a symbolic link (it may point anywhere) is refused as in run folders; the hint says
    how to copy a Hugging Face cache snapshot."""
    folder = tiny_model_folder(tmp_path / "m", "gpt2")
    (folder / "model.safetensors").rename(tmp_path / "elsewhere.safetensors")
    os.symlink(tmp_path / "elsewhere.safetensors", folder / "model.safetensors")
    with pytest.raises(ConfigError, match=r"model.safetensors is a symbolic link.*cp -rL"):
        load_causal_lm(folder, "lm_sft.model")


def test_sequence_classifier_needs_one_label(tmp_path):
    """A reward-model folder: its trunk and one-output score head; two labels are refused."""
    folder = tiny_model_folder(tmp_path / "rm", "llama", head="sequence-classification")
    trunk, head = load_sequence_classifier(folder, "lm_ppo.reward_model")
    assert head.out_features == 1 and trunk.config.model_type == "llama"
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {"0": "a", "1": "b"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="has 2 labels; a reward model has one"):
        load_sequence_classifier(folder, "lm_ppo.reward_model")


def test_tokenizer_larger_than_the_embeddings_is_refused(folders, tmp_path, capsys):
    """A tokenizer that can produce ids the model has no embedding for: one line before anything is built."""
    folder = tiny_model_folder(tmp_path / "m", "gpt2")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": 100}))
    line = one_line_error(capsys, ["lm", "sft", "--set", f"model={folder}", "--set", f"dataset={folders['demos']}"])
    assert "has 300 tokens, more than the model's vocab_size (100)" in line


def sft_argv(model: Path, data: Path, run: Path) -> list[str]:
    """A few SFT steps on a model folder and a demonstrations file."""
    return [
        "lm", "sft", "--set", f"model={model}", "--set", f"dataset={data}", "--set", "batch_size=4",
        "--set", "eval_prompts=4", "--set", "eval_every=8", "--total-steps", "8", "--run-dir", str(run), *QUIET,
    ]  # fmt: skip


def ppo_argv(model: Path, data: Path, run: Path, *sets: str) -> list[str]:
    """A few PPO steps (one update of 4 responses) on a model folder and a prompts file."""
    extra = [item for value in sets for item in ("--set", value)]
    return [
        "lm", "ppo", "--set", f"model={model}", "--set", f"dataset={data}", "--set", "reward=model",
        "--set", "batch_size=4", "--set", "minibatch_size=2", "--set", "num_epochs=1", "--set", "eval_prompts=4",
        "--set", "eval_every=4", "--total-steps", "4", "--run-dir", str(run), *QUIET, *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_cli_sft_on_a_model_folder_and_a_jsonl(folders, tmp_path, arch):
    """pgrad lm sft --set model=DIR --set dataset=FILE trains and checkpoints; the held-out NLL is logged and the
    digits task's true score is not (a data set has none)."""
    assert main(sft_argv(folders[arch], folders["demos"], tmp_path / "sft")) == 0
    rows = [json.loads(line) for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    assert last["step"] == 8 and last["eval/sft_nll"] > 0 and "eval/true_score" not in last
    assert (tmp_path / "sft" / "checkpoints").is_dir()


@pytest.mark.parametrize("arch", ["qwen2", "mistral"])
def test_cli_ppo_with_a_sequence_classification_reward_folder(folders, tmp_path, arch):
    """pgrad lm ppo on a model folder and a prompts file, scored by a sequence-classification reward folder of
    the same tokenizer: the first minibatch's ratio is exactly 1 and the reward model's score is logged."""
    rm = tiny_model_folder(tmp_path / "rm", arch, head="sequence-classification")
    run = tmp_path / "ppo"
    assert main(ppo_argv(folders[arch], folders["prompts"], run, f"reward_model={rm}")) == 0
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["lm/first_ratio_deviation"] == 0.0
    assert "lm/rm_score" in last and "eval/rm_score" in last and "lm/true_score" not in last


def test_cli_ppo_reference_and_value_model_folders_and_lora(folders, tmp_path):
    """reference_model= a folder (its KL is then not 0 at the start), value_model= a critic folder, and LoRA on a
    Llama (peft's all-linear targets) run together."""
    llama, rm = folders["llama"], folders["rm_llama"]
    other = tiny_model_folder(tmp_path / "ref", "llama", seed=1)
    run = tmp_path / "a"
    sets = (f"reward_model={rm}", f"reference_model={other}", f"value_model={other}", "lora_rank=2")
    assert main(ppo_argv(llama, folders["prompts"], run, *sets)) == 0
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 0 and first["eval/kl"] != 0.0  # another model's weights: the KL starts away from 0


def test_critic_initialised_from_the_reward_folder(folders, tmp_path):
    """value_model=reward_model: the critic starts as a copy of the reward folder's trunk and score head (the
    first values are the reward model's scores of the partial responses), a copy that trains on its own."""
    from pgrad.runners.lm_ppo import LMPPORunner
    from pgrad.runs import resolve_config

    argv = ppo_argv(folders["llama"], folders["prompts"], tmp_path / "b", f"reward_model={folders['rm_llama']}")
    sets = [argv[i + 1] for i, item in enumerate(argv) if item == "--set"] + ["value_model=reward_model"]
    config, _ = resolve_config("lm_ppo", sets=sets, total_steps=4)
    runner = LMPPORunner(config, tmp_path / "b", console=False)
    assert runner.scorer.learned is not None
    reward_model = runner.scorer.learned.members[0]
    assert runner.policy.critic is not reward_model.trunk
    torch.testing.assert_close(runner.policy.value_head.weight, reward_model.head.weight, atol=0, rtol=0)
    for ours, theirs in zip(runner.policy.critic.parameters(), reward_model.trunk.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, atol=0, rtol=0)
        assert ours.requires_grad and not theirs.requires_grad
    runner.train()
    assert not torch.equal(runner.policy.value_head.weight, reward_model.head.weight)


def test_folder_refusals_of_reward_and_reference(folders, tmp_path, capsys):
    """A reward or reference folder with another tokenizer, a reward folder for the built-in GPT-2, and a data
    set for the built-in GPT-2: one line each, before anything trains."""
    gpt2, prompts = folders["gpt2"], folders["prompts"]
    other_vocab = tiny_model_folder(tmp_path / "other", "gpt2")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(other_vocab)
    tokenizer.add_tokens(["<extra>"])  # one more token: another vocabulary
    tokenizer.save_pretrained(other_vocab)
    line = one_line_error(capsys, ppo_argv(gpt2, prompts, tmp_path / "r", f"reward_model={folders['rm_gpt2']}",
                                           f"reference_model={other_vocab}"))  # fmt: skip
    assert "lm_ppo.reference_model: the tokenizer of" in line and "differs from the policy's" in line
    line = one_line_error(capsys, ["lm", "ppo", "--set", "reward=model", "--set", f"reward_model={folders['rm_gpt2']}"])
    assert "lm_ppo.reward_model:" in line and "the policy is the built-in GPT-2" in line
    line = one_line_error(capsys, ["lm", "sft", "--set", f"dataset={folders['demos']}"])
    assert "lm_sft.dataset must be null with the built-in GPT-2" in line
    line = one_line_error(capsys, ["lm", "ppo", "--set", f"model={gpt2}", "--set", f"dataset={prompts}"])
    assert "lm_ppo.reward must be a reward other than 'true_score' with a data set" in line
    assert not (tmp_path / "r").exists()


def test_alert_rules_read_rows_without_a_true_score():
    """A data set's PPO rows have no lm/true_score: a full reward-hacking window of them raises nothing (and no
    KeyError), while the KL rule still reads them."""
    from pgrad.lm.alerts import AlertThresholds, lm_alerts

    limits = AlertThresholds(kl_alert=1.0, hacking_window=4, hacking_drop=0.01, length_collapse=None)
    rows = [{"lm/kl": 0.1, "lm/rm_score": float(i), "lm/response_length": 8.0} for i in range(4)]
    assert lm_alerts(rows, limits) == []
    rows[-1]["lm/kl"] = 2.0
    assert [alert.kind for alert in lm_alerts(rows, limits)] == ["critical.lm_kl"]


def test_cli_reward_model_run_on_a_folder_scores_ppo(folders, tmp_path, capsys):
    """pgrad lm rm on a folder's pairs (its base model the trunk; no true score to correlate with), then PPO
    scored by that run's reward model (built from the same folder, then filled from its checkpoint)."""
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"what is {i}?", "chosen": " yes", "rejected": " no"}
                                                   for i in range(6)])  # fmt: skip
    rm = ["lm", "rm", "--set", f"model={folders['gpt2']}", "--set", f"dataset={pairs}", "--set", "batch_size=4",
          "--set", "eval_every=8", "--total-steps", "8", "--run-dir", str(tmp_path / "rm"), *QUIET]  # fmt: skip
    assert main(rm) == 0
    last = json.loads((tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0.0 <= last["eval/rm_accuracy"] <= 1.0 and "eval/rm_true_correlation" not in last
    run = tmp_path / "ppo"
    assert main(ppo_argv(folders["gpt2"], folders["prompts"], run, f"reward_model={tmp_path / 'rm'}")) == 0


def test_cli_reward_model_run_of_the_builtin_gpt2_is_refused_for_a_folder_policy(folders, tmp_path, capsys):
    """A 'pgrad lm rm' run of the digits task reads the built-in vocabulary: refused for a folder's policy."""
    digits_rm = ["lm", "rm", "--set", "train_pairs=8", "--set", "heldout_pairs=4", "--set", "batch_size=4",
                 "--set", "eval_every=8", "--total-steps", "8", "--run-dir", str(tmp_path / "digits-rm"),
                 *QUIET]  # fmt: skip
    assert main(digits_rm) == 0
    line = one_line_error(capsys, ppo_argv(folders["gpt2"], folders["prompts"], tmp_path / "x",
                                           f"reward_model={tmp_path / 'digits-rm'}"))  # fmt: skip
    assert "reads the built-in GPT-2's digits tokens, and the policy does not" in line


def test_cli_sft_then_dpo_from_it_on_a_folder(folders, tmp_path, capsys):
    """init_from an SFT run of a folder's model: DPO starts from its weights (its reference too), and must name
    the same model folder."""
    assert main(sft_argv(folders["llama"], folders["demos"], tmp_path / "sft")) == 0
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"what is {i}?", "chosen": " yes", "rejected": " no"}
                                                   for i in range(6)])  # fmt: skip

    def dpo(model: Path, run: Path) -> list[str]:
        return ["lm", "dpo", "--set", f"model={model}", "--set", f"dataset={pairs}", "--set", "batch_size=2",
                "--set", f"init_from={tmp_path / 'sft'}", "--set", "eval_prompts=2", "--set", "eval_every=4",
                "--total-steps", "4", "--run-dir", str(run), *QUIET]  # fmt: skip

    assert main(dpo(folders["llama"], tmp_path / "dpo")) == 0
    first = json.loads((tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 0 and first["eval/kl"] == 0.0  # the reference is the SFT model the policy starts as
    line = one_line_error(capsys, dpo(folders["gpt2"], tmp_path / "y"))
    assert f"lm_dpo.model.path must be {folders['llama']}, the value of the SFT model" in line


def test_a_folder_ppo_run_resumes_exactly(folders, tmp_path):
    """Stopped after its first update and resumed, a PPO run on a Llama folder (tied embeddings, a reward folder)
    logs the same second update as an uninterrupted one: the checkpoint holds the folder model's weights, and
    the prompts are drawn from the restored RNG."""
    from pgrad.runners.lm_ppo import LMPPORunner
    from pgrad.runs import resolve_config

    argv = ppo_argv(folders["llama"], folders["prompts"], tmp_path, f"reward_model={folders['rm_llama']}")
    sets = [argv[i + 1] for i, item in enumerate(argv) if item == "--set"] + ["run.checkpoint_every=4"]
    config, _ = resolve_config("lm_ppo", sets=sets, total_steps=8)
    LMPPORunner(config, tmp_path / "whole", console=False).train()
    LMPPORunner(config, tmp_path / "split", console=False).train(stop_at_step=4)
    LMPPORunner(config, tmp_path / "split", resume=True, console=False).train()

    def last(run: str) -> dict[str, float]:
        row = json.loads((tmp_path / run / "metrics.jsonl").read_text().splitlines()[-1])
        return {k: v for k, v in row.items() if k.startswith(("lm/", "train/", "eval/"))}

    assert last("whole")["lm/kl"] != 0.0 and last("split") == last("whole")


def test_a_data_sets_columns_reach_the_verifiers_and_functions(folders, tmp_path, monkeypatch):
    """GRPO on a model folder and a prompts file with an 'answer' column: verifier:exact_answer compares each
    completion with its own row's answer, and a user function receives the prompts as given and the columns
    aligned with the batch (each term logged as reward/<name>)."""
    rows = [{"prompt": f"what is {i} plus one?", "answer": str(i + 1), "topic": "sums"} for i in range(8)]
    data = write_jsonl(tmp_path / "sums.jsonl", rows)
    module = tmp_path / "user_rewards.py"
    module.write_text(
        "import json, os\n"
        "def seen(prompts, completions, answer, topic):\n"
        "    with open(os.environ['SEEN'], 'a') as out:\n"
        "        for p, a, t in zip(prompts, answer, topic, strict=True):\n"
        "            out.write(json.dumps([p, a, t]) + '\\n')\n"
        "    return [0.0] * len(prompts)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("SEEN", str(tmp_path / "seen.jsonl"))
    run = tmp_path / "grpo"
    argv = ppo_argv(folders["llama"], data, run, "advantage=grpo", "samples_per_prompt=2")
    argv[argv.index("reward=model")] = "reward=[verifier:exact_answer, user_rewards:seen]"
    assert main([*argv, "--trust-reward-code"]) == 0
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert "reward/exact_answer" in last and "reward/seen" in last
    seen = [json.loads(line) for line in (tmp_path / "seen.jsonl").read_text().splitlines()]
    assert seen and all(p == f"what is {int(a) - 1} plus one?" and t == "sums" for p, a, t in seen)
