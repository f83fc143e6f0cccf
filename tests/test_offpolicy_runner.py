"""The off-policy loop end to end: bit-exact resume with the replay buffer, resume without it, the CLI
(train, eval, resume, list, Ctrl-C), and clear errors for bad configs and discrete-action envs."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from pgrad.cli import main
from pgrad.errors import ConfigError
from pgrad.runners import runner_for
from pgrad.runners.off_policy import OffPolicyRunner
from pgrad.runs import resolve_config

QUIET = ["run.progress=false", "run.tensorboard=false"]
SMALL = {
    algo: [
        f"{algo}.network.hidden_sizes=[32, 32]",
        f"{algo}.loop.batch_size=32",
        f"{algo}.loop.learning_starts=200",
        f"{algo}.loop.log_every=200",
    ]
    for algo in ("sac", "td3", "ddpg")
}


def small_config(algo: str, total: int, extra: list[str] = ()):
    sets = [*QUIET, "env.num_envs=2", "run.checkpoint_every=1000000", *SMALL[algo], *extra]
    config, _ = resolve_config(algo, "Pendulum-v1", sets=sets, total_steps=total)
    return config


def learner_state(runner: OffPolicyRunner) -> dict[str, torch.Tensor]:
    state = {}
    for name, module in runner.algo.modules().items():
        state.update({f"{name}.{k}": v.clone() for k, v in module.state_dict().items()})
    for name, optimizer in runner.algo.optimizers().items():
        for index, slots in optimizer.state_dict()["state"].items():
            state.update({f"optim.{name}.{index}.{slot}": torch.as_tensor(v).clone() for slot, v in slots.items()})
    return state


@pytest.mark.parametrize(
    ("algo", "extra"),
    [
        ("sac", []),
        ("td3", ["td3.exploration_noise=ornstein_uhlenbeck"]),
        ("ddpg", []),
    ],
)
def test_resume_is_bit_exact_including_the_replay_buffer(tmp_path, algo, extra):
    config = small_config(algo, 1200, extra)
    assert runner_for(config) is OffPolicyRunner
    uninterrupted = OffPolicyRunner(config, tmp_path / "a", console=False)
    uninterrupted.train()

    first = OffPolicyRunner(config, tmp_path / "b", console=False)
    first.train(stop_at_step=600)  # as if killed right after a checkpoint
    assert first.step == 600
    resumed = OffPolicyRunner(config, tmp_path / "b", resume=True, console=False)
    assert resumed.buffer.size == first.buffer.size > 0
    resumed.train()

    assert resumed.step == uninterrupted.step == 1200
    assert resumed.updates == uninterrupted.updates
    expected, actual = learner_state(uninterrupted), learner_state(resumed)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    size = uninterrupted.buffer.size
    assert (
        resumed.buffer.size == size == 1200 - 4
    )  # the two envs' autoreset steps after steps 200 and 400 are not stored
    for field in ("obs", "next_obs", "actions", "rewards", "terminated", "truncated"):
        np.testing.assert_array_equal(
            getattr(uninterrupted.buffer, field)[:size], getattr(resumed.buffer, field)[:size]
        )
    assert uninterrupted.rng.bit_generator.state == resumed.rng.bit_generator.state
    rows_a = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b] == [200, 400, 600, 800, 1000, 1200]
    assert rows_a[-1]["q/mean"] == rows_b[-1]["q/mean"]


def test_resume_without_the_saved_buffer_refills_it_and_says_so(tmp_path, capsys):
    config = small_config("sac", 1000, ["sac.loop.save_buffer=false"])
    first = OffPolicyRunner(config, tmp_path / "run", console=False)
    first.train(stop_at_step=400)
    resumed = OffPolicyRunner(config, tmp_path / "run", resume=True, console=False)
    assert resumed.buffer.size == 0 and resumed.refill_target == 200
    assert "holds no replay buffer" in capsys.readouterr().err
    resumed.train()
    # 600 env steps, less the autoreset steps of the two envs after steps 400 and 800 (not stored)
    assert resumed.step == 1000 and resumed.buffer.size == 596
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert any(e["kind"] == "run.replay_refill" for e in events)
    # 300 rounds of 2 envs; updates paused until the buffer held 200 transitions again: rounds 1 (autoreset,
    # nothing stored) to 100 hold 198, so rounds 101..300 update, 2 gradient steps each (one per env step)
    assert resumed.updates == first.updates + 2 * 200


def test_metrics_rows_hold_the_off_policy_diagnostics(tmp_path):
    runner = OffPolicyRunner(small_config("sac", 600), tmp_path / "run", console=False)
    runner.train()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    for key in (
        "q/mean",
        "q/min",
        "q/max",
        "q/td_error",
        "train/alpha",
        "train/entropy",
        "train/actor_loss",
        "train/critic_loss",
        "diagnostics/actor_grad_norm",
        "diagnostics/critic_grad_norm",
        "replay/fill",
        "train/update_to_data",
        "perf/steps_per_second",
        "perf/env_seconds",
        "perf/update_seconds",
    ):
        assert key in last, key
    assert last["q/min"] <= last["q/mean"] <= last["q/max"]
    assert last["train/update_to_data"] == pytest.approx(1.0)  # 2 gradient steps per round of 2 envs (-1)
    # 600 env steps less the autoreset step of each env after step 400 (the end of the first episodes)
    assert last["replay/size"] == 598 and last["replay/fill"] == pytest.approx(598 / 1_000_000)
    assert "q/mean" not in rows[0]  # the first row is all random actions (learning_starts 200)
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    allocated = next(e for e in events if e["kind"] == "replay.allocated")
    assert allocated["bytes"] == 1_000_000 * (8 * 4 + 2)
    assert not any(e["kind"].startswith(("warning.", "critical.")) for e in events), events


def test_train_eval_list_through_the_cli(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "td3", "--env", "Pendulum-v1", "--total-steps", "400", "--run-dir", str(run), "--quiet"]
    sets = [*QUIET, "env.num_envs=1", *SMALL["td3"]]
    assert main([*args, *[item for s in sets for item in ("--set", s)]]) == 0
    assert (run / "checkpoints" / "step_0000000400").is_dir()
    capsys.readouterr()
    assert main(["eval", str(run), "--episodes", "2", "--deterministic"]) == 0
    assert "evaluation (deterministic, 2 episodes, step_0000000400): mean return" in capsys.readouterr().out
    assert main(["resume", str(run), "--total-steps", "600", "--quiet"]) == 0
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 600
    capsys.readouterr()
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for text in (
        "sac:",
        "td3:",
        "ddpg:",
        "loop.buffer_size",
        "target_policy_noise",
        "alpha_init",
        "(SB3: 0.005)",
        "network.hidden_sizes",
    ):
        assert text in out, text


def test_sigint_checkpoints_and_exits_130(tmp_path):
    run = tmp_path / "run"
    sets = [*QUIET, "env.num_envs=1", *SMALL["sac"]]
    process = subprocess.Popen(
        [sys.executable, "-m", "pgrad", "train", "sac", "--env", "Pendulum-v1", "--total-steps", "1000000"]
        + ["--run-dir", str(run), "--quiet", *[item for s in sets for item in ("--set", s)]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline and not (run / "metrics.jsonl").exists():
        time.sleep(0.2)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert events[-1]["kind"] == "run.interrupted"
    assert (run / "checkpoints" / f"step_{events[-1]['step']:010d}").is_dir()


def run_cli(capsys, *args):
    code = main(list(args))
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize(
    ("algo", "sets", "expected"),
    [
        ("sac", ["sac.tau=0"], "sac.tau must be in (0, 1]; got 0.0"),
        ("sac", ["sac.alpha=-1"], "sac.alpha must be >= 0; got -1.0"),
        ("sac", ["sac.alpha=big"], "sac.alpha must be a number or one of 'auto'; got 'big'"),
        ("sac", ["loop.batch_size=0"], "sac.loop.batch_size must be in [1, 1048576]; got 0"),
        ("td3", ["td3.policy_delay=0"], "td3.policy_delay must be in [1, 1048576]; got 0"),
        (
            "td3",
            ["td3.exploration_noise=pink"],
            "td3.exploration_noise must be one of 'gaussian', 'ornstein_uhlenbeck', 'none'; got 'pink'",
        ),
        ("ddpg", ["learning_rate=0"], "ddpg.optimizer.learning_rate must be > 0; got 0.0"),
        ("ddpg", ["env.norm_obs=true"], "env.norm_obs must be false for ddpg"),
        ("sac", ["env.norm_reward=true"], "env.norm_reward must be false for sac"),
    ],
)
def test_bad_config_values_name_the_field(capsys, tmp_path, algo, sets, expected):
    args = ["train", algo, "--env", "Pendulum-v1", "--run-dir", str(tmp_path / "run")]
    code, err = run_cli(capsys, *args, *[item for s in sets for item in ("--set", s)])
    assert code == 2 and err.startswith("pgrad: error: ") and len(err.splitlines()) == 1
    assert expected in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("algo", ["sac", "td3", "ddpg"])
def test_discrete_action_env_is_refused(capsys, tmp_path, algo):
    code, err = run_cli(capsys, "train", algo, "--env", "CartPole-v1", "--run-dir", str(tmp_path / "run"))
    assert code == 2
    assert f"algorithm '{algo}' does not support discrete actions of CartPole-v1 (it supports: continuous)" in err
    assert not (tmp_path / "run").exists()


def test_report_draws_the_off_policy_panels(tmp_path):
    pytest.importorskip("matplotlib")
    from pgrad.monitor.report import OFF_POLICY_PANELS, report

    OffPolicyRunner(small_config("sac", 600), tmp_path / "run", console=False).train()
    _, panels = report(tmp_path / "run")
    assert [p.name for p in panels] == [name for name, _, _ in OFF_POLICY_PANELS]
    q_panel = panels[1]
    steps, values = q_panel.series["q/mean"]
    assert list(steps) == [400.0, 600.0] and np.isfinite(values).all()  # the first row had no update yet
    assert set(q_panel.series) == {"q/mean", "q/min", "q/max"}


def test_train_freq_and_gradient_steps_set_the_update_to_data_ratio(tmp_path):
    config = small_config("td3", 800, ["td3.loop.train_freq=4", "td3.loop.gradient_steps=2"])
    runner = OffPolicyRunner(config, tmp_path / "run", console=False)
    runner.train()
    # rounds of 4 steps x 2 envs = 8 env steps, 2 gradient steps each; updates once step > 200
    assert runner.updates == 2 * (800 - 200) // 8
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["train/update_to_data"] == pytest.approx(0.25)
    assert last["train/gradient_steps"] == runner.updates


def test_by_default_there_is_one_gradient_step_per_env_step_whatever_the_number_of_envs(tmp_path):
    config = small_config("sac", 800, ["env.num_envs=4", "sac.loop.train_freq=2"])
    assert config.algo_config.loop.gradient_steps == -1
    runner = OffPolicyRunner(config, tmp_path / "run", console=False)
    runner.train()
    # rounds of 2 steps x 4 envs = 8 env steps, 8 gradient steps each; updates once step > 200
    assert runner.updates == 800 - 200
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["train/update_to_data"] == pytest.approx(1.0)


@pytest.mark.parametrize("algo", ["sac", "td3", "ddpg"])
def test_replay_algorithms_default_to_one_env_as_sb3_and_the_user_can_raise_it(algo):
    config, _ = resolve_config(algo, "HalfCheetah-v5", use_preset=False)
    assert config.env.num_envs == 1  # the shared default (8) is the on-policy family's
    config, _ = resolve_config(algo, "HalfCheetah-v5", sets=["env.num_envs=4"], use_preset=False)
    assert config.env.num_envs == 4
    assert resolve_config("ppo", "HalfCheetah-v5", use_preset=False)[0].env.num_envs == 8


@pytest.mark.parametrize("value", ["0", "-2"])
def test_gradient_steps_other_than_minus_one_or_positive_is_refused_naming_the_field(value):
    with pytest.raises(ConfigError, match=r"gradient_steps.*-1 \(one per env step of the round\) or an integer >= 1"):
        resolve_config("sac", "Pendulum-v1", sets=[f"sac.loop.gradient_steps={value}"])


def test_domain_randomisation_resumes_exactly_and_logs_its_draws(tmp_path):
    """SAC on Hopper-v5 with env.randomize: draws logged per episode as on-policy, evaluation on the
    nominal physics, and a resume bit-exact, the randomiser's state and the replay buffer included."""
    pytest.importorskip("mujoco")
    sets = [
        *QUIET,
        "env.num_envs=2",
        "env.max_episode_steps=50",
        "run.checkpoint_every=1000000",
        "sac.network.hidden_sizes=[32, 32]",
        "sac.loop.batch_size=32",
        "sac.loop.learning_starts=100",
        "sac.loop.log_every=200",
        "randomize.mass=0.2",
        "randomize.action_delay=2",
    ]
    config, _ = resolve_config("sac", "Hopper-v5", sets=sets, total_steps=600, use_preset=False)
    uninterrupted = OffPolicyRunner(config, tmp_path / "a", console=False)
    uninterrupted.train()
    first = OffPolicyRunner(config, tmp_path / "b", console=False)
    first.train(stop_at_step=400)
    resumed = OffPolicyRunner(config, tmp_path / "b", resume=True, console=False)
    resumed.train()
    expected, actual = learner_state(uninterrupted), learner_state(resumed)
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    logged = [(tmp_path / run / "randomization.jsonl").read_text().splitlines() for run in ("a", "b")]
    assert logged[0] == logged[1] and len(logged[0]) >= 2
    metrics = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert any("randomize/mass_scale_mean" in row for row in metrics)
    assert "eval/return_mean" in metrics[-1]  # evaluated (on nominal physics) at the end
