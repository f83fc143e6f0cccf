"""Checkpoints: exact resume, never unpickling, clear errors, atomic writes, retention."""

import copy
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


def test_a_checkpoint_marked_healthy_later_becomes_last_healthy_and_best(tmp_path):
    store = CheckpointStore(tmp_path, keep=5)
    store.save(1, {"w": torch.zeros(1)}, {}, 1.0, healthy=True)
    store.save(2, {"w": torch.zeros(1)}, {}, 2.0, healthy=False)  # written unmarked, awaiting confirmation (A3C)
    store.save(3, {"w": torch.zeros(1)}, {}, 0.5, healthy=False)
    assert not store.is_healthy("step_0000000002") and store.path("best").name == "step_0000000001"
    store.mark_healthy("step_0000000002")
    assert store.is_healthy("step_0000000002") and not store.is_healthy("step_0000000003")
    assert store.path("last_healthy").name == store.path("best").name == "step_0000000002"
    store.mark_healthy("step_0000000003")  # newer, so last_healthy; a lower score, so not best
    assert store.path("last_healthy").name == "step_0000000003" and store.path("best").name == "step_0000000002"
    store.mark_healthy("step_0000000099")  # pruned or never written: nothing to mark, no error
    assert not store.is_healthy("step_0000000099")


def test_new_run_refuses_a_folder_that_holds_a_run(tmp_path):
    from pgrad.errors import ConfigError

    config = small_config("CartPole-v1", 512, ["ppo.num_epochs=1"])
    OnPolicyRunner(config, tmp_path, console=False).train()
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    with pytest.raises(ConfigError, match="already holds a run"):
        OnPolicyRunner(config, tmp_path, console=False)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before


# ---- the one schema: TrainState, and checkpoints written before it ------------------------------

FORMAT1_RUN = Path(__file__).parent / "data" / "ppo-cartpole-format1"


def test_train_state_round_trips_through_its_parts(tmp_path):
    from pgrad.checkpoint import TrainState, read_train_state

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    state = TrainState(
        algo="ppo",
        step=7,
        updates=2,
        elapsed_seconds=1.5,
        config={"algo": "ppo"},
        modules={"model": model.state_dict()},
        optimizers={"optimizer": optimizer.state_dict()},
        collector={"raw_obs": np.arange(6, dtype=np.float32).reshape(2, 3)},
        normalizers={
            "obs": {"mean": np.ones(3), "var": np.full(3, 2.0), "count": np.array(5.0)},
            "reward": {"mean": np.zeros(()), "var": np.ones(()), "count": np.array(1.0)},
        },
        rng_torch=torch.get_rng_state(),
        rng_numpy={"x": 1},
        rng_python=[3, [1, 2], None],
        episodes={"returns": [1.0], "lengths": [1], "count": 1},
        algo_state={"kl_coef": 0.5},
        guard={"recoveries": 1},
    )
    state.rollback_states = {"confirmed": copy.deepcopy(state.learner())}  # a capture shares no storage
    state.rollback_capture_step = 5
    path = CheckpointStore(tmp_path, 3).save_state(state, score=4.0, healthy=False)
    loaded = read_train_state(path)
    rollback = loaded.rollback_states["confirmed"]
    assert loaded.rollback_capture_step == 5 and set(loaded.rollback_states) == {"confirmed"}
    assert all(torch.equal(rollback.modules["model"][k], v) for k, v in model.state_dict().items())
    assert rollback.algo_state == {"kl_coef": 0.5} and np.array_equal(rollback.normalizers["obs"]["mean"], np.ones(3))
    assert (loaded.algo, loaded.step, loaded.updates, loaded.score, loaded.healthy) == ("ppo", 7, 2, 4.0, False)
    assert all(torch.equal(loaded.modules["model"][k], v) for k, v in model.state_dict().items())
    restored = torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), lr=0.01)
    restored.load_state_dict(loaded.optimizers["optimizer"])
    assert torch.equal(restored.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    assert np.array_equal(loaded.collector["raw_obs"], state.collector["raw_obs"])
    assert set(loaded.normalizers) == {"obs", "reward"}
    assert np.array_equal(loaded.normalizers["obs"]["var"], np.full(3, 2.0))
    assert (loaded.algo_state, loaded.guard, loaded.rng_python) == (
        {"kl_coef": 0.5},
        {"recoveries": 1},
        [3, [1, 2], None],
    )


def test_a_checkpoint_missing_a_field_is_refused_naming_it(tmp_path):
    from pgrad.checkpoint import read_train_state
    from pgrad.errors import CheckpointError

    path = CheckpointStore(tmp_path, 3).save(1, {"w": torch.zeros(1)}, {"algo": "ppo"}, None)
    with pytest.raises(CheckpointError, match="malformed: KeyError: 'step'"):
        read_train_state(path)


def test_a_run_folder_from_before_the_trunk_change_still_evaluates_and_resumes(tmp_path):
    """tests/data/ppo-cartpole-format1 was written by pgrad at commit 19b6824 (format 1, flat config).
    Its deterministic evaluation then printed 28.00 +- 5.35 over 3 episodes with --seed 0."""
    import shutil

    from pgrad.evaluate import evaluate
    from pgrad.runners.on_policy import OnPolicyRunner
    from pgrad.runs import load_run_config

    result = evaluate(FORMAT1_RUN, episodes=3, deterministic=True, seed=0)
    assert result.mean == pytest.approx(28.0) and result.std == pytest.approx(5.35, abs=0.01)
    run = tmp_path / "old-run"
    shutil.copytree(FORMAT1_RUN, run)
    runner = OnPolicyRunner(load_run_config(run, total_steps=768), run, resume=True, console=False)
    assert runner.step == 512
    outcome = runner.train()
    assert outcome.steps == 768 and not outcome.interrupted
