"""The NVML ``GpuReader``, and the once-per-session probe that decides whether GPU telemetry exists.

``probe_gpu()`` loads NVML once and returns either a reader or the one
warning the plugin shows (no ``pynvml``, no NVML library, no device, an
NVML error). Every later call returns the same answer, so the warning is
shown once per session, not once per test. A reader that fails mid-run is
reported by the sampler that saw it and marked failed here, so later
scenarios skip it quietly.

``NvmlReader`` reads each field on its own: a field the device does not
give (energy on older boards, process memory without permission) is
``None``; only an unexpected NVML error (a lost GPU) fails the reading. It
takes the ``pynvml`` module as a parameter, so tests hand it a stand-in
that replays recorded NVML answers.

This module must not import pynvml at import time (a machine without it
must still import the package), and must not call anything that changes
the device (no clocks, no persistence mode, no reset).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar

from pytest_llmperf.telemetry.gpu import GpuDevice, GpuDriver, GpuReader, GpuReading

T = TypeVar("T")

# NVML return codes that mean "this device does not give this figure" rather than failure:
# NOT_SUPPORTED, NO_PERMISSION, NOT_FOUND, FUNCTION_NOT_FOUND (an older driver).
ABSENT_CODES = frozenset({3, 4, 6, 13})


def cuda_version_text(version: int) -> str:
    """NVML's CUDA driver version integer (12040) as text ("12.4")."""
    return f"{version // 1000}.{(version % 1000) // 10}"


def _text(value: object) -> str:
    # pynvml returned bytes before 11.5 and str since.
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlReader:
    """Reads every device NVML sees; ``nvml`` is the initialised ``pynvml`` module (untyped)."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        count = int(nvml.nvmlDeviceGetCount())
        self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        self._devices = tuple(self._device(i, h) for i, h in enumerate(self._handles))

    def _device(self, index: int, handle: object) -> GpuDevice:
        nvml = self._nvml
        total = self._field(lambda: int(nvml.nvmlDeviceGetMemoryInfo(handle).total))
        return GpuDevice(index, _text(nvml.nvmlDeviceGetName(handle)), total)

    def _field(self, read: Callable[[], T]) -> T | None:
        try:
            return read()
        except self._nvml.NVMLError as exc:
            if getattr(exc, "value", None) in ABSENT_CODES:
                return None
            raise

    def devices(self) -> Sequence[GpuDevice]:
        return self._devices

    def driver(self) -> GpuDriver:
        nvml = self._nvml
        version = self._field(lambda: _text(nvml.nvmlSystemGetDriverVersion()))
        cuda = self._field(lambda: int(nvml.nvmlSystemGetCudaDriverVersion()))
        return GpuDriver(version, None if cuda is None else cuda_version_text(cuda))

    def read(self, server_pids: Collection[int]) -> Sequence[GpuReading]:
        return [self._read_one(i, h, server_pids) for i, h in enumerate(self._handles)]

    def _read_one(self, index: int, h: object, server_pids: Collection[int]) -> GpuReading:
        nvml = self._nvml
        return GpuReading(
            index=index,
            util_pct=self._field(lambda: float(nvml.nvmlDeviceGetUtilizationRates(h).gpu)),
            mem_used_bytes=self._field(lambda: int(nvml.nvmlDeviceGetMemoryInfo(h).used)),
            power_w=self._field(lambda: int(nvml.nvmlDeviceGetPowerUsage(h)) / 1000.0),
            energy_mj=self._field(lambda: int(nvml.nvmlDeviceGetTotalEnergyConsumption(h))),
            temp_c=self._field(lambda: float(nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU))),
            sm_clock_mhz=self._field(lambda: float(nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM))),
            throttle_mask=self._throttle_mask(h),
            server_mem_bytes=self._server_mem(h, server_pids),
        )

    def _throttle_mask(self, handle: object) -> int | None:
        nvml = self._nvml
        # "Clocks event reasons" replaced "clocks throttle reasons" in NVML 12.2; same bits.
        reasons = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
        if reasons is None:
            reasons = nvml.nvmlDeviceGetCurrentClocksThrottleReasons
        return self._field(lambda: int(reasons(handle)))

    def _server_mem(self, handle: object, server_pids: Collection[int]) -> int | None:
        if not server_pids:
            return None
        try:
            procs = self._field(lambda: list(self._nvml.nvmlDeviceGetComputeRunningProcesses(handle)))
        except Exception as exc:
            # nvidia-ml-py asks for the _v3 process list and, where the driver's NVML predates it
            # (before R510), raises NVMLLibraryMismatchError, not an NVMLError: this one figure is
            # absent, the GPU is fine, so it must not stop the other GPU fields.
            if type(exc).__name__ == "NVMLLibraryMismatchError":
                return None
            raise
        # usedGpuMemory is None where the driver cannot attribute memory (WDDM, some MIG setups).
        known = [
            int(p.usedGpuMemory) for p in procs or () if p.pid in server_pids and p.usedGpuMemory is not None
        ]
        return sum(known) if known else None


def load_nvml() -> GpuReader:
    """Import pynvml, initialise NVML and open every device; raises when any step fails."""
    import pynvml  # type: ignore[import-untyped]

    pynvml.nvmlInit()
    reader = NvmlReader(pynvml)
    if not reader.devices():
        raise LookupError("NVML found no GPU")
    return reader


class GpuProbe:
    """Loads a GPU reader once and remembers the answer: a reader, or why there is none."""

    def __init__(self, load: Callable[[], GpuReader] = load_nvml) -> None:
        self._load = load
        self._lock = threading.Lock()
        self._result: tuple[GpuReader | None, str | None] | None = None

    def get(self) -> tuple[GpuReader | None, str | None]:
        with self._lock:
            if self._result is None:
                self._result = self._try_load()
            return self._result

    def _try_load(self) -> tuple[GpuReader | None, str | None]:
        try:
            return self._load(), None
        except ImportError as exc:
            why = f"the pynvml module is not installed ({exc})"
        except LookupError as exc:
            why = str(exc)
        except Exception as exc:  # NVMLError (no library, no driver) and whatever a broken driver raises
            why = f"NVML is not usable ({type(exc).__name__}: {exc})"
        return None, f"no GPU telemetry: {why}; GPU fields are absent from the results"

    def mark_failed(self) -> None:
        """A reader failed mid-run: later callers get no reader and no second warning.

        The sampler that saw the failure has already reported it once.
        """
        with self._lock:
            self._result = (None, None)


_DEFAULT_PROBE = GpuProbe()


def probe_gpu() -> tuple[GpuReader | None, str | None]:
    """This session's GPU reader, or ``None`` and the one warning to show; the same answer every call."""
    return _DEFAULT_PROBE.get()


def default_probe() -> GpuProbe:
    return _DEFAULT_PROBE


class DefaultGpu:
    """The type of ``DEFAULT_GPU``: "use this session's probed reader"."""

    def __repr__(self) -> str:
        return "DEFAULT_GPU"


DEFAULT_GPU = DefaultGpu()
