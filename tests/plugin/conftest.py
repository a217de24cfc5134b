"""The plugin as a user sees it: pytester sessions, most against the real embedded default."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _embedded_default_ready(embedded_default: None) -> None:
    """Every test here may start llama-server: have it built before the test's own clock starts."""
