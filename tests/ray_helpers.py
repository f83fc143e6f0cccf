"""Ray for the tests: an isolated instance per module (its own temp dir), and its processes ended by the PIDs
found through that temp dir (never by name: other engineers' Ray may run here).

Ray reads its auth settings when it is imported, so a test module imports this module before ``ray``: it turns
token auth on with a token file of this test process (Ray 2.60 turns token auth on by default, and a client
without it waits 20 s before failing), usage statistics off and every node on 127.0.0.1."""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pgrad

SOURCE = str(Path(pgrad.__file__).resolve().parent.parent)  # the workers import this pgrad, not an installed one


def _configure_process() -> None:
    if os.environ.get("RAY_AUTH_TOKEN_PATH", "").startswith("/tmp/pgray-token"):
        return
    folder = Path(tempfile.mkdtemp(prefix="pgray-token"))
    (folder / "auth_token").write_text(secrets.token_hex(32))
    atexit.register(shutil.rmtree, folder, True)
    os.environ.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(folder / "auth_token"),
        RAY_USAGE_STATS_ENABLED="0",
        # Ray on the loopback only: without this a driver joining 127.0.0.1:PORT rewrites it to the machine's
        # network address, where a test cluster started on 127.0.0.1 does not listen, and waits for ever
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
    )


_configure_process()


@contextmanager
def ray_environment() -> Iterator[Path]:
    """Ray's settings for one test module: a short temp dir of its own (socket paths are length-limited) and the
    workers' PYTHONPATH. Restores the variables and ends every process that still uses the temp dir afterwards."""
    temp = Path(tempfile.mkdtemp(prefix="pgray", dir="/tmp"))
    names = {
        "RAY_TMPDIR": str(temp),
        "PYTHONPATH": os.pathsep.join(p for p in (SOURCE, os.environ.get("PYTHONPATH", "")) if p),
    }
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(names)
    try:
        yield temp
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        end_processes_using(temp)
        shutil.rmtree(temp, ignore_errors=True)


@contextmanager
def local_ray() -> Iterator[None]:
    """A local Ray of 2 CPUs for one test module (``ray_environment``'s settings), shut down afterwards."""
    import ray

    with ray_environment():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="WARNING",
            runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}},
        )
        try:
            yield
        finally:
            ray.shutdown()


def processes_using(folder: Path) -> list[int]:
    """PIDs (not this process) whose command line or open files mention ``folder``: the Ray processes it started."""
    mine, found = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == mine:
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(folder) in command:
            found.append(int(entry.name))
    return found


def end_processes_using(folder: Path, grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds, to every process started with ``folder`` in its command."""
    pids = processes_using(folder)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
        time.sleep(0.1)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
