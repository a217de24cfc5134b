"""The exceptions pytest-llmperf raises outside a measured run.

Inside a run, failures are data: a failed request is a ``RequestRecord`` with
its ``error`` text, never an exception. Outside a run, errors form this tree::

    LlmPerfError
     +-- ServerError              a model server could not be used
     |    +-- ServerStartError    it exited or never became healthy
     |    +-- ServerDiedError     it died while tests were using it
     +-- BuildError               llama-server could not be built
     +-- BaselineError            a baseline file is missing, corrupt or foreign
     +-- ConfigError              settings that cannot be resolved

Bad input from the user's command line, markers or pyproject is reported as
``pytest.UsageError`` by the plugin, built from a ``ConfigError`` message.
"""

from __future__ import annotations


class LlmPerfError(Exception):
    """Base of every error pytest-llmperf raises on purpose."""


class ServerError(LlmPerfError):
    """A model server could not be used; the message ends with its log tail."""


class ServerStartError(ServerError):
    """The server exited during start-up or did not become healthy in time."""


class ServerDiedError(ServerError):
    """The server process ended while tests still needed it."""


class BuildError(LlmPerfError):
    """Building llama-server from the pinned llama.cpp source failed."""


class BaselineError(LlmPerfError):
    """A baseline file is missing, unreadable, or from another format version."""


class ConfigError(LlmPerfError):
    """Settings that cannot be resolved; the message says what to type instead."""
