"""Judging: a measured run, budgets and a baseline in, one ``Outcome`` out.

``budgets`` parses limits (marker, pyproject, command line, MLPerf
presets); ``baseline`` finds and validates saved pytest-benchmark runs and
keeps failed ones out of the history; ``noise`` is the model of how far
unchanged runs move; ``busy`` says when the machine was too busy to
measure; ``verdict`` compares a run with budgets and baselines and decides
the kind; ``capacity`` searches for the highest load that still meets a
budget; ``evidence`` picks a case's baseline runs from the history and
measures its repeats' spread. No file is written and nothing is measured
here, and nothing here imports pytest, the session, the plugin or the
writers (``pytest_llmperf.pytest.gate`` reads each test's budgets, baseline
and repeats from pytest's items and asks here).
"""
