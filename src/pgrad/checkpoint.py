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
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
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


def optimizer_to_parts(prefix: str, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer's state_dict into tensors (for safetensors) and plain values (for JSON)."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for param_id, param_state in state_dict["state"].items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.state.{param_id}.{key}"] = value
            else:
                plain.setdefault(str(param_id), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "plain_state": plain}


def optimizer_from_parts(
    prefix: str, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], parts: dict[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    head = f"{prefix}.state."
    for key, value in tensors.items():
        if key.startswith(head):
            param_id, name = key[len(head) :].split(".", 1)
            state.setdefault(int(param_id), {})[name] = value
    for param_id, values in parts["plain_state"].items():
        state.setdefault(int(param_id), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": parts["param_groups"]})


def numpy_to_tensors(prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{name}": torch.from_numpy(np.ascontiguousarray(value)) for name, value in arrays.items()}


def tensors_to_numpy(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    head = f"{prefix}."
    return {key[len(head) :]: value.numpy() for key, value in tensors.items() if key.startswith(head)}


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
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path} is corrupted ({exc})") from None

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
        if which == "last_healthy":
            healthy = [n for n, e in sorted(index["entries"].items()) if e.get("healthy")]
            name = healthy[-1] if healthy else None
        else:
            name = index.get(which, which) if which in ("latest", "best") else which
        if not name or not (self.root / name).is_dir():
            raise CheckpointError(f"no {which} checkpoint in {self.root}")
        return self.root / name
