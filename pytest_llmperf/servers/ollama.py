"""The Ollama backend: a running ``ollama serve``, or one we start, on its native API.

Where to find Ollama: ``--llm-base-url``, else ``$OLLAMA_HOST``, else
``http://127.0.0.1:11434``. If nothing answers there (and no URL was given)
and the ``ollama`` binary exists, we start ``ollama serve`` on a free
127.0.0.1 port with ``OLLAMA_NUM_PARALLEL`` set to the session's highest
concurrency, and stop it at the end. A server we attach to keeps its own
settings and is never stopped by us. A model missing from ``/api/tags`` is
pulled with its progress shown, then loaded once with the session's context
size so the first measured request does not pay for loading.

Ollama has no ``ignore_eos``: the client asks for ``num_predict`` tokens and
checks ``eval_count``. This module must not measure anything.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pytest_llmperf.errors import ConfigError, ServerDiedError, ServerStartError
from pytest_llmperf.records import Capabilities, Progress
from pytest_llmperf.servers.base import (
    LOG_TAIL_LINES,
    LaunchRequest,
    ManagedProcess,
    free_port,
    http_status,
    server_env,
)
from pytest_llmperf.servers.models import table_header

DEFAULT_URL = "http://127.0.0.1:11434"
OPTIONS = ("api",)
#: Prompts are sized in tokens; a template or BOS adds a few.
CONTEXT_HEADROOM = 64
#: Seconds without a progress line before a pull counts as stalled.
PULL_IDLE_TIMEOUT_S = 300.0


def normalize_url(value: str) -> str:
    """``OLLAMA_HOST`` forms (``host``, ``host:port``, ``:port``, a URL) as a base URL."""
    text = value.strip().rstrip("/")
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    host = parts.hostname or "127.0.0.1"
    if host == "0.0.0.0":  # a bind-all address; talk to it on loopback
        host = "127.0.0.1"
    port = parts.port or 11434
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}:{port}{parts.path}"


def capabilities(api: str, num_ctx: int) -> Capabilities:
    if api not in ("generate", "chat"):
        raise ConfigError(f"server option api={api!r}: Ollama serves 'generate' or 'chat'")
    return Capabilities(
        api="ollama-chat" if api == "chat" else "ollama-generate",
        exact_output=False,
        usage_in_stream=True,
        usage_per_chunk=False,
        tokenize=None,
        metrics_path=None,
        # num_ctx on every request, so Ollama never reloads the model with its
        # small default context (2048 or 4096) and truncates long prompts.
        extra_body={"options": {"temperature": 0, "num_ctx": num_ctx}},
    )


def has_model(base_url: str, tag: str) -> bool:
    """Is ``tag`` in ``/api/tags``? A tag without ``:`` means ``:latest``."""
    data = _get_json(base_url + "/api/tags", 10.0)
    wanted = {tag, tag if ":" in tag else tag + ":latest"}
    names = {str(m.get(key)) for m in _entries(data, "models") for key in ("name", "model")}
    return bool(wanted & names)


class PullReporter:
    """Turns ``/api/pull`` NDJSON events into a few readable progress lines.

    A line when the status changes and at each 10 % of a layer, so a 40 GB
    pull prints tens of lines, not the server's one event per 60 ms.
    """

    def __init__(self, tag: str, progress: Progress) -> None:
        self.tag = tag
        self.progress = progress
        self._status: str | None = None
        self._decile = -1
        self.succeeded = False

    def feed(self, event: Mapping[str, object]) -> None:
        error = event.get("error")
        if error:
            raise ServerStartError(f"ollama pull {self.tag} failed: {error}")
        status = str(event.get("status") or "")
        total, completed = event.get("total"), event.get("completed")
        if status != self._status:
            self._status, self._decile = status, -1
            if not isinstance(total, int):
                self.progress(f"ollama pull {self.tag}: {status}")
        if status == "success":
            self.succeeded = True
        if isinstance(total, int) and total > 0:
            done = completed if isinstance(completed, int) else 0
            decile = min(10, done * 10 // total)
            if decile > self._decile:
                self._decile = decile
                sizes = _sizes(done, total)
                self.progress(f"ollama pull {self.tag}: {status} {sizes} ({decile * 10}%)")

    def feed_lines(self, lines: Iterable[bytes]) -> None:
        for raw in lines:
            if not raw.strip():
                continue
            try:
                event = json.loads(raw)
            except ValueError:
                raise ServerStartError(
                    f"ollama pull {self.tag}: unreadable progress line {raw[:200]!r}"
                ) from None
            if not isinstance(event, dict):
                raise ServerStartError(f"ollama pull {self.tag}: unexpected progress line {raw[:200]!r}")
            self.feed(event)
        if not self.succeeded:
            raise ServerStartError(f"ollama pull {self.tag} ended without reporting success")


def _sizes(done: int, total: int) -> str:
    """``1.48 / 4.92 GB`` in the total's unit, so small layers do not read as 0.00 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if total >= scale:
            return f"{done / scale:.2f} / {total / scale:.2f} {unit}"
    return f"{done} / {total} B"


def pull_model(base_url: str, tag: str, progress: Progress) -> None:
    """``POST /api/pull`` streamed, with progress; ``ServerStartError`` on failure."""
    progress(f"ollama pull {tag}: not on the server yet, pulling it")
    request = _post(base_url + "/api/pull", {"model": tag, "stream": True})
    try:
        with urllib.request.urlopen(request, timeout=PULL_IDLE_TIMEOUT_S) as response:
            PullReporter(tag, progress).feed_lines(response)
    except urllib.error.HTTPError as exc:
        raise ServerStartError(f"ollama pull {tag} failed: HTTP {exc.code} {_error_text(exc)}") from None
    except OSError as exc:
        raise ServerStartError(f"ollama pull {tag} failed: {exc}") from None


def load_model(base_url: str, tag: str, num_ctx: int, timeout_s: float) -> None:
    """Load ``tag`` with the session's context size (an empty prompt only loads)."""
    body = {"model": tag, "prompt": "", "stream": False, "options": {"num_ctx": num_ctx, "num_predict": 1}}
    try:
        with urllib.request.urlopen(_post(base_url + "/api/generate", body), timeout=timeout_s) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        raise ServerStartError(f"Ollama could not load {tag}: HTTP {exc.code} {_error_text(exc)}") from None
    except OSError as exc:
        raise ServerStartError(f"Ollama could not load {tag}: {exc}") from None


@dataclass(eq=False)
class OllamaServer:
    """An Ollama server: ours (``process`` set) or attached (never stopped)."""

    model: str
    base_url: str
    capabilities: Capabilities
    process: ManagedProcess | None = None
    engine_version: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    backend: str = "ollama"
    engine: str = "ollama"

    @property
    def model_id(self) -> str:
        return self.model

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def check_alive(self) -> None:
        if self.process is not None:
            self.process.check_alive(f"ollama serve for {self.model}")
        elif http_status(self.base_url + "/api/version") != 200:
            raise ServerDiedError(f"the Ollama server at {self.base_url} stopped answering")

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return self.process.log_tail(lines) if self.process is not None else ""

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


class OllamaBackend:
    """Attaches to or starts ``ollama serve``, pulls and loads the model."""

    name = "ollama"

    def __init__(self, progress: Progress | None = None) -> None:
        self.progress: Progress = progress or (lambda _line: None)

    def launch(self, request: LaunchRequest) -> OllamaServer:
        spec = request.model
        if spec.ollama is None:
            raise ConfigError(
                f'model {spec.name!r} has no Ollama tag; set ollama = "name:tag" under '
                f"{table_header(spec.name)} or pick another --llm-backend"
            )
        unknown = sorted(set(request.options) - set(OPTIONS))
        if unknown:
            raise ConfigError(
                f"unknown Ollama server option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}"
            )
        wanted = request.max_context + CONTEXT_HEADROOM
        num_ctx = min(wanted, spec.context) if spec.context is not None else wanted
        caps = capabilities(request.options.get("api", "generate"), num_ctx)
        process, base_url = self._attach_or_start(request)
        server = OllamaServer(spec.ollama, base_url, caps, process, _version(base_url))
        try:
            if not has_model(base_url, spec.ollama):
                pull_model(base_url, spec.ollama, self.progress)
            load_model(base_url, spec.ollama, num_ctx, request.start_timeout_s)
        except BaseException:
            server.stop()
            raise
        return server

    def _attach_or_start(self, request: LaunchRequest) -> tuple[ManagedProcess | None, str]:
        if request.base_url:
            base_url = normalize_url(request.base_url)
            if http_status(base_url + "/api/version") != 200:
                raise ServerStartError(f"no Ollama server answers at {base_url} (GET /api/version)")
            return None, base_url
        base_url = normalize_url(os.environ.get("OLLAMA_HOST") or DEFAULT_URL)
        if http_status(base_url + "/api/version") == 200:
            self.progress(
                f"using the Ollama server already running at {base_url}; its OLLAMA_NUM_PARALLEL is its own"
            )
            return None, base_url
        binary = shutil.which(request.executable or "ollama")
        if binary is None:
            raise ServerStartError(
                f"no Ollama server answers at {base_url} and the `{request.executable or 'ollama'}` binary "
                "was not found: install Ollama (https://ollama.com/download), start `ollama serve`, "
                "or point --llm-base-url at a running one"
            )
        port = free_port()
        env = server_env()
        env["OLLAMA_HOST"] = f"127.0.0.1:{port}"
        env["OLLAMA_NUM_PARALLEL"] = str(max(1, request.max_concurrency))
        env["OLLAMA_KEEP_ALIVE"] = "-1"  # never unload between tests; we stop the server at the end
        log_path = request.log_dir / f"ollama-{port}.log"
        process = ManagedProcess([binary, "serve"], log_path=log_path, env=env)
        base_url = f"http://127.0.0.1:{port}"
        try:
            process.wait_healthy(
                # Only our own process counts: another may take the port after free_port().
                lambda: http_status(base_url + "/api/version") == 200 and process.listens_on(port),
                what="ollama serve",
                timeout_s=request.start_timeout_s,
            )
        except BaseException:
            process.stop()
            raise
        return process, base_url


def _version(base_url: str) -> str | None:
    try:
        version = _get_json(base_url + "/api/version", 5.0).get("version")
    except (OSError, ValueError):
        return None
    return str(version) if version else None


def _get_json(url: str, timeout_s: float) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        data = json.loads(response.read())
    if not isinstance(data, dict):
        raise ValueError(f"{url} answered {type(data).__name__}, not an object")
    return data


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


def _entries(data: Mapping[str, object], key: str) -> list[dict[str, object]]:
    found = data.get(key)
    return [e for e in found if isinstance(e, dict)] if isinstance(found, list) else []


def _post(url: str, body: Mapping[str, object]) -> urllib.request.Request:
    return urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        return exc.read().decode("utf-8", "replace")[:500]
    except OSError:
        return ""
