"""A checkpoint's numbers are data too (issue 22, finding 7).

A received checkpoint whose shapes fit can still hold values no training run writes: NaN or Inf
weights, a NaN or negative normaliser variance, a NaN, negative or fractional Adam step, a negative
second moment. Every command that loads one (eval, export, resume, the Python API) refuses it in one
line naming the tensor; ``doctor`` reports it; a checkpoint is never marked healthy over non-finite
weights; and a resumed run checks its parameters on its first update.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hostile import one_line_error, train_ppo
from pgrad.cli import main
from pgrad.errors import CheckpointError

LATEST = "step_0000001024"


@pytest.fixture(autouse=True)
def no_integrity_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGRAD_CHECKPOINT_KEY", raising=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1024-step PPO CartPole run with an observation normaliser, checkpoints every 256 steps."""
    sets = ["--set", "run.checkpoint_every=256", "--set", "env.norm_obs=true"]
    return train_ppo(tmp_path_factory.mktemp("trained") / "run", 1024, *sets)


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "received"
    shutil.copytree(trained, copy)
    return copy


def vandalise(run: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    """Edit the latest checkpoint's tensors and recompute its SHA-256, as anyone can."""
    folder = run / "checkpoints" / LATEST
    tensors = load_file(str(folder / "tensors.safetensors"))
    change(tensors)
    save_file(tensors, str(folder / "tensors.safetensors"))
    state = json.loads((folder / "state.json").read_text())
    state["tensors_sha256"] = hashlib.sha256((folder / "tensors.safetensors").read_bytes()).hexdigest()
    (folder / "state.json").write_text(json.dumps(state))


def key(tensors: dict[str, torch.Tensor], suffix: str, prefix: str = "module.") -> str:
    return next(k for k in tensors if k.startswith(prefix) and k.endswith(suffix))


def all_weights_nan(tensors: dict[str, torch.Tensor]) -> None:
    for name, value in tensors.items():
        if name.startswith("module."):
            value.fill_(float("nan"))


def one_inf_weight(tensors: dict[str, torch.Tensor]) -> None:
    tensors[key(tensors, "actor_torso.0.weight")][0, 0] = float("inf")


def setter(name: str, value: float, index: tuple[int, ...] | None = None) -> Callable[[dict[str, torch.Tensor]], None]:
    def change(tensors: dict[str, torch.Tensor]) -> None:
        target = next(k for k in tensors if k == name or (not k.startswith("rollback.") and k.endswith(name)))
        if index is None:
            tensors[target].fill_(value)
        else:
            tensors[target][index] = value

    return change


CASES = [
    (all_weights_nan, "module 'model' tensor", "holds NaN"),
    (one_inf_weight, "module 'model' tensor 'actor_torso.0.weight' holds Inf", ""),
    (setter("collector.obs_norm_var", float("nan")), "normalizers.obs.var holds NaN", ""),
    (setter("collector.obs_norm_var", -1.0, (2,)), "normalizers.obs.var holds a negative value (-1)", ">= 0"),
    (setter("collector.obs_norm_mean", float("inf")), "normalizers.obs.mean holds Inf", ""),
    (setter("collector.obs_norm_count", -5.0), "normalizers.obs.count holds a negative value (-5)", ""),
    (setter("optim.optimizer.state.0.step", float("nan")), "state.0.step must be a whole number >= 0; got nan", ""),
    (setter("optim.optimizer.state.0.step", -3.0), "state.0.step must be a whole number >= 0; got -3.0", ""),
    (setter("optim.optimizer.state.0.step", 2.5), "state.0.step must be a whole number >= 0; got 2.5", ""),
    (setter("optim.optimizer.state.0.exp_avg_sq", -1.0, (0, 0)), "state.0.exp_avg_sq holds a negative value", ""),
    (setter("optim.optimizer.state.0.exp_avg", float("nan"), (0, 0)), "state.0.exp_avg holds NaN", ""),
    (
        setter("rollback.confirmed.module.model.actor_torso.0.bias", float("inf"), (0,)),
        "(rollback slot confirmed): module 'model' tensor 'actor_torso.0.bias' holds Inf",
        "",
    ),
]


@pytest.mark.parametrize(("change", "expected", "more"), CASES)
def test_invalid_values_are_refused_by_eval_naming_the_tensor(capsys, run, change, expected, more):
    vandalise(run, change)
    code = main(["eval", str(run), "--episodes", "1"])
    one_line_error(code, capsys.readouterr().err.strip(), expected, more, "refusing to load it")


@pytest.mark.parametrize("change", [all_weights_nan, setter("collector.obs_norm_var", -1.0, (0,))])
def test_export_refuses_invalid_values(capsys, run, tmp_path, change):
    vandalise(run, change)
    out = tmp_path / "policy.pt"
    code = main(["export", str(run), "--format", "torchscript", "--out", str(out)])
    one_line_error(code, capsys.readouterr().err.strip(), "refusing to load it")
    assert not out.exists()


@pytest.mark.parametrize(
    "change",
    [
        one_inf_weight,
        setter("optim.optimizer.state.0.step", float("nan")),
        setter("optim.optimizer.state.0.exp_avg_sq", -1.0, (0, 0)),
    ],
)
def test_resume_refuses_invalid_values_before_training(capsys, run, change):
    vandalise(run, change)
    before = (run / "metrics.jsonl").read_bytes()
    code = main(["resume", str(run), "--total-steps", "1280", "--quiet"])
    one_line_error(code, capsys.readouterr().err.strip(), "refusing to load it")
    assert (run / "metrics.jsonl").read_bytes() == before  # nothing trained, nothing logged


def test_python_api_load_refuses_nan_weights(run):
    from pgrad.api import PPO

    vandalise(run, all_weights_nan)
    with pytest.raises(CheckpointError, match="holds NaN"):
        PPO.load(run)


def test_doctor_reports_non_finite_weights(capsys, run):
    vandalise(run, one_inf_weight)
    code = main(["doctor", str(run)])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "healthy: no problems found" not in out
    assert "[critical] latest checkpoint refused" in out
    assert "'actor_torso.0.weight' holds Inf" in out


def test_doctor_of_a_clean_run_reads_its_checkpoints_and_finds_nothing_there(capsys, run):
    main(["doctor", str(run)])
    assert "checkpoint refused" not in capsys.readouterr().out


def small_config(total: int):
    from pgrad.runs import resolve_config

    sets = ["run.progress=false", "run.tensorboard=false", "run.checkpoint_every=256", "guard.eval_every=0"]
    return resolve_config("ppo", "CartPole-v1", sets=sets, total_steps=total)[0]


def first_weight(runner) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return next(runner.algo.model.parameters())


def test_a_checkpoint_over_non_finite_weights_is_never_marked_healthy(tmp_path):
    """The finding: one +inf weight appears between two parameter checks (the guard checks every 10th
    update) just before a checkpoint is due; the checkpoint must not be marked healthy."""
    from pgrad.callbacks import Callback
    from pgrad.runners.on_policy import OnPolicyRunner

    runner = OnPolicyRunner(small_config(1024), tmp_path / "run", console=False)

    class PoisonAt768(Callback):
        def on_update(self, metrics):  # type: ignore[no-untyped-def]
            if metrics["step"] == 768:  # after the guard judged this update, before its checkpoint
                with torch.no_grad():
                    first_weight(runner)[0, 0] = float("inf")
            return None

    runner.run.callbacks.append(PoisonAt768())
    runner.train(stop_at_step=768)
    index = json.loads((tmp_path / "run" / "checkpoints" / "index.json").read_text())
    assert index["entries"]["step_0000000512"]["healthy"] is True
    assert index["entries"]["step_0000000768"]["healthy"] is False


def test_the_first_update_after_a_resume_checks_the_parameters(tmp_path):
    from pgrad.runners.on_policy import OnPolicyRunner

    config = small_config(1024)
    OnPolicyRunner(config, tmp_path / "run", console=False).train(stop_at_step=512)
    resumed = OnPolicyRunner(config, tmp_path / "run", resume=True, console=False)
    try:
        resumed.updates += 1 if resumed.updates % 10 == 0 else 0  # not an every-10th update
        with torch.no_grad():
            first_weight(resumed)[0, 0] = float("inf")  # as a weight the load check let through would be
        assert resumed.check_parameters() == 0.0
        # later updates keep the every-10th schedule: one check per resume, not one per update
        with torch.no_grad():
            first_weight(resumed)[0, 0] = 0.0
        resumed.updates += 1 if (resumed.updates + 1) % 10 else 2
        assert resumed.check_parameters() == 0.0  # not re-checked: the hot path pays for one check only
    finally:
        resumed.close()


# ---- spaces.json: bounded and checked against a schema (finding 10) ------------------------------------


def cartpole_spaces() -> dict:
    import gymnasium as gym

    from pgrad.policy import space_to_dict

    env = gym.make("CartPole-v1")
    spaces = {"observation": space_to_dict(env.observation_space), "action": space_to_dict(env.action_space)}
    env.close()
    return spaces


def spaces_with(change: Callable[[dict], object]) -> str:
    data = cartpole_spaces()
    result = change(data)
    return result if isinstance(result, str) else json.dumps(result if result is not None else data)


SPACES_CASES = [
    (lambda d: d["observation"].update(dtype="U200000000"), "observation.dtype must be one of float16, float32"),
    (lambda d: "{", "is not valid JSON"),
    (lambda d: "[" * 100_000 + "]" * 100_000, "is not valid JSON"),
    (lambda d: [], "must be a mapping with exactly 'observation' and 'action'; got list"),
    (
        lambda d: d.pop("action") and None,
        "must be a mapping with exactly 'observation' and 'action'; got ['observation']",
    ),
    (lambda d: d.update(action=5), "action must be a mapping with a 'type'"),
    (lambda d: d["action"].update(type="Tuple"), "action.type must be 'Box' or 'Discrete'; got 'Tuple'"),
    (lambda d: d["observation"].update(shape="4"), "observation.shape must be a list of at most 8 sizes >= 1"),
    (lambda d: d["observation"].update(shape=[4, -1]), "observation.shape must be a list"),
    (lambda d: d["observation"].update(shape=[100_000, 100_000]), "with at most 1048576 elements in all"),
    (lambda d: d["observation"].update(low="abc"), "observation.low must be a number or nested lists of shape [4]"),
    (
        lambda d: d["observation"].update(low=[0, 0]),
        "observation.low must be a number or nested lists of shape [4]; got",
    ),
    (lambda d: d["observation"].update(low=[[1, 2], [3]]), "observation.low must be a number or nested lists"),
    (lambda d: d["observation"].update(high=[1, 1, float("nan"), 1]), "observation.high holds NaN"),
    (lambda d: d["observation"].update(low=[5, 5, 5, 5], high=[1, 1, 1, 1]), "low must be <= high everywhere"),
    (lambda d: d["observation"].update(bogus=1), "unknown: bogus"),
    (lambda d: d["observation"].update(dtype="int32", low=1.5, high=3), "must hold whole numbers for dtype int32"),
    (lambda d: d["observation"].update(dtype="uint8", low=-1, high=3), "must lie in [0, 255] for dtype uint8"),
    (lambda d: d["action"].update(n=-1), "action.n must be an integer in [1, 1048576]; got -1"),
    (lambda d: d["action"].update(n="2"), "action.n must be an integer in [1, 1048576]; got '2'"),
    (lambda d: d["action"].update(n=10**12), "action.n must be an integer in [1, 1048576]"),
    (lambda d: d["action"].update(start=2**70), "action.start must be an integer in [-2**62, 2**62]"),
]


@pytest.mark.parametrize(("change", "expected"), SPACES_CASES)
def test_malformed_spaces_json_is_one_line_for_export(capsys, run, tmp_path, change, expected):
    (run / "spaces.json").write_text(spaces_with(change))
    out = tmp_path / "policy.pt"
    code = main(["export", str(run), "--format", "torchscript", "--out", str(out)])
    one_line_error(code, capsys.readouterr().err.strip(), "spaces.json", expected)
    assert not out.exists()


@pytest.mark.parametrize(("change", "expected"), SPACES_CASES[:1] + SPACES_CASES[7:12])
def test_malformed_spaces_json_is_a_config_error_for_the_python_api(run, change, expected):
    from pgrad.api import PPO
    from pgrad.errors import ConfigError

    (run / "spaces.json").write_text(spaces_with(change))
    with pytest.raises(ConfigError, match="spaces.json") as caught:
        PPO.load(run)
    assert expected in str(caught.value)


def test_an_oversized_spaces_json_is_refused_before_parsing(capsys, run, tmp_path, monkeypatch):
    monkeypatch.setattr("pgrad.envs.space_schema.MAX_SPACES_BYTES", 100)
    (run / "spaces.json").write_text(spaces_with(lambda d: None))
    code = main(["export", str(run), "--format", "torchscript", "--out", str(tmp_path / "p.pt")])
    one_line_error(code, capsys.readouterr().err.strip(), "spaces.json is", "bytes; pgrad reads at most 100")


def test_a_valid_spaces_json_still_loads_and_exports(capsys, run, tmp_path):
    from pgrad.api import PPO

    (run / "spaces.json").write_text(spaces_with(lambda d: None))  # CartPole's bounds include +-Infinity
    agent = PPO.load(run)
    assert agent.observation_space.shape == (4,) and agent.action_space.n == 2
    assert main(["export", str(run), "--format", "torchscript", "--out", str(tmp_path / "p.pt")]) == 0
