"""Async env workers die with the process that started them.

``AsyncVectorEnv`` runs each env in a worker process. A worker blocked in a slow ``step`` (a hung
simulator), or one of thousands forked for ``env.num_envs``, outlived a parent that was killed: nothing
told it. On Linux each worker asks the kernel for SIGKILL when its parent exits (``prctl(PR_SET_PDEATHSIG)``,
the call that costs nothing after it is made), then checks that the parent did not exit before the request
(the race between fork and prctl). Elsewhere the workers keep gymnasium's own behaviour: a worker exits at
its next command, when the pipe from its parent reads end-of-file.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from typing import Any

from gymnasium.vector.async_vector_env import _async_worker

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> bool:
    """Ask the kernel to kill this process when its parent exits; exit now if the parent is gone already.
    Returns whether the request was made (Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        return False
    parent = multiprocessing.parent_process()
    if parent is not None and not parent.is_alive():  # it died between our fork and the request
        os._exit(1)
    return True


def async_worker(
    index: int,
    env_fn: Any,
    pipe: Any,
    parent_pipe: Any,
    shared_memory: Any,
    error_queue: Any,
    autoreset_mode: Any,
    semaphore: Any,
) -> None:
    """gymnasium's ``AsyncVectorEnv`` worker (its ``worker=`` argument), in a process that dies with its parent."""
    die_with_parent()
    _async_worker(index, env_fn, pipe, parent_pipe, shared_memory, error_queue, autoreset_mode, semaphore)
