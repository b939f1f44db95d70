"""The README gets a user running and points into `docs/`: it stays short, its links and the
docs' links resolve (files and headings), and the architecture's map of the worker's layers is
the one `test_layers` checks the import graph against."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.unit.test_layers import LAYERS

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Written by the lifecycle work, in step with its tables; linked from here before it lands.
ELSEWHERE = {ROOT / "docs/lifecycle.md"}


def test_the_readme_is_short() -> None:
    assert len((ROOT / "README.md").read_text(encoding="utf-8")) <= 8000


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_resolve(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if linked in ELSEWHERE:
            continue
        assert linked.exists(), f"{page.name}: {target} does not exist"
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked), f"{page.name}: no heading for {target}"


def test_the_architecture_draws_the_layers_the_imports_keep() -> None:
    text = (ROOT / "docs/architecture.md").read_text(encoding="utf-8")
    items = re.findall(r"^(\d)\. \*([^*]+)\*: (.+?)(?=^\d\. |^\S)", text, flags=re.M | re.S)
    assert [int(n) for n, _, _ in items] == list(range(1, len(LAYERS) + 1))
    for (n, title, body), layer in zip(items, LAYERS, strict=True):
        for module in layer:
            assert re.search(rf"`{module}(\.py|/)`", body), f"{module} not in layer {n}: {title}"
