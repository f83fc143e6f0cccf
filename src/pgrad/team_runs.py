"""A multi-agent run folder read back: each agent's deployed policy, ``pgrad eval`` per agent and ``pgrad export``
of one file per agent.

Each agent's policy is a ``pgrad.export.Chain`` (its observation in, its env action out, deterministic): the
actor's layers, its head, the argmax or the Gaussian's mean, and for Box actions the linear map from [-1, 1] to
the bounds, then the clip. With shared parameters every agent has the shared actor; its one-hot id, appended to
the observation in training, is folded into the first layer's bias (b_j = b + W[obs_dim + j]), so an agent's
file takes that agent's raw observation alone. ``TeamPolicy.predict`` computes the same chain in NumPy:
the exported files equal it.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np

from pgrad import __version__, safe_io
from pgrad.algos.maddpg import MADDPGConfig, MADDPGLearner
from pgrad.algos.mappo import TeamLearner
from pgrad.checkpoint import CheckpointStore, inside_run, load_modules, read_train_state
from pgrad.config import TrainConfig, load_yaml
from pgrad.envs.multiagent import load_parallel_env, parallel_base
from pgrad.errors import ConfigError
from pgrad.export import FORMATS, Chain, onnx_model, torchscript_module
from pgrad.nets import NUMPY_ACTIVATIONS
from pgrad.registry import get_algorithm
from pgrad.runners import runner_for
from pgrad.runners.multi_agent import MultiAgentRunner, build_team, team_episodes
from pgrad.runs import load_run_config, resolve_config


def team_source(env: Any) -> tuple[str, Callable[..., Any] | None]:
    """What ``env.id`` records for a team env passed to ``train_team``, and the constructor to use for this process
    only (None: the id rebuilds it, so eval, export and resume work from the run folder).

    An id string, a PettingZoo task module (``from mpe2 import simple_spread_v3``: 'mpe2:simple_spread_v3'), or a
    ParallelEnv subclass or annotated function importable by name become ids; an instance (each copy a deep copy
    of it) or another callable is used as an object."""
    if isinstance(env, str):
        return env, None
    if isinstance(env, ModuleType) and "." in env.__name__:
        package, _, task = env.__name__.rpartition(".")
        load_parallel_env(f"{package}:{task}")
        return f"{package}:{task}", None
    if callable(env) and "<locals>" not in getattr(env, "__qualname__", "<locals>"):
        entry = f"{env.__module__}:{env.__qualname__}"
        try:
            load_parallel_env(entry)
            return entry, None
        except ConfigError:
            pass
    if isinstance(env, parallel_base()):
        instance = env
        return f"{type(env).__module__}:{type(env).__qualname__}", lambda **_: copy.deepcopy(instance)
    if callable(env):
        return f"{getattr(env, '__module__', '?')}:{getattr(env, '__qualname__', type(env).__name__)}", env
    raise ConfigError(
        f"env: expected a PettingZoo parallel env (an id, a task module, a class, a factory or an "
        f"instance); got {type(env).__name__}"
    )


def train_team(
    algo: str,
    env: Any,
    total_steps: int,
    run_dir: Path,
    sets: list[str] | None = None,
    seed: int | None = None,
    console: bool = False,
) -> MultiAgentRunner:
    """The Python API of a team run: ``train_team("mappo", simple_spread_v3, 100_000, Path("runs/spread"))`` trains
    on a PettingZoo env given as an id, a task module, a class, a factory or an instance; ``sets`` are ``--set``'s
    ``key=value`` items. Returns the runner (``runner.learner``, ``runner.step``); ``TeamPolicy.from_learner``
    gives the deployed policies."""
    if get_algorithm(algo).kind != "multi_agent":
        raise ConfigError(f"train_team trains a multi-agent algorithm (mappo, ippo, maddpg); got '{algo}'")
    env_id, make = team_source(env)
    config, _ = resolve_config(algo, env_id, sets=sets, seed=seed, total_steps=total_steps, check_env=make is None)
    runner: MultiAgentRunner = runner_for(config)(config, Path(run_dir), console=console, env_factory=make)
    runner.train()
    return runner


def is_team_run(run_dir: Path) -> bool:
    """Whether ``run_dir``'s config.yaml names a multi-agent algorithm (MAPPO, IPPO, MADDPG)."""
    path = Path(run_dir) / "config.yaml"
    if path.is_symlink() or not path.is_file():  # the single-agent path's checks say what is wrong with it
        return False
    try:
        algo = load_yaml(path).get("algo")
        return isinstance(algo, str) and get_algorithm(algo).kind == "multi_agent"
    except (ConfigError, OSError, AttributeError):
        return False


TeamLearners = TeamLearner | MADDPGLearner


def load_team(run_dir: Path, which: str, trust_env_code: bool) -> tuple[TrainConfig, TeamLearners, Path]:
    """The run's config, its learner with the ``which`` checkpoint's weights and value statistics, and that
    checkpoint's path. The env named in config.yaml is an entry point: ``trust_env_code`` as for any run."""
    config = load_run_config(run_dir, trust_env_code=trust_env_code)
    checkpoint = CheckpointStore(run_dir, config.run.keep_checkpoints).readable(which)
    state = read_train_state(checkpoint)
    envs = build_team(config, 1)
    envs.close()
    algo_config = config.algo_config
    learner: TeamLearners = (
        MADDPGLearner(algo_config, envs.spaces)
        if isinstance(algo_config, MADDPGConfig)
        else TeamLearner(algo_config, envs.spaces)
    )
    load_modules(learner.modules(), state, checkpoint)
    learner.load_extra_state(state.algo_state)
    return config, learner, checkpoint


def agent_chain(learner: TeamLearners, j: int) -> Chain:
    """Agent ``j``'s deterministic policy as an export chain (its one-hot id folded into the first bias). MAPPO's:
    the argmax or the Gaussian's mean; MADDPG's: the argmax of the logits or tanh of the actor's output."""
    spaces = learner.spaces
    continuous: Literal["tanh", "mean"]
    if isinstance(learner, MADDPGLearner):
        hidden, head = learner.export_parts(j)
        activation, continuous = str(learner.config.network.activation), "tanh"
    else:  # MAPPO, IPPO
        policy = learner.acting_policies()[j]
        hidden, head = policy.layers, policy.head
        activation, continuous = str(policy.activation_name), "mean"
    layers = [(w.astype(np.float32), b.astype(np.float32)) for w, b in hidden]
    width = spaces.obs_dims[j]
    if learner.agent_id:  # x W[:d] + (b + W[d + j]) = [x, e_j] W + b
        weight, bias = layers[0]
        layers[0] = (weight[:width].copy(), (bias + weight[width + j]).astype(np.float32))
    spec = spaces.actions[j]
    low, high = spaces.lows[j], spaces.highs[j]
    box = spec.kind == "continuous" and low is not None and high is not None
    return Chain(
        obs_shape=(width,),
        one_hot=0,
        obs_dim=width,
        norm=None,
        layers=layers,
        activation=activation,
        head=(head[0].astype(np.float32), head[1].astype(np.float32)),
        output="argmax" if spec.kind == "discrete" else continuous,
        rescale=((high - low) / 2, (high + low) / 2) if box else None,  # type: ignore[operator]
        bounds=(low, high) if box else None,  # type: ignore[arg-type]
        action_shape=() if spec.kind == "discrete" else (spec.size,),
    )


def chain_action(chain: Chain, obs: np.ndarray) -> np.ndarray:
    """The chain in NumPy, on a batch of raw observations [B, obs_dim]: what the exported file computes."""
    activation = NUMPY_ACTIVATIONS[chain.activation]
    x = np.asarray(obs, np.float32).reshape(-1, chain.obs_dim)
    for weight, bias in chain.layers:
        x = activation(x @ weight + bias)
    head = x @ chain.head[0] + chain.head[1]
    if chain.output == "argmax":
        return np.argmax(head, axis=-1).astype(np.int64)
    action = np.tanh(head) if chain.output == "tanh" else head
    if chain.rescale is not None:
        action = action * chain.rescale[0] + chain.rescale[1]
    if chain.bounds is not None:
        action = np.minimum(np.maximum(action, chain.bounds[0]), chain.bounds[1])
    return action.astype(np.float32)


@dataclass
class TeamPolicy:
    """The team's deployed policies, one chain per agent: ``predict({agent: obs}) -> {agent: action}``."""

    agents: tuple[str, ...]
    chains: list[Chain]

    @classmethod
    def from_learner(cls, learner: TeamLearners) -> TeamPolicy:
        """Every agent's chain from a learner."""
        return cls(learner.spaces.agents, [agent_chain(learner, j) for j in range(learner.spaces.num_agents)])

    def predict(self, observations: dict[str, Any]) -> dict[str, Any]:
        """Deterministic actions of the agents present in ``observations`` (a batch [B, obs] or one observation)."""
        out: dict[str, Any] = {}
        for agent, chain in zip(self.agents, self.chains, strict=True):
            if agent in observations:
                obs = np.asarray(observations[agent], np.float32)
                action = chain_action(chain, obs)
                out[agent] = action if obs.ndim > 1 else action[0]
        return out


@dataclass(frozen=True)
class TeamEvalResult:
    """Team returns (mean over agents per episode), each agent's returns [episodes, A], and the checkpoint."""

    agents: tuple[str, ...]
    returns: list[float]
    per_agent: np.ndarray
    checkpoint: Path


def evaluate_team(
    run_dir: Path, episodes: int, deterministic: bool, which: str, seed: int | None, trust_env_code: bool
) -> TeamEvalResult:
    """``episodes`` episodes of the team's policies on a fresh copy of its env."""
    if episodes < 1:
        raise ConfigError(f"--episodes must be >= 1; got {episodes}")
    config, learner, checkpoint = load_team(run_dir, which, trust_env_code)
    envs = build_team(config, 1)
    try:
        eval_seed = 1_000_000 + (config.run.seed if seed is None else seed)
        returns, per_agent = team_episodes(learner, envs, episodes, eval_seed, deterministic)
    finally:
        envs.close()
    return TeamEvalResult(learner.spaces.agents, returns, per_agent, checkpoint)


def agent_manifest(
    chain: Chain, fmt: str, target: Path, agent: str, config: TrainConfig, checkpoint: Path, folded_id: bool
) -> dict[str, Any]:
    """What an agent's exported file takes and gives, beside it as ``<file>.json`` (as a single-agent export's);
    ``folded_id``: the shared actor's one-hot id input is folded into the first layer's bias."""
    discrete = chain.output == "argmax"
    return {
        "format": fmt,
        "file": target.name,
        "agent": agent,
        "pgrad_version": __version__,
        "algo": config.algo,
        "env_id": config.env.id,
        "source_checkpoint": str(checkpoint),
        "input": {"name": "observation", "dtype": "float32", "shape": ["batch", chain.obs_dim]},
        "output": {
            "name": "action",
            "dtype": "int64" if discrete else "float32",
            "shape": ["batch", *chain.action_shape],
        },
        "inside": {"agent_id_folded": folded_id, "action_rescaling": chain.rescale is not None, "deterministic": True},
    }


def export_team(run_dir: Path, fmt: str, out: Path | None, which: str, trust_env_code: bool) -> list[Path]:
    """One file per agent (``<out or RUN/export>/<agent>.onnx`` or ``.pt``): that agent's observation in, its
    env action out. Returns the files written."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    config, learner, checkpoint = load_team(run_dir, which, trust_env_code)
    folder = Path(out) if out is not None else inside_run(Path(run_dir), "export", "the export folder")
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {folder}: a team run exports one file per agent; name a folder")
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for agent, chain in zip(learner.spaces.agents, TeamPolicy.from_learner(learner).chains, strict=True):
        target = folder / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', agent)}{FORMATS[fmt]}"
        safe_io.refuse_link(target)
        model = onnx_model(chain).SerializeToString() if fmt == "onnx" else torchscript_module(chain).save_to_buffer()
        safe_io.write_atomic(target, model)
        manifest = target.with_name(target.name + ".json")
        safe_io.refuse_link(manifest)
        safe_io.write_atomic(
            manifest,
            json.dumps(agent_manifest(chain, fmt, target, agent, config, checkpoint, learner.agent_id), indent=2),
        )
        written.append(target)
    return written
