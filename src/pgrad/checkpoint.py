"""Checkpoints that resume a run exactly and never execute code when loaded.

Layout of one checkpoint, a directory ``checkpoints/step_<10 digits>/``:
- ``tensors.safetensors``: model parameters, optimizer moments, normaliser statistics, torch RNG;
- ``state.json``: everything else (format version, counters, config, NumPy/Python RNG states,
  environment state, optimizer hyper-parameters, episode history, health mark) and the SHA-256
  of the tensor file.

Writes are atomic: the directory is written under a temporary name, flushed, then renamed.
``checkpoints/index.json`` (also replaced atomically) names the latest and best checkpoints.
Loading checks the format version and the checksum before parsing tensors, and parses them
with safetensors, which has no code path that unpickles.

``TrainState`` is the one schema of what a checkpoint holds; ``TrainState.to_parts`` and
``TrainState.from_parts`` are the only code that knows the key layout (runners, evaluation and the
guard's recovery never spell a key). Tensor keys:
``module.<name>.<param>``, ``optim.<name>.state.<param id>.<slot>``, ``collector.<array>``
(environment-side arrays and normaliser statistics, ``obs_norm_*`` / ``reward_norm_*``), ``rng.torch``,
and the guard's rollback states under ``rollback.<slot>.`` with the same learner layout.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pgrad.errors import CheckpointError

FORMAT_VERSION = 1
TENSORS = "tensors.safetensors"
STATE = "state.json"
INDEX = "index.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_write(path: Path, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    _fsync_write(tmp, json.dumps(data, indent=1))
    os.replace(tmp, path)


def save_checkpoint(directory: Path, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> Path:
    """Write one checkpoint atomically to ``directory`` (which must not exist yet)."""
    tmp = directory.with_name(f".tmp-{directory.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp / TENSORS))
    full_state = {"format_version": FORMAT_VERSION, **state, "tensors_sha256": _sha256(tmp / TENSORS)}
    _fsync_write(tmp / STATE, json.dumps(full_state))
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    return directory


def load_checkpoint(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a checkpoint. Raises ``CheckpointError`` with the reason if it is unusable."""
    directory = Path(directory)
    state_path, tensor_path = directory / STATE, directory / TENSORS
    if not state_path.is_file() or not tensor_path.is_file():
        raise CheckpointError(f"checkpoint {directory} is incomplete: it needs {STATE} and {TENSORS}")
    try:
        state = json.loads(state_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {directory}: {STATE} is corrupted ({exc})") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        found = state.get("format_version") if isinstance(state, dict) else None
        raise CheckpointError(
            f"checkpoint {directory} has format version {found!r}; this pgrad reads version {FORMAT_VERSION}"
        )
    if _sha256(tensor_path) != state.get("tensors_sha256"):
        raise CheckpointError(
            f"checkpoint {directory}: {TENSORS} does not match the checksum recorded in {STATE} "
            "(corrupted or tampered with); refusing to load it"
        )
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {directory}: {TENSORS} is not a valid safetensors file ({exc})") from None
    return tensors, state


# ---- optimizer state <-> (tensors, json) -----------------------------------------------------


def _optimizer_state_to_parts(
    prefix: str, state_dict: dict[str, Any]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer's state_dict into tensors (for safetensors) and plain values (for JSON)."""
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for param_id, param_state in state_dict["state"].items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.state.{param_id}.{key}"] = value
            else:
                plain.setdefault(str(param_id), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "plain_state": plain}


def _optimizer_state_from_parts(prefix: str, tensors: dict[str, torch.Tensor], parts: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    head = f"{prefix}.state."
    for key, value in tensors.items():
        if key.startswith(head):
            param_id, name = key[len(head) :].split(".", 1)
            state.setdefault(int(param_id), {})[name] = value
    for param_id, values in parts["plain_state"].items():
        state.setdefault(int(param_id), {}).update(values)
    return {"state": state, "param_groups": parts["param_groups"]}


def optimizer_to_parts(prefix: str, optimizer: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    return _optimizer_state_to_parts(prefix, optimizer.state_dict())


def optimizer_from_parts(prefix: str, optimizer: Any, tensors: dict[str, torch.Tensor], parts: dict[str, Any]) -> None:
    optimizer.load_state_dict(_optimizer_state_from_parts(prefix, tensors, parts))


def numpy_to_tensors(prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{name}": torch.from_numpy(np.ascontiguousarray(value)) for name, value in arrays.items()}


def tensors_to_numpy(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    head = f"{prefix}."
    return {key[len(head) :]: value.numpy() for key, value in tensors.items() if key.startswith(head)}


# ---- after a kill or a failed write ------------------------------------------------------------


def remove_partial_writes(root: Path) -> None:
    """Delete what an interrupted write left in ``checkpoints/``: ``.tmp-step_*`` folders and the index's
    temporary file. Only the run holding the folder's lock calls this, so none of them is being written."""
    root = Path(root)
    for path in root.glob(".tmp-step_*"):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    (root / f".{INDEX}.tmp").unlink(missing_ok=True)


def newest_loadable(root: Path) -> tuple[TrainState, Path, list[tuple[str, str]]]:
    """The newest whole checkpoint folder under ``root``, whatever ``index.json`` says.

    The index can lag the folders (a kill between the atomic rename of a new checkpoint and the index
    update), and the newest checkpoint can be damaged (a disk error, a truncated copy): a resume then
    takes the newest one that is whole. Damaged means incomplete, an unreadable ``state.json`` or tensors
    that do not match their checksum (``damage``); those are skipped, and so are symlinks (never
    followed). A whole checkpoint that does not load (another format version, invalid fields, a failed
    HMAC) is not skipped: that is no accident, and its error is raised. Folders are
    ``step_<10 digits>``, so their names sort by step. Returns the state, its folder, and the
    (name, reason) of every newer folder skipped.
    """
    skipped: list[tuple[str, str]] = []
    for path in sorted(Path(root).glob("step_*"), reverse=True):
        if path.is_symlink():
            skipped.append((path.name, "a symlink (never followed)"))
            continue
        if not path.is_dir():
            continue
        reason = damage(path)
        if reason is not None:
            skipped.append((path.name, reason))
            continue
        return read_train_state(path), path, skipped
    detail = f"; skipped: {'; '.join(f'{name}: {reason}' for name, reason in skipped)}" if skipped else ""
    raise CheckpointError(f"no whole checkpoint in {root}{detail}")


# state.json files larger than this are not parsed to look for damage (loading bounds them itself)
_DAMAGE_CHECK_BYTES = 64 * 2**20


def damage(directory: Path) -> str | None:
    """Why a checkpoint folder is damaged (what a disk error or an interrupted copy leaves), or None."""
    state_path, tensor_path = directory / STATE, directory / TENSORS
    if not state_path.is_file() or not tensor_path.is_file():
        return f"incomplete (it needs {STATE} and {TENSORS})"
    if state_path.stat().st_size > _DAMAGE_CHECK_BYTES:
        return None
    try:
        state = json.loads(state_path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return f"{STATE} is not readable JSON"
    recorded = state.get("tensors_sha256") if isinstance(state, dict) else None
    if isinstance(recorded, str) and _sha256(tensor_path) != recorded:
        return f"{TENSORS} does not match the checksum recorded in {STATE}"
    return None


def adopt_checkpoint(store: CheckpointStore, name: str, step: int, healthy: bool, score: float | None) -> None:
    """Make ``name`` (a checkpoint a resume found and loaded) the index's latest, listing it if the index
    did not (or could not be read); the other entries stay."""
    try:
        index = store.index()
    except CheckpointError:
        index = {"latest": None, "best": None, "best_score": None, "entries": {}}
    index["latest"] = name
    index.setdefault("entries", {})[name] = {"step": step, "healthy": healthy, "score": score}
    write_json_atomic(store.root / INDEX, index)


# ---- the typed train state -----------------------------------------------------------------

# normaliser name in TrainState.normalizers -> prefix of its arrays under ``collector.``
NORMALIZER_PREFIXES = {"obs": "obs_norm_", "reward": "reward_norm_"}


@dataclass
class LearnerState:
    """A learner without the run around it: what a guard rollback restores.

    ``modules`` and ``optimizers`` are torch ``state_dict``s by name (the names an algorithm gives in
    ``modules()`` / ``optimizers()``); ``normalizers`` the running statistics of the observation and
    reward normalisers (``{"obs": RunningMeanStd.state(), "reward": ...}``); ``algo_state`` the
    algorithm's own JSON state (e.g. PPO-KL's penalty coefficient).
    """

    step: int
    modules: dict[str, dict[str, torch.Tensor]]
    optimizers: dict[str, dict[str, Any]]
    normalizers: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    algo_state: dict[str, Any] = field(default_factory=dict)


def _learner_to_parts(
    prefix: str, learner: LearnerState, extra_arrays: dict[str, np.ndarray]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors under ``<prefix>module.``, ``<prefix>optim.``, ``<prefix>collector.``; the optimizers'
    plain values for JSON."""
    tensors: dict[str, torch.Tensor] = {}
    for name, state_dict in learner.modules.items():
        tensors.update({f"{prefix}module.{name}.{key}": value for key, value in state_dict.items()})
    optimizers = {}
    for name, state_dict in learner.optimizers.items():
        optimizer_tensors, optimizers[name] = _optimizer_state_to_parts(f"{prefix}optim.{name}", state_dict)
        tensors.update(optimizer_tensors)
    arrays = dict(extra_arrays)
    for name, stats in learner.normalizers.items():
        arrays.update({f"{NORMALIZER_PREFIXES[name]}{key}": value for key, value in stats.items()})
    tensors.update(numpy_to_tensors(f"{prefix}collector", arrays))
    return tensors, optimizers


def _learner_from_parts(
    prefix: str, tensors: dict[str, torch.Tensor], optimizers: dict[str, Any], step: int, algo_state: dict[str, Any]
) -> tuple[LearnerState, dict[str, np.ndarray]]:
    """The inverse of ``_learner_to_parts``: the learner and the other ``collector.`` arrays."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    head = f"{prefix}module."
    for key, value in tensors.items():
        if key.startswith(head):
            name, param = key[len(head) :].split(".", 1)
            modules.setdefault(name, {})[param] = value
    loaded = {
        name: _optimizer_state_from_parts(f"{prefix}optim.{name}", tensors, parts) for name, parts in optimizers.items()
    }
    arrays = tensors_to_numpy(f"{prefix}collector", tensors)
    normalizers: dict[str, dict[str, np.ndarray]] = {}
    for name, normalizer_prefix in NORMALIZER_PREFIXES.items():
        stats = {k[len(normalizer_prefix) :]: v for k, v in arrays.items() if k.startswith(normalizer_prefix)}
        if stats:
            normalizers[name] = stats
    others = {k: v for k, v in arrays.items() if not k.startswith(tuple(NORMALIZER_PREFIXES.values()))}
    return LearnerState(step, modules, loaded, normalizers, algo_state), others


@dataclass
class TrainState:
    """Everything a checkpoint holds, by meaning rather than by key.

    ``modules``, ``optimizers``, ``normalizers`` and ``algo_state`` are as in ``LearnerState``.
    ``collector`` holds the environment-side arrays of the rollout collector (current observations,
    autoreset flags, episode accumulators, the reward scaler's running return). ``rollback_states``
    are the guard's in-memory healthy states by slot (``confirmed``, ``candidate``), kept so that a
    resumed run rolls back exactly as the uninterrupted one would; ``rollback_capture_step`` is when
    the last of them was captured. ``rng_numpy`` / ``rng_python`` are None where a runner has no such
    stream of its own (A3C's workers re-seed).
    """

    algo: str
    step: int
    updates: int
    elapsed_seconds: float
    config: dict[str, Any]
    modules: dict[str, dict[str, torch.Tensor]]
    optimizers: dict[str, dict[str, Any]]
    collector: dict[str, np.ndarray] = field(default_factory=dict)
    normalizers: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    rng_torch: torch.Tensor | None = None
    rng_numpy: dict[str, Any] | None = None
    rng_python: list[Any] | None = None
    env_state: Any = None
    episodes: dict[str, Any] = field(default_factory=dict)
    algo_state: dict[str, Any] = field(default_factory=dict)
    guard: dict[str, Any] = field(default_factory=dict)
    rollback_states: dict[str, LearnerState] = field(default_factory=dict)
    rollback_capture_step: int | None = None
    pgrad_version: str = ""
    # written by CheckpointStore.save, read back on load
    score: float | None = None
    healthy: bool = True

    def learner(self) -> LearnerState:
        return LearnerState(self.step, self.modules, self.optimizers, self.normalizers, self.algo_state)

    def to_parts(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors for safetensors, plain values for state.json)."""
        tensors, optimizers = _learner_to_parts("", self.learner(), self.collector)
        if self.rng_torch is not None:
            tensors["rng.torch"] = self.rng_torch
        rollback: dict[str, Any] = {"capture_step": self.rollback_capture_step, "slots": {}}
        for slot, learner in self.rollback_states.items():
            slot_tensors, slot_optimizers = _learner_to_parts(f"rollback.{slot}.", learner, {})
            tensors.update(slot_tensors)
            rollback["slots"][slot] = {
                "step": learner.step,
                "optimizers": slot_optimizers,
                "algo_state": learner.algo_state,
            }
        state = {
            "pgrad_version": self.pgrad_version,
            "algo": self.algo,
            "step": self.step,
            "updates": self.updates,
            "elapsed_seconds": self.elapsed_seconds,
            "config": self.config,
            "rng_numpy": self.rng_numpy,
            "rng_python": self.rng_python,
            "optimizers": optimizers,
            "env_state": self.env_state,
            "episodes": self.episodes,
            "algo_state": self.algo_state,
            "guard": self.guard,
            "rollback": rollback,
        }
        return tensors, state

    @classmethod
    def from_parts(cls, tensors: dict[str, torch.Tensor], state: dict[str, Any], source: Path) -> TrainState:
        """The inverse of ``to_parts``; a missing or mistyped entry is a ``CheckpointError`` naming it.
        Checkpoints written before rollback states existed load with none."""
        try:
            step = int(state["step"])
            own = {k: v for k, v in tensors.items() if not k.startswith("rollback.")}
            learner, collector = _learner_from_parts("", own, state["optimizers"], step, state.get("algo_state") or {})
            rollback = state.get("rollback") or {"capture_step": None, "slots": {}}
            rollback_states = {
                slot: _learner_from_parts(
                    f"rollback.{slot}.", tensors, meta["optimizers"], int(meta["step"]), meta["algo_state"]
                )[0]
                for slot, meta in rollback["slots"].items()
            }
            capture_step = rollback["capture_step"]
            return cls(
                algo=str(state["algo"]),
                step=step,
                updates=int(state["updates"]),
                elapsed_seconds=float(state["elapsed_seconds"]),
                config=state.get("config") or {},
                modules=learner.modules,
                optimizers=learner.optimizers,
                collector=collector,
                normalizers=learner.normalizers,
                rng_torch=tensors.get("rng.torch"),
                rng_numpy=state.get("rng_numpy"),
                rng_python=state.get("rng_python"),
                env_state=state.get("env_state"),
                episodes=state.get("episodes") or {},
                algo_state=learner.algo_state,
                guard=state.get("guard") or {},
                rollback_states=rollback_states,
                rollback_capture_step=None if capture_step is None else int(capture_step),
                pgrad_version=str(state.get("pgrad_version", "")),
                score=state.get("score"),
                healthy=bool(state.get("healthy", True)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"checkpoint {source} is malformed: {type(exc).__name__}: {exc}") from None


def read_train_state(directory: Path) -> TrainState:
    """Load and verify one checkpoint folder into a ``TrainState``."""
    tensors, state = load_checkpoint(directory)
    return TrainState.from_parts(tensors, state, Path(directory))


def load_modules(modules: dict[str, torch.nn.Module], state: TrainState, source: Path) -> None:
    """Fill ``modules`` from the checkpoint's state dicts; a shape or name mismatch is one clear line."""
    for name, module in modules.items():
        if name not in state.modules:
            raise CheckpointError(f"checkpoint {source} has no weights for module '{name}'")
        try:
            module.load_state_dict(state.modules[name])
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            raise CheckpointError(
                f"checkpoint {source}: module '{name}' does not fit this configuration "
                f"({' '.join(line.strip() for line in first[:3])})"
            ) from None


def load_optimizers(optimizers: dict[str, Any], state: TrainState, source: Path) -> None:
    for name, optimizer in optimizers.items():
        if name not in state.optimizers:
            raise CheckpointError(f"checkpoint {source} has no state for optimizer '{name}'")
        try:
            optimizer.load_state_dict(state.optimizers[name])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(
                f"checkpoint {source}: optimizer '{name}' does not fit this configuration ({exc})"
            ) from None


# ---- a run's checkpoint folder ----------------------------------------------------------------


class CheckpointStore:
    """``RUN_DIR/checkpoints``: step-named checkpoints, the last ``keep`` kept plus the best.

    ``index.json`` records ``latest``, ``best`` (by a score, higher is better) and, for each
    checkpoint, its health mark, so a rollback can pick the newest healthy one.
    """

    def __init__(self, run_dir: Path, keep: int) -> None:
        self.root = Path(run_dir) / "checkpoints"
        self.keep = keep

    def index(self) -> dict[str, Any]:
        path = self.root / INDEX
        if not path.is_file():
            return {"latest": None, "best": None, "best_score": None, "entries": {}}
        try:
            index: dict[str, Any] = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path} is corrupted ({exc})") from None
        return index

    def save_state(self, train_state: TrainState, score: float | None, healthy: bool = True) -> Path:
        """Write ``train_state`` as checkpoint ``step_<step>`` and update the index."""
        tensors, state = train_state.to_parts()
        return self.save(train_state.step, tensors, state, score, healthy)

    def save(
        self,
        step: int,
        tensors: dict[str, torch.Tensor],
        state: dict[str, Any],
        score: float | None,
        healthy: bool = True,
    ) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"step_{step:010d}"
        save_checkpoint(self.root / name, tensors, {**state, "healthy": healthy, "score": score})
        index = self.index()
        index["latest"] = name
        index["entries"][name] = {"step": step, "healthy": healthy, "score": score}
        if healthy and score is not None and (index["best_score"] is None or score >= index["best_score"]):
            index["best"], index["best_score"] = name, score
        self._prune(index)
        write_json_atomic(self.root / INDEX, index)
        return self.root / name

    def _prune(self, index: dict[str, Any]) -> None:
        names = sorted(index["entries"])
        protected = {index["best"], index["latest"]}
        for name in names[: max(len(names) - self.keep, 0)]:
            if name in protected:
                continue
            shutil.rmtree(self.root / name, ignore_errors=True)
            del index["entries"][name]

    def path(self, which: str = "latest") -> Path:
        """``latest``, ``best``, ``last_healthy`` or a checkpoint name."""
        index = self.index()
        name: str | None
        if which == "last_healthy":
            healthy = [n for n, e in sorted(index["entries"].items()) if e.get("healthy")]
            name = healthy[-1] if healthy else None
        else:
            name = index.get(which, which) if which in ("latest", "best") else which
        if not name or not (self.root / name).is_dir():
            raise CheckpointError(f"no {which} checkpoint in {self.root}")
        return self.root / name
