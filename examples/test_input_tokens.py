"""The input-token test: how time to first token grows with the prompt length.

Prompt lengths 64, 256 and 1024 tokens at 1 and 4 concurrent requests, each
answering exactly 32 tokens. TTFT is dominated by prefill here; compare the
slope at concurrency 4 with concurrency 1 to see prefills queueing.
"""

import pytest

OUTPUT_TOKENS = 32


@pytest.mark.parametrize("concurrency", [1, 4])
@pytest.mark.parametrize("input_tokens", [64, 256, 1024])
def test_input_tokens(llm_perf, input_tokens, concurrency):
    result = llm_perf.run(
        input_tokens=input_tokens,
        output_tokens=OUTPUT_TOKENS,
        concurrency=concurrency,
        requests=2 * concurrency + 2,
    )
    assert result.summary.error_rate == 0.0
    assert result.summary.input_tokens_mean == input_tokens
