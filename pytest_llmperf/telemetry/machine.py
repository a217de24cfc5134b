"""What hardware a result was measured on, for pytest-benchmark's ``machine_info``.

The session stores it as ``machine_info["llmperf"]["host"]`` (from
``pytest_benchmark_update_machine_info``), beside the ``cpu`` section
pytest-benchmark already writes, so that a baseline knows its CPU, GPUs and
driver. GPU keys come from NVML and are absent without it. Engines are the
session's business (``machine_info["llmperf"]["servers"]``), not this module's.

It reads only: no process is started, and nothing is guessed (a CPU model
that cannot be read is ``None``).
"""

from __future__ import annotations

import platform
from pathlib import Path

import psutil

from pytest_llmperf.telemetry.gpu import GpuReader
from pytest_llmperf.telemetry.nvml import DEFAULT_GPU, DefaultGpu, default_probe
from pytest_llmperf.telemetry.shapes import MachineInfo


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The CPU's marketing name: ``model name`` on Linux x86, else what ``platform`` knows."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "cpu model") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def machine_info(*, gpu: GpuReader | DefaultGpu | None = DEFAULT_GPU) -> MachineInfo:
    """CPU, RAM and GPUs (when NVML works).

    ``gpu`` defaults to this session's probed NVML reader; pass ``None`` to
    leave GPUs out, or a reader (tests pass a recorded one).
    """
    info: MachineInfo = {
        "cpu_count_logical": psutil.cpu_count(logical=True),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "cpu_model": cpu_model(),
        "memory_total_bytes": int(psutil.virtual_memory().total),
    }
    reader = default_probe().get()[0] if isinstance(gpu, DefaultGpu) else gpu
    if reader is not None:
        try:
            devices = list(reader.devices())
            driver = reader.driver()
        except Exception:  # machine info is decoration: a failing driver leaves GPU keys out
            devices = []
        if devices:
            info["gpu"] = {
                "count": len(devices),
                "names": [d.name for d in devices],
                "mem_total_bytes": [d.mem_total_bytes for d in devices],
                "driver_version": driver.driver_version,
                "cuda_driver_version": driver.cuda_driver_version,
            }
    return info
