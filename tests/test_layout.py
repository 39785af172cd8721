"""The package's shape: riskd's modules import each other without a cycle (module-level imports;
the CLI's imports inside functions are deliberate late loads)."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import riskd

ROOT = Path(riskd.__file__).parent


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:  # module level only
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return found


def test_riskd_modules_import_each_other_without_a_cycle():
    files = {_module(p): p for p in ROOT.rglob("*.py")}
    graph = {name: {m for m in _imports(path, name) if m in files and m != name} for name, path in files.items()}
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None


def test_the_engine_reaches_no_module_that_does_io_even_indirectly():
    files = {_module(p): p for p in ROOT.rglob("*.py")}
    graph = {name: {m for m in _imports(path, name) if m in files and m != name} for name, path in files.items()}
    reached, todo = set(), ["riskd.engine"]
    while todo:
        for dep in graph[todo.pop()] - reached:
            reached.add(dep)
            todo.append(dep)
    io = {"riskd.crosstrade", "riskd.state", "riskd.audit", "riskd.tick", "riskd.daemon", "riskd.notify", "riskd.metrics",
          "riskd.cli", "riskd.actions", "riskd.poll", "riskd.sim"}
    assert reached and not reached & io
