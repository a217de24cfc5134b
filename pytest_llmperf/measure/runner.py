"""One measured scenario, end to end: prompts, load, records, summary, validity.

``measure`` is the single call the plugin makes. It builds the prompts
(control plane, before any clock starts), runs the load on its own event
loop (uvloop when importable) in this process, or over client worker
processes (``ClientSettings.workers``, see ``workers``), hands every finished
record to ``on_record`` as it finishes, summarizes, and says why the
measurement cannot be trusted when that is so (``RunResult.invalid``):

* more than 5% of completed requests returned another output length than
  asked (or no usage to check it by), so per-token figures compare unlike
  runs;
* the client fell behind: event-loop lag p99 above ``LAG_LIMIT_MS`` (over
  every worker's samples), from at least ``LAG_LATE_MIN`` late samples.

``RunResult.extra["client"]`` says how the client ran: workers, connections
opened and requests sent again, and the CPU of every client process over the
measured phase (``client.ClientReport``). A server that dies mid-run yields
error records and a normal return. This module must not write files or
print; the plugin does that with the records.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import os
import secrets
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pytest_llmperf.measure import client, loadgen, prompts
from pytest_llmperf.measure.client import Target
from pytest_llmperf.measure.stats import summarize
from pytest_llmperf.records import Capabilities, RequestRecord, RunResult, Scenario, Summary

T = TypeVar("T")


@dataclass(frozen=True)
class ClientSettings:
    """How the client runs a measurement.

    ``workers`` processes share the streams (1: this process, as fast as it
    ever was); ``keep_alive=False`` opens a connection per request; ``cores``
    are the CPUs the client may use (the measuring thread, or worker k on
    ``cores[k % len(cores)]``), ``None`` for wherever the OS schedules it.
    """

    workers: int = 1
    keep_alive: bool = True
    cores: tuple[int, ...] | None = None


OUTPUT_MISS_LIMIT = 0.05
LAG_LIMIT_MS = 10.0
"""Event-loop lag (p99) above which the client counts as saturated.

Every stamp is taken in a loop callback, so a callback that runs X ms late
stamps X ms late. 10 ms is below 2% of the 0.5-2 s TTFTs typical of CPU and
loaded GPU servers, and a quarter of the TTFT error that the peer tools
showed at 64 streams (issue 3); the sampler's own noise from the loop's
millisecond timers is about 1 ms, far below it. A run above it has errors
that we cannot bound from below, so it is invalid rather than corrected.
"""

LAG_LATE_MIN = 2
"""A saturated client is late again and again; one late sample is a stall.

A short run has a few dozen lag samples, so its p99 is its largest sample,
and one descheduling of the client (on a 2-core machine running the
server, 10-ms scheduler slices) put a 4-stream run on the deterministic
server at lag p99 10.1 ms while its other 30-odd samples were 0.4-2 ms. A
saturated client (too many streams for one loop) lags on every busy turn;
two samples over the limit tell the two apart, and for runs of 200 samples
or more, the p99 over the limit already means at least two.
"""


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a fresh loop (uvloop when importable), in a thread if this
    one already runs a loop (asyncio.run cannot nest)."""
    try:
        import uvloop

        runner: Callable[[Coroutine[Any, Any, T]], T] = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return runner(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = runner(coro)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="llmperf-measure")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    result: T = box["value"]
    return result


def output_length_fix(caps: Capabilities) -> str:
    """What makes a server answer exactly the asked output length, for the server as the client sees it."""
    if caps.extra_body.get("ignore_eos"):
        return (
            "ignore_eos was sent and not honoured: this engine stops at the model's end of text; ask for "
            "output lengths the model reaches, or measure on an engine that honours ignore_eos (vLLM, "
            "llama-server)"
        )
    if caps.api.startswith("ollama"):
        return (
            "Ollama has no ignore_eos and stops at the model's end of text: ask for output lengths it reaches"
        )
    return (
        "where the engine honours ignore_eos (vLLM, llama-server, SGLang), add --llm-server-option "
        "ignore_eos=true"
    )


def invalid_reasons(
    summary: Summary, scenario: Scenario, load: loadgen.LoadResult, caps: Capabilities | None = None
) -> tuple[str, ...]:
    """Why this measurement cannot be trusted; empty when it can.

    The lag figures are ``load``'s: the samples of every client loop of the run and their distribution.
    ``caps`` (the server's, as the client sees them) name the fix for an output length not honoured.
    """
    reasons = []
    done = [r for r in load.records if r.ok and not r.warmup]
    misses = summary.output_length_misses
    if done and misses > OUTPUT_MISS_LIMIT * len(done):
        got = sorted({"no usage" if r.output_tokens is None else str(r.output_tokens) for r in done
                      if r.output_tokens != scenario.output_tokens})  # fmt: skip
        reasons.append(
            f"invalid measurement: {misses} of {len(done)} requests returned != {scenario.output_tokens} "
            f"output tokens (got {', '.join(got)}); the server did not honour the output length"
            + (f": {output_length_fix(caps)}" if caps is not None else "")
        )
    lag = load.loop_lag_ms
    late = sum(v > LAG_LIMIT_MS for v in load.lag_samples_ms)
    if lag is not None and lag.p99 > LAG_LIMIT_MS and late >= LAG_LATE_MIN:
        reasons.append(
            f"invalid measurement: client saturated, event-loop lag p99 {lag.p99:.1f} ms > "
            f"{LAG_LIMIT_MS:g} ms ({late} of {lag.count} samples late), so stamps were taken late; "
            "lower the concurrency or use a faster machine"
        )
    return tuple(reasons)


def prepare_requests(
    target: Target, scenario: Scenario, prompt_salt: str = "", *, keep_alive: bool = True
) -> tuple[list[client.Prepared], bool]:
    """Build every request of ``scenario`` (warm-up first), ready to send.

    Returns them and whether every prompt's length was checked with the
    server's tokenizer. Raises the file limit for the concurrency too.
    """
    total = scenario.warmup + scenario.requests
    built = prompts.build_prompts(target, scenario.input_tokens, total, scenario.seed, prompt_salt)
    client.raise_open_file_limit(scenario.concurrency + client.FILES_BESIDES_SOCKETS)
    tag = secrets.token_hex(4)
    prepared = [
        client.prepare(
            target,
            p.text,
            client.RequestSpec(
                request_id=f"{scenario.name}-{tag}-{i:05d}",
                scenario=scenario.name,
                input_tokens=scenario.input_tokens,
                max_tokens=scenario.output_tokens,
                warmup=i < scenario.warmup,
            ),
            keep_alive=keep_alive,
        )
        for i, p in enumerate(built)
    ]
    return prepared, all(p.tokens is not None for p in built)


def run_prepared(
    prepared: Sequence[client.Prepared],
    scenario: Scenario,
    on_record: Callable[[RequestRecord], None] | None = None,
    on_measured: Callable[[], None] | None = None,
    settings: ClientSettings | None = None,
) -> loadgen.LoadResult:
    """Run the load for requests already built (warm-up ones first); ``LoadResult.client`` says how."""
    settings = settings or ClientSettings()
    if settings.workers > 1 and scenario.concurrency > 1:
        from pytest_llmperf.measure import workers

        pool = workers.pool(settings.workers)
        pool.pin(settings.cores)
        try:
            load = pool.run(
                prepared,
                scenario,
                keep_alive=settings.keep_alive,
                on_record=on_record,
                on_measured=on_measured,
            )
        except BaseException:
            workers.close_pool()  # an interrupted or broken run: its workers may still be sending
            raise
        assert load.client is not None
        return dataclasses.replace(load, client=dataclasses.replace(load.client, cores=settings.cores))
    return _run_here(prepared, scenario, on_record, on_measured, settings)


def _run_here(
    prepared: Sequence[client.Prepared],
    scenario: Scenario,
    on_record: Callable[[RequestRecord], None] | None,
    on_measured: Callable[[], None] | None,
    settings: ClientSettings,
) -> loadgen.LoadResult:
    """The load on one event loop in this process."""
    cpu_from: list[float] = []

    def measured() -> None:
        if on_measured is not None:
            on_measured()
        cpu_from.append(time.process_time())  # every thread of this process: loop, parser, telemetry

    async def run() -> loadgen.LoadResult:
        connections = client.Connections(keep_alive=settings.keep_alive)

        async def send(index: int, scheduled_ns: int) -> client.Exchange:
            req = prepared[index]
            return await connections.exchange(req, scheduled_ns=scheduled_ns, timeout_s=scenario.timeout_s)

        async def connect(streams: int) -> None:
            if prepared:
                await connections.preconnect(prepared[-1], streams, scenario.timeout_s)

        with _pinned(settings.cores):
            try:
                load = await loadgen.run_load(
                    send, scenario, on_record, measured, control=loadgen.Control(connect=connect)
                )
            finally:
                connections.close()
        cpu_s = time.process_time() - cpu_from[0] if cpu_from else None
        report = client.ClientReport(1, settings.keep_alive, connections.stats, cpu_s, settings.cores)
        return dataclasses.replace(load, client=report)

    return run_measuring(run())


def run_measuring(coro: Coroutine[Any, Any, T]) -> T:
    """Run a measuring loop (``_run``) with the garbage collector paused.

    The collector would pause the loop mid-stream (tens of thousands of
    small tuples per run); nothing here forms cycles, so it can wait.
    """
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _run(coro)
    finally:
        if gc_was_enabled:
            gc.enable()


def summarize_run(records: Sequence[RequestRecord], scenario: Scenario) -> Summary:
    """The run's summary, with the first measured request's error (the line a failure names)."""
    summary = summarize(records, scenario)
    first_error = next((r.error for r in records if not r.warmup and r.error), None)
    return dataclasses.replace(summary, first_error=first_error)


@contextlib.contextmanager
def _pinned(cores: tuple[int, ...] | None) -> Iterator[None]:
    """Keep the calling thread (the measuring loop; threads it starts inherit it) on ``cores``."""
    if not cores or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, set(cores))
    except OSError:
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, before)


def client_extra(load: loadgen.LoadResult) -> dict[str, object]:
    """``extra["client"]``: how the client ran the load (workers, connections, cores, CPU per token)."""
    if load.client is None:
        return {}
    tokens = sum(r.output_tokens or 0 for r in load.records if not r.warmup and r.ok)
    return {"client": load.client.as_json(tokens)}


@dataclass(frozen=True)
class Subject:
    """The server under test: where its requests go, and the model and backend its result is filed under."""

    target: Target
    model: str
    backend: str


def measure(
    subject: Subject,
    scenario: Scenario,
    *,
    on_record: Callable[[RequestRecord], None] | None = None,
    on_measured: Callable[[], None] | None = None,
    prompt_salt: str = "",
    client_settings: ClientSettings | None = None,
) -> RunResult:
    """Measure ``scenario`` against ``subject`` and return every record and the summary.

    ``on_record`` gets each record as it ends (warm-up ones too); ``on_measured``
    is called once when warm-up is over and the measured requests begin.
    ``prompt_salt`` keys the prompts' RNG (see ``prompts.build_prompts``).
    """
    settings = client_settings or ClientSettings()
    prepared, checked = prepare_requests(
        subject.target, scenario, prompt_salt, keep_alive=settings.keep_alive
    )
    load = run_prepared(prepared, scenario, on_record, on_measured, settings)
    summary = summarize_run(load.records, scenario)
    invalid = invalid_reasons(summary, scenario, load, subject.target.capabilities)
    return run_result(subject, scenario, load, summary, invalid, {"prompt_tokens_checked": checked})


def run_result(
    subject: Subject,
    scenario: Scenario,
    load: loadgen.LoadResult,
    summary: Summary,
    invalid: Sequence[str],
    extra: Mapping[str, object],
) -> RunResult:
    """The ``RunResult`` of a finished load: records, summary, validity, and what the client says of it."""
    return RunResult(
        model=subject.model,
        backend=subject.backend,
        scenario=scenario,
        records=load.records,
        summary=summary,
        invalid=tuple(invalid),
        loop_lag_ms=load.loop_lag_ms,
        extra={
            "stopped_early": load.stopped_early,
            "lag_limit_ms": LAG_LIMIT_MS,
            **extra,
            **client_extra(load),
        },
    )
