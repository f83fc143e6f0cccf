"""mkdocs hooks: tables and CLI help generated from the code at build time, so they cannot go stale.

A page writes a marker and the build replaces it:
- ``<!-- pgrad-summary: ALGO -->``: the registry's one-line summary and the action kinds it takes;
- ``<!-- pgrad-defaults: ALGO -->``: every field of the algorithm's config section (``pgrad list``'s rows);
- ``<!-- pgrad-section: env|run|guard|ray -->``: a shared section's fields;
- ``<!-- pgrad-presets: ALGO -->``: the algorithm's presets, each with its source and values;
- ``<!-- pgrad-cli -->``: ``--help`` of every command and subcommand of ``pgrad``;
- ``<!-- pgrad-sb3: ALGO -->`` / ``<!-- pgrad-sb3-policy: ALGO -->``: SB3's constructor arguments / ``policy_kwargs``
  keys and what each is in pgrad (``pgrad.sb3_compat``'s tables, the ones the constructors read).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
from typing import Any

MARKER = re.compile(r"<!-- pgrad-(summary|defaults|section|presets|cli|sb3-policy|sb3)(?::\s*([\w.-]+))?\s*-->")


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _fields_table(cls: type, algo: str | None = None) -> str:
    from pgrad.config import field_docs, listed_fields

    fields = field_docs(cls) if algo is None else listed_fields(algo, cls)  # an algorithm's: the fields it reads
    rows = ["| field | default | meaning |", "|---|---|---|"]
    rows += [f"| `{name}` | `{_cell(default)}` | {_cell(doc)} |" for name, default, doc in fields]
    return "\n".join(rows)


def _defaults(algo: str) -> str:
    from pgrad.registry import get_algorithm

    return _fields_table(get_algorithm(algo).config_cls, algo)


def _summary(algo: str) -> str:
    from pgrad.registry import get_algorithm

    spec = get_algorithm(algo)
    return f"`{algo}`: {spec.summary}. Actions: {', '.join(spec.action_kinds)}."


def _section(name: str) -> str:
    from pgrad.config import EnvConfig, GuardConfig, RayConfig, RunConfig

    classes = {"env": EnvConfig, "run": RunConfig, "guard": GuardConfig, "ray": RayConfig}
    return _fields_table(classes[name])


def _presets(algo: str) -> str:
    from pgrad.presets import PATTERN_PRESETS, PRESETS

    found = [(env, preset) for (name, env), preset in {**PRESETS, **PATTERN_PRESETS}.items() if name == algo]
    if not found:
        return "No preset: the defaults above apply to every environment."
    parts = []
    for env, preset in found:
        values = "; ".join(f"`{key}={_cell(value)}`" for key, value in _flat(preset.values))
        parts.append(f"- **`{env}`**: {_cell(preset.source)}.  \n  Values: {values}")
    return "\n".join(parts)


FIELDS = re.compile(r"[\w.]+(, [\w.]+)*")


def _sb3_rows(table: dict[str, Any], algo: str, what: str) -> str:
    rows = [f"| {what} | in pgrad | accepted |", "|---|---|---|"]
    for name, entry in table.items():
        if entry.mapped:
            accepted = "mapped" + (f"; {entry.note}" if entry.note else "")
        elif entry.allowed:
            accepted = "only " + " or ".join(f"`{a!r}`" for a in entry.allowed) + " (any other: one line)"
        else:
            accepted = "yes" + (f"; {entry.note}" if entry.note else "")
        spelling = entry.spelling(algo)
        if FIELDS.fullmatch(spelling):  # field paths as code: ``ppo.num_steps``, ``sac.alpha, sac.alpha_init``
            spelling = ", ".join(f"`{path}`" for path in spelling.split(", "))
        rows.append(f"| `{name}` | {_cell(spelling)} | {_cell(accepted)} |")
    return "\n".join(rows)


def _sb3(algo: str) -> str:
    from pgrad.sb3_compat import SB3_ARGUMENTS

    return _sb3_rows(SB3_ARGUMENTS[algo], algo, f"SB3 `{algo.upper()}(...)`")


def _sb3_policy(algo: str) -> str:
    from pgrad.sb3_compat import POLICY_KWARGS

    return _sb3_rows(POLICY_KWARGS[algo], algo, "`policy_kwargs` key")


def _flat(values: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """A preset's nested sections as dotted keys: ``{"sac": {"loop": {"tau": 1}}}`` -> ``sac.loop.tau``."""
    rows: list[tuple[str, Any]] = []
    for key, value in values.items():
        if isinstance(value, dict):
            rows += _flat(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _help(parser: argparse.ArgumentParser) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        parser.print_help()
    return out.getvalue().rstrip()


def cli_reference() -> str:
    """Every command's ``--help``, 100 columns wide, as markdown (``pgrad``, its commands, ``pgrad lm``'s)."""
    from pgrad.cli import _parser

    os.environ["COLUMNS"] = "100"
    root = _parser()
    parts = [f"## `pgrad`\n\n```text\n{_help(root)}\n```"]
    for name, sub in _subparsers(root).items():
        parts.append(f"## `pgrad {name}`\n\n```text\n{_help(sub)}\n```")
        for sub_name, subsub in _subparsers(sub).items():
            parts.append(f"### `pgrad {name} {sub_name}`\n\n```text\n{_help(subsub)}\n```")
    return "\n\n".join(parts)


def expand(markdown: str) -> str:
    """The page with every marker replaced by what it names."""

    def replace(match: re.Match[str]) -> str:
        kind, arg = match.group(1), match.group(2)
        if kind == "cli":
            return cli_reference()
        makers = {"summary": _summary, "defaults": _defaults, "section": _section, "presets": _presets}
        return {**makers, "sb3": _sb3, "sb3-policy": _sb3_policy}[kind](arg)

    return MARKER.sub(replace, markdown)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return expand(markdown)
