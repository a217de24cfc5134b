"""Shared test set-up.

pytester points ``HOME`` at a temporary directory, which would hide the
machine's llama-server build and model cache from the pytest sessions it
starts (and rebuild llama-server inside a test). Pin the cache root before
any test changes ``HOME``, so every session shares the one cache, as users'
sessions do.
"""

from __future__ import annotations

import os

from pytest_llmperf.servers.llamacpp_build import cache_root

os.environ["LLMPERF_CACHE_DIR"] = str(cache_root())
