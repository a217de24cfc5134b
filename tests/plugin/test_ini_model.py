"""Models chosen in pyproject, as the README says: the flag's ini key, and quoted dotted names.

``llm_model`` in ``[tool.pytest.ini_options]`` selects the model (the key is
the flag without its dashes), and a model whose name has a dot is defined
under a quoted table header. The model defined here is the embedded GGUF
under another name, so the selection shows in the test id, the server line
and the JSON, and the real llama-server serves it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_llmperf.servers import llamacpp_build

TEST = """
def test_pick(llm_perf):
    llm_perf.run(input_tokens=16, output_tokens=4, requests=2)
"""


def pyproject(ini: str) -> str:
    gguf = llamacpp_build.cache_root() / "models" / "gemma3-270m.gguf"  # assembled by embedded_default
    return f"""
[tool.pytest.ini_options]
filterwarnings = ["error"]
{ini}

[tool.llmperf.models."gemma3.twin"]
gguf = "{gguf}"
params_b = 0.268
layers = 18
kv_heads = 1
head_dim = 256
context = 32768
"""


def test_llm_model_in_pyproject_selects_a_dotted_model(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makefile(".toml", pyproject=pyproject('llm_model = "gemma3.twin"'))
    pytester.makepyfile(test_pick=TEST)
    out = tmp_path / "bench.json"
    result = pytester.runpytest_subprocess("-v", f"--benchmark-json={out}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*test_pick.py::test_pick[[]gemma3.twin[]] PASSED*"])
    result.stdout.fnmatch_lines(["*server started for gemma3.twin (llamacpp*"])
    assert "Unknown config option" not in result.stdout.str() + result.stderr.str()
    [entry] = json.loads(out.read_text())["benchmarks"]
    assert entry["extra_info"]["llm"]["model"] == "gemma3.twin"


def test_llm_model_lists_and_the_literal_default_name(pytester: pytest.Pytester) -> None:
    pytester.makefile(".toml", pyproject=pyproject('llm_model = ["gemma3-270m", "gemma3.twin"]'))
    pytester.makepyfile(test_pick=TEST)
    result = pytester.runpytest_subprocess("--collect-only", "-q")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        ["test_pick.py::test_pick[[]gemma3-270m[]]", "test_pick.py::test_pick[[]gemma3.twin[]]"]
    )


def test_the_plural_key_of_0_1_still_selects_with_a_notice(pytester: pytest.Pytester) -> None:
    pytester.makefile(".toml", pyproject=pyproject('llm_models = ["gemma3.twin"]'))
    pytester.makepyfile(test_pick=TEST)
    result = pytester.runpytest_subprocess("--collect-only")  # not -q: notices are in the header
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*<Function test_pick[[]gemma3.twin[]]>*"])
    out = result.stdout.str()
    assert "ini key llm_models is deprecated" in out
    assert "rename it to llm_model" in out


def test_an_unquoted_dotted_name_says_how_to_quote_it(pytester: pytest.Pytester) -> None:
    pytester.makefile(
        ".toml",
        pyproject="""
[tool.pytest.ini_options]
llm_model = "llama3.1-8b"

[tool.llmperf.models.llama3.1-8b]
gguf = "/models/llama.gguf"
""",
    )
    pytester.makepyfile(test_pick=TEST)
    result = pytester.runpytest_subprocess("--collect-only", "-q")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*[[]tool.llmperf.models.llama3[]] holds a table '1-8b': a model name with a dot must be "
            'quoted in TOML, write [[]tool.llmperf.models."llama3.1-8b"[]]*'
        ]
    )
