import contextlib
import os
import signal
from collections.abc import Callable, Iterator

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("PGRAD_TEST", "1")


@pytest.fixture
def quiet_sets() -> list[str]:
    """Config overrides that keep test runs quiet and free of TensorBoard start-up cost."""
    return ["run.progress=false", "run.tensorboard=false"]


@contextlib.contextmanager
def _hang_guard(seconds: int) -> Iterator[None]:
    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"hang guard: still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def hang_guard() -> Callable[[int], contextlib.AbstractContextManager[None]]:
    """``with hang_guard(120): ...`` fails the test with TimeoutError if the block is still running
    after that many seconds. A guard against a hang that would otherwise stall CI (pytest-timeout is
    not a dependency), not a speed assertion: set it far above the block's usual time. SIGALRM, so
    POSIX and the main thread only; the exception is raised wherever the block is, so runners'
    ``finally`` clauses still stop their workers."""
    return _hang_guard
