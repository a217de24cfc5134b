"""Telemetry beside every result: GPU (NVML), CPU and memory (psutil), and the server's own metrics.

The plugin's whole use of this package (``perf`` and ``session``)::

    reader, warning = probe_gpu()              # once per session; show `warning` once
    sampler = Sampler(SamplerConfig(interval_s=0.1, server_pid=pid, metrics_url=url))
    sampler.start()                            # when warm-up is over
    ...                                        # the measured requests
    sampler.stop()
    llm["telemetry"] = sampler.summary()       # shape: shapes.TelemetrySummary, plus:
    llm["telemetry"]["energy_j_per_output_token"] = energy_per_token(summary, output_tokens)
    llm["telemetry"]["ttft_cross_check"] = cross_check_ttft(server_mean_ms, client_mean_ms)
    for text in sampler.warnings: ...          # per scenario, each once
    machine_info()                             # machine_info["llmperf"]["host"]

Modules: ``sampler`` (the thread), ``host`` (psutil readers), ``gpu``
(reader protocol, aggregation, energy), ``nvml`` (the NVML reader and the
session's probe), ``promtext`` (Prometheus text
parser), ``servermetrics`` (which server metrics matter, Ollama ``/api/ps``,
TTFT cross-check), ``cpuload`` (CPU load: who used the CPU, the "machine busy"
evidence), ``machine`` (hardware for ``machine_info``), ``shapes``
(the JSON shapes, documented there), ``running`` (running mean/max).

Telemetry reads the machine and the server; it never changes either, never
fails a run, and never reports a figure it did not measure. It imports only
the records and errors, never the stages that measure, judge or write.
"""

from __future__ import annotations

from pytest_llmperf.telemetry.gpu import GpuDevice, GpuDriver, GpuReader, GpuReading, energy_per_token
from pytest_llmperf.telemetry.machine import machine_info
from pytest_llmperf.telemetry.nvml import DEFAULT_GPU, GpuProbe, NvmlReader, probe_gpu
from pytest_llmperf.telemetry.promtext import parse as parse_prometheus
from pytest_llmperf.telemetry.sampler import Sampler, SamplerConfig, SamplerSources
from pytest_llmperf.telemetry.servermetrics import cross_check_ttft
from pytest_llmperf.telemetry.shapes import MachineInfo, SeriesPoint, TelemetrySummary, TtftCrossCheck

__all__ = [
    "DEFAULT_GPU",
    "GpuDevice",
    "GpuDriver",
    "GpuProbe",
    "GpuReader",
    "GpuReading",
    "MachineInfo",
    "NvmlReader",
    "Sampler",
    "SamplerConfig",
    "SamplerSources",
    "SeriesPoint",
    "TelemetrySummary",
    "TtftCrossCheck",
    "cross_check_ttft",
    "energy_per_token",
    "machine_info",
    "parse_prometheus",
    "probe_gpu",
]
