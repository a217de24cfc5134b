"""Cores for the server and the client, GPUs for xdist workers: exact plans, and a real pinned process."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from pytest_llmperf.errors import ConfigError
from pytest_llmperf.servers import pinning, vllm
from pytest_llmperf.servers.base import LaunchRequest, ManagedProcess
from pytest_llmperf.servers.models import ModelSpec
from pytest_llmperf.servers.pinning import CpuPlan, plan, worker_gpus, xdist_position, xdist_slice


@pytest.mark.parametrize(
    ("cores", "workers", "threads", "expected"),
    [
        # The default: one client core, the server the rest, one thread per core of its own.
        ((0, 1), 1, None, CpuPlan((0,), (1,), 1, "server on cores 0, client on 1")),
        ((0, 1, 2, 3), 1, None, CpuPlan((0, 1, 2), (3,), 1, "server on cores 0-2, client on 3")),
        ((0, 1, 2, 3), 2, None, CpuPlan((0, 1), (2, 3), 2, "server on cores 0,1, client on 2,3")),
        # More workers than can have a core: the server keeps one, the workers share the rest.
        ((0, 1), 4, None, CpuPlan((0,), (1,), 4, "server on cores 0, client on 1")),
        # auto: the cores the server leaves, and it takes all but one unless told fewer threads.
        ((0, 1, 2, 3), None, None, CpuPlan((0, 1, 2), (3,), 1, "server on cores 0-2, client on 3")),
        (
            (0, 1, 2, 3, 4, 5, 6, 7),
            None,
            4,
            CpuPlan((0, 1, 2, 3), (4, 5, 6, 7), 4, "server on cores 0-3, client on 4-7"),
        ),
    ],
)
def test_a_server_on_this_hosts_cpus_gets_cores_of_its_own(
    cores: tuple[int, ...], workers: int | None, threads: int | None, expected: CpuPlan
) -> None:
    got = plan(cores, workers=workers, server="host-cpu", server_threads=threads)
    assert got == expected
    assert got.server_threads == len(expected.server_cores or ())


def test_no_pinning_when_it_cannot_or_should_not_happen() -> None:
    assert plan((3,), workers=1, server="host-cpu") == CpuPlan(
        None, None, 1, "not pinned: 1 core cannot be split; the server and the client share the cores"
    )
    assert plan((0, 1), workers=None, server="host-cpu", pinning=False) == CpuPlan(
        None, None, 1, "not pinned: pinning is off; the server and the client share the cores"
    )
    # Not ours, or not on these cores: auto is every core, or what a GPU server leaves.
    assert plan(range(8), workers=None, server="elsewhere").workers == 8
    assert plan(range(8), workers=None, server="gpu").workers == 6
    assert plan(range(2), workers=None, server="gpu").workers == 1
    assert plan(range(8), workers=3, server="gpu") == CpuPlan(
        None, None, 3, "not pinned: a GPU server computes off these cores"
    )


def test_the_plan_is_recorded_as_json() -> None:
    assert plan((0, 1), workers=1, server="host-cpu").as_json() == {
        "server_cores": [0],
        "client_cores": [1],
        "server_threads": 1,
        "note": "server on cores 0, client on 1",
    }


def test_xdist_workers_take_contiguous_slices() -> None:
    assert [xdist_slice(range(8), i, 3) for i in range(3)] == [(0, 1, 2), (3, 4, 5), (6, 7)]
    assert [xdist_slice([0, 1], i, 2) for i in range(2)] == [(0,), (1,)]
    assert [xdist_slice([0, 1], i, 3) for i in range(3)] == [(0,), (1,), (0,)]  # more workers than cores
    assert xdist_position({"PYTEST_XDIST_WORKER": "gw2", "PYTEST_XDIST_WORKER_COUNT": "4"}) == (2, 4)
    assert xdist_position({}) is None
    cores = pinning.session_cores({"PYTEST_XDIST_WORKER": "gw0", "PYTEST_XDIST_WORKER_COUNT": "1"})
    assert cores == tuple(sorted(os.sched_getaffinity(0)))


def test_gpus_per_xdist_worker() -> None:
    visible = ["0", "1", "2", "3"]
    assert [worker_gpus(2, i, 2, visible) for i in range(2)] == [("0", "1"), ("2", "3")]
    assert worker_gpus(1, 2, 4, ["4", "5", "6", "7"]) == ("6",)
    with pytest.raises(ConfigError) as info:
        worker_gpus(2, 0, 3, visible)
    assert str(info.value) == (
        "--llm-gpus-per-worker 2 with 3 pytest-xdist workers needs 6 GPUs, but 4 are visible; "
        "use -n 2 or fewer GPUs per worker"
    )


def test_a_started_server_runs_on_its_cores_and_so_do_its_children(tmp_path: Path) -> None:
    core = max(os.sched_getaffinity(0))
    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(30)\n"
    )
    proc = ManagedProcess([sys.executable, "-c", script], log_path=tmp_path / "p.log", cpu_cores=[core])
    try:
        deadline = time.monotonic() + 20
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        child = int(pid_file.read_text())
        assert os.sched_getaffinity(proc.pid) == {core}
        assert os.sched_getaffinity(child) == {core}
    finally:
        proc.stop()


def test_vllm_on_cpu_binds_its_openmp_threads_to_the_server_cores(tmp_path: Path) -> None:
    spec = ModelSpec(name="m", vllm="org/m", context=4096)

    def env(
        cores: tuple[int, ...] | None, options: dict[str, str] | None = None, gpu: bool = False
    ) -> object:
        request = LaunchRequest(model=spec, max_concurrency=2, max_context=512, log_dir=tmp_path,
                                cpu_cores=cores, options=options or {})  # fmt: skip
        return vllm.plan(request, ["python", "-m", "x"], port=1, on_gpu=gpu, cache_dir=tmp_path).env.get(
            "VLLM_CPU_OMP_THREADS_BIND"
        )

    assert env((0, 1, 2)) == "0,1,2"
    assert env(None) is None
    assert env((0,), gpu=True) is None
    assert env((0, 1), {"tensor_parallel_size": "2"}) is None  # one list per rank: left to vLLM's own binding
