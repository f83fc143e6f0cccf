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


def test_report_has_the_summary_and_the_config(drilled_run):
    # issue 25: the page gains the run's numbers at a glance and its config, every value escaped
    import re

    path, _ = report(drilled_run)
    page = path.read_text()
    summary = dict(
        re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td></tr>", page.split("class='summary'>")[1].split("</table>")[0])
    )
    assert summary["env steps"] == "6,144" and summary["updates"] == "24"  # 6,144 / (8 envs x 32 steps)
    kinds = [event["kind"].split(".")[0] for event in read_jsonl(drilled_run / "events.jsonl")]
    counts = {kind: kinds.count(kind) for kind in ("critical", "warning", "recovery", "drill")}
    assert counts["drill"] == 1 and counts["recovery"] >= 1  # the lr spike, and the guard's answer
    assert summary["guard"] == ", ".join(f"{n} {kind}" for kind, n in counts.items())
    config = page.split("class='config'>")[1]
    assert "<tr><td>ppo.clip_eps</td><td>0.2</td></tr>" in config and "<td>env.id</td><td>CartPole-v1</td>" in config


def chromium() -> str | None:
    import shutil

    return next((path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None)


def rendered_body(page: Path) -> dict[str, str]:
    """The report opened in headless Chromium: the data-* attributes its own script set on <body> after load."""
    import re
    import subprocess

    browser = chromium()
    assert browser is not None
    args = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000", "--dump-dom"]
    dom = subprocess.run([*args, page.resolve().as_uri()], capture_output=True, text=True, timeout=120).stdout
    body = re.search(r"<body([^>]*)>", dom)
    assert body is not None, dom[:500]
    return dict(re.findall(r'data-([a-z]+)="([^"]*)"', body.group(1)))


def test_the_report_renders_every_panel_in_a_real_browser_with_no_network_request(drilled_run, tmp_path):
    if chromium() is None:
        pytest.skip("no chromium on this machine (Debian: apt-get install chromium); .ci/run installs it")
    path, panels = report(drilled_run)
    shown = len(panels) + 1  # and the overview
    assert rendered_body(path) == {"panels": f"{shown}/{shown}", "blocked": "0"}
    # the check can fail: a panel that does not decode, and a request to the network, which the page's
    # content policy refuses (so it is never made) and counts
    tampered = tmp_path / "report.html"
    extra = '<img src="data:image/png;base64,AAAA"><img src="https://example.invalid/x.png"></body>'
    tampered.write_text(path.read_text().replace("</body>", extra))
    assert rendered_body(tampered) == {"panels": f"{shown}/{shown + 2}", "blocked": "1"}
