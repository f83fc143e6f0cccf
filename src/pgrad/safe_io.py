"""The one way pgrad writes (and reads) a file in a run folder: never through a link.

A run folder may come from someone else (a download, a colleague's tarball, a shared disk), and any
name pgrad uses in it may be planted there as a symbolic link or a hard link to a file elsewhere: a
``metrics.jsonl`` linked to ``~/.bashrc`` would have rows appended to it, a ``.pgrad.lock`` linked to
it would be truncated to a pid. So every file pgrad creates, rewrites or appends to inside a run folder
goes through this module:

- ``write_atomic`` / ``atomic_file``: a fresh temporary beside the target, created exclusively
  (``O_CREAT | O_EXCL | O_NOFOLLOW``, a random name, so no link planted in advance is ever opened),
  written, flushed to disk, then renamed over the target. A target that is a link is refused first.
- ``open_append``: ``O_APPEND | O_NOFOLLOW``, then the open file itself is checked (a regular file with
  one name). Checked once, at open: the per-row writes (metrics on the training loop's hot path) are
  plain buffered writes on the kept descriptor, as before.
- ``open_new``: a file that must not exist yet (a TensorBoard event file), created exclusively.
- ``open_lock``: the run folder's lock file, opened as ``open_append`` opens.
- ``open_read`` / ``read_bytes``: reads of a run folder's files (checksums, ``spaces.json``) refuse a
  symbolic link too: its target could be anything (``/dev/zero``, a 100 GB file, a secret).

Why its own module: the writers sit in several layers (``pgrad.config`` saves ``config.yaml``, the
sinks in ``pgrad.monitor`` append, ``pgrad.checkpoint`` writes the index, the report and the export
write their files), so the helper lives at the bottom of the stack where each of them may import it.
The list of the names it protects, and the up-front check every command makes, are
``pgrad.checkpoint.RUN_ENTRIES`` and ``check_run_folder``.

Hard links are refused where pgrad would change the file (a write through one name changes every
name of the file); reading a hard-linked file is harmless (a folder copied with ``cp -al``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from pgrad.errors import PgradError

# O_NOFOLLOW: the last component of the path may not be a symbolic link (ELOOP). O_NONBLOCK: a FIFO planted
# under the name must not block the open (it is refused just after, as not a regular file). O_CLOEXEC: no
# child process (an async env worker) inherits the descriptor.
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def link_refusal(path: Path, writing: bool = True) -> str | None:
    """Why pgrad must not open ``path`` (a symbolic link; a special file; with ``writing``, a file with
    more than one hard link), or None (the path is missing, a folder or a plain file with one name)."""
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # missing, or a folder above it is a file
        return None
    return _refusal(path, info, writing)


def _refusal(path: Path, info: os.stat_result, writing: bool) -> str | None:
    if stat.S_ISLNK(info.st_mode):
        return (
            f"{path} is a symbolic link; pgrad reads and writes no file through a link (in a run folder from "
            "elsewhere one can point at any file): remove the link, or choose another path"
        )
    if stat.S_ISDIR(info.st_mode):
        return None
    if not stat.S_ISREG(info.st_mode):
        return f"{path} is not a regular file (a device, FIFO or socket); pgrad reads and writes only plain files there"
    if writing and info.st_nlink > 1:
        return (
            f"{path} has {info.st_nlink} hard links (other names share its data, maybe outside the run folder), so "
            "writing it would change them too; replace it with a copy of its own (or copy the folder with 'cp -r')"
        )
    return None


def refuse_link(path: Path, writing: bool = True) -> None:
    """Raise ``PgradError`` (one line) when ``link_refusal`` gives a reason."""
    reason = link_refusal(path, writing)
    if reason is not None:
        raise PgradError(reason)


def _open(path: Path, flags: int, writing: bool) -> int:
    """``os.open`` with ``_NOFOLLOW``, the opened file checked (``_refusal`` on its ``fstat``): the check is of
    what was opened, not of a name that could change in between. The non-blocking mode is cleared after."""
    try:
        fd = os.open(path, flags | _NOFOLLOW, 0o644)
    except OSError:
        reason = link_refusal(path, writing)  # ELOOP (a link), EEXIST (O_EXCL), ENXIO (a FIFO): say why in words
        if reason is not None:
            raise PgradError(reason) from None
        raise
    try:
        reason = _refusal(Path(path), os.fstat(fd), writing)
        if reason is not None:
            raise PgradError(reason)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_append(path: Path, buffering: int = -1) -> IO[str]:
    """``path`` opened to append text (created if missing), never through a link (see the module docstring)."""
    fd = _open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, writing=True)
    return open(fd, "a", buffering=buffering, encoding="utf-8")


def open_new(path: Path) -> IO[bytes]:
    """A new file ``path`` opened to write bytes, unbuffered; refused if anything (a link) has the name already."""
    return open(_open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, writing=True), "wb", buffering=0)


def open_lock(path: Path, create: bool) -> IO[str] | None:
    """The lock file ``path`` opened to read and write (``create``: made if missing; otherwise None when it is
    missing), never through a link."""
    try:
        fd = _open(path, os.O_RDWR | (os.O_CREAT if create else 0), writing=True)
    except FileNotFoundError:
        if create:
            raise
        return None
    return open(fd, "r+", encoding="utf-8")


def open_read(path: Path) -> IO[bytes]:
    """``path`` opened to read bytes; a symbolic link or a special file is refused (hard links are fine)."""
    return open(_open(path, os.O_RDONLY, writing=False), "rb")


def read_bytes(path: Path) -> bytes:
    """The bytes of ``path``, read as ``open_read`` opens it."""
    with open_read(path) as handle:
        return handle.read()


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """A binary file to fill; on leaving the block without an error it is flushed to disk and renamed to
    ``path`` (which must not be a link), so ``path`` holds the old bytes or the new, never a mix; on an error
    the temporary is removed and ``path`` is untouched."""
    path = Path(path)
    refuse_link(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        handle = open(_open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, writing=True), "wb")
    except OSError as exc:  # a missing or unwritable folder: named by the file the caller asked for
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):  # a read-only or full disk: the temporary may be gone or stay
            tmp.unlink()
        if isinstance(exc, OSError) and exc.filename in (None, str(tmp)):  # a full disk: name the target
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise


def write_atomic(path: Path, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` (text is written as UTF-8) through ``atomic_file``."""
    with atomic_file(path) as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)


def remove_temporaries(folder: Path, name: str) -> None:
    """Delete the temporaries ``atomic_file`` left for ``folder/name`` when a write was killed (and the fixed
    ``.name.tmp`` of older versions). Unlinking never follows a link; an error (a read-only disk) leaves them."""
    for path in [*Path(folder).glob(f".{name}.*.tmp"), Path(folder) / f".{name}.tmp"]:
        with contextlib.suppress(OSError):
            if not path.is_dir() or path.is_symlink():
                path.unlink()
