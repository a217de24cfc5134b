"""The vLLM-on-CPU cache builder's steps, run for real with small stand-in builders.

The real environment takes ~4 minutes and 3.5 GB (the slow tier builds it);
here a shell script stands in for the Python that builds the tiny model, so
the step runner, the publish-by-rename and the failure path run for real.
"""

from __future__ import annotations

import gc
import warnings
from pathlib import Path

import pytest

from pytest_llmperf.errors import BuildError
from pytest_llmperf.servers import vllm_env


def builder(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return script


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("LLMPERF_CACHE_DIR", str(root))
    return root


def test_the_tiny_model_is_built_once_published_whole_and_reported(cache: Path, tmp_path: Path) -> None:
    # $2 is the folder the builder must fill (tiny_model.py's argument).
    python = builder(tmp_path, 'mkdir -p "$2" && echo "{}" > "$2/config.json" && echo built')
    lines: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = vllm_env.ensure_tiny_model(python, progress=lines.append)
        second = vllm_env.ensure_tiny_model(python, progress=lines.append)
        gc.collect()
    assert [str(w.message) for w in caught] == []
    assert first == second == cache / f"tiny-llama-v{vllm_env.TINY_MODEL_VERSION}"
    assert (first / "config.json").read_text() == "{}\n"
    assert not first.with_name(first.name + ".tmp").exists()
    assert lines[1] == "vLLM on CPU: build the tiny model"
    assert lines[-1].startswith("vLLM on CPU: build the tiny model done in ")
    assert len([line for line in lines if "done in" in line]) == 1  # the second call built nothing
    assert "built" in first.with_name(first.name + ".log").read_text()


def test_a_failed_build_raises_with_the_log_tail_and_publishes_nothing(cache: Path, tmp_path: Path) -> None:
    python = builder(tmp_path, 'mkdir -p "$2"; echo "no torch here" >&2; exit 4')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(BuildError) as raised:
            vllm_env.ensure_tiny_model(python, progress=lambda _line: None)
        gc.collect()
    assert [str(w.message) for w in caught] == []
    assert "vLLM on CPU failed at 'build the tiny model' (exit 4)" in str(raised.value)
    assert str(raised.value).endswith("no torch here")
    assert not vllm_env.tiny_model_dir().exists()
