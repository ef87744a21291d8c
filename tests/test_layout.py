"""The package's import graph has no cycles.

Lower layers never import higher ones (see STYLE.md): a socket gets a narrow
context from its manager instead of importing it. The graph is read from the
source with :mod:`ast`. Imports that run count (inside functions too), and so do
imports under ``if TYPE_CHECKING:``, in the whole package: an annotation-only
cycle is still a knot a newcomer has to untie (give the lower module a narrow
protocol of what it uses instead).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import trio_wsmgr

ROOT = Path(trio_wsmgr.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> list[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    if node.level:
        base_parts = package.split(".")
        base = ".".join(base_parts[: len(base_parts) - (node.level - 1)])
        target = f"{base}.{node.module}" if node.module else base
    else:
        target = node.module or ""
    found = []
    for alias in node.names:
        submodule = f"{target}.{alias.name}"
        found.append(submodule if submodule in MODULES else target)
    return found


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST, *, runtime_only: bool) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        if runtime_only and isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))
    return found


def _imports(module: str, *, runtime_only: bool = False) -> set[str]:
    path = MODULES[module]
    targets: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    for node in _import_nodes(tree, runtime_only=runtime_only):
        if isinstance(node, ast.ImportFrom):
            targets.update(_resolve(module, path, node))
        else:
            targets.update(alias.name for alias in node.names)
    return {target for target in targets if target in MODULES and target != module}


def _edges(*, runtime_only: bool = False) -> dict[str, set[str]]:
    return {module: _imports(module, runtime_only=runtime_only) for module in MODULES}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycle_at_run_time() -> None:
    cycle = _find_cycle(_edges(runtime_only=True))
    assert cycle is None, " -> ".join(cycle or [])


def test_the_package_has_no_cycle_even_for_type_checking() -> None:
    """Annotation-only imports count too: e.g. the socket must not know the manager's type."""
    cycle = _find_cycle(_edges())
    assert cycle is None, " -> ".join(cycle or [])


def test_the_socket_knows_nothing_of_the_manager() -> None:
    graph = _edges()
    for module in ("trio_wsmgr.server._socket", "trio_wsmgr.server._fanout"):
        assert "trio_wsmgr.server._manager" not in graph[module], module
    assert "trio_wsmgr.server._manager" not in graph["trio_wsmgr.server._heartbeat"]


def test_the_protocol_layer_imports_nothing_above_it() -> None:
    for module, targets in _edges().items():
        if module.startswith("trio_wsmgr.protocol"):
            above = {t for t in targets if t.startswith(("trio_wsmgr.server", "trio_wsmgr.client"))}
            assert not above, (module, above)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_imports_on_its_own(module: str) -> None:
    importlib.import_module(module)


SERVE_PATH = [
    "trio_wsmgr.server._socket",
    "trio_wsmgr.server._answer",
    "trio_wsmgr.server._transport",
    "trio_wsmgr.server._heartbeat",
    "trio_wsmgr.server._fanout",
    "trio_wsmgr.protocol._handshake",
    "trio_wsmgr.protocol._reader",
    "trio_wsmgr.protocol._frames",
    "trio_wsmgr.protocol._message",
]


@pytest.mark.parametrize("module", SERVE_PATH)
def test_the_serve_path_touches_no_dependency_internals(module: str) -> None:
    """serve's wire is public sans-IO code: no trio-websocket, no border, no private names."""
    tree = ast.parse(MODULES[module].read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
            if node.module and node.module.split(".")[0] in ("wsproto", "trio", "h11"):
                assert not any(a.name.startswith("_") for a in node.names), (module, node.module)
            if node.level and not node.module:
                imported.update(alias.name for alias in node.names)
    assert "trio_websocket" not in imported, module
    assert "_border" not in imported, module
    assert not any(name.split(".")[0] in ("wsproto", "h11") and "._" in name for name in imported)
