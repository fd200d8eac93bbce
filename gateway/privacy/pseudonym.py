"""Pseudonymous end-user ids: the chat `user` field is stored as a keyed hash, never as sent.

Clients put emails and account names in `user`. A plain hash of an email is reversible by anyone
who can list candidate emails, so the hash is keyed (HMAC-SHA256) with a secret the store never
holds. It is stable (same key, same pseudonym), so per-user signals, canary stickiness and
`flywheel forget --user` (which hashes its argument the same way) keep working.

The key comes from the environment variable named by `[privacy] user_key_env`; without it, from
the file `[privacy] user_key_path`, created with 32 random bytes (mode 0600) on first use.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from gateway.config.settings import PrivacySettings

PREFIX = "u-"  # a stored pseudonym is recognisable, and never hashed a second time


class Pseudonymizer:
    """Maps end-user ids to stable keyed pseudonyms (`u-` + 32 hex digits)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the user pseudonym key must be at least 16 bytes")
        self._key = key

    def user(self, user: str) -> str:
        """The pseudonym of `user`; a value that already is one is returned as is."""
        if user.startswith(PREFIX) and len(user) == len(PREFIX) + 32:
            return user
        digest = hmac.new(self._key, user.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
        return PREFIX + digest[:32]


def load_key(privacy: PrivacySettings) -> bytes:
    """The pseudonym key: from the environment when set there, else the key file (made once)."""
    if privacy.user_key_env:
        value = os.environ.get(privacy.user_key_env)
        if value:
            return value.encode()
    path = Path(privacy.user_key_path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return path.read_bytes()
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


def pseudonymizer(privacy: PrivacySettings) -> Pseudonymizer | None:
    """The pseudonymizer `privacy` asks for, or None when `pseudonymize_users = false`."""
    return Pseudonymizer(load_key(privacy)) if privacy.pseudonymize_users else None
