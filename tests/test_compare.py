"""Aggregation over seeds (IQM, bootstrap intervals) against hand-computed values, and ``pgrad compare``
on run folders whose scores are known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pgrad.cli import main
from pgrad.monitor.aggregate import bootstrap_band, bootstrap_interval, common_grid, iqm
from pgrad.monitor.compare import group_runs, read_curve, summarize
from pgrad.runs import resolve_config


def test_iqm_cuts_a_quarter_from_each_end() -> None:
    # 8 scores: cut 2 from each end of 1 2 3 4 5 6 7 100, mean of 3 4 5 6 = 4.5 (the mean is 16)
    assert iqm(np.array([100.0, 1, 2, 3, 4, 5, 6, 7])) == pytest.approx(4.5)
    # 10 scores: floor(10 / 4) = 2 cut from each end (SciPy's trim_mean(x, 0.25), as rliable): mean of 3..8
    assert iqm(np.arange(1.0, 11.0)) == pytest.approx(5.5)
    # fewer than 4 runs: nothing is cut
    assert iqm(np.array([1.0, 2.0, 9.0])) == pytest.approx(4.0)
    # per row of a [points, runs] array
    np.testing.assert_allclose(iqm(np.array([[0.0, 1, 2, 30], [4.0, 4, 4, 4]]), axis=-1), [1.5, 4.0])


def test_bootstrap_interval_matches_the_exact_resampling_distribution() -> None:
    """Scores 1, 2, 6: the 27 equally likely resamples have means (with how many resamples give each)
    1 (1), 4/3 (3), 5/3 (3), 2 (1), 8/3 (3), 3 (6), 10/3 (3), 13/3 (3), 14/3 (3), 6 (1); cumulative
    1, 4, 7, 8, 11, 17, 20, 23, 26, 27 of 27. The 10th percentile (2.7 of 27) falls in the 4/3 run
    (3.7% to 14.8%), the 90th (24.3 of 27) in the 14/3 run (85.2% to 96.3%): an 80% interval is
    [4/3, 14/3], far enough inside both runs that 20,000 resamples cannot miss them."""
    interval = bootstrap_interval(np.array([1.0, 2.0, 6.0]), "mean", confidence=0.8, reps=20_000, seed=0)
    assert interval.value == pytest.approx(3.0)
    assert interval.low == pytest.approx(4 / 3) and interval.high == pytest.approx(14 / 3)


def test_bootstrap_of_identical_scores_has_no_width_and_is_reproducible() -> None:
    assert bootstrap_interval(np.full(5, 7.0)) == bootstrap_interval(np.full(5, 7.0))
    interval = bootstrap_interval(np.full(5, 7.0))
    assert (interval.value, interval.low, interval.high) == (7.0, 7.0, 7.0)
    scores = np.array([3.0, 9.0, 4.0, 12.0, 5.0])
    assert bootstrap_interval(scores, seed=3) == bootstrap_interval(scores, seed=3)
    value, low, high = bootstrap_band(np.stack([scores, scores + 1]), "iqm", seed=3)
    assert value.shape == (2,) and np.all(low <= value) and np.all(value <= high)
    np.testing.assert_allclose(high[1] - low[1], high[0] - low[0])  # a shift moves the band, not its width


def test_bootstrap_rejects_a_confidence_outside_zero_one() -> None:
    with pytest.raises(ValueError, match="confidence must be in"):
        bootstrap_interval(np.ones(3), confidence=95)


def test_common_grid_interpolates_where_every_run_has_data() -> None:
    grid, values = common_grid(
        [(np.array([0.0, 10.0, 20.0]), np.array([0.0, 10.0, 20.0])), (np.array([5.0, 15.0]), np.array([1.0, 1.0]))],
        points=3,
    )
    np.testing.assert_allclose(grid, [5.0, 10.0, 15.0])
    np.testing.assert_allclose(values, [[5.0, 1.0], [10.0, 1.0], [15.0, 1.0]])


def fake_run(root: Path, name: str, seed: int, learning_rate: float, returns: list[float]) -> Path:
    """A run folder with a real config.yaml and a metrics.jsonl of known returns (one row per 1,000 steps)."""
    config, _ = resolve_config("ppo", "CartPole-v1", sets=[f"ppo.optimizer.learning_rate={learning_rate}"], seed=seed)
    run = root / name
    run.mkdir()
    config.save(run / "config.yaml")
    rows = [{"step": 1000 * (i + 1), "rollout/return_mean": value} for i, value in enumerate(returns)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return run


def test_runs_group_by_config_but_the_seed(tmp_path: Path) -> None:
    runs = [
        fake_run(tmp_path, "a1", 1, 3e-4, [10, 100]),
        fake_run(tmp_path, "a2", 2, 3e-4, [20, 200]),
        fake_run(tmp_path, "b1", 1, 1e-3, [30, 300]),
    ]
    groups = group_runs([read_curve(run, "rollout/return_mean") for run in runs])
    assert {label: [curve.seed for curve in curves] for label, curves in groups.items()} == {
        "ppo CartPole-v1 (ppo.optimizer.learning_rate=0.0003)": [1, 2],
        "ppo CartPole-v1 (ppo.optimizer.learning_rate=0.001)": [1],
    }
    summaries = summarize(groups)
    np.testing.assert_array_equal(summaries[0].scores, [100.0, 200.0])
    assert summaries[0].mean.value == 150.0 and summaries[1].iqm.value == 300.0


def test_compare_cli_prints_the_aggregate_table_of_three_seeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    runs = [
        fake_run(tmp_path, f"s{seed}", seed, 3e-4, [10.0 * seed, score])
        for seed, score in [(1, 100.0), (2, 400.0), (3, 250.0)]
    ]
    out = tmp_path / "cmp.png"
    assert main(["compare", *map(str, runs), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("group"))
    assert "mean [95% CI]" in header and "IQM [95% CI]" in header
    row = next(line for line in lines if line.startswith("ppo CartPole-v1"))
    # scores 100, 400, 250: mean 250 (IQM = mean with 3 runs); the 95% bootstrap interval of 3 scores
    # runs from near the lowest resample mean (100) to near the highest (400)
    expected = bootstrap_interval(np.array([100.0, 400.0, 250.0]), "mean")
    assert row.split()[2:4] == ["3", "1,2,3"]
    assert "100.0 400.0 250.0" in row
    assert f"250.0 [{expected.low:.1f}, {expected.high:.1f}]" in row
    assert 100.0 <= expected.low < 200.0 and 300.0 < expected.high <= 400.0
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_compare_refuses_a_bad_confidence_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = fake_run(tmp_path, "r", 1, 3e-4, [1.0])
    assert main(["compare", str(run), "--confidence", "95"]) == 2
    assert capsys.readouterr().err.strip() == "pgrad: error: --confidence must be in (0, 1); got 95.0"
