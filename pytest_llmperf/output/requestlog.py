"""``--llm-save-requests``: one JSONL line per request, written as it finishes.

Each request line (``"kind": "request"``) holds the raw ``perf_counter_ns``
stamps from which every reported metric can be recomputed. Lines are flushed
one by one, so a run cut off by a dying server or Ctrl-C keeps what it
measured. Once pytest has reported the test, one last line (``"kind":
"outcome"``) carries its final outcome and reasons, the same as every other
artifact. Request headers (and so any API key) are never part of a record.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

from pytest_llmperf.records import RequestRecord


def file_stem(nodeid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("_")[:200]


class RequestLog:
    """Appends records of one test to ``DIR/<nodeid>.jsonl``; a no-op without DIR."""

    def __init__(self, handle: IO[str] | None, model: str, backend: str) -> None:
        self._handle = handle
        self._model = model
        self._backend = backend

    @classmethod
    def open(cls, directory: Path | None, nodeid: str, model: str, backend: str) -> RequestLog:
        if directory is None:
            return cls(None, model, backend)
        directory.mkdir(parents=True, exist_ok=True)
        return cls(open(directory / f"{file_stem(nodeid)}.jsonl", "a", encoding="utf-8"), model, backend)

    def write(self, record: RequestRecord) -> None:
        if self._handle is None:
            return
        line: dict[str, Any] = {
            "kind": "request",
            "model": self._model,
            "backend": self._backend,
            **asdict(record),
        }
        line["chunk_ns"] = list(record.chunk_ns)
        line["chunk_tokens"] = list(record.chunk_tokens)
        self._handle.write(json.dumps(line, separators=(",", ":")) + "\n")
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    @staticmethod
    def write_outcome(directory: Path, nodeid: str, line: dict[str, Any]) -> Path | None:
        """Append the test's final ``{"kind": "outcome", ...}`` line to its request log, if it has one."""
        path = directory / f"{file_stem(nodeid)}.jsonl"
        if not path.is_file():
            return None
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(
                json.dumps({"kind": "outcome", "nodeid": nodeid, **line}, separators=(",", ":")) + "\n"
            )
        return path

    @staticmethod
    def write_series(directory: Path, nodeid: str, series: list[dict[str, Any]]) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{file_stem(nodeid)}.telemetry.jsonl"
        with open(path, "w", encoding="utf-8") as handle:
            for sample in series:
                handle.write(json.dumps(sample, separators=(",", ":")) + "\n")
        return path
