"""``pgrad list`` (issue 26's acceptance): the recurrent fields with their defaults and docs under the algorithms that
read them, and not under the rest; the RND fields under ppo and a2c; the ``--set`` names the acceptance script uses."""

from __future__ import annotations

import re

import pytest

from pgrad.cli import main
from pgrad.config import RECURRENT_ALGOS, listed_fields
from pgrad.registry import ALGORITHMS
from pgrad.runs import resolve_config

RECURRENT = ("network.recurrent", "network.recurrent_size", "network.recurrent_shared", "network.recurrent_head_sizes")


def listing(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, dict[str, tuple[str, str]]]:
    """``pgrad list ARGS`` as {section: {field: (default, doc)}} from its printed rows."""
    assert main(["list", *args]) == 0
    sections: dict[str, dict[str, tuple[str, str]]] = {}
    current: dict[str, tuple[str, str]] = {}
    for line in capsys.readouterr().out.splitlines():
        if header := re.fullmatch(r"  \[(\w+)\]", line):
            current = sections.setdefault(header.group(1), {})
        elif row := re.fullmatch(r"    (\S+)\s+(\S.{0,13}?)\s+(\S.*)", line):
            current[row.group(1)] = (row.group(2).strip(), row.group(3))
    return sections


def test_pgrad_list_shows_recurrent_and_rnd_fields_only_where_they_are_read(capsys) -> None:
    sections = listing(capsys)
    ppo, a2c, impala, trpo = sections["ppo"], sections["a2c"], sections["impala"], sections["trpo"]
    assert ppo["network.recurrent"][0] == "None" and "lstm or gru" in ppo["network.recurrent"][1]
    assert ppo["network.recurrent_size"] == ("64", "units of the recurrent core (network.recurrent)")
    assert ppo["network.sequence_length"][0] == "16" and "steps per chunk" in ppo["network.sequence_length"][1]
    for section in (a2c, impala):  # whole-rollout sequences: no sequence_length
        assert all(name in section for name in RECURRENT) and "network.sequence_length" not in section
    sac = sections["sac"]  # recurrent SAC: its own cores (no recurrent_shared), R2D2's sequence replay in loop.
    assert sac["network.sequence_length"][0] == "16" and "network.recurrent_shared" not in sac
    assert sac["loop.burn_in"][0] == "8" and sac["loop.recurrent_state"][0] == "stored"
    for name in ("trpo", "npg", "ppo_kl", "reinforce", "actor_critic", "a3c", "td3", "ddpg", "d4pg"):
        assert not any("recurrent" in field or "sequence_length" in field for field in sections[name]), name
    for section in (ppo, a2c):
        assert section["rnd.enabled"][0] == "False" and "Burda" in section["rnd.enabled"][1]
        assert section["rnd.int_gamma"] == (
            "0.99",
            "discount of the intrinsic return (non-episodic: it crosses episode ends)",
        )
        assert section["rnd.ext_coef"][0] == "2.0" and section["rnd.int_coef"][0] == "1.0"
    assert not any(field.startswith("rnd.") for field in impala) and not any(f.startswith("rnd.") for f in trpo)
    # one algorithm alone prints the same rows
    assert listing(capsys, "a2c")["a2c"] == a2c


def test_listed_fields_follow_recurrent_algos() -> None:
    for name, spec in ALGORITHMS.items():
        if spec.language_model:
            continue
        fields = {row[0] for row in listed_fields(name, spec.config_cls)}
        assert ("network.recurrent" in fields) == (name in RECURRENT_ALGOS), name


def test_the_acceptance_set_names_work_for_each_supported_algorithm() -> None:
    for algo in ("ppo", "a2c"):
        config, _ = resolve_config(
            algo, "CartPole-v1", sets=["network.recurrent=gru", "network.recurrent_size=32", "rnd.enabled=true"]
        )
        assert config.algo_config.network.recurrent == "gru" and config.algo_config.network.recurrent_size == 32
        assert config.algo_config.rnd.enabled
    config, _ = resolve_config("impala", "CartPole-v1", sets=["network.recurrent=lstm"])
    assert config.algo_config.network.recurrent == "lstm"


def test_rnd_on_impala_is_one_line(capsys, tmp_path) -> None:
    code = main(
        ["train", "impala", "--env", "CartPole-v1", "--set", "rnd.enabled=true", "--run-dir", str(tmp_path / "r")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "unknown section 'rnd'" in err
    assert not (tmp_path / "r").exists()
