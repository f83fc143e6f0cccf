"""Devices and precision of the language-model runs (issue 23, part 7), tested on the CPU (CI has no GPU): a fp32 CPU
run is bit-identical to one from before ``model.precision`` existed; bf16 runs on the CPU under bfloat16 autocast
with float32 weights and checkpoints; fp16 off CUDA and ``run.device=cuda`` without CUDA are refused with one line
before the run folder exists; every module the prologues build lands on the device asked (``meta``), as do the
buffers the rollout math allocates; gradient checkpointing recomputes and changes no gradient; the fp16 loss
scaler's skipped steps are the guard's non-finite steps. ``benchmarks/gpu_lm_check.sh`` runs the CUDA side."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")  # the lm extra

from pgrad import cli  # noqa: E402
from pgrad import metric_names as names  # noqa: E402
from pgrad.algos.common import optimizer_step  # noqa: E402
from pgrad.checkpoint import read_train_state  # noqa: E402
from pgrad.errors import ConfigError  # noqa: E402
from pgrad.lm import precision  # noqa: E402
from pgrad.lm.losses import group_token_advantages, kl_k1, token_gae, token_rewards  # noqa: E402
from pgrad.lm.precision import DeviceSetup, devices_of  # noqa: E402
from pgrad.numerics import clipped_surrogate, masked_whiten, value_loss  # noqa: E402
from pgrad.runners.lm_dpo import DPORunner  # noqa: E402
from pgrad.runners.lm_ppo import LMPPORunner  # noqa: E402
from pgrad.runners.lm_rm import RewardModelRunner  # noqa: E402
from pgrad.runners.lm_sft import SFTRunner  # noqa: E402
from pgrad.runs import resolve_config  # noqa: E402

MODEL = ["model.n_layer=1", "model.n_embd=16", "checkpoint_every=100000", "max_new_tokens=4"]
PPO = [*MODEL, "batch_size=16", "minibatch_size=8", "eval_every=0"]
CASES = {  # a few gradient steps of each command, a second or less each on 2 cores
    "lm_ppo": (LMPPORunner, PPO),
    "lm_ppo_grpo": (LMPPORunner, [*PPO, "advantage=grpo", "samples_per_prompt=4"]),
    "lm_sft": (SFTRunner, [*MODEL, "batch_size=8", "demonstrations=32", "heldout_demonstrations=8", "eval_prompts=4"]),
    "lm_rm": (RewardModelRunner, ["checkpoint_every=100000", "max_new_tokens=4", "batch_size=8", "train_pairs=32"]),
    "lm_dpo": (DPORunner, [*MODEL, "batch_size=8", "train_pairs=32", "heldout_pairs=8", "eval_prompts=4"]),
}
ROWS = {"lm_ppo": [], "lm_ppo_grpo": [], "lm_sft": ["eval_every=16"], "lm_rm": ["eval_every=16", "heldout_pairs=8"]}
ROWS["lm_dpo"] = ["eval_every=16"]
# sha256 (first 16 hex digits) of the final checkpoint's weights of each case, recorded on main at 8e07d4e, before
# the precision fields and DeviceSetup existed (torch 2.13 CPU, x86-64): the fp32 path must change no bit
BEFORE = {
    "lm_ppo": "dcece67e1eb37108",
    "lm_ppo_grpo": "0637ec52385623d7",
    "lm_sft": "6cc37f9b38d378ea",
    "lm_rm": "30f30a9a4e4e8307",
    "lm_dpo": "7e843a2ddb3870e3",
}
META = torch.device("meta")


def config(case: str, *sets: str, total: int = 32):
    algo = case.removesuffix("_grpo")
    return resolve_config(algo, None, None, [*CASES[case][1], *ROWS[case], *sets], seed=3, total_steps=total)[0]


def weights_digest(run_dir: Path) -> str:
    state = read_train_state(sorted((run_dir / "checkpoints").glob("step_*"))[-1])
    digest = hashlib.sha256()
    for name in sorted(state.modules):
        for key in sorted(state.modules[name]):
            digest.update(key.encode())
            digest.update(state.modules[name][key].float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.skipif(not torch.__version__.startswith("2.13"), reason="the digests were recorded with torch 2.13")
@pytest.mark.parametrize("case", list(CASES))
def test_a_cpu_fp32_run_is_bit_identical_to_before_the_precision_fields(tmp_path, case):
    runner_cls = CASES[case][0]
    runner_cls(config(case), tmp_path / "absent", console=False).train()
    assert weights_digest(tmp_path / "absent") == BEFORE[case]
    runner_cls(config(case, "model.precision=fp32"), tmp_path / "named", console=False).train()
    assert weights_digest(tmp_path / "named") == BEFORE[case]


def test_bf16_ppo_on_the_cpu_computes_in_bfloat16_and_keeps_float32_weights(tmp_path):
    runner = LMPPORunner(config("lm_ppo", "model.precision=bf16", "critic=separate"), tmp_path / "run", console=False)
    seen: dict[str, set[torch.dtype]] = {"logits": set(), "critic": set(), "values": set()}
    runner.policy.lm.lm_head.register_forward_hook(lambda m, i, out: seen["logits"].add(out.dtype))
    assert runner.policy.critic is not None
    runner.policy.critic.h[0].mlp.register_forward_hook(lambda m, i, out: seen["critic"].add(out.dtype))
    runner.policy.value_head.register_forward_hook(lambda m, i, out: seen["values"].add(out.dtype))
    runner.train()
    assert seen == {key: {torch.bfloat16} for key in seen}  # autocast was used in every forward pass
    for row in rows(tmp_path / "run")[-2:]:
        for key in ("train/policy_loss", "train/value_loss", "diagnostics/grad_norm", "lm/kl", "lm/rm_score"):
            assert torch.isfinite(torch.tensor(row[key])), key
    state = read_train_state(sorted((tmp_path / "run" / "checkpoints").glob("step_*"))[-1])
    tensors = [t for module in state.modules.values() for t in module.values() if t.is_floating_point()]
    assert {(t.dtype, t.device.type) for t in tensors} == {(torch.float32, "cpu")}  # resumes on any device
    assert all(p.dtype == torch.float32 for p in runner.policy.parameters())


@pytest.mark.parametrize(
    ("case", "loss", "model_of"),
    [
        ("lm_sft", "train/sft_nll", lambda r: r.lm),
        ("lm_rm", "train/rm_loss", lambda r: r.members[0].trunk),
        ("lm_dpo", "train/dpo_loss", lambda r: r.lm),
    ],
)
def test_bf16_row_trainers_on_the_cpu(tmp_path, case, loss, model_of):
    runner = CASES[case][0](config(case, "model.precision=bf16"), tmp_path / "run", console=False)
    seen: set[torch.dtype] = set()
    model = model_of(runner)
    block = model.transformer.h[0] if hasattr(model, "transformer") else model.h[0]
    block.mlp.register_forward_hook(lambda m, i, out: seen.add(out.dtype))
    runner.train()
    assert seen == {torch.bfloat16}
    last = rows(tmp_path / "run")[-1]
    assert torch.isfinite(torch.tensor(last[loss])) and last["step"] == 32


@pytest.mark.parametrize("case", ["lm_ppo", "lm_sft", "lm_rm", "lm_dpo"])
def test_fp16_off_cuda_is_refused_before_the_run_folder_exists(tmp_path, case):
    with pytest.raises(ConfigError, match=rf"^{case}.model.precision: fp16 needs run.device cuda .* use bf16 or fp32$"):
        CASES[case][0](config(case, "model.precision=fp16"), tmp_path / "run", console=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match=rf"^{case}.model.precision must be one of .*; got 'fp8'$"):
        config(case, "model.precision=fp8")


def test_bf16_on_a_card_without_bfloat16_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)  # a card before Ampere
    with pytest.raises(ConfigError, match=r"^lm_sft.model.precision: this CUDA card has no bfloat16 .*; use fp16 or"):
        precision.check_precision("bf16", torch.device("cuda"), "lm_sft.model.precision")
    precision.check_precision("fp16", torch.device("cuda"))  # fp16 is its way


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_run_device_cuda_without_cuda_is_one_line_and_nothing_is_written(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["lm", "ppo", "--run-dir", str(tmp_path / "run"), "--set", "run.device=cuda"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "pgrad: error: run.device must be 'cpu' here (torch.cuda.is_available() is false: no GPU or a CPU-only "
        "torch); got 'cuda'"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def on_meta(monkeypatch):
    """The runners' prologues with ``run.device`` replaced by the ``meta`` device (no data: placement only)."""
    real = DeviceSetup.of

    def of(config):
        return DeviceSetup(META, "fp32", False, real(config).field)

    monkeypatch.setattr(precision.DeviceSetup, "of", of)


def test_ppo_prologue_places_policy_critic_reference_and_reward_model_on_the_device(tmp_path, on_meta, monkeypatch):
    rm_dir = tmp_path / "rm"
    rm_sets = ["model.n_layer=1", "model.n_embd=16", "eval_every=16", "heldout_pairs=8"]
    with monkeypatch.context() as cpu:
        cpu.setattr(precision.DeviceSetup, "of", lambda c: DeviceSetup(torch.device("cpu")))
        rm_config = resolve_config("lm_rm", None, None, [*CASES["lm_rm"][1], *rm_sets], seed=3, total_steps=16)[0]
        RewardModelRunner(rm_config, rm_dir, console=False).train()
    sets = ["reward=model", f"reward_model={rm_dir}", "critic=separate", "init_value_from_rm=true"]
    runner = LMPPORunner(config("lm_ppo", *sets), tmp_path / "ppo", console=False)
    runner.close()
    assert runner.scorer.learned is not None and runner.policy.critic is not None
    modules = {**runner.modules(), "reward": runner.scorer.learned.members[0], "critic": runner.policy.critic}
    assert devices_of(modules) == {name: {"meta"} for name in ("policy", "reference", "reward", "critic")}
    assert runner.chunks(16)[0].device == META  # the minibatch indices of the rollout


@pytest.mark.parametrize("case", ["lm_sft", "lm_rm", "lm_dpo"])
def test_row_trainers_place_their_models_and_data_on_the_device(tmp_path, on_meta, case):
    runner = CASES[case][0](config(case), tmp_path / "run", console=False)
    runner.run.close()
    assert {device for devices in devices_of(runner.modules()).values() for device in devices} == {"meta"}
    if case == "lm_sft":  # the demonstrations move once, with the model
        demos = runner.train_demos
        assert {demos.prompts.ids.device, demos.response.device, demos.mask.device} == {META}


def test_the_rollout_buffers_are_allocated_on_the_device_of_their_inputs():
    # the per-token math of a rollout and an update (rewards, GAE, group advantages, whitening, losses) run on meta
    # tensors: every buffer it allocates follows its inputs (a CPU-allocated one would fail here, as on CUDA)
    logp, mask, score = torch.zeros(4, 3, device=META), torch.ones(4, 3, device=META), torch.zeros(4, device=META)
    rewards = token_rewards(score, logp, logp, mask, 0.1)
    outputs = [
        rewards,
        *token_gae(rewards, logp, mask, 1.0, 0.95),
        masked_whiten(logp, mask),
        group_token_advantages(score, logp, logp, mask, 0.1, 2, "grpo"),
        group_token_advantages(score, logp, logp, mask, 0.1, 2, "rloo"),
        kl_k1(logp, logp, mask),
        clipped_surrogate(logp, logp, logp, mask, 0.2).loss,
        value_loss(logp, logp, mask, old_values=logp, clip_vf=0.2),
    ]
    assert {out.device for out in outputs} == {META}


def test_gradient_checkpointing_recomputes_and_changes_no_weight(tmp_path):
    calls = {}
    for name, sets in (("plain", []), ("gc", ["model.gradient_checkpointing=true"])):
        runner = LMPPORunner(config("lm_ppo", *sets, total=16), tmp_path / name, console=False)
        calls[name] = 0

        def count(module, args, out, name=name):
            calls[name] += 1

        runner.policy.lm.transformer.h[0].attn.register_forward_hook(count)
        runner.train()
    # each of the 8 gradient steps (4 epochs of 2 minibatches) recomputes the block once in backward
    assert calls["gc"] - calls["plain"] == 8
    assert weights_digest(tmp_path / "gc") == weights_digest(tmp_path / "plain")


def test_the_fp16_scaler_unscales_and_skips_a_step_with_an_inf_gradient():
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    reference = torch.nn.Parameter(weight.detach().clone())
    setup = DeviceSetup(torch.device("cpu"), "fp16", scaler=torch.amp.GradScaler("cpu", init_scale=1024.0))
    optimizer, plain = torch.optim.SGD([weight], lr=0.1), torch.optim.SGD([reference], lr=0.1)
    norm, skipped = setup.step(optimizer, [weight], (weight**2).sum(), max_grad_norm=100.0)
    optimizer_step(plain, [reference], (reference**2).sum(), 100.0)
    assert not skipped and norm == pytest.approx(20**0.5)  # the gradient 2w, divided by the scale again
    torch.testing.assert_close(weight.detach(), reference.detach())
    before = weight.detach().clone()
    _, skipped = setup.step(optimizer, [weight], weight.sum() * float("inf"), max_grad_norm=100.0)
    assert skipped and torch.equal(weight.detach(), before)  # no update, the scale halved
    assert setup.metrics() == {"train/loss_scale": 512.0, "train/fp16_skipped_steps": 1.0}


@pytest.mark.parametrize(("init_scale", "nonfinite"), [(2.0**16, 0.0), (2.0**4, 4.0)])
def test_scaler_skips_are_nonfinite_steps_only_below_the_scale_floor(tmp_path, init_scale, nonfinite):
    # the scaler on the CPU (fp32 autocast: the same scaler code as fp16 on CUDA), every gradient overflowing:
    # 4 epochs x 2 minibatches skipped, the scale halved each time. From 2^16 it ends at 256: calibration, nothing
    # for the guard. From 16 it passes 8, 4, 2, 1 and then 0.5, 0.25, 0.125, 0.0625: 4 skips below the floor (1),
    # each a non-finite step (the guard's halt limit lifted to see the count)
    runner = LMPPORunner(config("lm_ppo", "guard.nonfinite_halt=1", total=16), tmp_path / "run", console=False)
    runner.setup = DeviceSetup(torch.device("cpu"), "fp32", scaler=torch.amp.GradScaler("cpu", init_scale=init_scale))
    runner.policy.value_head.weight.register_hook(lambda grad: grad * float("inf"))
    runner.train()
    row = rows(tmp_path / "run")[-1]
    assert row[names.NONFINITE_STEPS] == nonfinite and row["train/fp16_skipped_steps"] == 8.0
    assert row["train/loss_scale"] == init_scale / 2**8
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert ("critical.nonfinite" in kinds) == (nonfinite > 0)


def test_a_bf16_checkpoint_resumes_in_fp32(tmp_path):
    # the checkpoint holds float32 CPU tensors whatever the precision or device: a run resumes in another one (on a
    # GPU machine's run: run.device cpu in its config.yaml); pgrad warns that config.yaml differs from the checkpoint
    bf16 = config("lm_ppo", "model.precision=bf16", "checkpoint_every=16")
    LMPPORunner(bf16, tmp_path / "run", console=False).train(stop_at_step=16)
    model = dataclasses.replace(bf16.algo_config.model, precision="fp32")
    fp32 = dataclasses.replace(bf16, algo_config=dataclasses.replace(bf16.algo_config, model=model))
    resumed = LMPPORunner(fp32, tmp_path / "run", resume=True, console=False)
    assert resumed.step == 16 and resumed.setup.precision == "fp32"
    resumed.train()
    assert [row["step"] for row in rows(tmp_path / "run")] == [16, 32]
    assert torch.isfinite(torch.tensor(rows(tmp_path / "run")[-1]["train/policy_loss"]))


# ---- on a GPU (skipped in CI; benchmarks/gpu_lm_check.sh runs them with -s and prints what they saw) ------------
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (benchmarks/gpu_lm_check.sh)")
LOSS = {
    "lm_ppo": "train/policy_loss",
    "lm_ppo_grpo": "train/policy_loss",
    "lm_sft": "train/sft_nll",
    "lm_rm": "train/rm_loss",
    "lm_dpo": "train/dpo_loss",
}


@CUDA
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("case", list(CASES))
def test_cuda_runs_place_everything_on_the_gpu_and_write_float32_cpu_checkpoints(tmp_path, case, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this card has no bfloat16")
    sets = ["run.device=cuda", f"model.precision={precision}", "model.gradient_checkpointing=true"]
    runner = CASES[case][0](config(case, *sets), tmp_path / "run", console=False)
    placed = {device for devices in devices_of(runner.modules()).values() for device in devices}
    assert placed == {"cuda:0"}
    torch.cuda.reset_peak_memory_stats()
    runner.train()
    last = rows(tmp_path / "run")[-1]
    assert torch.isfinite(torch.tensor(last[LOSS[case]])), last
    if precision == "fp16":
        assert "train/loss_scale" in last
    state = read_train_state(sorted((tmp_path / "run" / "checkpoints").glob("step_*"))[-1])
    tensors = [t for module in state.modules.values() for t in module.values() if t.is_floating_point()]
    assert {(t.dtype, t.device.type) for t in tensors} == {(torch.float32, "cpu")}
    peak = torch.cuda.max_memory_allocated() / 2**20
    scale = (
        f" scale {last['train/loss_scale']:g} skipped {last['train/fp16_skipped_steps']:g}"
        if "fp16" == precision
        else ""
    )
    print(
        f"\nGPU {case} {precision}: {LOSS[case]} {last[LOSS[case]]:.4f} step {last['step']}{scale} peak {peak:.1f} MiB"
    )


@CUDA
def test_a_cuda_checkpoint_resumes_on_the_cpu(tmp_path):
    on_gpu = config("lm_ppo", "run.device=cuda", "checkpoint_every=16")
    LMPPORunner(on_gpu, tmp_path / "run", console=False).train(stop_at_step=16)
    on_cpu = dataclasses.replace(on_gpu, run=dataclasses.replace(on_gpu.run, device="cpu"))
    resumed = LMPPORunner(on_cpu, tmp_path / "run", resume=True, console=False)
    assert devices_of(resumed.modules())["policy"] == {"cpu"} and resumed.step == 16
    resumed.train()
    assert [row["step"] for row in rows(tmp_path / "run")] == [16, 32]


@pytest.mark.parametrize("algo", ["lm_ppo", "lm_sft", "lm_rm", "lm_dpo"])
def test_the_fields_are_the_model_sections_with_a_short_form(algo):
    default = resolve_config(algo, None, None, [], seed=1, total_steps=8)[0].algo_config.model
    assert (default.precision, default.gradient_checkpointing) == ("fp32", False)
    short = resolve_config(algo, None, None, ["precision=bf16", "gradient_checkpointing=true"], seed=1, total_steps=8)
    model = short[0].algo_config.model
    assert (model.precision, model.gradient_checkpointing) == ("bf16", True)
