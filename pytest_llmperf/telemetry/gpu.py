"""GPU telemetry values, the ``GpuReader`` protocol, and per-device aggregation (energy included).

A ``GpuReader`` gives one ``GpuReading`` per device per call; ``nvml``
implements it on NVML and tests implement it with recorded values.
``GpuAggregate`` turns one device's readings into its summary; the energy
counter's delta survives a counter reset without ever going negative.
``energy_per_token`` turns a summary's energy into J/token.

Nothing here talks to a driver, and no figure is made up: a field a reader
did not give stays absent from the summary.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from pytest_llmperf.telemetry.running import RunningStat, rounded
from pytest_llmperf.telemetry.shapes import GpuPoint, GpuSummary, TelemetrySummary, set_key

# NVML's clock event ("throttle") reason bits, named as nvidia-smi -q shows them.
THROTTLE_REASONS: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}


@dataclass(frozen=True)
class GpuDevice:
    index: int
    name: str
    mem_total_bytes: int | None


@dataclass(frozen=True)
class GpuDriver:
    driver_version: str | None
    cuda_driver_version: str | None


@dataclass(frozen=True)
class GpuReading:
    """One device at one instant; ``None`` where NVML gave no value.

    ``energy_mj`` is NVML's total-energy counter (millijoules since the
    driver loaded). ``server_mem_bytes`` is ``None`` when no server PID
    holds memory on this device, which includes a server in another PID
    namespace (a container), so it never reads as a false zero.
    """

    index: int
    util_pct: float | None = None
    mem_used_bytes: int | None = None
    power_w: float | None = None
    energy_mj: int | None = None
    temp_c: float | None = None
    sm_clock_mhz: float | None = None
    throttle_mask: int | None = None
    server_mem_bytes: int | None = None

    def as_point(self) -> GpuPoint:
        """This reading for the sidecar series, without the fields NVML did not give."""
        point: GpuPoint = {"index": self.index}
        if self.util_pct is not None:
            point["util_pct"] = self.util_pct
        if self.mem_used_bytes is not None:
            point["mem_used_bytes"] = self.mem_used_bytes
        if self.power_w is not None:
            point["power_w"] = self.power_w
        if self.energy_mj is not None:
            point["energy_mj"] = self.energy_mj
        if self.temp_c is not None:
            point["temp_c"] = self.temp_c
        if self.sm_clock_mhz is not None:
            point["sm_clock_mhz"] = self.sm_clock_mhz
        if self.throttle_mask is not None:
            point["throttle_mask"] = self.throttle_mask
        if self.server_mem_bytes is not None:
            point["server_mem_bytes"] = self.server_mem_bytes
        return point


class GpuReader(Protocol):
    """What the sampler needs from a GPU source; ``NvmlReader`` or a recorded fake."""

    def devices(self) -> Sequence[GpuDevice]: ...

    def driver(self) -> GpuDriver: ...

    def read(self, server_pids: Collection[int]) -> Sequence[GpuReading]:
        """One reading per device; raises on a failure that makes all of them unusable."""
        ...


def throttle_names(mask: int) -> list[str]:
    """Names of the reason bits set in ``mask``; unknown bits as hex, never dropped."""
    names = [name for bit, name in THROTTLE_REASONS.items() if mask & bit]
    unknown = mask & ~sum(THROTTLE_REASONS)
    if unknown:
        names.append(hex(unknown))
    return names


class GpuAggregate:
    """Summary of one device over a run; ``add`` each reading in time order."""

    def __init__(self, device: GpuDevice) -> None:
        self.device = device
        self.samples = 0
        self.util = RunningStat()
        self.mem_used = RunningStat()
        self.power = RunningStat()
        self.temp = RunningStat()
        self.sm_clock = RunningStat()
        self.server_mem = RunningStat()
        self.throttle_mask = 0
        self.throttle_seen = False
        self.energy_mj = 0
        self.energy_seen = False
        self.energy_resets = 0
        self._last_energy: int | None = None

    def add_energy(self, energy_mj: int | None) -> None:
        """Accumulate the counter's increase; after a reset, count what it shows since.

        A counter that went backwards was reset (driver reload, GPU reset):
        the energy between the previous reading and the reset is lost, so the
        sum is a lower bound and ``energy_counter_resets`` says so.
        """
        if energy_mj is None:
            return
        last, self._last_energy = self._last_energy, energy_mj
        if last is None:
            return
        self.energy_seen = True
        if energy_mj >= last:
            self.energy_mj += energy_mj - last
        else:
            self.energy_resets += 1
            self.energy_mj += energy_mj

    def add(self, reading: GpuReading, *, baseline: bool = False) -> None:
        """Add one reading; the baseline only anchors the energy counter.

        NVML's utilization covers a window before the reading, so the
        baseline (taken before the scenario starts) would describe the idle
        time before it, and is left out of every other figure.
        """
        self.add_energy(reading.energy_mj)
        if baseline:
            return
        self.samples += 1
        self.util.add(reading.util_pct)
        self.mem_used.add(reading.mem_used_bytes)
        self.power.add(reading.power_w)
        self.temp.add(reading.temp_c)
        self.sm_clock.add(reading.sm_clock_mhz)
        self.server_mem.add(reading.server_mem_bytes)
        if reading.throttle_mask is not None:
            self.throttle_seen = True
            self.throttle_mask |= reading.throttle_mask

    def summary(self) -> GpuSummary:
        out: GpuSummary = {"index": self.device.index, "name": self.device.name, "samples": self.samples}
        if self.device.mem_total_bytes is not None:
            out["mem_total_bytes"] = self.device.mem_total_bytes
        pairs: list[tuple[str, float | None]] = [
            ("util_mean_pct", rounded(self.util.mean, 2)),
            ("util_max_pct", self.util.maximum),
            ("power_mean_w", rounded(self.power.mean)),
            ("power_max_w", self.power.maximum),
            ("temp_max_c", self.temp.maximum),
            ("sm_clock_mean_mhz", rounded(self.sm_clock.mean, 1)),
            ("sm_clock_min_mhz", self.sm_clock.minimum),
        ]
        for key, value in pairs:
            if value is not None:
                set_key(out, key, value)
        for key, stat, use_mean in (
            ("mem_used_mean_bytes", self.mem_used, True),
            ("mem_used_max_bytes", self.mem_used, False),
            ("server_mem_max_bytes", self.server_mem, False),
        ):
            value = stat.mean if use_mean else stat.maximum
            if value is not None:
                set_key(out, key, int(value))
        if self.energy_seen:
            out["energy_j"] = self.energy_mj / 1000.0
            out["energy_counter_resets"] = self.energy_resets
        if self.throttle_seen:
            out["throttle_reasons"] = throttle_names(self.throttle_mask)
        return out


def energy_per_token(
    summary: TelemetrySummary | dict[str, object],
    output_tokens: int | None,
    *,
    gpu_indices: Collection[int] | None = None,
) -> float | None:
    """Joules per output token from the summary's GPU energy; ``None`` if not measurable.

    Sums ``energy_j`` over the GPUs in ``gpu_indices`` (default: every GPU in
    the summary, idle ones included, which is the machine's cost). ``None``
    when there is no GPU section, when any chosen GPU has no energy figure (a
    partial sum would understate the cost), or when no tokens were produced.
    """
    if not output_tokens or output_tokens <= 0:
        return None
    gpus = summary.get("gpu")
    if not isinstance(gpus, list) or not gpus:
        return None
    chosen = [g for g in gpus if gpu_indices is None or g.get("index") in gpu_indices]
    if not chosen:
        return None
    energies = [g.get("energy_j") for g in chosen]
    if any(not isinstance(e, (int, float)) for e in energies):
        return None
    return sum(float(e) for e in energies if isinstance(e, (int, float))) / output_tokens
