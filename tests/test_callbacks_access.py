"""Callbacks with access (issue 24, part 3): the agent, the step counter, the run's logger (a custom scalar in
metrics.jsonl, TensorBoard and a tracker, in the update's own row), stopping at an update boundary with an exact
resume, SB3's built-ins doing what their docstrings say, and one-line refusals."""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pgrad.api import PPO, SAC
from pgrad.builders import algo_gamma, build_environment
from pgrad.callbacks import (
    BaseCallback,
    CallbackError,
    CallbackList,
    CheckpointCallback,
    EvalCallback,
    EveryNTimesteps,
    Logger,
    StopTrainingOnMaxEpisodes,
    StopTrainingOnNoModelImprovement,
    StopTrainingOnRewardThreshold,
)
from pgrad.checkpoint import read_train_state
from pgrad.errors import ConfigError
from pgrad.monitor.evaluation import EVAL_SEED_OFFSET, run_episodes
from pgrad.policy import load_policy

# 2 envs x 64 steps: an update is 128 env steps and 64 vector steps (64 calls of _on_step)
SMALL: dict[str, Any] = {
    "env": {"num_envs": 2},
    "run": {"tensorboard": False, "progress": False},
    "ppo": {"num_steps": 64, "num_epochs": 1, "minibatch_size": 64},
    "guard": {"eval_every": 0},
}


def small_ppo(tmp_path: Path, name: str = "run", seed: int = 1, **sections: dict[str, Any]) -> PPO:
    config = {key: {**SMALL.get(key, {}), **sections.get(key, {})} for key in {*SMALL, *sections}}
    return PPO("CartPole-v1", config=config, run_dir=tmp_path / name, use_preset=False, seed=seed)


def rows(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def events(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(error.value)
    assert "\n" not in message and message
    return message


class Watcher(BaseCallback):
    """Records every hook with the step it saw; stops in _on_step once num_timesteps reaches ``stop_at``."""

    def __init__(self, stop_at: int | None = None) -> None:
        super().__init__()
        self.stop_at = stop_at
        self.seen: list[tuple[str, int]] = []
        self.step_counts: list[int] = []
        self.bound: dict[str, Any] = {}

    def _on_training_start(self) -> None:
        self.bound = {"model": self.model, "agent": self.agent, "logger": self.logger, "env": self.training_env}
        self.seen.append(("start", self.num_timesteps))

    def _on_rollout_start(self) -> None:
        self.seen.append(("rollout_start", self.num_timesteps))

    def _on_step(self) -> bool:
        self.step_counts.append(self.num_timesteps)
        return self.stop_at is None or self.num_timesteps < self.stop_at

    def _on_rollout_end(self) -> None:
        self.seen.append(("rollout_end", self.num_timesteps))

    def on_update(self, metrics: Any) -> None:
        self.seen.append(("update", metrics["step"]))

    def _on_training_end(self) -> None:
        self.seen.append(("end", self.num_timesteps))


# ---- access: the agent, the step counter, the hooks' order ------------------------------------------------------


def test_a_callback_sees_the_agent_and_the_step_count_of_every_vector_step(tmp_path: Path) -> None:
    agent = small_ppo(tmp_path)
    watcher = Watcher()
    agent.learn(256, callbacks=watcher)  # one callback, not in a list (SB3's callback=)
    assert watcher.bound["model"] is agent and watcher.bound["agent"] is agent
    assert watcher.bound["logger"] is agent.logger and watcher.bound["env"].num_envs == 2
    # SB3's meaning: once per vector step, num_timesteps = env steps so far (2 envs: 2, 4, ..., 256)
    assert watcher.step_counts == list(range(2, 257, 2)) and watcher.n_calls == 128
    assert watcher.seen == [
        ("start", 0),
        ("rollout_start", 0),
        ("rollout_end", 128),
        ("update", 128),
        ("rollout_start", 128),
        ("rollout_end", 256),
        ("update", 256),
        ("end", 256),
    ]
    assert watcher.metrics["step"] == 256 and "train/value_loss" in watcher.metrics  # the last logged row
    with pytest.raises(AttributeError, match="no self.locals: read self.num_timesteps, self.metrics"):
        _ = watcher.locals
    # a second learn continues the count where the run is
    again = Watcher()
    agent.learn(128, callbacks=[again])
    assert again.step_counts == list(range(258, 385, 2)) and again.seen[0] == ("start", 256)


def test_off_policy_on_step_fires_every_env_step_too(tmp_path: Path) -> None:
    loop = {"learning_starts": 50, "batch_size": 32, "log_every": 50, "buffer_size": 1000}
    config = {"env": {"num_envs": 1}, "run": {"tensorboard": False}, "sac": {"loop": loop}, "guard": {"eval_every": 0}}
    agent = SAC("Pendulum-v1", config=config, run_dir=tmp_path / "sac", use_preset=False)
    watcher = Watcher(stop_at=120)  # asked at step 120, inside the row that ends at 150: the round ends it
    agent.learn(1_000, callbacks=[watcher])
    assert watcher.step_counts == list(range(1, 121)) and agent.num_timesteps == 120
    assert [event["message"] for event in events(tmp_path / "sac") if event["kind"] == "run.stopped_by_callback"] == [
        "Watcher._on_step returned False"
    ]


def test_whole_episode_collection_calls_on_step_every_vector_step(tmp_path: Path) -> None:
    from pgrad.api import REINFORCE

    config = {"env": {"num_envs": 2}, "run": {"tensorboard": False}, "reinforce": {"num_episodes": 2}}
    agent = REINFORCE(
        "CartPole-v1", config=config, run_dir=tmp_path / "run", use_preset=False, sets=["guard.eval_every=0"]
    )
    watcher = Watcher()
    agent.learn(100, callbacks=[watcher])  # updates of whole episodes: as many steps as they take
    steps = [r["step"] for r in rows(tmp_path / "run")]
    assert watcher.step_counts == list(range(2, steps[-1] + 1, 2))  # every vector step, 2 env steps each
    assert [s for kind, s in watcher.seen if kind == "rollout_start"] == [0, *steps[:-1]]


# ---- the logger ----------------------------------------------------------------------------------------------


class Scalars(BaseCallback):
    """Records the vector steps of each rollout, and the mean step number over them."""

    def _on_step(self) -> bool:
        assert self.logger is not None
        self.logger.record_mean("custom/step_mean", self.num_timesteps)
        return True

    def _on_rollout_end(self) -> None:
        assert self.logger is not None
        self.logger.record("custom/calls", self.n_calls)


def fake_wandb() -> types.ModuleType:
    module = types.ModuleType("wandb")
    module.logged = []  # type: ignore[attr-defined]

    class Run:
        def log(self, data: dict[str, float], step: int) -> None:
            module.logged.append((step, data))  # type: ignore[attr-defined]

        def finish(self) -> None:
            pass

    module.init = lambda **kwargs: Run()  # type: ignore[attr-defined]
    return module


def test_a_custom_scalar_reaches_jsonl_tensorboard_and_a_tracker_in_the_updates_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    wandb = fake_wandb()
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    agent = small_ppo(tmp_path, run={"tensorboard": True, "wandb": True})
    agent.logger.record("custom/before", 7.0)  # outside learn: joins the first row
    agent.learn(256, callbacks=[Scalars()])
    logged = rows(tmp_path / "run")
    # update 1 saw steps 2, 4, ..., 128: mean 65; update 2 steps 130, ..., 256: mean 193
    assert [(r["step"], r["custom/calls"], r["custom/step_mean"]) for r in logged] == [(128, 64, 65), (256, 128, 193)]
    assert logged[0]["custom/before"] == 7.0 and "custom/before" not in logged[1]
    board = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"scalars": 0})
    board.Reload()
    assert [(s.step, s.value) for s in board.Scalars("custom/calls")] == [(128, 64.0), (256, 128.0)]
    assert [(s.step, s.value) for s in board.Scalars("custom/step_mean")] == [(128, 65.0), (256, 193.0)]
    tracked = {step: data for step, data in wandb.logged}  # type: ignore[attr-defined]
    assert tracked[128]["custom/calls"] == 64 and tracked[256]["custom/step_mean"] == 193
    assert tracked[256]["train/value_loss"] == logged[1]["train/value_loss"]  # the same row


@pytest.mark.parametrize(
    ("key", "value", "exclude", "expected"),
    [
        ("score", 1.0, None, "the key must be a 'group/name' text"),
        ("custom/", 1.0, None, "the key must be a 'group/name' text"),
        (3, 1.0, None, "the key must be a 'group/name' text"),
        ("rollout/return_mean", 1.0, None, "'rollout/return_mean' is a metric pgrad writes itself"),
        ("custom/x", float("nan"), None, "the value must be finite; got nan"),
        ("custom/x", math.inf, None, "the value must be finite; got inf"),
        ("custom/x", "high", None, "the value must be a number; got 'high'"),
        ("custom/x", True, None, "the value must be a number; got True"),
        ("custom/x", torch.tensor(1.0), None, r"pass value.item\(\)"),
        ("custom/x", 1.0, "tensorboard", "pgrad writes every recorded value to metrics.jsonl, TensorBoard"),
    ],
)
def test_bad_logger_keys_and_values_are_one_line(key: Any, value: Any, exclude: Any, expected: str) -> None:
    logger = Logger()
    with pytest.raises(ConfigError, match=expected) as error:
        logger.record(key, value, exclude=exclude)
    assert one_line(error).startswith("logger.record(")
    assert logger.take() == {}


def test_logger_record_mean_numpy_values_and_take() -> None:
    logger = Logger()
    logger.record("custom/a", np.float32(0.5), exclude="stdout")
    logger.record_mean("custom/m", 1)
    logger.record_mean("custom/m", np.int64(4))
    assert logger.name_to_value == {"custom/a": 0.5, "custom/m": 2.5}
    logger.dump(10)  # SB3's dump: the loop writes rows, this changes nothing
    assert logger.take() == {"custom/a": 0.5, "custom/m": 2.5} and logger.take() == {}


def test_a_custom_key_the_algorithm_writes_is_refused_when_it_would_join_the_row(tmp_path: Path) -> None:
    class Clash(BaseCallback):
        def on_update(self, metrics: Any) -> None:
            assert self.logger is not None
            self.logger.record("diagnostics/advantage_mean", 0.0)  # PPO's own metric, not a fixed pgrad name

    with pytest.raises(ConfigError, match="'diagnostics/advantage_mean' is a metric pgrad writes in this run") as e:
        small_ppo(tmp_path).learn(128, callbacks=[Clash()])
    one_line(e)


# ---- stopping, and learn afterwards ----------------------------------------------------------------------------


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(checkpoint / "tensors.safetensors")).items() if k.startswith("module")}


def test_returning_false_stops_at_the_update_boundary_and_learn_resumes_exactly(tmp_path: Path) -> None:
    guard = {"eval_every": 256, "eval_episodes": 2}  # the guard's evaluation at 256 is part of the stopped update
    straight = small_ppo(tmp_path, "straight", guard=guard).learn(512)
    stopped = small_ppo(tmp_path, "stopped", guard=guard)
    watcher = Watcher(stop_at=200)  # asked at step 200, inside the second update: it is finished first
    stopped.learn(512, callbacks=[watcher])
    assert stopped.num_timesteps == 256 and watcher.step_counts[-1] == 256
    kinds = [event["kind"] for event in events(tmp_path / "stopped")]
    assert "run.stopped_by_callback" in kinds and "run.interrupted" not in kinds
    stopped.learn(256)  # the rest of the 512 steps: the same schedules, the same run
    assert stopped.num_timesteps == 512
    evaluated = [r["step"] for r in rows(tmp_path / "stopped") if "eval/return_mean" in r]
    assert evaluated[0] == 256 and evaluated == [
        r["step"] for r in rows(tmp_path / "straight") if "eval/return_mean" in r
    ]
    clean = [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in rows(tmp_path / "stopped")]
    expected = [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in rows(tmp_path / "straight")]
    assert clean == expected
    a, b = weights(straight.last_result.checkpoint), weights(stopped.last_result.checkpoint)  # type: ignore[union-attr]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_callback_that_raises_while_the_envs_step_is_named_as_the_callback(tmp_path: Path) -> None:
    class Broken(BaseCallback):
        def _on_step(self) -> bool:
            raise KeyError("oops")

    with pytest.raises(CallbackError, match=r"a callback's _on_step raised KeyError: 'oops' at env step 2") as error:
        small_ppo(tmp_path).learn(128, callbacks=[Broken()])
    assert isinstance(error.value.__cause__, KeyError)  # the user's traceback is kept


# ---- the built-ins --------------------------------------------------------------------------------------------


def test_eval_callback_logs_saves_the_best_model_and_writes_evaluations(tmp_path: Path) -> None:
    agent = small_ppo(tmp_path)
    evaluation = EvalCallback(
        "CartPole-v1",
        n_eval_episodes=2,
        eval_freq=64,  # vector steps: every 128 env steps, at the last step of each rollout
        best_model_save_path=tmp_path / "best",
        log_path=tmp_path / "logs",
        verbose=0,
    )
    agent.learn(512, callbacks=[evaluation])
    saved = np.load(tmp_path / "logs" / "evaluations.npz")
    assert saved["timesteps"].tolist() == [128, 256, 384, 512] and saved["results"].shape == (4, 2)
    means = saved["results"].mean(axis=1)
    assert evaluation.best_mean_reward == means.max() and evaluation.last_mean_reward == means[-1]
    logged = rows(tmp_path / "run")
    assert [r["eval/mean_reward"] for r in logged] == pytest.approx(means.tolist())
    assert [r["eval/mean_ep_length"] for r in logged] == pytest.approx(saved["ep_lengths"].mean(axis=1).tolist())
    # the best model is the policy of the best evaluation: played again on the same starts, the same returns
    best = int(np.argmax(means))  # the first best (a later tie is not "new")
    policy, config, _ = load_policy(tmp_path / "best" / "best_model")
    envs = build_environment(config, algo_gamma(config), num_envs=2).envs  # as pgrad builds CartPole (vectorised)
    returns, _ = run_episodes(policy.actor, envs, policy.adapter, policy.obs_normalizer, 2, True, EVAL_SEED_OFFSET + 1)
    assert sorted(returns) == sorted(saved["results"][best].tolist())
    # it was saved in the rollout's last step, before that update: the weights of the update before
    assert read_train_state(tmp_path / "best" / "best_model").step == saved["timesteps"][best] - 128
    assert PPO.load(tmp_path / "best" / "best_model").predict(np.zeros(4, np.float32))[0] in (0, 1)


def test_checkpoint_callback_files_load_and_hold_the_weights_in_use(tmp_path: Path) -> None:
    agent = small_ppo(tmp_path, run={"checkpoint_every": 128})
    agent.learn(256, callbacks=CheckpointCallback(save_freq=32, save_path=tmp_path / "saves", name_prefix="cp"))
    names = sorted(p.name for p in (tmp_path / "saves").iterdir())
    assert names == ["cp_128_steps", "cp_192_steps", "cp_256_steps", "cp_64_steps"]
    for name in names:
        loaded = PPO.load(tmp_path / "saves" / name)
        assert loaded.predict(np.zeros(4, np.float32))[0] in (0, 1)
        assert sorted(p.name for p in (tmp_path / "saves" / name).iterdir()) == [
            "spaces.json",
            "state.json",
            "tensors.safetensors",
        ]
    # at step 192 the policy acting is the one the update at step 128 left: the run's own checkpoint of it
    run_checkpoint = tmp_path / "run" / "checkpoints" / "step_0000000128"
    mine, theirs = weights(tmp_path / "saves" / "cp_192_steps"), weights(run_checkpoint)
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert not torch.equal(*(weights(tmp_path / "saves" / n)["module.model.policy_head.weight"] for n in names[:2]))


def test_reward_threshold_stops_training_at_the_first_evaluation_reaching_it(tmp_path: Path) -> None:
    agent = small_ppo(tmp_path)
    stop = StopTrainingOnRewardThreshold(reward_threshold=5.0)  # any CartPole episode lasts 8 steps or more
    agent.learn(10_000, callbacks=EvalCallback(None, callback_on_new_best=stop, n_eval_episodes=2, eval_freq=64))
    assert agent.num_timesteps == 128  # evaluated at step 128, the update finished, then stopped
    stopped = [event["message"] for event in events(tmp_path / "run") if event["kind"] == "run.stopped_by_callback"]
    assert stopped == ["EvalCallback._on_step returned False"]


def test_max_episodes_stops_after_the_update_that_reached_them(tmp_path: Path) -> None:
    agent = small_ppo(tmp_path)
    stop = StopTrainingOnMaxEpisodes(max_episodes=3)  # 3 per env, 2 envs: 6 in all, as SB3 counts
    agent.learn(10_000, callbacks=[stop])
    counts = [r["rollout/episodes"] for r in rows(tmp_path / "run")]
    assert counts[-1] >= 6 and all(count < 6 for count in counts[:-1])
    assert stop.n_episodes >= 6 and agent.num_timesteps < 10_000


def test_no_model_improvement_counts_evaluations_without_a_new_best() -> None:
    parent = EvalCallback(None, verbose=0)
    child = StopTrainingOnNoModelImprovement(max_no_improvement_evals=2, min_evals=1)
    parent.callback = child
    child.parent = parent
    verdicts = []
    for best in [1.0, 2.0, 2.0, 3.0, 3.0, 3.0, 3.0]:  # the best mean reward after each evaluation
        parent.best_mean_reward = best
        verdicts.append(child.on_step())
    # the first evaluation is not counted (min_evals=1); 3.0 -> 3.0 -> 3.0 -> 3.0 is 3 without improvement > 2
    assert verdicts == [True, True, True, True, True, True, False]


def test_every_n_timesteps_and_lists_and_functions(tmp_path: Path) -> None:
    child = Watcher()
    rows_heard: list[int] = []
    combined = CallbackList([EveryNTimesteps(n_steps=100, callback=child), lambda row: rows_heard.append(row["step"])])
    small_ppo(tmp_path).learn(256, callbacks=[combined])
    assert child.step_counts == [100, 200] and child.n_calls == 2
    assert rows_heard == [128, 256]


def test_refusals_are_one_line_before_the_run_folder_opens(tmp_path: Path) -> None:
    class FakeVecEnv:  # what SB3's DummyVecEnv looks like from here
        def step_async(self, actions: Any) -> None:
            pass

    bad = [
        (lambda: EvalCallback(FakeVecEnv()), "an SB3 VecEnv: pass the gymnasium env or its id"),
        (lambda: EvalCallback(None, n_eval_episodes=0), "EvalCallback: n_eval_episodes must be a positive int"),
        (lambda: EvalCallback(None, eval_freq="10"), "EvalCallback: eval_freq must be a positive int"),
        (lambda: EvalCallback(None, render=True), "render=True is not supported"),
        (lambda: EvalCallback(None, callback_on_new_best=print), "callback_on_new_best must be a pgrad"),
        (lambda: CheckpointCallback(0, tmp_path), "CheckpointCallback: save_freq must be a positive int"),
        (lambda: CheckpointCallback(10, None), "CheckpointCallback: save_path must be a path"),
        (lambda: CheckpointCallback(10, tmp_path, save_replay_buffer=True), "a saved agent holds no replay buffer"),
        (lambda: StopTrainingOnRewardThreshold(float("nan")), "reward_threshold must be a finite number"),
        (lambda: StopTrainingOnMaxEpisodes(-1), "max_episodes must be a positive int"),
        (lambda: EveryNTimesteps(0, Watcher()), "EveryNTimesteps: n_steps must be a positive int"),
        (lambda: CallbackList([3]), r"CallbackList\[0\]: expected a pgrad.callbacks.BaseCallback"),
    ]
    for make, expected in bad:
        with pytest.raises(ConfigError, match=expected) as error:
            make()
        one_line(error)
    agent = small_ppo(tmp_path)
    for callbacks, expected in [
        (StopTrainingOnRewardThreshold(1.0), "pass it to EvalCallback as callback_on_new_best"),
        ([Watcher], "learn: callbacks\\[0\\] is the class Watcher; pass an instance"),
        (lambda locals_, globals_: True, r"SB3's fn\(locals, globals\) has no pgrad form"),
    ]:
        with pytest.raises(ConfigError, match=expected) as error:
            agent.learn(128, callbacks=callbacks)
        one_line(error)
    assert not (tmp_path / "run").exists()


def test_an_eval_env_of_other_spaces_or_the_training_env_itself_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="eval_env's spaces .* differ from the training env's") as error:
        small_ppo(tmp_path).learn(128, callbacks=EvalCallback(gym.make("Pendulum-v1"), eval_freq=8, verbose=0))
    one_line(error)
    env = gym.make("CartPole-v1")
    agent = PPO(env, config={**SMALL, "env": {}}, run_dir=tmp_path / "instance", use_preset=False)
    with pytest.raises(ConfigError, match="eval_env is the training env itself") as error:
        agent.learn(64, callbacks=EvalCallback(env, eval_freq=8, verbose=0))
    one_line(error)
    agent = PPO(env, config={**SMALL, "env": {}}, run_dir=tmp_path / "copy", use_preset=False)
    evaluation = EvalCallback(gym.make("CartPole-v1"), n_eval_episodes=1, eval_freq=32, verbose=0)
    agent.learn(64, callbacks=evaluation)  # another instance of the same env is fine
    assert evaluation.evaluations_timesteps == [32, 64]
