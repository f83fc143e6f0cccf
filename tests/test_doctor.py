"""`pgrad doctor` on synthetic metric histories: one symptom each, the update where it started, and a
clean bill for a healthy run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pgrad.cli import main
from pgrad.monitor.doctor import diagnose

N = 100


def healthy(**overrides: object) -> list[dict]:
    """A run that learns: return climbs 20 -> 480, entropy falls while the return still rises,
    KL ~0.01, clip fraction ~0.1, explained variance 0.9, value loss falls."""
    t = np.arange(N)
    columns = {
        "rollout/return_mean": 20 + 460 / (1 + np.exp(-(t - 40) / 8)),
        "diagnostics/entropy": 0.69 - 0.45 * t / N,
        "diagnostics/approx_kl": np.full(N, 0.01),
        "diagnostics/clip_fraction": np.full(N, 0.1),
        "diagnostics/explained_variance": np.minimum(0.2 + t / 20, 0.9),
        "train/value_loss": 10.0 * np.exp(-t / 30),
        "train/policy_loss": np.full(N, -0.01),
        "diagnostics/grad_norm": np.ones(N),
        "diagnostics/nonfinite_steps": np.zeros(N),
    }
    for key, value in overrides.items():
        columns[key.replace("__", "/")] = np.asarray(value, dtype=float) * np.ones(N)
    return [{"step": 256 * (i + 1), "update": i + 1, **{k: float(v[i]) for k, v in columns.items()}} for i in range(N)]


def symptoms(rows: list[dict], events: list[dict] | None = None) -> dict[str, int]:
    return {f.symptom: f.update for f in diagnose(rows, events or [])}


def test_healthy_run_gets_a_clean_bill():
    assert diagnose(healthy(), []) == []


def test_nan_loss_named_with_its_first_update():
    loss = np.full(N, -0.01)
    loss[60:] = np.nan
    found = diagnose(healthy(train__policy_loss=loss), [{"kind": "critical.halted", "step": 15616}])
    assert found[0].symptom == "loss or gradients went NaN/Inf" and found[0].update == 61
    assert found[0].severity == "critical" and "halted" in found[0].evidence and "learning_rate" in found[0].fix


def test_skipped_nonfinite_gradient_steps_count_as_nan_gradients():
    skipped = np.zeros(N)
    skipped[30] = 1
    assert symptoms(healthy(diagnostics__nonfinite_steps=skipped)) == {"loss or gradients went NaN/Inf": 31}


def test_entropy_collapse_without_progress():
    entropy = 0.69 * np.exp(-np.arange(N) / 5)  # below 0.345 from update 5 (index 4)
    found = symptoms(healthy(diagnostics__entropy=entropy, rollout__return_mean=20.0, train__value_loss=1.0))
    assert found == {"entropy collapse": 5}


def test_entropy_falling_while_return_climbs_is_convergence_not_collapse():
    entropy = 0.69 * np.exp(-np.arange(N) / 5)
    assert symptoms(healthy(diagnostics__entropy=entropy)) == {}


def test_return_plateau_while_loss_falls():
    rng = np.random.default_rng(0)
    found = symptoms(healthy(rollout__return_mean=20 + rng.normal(0, 1, N), diagnostics__entropy=0.69))
    assert list(found) == ["return plateau while the loss falls"] and found["return plateau while the loss falls"] <= 5


@pytest.mark.parametrize("value, stuck", [(0.001, "near 0"), (0.8, "near 1")])
def test_clip_fraction_stuck(value, stuck):
    assert symptoms(healthy(diagnostics__clip_fraction=value)) == {f"clip fraction stuck {stuck}": 11}


def test_kl_too_high_from_the_first_high_update():
    kl = np.full(N, 0.01)
    kl[40:60] = 0.08
    found = diagnose(healthy(diagnostics__approx_kl=kl), [])
    assert [(f.symptom, f.update, f.severity) for f in found] == [("KL too high", 41, "warning")]
    kl[70] = 0.5  # a single critical spike is enough
    assert diagnose(healthy(diagnostics__approx_kl=kl), [])[0].severity == "critical"


def test_value_function_lagging():
    found = symptoms(healthy(diagnostics__explained_variance=0.1))
    assert found == {"value function lagging": 11}  # first update after the 10-update warm-up


def test_return_collapse_after_a_peak():
    ret = 20 + 460 / (1 + np.exp(-(np.arange(N) - 30) / 4))
    ret[60:] = 30.0
    found = diagnose(healthy(rollout__return_mean=ret), [])
    assert [f.symptom for f in found] == ["return collapse after a peak"]
    assert 61 <= found[0].update <= 64 and "peaked" in found[0].evidence  # smoothing lags a few updates


def test_cli_doctor_prints_symptoms_and_exit_codes(tmp_path, capsys):
    for name, rows in (("sick", healthy(diagnostics__explained_variance=0.1)), ("fine", healthy())):
        run = tmp_path / name
        run.mkdir()
        (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        (run / "events.jsonl").write_text(json.dumps({"step": 512, "kind": "drill.lr_spike", "message": "m"}) + "\n")
    assert main(["doctor", str(tmp_path / "sick")]) == 1
    out = capsys.readouterr().out
    assert "value function lagging: since update 11 (step 2816)" in out and "fix:" in out and "drill.lr_spike" in out
    assert main(["doctor", str(tmp_path / "fine")]) == 0
    assert "healthy: no problems found" in capsys.readouterr().out


def test_doctor_explains_each_guard_warning_with_its_evidence(tmp_path):
    from pgrad.monitor.doctor import explain_alerts

    events = [
        {
            "step": 4096,
            "kind": "warning.entropy_collapse",
            "message": "entropy 0.3 < 0.5 x its starting value 0.69 while the return is not improving",
            "value": 0.3,
            "threshold": 0.345,
            "return_now": 21.0,
            "return_start": 20.0,
        }
    ]
    lines = explain_alerts(events)
    assert "warning.entropy_collapse: 1x, first at step 4096" in lines[0]
    assert "return_now=21" in lines[1] and "return_start=20" in lines[1]
    assert "ent_coef" in lines[2]
