"""Persistence: records, one `Store` protocol with SQLite and PostgreSQL backends, and the
batched, never-blocking `CallWriter` (see writer.py) that the request path logs through.

`open_store(url)` picks the backend from the URL scheme; backends are imported only then.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from gateway.store.base import Store

__all__ = ["Store", "open_store", "sqlite_path"]


def sqlite_path(url: str) -> str:
    """The filesystem path (or `:memory:`) of a `sqlite://` URL.

    `sqlite:///data/x.db` is relative (data/x.db), `sqlite:////abs/x.db` absolute, and
    `sqlite://:memory:` or `sqlite:///:memory:` an in-memory database.
    """
    rest = url[len("sqlite://") :]
    if rest in (":memory:", "/:memory:"):
        return ":memory:"
    if not rest.startswith("/") or rest == "/":
        raise ValueError(f"sqlite store url must look like sqlite:///path.db, got {url!r}")
    return rest[1:]


def open_store(url: str) -> Store:
    """A store for `url`, unconnected: it connects on first use (call `await store.migrate()`).

    Supported: `sqlite:///relative.db`, `sqlite:////abs/path.db`, `sqlite://:memory:`,
    `postgresql://user@host:port/db` (also `postgres://`). Any other scheme raises ValueError.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        from gateway.store.sqlite import SqliteStore

        return SqliteStore(sqlite_path(url))
    if scheme in ("postgresql", "postgres"):
        try:
            from gateway.store.postgres import PostgresStore
        except ModuleNotFoundError as exc:  # asyncpg comes with the `postgres` extra
            raise ValueError(f"a postgresql:// store needs {exc.name}: "
                             "pip install 'flywheel-gateway[postgres]'") from None

        return PostgresStore(url)
    raise ValueError(f"unsupported store url scheme {scheme!r}: use sqlite:/// or postgresql://")
