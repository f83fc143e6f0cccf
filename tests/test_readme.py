"""The README's Python example runs as written: an SB3-shaped script (constructor, policy_kwargs, EvalCallback with a
stop, save, load, predict with state, evaluate_policy) on pgrad."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(marker: str) -> str:
    """The ```python block right after ``<!-- readme-test: marker -->``."""
    match = re.search(rf"<!-- readme-test: {marker} -->\n```python\n(.*?)\n```", README.read_text(), re.S)
    assert match is not None, f"README.md has no python block marked readme-test: {marker}"
    return match.group(1)


def test_the_python_api_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # its run folder and saved agent go to relative paths
    namespace: dict = {}
    exec(compile(readme_block("python-api"), "README.md", "exec"), namespace)
    model = namespace["model"]
    # the callback stopped it well before the 100,000 steps asked for, once an evaluation reached 200
    assert 0 < model.num_timesteps < 50_000
    assert model.config.algo_config.network.hidden_sizes == (64, 64) and model.config.algo_config.num_epochs == 20
    run = tmp_path / "runs" / "api-cartpole"
    assert "run.stopped_by_callback" in (run / "events.jsonl").read_text()
    assert sorted(p.name for p in (tmp_path / "cartpole-agent").iterdir()) == [
        "spaces.json",
        "state.json",
        "tensors.safetensors",
    ]
    assert namespace["action"] in (0, 1) and namespace["mean_return"] >= 200
    assert f"stopped at {model.num_timesteps} steps" in capsys.readouterr().out
