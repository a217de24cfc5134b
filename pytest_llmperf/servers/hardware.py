"""What memory this machine offers: free memory per GPU from NVML, or RAM.

The fit check compares a model's estimate against these figures. This module
must never crash for lack of a GPU: NVML missing, failing or reporting no
device all mean "no GPU", with the reason kept in ``Machine.note``. It reads
once and samples nothing (telemetry samples GPUs during runs, elsewhere).
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, cast

import psutil

GB = 1_000_000_000
MIB = 1024 * 1024
GIB = 1024 * MIB


@dataclass(frozen=True)
class Device:
    """One memory pool: a GPU, or the machine's RAM for CPU backends."""

    name: str
    total_bytes: int
    free_bytes: int


#: Totals as NVML reports them on these cards (nvidia-smi "MiB" column).
COMMON_GPUS: tuple[Device, ...] = tuple(
    Device(name, mib * MIB, mib * MIB)
    for name, mib in (
        ("T4 16 GB", 15360),
        ("L4 24 GB", 23034),
        ("A100 40 GB", 40960),
        ("A100 80 GB", 81920),
        ("H100 80 GB", 81559),
        ("H200 141 GB", 143771),
    )
)


@dataclass(frozen=True)
class Machine:
    """What this machine offers: GPUs from NVML, else one pool of RAM."""

    kind: Literal["gpu", "cpu"]
    devices: tuple[Device, ...]
    note: str | None = None

    def describe(self) -> str:
        if self.kind == "cpu":
            return f"{format_gb(self.devices[0].free_bytes)} RAM available" if self.devices else "no memory"
        counts: dict[str, int] = {}
        for device in sorted(self.devices, key=lambda d: -d.free_bytes):
            size = format_gb(device.free_bytes)
            counts[size] = counts.get(size, 0) + 1
        return " + ".join(f"{n} x {size}" for size, n in counts.items()) + " free"


class MemoryInfo(Protocol):
    total: int
    free: int


class NvmlApi(Protocol):
    """The part of ``pynvml`` we call; tests pass a fake."""

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> object: ...
    def nvmlDeviceGetName(self, handle: object) -> str | bytes: ...
    def nvmlDeviceGetMemoryInfo(self, handle: object) -> MemoryInfo: ...


def read_gpus(nvml: NvmlApi | None = None) -> tuple[tuple[Device, ...], str | None]:
    """GPUs with their free memory, and why there are none when there are none.

    Every NVML failure (no library, no driver, a device that errors) means
    "no GPU" plus a note, never an exception. ``CUDA_VISIBLE_DEVICES`` given
    as indices limits the list, since engines see only those devices.
    """
    try:
        api = nvml if nvml is not None else cast(NvmlApi, importlib.import_module("pynvml"))
        api.nvmlInit()
    except Exception as exc:  # NVMLError, ImportError, OSError: all mean no GPU here
        return (), f"NVML unavailable ({type(exc).__name__}: {exc})"
    try:
        found: list[Device] = []
        for index in _visible_indices(api.nvmlDeviceGetCount()):
            handle = api.nvmlDeviceGetHandleByIndex(index)
            name = api.nvmlDeviceGetName(handle)
            info = api.nvmlDeviceGetMemoryInfo(handle)
            text = name.decode() if isinstance(name, bytes) else name
            found.append(Device(text, int(info.total), int(info.free)))
    except Exception as exc:
        return (), f"NVML failed reading devices ({type(exc).__name__}: {exc})"
    finally:
        with contextlib.suppress(Exception):  # a failed shutdown changes nothing we report
            api.nvmlShutdown()
    return tuple(found), (None if found else "NVML reports no GPU")


def _visible_indices(count: int) -> list[int]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return list(range(count))
    parts = [p.strip() for p in visible.split(",") if p.strip()]
    if not all(p.isdigit() for p in parts):
        return list(range(count))  # UUIDs or MIG names: NVML order cannot be matched cheaply
    return [int(p) for p in parts if int(p) < count]


def _ram() -> tuple[int, int]:
    vm = psutil.virtual_memory()
    return int(vm.total), int(vm.available)


def detect_machine(
    *,
    cpu: bool = False,
    nvml: NvmlApi | None = None,
    ram: Callable[[], tuple[int, int]] = _ram,
) -> Machine:
    """GPUs from NVML unless ``cpu`` (a CPU backend), else available RAM."""
    note = None
    if not cpu:
        gpus, note = read_gpus(nvml)
        if gpus:
            return Machine("gpu", gpus)
    total, available = ram()
    return Machine("cpu", (Device("CPU RAM", total, available),), note)


def format_gb(n: int) -> str:
    """Decimal GB, with fewer digits as numbers grow: "141 GB", "5.4 GB", "0.67 GB"."""
    value = n / GB
    if value >= 10:
        return f"{value:.0f} GB"
    if value >= 1:
        return f"{value:.1f} GB"
    return f"{value:.2g} GB"
