"""The worker package's layers, as docs/architecture.md's map draws them: a module imports only
from its own layer and the ones before it (the import graph, read from the source)."""

from __future__ import annotations

import ast
from pathlib import Path

import worker

LAYERS: list[set[str]] = [
    {"contract", "moves", "formats", "keys", "lua", "settings", "redis_conn", "replicas", "logs"},
    {"storage", "upstream", "results", "images", "output"},
    {"ledger", "flow", "fleet", "reconcile"},
    {"runtime", "metrics", "health", "callbacks", "leases", "gate_watch", "poller", "report"},
    {"outcomes", "job"},
    {"app", "api"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}
ROOT = Path(worker.__file__).parent


def _part(module: str) -> str:
    """`worker.flow.admission` -> `flow` (the top-level module or package of `worker`)."""
    return module.split(".")[1] if module.count(".") else ""


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "worker":
                found |= {a.name for a in node.names}
            elif node.module.startswith("worker."):
                found.add(_part(node.module))
        elif isinstance(node, ast.Import):
            found |= {_part(a.name) for a in node.names if a.name.startswith("worker.")}
    return found


def test_every_part_of_worker_has_a_layer() -> None:
    parts = {p.stem if p.is_file() else p.name for p in ROOT.iterdir()}
    parts = {p for p in parts if not p.startswith("__") and p != "py.typed"}
    assert parts - set(LAYER) == set(), (
        "add the new module to a layer (and to docs/architecture.md)"
    )


def test_no_module_imports_a_later_layer() -> None:
    wrong = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        own = rel.parts[0].removesuffix(".py")
        if own == "__init__":
            continue
        for dep in _imports(path) - {own}:
            if LAYER[dep] > LAYER[own]:
                wrong.append(
                    f"{rel} imports worker.{dep} (layer {LAYER[dep] + 1} > {LAYER[own] + 1})"
                )
    assert wrong == []
