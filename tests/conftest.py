"""Shared test set-up.

pytester points ``HOME`` at a temporary directory, which would hide the
machine's llama-server build and model cache from the pytest sessions it
starts (and rebuild llama-server inside a test). Pin the cache root before
any test changes ``HOME``, so every session shares the one cache, as users'
sessions do.

On a fresh machine the first use builds llama-server (6-10 minutes on two
cores). Do it once, up front, so no test that bounds its own wait (signals,
start timeouts) is charged for the build.
"""

from __future__ import annotations

import os

import pytest

from pytest_llmperf.servers import llamacpp, llamacpp_build
from pytest_llmperf.servers.models import REGISTRY

os.environ["LLMPERF_CACHE_DIR"] = str(llamacpp_build.cache_root())


def pytest_sessionstart(session: pytest.Session) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")

    def progress(line: str) -> None:
        if reporter is not None:
            reporter.write_line(f"[tests] {line}")

    llamacpp_build.build(progress)
    llamacpp.resolve_gguf(REGISTRY["gemma3-270m"])
