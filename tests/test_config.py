"""Settings resolution: command line > ini, and clear errors for bad values."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from pytest_llmperf.config import OPTIONS, Settings, load_pyproject, resolve
from pytest_llmperf.errors import ConfigError


def settings(cli: dict[str, object] | None = None, ini: dict[str, object] | None = None) -> Settings:
    cli, ini = cli or {}, ini or {}
    return resolve(lambda o: cli.get(o.dest), lambda key: ini.get(key, ""), {})


def test_defaults() -> None:
    s = settings()
    assert s.models == ()
    assert s.backend is None
    assert s.start_timeout_s == 600.0
    assert s.request_timeout_s == 300.0
    assert s.telemetry_interval_s == 0.1
    assert s.hardware_mismatch == "warn"
    assert s.budgets == ()
    assert (s.repeat, s.history, s.busy_machine) == (1, 5, "fail")


def test_repeat_history_and_busy_machine() -> None:
    s = settings({"llm_repeat": "3", "llm_history": "8", "llm_busy_machine": "warn"})
    assert (s.repeat, s.history, s.busy_machine) == (3, 8, "warn")
    assert settings(ini={"llm_repeat": "2"}).repeat == 2
    with pytest.raises(ConfigError, match="--llm-repeat takes a whole number >= 1, not '0'"):
        settings({"llm_repeat": "0"})
    with pytest.raises(ConfigError, match=r"--llm-history takes a whole number >= 1, not '2\.5'"):
        settings({"llm_history": "2.5"})
    with pytest.raises(ConfigError, match="--llm-busy-machine takes one of warn, fail, ignore, not 'loud'"):
        settings({"llm_busy_machine": "loud"})


def test_command_line_beats_ini() -> None:
    s = settings(
        {"llm_backend": "vllm", "llm_model": ["a", "b", "a"]}, {"llm_backend": "ollama", "llm_model": ["c"]}
    )
    assert s.backend == "vllm"
    assert s.models == ("a", "b")


def test_ini_used_when_command_line_is_silent() -> None:
    s = settings(ini={"llm_model": ["qwen2.5-7b"], "llm_start_timeout": "42"})
    assert s.models == ("qwen2.5-7b",)
    assert s.start_timeout_s == 42.0


def test_every_ini_key_is_its_flag_without_dashes() -> None:
    assert {o.flag: o.dest for o in OPTIONS if o.ini_type is not None}["--llm-model"] == "llm_model"
    assert all(o.dest == o.flag[2:].replace("-", "_") for o in OPTIONS)


def test_the_plural_ini_keys_of_0_1_still_work_with_a_notice() -> None:
    s = settings(ini={"llm_models": ["qwen2.5-7b"], "llm_budgets": ["ttft_ms_p95=500"]})
    assert s.models == ("qwen2.5-7b",)
    assert s.budgets == ("ttft_ms_p95=500",)
    assert s.notices == (
        "ini key llm_models is deprecated and will stop working in the next release: "
        "rename it to llm_model (the flag --llm-model without its dashes)",
        "ini key llm_budgets is deprecated and will stop working in the next release: "
        "rename it to llm_budget (the flag --llm-budget without its dashes)",
    )
    assert settings(ini={"llm_model": ["a"], "llm_models": ["b"]}).models == ("a",)
    assert settings(ini={"llm_model": ["a"]}).notices == ()


def test_pairs_are_parsed() -> None:
    s = settings(
        {
            "llm_budget": ["ttft_ms_p95=500", "error_rate_max = 0"],
            "llm_server_option": ["tensor_parallel_size=2"],
        }
    )
    assert s.budgets == ("ttft_ms_p95=500", "error_rate_max = 0")
    assert s.server_options == {"tensor_parallel_size": "2"}


@pytest.mark.parametrize(
    ("cli", "message"),
    [
        ({"llm_backend": "tgi"}, "unknown backend 'tgi': use one of llamacpp, vllm, ollama, openai"),
        (
            {"llm_backend": "openai"},
            "--llm-backend=openai attaches to a running endpoint: add --llm-base-url=URL",
        ),
        ({"llm_base_url": "localhost:8000"}, "--llm-base-url must start with http:// or https://"),
        ({"llm_start_timeout": "soon"}, "--llm-start-timeout takes a number, not 'soon'"),
        ({"llm_max_concurrency": "2.5"}, "--llm-max-concurrency takes a whole number >= 1"),
        ({"llm_base_url": "http://x", "llm_backend": "vllm"}, "--llm-base-url attaches to a running server"),
    ],
)
def test_bad_values_say_what_to_type(cli: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings(cli)
    assert message in str(info.value)


def test_every_option_has_help_and_an_ini_key_or_is_a_command() -> None:
    for option in OPTIONS:
        assert option.flag.startswith("--llm-")
        assert option.help
        assert option.ini_type is not None or option.dest == "llm_fit"


def test_pyproject_tables(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.llmperf.budgets."gemma3-270m"]\nttft_ms_p95 = 900\n')
    assert load_pyproject(tmp_path) == {"budgets": {"gemma3-270m": {"ttft_ms_p95": 900}}}
    (tmp_path / "pyproject.toml").write_text("[tool.llmperf]\nbudget = 1\n")
    with pytest.raises(ConfigError, match="unknown keys \\['budget'\\]"):
        load_pyproject(tmp_path)
    (tmp_path / "pyproject.toml").write_text("[tool.llmperf\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_pyproject(tmp_path)


def test_an_in_process_session_gives_back_the_sigterm_handler(pytester: pytest.Pytester) -> None:
    import signal

    before = signal.getsignal(signal.SIGTERM)
    pytester.makepyfile(
        test_x="import signal\n\ndef test_x():\n    assert callable(signal.getsignal(signal.SIGTERM))\n"
    )
    pytester.runpytest_inprocess().assert_outcomes(passed=1)
    assert signal.getsignal(signal.SIGTERM) == before


def test_credentials_in_the_base_url_are_split_off_and_never_shown() -> None:
    s = settings({"llm_backend": "openai", "llm_base_url": "http://alice:s%40cret@127.0.0.1:8000/v1/"})
    assert s.base_url == "http://127.0.0.1:8000/v1"
    assert s.url_credentials == ("alice", "s@cret")
    token = base64.b64encode(b"alice:s@cret").decode()
    assert s.auth_headers == {"Authorization": f"Basic {token}"}
    assert "s@cret" not in repr(s)
    assert "alice" not in repr(s)
    placeholders = dict(s.redactions)
    assert set(placeholders) == {"alice:s@cret", token, "s@cret"}
    assert set(placeholders.values()) == {"<redacted: --llm-base-url credentials>"}
    assert [len(secret) for secret, _ in s.redactions] == sorted((len(x) for x in placeholders), reverse=True)


def test_an_api_key_is_a_bearer_token_and_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", "sk-123")
    s = settings({"llm_backend": "openai", "llm_base_url": "http://h:1", "llm_api_key_env": "MY_KEY"})
    assert s.auth_headers == {"Authorization": "Bearer sk-123"}
    assert s.redactions == (("sk-123", "<redacted: --llm-api-key-env>"),)
    assert settings().auth_headers == {}
    assert settings().redactions == ()


@pytest.mark.parametrize(
    ("cli", "message"),
    [
        (
            {"llm_backend": "openai", "llm_base_url": "http://a:pw@h:1", "llm_api_key_env": "K"},
            "--llm-base-url carries credentials (user:password@) and --llm-api-key-env names a key: give one",
        ),
        (
            {"llm_backend": "ollama", "llm_base_url": "http://a:pw@h:1"},
            "the ollama backend sends no credentials: drop user:password@ from --llm-base-url",
        ),
        ({"llm_base_url": "a:pw@h:1"}, "--llm-base-url must start with http:// or https://, not 'h:1'"),
    ],
)
def test_credentials_that_cannot_be_used_are_refused_without_showing_them(
    cli: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        settings(cli)
    assert str(info.value).startswith(message)
    assert "pw" not in str(info.value)


def test_the_prompt_salt_is_random_per_session_unless_given() -> None:
    first, second = settings().prompt_salt, settings().prompt_salt
    assert len(first) == 8
    assert first != second
    assert settings({"llm_prompt_salt": "fixed-7"}).prompt_salt == "fixed-7"
    assert settings(ini={"llm_prompt_salt": "from-ini"}).prompt_salt == "from-ini"


def test_client_workers_connections_pinning_and_gpus() -> None:
    s = settings()
    assert (s.client_workers, s.keep_alive, s.cpu_pinning, s.gpus_per_worker) == (1, True, True, None)
    s = settings(
        {"llm_client_workers": "auto", "llm_connections": "per-request", "llm_cpu_pinning": "off",
         "llm_gpus_per_worker": "2"}
    )  # fmt: skip
    assert (s.client_workers, s.keep_alive, s.cpu_pinning, s.gpus_per_worker) == (None, False, False, 2)
    assert settings(ini={"llm_client_workers": "4"}).client_workers == 4
    with pytest.raises(ConfigError) as info:
        settings({"llm_client_workers": "0"})
    assert str(info.value) == (
        "--llm-client-workers takes a whole number >= 1 or auto, not '0'; for example --llm-client-workers=2"
    )
    with pytest.raises(ConfigError, match="--llm-connections takes keep-alive or per-request, not 'pooled'"):
        settings(ini={"llm_connections": "pooled"})
    with pytest.raises(ConfigError, match="--llm-cpu-pinning takes auto or off, not 'on'"):
        settings(ini={"llm_cpu_pinning": "on"})
    with pytest.raises(ConfigError, match="--llm-gpus-per-worker takes a whole number >= 1, not '0'"):
        settings({"llm_gpus_per_worker": "0"})
