"""The JSON shapes telemetry hands out: ``extra_info["llm"]["telemetry"]``, the series, machine info.

These are public: other tools read them from pytest-benchmark JSON. Add
keys, never rename. A key is absent when its figure was not measured (no
GPU, no server PID, no ``/metrics``, a counter that went backwards); it is
never filled with a guess or a zero. Units are in the key names; ``_pct``
is 0..100 per core or device, and process-tree CPU can exceed 100 (one core
= 100, as ``top`` shows it).

``TelemetrySummary``::

    {
      "interval_s": 0.1, "samples": 52, "duration_s": 5.21,
      "sampler_cpu_ms_per_s": 0.9,           # the sampler thread's own CPU cost
      "cpu": {"cores": 2, "per_core_mean_pct": [..], "per_core_max_pct": [..],
              "busiest_core": 1, "busiest_core_mean_pct": 97.0,
              "total_mean_pct": 55.1, "total_max_pct": 100.0},
      "memory": {"system_total_bytes": .., "system_used_mean_bytes": ..,
                 "system_used_max_bytes": ..},
      "server_process": {"pid": 123, "processes_max": 2, "cpu_mean_pct": 180.2,
                         "cpu_max_pct": 199.0, "rss_mean_bytes": .., "rss_max_bytes": ..},
      "gpu": [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "samples": 52,
               "mem_total_bytes": .., "util_mean_pct": .., "util_max_pct": ..,
               "mem_used_mean_bytes": .., "mem_used_max_bytes": ..,
               "power_mean_w": .., "power_max_w": .., "energy_j": ..,
               "energy_counter_resets": 0, "temp_max_c": .., "sm_clock_mean_mhz": ..,
               "sm_clock_min_mhz": .., "throttle_reasons": ["sw_power_cap"],
               "server_mem_max_bytes": ..}],
      "server_metrics": {"engine": "vllm", "ttft_ms": {"count": 16, "mean": 14.2,
                         "p50_le": 20.0, "p90_le": 40.0, "p95_le": 40.0, "p99_le": 60.0},
                         ...},                                   # see ServerMetrics
      "ollama": {"models": [{"name": .., "size_bytes": .., "size_vram_bytes": ..,
                             "vram_pct": ..}]},
      "load": {"cores": 2, "samples": 52, "busy_cores_mean": 1.97, "steal_cores_mean": 0.0,
               "idle_cores_mean": 0.03, "client_cores_mean": 0.05, "server_cores_mean": 1.9,
               "others_cores_mean": 0.02, "others_cores_max": 0.2, "server_threads": 2,
               "freq_ratio_mean": 0.98, "throttle_events": 0}          # see CpuLoadSummary
    }

Server histograms give an exact ``mean`` (delta of ``_sum`` over delta of
``_count``) but only bucket counts otherwise, so their quantiles are reported
as bounds: ``p95_le`` is the upper edge of the bucket holding the 95th
percentile ("p95 is at most this"), absent when that is the ``+Inf`` bucket.
Interpolating inside a bucket, as Prometheus' ``histogram_quantile`` does,
would invent precision the server never measured.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypedDict, cast


class CpuSummary(TypedDict):
    cores: int
    per_core_mean_pct: list[float]
    per_core_max_pct: list[float]
    busiest_core: int
    busiest_core_mean_pct: float
    total_mean_pct: float
    total_max_pct: float


class MemorySummary(TypedDict):
    system_total_bytes: int
    system_used_mean_bytes: int
    system_used_max_bytes: int


class ServerProcessSummary(TypedDict):
    pid: int
    processes_max: int
    cpu_mean_pct: float
    cpu_max_pct: float
    rss_mean_bytes: int
    rss_max_bytes: int


class _GpuRequired(TypedDict):
    index: int
    name: str
    samples: int


class GpuSummary(_GpuRequired, total=False):
    mem_total_bytes: int
    util_mean_pct: float
    util_max_pct: float
    mem_used_mean_bytes: int
    mem_used_max_bytes: int
    power_mean_w: float
    power_max_w: float
    energy_j: float
    energy_counter_resets: int
    temp_max_c: float
    sm_clock_mean_mhz: float
    sm_clock_min_mhz: float
    throttle_reasons: list[str]
    server_mem_max_bytes: int


class HistogramDelta(TypedDict, total=False):
    """Observations a server histogram gained during the scenario, in ms; ``*_le`` are bucket bounds."""

    count: int
    mean: float
    p50_le: float
    p90_le: float
    p95_le: float
    p99_le: float


class ServerMetrics(TypedDict, total=False):
    """Deltas over the scenario from the server's ``/metrics`` page, plus sampled gauges.

    vLLM fills the histogram keys, ``preemptions`` and ``requests_running_max``
    / ``requests_waiting_max``; llama-server fills ``prompt_seconds`` (batch
    wall time), ``generation_slot_seconds`` (summed per slot), the rates
    derived from them (``prompt_tok_per_s``, ``generation_tok_per_s_per_slot``),
    ``decode_calls``, ``busy_slots_per_decode`` and
    ``requests_processing_max`` / ``requests_deferred_max``.
    ``kv_cache_usage_max_pct`` is the largest value seen in any scrape
    (before, during at ``metrics_interval_s``, after).
    """

    engine: str
    url: str
    scrapes: int
    ttft_ms: HistogramDelta
    itl_ms: HistogramDelta
    tpot_ms: HistogramDelta
    e2e_ms: HistogramDelta
    queue_ms: HistogramDelta
    prefill_ms: HistogramDelta
    decode_ms: HistogramDelta
    requests_succeeded: float
    prompt_tokens: float
    prompt_tokens_cached: float
    generation_tokens: float
    preemptions: float
    prompt_seconds: float
    generation_slot_seconds: float
    prompt_tok_per_s: float
    generation_tok_per_s_per_slot: float
    decode_calls: float
    busy_slots_per_decode: float
    kv_cache_usage_max_pct: float
    requests_running_max: float
    requests_waiting_max: float
    requests_processing_max: float
    requests_deferred_max: float


class OllamaModel(TypedDict):
    name: str
    size_bytes: int
    size_vram_bytes: int
    vram_pct: float


class OllamaSummary(TypedDict):
    models: list[OllamaModel]


class _CpuLoadRequired(TypedDict):
    cores: int
    samples: int
    busy_cores_mean: float


class CpuLoadSummary(_CpuLoadRequired, total=False):
    """Who used the CPU over the measured window, in cores (CPU seconds per wall second).

    ``busy_cores_mean`` excludes steal; ``others_cores_*`` (busy minus server
    minus client) needs the server's PID, so an attached endpoint has none;
    ``steal_cores_mean`` needs ``/proc/stat``; ``server_threads`` a command
    line that names them (llama.cpp's ``-t``); ``freq_ratio_mean`` (clock
    over maximum) and ``throttle_events`` (thermal) a kernel that exposes them.
    """

    steal_cores_mean: float
    idle_cores_mean: float
    client_cores_mean: float
    server_cores_mean: float
    others_cores_mean: float
    others_cores_max: float
    server_threads: int
    freq_ratio_mean: float
    throttle_events: int


class _SummaryRequired(TypedDict):
    interval_s: float
    samples: int
    duration_s: float
    sampler_cpu_ms_per_s: float


class TelemetrySummary(_SummaryRequired, total=False):
    cpu: CpuSummary
    memory: MemorySummary
    server_process: ServerProcessSummary
    gpu: list[GpuSummary]
    server_metrics: ServerMetrics
    ollama: OllamaSummary
    load: CpuLoadSummary  # the key says load; it is CPU load (telemetry.cpuload)


class GpuPoint(TypedDict, total=False):
    index: int
    util_pct: float
    mem_used_bytes: int
    power_w: float
    energy_mj: int
    temp_c: float
    sm_clock_mhz: float
    throttle_mask: int
    server_mem_bytes: int


class SeriesPoint(TypedDict, total=False):
    """One sample of the optional sidecar series; ``t_s`` is seconds since the sampler started."""

    t_s: float
    cpu_pct: list[float]
    mem_used_bytes: int
    server_cpu_pct: float
    server_rss_bytes: int
    server_pids: int
    gpu: list[GpuPoint]
    metrics: dict[str, float]


class TtftCrossCheck(TypedDict):
    server_ttft_mean_ms: float | None
    client_ttft_mean_ms: float | None
    diff_ms: float | None
    ratio: float | None
    server_requests: int | None
    client_requests: int | None
    counts_match: bool | None


class GpuMachine(TypedDict):
    count: int
    names: list[str]
    mem_total_bytes: list[int | None]
    driver_version: str | None
    cuda_driver_version: str | None


class _MachineRequired(TypedDict):
    cpu_count_logical: int | None
    cpu_count_physical: int | None
    cpu_model: str | None
    memory_total_bytes: int


class MachineInfo(_MachineRequired, total=False):
    gpu: GpuMachine


def set_key(shape: Mapping[str, object], key: str, value: object) -> None:
    """Set a key chosen at run time on a TypedDict.

    mypy only checks literal keys; the key tables in this package name only
    keys the TypedDict declares, and the tests compare whole dicts.
    """
    cast("dict[str, object]", shape)[key] = value
