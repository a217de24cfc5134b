"""The pytest11 entry point: options, ini keys, markers, fixtures and hooks.

Everything stateful lives in ``LlmPerfSession`` (``session.py``), kept in
``config.stash``, and its parts (servers, recording, reporting); this module
only declares things and delegates. Heavy
modules are imported when a test needs a server, not at plugin load.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_llmperf.config import OPTIONS, load_pyproject, resolve
from pytest_llmperf.errors import ConfigError, LlmPerfError

if TYPE_CHECKING:
    from pytest_llmperf.perf import LlmPerf
    from pytest_llmperf.pytest.session import LlmPerfSession
    from pytest_llmperf.servers.base import Server

SESSION_KEY = pytest.StashKey["LlmPerfSession"]()
SALT_KEY = "llmperf_prompt_salt"
"""The controller's prompt salt, in each pytest-xdist worker's ``workerinput``."""
SERVER_FIXTURES = ("llm_server", "llm_perf")

MARKERS = (
    "llm_budget(*presets, **limits): latency/throughput budget for this test, e.g. "
    "llm_budget('mlperf-llama3.1-8b', ttft_ms_p95=500, output_tok_per_s_min=200)",
    "llm_models(*names): run this test only for these models",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llmperf", "LLM serving performance (pytest-llmperf)")
    for option in OPTIONS:
        kwargs: dict[str, Any] = {"dest": option.dest, "action": option.action, "help": option.help}
        if option.action != "store_true":
            kwargs["metavar"] = option.metavar
        if option.choices:
            kwargs["choices"] = option.choices
        group.addoption(option.flag, **kwargs)
        if option.ini_type is not None:
            parser.addini(option.dest, option.help, type=option.ini_type)
        if option.legacy_ini_key is not None:
            parser.addini(option.legacy_ini_key, f"deprecated: use {option.dest}", type=option.ini_type)


def pytest_configure(config: pytest.Config) -> None:
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    if config.option.help or getattr(config.option, "version", False):
        return
    try:
        settings = resolve(
            lambda o: config.getoption(o.dest),
            config.getini,
            load_pyproject(config.rootpath),
        )
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    worker_salt = getattr(config, "workerinput", {}).get(SALT_KEY)
    if worker_salt:
        # A pytest-xdist worker sends the controller's prompts: one salt, printed once, repeats them all.
        settings = dataclasses.replace(settings, prompt_salt=worker_salt)
    from pytest_llmperf.pytest.session import LlmPerfSession

    bench_json = config.getoption("benchmark_json", None)
    if isinstance(bench_json, (str, Path)):
        # pytest-benchmark writes it only at the very end; a missing folder would lose the run.
        Path(bench_json).parent.mkdir(parents=True, exist_ok=True)

    try:
        config.stash[SESSION_KEY] = LlmPerfSession(config, settings)
    except LlmPerfError as exc:
        raise pytest.UsageError(str(exc)) from None
    # pytest's outcomes for the mark on the saved run (gate.SessionTally).
    config.pluginmanager.register(config.stash[SESSION_KEY].gate.tally, "llmperf-session-tally")


def pytest_report_header(config: pytest.Config) -> list[str]:
    if SESSION_KEY not in config.stash:
        return []
    settings = _session(config).settings
    salt = settings.prompt_salt
    salt_line = f"llmperf: prompt salt {salt} (--llm-prompt-salt={salt} sends these prompts again)"
    return [salt_line, *(f"llmperf: {notice}" for notice in settings.notices)]


def _session(config: pytest.Config) -> LlmPerfSession:
    return config.stash[SESSION_KEY]


def pytest_unconfigure(config: pytest.Config) -> None:
    if SESSION_KEY in config.stash:
        session = _session(config)
        session.close()
        session.servers.restore_signal_handlers()


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> int | None:
    if config.getoption("llm_fit", False):
        from pytest_llmperf.pytest.reporting import fit_table

        print(fit_table(config))
        return 0
    return None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if not any(name in metafunc.fixturenames for name in SERVER_FIXTURES):
        return
    session = _session(metafunc.config)
    models = session.models_for(metafunc.definition)
    # Session scope groups each model's tests together, so one server runs at a time.
    metafunc.parametrize("llm_model", models, ids=models, scope="session")
    _parametrize_repeats(metafunc, session.settings.repeat)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _session(config).plan(items)
    # After pytest's own reordering by fixture scope: interleave repeats, count the cases.
    _session(config).gate.plan(items)


@pytest.fixture(scope="session")
def llm_server(request: pytest.FixtureRequest, llm_model: str) -> Iterator[Server]:
    """The running server for ``llm_model``: started once per model, stopped after its last test.

    It follows restarts: when a run needs more slots or context, the value is the new server.
    """
    servers = _session(request.config).servers
    if servers.basetemp is None:
        servers.basetemp = _basetemp(request)
    server = servers.start(llm_model)
    try:
        yield server
    finally:
        servers.stop(llm_model)


def _basetemp(request: pytest.FixtureRequest) -> Path | None:
    """pytest's base temporary directory, where the servers' logs go; ``None`` under ``-p no:tmpdir``."""
    try:
        factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
    except pytest.FixtureLookupError:
        return None
    return factory.getbasetemp()


@pytest.fixture
def llm_perf(
    request: pytest.FixtureRequest, llm_server: Server, llm_model: str, llm_repeat: int | None
) -> Iterator[LlmPerf]:
    """Runs measured scenarios against the model's server: ``llm_perf.run(input_tokens=..., ...)``."""
    session = _session(request.config)
    # A model whose server died errors here, at setup, before its benchmark entry is opened.
    session.servers.check(llm_model, llm_server)
    benchmark = request.getfixturevalue("benchmark")
    yield session.recording.perf_for(request.node, llm_model, llm_server, benchmark)
    session.recording.release(request.node, benchmark)


def _one_line(item: pytest.Item, when: str) -> Generator[None, object, object]:
    """Run a test phase; an ``LlmPerfError`` from it fails without a traceback."""
    try:
        return (yield)
    except LlmPerfError as exc:
        if SESSION_KEY not in item.config.stash:
            raise
        raise _session(item.config).recording.failure(item, exc, when) from None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _one_line(item, "setup"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    result = yield from _one_line(item, "call")
    # The test body passed; a budget, regression or invalid measurement still fails it.
    if SESSION_KEY in item.config.stash:
        _session(item.config).recording.enforce(item)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _one_line(item, "teardown"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    if SESSION_KEY in item.config.stash:
        # The test's outcome, final at teardown, goes into every artifact from here.
        _session(item.config).recording.on_report(item, call, report)
    return report


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> tuple[str, str, str] | None:
    if report.when == "call" and getattr(report, "llmperf_invalid", False):
        return "invalid", "I", "INVALID"
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    # First, so pytest-benchmark's own table (printed after ours) shows only when asked for.
    if SESSION_KEY in config.stash:
        session = _session(config)
        session.reporting.terminal_summary(terminalreporter)
        session.recording.hide_benchmark_table()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> Generator[None, object, object]:
    # Every test has been reported by now. Stop the servers and write the report before the
    # terminal summary, and look before pytest-benchmark saves (in its own wrapper, inside
    # this one), so that it has nothing to warn about.
    if SESSION_KEY in session.config.stash:
        ours = _session(session.config)
        ours.finish()
        ours.recording.before_benchmark_save()
    return (yield)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    # pytest-xdist's controller, before a worker starts: it uses the controller's prompt salt.
    if SESSION_KEY in node.config.stash:
        node.workerinput[SALT_KEY] = _session(node.config).settings.prompt_salt


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    # pytest-xdist's controller: a worker finished; merge its entries, table rows and report rows.
    if SESSION_KEY in node.config.stash:
        _session(node.config).recording.merge_worker(node)


def pytest_benchmark_update_json(
    config: pytest.Config, benchmarks: list[Any], output_json: dict[str, Any]
) -> None:
    if SESSION_KEY in config.stash:
        from pytest_llmperf.schema import RUN_MARK_KEY

        session = _session(config)
        session.recording.update_json(output_json, benchmarks)
        # A failed, errored, invalid or interrupted session is marked so, and never becomes a baseline.
        output_json[RUN_MARK_KEY] = session.gate.tally.mark()


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    if SESSION_KEY in config.stash:
        machine_info["llmperf"] = _session(config).reporting.machine_info()


# -- issue 14: interleaved repeats and the mark on a saved run (gate owns both) ---------------


@pytest.fixture
def llm_repeat() -> int | None:
    """Which repeat of its case this test is (``--llm-repeat K`` parametrizes it 1..K); ``None`` without."""
    return None


def _parametrize_repeats(metafunc: pytest.Metafunc, repeats: int) -> None:
    from pytest_llmperf.pytest.gate import REPEAT_PARAM, repeat_id

    if repeats > 1 and "llm_perf" in metafunc.fixturenames:
        values = list(range(1, repeats + 1))
        metafunc.parametrize(REPEAT_PARAM, values, ids=[repeat_id(v) for v in values])
