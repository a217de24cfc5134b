"""The ``openai`` backend: any running OpenAI-compatible endpoint, as it is.

We never start or stop it; we check once that it answers, find the model
name it serves, and send the credentials it wants: ``Authorization: Bearer
<key>`` for ``--llm-api-key-env``, HTTP basic auth for a ``user:password@``
in ``--llm-base-url`` (the session strips it from the URL and hands it over
as ``LaunchRequest.auth_headers``). We cannot know its slots or context, so
it is measured as it is. Since we cannot know what the engine honours,
capabilities are conservative unless server options say more:

* ``api=chat`` for ``/v1/chat/completions`` (default ``completions``);
* ``ignore_eos=true`` when the engine honours ``ignore_eos`` (vLLM, SGLang,
  llama-server): then output lengths are exact;
* ``usage_in_stream=false`` for one that ignores ``stream_options``;
* ``metrics_path=/metrics`` to scrape Prometheus metrics;
* ``model=NAME`` for the served model name, when ``/v1/models`` lists several.

The API key lives only in ``headers``; no repr, log or message shows it.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field

from pytest_llmperf.errors import ConfigError, ServerDiedError, ServerStartError
from pytest_llmperf.records import Capabilities, Progress
from pytest_llmperf.servers.base import LOG_TAIL_LINES, LaunchRequest, http_status
from pytest_llmperf.servers.models import ModelSpec

OPTIONS = ("api", "ignore_eos", "usage_in_stream", "metrics_path", "model")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def normalize_base_url(url: str) -> str:
    """``http://host:8000/v1/`` -> ``http://host:8000``: the client adds ``/v1/...``."""
    base = url.strip().rstrip("/")
    return base.removesuffix("/v1")


def capabilities(options: Mapping[str, str]) -> Capabilities:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(
            f"unknown openai endpoint option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}"
        )
    api = options.get("api", "completions")
    if api not in ("completions", "chat"):
        raise ConfigError(f"server option api={api!r}: an OpenAI endpoint serves 'completions' or 'chat'")
    ignore_eos = _flag(options, "ignore_eos", default=False)
    metrics = options.get("metrics_path")
    if metrics is not None and not metrics.startswith("/"):
        raise ConfigError(f"server option metrics_path={metrics!r}: expected a path like /metrics")
    return Capabilities(
        api="chat" if api == "chat" else "completions",
        exact_output=ignore_eos,
        usage_in_stream=_flag(options, "usage_in_stream", default=True),
        tokenize=None,
        metrics_path=metrics,
        extra_body={"ignore_eos": True} if ignore_eos else {},
    )


def _flag(options: Mapping[str, str], key: str, *, default: bool) -> bool:
    value = options.get(key)
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ConfigError(f"server option {key}={value!r}: expected true or false")


def served_model(spec: ModelSpec, listed: list[str], explicit: str | None, base_url: str = "") -> str:
    """The name to put in requests: ``model=`` if given, else the first of the
    registry name, Hugging Face id and Ollama tag that the endpoint lists."""
    if explicit:
        return explicit
    candidates = [c for c in (spec.name, spec.vllm, spec.ollama) if c]
    for name in candidates:
        if name in listed:
            return name
    if not listed:
        return spec.name  # no /v1/models: trust the user's name
    where = f"the endpoint at {base_url}" if base_url else "the endpoint"
    return _wrong_name(where, spec.name, listed)


def _wrong_name(where: str, name: str, listed: list[str]) -> str:
    first = listed[0]
    raise ConfigError(
        f"{where} serves {', '.join(listed)}, not {name!r}: select it with --llm-model {first} "
        f"(or keep the name and add --llm-server-option model={first})"
    )


@dataclass(eq=False)
class EndpointServer:
    """A running endpoint we attached to; ``stop`` leaves it running."""

    model: str
    base_url: str
    capabilities: Capabilities
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    backend: str = "openai"
    engine: str = "openai-compatible"
    engine_version: str | None = None

    @property
    def model_id(self) -> str:
        return self.model

    @property
    def pid(self) -> int | None:
        return None

    def check_alive(self) -> None:
        if _health(self.base_url, self.headers) is None:
            raise ServerDiedError(f"the endpoint at {self.base_url} stopped answering")

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return ""

    def stop(self) -> None:
        """Not ours to stop."""


class OpenAIEndpointBackend:
    """Attaches to ``--llm-base-url``; never starts or stops anything."""

    name = "openai"

    def __init__(self, progress: Progress | None = None) -> None:
        self.progress: Progress = progress or (lambda _line: None)

    def launch(self, request: LaunchRequest) -> EndpointServer:
        if not request.base_url:
            raise ConfigError("--llm-backend=openai attaches to a running endpoint: add --llm-base-url=URL")
        base_url = normalize_base_url(request.base_url)
        caps = capabilities(request.options)
        headers = dict(request.auth_headers)
        if not headers and request.api_key:
            headers = {"Authorization": f"Bearer {request.api_key}"}
        status = _health(base_url, headers)
        if status is None:
            raise ServerStartError(
                f"the endpoint at {base_url} does not answer GET /v1/models or /health; is it running?"
            )
        if status in (401, 403):
            raise ServerStartError(
                f"the endpoint at {base_url} refused us (HTTP {status}): set --llm-api-key-env to the "
                "environment variable that holds its key, or put user:password@ in --llm-base-url "
                "for HTTP basic auth"
            )
        listed = _model_ids(base_url, headers) if status == 200 else []
        model = served_model(request.model, listed, request.options.get("model"), base_url)
        self.progress(f"attached to the endpoint at {base_url}, model {model}")
        return EndpointServer(model=model, base_url=base_url, capabilities=caps, headers=headers)


def _health(base_url: str, headers: Mapping[str, str]) -> int | None:
    """Status of ``/v1/models`` (or ``/health`` where that is missing); None if silent."""
    status = http_status(base_url + "/v1/models", timeout_s=10.0, headers=headers)
    if status in (None, 200, 401, 403):
        return status
    # Some engines lack /v1/models; a healthy /health is then enough to proceed.
    fallback = http_status(base_url + "/health", timeout_s=10.0, headers=headers)
    return 200 if fallback == 200 else status


def _model_ids(base_url: str, headers: Mapping[str, str]) -> list[str]:
    request = urllib.request.Request(base_url + "/v1/models", headers=dict(headers))
    try:
        with urllib.request.urlopen(request, timeout=10.0) as response:
            data = json.loads(response.read())
    except (OSError, ValueError, urllib.error.HTTPError):
        return []
    entries = data.get("data") if isinstance(data, dict) else None
    return [str(e["id"]) for e in entries or [] if isinstance(e, dict) and "id" in e]
