"""Judging: a measured run, budgets and a baseline in, one ``Outcome`` out.

``budgets`` parses limits (marker, pyproject, command line, MLPerf
presets); ``baseline`` finds and validates a saved pytest-benchmark run;
``verdict`` compares a run with both, noise-aware, and decides the kind;
``capacity`` searches for the highest load that still meets a budget;
``gate`` is the thin glue that picks each test's budgets and baseline
entry for the plugin. No file is written and nothing is measured here;
only ``gate`` knows pytest, and nothing imports the session, the plugin
or the writers.
"""
