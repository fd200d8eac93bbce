"""Pseudonymous end-user ids: the chat `user` field is stored as a keyed hash, never as sent.

Clients put emails and account names in `user`. A plain hash of an email is reversible by anyone
who can list candidate emails, so the hash is keyed (HMAC-SHA256) with a secret the store never
holds. It is stable (same key, same pseudonym), so per-user signals, canary stickiness and
`flywheel forget --user` (which hashes its argument the same way) keep working.

The key comes from the environment variable named by `[privacy] user_key_env`; without it, from
the file `[privacy] user_key_path`, created with 32 random bytes (mode 0600) on first use.

`NamePseudonyms` (`[privacy] name_pseudonyms`, off by default): instead of `<PERSON>`, the scrubber
writes a stable fake name for each person name it finds, keyed with the same secret, word by
word: "Jane Doe" is "Nora Lindqvist" in the prompt, the response and the correction alike, and
"Doe" alone is "Lindqvist". Corrections are scrubbed before their route is known; a mapping that
needs no route treats them like the calls they correct. So an extraction example still teaches
extracting a name, which `<PERSON>` in the input and the expected output does not. The trade-off:
stored and learned texts carry fake names that read as real (the learners keep PERSON for that
reason, and retrieved examples show them to other users), and a name the detector misses stays
as sent, exactly as with placeholders. The mapping is a keyed hash, stored nowhere: forgetting a
user deletes their texts, and with them every pseudonym they held.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
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


# Fake names: given names and surnames of several origins. A real name maps to one of them per
# word; different real names may share a fake one (the mapping is many-to-one, never reversible).
_FAKE = """
Nora Lindqvist Amara Okafor Tomas Ferreira Ines Marchetti Kenji Halvorsen Leila Brandt Mateo Novak
Sanna Oyelaran Elif Castellano Ruben Takahashi Maren Kowalczyk Dario Asante Freya Moreau Jonas Varga
Yara Kristiansen Lucian Abernathy Mira Santangelo Oskar Delacroix Talia Nakamura Emeric Whitcombe
Selma Ivanova Hugo Almeida Zora Pettersen Felix Quintero Anika Beaumont Idris Okonkwo Lena Falkenrath
Milo Reinholt Esme Vasquez Anton Holloway Ilse Tanaka Caspar Morrow Noemi Eklund Viktor Adeyemi
Greta Salvatore Rafael Lindgren Ayla Kovacs Bruno Achterberg Clara Mbeki Dmitri Ostrander Elin
Serrano Farid Blackwood Hanna Iwasaki Joaquin Rasmussen Katja Obuya Linus Carvalho Maia Hargreave
Nils Ferrante Odile Yamamoto Pavel Winslow Rosa Ekwueme Stellan Ricci Thea Marsh Ugo Nieminen
Vera Castaneda Wim Adebayo Xenia Harlow Yusuf Lindholm Zelda Moretti
"""
FAKE_NAMES: tuple[str, ...] = tuple(_FAKE.split())


class NamePseudonyms:
    """Maps person names to stable fake names, word by word, keyed (see the module docstring)."""

    def __init__(self, key: bytes, pool: tuple[str, ...] = FAKE_NAMES) -> None:
        if len(key) < 16:
            raise ValueError("the pseudonym key must be at least 16 bytes")
        self._key = hmac.new(key, b"flywheel person names", hashlib.sha256).digest()  # not the user-id key
        self._pool = pool

    def word(self, word: str) -> str:
        """The fake name for one word of a name (case-insensitive: "DOE" and "Doe" agree)."""
        digest = hmac.new(self._key, word.casefold().encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
        return self._pool[int.from_bytes(digest[:8], "big") % len(self._pool)]

    def __call__(self, name: str) -> str:
        """`name` with each of its words replaced; particles and punctuation between them kept."""
        return re.sub(r"[^\W\d_][\w'-]*", lambda m: m.group(0) if m.group(0).islower() else self.word(m.group(0)),
                      name)


def name_pseudonyms(privacy: PrivacySettings) -> NamePseudonyms | None:
    """The name mapping `privacy` asks for, or None when `name_pseudonyms = false` (placeholders)."""
    return NamePseudonyms(load_key(privacy)) if privacy.name_pseudonyms else None
