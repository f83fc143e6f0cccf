"""The language-model sections resolve and read back through the one config path (pgrad.runs), with the shared
optimizer: and a model: section; the flat keys of d46c705's sections are read into them."""

from __future__ import annotations

import pytest

from pgrad.algos.upgrade import upgrade_algo_section
from pgrad.errors import ConfigError
from pgrad.runs import config_from_dict, resolve_config


def test_a_bare_key_finds_the_nested_model_and_optimizer_fields():
    config, preset = resolve_config("lm_sft", sets=["n_embd=32", "learning_rate=5e-4"], seed=2, total_steps=64)
    section = config.algo_config
    assert preset is None and config.env.id == "digits" and config.env.num_envs == 1
    assert (section.model.n_embd, section.model.n_layer, section.optimizer.learning_rate) == (32, 2, 5e-4)
    assert section.optimizer.eps == 1e-8  # torch's default, what SFT always used (PPO's is 1e-5)
    assert resolve_config("lm_ppo")[0].algo_config.optimizer.eps == 1e-5


def test_each_lm_algorithm_gets_its_own_defaults_layer():
    ppo = resolve_config("lm_ppo")[0]
    assert (ppo.run.total_steps, ppo.run.checkpoint_every, ppo.run.tensorboard) == (4096, 1024, False)
    assert (ppo.guard.kl_warning, ppo.guard.kl_critical, ppo.guard.eval_every) == (0.2, 0.4, 0)
    assert resolve_config("lm_rm")[0].run.total_steps == 16384
    assert resolve_config("sac", "Pendulum-v1")[0].env.num_envs == 1  # the replay algorithms' layer


def test_flat_keys_of_an_older_section_move_into_optimizer_and_model():
    old = {"learning_rate": 3e-4, "n_layer": 1, "n_embd": 32, "n_head": 2, "max_grad_norm": 0.5}
    moved = upgrade_algo_section("lm_dpo", old)
    assert moved == {
        "optimizer": {"learning_rate": 3e-4},
        "model": {"n_layer": 1, "n_embd": 32, "n_head": 2},
        "max_grad_norm": 0.5,
    }
    section = config_from_dict({"algo": "lm_dpo", "lm_dpo": moved}, "lm_dpo").algo_config
    assert (section.model.n_embd, section.optimizer.learning_rate, section.optimizer.eps) == (32, 3e-4, 1e-8)


@pytest.mark.parametrize(
    ("algo", "sets", "env", "message"),
    [
        ("lm_ppo", ["optimizer.anneal_lr=true"], None, "lm_ppo.optimizer.anneal_lr must be false"),
        ("lm_sft", ["n_embd=30"], None, r"lm_sft.model.n_head must be a divisor of n_embd \(30\); got 4"),
        ("lm_rm", [], "CartPole-v1", "it takes no --env"),
        ("lm_sft", ["guard.kl_warning=0.1"], None, "unknown section 'guard' in --set"),
    ],
)
def test_bad_lm_input_is_one_line_naming_the_field(algo, sets, env, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(algo, env, sets=sets)


def test_a_saved_lm_config_naming_another_task_is_refused():
    with pytest.raises(ConfigError, match="env.id of a language-model run is its task"):
        config_from_dict({"algo": "lm_sft", "env": {"id": "CartPole-v1"}}, "lm_sft")


@pytest.mark.parametrize("command", [["resume"], ["lm", "resume"]])
def test_pgrad_resume_continues_a_language_model_run(tmp_path, command):
    """'pgrad resume' takes any run folder (it said "unknown algorithm 'lm_ppo'" before); 'lm resume' is its alias."""
    pytest.importorskip("transformers")
    from pgrad.cli import main
    from pgrad.monitor.sinks import read_jsonl

    run = tmp_path / "sft"
    sets = ["--set", "eval_every=64", "--set", "eval_prompts=4", "--set", "demonstrations=64", "--set", "n_embd=16"]
    assert main(["lm", "sft", "--total-steps", "64", "--run-dir", str(run), "--quiet", *sets]) == 0
    assert main([*command, str(run), "--total-steps", "128", "--quiet"]) == 0
    rows = read_jsonl(run / "metrics.jsonl")
    assert [row["step"] for row in rows] == [0, 64, 128]  # row 0: the starting model; a batch is 64
    kinds = [event["kind"] for event in read_jsonl(run / "events.jsonl")]
    assert kinds.count("run.started") == 1 and "run.resumed" in kinds and kinds[-1] == "run.finished"
