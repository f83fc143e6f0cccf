"""Checkpoints: exact resume, never unpickling, clear errors, atomic writes, retention."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from pgrad.checkpoint import CheckpointStore, load_checkpoint, save_checkpoint
from pgrad.errors import CheckpointError
from pgrad.runners.on_policy import OnPolicyRunner
from pgrad.runs import resolve_config

SENTINEL = Path("/tmp/pgrad-pickle-executed")


class Payload:
    """Unpickling this runs code (creates SENTINEL): what a malicious checkpoint would do."""

    def __reduce__(self):
        return (SENTINEL.touch, ())


def small_config(env_id: str, total_steps: int, extra: list[str]):
    sets = ["run.progress=false", "run.tensorboard=false", "run.checkpoint_every=1000000", *extra]
    config, _ = resolve_config("ppo", env_id, sets=sets, total_steps=total_steps)
    return config


def parameters(trainer: OnPolicyRunner) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.algo.model.state_dict().items()}


@pytest.mark.parametrize(
    ("env_id", "total", "extra"),
    [
        ("CartPole-v1", 6144, ["ppo.num_epochs=4"]),
        ("Pendulum-v1", 4096, ["ppo.num_steps=256", "env.norm_obs=true", "env.norm_reward=true", "ppo.num_epochs=2"]),
    ],
)
def test_resume_is_bit_exact(tmp_path, env_id, total, extra):
    config = small_config(env_id, total, extra)
    uninterrupted = OnPolicyRunner(config, tmp_path / "a", console=False)
    uninterrupted.train()

    first = OnPolicyRunner(config, tmp_path / "b", console=False)
    first.train(stop_at_step=total // 2)  # as if killed right after a checkpoint
    assert first.step < total
    resumed = OnPolicyRunner(config, tmp_path / "b", resume=True, console=False)
    resumed.train()

    assert resumed.step == uninterrupted.step
    expected, actual = parameters(uninterrupted), parameters(resumed)
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    # The optimizer moments and the normaliser statistics agree too.
    expected_moments = uninterrupted.algo.optimizer.state_dict()["state"]
    actual_moments = resumed.algo.optimizer.state_dict()["state"]
    for index, moments in expected_moments.items():
        assert torch.equal(moments["exp_avg_sq"], actual_moments[index]["exp_avg_sq"])
    np.testing.assert_array_equal(
        uninterrupted.collector.obs_normalizer.stats.mean, resumed.collector.obs_normalizer.stats.mean
    )


def write_small_checkpoint(directory: Path) -> None:
    save_checkpoint(directory, {"w": torch.arange(4.0)}, {"step": 1})


def test_pickle_payload_in_tensor_file_is_refused_and_never_executed(tmp_path):
    SENTINEL.unlink(missing_ok=True)
    checkpoint = tmp_path / "ckpt"
    write_small_checkpoint(checkpoint)
    (checkpoint / "tensors.safetensors").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError, match="does not match the checksum"):
        load_checkpoint(checkpoint)
    # An attacker who also rewrites the recorded checksum still gets nothing executed.
    import hashlib

    state = json.loads((checkpoint / "state.json").read_text())
    state["tensors_sha256"] = hashlib.sha256((checkpoint / "tensors.safetensors").read_bytes()).hexdigest()
    (checkpoint / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(checkpoint)
    assert not SENTINEL.exists()


def test_torch_save_file_is_refused(tmp_path):
    checkpoint = tmp_path / "ckpt"
    write_small_checkpoint(checkpoint)
    torch.save({"w": torch.zeros(2), "evil": Payload()}, checkpoint / "tensors.safetensors")
    with pytest.raises(CheckpointError):
        load_checkpoint(checkpoint)
    assert not SENTINEL.exists()


def test_corrupted_state_json_and_missing_files(tmp_path):
    checkpoint = tmp_path / "ckpt"
    write_small_checkpoint(checkpoint)
    (checkpoint / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="state.json is corrupted"):
        load_checkpoint(checkpoint)
    with pytest.raises(CheckpointError, match="is incomplete"):
        load_checkpoint(tmp_path / "nothing-here")


def test_wrong_format_version(tmp_path):
    checkpoint = tmp_path / "ckpt"
    write_small_checkpoint(checkpoint)
    state = json.loads((checkpoint / "state.json").read_text())
    state["format_version"] = 99
    (checkpoint / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="format version 99; this pgrad reads version 1"):
        load_checkpoint(checkpoint)


def test_round_trip_and_no_temporary_left_behind(tmp_path):
    checkpoint = tmp_path / "ckpt"
    save_checkpoint(checkpoint, {"w": torch.arange(3.0), "flag": torch.tensor([True, False])}, {"step": 7, "x": [1, 2]})
    tensors, state = load_checkpoint(checkpoint)
    assert torch.equal(tensors["w"], torch.arange(3.0)) and tensors["flag"].dtype == torch.bool
    assert state["step"] == 7 and state["x"] == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_store_keeps_last_k_and_the_best(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    scores = [5.0, 9.0, 1.0, 2.0, 3.0]
    for step, score in enumerate(scores, start=1):
        store.save(step, {"w": torch.zeros(1)}, {"step": step}, score)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir())
    assert names == ["step_0000000002", "step_0000000004", "step_0000000005"]
    assert store.path("best").name == "step_0000000002"
    assert store.path("latest").name == "step_0000000005"


def test_store_last_healthy_skips_unhealthy(tmp_path):
    store = CheckpointStore(tmp_path, keep=5)
    store.save(1, {"w": torch.zeros(1)}, {}, 1.0, healthy=True)
    store.save(2, {"w": torch.zeros(1)}, {}, 2.0, healthy=False)
    assert store.path("last_healthy").name == "step_0000000001"
    assert store.path("best").name == "step_0000000001"


def test_new_run_refuses_a_folder_that_holds_a_run(tmp_path):
    from pgrad.errors import ConfigError

    config = small_config("CartPole-v1", 512, ["ppo.num_epochs=1"])
    OnPolicyRunner(config, tmp_path, console=False).train()
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    with pytest.raises(ConfigError, match="already holds a run"):
        OnPolicyRunner(config, tmp_path, console=False)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before
