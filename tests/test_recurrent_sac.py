"""Recurrent SAC on the sequence replay (issue 26, point 2): sequences stored from a hand-made stream with an
episode end inside, replay from the stored state reproducing the acting policy exactly, burn-in without loss,
exact resume mid-episode, predict and export carrying the state, the guard's drill, and every refusal."""

import json
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch

from pgrad import metric_names as names
from pgrad.algos.contract import UpdateContext
from pgrad.algos.recurrent_sac import RecurrentSAC, unroll
from pgrad.config import EnvConfig
from pgrad.errors import ConfigError
from pgrad.nets import ActionSpec
from pgrad.rollout import Rollout
from pgrad.runners.off_policy import OffPolicyRunner
from pgrad.runs import resolve_config
from pgrad.sequence_replay import FIELDS, SequenceBatch, SequenceReplay, loss_mask

QUIET = ["run.progress=false", "run.tensorboard=false", "run.checkpoint_every=1000000"]
SMALL = [
    "env.mask_velocity=true",
    "env.num_envs=2",
    "env.max_episode_steps=30",  # episode ends inside the sequences
    "sac.network.recurrent=gru",
    "sac.network.recurrent_size=8",
    "sac.network.hidden_sizes=[16]",
    "sac.network.sequence_length=4",
    "sac.loop.burn_in=2",
    "sac.loop.sequence_stride=3",
    "sac.loop.batch_size=16",
    "sac.loop.learning_starts=40",
    "sac.loop.log_every=40",
    "sac.loop.buffer_size=400",
]


def small_config(total: int, extra: tuple[str, ...] = ()):
    config, _ = resolve_config("sac", "Pendulum-v1", sets=[*QUIET, *SMALL, *extra], total_steps=total, use_preset=False)
    return config


def hand_stream(start: int, steps: int) -> Rollout:
    """Two envs, 1-d observations 10 t + env, states 100 t + env; env 0's episode ends at step 2 (terminated), so
    step 3 is its autoreset step (invalid, acting on the final observation) and step 4 starts a new episode."""
    t = np.arange(start, start + steps + 1)[:, None]
    obs = (10 * t + np.arange(2)).astype(np.float32)[..., None]
    terminated = np.zeros((steps, 2), bool)
    valid = np.ones((steps, 2), bool)
    starts = np.zeros((steps + 1, 2), bool)
    for row, absolute in enumerate(t[:, 0]):
        if absolute == 2 and row < steps:
            terminated[row, 0] = True
        if absolute == 3 and row < steps:
            valid[row, 0] = False
        if absolute == 4:
            starts[row, 0] = True
        if absolute == 0:
            starts[row] = True
    return Rollout(
        obs=obs,
        actions=obs[:steps] / 10,
        rewards=-obs[:steps, :, 0],
        terminated=terminated,
        truncated=np.zeros((steps, 2), bool),
        valid=valid,
        states=(100 * t[:steps] + np.arange(2)).astype(np.float32)[..., None],
        episode_starts=starts,
    )


def test_sequences_of_a_hand_made_stream_with_an_episode_end_inside() -> None:
    # m = burn_in 1 + 2 steps, a start every 2 steps, 6 steps per env: after 8 steps, steps 2..7 are kept
    replay = SequenceReplay(12, 2, 1, 1, 1, burn_in=1, sequence_length=2, stride=2)
    replay.add_rollout(hand_stream(0, 4))
    assert replay.start_range() == (0, 1) and replay.size == 3 * 2  # only k = 0 has its 4 observations
    replay.add_rollout(hand_stream(4, 4))
    assert replay.start_range() == (1, 2)  # k = 0 overwritten; k = 2 and k = 4 complete; k = 6 not yet
    batch = replay.gather(np.array([1, 2]), np.array([0, 1]), torch.device("cpu"))
    # env 0 from step 2: its episode ends there, the autoreset step 3 shows the final observation, 4 starts anew
    assert batch.obs[:, 0, 0].tolist() == [20.0, 30.0, 40.0, 50.0]
    assert batch.terminated[:, 0].tolist() == [1.0, 0.0, 0.0]
    assert batch.starts[:, 0].tolist() == [False, False, True, False]
    assert batch.mask[:, 0].tolist() == [False, False, True]  # burn-in, invalid autoreset step, a loss step
    assert batch.rewards[:, 0].tolist() == [-20.0, -30.0, -40.0]
    assert batch.states[:, 0].tolist() == [200.0, 401.0]  # the states carried into steps 2 (env 0) and 4 (env 1)
    assert batch.obs[:, 1, 0].tolist() == [41.0, 51.0, 61.0, 71.0]
    assert batch.mask[:, 1].tolist() == [False, True, True]
    drawn = replay.sample(4, np.random.default_rng(0), torch.device("cpu"))  # 4 // 2 = 2 sequences
    assert drawn.obs.shape == (4, 2, 1) and set(drawn.obs[0, :, 0].tolist()) <= {20.0, 21.0, 40.0, 41.0}
    copy = SequenceReplay(12, 2, 1, 1, 1, burn_in=1, sequence_length=2, stride=2)
    copy.load_state_arrays(replay.state_arrays())
    again = copy.gather(np.array([1, 2]), np.array([0, 1]), torch.device("cpu"))
    for name in ("obs", "actions", "rewards", "terminated", "starts", "mask", "states"):
        assert torch.equal(getattr(batch, name), getattr(again, name)), name
    with pytest.raises(ValueError, match="replay.obs has shape"):
        SequenceReplay(24, 2, 1, 1, 1, burn_in=1, sequence_length=2, stride=2).load_state_arrays(replay.state_arrays())


def test_loss_mask_drops_burn_in_and_invalid_steps() -> None:
    valid = np.array([[1, 1], [1, 0], [1, 1], [0, 1]], bool)
    assert loss_mask(valid, 2).tolist() == [[False, False], [False, False], [True, True], [False, True]]


class Recorder:
    """The acting policy, recording the Gaussian it acted with at each step."""

    recurrent = True

    def __init__(self, acting) -> None:
        self.acting, self.means, self.log_stds = acting, [], []

    def step(self, obs, state, starts, rng):
        mean, log_std, _ = self.acting.head(obs, state, starts)
        self.means.append(mean)
        self.log_stds.append(log_std)
        return self.acting.step(obs, state, starts, rng)


def test_replaying_a_stored_sequence_from_its_state_reproduces_the_acting_policy_exactly(tmp_path) -> None:
    runner = OffPolicyRunner(small_config(200), tmp_path / "run", console=False)
    algo, replay = runner.algo, runner.buffer
    assert isinstance(algo, RecurrentSAC) and isinstance(replay, SequenceReplay)
    recorder = Recorder(algo.acting_policy())
    rollout = runner.collector.collect(recorder, np.random.default_rng(0), 70)
    assert rollout.episode_starts is not None and rollout.episode_starts[1:].any()  # an episode starts inside
    replay.add_rollout(rollout)
    means, log_stds = np.stack(recorder.means), np.stack(recorder.log_stds)
    first, count = replay.start_range()
    split = algo.actor.core.state_size
    with torch.no_grad():
        for slot in range(first, first + count):
            batch = replay.gather(np.full(2, slot), np.arange(2), torch.device("cpu"))
            h, _ = unroll(algo.actor.core, batch.obs, batch.states[:, :split], batch.starts, 0)
            k = slot * replay.stride
            for t in range(replay.length + 1):  # the head on the same [1, N, .] rows acting ran it on
                dist = algo.actor.head(h[t : t + 1])
                assert np.array_equal(dist.base.mean.numpy()[0], means[k + t]), (slot, t)
                assert np.array_equal(dist.base.log_std.numpy()[0], log_stds[k + t]), (slot, t)
    runner.close()


def random_batch(length: int, count: int, state_size: int, seed: int = 0) -> SequenceBatch:
    """``count`` sequences of ``length`` steps of random Pendulum-shaped data, an episode start inside."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.zeros(length + 1, count, dtype=torch.bool)
    starts[3, 0] = True
    valid = torch.ones(length, count, dtype=torch.bool)
    valid[2, 0] = False  # the autoreset step before that start
    return SequenceBatch(
        obs=torch.randn(length + 1, count, 3, generator=g),
        actions=torch.rand(length, count, 1, generator=g) * 2 - 1,
        rewards=-torch.rand(length, count, generator=g),
        terminated=torch.zeros(length, count),
        truncated=torch.zeros(length, count),
        starts=starts,
        mask=valid,
        states=torch.randn(count, state_size, generator=g),
    )


def sac_with(burn_in: int, seed: int = 3) -> RecurrentSAC:
    config = small_config(100, (f"sac.loop.burn_in={burn_in}",)).algo_config
    torch.manual_seed(seed)
    return RecurrentSAC(config, 3, ActionSpec("continuous", 1))


def update_once(algo: RecurrentSAC, batch: SequenceBatch) -> tuple[dict, dict]:
    torch.manual_seed(7)
    metrics = algo.update(batch, UpdateContext(progress=0.0, lr_scale=1.0, rng=np.random.default_rng(0)))
    params = {f"{n}.{k}": v.clone() for n, m in algo.modules().items() for k, v in m.state_dict().items()}
    return {k: float(v) for k, v in metrics.items()}, params


def test_burn_in_steps_carry_no_loss_and_reach_the_gradient_only_through_the_state() -> None:
    burn_in, length = 2, 6
    algo = sac_with(burn_in)
    batch = random_batch(length, 3, algo.state_size)
    batch = replace(batch, mask=torch.from_numpy(loss_mask(batch.mask.numpy(), burn_in)))
    assert not batch.mask[:burn_in].any()  # the loss over the burn-in steps is zero: no step of it is in the loss
    base_metrics, base_params = update_once(algo, batch)
    assert base_metrics["replay/loss_steps"] == 3 * (length - burn_in) - 1  # one invalid step after the burn-in
    # anything of the burn-in steps but their observations changes nothing: actions, rewards, flags
    noisy = replace(
        batch,
        actions=torch.cat((-batch.actions[:burn_in], batch.actions[burn_in:])),
        rewards=torch.cat((batch.rewards[:burn_in] + 100.0, batch.rewards[burn_in:])),
        terminated=torch.cat((torch.ones(burn_in, 3), batch.terminated[burn_in:])),
    )
    metrics, params = update_once(sac_with(burn_in), noisy)
    assert metrics == base_metrics and all(torch.equal(params[k], base_params[k]) for k in params)
    # the burn-in observations act through the state they leave: starting at step burn_in from that state, with
    # no burn-in, is the same gradient step bit for bit
    fresh = sac_with(burn_in)
    split = fresh.actor.core.state_size
    with torch.no_grad():
        _, actor_state = unroll(
            fresh.actor.core, batch.obs[:burn_in], batch.states[:, :split], batch.starts[:burn_in], 0
        )
        _, critic_state = unroll(
            fresh.critics.core, batch.obs[:burn_in], batch.states[:, split:], batch.starts[:burn_in], 0
        )
    later = SequenceBatch(
        obs=batch.obs[burn_in:],
        actions=batch.actions[burn_in:],
        rewards=batch.rewards[burn_in:],
        terminated=batch.terminated[burn_in:],
        truncated=batch.truncated[burn_in:],
        starts=batch.starts[burn_in:],
        mask=batch.mask[burn_in:],
        states=torch.cat((actor_state, critic_state), dim=1),
    )
    metrics, params = update_once(sac_with(0), later)
    assert metrics == base_metrics and all(torch.equal(params[k], base_params[k]) for k in params)


def test_zero_state_strategy_ignores_the_stored_state() -> None:
    config = small_config(100, ("sac.loop.recurrent_state=zero",)).algo_config
    torch.manual_seed(3)
    algo = RecurrentSAC(config, 3, ActionSpec("continuous", 1))
    batch = random_batch(6, 2, algo.state_size)
    actor, critic = algo.start_states(batch)
    assert not actor.any() and not critic.any()
    stored = sac_with(2)
    actor, critic = stored.start_states(batch)
    assert torch.equal(torch.cat((actor, critic), dim=1), batch.states)


def learner_state(runner: OffPolicyRunner) -> dict[str, torch.Tensor]:
    state = {}
    for name, module in runner.algo.modules().items():
        state.update({f"{name}.{k}": v.clone() for k, v in module.state_dict().items()})
    for name, optimizer in runner.algo.optimizers().items():
        for index, slots in optimizer.state_dict()["state"].items():
            state.update({f"optim.{name}.{index}.{slot}": torch.as_tensor(v).clone() for slot, v in slots.items()})
    return state


def test_resume_mid_episode_is_bit_exact_with_the_sequences_and_hidden_states(tmp_path) -> None:
    config = small_config(120, ("sac.loop.log_every=20",))
    uninterrupted = OffPolicyRunner(config, tmp_path / "a", console=False)
    uninterrupted.train()
    first = OffPolicyRunner(config, tmp_path / "b", console=False)
    first.train(stop_at_step=80)  # 40 steps per env: 10 steps into their second episode
    assert not first.collector.episode_start.any() and np.abs(first.collector.hidden).sum() > 0
    resumed = OffPolicyRunner(config, tmp_path / "b", resume=True, console=False)
    np.testing.assert_array_equal(resumed.collector.hidden, first.collector.hidden)
    assert resumed.buffer.written == first.buffer.written == 40
    resumed.train()
    assert resumed.step == uninterrupted.step == 120 and resumed.updates == uninterrupted.updates > 0
    expected, actual = learner_state(uninterrupted), learner_state(resumed)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(uninterrupted.buffer, name), getattr(resumed.buffer, name))
    np.testing.assert_array_equal(uninterrupted.collector.hidden, resumed.collector.hidden)
    for runner in (uninterrupted, first, resumed):
        runner.close()


def test_the_guard_sees_a_drill_on_a_recurrent_run(tmp_path) -> None:
    runner = OffPolicyRunner(small_config(80, ("guard.inject=[nan_grad@50]",)), tmp_path / "run", console=False)
    runner.train()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert max(row[names.NONFINITE_STEPS] for row in rows) > 0  # the NaN gradients were dropped and counted
    assert all(row[names.PARAMS_FINITE] == 1.0 for row in rows)
    assert {"q/mean", "q/td_error", "train/alpha"} <= set(rows[-1])  # what the off-policy rules read
    runner.close()


def test_predict_eval_and_exports_carry_the_state_step_by_step(tmp_path, capsys) -> None:
    import onnxruntime

    from pgrad.api import SAC as AgentSAC
    from pgrad.cli import main
    from pgrad.envs import make_vector_env
    from pgrad.export import export

    sets = [s for s in SMALL if not s.startswith("env.")]
    agent = AgentSAC(
        "Pendulum-v1",
        config={"run": {"tensorboard": False, "progress": False}, "env": {"mask_velocity": True, "num_envs": 2}},
        sets=sets,
        run_dir=tmp_path / "agent",
        use_preset=False,
    )
    agent.learn(60)
    assert agent.policy.recurrent
    onnx_file, manifest = export(tmp_path / "agent", "onnx")
    script_file, _ = export(tmp_path / "agent", "torchscript")
    assert [i["name"] for i in json.loads(manifest.read_text())["inputs"]] == ["observation", "state", "episode_start"]
    session = onnxruntime.InferenceSession(str(onnx_file))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        script = torch.jit.load(str(script_file))
    envs = make_vector_env(EnvConfig(id="Pendulum-v1", num_envs=2, mask_velocity=True))
    obs, _ = envs.reset(seed=0)
    state, onnx_state = None, np.zeros((2, agent.policy.actor.state_size), np.float32)
    script_state, starts = torch.from_numpy(onnx_state), np.ones(2, bool)
    for _ in range(8):
        action, state = agent.predict(obs, state=state, episode_start=starts)
        inputs = {"observation": obs.astype(np.float32), "state": onnx_state, "episode_start": starts}
        onnx_action, onnx_state = session.run(None, inputs)
        script_action, script_state = script(
            torch.from_numpy(obs.astype(np.float32)), script_state, torch.from_numpy(starts)
        )
        for exported, exported_state in ((onnx_action, onnx_state), (script_action.numpy(), script_state.numpy())):
            np.testing.assert_allclose(exported, action, rtol=0, atol=1e-5)
            np.testing.assert_allclose(exported_state, state, rtol=0, atol=1e-5)
        assert np.abs(state).sum() > 0
        obs, _, _, _, _ = envs.step(action)
        starts = np.zeros(2, bool)
    envs.close()
    assert main(["eval", str(tmp_path / "agent"), "--episodes", "2"]) == 0
    assert "return" in capsys.readouterr().out.lower()


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (["ddpg.network.recurrent=lstm"], "ddpg.network.recurrent must be null for ddpg"),
        (["td3.network.recurrent=gru"], "td3.network.recurrent must be null for td3"),
        (["sac.network.recurrent=lstm", "run.backend=ray"], "run.backend must be 'local' with network.recurrent"),
        (["sac.network.recurrent=rnn"], "network.recurrent"),
        (["sac.network.recurrent=lstm", "sac.network.recurrent_size=0"], "recurrent_size"),
        (["sac.network.recurrent=lstm", "sac.network.sequence_length=0"], "sequence_length"),
        (["sac.network.recurrent=lstm", "sac.loop.burn_in=-1"], "loop.burn_in must be"),
        (["sac.network.recurrent=lstm", "sac.loop.sequence_stride=0"], "loop.sequence_stride must be"),
        (["sac.network.recurrent=lstm", "sac.loop.sequence_stride=30"], "sequence_stride must be at most"),
        (["sac.network.recurrent=lstm", "sac.loop.recurrent_state=last"], "recurrent_state"),
        (["sac.network.recurrent=lstm", "sac.loop.buffer_size=20"], "loop.buffer_size must hold at least"),
        (["sac.network.recurrent=lstm", "sac.network.torso=a.b:C"], "torso must be null with network.recurrent"),
        (["sac.loop.burn_in=4"], "sac.loop.burn_in needs sac.network.recurrent"),
        (["sac.loop.recurrent_state=zero"], "sac.loop.recurrent_state needs sac.network.recurrent"),
        (["sac.loop.sequence_stride=2"], "sac.loop.sequence_stride needs sac.network.recurrent"),
    ],
)
def test_bad_values_are_refused_in_one_line(sets, expected) -> None:
    algo = sets[0].split(".")[0]
    with pytest.raises(ConfigError) as error:
        resolve_config(algo, "Pendulum-v1", sets=sets, use_preset=False)
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_prioritized_replay_with_a_recurrent_sac_is_refused_in_one_line():
    """The sequence replay draws uniformly: loop.replay=prioritized with network.recurrent is refused, not ignored."""
    from pgrad.runs import resolve_config

    with pytest.raises(ConfigError, match=r"sac.loop.replay must be 'uniform' with network.recurrent") as caught:
        resolve_config("sac", "Pendulum-v1", sets=["sac.network.recurrent=lstm", "sac.loop.replay=prioritized"])
    assert "\n" not in str(caught.value)
