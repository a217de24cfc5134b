"""The API key never lands in anything a run writes.

The endpoint is our detserver, attached through the ``openai`` backend, run
with ``--api-key-env``: like vLLM's ``--api-key`` it refuses ``/v1/*`` without
``Authorization: Bearer <key>``. So a run whose requests all succeed proves
the key was sent, and the test can fail both ways: a key that is not sent
(every request a 401) and a key that leaks (found in an artifact).
"""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

import pytest
from reliability_support import attach_args, bench_entries, files_under, request_lines

from pytest_llmperf.servers.base import http_status
from pytest_llmperf.testing.harness import running_detserver

# One passing test, one failing its budget, one failing its own assert with locals shown (-l):
# failure reports, tracebacks and JUnit text are where a stray key would show.
INNER = """
import pytest

def test_pass(llm_perf):
    result = llm_perf.run(input_tokens=17, output_tokens=4, concurrency=2, requests=4)
    assert result.summary.errors == 0

@pytest.mark.llm_budget(ttft_ms_p95=0.001)
def test_over_budget(llm_perf):
    llm_perf.run(input_tokens=17, output_tokens=4, requests=2)

def test_assert_fails(llm_perf, llm_server):
    result = llm_perf.run(input_tokens=17, output_tokens=4, requests=2)
    server_headers_present = bool(llm_server.headers)
    assert result.summary.completed == -1, (llm_server, server_headers_present)
"""


def files_holding(needle: bytes, files: list[Path]) -> list[Path]:
    return [path for path in files if needle in path.read_bytes()]


def test_the_api_key_is_sent_and_never_written(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = f"sk-llmperf-{secrets.token_hex(16)}"
    monkeypatch.setenv("MY_KEY", key)  # the detserver and the inner pytest both inherit it
    out = tmp_path / "out"
    pytester.makepyfile(test_secret=INNER)
    with running_detserver(
        tmp_path / "server", model="org/det", ttft_ms=5, itl_ms=2, args=("--api-key-env", "MY_KEY")
    ) as server:
        assert http_status(server.base_url + "/v1/models") == 401  # no key, no answer
        assert http_status(server.base_url + "/v1/models", headers={"Authorization": f"Bearer {key}"}) == 200
        result = pytester.runpytest_subprocess(
            *attach_args(server),
            "--llm-api-key-env=MY_KEY",
            f"--llm-save-requests={out / 'requests'}",
            f"--benchmark-json={out / 'bench.json'}",
            "--benchmark-autosave",
            f"--benchmark-storage=file://{out / 'storage'}",
            f"--llm-report={out / 'report'}",
            f"--junitxml={out / 'junit.xml'}",
            "--llm-telemetry-series",
            "-l",  # show locals in tracebacks
            "--tb=long",
            "-rA",
            timeout=120,
        )

    # The server accepted every request: the key was sent as a bearer token.
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(["fail-budget: ttft_ms p95 = * ms exceeds budget 0.001 ms*"])
    entries = bench_entries(out / "bench.json")
    assert {name: llm["errors"] for name, llm in entries.items()} == {
        "test_pass[org/det]": 0,
        "test_over_budget[org/det]": 0,
        "test_assert_fails[org/det]": 0,
    }
    lines = request_lines(out / "requests")
    assert len(lines) == (2 + 4) + (1 + 2) + (1 + 2)  # warm-up and measured requests of the three tests
    assert [line["error"] for line in lines] == [None] * len(lines)

    # Every artifact of the run exists, and none holds the key: our outputs, the inner
    # session's folder (its basetemp and server logs, pytester's stdout/stderr files), and
    # the endpoint's own logs.
    artifacts = sorted(set(files_under(tmp_path, pytester.path)))
    names = {path.name for path in artifacts}
    assert {"bench.json", "junit.xml", "stdout", "stderr", "llmperf-summary.md"} <= names
    assert any(path.suffix == ".png" for path in artifacts)  # the --llm-report plots
    assert any(path.parent.parent == out / "storage" for path in artifacts)  # the autosaved run
    assert len([path for path in artifacts if path.parent == out / "requests"]) == 3
    assert files_holding(key.encode(), artifacts) == []
    assert key not in "\n".join(result.outlines + result.errlines)
    # The check can see a key where there is one.
    canary = tmp_path / "canary.txt"
    canary.write_text(f"Authorization: Bearer {key}\n")
    assert files_holding(key.encode(), [canary]) == [canary]


SIMPLE = """
def test_run(llm_perf):
    llm_perf.run(input_tokens=17, output_tokens=4, requests=2)
"""

# How a run can die in code that holds the Authorization header in a plain dict: attaching
# to an endpoint that serves another model (endpoint.launch), and a prompt-calibration probe
# answered with HTTP 500 (prompts.post_json). Those are our errors: one line, no frames. A test
# body's own failure still shows its frames, with -l their locals; this one holds the header.
HOLDS_THE_HEADER = """
def test_run(llm_perf, llm_server):
    llm_perf.run(input_tokens=17, output_tokens=4, requests=2)
    headers = dict(llm_server.headers)
    assert not headers
"""
FAILURES = {
    "attach-fails": (
        "--llm-model=org/other",
        None,
        SIMPLE,
        "the endpoint at http://127.0.0.1:* serves org/det, not 'org/other': select it with --llm-model*",
    ),
    "probe-fails": (
        "--llm-model=org/det",
        "http500",
        SIMPLE,
        "POST /v1/completions answered HTTP 500: *",
    ),
    "body-fails": (
        "--llm-model=org/det",
        None,
        HOLDS_THE_HEADER,
        # The frame that held the header was printed, with the key blanked out.
        "*headers *= {*'Authorization': 'Bearer <redacted: --llm-api-key-env>'}*",
    ),
}


@pytest.mark.parametrize("how", FAILURES)
def test_the_api_key_stays_out_of_failures_even_with_locals_shown(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    model_option, fault, test_file, expected = FAILURES[how]
    key = f"sk-llmperf-{secrets.token_hex(16)}"
    monkeypatch.setenv("MY_KEY", key)
    pytester.makepyfile(test_simple=test_file)
    with running_detserver(
        tmp_path / "server", model="org/det", fault=fault, args=("--api-key-env", "MY_KEY")
    ) as server:
        result = pytester.runpytest_subprocess(
            "--llm-backend=openai",
            f"--llm-base-url={server.base_url}",
            model_option,
            "--llm-api-key-env=MY_KEY",
            f"--junitxml={tmp_path / 'junit.xml'}",
            "-l",
            "--tb=long",
            timeout=120,
        )
    outcomes = result.parseoutcomes()
    assert outcomes.get("errors", 0) + outcomes.get("failed", 0) == 1
    result.stdout.fnmatch_lines([expected])
    assert key not in "\n".join(result.outlines + result.errlines)
    assert files_holding(key.encode(), sorted(set(files_under(tmp_path, pytester.path)))) == []


def test_credentials_in_the_base_url_are_sent_as_basic_auth_and_never_written(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server behind a proxy that wants http://user:password@host credentials: our detserver
    # with --basic-auth-env refuses /v1/* without that exact Basic header.
    password = f"sk-url-{secrets.token_hex(16)}"
    token = base64.b64encode(f"alice:{password}".encode()).decode()
    monkeypatch.setenv("DET_AUTH", f"alice:{password}")
    out = tmp_path / "out"
    pytester.makepyfile(test_secret=INNER)
    with running_detserver(
        tmp_path / "server", model="org/det", ttft_ms=5, itl_ms=2, args=("--basic-auth-env", "DET_AUTH")
    ) as server:
        assert http_status(server.base_url + "/v1/models") == 401
        url = server.base_url.replace("http://", f"http://alice:{password}@")
        result = pytester.runpytest_subprocess(
            "--llm-backend=openai",
            f"--llm-base-url={url}",
            "--llm-model=org/det",
            f"--llm-save-requests={out / 'requests'}",
            f"--benchmark-json={out / 'bench.json'}",
            f"--llm-report={out / 'report'}",
            f"--junitxml={out / 'junit.xml'}",
            "-l",
            "--tb=long",
            "-rA",
            timeout=120,
        )

    # Attached and measured: every request carried the credentials the server wants.
    result.assert_outcomes(passed=1, failed=2)
    entries = bench_entries(out / "bench.json")
    assert {name: llm["errors"] for name, llm in entries.items()} == dict.fromkeys(
        ("test_pass[org/det]", "test_over_budget[org/det]", "test_assert_fails[org/det]"), 0
    )
    # The URL we print is the one without its credentials.
    result.stdout.fnmatch_lines([f"*attached to the endpoint at {server.base_url}, model org/det*"])

    # Neither the password nor the Basic token that encodes it is in anything the run wrote.
    artifacts = sorted(set(files_under(tmp_path, pytester.path)))
    assert {"bench.json", "junit.xml", "llmperf-summary.md"} <= {path.name for path in artifacts}
    for secret in (password, token):
        assert files_holding(secret.encode(), artifacts) == []
        assert secret not in "\n".join(result.outlines + result.errlines)
    assert "alice:" not in "\n".join(result.outlines + result.errlines)


def test_credentials_in_the_url_and_an_api_key_are_refused_with_a_sentence(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_KEY", "sk-other")
    pytester.makepyfile(test_simple=SIMPLE)
    result = pytester.runpytest_subprocess(
        "--llm-backend=openai", "--llm-base-url=http://alice:hunter2@127.0.0.1:9", "--llm-api-key-env=MY_KEY",
        timeout=60,
    )  # fmt: skip
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: --llm-base-url carries credentials (user:password@) and --llm-api-key-env names a key: "
            "give one of them*"
        ]
    )
    assert "hunter2" not in "\n".join(result.outlines + result.errlines)
