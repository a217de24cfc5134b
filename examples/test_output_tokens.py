"""The output-token test: how latency and throughput grow with the answer length.

A fixed 64-token prompt; output lengths 16, 64 and 128 tokens; 1, 2 and 4
concurrent requests. Plot E2E latency against output tokens per concurrency
(``--llm-report DIR``) to see the decode cost per token and how batching
trades per-request speed for total throughput.
"""

import pytest

INPUT_TOKENS = 64


@pytest.mark.parametrize("concurrency", [1, 2, 4])
@pytest.mark.parametrize("output_tokens", [16, 64, 128])
def test_output_tokens(llm_perf, output_tokens, concurrency):
    result = llm_perf.run(
        input_tokens=INPUT_TOKENS,
        output_tokens=output_tokens,
        concurrency=concurrency,
        requests=2 * concurrency + 2,
    )
    assert result.summary.error_rate == 0.0
    # Exact output lengths are what make cases comparable run to run.
    assert result.summary.output_length_misses == 0
