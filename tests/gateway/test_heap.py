"""Start-up moves the long-lived heap out of the garbage collector's reach (gateway/gc_pauses.py)."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

from tests.conftest import base_config


def test_start_up_freezes_the_long_lived_heap(make_gateway: Any, fake_upstream: str, tmp_path: Path) -> None:
    gc.unfreeze()  # earlier tests in this process may have frozen their own gateways' heaps
    assert gc.get_freeze_count() == 0
    make_gateway(base_config(fake_upstream, tmp_path))
    # settings, runtime and the scrubber's name lists: tens of thousands of objects a full pass would walk
    assert gc.get_freeze_count() > 10_000
