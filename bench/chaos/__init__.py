"""Chaos drills for issue #18: `python -m bench.chaos --help`."""
