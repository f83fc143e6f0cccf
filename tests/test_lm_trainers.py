"""The TRL-style Python API of language models (issue 23, part 6: pgrad.lm.trainers, pgrad.lm.trl_compat):
each trainer trains from a model folder and a file or rows in memory; the API and the CLI give the same weights;
a callable reward gets the extra columns; callbacks log and stop; save_model loads in transformers; every TRL
argument pgrad lacks is refused in one line; the docs' table is the code's."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

from lm_fixtures import tiny_model_folder, write_jsonl  # noqa: E402
from pgrad.callbacks import BaseCallback  # noqa: E402
from pgrad.checkpoint import read_train_state  # noqa: E402
from pgrad.cli import main  # noqa: E402
from pgrad.errors import ConfigError  # noqa: E402
from pgrad.lm import (  # noqa: E402
    DPOConfig,
    DPOTrainer,
    GRPOConfig,
    GRPOTrainer,
    PPOConfig,
    PPOTrainer,
    RewardConfig,
    RewardTrainer,
    RLOOConfig,
    RLOOTrainer,
    SFTConfig,
    SFTTrainer,
)
from pgrad.lm.config import LMPPOConfig  # noqa: E402
from pgrad.lm.trl_compat import CONFIG_NAMES, TRAINERS, TRL_ARGUMENTS, markdown_table  # noqa: E402
from pgrad.runs import load_run_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [{"prompt": f"what is {i} plus one?", "answer": str(i + 1)} for i in range(8)]
DEMOS = [{"prompt": f"what is {i} plus one?", "completion": f" the answer is {i + 1}"} for i in range(8)]
PAIRS = [{"prompt": f"what is {i} plus one?", "chosen": f" {i + 1}", "rejected": " fox"} for i in range(8)]
# two GRPO updates of 4 responses (2 prompts x 2), one epoch, evaluation at the end on 4 held-out prompts
GRPO_TINY = {
    "num_generations": 2,
    "per_device_train_batch_size": 4,
    "num_iterations": 1,
    "max_steps": 2,
    "max_completion_length": 4,
    "learning_rate": 1e-3,
    "seed": 3,
    "eval_prompts": 4,
    "eval_every": 8,
}


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_folder(tmp_path_factory.mktemp("models") / "gpt2", "gpt2")


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    state = read_train_state(checkpoint)
    return {f"{m}.{k}": v for m, tensors in state.modules.items() for k, v in tensors.items()}


def test_trl_arguments_map_onto_pgrad_fields_by_value(gpt2, tmp_path):
    """GRPO: responses per update = per_device x accumulation, one optimizer step each (minibatch = batch), so
    max_steps 6 at num_iterations 1 is 6 updates of 8 = 48 responses; TRL's loss names map; PPO: batch = per_device
    x accumulation x num_mini_batches, and max_steps counts num_epochs x num_mini_batches steps per update."""
    args = GRPOConfig(
        per_device_train_batch_size=4, gradient_accumulation_steps=2, num_generations=4, num_iterations=1,
        max_steps=6, beta=0.04, loss_type="dr_grpo", scale_rewards=False, epsilon=0.1, learning_rate=2e-5, seed=7,
        save_steps=3, report_to="none",
    )  # fmt: skip
    trainer = GRPOTrainer(model=gpt2, reward_funcs="verifier:exact_answer", args=args, train_dataset=PROMPTS,
                          run_dir=tmp_path / "g")  # fmt: skip
    ppo, run = trainer.args, trainer.config.run
    assert (ppo.advantage, ppo.batch_size, ppo.minibatch_size, ppo.samples_per_prompt, ppo.num_epochs) == (
        "grpo", 8, 8, 4, 1,
    )  # fmt: skip
    assert (run.total_steps, run.checkpoint_every, run.seed, run.tensorboard) == (48, 24, 7, False)
    assert (ppo.kl_coef, ppo.loss_type, ppo.clip_eps, ppo.optimizer.learning_rate) == (0.04, "dr_grpo", 0.1, 2e-5)
    args = PPOConfig(per_device_train_batch_size=2, num_mini_batches=2, num_ppo_epochs=2, max_steps=5, lam=0.9)
    ppo_trainer = PPOTrainer(model=gpt2, reward_funcs="verifier:exact_answer", args=args, train_dataset=PROMPTS,
                             run_dir=tmp_path / "p")  # fmt: skip
    section = ppo_trainer.args
    assert (section.advantage, section.batch_size, section.minibatch_size, section.num_epochs) == ("gae", 4, 2, 2)
    assert (ppo_trainer.config.run.total_steps, section.gae_lambda) == (8, 0.9)  # ceil(5 / (2 x 2)) = 2 updates x 4
    sft = SFTTrainer(model=gpt2, args=SFTConfig(per_device_train_batch_size=3, max_steps=4), train_dataset=DEMOS,
                     run_dir=tmp_path / "s")  # fmt: skip
    assert (sft.args.batch_size, sft.config.run.total_steps) == (3, 12)  # one optimizer step per batch of rows


def test_num_train_epochs_counts_the_training_rows_in_whole_updates(gpt2, tmp_path):
    """8 rows, 1 held out by eval_fraction 0.1: 7 train. SFT, 2 epochs at batch 4: ceil(14 / 4) = 4 updates = 16
    demonstrations; GRPO, 1 epoch of 7 prompts x 2 generations at batch 4: 16 responses; with an eval_dataset all
    8 rows train (3 epochs: 48); max_steps wins over num_train_epochs, as in TRL."""
    sft = SFTTrainer(model=gpt2, args=SFTConfig(per_device_train_batch_size=4, num_train_epochs=2),
                     train_dataset=DEMOS, run_dir=tmp_path / "s")  # fmt: skip
    assert sft.config.run.total_steps == 16
    args = {**GRPO_TINY, "num_train_epochs": 1}
    del args["max_steps"]
    grpo = GRPOTrainer(model=gpt2, reward_funcs="verifier:exact_answer", args=GRPOConfig(**args),
                       train_dataset=PROMPTS, run_dir=tmp_path / "g")  # fmt: skip
    assert grpo.config.run.total_steps == 16
    three = GRPOConfig(**{**args, "num_train_epochs": 3})
    grpo = GRPOTrainer(model=gpt2, reward_funcs="verifier:exact_answer", args=three, train_dataset=PROMPTS,
                       eval_dataset=PROMPTS[:2], run_dir=tmp_path / "h")  # fmt: skip
    assert grpo.config.run.total_steps == 48
    both = SFTTrainer(model=gpt2, args=SFTConfig(per_device_train_batch_size=4, num_train_epochs=2, max_steps=1),
                      train_dataset=DEMOS, run_dir=tmp_path / "b")  # fmt: skip
    assert both.config.run.total_steps == 4
    with pytest.raises(ConfigError, match="num_train_epochs must be a positive number"):
        SFTTrainer(model=gpt2, args=SFTConfig(num_train_epochs=0), train_dataset=DEMOS, run_dir=tmp_path / "z")


def test_grpo_from_the_api_and_from_the_cli_gives_the_same_weights(gpt2, tmp_path):
    """The same settings through GRPOTrainer and 'pgrad lm grpo --set ...' give the same config and, bit for bit,
    the same final weights and metrics (timings aside)."""
    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    trainer = GRPOTrainer(model=gpt2, reward_funcs="verifier:exact_answer", args=GRPOConfig(**GRPO_TINY),
                          train_dataset=data, run_dir=tmp_path / "api")  # fmt: skip
    out = trainer.train()
    sets = ["samples_per_prompt=2", "batch_size=4", "minibatch_size=4", "num_epochs=1", "max_new_tokens=4",
            "optimizer.learning_rate=0.001", "eval_prompts=4", "eval_every=8", f"model={gpt2}", f"dataset={data}",
            "reward=verifier:exact_answer"]  # fmt: skip
    argv = ["lm", "grpo", "--seed", "3", "--total-steps", "8", "--run-dir", str(tmp_path / "cli"), "--quiet"]
    assert main(argv + [item for value in sets for item in ("--set", value)]) == 0
    assert (out.steps, out.global_step) == (8, 2)
    assert trainer.config.to_dict() == load_run_config(tmp_path / "cli").to_dict()
    api_rows, cli_rows = rows(tmp_path / "api"), rows(tmp_path / "cli")
    assert len(api_rows) == len(cli_rows) == 3  # the start's evaluation and two updates
    for api_row, cli_row in zip(api_rows, cli_rows, strict=True):
        assert {k: v for k, v in api_row.items() if not k.startswith(("perf/", "time/"))} == {
            k: v for k, v in cli_row.items() if not k.startswith(("perf/", "time/"))
        }
    api_weights = weights(out.checkpoint)
    cli_weights = weights(tmp_path / "cli" / "checkpoints" / out.checkpoint.name)
    assert api_weights.keys() == cli_weights.keys()
    assert all(torch.equal(api_weights[key], cli_weights[key]) for key in api_weights)
    assert out.metrics["eval/rm_score"] == api_rows[-1]["eval/rm_score"]


def test_a_callable_reward_gets_the_extra_columns_and_is_logged_by_its_name(gpt2, tmp_path):
    """TRL's signature f(prompts, completions, **columns): the 'answer' column arrives row by row with its prompt;
    no trust flag (the object was passed); weights from reward_weights; each term logged as reward/<name>."""
    calls = []

    def answer_length(prompts, completions, answer, **rest):
        calls.append((list(prompts), list(answer), sorted(rest)))
        return [float(len(a)) for a in answer]

    args = GRPOConfig(**GRPO_TINY, reward_weights=[2.0, 1.0])
    trainer = GRPOTrainer(model=gpt2, reward_funcs=[answer_length, "verifier:exact_answer"], args=args,
                          train_dataset=PROMPTS, eval_dataset=PROMPTS[:2], run_dir=tmp_path / "r")  # fmt: skip
    out = trainer.train()
    for prompts, answers, rest in calls:
        assert rest == []  # only the data set's columns: prompt (positional) and answer
        assert answers == [str(int(p.split()[2]) + 1) for p in prompts]
    update = rows(tmp_path / "r")[1]
    lengths = [len(a) for _, answers, _ in calls[1:2] for a in answers]  # the first update's batch (after eval)
    assert update["reward/answer_length"] == pytest.approx(sum(lengths) / len(lengths))
    assert update["lm/rm_score"] == pytest.approx(2 * update["reward/answer_length"] + update["reward/exact_answer"])
    assert (tmp_path / "r.data" / "train.jsonl").read_text().splitlines()[0] == json.dumps(PROMPTS[0])
    assert trainer.evaluate()["eval/rm_score"] == pytest.approx(out.metrics["eval/rm_score"])  # same prompts, noise


def test_a_module_function_named_as_text_needs_trust(gpt2, tmp_path):
    """A 'module:function' given as text is imported: refused without trust_reward_code=True, before anything runs;
    the rows in memory it had written are removed again."""
    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    with pytest.raises(ConfigError, match=r"pass trust_reward_code=True$") as caught:
        GRPOTrainer(model=gpt2, reward_funcs="os.path:getsize", args=GRPOConfig(**GRPO_TINY), train_dataset=data,
                    run_dir=tmp_path / "t")  # fmt: skip
    assert "\n" not in str(caught.value) and not (tmp_path / "t").exists()
    with pytest.raises(ConfigError, match=r"pass trust_reward_code=True$"):
        GRPOTrainer(model=gpt2, reward_funcs="os.path:getsize", args=GRPOConfig(**GRPO_TINY), train_dataset=PROMPTS,
                    run_dir=tmp_path / "t")  # fmt: skip
    assert not (tmp_path / "t.data").exists()


class StepRecorder(BaseCallback):
    """Records each row's step as a custom scalar and stops once ``stop_at`` rows were trained."""

    def __init__(self, stop_at: int) -> None:
        super().__init__()
        self.stop_at, self.bound, self.ended, self.evaluated = stop_at, None, False, []

    def _on_training_start(self) -> None:
        self.bound = self.model

    def on_update(self, metrics):
        self.logger.record("custom/seen_step", metrics["step"])
        return metrics["step"] < self.stop_at

    def on_evaluation(self, metrics):
        self.evaluated.append(metrics["step"])

    def _on_training_end(self) -> None:
        self.ended = True


def test_a_callback_logs_a_scalar_into_metrics_and_stops_at_its_step(gpt2, tmp_path):
    """SFT of 4 demonstrations per row to 16: the callback sees the trainer, records each row's step in that row
    of metrics.jsonl, and returning False at step 8 ends the run there, its final checkpoint written; train again
    with resume_from_checkpoint continues to the end."""
    callback = StepRecorder(stop_at=8)
    args = SFTConfig(per_device_train_batch_size=4, max_steps=4, eval_every=4, eval_prompts=2, seed=1)
    trainer = SFTTrainer(model=gpt2, args=args, train_dataset=DEMOS, callbacks=[callback], run_dir=tmp_path / "s")
    out = trainer.train()
    assert callback.bound is trainer and callback.ended
    assert (out.steps, out.stopped) == (8, True)
    logged = rows(tmp_path / "s")
    assert [row["step"] for row in logged] == [0, 4, 8]
    assert all(row["custom/seen_step"] == row["step"] for row in logged)
    assert callback.evaluated == [0, 4, 8]  # every SFT row holds its held-out evaluation (eval/sft_nll)
    events = [json.loads(line) for line in (tmp_path / "s" / "events.jsonl").read_text().splitlines()]
    stops = [event for event in events if event["kind"] == "run.stopped_by_callback"]
    assert len(stops) == 1 and stops[0]["step"] == 8 and "on_update" in stops[0]["message"]
    callback.stop_at = 100
    assert trainer.train(resume_from_checkpoint=True).steps == 16


def test_save_model_round_trips_through_transformers(gpt2, tmp_path):
    """save_model writes the latest checkpoint's policy: transformers loads it and its weights are the run's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trainer = SFTTrainer(model=gpt2, args=SFTConfig(per_device_train_batch_size=4, max_steps=1, eval_every=4,
                         eval_prompts=2), train_dataset=DEMOS, run_dir=tmp_path / "s")  # fmt: skip
    out = trainer.train()
    folder = trainer.save_model(tmp_path / "export")
    model = AutoModelForCausalLM.from_pretrained(folder)
    trained = {k.removeprefix("lm."): v for k, v in weights(out.checkpoint).items() if k.startswith("lm.")}
    loaded = model.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in trained.items() if key in loaded)
    assert torch.equal(loaded["transformer.wte.weight"], trained["transformer.wte.weight"])
    ids = AutoTokenizer.from_pretrained(folder)("what is one plus one?", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] <= ids.shape[1] + 3


def test_dpo_and_reward_trainers_train_on_rows_in_memory(gpt2, tmp_path):
    """DPO and a reward model from a list of (prompt, chosen, rejected) rows; the reward model's run folder is a
    reward_funcs item of GRPO; evaluate() of the reward model is its last held-out row."""
    dpo = DPOTrainer(model=gpt2, args=DPOConfig(per_device_train_batch_size=2, max_steps=2, beta=0.2,
                     max_completion_length=4, eval_every=4, eval_prompts=2), train_dataset=PAIRS,
                     run_dir=tmp_path / "dpo")  # fmt: skip
    assert dpo.args.beta == 0.2 and dpo.train().steps == 4
    rm = RewardTrainer(model=gpt2, train_dataset=PAIRS, run_dir=tmp_path / "rm",
                       sets=["batch_size=2", "eval_every=4", "max_new_tokens=4", "run.total_steps=4"])  # fmt: skip
    out = rm.train()
    assert rm.evaluate() == {k: v for k, v in out.metrics.items() if k.startswith("eval/")}
    grpo = GRPOTrainer(model=gpt2, reward_funcs=[tmp_path / "rm"], args=GRPOConfig(**GRPO_TINY),
                       train_dataset=PROMPTS, run_dir=tmp_path / "g")  # fmt: skip
    assert (grpo.args.reward, grpo.args.reward_model) == ("model", str(tmp_path / "rm"))
    with pytest.raises(ConfigError, match="reward_model='"):
        rm.save_model(tmp_path / "x")


def test_pgrads_own_section_is_accepted_and_its_advantage_must_be_the_trainers(gpt2, tmp_path):
    section = LMPPOConfig(advantage="rloo", model=str(gpt2), dataset="unused.jsonl", reward="verifier:exact_answer")
    trainer = RLOOTrainer(args=section, train_dataset=PROMPTS, run_dir=tmp_path / "r")
    assert (trainer.args.advantage, trainer.args.samples_per_prompt) == ("rloo", 8)
    with pytest.raises(ConfigError, match=r"GRPOTrainer trains advantage 'grpo'"):
        GRPOTrainer(args=section, train_dataset=PROMPTS, run_dir=tmp_path / "g")
    with pytest.raises(ConfigError, match="pass a GRPOConfig"):
        GRPOTrainer(model=gpt2, args=RLOOConfig(), train_dataset=PROMPTS)
    with pytest.raises(ConfigError, match="SFTTrainer takes no reward_funcs"):
        SFTTrainer(model=gpt2, reward_funcs="verifier:exact_answer", train_dataset=DEMOS)
    with pytest.raises(ConfigError, match="model must be a model folder's path"):
        SFTTrainer(model=object(), train_dataset=DEMOS)


def test_ppo_with_a_reward_model_folder_and_rloo_from_pgrads_section_train(gpt2, tmp_path):
    """PPOTrainer (value head, GAE) scored by a sequence-classification folder given as reward_model, and
    RLOOTrainer from pgrad's own LMPPOConfig, each one update of 4 responses; the first minibatch's ratio is 1."""
    rm = tiny_model_folder(tmp_path / "rm", "gpt2", head="sequence-classification")
    args = PPOConfig(per_device_train_batch_size=2, num_mini_batches=2, num_ppo_epochs=1, max_steps=2,
                     response_length=4, eval_every=0)  # fmt: skip
    ppo = PPOTrainer(model=gpt2, reward_model=rm, args=args, train_dataset=PROMPTS, run_dir=tmp_path / "p")
    out = ppo.train()
    assert (ppo.args.reward, ppo.args.reward_model, out.steps) == ("model", str(rm), 4)
    assert out.metrics["lm/first_ratio_deviation"] == 0.0 and out.metrics["train/value_loss"] > 0
    section = LMPPOConfig(advantage="rloo", batch_size=4, minibatch_size=4, samples_per_prompt=2, num_epochs=1,
                          max_new_tokens=4, eval_every=0, reward="verifier:exact_answer")  # fmt: skip
    rloo = RLOOTrainer(model=gpt2, args=section, train_dataset=PROMPTS, sets=["run.total_steps=4"],
                       run_dir=tmp_path / "r")  # fmt: skip
    out = rloo.train()
    assert (out.steps, out.global_step, out.metrics["lm/first_ratio_deviation"]) == (4, 1, 0.0)


REFUSED = [(name, entry) for name, entry in TRL_ARGUMENTS.items() if entry.convert is None]


@pytest.mark.parametrize(("name", "entry"), REFUSED, ids=[name for name, _ in REFUSED])
def test_every_trl_argument_pgrad_lacks_is_refused_in_one_line(name, entry):
    """A value other than the accepted ones (pgrad does the same there) is one ConfigError line naming the
    argument and the pgrad way; an accepted value builds the config."""
    config_class = {"grpo": GRPOConfig, "rloo": RLOOConfig, "ppo": PPOConfig, "dpo": DPOConfig, "sft": SFTConfig}
    cls = {**config_class, "reward": RewardConfig}[entry.trainers[0]]
    with pytest.raises(ConfigError) as caught:
        cls(**{name: "no-such-value"})
    message = str(caught.value)
    assert "\n" not in message and name in message and "not offered" in message
    for value in entry.allowed:
        assert cls(**{name: value}).layer is not None


def test_unknown_and_other_trainers_arguments_are_one_line():
    with pytest.raises(ConfigError, match=r"'num_generatons' is not an argument .* did you mean 'num_generations'"):
        GRPOConfig(num_generatons=4)
    with pytest.raises(ConfigError, match=r"DPOConfig: 'num_generations' is an argument of TRL's grpo, rloo"):
        DPOConfig(num_generations=4)
    assert GRPOConfig(learning_rate=0.5).learning_rate == 0.5
    with pytest.raises(AttributeError, match="was not given 'beta'"):
        getattr(GRPOConfig(), "beta")  # noqa: B009
    with pytest.raises(ConfigError, match="scale_rewards=False: .* only with loss_type='dr_grpo'"):
        GRPOConfig(scale_rewards=False)
    with pytest.raises(ConfigError, match="loss_type='ipo' is not offered by pgrad's DPO"):
        DPOConfig(loss_type="ipo")
    with pytest.raises(ConfigError, match="max_steps must be a positive int"):
        GRPOTrainer(args=GRPOConfig(max_steps=0))


def test_a_field_error_names_the_trl_argument_that_set_it(gpt2, tmp_path):
    """The section's own check says what is wrong in pgrad's words, and which TRL argument put the value there."""
    args = GRPOConfig(num_generations=3, per_device_train_batch_size=4)
    with pytest.raises(ConfigError, match=r"^lm_ppo.samples_per_prompt .*\(from TRL's num_generations=3\)$"):
        GRPOTrainer(model=gpt2, reward_funcs="verifier:exact_answer", args=args, train_dataset=PROMPTS,
                    run_dir=tmp_path / "g")  # fmt: skip
    assert TRL_ARGUMENTS["beta"].apply("beta", 0.3, "lm_dpo") == {"lm_dpo.beta": 0.3}
    with pytest.raises(ConfigError, match=r"^lm_dpo.beta .*\(from TRL's beta=-1\)$"):
        DPOTrainer(model=gpt2, args=DPOConfig(beta=-1), train_dataset=PAIRS, run_dir=tmp_path / "d")


def test_every_trainer_has_its_config_and_section():
    assert set(CONFIG_NAMES) == set(TRAINERS)
    assert all(name in TRL_ARGUMENTS for name in ("learning_rate", "num_generations", "beta", "max_steps"))


def test_the_docs_table_is_the_codes_table():
    page = (ROOT / "docs" / "lm-python-api.md").read_text()
    start, end = "<!-- trl-table: start -->\n", "<!-- trl-table: end -->"
    assert page.split(start, 1)[1].split(end, 1)[0] == markdown_table()


def test_importing_pgrad_lm_loads_no_torch():
    code = "import sys, pgrad, pgrad.lm; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": str(ROOT / "src")})


def test_a_datasets_dataset_and_a_peft_config_are_read_without_training(gpt2, tmp_path):
    """A datasets.Dataset is written row for row to RUN_DIR.data/train.jsonl; a peft LoraConfig gives lora_rank and
    lora_alpha; rows that are not JSON data are one line naming the row."""
    datasets = pytest.importorskip("datasets")
    peft = pytest.importorskip("peft")
    lora = peft.LoraConfig(r=2, lora_alpha=8)
    data = datasets.Dataset.from_list(PROMPTS)
    trainer = GRPOTrainer(model=gpt2, reward_funcs="verifier:exact_answer", args=GRPOConfig(**GRPO_TINY),
                          train_dataset=data, peft_config=lora, run_dir=tmp_path / "d")  # fmt: skip
    written = [json.loads(line) for line in (tmp_path / "d.data" / "train.jsonl").read_text().splitlines()]
    assert written == PROMPTS and trainer.args.dataset == str(tmp_path / "d.data" / "train.jsonl")
    assert (trainer.args.lora_rank, trainer.args.lora_alpha) == (2, 8)
    with pytest.raises(ConfigError, match=r"train_dataset\[1\] is not plain JSON data"):
        GRPOTrainer(model=gpt2, reward_funcs="verifier:exact_answer", train_dataset=[PROMPTS[0], {"prompt": object()}],
                    run_dir=tmp_path / "e")  # fmt: skip


def test_trl_precision_flags_map_onto_the_model_section(gpt2, tmp_path):
    """bf16 and gradient_checkpointing land in the section's model (pgrad.lm.precision); fp16 off CUDA is refused
    in one line when the run starts, as from the CLI, before its folder is made."""
    args = SFTConfig(bf16=True, gradient_checkpointing=True, max_steps=2)
    sft = SFTTrainer(model=gpt2, args=args, train_dataset=DEMOS, run_dir=tmp_path / "s")
    assert (sft.args.model.precision, sft.args.model.gradient_checkpointing) == ("bf16", True)
    trainer = SFTTrainer(
        model=gpt2, args=SFTConfig(fp16=True, max_steps=2), train_dataset=DEMOS, run_dir=tmp_path / "f"
    )
    assert trainer.args.model.precision == "fp16"
    with pytest.raises(ConfigError, match=r"fp16 needs run.device cuda"):
        trainer.train()
    assert not (tmp_path / "f").exists()


@pytest.mark.parametrize("planted", ["file_link", "folder_link", "hard_link"])
def test_rows_in_memory_are_not_written_through_a_planted_link(tmp_path, planted):
    """The data folder beside the run folder may come from elsewhere: a symbolic link at the file or at the folder,
    or a file with a second hard link, is refused in one line and the file it points at is left as it was."""
    from pgrad.lm.trainers import write_rows

    victim = tmp_path / "elsewhere" / "train.jsonl"
    victim.parent.mkdir()
    victim.write_text("precious\n")
    data = tmp_path / "r.data"
    if planted == "folder_link":
        data.symlink_to(victim.parent, target_is_directory=True)
    else:
        data.mkdir()
        link = data / "train.jsonl"
        link.symlink_to(victim) if planted == "file_link" else os.link(victim, link)
    with pytest.raises(ConfigError) as caught:
        write_rows(PROMPTS, data / "train.jsonl", "train_dataset", overwrite=True)
    assert "\n" not in str(caught.value) and ("link" in str(caught.value))
    assert victim.read_text() == "precious\n"
