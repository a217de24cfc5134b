"""Judging: a measured run, budgets and a baseline in, one ``Outcome`` out.

``budgets`` parses limits (marker, pyproject, command line, MLPerf
presets); ``baseline`` finds and validates saved pytest-benchmark runs and
keeps failed ones out of the history; ``noise`` is the model of how far
unchanged runs move; ``busy`` says when the machine was too busy to
measure; ``verdict`` compares a run with budgets and baselines and decides
the kind; ``capacity`` searches for the highest load that still meets a
budget; ``gate`` is the thin glue that picks each test's budgets, baseline
runs and repeats for the plugin. No file is written and nothing is measured here;
only ``gate`` knows pytest, and nothing imports the session, the plugin
or the writers.
"""
