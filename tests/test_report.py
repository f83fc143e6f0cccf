"""`pgrad report` and `pgrad compare` on a real short run with a drill: every panel has data, and the
guard's events are drawn where events.jsonl says they happened."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pgrad.cli import main
from pgrad.monitor.compare import group_runs, plot_groups, read_curve
from pgrad.monitor.report import PANELS, report
from pgrad.monitor.sinks import read_jsonl
from pgrad.runners.on_policy import OnPolicyRunner
from pgrad.runs import resolve_config


@pytest.fixture(scope="module")
def drilled_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("report") / "run"
    sets = [
        "run.progress=false",
        "run.tensorboard=false",
        "checkpoint_every=1024",
        "eval_every=2048",
        "lr_spike_factor=1000",
        "inject=[lr_spike@3000]",
    ]
    config, _ = resolve_config("ppo", "CartPole-v1", sets=sets, seed=1, total_steps=6144)
    OnPolicyRunner(config, run, console=False).train()
    return run


def test_report_panels_hold_the_metrics_and_mark_the_events(drilled_run):
    path, panels = report(drilled_run)
    metrics = read_jsonl(drilled_run / "metrics.jsonl")
    events = read_jsonl(drilled_run / "events.jsonl")
    marked = sorted(
        (float(e["step"]), e["kind"]) for e in events if e["kind"].split(".")[0] in ("critical", "recovery", "drill")
    )
    assert {kind for _, kind in marked} >= {"drill.lr_spike", "critical.kl", "recovery.rollback"}
    warnings = sorted(float(e["step"]) for e in events if e["kind"].startswith("warning."))

    assert [p.name for p in panels] == [name for name, _, _ in PANELS]
    for panel, (_, _, keys) in zip(panels, PANELS, strict=True):
        main_key = keys[0]
        steps, values = panel.series[main_key]
        expected = [m for m in metrics if main_key in m]
        assert len(steps) == len(expected) > 0 and np.isfinite(values).sum() > 0, panel.name
        assert steps[-1] == metrics[-1]["step"]
        assert sorted(panel.markers) == marked, panel.name
        assert sorted(panel.warnings) == warnings
    return_panel = panels[0]
    eval_steps, eval_values = return_panel.series["eval/return_mean"]
    assert eval_steps.tolist() == [m["step"] for m in metrics if "eval/return_mean" in m]
    assert eval_values.tolist() == [m["eval/return_mean"] for m in metrics if "eval/return_mean" in m]
    lr_steps, lr_values = panels[7].series["train/learning_rate"]
    spike_step = next(s for s, kind in marked if kind == "drill.lr_spike")
    assert lr_values[lr_steps.tolist().index(spike_step)] > 100 * lr_values[0] * 0.5  # the spike is visible

    html = path.read_text()
    assert html.count("data:image/png;base64,") == len(PANELS) + 1  # every panel and the overview, embedded
    assert "http://" not in html and "https://" not in html  # nothing to fetch
    assert "recovery.rollback" in html and "pgrad doctor" in html
    for name, _, _ in PANELS:
        assert (path.parent / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_reads_and_draws_the_return_curves(drilled_run, tmp_path, capsys):
    rows = read_jsonl(drilled_run / "metrics.jsonl")
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.jsonl").write_text(
        "".join(
            json.dumps({"step": m["step"], "rollout/return_mean": 2 * m["rollout/return_mean"]}) + "\n"
            for m in rows
            if "rollout/return_mean" in m
        )
    )
    curves = [read_curve(run, "rollout/return_mean") for run in (drilled_run, other)]
    returns = np.array([m["rollout/return_mean"] for m in rows if "rollout/return_mean" in m])
    np.testing.assert_array_equal(curves[0].values, returns)
    np.testing.assert_array_equal(curves[1].values, 2 * returns)
    groups = group_runs(curves)  # other has no config.yaml: a group of its own
    assert list(groups) == ["ppo CartPole-v1", str(other)]
    drawn = plot_groups(groups, tmp_path / "cmp.png", "rollout/return_mean")
    # one run per group: the curve drawn is the run's, interpolated onto the grid, and the band has no width
    grid, value, low, high = drawn[str(other)]
    np.testing.assert_allclose(value, np.interp(grid, curves[1].steps, 2 * returns))
    np.testing.assert_allclose(low, value)
    np.testing.assert_allclose(high, value)
    assert (tmp_path / "cmp.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["compare", str(drilled_run), str(other), "--out", str(tmp_path / "c2.png")]) == 0
    assert f"final rollout/return_mean {2 * returns[-1]:.1f}" in capsys.readouterr().out
