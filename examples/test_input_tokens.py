"""The input-token test: how time to first token grows with the prompt length.

Prompt lengths 64, 256 and 1024 tokens at 1 and 4 concurrent requests, each
answering exactly 32 tokens. TTFT is dominated by prefill here; compare the
slope at concurrency 4 with concurrency 1 to see prefills queueing.

The budgets are 2.4-3x what the embedded default (Gemma 3 270M on
llama-server, pinned to one of 2 CPU cores) measures when healthy (TTFT
p50 0.36 s, 1.24 s and 4.95 s at concurrency 1): a noisy CI machine meets
them, a broken or much slower server does not. Tighten them for your model
and machine once you know its figures.
"""

import pytest

OUTPUT_TOKENS = 32
# TTFT p50 budget at concurrency 1, by prompt length (healthy: ~0.36 s at 64 tokens).
# At concurrency N the prefills queue, so a case gets N times as long.
TTFT_MS_P50_AT_C1 = {64: 1_000, 256: 3_000, 1024: 12_000}

CASES = [
    pytest.param(
        input_tokens,
        concurrency,
        marks=pytest.mark.llm_budget(ttft_ms_p50=TTFT_MS_P50_AT_C1[input_tokens] * concurrency),
    )
    for input_tokens in (64, 256, 1024)
    for concurrency in (1, 4)
]


@pytest.mark.llm_budget(tpot_ms_p50=200, error_rate_max=0)
@pytest.mark.parametrize(("input_tokens", "concurrency"), CASES)
def test_input_tokens(llm_perf, input_tokens, concurrency):
    result = llm_perf.run(
        input_tokens=input_tokens,
        output_tokens=OUTPUT_TOKENS,
        concurrency=concurrency,
        requests=2 * concurrency + 2,
    )
    assert result.summary.input_tokens_mean == input_tokens
