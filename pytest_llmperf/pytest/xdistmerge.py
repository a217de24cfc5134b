"""pytest-xdist: every worker's results, merged by the controller into one JSON, one table, one report.

Under ``pytest -n K`` each worker is a pytest session of its own: it starts
its own servers (one for each model it gets tests of) and measures. Left
alone, pytest-benchmark turns itself off under xdist, and with
``--benchmark-json`` every worker wrote the same file, so only the last
worker's entries survived. Instead:

* at the end of a worker's session, ``pack`` puts what the controller needs
  into ``config.workeroutput["llmperf"]`` as text execnet can carry: every
  entry pytest-benchmark would have saved (and those of tests that measured
  nothing), as JSON, and the rows of the terminal table and the Markdown
  report (``testreport.Finished``), pickled; ``silence`` then stops the
  worker's pytest-benchmark from writing anything itself;
* the controller, as each worker goes down (``pytest_testnodedown``), calls
  ``unpack``: the entries become ``ShippedBench`` objects in its own
  pytest-benchmark session, which saves (``--benchmark-json``,
  ``--benchmark-autosave``, ``--benchmark-save``) and compares them as if it
  had run them, and the rows join its table and report.

This module moves finished values only: it must not measure or judge. It
relies on pytest-benchmark 5.x's session attributes (``benchmarks``,
``json``, ``save``, ``autosave``), as ``output.benchjson`` does; the session
object comes from ``benchsession.benchmark_session``.
"""

from __future__ import annotations

import base64
import json
import pickle
from typing import Any

import pytest

from pytest_llmperf.pytest.benchsession import benchmark_session

KEY = "llmperf"
"""The key of ``config.workeroutput`` this plugin writes."""


class ShippedBench:
    """A worker's benchmark entry, presented the way pytest-benchmark's ``Metadata`` presents one."""

    def __init__(self, entry: dict[str, Any], has_error: bool) -> None:
        self._entry = {k: v for k, v in entry.items() if k != "stats"}
        self.stats: dict[str, Any] = dict(entry.get("stats") or {})
        self.has_error = has_error
        self.name: str = entry["name"]
        self.fullname: str = entry["fullname"]
        self.group: str | None = entry.get("group")
        self.param: str | None = entry.get("param")
        self.params: dict[str, Any] | None = entry.get("params")
        self.extra_info: dict[str, Any] = entry.get("extra_info") or {}
        self.options: dict[str, Any] = entry.get("options") or {}

    def __bool__(self) -> bool:
        return bool(self.stats.get("data") or self.stats.get("rounds"))

    def __getitem__(self, key: str) -> Any:
        if key in self.stats:
            return self.stats[key]
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except AttributeError:
            return default

    def as_dict(
        self, include_data: bool = True, flat: bool = False, stats: bool = True, cprofile: Any = None
    ) -> dict[str, Any]:
        result = {**self._entry, "extra_info": self.extra_info}
        if stats and self.stats:
            figures = dict(self.stats)
            if not include_data:
                figures.pop("data", None)
            if flat:
                result.update(figures)
            else:
                result["stats"] = figures
        return result


def pack(benchmarks: list[Any], finished: list[Any], notes: list[str], warnings: list[str]) -> dict[str, str]:
    """A worker's results as ``workeroutput`` carries them (strings only)."""
    measured = [b.as_dict(include_data=True) for b in benchmarks if not b.has_error]
    unmeasured = [b.as_dict(include_data=False, stats=False) for b in benchmarks if b.has_error]
    return {
        "benchmarks": json.dumps(measured, default=str),
        "unmeasured": json.dumps(unmeasured, default=str),
        "finished": base64.b64encode(pickle.dumps(finished, protocol=pickle.HIGHEST_PROTOCOL)).decode(),
        "notes": json.dumps(notes),
        "warnings": json.dumps(warnings),
    }


def silence(bs: Any) -> None:
    """Keep a worker's pytest-benchmark from saving (the controller saves everyone's) or warning
    that it was turned off (it was not: the controller saves every entry)."""
    bs.json = None
    bs.save = None
    bs.autosave = None
    bs.xdist_benchmark_found = False


def unpack(payload: dict[str, str], benchmarks: list[Any]) -> tuple[list[Any], list[str], list[str]]:
    """Add a worker's entries to the controller's ``benchmarks``; return its tests, notes and warnings."""
    for entry in json.loads(payload["benchmarks"]):
        benchmarks.append(ShippedBench(entry, has_error=False))
    for entry in json.loads(payload["unmeasured"]):
        benchmarks.append(ShippedBench(entry, has_error=True))
    finished: list[Any] = pickle.loads(base64.b64decode(payload["finished"]))
    return finished, json.loads(payload["notes"]), json.loads(payload["warnings"])


def hand_over(config: Any, finished: list[Any], notes: list[str], warnings: list[str]) -> None:
    """A worker's end of the session: its results into ``config.workeroutput``, its saving off."""
    bs = benchmark_session(config)
    config.workeroutput[KEY] = pack(list(bs.benchmarks) if bs is not None else [], finished, notes, warnings)
    if bs is not None:
        silence(bs)


def take_over(config: pytest.Config, node: Any) -> tuple[list[Any], list[str], list[str]]:
    """The controller's side, as worker ``node`` goes down: its entries into this session's
    pytest-benchmark; its finished tests, notes and warnings returned (empty if it sent none)."""
    payload = getattr(node, "workeroutput", {}).get(KEY)
    if not payload:
        return [], [], []
    bs = benchmark_session(config)
    return unpack(payload, bs.benchmarks if bs is not None else [])
