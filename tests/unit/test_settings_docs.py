"""`docs/configuration.md` is rendered from the settings' declarations: it fails here when it is
out of step with them (run `make docs`), and it names every variable anything reads."""

from __future__ import annotations

from pathlib import Path

import click

from producers.cli import main
from worker.settings import Settings, docs
from worker.settings.docs import render
from worker.settings.fields import SETTINGS

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs/configuration.md"


def test_the_configuration_reference_is_in_step_with_the_fields() -> None:
    assert DOC.read_text(encoding="utf-8") == render(), "run `make docs` and commit the result"


def test_it_names_every_variable() -> None:
    text = DOC.read_text(encoding="utf-8")
    for s in SETTINGS:
        for var in s.env_names:
            assert f"`{var}`" in text
    assert "`UPSCALE_UPSTREAMS`" in text and "upstreams" in Settings.model_fields
    for var in _command_variables(main):
        assert f"`{var}`" in text, f"{var} (a command option) is not in {DOC.name}"


def _command_variables(command: click.Command) -> set[str]:
    found = {
        v
        for p in command.params
        for v in ([p.envvar] if isinstance(p.envvar, str) else p.envvar or [])
    }
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            found |= _command_variables(sub)
    return found


def test_a_stale_file_is_reported(tmp_path: Path) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text("# Configuration\n")
    assert docs.main(["--check", "--path", str(stale)]) == 1
    assert docs.main(["--path", str(stale)]) == 0
    assert docs.main(["--check", "--path", str(stale)]) == 0
