"""The plugin as a user sees it: pytester sessions, most against the real embedded default."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _embedded_default_ready(embedded_default: None) -> None:
    """Every test here may start llama-server: have it built before the test's own clock starts."""


@pytest.fixture(autouse=True)
def _busy_machine_is_a_note(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner sessions note a busy machine instead of failing on it.

    These tests check what the plugin does, not how fast the machine is, and
    they run on shared machines too. The busy-machine verdict itself is
    tested with ``--llm-busy-machine=fail`` given explicitly (it wins over
    ``PYTEST_ADDOPTS``).
    """
    if "pytester" in request.fixturenames:
        request.getfixturevalue("pytester")  # it clears PYTEST_ADDOPTS when it starts: set it after
    addopts = os.environ.get("PYTEST_ADDOPTS", "")
    monkeypatch.setenv("PYTEST_ADDOPTS", f"{addopts} --llm-busy-machine=warn".strip())
