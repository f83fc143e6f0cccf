"""What every runner shares: seeding, memory readings and the result of a run."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resident_memory_mb() -> float:
    """Current resident set size; falls back to the peak where /proc is absent."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    updates: int
    seconds: float
    interrupted: bool
    last_metrics: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None
