"""The package's import structure: layers point down (the import-linter contract in
pyproject.toml), no two modules import each other, even through others, and no module takes
anything from the root package but the compiled core."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp", reason="the test extra installs import-linter (and grimp)")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "python"


@pytest.fixture(scope="module")
def graph(monkeypatch_module):
    return grimp.build_graph("llmos", cache_dir=None)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    # The source tree, whichever llmos is installed: the layout under test is this checkout's.
    mp.syspath_prepend(str(PACKAGE))
    import importlib
    import sys

    for name in [m for m in sys.modules if m == "llmos" or m.startswith("llmos.")]:
        mp.delitem(sys.modules, name)
    importlib.invalidate_caches()
    yield mp
    mp.undo()


def test_the_layers_contract_is_kept():
    # import-linter in a child process, on this checkout's source tree.
    code = ("import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))")
    env = dict(os.environ, PYTHONPATH=str(PACKAGE))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 kept, 0 broken" in out.stdout


def _cycles(graph) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    modules = sorted(graph.modules)
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.find_modules_directly_imported_by(v)):
            if w not in graph.modules:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for m in modules:
        if m not in index:
            visit(m)
    return out


def test_no_import_cycles(graph):
    # The root package is left out: it imports its layers only by name, on first use.
    sub = grimp.build_graph("llmos", cache_dir=None)
    sub.remove_module("llmos")
    assert _cycles(sub) == []


def test_modules_take_only_the_core_from_the_root_package(graph):
    offenders = []
    for module in sorted(graph.modules):
        if module == "llmos":
            continue
        if graph.direct_import_exists(importer=module, imported="llmos"):
            for detail in graph.get_import_details(importer=module, imported="llmos"):
                if "_core" not in detail["line_contents"]:
                    offenders.append(f"{module}:{detail['line_number']}: {detail['line_contents']}")
    assert offenders == []


def test_the_cycle_check_finds_a_cycle():
    g = grimp.ImportGraph()
    for m in ("a", "a.x", "a.y", "a.z"):
        g.add_module(m)
    g.add_import(importer="a.x", imported="a.y")
    g.add_import(importer="a.y", imported="a.z")
    g.add_import(importer="a.z", imported="a.x")
    assert _cycles(g) == [["a.x", "a.y", "a.z"]]
