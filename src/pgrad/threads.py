"""How many threads the math libraries use: one place, applied to torch and to NumPy's BLAS.

Small networks gain nothing from more threads, and lose badly when the other core is busy: here
a 256x64 by 64x64 float32 matmul takes ~23 us on one OpenBLAS thread and ~4 ms with its default
pool while another process runs. ``run.torch_threads`` sets both.
"""

from __future__ import annotations

import torch
from threadpoolctl import threadpool_limits


def set_threads(count: int) -> None:
    """Use ``count`` threads in torch and in NumPy's BLAS, process-wide."""
    torch.set_num_threads(count)
    threadpool_limits(count, user_api="blas")  # applies process-wide until changed again
