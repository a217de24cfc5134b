"""``python -m pytest_llmperf compare|report ...``: see ``pytest_llmperf.cli``."""

from __future__ import annotations

import sys

from pytest_llmperf.cli import main

if __name__ == "__main__":
    sys.exit(main())
