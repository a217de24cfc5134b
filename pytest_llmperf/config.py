"""Resolve what the user asked for into frozen ``Settings``.

Precedence is command line > marker > ini / pyproject. This module resolves
the command line and the ini keys (each ``--llm-*`` flag's key is the flag
without its dashes, ``llm_model`` for ``--llm-model``) and reads the
``[tool.llmperf]`` tables of pyproject.toml (models, budgets); markers are
applied per test by ``pytest.gate``. Every bad value raises ``ConfigError``
with a sentence that says what to type instead; the plugin turns it into a
``pytest.UsageError``. This module must not start anything.
"""

from __future__ import annotations

import base64
import os
import secrets
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from pytest_llmperf.errors import ConfigError
from pytest_llmperf.records import HardwareMode

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

IniType = Literal["string", "paths", "pathlist", "args", "linelist", "bool"]
BACKENDS = ("llamacpp", "vllm", "ollama", "openai")
MISMATCH_MODES: tuple[HardwareMode, ...] = ("warn", "fail", "ignore")
CONNECTION_MODES = ("keep-alive", "per-request")
PINNING_MODES = ("auto", "off")


@dataclass(frozen=True)
class Option:
    """One ``--llm-*`` option and its ini key, declared once for both."""

    flag: str
    help: str
    metavar: str | None = None
    default: object = None
    action: Literal["store", "append", "store_true"] = "store"
    ini_type: IniType | None = "string"
    choices: tuple[str, ...] | None = None

    @property
    def dest(self) -> str:
        """The ini key and the ``config.option`` name: the flag without its dashes
        (``--llm-model`` -> ``llm_model``)."""
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def legacy_ini_key(self) -> str | None:
        """The plural key 0.1 read for a repeatable option; still read, with a notice, for one release."""
        return self.dest + "s" if self.action == "append" else None


OPTIONS: tuple[Option, ...] = (
    Option(
        "--llm-model",
        "model to test; repeat for several (default: gemma3-270m, the embedded default on llama.cpp)",
        "NAME",
        None,
        "append",
        "linelist",
    ),
    Option(
        "--llm-backend",
        "engine that serves the models: llamacpp, vllm, ollama, "
        "openai (an existing endpoint) or an installed third-party backend; default: the model's own",
        "NAME",
    ),
    Option("--llm-base-url", "attach to a running server at URL instead of starting one", "URL"),
    Option(
        "--llm-api-key-env",
        "name of the environment variable holding the API key (the key itself is never written anywhere)",
        "VAR",
    ),
    Option(
        "--llm-save-requests",
        "write one JSONL line per request (raw perf_counter_ns stamps) into DIR",
        "DIR",
    ),
    Option(
        "--llm-server-executable",
        "llama-server binary, Python with vLLM, or "
        "ollama binary to start (default: built/found automatically)",
        "PATH",
    ),
    Option(
        "--llm-server-arg",
        "extra argument for the server command line; repeatable",
        "ARG",
        None,
        "append",
        "args",
    ),
    Option(
        "--llm-server-option",
        "backend knob KEY=VALUE, e.g. tensor_parallel_size=2, dtype=bfloat16, threads=2; repeatable",
        "KEY=VALUE",
        None,
        "append",
        "linelist",
    ),
    Option(
        "--llm-start-timeout",
        "seconds a server may take to become healthy (default: 600)",
        "SECONDS",
        "600",
    ),
    Option(
        "--llm-request-timeout",
        "seconds one request may take before it counts as an error (default: 300)",
        "SECONDS",
        "300",
    ),
    Option(
        "--llm-max-concurrency",
        "server slots to start with (default: the highest 'concurrency' parameter among the collected tests)",
        "N",
    ),
    Option(
        "--llm-fit",
        "print which registry models fit this machine and common GPUs, then exit",
        None,
        False,
        "store_true",
        None,
    ),
    Option(
        "--llm-budget",
        "budget KEY=VALUE or preset name for every test, e.g. "
        "ttft_ms_p95=500 or mlperf-llama3.1-8b; repeatable; overrides markers and pyproject",
        "KEY=VALUE",
        None,
        "append",
        "linelist",
    ),
    Option(
        "--llm-baseline",
        "pytest-benchmark JSON to gate regressions against (default: the run --benchmark-compare selects)",
        "PATH",
    ),
    Option(
        "--llm-tolerance",
        "regression tolerance METRIC=PERCENT, e.g. tpot_ms=5%% "
        "(defaults: ttft_ms 10%%, tpot/itl/e2e/tok/s 5%%, error_rate 0.01); repeatable",
        "METRIC=PCT",
        None,
        "append",
        "linelist",
    ),
    Option(
        "--llm-hardware-mismatch",
        "when the baseline ran on other hardware, engine or model: warn, fail or ignore (default: warn)",
        "MODE",
        "warn",
        choices=MISMATCH_MODES,
    ),
    Option(
        "--llm-prompt-salt",
        "text mixed into every test's prompts so that no two tests or sessions send the same prompt "
        "(default: random per session, printed at the start and stored in the JSON; give it to "
        "send the same prompts again)",
        "TEXT",
    ),
    Option("--llm-report", "write a Markdown summary and PNG plots into DIR", "DIR"),
    Option(
        "--llm-telemetry-interval",
        "telemetry sampling period in seconds, 0 to turn it off (default: 0.1)",
        "SECONDS",
        "0.1",
    ),
    Option(
        "--llm-telemetry-series",
        "also write each test's telemetry time series "
        "beside its requests (needs --llm-save-requests or --llm-report)",
        None,
        False,
        "store_true",
        "bool",
    ),
    Option(
        "--llm-adaptive",
        "stop each case once the 95%% CIs of median TPOT and tok/s are within half the "
        "tightest decode tolerance, 2.5%% by default (the requests argument becomes a cap)",
        None,
        False,
        "store_true",
        "bool",
    ),
    # -- issue 14: noise between runs, repeats, busy machines --------------------------------
    Option(
        "--llm-repeat",
        "run each case K times, interleaved across the session (A B C A B C); the last repeat of a case "
        "carries its regression verdict on all of them (default: 1)",
        "K",
        "1",
    ),
    Option(
        "--llm-history",
        "passing baseline runs that bare --benchmark-compare compares with, newest first (default: 5)",
        "N",
        "5",
    ),
    Option(
        "--llm-busy-machine",
        "when other processes, CPU steal or throttling took CPU from the server during a case: "
        "fail (invalid measurement), warn or ignore (default: fail)",
        "MODE",
        "fail",
        choices=MISMATCH_MODES,
    ),
    # -- issue 15: the client's processes, connections and cores; pytest-xdist ---------------
    Option(
        "--llm-client-workers",
        "client processes that share each run's streams: a number, or auto for the cores that a "
        "server this session started leaves free (default: 1, the test's own process)",
        "N",
        "1",
    ),
    Option(
        "--llm-connections",
        "keep-alive: each stream reuses its connection (default); per-request: a new connection "
        "for every request, closed after it",
        "MODE",
        "keep-alive",
        choices=CONNECTION_MODES,
    ),
    Option(
        "--llm-cpu-pinning",
        "auto: a server this session starts on this host's CPUs runs on cores of its own and the "
        "client on the others, when there are 2 or more (default); off: both run anywhere",
        "MODE",
        "auto",
        choices=PINNING_MODES,
    ),
    # -- issue 19: baseline and candidate in one session, interleaved --------------------------
    Option(
        "--llm-candidate-base-url",
        "A/B: measure each case on the server at URL too (the candidate), interleaved in blocks with "
        "the baseline, and fail when it is slower (e.g. a canary beside production)",
        "URL",
    ),
    Option(
        "--llm-candidate-model",
        "A/B: start NAME as the candidate (e.g. another quantization) and compare it with --llm-model",
        "NAME",
    ),
    Option(
        "--llm-candidate-server-option",
        "A/B: start the candidate with this server option instead of the baseline's (KEY=VALUE, as "
        "--llm-server-option); repeatable",
        "KEY=VALUE",
        None,
        "append",
        "linelist",
    ),
    Option(
        "--llm-ab-blocks",
        "A/B: blocks per case; each measures baseline and candidate back to back (default: 8)",
        "N",
        "8",
    ),
    Option(
        "--llm-ab-tolerance",
        "A/B: the smallest change, in percent, that fails when it is also beyond the noise (default: 3%%)",
        "PCT",
        "3%",
    ),
    Option(
        "--llm-gpus-per-worker",
        "under pytest-xdist, G GPUs of its own for each worker's servers (CUDA_VISIBLE_DEVICES): "
        "worker gwK gets GPUs K*G to K*G+G-1 (default: every worker sees every GPU)",
        "G",
    ),
)


@dataclass(frozen=True)
class Candidate:
    """The candidate side of an A/B session: an endpoint, another model, or other server options."""

    base_url: str | None = None
    model: str | None = None
    server_options: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        parts = [f"at {self.base_url}"] if self.base_url else []
        parts += [f"model {self.model}"] if self.model else []
        parts += [f"{k}={v}" for k, v in self.server_options.items()]
        return ", ".join(parts)


@dataclass(frozen=True)
class Settings:
    """The session's resolved configuration."""

    models: tuple[str, ...]
    backend: str | None
    base_url: str | None
    api_key_env: str | None
    save_requests: Path | None
    server_executable: str | None
    server_args: tuple[str, ...]
    server_options: Mapping[str, str]
    start_timeout_s: float
    request_timeout_s: float
    max_concurrency: int | None
    budgets: tuple[str, ...]
    baseline: Path | None
    tolerances: tuple[str, ...]
    hardware_mismatch: HardwareMode
    report_dir: Path | None
    telemetry_interval_s: float
    telemetry_series: bool
    adaptive: bool
    pyproject: Mapping[str, Any] = field(default_factory=dict)
    notices: tuple[str, ...] = ()
    """Lines to show once at the start (a deprecated ini key in use)."""
    prompt_salt: str = ""
    url_credentials: tuple[str, str] | None = field(default=None, repr=False)
    """``(user, password)`` of ``--llm-base-url http://user:password@host``; ``base_url`` is without."""
    repeat: int = 1
    """``--llm-repeat``: measurements per case, interleaved across the session."""
    history: int = 5
    """``--llm-history``: passing baseline runs bare ``--benchmark-compare`` keeps."""
    busy_machine: HardwareMode = "fail"
    """``--llm-busy-machine``: what a case measured on a busy machine becomes."""
    client_workers: int | None = 1
    """``--llm-client-workers``: client processes; ``None`` is ``auto``."""
    keep_alive: bool = True
    """``--llm-connections``: reuse a connection per stream (``per-request``: False)."""
    cpu_pinning: bool = True
    """``--llm-cpu-pinning``: split the cores between a server we start on this host and the client."""
    gpus_per_worker: int | None = None
    """``--llm-gpus-per-worker``: GPUs each pytest-xdist worker's servers get."""
    candidate: Candidate | None = None
    """The other side of an A/B session (``--llm-candidate-base-url`` and the others), or ``None``."""
    ab_blocks: int = 8
    """``--llm-ab-blocks``: blocks per A/B case."""
    ab_tolerance: float = 0.03
    """``--llm-ab-tolerance``: the smallest A/B change that fails (a fraction)."""

    @property
    def api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        return os.environ.get(self.api_key_env)

    @property
    def auth_headers(self) -> dict[str, str]:
        """What a server we attach to is sent: basic auth from the URL, or the API key as a bearer token."""
        if self.url_credentials is not None:
            return {"Authorization": "Basic " + _basic_token(*self.url_credentials)}
        key = self.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    @property
    def redactions(self) -> tuple[tuple[str, str], ...]:
        """``(secret, placeholder)`` for every text that must never be written: the API key, the
        URL's password and the forms it travels in; longest first, so none is blanked in part."""
        found: dict[str, str] = {}
        if self.api_key:
            found[self.api_key] = "<redacted: --llm-api-key-env>"
        if self.url_credentials is not None:
            user, password = self.url_credentials
            for secret in (f"{user}:{password}", _basic_token(user, password), password):
                if secret:
                    found.setdefault(secret, "<redacted: --llm-base-url credentials>")
        return tuple(sorted(found.items(), key=lambda pair: len(pair[0]), reverse=True))


def _basic_token(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """``http://user:pw@host:8000/v1`` -> ``("http://host:8000/v1", ("user", "pw"))``."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=hostport)), (unquote(user), unquote(password))


Getter = Callable[[Option], object]
IniGetter = Callable[[str], object]


def _pairs(values: Sequence[str], what: str, example: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for raw in values:
        key, sep, value = raw.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(f"{what} {raw!r} is not KEY=VALUE; write it like {example}")
        pairs[key.strip()] = value.strip()
    return pairs


def _number(raw: object, flag: str, *, minimum: float = 0.0, integer: bool = False) -> float:
    try:
        value = float(str(raw))
    except ValueError:
        raise ConfigError(f"{flag} takes a number, not {raw!r}; for example {flag}=30") from None
    if value < minimum or (integer and value != int(value)):
        kind = "a whole number" if integer else "a number"
        raise ConfigError(f"{flag} takes {kind} >= {minimum:g}, not {raw!r}")
    return value


def _list(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def load_pyproject(rootdir: Path) -> dict[str, Any]:
    """The ``[tool.llmperf]`` table of ``rootdir/pyproject.toml``, or ``{}``."""
    path = rootdir / "pyproject.toml"
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except (tomllib.TOMLDecodeError, OSError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    table = data.get("tool", {}).get("llmperf", {})
    if not isinstance(table, dict):
        raise ConfigError(f"[tool.llmperf] in {path} must be a table")
    unknown = set(table) - {"models", "budgets"}
    if unknown:
        raise ConfigError(
            f"[tool.llmperf] in {path} has unknown keys {sorted(unknown)}; it takes "
            '[tool.llmperf.models.<name>] and [tool.llmperf.budgets."<model>"] tables'
        )
    return table


class _Values:
    """Each option's value: command line first, then the ini key (or its 0.1 plural), then the default.

    A value outside the option's ``choices`` is refused here, wherever it came
    from (argparse checks only the command line's).
    """

    def __init__(self, cli: Getter, ini: IniGetter) -> None:
        self._cli = cli
        self._ini = ini
        self.notices: list[str] = []

    def get(self, dest: str) -> object:
        option = next(o for o in OPTIONS if o.dest == dest)
        value = self._cli(option)
        if value in (None, [], False) and option.ini_type is not None:
            value = self._from_ini(option)
        value = option.default if value in (None, []) else value
        if option.choices is not None and value is not None and str(value) not in option.choices:
            raise ConfigError(f"{option.flag} takes {_one_of(option.choices)}, not {str(value)!r}")
        return value

    def _from_ini(self, option: Option) -> object:
        value = self._ini(option.dest)
        legacy = option.legacy_ini_key
        if value in ("", [], None) and legacy is not None:
            value = self._ini(legacy)
            if value not in ("", [], None):
                notice = (
                    f"ini key {legacy} is deprecated and will stop working in the next release: "
                    f"rename it to {option.dest} (the flag {option.flag} without its dashes)"
                )
                if notice not in self.notices:
                    self.notices.append(notice)
        return None if value in ("", []) else value


def _one_of(choices: Sequence[str]) -> str:
    """``a or b``; ``one of a, b, c``."""
    return " or ".join(choices) if len(choices) == 2 else "one of " + ", ".join(choices)


def _mode(value: object) -> HardwareMode:
    """A ``MISMATCH_MODES`` value, already checked against the option's choices."""
    return next(mode for mode in MISMATCH_MODES if mode == value)


def _check_backend(backend: object) -> None:
    if backend is not None and backend not in BACKENDS:
        from pytest_llmperf.servers.backends import backend_names

        known = backend_names()  # built-ins, then third-party entry points
        if backend not in known:
            raise ConfigError(f"unknown backend {backend!r}: use one of {', '.join(known)}")


def _attach(values: _Values, backend: object) -> tuple[str | None, tuple[str, str] | None]:
    """``--llm-base-url`` without its credentials, and the credentials; checked against the backend."""
    raw_url = values.get("llm_base_url")
    base_url, credentials = split_credentials(str(raw_url)) if raw_url is not None else (None, None)
    if base_url is not None and not base_url.startswith(("http://", "https://")):
        shown = base_url.rpartition("@")[2]  # without a scheme, userinfo is not split off above
        raise ConfigError(f"--llm-base-url must start with http:// or https://, not {shown!r}")
    if credentials is not None and values.get("llm_api_key_env"):
        raise ConfigError(
            "--llm-base-url carries credentials (user:password@) and --llm-api-key-env names a key: "
            "give one of them (the URL's are sent as HTTP basic auth, the key as a bearer token)"
        )
    if credentials is not None and backend == "ollama":
        raise ConfigError(
            "the ollama backend sends no credentials: drop user:password@ from --llm-base-url, "
            "or use --llm-backend=openai with Ollama's OpenAI-compatible /v1 endpoint"
        )
    if backend == "openai" and base_url is None:
        raise ConfigError("--llm-backend=openai attaches to a running endpoint: add --llm-base-url=URL")
    if base_url is not None and backend in ("llamacpp", "vllm"):
        raise ConfigError(
            f"--llm-base-url attaches to a running server, but --llm-backend={backend} starts one: "
            "use --llm-backend=openai (or ollama) with --llm-base-url, or drop --llm-base-url"
        )
    return base_url, credentials


def resolve(cli: Getter, ini: IniGetter, pyproject: Mapping[str, Any]) -> Settings:
    """Command line first, then the ini key (or its 0.1 plural), then the option's default."""
    values = _Values(cli, ini)
    get = values.get
    backend = get("llm_backend")
    _check_backend(backend)
    mismatch = _mode(get("llm_hardware_mismatch"))
    base_url, credentials = _attach(values, backend)
    busy = _mode(get("llm_busy_machine"))
    max_conc = get("llm_max_concurrency")
    connections = str(get("llm_connections"))
    pinning = str(get("llm_cpu_pinning"))
    gpus = get("llm_gpus_per_worker")
    models = tuple(dict.fromkeys(m.strip() for m in _list(get("llm_model")) if m.strip()))
    return Settings(
        models=models,
        backend=str(backend) if backend else None,
        base_url=str(base_url).rstrip("/") if base_url else None,
        api_key_env=str(get("llm_api_key_env")) if get("llm_api_key_env") else None,
        save_requests=Path(str(get("llm_save_requests"))) if get("llm_save_requests") else None,
        server_executable=str(get("llm_server_executable")) if get("llm_server_executable") else None,
        server_args=tuple(_list(get("llm_server_arg"))),
        server_options=_pairs(_list(get("llm_server_option")), "--llm-server-option", "dtype=bfloat16"),
        start_timeout_s=_number(get("llm_start_timeout"), "--llm-start-timeout", minimum=1),
        request_timeout_s=_number(get("llm_request_timeout"), "--llm-request-timeout", minimum=0.001),
        max_concurrency=int(_number(max_conc, "--llm-max-concurrency", minimum=1, integer=True))
        if max_conc is not None
        else None,
        budgets=tuple(_list(get("llm_budget"))),
        baseline=Path(str(get("llm_baseline"))) if get("llm_baseline") else None,
        tolerances=tuple(_list(get("llm_tolerance"))),
        hardware_mismatch=mismatch,
        report_dir=Path(str(get("llm_report"))) if get("llm_report") else None,
        telemetry_interval_s=_number(get("llm_telemetry_interval"), "--llm-telemetry-interval"),
        telemetry_series=bool(get("llm_telemetry_series")),
        adaptive=bool(get("llm_adaptive")),
        pyproject=pyproject,
        notices=tuple(values.notices),
        prompt_salt=str(get("llm_prompt_salt") or secrets.token_hex(4)),
        url_credentials=credentials,
        repeat=int(_number(get("llm_repeat"), "--llm-repeat", minimum=1, integer=True)),
        history=int(_number(get("llm_history"), "--llm-history", minimum=1, integer=True)),
        busy_machine=busy,
        client_workers=_workers(get("llm_client_workers")),
        keep_alive=connections == "keep-alive",
        cpu_pinning=pinning == "auto",
        gpus_per_worker=int(_number(gpus, "--llm-gpus-per-worker", minimum=1, integer=True))
        if gpus is not None
        else None,
        candidate=_candidate(get),
        ab_blocks=int(_number(get("llm_ab_blocks"), "--llm-ab-blocks", minimum=4, integer=True)),
        ab_tolerance=_percent(get("llm_ab_tolerance"), "--llm-ab-tolerance"),
    )


def _candidate(get: Callable[[str], Any]) -> Candidate | None:
    """The A/B candidate the options name, or ``None``; its URL carries no credentials."""
    url = get("llm_candidate_base_url")
    model = get("llm_candidate_model")
    options = _pairs(_list(get("llm_candidate_server_option")), "--llm-candidate-server-option", "threads=1")
    if not (url or model or options):
        return None
    if url and urlsplit(str(url)).password is not None:
        raise ConfigError(
            "--llm-candidate-base-url must not carry a password (results would show it): "
            "use --llm-api-key-env for both sides"
        )
    if url and options:
        raise ConfigError(
            "--llm-candidate-server-option starts a candidate server, but --llm-candidate-base-url attaches "
            "to one: give one of them"
        )
    return Candidate(str(url).rstrip("/") if url else None, str(model) if model else None, options)


def _percent(raw: object, flag: str) -> float:
    """``2%`` or ``0.02``: a fraction in [0, 1)."""
    text = str(raw).strip()
    number = text.removesuffix("%")
    try:
        value = float(number) / (100 if text.endswith("%") else 1)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1:
        raise ConfigError(f"{flag} takes a percentage such as 2% (or a fraction such as 0.02), not {raw!r}")
    return value


def _workers(raw: object) -> int | None:
    """``--llm-client-workers``: a whole number >= 1, or ``auto`` (``None``)."""
    text = str(raw).strip().lower()
    if text == "auto":
        return None
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(
            f"--llm-client-workers takes a whole number >= 1 or auto, not {raw!r}; "
            "for example --llm-client-workers=2"
        )
    return int(text)
