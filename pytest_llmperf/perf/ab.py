"""An A/B case: baseline and candidate measured in interleaved blocks, in one test, one entry.

Each of ``blocks`` blocks measures both sides back to back, in ``AB`` or
``BA`` order (``judge.paired.orders``: alternating from a seeded start), each
side with a warm-up request of its own, through its own ``Measurer``: both
servers stay up and only the load alternates. A block whose side could not
be trusted (``untrusted``: a busy machine, a saturated client, an output
length not honoured, a failed request) is dropped and counted; the verdict
reads the per-block ratios (``judge.paired``). The test's entry carries the
candidate's requests (its figures are the candidate's), with both sides and
every block under ``extra["ab"]``; a server that dies records what was
measured first, then fails the test as any run does.
"""

from __future__ import annotations

import dataclasses
import math
import time

from pytest_llmperf.judge import paired, verdict
from pytest_llmperf.judge.paired import Block
from pytest_llmperf.measure import runner, stats
from pytest_llmperf.perf.measurer import Ask, Measurement, Measurer, Point
from pytest_llmperf.records import HardwareMode, RunResult, Scenario, Slo

SIDES = {"A": "baseline", "B": "candidate"}


def block_scenario(scenario: Scenario, blocks: int) -> Scenario:
    """One side's share of a block: the case's requests spread over the blocks, at least one wave.

    Each side warms up again in every block (one request, when the case warms up at all): the other
    side ran on the same cores in between, so caches and the server's own state may have gone cold.
    """
    per_block = max(scenario.concurrency, math.ceil(scenario.requests / blocks))
    return dataclasses.replace(
        scenario,
        requests=per_block,
        warmup=min(scenario.warmup, scenario.concurrency, 1),
        adaptive=False,
        min_requests=per_block,
        duration_s=None,
    )


def untrusted(result: RunResult, busy: HardwareMode) -> str | None:
    """Why a side's block cannot count (``None``: it can): invalid, or a request that failed."""
    judged = verdict.judge(result, None, None, rules=verdict.Rules(busy=busy))
    if judged.kind == "invalid":
        return judged.reason
    s = result.summary
    if s.errors:
        return f"{s.errors} of {s.requests} requests failed ({s.first_error})"
    return None


def merged(results: list[RunResult], scenario: Scenario, slo: Slo) -> RunResult:
    """One side's blocks as one run: every request, rates over the blocks' own windows added up,
    goodput against the test's per-request limits."""
    records = tuple(r for result in results for r in result.records)
    whole = dataclasses.replace(scenario, requests=sum(r.summary.requests for r in results))
    summary = runner.summarize_run(records, whole)
    window_s = sum(r.summary.duration_s for r in results)
    done = [r for r in records if r.ok and not r.warmup]
    out = [r.output_tokens for r in done]
    ins = [r.input_tokens for r in done]
    known_out = bool(done) and all(n is not None for n in out)
    known_in = known_out and all(n is not None for n in ins)

    def rate(count: float) -> float | None:
        return count / window_s if window_s > 0 else None

    summary = dataclasses.replace(
        summary,
        duration_s=window_s,
        request_per_s=rate(len(done)) if done else None,
        output_tok_per_s=rate(sum(n or 0 for n in out)) if known_out else None,
        total_tok_per_s=rate(sum(n or 0 for n in out) + sum(n or 0 for n in ins)) if known_in else None,
    )
    summary = stats.with_goodput(summary, records, slo)
    first = results[0]
    return dataclasses.replace(
        first, scenario=whole, records=records, summary=summary, invalid=(), extra={
            k: v for k, v in first.extra.items() if k not in ("telemetry", "duration")
        },
    )  # fmt: skip


def run_ab(base: Measurer, cand: Measurer, ask: Ask) -> RunResult:
    """Measure the case's blocks, record one entry with the paired verdict, return the candidate's run."""
    setup = base.wiring.ab
    assert setup is not None
    scenario = ask.asked()
    base.size(scenario, ask.traffic, ask.where)
    cand.size(scenario, ask.traffic, ask.where)
    block = block_scenario(scenario, setup.blocks)
    measurers = {"A": base, "B": cand}
    results: dict[str, list[RunResult]] = {"A": [], "B": []}
    blocks: list[Block] = []
    busy = base.wiring.settings.busy_machine
    started = time.monotonic()
    for i, order in enumerate(paired.orders(setup.blocks, scenario.seed)):
        at = time.monotonic() - started
        got: dict[str, RunResult] = {}
        for side in order:
            name = f"A/B {SIDES[side]} {i + 1}/{setup.blocks}"
            measured = measurers[side].measure(Point(block, ask.traffic, name, salt=f"/ab-{i}{side}"))
            got[side] = measured.result
            results[side].append(measured.result)
            if measured.died is not None:
                return _record(base, cand, blocks, results, scenario, (SIDES[side], measured))
        why = [f"{SIDES[s]}: {w}" for s in "AB" if (w := untrusted(got[s], busy)) is not None]
        blocks.append(
            Block(i, order, paired.figures(got["A"]), paired.figures(got["B"]),
                  dropped="; ".join(why) or None, started_s=round(at, 3))
        )  # fmt: skip
    return _record(base, cand, blocks, results, scenario, None)


def _record(
    base: Measurer,
    cand: Measurer,
    blocks: list[Block],
    results: dict[str, list[RunResult]],
    scenario: Scenario,
    died: tuple[str, Measurement] | None,
) -> RunResult:
    setup = base.wiring.ab
    assert setup is not None
    found = paired.judge_blocks(blocks, setup.tolerance, setup.comparisons)
    if died is not None:
        why = f"the {died[0]} server died in block {len(blocks) + 1}; {len(blocks)} blocks were complete"
        found = dataclasses.replace(found, invalid=why)
    slo = base.budgets().slo()
    runs = {key: merged(results[key], scenario, slo) if results[key] else None for key in "AB"}
    sides = {
        side: _side_info(m, runs[key]) for key, side, m in (("A", "baseline", base), ("B", "candidate", cand))
    }
    entry = runs["B"] or runs["A"]
    assert entry is not None  # a block measures a side before anything can end the loop
    entry = dataclasses.replace(
        entry, model=base.wiring.model, extra={**entry.extra, "ab": paired.ab_info(found, blocks, sides)}
    )
    base.record(Measurement(entry, (), died[1].died if died is not None else None), paired_verdict=found)
    return entry


def _side_info(m: Measurer, run: RunResult | None) -> dict[str, object]:
    s = run.summary if run is not None else None
    return {
        "model": m.wiring.model,
        "backend": m.backend,
        "base_url": m.server.base_url,
        "engine_version": m.server.engine_version,
        "requests": s.requests if s is not None else 0,
        "figures": paired.figures(run) if run is not None else {},
    }
