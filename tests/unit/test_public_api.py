"""The boundary between producers and the worker: `producers/` imports from `worker` only its
public API (`worker.api`), which exports what it documents (as httpx's test_exported_members)."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

import worker.api

ROOT = Path(__file__).resolve().parents[2]
PRODUCERS = sorted((ROOT / "producers").rglob("*.py"))
PUBLIC = {"worker.api"}
# The operator entry points go through Producer's methods, never its internals.
OPERATOR_MODULES = [
    p for p in PRODUCERS if p.parent.name == "cli" or p.name in ("webhook.py", "dashboard.py")
]
MAX_LINES = 350


def _worker_imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module]
            if node.module == "worker":  # `from worker import ledger`
                modules = [f"worker.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        else:
            continue
        found += [(node.lineno, m) for m in modules if m == "worker" or m.startswith("worker.")]
    return found


def test_producers_found() -> None:
    assert len(PRODUCERS) > 10 and OPERATOR_MODULES


@pytest.mark.parametrize("path", PRODUCERS, ids=lambda p: str(p.relative_to(ROOT)))
def test_producers_import_only_the_public_api(path: Path) -> None:
    private = [f"line {n}: {m}" for n, m in _worker_imports(path) if m not in PUBLIC]
    assert not private, f"{path.relative_to(ROOT)} imports worker internals: {private}"


def test_the_check_sees_private_imports(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text(
        "import worker.ledger\nfrom worker import flow\nfrom worker.api import Fleet\n"
        "def f():\n    from worker.storage import Storage\n"
    )
    assert [m for _, m in _worker_imports(src)] == [
        "worker.ledger",
        "worker.flow",
        "worker.api",
        "worker.storage",
    ]


@pytest.mark.parametrize("path", OPERATOR_MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_operator_modules_use_producer_methods(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    reached = [
        f"line {n.lineno}: .{n.attr}"
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and n.attr in ("ledger", "flow")
    ]
    assert not reached, f"{path.relative_to(ROOT)} reaches into Producer: {reached}"


@pytest.mark.parametrize("path", PRODUCERS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_producer_module_is_too_long(path: Path) -> None:
    assert len(path.read_text(encoding="utf-8").splitlines()) <= MAX_LINES


def test_exported_members() -> None:
    """Every exported name exists, is listed once (sorted, as ruff keeps it), and is named in
    the module's docstring; what worker.api defines itself has a docstring of its own."""
    names = worker.api.__all__
    assert len(set(names)) == len(names)
    documented = set(re.findall(r"`(\w+)`", worker.api.__doc__ or ""))
    for name in names:
        member = getattr(worker.api, name)  # lazy members load here
        assert name in documented, f"{name} is exported but not in worker.api's docstring"
        if getattr(member, "__module__", None) == "worker.api":
            assert inspect.getdoc(member), f"worker.api.{name} has no docstring"
    assert not documented - set(names), "documented but not exported"


def test_unknown_members_raise_attribute_error() -> None:
    with pytest.raises(AttributeError):
        _ = worker.api.Ledger_nope
