"""The server's own view of a scenario: ``/metrics`` deltas (vLLM, llama-server) and Ollama's ``/api/ps``.

A ``MetricsWatcher`` scrapes the page before the scenario, polls the gauges
during it (cache usage, running and waiting requests) at a low rate, and
scrapes again after; ``digest`` turns the two pages into the
``ServerMetrics`` deltas. The names are the engines' own, checked against
vLLM 0.32 and llama.cpp's ``tools/server/server-task.cpp``:

- vLLM: ``vllm:time_to_first_token_seconds``, ``vllm:inter_token_latency_seconds``
  (before 0.7: ``vllm:time_per_output_token_seconds``),
  ``vllm:request_time_per_output_token_seconds``, ``vllm:e2e_request_latency_seconds``,
  ``vllm:request_queue_time_seconds``, prefill and decode time, token and
  preemption counters, and the gauge ``vllm:kv_cache_usage_perc``, which
  despite its name is a fraction (1 = full) and is reported here x100.
- llama-server (``--metrics``): ``llamacpp:prompt_tokens_total``,
  ``llamacpp:tokens_predicted_total``, their ``*_seconds_total``,
  ``llamacpp:n_decode_total``, ``llamacpp:n_busy_slots_per_decode`` and the
  gauges ``llamacpp:requests_processing`` / ``llamacpp:requests_deferred``.
  Its prompt seconds are batch wall time, but its generation seconds add up
  each slot's own time, so two busy slots count every second twice: hence
  ``prompt_tok_per_s`` (throughput) beside ``generation_tok_per_s_per_slot``
  (one stream's decode rate, not the server's).
  It has no latency histograms, so it gives no server-side TTFT. Current
  builds no longer export ``llamacpp:kv_cache_usage_ratio``; it is read when
  an older build does.

Gauges are polled at ``metrics_interval_s`` (1 s by default), not at the
sampler's 10 Hz: vLLM renders its page in the API server process that also
streams the responses being measured, and scraping it ten times a second
would load the thing under test. A short spike between polls can be missed.

Nothing here raises into a run: a failed scrape becomes a warning and the
figures it would have given are absent.
"""

from __future__ import annotations

import json
import math
import urllib.request
from collections.abc import Callable
from typing import Any

from pytest_llmperf.telemetry import promtext
from pytest_llmperf.telemetry.promtext import Snapshot
from pytest_llmperf.telemetry.shapes import (
    HistogramDelta,
    OllamaModel,
    OllamaSummary,
    ServerMetrics,
    TtftCrossCheck,
    set_key,
)

Fetch = Callable[[str], str]


VLLM_HISTOGRAMS: dict[str, tuple[str, ...]] = {
    "ttft_ms": ("vllm:time_to_first_token_seconds",),
    "itl_ms": ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
    "tpot_ms": ("vllm:request_time_per_output_token_seconds",),
    "e2e_ms": ("vllm:e2e_request_latency_seconds",),
    "queue_ms": ("vllm:request_queue_time_seconds",),
    "prefill_ms": ("vllm:request_prefill_time_seconds",),
    "decode_ms": ("vllm:request_decode_time_seconds",),
}
VLLM_COUNTERS = {
    "requests_succeeded": "vllm:request_success_total",
    "prompt_tokens": "vllm:prompt_tokens_total",
    "prompt_tokens_cached": "vllm:prompt_tokens_cached_total",
    "generation_tokens": "vllm:generation_tokens_total",
    "preemptions": "vllm:num_preemptions_total",
}
LLAMACPP_COUNTERS = {
    "prompt_tokens": "llamacpp:prompt_tokens_total",
    "prompt_tokens_cached": "llamacpp:prompt_tokens_cached_total",
    "generation_tokens": "llamacpp:tokens_predicted_total",
    "prompt_seconds": "llamacpp:prompt_seconds_total",
    "generation_slot_seconds": "llamacpp:tokens_predicted_seconds_total",
    "decode_calls": "llamacpp:n_decode_total",
}
# summary key -> (metric name, scale to the key's unit); maxima over every scrape.
GAUGES: dict[str, tuple[tuple[str, float], ...]] = {
    "kv_cache_usage_max_pct": (
        ("vllm:kv_cache_usage_perc", 100.0),
        ("vllm:gpu_cache_usage_perc", 100.0),
        ("llamacpp:kv_cache_usage_ratio", 100.0),
    ),
    "requests_running_max": (("vllm:num_requests_running", 1.0),),
    "requests_waiting_max": (("vllm:num_requests_waiting", 1.0),),
    "requests_processing_max": (("llamacpp:requests_processing", 1.0),),
    "requests_deferred_max": (("llamacpp:requests_deferred", 1.0),),
}
GAUGE_PREFIXES = tuple(f"{name}{{" for c in GAUGES.values() for name, _ in c) + tuple(
    f"{name} " for c in GAUGES.values() for name, _ in c
)
# llama-server prints doubles with six significant digits: counters past this are rounded.
_LLAMACPP_EXACT_BELOW = 1e6


def http_get_text(url: str, timeout_s: float = 2.0) -> str:
    """GET ``url`` and return its body; raises ``OSError``/``ValueError`` on failure."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        body: bytes = response.read()
    return body.decode("utf-8", "replace")


def engine_of(snapshot: Snapshot) -> str:
    names = snapshot.names()
    if any(n.startswith("vllm:") for n in names):
        return "vllm"
    if any(n.startswith("llamacpp:") for n in names):
        return "llamacpp"
    return "unknown"


def gauges(snapshot: Snapshot) -> dict[str, float]:
    """The gauges we track, in the summary's units, as one scrape shows them."""
    out: dict[str, float] = {}
    for key, candidates in GAUGES.items():
        for name, scale in candidates:
            value = snapshot.maximum(name)
            if value is not None:
                out[key] = round(value * scale, 4)
                break
    return out


def histogram_delta_ms(before: Snapshot, after: Snapshot, names: tuple[str, ...]) -> HistogramDelta | None:
    """Observations a seconds-histogram gained, in ms; ``None`` if absent or reset."""
    name = promtext.first_present(after, names)
    if name is None:
        return None
    hist_after, hist_before = after.histogram(name), before.histogram(name)
    if hist_after is None or hist_before is None:
        return None
    delta = hist_after.minus(hist_before)
    if delta is None:
        return None
    out: HistogramDelta = {"count": int(delta.count)}
    if delta.mean is not None:
        out["mean"] = round(delta.mean * 1000.0, 3)
    for key, q in (("p50_le", 0.5), ("p90_le", 0.9), ("p95_le", 0.95), ("p99_le", 0.99)):
        value = delta.quantile_le(q)
        if value is not None:
            set_key(out, key, round(value * 1000.0, 3))
    return out


def digest(
    before: Snapshot, after: Snapshot, gauge_max: dict[str, float] | None = None
) -> tuple[ServerMetrics, list[str]]:
    """What the server saw between two scrapes, and warnings about what could not be computed."""
    engine = engine_of(after)
    out: ServerMetrics = {"engine": engine}
    warnings: list[str] = []
    counters = VLLM_COUNTERS if engine == "vllm" else LLAMACPP_COUNTERS if engine == "llamacpp" else {}
    for key, name in counters.items():
        delta = promtext.counter_delta(before, after, name)
        if delta is not None:
            set_key(out, key, delta)
        elif before.total(name) is not None and after.total(name) is not None:
            warnings.append(f"server counter {name} went backwards (server restarted?); its delta is absent")
    if engine == "vllm":
        for key, names in VLLM_HISTOGRAMS.items():
            hist = histogram_delta_ms(before, after, names)
            if hist is not None:
                set_key(out, key, hist)
    if engine == "llamacpp":
        _llamacpp_rates(before, after, out, warnings)
    maxima = gauges(before)
    for source in (gauge_max or {}, gauges(after)):
        for key, value in source.items():
            maxima[key] = max(value, maxima.get(key, -math.inf))
    for key, value in maxima.items():
        set_key(out, key, value)
    return out, warnings


def _llamacpp_rates(before: Snapshot, after: Snapshot, out: ServerMetrics, warnings: list[str]) -> None:
    for tokens, seconds, rate in (
        ("prompt_tokens", "prompt_seconds", "prompt_tok_per_s"),
        ("generation_tokens", "generation_slot_seconds", "generation_tok_per_s_per_slot"),
    ):
        n, s = out.get(tokens), out.get(seconds)
        if isinstance(n, float) and isinstance(s, float) and s > 0:
            set_key(out, rate, round(n / s, 3))
    # The gauge is a running average since start: busy slot-steps = average x decode calls.
    busy = "llamacpp:n_busy_slots_per_decode"
    avg_a, avg_b = after.total(busy), before.total(busy)
    n_a, n_b = after.total("llamacpp:n_decode_total"), before.total("llamacpp:n_decode_total")
    if avg_a is not None and avg_b is not None and n_a is not None and n_b is not None and n_a > n_b:
        out["busy_slots_per_decode"] = round((avg_a * n_a - avg_b * n_b) / (n_a - n_b), 3)
    big = sorted(n for n in LLAMACPP_COUNTERS.values() if (after.total(n) or 0.0) >= _LLAMACPP_EXACT_BELOW)
    if big:
        warnings.append(
            "llama-server prints counters with six significant digits; deltas of "
            + ", ".join(big)
            + " are approximate (restart the server for exact figures)"
        )


class MetricsWatcher:
    """Scrapes one ``/metrics`` URL before, during (gauges only) and after a scenario."""

    def __init__(self, url: str, fetch: Fetch = http_get_text) -> None:
        self.url = url
        self._fetch = fetch
        self._before: Snapshot | None = None
        self._gauge_max: dict[str, float] = {}
        self.scrapes = 0
        self.warnings: list[str] = []

    def _scrape(self, only: tuple[str, ...] | None = None) -> Snapshot | None:
        try:
            text = self._fetch(self.url)
        except Exception as exc:  # a scrape is evidence, never a reason to fail the run
            self.warnings.append(f"could not scrape {self.url}: {type(exc).__name__}: {exc}")
            return None
        self.scrapes += 1
        return promtext.parse(text, only)

    def begin(self) -> None:
        self._before = self._scrape()

    def poll(self) -> dict[str, float]:
        """Scrape once for the gauges; returns them for the series (empty on failure)."""
        snap = self._scrape(GAUGE_PREFIXES)
        if snap is None:
            return {}
        now = gauges(snap)
        for key, value in now.items():
            self._gauge_max[key] = max(value, self._gauge_max.get(key, -math.inf))
        return now

    def finish(self) -> ServerMetrics | None:
        after = self._scrape()
        if self._before is None or after is None:
            return None
        out, warnings = digest(self._before, after, self._gauge_max)
        self.warnings.extend(warnings)
        out["url"] = self.url
        out["scrapes"] = self.scrapes
        return out


class OllamaWatcher:
    """Polls Ollama's ``/api/ps``: the loaded models' size and how much of it sits in VRAM."""

    def __init__(self, url: str, fetch: Fetch = http_get_text) -> None:
        self.url = url
        self._fetch = fetch
        self._models: dict[str, OllamaModel] = {}
        self.warnings: list[str] = []

    def poll(self) -> None:
        try:
            data: Any = json.loads(self._fetch(self.url))
        except Exception as exc:  # evidence, never a reason to fail the run
            self.warnings.append(f"could not read {self.url}: {type(exc).__name__}: {exc}")
            return
        models = data.get("models") if isinstance(data, dict) else None
        for model in models if isinstance(models, list) else []:
            name = str(model.get("name") or model.get("model") or "?")
            size, vram = int(model.get("size") or 0), int(model.get("size_vram") or 0)
            seen = self._models.get(name)
            if seen is not None:
                size, vram = max(size, seen["size_bytes"]), max(vram, seen["size_vram_bytes"])
            pct = round(100.0 * vram / size, 2) if size > 0 else 0.0
            self._models[name] = {"name": name, "size_bytes": size, "size_vram_bytes": vram, "vram_pct": pct}

    def summary(self) -> OllamaSummary | None:
        if not self._models:
            return None
        return {"models": sorted(self._models.values(), key=lambda m: m["name"])}


def cross_check_ttft(
    server_ttft_mean_ms: float | None,
    client_ttft_mean_ms: float | None,
    *,
    server_requests: int | None = None,
    client_requests: int | None = None,
) -> TtftCrossCheck:
    """Client TTFT minus server TTFT (the HTTP, queueing-before-engine and streaming overhead).

    ``diff_ms`` > 0 means the client waited longer than the server measured,
    which is expected; a negative difference means the two do not describe
    the same requests. Pass the request counts (the server histogram's
    ``count`` and the client's completed requests) to see whether they do:
    warm-up requests inside the scrape window, or other clients, make them
    differ. Any missing input leaves the derived fields ``None``.
    """
    diff = ratio = None
    if server_ttft_mean_ms is not None and client_ttft_mean_ms is not None:
        diff = round(client_ttft_mean_ms - server_ttft_mean_ms, 3)
        ratio = round(client_ttft_mean_ms / server_ttft_mean_ms, 4) if server_ttft_mean_ms > 0 else None
    counts_match = None
    if server_requests is not None and client_requests is not None:
        counts_match = server_requests == client_requests
    return {
        "server_ttft_mean_ms": server_ttft_mean_ms,
        "client_ttft_mean_ms": client_ttft_mean_ms,
        "diff_ms": diff,
        "ratio": ratio,
        "server_requests": server_requests,
        "client_requests": client_requests,
        "counts_match": counts_match,
    }
