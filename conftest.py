"""Repository-level pytest configuration.

The plugin itself is loaded through its ``pytest11`` entry point, never from
here. ``benchmarks/`` holds scripts that print figures; they are not tests.
"""

collect_ignore = ["benchmarks"]
