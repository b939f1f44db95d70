"""The image and `make install` install from the lock (which pins every runtime and dev
dependency) before the source, so a code change reuses the dependency layer. Fast, no services
needed."""

from __future__ import annotations

import re
import tomllib

from tests.unit.deploy.manifests import ROOT

LOCK = ROOT / "requirements.lock"


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if m:
            pins[_normalize(m[1])] = m[2]
    return pins


def test_lock_pins_every_runtime_and_dev_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["dev"]
    pins = _lock_pins()
    for req in declared:
        name = _normalize(re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0])
        assert name in pins, f"{req} is not pinned in requirements.lock (re-run pip-compile)"
    assert all("[" not in line.split("==")[0] for line in LOCK.read_text().splitlines())


def test_image_and_make_install_from_the_lock_dependencies_before_source() -> None:
    lines = [ln.strip() for ln in (ROOT / "Dockerfile").read_text().splitlines() if ln.strip()]
    stages = [i for i, ln in enumerate(lines) if ln.startswith("FROM ")]
    deps_stage = lines[stages[0] : stages[1]]
    # The dependency stage sees only pyproject.toml and the lock: a code change reuses it.
    copies = [ln for ln in deps_stage if ln.startswith("COPY ")]
    assert copies == ["COPY pyproject.toml requirements.lock ./"]
    assert any("-c requirements.lock" in ln for ln in deps_stage)
    final = lines[stages[-1] :]
    dep_install = next(i for i, ln in enumerate(final) if "from=deps" in ln)
    app_install = next(i for i, ln in enumerate(final) if "from=app" in ln)
    assert dep_install < app_install
    assert not any(ln.startswith("COPY ") and "worker" in ln for ln in final)
    assert "USER 10001" in " ".join(final)
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install -q -c requirements.lock -e '.[dev]'" in makefile
    assert "requirements.lock" not in (ROOT / ".dockerignore").read_text()
