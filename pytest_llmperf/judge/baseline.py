"""Baselines: find, load and check saved pytest-benchmark runs, and keep failed ones out.

A baseline is pytest-benchmark's own JSON (``.benchmarks/<machine-id>/NNNN_*.json``
from ``--benchmark-autosave``) whose ``llm_perf`` entries carry
``extra_info["llm"]`` in a layout ``schema`` can read and whose
``machine_info["llmperf"]`` describes the hardware and engines. This module
resolves a ``--benchmark-compare`` value to files the way pytest-benchmark's
file storage does, validates each document against the layout ``schema``
owns, and indexes entries by ``fullname`` and by case (the repeats of one
case under ``--llm-repeat``).

The history: bare ``--benchmark-compare`` means the latest *passing* runs of
this machine, up to ``--llm-history`` of them, newest first; a run whose
session failed, errored, was interrupted or had an invalid (busy) test is
skipped (``schema.run_passed``). A run named on purpose
(``--benchmark-compare=0003``, ``--llm-baseline PATH``) is the only one used,
and is refused with a sentence when its session did not pass.

It raises ``BaselineError`` with what to do for every unusable file. It must
not compare runs or decide outcomes (that is ``verdict``), and it must not
write anything: pytest-benchmark owns saving.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from pytest_llmperf.errors import BaselineError
from pytest_llmperf.schema import (
    DIST_METRICS,
    DIST_STATS,
    READABLE_SCHEMAS,
    REQUIRED_LLM_KEYS,
    SAMPLE_METRICS,
    SCHEMA,
    case_key,
    run_passed,
)

DEFAULT_HISTORY = 5
"""Baseline runs kept by bare ``--benchmark-compare``: enough for a spread, recent enough to be this setup."""
MAX_SCANNED = 50
"""Saved runs read at most while looking for passing ones (newest first)."""


@dataclass(frozen=True)
class Baseline:
    """A validated baseline run: its llm entries by ``fullname``, its machine_info, whether it passed."""

    source: str
    machine_info: Mapping[str, Any]
    entries: Mapping[str, Mapping[str, Any]]
    passed: bool = True
    why_not: str = ""

    def llm(self, fullname: str) -> Mapping[str, Any] | None:
        """``extra_info["llm"]`` of the entry for this test, or ``None`` if the baseline lacks it."""
        entry = self.entries.get(fullname)
        return None if entry is None else entry["extra_info"]["llm"]

    def case(self, key: str) -> tuple[Mapping[str, Any], ...]:
        """``extra_info["llm"]`` of every entry (every repeat) that measured case ``key``, in file order."""
        return tuple(
            entry["extra_info"]["llm"]
            for name, entry in self.entries.items()
            if case_key(entry["extra_info"]["llm"], name) == key
        )

    def case_keys(self) -> list[str]:
        return list(dict.fromkeys(case_key(e["extra_info"]["llm"], name) for name, e in self.entries.items()))


@dataclass(frozen=True)
class History:
    """The baseline runs a session compares with, newest first.

    ``explicit`` when the user named one run; ``skipped`` names the runs
    left out because their session did not pass.
    """

    runs: tuple[Baseline, ...]
    explicit: bool = False
    skipped: tuple[str, ...] = ()


def _fail(source: str, problem: str, todo: str) -> BaselineError:
    return BaselineError(f"baseline {source}: {problem}; {todo}")


_RECREATE = "re-create it with --benchmark-autosave, or point --benchmark-compare at another run"


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_llm(source: str, fullname: str, llm: object) -> None:
    where = f"entry {fullname!r}"
    if not isinstance(llm, dict):
        raise _fail(source, f"{where} has extra_info.llm that is not an object", _RECREATE)
    if "schema" not in llm:
        raise _fail(
            source,
            f"{where} has no extra_info.llm.schema (written before pytest-llmperf schema 1)",
            _RECREATE,
        )
    if llm["schema"] not in READABLE_SCHEMAS:
        newer = _is_number(llm["schema"]) and llm["schema"] > SCHEMA
        todo = "upgrade pytest-llmperf, or " + _RECREATE if newer else _RECREATE
        raise _fail(
            source,
            f"{where} has extra_info.llm.schema {llm['schema']!r}, this version reads "
            + " and ".join(map(str, READABLE_SCHEMAS)),
            todo,
        )
    missing = [key for key in REQUIRED_LLM_KEYS if key not in llm]
    if missing:
        raise _fail(source, f"{where} lacks extra_info.llm keys {', '.join(missing)}", _RECREATE)
    for metric in DIST_METRICS:
        dist = llm[metric]
        if dist is None:
            continue
        if not isinstance(dist, dict) or not all(_is_number(dist.get(stat)) for stat in DIST_STATS):
            raise _fail(source, f"{where} has {metric} without numeric {'/'.join(DIST_STATS)}", _RECREATE)
    samples = llm["samples"]
    if not isinstance(samples, dict):
        raise _fail(source, f"{where} has extra_info.llm.samples that is not an object", _RECREATE)
    for metric in SAMPLE_METRICS:
        values = samples.get(metric)
        if not isinstance(values, list) or not all(_is_number(v) for v in values):
            raise _fail(source, f"{where} has samples.{metric} that is not a list of numbers", _RECREATE)


def parse_baseline(document: object, source: str = "<dict>") -> Baseline:
    """Validate a loaded pytest-benchmark document and index its llm entries by ``fullname``.

    Entries without ``extra_info.llm`` (plain pytest-benchmark tests in the same
    run) are skipped; a document with no llm entry at all is refused, since a
    comparison against it could only ever find nothing.
    """
    if not isinstance(document, dict):
        raise _fail(source, "is not a JSON object", _RECREATE)
    machine_info = document.get("machine_info")
    benchmarks = document.get("benchmarks")
    if not isinstance(machine_info, dict) or not isinstance(benchmarks, list):
        raise _fail(
            source,
            "is not a pytest-benchmark file (needs 'machine_info' and 'benchmarks')",
            "pass the JSON that --benchmark-autosave or --benchmark-json wrote",
        )
    entries: dict[str, Mapping[str, Any]] = {}
    for index, bench in enumerate(benchmarks):
        if not isinstance(bench, dict) or not isinstance(bench.get("fullname"), str):
            raise _fail(source, f"benchmarks[{index}] has no 'fullname'", _RECREATE)
        extra = bench.get("extra_info")
        if not isinstance(extra, dict) or "llm" not in extra:
            continue
        _check_llm(source, bench["fullname"], extra["llm"])
        # Same rule as pytest-benchmark's compare mapping: a repeated fullname keeps the last entry.
        entries[bench["fullname"]] = bench
    if not entries:
        raise _fail(
            source,
            "holds no pytest-llmperf entries (no benchmark has extra_info.llm)",
            "point --benchmark-compare at a run of llm_perf tests",
        )
    passed, why_not = run_passed(document)
    return Baseline(source, MappingProxyType(machine_info), MappingProxyType(entries), passed, why_not)


def load_baseline(source: str | Path | Mapping[str, Any]) -> Baseline:
    """Load a baseline from a path, or validate one pytest-benchmark already loaded."""
    if isinstance(source, Mapping):
        return parse_baseline(dict(source))
    path = Path(source)
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _fail(name, "does not exist", "run once with --benchmark-autosave to create one") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(name, f"cannot be read ({exc})", _RECREATE) from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(
            name,
            f"is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})",
            "delete it and " + _RECREATE,
        ) from None
    return parse_baseline(document, name)


def machine_id() -> str:
    """pytest-benchmark's ``get_machine_id()``: the storage sub-folder of this machine."""
    return "{}-{}-{}-{}".format(
        platform.system(),
        platform.python_implementation(),
        ".".join(platform.python_version_tuple()[:2]),
        platform.architecture()[0],
    )


def _storage_path(storage: str) -> Path:
    if "://" not in storage:
        return Path(storage)
    if storage.startswith("file://"):
        return Path(storage[len("file://") :])
    raise BaselineError(
        f"--benchmark-storage {storage!r} is not a file storage; pytest-llmperf reads baselines from "
        "file://PATH storage only"
    )


def _query(root: Path, value: str, machine: str | None) -> list[Path]:
    """pytest-benchmark 5.x ``FileStorage.query`` for one glob-or-file, without its mkdir."""
    candidate = Path(value)
    if candidate.is_file():
        return [candidate]
    parts = candidate.parts
    if len(parts) > 2:
        raise BaselineError(
            f"--benchmark-compare {value!r} is neither an existing file nor "
            "'MACHINE-GLOB/NAME-GLOB' or 'NAME-GLOB'"
        )
    if len(parts) == 2:
        platform_glob, filename_glob = parts
    else:
        platform_glob = machine or "*"
        filename_glob = parts[0] if parts else ""
    filename_glob = filename_glob.rstrip("*") + "*.json"
    files = [f for folder in root.glob(platform_glob) for f in folder.glob(filename_glob)]
    files.extend(root.glob(filename_glob))
    return sorted(files, key=lambda f: (f.name, f.parent))


def saved_runs(storage: str = "file://./.benchmarks", machine: str | None = None) -> list[Path]:
    """Every autosaved run (``NNNN_*.json``) of this machine in ``storage``, newest first."""
    root = _storage_path(storage)
    machine = machine_id() if machine is None else machine
    return list(reversed(_query(root, "[0-9][0-9][0-9][0-9]_", machine)))


def load_history(
    compare: str | Literal[True] | None,
    baseline: Path | None = None,
    *,
    storage: str = "file://./.benchmarks",
    machine: str | None = None,
    limit: int = DEFAULT_HISTORY,
) -> History | None:
    """The runs ``--llm-baseline`` or ``--benchmark-compare[=NUM]`` select; ``None`` for neither.

    A named run must have passed. Bare ``--benchmark-compare`` walks this
    machine's saved runs newest first, keeps up to ``limit`` that passed and
    skips the rest; none passing is an error that says what to do.
    """
    if baseline is not None or (compare is not None and compare is not True):
        path = baseline if baseline is not None else resolve_compare(str(compare), storage, machine)
        run = load_baseline(path)
        if not run.passed:
            option = "--llm-baseline" if baseline is not None else f"--benchmark-compare={compare}"
            raise _fail(
                run.source,
                f"{run.why_not}, so it cannot be a baseline",
                f"name a run that passed in {option}, or give bare --benchmark-compare to use the latest "
                "passing runs",
            )
        return History((run,), explicit=True)
    if compare is None:
        return None
    files = saved_runs(storage, machine)
    if not files:
        resolve_compare(True, storage, machine)  # raises the "no saved run" error
    runs: list[Baseline] = []
    skipped: list[str] = []
    for path in files[:MAX_SCANNED]:
        run = load_baseline(path)
        if not run.passed:
            skipped.append(path.name)
            continue
        runs.append(run)
        if len(runs) >= limit:
            break
    if not runs:
        raise BaselineError(
            f"--benchmark-compare found {len(files)} saved runs in {files[0].parent}, none of them passed "
            f"({', '.join(skipped[:5])}{', ...' if len(skipped) > 5 else ''}): a failed, interrupted or "
            "busy run is never a baseline; run once on a quiet machine with --benchmark-autosave"
        )
    return History(tuple(runs), explicit=False, skipped=tuple(skipped))


def resolve_compare(
    compare: str | Literal[True], storage: str = "file://./.benchmarks", machine: str | None = None
) -> Path:
    """The file ``--benchmark-compare[=NUM|ID]`` selects in ``--benchmark-storage``.

    ``True`` (the bare option) is the latest ``NNNN_*.json`` of this machine;
    a string is an existing file, a file-name prefix such as ``0003``, or
    ``MACHINE-GLOB/NAME-GLOB``. ``machine`` defaults to pytest-benchmark's
    machine id. Resolve before this session saves, as pytest-benchmark does.
    pytest-benchmark compares with every match of an ambiguous prefix; a gate
    needs one run, so several matches are an error here.
    """
    root = _storage_path(storage)
    machine = machine_id() if machine is None else machine
    if compare is True:
        files = _query(root, "[0-9][0-9][0-9][0-9]_", machine)[-1:]
        if not files:
            raise BaselineError(
                f"--benchmark-compare found no saved run in {root / machine}; run once with "
                "--benchmark-autosave (in CI, restore the previous run's .benchmarks folder first)"
            )
        return files[0]
    files = _query(root, compare, machine)
    if not files:
        raise BaselineError(
            f"--benchmark-compare={compare} matches no file in {root / machine}; give a run number "
            "such as 0001, a file name, or a path (see the NNNN_*.json files there)"
        )
    if len(files) > 1:
        names = ", ".join(str(f) for f in files)
        raise BaselineError(
            f"--benchmark-compare={compare} matches {len(files)} runs ({names}); give one run number"
        )
    return files[0]
