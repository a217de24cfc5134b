"""pytest-benchmark's session object, found by its plugin name rather than a private attribute.

pytest-benchmark keeps its ``BenchmarkSession`` in ``config._benchmarksession``
and also registers it as a plugin named ``"pytest-benchmark"``;
``pluginmanager.get_plugin`` (pytest's public API) finds it by that name.
"""

from __future__ import annotations

from typing import Any

import pytest

PLUGIN_NAME = "pytest-benchmark"
"""The name pytest-benchmark's ``pytest_configure`` registers its ``BenchmarkSession`` under."""


def benchmark_session(config: pytest.Config) -> Any | None:
    """pytest-benchmark's session, or ``None`` where pytest-benchmark is not active (``-p no:benchmark``).

    No public hook or option does what this plugin needs from it, so the
    object's own attributes are read and set here and in ``xdistmerge``:
    ``benchmarks`` (the entries it will save: pytest-benchmark hands them to
    hooks only while it writes the JSON, too late to add a worker's entries or
    to see that nothing was measured), ``quiet`` (set at terminal-summary time
    to hide its table when every entry is ours: ``--benchmark-quiet`` is
    read once at configure time, before the tests say whose entries they
    are), and ``json``/``save``/``autosave`` (a pytest-xdist worker must not
    save: the controller saves every worker's entries). They are public
    attributes of pytest-benchmark 5.x's ``BenchmarkSession``, not private ones.
    """
    return config.pluginmanager.get_plugin(PLUGIN_NAME)
