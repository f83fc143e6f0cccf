"""Checkpoints that resume a run exactly and never execute code when loaded.

Layout of one checkpoint, a directory ``checkpoints/step_<10 digits>/``:
- ``tensors.safetensors``: model parameters, optimizer moments, normaliser statistics, torch RNG;
- ``state.json``: everything else (format version, counters, config, NumPy/Python RNG states,
  environment state, optimizer hyper-parameters, episode history, health mark) and the SHA-256
  of the tensor file.

Writes are atomic: the directory is written under a temporary name, flushed, then renamed.
``checkpoints/index.json`` (also replaced atomically) names the latest and best checkpoints.
Loading checks the format version and the checksum before parsing tensors, and parses them
with safetensors, which has no code path that unpickles. The SHA-256 detects corruption only (it
sits in the unsigned state.json); with ``PGRAD_CHECKPOINT_KEY`` set, an HMAC gives tamper evidence.
A run folder may come from someone else: every name read from it stays inside it (``inside_run``),
and every tensor is checked against what it fills before it is copied (``check_module_state``,
``check_optimizer_state``).

``TrainState`` is the one schema of what a checkpoint holds; ``TrainState.to_parts`` and
``TrainState.from_parts`` are the only code that knows the key layout (runners, evaluation and the
guard's recovery never spell a key). Tensor keys:
``module.<name>.<param>``, ``optim.<name>.state.<param id>.<slot>``, ``collector.<array>``
(environment-side arrays and normaliser statistics, ``obs_norm_*`` / ``reward_norm_*``), ``rng.torch``,
``replay.<array>`` (the off-policy replay buffer),
and the guard's rollback states under ``rollback.<slot>.`` with the same learner layout.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import math
import os
import re
import shutil
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pgrad import safe_io
from pgrad.errors import CheckpointError, PgradError

FORMAT_VERSION = 1
TENSORS = "tensors.safetensors"
STATE = "state.json"
INDEX = "index.json"
# The only names pgrad gives checkpoints; an index naming anything else was not written by pgrad.
CHECKPOINT_NAME = re.compile(r"step_\d{10}")


def inside_run(root: Path, name: str, what: str) -> Path:
    """``root / name``, refused unless it stays inside ``root``.

    A run folder may come from someone else, so every name read from it (index entries, ``latest``,
    ``best``) is data: an absolute path, a ``..`` or a symlink that leads out of ``root`` would make
    pgrad read (or, when pruning, delete) files the user never pointed it at. ``what`` names the
    field in the error. The check follows symlinks: ``root`` itself may be a symlink the user chose.
    """
    if not isinstance(name, str) or not name or "\0" in name:
        raise CheckpointError(f"{what} must be a name inside {root}; got {name!r}")
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise CheckpointError(f"{what} must be a name inside {root} (no absolute path, no '..'); got {name!r}")
    path = root / relative
    base = root.resolve()
    if not path.resolve().is_relative_to(base) or path.resolve() == base:
        raise CheckpointError(f"{what} ({name!r}) leads outside {root} through a symlink; refusing to use it")
    return path


def _sha256(path: Path) -> str:
    """The file's SHA-256, read through ``safe_io.open_read``: a symbolic link is refused, never hashed (its
    target could be any file, however large)."""
    digest = hashlib.sha256()
    with safe_io.open_read(path) as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as JSON, atomically and never through a link (``safe_io.write_atomic``)."""
    safe_io.write_atomic(path, json.dumps(data, indent=1))


def save_checkpoint(directory: Path, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> Path:
    """Write one checkpoint atomically to ``directory`` (which must not exist yet)."""
    _check_state_size(state)
    tmp = directory.with_name(f".tmp-{directory.name}")
    _remove(tmp)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp / TENSORS))
    full_state = {"format_version": FORMAT_VERSION, **state, "tensors_sha256": _sha256(tmp / TENSORS)}
    key = integrity_key()
    if key is not None:
        full_state[HMAC_FIELD] = _hmac(key, full_state)
    safe_io.write_atomic(tmp / STATE, json.dumps(full_state))
    _remove(directory)
    os.replace(tmp, directory)
    return directory


def _check_state_size(state: dict[str, Any]) -> None:
    """Refuse, before writing, a state.json larger than loading accepts: such a checkpoint could
    never be resumed or evaluated. (An environment keeping a data set in its attributes is the
    usual cause: its state is captured field by field.)"""
    size = len(json.dumps(state))
    if size > MAX_STATE_BYTES:
        sizes = {key: len(json.dumps(value)) for key, value in state.items()}
        largest = max(sizes, key=sizes.__getitem__)
        raise CheckpointError(
            f"checkpoint state would be {size} bytes, over the {MAX_STATE_BYTES} bytes pgrad reads back "
            f"('{largest}' alone is {sizes[largest]} bytes)"
        )


def _remove(path: Path) -> None:
    """Delete a checkpoint folder; a symlink in its place is unlinked, never followed."""
    if path.is_symlink():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


# Everything pgrad writes at the top of a run folder: ``--overwrite`` deletes these (and nothing else).
RUN_FILES = (
    "config.yaml",
    "metrics.jsonl",
    "events.jsonl",
    "randomization.jsonl",  # domain randomisation's draws (pgrad.envs.randomize)
    "checkpoints",
    "tb",
    "report",
    "export",  # pgrad export's default output folder
    "halt_trajectories.npz",
    "halt_batch.npz",
    "spaces.json",  # written by pgrad.api's learn
    "samples",  # a language-model run's sampled evaluation responses (pgrad.lm.evaluate.write_samples)
)
# The folders among them (the rest are files).
RUN_FOLDERS = ("checkpoints", "tb", "report", "export", "samples")
LOCK_FILE = ".pgrad.lock"  # the run's lock (pgrad.runners.context.RunLock); never deleted while a run may hold it
# Files pgrad writes by a fixed name inside those folders (a checkpoint's own files are checked when it is read,
# ``load_checkpoint``; the report's PNGs, one per panel, when the report is written).
NESTED_FILES = (
    "checkpoints/index.json",
    "report/report.html",
    "export/policy.onnx",
    "export/policy.onnx.json",
    "export/policy.pt",
    "export/policy.pt.json",
)
# Temporaries: pgrad's own have fresh random names (``safe_io.atomic_file``), so no link can wait for one; these
# fixed names are the ones older versions used, where a received folder may still hold a planted link.
TEMPORARY_FILES = (
    ".config.yaml.tmp",
    ".metrics.jsonl.tmp",
    ".events.jsonl.tmp",
    ".randomization.jsonl.tmp",
    ".spaces.json.tmp",
    "checkpoints/.index.json.tmp",
)
# The one list of a run folder's entries that every command checks before it reads or writes any of them
# (``check_run_folder``); tests/test_hostile_links.py plants a link at each name, for every command.
RUN_ENTRIES = (*RUN_FILES, LOCK_FILE, *NESTED_FILES, *TEMPORARY_FILES)
# Folders that hold only pgrad's outputs (the report's PNGs, one per panel; the exported files): no link in them.
OUTPUT_FOLDERS = ("report", "export", "samples")


def check_run_folder(run_dir: Path, writing: bool = False) -> None:
    """No entry of ``RUN_ENTRIES`` in ``run_dir``, and no file in its ``OUTPUT_FOLDERS``, is a link: each stays
    inside the folder (``inside_run``), is not a symbolic link at all and, when the command will be ``writing``
    into the folder, is no file with other hard links (a write through one name changes all of them). One
    ``CheckpointError`` line names the first that is. A received folder is data: pgrad never reads or writes
    through a link planted in it."""
    run_dir = Path(run_dir)
    for name in RUN_ENTRIES:
        inside_run(run_dir, name, name)
    for path in (run_dir / name for name in RUN_ENTRIES):
        _refuse_link(path, writing)
    for folder in OUTPUT_FOLDERS:  # the entries above include these folders: neither is a link here
        if (run_dir / folder).is_dir():
            for path in sorted((run_dir / folder).iterdir()):
                _refuse_link(path, writing)


def _refuse_link(path: Path, writing: bool) -> None:
    reason = safe_io.link_refusal(path, writing)
    if reason is not None:
        raise CheckpointError(reason)


# ---- integrity: SHA-256 detects corruption; an HMAC key detects tampering ------------------------

# The SHA-256 of the tensor file sits in the unsigned state.json: anyone who edits the tensors can
# recompute it. It detects accidents (a truncated copy, a flipped bit), not an adversary. With a
# secret key in this environment variable, every checkpoint written carries an HMAC-SHA256 over
# state.json (which holds that SHA-256, so it covers the tensors too), and every checkpoint read
# must carry a valid one: tamper evidence for whoever holds the key. What the signature covers is then
# held to what is used: the step against the folder's name (``check_step_name``), the config against
# config.yaml (``pgrad.runs.check_config_recorded``), and spaces.json carries its own HMAC bound to the
# run (``pgrad.policy.spaces_signature``).
KEY_VARIABLE = "PGRAD_CHECKPOINT_KEY"
HMAC_FIELD = "hmac_sha256"
# state.json holds counters, config, RNG and environment state: kilobytes for every built-in env.
# The bound keeps a hostile file from making the loader allocate without limit.
MAX_STATE_BYTES = 64 * 2**20


def integrity_key() -> bytes | None:
    """The secret of ``PGRAD_CHECKPOINT_KEY`` as bytes (checkpoints then carry an HMAC), or None when unset."""
    key = os.environ.get(KEY_VARIABLE)
    return key.encode() if key else None


def signature(key: bytes, document: Any) -> str:
    """HMAC-SHA256 under ``key`` of ``document``'s canonical JSON. Through JSON once, so that the writer (int
    keys, tuples) and the reader (what JSON gave back) sign the same text."""
    body = json.loads(json.dumps(document))
    return hmac.new(key, json.dumps(body, sort_keys=True).encode(), hashlib.sha256).hexdigest()


def _hmac(key: bytes, state: dict[str, Any]) -> str:
    return signature(key, {k: v for k, v in state.items() if k != HMAC_FIELD})


def check_step_name(directory: Path, state: dict[str, Any]) -> None:
    """A folder named ``step_<N>`` must hold step N. ``latest``, ``best`` and a resume choose checkpoints by
    their names, and the step inside state.json is signed (``PGRAD_CHECKPOINT_KEY``): so a signed checkpoint
    renamed from another step (of this run or another) is refused, not taken for the step its name says.
    A saved agent's folder (``pgrad.api``'s ``save``) has a name of the user's choosing and is not checked."""
    step = state.get("step")
    if not CHECKPOINT_NAME.fullmatch(directory.name) or isinstance(step, bool) or not isinstance(step, int):
        return
    if directory.name != f"step_{step:010d}":
        raise CheckpointError(
            f"checkpoint {directory} holds step {step}, not the step its name says (renamed from another "
            "checkpoint?); refusing to load it"
        )


def load_checkpoint(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a checkpoint. Raises ``CheckpointError`` with the reason if it is unusable."""
    directory = Path(directory)
    state_path = inside_run(directory, STATE, f"checkpoint file {STATE}")
    tensor_path = inside_run(directory, TENSORS, f"checkpoint file {TENSORS}")
    for path in (state_path, tensor_path):  # a link inside the folder is refused too: nothing is read through one
        if path.is_symlink():
            raise CheckpointError(
                f"checkpoint {directory}: {path.name} is a symbolic link; refusing to read through it"
            )
    if not state_path.is_file() or not tensor_path.is_file():
        raise CheckpointError(f"checkpoint {directory} is incomplete: it needs {STATE} and {TENSORS}")
    size = state_path.stat().st_size
    if size > MAX_STATE_BYTES:
        raise CheckpointError(
            f"checkpoint {directory}: {STATE} is {size} bytes, over the {MAX_STATE_BYTES} bytes pgrad reads"
        )
    try:
        state = json.loads(_read_checkpoint_file(state_path).decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise CheckpointError(f"checkpoint {directory}: {STATE} is corrupted ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        found = state.get("format_version") if isinstance(state, dict) else None
        raise CheckpointError(
            f"checkpoint {directory} has format version {found!r}; this pgrad reads version {FORMAT_VERSION}"
        )
    key = integrity_key()
    if key is not None:
        recorded = state.get(HMAC_FIELD)
        if not isinstance(recorded, str) or not hmac.compare_digest(recorded, _hmac(key, state)):
            what = "carries no HMAC" if recorded is None else "has an HMAC that does not match"
            raise CheckpointError(
                f"checkpoint {directory} {what} under {KEY_VARIABLE} (written without this key, or tampered "
                "with); refusing to load it"
            )
    check_step_name(directory, state)
    if _checksum(tensor_path) != state.get("tensors_sha256"):
        raise CheckpointError(
            f"checkpoint {directory}: {TENSORS} does not match the checksum recorded in {STATE} "
            "(corrupted); refusing to load it"
        )
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {directory}: {TENSORS} is not a valid safetensors file ({exc})") from None
    check_plain_arrays(state.get("env_state"), f"checkpoint {directory}: {STATE} env_state")
    return tensors, state


def _read_checkpoint_file(path: Path) -> bytes:
    """A checkpoint file's bytes (``safe_io.read_bytes``: no link followed); refusals as ``CheckpointError``."""
    try:
        return safe_io.read_bytes(path)
    except PgradError as exc:
        raise CheckpointError(str(exc)) from None


def _checksum(path: Path) -> str:
    """``_sha256`` with its refusals as ``CheckpointError``."""
    try:
        return _sha256(path)
    except PgradError as exc:
        raise CheckpointError(str(exc)) from None


# A NumPy array in JSON (pgrad.envs.state) is rebuilt with its recorded dtype; a dtype like U10000000
# would make 13 KB of JSON allocate gigabytes. Real env state uses numbers, bools and short strings.
MAX_ITEM_BYTES = 64


def check_plain_arrays(value: Any, where: str, depth: int = 0) -> None:
    """Refuse, before anything is allocated, any encoded array or scalar whose dtype is not a plain
    NumPy dtype of at most ``MAX_ITEM_BYTES`` bytes per item, or whose shape does not match its data."""
    if depth > 100:
        raise CheckpointError(f"{where} is nested more than 100 levels deep")
    if isinstance(value, list):
        for item in value:
            check_plain_arrays(item, where, depth + 1)
        return
    if not isinstance(value, dict):
        return
    if "dtype" in value and ("__ndarray__" in value or "__npscalar__" in value):
        try:
            dtype = np.dtype(value["dtype"])
        except (TypeError, ValueError, SyntaxError):
            raise CheckpointError(f"{where} holds an array of unknown dtype {value['dtype']!r}") from None
        if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None or dtype.itemsize > MAX_ITEM_BYTES:
            raise CheckpointError(
                f"{where} holds an array of dtype {value['dtype']!r} (allowed: plain dtypes of at most "
                f"{MAX_ITEM_BYTES} bytes per item)"
            )
        if "__ndarray__" in value:
            shape = value.get("shape")
            if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
                raise CheckpointError(f"{where} holds an array with shape {shape!r} (allowed: a list of sizes)")
    for item in value.values():
        check_plain_arrays(item, where, depth + 1)


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
    """An optimizer's state as (tensors named ``prefix.*``, the JSON-able rest) for a checkpoint."""
    return _optimizer_state_to_parts(prefix, optimizer.state_dict())


def optimizer_from_parts(prefix: str, optimizer: Any, tensors: dict[str, torch.Tensor], parts: dict[str, Any]) -> None:
    """Load an optimizer's state from the tensors and JSON parts ``optimizer_to_parts`` wrote under ``prefix``."""
    optimizer.load_state_dict(_optimizer_state_from_parts(prefix, tensors, parts))


def numpy_to_tensors(prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """NumPy arrays as contiguous tensors named ``prefix.name``, for safetensors."""
    return {f"{prefix}.{name}": torch.from_numpy(np.ascontiguousarray(value)) for name, value in arrays.items()}


def tensors_to_numpy(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The tensors named ``prefix.*`` back as NumPy arrays, keyed by the name after the prefix."""
    head = f"{prefix}."
    return {key[len(head) :]: value.numpy() for key, value in tensors.items() if key.startswith(head)}


# ---- after a kill or a failed write ------------------------------------------------------------


def remove_partial_writes(root: Path) -> None:
    """Delete what an interrupted write left in ``checkpoints/``: ``.tmp-step_*`` folders and the index's
    temporary files. Only the run holding the folder's lock calls this, so none of them is being written. Best
    effort: it runs after a failed write too, where the disk may be read-only or gone, and then leaves them."""
    root = Path(root)
    try:
        partial = list(root.glob(".tmp-step_*"))
    except OSError:
        partial = []
    for path in partial:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
    safe_io.remove_temporaries(root, INDEX)


def newest_loadable(root: Path) -> tuple[TrainState, Path, list[tuple[str, str]]]:
    """The newest whole checkpoint folder under ``root``, whatever ``index.json`` says, read.

    The index can lag the folders (a kill between the atomic rename of a new checkpoint and the index
    update), and the newest checkpoint can be damaged (a disk error, a truncated copy): a resume then
    takes the newest one that is whole (``newest_whole``). A whole checkpoint that does not load
    (another format version, invalid fields, a failed HMAC) is not skipped: that is no accident, and
    its error is raised. Returns the state, its folder, and the (name, reason) of every newer folder
    skipped.
    """
    path, skipped = newest_whole(root)
    return read_train_state(path), path, skipped


def newest_whole(root: Path) -> tuple[Path, list[tuple[str, str]]]:
    """The newest checkpoint folder under ``root`` that is whole, and the (name, reason) of every newer
    one skipped. Damaged means incomplete, an unreadable ``state.json`` or tensors that do not match
    their checksum (``damage``); symlinks are skipped too (never followed). Folders are
    ``step_<10 digits>``, so their names sort by step."""
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
        return path, skipped
    detail = f"; skipped: {'; '.join(f'{name}: {reason}' for name, reason in skipped)}" if skipped else ""
    raise CheckpointError(f"no whole checkpoint in {root}{detail}")


# state.json files larger than this are not parsed to look for damage (loading bounds them itself)
_DAMAGE_CHECK_BYTES = 64 * 2**20


def damage(directory: Path) -> str | None:
    """Why a checkpoint folder is damaged (what a disk error or an interrupted copy leaves), or None."""
    state_path, tensor_path = directory / STATE, directory / TENSORS
    for path in (state_path, tensor_path):  # never followed: its target could be any file, however large
        if path.is_symlink():
            return f"{path.name} is a symbolic link (never followed)"
    if not state_path.is_file() or not tensor_path.is_file():
        return f"incomplete (it needs {STATE} and {TENSORS})"
    if state_path.stat().st_size > _DAMAGE_CHECK_BYTES:
        return None
    try:
        state = json.loads(safe_io.read_bytes(state_path).decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, PgradError):
        return f"{STATE} is not readable JSON"
    recorded = state.get("tensors_sha256") if isinstance(state, dict) else None
    try:
        actual = _sha256(tensor_path) if isinstance(recorded, str) else None
    except PgradError as exc:  # not a regular file
        return str(exc)
    if actual is not None and actual != recorded:
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
    stream of its own (A3C's workers re-seed). ``replay`` is the off-policy replay buffer's written rows
    and ring position (``ReplayBuffer.state_arrays``; empty when not saved, ``loop.save_buffer``).
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
    replay: dict[str, np.ndarray] = field(default_factory=dict)
    pgrad_version: str = ""
    # written by CheckpointStore.save, read back on load
    score: float | None = None
    healthy: bool = True

    def learner(self) -> LearnerState:
        """The learner part of the state (step, modules, optimizers, normalisers, algorithm state): what a rollback
        restores."""
        return LearnerState(self.step, self.modules, self.optimizers, self.normalizers, self.algo_state)

    def to_parts(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors for safetensors, plain values for state.json)."""
        tensors, optimizers = _learner_to_parts("", self.learner(), self.collector)
        if self.rng_torch is not None:
            tensors["rng.torch"] = self.rng_torch
        tensors.update(numpy_to_tensors("replay", self.replay))
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
            _check_episodes(state.get("episodes") or {})
            for key in ("algo_state", "guard"):
                if not isinstance(state.get(key) or {}, dict):
                    raise TypeError(f"'{key}' must be a mapping; got {state[key]!r:.60}")
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
                replay=tensors_to_numpy("replay", tensors),
                pgrad_version=str(state.get("pgrad_version", "")),
                score=state.get("score"),
                healthy=bool(state.get("healthy", True)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"checkpoint {source} is malformed: {type(exc).__name__}: {exc}") from None


def _check_episodes(episodes: Any) -> None:
    """The episode history a resume continues its return statistics from: numbers only."""
    if not isinstance(episodes, dict):
        raise TypeError(f"'episodes' must be a mapping; got {episodes!r:.60}")
    returns, lengths = episodes.get("returns", []), episodes.get("lengths", [])
    numbers = isinstance(returns, list) and all(
        isinstance(r, (int, float)) and not isinstance(r, bool) for r in returns
    )
    counts = isinstance(lengths, list) and all(isinstance(n, int) and not isinstance(n, bool) for n in lengths)
    count = episodes.get("count", 0)
    if not numbers or not counts or not isinstance(count, int) or isinstance(count, bool):
        raise TypeError("'episodes' must hold lists of returns (numbers) and lengths (integers) and a count")


def read_train_state(directory: Path) -> TrainState:
    """Load and verify one checkpoint folder into a ``TrainState``: its files (``load_checkpoint``), its
    layout (``TrainState.from_parts``) and its values (``check_values``)."""
    tensors, state = load_checkpoint(directory)
    train_state = TrainState.from_parts(tensors, state, Path(directory))
    check_values(train_state, Path(directory))
    return train_state


# ---- values: what the numbers in a checkpoint may be -------------------------------------------------
#
# A checkpoint whose shapes fit can still hold numbers no training run writes: NaN or Inf weights (then
# every action is NaN, or one constant), a negative or NaN normaliser variance (sqrt of it: NaN
# observations), a NaN or negative Adam step or a negative second moment (sqrt: NaN updates, which the
# guard would then blame on the learning rate). Evaluation, export and resume would carry them on in
# silence, so loading refuses each, naming the tensor. One pass over each tensor, once per load.

# Optimizer slots that are running averages of squares (>= 0 by construction), per torch's names.
SECOND_MOMENTS = frozenset({"exp_avg_sq", "max_exp_avg_sq", "square_avg"})


def value_problem(values: torch.Tensor | np.ndarray, non_negative: bool = False) -> str | None:
    """What is wrong with the numbers of one tensor (``"holds NaN"``, ``"holds Inf"``, ``"holds a negative
    value (-1.0)"``), or None. Integer and boolean tensors are finite by construction."""
    tensor = torch.as_tensor(values).detach()
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        return "holds NaN" if bool(torch.isnan(tensor).any()) else "holds Inf"
    if non_negative and tensor.numel() and tensor.dtype != torch.bool:
        smallest = tensor.min()
        if smallest < 0:
            return f"holds a negative value ({smallest.item():.6g})"
    return None


def _step_problem(value: Any) -> str | None:
    """An optimizer's step count (a number or a 0-d tensor) must be a whole number >= 0."""
    if isinstance(value, torch.Tensor) and value.numel() != 1:
        return None  # not a single number: check_optimizer_state refuses it, naming its shape
    number = value.item() if isinstance(value, torch.Tensor) else value
    if not isinstance(number, (int, float)) or isinstance(number, bool):
        return None  # its type is check_optimizer_state's to refuse, when the optimizer is filled
    if not math.isfinite(number) or number < 0 or not float(number).is_integer():
        return f"must be a whole number >= 0; got {number!r}"
    return None


def learner_problem(learner: LearnerState) -> str | None:
    """The first tensor of a learner (weights, optimizer state, normaliser statistics) whose values are
    invalid, named as the checkpoint names it, with what is wrong; None when all are valid."""
    return _modules_problem(learner) or _optimizers_problem(learner) or _normalizers_problem(learner)


def _modules_problem(learner: LearnerState) -> str | None:
    for name, tensors in learner.modules.items():
        for key, tensor in tensors.items():
            problem = value_problem(tensor) if isinstance(tensor, torch.Tensor) else None
            if problem is not None:
                return f"module '{name}' tensor '{key}' {problem} (a trained network holds finite weights only)"
    return None


def _optimizers_problem(learner: LearnerState) -> str | None:
    for name, saved in learner.optimizers.items():
        slots = saved.get("state") if isinstance(saved, dict) else None
        for param_id, values in (slots or {}).items():
            for slot, value in (values if isinstance(values, dict) else {}).items():
                problem = _slot_problem(slot, value)
                if problem is not None:
                    return f"optimizer '{name}' state.{param_id}.{slot} {problem}"
    return None


def _slot_problem(slot: str, value: Any) -> str | None:
    """One optimizer slot: the step a whole number >= 0, every moment finite, second moments >= 0."""
    if slot == "step":
        return _step_problem(value)
    if not isinstance(value, torch.Tensor):
        return None
    moment = slot in SECOND_MOMENTS
    problem = value_problem(value, non_negative=moment)
    return f"{problem} (a second moment is finite and >= 0)" if problem is not None and moment else problem


def _normalizers_problem(learner: LearnerState) -> str | None:
    for name, stats in learner.normalizers.items():
        for key, array in stats.items():
            counted = key in ("var", "count")
            problem = value_problem(array, non_negative=counted)
            if problem is not None:
                need = " (a variance and a count are finite and >= 0)" if counted else ""
                return f"normalizers.{name}.{key} {problem}{need}"
    return None


def check_values(state: TrainState, source: Path) -> None:
    """Refuse a checkpoint holding invalid values (``learner_problem``), in its own state or in a guard
    rollback state (restored later, mid-run), in one line naming the tensor."""
    learners = {"": state.learner(), **{f" (rollback slot {s})": ls for s, ls in state.rollback_states.items()}}
    for where, learner in learners.items():
        problem = learner_problem(learner)
        if problem is not None:
            raise CheckpointError(f"checkpoint {source}{where}: {problem}; refusing to load it")


def weights_finite(modules: dict[str, dict[str, torch.Tensor]]) -> bool:
    """Whether every floating-point tensor of these state dicts is finite: what a checkpoint must hold to be
    marked healthy (a rollback returns to the newest healthy one)."""
    return all(
        value_problem(tensor) is None
        for tensors in modules.values()
        for tensor in tensors.values()
        if isinstance(tensor, torch.Tensor)
    )


def load_modules(modules: dict[str, torch.nn.Module], state: TrainState | LearnerState, source: Path) -> None:
    """Fill ``modules`` from the checkpoint's state dicts; a shape or name mismatch is one clear line."""
    for name, module in modules.items():
        if name not in state.modules:
            raise CheckpointError(f"checkpoint {source} has no weights for module '{name}'")
        check_module_state(name, module, state.modules[name], source)
        try:
            module.load_state_dict(state.modules[name])
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            raise CheckpointError(
                f"checkpoint {source}: module '{name}' does not fit this configuration "
                f"({' '.join(line.strip() for line in first[:3])})"
            ) from None


def load_optimizers(optimizers: dict[str, Any], state: TrainState | LearnerState, source: Path) -> None:
    """Fill each optimizer from ``state``, after checking its tensors' names, shapes and dtypes against it."""
    for name, optimizer in optimizers.items():
        if name not in state.optimizers:
            raise CheckpointError(f"checkpoint {source} has no state for optimizer '{name}'")
        check_optimizer_state(name, optimizer, state.optimizers[name], source)
        try:
            optimizer.load_state_dict(_own_implementation(optimizer, state.optimizers[name]))
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(
                f"checkpoint {source}: optimizer '{name}' does not fit this configuration ({exc})"
            ) from None


# ---- checking a checkpoint against what it will fill, before anything is copied ------------------
#
# torch copies a saved tensor into a parameter with a silent dtype cast, and an optimizer takes
# whatever moments it is given: an undersized Adam moment then broadcasts into NaN updates or, in
# the fused kernels, reads and writes out of bounds. So every tensor's name, shape and dtype is
# checked against the module or optimizer it will fill, and a mismatch is one line naming it.

# The per-parameter slots each optimizer keeps (torch's names; pgrad's SharedOptimizer uses them too).
OPTIMIZER_SLOTS = {
    "adam": {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"},
    "rmsprop": {"step", "square_avg", "momentum_buffer", "grad_avg"},
}


def _describe(tensor: Any) -> str:
    if isinstance(tensor, torch.Tensor):
        return f"shape {tuple(tensor.shape)} dtype {str(tensor.dtype).removeprefix('torch.')}"
    return f"a {type(tensor).__name__}"


def check_module_state(name: str, module: torch.nn.Module, saved: Any, source: Path) -> None:
    """Every tensor of ``module`` present in ``saved`` with its shape and dtype, and nothing else."""
    own = module.state_dict()
    if not isinstance(saved, dict):
        raise CheckpointError(f"checkpoint {source}: module '{name}' weights are not a mapping")
    missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {source}: module '{name}' does not fit this configuration "
            f"(missing: {', '.join(missing) or 'none'}; unexpected: {', '.join(unexpected) or 'none'})"
        )
    for key, tensor in own.items():
        value = saved[key]
        if not isinstance(value, torch.Tensor) or value.shape != tensor.shape or value.dtype != tensor.dtype:
            raise CheckpointError(
                f"checkpoint {source}: module '{name}' tensor '{key}' has {_describe(value)}; "
                f"this configuration needs {_describe(tensor)}"
            )


# How an optimizer computes (fused/foreach kernels, CUDA-graph capture) is this machine's choice, not
# the checkpoint's: a checkpoint from a torch without fused Adam loads here, and none can switch a
# kernel on. These keys keep the optimizer's own values.
IMPLEMENTATION_KEYS = ("fused", "foreach", "capturable", "differentiable")


def _own_implementation(optimizer: Any, saved: dict[str, Any]) -> dict[str, Any]:
    own_groups = optimizer.state_dict()["param_groups"]
    groups = [
        {**group, **{key: own[key] for key in IMPLEMENTATION_KEYS if key in own}}
        for own, group in zip(own_groups, saved["param_groups"], strict=True)
    ]
    return {**saved, "param_groups": groups}


def _optimizer_parameters(optimizer: Any) -> list[list[torch.Tensor]]:
    """The parameters an optimizer fills, by group (torch optimizers and pgrad's SharedOptimizer)."""
    groups = getattr(optimizer, "param_groups", None)
    if groups is not None:
        return [list(group["params"]) for group in groups]
    return [list(optimizer.parameters)]


def check_optimizer_state(name: str, optimizer: Any, saved: Any, source: Path) -> None:
    """The saved optimizer state fits ``optimizer``: as many groups and parameters, hyper-parameters
    of the same types, known slot names, and every moment shaped and typed like its parameter
    (``step`` a single number)."""

    def fail(detail: str) -> typing.NoReturn:
        raise CheckpointError(f"checkpoint {source}: optimizer '{name}' state does not fit: {detail}")

    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict):
        fail("it is not a mapping with 'state' and 'param_groups'")
    own_groups = optimizer.state_dict()["param_groups"]
    saved_groups = saved.get("param_groups")
    parameters = _optimizer_parameters(optimizer)
    if not isinstance(saved_groups, list) or len(saved_groups) != len(own_groups):
        fail(f"param_groups must be a list of {len(own_groups)} groups; got {saved_groups!r:.80}")
    by_id: dict[Any, torch.Tensor] = {}
    for index, (own, group, params) in enumerate(zip(own_groups, saved_groups, parameters, strict=True)):
        # A key torch added since the checkpoint was written may be missing (torch fills in its
        # default); a key this optimizer does not have is refused.
        if not isinstance(group, dict) or "params" not in group or not set(group) <= set(own):
            fail(f"param_groups[{index}] must be a mapping with 'params' and keys among {sorted(own)}")
        ids = group["params"]
        if not isinstance(ids, list) or len(ids) != len(params) or not all(isinstance(i, int) for i in ids):
            fail(f"param_groups[{index}].params must list {len(params)} parameter ids")
        by_id.update(zip(ids, params, strict=True))
        for key, value in own.items():
            if key not in ("params", *IMPLEMENTATION_KEYS) and key in group and not _same_kind(value, group[key]):
                fail(f"param_groups[{index}].{key} must be {_kind(value)}; got {group[key]!r:.80}")
    slots = OPTIMIZER_SLOTS.get(getattr(optimizer, "kind", "") or type(optimizer).__name__.lower())
    for param_id, values in saved["state"].items():
        try:
            parameter = by_id[int(param_id)]
        except (KeyError, ValueError, TypeError):
            fail(f"state for parameter {param_id!r}, which no param_group lists")
        if not isinstance(values, dict):
            fail(f"state of parameter {param_id} is not a mapping")
        for slot, value in values.items():
            where = f"state.{param_id}.{slot}"
            if slots is not None and slot not in slots:
                fail(f"{where} is not a slot this optimizer keeps (allowed: {', '.join(sorted(slots))})")
            if slot == "step":
                ok = (isinstance(value, torch.Tensor) and value.dim() == 0 and value.is_floating_point()) or (
                    isinstance(value, (int, float)) and not isinstance(value, bool)
                )
                if not ok:
                    fail(f"{where} must be a single number; got {_describe(value)}")
            elif not (
                isinstance(value, torch.Tensor) and value.shape == parameter.shape and value.dtype == parameter.dtype
            ):
                fail(f"{where} has {_describe(value)}; its parameter needs {_describe(parameter)}")


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)}"
    return "null" if value is None else f"a {type(value).__name__}"


def _same_kind(own: Any, saved: Any) -> bool:
    """Whether a saved hyper-parameter has the type of the optimizer's own (JSON turns tuples into lists)."""
    if isinstance(own, bool) or own is None:
        return type(saved) is type(own)
    if isinstance(own, (int, float)):
        return isinstance(saved, (int, float)) and not isinstance(saved, bool) and math.isfinite(saved)
    if isinstance(own, (list, tuple)):
        return (
            isinstance(saved, (list, tuple))
            and len(saved) == len(own)
            and all(_same_kind(a, b) for a, b in zip(own, saved, strict=True))
        )
    if isinstance(own, torch.Tensor):  # a tensor learning rate (capturable optimizers)
        return isinstance(saved, (torch.Tensor, int, float)) and not isinstance(saved, bool)
    return isinstance(saved, type(own))


def check_arrays_fit(own: dict[str, Any], saved: dict[str, Any], what: str, source: Path) -> None:
    """Saved arrays (or mappings of arrays, for the normalisers) shaped like this run's own; extra
    names are refused, so is a missing one."""
    if set(own) != set(saved):
        raise CheckpointError(
            f"checkpoint {source}: {what} holds {sorted(saved)}; this configuration needs {sorted(own)}"
        )
    for key, value in own.items():
        if isinstance(value, dict):
            check_arrays_fit(value, saved[key], f"{what}.{key}", source)
            continue
        mine, theirs = np.asarray(value), saved[key]
        # A scalar (a normaliser's count) may come back from the tensor file as one element.
        fits = isinstance(theirs, np.ndarray) and (theirs.shape == mine.shape or (mine.ndim == 0 and theirs.size == 1))
        if not fits or theirs.dtype.kind not in "biuf":
            raise CheckpointError(
                f"checkpoint {source}: {what}.{key} has {_describe_array(theirs)}; this configuration needs "
                f"{_describe_array(mine)}"
            )


def _describe_array(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"shape {value.shape} dtype {value.dtype}"
    return f"a {type(value).__name__}"


def check_rollback_states(modules: dict[str, Any], optimizers: dict[str, Any], state: TrainState, source: Path) -> None:
    """The guard's rollback states in a checkpoint are restored later, mid-run: check them now."""
    for slot, learner in state.rollback_states.items():
        where = Path(f"{source} (rollback slot {slot})")
        for name, module in modules.items():
            if name not in learner.modules:
                raise CheckpointError(f"checkpoint {where} has no weights for module '{name}'")
            check_module_state(name, module, learner.modules[name], where)
        for name, optimizer in optimizers.items():
            if name not in learner.optimizers:
                raise CheckpointError(f"checkpoint {where} has no state for optimizer '{name}'")
            check_optimizer_state(name, optimizer, learner.optimizers[name], where)


# ---- a run's checkpoint folder ----------------------------------------------------------------


class CheckpointStore:
    """``RUN_DIR/checkpoints``: step-named checkpoints, the last ``keep`` kept plus the best.

    ``index.json`` records ``latest``, ``best`` (by a score, higher is better) and, for each
    checkpoint, its health mark, so a rollback can pick the newest healthy one.
    """

    def __init__(self, run_dir: Path, keep: int) -> None:
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / "checkpoints"
        self.keep = keep

    def _check_root(self) -> None:
        """``checkpoints/`` must not be a symlink out of the run folder (pruning deletes in it)."""
        inside_run(self.run_dir, "checkpoints", "the checkpoints folder")

    def index(self) -> dict[str, Any]:
        """The index of the checkpoints (latest, best, best score, entries); an empty one when there is no index file
        yet; refuses a link, an oversized or a malformed index."""
        self._check_root()
        path = self.root / INDEX
        reason = safe_io.link_refusal(path, writing=False)
        if reason is not None:
            raise CheckpointError(reason)
        if not path.is_file():
            return {"latest": None, "best": None, "best_score": None, "entries": {}}
        if path.stat().st_size > MAX_STATE_BYTES:
            raise CheckpointError(
                f"{path} is {path.stat().st_size} bytes, over the {MAX_STATE_BYTES} bytes pgrad reads"
            )
        try:
            index = json.loads(_read_checkpoint_file(path).decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{path} is corrupted ({exc})") from None
        return _checked_index(index, path)

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
        """Writes checkpoint ``step_<step>`` with its health mark and score, makes it the latest (and the best when
        healthy and scored at least as high), prunes to ``keep`` and rewrites the index; returns its path."""
        self._check_root()
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

    def mark_healthy(self, name: str) -> None:
        """Mark checkpoint ``name`` healthy after it was written (the A3C coordinator confirms marks from
        later reports); it may then become ``best``. One pruned in the meantime is left out."""
        index = self.index()
        entry = index["entries"].get(name)
        if entry is None or entry.get("healthy"):
            return
        entry["healthy"] = True
        score = entry.get("score")
        if score is not None and (index["best_score"] is None or score >= index["best_score"]):
            index["best"], index["best_score"] = name, score
        write_json_atomic(self.root / INDEX, index)

    def is_healthy(self, name: str) -> bool:
        """The index's health mark of checkpoint ``name`` (False for one it does not list)."""
        return bool(self.index()["entries"].get(name, {}).get("healthy", False))

    def _prune(self, index: dict[str, Any]) -> None:
        names = sorted(index["entries"])
        protected = {index["best"], index["latest"]}
        for name in names[: max(len(names) - self.keep, 0)]:
            if name in protected:
                continue
            # The index was checked on reading: names are step_<10 digits>, so neither absolute
            # nor '..'. The one way out is a symlink: it is never followed, only its entry goes.
            path = self.root / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            del index["entries"][name]

    def path(self, which: str = "latest") -> Path:
        """``latest``, ``best``, ``last_healthy`` or a checkpoint name; always a folder inside
        ``checkpoints/`` (see ``inside_run``)."""
        index = self.index()
        name: str | None
        if which == "last_healthy":
            healthy = [n for n, e in sorted(index["entries"].items()) if e.get("healthy")]
            name = healthy[-1] if healthy else None
        else:
            name = index.get(which, which) if which in ("latest", "best") else which
        if not name:
            raise CheckpointError(f"no {which} checkpoint in {self.root}")
        path = inside_run(self.root, name, f"checkpoint {which!r}")
        if not path.is_dir():
            raise CheckpointError(f"no {which} checkpoint in {self.root}")
        return path

    def readable(self, which: str = "latest") -> Path:
        """The checkpoint to read for ``which`` (evaluation, export, ``load``). The index is checked as
        ``path`` checks it (a folder from someone else: outside-the-run names and symlinks are refused),
        and a ``latest`` that is damaged (a disk error, a truncated copy) falls back to the newest whole
        one, as a resume does, with a warning line on stderr per checkpoint skipped. Other names are
        exact: asking for ``best`` and getting something else would be wrong."""
        path = self.path(which)
        if which != "latest" or damage(path) is None:
            return path
        path, skipped = newest_whole(self.root)
        for name, reason in skipped:  # worded as resume words it (pgrad.runners.context)
            print(f"pgrad: warning: skipped checkpoint {name}: {reason}", file=sys.stderr)
        return path


def _checked_index(index: Any, path: Path) -> dict[str, Any]:
    """``index.json`` as pgrad writes it, or a ``CheckpointError`` naming the first field that is not.

    Every checkpoint name must be ``step_<10 digits>``: pgrad writes no other, and a name like
    ``/home/you`` or ``../../x`` would otherwise be loaded, or deleted when old checkpoints are pruned.
    """
    allowed = "step_<10 digits> (a folder inside checkpoints/)"
    if not isinstance(index, dict) or not isinstance(index.get("entries", {}), dict):
        raise CheckpointError(f"{path} must be a mapping with 'latest', 'best' and 'entries'; it is not")
    index.setdefault("entries", {})
    for key in ("latest", "best"):
        value = index.setdefault(key, None)
        if value is not None and not (isinstance(value, str) and CHECKPOINT_NAME.fullmatch(value)):
            raise CheckpointError(f"{path}: '{key}' must be {allowed} or null; got {value!r}")
    score = index.setdefault("best_score", None)
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
        raise CheckpointError(f"{path}: 'best_score' must be a number or null; got {score!r}")
    for name, entry in index["entries"].items():
        if not CHECKPOINT_NAME.fullmatch(name):
            raise CheckpointError(f"{path}: entry {name!r} must be named {allowed}")
        if not isinstance(entry, dict):
            raise CheckpointError(f"{path}: entry {name!r} must be a mapping (step, healthy, score); got {entry!r}")
    return index
