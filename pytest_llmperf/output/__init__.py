"""Writing: finished values in, files and lines out.

``benchjson`` fills the pytest-benchmark entry of a test, ``requestlog``
writes the per-request JSONL and telemetry series, ``report`` renders the
terminal table, the Markdown summary, the PNG plots and the JUnit
properties. Writers receive finished values (``CaseResult``, ``RunResult``,
``Outcome``); they must not measure, judge, or change an outcome, and
must not import the session or the plugin.
"""
