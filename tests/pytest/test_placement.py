"""The session's placement of servers and client: GPUs per pytest-xdist worker, client settings per model."""

from __future__ import annotations

import dataclasses
import os

import pytest

from pytest_llmperf.config import Settings, resolve
from pytest_llmperf.measure.runner import ClientSettings
from pytest_llmperf.pytest.placement import Placement


def settings(**cli: object) -> Settings:
    return resolve(lambda o: cli.get(o.dest), lambda key: "", {})


@pytest.mark.parametrize(("worker", "expected"), [("gw0", "4,5"), ("gw1", "6,7")])
def test_each_xdist_worker_gets_its_own_gpus(
    monkeypatch: pytest.MonkeyPatch, worker: str, expected: str
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    placement = Placement(settings(llm_gpus_per_worker="2"), lambda m: "vllm", lambda m: False)
    assert placement.gpus == tuple(expected.split(","))
    assert os.environ["CUDA_VISIBLE_DEVICES"] == expected


def test_the_xdist_controller_leaves_the_gpus_to_its_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    placement = Placement(
        settings(llm_gpus_per_worker="2"), lambda m: "vllm", lambda m: False, xdist_controller=True
    )
    assert placement.gpus is None
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"  # the workers split all four


def test_client_settings_follow_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    s = dataclasses.replace(settings(llm_connections="per-request"), client_workers=None)
    attached = Placement(s, lambda m: "openai", lambda m: True)
    plan = attached.plan("m")
    assert (plan.server_cores, plan.client_cores) == (None, None)
    assert attached.client_settings("m") == ClientSettings(workers=plan.workers, keep_alive=False, cores=None)
    started = Placement(settings(), lambda m: "llamacpp", lambda m: False)
    plan = started.plan("m")
    expected_cores = plan.client_cores
    assert started.client_settings("m") == ClientSettings(workers=1, keep_alive=True, cores=expected_cores)
