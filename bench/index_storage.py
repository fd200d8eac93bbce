"""What a route's index versions cost the store as corrections keep arriving.

    python -m bench.index_storage [--versions 300] [--per-version 5] [--store sqlite|postgres]

The learners store an index version per batch of corrections, each holding every example of the
route; on a busy route a version every few seconds. This replays that through the real registry
(`gateway/store/artifacts.py`) on a fresh store: version n holds `per-version` × n examples (~250
bytes each, the size of a short correction); each is a canary that the next one supersedes
(rejected), and every tenth is promoted, as the loop does. Printed: the store's bytes for artifact
rows, for the example rows (gateway/store/index_examples.py), and what the same versions took
before examples were stored once (inline, with the vectors of every promoted version); the store's
file size for SQLite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

from bench.console_pages import pg_admin
from gateway.store import open_store
from gateway.store.artifacts import ArtifactRegistry, Manifest
from gateway.store.sql import SqlStore
from retrieval.embeddings import HashingEmbedder
from retrieval.examples import VECTORS, Example, ExampleIndex

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
ROUTE = "support"


def example(i: int) -> Example:
    """A correction of ~250 bytes as stored (its question, answer, ids and time)."""
    return Example(f"chatcmpl-{i:08d}#fb-{i:08d}", f"How do I change the billing address on invoice {i} for my team?",
                   f"Open Settings, then Billing, and edit the address; invoice {i} is reissued within a day.",
                   f"chatcmpl-{i:08d}", "correction", 1_790_000_000.0 + i)


async def _bytes(store: SqlStore, sql: str) -> int:
    async with store._read() as conn:
        value = (await conn.fetch(sql))[0][0]
    return int(value or 0)


async def run(versions: int, per_version: int, url: str) -> dict[str, float]:
    """Write the versions; the store's figures."""
    store = open_store(url)
    assert isinstance(store, SqlStore)
    await store.migrate()
    registry = ArtifactRegistry(store)
    embedder = HashingEmbedder()
    inline = before = 0
    vectors: dict[str, int] = {}  # version -> its vectors' bytes
    started = time.perf_counter()
    previous: str | None = None
    try:
        for n in range(1, versions + 1):
            body = ExampleIndex.build([example(i) for i in range(n * per_version)], embedder).to_body()
            slim = len(json.dumps({k: v for k, v in body.items() if k != VECTORS}))
            inline += slim
            rec = await registry.save_candidate(ROUTE, "index", body, Manifest(produced_by="bench"))
            vectors[rec.version] = len(json.dumps(body)) - slim
            if previous is not None:
                await registry.move(ROUTE, "index", previous, "rejected", f"superseded by {rec.version}")
            await registry.move(ROUTE, "index", rec.version, "canary", "grown")
            if n % 10 == 0:
                await registry.move(ROUTE, "index", rec.version, "promoted", "decided")
                previous = None
            else:
                previous = rec.version
        wall = time.perf_counter() - started
        # before examples were stored once: inline, and every promoted version and the canary kept vectors
        states = await registry.states(ROUTE, "index")
        before = inline + sum(vectors[v] for v, st in states.versions.items() if st.state in ("promoted", "canary"))
        figures = {
            "artifact_bytes": await _bytes(store, "SELECT SUM(LENGTH(body)) FROM artifacts"),
            "example_bytes": await _bytes(store, "SELECT SUM(LENGTH(body)) FROM index_examples"),
            "example_rows": await _bytes(store, "SELECT COUNT(*) FROM index_examples"),
            "inline_bytes": inline, "before_bytes": before, "wall_s": wall,
        }
    finally:
        await store.close()
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--versions", type=int, default=300)
    ap.add_argument("--per-version", type=int, default=5)
    ap.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "flywheel.db"
        url = f"sqlite:///{db}"
        if args.store == "postgres":
            schema = f"bench_index_storage_{os.getpid()}"
            url = f"{PG_URL}?search_path={schema}"
            asyncio.run(pg_admin(PG_URL, f"CREATE SCHEMA {schema}"))
        try:
            f = asyncio.run(run(args.versions, args.per_version, url))
        finally:
            if args.store == "postgres":
                asyncio.run(pg_admin(PG_URL, f"DROP SCHEMA {schema} CASCADE"))
        size = sum(p.stat().st_size for p in Path(tmp).glob("flywheel.db*")) if args.store == "sqlite" else None
    mib = 1024 * 1024
    last = args.versions * args.per_version
    stored = f["artifact_bytes"] + f["example_bytes"]
    print(f"{args.versions} index versions ({args.per_version} to {last} examples), {args.store}, "
          f"written in {f['wall_s']:.1f} s")
    print(f"  artifact rows {f['artifact_bytes'] / mib:.1f} MiB + example rows {f['example_bytes'] / mib:.2f} MiB "
          f"({f['example_rows']:.0f} rows) = {stored / mib:.1f} MiB"
          + (f"; store file {size / mib:.1f} MiB" if size is not None else ""))
    print(f"  the same versions as stored before (examples inline; every promoted version's vectors kept): "
          f"{f['before_bytes'] / mib:.1f} MiB ({f['before_bytes'] / stored:.1f}x); their examples alone, inline: "
          f"{f['inline_bytes'] / mib:.1f} MiB ({f['inline_bytes'] / stored:.1f}x)")


if __name__ == "__main__":
    main()
