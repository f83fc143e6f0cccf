"""The statistics of benchmarks/bench_defaults.py (numpy only): average ranks, the exact one-sided Wilcoxon
signed-rank test and the per-env normalisation, against hand-computed values."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_defaults.py"
SPEC = importlib.util.spec_from_file_location("bench_defaults", PATH)
assert SPEC is not None and SPEC.loader is not None
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


def test_average_ranks_share_ties():
    assert bench.average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


@pytest.mark.parametrize(
    ("differences", "w_plus", "p", "n"),
    [
        ([1.0, 2.0, 3.0], 6.0, 1 / 8, 3),  # all 8 sign patterns of ranks 1-3: only +++ reaches 6
        ([1.0, -2.0, 3.0], 4.0, 3 / 8, 3),  # W+ >= 4: {1,3}, {2,3}, {1,2,3}
        ([0.0, 1.0, -2.0, 3.0], 4.0, 3 / 8, 3),  # a zero difference is dropped
        ([-1.0, -1.0], 0.0, 1.0, 2),  # tied |d| share rank 1.5; W+ = 0 is always reached
        ([1.0, 1.0], 3.0, 1 / 4, 2),
        ([0.0, 0.0], 0.0, 1.0, 0),
    ],
)
def test_wilcoxon_greater_matches_hand_counts(differences, w_plus, p, n):
    got = bench.wilcoxon_greater(np.array(differences))
    assert got[0] == w_plus and got[1] == pytest.approx(p) and got[2] == n


def test_normalised_uses_each_envs_pooled_range():
    records = [
        {"env": "A", "seed": 1, "lib": "pgrad", "eval_mean": 10.0},
        {"env": "A", "seed": 1, "lib": "sb3", "eval_mean": 0.0},
        {"env": "A", "seed": 2, "lib": "sb3", "eval_mean": 5.0},
        {"env": "B", "seed": 1, "lib": "pgrad", "eval_mean": -3.0},
        {"env": "B", "seed": 1, "lib": "sb3", "eval_mean": -3.0},
    ]
    scores = bench.normalised(records)
    assert scores[("A", 1, "pgrad")] == 1.0 and scores[("A", 1, "sb3")] == 0.0 and scores[("A", 2, "sb3")] == 0.5
    assert scores[("B", 1, "pgrad")] == scores[("B", 1, "sb3")] == 0.5  # no range: a tie
