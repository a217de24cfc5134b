"""Instruments that ship with the package, for tests and benchmarks.

``detserver`` is a deterministic-latency server with known truth (its own
per-request stamps) and injectable faults, ``wireformats`` the byte shapes
it streams, ``harness`` starts it as a subprocess. They are measuring
instruments: no measurement of a real server uses them, and they import
nothing from the session, the plugin, the judge or the writers.
"""

from __future__ import annotations
