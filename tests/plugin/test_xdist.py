"""pytest-xdist and the client's cores, as a user runs them: real servers, real sessions.

Two xdist workers measure two models: the embedded default (llama-server,
started by the worker that runs its file) and the deterministic server,
attached through the ``openai`` backend with its ``base_url`` in pyproject.
One ``--benchmark-json`` must hold every entry, one table every row, and the
saved run must serve as a baseline for the next session.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pytest_llmperf.testing.harness import running_detserver

LLAMA = """
import pytest

@pytest.mark.llm_models("gemma3-270m")
@pytest.mark.parametrize("concurrency", [1, 2])
def test_llama(llm_perf, concurrency):
    llm_perf.run(input_tokens=16, output_tokens=4, concurrency=concurrency, requests=2, warmup=1)
"""

DET = """
import pytest

@pytest.mark.llm_models("detserver")
@pytest.mark.parametrize("concurrency", [1, 4])
def test_det(llm_perf, concurrency):
    llm_perf.run(input_tokens=16, output_tokens=8, concurrency=concurrency, requests=8)
"""

# The saved run is compared with an unchanged rerun; a loaded CPU moves llama-server a lot, so the
# tolerances are loose: the point is that the merged file is read as a baseline, not the gate's bar.
LOOSE = [f"--llm-tolerance={metric}=400%" for metric in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms")]


def test_two_workers_two_models_one_json(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makepyfile(test_llama=LLAMA, test_det=DET)
    storage = f"--benchmark-storage=file://{tmp_path / 'store'}"
    out = tmp_path / "merged.json"
    with running_detserver(tmp_path / "det", ttft_ms=20, itl_ms=2) as server:
        pytester.makepyprojecttoml(f'[tool.llmperf.models.detserver]\nbase_url = "{server.base_url}"\n')
        args = ["-n", "2", "--dist", "loadfile", "--llm-model=gemma3-270m", "--llm-model=detserver", storage]
        first = pytester.runpytest_subprocess(
            *args, "--benchmark-autosave", f"--benchmark-json={out}", timeout=600
        )
        again = pytester.runpytest_subprocess(*args, "--benchmark-compare=0001", *LOOSE, timeout=600)

    first.assert_outcomes(passed=4)
    first.stdout.fnmatch_lines(["*llmperf summary*"])
    table = [line for line in first.stdout.lines if line.split()[1:2] and line.split()[1].startswith("test_")]
    assert len(table) == 4, first.stdout.str()  # one table, every worker's rows

    data = json.loads(out.read_text())
    names = sorted(b["name"] for b in data["benchmarks"])
    assert names == [
        "test_det[detserver-1]",
        "test_det[detserver-4]",
        "test_llama[gemma3-270m-1]",
        "test_llama[gemma3-270m-2]",
    ]
    llms = {b["name"]: b["extra_info"]["llm"] for b in data["benchmarks"]}
    assert {llms[n]["backend"] for n in names[:2]} == {"openai"}
    assert {llms[n]["backend"] for n in names[2:]} == {"llamacpp"}
    assert all(llm["outcome"] == "pass" for llm in llms.values())
    assert len({llm["prompt_salt"] for llm in llms.values()}) == 1  # one salt: the controller's
    assert data["llmperf"]["passed"] is True  # the saved run may be a baseline
    assert {b["stats"]["rounds"] for b in data["benchmarks"]} == {2, 8}
    saved = json.loads(next((tmp_path / "store").rglob("0001_*.json")).read_text())
    assert sorted(b["name"] for b in saved["benchmarks"]) == names  # --benchmark-autosave: every entry too

    # The merged run is the next session's baseline: every test compares against its own entry.
    again.assert_outcomes(passed=4)
    notes = [line for line in again.stdout.lines if "one baseline run" in line]
    assert len(notes) == 4, again.stdout.str()


def test_a_server_we_start_and_the_client_get_their_own_cores(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("pinning needs 2 cores")
    pytester.makepyfile(test_llama=LLAMA)
    out = tmp_path / "pinned.json"
    result = pytester.runpytest_subprocess(
        "--llm-client-workers=auto", f"--benchmark-json={out}", timeout=600
    )
    result.assert_outcomes(passed=2)
    cores = sorted(os.sched_getaffinity(0))
    for bench in json.loads(out.read_text())["benchmarks"]:
        llm = bench["extra_info"]["llm"]
        client = llm["client"]
        assert client["pinning"]["server_cores"] == cores[:-1]
        assert client["pinning"]["client_cores"] == cores[-1:]
        assert client["pinning"]["server_threads"] == len(cores) - 1
        assert client["workers"] == 1  # auto: the one core the server leaves
        assert client["cores"] == cores[-1:]
        assert client["connections"] == "keep-alive"
        # One per stream at least; llama-server closes a streamed response's connection after it.
        assert client["connections_opened"] >= llm["concurrency"]
        assert client["retries"] >= 0
        assert client["cpu_ms_per_1k_output_tokens"] > 0
        # llama-server was started with one thread per core of its own (its command line says -t).
        assert llm["telemetry"]["load"]["server_threads"] == len(cores) - 1
