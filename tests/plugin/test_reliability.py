"""Servers that fail, and a pytest that is stopped: a reason every time, no orphans, nothing lost.

The tests run the real embedded default (llama.cpp's ``llama-server`` with
Gemma 3 270M on the CPU), mostly in an inner pytest run, and find its server
processes by a harmless server argument unique to the test
(``--slot-save-path <tmp>``). Nothing is faked: the server that never gets
healthy is a real llama-server given a garbage GGUF, or told by a user's
``--llm-server-arg`` to listen elsewhere; the one that dies is SIGKILLed.
Our detserver stands in twice, as an instrument rather than an engine: as the
other server that takes llama-server's port, and where a SIGTERM must land at
an exact moment of a response.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability_support import (
    INI_WARNINGS_ARE_ERRORS,
    bench_entries,
    ensure_embedded_default,
    llama_servers_with,
    model_table,
    pytest_popen,
    request_lines,
    unique_server_args,
    wait_until,
)

from pytest_llmperf.servers import llamacpp, models
from pytest_llmperf.servers.base import LaunchRequest, free_port
from pytest_llmperf.testing.harness import running_detserver

TWO_TESTS = """
def test_first(llm_perf):
    llm_perf.run(input_tokens=16, output_tokens=4, requests=2)

def test_second(llm_perf):
    llm_perf.run(input_tokens=16, output_tokens=4, requests=2)
"""


def cases_of(junit: Path) -> dict[str | None, ET.Element]:
    return {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}


@pytest.fixture(scope="module", autouse=True)
def _embedded_default() -> None:
    ensure_embedded_default()  # a first-time build here, not inside an inner run's timeout


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[str]:
    """The test's unique server argument; no llama-server carrying it may outlive the test."""
    yield str(tmp_path)
    left = llama_servers_with(str(tmp_path))
    for proc in left:  # ours by the unique marker: clean up before failing
        proc.kill()
    assert left == [], "llama-server processes outlived their pytest session"


def test_a_server_that_cannot_load_its_model_errors_and_other_models_still_run(
    pytester: pytest.Pytester, tmp_path: Path, marker: str
) -> None:
    garbage = tmp_path / "broken.gguf"
    garbage.write_bytes(b"not a gguf file, just bytes\n" * 4096)
    pytester.makepyprojecttoml(model_table("broken", gguf=str(garbage)))
    pytester.makepyfile(test_two=TWO_TESTS)
    result = pytester.runpytest_subprocess(
        "--llm-model=broken", "--llm-model=gemma3-270m", "-p", "no:randomly", *unique_server_args(tmp_path),
        timeout=300,
    )  # fmt: skip

    # The broken model's tests error (its server failed to start); the other model runs after it.
    result.assert_outcomes(passed=2, errors=2)
    # The first test's error carries the whole reason and the log tail, once, without a traceback...
    result.stdout.fnmatch_lines(
        [
            "*llama-server for broken exited with code 1 before it became healthy "
            "(log *llama-server-broken-*.log); last lines of its log:",
            "*failed to load model*",
        ]
    )
    text = result.stdout.str()
    # pytest's own short summary repeats the whole message when it runs on CI (the CI variable set), so
    # the count is over our report, above that summary.
    report = text.split("short test summary info")[0]
    assert report.count("common_init_: failed to load model") == 1  # the log tail, shown once
    assert "Traceback" not in text
    assert "llamacpp.py" not in text  # no frame of ours
    # ...and the next test of that model says it in one line.
    result.stdout.fnmatch_lines(
        [
            "*llama-server for broken could not start; its reason and log are in the error of "
            "test_two.py::test_first[[]broken[]] above*"
        ]
    )
    result.stdout.fnmatch_lines(
        ["*ERROR test_two.py::test_first[[]broken[]]*", "*ERROR test_two.py::test_second[[]broken[]]*"]
    )
    assert "[llmperf] server started for gemma3-270m" in result.stdout.str()
    # Started once, not once per test: pytest keeps the failed session fixture's error.
    logs = {p.resolve() for p in pytester.path.glob("runpytest-*/llmperf-logs/llama-server-broken-*.log")}
    assert len(logs) == 1


# Live llama-servers of this test, seen from inside the inner pytest session: a check there
# tells our own stop apart from the parent-death signal that ends them once pytest is gone.
SERVERS_LEFT = """
import psutil

def llama_servers_left():
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        cmdline = p.info["cmdline"] or [""]
        if p.info["status"] != psutil.STATUS_ZOMBIE and cmdline[0].endswith("llama-server"):
            if any({marker!r} in part for part in cmdline):
                found.append(p.pid)
    return found

def test_no_llama_server_left():
    assert llama_servers_left() == []
"""

LEFT_AT_EXIT = """
import json
from pathlib import Path

import pytest
from test_zz_after import llama_servers_left

@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    Path({report!r}).write_text(json.dumps(llama_servers_left()))
"""


def test_a_server_not_healthy_within_the_start_timeout_is_stopped_with_its_log_tail(
    pytester: pytest.Pytester, tmp_path: Path, marker: str
) -> None:
    # A user's --llm-server-arg moves llama-server to another port: it runs, but never answers
    # where the plugin waits for it. The start timeout must end the wait, and the server.
    elsewhere = free_port()
    pytester.makepyfile(test_two=TWO_TESTS, test_zz_after=SERVERS_LEFT.format(marker=marker))
    started = time.monotonic()
    result = pytester.runpytest_subprocess(
        "--llm-start-timeout=3", "--llm-server-arg=--port", f"--llm-server-arg={elsewhere}",
        *unique_server_args(tmp_path), timeout=120,
    )  # fmt: skip
    elapsed = time.monotonic() - started

    result.assert_outcomes(errors=2, passed=1)  # test_zz_after: nothing left while pytest still ran
    result.stdout.fnmatch_lines(
        [
            "*llama-server for gemma3-270m did not become healthy within 3 s "
            "(raise --llm-start-timeout if it is just slow; log *.log); last lines of its log:",
            "*load_model: loading model*",
        ]
    )
    assert elapsed < 3 + 30  # the timeout, plus pytest start-up and the server's stop on 2 busy cores


KILL_MID_RUN = """
import json, os, signal, threading, time
from pathlib import Path

REQUESTS = Path({requests!r})

def kill_after_measured(pid, n):
    # SIGKILL the server once n measured requests are in this test's request log.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done = 0
        for path in REQUESTS.glob("*test_first*gemma3-270m*.jsonl"):
            done += sum(1 for line in path.read_text().splitlines() if '"warmup":false' in line)
        if done >= n:
            os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.05)

def test_first(llm_perf, llm_server, llm_model):
    if llm_model == "gemma3-270m":
        threading.Thread(target=kill_after_measured, args=(llm_server.pid, 3), daemon=True).start()
    llm_perf.run(input_tokens=16, output_tokens=4, concurrency=2, requests=8)

def test_second(llm_perf):
    llm_perf.run(input_tokens=16, output_tokens=4, requests=2)
"""


def test_a_server_killed_mid_run_fails_its_test_keeps_its_results_and_spares_other_models(
    pytester: pytest.Pytester, tmp_path: Path, marker: str
) -> None:
    requests, bench, junit = tmp_path / "requests", tmp_path / "bench.json", tmp_path / "junit.xml"
    pytester.makepyprojecttoml(model_table("gemma-twin"))
    pytester.makepyfile(test_kill=KILL_MID_RUN.format(requests=str(requests)))
    result = pytester.runpytest_subprocess(
        "--llm-model=gemma3-270m", "--llm-model=gemma-twin", "-p", "no:randomly",
        f"--llm-save-requests={requests}", f"--benchmark-json={bench}", f"--junitxml={junit}",
        *unique_server_args(tmp_path), timeout=400,
    )  # fmt: skip

    # The running test fails with the reason and the log tail; the next test of that model
    # errors at once; the other model's tests run and pass.
    result.assert_outcomes(passed=2, failed=1, errors=1)
    died = (
        "llama-server for gemma3-270m (pid *) exited with code -9 (log *llama-server-gemma3-270m-*.log); "
        "last lines of its log:"
    )
    log_line = "* I slot *"  # llama-server's own log, as it was when the server died
    result.stdout.fnmatch_lines([died, log_line])
    # The next test of that model: one line, pointing at the first one's reason.
    result.stdout.fnmatch_lines(
        [
            "*llama-server for gemma3-270m died; its reason and log are in the failure of "
            "test_kill.py::test_first[[]gemma3-270m[]] above*"
        ]
    )
    assert "Traceback" not in result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "FAILED test_kill.py::test_first[[]gemma3-270m[]]*",
            "ERROR test_kill.py::test_second[[]gemma3-270m[]]*",
        ]
    )
    # pytest failed the test, and so does every artifact: not "pass" beside an error rate.
    table = result.stdout.str().split("llmperf summary", 1)[1]
    assert re.search(r"^gemma3-270m\s+test_first\[gemma3-270m\]\s.*\sfail$", table, re.M), table
    assert re.search(r"^gemma3-270m\s+test_second\[gemma3-270m\]\s.*\serror$", table, re.M), table
    props = {
        p.get("name"): p.get("value") for p in cases_of(junit)["test_first[gemma3-270m]"].iter("property")
    }
    assert props["llm_outcome"] == "fail"
    cases = cases_of(junit)
    assert float(cases["test_second[gemma3-270m]"].get("time", "nan")) < 1.0  # errors fast
    assert cases["test_first[gemma-twin]"].find("failure") is None

    # What was measured before the kill is in the benchmark JSON and the request log.
    entries = bench_entries(bench)
    killed = entries["test_first[gemma3-270m]"]
    assert killed["outcome"] == "fail"
    assert killed["reasons"][0].startswith("llama-server for gemma3-270m (pid ")
    assert killed["completed"] >= 3
    assert killed["errors"] >= 1
    assert killed["completed"] + killed["errors"] == 8
    assert killed["ttft_ms"]["p50"] > 0
    assert entries["test_first[gemma-twin]"]["completed"] == 8
    assert "test_second[gemma3-270m]" not in entries
    lines = [line for line in request_lines(requests) if "test_first_gemma3-270m" in line["_file"]]
    measured = [line for line in lines if not line["warmup"]]
    assert len(measured) == 8
    good = [line for line in measured if line["error"] is None]
    assert len(good) == killed["completed"] >= 3
    assert all(line["output_tokens"] == 4 and len(line["chunk_ns"]) >= 1 for line in good)
    assert all(isinstance(line["error"], str) and line["error"] for line in measured if line not in good)


LONG_SECOND_TEST = """
def test_a_quick(llm_perf):
    llm_perf.run(input_tokens=16, output_tokens=4, requests=2)

def test_b_long(llm_perf):
    llm_perf.run(input_tokens=16, output_tokens=16, concurrency=1, requests=500)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name)
def test_a_stopped_pytest_leaves_no_server_and_keeps_its_results(
    pytester: pytest.Pytester, tmp_path: Path, marker: str, signum: signal.Signals
) -> None:
    requests, bench, left = tmp_path / "requests", tmp_path / "bench.json", tmp_path / "left-at-exit.json"
    pytester.makeini(INI_WARNINGS_ARE_ERRORS)  # a warning would end the session in a traceback
    pytester.makepyfile(test_stop=LONG_SECOND_TEST, test_zz_after=SERVERS_LEFT.format(marker=marker))
    pytester.makeconftest(LEFT_AT_EXIT.format(report=str(left)))
    proc = pytest_popen(
        pytester.path,
        ["-p", "no:cacheprovider", "-p", "no:randomly", f"--basetemp={tmp_path / 'basetemp'}",
         f"--llm-save-requests={requests}", f"--benchmark-json={bench}", *unique_server_args(tmp_path)],
        out=tmp_path / "output.txt",
    )  # fmt: skip
    try:
        # Stop it mid-measurement: test_b_long has sent requests and has many more to go.
        def long_test_running() -> bool:
            return any(
                "test_b_long" in line["_file"] and not line["warmup"] for line in request_lines(requests)
            ) if requests.is_dir() else False  # fmt: skip

        wait_until(long_test_running, 240, "test_b_long to be measuring")
        assert len(llama_servers_with(marker)) == 1
        proc.send_signal(signum)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    output = (tmp_path / "output.txt").read_text()

    if signum == signal.SIGKILL:
        # pytest had no say: the server's parent-death signal (PR_SET_PDEATHSIG) ends it.
        assert code == -signal.SIGKILL
        wait_until(lambda: llama_servers_with(marker) == [], 30, "the orphaned llama-server to exit")
        assert not bench.exists()
    else:
        assert code == pytest.ExitCode.INTERRUPTED, output
        assert "KeyboardInterrupt" in output
        assert "Traceback" not in output
        assert "Warning" not in output
        # The session stopped its server (process group) before pytest exited, not the
        # parent-death signal after: none was left at pytest's last hook.
        assert json.loads(left.read_text()) == []
        assert llama_servers_with(marker) == [], output
        # The finished test's results were written; the interrupted one has no entry.
        entries = bench_entries(bench)
        assert list(entries) == ["test_a_quick[gemma3-270m]"]
        assert entries["test_a_quick[gemma3-270m]"]["completed"] == 2
    lines = request_lines(requests)
    assert sum(1 for line in lines if "test_a_quick" in line["_file"] and not line["warmup"]) == 2
    assert any("test_b_long" in line["_file"] for line in lines)


SIGTERM_WHILE_READING = """
import os, signal

from pytest_llmperf.measure import client

reads = 0
original = client.Stream.data_received

def data_received(self, data):
    # SIGTERM arrives while a response is being read, so its handler runs inside this
    # transport callback (uvloop swallows exceptions raised there).
    global reads
    reads += 1
    if reads == {at_read}:
        os.kill(os.getpid(), signal.SIGTERM)
    original(self, data)

client.Stream.data_received = data_received
"""


# 300: well into test_b_long, after test_a_quick was measured; 1: the very first response read,
# before any test measured anything (pytest-benchmark then has nothing to save).
@pytest.mark.parametrize("at_read", [300, 1], ids=["after-a-measured-test", "before-any-measurement"])
def test_a_sigterm_that_lands_in_a_transport_callback_still_stops_the_run(
    pytester: pytest.Pytester, tmp_path: Path, at_read: int
) -> None:
    # The signal's timing is made exact with the detserver (16 tokens 10 ms apart per request,
    # so test_b_long's 500 requests would run for minutes); the subject is our handler.
    bench = tmp_path / "bench.json"
    pytester.makeini(INI_WARNINGS_ARE_ERRORS)
    pytester.makepyfile(test_stop=LONG_SECOND_TEST)
    pytester.makeconftest(SIGTERM_WHILE_READING.format(at_read=at_read))
    with running_detserver(tmp_path / "server", model="org/det", ttft_ms=5, itl_ms=10) as server:
        started = time.monotonic()
        result = pytester.runpytest_subprocess(
            "--llm-backend=openai", f"--llm-base-url={server.base_url}", "--llm-model=org/det",
            "-p", "no:randomly", f"--benchmark-json={bench}", timeout=90,
        )  # fmt: skip
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*KeyboardInterrupt: signal 15*"])
    output = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in output
    assert "Warning" not in output
    assert time.monotonic() - started < 30
    if at_read == 1:
        assert not bench.exists()
        result.stdout.fnmatch_lines(["*no test measured anything, so --benchmark-json wrote no file*"])
    else:
        assert list(bench_entries(bench)) == ["test_a_quick[org/det]"]


ONE_SESSION = """
import json, os, time
from pathlib import Path

import psutil

MEETING = Path({meeting!r})

def test_own_server(llm_perf, llm_server):
    me = os.environ.get("PYTEST_XDIST_WORKER") or os.environ["SESSION_NAME"]
    ports = sorted(c.laddr.port for c in psutil.Process(llm_server.pid).net_connections("tcp")
                   if c.status == psutil.CONN_LISTEN)
    (MEETING / f"{{me}}.json").write_text(json.dumps(
        {{"url": llm_server.base_url, "pid": llm_server.pid, "listens": ports}}))
    # Meet the other session, so that both servers are up at the same time.
    deadline = time.monotonic() + 240
    while len(list(MEETING.glob("*.json"))) < 2:
        assert time.monotonic() < deadline, "the other session never started its server"
        time.sleep(0.1)
    result = llm_perf.run(input_tokens=16, output_tokens=4, requests=3)
    assert result.summary.completed == 3
    assert result.summary.errors == 0
"""


@pytest.mark.parametrize("how", ["two-ci-jobs", "xdist-workers"])
def test_two_sessions_at_once_each_start_their_own_server(
    pytester: pytest.Pytester, tmp_path: Path, marker: str, how: str
) -> None:
    meeting = tmp_path / "meeting"
    meeting.mkdir()
    pytester.makepyfile(test_session=ONE_SESSION.format(meeting=str(meeting)))
    common = ["-p", "no:cacheprovider", *unique_server_args(tmp_path)]
    if how == "two-ci-jobs":  # two pytest processes on one machine
        runs = {
            name: [f"--basetemp={tmp_path / name}", f"--benchmark-json={tmp_path / name}.json"]
            for name in ("job1", "job2")
        }
    else:  # one pytest, two xdist workers, each running the test
        runs = {"xdist": ["-n", "2", "--dist=each", f"--basetemp={tmp_path / 'xdist'}"]}
    procs = {
        name: pytest_popen(
            pytester.path,
            [*common, *args],
            env={**os.environ, "SESSION_NAME": name},
            out=tmp_path / f"{name}.txt",
        )
        for name, args in runs.items()
    }
    try:
        codes = {name: proc.wait(timeout=400) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    outputs = {name: (tmp_path / f"{name}.txt").read_text() for name in procs}
    for name, code in codes.items():
        # Two servers and their clients on a 2-core machine may make a measurement invalid (a
        # client that fell behind); that is the verdict working, not a server mix-up. Nothing failed.
        last = outputs[name].strip().splitlines()[-1]
        assert code == 0 or (" invalid" in last and "failed" not in last and "error" not in last), outputs

    seen = [json.loads(path.read_text()) for path in sorted(meeting.glob("*.json"))]
    assert len(seen) == 2
    assert seen[0]["url"] != seen[1]["url"]
    assert seen[0]["pid"] != seen[1]["pid"]
    for info in seen:
        port = int(info["url"].rsplit(":", 1)[1])
        assert port in info["listens"]  # the URL each session measured was its own server's
    if how == "two-ci-jobs":
        for name in procs:
            assert bench_entries(tmp_path / f"{name}.json")["test_own_server[gemma3-270m]"]["completed"] == 3


def test_a_port_taken_before_the_server_binds_it_is_not_mistaken_for_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The race: free_port() hands out a port, and before llama-server binds it another
    # server (say, a second session's) takes it. That one answers /health with 200 at once;
    # ours fails to bind and exits. The squatter is our detserver, an OpenAI-style server
    # that answers /health like any engine.
    with running_detserver(tmp_path / "squatter", model="squatter") as squatter:
        taken = int(squatter.base_url.rsplit(":", 1)[1])
        handed_out = iter([taken])
        monkeypatch.setattr(llamacpp, "free_port", lambda: next(handed_out, None) or free_port())
        lines: list[str] = []
        request = LaunchRequest(
            model=models.lookup(models.DEFAULT_MODEL), max_concurrency=1, max_context=64,
            log_dir=tmp_path / "logs", start_timeout_s=120,
            extra_args=tuple(a.split("=", 1)[1] for a in unique_server_args(tmp_path)),
        )  # fmt: skip
        server = llamacpp.LlamaCppBackend(progress=lines.append).launch(request)
        try:
            port = int(server.base_url.rsplit(":", 1)[1])
            assert port != taken
            assert server.process.listens_on(port)
            assert lines == [f"port {taken} was taken before llama-server could bind it; retrying"]
            # It really is our llama-server there, serving our model.
            with urllib.request.urlopen(server.base_url + "/v1/models", timeout=10) as answer:
                assert [m["id"] for m in json.load(answer)["data"]] == ["gemma3-270m"]
            first = (tmp_path / "logs" / f"llama-server-gemma3-270m-{taken}.log").read_text()
            assert f"couldn't bind HTTP server socket, hostname: 127.0.0.1, port: {taken}" in first
        finally:
            server.stop()
        assert squatter.alive()  # the other server was left alone
    assert llama_servers_with(str(tmp_path)) == []


THREE = """
def test_a(llm_perf):
    llm_perf.run(input_tokens=16, output_tokens=4, requests=2)

def test_b(llm_perf):
    llm_perf.run(input_tokens=16, output_tokens=4, requests=2)

def test_c(llm_perf):
    llm_perf.run(input_tokens=16, output_tokens=4, requests=2)
"""


def test_a_backend_that_cannot_be_used_is_said_once_not_in_a_traceback_per_test(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # vLLM is not importable here and an empty cache has no CPU environment of it: as on a
    # machine without vLLM, where the fit check says the model fits.
    monkeypatch.setenv("LLMPERF_CACHE_DIR", str(tmp_path / "fresh-cache"))
    pytester.makeini(INI_WARNINGS_ARE_ERRORS)
    pytester.makepyfile(test_three=THREE)
    result = pytester.runpytest_subprocess(
        "--llm-model=tiny-llama", "--llm-backend=vllm", "-p", "no:randomly", timeout=120
    )
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines(
        ["*vLLM is not installed: pip install vllm (GPU), or build the CPU environment*"]
    )
    for name in ("test_b", "test_c"):
        result.stdout.fnmatch_lines(
            [
                f"*{name}*",
                "*vLLM for tiny-llama could not start; its reason and log are in the error of "
                "test_three.py::test_a[[]tiny-llama[]] above*",
            ]
        )
    text = result.stdout.str()
    assert "Traceback" not in text
    assert "vllm.py" not in text  # no frame of ours
    assert len(result.outlines) < 60, text  # 0.1 printed about 58 lines per test
