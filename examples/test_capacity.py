"""Capacity: which load this machine serves within a latency budget (the machine report).

Two questions about one model on this machine, each one test:

* ``test_capacity``: the highest concurrency at which at least 90% of the
  requests meet the per-request limits below (TTFT and TPOT, as vLLM's
  ``--goodput`` counts them), found by a search over real measurements. The
  report (``--llm-report DIR``) shows it in the machine table: precision,
  whether and how the model fits, the capacity, TTFT/TPOT and output tok/s
  there, energy per token where a GPU measures it. A later run that finds a
  lower capacity than its baseline runs fails like any other regression.
* ``test_sweep``: the latency-throughput curve, concurrency 1, 2, 4, ... 32
  until throughput stops rising, with the knee marked (``sweep-*.png``), and
  the share of requests within the limits at each load.

The limits are interactive-chat ones that the embedded default (Gemma 3 270M
on llama-server) meets at a few concurrent requests on 2 CPU cores;
``capacity_concurrency_min=1`` fails a server that cannot serve even one
request within them. Run it for several models to compare them:
``pytest examples/test_capacity.py --llm-model=gemma3-270m --llm-model=... --llm-report report``.
"""

import pytest

INPUT_TOKENS = 128
OUTPUT_TOKENS = 32

# A request is good when its first token comes within 2 s and the rest at 100 ms a token or better.
pytestmark = pytest.mark.llm_budget(slo_ttft_ms=2_000, slo_tpot_ms=100, error_rate_max=0)


@pytest.mark.llm_budget(capacity_concurrency_min=1)
def test_capacity(llm_perf):
    found = llm_perf.capacity(
        input_tokens=INPUT_TOKENS, output_tokens=OUTPUT_TOKENS, slo_attainment=0.9, high=32, max_probes=8
    )
    # Exact lengths at the capacity found: what makes it comparable run to run.
    assert found.at_capacity is None or found.at_capacity.summary.output_length_misses == 0


def test_sweep(llm_perf):
    sweep = llm_perf.sweep(
        input_tokens=INPUT_TOKENS, output_tokens=OUTPUT_TOKENS, concurrency="auto", max_concurrency=32
    )
    assert sweep.points[0].summary.output_length_misses == 0
