"""Exporting a trained policy for deployment: one ONNX or TorchScript file, raw observation in, env action out.

The file holds the whole chain of ``pgrad.policy.Policy.predict`` with ``deterministic=True``:

    x = flatten(obs)                     (one-hot for a Discrete observation space)
    x = clip((x - mean) / sqrt(var + eps), -clip_obs, clip_obs)     (env.norm_obs; in float64, as NumPy)
    h = act(... act(x W1 + b1) ...)      (the actor's torso, tanh or relu)
    u = h Wh + bh                        (the head)
    discrete:   a = argmax(u)
    Gaussian:   a = mean(u)              (the first half of u for a state-dependent std)
    squashed:   a = tanh(u)              (SAC, TD3, DDPG)
    a = u * (high - low)/2 + (low + high)/2, then clip to [low, high]   (Box actions, env.rescale_actions)

The ONNX graph is written operator by operator with ``onnx.helper`` (no tracing: the graph is exactly the
list above, and the export needs neither onnxscript nor torch's deprecated TorchScript exporter). The
TorchScript file is ``torch.jit.trace`` of a module that computes the same chain. Beside the file, a JSON
manifest names the spaces, the pgrad version and the source checkpoint.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from pgrad import __version__, export_recurrent, safe_io
from pgrad.checkpoint import inside_run, read_train_state
from pgrad.errors import ConfigError
from pgrad.policy import Policy, load_policy, space_to_dict

Format = Literal["onnx", "torchscript"]
FORMATS: dict[str, str] = {"onnx": ".onnx", "torchscript": ".pt"}
ONNX_OPSET = 17
ONNX_IR_VERSION = 8  # readable by onnxruntime 1.14 and later, not only the newest
# The activations the graph writes as one ONNX operator after each NumPy layer (NumPy computes exactly these:
# pgrad.nets.NUMPY_ACTIVATIONS); any other activation sits in the exported torch torso.
ONNX_ACTIVATIONS = {"tanh": "Tanh", "Tanh": "Tanh", "relu": "Relu", "ReLU": "Relu"}


@dataclass(frozen=True)
class Chain:
    """The policy's arrays, in the order the exported graph applies them (see the module docstring)."""

    obs_shape: tuple[int, ...]
    one_hot: int  # n for a Discrete observation space, else 0
    obs_dim: int
    norm: tuple[np.ndarray, np.ndarray, float] | None  # mean, sqrt(var + eps) (float64), clip
    layers: list[tuple[np.ndarray, np.ndarray]]  # (W [in, out], b) float32
    activation: str
    head: tuple[np.ndarray, np.ndarray]
    output: Literal["argmax", "mean", "first_half", "tanh"]
    rescale: tuple[np.ndarray, np.ndarray] | None  # scale, offset
    bounds: tuple[np.ndarray, np.ndarray] | None  # low, high (Box actions)
    action_shape: tuple[int, ...]
    # A Dict observation: one graph input per key (named by the key), packed in the graph as training packed it
    # (pgrad.envs.factory.SpaceAdapter.pack): (key, shape, transpose axes, one-hot n, start).
    keys: tuple[tuple[str, tuple[int, ...], tuple[int, ...] | None, int, int], ...] = ()
    norm_mask: np.ndarray | None = None  # [obs_dim] bool: entries normalised (a Dict's image pixels are not)
    torso: torch.nn.Module | None = None  # the actor's torch part (CNN, Dict encoders, custom torso) on the row


def chain_of(policy: Policy) -> Chain:
    """The export chain of a policy: flattening or one-hot, frozen normaliser, actor, deterministic action, bounds."""
    actor: Any = policy.actor
    adapter = policy.adapter
    normalizer = policy.obs_normalizer
    norm = None
    if normalizer.enabled:
        stats = normalizer.stats
        norm = (stats.mean.astype(np.float64), np.sqrt(stats.var + normalizer.epsilon), float(normalizer.clip))
    if adapter.action.kind == "discrete":
        output: Literal["argmax", "mean", "first_half", "tanh"] = "argmax"
    elif hasattr(actor, "state_dependent_std"):  # ActingPolicy: the Gaussian's mean
        output = "first_half" if actor.state_dependent_std else "mean"
    else:  # SquashedActingPolicy
        output = "tanh"
    bounds = None if adapter.low is None or adapter.high is None else (adapter.low, adapter.high)
    keys = tuple((str(p.part.key), p.raw_shape, p.axes, p.one_hot, p.start) for p in adapter.packings or ())
    return Chain(
        obs_shape=tuple(policy.observation_space.shape or ()),
        one_hot=adapter.one_hot,
        obs_dim=adapter.obs_dim,
        norm=norm,
        layers=[(w.astype(np.float32), b.astype(np.float32)) for w, b in actor.layers],
        activation=actor.activation_name,
        head=(actor.head[0].astype(np.float32), actor.head[1].astype(np.float32)),
        output=output,
        rescale=(adapter.scale, adapter.offset) if adapter.rescale else None,
        bounds=bounds,
        action_shape=tuple(policy.action_space.shape or ()),
        keys=keys,
        norm_mask=normalizer.mask if normalizer.enabled else None,
        torso=getattr(actor, "torch_torso", None),
    )


def masked_norm(chain: Chain) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(mean, std, clip low, clip high) in float64 that normalise the entries of ``norm_mask`` and leave the others
    exactly as they are: (x - 0) / 1 = x, clipped to [-inf, inf]."""
    assert chain.norm is not None
    mean, std, clip = chain.norm
    mask = np.ones(mean.shape, bool) if chain.norm_mask is None else chain.norm_mask
    low = np.where(mask, -clip, -np.inf)
    return np.where(mask, mean, 0.0), np.where(mask, std, 1.0), low, -low


def torso_onnx(torso: torch.nn.Module, obs_dim: int) -> Any:
    """The actor's torch part as an ONNX model (input ``x`` [batch, obs_dim], output ``features``), by torch's
    TorchScript-based exporter: a user's torso is arbitrary torch code that pgrad cannot write op by op."""
    import io

    import onnx

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.9+ calls this exporter legacy; it needs no onnxscript
        torch.onnx.export(
            torso,
            (torch.zeros(2, obs_dim),),
            buffer,  # type: ignore[arg-type]  # (typed as a path; the exporter writes to any binary file)
            dynamo=False,
            input_names=["x"],
            output_names=["features"],
            dynamic_axes={"x": {0: "batch"}, "features": {0: "batch"}},
            opset_version=ONNX_OPSET,
        )
    return onnx.load_from_string(buffer.getvalue())


# ---- ONNX ----------------------------------------------------------------------------------------------
class _Graph:
    """The ONNX nodes and constants of a graph being written, with one helper for each."""

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes: list[Any] = []
        self.constants: list[Any] = []
        self.inputs: list[Any] = []

    def const(self, name: str, value: np.ndarray) -> str:
        """A constant tensor (an initializer) named ``name``; returns the name."""
        self.constants.append(self.numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        """One operator writing ``output``; returns the output's name."""
        self.nodes.append(self.helper.make_node(op, inputs, [output], **attrs))
        return output

    def input(self, name: str, elem_type: int, shape: list[Any]) -> str:
        """A graph input; returns its name."""
        self.inputs.append(self.helper.make_tensor_value_info(name, elem_type, shape))
        return name


def _observation_row(g: _Graph, chain: Chain) -> str:
    """The graph's inputs, as the float32 row [batch, obs_dim] the network takes: a Dict observation's keys packed
    (one input per key, as ``SpaceAdapter.pack``), a Discrete one one-hot, a Box flattened."""
    from onnx import TensorProto

    if not chain.keys:
        if chain.one_hot:
            observation = g.input("observation", TensorProto.INT64, ["batch"])
            return g.node(
                "Gather", [g.const("one_hot", np.eye(chain.one_hot, dtype=np.float32)), observation], "x", axis=0
            )
        observation = g.input("observation", TensorProto.FLOAT, ["batch", *chain.obs_shape])
        return g.node("Reshape", [observation, g.const("flat_shape", np.array([-1, chain.obs_dim], np.int64))], "x")
    parts = []
    for i, (key, shape, axes, one_hot, start) in enumerate(chain.keys):
        if one_hot:
            index = g.node(
                "Sub",
                [g.input(key, TensorProto.INT64, ["batch"]), g.const(f"pack/start{i}", np.array(start, np.int64))],
                f"pack/index{i}",
            )
            parts.append(
                g.node(
                    "Gather",
                    [g.const(f"pack/one_hot{i}", np.eye(one_hot, dtype=np.float32)), index],
                    f"pack/part{i}",
                    axis=0,
                )
            )
            continue
        value = g.input(key, TensorProto.FLOAT, ["batch", *shape])
        if axes is not None:
            value = g.node("Transpose", [value], f"pack/moved{i}", perm=[0, *(a + 1 for a in axes)])
        flat = g.const(f"pack/flat{i}", np.array([-1, math.prod(shape)], np.int64))
        parts.append(g.node("Reshape", [value, flat], f"pack/part{i}"))
    return g.node("Concat", parts, "x", axis=1)


def _normalised(g: _Graph, chain: Chain, x: str) -> str:
    """clip((x - mean) / std) in float64 on the normalised entries (``masked_norm``), back to float32."""
    if chain.norm is None:
        return x
    from onnx import TensorProto

    mean, std, low, high = masked_norm(chain)
    if chain.norm_mask is None:  # one clip bound for every entry, as before Dict observations
        low, high = np.array(low[0]), np.array(high[0])
    x = g.node("Cast", [x], "x64", to=TensorProto.DOUBLE)
    x = g.node("Sub", [x, g.const("obs_mean", mean)], "centred")
    x = g.node("Div", [x, g.const("obs_std", std)], "scaled")
    x = g.node("Max", [x, g.const("clip_low", low)], "clipped_low")
    x = g.node("Min", [x, g.const("clip_high", high)], "clipped")
    return g.node("Cast", [x], "normalised", to=TensorProto.FLOAT)


def _torso(g: _Graph, chain: Chain, x: str) -> str:
    """The actor's torch part spliced in under the prefix ``torso/``, fed ``x``; returns its features."""
    if chain.torso is None:
        return x
    import onnx

    torso = onnx.compose.add_prefix(torso_onnx(chain.torso, chain.obs_dim), "torso/")
    g.node("Identity", [x], "torso/x")
    g.nodes.extend(torso.graph.node)
    g.constants.extend(torso.graph.initializer)
    return "torso/features"


def _action(g: _Graph, chain: Chain, x: str) -> Any:
    """The head's output as the env's action (argmax, mean, tanh, rescaled and clipped); returns the output's info."""
    from onnx import TensorProto

    if chain.output == "argmax":
        g.node("ArgMax", [x], "action", axis=-1, keepdims=0)
        return g.helper.make_tensor_value_info("action", TensorProto.INT64, ["batch"])
    if chain.output == "first_half":
        half = chain.head[1].shape[0] // 2
        bounds = [
            g.const(name, np.array([value], np.int64))
            for name, value in (("half_start", 0), ("half_end", half), ("half_axis", 1))
        ]
        x = g.node("Slice", [x, *bounds], "mean")
    elif chain.output == "tanh":
        x = g.node("Tanh", [x], "squashed")
    if chain.rescale is not None:
        x = g.node("Mul", [x, g.const("action_scale", chain.rescale[0])], "scaled_action")
        x = g.node("Add", [x, g.const("action_offset", chain.rescale[1])], "rescaled")
    if chain.bounds is not None:
        x = g.node("Max", [x, g.const("action_low", chain.bounds[0])], "above_low")
        x = g.node("Min", [x, g.const("action_high", chain.bounds[1])], "clipped_action")
    g.node("Reshape", [x, g.const("action_shape", np.array([-1, *chain.action_shape], np.int64))], "action")
    return g.helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", *chain.action_shape])


def _check_key_names(g: _Graph, chain: Chain) -> None:
    """A Dict key is a graph input's name: one that is also a name inside the graph would wire the graph wrongly,
    so it is refused (one line) instead."""
    inside = {output for node in g.nodes for output in node.output} | {tensor.name for tensor in g.constants}
    clash = sorted({key for key, *_ in chain.keys} & inside)
    if clash:
        raise ConfigError(
            f"--format onnx: Dict observation key {clash[0]!r} is also a name inside the exported graph (its inputs "
            "are named by the keys); rename that key in the env to export"
        )


def onnx_model(chain: Chain) -> Any:
    """The chain as an ONNX model (opset 17, IR 8), written operator by operator (needs onnx)."""
    try:
        import onnx
        from onnx import helper
    except ImportError:
        raise ConfigError("--format onnx needs onnx: pip install 'pgrad[export]'") from None
    g = _Graph()
    x = _torso(g, chain, _normalised(g, chain, _observation_row(g, chain)))
    activation = ONNX_ACTIVATIONS.get(chain.activation, "Relu")  # (unused when the torso holds every layer)
    for i, (weight, bias) in enumerate(chain.layers):
        x = g.node("MatMul", [x, g.const(f"W{i}", weight)], f"mm{i}")
        x = g.node("Add", [x, g.const(f"b{i}", bias)], f"pre{i}")
        x = g.node(activation, [x], f"h{i}")
    x = g.node("MatMul", [x, g.const("W_head", chain.head[0])], "mm_head")
    x = g.node("Add", [x, g.const("b_head", chain.head[1])], "head")
    action = _action(g, chain, x)
    _check_key_names(g, chain)
    graph = helper.make_graph(g.nodes, "pgrad_policy", g.inputs, [action], initializer=g.constants)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        producer_name="pgrad",
        producer_version=__version__,
        ir_version=ONNX_IR_VERSION,
    )
    onnx.checker.check_model(model)
    return model


# ---- TorchScript ---------------------------------------------------------------------------------------
class ExportedPolicy(torch.nn.Module):
    """The chain as a torch module (for ``torch.jit.trace``); the same steps as the ONNX graph."""

    def __init__(self, chain: Chain) -> None:
        super().__init__()
        self.chain = chain
        self.act = torch.tanh if chain.activation in ("tanh", "Tanh") else torch.relu
        self.torso = chain.torso
        tensors: dict[str, np.ndarray] = {}
        for i, (weight, bias) in enumerate(chain.layers):
            tensors[f"W{i}"], tensors[f"b{i}"] = weight, bias
        tensors["W_head"], tensors["b_head"] = chain.head
        if chain.one_hot:
            tensors["one_hot"] = np.eye(chain.one_hot, dtype=np.float32)
        if chain.norm is not None:
            tensors["obs_mean"], tensors["obs_std"], tensors["clip_low"], tensors["clip_high"] = masked_norm(chain)
        if chain.rescale is not None:
            tensors["action_scale"], tensors["action_offset"] = chain.rescale
        if chain.bounds is not None:
            tensors["action_low"], tensors["action_high"] = chain.bounds
        for name, value in tensors.items():
            self.register_buffer(name, torch.from_numpy(np.ascontiguousarray(value)))

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        """The deterministic action for a batch of observations, as the exported graph computes it: one-hot or
        flatten, normalise and clip, the MLP, then the argmax, the mean half of the head, tanh, rescaling and
        clipping as the policy needs."""
        chain = self.chain
        buffers = dict(self.named_buffers())
        if chain.one_hot:
            x = buffers["one_hot"][observation]
        else:
            x = observation.reshape(-1, chain.obs_dim)
        if chain.norm is not None:
            scaled = (x.double() - buffers["obs_mean"]) / buffers["obs_std"]
            x = torch.minimum(torch.maximum(scaled, buffers["clip_low"]), buffers["clip_high"]).float()
        if self.torso is not None:
            x = self.torso(x)
        for i in range(len(chain.layers)):
            x = self.act(x @ buffers[f"W{i}"] + buffers[f"b{i}"])
        x = x @ buffers["W_head"] + buffers["b_head"]
        if chain.output == "argmax":
            return x.argmax(dim=-1)
        if chain.output == "first_half":
            x = x[:, : chain.head[1].shape[0] // 2]
        elif chain.output == "tanh":
            x = torch.tanh(x)
        if chain.rescale is not None:
            x = x * buffers["action_scale"] + buffers["action_offset"]
        if chain.bounds is not None:
            x = torch.minimum(torch.maximum(x, buffers["action_low"]), buffers["action_high"])
        return x.reshape(-1, *chain.action_shape)


def torchscript_module(chain: Chain) -> Any:
    """The chain as a traced TorchScript module (what libtorch loads)."""
    if chain.keys:
        raise ConfigError(
            "--format torchscript: a Dict observation exports to onnx only (one graph input per key); use --format onnx"
        )
    example = torch.zeros((2,), dtype=torch.int64) if chain.one_hot else torch.zeros((2, *chain.obs_shape))
    with warnings.catch_warnings():
        # torch 2.10+ marks TorchScript deprecated; the format is still what C++ (libtorch) deployments load
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        return torch.jit.trace(ExportedPolicy(chain).eval(), example)


# ---- the command -----------------------------------------------------------------------------------------
def export(
    path: Path,
    fmt: str,
    out: Path | None = None,
    which: str = "latest",
    trust_env_code: bool = False,
) -> tuple[Path, Path]:
    """Write the policy of a run folder's ``which`` checkpoint (or of a saved agent) as ``fmt``; returns the
    file and its manifest (``<file>.json``). Default file: ``<path>/export/policy.onnx`` (or ``.pt``)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    policy, config, checkpoint = load_policy(Path(path), which, trust_env_code=trust_env_code)
    chain = None if policy.recurrent else chain_of(policy)  # a recurrent one: pgrad.export_recurrent
    # the default folder is the run's (or the saved agent's) own: a link there must not send the files elsewhere
    target = (
        Path(out)
        if out is not None
        else inside_run(Path(path), "export", "the export folder") / f"policy{FORMATS[fmt]}"
    )
    if target.is_dir():
        raise ConfigError(f"--out {target} is a folder; name the file to write")
    manifest = target.with_name(target.name + ".json")
    for file in (target, manifest):  # both checked before either is written
        safe_io.refuse_link(file)
    target.parent.mkdir(parents=True, exist_ok=True)
    if chain is None:
        record: dict[str, Any] = {"pgrad_version": __version__, "algo": config.algo, "env_id": config.env.id}
        record |= {"source_checkpoint": str(checkpoint), "checkpoint_step": read_train_state(checkpoint).step}
        export_recurrent.write(policy, fmt, target, manifest, record)
        return target, manifest
    if fmt == "onnx":
        model = onnx_model(chain)  # first: without onnx installed, this is the one-line error
        safe_io.write_atomic(target, model.SerializeToString())
    else:
        safe_io.write_atomic(target, torchscript_module(chain).save_to_buffer())
    action_dtype = "int64" if chain.output == "argmax" else "float32"
    safe_io.write_atomic(
        manifest,
        json.dumps(
            {
                "format": fmt,
                "file": target.name,
                "pgrad_version": __version__,
                "algo": config.algo,
                "env_id": config.env.id,
                "source_checkpoint": str(checkpoint),
                "checkpoint_step": read_train_state(checkpoint).step,
                "input": {
                    "name": "observation",
                    "dtype": "int64" if chain.one_hot else "float32",
                    "shape": ["batch", *chain.obs_shape],
                },
                "output": {"name": "action", "dtype": action_dtype, "shape": ["batch", *chain.action_shape]},
                "observation_space": space_to_dict(policy.observation_space),
                "action_space": space_to_dict(policy.action_space),
                "inside": {
                    "obs_normalizer": chain.norm is not None,
                    "action_rescaling": chain.rescale is not None,
                    "action_clipping": chain.bounds is not None,
                    "deterministic": True,
                },
            },
            indent=2,
        )
        + "\n",
    )
    return target, manifest
