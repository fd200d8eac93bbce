"""The store's schema as one ordered list of named migrations (simonw/llm style).

Each migration is `(name, step)`: `step` is SQL text (statements separated by `;`, with
`{serial_pk}` standing for the dialect's auto-increment key) or an async function that
receives the connection and the dialect. `apply` runs the missing ones in order, inside
one transaction, and records each name in `_migrations`; re-running it is a no-op.
Append new migrations at the end; never edit or reorder one that has shipped.

Portable types only: TEXT, INTEGER, BIGINT, DOUBLE PRECISION. Booleans are INTEGER 0/1,
JSON payloads are TEXT, timestamps are unix seconds. `user` is a reserved word in
PostgreSQL, hence the `user_id` columns.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

from gateway.store.dialect import Conn, Dialect
from gateway.store.key_states import MIGRATION as KEYS
from gateway.store.responses import MIGRATION as RESPONSES
from gateway.store.rollups import migrate as ROLLUPS

MigrationFn = Callable[[Conn, Dialect], Awaitable[None]]
Migration = tuple[str, str | MigrationFn]

_CALLS = """
CREATE TABLE calls (
    id TEXT PRIMARY KEY,
    route TEXT NOT NULL,
    variant TEXT NOT NULL,
    model TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    key_id TEXT,
    user_id TEXT,
    session_id TEXT,
    template_version TEXT,
    index_version TEXT,
    policy_version TEXT,
    policy_reason TEXT NOT NULL DEFAULT '',
    choice_probability DOUBLE PRECISION,
    request TEXT,
    response TEXT,
    status INTEGER NOT NULL,
    error TEXT,
    prompt_tokens BIGINT,
    completion_tokens BIGINT,
    cost_usd DOUBLE PRECISION,
    latency_ms DOUBLE PRECISION NOT NULL,
    ttft_ms DOUBLE PRECISION,
    stream INTEGER NOT NULL DEFAULT 0,
    no_log INTEGER NOT NULL DEFAULT 0,
    retrieved_ids TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE attempts (
    call_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    status INTEGER,
    error TEXT,
    latency_ms DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (call_id, seq)
)
"""

# call_blobs lets deletions (retention, forget_user) find and drop blobs nobody refers to.
_BLOBS = """
CREATE TABLE blobs (
    hash TEXT PRIMARY KEY,
    text TEXT NOT NULL
);
CREATE TABLE call_blobs (
    call_id TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (call_id, hash)
)
"""

# No foreign key to calls: feedback may land before its call (the writer batches calls,
# and a call can sit in the spill file while the database is down).
_FEEDBACK = """
CREATE TABLE feedback (
    id TEXT PRIMARY KEY,
    call_id TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    rating INTEGER,
    score DOUBLE PRECISION,
    correction TEXT,
    correction_diff TEXT,
    signal TEXT,
    comment TEXT,
    user_id TEXT,
    source TEXT NOT NULL,
    related_call_id TEXT
)
"""

_ARTIFACTS = """
CREATE TABLE artifacts (
    route TEXT NOT NULL,
    kind TEXT NOT NULL,
    version TEXT NOT NULL,
    body TEXT,
    state TEXT NOT NULL,
    parent TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    produced_by TEXT NOT NULL DEFAULT '',
    window_start DOUBLE PRECISION,
    window_end DOUBLE PRECISION,
    evidence_call_ids TEXT NOT NULL DEFAULT '[]',
    evidence_feedback_ids TEXT NOT NULL DEFAULT '[]',
    evaluation TEXT,
    note TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (route, kind, version)
);
CREATE TABLE transitions (
    id {serial_pk},
    route TEXT NOT NULL,
    kind TEXT NOT NULL,
    version TEXT NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    reason TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL
)
"""

_INDICES = """
CREATE INDEX calls_route_created ON calls (route, created_at);
CREATE INDEX calls_created ON calls (created_at);
CREATE INDEX calls_user ON calls (user_id);
CREATE INDEX calls_session ON calls (session_id);
CREATE INDEX call_blobs_hash ON call_blobs (hash);
CREATE INDEX feedback_call ON feedback (call_id);
CREATE INDEX feedback_created ON feedback (created_at);
CREATE INDEX feedback_user ON feedback (user_id);
CREATE INDEX artifacts_route_kind_created ON artifacts (route, kind, created_at);
CREATE INDEX transitions_route_at ON transitions (route, at)
"""

# `flywheel forget` leaves a tombstone: calls of that user made before it, still queued in a
# running gateway or waiting in its spill file, are dropped when they reach the store. The user
# id is kept as its SHA-256 only; retention deletes tombstones with the calls of their age.
_FORGOTTEN = """
CREATE TABLE forgotten_users (
    user_hash TEXT PRIMARY KEY,
    forgotten_at DOUBLE PRECISION NOT NULL
)
"""

# Index examples stored once per route by content address; example_id (`<call id>#<feedback id>`)
# lets forgetting a user find theirs. Versions written before keep their examples inline.
_INDEX_EXAMPLES = """
CREATE TABLE index_examples (
    route TEXT NOT NULL,
    hash TEXT NOT NULL,
    example_id TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (route, hash)
);
CREATE INDEX index_examples_example ON index_examples (route, example_id)
"""

# The console's and the CLI's action log (gateway/store/console_queries.py): who (key id) did what
# to a route and why; the route's freeze and pause states are its latest such rows. calls_console
# covers the console's per-route aggregates and filters, so they scan the index, not the rows.
_CONSOLE = """
CREATE TABLE route_actions (
    id {serial_pk},
    route TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    who TEXT NOT NULL,
    note TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL
);
CREATE INDEX route_actions_route_at ON route_actions (route, at);
CREATE INDEX calls_console ON calls (route, created_at, endpoint, variant, status, latency_ms, cost_usd, key_id,
                            id)
"""

MIGRATIONS: tuple[Migration, ...] = (
    ("001_calls_and_attempts", _CALLS),
    ("002_blobs", _BLOBS),
    ("003_feedback", _FEEDBACK),
    ("004_artifacts_and_transitions", _ARTIFACTS),
    ("005_indices", _INDICES),
    ("006_calls_escalation", "ALTER TABLE calls ADD COLUMN escalation TEXT"),
    ("007_forgotten_users", _FORGOTTEN),
    # what capture changed in a row before storing it (NUL bytes replaced, text truncated)
    ("008_capture_notes", "ALTER TABLE calls ADD COLUMN notes TEXT; ALTER TABLE feedback ADD COLUMN notes TEXT"),
    ("010_responses", RESPONSES),  # Responses API state (gateway/store/responses.py)
    # a canary's traffic share, recorded on its transitions (learners/rollout.py grows it with evidence)
    ("012_learning_canary_share", "ALTER TABLE transitions ADD COLUMN share DOUBLE PRECISION"),
    ("014_console", _CONSOLE),
    ("016_rollups", ROLLUPS),  # hourly roll-ups the console charts, backfilled (gateway/store/rollups.py)
    ("020_keys", KEYS),  # virtual keys disabled and rotated at run time (gateway/store/key_states.py)
    ("021_index_examples", _INDEX_EXAMPLES),  # an index's examples stored once (gateway/store/index_examples.py)
)

_LEDGER = (
    "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
)


def statements(sql: str, dialect: Dialect) -> list[str]:
    """The individual statements of a SQL migration, formatted for `dialect`."""
    text = sql.replace("{serial_pk}", dialect.serial_pk)
    return [s.strip() for s in text.split(";") if s.strip()]


async def apply(conn: Conn, dialect: Dialect, migrations: Sequence[Migration] = MIGRATIONS) -> list[str]:
    """Apply the migrations missing from `_migrations`, in order; returns the names applied.

    `conn` must be inside a write transaction: concurrent callers (several workers starting
    at once) are serialised by it (and by an advisory lock in PostgreSQL).
    """
    if dialect.migration_lock:
        await conn.fetch(dialect.migration_lock)
    await conn.execute(_LEDGER)
    done = {row[0] for row in await conn.fetch("SELECT name FROM _migrations")}
    applied: list[str] = []
    for name, step in migrations:
        if name in done:
            continue
        if isinstance(step, str):
            for stmt in statements(step, dialect):
                await conn.execute(stmt)
        else:
            await step(conn, dialect)
        await conn.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", name, time.time())
        applied.append(name)
    return applied
