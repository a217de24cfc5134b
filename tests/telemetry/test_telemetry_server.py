"""The server's own view: the Prometheus text parser, vLLM / llama-server deltas, Ollama /api/ps.

The ``.prom`` fixtures are real pages scraped from vLLM 0.32 (CPU) and from
llama-server built from the llama.cpp in llama-cpp-python 0.3.36; see
``data/telemetry/README.md``. Expected figures are worked out from those
pages by hand in the comments.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pytest_llmperf.telemetry import (
    Sampler,
    SamplerConfig,
    SamplerSources,
    cross_check_ttft,
    parse_prometheus,
)
from pytest_llmperf.telemetry.host import HostReading
from pytest_llmperf.telemetry.promtext import Histogram, Sample
from pytest_llmperf.telemetry.servermetrics import MetricsWatcher, OllamaWatcher, digest, gauges

DATA = Path(__file__).parents[1] / "data" / "telemetry"


def page(name: str) -> str:
    return (DATA / name).read_text()


# -- the parser ----------------------------------------------------------------------


def test_parser_reads_labels_escapes_special_values_and_exemplars() -> None:
    text = "\n".join(
        [
            "# HELP demo_total A counter.",
            "# TYPE demo_total counter",
            r'demo_total{b="x\"y\\z\nw",a="1"} 2 1700000000000',
            "plain 1.23457e+06",
            'inf_gauge{le="+Inf"} +Inf',
            "nan_gauge NaN",
            'om_total{a="1"} 3 # {trace_id="abc"} 1.0',
            "# EOF",
            "broken{a=1} 4",
            "no_value",
            "",
        ]
    )
    snap = parse_prometheus(text)
    assert snap.samples[:2] == (
        Sample("demo_total", (("a", "1"), ("b", 'x"y\\z\nw')), 2.0),
        Sample("plain", (), 1234570.0),
    )
    assert snap.total("inf_gauge") == math.inf
    assert snap.maximum("nan_gauge") is None
    assert snap.total("om_total") == 3.0
    assert snap.types == {"demo_total": "counter"}
    assert snap.skipped == 2
    assert snap.total("absent") is None


def test_parser_on_a_real_vllm_page() -> None:
    snap = parse_prometheus(page("vllm_metrics_after.prom"))
    assert snap.skipped == 0
    assert len(snap.samples) == 425
    assert snap.types["vllm:time_to_first_token_seconds"] == "histogram"
    ttft = snap.histogram("vllm:time_to_first_token_seconds")
    assert ttft is not None
    assert (ttft.count, ttft.sum) == (4.0, 0.12609148025512695)
    assert ttft.buckets[:6] == (
        (0.001, 0.0),
        (0.005, 0.0),
        (0.01, 0.0),
        (0.02, 1.0),
        (0.04, 3.0),
        (0.06, 4.0),
    )
    assert ttft.buckets[-1] == (math.inf, 4.0)
    # request_success_total is split by finished_reason; the total sums the series.
    assert snap.total("vllm:request_success_total") == 4.0


def test_histogram_delta_bounds_and_reset() -> None:
    before = Histogram(((0.1, 1.0), (0.5, 2.0), (math.inf, 2.0)), 0.3, 2.0)
    after = Histogram(((0.1, 3.0), (0.5, 9.0), (math.inf, 12.0)), 5.3, 12.0)
    delta = after.minus(before)
    assert delta == Histogram(((0.1, 2.0), (0.5, 7.0), (math.inf, 10.0)), 5.0, 10.0)
    assert delta.mean == 0.5
    assert delta.quantile_le(0.2) == 0.1  # rank 2 of 10 is in the first bucket
    assert delta.quantile_le(0.5) == 0.5
    assert delta.quantile_le(0.95) is None  # in +Inf: the histogram cannot bound it
    assert before.minus(after) is None  # went backwards: a restarted server
    assert Histogram((), 0.0, 0.0).quantile_le(0.5) is None


# -- vLLM and llama-server deltas -----------------------------------------------------


def test_vllm_digest_from_real_pages() -> None:
    before = parse_prometheus(page("vllm_metrics_before.prom"))
    after = parse_prometheus(page("vllm_metrics_after.prom"))
    during = gauges(parse_prometheus(page("vllm_metrics_during.prom")))
    result, warnings = digest(before, after, during)
    assert warnings == []
    assert result == {
        "engine": "vllm",
        "requests_succeeded": 4.0,
        "prompt_tokens": 32.0,
        "prompt_tokens_cached": 0.0,
        "generation_tokens": 128.0,
        "preemptions": 0.0,
        # 0.12609148025512695 s over 4 requests; buckets: 1 <= 20 ms, 3 <= 40 ms, 4 <= 60 ms.
        "ttft_ms": {
            "count": 4,
            "mean": 31.523,
            "p50_le": 40.0,
            "p90_le": 60.0,
            "p95_le": 60.0,
            "p99_le": 60.0,
        },
        # 4 requests x 31 gaps.
        "itl_ms": {
            "count": 124,
            "mean": 2.135,
            "p50_le": 10.0,
            "p90_le": 10.0,
            "p95_le": 10.0,
            "p99_le": 25.0,
        },
        "tpot_ms": {
            "count": 4,
            "mean": 2.135,
            "p50_le": 10.0,
            "p90_le": 10.0,
            "p95_le": 10.0,
            "p99_le": 10.0,
        },
        "e2e_ms": {
            "count": 4,
            "mean": 97.023,
            "p50_le": 300.0,
            "p90_le": 300.0,
            "p95_le": 300.0,
            "p99_le": 300.0,
        },
        # vLLM's first queue-time bucket is 0.3 s: the bound is true and coarse, the mean exact.
        "queue_ms": {
            "count": 4,
            "mean": 0.03,
            "p50_le": 300.0,
            "p90_le": 300.0,
            "p95_le": 300.0,
            "p99_le": 300.0,
        },
        "prefill_ms": {
            "count": 4,
            "mean": 15.554,
            "p50_le": 300.0,
            "p90_le": 300.0,
            "p95_le": 300.0,
            "p99_le": 300.0,
        },
        "decode_ms": {
            "count": 4,
            "mean": 66.191,
            "p50_le": 300.0,
            "p90_le": 300.0,
            "p95_le": 300.0,
            "p99_le": 300.0,
        },
        # kv_cache_usage_perc is a fraction: 0.00036623329060614385 -> 0.0366 %.
        "kv_cache_usage_max_pct": 0.0366,
        "requests_running_max": 2.0,
        "requests_waiting_max": 0.0,
    }


def test_older_vllm_itl_name_is_read() -> None:
    def text(count: int, total: float) -> str:
        return (
            "# TYPE vllm:time_per_output_token_seconds histogram\n"
            f'vllm:time_per_output_token_seconds_bucket{{le="0.05",model_name="m"}} {count}\n'
            f'vllm:time_per_output_token_seconds_bucket{{le="+Inf",model_name="m"}} {count}\n'
            f'vllm:time_per_output_token_seconds_count{{model_name="m"}} {count}\n'
            f'vllm:time_per_output_token_seconds_sum{{model_name="m"}} {total}\n'
        )

    result, _ = digest(parse_prometheus(text(10, 0.2)), parse_prometheus(text(30, 0.6)))
    assert result["itl_ms"] == {
        "count": 20,
        "mean": 20.0,
        "p50_le": 50.0,
        "p90_le": 50.0,
        "p95_le": 50.0,
        "p99_le": 50.0,
    }


def test_llamacpp_digest_from_real_pages() -> None:
    before = parse_prometheus(page("llamacpp_metrics_before.prom"))
    after = parse_prometheus(page("llamacpp_metrics_after.prom"))
    result, warnings = digest(before, after)
    assert warnings == []
    assert result == {
        "engine": "llamacpp",
        "prompt_tokens": 26.0,  # two 13-token prompts
        "prompt_tokens_cached": 0.0,
        "generation_tokens": 32.0,  # two 16-token answers
        "prompt_seconds": 0.11723,
        "generation_slot_seconds": 1.07017,
        "decode_calls": 18.0,
        "prompt_tok_per_s": 221.786,  # 26 / 0.11723
        "generation_tok_per_s_per_slot": 29.902,  # 32 / 1.07017
        "busy_slots_per_decode": 1.889,  # the page's 1.88889 x 18 calls, from 0 before
        "requests_processing_max": 0.0,
        "requests_deferred_max": 0.0,
    }


def test_counter_reset_and_rounded_llamacpp_counters_are_reported() -> None:
    before = parse_prometheus("llamacpp:tokens_predicted_total 5e+06\nllamacpp:n_decode_total 10\n")
    after = parse_prometheus("llamacpp:tokens_predicted_total 2\nllamacpp:n_decode_total 1.23457e+06\n")
    result, warnings = digest(before, after)
    assert "generation_tokens" not in result
    assert result["decode_calls"] == 1234560.0
    assert warnings == [
        "server counter llamacpp:tokens_predicted_total went backwards (server restarted?); "
        "its delta is absent",
        "llama-server prints counters with six significant digits; deltas of llamacpp:n_decode_total "
        "are approximate (restart the server for exact figures)",
    ]


def test_metrics_watcher_polls_gauges_and_survives_a_failed_scrape() -> None:
    pages = [
        page("vllm_metrics_before.prom"),
        page("vllm_metrics_during.prom"),
        page("vllm_metrics_after.prom"),
    ]
    watcher = MetricsWatcher("http://127.0.0.1:1/metrics", fetch=lambda url: pages.pop(0))
    watcher.begin()
    assert watcher.poll() == {
        "kv_cache_usage_max_pct": 0.0366,
        "requests_running_max": 2.0,
        "requests_waiting_max": 0.0,
    }
    result = watcher.finish()
    assert result is not None
    assert (result["scrapes"], result["url"], result["kv_cache_usage_max_pct"]) == (
        3,
        "http://127.0.0.1:1/metrics",
        0.0366,
    )

    broken = MetricsWatcher("http://127.0.0.1:1/metrics", fetch=refuse)
    broken.begin()
    assert broken.poll() == {}
    assert broken.finish() is None
    assert broken.warnings == [REFUSED] * 3


REFUSED = (
    "could not scrape http://127.0.0.1:1/metrics: ConnectionRefusedError: [Errno 111] Connection refused"
)


def refuse(url: str) -> str:
    raise ConnectionRefusedError(111, "Connection refused")


def test_sampler_carries_server_metrics_and_dedupes_warnings() -> None:
    pages = iter(
        [
            page("llamacpp_metrics_before.prom"),
            "llamacpp:requests_processing 2\n",
            page("llamacpp_metrics_after.prom"),
        ]
    )
    now = [10.0]
    sampler = Sampler(
        SamplerConfig(metrics_url="http://127.0.0.1:1/metrics", keep_series=True),
        SamplerSources(gpu=None, host=iter_host(3), fetch=lambda url: next(pages), clock=lambda: now[0]),
    )
    sampler.start(background=False)
    for _ in range(3):
        now[0] += 0.5  # polls at 1 s: only the second sample scrapes
        sampler.sample_now()
    sampler.stop()
    metrics = sampler.summary()["server_metrics"]
    assert (metrics["scrapes"], metrics["requests_processing_max"], metrics["generation_tokens"]) == (
        3,
        2.0,
        32.0,
    )
    assert [p.get("metrics") for p in sampler.series()] == [None, {"requests_processing_max": 2.0}, None]

    unreachable = Sampler(
        SamplerConfig(metrics_url="http://127.0.0.1:1/metrics"),
        SamplerSources(gpu=None, host=iter_host(0), fetch=refuse),
    )
    unreachable.start(background=False)
    unreachable.stop()
    assert "server_metrics" not in unreachable.summary()
    assert unreachable.warnings == [REFUSED]  # scraped twice, said once


class iter_host:
    def __init__(self, n: int) -> None:
        self.readings: list[HostReading | None] = [None] + [HostReading((1.0,), 1, 2)] * n

    def read(self) -> HostReading | None:
        return self.readings.pop(0)


# -- Ollama and the TTFT cross-check --------------------------------------------------

OLLAMA_PS = {
    "models": [
        {
            "name": "llama3.1:70b",
            "model": "llama3.1:70b",
            "size": 47194349568,
            "digest": "a677b4a4b70c45e702b1d600f7905e367733c53898b8be60e3f29272cf334574",
            "details": {
                "format": "gguf",
                "family": "llama",
                "parameter_size": "70.6B",
                "quantization_level": "Q4_K_M",
            },
            "expires_at": "2026-11-22T06:00:00.000000000Z",
            "size_vram": 42949672960,
        }
    ]
}


def test_ollama_ps_keeps_the_largest_footprint() -> None:
    answers = [json.dumps({"models": []}), json.dumps(OLLAMA_PS), "not json"]
    watcher = OllamaWatcher("http://127.0.0.1:11434/api/ps", fetch=lambda url: answers.pop(0))
    for _ in range(3):
        watcher.poll()
    assert watcher.summary() == {
        "models": [
            {
                "name": "llama3.1:70b",
                "size_bytes": 47194349568,
                "size_vram_bytes": 42949672960,
                "vram_pct": 91.01,
            }
        ]
    }
    assert len(watcher.warnings) == 1
    assert watcher.warnings[0].startswith("could not read http://127.0.0.1:11434/api/ps: JSONDecodeError")
    assert OllamaWatcher("u", fetch=lambda url: "{}").summary() is None


def test_cross_check_ttft() -> None:
    assert cross_check_ttft(31.523, 40.0, server_requests=4, client_requests=4) == {
        "server_ttft_mean_ms": 31.523,
        "client_ttft_mean_ms": 40.0,
        "diff_ms": 8.477,
        "ratio": 1.2689,
        "server_requests": 4,
        "client_requests": 4,
        "counts_match": True,
    }
    missing = cross_check_ttft(None, 40.0)
    assert (missing["diff_ms"], missing["ratio"], missing["counts_match"]) == (None, None, None)
    assert cross_check_ttft(10.0, 12.0, server_requests=5, client_requests=4)["counts_match"] is False


@pytest.mark.parametrize("name", ["vllm_metrics_before.prom", "llamacpp_metrics_after.prom"])
def test_gauge_only_parse_matches_full_parse(name: str) -> None:
    from pytest_llmperf.telemetry.servermetrics import GAUGE_PREFIXES

    text = page(name)
    assert gauges(parse_prometheus(text, GAUGE_PREFIXES)) == gauges(parse_prometheus(text))
