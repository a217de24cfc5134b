"""One measured scenario, end to end: prompts, load, records, summary, validity.

``measure`` is the single call the plugin makes. It builds the prompts
(control plane, before any clock starts), runs the load on its own event
loop (uvloop when importable), hands every finished record to ``on_record``
as it finishes, summarizes, and says why the measurement cannot be trusted
when that is so (``RunResult.invalid``):

* more than 5% of completed requests returned another output length than
  asked (or no usage to check it by), so per-token figures compare unlike
  runs;
* the client fell behind: event-loop lag p99 above ``LAG_LIMIT_MS``.

A server that dies mid-run yields error records and a normal return. This
module must not write files or print; the plugin does that with the records.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import secrets
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from pytest_llmperf.measure import client, loadgen, prompts
from pytest_llmperf.measure.client import Target
from pytest_llmperf.measure.stats import summarize
from pytest_llmperf.records import RequestRecord, RunResult, Scenario, Summary

T = TypeVar("T")

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


def invalid_reasons(
    summary: Summary, records: tuple[RequestRecord, ...], scenario: Scenario, lag_p99_ms: float | None
) -> tuple[str, ...]:
    """Why this measurement cannot be trusted; empty when it can."""
    reasons = []
    done = [r for r in records if r.ok and not r.warmup]
    misses = summary.output_length_misses
    if done and misses > OUTPUT_MISS_LIMIT * len(done):
        got = sorted({"no usage" if r.output_tokens is None else str(r.output_tokens) for r in done
                      if r.output_tokens != scenario.output_tokens})  # fmt: skip
        reasons.append(
            f"invalid measurement: {misses} of {len(done)} requests returned != {scenario.output_tokens} "
            f"output tokens (got {', '.join(got)}); the server did not honour the output length"
        )
    if lag_p99_ms is not None and lag_p99_ms > LAG_LIMIT_MS:
        reasons.append(
            f"invalid measurement: client saturated, event-loop lag p99 {lag_p99_ms:.1f} ms > "
            f"{LAG_LIMIT_MS:g} ms, so stamps were taken late; lower the concurrency or use a faster machine"
        )
    return tuple(reasons)


def prepare_requests(
    target: Target, scenario: Scenario, prompt_salt: str = ""
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
            request_id=f"{scenario.name}-{tag}-{i:05d}",
            scenario=scenario.name,
            input_tokens=scenario.input_tokens,
            max_tokens=scenario.output_tokens,
            warmup=i < scenario.warmup,
        )
        for i, p in enumerate(built)
    ]
    return prepared, all(p.tokens is not None for p in built)


def run_prepared(
    prepared: Sequence[client.Prepared],
    scenario: Scenario,
    on_record: Callable[[RequestRecord], None] | None = None,
    on_measured: Callable[[], None] | None = None,
) -> loadgen.LoadResult:
    """Run the load for requests already built (warm-up ones first) on a fresh loop."""

    async def send(index: int, scheduled_ns: int) -> client.Exchange:
        return await client.exchange(prepared[index], scheduled_ns=scheduled_ns, timeout_s=scenario.timeout_s)

    # The collector would pause the loop mid-stream (tens of thousands of
    # small tuples per run); nothing here forms cycles, so it can wait.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _run(loadgen.run_load(send, scenario, on_record, on_measured))
    finally:
        if gc_was_enabled:
            gc.enable()


def measure(
    target: Target,
    scenario: Scenario,
    *,
    model: str,
    backend: str,
    on_record: Callable[[RequestRecord], None] | None = None,
    on_measured: Callable[[], None] | None = None,
    prompt_salt: str = "",
) -> RunResult:
    """Measure ``scenario`` against ``target`` and return every record and the summary.

    ``on_record`` gets each record as it ends (warm-up ones too); ``on_measured``
    is called once when warm-up is over and the measured requests begin.
    ``prompt_salt`` keys the prompts' RNG (see ``prompts.build_prompts``).
    """
    prepared, checked = prepare_requests(target, scenario, prompt_salt)
    load = run_prepared(prepared, scenario, on_record, on_measured)
    summary = summarize(load.records, scenario)
    first_error = next((r.error for r in load.records if not r.warmup and r.error), None)
    summary = dataclasses.replace(summary, first_error=first_error)
    lag = load.loop_lag_ms
    extra: dict[str, object] = {
        "stopped_early": load.stopped_early,
        "prompt_tokens_checked": checked,
        "lag_limit_ms": LAG_LIMIT_MS,
    }
    return RunResult(
        model=model,
        backend=backend,
        scenario=scenario,
        records=load.records,
        summary=summary,
        invalid=invalid_reasons(summary, load.records, scenario, lag.p99 if lag else None),
        loop_lag_ms=lag,
        extra=extra,
    )
