"""The Ollama backend against stand-ins, because the Ollama binary cannot be installed here.

No PyPI or Debian package ships the Ollama server on these machines, so:

* attaching, loading and one measured request run against the project's
  deterministic server (``pytest_llmperf.testing.detserver``), a stand-in
  that speaks Ollama's native API byte for byte (NDJSON, durations in
  nanoseconds, ``eval_count``, ``prompt_eval_count``, ``/api/tags``,
  ``/api/ps``, ``/api/version``);
* starting ``ollama serve`` runs a fake ``ollama`` executable that records
  the environment it was given and then runs that same stand-in;
* pulling replays a transcript in the shape Ollama's server streams from
  ``POST /api/pull`` (``api.ProgressResponse``: ``status``, ``digest``,
  ``total``, ``completed``, zero fields omitted; one event per 60 ms per
  layer), ``tests/data/ollama/pull_llama3.1-8b.ndjson``, served by a small
  HTTP stand-in in this file. It is written from Ollama's source
  (``server/download.go``) and API docs, not recorded from a real pull.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import psutil
import pytest

from pytest_llmperf.errors import ConfigError, ServerStartError
from pytest_llmperf.measure.client import RequestSpec, Target, prepare, send
from pytest_llmperf.servers import ollama
from pytest_llmperf.servers.base import LaunchRequest, free_port
from pytest_llmperf.servers.models import ModelSpec
from pytest_llmperf.testing.harness import DetServer

PULL_TRANSCRIPT = (Path(__file__).parents[1] / "data" / "ollama" / "pull_llama3.1-8b.ndjson").read_bytes()

EXPECTED_PROGRESS = [
    "ollama pull llama3.1:8b: not on the server yet, pulling it",
    "ollama pull llama3.1:8b: pulling manifest",
    "ollama pull llama3.1:8b: pulling 667b0c1932bc 0.00 / 4.92 GB (0%)",
    "ollama pull llama3.1:8b: pulling 667b0c1932bc 0.49 / 4.92 GB (10%)",
    "ollama pull llama3.1:8b: pulling 667b0c1932bc 1.48 / 4.92 GB (30%)",
    "ollama pull llama3.1:8b: pulling 667b0c1932bc 4.92 / 4.92 GB (100%)",
    "ollama pull llama3.1:8b: pulling 948af2743fc7 1.48 / 1.48 kB (100%)",
    "ollama pull llama3.1:8b: pulling 0ba8f0e314b4 12.32 / 12.32 kB (100%)",
    "ollama pull llama3.1:8b: verifying sha256 digest",
    "ollama pull llama3.1:8b: writing manifest",
    "ollama pull llama3.1:8b: success",
]

SPEC = ModelSpec(name="llama3.1-8b", params_b=8.03, layers=32, kv_heads=8, head_dim=128, context=131072,
                 ollama="llama3.1:8b")  # fmt: skip


def launch_request(tmp_path: Path, spec: ModelSpec = SPEC, **kw: Any) -> LaunchRequest:
    return LaunchRequest(
        model=spec, max_concurrency=3, max_context=1000, log_dir=tmp_path, start_timeout_s=30, **kw
    )


# -- pull progress -------------------------------------------------------------------------


def test_pull_progress_prints_a_line_per_status_and_per_tenth() -> None:
    lines: list[str] = ["ollama pull llama3.1:8b: not on the server yet, pulling it"]
    reporter = ollama.PullReporter("llama3.1:8b", lines.append)
    reporter.feed_lines(PULL_TRANSCRIPT.splitlines(keepends=True))
    assert lines == EXPECTED_PROGRESS
    assert reporter.succeeded


def test_pull_error_event_and_a_stream_without_success_fail_the_start() -> None:
    error = b'{"status":"pulling manifest"}\n{"error":"pull model manifest: file does not exist"}\n'
    with pytest.raises(
        ServerStartError, match="ollama pull nope:1b failed: pull model manifest: file does not exist"
    ):
        ollama.PullReporter("nope:1b", lambda _line: None).feed_lines(error.splitlines())
    cut = PULL_TRANSCRIPT.splitlines()[:4]
    with pytest.raises(ServerStartError, match="ended without reporting success"):
        ollama.PullReporter("llama3.1:8b", lambda _line: None).feed_lines(cut)


class PullStandIn(BaseHTTPRequestHandler):
    """Ollama's management routes: version, tags (empty until pulled), pull, load."""

    protocol_version = "HTTP/1.1"
    pulled: ClassVar[bool] = False
    seen: ClassVar[list[tuple[str, str, object]]] = []

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.seen.append(("GET", self.path, None))
        if self.path == "/api/version":
            self._json(200, {"version": "0.12.6"})
        elif self.path == "/api/tags":
            models = [{"name": "llama3.1:8b", "model": "llama3.1:8b"}] if PullStandIn.pulled else []
            self._json(200, {"models": models})
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append(("POST", self.path, body))
        if self.path == "/api/pull":
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for line in PULL_TRANSCRIPT.splitlines(keepends=True):
                self.wfile.write(b"%x\r\n%b\r\n" % (len(line), line))
            self.wfile.write(b"0\r\n\r\n")
            PullStandIn.pulled = True
        elif self.path == "/api/generate":
            self._json(200, {"model": body["model"], "created_at": "2025-01-01T00:00:00Z", "response": "",
                             "done": True, "done_reason": "load"})  # fmt: skip
        else:
            self._json(404, {"error": "not found"})


@pytest.fixture
def pull_standin() -> Iterator[str]:
    PullStandIn.pulled = False
    PullStandIn.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), PullStandIn)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_a_missing_model_is_pulled_with_progress_then_loaded_with_the_session_context(
    pull_standin: str, tmp_path: Path
) -> None:
    lines: list[str] = []
    server = ollama.OllamaBackend(progress=lines.append).launch(
        launch_request(tmp_path, base_url=pull_standin)
    )
    assert lines == EXPECTED_PROGRESS
    assert PullStandIn.seen == [
        ("GET", "/api/version", None),
        ("GET", "/api/version", None),
        ("GET", "/api/tags", None),
        ("POST", "/api/pull", {"model": "llama3.1:8b", "stream": True}),
        ("POST", "/api/generate", {"model": "llama3.1:8b", "prompt": "", "stream": False,
                                   "options": {"num_ctx": 1064, "num_predict": 1}}),
    ]  # fmt: skip
    assert server.model == "llama3.1:8b"
    assert server.engine_version == "0.12.6"
    assert server.pid is None


# -- attach to a running server (the detserver stand-in) ----------------------------------

STAND_IN = ModelSpec(name="stand-in", context=2048, ollama="detserver")


def test_attach_by_url_measures_with_the_native_api(det: DetServer, tmp_path: Path) -> None:
    server = ollama.OllamaBackend().launch(launch_request(tmp_path, STAND_IN, base_url=det.base_url))
    caps = server.capabilities
    assert (caps.api, caps.exact_output, caps.usage_in_stream, caps.tokenize, caps.metrics_path) == (
        "ollama-generate", False, True, None, None
    )  # fmt: skip
    assert caps.extra_body == {"options": {"temperature": 0, "num_ctx": 1064}}
    target = Target(server.base_url, server.model, caps, server.headers)
    prepared = prepare(
        target, "one two three four", RequestSpec(request_id="o1", scenario="s", input_tokens=4, max_tokens=7)
    )
    body = json.loads(prepared.payload.split(b"\r\n\r\n", 1)[1])
    assert body["options"] == {"num_predict": 7, "temperature": 0, "num_ctx": 1064}
    record = asyncio.run(send(prepared, scheduled_ns=time.perf_counter_ns(), timeout_s=30))
    assert record.error is None
    assert record.output_tokens == 7  # from eval_count
    assert record.input_tokens == 5  # prompt_eval_count: four words and a BOS
    server.check_alive()
    server.stop()
    assert det.alive()  # attached servers are not ours to stop


def test_attach_through_ollama_host(det: DetServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", det.base_url.removeprefix("http://"))
    lines: list[str] = []
    server = ollama.OllamaBackend(progress=lines.append).launch(launch_request(tmp_path, STAND_IN))
    assert server.base_url == det.base_url
    assert server.pid is None
    assert lines == [
        f"using the Ollama server already running at {det.base_url}; its OLLAMA_NUM_PARALLEL is its own"
    ]


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1:11500", "http://127.0.0.1:11500"),
        ("0.0.0.0", "http://127.0.0.1:11434"),
        ("http://gpu-box:8080/", "http://gpu-box:8080"),
        (":11435", "http://127.0.0.1:11435"),
        ("https://ollama.example.com", "https://ollama.example.com:11434"),
    ],
)
def test_ollama_host_forms(host: str, url: str) -> None:
    assert ollama.normalize_url(host) == url


# -- start `ollama serve` (a fake binary running the stand-in) ----------------------------

FAKE_OLLAMA = """#!{python}
# Stands in for the ollama binary: record the environment, then serve Ollama's API.
import json, os, sys
assert sys.argv[1:] == ["serve"], sys.argv
with open(os.environ["FAKE_OLLAMA_RECORD"], "w") as out:
    json.dump({{k: v for k, v in os.environ.items() if k.startswith("OLLAMA_")}}, out)
port = os.environ["OLLAMA_HOST"].rsplit(":", 1)[1]
os.execv(sys.executable, [sys.executable, "-m", "pytest_llmperf.testing.detserver", "--port", port,
                          "--model", "detserver", "--ttft-ms", "5", "--itl-ms", "1"])
"""


def test_start_ollama_serve_with_one_slot_per_concurrent_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "ollama"
    fake.write_text(FAKE_OLLAMA.format(python=sys.executable))
    fake.chmod(0o755)
    record = tmp_path / "env.json"
    monkeypatch.setenv("FAKE_OLLAMA_RECORD", str(record))
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{free_port()}")  # nothing answers there
    server = ollama.OllamaBackend().launch(launch_request(tmp_path, STAND_IN, executable=str(fake)))
    try:
        assert server.pid is not None
        group = server.pid
        env = json.loads(record.read_text())
        port = server.base_url.rsplit(":", 1)[1]
        assert env == {
            "OLLAMA_HOST": f"127.0.0.1:{port}",
            "OLLAMA_NUM_PARALLEL": "3",
            "OLLAMA_KEEP_ALIVE": "-1",
        }
        server.check_alive()
    finally:
        server.stop()
    members = [p for p in psutil.process_iter() if _pgid(p) == group]
    _gone, alive = psutil.wait_procs(members, timeout=10)
    assert alive == []


def _pgid(proc: psutil.Process) -> int | None:
    try:
        return os.getpgid(proc.pid)
    except (ProcessLookupError, PermissionError):
        return None


def test_no_binary_and_nothing_answering_is_a_clear_start_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{free_port()}")
    req = launch_request(tmp_path, STAND_IN, executable="ollama-not-installed-here")
    with pytest.raises(
        ServerStartError, match=r"the `ollama-not-installed-here` binary was not found: install Ollama"
    ):
        ollama.OllamaBackend().launch(req)
    silent = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServerStartError, match=rf"no Ollama server answers at {silent}"):
        ollama.OllamaBackend().launch(launch_request(tmp_path, STAND_IN, base_url=silent))


def test_model_without_a_tag_and_unknown_options_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model 'hf-only' has no Ollama tag"):
        ollama.OllamaBackend().launch(launch_request(tmp_path, ModelSpec(name="hf-only", vllm="org/m")))
    with pytest.raises(ConfigError, match=r"unknown Ollama server option\(s\) num_parallel"):
        ollama.OllamaBackend().launch(launch_request(tmp_path, STAND_IN, options={"num_parallel": "4"}))
