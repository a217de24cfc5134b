"""Baselines: the golden schema-1 file, refusals with what to do, and --benchmark-compare lookup."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from pytest_benchmark.storage.file import FileStorage
from pytest_benchmark.utils import get_machine_id

from pytest_llmperf.errors import BaselineError
from pytest_llmperf.judge.baseline import (
    History,
    load_baseline,
    load_history,
    machine_id,
    parse_baseline,
    resolve_compare,
)
from pytest_llmperf.schema import run_mark

GOLDEN = Path(__file__).parents[1] / "data" / "baseline_schema1.json"
C1 = "examples/test_output_tokens.py::test_output_tokens[gemma3-270m-64-1]"
C4 = "examples/test_output_tokens.py::test_output_tokens[gemma3-270m-64-4]"


def golden() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(GOLDEN.read_text("utf-8"))
    return data


def write(tmp_path: Path, document: object) -> Path:
    path = tmp_path / "0001_run.json"
    path.write_text(json.dumps(document), "utf-8")
    return path


def test_golden_file_loads_indexed_by_fullname() -> None:
    baseline = load_baseline(GOLDEN)
    assert list(baseline.entries) == [C1, C4]  # the plain pytest-benchmark test is skipped
    llm = baseline.llm(C4)
    assert llm is not None
    assert (llm["model"], llm["concurrency"], llm["schema"]) == ("gemma3-270m", 4, 1)
    assert llm["samples"]["ttft_ms"] == [1312.5, 1498.1, 1655.0, 1402.7, 1380.2, 1544.9]
    assert baseline.llm("tests/test_x.py::test_missing") is None
    assert baseline.source == str(GOLDEN)
    info = baseline.machine_info["llmperf"]
    assert info["gpu_count"] == 0
    assert info["servers"]["gemma3-270m"]["engine_version"] == "b6123"


def test_golden_file_is_a_file_pytest_benchmark_itself_loads(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path, logging.getLogger("test"), default_machine_id=None)
    loaded = list(storage.load(str(GOLDEN)))
    assert len(loaded) == 1
    assert [b["fullname"] for b in loaded[0][1]["benchmarks"]][:2] == [C1, C4]


def test_a_loaded_document_validates_too() -> None:
    assert list(load_baseline(golden()).entries) == [C1, C4]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(
        BaselineError, match="does not exist; run once with --benchmark-autosave to create one"
    ):
        load_baseline(tmp_path / "nope.json")


def test_corrupt_file_says_where_and_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "0002_cut.json"
    path.write_text(GOLDEN.read_text("utf-8")[:500], "utf-8")
    with pytest.raises(BaselineError) as info:
        load_baseline(path)
    message = str(info.value)
    assert message.startswith(f"baseline {path}: is not valid JSON (")
    assert "delete it and re-create it with --benchmark-autosave" in message


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (
            3,
            "has extra_info.llm.schema 3, this version reads 1 and 2; "
            "upgrade pytest-llmperf, or re-create it",
        ),
        (
            "1",
            "has extra_info.llm.schema '1', this version reads 1 and 2; "
            "re-create it with --benchmark-autosave",
        ),
    ],
)
def test_wrong_schema(tmp_path: Path, schema: object, message: str) -> None:
    doc = golden()
    doc["benchmarks"][1]["extra_info"]["llm"]["schema"] = schema
    with pytest.raises(BaselineError) as info:
        load_baseline(write(tmp_path, doc))
    assert f"entry {C4!r} {message}" in str(info.value)


def test_missing_schema(tmp_path: Path) -> None:
    doc = golden()
    del doc["benchmarks"][0]["extra_info"]["llm"]["schema"]
    with pytest.raises(
        BaselineError, match=r"has no extra_info.llm.schema \(written before pytest-llmperf schema 1\)"
    ):
        load_baseline(write(tmp_path, doc))


def mutate(path: list[object], value: object = None, delete: bool = False) -> dict[str, Any]:
    doc = golden()
    target: Any = doc
    for key in path[:-1]:
        target = target[key]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


LLM0: list[object] = ["benchmarks", 0, "extra_info", "llm"]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([1, 2], "is not a JSON object"),
        ({"benchmarks": []}, "is not a pytest-benchmark file (needs 'machine_info' and 'benchmarks')"),
        (mutate(["benchmarks", 0, "fullname"], delete=True), "benchmarks[0] has no 'fullname'"),
        (mutate([*LLM0, "samples"], delete=True), f"entry {C1!r} lacks extra_info.llm keys samples"),
        (mutate([*LLM0, "ttft_ms", "p95"], "fast"), f"entry {C1!r} has ttft_ms without numeric p50/p90"),
        (
            mutate([*LLM0, "samples", "tpot_ms"], [1, "x"]),
            "has samples.tpot_ms that is not a list of numbers",
        ),
        (mutate([*LLM0], [1]), f"entry {C1!r} has extra_info.llm that is not an object"),
        (mutate(["benchmarks"], []), "holds no pytest-llmperf entries (no benchmark has extra_info.llm)"),
    ],
)
def test_malformed_documents_are_refused(doc: object, message: str) -> None:
    with pytest.raises(BaselineError) as info:
        parse_baseline(copy.deepcopy(doc), "run.json")
    assert str(info.value).startswith("baseline run.json: ")
    assert message in str(info.value)


def test_null_distribution_is_allowed(tmp_path: Path) -> None:
    doc = mutate([*LLM0, "tpot_ms"], None)
    assert load_baseline(write(tmp_path, doc)).llm(C1)["tpot_ms"] is None  # type: ignore[index]


# -- --benchmark-compare -> file, the way pytest-benchmark's FileStorage finds it ------------------

MACHINE = "Linux-CPython-3.11-64bit"


@pytest.fixture
def storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    root = tmp_path / ".benchmarks"
    for name in ("0001_first.json", "0002_second.json", "0010_tenth.json"):
        (root / MACHINE).mkdir(parents=True, exist_ok=True)
        (root / MACHINE / name).write_text("{}", "utf-8")
    (root / "Darwin-CPython-3.12-64bit").mkdir()
    (root / "Darwin-CPython-3.12-64bit" / "0003_mac.json").write_text("{}", "utf-8")
    return root


def reference(root: Path, value: str) -> list[Path]:
    """What pytest-benchmark 5.x itself selects for ``--benchmark-compare=value``."""
    store = FileStorage(root, logging.getLogger("test"), default_machine_id=MACHINE)
    return [Path(p) for p in store.query(value)]


def test_machine_id_matches_pytest_benchmark() -> None:
    assert machine_id() == get_machine_id()


def test_bare_compare_picks_the_latest_run_of_this_machine(storage: Path) -> None:
    found = resolve_compare(True, "file://./.benchmarks", MACHINE)
    assert found.resolve() == storage / MACHINE / "0010_tenth.json"
    assert found.resolve() == reference(storage, "[0-9][0-9][0-9][0-9]_")[-1]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0002", f"{MACHINE}/0002_second.json"),
        ("0010_tenth", f"{MACHINE}/0010_tenth.json"),
        ("Darwin-*/0003", "Darwin-CPython-3.12-64bit/0003_mac.json"),
        (f".benchmarks/{MACHINE}/0001_first.json", f"{MACHINE}/0001_first.json"),
    ],
)
def test_compare_values_resolve_like_pytest_benchmark(storage: Path, value: str, expected: str) -> None:
    found = resolve_compare(value, ".benchmarks", MACHINE)
    assert found.resolve() == storage / expected
    assert [p.resolve() for p in reference(storage, value)] == [storage / expected]


def test_ambiguous_and_unmatched_compare_values(storage: Path) -> None:
    with pytest.raises(
        BaselineError, match=r"--benchmark-compare=000 matches 2 runs \(.*0001_first.json, .*0002"
    ):
        resolve_compare("000", ".benchmarks", MACHINE)
    with pytest.raises(
        BaselineError, match=r"--benchmark-compare=0099 matches no file in \.benchmarks/Linux"
    ):
        resolve_compare("0099", ".benchmarks", MACHINE)
    with pytest.raises(BaselineError, match="is neither an existing file nor 'MACHINE-GLOB/NAME-GLOB'"):
        resolve_compare("a/b/c", ".benchmarks", MACHINE)


def test_no_saved_run_and_foreign_storage(storage: Path) -> None:
    with pytest.raises(
        BaselineError, match=r"--benchmark-compare found no saved run in \.benchmarks/Other-64bit; run"
    ):
        resolve_compare(True, ".benchmarks", "Other-64bit")
    with pytest.raises(BaselineError, match="is not a file storage"):
        resolve_compare(True, "elasticsearch+http://localhost:9200/bench/bench", MACHINE)


# -- the history: the latest passing runs; a failed run is never a baseline -----------------------


def save(root: Path, name: str, *, passed: bool | None, outcome: str = "pass", marker: int = 0) -> Path:
    """A saved run: the golden document, marked as its session ended (``None``: written before marks)."""
    doc = golden()
    for bench in doc["benchmarks"]:
        llm = bench.get("extra_info", {}).get("llm")
        if llm is not None:
            llm["outcome"] = outcome
            llm["samples"]["ttft_ms"] = [float(marker)] * 3  # tells the runs apart
    if passed is not None:
        doc["llmperf"] = run_mark(failed=0 if passed else 1, errors=0, invalid=0, interrupted=False)
    path = root / MACHINE / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc), "utf-8")
    return path


def markers(history: History | None) -> list[float]:
    assert history is not None
    return [run.llm(C1)["samples"]["ttft_ms"][0] for run in history.runs]  # type: ignore[index]


def test_bare_compare_keeps_the_latest_passing_runs_and_never_a_failed_one(tmp_path: Path) -> None:
    root = tmp_path / "store"
    save(root, "0001_a.json", passed=True, marker=1)
    save(root, "0002_b.json", passed=None, marker=2)  # saved before runs were marked: outcomes decide
    save(root, "0003_c.json", passed=False, marker=3)  # pytest failed something in that session
    save(root, "0004_d.json", passed=None, outcome="fail-regression", marker=4)
    save(root, "0005_e.json", passed=True, marker=5)
    save(root, "0006_f.json", passed=False, marker=6)
    history = load_history(True, storage=str(root), machine=MACHINE)
    assert markers(history) == [5, 2, 1]  # newest first; 6, 4 and 3 did not pass
    assert history is not None
    assert history.skipped == ("0006_f.json", "0004_d.json", "0003_c.json")
    assert not history.explicit
    assert markers(load_history(True, storage=str(root), machine=MACHINE, limit=2)) == [5, 2]


def test_a_named_run_is_the_only_one_and_a_failed_one_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "store"
    save(root, "0001_a.json", passed=True, marker=1)
    failed = save(root, "0002_b.json", passed=False, marker=2)
    named = load_history("0001", storage=str(root), machine=MACHINE)
    assert markers(named) == [1]
    assert named is not None
    assert named.explicit
    with pytest.raises(BaselineError) as info:
        load_history("0002", storage=str(root), machine=MACHINE)
    assert str(info.value) == (
        f"baseline {failed}: that session did not pass (1 failed), so it cannot be a baseline; name a run "
        "that passed in --benchmark-compare=0002, or give bare --benchmark-compare to use the latest "
        "passing runs"
    )
    with pytest.raises(
        BaselineError, match="so it cannot be a baseline; name a run that passed in --llm-baseline"
    ):
        load_history(None, failed)
    assert load_history(None, None) is None


def test_no_passing_run_at_all_says_what_to_do(tmp_path: Path) -> None:
    root = tmp_path / "store"
    save(root, "0001_a.json", passed=False)
    with pytest.raises(BaselineError) as info:
        load_history(True, storage=str(root), machine=MACHINE)
    assert str(info.value) == (
        f"--benchmark-compare found 1 saved runs in {root / MACHINE}, none of them passed (0001_a.json): "
        "a failed, interrupted or busy run is never a baseline; run once on a quiet machine with "
        "--benchmark-autosave"
    )
    with pytest.raises(BaselineError, match="found no saved run"):
        load_history(True, storage=str(tmp_path / "empty"), machine=MACHINE)


def test_entries_of_one_case_are_grouped_over_its_repeats(tmp_path: Path) -> None:
    doc = golden()
    first = copy.deepcopy(doc["benchmarks"][0])
    second = copy.deepcopy(first)
    for index, bench in enumerate((first, second), start=1):
        bench["fullname"] = C1.replace("-1]", f"-1-repeat{index}]")
        bench["extra_info"]["llm"].update(case=C1, repeat=index, repeats=2)
    doc["benchmarks"] = [first, second, doc["benchmarks"][1]]
    run = load_baseline(write(tmp_path, doc))
    assert [llm["repeat"] for llm in run.case(C1)] == [1, 2]
    assert run.case_keys() == [C1, C4]
    assert len(run.case(C4)) == 1
