"""No import circle anywhere in lmfast: between files, and between stages (subpackages).

Every import counts, the ones inside functions too (a lazy import still ties two modules: moving
one breaks the other). Read from the source with `ast`, so nothing is imported to check it.
"""

from __future__ import annotations

import ast
import graphlib
from collections import defaultdict
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "lmfast"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The lmfast modules one import statement names (absolute or relative)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = module.split(".")
        base = base if is_package else base[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    # `from lmfast.x import y` may name a submodule y: count both, the graph keeps what exists
    return [target] + [f"{target}.{alias.name}" for alias in node.names]


def import_edges() -> set[tuple[str, str]]:
    """(A, B) for every lmfast file A that imports lmfast file B anywhere in its body."""
    files = {_module_name(path): path for path in PACKAGE_DIR.rglob("*.py")}
    edges = set()
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            for target in _imported(node, module, path.name == "__init__.py"):
                if target in files and target != module and not module.startswith(target + "."):
                    edges.add((module, target))
    return edges


def _stage(module: str) -> str:
    """`lmfast.train.run` -> `lmfast.train`; a top-level module is its own stage."""
    return ".".join(module.split(".")[:2])


def _circle(edges: set[tuple[str, str]]) -> list[str] | None:
    """One circle of the graph EDGES (as the list of its nodes), or None."""
    graph: dict[str, set[str]] = defaultdict(set)
    for source, target in edges:
        graph[source].add(target)
    try:
        tuple(graph and graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as error:
        return list(error.args[1])
    return None


def test_no_circle_between_files() -> None:
    # a package's __init__ re-exports its own modules (lazily): that is its face, not a tie
    edges = {(a, b) for a, b in import_edges() if not b.startswith(a + ".")}
    assert _circle(edges) is None


def test_no_circle_between_stages() -> None:
    edges = {(_stage(a), _stage(b)) for a, b in import_edges() if _stage(a) != _stage(b)}
    assert _circle(edges) is None


def test_graph_sees_imports_inside_functions() -> None:
    """The reader is not blind: it finds a circle when one is there, and lazy imports are edges."""
    edges = import_edges()
    assert len(edges) > 50
    assert ("lmfast.train.run", "lmfast.train.config") in edges
    assert ("lmfast.generation.generator", "lmfast.generation.onnx_backend") in edges  # inside a function
    assert _circle(edges | {("lmfast.train.config", "lmfast.train.run")}) is not None


def test_contracts_layer_imports_no_stage() -> None:
    """lmfast.models holds the formats between stages: every stage may import it, it imports none."""
    stages_below = {"lmfast.models", "lmfast._lazy", "lmfast.unicode", "lmfast.flags", "lmfast.latest"}
    reached = {_stage(b) for a, b in import_edges() if a.startswith("lmfast.models")}
    assert reached <= stages_below
