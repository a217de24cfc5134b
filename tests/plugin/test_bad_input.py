"""Bad input is a pytest usage error (exit code 4) with a sentence that says what to do.

Each case runs pytest in a subprocess on a project whose test needs a server,
and checks that the mistake is caught before any server starts: no
"[llmperf] server started" line, and the message names the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_llmperf.judge.baseline import machine_id

NEEDS_A_SERVER = """
def test_x(llm_perf):
    llm_perf.run(input_tokens=16, output_tokens=4, requests=2)
"""

BAD_MARKER = """
import pytest

@pytest.mark.llm_budget(ttft_ms_p95="fast")
def test_x(llm_perf):
    llm_perf.run(input_tokens=16, output_tokens=4, requests=2)
"""

UNKNOWN_MARKER_KEY = """
import pytest

@pytest.mark.llm_budget(ttft_ms_p95=500, ttft_p95=500)
def test_x(llm_perf):
    llm_perf.run(input_tokens=16, output_tokens=4, requests=2)
"""

FROM_SCHEMA_99 = {
    "machine_info": {},
    "benchmarks": [{"fullname": "test_x.py::test_x[gemma3-270m]", "extra_info": {"llm": {"schema": 99}}}],
}

# (id, command-line args, files to write, pattern the "ERROR:" line must match)
CASES: list[tuple[str, list[str], dict[str, str], str]] = [
    (
        "unknown-model",
        ["--llm-model=llama9-1t"],
        {},
        "ERROR: unknown model 'llama9-1t'; did you mean 'llama3.1-8b'? known models: *gemma3-270m*. "
        "Or give a Hugging Face id "
        "(org/name), an Ollama tag (name:tag), a .gguf path, or define it in pyproject.toml under "
        "[[]tool.llmperf.models.llama9-1t[]]",
    ),
    (
        "unknown-backend-option",
        ["--llm-backend=tgi"],
        {},
        "ERROR: unknown backend 'tgi': use one of llamacpp, vllm, ollama, openai*",
    ),
    (
        "unknown-backend-ini",
        [],
        {"pyproject.toml": '[tool.pytest.ini_options]\nllm_backend = "tgi"\n'},
        "ERROR: unknown backend 'tgi': use one of llamacpp, vllm, ollama, openai*",
    ),
    (
        "budget-not-a-number",
        ["--llm-budget=ttft_ms_p95=fast"],
        {},
        "ERROR: budget ttft_ms_p95 in --llm-budget must be a number, got 'fast'; type e.g. ttft_ms_p95=500",
    ),
    (
        "budget-unknown-key",
        ["--llm-budget=ttft_p95=500"],
        {},
        "ERROR: unknown budget key 'ttft_p95' in --llm-budget: did you mean 'ttft_ms_p95'? valid keys are *",
    ),
    (
        "budget-marker-not-a-number",
        [],
        {"test_x.py": BAD_MARKER},
        "ERROR: budget ttft_ms_p95 in llm_budget of test_x.py::test_x[[]gemma3-270m[]] must be a number, "
        "got 'fast'; type e.g. ttft_ms_p95=500",
    ),
    (
        "budget-marker-unknown-key",
        [],
        {"test_x.py": UNKNOWN_MARKER_KEY},
        "ERROR: unknown budget key 'ttft_p95' in llm_budget of test_x.py::test_x[[]gemma3-270m[]]: "
        "did you mean 'ttft_ms_p95'? *",
    ),
    (
        "vllm-with-base-url",
        ["--llm-backend=vllm", "--llm-base-url=http://127.0.0.1:9"],
        {},
        "ERROR: --llm-base-url attaches to a running server, but --llm-backend=vllm starts one: use "
        "--llm-backend=openai (or ollama) with --llm-base-url, or drop --llm-base-url",
    ),
    (
        "openai-without-base-url",
        ["--llm-backend=openai"],
        {},
        "ERROR: --llm-backend=openai attaches to a running endpoint: add --llm-base-url=URL",
    ),
    (
        "request-timeout-not-a-number",
        ["--llm-request-timeout=soon"],
        {},
        "ERROR: --llm-request-timeout takes a number, not 'soon'; for example --llm-request-timeout=30",
    ),
    (
        "baseline-corrupt",
        ["--llm-baseline=corrupt.json"],
        {"corrupt.json": '{"machine_info": {}, "benchmarks": [\n'},
        "ERROR: baseline corrupt.json: is not valid JSON (*); delete it and re-create it with "
        "--benchmark-autosave*",
    ),
    (
        "baseline-wrong-version",
        ["--llm-baseline=v99.json"],
        {"v99.json": json.dumps(FROM_SCHEMA_99)},
        "ERROR: baseline v99.json: entry 'test_x.py::test_x[[]gemma3-270m[]]' has extra_info.llm.schema 99, "
        "this version reads 1 and 2; upgrade pytest-llmperf, or re-create it with --benchmark-autosave*",
    ),
    (
        "baseline-missing",
        ["--llm-baseline=missing.json"],
        {},
        "ERROR: baseline missing.json: does not exist; run once with --benchmark-autosave to create one",
    ),
    (
        "benchmark-compare-corrupt",
        ["--benchmark-compare=0001", "--benchmark-storage=file://store"],
        {f"store/{machine_id()}/0001_corrupt.json": "{\n"},
        f"ERROR: baseline store/{machine_id()}/0001_corrupt.json: is not valid JSON (*); delete it and "
        "re-create it with --benchmark-autosave*",
    ),
]


@pytest.mark.parametrize(("args", "files", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_usage_error_that_says_what_to_do(
    pytester: pytest.Pytester, args: list[str], files: dict[str, str], expected: str
) -> None:
    pytester.makepyfile(test_x=NEEDS_A_SERVER)
    for name, text in files.items():
        path = Path(pytester.path, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    result = pytester.runpytest_subprocess(*args, timeout=60)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.outlines + result.errlines
    result.stderr.fnmatch_lines([expected])
    assert not any("server started" in line for line in result.outlines + result.errlines)
