"""bench/index_storage.py through the real registry on SQLite, small: each example is stored once
however many versions hold it, and the versions keep only their addresses."""

from __future__ import annotations

from pathlib import Path

from bench.index_storage import run


async def test_many_versions_store_each_example_once(tmp_path: Path) -> None:
    f = await run(versions=12, per_version=3, url=f"sqlite:///{tmp_path}/flywheel.db")
    assert f["example_rows"] == 36  # the last version's 36 examples: each stored once for all 12 versions
    # inline, the 12 versions would hold 3 + 6 + ... + 36 = 234 examples
    assert f["example_bytes"] * 5 < f["inline_bytes"]
