"""The layout docs/architecture.md describes: no module of nmt imports another in a circle (counting the
imports inside functions too), and nmt/model/ imports nothing of nmt but the model and the special ids."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "nmt"


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    edges = {}
    for name, path in known.items():
        tree = ast.parse(path.read_text())
        hidden = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
        targets = set()
        for node in ast.walk(tree):
            if id(node) in hidden:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "nmt":
                targets |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.split(".")[0] == "nmt"}
        edges[name] = {t for t in targets if t in known and t != name}
    return edges


def test_no_module_imports_in_a_circle() -> None:
    edges = graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [node, nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert not cycles, "import circles: " + "; ".join(" → ".join(c) for c in cycles)


def test_the_model_imports_only_the_model() -> None:
    """nmt/model/ is the paper in plain PyTorch: the speed paths, decoding and training live elsewhere."""
    allowed = {"nmt.tokens"}
    for name, targets in graph().items():
        if name.startswith("nmt.model"):
            assert {t for t in targets if not t.startswith("nmt.model")} <= allowed, name
