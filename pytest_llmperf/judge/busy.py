"""A busy machine is an invalid measurement: never a regression, never a pass, never a baseline.

Reads the CPU split that telemetry recorded over a case's measured window
(``extra_info["llm"]["telemetry"]["load"]``, see ``telemetry.cpuload``) and
says why the machine was too busy for the figures to mean anything, or
``None``. The thresholds are named constants; each docstring says where its
number comes from, and ``benchmarks/gate_quality.py --part busy`` prints the
figures of quiet and loaded runs they are set between.

This module only decides: no I/O, no pytest.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

OTHERS_BUSY_CORES = 0.25
"""Other processes using this many cores, on a machine with no spare core, make a case invalid.

Quiet runs: on the project's idle 2-core VM the background (kernel threads,
the shell, the agent) is a few hundredths of a core; a CPU hog beside
llama-server takes 0.6-1.0 core (the server's own share fell from ~196% to
~100%, issue 14). A quarter of a core is ten times the quiet figure and a
quarter of the smallest hog, and it is what one of llama-server's two
spinning threads loses when it is preempted 25% of the time. Measured on
the idle 2-core VM (``gate_quality.py --part llama,busy``, 45 quiet and 4
hog sessions): others took at most 0.126 cores (median 0.034) in quiet
sessions and at least 1.000 with a hog per core, where all 12 hog cases
were invalid.
"""

SPARE_CORES = 0.5
"""Others only compete with the server when the machine has less than this many idle cores.

On a 64-core host a 1-core cron job beside a 2-thread server leaves 60
cores idle and costs the server nothing; on a 2-core host with llama-server
spinning on both, the idle figure is ~0.03 cores and anything else must take
a core away from it. Half a core separates the two with room on both sides.
"""

STEAL_BUSY_CORES = 0.1
"""Hypervisor steal above a tenth of a core: the VM lost CPU to a neighbour.

Steal is zero on a quiet, dedicated VM (it reads 0.00 on the project's
machine); any sustained steal means the server's threads were descheduled
by the host. A tenth of a core is above kernel accounting noise (1 tick in
10 at 100 Hz per core) and below what one noisy neighbour costs.
"""

FREQ_RATIO_MIN = 0.6
"""A CPU clock below 60% of its maximum over the window is throttled, not idle-clocked.

Under load a governor raises the clock to its all-core turbo, which is
within about 25% of the single-core maximum that cpufreq reports on server
CPUs; a mean below 60% under the load of a measurement is a thermal or
power limit. No machine here exposes cpufreq, so this figure is from vendor
specifications, not measured: no machine this project ran on exposes cpufreq.
"""


def _cores(value: float) -> str:
    return f"{value:.2g} cores" if abs(value - 1.0) > 0.05 else "1 core"


def busy_reasons(telemetry: Mapping[str, Any] | None) -> tuple[str, ...]:
    """Why the machine was too busy during this case; empty when it was not, or when unknown.

    ``telemetry`` is ``extra_info["llm"]["telemetry"]`` (or a run's
    ``extra["telemetry"]``). Figures that were not measured decide nothing:
    an attached endpoint has no server PID, so other processes cannot be
    told from the server, and only steal, frequency and throttling count.
    """
    cpu_load = (telemetry or {}).get("load")
    if not isinstance(cpu_load, Mapping):
        return ()
    reasons: list[str] = []
    others = cpu_load.get("others_cores_mean")
    idle = cpu_load.get("idle_cores_mean")
    if others is not None and idle is not None and others >= OTHERS_BUSY_CORES and idle < SPARE_CORES:
        server = cpu_load.get("server_cores_mean")
        threads = cpu_load.get("server_threads")
        got = ""
        if server is not None:
            of = f" of its {threads}" if threads else ""
            got = f"; the server got {server:.2g}{of} cores"
        reasons.append(
            f"machine busy: other processes used {_cores(others)} while {idle:.2g} of "
            f"{cpu_load.get('cores')} cores were idle{got}"
        )
    steal = cpu_load.get("steal_cores_mean")
    if steal is not None and steal >= STEAL_BUSY_CORES:
        reasons.append(f"machine busy: the hypervisor ran other VMs for {_cores(steal)} (CPU steal time)")
    freq = cpu_load.get("freq_ratio_mean")
    if freq is not None and freq < FREQ_RATIO_MIN:
        reasons.append(f"CPU throttled: the clock ran at {freq:.0%} of its maximum")
    events = cpu_load.get("throttle_events")
    if events:
        reasons.append(f"CPU throttled: {events} thermal throttle events during the case")
    return tuple(f"invalid measurement: {reason}; rerun on a quiet machine" for reason in reasons)


def is_busy(llm: Mapping[str, Any]) -> bool:
    """Whether a saved entry (``extra_info["llm"]``) was measured on a busy machine."""
    return bool(busy_reasons(llm.get("telemetry")))
