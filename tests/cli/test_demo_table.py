"""The demo's table never cuts its headers: the full table only where it fits whole."""

from __future__ import annotations

import pytest
from rich.console import Console

from flywheel.demo.stats import Serving, WindowStats
from flywheel.demo.view import COLUMNS, window_table

WINDOW = WindowStats(1451, 1500, 0.72, 0.4, 0.000123, 0.012, 12, 0.3, Serving("t13", "t14", "i15", "i16", 0.1))


@pytest.mark.parametrize("width", [80, 110, 130, 145, 200])
def test_headers_are_whole_at_every_width(width: int) -> None:
    console = Console(width=width, record=True)
    console.print(window_table([WINDOW], width))
    text = console.export_text()
    assert "…" not in text
    header = text.splitlines()[0]
    wide = [c.header for c in COLUMNS if c.header]
    assert all(h in header for h in wide) or all(c.short.strip() in header for c in COLUMNS if c.short.strip())
    if width >= 200:
        assert all(h in header for h in wide)  # the full table where there is room
