"""Domain randomisation (pgrad.envs.randomize): ranges, seeding, the MuJoCo model really changed, no
compounding, action delay, observation noise, curriculum, exact resume, config errors."""

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from pgrad.config import EnvConfig, RandomizeConfig
from pgrad.errors import ConfigError

pytest.importorskip("mujoco")

from pgrad.envs import state as env_state  # noqa: E402
from pgrad.envs.factory import make_vector_env  # noqa: E402
from pgrad.envs.randomize import DomainRandomization, draw_metrics  # noqa: E402

PHYSICS = {"mass": 0.2, "friction": 0.5, "damping": 0.3, "actuator_gain": 0.1}


def randomized(env_id: str = "Hopper-v5", inner: gym.Wrapper | None = None, **fields) -> DomainRandomization:
    return DomainRandomization(inner or gym.make(env_id), RandomizeConfig(**fields))


def nominal_model(env_id: str = "Hopper-v5"):
    return gym.make(env_id).unwrapped.model


def scales(env: DomainRandomization) -> dict[str, np.ndarray]:
    return {"mass": env.mass_scale, "friction": env.friction_scale, "damping": env.damping_scale,
            "actuator_gain": env.actuator_gain_scale}  # fmt: skip


def test_draws_stay_in_their_ranges_and_reach_their_ends():
    env = randomized(**PHYSICS)
    env.reset(seed=0)
    drawn = {name: [] for name in PHYSICS}
    for _ in range(150):
        env.reset()
        for name, scale in scales(env).items():
            drawn[name].append(scale.copy())
    for name, half_width in PHYSICS.items():
        values = np.concatenate(drawn[name])
        assert values.min() >= 1 - half_width and values.max() <= 1 + half_width, name
        # uniform over the whole range, not a narrower one: both ends are approached
        assert values.min() < 1 - 0.9 * half_width and values.max() > 1 + 0.9 * half_width, name
        assert abs(values.mean() - 1) < 0.1 * half_width, name


def test_an_explicit_range_and_a_fixed_scale():
    env = randomized(mass=[1.3, 1.3], friction=[0.5, 0.7])
    env.reset(seed=1)
    np.testing.assert_array_equal(env.mass_scale, 1.3)
    assert ((env.friction_scale >= 0.5) & (env.friction_scale <= 0.7)).all()
    np.testing.assert_array_equal(env.damping_scale, 1.0)  # off: untouched


def draw_sequence(seed: int, episodes: int = 5) -> list[np.ndarray]:
    env = randomized(**PHYSICS, action_delay=3)
    sequence = []
    env.reset(seed=seed)
    for _ in range(episodes):
        sequence.append(np.concatenate([*scales(env).values(), [env.action_delay]]))
        env.reset()  # later episodes continue the generator
    return sequence


def test_draws_are_reproducible_per_seed_and_differ_across_seeds():
    first, again, other = draw_sequence(7), draw_sequence(7), draw_sequence(8)
    for x, y in zip(first, again, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not any(np.array_equal(x, y) for x, y in zip(first, other, strict=True))


@pytest.mark.parametrize("env_id", ["Hopper-v5", "HalfCheetah-v5"])
def test_draws_are_written_into_the_model_from_nominal_values_and_never_compound(env_id):
    nominal = nominal_model(env_id)
    env = randomized(env_id, **PHYSICS)
    model = env.unwrapped.model
    env.reset(seed=3)
    for _ in range(20):  # compounding would drift the model away from nominal x this episode's scale
        env.reset()
        env.step(env.action_space.sample())
        s = scales(env)
        np.testing.assert_allclose(model.body_mass, nominal.body_mass * s["mass"], rtol=1e-12)
        np.testing.assert_allclose(model.body_inertia, nominal.body_inertia * s["mass"][:, None], rtol=1e-12)
        np.testing.assert_allclose(model.geom_friction, nominal.geom_friction * s["friction"][:, None], rtol=1e-12)
        np.testing.assert_allclose(model.dof_damping, nominal.dof_damping * s["damping"], rtol=1e-12)
        np.testing.assert_allclose(model.actuator_gear, nominal.actuator_gear * s["actuator_gain"][:, None], rtol=1e-12)
    assert not np.allclose(model.body_mass[1:], nominal.body_mass[1:])  # something was drawn at all


def test_the_physics_really_changes():
    """Heavier bodies fall differently: the same actions from the same state give other observations."""
    light, heavy = randomized(mass=[0.5, 0.5]), randomized(mass=[1.5, 1.5])
    observations = []
    for env in (light, heavy):
        env.reset(seed=0)
        for _ in range(20):
            obs = env.step(np.full(3, 0.5, np.float32))[0]
        observations.append(obs)
    assert not np.allclose(*observations)


class RecordActions(gym.Wrapper):
    """Between the randomiser and the env: what the env was really given, and its clean observations."""

    def __init__(self, env):
        super().__init__(env)
        self.applied, self.clean = [], []

    def step(self, action):
        self.applied.append(np.array(action))
        result = self.env.step(action)
        self.clean.append(result[0])
        return result


def test_action_delay_applies_the_action_from_k_steps_earlier():
    recorder = RecordActions(gym.make("Hopper-v5"))
    env = randomized(inner=recorder, action_delay=[2, 2])
    env.reset(seed=0)
    chosen = [np.full(3, 0.1 * (t + 1), np.float32) for t in range(6)]
    for action in chosen:
        env.step(action)
    np.testing.assert_array_equal(recorder.applied[0], np.zeros(3))  # the neutral action until k steps passed
    np.testing.assert_array_equal(recorder.applied[1], np.zeros(3))
    for t in range(2, 6):
        np.testing.assert_array_equal(recorder.applied[t], chosen[t - 2])
    env.reset()  # a new episode does not apply the last episode's actions
    env.step(chosen[0])
    np.testing.assert_array_equal(recorder.applied[-1], np.zeros(3))


def test_observation_noise_has_the_configured_std():
    recorder = RecordActions(gym.make("Hopper-v5"))
    env = randomized(inner=recorder, obs_noise=0.1)
    env.reset(seed=0)
    noise = []
    for _ in range(300):
        obs, _, terminated, truncated, _ = env.step(np.zeros(3, np.float32))
        noise.append(obs - recorder.clean[-1])
        if terminated or truncated:
            env.reset()
    noise = np.concatenate(noise)
    assert abs(noise.std() - 0.1) < 0.005 and abs(noise.mean()) < 0.005


def test_curriculum_widens_linearly_from_its_start_fraction():
    env = DomainRandomization(
        gym.make("Hopper-v5"),
        RandomizeConfig(mass=0.4, action_delay=4, obs_noise=0.2, curriculum_steps=1000, curriculum_start=0.25),
        steps_per_env_step=2,  # two envs: one step of this env is two training steps
    )
    env.reset(seed=0)
    for env_steps, fraction in [(0, 0.25), (250, 0.625), (500, 1.0), (5000, 1.0)]:
        env.env_steps = env_steps
        assert env.current_fraction() == pytest.approx(fraction)
    env.env_steps = 0
    masses, delays = [], []
    for _ in range(100):
        env.reset()
        masses.append(env.mass_scale.copy())
        delays.append(env.action_delay)
    masses = np.concatenate(masses)  # f = 0.25: the range is [1 - 0.1, 1 + 0.1], the delay at most floor(1)
    assert masses.min() >= 0.9 and masses.max() <= 1.1 and masses.max() > 1.09
    assert set(delays) == {0, 1} and env.obs_noise == pytest.approx(0.05)
    env.env_steps = 250  # 500 training steps: f = 0.625, the range [0.75, 1.25]
    env.reset()
    assert env.range_fraction == pytest.approx(0.625)
    for _ in range(500):
        env.step(np.zeros(3, np.float32))
    env.reset()  # the wrapper counts its own steps: 750 x 2 >= 1000
    assert env.range_fraction == 1.0


@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_env_state_restore_continues_bit_exactly_with_the_draws_back_in_the_model(vectorization):
    config = EnvConfig(
        id="Hopper-v5",
        num_envs=2,
        vectorization=vectorization,
        randomize={**PHYSICS, "obs_noise": 0.05, "action_delay": 2},
    )
    first, copy = make_vector_env(config), make_vector_env(config)
    assert env_state.inexact_reason(first) is None  # every attribute of the wrapper is plain data
    first.reset(seed=3)
    first.action_space.seed(0)
    for _ in range(60):
        first.step(first.action_space.sample())
    saved = json.loads(json.dumps(env_state.capture(first)))
    copy.reset(seed=99)
    env_state.restore(copy, saved)
    for _ in range(150):  # episodes end and redraw on the way
        action = first.action_space.sample()
        for x, y in zip(first.step(action)[:4], copy.step(action)[:4], strict=True):
            np.testing.assert_array_equal(x, y)
    if vectorization == "sync":
        for env_a, env_b in zip(first.envs, copy.envs, strict=True):
            np.testing.assert_array_equal(env_a.unwrapped.model.body_mass, env_b.unwrapped.model.body_mass)
    first.close()
    copy.close()


def test_training_resume_is_bit_exact_with_randomisation(tmp_path):
    from pgrad.runners.on_policy import OnPolicyRunner
    from pgrad.runs import resolve_config

    sets = [
        "run.progress=false",
        "run.tensorboard=false",
        "run.checkpoint_every=1000000",
        "guard.eval_every=0",
        "env.num_envs=2",
        "ppo.num_steps=128",
        "ppo.num_epochs=2",
        "randomize.mass=0.2",
        "randomize.friction=0.5",
        "randomize.damping=0.3",
        "randomize.actuator_gain=0.1",
        "randomize.obs_noise=0.01",
        "randomize.action_delay=2",
        "randomize.curriculum_steps=1024",
        "randomize.curriculum_start=0.5",
    ]
    config, _ = resolve_config("ppo", "Hopper-v5", sets=sets, total_steps=1024, use_preset=False)
    uninterrupted = OnPolicyRunner(config, tmp_path / "a", console=False)
    uninterrupted.train()
    first = OnPolicyRunner(config, tmp_path / "b", console=False)
    first.train(stop_at_step=512)
    resumed = OnPolicyRunner(config, tmp_path / "b", resume=True, console=False)
    resumed.train()

    assert resumed.step == uninterrupted.step == 1024
    for name, tensor in uninterrupted.algo.model.state_dict().items():
        assert torch.equal(tensor, resumed.algo.model.state_dict()[name]), name
    # every episode's draws logged once, the same as without the interruption
    logged = [(tmp_path / run / "randomization.jsonl").read_text().splitlines() for run in ("a", "b")]
    assert logged[0] == logged[1] and len(logged[0]) > 10
    rows = [json.loads(line) for line in logged[0]]
    assert rows[0]["range_fraction"] == 0.5 and rows[-1]["range_fraction"] > 0.9
    metrics = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert 0.8 <= metrics[-1]["randomize/mass_scale_min"] <= metrics[-1]["randomize/mass_scale_max"] <= 1.2


def test_draw_metrics_summarise_the_episodes():
    draws = [
        {"env": 0, "mass": [0.9, 1.1], "action_delay": 1, "range_fraction": 1.0},
        {"env": 1, "mass": [1.0, 1.2], "action_delay": 2, "range_fraction": 1.0},
    ]
    metrics = draw_metrics(draws)
    assert metrics["randomize/mass_scale_mean"] == pytest.approx(1.05)
    assert metrics["randomize/mass_scale_min"] == 0.9 and metrics["randomize/mass_scale_max"] == 1.2
    assert metrics["randomize/action_delay_mean"] == 1.5 and metrics["randomize/episodes"] == 2
    assert "randomize/friction_scale_mean" not in metrics and draw_metrics([]) == {}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mass": 1.0}, r"env\.randomize\.mass must be a half-width in \[0, 1\) or a range \[low, high\]"),
        ({"friction": -0.1}, r"env\.randomize\.friction must be a half-width"),
        ({"damping": [1.2, 0.8]}, r"env\.randomize\.damping must be .* 0 < low <= high; got \(1\.2, 0\.8\)"),
        ({"actuator_gain": [0.0, 1.0]}, r"env\.randomize\.actuator_gain must be"),
        ({"mass": [0.9, 1.0, 1.1]}, r"env\.randomize\.mass must be"),
        ({"obs_noise": -1}, r"env\.randomize\.obs_noise must be >= 0"),
        ({"action_delay": -1}, r"env\.randomize\.action_delay must be a step count >= 0"),
        ({"action_delay": 1.5}, r"env\.randomize\.action_delay must be an integer"),
        ({"curriculum_steps": -5}, r"env\.randomize\.curriculum_steps must be >= 0"),
        ({"curriculum_start": 1.5}, r"env\.randomize\.curriculum_start must be in \[0, 1\]"),
        ({"mas": 0.2}, r"unknown key 'env\.randomize\.mas'; did you mean 'mass'"),
    ],
)
def test_bad_values_are_refused_naming_the_field(fields, message):
    with pytest.raises(ConfigError, match=message):
        EnvConfig(id="Hopper-v5", randomize=fields)


@pytest.mark.parametrize(
    ("env_id", "vectorization"), [("CartPole-v1", "auto"), ("Pendulum-v1", "sync"), ("Pendulum-v1", "async")]
)
def test_a_non_mujoco_env_is_refused_naming_the_field(env_id, vectorization):
    config = EnvConfig(id=env_id, num_envs=1, vectorization=vectorization, randomize={"friction": 0.3})
    with pytest.raises(ConfigError, match=rf"env\.randomize\.friction: .*{env_id} is not"):
        make_vector_env(config)


def test_off_by_default_adds_no_layer():
    envs = make_vector_env(EnvConfig(id="Hopper-v5", num_envs=1, vectorization="sync"))
    assert not any(isinstance(layer, DomainRandomization) for layer in env_state._chain(envs.envs[0]))
    envs.close()


# ---- robustness evaluation: pgrad eval --randomize ----------------------------------------------


@pytest.fixture(scope="module")
def hopper_run(tmp_path_factory):
    from pgrad.cli import main

    run_dir = tmp_path_factory.mktemp("robust") / "run"
    sets = ["env.num_envs=1", "ppo.num_steps=256", "ppo.num_epochs=1", "randomize.mass=0.2", "randomize.action_delay=1"]
    argv = ["train", "ppo", "--env", "Hopper-v5", "--no-preset", "--total-steps", "256", "--quiet"]
    assert main([*argv, "--run-dir", str(run_dir), *[f"--set={item}" for item in sets]]) == 0
    return run_dir


def test_eval_on_perturbed_physics(hopper_run, capsys):
    from pgrad.cli import main
    from pgrad.evaluate import evaluate

    assert main(["eval", str(hopper_run), "--episodes", "2", "--deterministic", "--randomize", "mass=1.3"]) == 0
    assert "evaluation (deterministic, physics mass x1.3, 2 episodes" in capsys.readouterr().out
    nominal = evaluate(hopper_run, episodes=2)  # the default is nominal physics, not the training ranges
    assert nominal.physics.active == []
    light = evaluate(hopper_run, episodes=2, physics=RandomizeConfig(mass=[0.5, 0.5]))
    again = evaluate(hopper_run, episodes=2, physics=RandomizeConfig(mass=[0.5, 0.5]))
    assert light.returns != nominal.returns and light.returns == again.returns


def test_parse_perturbation():
    from pgrad.envs.randomize import describe, parse_perturbation

    trained = RandomizeConfig(mass=0.2, action_delay=2, curriculum_steps=1000, curriculum_start=0.1)
    fixed = parse_perturbation(["mass=1.3", "friction=0.5:1.5", "obs_noise=0.05", "action_delay=2"], trained)
    assert fixed.scale_range("mass") == (1.3, 1.3) and fixed.scale_range("friction") == (0.5, 1.5)
    assert fixed.obs_noise == 0.05 and fixed.delay_range() == (2, 2)
    assert describe(fixed) == "mass x1.3, friction x[0.5, 1.5], obs_noise std 0.05, action_delay 2 steps"
    as_trained = parse_perturbation(["train"], trained)  # the full ranges: no curriculum at evaluation
    assert as_trained.scale_range("mass") == (0.8, 1.2) and as_trained.curriculum_steps == 0
    assert parse_perturbation(["train", "mass=1.5"], trained).scale_range("mass") == (1.5, 1.5)
    assert describe(RandomizeConfig()) == "nominal"
    for bad, message in [
        ("mass", "expected NAME=SCALE"),
        ("weight=1.2", "expected NAME=SCALE"),
        ("mass=abc", "is not a number"),
        ("mass=0:1", r"0 < LOW <= HIGH"),
        ("mass=1.2:0.8", r"0 < LOW <= HIGH"),
        ("action_delay=1.5", "whole number of steps"),
        ("obs_noise=0:1", "one number"),
        ("obs_noise=-1", r"--randomize: obs_noise must be >= 0"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_perturbation([bad], trained)


def test_list_shows_the_section_and_a_top_level_section_in_a_file_says_where_it_goes(capsys, tmp_path):
    from pgrad.cli import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "randomize.mass" in out and "randomize.curriculum_steps" in out
    config_file = tmp_path / "config.yaml"
    config_file.write_text("randomize:\n  mass: 0.2\n")
    assert main(["train", "ppo", "--env", "Hopper-v5", "--config", str(config_file)]) == 2
    assert "unknown section 'randomize' (allowed: env, run, ppo, guard, ray); 'randomize' belongs under 'env:'" in (
        capsys.readouterr().err
    )
