"""Backends by name: the built-in engines, and third-party ones from entry points.

A third-party package registers a backend in its own metadata::

    [project.entry-points."pytest_llmperf.backends"]
    sglang = "my_package.sglang:SGLangBackend"

The object may be a class (instantiated with ``progress=`` when its
constructor takes it) or a ready instance; either way it must have a
``name`` and ``launch(LaunchRequest) -> Server`` (see ``servers.base``).

Built-ins are imported only when asked for, so a broken or absent optional
engine never breaks the others, and a built-in name cannot be taken over by
a plugin. This module starts nothing.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import cast

from pytest_llmperf.errors import ConfigError
from pytest_llmperf.records import Progress
from pytest_llmperf.servers.base import Backend

ENTRY_POINT_GROUP = "pytest_llmperf.backends"

BUILTIN: dict[str, str] = {
    "llamacpp": "pytest_llmperf.servers.llamacpp:LlamaCppBackend",
    "vllm": "pytest_llmperf.servers.vllm:VllmBackend",
    "ollama": "pytest_llmperf.servers.ollama:OllamaBackend",
    "openai": "pytest_llmperf.servers.endpoint:OpenAIEndpointBackend",
}


def backend_names() -> tuple[str, ...]:
    """Built-in names first, then every installed third-party one."""
    extra = sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)} - set(BUILTIN))
    return (*BUILTIN, *extra)


def get_backend(name: str, progress: Progress | None = None) -> Backend:
    """The backend called ``name``; ``progress`` receives lines worth showing
    while it starts (a build, a model pull)."""
    if name in BUILTIN:
        module_name, _, attr = BUILTIN[name].partition(":")
        try:
            target: object = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"backend {name!r} could not be loaded ({type(exc).__name__}: {exc})") from exc
        return _instantiate(name, target, progress)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            try:
                target = ep.load()
            except Exception as exc:  # a broken plugin is the user's config problem, said plainly
                raise ConfigError(
                    f"backend {name!r} from entry point {ep.value!r} could not be loaded "
                    f"({type(exc).__name__}: {exc})"
                ) from exc
            return _instantiate(name, target, progress)
    raise ConfigError(f"unknown backend {name!r}; known backends: {', '.join(backend_names())}")


def _instantiate(name: str, target: object, progress: Progress | None) -> Backend:
    obj = target
    if inspect.isclass(target):
        params = inspect.signature(target).parameters
        accepts = "progress" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
        factory = cast(Callable[..., object], target)
        obj = factory(progress=progress) if accepts else factory()
    if not callable(getattr(obj, "launch", None)) or not isinstance(getattr(obj, "name", None), str):
        raise ConfigError(
            f"backend {name!r} ({target!r}) is not a backend: it needs a `name` string and a "
            "`launch(LaunchRequest)` method"
        )
    backend: Backend = obj  # type: ignore[assignment]  # checked structurally just above
    return backend
