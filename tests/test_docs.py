"""The documentation: the site builds strictly, the examples run, and no code block in the docs goes untested.

Every fenced ``python`` or ``bash`` block in ``docs/**/*.md`` and in ``README.md`` is preceded by a marker that says
how it is checked, and this file enforces it:

- ``<!-- docs-test: run -->``: a python block this file executes;
- ``<!-- docs-test: example examples/NAME.py -->``: the block includes that file (``--8<-- "examples/NAME.py"``),
  and this file runs every example;
- ``<!-- docs-test: readme python-api -->`` in docs, ``<!-- readme-test: python-api -->`` in the README: the
  README's block, which ``tests/test_readme.py`` executes (the docs' copy must equal it);
- ``<!-- docs-test: illustrative -->``: shown, not run (installs, long trainings, placeholders like RUN_DIR).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
FENCE = re.compile(r"^```(\w*)\s*$")
MARKER = re.compile(r"^<!-- (docs-test|readme-test): (.+?) -->$")
CHECKED_LANGUAGES = {"python", "py", "bash", "sh", "shell"}


def code_blocks(path: Path) -> list[tuple[int, str, str | None, str]]:
    """(line, language, marker or None, body) of every fenced block in a markdown file."""
    blocks = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        start, language = i, match.group(1)
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        above = lines[start - 1] if start > 0 else ""
        marker = MARKER.match(above)
        blocks.append((start + 1, language, marker.group(2) if marker else None, "\n".join(lines[start + 1 : end])))
        i = end + 1
    return blocks


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def test_every_python_and_bash_block_is_run_or_marked():
    readme_api = next(body for _, _, marker, body in code_blocks(ROOT / "README.md") if marker == "python-api")
    example_paths = {path.relative_to(ROOT).as_posix() for path in EXAMPLES}
    problems = []
    for path in markdown_files():
        for line, language, marker, body in code_blocks(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            if language not in CHECKED_LANGUAGES:
                continue
            if marker is None:
                problems.append(f"{where}: a ```{language} block with no docs-test marker above it")
            elif marker.startswith("example "):
                name = marker.removeprefix("example ")
                if name not in example_paths or body.strip() != f'--8<-- "{name}"':
                    problems.append(f"{where}: marker names {name}, block is not the include of an example")
            elif marker in ("readme python-api", "python-api"):
                if body != readme_api:
                    problems.append(f"{where}: differs from the README's python-api block that test_readme.py runs")
            elif marker == "run":
                if language not in ("python", "py"):
                    problems.append(f"{where}: only python blocks can be run")
            elif marker != "illustrative":
                problems.append(f"{where}: unknown marker {marker!r}")
    assert not problems, "\n".join(problems)


def run_blocks() -> list[tuple[str, str]]:
    return [
        (f"{path.relative_to(ROOT)}:{line}", body)
        for path in markdown_files()
        for line, _, marker, body in code_blocks(path)
        if marker == "run"
    ]


@pytest.mark.parametrize(("where", "body"), run_blocks(), ids=[where for where, _ in run_blocks()])
def test_run_blocks_execute(where, body, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(body, where, "exec"), {"__name__": "__docs__"})


def test_examples_run(tmp_path):
    """Every script in examples/ as ``python examples/NAME.py`` would run it, each in its own fresh folder.

    One interpreter runs them one after the other (runpy, as ``__main__``) so torch is imported once, not once
    per example: a few seconds each on 2 cores instead of twice that."""
    assert EXAMPLES, "examples/ is empty"
    missing_export = importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None
    scripts = [p for p in EXAMPLES if not (missing_export and p.name == "onnx_deploy.py")]
    driver = (
        "import os, runpy, sys\n"
        "for index, script in enumerate(sys.argv[2:]):\n"
        "    folder = os.path.join(sys.argv[1], str(index))\n"
        "    os.makedirs(folder)\n"
        "    os.chdir(folder)\n"
        "    print('== running', script, flush=True)\n"
        "    runpy.run_path(script, run_name='__main__')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", driver, str(tmp_path), *map(str, scripts)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "the greedy policy walks the corridor" in result.stdout
    assert "stopped after 6 updates" in result.stdout
    if not missing_export:
        assert "largest difference from predict()" in result.stdout


def test_mkdocs_build_strict(tmp_path):
    """``mkdocs build --strict``: every link, anchor, snippet and API reference resolves, with no warning."""
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install -e '.[docs]')")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    env["NO_MKDOCS_2_WARNING"] = "1"
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    cli = (site / "cli" / "index.html").read_text()
    from pgrad.cli import _parser

    subcommands = next(a for a in _parser()._actions if a.__class__.__name__ == "_SubParsersAction").choices
    for name, parser in subcommands.items():
        assert f"usage: pgrad {name}" in cli, f"the CLI reference lacks pgrad {name}"
        for action in parser._actions:
            if action.help == argparse.SUPPRESS:  # internal (tune's --job): in no help, nor here
                continue
            for flag in action.option_strings:
                assert flag in cli, f"the CLI reference lacks pgrad {name} {flag}"
    for algo in (
        "reinforce",
        "actor_critic",
        "a2c",
        "a3c",
        "trpo",
        "npg",
        "ppo",
        "ppo_kl",
        "ddpg",
        "td3",
        "sac",
        "d4pg",
    ):
        page = (site / "algorithms" / algo / "index.html").read_text()
        assert "<table>" in page and "Presets" in page, f"algorithms/{algo}: no generated defaults table"


def test_version_changelog_and_licence_agree():
    import pgrad

    pyproject = (ROOT / "pyproject.toml").read_text()  # read by pattern: tomllib is Python 3.11+
    assert re.search(rf'^version = "{re.escape(pgrad.__version__)}"$', pyproject, re.M)
    assert re.search(
        rf"^## {re.escape(pgrad.__version__)} - \d{{4}}-\d\d-\d\d$", (ROOT / "CHANGELOG.md").read_text(), re.M
    )
    assert re.search(r'^license = \{ text = "MIT" \}$', pyproject, re.M)
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License") and "the pgrad authors" in licence


def _is_overload(node: ast.AST) -> bool:
    """A ``@typing.overload`` stub: its implementation carries the docstring."""
    decorators = getattr(node, "decorator_list", [])
    return any(getattr(d, "id", getattr(d, "attr", None)) == "overload" for d in decorators)


def _public_methods(cls: ast.ClassDef) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    """The public methods (properties included; not dunders, not ``_private``) of a public class and of the
    public classes nested in it."""
    methods: list[ast.FunctionDef | ast.AsyncFunctionDef] = []
    for node in cls.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not node.name.startswith("_"):
            methods.append(node)
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            methods.extend(_public_methods(node))
    return methods


def test_every_public_module_function_and_class_has_a_docstring():
    """The API reference is generated from docstrings: a public module-level function or class, or a public
    method of a public class, without one would be missing from it (an overload stub excepted)."""
    missing = []
    for path in sorted((ROOT / "src" / "pgrad").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            public = isinstance(
                node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
            ) and not node.name.startswith("_")
            if public and ast.get_docstring(node) is None and not _is_overload(node):
                missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
            if public and isinstance(node, ast.ClassDef):
                for method in _public_methods(node):
                    if ast.get_docstring(method) is None and not _is_overload(method):
                        missing.append(f"{path.relative_to(ROOT)}:{method.lineno} {node.name}.{method.name}")
    assert not missing, "no docstring:\n" + "\n".join(missing)
