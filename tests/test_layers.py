"""The house's rooms import only downward (docs/architecture.md, "The layers"): read from the code's own imports."""

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# folders installed under facecomp by setuptools' package-dir
MAPPED = {"kernels": "facecomp.kernels", "export": "facecomp.export", "cluster": "facecomp.cluster"}
INFERENCE = {"facecomp.complete", "facecomp.parsing", "facecomp.wild", "facecomp.serve", "facecomp.export",
             "facecomp.contract", "facecomp.demo"}
LEAVES = {"facecomp.config", "facecomp.masks", "facecomp.layout", "facecomp.images", "facecomp.labels",
          "facecomp.weights", "facecomp.metrics", "facecomp.contract", "facecomp.runtime"}


def _module(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    parts = MAPPED[parts[0]].split(".") + parts[1:] if parts[0] in MAPPED else parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _room(name: str) -> str:
    """facecomp.train.loop -> facecomp.train (a folder or a top-level module is one room)."""
    return ".".join(name.split(".")[:2])


def import_graph() -> dict[str, set[str]]:
    """room -> rooms it imports (``from facecomp import x`` counts as importing facecomp.x)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for folder in ("facecomp", *MAPPED):
        for path in (REPO / folder).rglob("*.py"):
            here = _module(path)
            package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
            for node in ast.walk(ast.parse(path.read_text())):
                targets: list[str] = []
                if isinstance(node, ast.Import):
                    targets = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    base = node.module or ""
                    if node.level:
                        up = package.split(".")[: len(package.split(".")) - node.level + 1]
                        base = ".".join(up + ([node.module] if node.module else []))
                    targets = [f"{base}.{a.name}" for a in node.names] if base == "facecomp" else [base]
                for t in targets:
                    if t.startswith("facecomp.") and not t.startswith("facecomp.__"):
                        if _room(t) != _room(here):
                            edges[_room(here)].add(_room(t))
    return edges


def test_inference_never_imports_the_trainer():
    graph = import_graph()
    wrong = {room: graph[room] & {"facecomp.train", "facecomp.cluster"} for room in INFERENCE}
    assert not any(wrong.values()), wrong


def test_leaves_import_only_leaves():
    graph = import_graph()
    wrong = {room: graph[room] - LEAVES for room in LEAVES if graph[room] - LEAVES}
    assert not wrong, wrong


def test_no_loop_between_rooms():
    graph = import_graph()
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(room: str, path: list[str]) -> None:
        seen[room] = 1
        for nxt in sorted(graph.get(room, ())):
            assert seen.get(nxt) != 1, " -> ".join([*path, room, nxt])
            if nxt not in seen:
                visit(nxt, [*path, room])
        seen[room] = 2

    for room in sorted(graph):
        if room not in seen:
            visit(room, [])
