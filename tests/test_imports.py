"""The layout's rules, read from the source: no module of ``dicom_node/`` or ``synthesis/`` takes
part in an import circle, the node's product code never imports a tool, a test or a
benchmark, and only the command line imports the commands.

Every ``import`` statement counts, wherever it stands (module level, inside a function, under
``TYPE_CHECKING``): a lazy or type-only back-reference is still a circle in the design.
``from package import name`` is an edge to ``package.name`` when that is a module, else to
``package`` (whose ``__init__`` defines the name): a module that reads a constant from the
package that lazily imports it back is in a circle too.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Rooms of dicom_node/ that the node's path may not import: off the node's path by design.
OFF_PATH = ("dicom_node.tools",)
# Modules allowed to import them: the command line and its thin commands.
ENTRY_POINTS = ("dicom_node.cli", "dicom_node.commands")
FOREIGN = ("tests", "bench")


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of ``root/package``."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imported_names(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every dotted name an import statement of module ``name`` refers to."""
    found: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against this module's package
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            submodules = {f"{module}.{a.name}" for a in node.names} & known.keys()
            found.update(submodules)
            if len(submodules) < len(node.names):
                found.add(module)
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules it imports: every import resolved to the longest dotted prefix
    that is a module (outside names are kept as written)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for target in _imported_names(name, path, modules):
            parts = target.split(".")
            resolved = next((".".join(parts[:i]) for i in range(len(parts), 0, -1)
                             if ".".join(parts[:i]) in modules), target)
            if resolved != name:
                edges.add(resolved)
        graph[name] = edges
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def _write(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checker_finds_lazy_and_type_only_circles(tmp_path: Path) -> None:
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg.b import B\n",
        "pkg/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import A\n",
        "pkg/c.py": "def f():\n    from . import d\n",
        "pkg/d.py": "import pkg.c\n",
        "pkg/e.py": "from pkg import a, __version__\n",
    })
    graph = import_graph(module_files(tmp_path, "pkg"))
    assert graph["pkg.e"] == {"pkg.a", "pkg"}
    assert circles(graph) == [["pkg.a", "pkg.b"], ["pkg.c", "pkg.d"]]


def test_the_checker_counts_a_package_facade_read_back(tmp_path: Path) -> None:
    _write(tmp_path, {
        "pkg/__init__.py": ("VERSION = 1\n"
                            "def __getattr__(name):\n    from pkg import impl\n    return impl\n"),
        "pkg/impl.py": "from pkg import VERSION\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/leaf.py": "import pkg.impl\n",
    })
    graph = import_graph(module_files(tmp_path, "pkg"))
    assert graph["pkg.sub.leaf"] == {"pkg.impl"}
    assert circles(graph) == [["pkg", "pkg.impl"]]


@pytest.mark.parametrize("package", [
    "dicom_node",
    "synthesis",
])
def test_no_module_takes_part_in_an_import_circle(package: str) -> None:
    graph = import_graph(module_files(REPO, package))
    assert len(graph) > 10
    assert circles(graph) == []


def test_the_node_path_imports_no_tool_test_or_benchmark() -> None:
    graph = import_graph(module_files(REPO, "dicom_node"))
    wrong = {name: sorted(t for t in targets if t.startswith(OFF_PATH + FOREIGN)
                          or t.split(".")[0] in FOREIGN)
             for name, targets in graph.items()
             if not name.startswith(OFF_PATH + ENTRY_POINTS)}
    assert {name: targets for name, targets in wrong.items() if targets} == {}
    assert any(t.startswith("dicom_node.tools") for t in graph["dicom_node.commands.simulate"])


def test_no_installed_module_imports_the_benchmarks_or_tests() -> None:
    """bench/ and tests/ are not installed: an import of them works from the repository's root
    only (``rtfsyn evaluate`` once failed with ModuleNotFoundError: No module named 'bench')."""
    wrong = {name: sorted(t for t in targets if t.split(".")[0] in FOREIGN)
             for package in ("dicom_node", "synthesis")
             for name, targets in import_graph(module_files(REPO, package)).items()}
    assert {name: targets for name, targets in wrong.items() if targets} == {}


def test_only_the_command_line_imports_the_commands() -> None:
    graph = import_graph(module_files(REPO, "dicom_node"))
    wrong = {name: sorted(t for t in targets if t.startswith("dicom_node.commands"))
             for name, targets in graph.items() if not name.startswith(ENTRY_POINTS)}
    assert {name: targets for name, targets in wrong.items() if targets} == {}
    assert "dicom_node.store.status" in graph["dicom_node.http.api"]  # the report, not the CLI


def test_synthesis_knows_no_dicom() -> None:
    graph = import_graph(module_files(REPO, "synthesis"))
    wrong = {name: sorted(t for t in targets
                          if t.split(".")[0] in ("pydicom", "pynetdicom", "highdicom",
                                                 "dicom_node", *FOREIGN))
             for name, targets in graph.items()}
    assert {name: targets for name, targets in wrong.items() if targets} == {}
