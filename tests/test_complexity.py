"""Ruff's complexity rules hold everywhere except in a recorded baseline that can only shrink.

mccabe's cyclomatic complexity (C901, over 12) and pylint's too-many-statements (PLR0915, over 50;
thresholds in pyproject's ``[tool.ruff.lint.mccabe]`` and ``[tool.ruff.lint.pylint]``) were switched on
with 11 offences in 10 functions. Rather than a ``# noqa`` on each (which would sit in the runner files
being rewritten, and which only ruff's RUF100 keeps honest), ``complexity_baseline.txt`` lists each
offender once, by file, qualified function name and rule, with the number ruff measured. This test
fails when a function not listed offends, when a listed one no longer offends (delete its line),
or when a listed one measures more or less than recorded (it may not grow; when it shrinks, lower
the number so it cannot grow back). ``make lint`` runs this test too.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BASELINE = Path(__file__).with_name("complexity_baseline.txt")
RULES = ("C901", "PLR0915")
CHECKED = ("src", "tests", "benchmarks")  # what `make lint` checks

# (path relative to the repository, qualified function name, rule) -> measured value
Offenders = dict[tuple[str, str, str], int]


def qualified_name(tree: ast.Module, row: int, column: int) -> str:
    """``Class.method`` (or ``function``, ``outer.inner``) of the def that starts at ``row``:``column``
    (1-based, as ruff reports the function's name)."""

    def walk(node: ast.AST, prefix: str) -> str | None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if child.lineno == row and not isinstance(child, ast.ClassDef):
                    return name
                found = walk(child, f"{name}.")
                if found is not None:
                    return found
        return None

    found = walk(tree, "")
    if found is None:
        raise AssertionError(f"no function starts at line {row}, column {column}")
    return found


def measured(diagnostics: list[dict[str, object]], root: Path) -> Offenders:
    """Ruff's JSON diagnostics as offenders: the number is the left side of ruff's ``(64 > 50)``."""
    offenders: Offenders = {}
    trees: dict[Path, ast.Module] = {}
    for item in diagnostics:
        path = Path(str(item["filename"]))
        location = item["location"]
        assert isinstance(location, dict)
        if path not in trees:
            trees[path] = ast.parse(path.read_text(), str(path))
        name = qualified_name(trees[path], int(location["row"]), int(location["column"]))
        value = re.search(r"\((\d+) > \d+\)", str(item["message"]))
        assert value is not None, item["message"]
        key = (path.relative_to(root).as_posix(), name, str(item["code"]))
        assert key not in offenders, f"two functions named {name} in {key[0]} offend {key[2]}"
        offenders[key] = int(value.group(1))
    return offenders


def read_baseline(text: str) -> Offenders:
    """``path:function RULE value`` per line; ``#`` starts a comment."""
    offenders: Offenders = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        where, rule, value = line.split()
        path, name = where.split(":")
        assert (path, name, rule) not in offenders, f"listed twice: {line}"
        offenders[(path, name, rule)] = int(value)
    return offenders


def differences(found: Offenders, baseline: Offenders) -> list[str]:
    """One line per way ``found`` and ``baseline`` disagree (empty when they agree)."""
    out = []
    for key in sorted(set(found) | set(baseline)):
        line = f"{key[0]}:{key[1]} {key[2]}"
        if key not in baseline:
            out.append(f"new offender {line} {found[key]}: simplify it (the baseline only shrinks)")
        elif key not in found:
            out.append(f"{line} no longer offends: delete its line from {BASELINE.name}")
        elif found[key] > baseline[key]:
            out.append(f"{line} grew from {baseline[key]} to {found[key]}: it may not grow")
        elif found[key] < baseline[key]:
            out.append(f"{line} shrank from {baseline[key]} to {found[key]}: record {found[key]}")
    return out


def test_differences_name_each_way_the_baseline_goes_stale() -> None:
    baseline = {("a.py", "f", "C901"): 14, ("a.py", "g", "PLR0915"): 60, ("b.py", "C.h", "C901"): 13}
    found = {("a.py", "f", "C901"): 15, ("a.py", "g", "PLR0915"): 55, ("b.py", "k", "PLR0915"): 51}
    assert differences(found, baseline) == [
        "a.py:f C901 grew from 14 to 15: it may not grow",
        "a.py:g PLR0915 shrank from 60 to 55: record 55",
        f"b.py:C.h C901 no longer offends: delete its line from {BASELINE.name}",
        "new offender b.py:k PLR0915 51: simplify it (the baseline only shrinks)",
    ]
    assert differences(baseline, baseline) == []


def test_qualified_name_reads_classes_and_nested_functions() -> None:
    tree = ast.parse("def f():\n    def g():\n        pass\nclass C:\n    async def h(self):\n        pass\n")
    assert [qualified_name(tree, row, 5) for row in (1, 2, 5)] == ["f", "f.g", "C.h"]
    with pytest.raises(AssertionError, match="line 4"):
        qualified_name(tree, 4, 1)  # a class, not a function


def test_complexity_offenders_are_the_recorded_baseline() -> None:
    pytest.importorskip("ruff")
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--select", ",".join(RULES), "--output-format", "json", *CHECKED],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr  # 1: diagnostics found; anything else: ruff failed
    found = measured(json.loads(result.stdout), ROOT)
    stale = differences(found, read_baseline(BASELINE.read_text()))
    assert not stale, "\n".join(stale)
