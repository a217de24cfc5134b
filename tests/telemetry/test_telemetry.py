"""Telemetry: the sampler, psutil readers, the NVML reader on recorded answers, machine info.

No GPU is assumed: NVML is exercised through ``FakeNvml``, a stand-in for the
``pynvml`` module that replays ``data/telemetry/nvml_h100_two_devices.json``
(hand-written in NVML's units; see that folder's README). Host figures are
checked twice: exactly, through injected readers and a fake clock, and on a
real child process with bounds that follow from what the child was made to do.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest

from pytest_llmperf.errors import ProcessGone
from pytest_llmperf.telemetry import (
    GpuProbe,
    GpuReading,
    NvmlReader,
    Sampler,
    SamplerConfig,
    SamplerSources,
    energy_per_token,
    machine_info,
    probe_gpu,
)
from pytest_llmperf.telemetry import nvml as nvml_module
from pytest_llmperf.telemetry.gpu import GpuDevice, GpuDriver, throttle_names
from pytest_llmperf.telemetry.host import (
    HostReading,
    PsutilHostReader,
    PsutilTreeReader,
    TreeReading,
    core_percentages,
)

DATA = Path(__file__).parents[1] / "data" / "telemetry"
MIB = 1024 * 1024
CORES = psutil.cpu_count() or 1


# -- fakes ---------------------------------------------------------------------


class FakeNvmlError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value


class _Obj:
    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


class FakeNvml:
    """Replays recorded NVML answers: ``tick`` selects the row every call returns."""

    NVMLError = FakeNvmlError
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1

    def __init__(self, recording: dict[str, Any]) -> None:
        self.rec = recording
        self.tick = 0
        self.lost = False

    def _row(self, handle: int) -> dict[str, Any]:
        if self.lost:
            raise FakeNvmlError(15)  # NVML_ERROR_GPU_IS_LOST
        row: dict[str, Any] = self.rec["devices"][handle]["ticks"][self.tick]
        return row

    def _value(self, handle: int, key: str) -> Any:
        value = self._row(handle)[key]
        if value is None:
            raise FakeNvmlError(3)  # NVML_ERROR_NOT_SUPPORTED
        return value

    def nvmlDeviceGetCount(self) -> int:
        return len(self.rec["devices"])

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return str(self.rec["devices"][handle]["name"]).encode()  # old pynvml returned bytes

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> _Obj:
        total = self.rec["devices"][handle]["memory_total"]
        return _Obj(total=total, used=self._value(handle, "memory_used"))

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> _Obj:
        return _Obj(gpu=self._value(handle, "utilization_gpu"), memory=0)

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return int(self._value(handle, "power_mw"))

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        return int(self._value(handle, "energy_mj"))

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        return int(self._value(handle, "temperature_c"))

    def nvmlDeviceGetClockInfo(self, handle: int, clock: int) -> int:
        assert clock == self.NVML_CLOCK_SM
        return int(self._value(handle, "sm_clock_mhz"))

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: int) -> int:
        return int(self._value(handle, "clocks_event_reasons"))

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[_Obj]:
        return [_Obj(**p) for p in self._row(handle)["processes"]]

    def nvmlSystemGetDriverVersion(self) -> str:
        return str(self.rec["driver_version"])

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return int(self.rec["cuda_driver_version"])


class Clock:
    """A hand-advanced clock: ``clock.now`` is what the sampler reads."""

    def __init__(self, start: float = 100.0, step: float = 0.0) -> None:
        self.now = start
        self.step = step

    def __call__(self) -> float:
        value = self.now
        self.now += self.step
        return value


class ScriptedHost:
    def __init__(self, readings: Sequence[HostReading | None]) -> None:
        self.readings = list(readings)

    def read(self) -> HostReading | None:
        return self.readings.pop(0)


class ScriptedTree:
    """Returns its readings in order; an exception in the script is raised instead."""

    def __init__(self, readings: Sequence[TreeReading | Exception | None]) -> None:
        self.readings = list(readings)

    def read(self, now_s: float) -> TreeReading | None:
        reading = self.readings.pop(0)
        if isinstance(reading, Exception):
            raise reading
        return reading


def recording() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / "nvml_h100_two_devices.json").read_text())
    return data


def no_nvml() -> GpuProbe:
    def load() -> NvmlReader:
        raise FakeNvmlError(12)  # what pynvml raises where libnvidia-ml.so is missing

    return GpuProbe(load)


# -- NVML through recorded answers -----------------------------------------------


def test_nvml_reader_converts_units_and_matches_server_processes() -> None:
    fake = FakeNvml(recording())
    reader = NvmlReader(fake)
    assert reader.devices() == (
        GpuDevice(0, "NVIDIA H100 80GB HBM3", 85520809984),
        GpuDevice(1, "Tesla T4", 16106127360),
    )
    assert reader.driver() == GpuDriver("550.90.07", "12.4")
    fake.tick = 3
    h100, t4 = reader.read({4242, 4243})
    # pid 4243's usedGpuMemory is unknown (None) at this tick: only 4242 counts.
    assert h100 == GpuReading(0, 99.0, 72535932928, 700.0, 21000, 63.0, 1740.0, 36, 72122793984)
    # The T4 has no energy counter (NOT_SUPPORTED) and no server process on it.
    assert t4 == GpuReading(1, 0.0, 262144, 9.3, None, 31.0, 300.0, 1, None)
    assert reader.read(set())[0].server_mem_bytes is None


class NVMLLibraryMismatchError(Exception):
    """pynvml's own name for "the driver's NVML has no _v3 process query"; not an NVMLError."""


class OldDriverNvml(FakeNvml):
    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[_Obj]:
        raise NVMLLibraryMismatchError("Unversioned function called and the pyNVML version does not match")


def test_nvml_reader_without_the_process_query_keeps_every_other_field() -> None:
    fake = OldDriverNvml(recording())
    reader = NvmlReader(fake)
    fake.tick = 3
    h100, _ = reader.read({4242})
    assert h100 == GpuReading(0, 99.0, 72535932928, 700.0, 21000, 63.0, 1740.0, 36, None)


def test_nvml_reader_raises_when_the_gpu_is_lost() -> None:
    fake = FakeNvml(recording())
    reader = NvmlReader(fake)
    fake.lost = True
    with pytest.raises(FakeNvmlError):
        reader.read({4242})


def test_throttle_names_keep_unknown_bits() -> None:
    assert throttle_names(0) == []
    assert throttle_names(0x24) == ["sw_power_cap", "sw_thermal_slowdown"]
    assert throttle_names(0x1 | 0x10000) == ["gpu_idle", "0x10000"]


def drive(sampler: Sampler, clock: Clock, ticks: int, fake: FakeNvml | None = None) -> None:
    """Start without a thread, take ``ticks`` samples 0.1 s apart, stop."""
    sampler.start(background=False)
    for tick in range(1, ticks + 1):
        if fake is not None:
            fake.tick = tick
        clock.now += 0.1
        sampler.sample_now()
    clock.now += 0.05
    sampler.stop()


def test_gpu_summary_from_recorded_ticks_survives_an_energy_counter_reset() -> None:
    fake = FakeNvml(recording())
    clock = Clock()
    host = ScriptedHost([None] + [HostReading((50.0,), 1, 2)] * 4)
    tree = ScriptedTree([None] + [TreeReading(frozenset({4242, 4243}), 100.0, 1)] * 4)
    sampler = Sampler(
        SamplerConfig(server_pid=4242),
        SamplerSources(gpu=NvmlReader(fake), host=host, tree_reader=lambda pid: tree, clock=clock),
    )
    drive(sampler, clock, 4, fake)
    h100, t4 = sampler.summary()["gpu"]
    assert h100 == {
        "index": 0,
        "name": "NVIDIA H100 80GB HBM3",
        "samples": 4,
        "mem_total_bytes": 85520809984,
        "util_mean_pct": 90.0,
        "util_max_pct": 100.0,
        "power_mean_w": 537.905,
        "power_max_w": 700.0,
        "temp_max_c": 63.0,
        "sm_clock_mean_mhz": 1863.8,
        "sm_clock_min_mhz": 1740.0,
        "mem_used_mean_bytes": 72468824064,
        "mem_used_max_bytes": 72535932928,
        "server_mem_max_bytes": 72391229440,
        # 35000 + 68950 + (reset: 21000 since it) + 41000 mJ; the baseline tick's idle
        # state (gpu_idle, 0 % busy) is not part of the run.
        "energy_j": 165.95,
        "energy_counter_resets": 1,
        "throttle_reasons": ["sw_power_cap", "sw_thermal_slowdown"],
    }
    assert "energy_j" not in t4
    assert "server_mem_max_bytes" not in t4
    assert t4["power_mean_w"] == 9.25
    assert sampler.warnings == []
    summary = sampler.summary()
    assert energy_per_token(summary, 1000) is None  # the T4's energy is unknown: no partial sum
    assert energy_per_token(summary, 1000, gpu_indices=[0]) == pytest.approx(0.16595)
    assert energy_per_token(summary, 0, gpu_indices=[0]) is None
    assert energy_per_token({"interval_s": 0.1}, 1000) is None


def test_gpu_lost_mid_run_warns_once_and_keeps_earlier_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml(recording())
    probe = GpuProbe(lambda: NvmlReader(fake))
    monkeypatch.setattr(nvml_module, "_DEFAULT_PROBE", probe)
    clock = Clock()
    sampler = Sampler(
        sources=SamplerSources(host=ScriptedHost([None] + [HostReading((1.0,), 1, 2)] * 3), clock=clock)
    )
    sampler.start(background=False)
    for tick in (1, 2, 3):
        fake.tick, fake.lost = tick, tick >= 2
        clock.now += 0.1
        sampler.sample_now()
    sampler.stop()
    assert sampler.warnings == ["gpu telemetry stopped: FakeNvmlError: 15"]
    assert [g["samples"] for g in sampler.summary()["gpu"]] == [1, 1]
    assert probe.get() == (None, None)  # later scenarios skip the GPU without a second warning


def test_without_nvml_one_warning_for_the_session_and_no_gpu_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def load() -> NvmlReader:
        calls.append(1)
        raise FakeNvmlError(12)

    monkeypatch.setattr(nvml_module, "_DEFAULT_PROBE", GpuProbe(load))
    first, second = probe_gpu(), probe_gpu()
    assert first == second
    assert first[0] is None
    assert first[1] == (
        "no GPU telemetry: NVML is not usable (FakeNvmlError: 12); GPU fields are absent from the results"
    )
    for _ in range(2):
        clock = Clock()
        sampler = Sampler(
            sources=SamplerSources(host=ScriptedHost([None, HostReading((5.0,), 1, 2)]), clock=clock)
        )
        drive(sampler, clock, 1)
        assert "gpu" not in sampler.summary()
        assert sampler.warnings == []  # the probe's warning is the plugin's to show, once
    assert calls == [1]


def test_probe_reports_a_missing_pynvml_module() -> None:
    def load() -> NvmlReader:
        raise ModuleNotFoundError("No module named 'pynvml'")

    assert GpuProbe(load).get() == (
        None,
        "no GPU telemetry: the pynvml module is not installed (No module named 'pynvml'); "
        "GPU fields are absent from the results",
    )


def test_real_probe_on_this_machine_answers_the_same_twice() -> None:
    reader, warning = probe_gpu()
    assert probe_gpu() == (reader, warning)
    assert (reader is None) == (warning is not None)


# -- host figures: exact arithmetic -------------------------------------------------


def times(
    user: float, system: float, idle: float, iowait: float = 0.0, guest: float = 0.0
) -> dict[str, float]:
    return {"user": user, "nice": 0.0, "system": system, "idle": idle, "iowait": iowait, "guest": guest}


def test_core_percentages_count_like_psutil() -> None:
    before = [times(10, 5, 100), times(0, 0, 50), times(1, 1, 1)]
    after = [
        times(16, 7, 102),  # 8 busy of 10
        times(0, 0, 50),  # no ticks: 0, not a division by zero
        # user +2, all of it guest time (which Linux also counts in user: not twice),
        # and iowait +2, which is not busy: 2 busy of 4.
        times(1 + 2, 1, 1, iowait=2, guest=2),
    ]
    assert core_percentages(before, after) == (80.0, 0.0, 50.0)
    with pytest.raises(ValueError, match="core count changed"):
        core_percentages(before, after[:2])


def test_host_reader_first_read_is_the_baseline() -> None:
    rows = [[times(0, 0, 0), times(0, 0, 0)], [times(3, 1, 6), times(9, 1, 0)]]
    reader = PsutilHostReader(cpu_times=lambda: rows.pop(0))
    assert reader.read() is None
    reading = reader.read()
    assert reading is not None
    assert reading.per_core_pct == (40.0, 100.0)
    assert reading.mem_total_bytes == psutil.virtual_memory().total


def test_sampler_summary_is_exact_with_scripted_readers() -> None:
    clock = Clock()
    host = ScriptedHost(
        [
            None,
            HostReading((10.0, 90.0), 1000, 8000),
            HostReading((20.0, 100.0), 3000, 8000),
            HostReading((30.0, 80.0), 2000, 8000),
        ]
    )
    tree = ScriptedTree(
        [
            None,
            TreeReading(frozenset({7}), 150.0, 10),
            TreeReading(frozenset({7, 8, 9}), 250.0, 30),
            TreeReading(frozenset({7, 8}), 200.0, 20),
        ]
    )
    sampler = Sampler(
        SamplerConfig(server_pid=7, keep_series=True),
        SamplerSources(
            gpu=None,
            host=host,
            tree_reader=lambda pid: tree,
            clock=clock,
            thread_clock=Clock(0.0, 0.0005),  # read twice per sample: 0.5 ms of thread CPU each
            client_reader=None,  # the client's share is test_cpuload's subject
            threads=lambda pid: 2,
            throttle=lambda: None,
            freq=lambda: None,
        ),
    )
    drive(sampler, clock, 3)
    assert sampler.summary() == {
        "interval_s": 0.1,
        "samples": 3,
        "duration_s": 0.35,
        "sampler_cpu_ms_per_s": 4.286,  # 3 x 0.5 ms over 0.35 s
        "cpu": {
            "cores": 2,
            "per_core_mean_pct": [20.0, 90.0],
            "per_core_max_pct": [30.0, 100.0],
            "busiest_core": 1,
            "busiest_core_mean_pct": 90.0,
            "total_mean_pct": 55.0,
            "total_max_pct": 60.0,
        },
        "memory": {"system_total_bytes": 8000, "system_used_mean_bytes": 2000, "system_used_max_bytes": 3000},
        "server_process": {
            "pid": 7,
            "processes_max": 3,
            "cpu_mean_pct": 200.0,
            "cpu_max_pct": 250.0,
            "rss_mean_bytes": 20,
            "rss_max_bytes": 30,
        },
        # Busy cores are the per-core percentages summed: 1.0, 1.2, 1.1; no client reader, so no "others".
        "load": {
            "cores": 2,
            "samples": 3,
            "busy_cores_mean": 1.1,
            "idle_cores_mean": 0.9,
            "server_cores_mean": 2.0,
            "server_threads": 2,
        },
    }
    assert sampler.series()[1] == {
        "t_s": 0.2,
        "cpu_pct": [20.0, 100.0],
        "mem_used_bytes": 3000,
        "server_cpu_pct": 250.0,
        "server_rss_bytes": 30,
        "server_pids": 3,
    }


def test_server_exit_mid_run_keeps_what_was_measured() -> None:
    clock = Clock()
    gone = ProcessGone("server process 7 exited during the run; server_process figures cover the time before")
    tree = ScriptedTree([None, TreeReading(frozenset({7}), 100.0, 10), gone])
    host = ScriptedHost([None, *[HostReading((1.0,), 1, 2)] * 3])
    sampler = Sampler(
        SamplerConfig(server_pid=7),
        SamplerSources(gpu=None, host=host, tree_reader=lambda pid: tree, clock=clock),
    )
    drive(sampler, clock, 3)
    assert sampler.summary()["server_process"]["cpu_mean_pct"] == 100.0
    assert sampler.summary()["samples"] == 3
    assert sampler.warnings == [gone.args[0]]


def test_summary_before_stop_is_an_error() -> None:
    sampler = Sampler(sources=SamplerSources(gpu=None, host=ScriptedHost([None])))
    with pytest.raises(RuntimeError, match="after stop"):
        sampler.summary()
    with pytest.raises(ValueError, match="interval_s"):
        Sampler(SamplerConfig(interval_s=0))


class CountingHost:
    """Sets ``enough`` after ``n`` readings, so a test waits on an event, not a sleep."""

    def __init__(self, n: int) -> None:
        self.calls = 0
        self.n = n
        self.enough = threading.Event()

    def read(self) -> HostReading | None:
        self.calls += 1
        if self.calls > self.n:
            self.enough.set()
        return None if self.calls == 1 else HostReading((12.5, 37.5), 100, 200)


def test_background_thread_samples_until_stopped() -> None:
    host = CountingHost(3)
    with Sampler(SamplerConfig(interval_s=0.01), SamplerSources(gpu=None, host=host)) as sampler:
        assert host.enough.wait(timeout=30)
    summary = sampler.summary()
    assert summary["samples"] >= 3
    assert summary["samples"] == host.calls - 1  # every reading after the baseline is a sample
    assert summary["cpu"]["per_core_mean_pct"] == [12.5, 37.5]
    assert summary["sampler_cpu_ms_per_s"] >= 0.0


# -- psutil on a real child process ----------------------------------------------------

# The child touches 64 MiB so it is resident, starts a grandchild that lives until the
# child's stdin closes, says "ready", then burns 0.3 s of its own CPU time and says "burned".
CHILD = r"""
import subprocess, sys, time
block = bytearray(64 * 1024 * 1024)
for i in range(0, len(block), 4096):
    block[i] = 1
grandchild = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
print("ready", grandchild.pid, flush=True)
start = time.process_time()
while time.process_time() - start < 0.3:
    pass
print("burned", flush=True)
sys.stdin.read()
grandchild.stdin.close()
grandchild.wait()
"""


class Burner:
    """The child above, its grandchild's PID, and the pipes we talk to it through."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        word, grandchild = self.stdout.readline().split()
        assert word == "ready"
        self.pid, self.grandchild = self.proc.pid, int(grandchild)

    def wait_burned(self) -> None:
        assert self.stdout.readline().strip() == "burned"

    def end(self) -> None:
        """Closing stdin ends the child, and with it the grandchild (its stdin closes too)."""
        if not self.stdin.closed:
            self.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture
def burner() -> Iterator[Burner]:
    child = Burner()
    yield child
    child.end()
    child.stdout.close()


def test_tree_reader_sees_the_childs_cpu_rss_and_grandchild(burner: Burner) -> None:
    reader = PsutilTreeReader(burner.pid)
    t0 = time.perf_counter()
    assert reader.read(t0) is None  # baseline
    burner.wait_burned()
    t1 = time.perf_counter()
    reading = reader.read(t1)
    assert reading is not None
    assert reading.pids == {burner.pid, burner.grandchild}
    # The child burned >= 0.3 s of CPU between the reads; /proc counts in 10 ms ticks.
    cpu_s = reading.cpu_pct * (t1 - t0) / 100
    assert 0.29 <= cpu_s <= (t1 - t0) * CORES + 0.02
    # 64 MiB touched by the child, plus two interpreters well under 200 MiB together.
    assert 64 * MIB <= reading.rss_bytes <= 264 * MIB
    burner.end()
    with pytest.raises(ProcessGone):
        reader.read(t1 + 1)


def test_sampler_reports_a_real_server_process(burner: Burner) -> None:
    with Sampler(SamplerConfig(interval_s=0.05, server_pid=burner.pid), SamplerSources(gpu=None)) as sampler:
        burner.wait_burned()
    summary = sampler.summary()
    proc = summary["server_process"]
    assert proc["pid"] == burner.pid
    assert proc["processes_max"] == 2
    assert proc["cpu_max_pct"] > 0  # 0.3 s of CPU fell inside the window
    assert proc["rss_max_bytes"] >= 64 * MIB
    assert len(summary["cpu"]["per_core_mean_pct"]) == CORES
    assert 0 <= summary["cpu"]["busiest_core"] < CORES
    assert summary["memory"]["system_used_max_bytes"] <= summary["memory"]["system_total_bytes"]
    assert sampler.warnings == []


# -- machine info ------------------------------------------------------------------------


class StaticGpu:
    def devices(self) -> Sequence[GpuDevice]:
        return (GpuDevice(0, "NVIDIA H100 80GB HBM3", 85520809984),)

    def driver(self) -> GpuDriver:
        return GpuDriver("550.90.07", "12.4")

    def read(self, server_pids: Collection[int]) -> Sequence[GpuReading]:
        return (GpuReading(0),)


def test_machine_info_shape_with_and_without_gpu() -> None:
    info = machine_info(gpu=StaticGpu())
    assert info["gpu"] == {
        "count": 1,
        "names": ["NVIDIA H100 80GB HBM3"],
        "mem_total_bytes": [85520809984],
        "driver_version": "550.90.07",
        "cuda_driver_version": "12.4",
    }
    assert info["cpu_count_logical"] == psutil.cpu_count()
    assert info["memory_total_bytes"] == psutil.virtual_memory().total
    bare = machine_info(gpu=None)
    assert set(bare) == {"cpu_count_logical", "cpu_count_physical", "cpu_model", "memory_total_bytes"}
    json.dumps(info)
    real = machine_info()
    assert ("gpu" in real) == (probe_gpu()[0] is not None)
