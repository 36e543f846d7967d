"""labkit's import graph: every module imports on its own, no two modules import each other
(even lazily, inside a function), and drawing (`labkit.plots`) loads no domain module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "labkit"


def module_names() -> dict[str, Path]:
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if parts[-1] != "__main__":  # runs the command line when imported
            names[".".join(parts)] = path
    return names


def _in_type_checking(tree: ast.AST) -> set[int]:
    """Nodes under ``if TYPE_CHECKING:``: annotations only, never imported at run time."""
    return {id(c) for n in ast.walk(tree) if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)
            for c in ast.walk(n)}


def import_graph() -> dict[str, set[str]]:
    """Module -> the labkit modules it imports anywhere (top level or inside functions), leaving
    out a package's own parents and children (``labkit.batching`` importing its core is not a cycle)."""
    names = module_names()

    def owner(dotted: str) -> str:
        while dotted and dotted not in names:
            dotted = dotted.rpartition(".")[0]
        return dotted

    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        tree = ast.parse(path.read_text())
        hidden = _in_type_checking(tree)
        targets: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in hidden:
                continue
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {t for t in map(owner, (t for t in targets if t.startswith("labkit")))
                       if t and t != name and not name.startswith(t + ".") and not t.startswith(name + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while (w := stack.pop()) != v:
                group.append(w)
            if group:
                found.append(sorted([v, *group]))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_lazy_cycle():
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_cli_report_and_doctor_do_not_import_each_other():
    graph = import_graph()
    assert "labkit.cli" not in graph["labkit.report"] and "labkit.report" not in graph["labkit.doctor"]
    assert "labkit.cli" not in graph["labkit.doctor"]


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_every_module_imports_first():
    """Each module imported first, in one fresh interpreter with labkit's modules dropped before
    each (torch stays loaded, so this takes seconds): a load-time cycle fails whichever goes first."""
    code = (
        "import importlib, sys\n"
        f"for name in {sorted(module_names())!r}:\n"
        "    for m in [m for m in sys.modules if m == 'labkit' or m.startswith('labkit.')]:\n"
        "        del sys.modules[m]\n"
        "    importlib.import_module(name)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_plots_loads_no_domain_module():
    code = "import sys, labkit.plots; print(sorted(m for m in sys.modules if m.startswith('labkit.')))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = eval(proc.stdout)
    assert not [m for m in loaded if m.startswith(("labkit.parallel", "labkit.batching", "labkit.memory"))], loaded
    assert loaded == ["labkit.plots", "labkit.timeline"]  # the timeline is a leaf too
