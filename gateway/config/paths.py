"""Relative paths in config.toml resolve against the config file's directory.

So `flywheel prompts log` run from another directory reads the same store the gateway writes,
instead of a new empty database where it was started. Every key that names a file is listed in
`PATH_KEYS`: a new one is added there, once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# (section, key) pairs that hold a filesystem path; "*" matches every table of the section.
PATH_KEYS: tuple[tuple[str, ...], ...] = (
    ("store", "spill_path"),
    ("store", "journal_dir"),
    ("routes", "*", "template"),
    ("privacy", "user_key_path"),
)
SQLITE_PREFIX = "sqlite:///"


def _resolve(value: str, base: Path) -> str:
    return str((base / value).resolve()) if value and not Path(value).is_absolute() else value


def resolve_sqlite_url(url: str, base: Path) -> str:
    """`sqlite:///rel.db` as `sqlite:////abs/dir/rel.db`; absolute, in-memory and other URLs as they are."""
    if not url.startswith(SQLITE_PREFIX):
        return url
    rest = url[len(SQLITE_PREFIX):]
    if not rest or rest.startswith("/") or rest == ":memory:":
        return url
    return SQLITE_PREFIX + _resolve(rest, base)


def _visit(node: Any, keys: tuple[str, ...], base: Path) -> None:
    if not isinstance(node, dict) or not keys:
        return
    head, rest = keys[0], keys[1:]
    targets = list(node) if head == "*" else [head]
    for name in targets:
        if not rest:
            if isinstance(node.get(name), str):
                node[name] = _resolve(node[name], base)
        else:
            _visit(node.get(name), rest, base)


def resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Rewrite, in place, every relative path of a parsed config.toml against `base`."""
    for keys in PATH_KEYS:
        _visit(data, keys, base)
    store = data.get("store")
    if isinstance(store, dict) and isinstance(store.get("url"), str):
        store["url"] = resolve_sqlite_url(store["url"], base)
