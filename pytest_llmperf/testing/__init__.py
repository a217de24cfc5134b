"""Test instruments that ship with the plugin: the deterministic-latency server.

``detserver`` is a server with known latencies and injectable faults;
``harness`` starts and stops it as a subprocess for tests and benchmarks.
Nothing here is used by a measurement of a real server.
"""

from __future__ import annotations
