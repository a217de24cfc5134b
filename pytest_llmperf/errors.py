"""The exceptions pytest-llmperf raises outside a measured run.

Inside a run, failures are data: a failed request is a ``RequestRecord`` with
its ``error`` text, never an exception. Outside a run, errors form this tree::

    LlmPerfError
     +-- ServerError              a model server could not be used
     |    +-- ServerStartError    it exited or never became healthy
     |    +-- ServerDiedError     it died while tests were using it
     +-- DoesNotFit               a model does not fit this machine: its tests are skipped
     +-- BuildError               llama-server could not be built
     +-- BaselineError            a baseline file is missing, corrupt or foreign
     +-- ConfigError              settings that cannot be resolved
     |    +-- TooBig              a run needs more slots or context than its server can have
     +-- TelemetryError           a telemetry source stopped (never leaves the sampler)
          +-- ProcessGone         the server's process tree is gone

Bad input from the user's command line, markers or pyproject is reported as
``pytest.UsageError`` by the plugin, built from a ``ConfigError`` message.
A ``TelemetryError`` is caught by the sampler, which drops that one source
and keeps the message as a warning: telemetry never fails a run.
"""

from __future__ import annotations

from typing import Literal


class LlmPerfError(Exception):
    """Base of every error pytest-llmperf raises on purpose."""


class ServerError(LlmPerfError):
    """A model server could not be used; the message ends with its log tail."""


class ServerStartError(ServerError):
    """The server exited during start-up or did not become healthy in time."""


class ServerDiedError(ServerError):
    """The server process ended while tests still needed it."""


class DoesNotFit(LlmPerfError):
    """The model does not fit this machine at the size asked; the tests are skipped."""


class BuildError(LlmPerfError):
    """Building llama-server from the pinned llama.cpp source failed."""


class BaselineError(LlmPerfError):
    """A baseline file is missing, unreadable, or from another format version."""


class ConfigError(LlmPerfError):
    """Settings that cannot be resolved; the message says what to type instead."""


class TooBig(ConfigError):
    """A run needs more than its server can be given; ``what`` is ``slots`` or ``context``."""

    def __init__(self, what: Literal["slots", "context"], text: str) -> None:
        super().__init__(text)
        self.what = what


class TelemetryError(LlmPerfError):
    """A telemetry source cannot go on; the sampler drops it and keeps the message as a warning."""


class ProcessGone(TelemetryError):
    """The server's root process is gone; the sampler stops reading its tree."""
