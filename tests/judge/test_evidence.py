"""Which case a repeat measures: the pure half of the gate (``judge.evidence``)."""

from __future__ import annotations

import pytest

from pytest_llmperf.judge.evidence import case_of, repeat_id


@pytest.mark.parametrize(
    ("nodeid", "repeat", "case"),
    [
        ("t.py::test_x[gemma3-270m-repeat2-4]", 2, "t.py::test_x[gemma3-270m-4]"),
        ("t.py::test_x[gemma3-270m-repeat12]", 12, "t.py::test_x[gemma3-270m]"),
        ("t.py::test_x[repeat1-gemma3-270m]", 1, "t.py::test_x[gemma3-270m]"),
        ("t.py::test_x[repeat3]", 3, "t.py::test_x"),
        # repeat1 must not match inside repeat12, nor a model that happens to contain the word.
        ("t.py::test_x[my-repeat1x-repeat1]", 1, "t.py::test_x[my-repeat1x]"),
        ("t.py::test_x[gemma3-270m-4]", None, "t.py::test_x[gemma3-270m-4]"),
    ],
)
def test_the_case_of_a_repeat_is_its_id_without_the_repeat(
    nodeid: str, repeat: int | None, case: str
) -> None:
    assert case_of(nodeid, repeat) == case
    assert repeat_id(2) == "repeat2"
