"""The package is a one-way stack: no import cycle, and no module imports a layer above its own.

Every ``import``/``from`` of a pgrad module counts, including the ones inside functions (a late
import that hides a cycle is still a cycle). Layers, bottom first; a module may import its own
layer or any layer below.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pgrad

LAYERS: list[list[str]] = [
    [
        "pgrad",
        "pgrad.errors",
        "pgrad.safe_io",
        "pgrad.entry_points",
        "pgrad.faults",
        "pgrad.metric_names",
        "pgrad.threads",
        "pgrad.terminal",
        "pgrad.estimators",
        "pgrad.numerics",
        "pgrad.distributions",
        "pgrad.presets",
        "pgrad.callbacks",
        "pgrad.lm.losses",
    ],
    ["pgrad.config", "pgrad.glossary"],
    ["pgrad.nets", "pgrad.recurrent"],
    ["pgrad.envs"],
    ["pgrad.rollout", "pgrad.replay", "pgrad.sequences", "pgrad.sequence_replay"],
    ["pgrad.algos", "pgrad.lm"],
    ["pgrad.registry", "pgrad.checkpoint"],
    ["pgrad.builders", "pgrad.runs", "pgrad.policy"],
    ["pgrad.monitor"],
    [
        "pgrad.runners",
        "pgrad.evaluate",
        "pgrad.export",
        "pgrad.export_recurrent",
        "pgrad.team_runs",
        "pgrad.tune",
        "pgrad.lm.eval_run",
        "pgrad.sb3_compat",
        "pgrad.lm.export",
    ],
    ["pgrad.api", "pgrad.lm.trainers"],
    ["pgrad.cli", "pgrad.__main__"],
]
ROOT = Path(pgrad.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    best = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    assert best is not None, f"{module} is in no layer of tests/test_import_graph.py: place it"
    return best[0]


def pgrad_imports(path: Path) -> set[str]:
    """Every pgrad module ``path`` imports (``from pgrad.x import y`` counts y when it is a module)."""
    modules = {module_name(p) for p in ROOT.rglob("*.py")}
    found = set()
    tree = ast.parse(path.read_text())
    if path in (ROOT / "__init__.py", ROOT / "lm" / "__init__.py"):
        # the package's PEP 562 __getattr__ re-exports pgrad.api's classes (``from pgrad import PPO``) on first
        # use, never while anything imports pgrad: not an edge of the layering (test_the_package_root_... below)
        tree.body = [
            node for node in tree.body if not (isinstance(node, ast.FunctionDef) and node.name == "__getattr__")
        ]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("pgrad"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pgrad"):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(path): pgrad_imports(path) - {module_name(path)} for path in ROOT.rglob("*.py")}


def test_no_module_imports_a_layer_above_its_own():
    upward = [
        f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
        for module, targets in graph().items()
        for target in targets
        if layer_of(target) > layer_of(module)
    ]
    assert not upward, "\n".join(sorted(upward))


def test_the_import_graph_has_no_cycle():
    edges = graph()
    state: dict[str, int] = {}  # 1 visiting, 2 done
    cycles = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges.get(module, ())):
            if target == "pgrad" or target not in edges:
                continue  # the package root only holds __version__
            if state.get(target) == 1:
                cycles.append(" -> ".join(stack[stack.index(target) :] + [target]))
            elif target not in state:
                visit(target, stack + [target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_only_the_lm_package_imports_transformers_and_its_math_imports_nothing_of_it():
    """transformers is the optional ``lm`` extra: a module outside ``pgrad.lm`` importing it would break
    ``import pgrad`` without the extra; ``pgrad.lm.losses`` is pure torch math."""
    heavy = ("transformers", "tokenizers")
    offenders = []
    for path in ROOT.rglob("*.py"):
        name = module_name(path)
        if name.startswith("pgrad.lm.") and name != "pgrad.lm.losses":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            imported = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [f"{name} imports {m}" for m in imported if m.split(".")[0] in heavy]
    assert not offenders, "\n".join(offenders)


def test_only_the_ray_backend_imports_ray():
    """Ray is the optional ``ray`` extra: ``import pgrad`` and every local run work without it, so one module
    (``pgrad.runners.ray_backend``, imported only when ``run.backend`` is ray) holds every use of it."""
    offenders = []
    for path in ROOT.rglob("*.py"):
        name = module_name(path)
        if name == "pgrad.runners.ray_backend":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            imported = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [f"{name} imports {m}" for m in imported if m.split(".")[0] == "ray"]
    assert not offenders, "\n".join(offenders)


def test_the_layer_check_catches_an_upward_import(tmp_path):
    """The checker itself can fail: a config module importing the guard is upward."""
    assert layer_of("pgrad.monitor.guard") > layer_of("pgrad.config")
    assert layer_of("pgrad.algos.ppo") < layer_of("pgrad.runners.on_policy")


def test_the_package_root_imports_nothing_of_pgrad_at_import_time():
    """``import pgrad`` loads no other pgrad module (so no torch); its only pgrad import is the lazy
    re-export of the Python API inside ``__getattr__``."""
    tree = ast.parse((ROOT / "__init__.py").read_text())
    eager = [
        node
        for statement in tree.body
        if not isinstance(statement, ast.FunctionDef)
        for node in ast.walk(statement)
        if isinstance(node, ast.Import | ast.ImportFrom) and (getattr(node, "module", None) or "").startswith("pgrad")
    ]
    assert not eager
