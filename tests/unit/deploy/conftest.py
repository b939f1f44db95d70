"""The deploy-file tests' fixture: the kustomize tree rendered offline (skipped without kubectl)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.deploy.manifests import KUBECTL, render


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    if KUBECTL is None:
        pytest.skip("kubectl not installed")
    return render(KUBECTL)
