"""Who used the CPU: the server, the client, steal, or other processes (the "machine busy" evidence).

Exactly, through scripted readers and a fake clock; then for real, with a
child process that burns a known amount of CPU beside an idle "server".
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from pytest_llmperf.telemetry import Sampler, SamplerConfig, SamplerSources
from pytest_llmperf.telemetry.cpuload import PsutilClientReader, requested_threads, throttle_count
from pytest_llmperf.telemetry.host import HostReading, TreeReading, core_steal_percentages


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Scripted:
    """Hands out its readings in order, whatever the arguments."""

    def __init__(self, readings: Sequence[object]) -> None:
        self.readings = list(readings)

    def read(self, *_: object) -> object:
        return self.readings.pop(0)


@pytest.mark.parametrize(
    ("argv", "threads"),
    [
        (["llama-server", "-m", "x.gguf", "-t", "2", "-tb", "2", "--port", "8080"], 2),
        (["llama-server", "--threads", "4", "--threads-batch", "8"], 8),
        (["llama-server", "--threads=3"], 3),
        (["llama-server", "-t"], None),  # no value: says nothing
        (["python", "-m", "vllm.entrypoints.openai.api_server", "--model", "m"], None),
    ],
)
def test_threads_a_command_line_asks_for(argv: list[str], threads: int | None) -> None:
    assert requested_threads(argv) == threads


def test_steal_is_its_share_of_each_cores_ticks() -> None:
    def t(user: float, idle: float, steal: float) -> dict[str, float]:
        return {"user": user, "system": 0.0, "idle": idle, "iowait": 0.0, "steal": steal}

    before = [t(0, 0, 0), t(0, 0, 0)]
    after = [t(50, 30, 20), t(100, 0, 0)]
    assert core_steal_percentages(before, after) == (20.0, 0.0)
    assert core_steal_percentages([{"user": 1.0, "idle": 1.0}], [{"user": 2.0, "idle": 2.0}]) is None


def test_the_split_of_the_hosts_cpu_is_exact_with_scripted_readers() -> None:
    clock = Clock()
    host = Scripted([
        None,
        HostReading((80.0, 90.0), 1, 2, steal_pct=(0.0, 10.0)),  # busy 1.7 of which steal 0.1
        HostReading((100.0, 100.0), 1, 2, steal_pct=(0.0, 0.0)),  # busy 2.0
        HostReading((90.0, 70.0), 1, 2, steal_pct=(5.0, 5.0)),  # busy 1.6 of which steal 0.1
    ])  # fmt: skip
    tree = Scripted([
        None,
        TreeReading(frozenset({7}), 120.0, 1),
        TreeReading(frozenset({7}), 150.0, 1),
        TreeReading(frozenset({7}), 100.0, 1),
    ])  # fmt: skip
    client = Scripted([None, 0.1, 0.2, 0.3])
    sampler = Sampler(SamplerConfig(server_pid=7), SamplerSources(
        gpu=None, host=host, tree_reader=lambda pid: tree,  # type: ignore[arg-type,return-value]
        clock=clock, client_reader=lambda: client,  # type: ignore[arg-type,return-value]
        threads=lambda pid: 2, throttle=lambda: 4, freq=lambda: 0.9,
    ))  # fmt: skip
    sampler.start(background=False)
    for _ in range(3):
        clock.now += 0.1
        sampler.sample_now()
    sampler.stop()
    # Busy without steal: 1.6, 2.0, 1.5; others = busy - server - client:
    # 1.6 - 1.2 - 0.1, 2.0 - 1.5 - 0.2, 1.5 - 1.0 - 0.3.
    assert sampler.summary()["load"] == {
        "cores": 2,
        "samples": 3,
        "busy_cores_mean": 1.7,
        "steal_cores_mean": 0.067,
        "idle_cores_mean": 0.233,
        "client_cores_mean": 0.2,
        "server_cores_mean": 1.233,
        "others_cores_mean": 0.267,
        "others_cores_max": 0.3,
        "server_threads": 2,
        "freq_ratio_mean": 0.9,
        "throttle_events": 0,  # the counter read 4 at the start and 4 at the end
    }


def test_throttle_events_are_summed_over_cores_and_packages(tmp_path: Path) -> None:
    for core, counts in (("cpu0", ("3", "10")), ("cpu1", ("1", "10"))):
        folder = tmp_path / core / "thermal_throttle"
        folder.mkdir(parents=True)
        (folder / "core_throttle_count").write_text(counts[0] + "\n")
        (folder / "package_throttle_count").write_text(counts[1] + "\n")
    assert throttle_count(tmp_path) == 24
    assert throttle_count(tmp_path / "nowhere") is None


# A process that burns HOG_CPU_S of its own CPU time once told to, then says so.
HOG = r"""
import sys, time
sys.stdin.readline()
start = time.process_time()
while time.process_time() - start < float(sys.argv[1]):
    pass
print("burned", flush=True)
"""
HOG_CPU_S = 0.6


def test_a_real_hog_beside_an_idle_server_shows_as_other_processes() -> None:
    server = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    hog = subprocess.Popen(
        [sys.executable, "-c", HOG, str(HOG_CPU_S)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert hog.stdin is not None
    assert hog.stdout is not None
    assert server.stdin is not None
    try:
        with Sampler(
            SamplerConfig(interval_s=0.05, server_pid=server.pid), SamplerSources(gpu=None)
        ) as sampler:
            hog.stdin.write("go\n")
            hog.stdin.flush()
            assert hog.stdout.readline().strip() == "burned"
    finally:
        hog.stdin.close()
        hog.wait(timeout=60)
        hog.stdout.close()
        server.stdin.close()
        server.wait(timeout=60)
    summary = sampler.summary()
    load = summary["load"]
    # The hog's CPU seconds all fell inside the window, and it is neither the server nor us. Other
    # jobs on a shared machine only add to "others"; ticks and the last half-sample lose < 0.1 s.
    assert load["others_cores_mean"] * summary["duration_s"] >= HOG_CPU_S - 0.15
    assert load["server_cores_mean"] < 0.1  # the "server" slept on its stdin
    assert load["client_cores_mean"] < 0.5  # this process mostly waited on the hog's pipe
    assert "server_threads" not in load  # its command line names no threads


def test_the_client_reader_measures_this_process() -> None:
    reader = PsutilClientReader()
    assert reader.read(0.0) is None
    start = time.process_time()
    while time.process_time() - start < 0.2:
        pass
    cores = reader.read(1.0)  # 0.2 s of CPU over a pretend 1 s: 0.2 cores
    assert cores is not None
    assert 0.18 <= cores <= 0.5
