"""Everything that knows pytest and pytest-benchmark: the plugin and the session it keeps.

``plugin`` is the only ``pytest11`` entry point (options, ini keys, markers,
fixtures, hooks); it keeps one ``session.LlmPerfSession`` in ``config.stash``,
which composes the session's parts by concern: ``lifecycle`` (the servers,
one per model, and their cores through ``placement``), ``recording`` (each
test's ``llm_perf`` wired to narrow callables, its cases recorded, the
pytest-benchmark hooks), ``reporting`` (warnings, machine info, the summary
and the end of the session), ``testreport`` (each test's final outcome from
pytest's reports), ``gate`` (each test's budgets, baseline and repeats, read
from its items and options) and ``xdistmerge`` (pytest-xdist workers'
results merged by the controller).

No module outside this package imports pytest; nothing here measures (that
is ``perf`` and ``measure``) or judges a value (``judge``).
"""
