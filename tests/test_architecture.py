"""
The package's layers (docs/architecture.md): a module imports only from its own layer or the layers below it, the
import graph has no cycle, every module imports on its own in any order, and only the framework adapter, the models
and the datasets import a deep-learning framework.
"""
from __future__ import annotations

import ast
import pathlib
import random
import subprocess
import sys
from typing import Dict, Set

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "art_backdoor_ext"
FRAMEWORKS = ("torch", "tensorflow", "keras", "tf_keras", "kerassurgeon")

# lowest first; a module may import modules of its own layer or of a lower one
LAYERS = [
    ("art_backdoor_ext", "art_backdoor_ext.layout", "art_backdoor_ext.utils", "art_backdoor_ext.datasets"),
    ("art_backdoor_ext.estimators",),
    ("art_backdoor_ext.models", "art_backdoor_ext.attacks", "art_backdoor_ext.defences", "art_backdoor_ext.metrics",
     "art_backdoor_ext.plotting"),
    ("art_backdoor_ext.evaluation.api",),
    ("art_backdoor_ext.registry",),
    ("art_backdoor_ext.evaluation", "art_backdoor_ext.evaluation.runner", "art_backdoor_ext.grid"),
]


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _layer(module: str) -> int:
    best, level = -1, None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or (module.startswith(prefix + ".") and prefix != "art_backdoor_ext")
            if matches and len(prefix) > best:
                best, level = len(prefix), i
    assert level is not None, f"{module} is in no layer of tests/test_architecture.py"
    return level


def _imports(path: pathlib.Path) -> Set[str]:
    """Every module named by an import statement (module level or inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _internal_imports(path: pathlib.Path) -> Set[str]:
    return {name for name in _imports(path) if name in MODULES}


def test_no_import_from_a_higher_layer():
    violations = [f"{mod} (layer {_layer(mod)}) imports {dep} (layer {_layer(dep)})"
                  for mod, path in MODULES.items() for dep in _internal_imports(path) if _layer(dep) > _layer(mod)]
    assert not violations, "\n".join(violations)


def test_import_graph_has_no_cycle():
    graph: Dict[str, Set[str]] = {mod: _internal_imports(path) - {mod} for mod, path in MODULES.items()}
    # a package's __init__ does not count as importing its own submodules' importers
    state: Dict[str, int] = {}
    stack = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in graph[node]:
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(dep):] + [dep]))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for mod in graph:
        if mod not in state:
            visit(mod)


def test_attacks_and_defences_never_import_the_harness():
    for mod, path in MODULES.items():
        if mod.startswith(("art_backdoor_ext.attacks", "art_backdoor_ext.defences")):
            bad = sorted(n for n in _imports(path)
                         if n.startswith(("art_backdoor_ext.evaluation", "art_backdoor_ext.registry", "benchmarks")))
            assert not bad, f"{mod} imports {bad}"


def test_only_the_adapter_models_and_datasets_import_a_framework():
    allowed = ("art_backdoor_ext.estimators", "art_backdoor_ext.models", "art_backdoor_ext.datasets")
    for mod, path in MODULES.items():
        if mod.startswith(allowed):
            continue
        bad = sorted(n for n in _imports(path) if n.split(".")[0] in FRAMEWORKS)
        assert not bad, f"{mod} imports {bad}: framework code belongs in art_backdoor_ext/estimators/"


def test_framework_names_are_decided_in_one_place():
    # channels-first travels on the contexts; no module outside the adapter, models, datasets and layout compares
    # framework strings
    allowed = ("art_backdoor_ext.estimators", "art_backdoor_ext.models", "art_backdoor_ext.datasets",
               "art_backdoor_ext.layout")
    for mod, path in MODULES.items():
        if mod.startswith(allowed):
            continue
        text = path.read_text(encoding="utf-8")
        assert '== "pytorch"' not in text and '== "keras"' not in text, mod


@pytest.mark.parametrize("seed", [0, 1])
def test_every_module_imports_alone_in_any_order(seed):
    order = sorted(MODULES)
    random.Random(seed).shuffle(order)
    code = ("import importlib, sys\n"
            f"for name in {order!r}:\n"
            "    importlib.import_module(name)\n"
            "print('imported', len(sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "imported" in out.stdout
