"""popgym and MiniGrid ids (pgrad.envs.memory): they resolve, their observations reach the torsos in the shapes
expected, the space layers by hand, a short recurrent run resumes, and a missing package is one line."""

from __future__ import annotations

import json
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest

from pgrad.cli import main
from pgrad.config import EnvConfig
from pgrad.envs import SpaceAdapter, make_vector_env
from pgrad.envs.memory import FlatDiscreteAction, OneHotObservation, ensure_registered
from pgrad.errors import ConfigError
from pgrad.runners.on_policy import OnPolicyRunner
from pgrad.runs import resolve_config

pytest.importorskip("popgym")
pytest.importorskip("minigrid")


@pytest.fixture(autouse=True)
def _quiet() -> None:
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # popgym's own gym-era warnings
    warnings.filterwarnings("ignore", category=UserWarning)


@pytest.mark.parametrize(
    ("env_id", "obs_dim", "actions"),
    [
        ("popgym-RepeatPreviousEasy-v0", 4, 4),  # Discrete(4): one-hot by pgrad
        ("popgym-CountRecallEasy-v0", 4, 27),  # MultiDiscrete([2, 2]): two one-hot blocks of 2
        ("popgym-AutoencodeEasy-v0", 6, 4),  # Tuple(Discrete(2), Discrete(4))
        ("popgym-BattleshipEasy-v0", 2, 64),  # MultiDiscrete([8, 8]) actions, flattened
        ("popgym-PositionOnlyCartPoleEasy-v0", 2, 2),  # a Box, as it is
        ("MiniGrid-DoorKey-5x5-v0", 7 * 7 * 3 + 4, 7),  # image entries and direction one-hot; mission dropped
        ("MiniGrid-MemoryS7-v0", 151, 7),
        ("minigrid:MiniGrid-DoorKey-5x5-v0", 151, 7),  # Gymnasium's module:EnvId form gets the same layer
        ("popgym:popgym-CountRecallEasy-v0", 4, 27),
    ],
)
def test_ids_resolve_with_the_shapes_the_torsos_take(env_id: str, obs_dim: int, actions: int) -> None:
    envs = make_vector_env(EnvConfig(id=env_id, num_envs=2))
    adapter = SpaceAdapter(envs.single_observation_space, envs.single_action_space, True)
    obs, _ = envs.reset(seed=0)
    rows = adapter.observations(obs)
    assert adapter.obs_shape == obs_dim and rows.shape == (2, obs_dim) and rows.dtype == np.float32
    assert adapter.action.kind == "discrete" and adapter.action.size == actions
    obs, *_ = envs.step(np.zeros(2, np.int64))
    assert adapter.observations(obs).shape == (2, obs_dim)
    envs.close()


def test_minigrid_row_is_the_image_then_the_direction_one_hot() -> None:
    envs = make_vector_env(EnvConfig(id="MiniGrid-Empty-5x5-v0", num_envs=1))
    assert list(envs.single_observation_space.spaces) == ["direction", "image"]  # MiniGrid's order, less mission
    obs, _ = envs.reset(seed=1)
    assert "mission" not in obs
    row = SpaceAdapter(envs.single_observation_space, envs.single_action_space, True).observations(obs)[0]
    direction = np.eye(4, dtype=np.float32)[int(obs["direction"][0])]
    image = obs["image"][0].astype(np.float32).ravel()
    assert image.max() > 1  # object indices (wall 2, goal 8), not one-hot
    np.testing.assert_array_equal(row, np.concatenate([direction, image]))


class _Toy(gym.Env[tuple, np.ndarray]):
    """Fixed Tuple observation and MultiDiscrete actions, to check the layers by hand."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Tuple(
            (
                gym.spaces.Discrete(3, start=1),
                gym.spaces.MultiDiscrete([2, 3]),
                gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
            )
        )
        self.action_space = gym.spaces.MultiDiscrete([2, 4], start=[0, 1])
        self.last: np.ndarray | None = None

    def _obs(self) -> tuple:
        return (2, np.array([1, 2]), np.array([0.5, -0.25], np.float32))

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[tuple, dict]:
        """The fixed observation."""
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[tuple, float, bool, bool, dict]:
        """Records the action it was given."""
        self.last = action
        return self._obs(), 0.0, False, False, {}


def test_one_hot_observation_and_flat_actions_by_hand() -> None:
    env = FlatDiscreteAction(OneHotObservation(_Toy()))
    obs, _ = env.reset()
    # Discrete(3, start=1) value 2 -> [0, 1, 0]; MultiDiscrete [1, 2] -> [0, 1] + [0, 0, 1]; Box as it is
    np.testing.assert_array_equal(obs, [0, 1, 0, 0, 1, 0, 0, 1, 0.5, -0.25])
    assert env.observation_space.shape == (10,) and env.observation_space.contains(obs.astype(np.float32))
    np.testing.assert_array_equal(env.observation_space.low, [0] * 8 + [-1, -1])
    assert env.action_space == gym.spaces.Discrete(8)
    env.step(np.int64(6))  # 6 = 1 * 4 + 2 -> (1, 2) + start (0, 1)
    np.testing.assert_array_equal(env.unwrapped.last, [1, 3])
    env.step(np.int64(0))
    np.testing.assert_array_equal(env.unwrapped.last, [0, 1])


def test_missing_package_is_one_line_naming_the_extra(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "popgym", None)  # import popgym now raises ImportError
    monkeypatch.setitem(sys.modules, "minigrid", None)
    with pytest.raises(ConfigError, match=r"needs popgym: pip install 'pgrad\[memory\]'"):
        ensure_registered("popgym-NoSuchTaskEasy-v0")
    with pytest.raises(ConfigError, match=r"needs minigrid: pip install 'pgrad\[memory\]'"):
        make_vector_env(EnvConfig(id="MiniGrid-NoSuchRoom-v0"))
    code = main(["train", "ppo", "--env", "BabyAI-NoSuchLevel-v0", "--quiet", "--total-steps", "64"])
    err = capsys.readouterr().err.strip()
    assert (
        code == 2 and err == "pgrad: error: env.id: 'BabyAI-NoSuchLevel-v0' needs minigrid: pip install 'pgrad[memory]'"
    )


def test_unknown_id_with_the_package_installed_suggests_close_ones() -> None:
    with pytest.raises(ConfigError, match="unknown environment 'popgym-RepeatPreviousEsay-v0'; did you mean"):
        make_vector_env(EnvConfig(id="popgym-RepeatPreviousEsay-v0"))


def test_short_recurrent_run_resumes_with_fresh_episodes(tmp_path) -> None:
    sets = [
        "run.progress=false",
        "run.tensorboard=false",
        "guard.eval_every=0",
        "run.checkpoint_every=64",
        "env.num_envs=2",
        "ppo.num_steps=32",
        "ppo.minibatch_size=32",
        "ppo.num_epochs=1",
        "ppo.network.recurrent=gru",
        "ppo.network.recurrent_size=8",
        "ppo.network.hidden_sizes=[16]",
        "ppo.network.sequence_length=8",
    ]
    config, _ = resolve_config("ppo", "popgym-RepeatPreviousEasy-v0", sets=sets, total_steps=128, use_preset=False)
    first = OnPolicyRunner(config, tmp_path / "run", console=False)
    assert first.inexact is not None and "RepeatPreviousEasy" in first.inexact  # named before training starts
    first.train(stop_at_step=64)
    assert first.step == 64 and not first.collector.episode_start.all()  # stopped mid-episode (52 steps each)
    assert np.abs(first.collector.hidden).sum() > 0
    resumed = OnPolicyRunner(config, tmp_path / "run", resume=True, console=False)
    # the episodes restart (popgym's deck cannot be saved), and with them the hidden state
    assert resumed.step == 64 and resumed.collector.episode_start.all()
    resumed.train()
    assert resumed.step == 128
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [64, 128]
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert any(event["kind"] == "run.envs_restarted" for event in events)


def test_minigrid_rnd_run_from_the_cli(tmp_path, capsys) -> None:
    run = tmp_path / "doorkey"
    args = ["--env", "MiniGrid-DoorKey-5x5-v0", "--run-dir", str(run), "--quiet", "--total-steps", "128"]
    sets = ["env.num_envs=2", "ppo.num_steps=64", "ppo.minibatch_size=64", "ppo.num_epochs=1", "ppo.rnd.enabled=true"]
    sets += ["guard.eval_every=0", "run.tensorboard=false"]
    code = main(["train", "ppo", *args, *[item for s in sets for item in ("--set", s)]])
    assert code == 0, capsys.readouterr().err
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["step"] == 128 and any(key.startswith("rnd/") for key in row)
