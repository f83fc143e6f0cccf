"""The algorithms' nested network/optimizer sections as a user sees them (--set paths, layers,
errors, pgrad list), configs saved before the nesting, static TRPO/NPG configs, and run.device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pgrad.algos.a3c import A3C, A3CConfig
from pgrad.algos.actor_critic import ActorCriticAlgorithm, ActorCriticConfig
from pgrad.algos.contract import UpdateContext
from pgrad.algos.ppo import PPOConfig
from pgrad.algos.trpo import NaturalGradientConfig, NPGConfig, TRPOConfig
from pgrad.algos.upgrade import upgrade_algo_section
from pgrad.config import NetworkConfig, OptimizerConfig, RunConfig, field_docs
from pgrad.errors import ConfigError
from pgrad.nets import ActionSpec
from pgrad.presets import PRESETS
from pgrad.rollout import Batch
from pgrad.runners.on_policy import OnPolicyRunner
from pgrad.runs import config_from_dict, resolve_config


@pytest.mark.parametrize("key", ["hidden_sizes", "network.hidden_sizes", "ppo.network.hidden_sizes"])
def test_a_nested_field_is_set_by_its_name_its_section_or_its_full_path(key):
    config, _ = resolve_config("ppo", "CartPole-v1", sets=[f"{key}=[32, 16]"])
    assert config.algo_config.network == NetworkConfig(hidden_sizes=(32, 16))


def test_setting_one_optimizer_field_keeps_the_presets_others():
    # The CartPole preset sets optimizer.learning_rate 1e-3 and anneal_lr; --set touches eps alone.
    config, _ = resolve_config("ppo", "CartPole-v1", sets=["optimizer.eps=1e-8"])
    assert config.algo_config.optimizer == OptimizerConfig(learning_rate=1e-3, anneal_lr=True, eps=1e-8)
    default, _ = resolve_config("ppo", "CartPole-v1", sets=["optimizer.eps=1e-8"], use_preset=False)
    assert default.algo_config.optimizer == OptimizerConfig(learning_rate=3e-4, anneal_lr=True, eps=1e-8)


@pytest.mark.parametrize(
    ("algo", "sets", "message"),
    [
        ("ppo", ["activation=sigmoid"], "ppo.network.activation must be one of 'tanh', 'relu', 'Tanh', 'ReLU'"),
        ("ppo", ["learning_rate=-0.001"], "ppo.optimizer.learning_rate must be > 0; got -0.001"),
        ("reinforce", ["value_optimizer.eps=0"], "reinforce.value_optimizer.eps must be > 0; got 0.0"),
        ("a2c", ["optimizer.kind=sgd"], "a2c.optimizer.kind must be one of 'adam', 'rmsprop'; got 'sgd'"),
        ("ppo", ["network.widths=[3]"], "unknown key 'ppo.network.widths'"),
        ("ppo", ["network=3"], "ppo.network must be a mapping of network settings; got 3"),
        (
            "actor_critic",
            ["learning_rate=0.01"],
            "key 'learning_rate' in --set is ambiguous; use one of actor_critic.optimizer.learning_rate, "
            "actor_critic.critic_optimizer.learning_rate",
        ),
        ("trpo", ["shared_network=true"], "trpo.network.shared_network must be false"),
        ("npg", ["minibatch_size=100"], "npg.minibatch_size must divide the batch"),
        ("ppo", ["run.device=gpu"], "run.device must be 'cpu', 'cuda' or 'cuda:N'; got 'gpu'"),
    ],
)
def test_errors_name_the_full_path(algo, sets, message):
    with pytest.raises(ConfigError) as error:
        resolve_config(algo, "CartPole-v1", sets=sets)
    assert message in str(error.value)
    assert len(str(error.value).splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_a_cuda_device_is_refused_where_torch_has_none():
    with pytest.raises(ConfigError, match=r"run.device must be 'cpu' here \(torch.cuda.is_available\(\) is false"):
        RunConfig(device="cuda:0")


def test_a3c_refuses_a_device_other_than_the_cpu():
    with pytest.raises(ConfigError, match="run.device must be 'cpu' for a3c"):
        A3C(A3CConfig(), 4, ActionSpec("discrete", 2), "cuda:0")


def test_device_cpu_runs_end_to_end(tmp_path):
    config, _ = resolve_config(
        "ppo",
        "CartPole-v1",
        sets=["run.device=cpu", "run.progress=false", "run.tensorboard=false"],
        total_steps=512,
    )
    trainer = OnPolicyRunner(config, tmp_path, console=False)
    result = trainer.train()
    assert result.steps == 512 and config.run.device == "cpu"
    assert all(p.device.type == "cpu" for p in trainer.algo.model.parameters())
    assert trainer.algo.gradient_backend == "numpy"
    assert "device: cpu" in (tmp_path / "config.yaml").read_text()


@pytest.mark.parametrize(("algo", "env_id"), sorted(PRESETS))
def test_saved_configs_load_back_equal(algo, env_id):
    config, _ = resolve_config(algo, env_id)
    data = config.to_dict()
    assert isinstance(data[algo]["network"], dict)
    assert any(isinstance(data[algo].get(name), dict) for name in ("optimizer", "value_optimizer"))
    assert config_from_dict({k: v for k, v in data.items() if k != "algo"}, algo) == config


def test_an_old_flat_section_upgrades_to_the_nested_layout():
    old_ppo = {
        "num_steps": 32,
        "learning_rate": 1e-3,
        "anneal_lr": True,
        "adam_eps": 1e-5,
        "hidden_sizes": [64, 64],
        "activation": "tanh",
        "shared_network": False,
        "log_std_init": 0.0,
        "state_dependent_std": False,
        "hand_gradients": True,
    }
    new = upgrade_algo_section("ppo", old_ppo)
    assert new == {
        "num_steps": 32,
        "optimizer": {"learning_rate": 1e-3, "anneal_lr": True, "eps": 1e-5},
        "network": {
            "hidden_sizes": [64, 64],
            "activation": "tanh",
            "shared_network": False,
            "log_std_init": 0.0,
            "state_dependent_std": False,
        },
        "gradient_backend": "auto",
    }
    assert "learning_rate" in old_ppo  # the input is left alone
    assert upgrade_algo_section("ppo", new) == new  # the new layout passes through
    assert upgrade_algo_section(
        "a2c", {"optimizer": "adam", "optimizer_eps": 1e-7, "rms_alpha": 0.9, "hand_gradients": False}
    ) == {"optimizer": {"kind": "adam", "eps": 1e-7, "rms_alpha": 0.9}, "gradient_backend": "autograd"}
    critic = upgrade_algo_section(
        "actor_critic", {"actor_learning_rate": 1e-3, "critic_learning_rate": 5e-3, "adam_eps": 1e-6}
    )
    assert critic == {
        "optimizer": {"learning_rate": 1e-3, "eps": 1e-6},
        "critic_optimizer": {"learning_rate": 5e-3, "eps": 1e-6},
    }
    assert upgrade_algo_section("trpo", {"learning_rate": 2e-3})["value_optimizer"] == {"learning_rate": 2e-3}
    assert upgrade_algo_section("reinforce", {"value_learning_rate": 2e-3}) == {
        "value_optimizer": {"learning_rate": 2e-3}
    }
    built = config_from_dict({"ppo": new}, "ppo").algo_config
    assert built.optimizer == OptimizerConfig(learning_rate=1e-3, anneal_lr=True, eps=1e-5)


def test_list_shows_nested_fields_with_each_algorithms_defaults():
    from pgrad.algos.a2c import A2CConfig

    rows = {name: default for name, default, _ in field_docs(A2CConfig)}
    assert rows["optimizer.kind"] == "rmsprop" and rows["optimizer.learning_rate"] == 7e-4
    assert rows["network.hidden_sizes"] == (64, 64)
    assert {name for name, _, _ in field_docs(PPOConfig)} >= {"network.activation", "optimizer.eps", "clip_eps"}


def test_trpo_and_npg_configs_are_static_classes_differing_only_in_defaults():
    assert issubclass(TRPOConfig, NaturalGradientConfig) and issubclass(NPGConfig, NaturalGradientConfig)
    assert (TRPOConfig().line_search, TRPOConfig().max_kl) == (True, 0.01)
    assert (NPGConfig().line_search, NPGConfig().max_kl) == (False, 0.005)
    trpo, npg = TRPOConfig().to_dict(), NPGConfig().to_dict()
    assert list(trpo) == list(npg)
    assert {k for k in trpo if trpo[k] != npg[k]} == {"line_search", "max_kl"}


def test_every_optimizer_is_scheduled_now_actor_critic_included():
    config = ActorCriticConfig(
        optimizer={"anneal_lr": True, "learning_rate": 1e-3},
        critic_optimizer={"kind": "rmsprop", "learning_rate": 4e-3},
    )
    algo = ActorCriticAlgorithm(config, 3, ActionSpec("discrete", 2))
    assert isinstance(algo.critic_optimizer, torch.optim.RMSprop)
    n = 4
    batch = Batch(
        torch.zeros(n, 3),
        torch.zeros(n, dtype=torch.long),
        torch.zeros(n),
        torch.zeros(n),
        torch.ones(n),
        torch.ones(n),
        torch.ones(n),
    )
    metrics = algo.update(batch, UpdateContext(progress=0.5, lr_scale=0.5, rng=np.random.default_rng(0)))
    assert metrics["train/actor_learning_rate"] == pytest.approx(1e-3 * 0.5 * 0.5)
    assert metrics["train/critic_learning_rate"] == pytest.approx(4e-3 * 0.5)
    assert algo.actor_optimizer.param_groups[0]["lr"] == pytest.approx(2.5e-4)
