"""The output-token test: how latency and throughput grow with the answer length.

A fixed 64-token prompt; output lengths 16, 64 and 128 tokens; 1, 2 and 4
concurrent requests. Plot E2E latency against output tokens per concurrency
(``--llm-report DIR``) to see the decode cost per token and how batching
trades per-request speed for total throughput.

The budgets are several times what the embedded default (Gemma 3 270M on
llama-server, pinned to one of 2 CPU cores) measures when healthy (TTFT
~0.35 s and TPOT ~50 ms at concurrency 1, TPOT ~100 ms at 4): a noisy CI
machine meets them, a broken or much slower server does not. Tighten them for your model and machine.
"""

import pytest

INPUT_TOKENS = 64
# At concurrency N up to N prompts wait for prefill together.
CONCURRENCY = [pytest.param(c, marks=pytest.mark.llm_budget(ttft_ms_p50=1_000 * c)) for c in (1, 2, 4)]


@pytest.mark.llm_budget(tpot_ms_p50=200, error_rate_max=0)
@pytest.mark.parametrize("concurrency", CONCURRENCY)
@pytest.mark.parametrize("output_tokens", [16, 64, 128])
def test_output_tokens(llm_perf, output_tokens, concurrency):
    result = llm_perf.run(
        input_tokens=INPUT_TOKENS,
        output_tokens=output_tokens,
        concurrency=concurrency,
        requests=2 * concurrency + 2,
    )
    # Exact output lengths are what make cases comparable run to run.
    assert result.summary.output_length_misses == 0
