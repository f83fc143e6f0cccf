"""pgrad lm export: a run's policy as a model folder that transformers loads and generates from, with pgrad's
logits (LoRA merged), and the refusals of --out."""

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

from lm_fixtures import tiny_model_folder, write_jsonl  # noqa: E402
from pgrad.cli import main  # noqa: E402
from pgrad.lm.model import position_ids  # noqa: E402

QUIET = ["--quiet", "--set", "run.progress=false", "--set", "run.tensorboard=false"]


def load_exported(folder: Path) -> tuple[object, object]:
    """The exported folder through transformers alone: (model, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=False, use_safetensors=True)
    return model.eval(), AutoTokenizer.from_pretrained(folder)


def logits(model: object, ids: torch.Tensor) -> torch.Tensor:
    """Logits of one unpadded row, with pgrad's position ids."""
    mask = torch.ones_like(ids)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits  # type: ignore[operator]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A LoRA PPO run on a tiny Llama folder (one update, so the adapter's B is no longer 0) and its runner."""
    from pgrad.runners.lm_ppo import LMPPORunner
    from pgrad.runs import resolve_config

    root = tmp_path_factory.mktemp("export")
    model = tiny_model_folder(root / "llama", "llama")
    rm = tiny_model_folder(root / "rm", "llama", head="sequence-classification")
    prompts = write_jsonl(root / "p.jsonl", [{"prompt": f"what is {i} plus one?"} for i in range(6)])
    sets = [f"model={model}", f"dataset={prompts}", "reward=model", f"reward_model={rm}", "lora_rank=2",
            "lora_alpha=8", "batch_size=4", "minibatch_size=2", "num_epochs=1", "eval_every=0",
            "optimizer.learning_rate=0.05", "run.progress=false", "run.tensorboard=false"]  # fmt: skip
    config, _ = resolve_config("lm_ppo", sets=sets, total_steps=4)
    runner = LMPPORunner(config, root / "run", console=False)
    runner.train()
    return root / "run", runner


def test_lora_export_round_trips_through_transformers(lora_run, tmp_path, capsys):
    """The exported folder (LoRA merged) loads with AutoModelForCausalLM and AutoTokenizer; its logits on a prompt
    are the trained policy's (adapter on), not the base model's; generate runs; the marker names the run."""
    run, runner = lora_run
    out = tmp_path / "export"
    assert main(["lm", "export", str(run), "--out", str(out), "--checkpoint", "latest"]) == 0
    assert f"exported step_0000000004 (step 4) of {run}: {out}" in capsys.readouterr().out
    assert {"config.json", "model.safetensors", "tokenizer.json", "pgrad_export.json"} <= {
        p.name for p in out.iterdir()
    }
    assert not any(p.name.endswith((".bin", ".pt")) or "adapter" in p.name for p in out.iterdir())
    model, tokenizer = load_exported(out)
    ids = tokenizer("what is one plus one?", return_tensors="pt")["input_ids"]
    ours = logits(runner.policy.lm, ids)
    torch.testing.assert_close(logits(model, ids), ours, atol=1e-5, rtol=1e-5)
    base = logits(runner.reference, ids)  # the adapter switched off: the folder's weights
    assert (ours - base).abs().max() > 1e-4  # the adapter learned something, so the comparison can fail
    generated = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert generated.shape[1] > ids.shape[1]
    marker = json.loads((out / "pgrad_export.json").read_text())
    assert marker["algo"] == "lm_ppo" and marker["step"] == 4 and marker["run"] == str(run.resolve())


def test_out_refusals_and_replacing_a_previous_export(lora_run, tmp_path, capsys):
    """A non-empty folder that is no export is refused in one line (and untouched); a previous export is replaced;
    a reward-model run has no policy to export."""
    run, _ = lora_run
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    assert main(["lm", "export", str(run), "--out", str(taken), "--checkpoint", "latest"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"pgrad: error: --out {taken} exists and is not empty, and it is not a previous 'pgrad lm export' "
        "(no pgrad_export.json); give a new folder"
    )
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    assert main(["lm", "export", str(run), "--out", str(tmp_path / "file")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    out = tmp_path / "again"
    assert main(["lm", "export", str(run), "--out", str(out), "--checkpoint", "latest"]) == 0
    (out / "stale.txt").write_text("from before")
    assert main(["lm", "export", str(run), "--out", str(out), "--checkpoint", "latest"]) == 0
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left


def test_builtin_gpt2_export_with_its_digits_tokenizer(tmp_path, capsys):
    """An SFT run of the built-in GPT-2 on the digits task: exported with its vocabulary as a tokenizer that
    encodes a prompt to pgrad's own ids, and logits equal to the checkpoint's model."""
    from pgrad.lm.task import CharTokenizer
    from pgrad.runners.lm_sft import SFTRunner
    from pgrad.runs import resolve_config

    sets = ["demonstrations=64", "heldout_demonstrations=16", "eval_prompts=8", "batch_size=16", "eval_every=32",
            "model.n_embd=16", "model.n_head=2", "run.progress=false", "run.tensorboard=false"]  # fmt: skip
    config, _ = resolve_config("lm_sft", sets=sets, total_steps=32)
    runner = SFTRunner(config, tmp_path / "sft", console=False)
    runner.train()
    assert main(["lm", "export", str(tmp_path / "sft"), "--out", str(tmp_path / "out"), "--checkpoint", "latest"]) == 0
    model, tokenizer = load_exported(tmp_path / "out")
    ids = tokenizer("<bos>123:", return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == CharTokenizer().encode("<bos>123:")
    torch.testing.assert_close(logits(model, ids), logits(runner.lm, ids), atol=1e-5, rtol=1e-5)
    assert tokenizer.decode([2, 3, 12]) == "01:"
    assert main(["lm", "export", str(tmp_path / "missing"), "--out", str(tmp_path / "o2")]) == 2
    capsys.readouterr()
