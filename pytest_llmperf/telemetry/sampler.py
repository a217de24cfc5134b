"""The telemetry sampler: a background thread that reads CPU, memory, GPU and the server during a scenario.

Use it as a context manager around the measured part only (after warm-up)::

    with Sampler(SamplerConfig(interval_s=0.1, server_pid=server.pid, metrics_url=url)) as sampler:
        result = run_scenario(...)
    extra_info["llm"]["telemetry"] = sampler.summary()

Entering takes the baselines and the "before" ``/metrics`` scrape on the
caller's thread, so the scenario starts only after them; leaving takes the
last sample and the "after" scrape. Between the two, a daemon thread reads
every ``interval_s`` (default 10 Hz) and keeps running aggregates, so the
measuring event loop never waits on telemetry. Its CPU cost is measured
with ``time.thread_time`` around each sample and reported as
``sampler_cpu_ms_per_s`` (CPU ms per wall second; 10 means 1 % of a core).
The thread shares the GIL with the event loop, so each read delays the loop
by up to its own length; ``benchmarks/sampler_overhead.py`` measures both.
Gauges on ``/metrics`` are polled at ``metrics_interval_s`` (1 s), slower
than the rest, because the server renders that page on its serving path.

Each sample also splits the host's CPU time between the server, this
process (the client) and everything else (CPU load, ``telemetry.cpuload``;
its summary key is ``load``), the evidence a
"machine busy" verdict rests on.

Every source fails alone: an exception from one becomes one entry in
``warnings`` and that source stops, the others go on, and the run is never
failed by telemetry. The sampler must not sleep on the caller's thread, and
must not write any file (the plugin writes ``series()`` if asked).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from pytest_llmperf.errors import ProcessGone
from pytest_llmperf.telemetry.cpuload import (
    ClientReader,
    CpuLoadAggregate,
    PsutilClientReader,
    freq_ratio,
    server_threads,
    throttle_count,
)
from pytest_llmperf.telemetry.gpu import GpuAggregate, GpuReader
from pytest_llmperf.telemetry.host import (
    HostReader,
    PsutilHostReader,
    PsutilTreeReader,
    TreeReader,
)
from pytest_llmperf.telemetry.nvml import DEFAULT_GPU, DefaultGpu, default_probe
from pytest_llmperf.telemetry.running import RunningStat
from pytest_llmperf.telemetry.servermetrics import Fetch, MetricsWatcher, OllamaWatcher, http_get_text
from pytest_llmperf.telemetry.shapes import CpuSummary, SeriesPoint, TelemetrySummary


@dataclass(frozen=True)
class SamplerConfig:
    """What the sampler watches and how often.

    ``server_pid`` is the server's root process (its tree is read, and the
    GPU processes are matched to it); ``metrics_url`` its Prometheus page,
    polled every ``metrics_interval_s``; ``ollama_ps_url`` Ollama's
    ``/api/ps``; ``keep_series`` keeps every sample for ``series()``.
    """

    interval_s: float = 0.1
    server_pid: int | None = None
    metrics_url: str | None = None
    ollama_ps_url: str | None = None
    keep_series: bool = False
    metrics_interval_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {self.interval_s!r}")


@dataclass(frozen=True)
class SamplerSources:
    """Where the readings come from: the machine's own readers and clocks unless replaced.

    ``gpu=None`` reads no GPU (``DEFAULT_GPU``: the session's NVML probe);
    ``host=None`` is a fresh ``PsutilHostReader``; ``tree_reader`` and
    ``client_reader`` build the server's and the client's CPU readers
    (``client_reader=None``: the client's share is not read); ``threads``,
    ``throttle`` and ``freq`` feed the CPU load (``telemetry.cpuload``).
    Tests replace them with scripted readers and a fake clock.
    """

    gpu: GpuReader | DefaultGpu | None = DEFAULT_GPU
    host: HostReader | None = None
    tree_reader: Callable[[int], TreeReader] = PsutilTreeReader
    fetch: Fetch = http_get_text
    clock: Callable[[], float] = time.perf_counter
    thread_clock: Callable[[], float] = time.thread_time
    client_reader: Callable[[], ClientReader] | None = PsutilClientReader
    threads: Callable[[int], int | None] = server_threads
    throttle: Callable[[], int | None] = throttle_count
    freq: Callable[[], float | None] = freq_ratio


class Sampler:
    """Samples host, server process tree, GPUs and server metrics while a scenario runs."""

    def __init__(self, config: SamplerConfig | None = None, sources: SamplerSources | None = None) -> None:
        config = config or SamplerConfig()
        sources = sources or SamplerSources()
        self.config = config
        gpu = sources.gpu
        self._from_probe = isinstance(gpu, DefaultGpu)
        self._gpu: GpuReader | None = default_probe().get()[0] if isinstance(gpu, DefaultGpu) else gpu
        self._host: HostReader | None = sources.host if sources.host is not None else PsutilHostReader()
        self._tree_factory = sources.tree_reader
        self._tree: TreeReader | None = None
        self._metrics = MetricsWatcher(config.metrics_url, sources.fetch) if config.metrics_url else None
        self._ollama = OllamaWatcher(config.ollama_ps_url, sources.fetch) if config.ollama_ps_url else None
        self._clock = sources.clock
        self._thread_clock = sources.thread_clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warnings: list[str] = []
        self._series: list[SeriesPoint] = []
        self._t0 = self._t_end = self._last_sample = self._last_poll = 0.0
        self._samples = 0
        self._cpu_s = 0.0
        self._cores: list[RunningStat] = []
        self._cpu_total = RunningStat()
        self._mem = RunningStat()
        self._mem_total: int | None = None
        self._tree_cpu = RunningStat()
        self._tree_rss = RunningStat()
        self._tree_procs = 0
        self._pids: frozenset[int] = (
            frozenset({config.server_pid}) if config.server_pid is not None else frozenset()
        )
        self._gpus: list[GpuAggregate] = []
        self._summary: TelemetrySummary | None = None
        self._started = False
        # "Machine busy" evidence: who used the CPU (telemetry.cpuload).
        self._client_factory = sources.client_reader
        self._client: ClientReader | None = None
        self._threads = sources.threads
        self._cpu_load = CpuLoadAggregate(throttle=sources.throttle, freq=sources.freq)
        self._host_pct: tuple[tuple[float, ...], tuple[float, ...] | None] | None = None
        self._server_cores: float | None = None
        self._cpu_load_on = True

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> Sampler:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def started(self) -> bool:
        return self._started

    def start(self, *, background: bool = True) -> None:
        """Take the baselines, scrape ``/metrics`` once, then sample in a thread.

        ``background=False`` starts no thread: the caller drives
        ``sample_now()`` itself (tests with a fake clock do).
        """
        self._started = True
        self._t0 = self._last_sample = self._last_poll = self._clock()
        self._guard("host", self._baseline_host)
        if self.config.server_pid is not None:
            self._guard("server process", self._baseline_tree)
        if self._client_factory is not None:
            self._guard("client process", self._baseline_client)
        self._guard("load", self._baseline_cpu_load)
        if self._gpu is not None:
            self._guard("gpu", self._baseline_gpu)
        if self._metrics is not None:
            self._metrics.begin()
        if self._ollama is not None:
            self._ollama.poll()
        if background:
            self._thread = threading.Thread(target=self._loop, name="llmperf-telemetry", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Take the last sample, stop the thread, scrape ``/metrics`` again. Idempotent."""
        if self._summary is not None:
            return
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        self._t_end = self._clock()
        self._guard("load", self._cpu_load.finish)
        server_metrics = self._metrics.finish() if self._metrics is not None else None
        if self._ollama is not None:
            self._ollama.poll()
        with self._lock:
            self._summary = self._build_summary()
            if server_metrics is not None:
                self._summary["server_metrics"] = server_metrics
            ollama = self._ollama.summary() if self._ollama is not None else None
            if ollama is not None:
                self._summary["ollama"] = ollama

    def _loop(self) -> None:
        due = self._t0 + self.config.interval_s
        while not self._stop.wait(max(0.0, due - self._clock())):
            self.sample_now()
            due += self.config.interval_s
            now = self._clock()
            if due < now:
                # A slow read (a scrape, a busy machine) made us late: skip the missed
                # ticks rather than burst to catch up, which would load the machine more.
                due = now + self.config.interval_s
        # Close the window at stop(); a sliver shorter than half a tick would give
        # per-core figures of 0 or 100 from kernel tick granularity, so it only
        # updates the energy counter.
        if self._clock() - self._last_sample >= self.config.interval_s / 2:
            self.sample_now()
        elif self._gpu is not None:
            self._guard("gpu", self._energy_only)

    # -- sampling ----------------------------------------------------------

    def sample_now(self) -> None:
        """Read every source once and fold the readings into the aggregates."""
        cpu_start = self._thread_clock()
        with self._lock:
            now = self._clock()
            point: SeriesPoint = {"t_s": round(now - self._t0, 4)}
            self._host_pct, self._server_cores = None, None
            if self._host is not None:
                self._guard("host", lambda: self._sample_host(point))
            if self._tree is not None:
                self._guard("server process", lambda: self._sample_tree(now, point))
            if self._cpu_load_on:
                self._guard("load", lambda: self._sample_cpu_load(now))
            if self._gpu is not None:
                self._guard("gpu", lambda: self._sample_gpu(point))
            if now - self._last_poll >= self.config.metrics_interval_s:
                self._last_poll = now
                if self._metrics is not None:
                    gauges = self._metrics.poll()
                    if gauges:
                        point["metrics"] = gauges
                if self._ollama is not None:
                    self._ollama.poll()
            self._samples += 1
            self._last_sample = now
            if self.config.keep_series:
                self._series.append(point)
            self._cpu_s += self._thread_clock() - cpu_start

    def _guard(self, source: str, action: Callable[[], None]) -> None:
        try:
            action()
        except Exception as exc:  # telemetry must never fail the run: drop the source, say why
            self._drop(source, exc)

    def _drop(self, source: str, exc: Exception) -> None:
        if isinstance(exc, ProcessGone):
            message = str(exc)
        else:
            message = f"{source} telemetry stopped: {type(exc).__name__}: {exc}"
        self._warnings.append(message)
        if source == "host":
            self._host = None
        elif source == "server process":
            self._tree = None
        elif source == "client process":
            self._client = None
        elif source == "load":
            self._cpu_load_on = False
        elif source == "gpu":
            self._gpu = None
            if self._from_probe:
                default_probe().mark_failed()

    def _baseline_host(self) -> None:
        assert self._host is not None
        self._host.read()

    def _baseline_tree(self) -> None:
        assert self.config.server_pid is not None
        self._tree = self._tree_factory(self.config.server_pid)
        self._tree.read(self._t0)

    def _baseline_client(self) -> None:
        assert self._client_factory is not None
        self._client = self._client_factory()
        self._client.read(self._t0)

    def _baseline_cpu_load(self) -> None:
        if self.config.server_pid is not None:
            self._cpu_load.threads = self._threads(self.config.server_pid)
        self._cpu_load.begin()

    def _sample_cpu_load(self, now: float) -> None:
        client = self._client.read(now) if self._client is not None else None
        if self._host_pct is not None:
            per_core, steal = self._host_pct
            self._cpu_load.add(per_core, steal, client, self._server_cores)

    def _baseline_gpu(self) -> None:
        assert self._gpu is not None
        self._gpus = [GpuAggregate(d) for d in self._gpu.devices()]
        for agg, reading in zip(self._gpus, self._gpu.read(self._pids), strict=True):
            agg.add(reading, baseline=True)

    def _energy_only(self) -> None:
        assert self._gpu is not None
        for agg, reading in zip(self._gpus, self._gpu.read(self._pids), strict=True):
            agg.add_energy(reading.energy_mj)

    def _sample_host(self, point: SeriesPoint) -> None:
        assert self._host is not None
        reading = self._host.read()
        if reading is None:
            return
        if len(self._cores) != len(reading.per_core_pct):
            if self._cores:
                raise RuntimeError("the number of CPU cores changed during the run")
            self._cores = [RunningStat() for _ in reading.per_core_pct]
        for stat, pct in zip(self._cores, reading.per_core_pct, strict=True):
            stat.add(pct)
        self._cpu_total.add(sum(reading.per_core_pct) / len(reading.per_core_pct))
        self._host_pct = (reading.per_core_pct, reading.steal_pct)
        self._mem.add(reading.mem_used_bytes)
        self._mem_total = reading.mem_total_bytes
        point["cpu_pct"] = [round(p, 1) for p in reading.per_core_pct]
        point["mem_used_bytes"] = reading.mem_used_bytes

    def _sample_tree(self, now: float, point: SeriesPoint) -> None:
        assert self._tree is not None
        reading = self._tree.read(now)
        if reading is None:
            return
        self._pids = reading.pids
        self._tree_cpu.add(reading.cpu_pct)
        self._server_cores = reading.cpu_pct / 100.0
        self._tree_rss.add(reading.rss_bytes)
        self._tree_procs = max(self._tree_procs, len(reading.pids))
        point["server_cpu_pct"] = round(reading.cpu_pct, 1)
        point["server_rss_bytes"] = reading.rss_bytes
        point["server_pids"] = len(reading.pids)

    def _sample_gpu(self, point: SeriesPoint) -> None:
        assert self._gpu is not None
        readings = self._gpu.read(self._pids)
        for agg, reading in zip(self._gpus, readings, strict=True):
            agg.add(reading)
        point["gpu"] = [r.as_point() for r in readings]

    # -- results -----------------------------------------------------------

    @property
    def warnings(self) -> list[str]:
        """What went wrong, each message once (the no-GPU warning is ``probe_gpu``'s, not here)."""
        found = list(self._warnings)
        for watcher in (self._metrics, self._ollama):
            if watcher is not None:
                found.extend(watcher.warnings)
        return list(dict.fromkeys(found))

    def summary(self) -> TelemetrySummary:
        """The JSON-ready summary (see ``shapes.TelemetrySummary``); call after the ``with`` block."""
        if self._summary is None:
            raise RuntimeError("Sampler.summary() is available after stop() (the end of the with block)")
        return self._summary

    def series(self) -> list[SeriesPoint]:
        """Every sample, when ``keep_series=True``; empty otherwise."""
        with self._lock:
            return list(self._series)

    def _build_summary(self) -> TelemetrySummary:
        duration = max(self._t_end - self._t0, 0.0)
        out: TelemetrySummary = {
            "interval_s": self.config.interval_s,
            "samples": self._samples,
            "duration_s": round(duration, 3),
            "sampler_cpu_ms_per_s": round(1000.0 * self._cpu_s / duration, 3) if duration > 0 else 0.0,
        }
        cpu = self._cpu_summary()
        if cpu is not None:
            out["cpu"] = cpu
        if self._mem.count and self._mem_total is not None:
            out["memory"] = {
                "system_total_bytes": self._mem_total,
                "system_used_mean_bytes": int(self._mem.total / self._mem.count),
                "system_used_max_bytes": int(self._mem.max),
            }
        if self.config.server_pid is not None and self._tree_cpu.count:
            out["server_process"] = {
                "pid": self.config.server_pid,
                "processes_max": self._tree_procs,
                "cpu_mean_pct": round(self._tree_cpu.total / self._tree_cpu.count, 2),
                "cpu_max_pct": round(self._tree_cpu.max, 2),
                "rss_mean_bytes": int(self._tree_rss.total / self._tree_rss.count),
                "rss_max_bytes": int(self._tree_rss.max),
            }
        if self._gpus:
            out["gpu"] = [agg.summary() for agg in self._gpus]
        load = self._cpu_load.summary()
        if load is not None:
            out["load"] = load
        return out

    def _cpu_summary(self) -> CpuSummary | None:
        if not self._cores or not self._cpu_total.count:
            return None
        means = [stat.total / stat.count if stat.count else 0.0 for stat in self._cores]
        maxima = [stat.max if stat.count else 0.0 for stat in self._cores]
        busiest = max(range(len(means)), key=means.__getitem__)
        return {
            "cores": len(means),
            "per_core_mean_pct": [round(m, 2) for m in means],
            "per_core_max_pct": [round(m, 2) for m in maxima],
            "busiest_core": busiest,
            "busiest_core_mean_pct": round(means[busiest], 2),
            "total_mean_pct": round(self._cpu_total.total / self._cpu_total.count, 2),
            "total_max_pct": round(self._cpu_total.max, 2),
        }
