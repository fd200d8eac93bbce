"""Person names from name lists plus context rules; no NER model (see the package docstring for why).

The lists are the first and last names that `faker` ships per locale (Python tuples inside the
package: nothing is fetched). A capitalised token counts as a name when
- a strong cue precedes it ("my name is", "call me", "Dear", "Mr.", "je m'appelle", "me llamo", ...):
  then any capitalised word does, and a listed name does even in lower case;
- an introduction or sign-off precedes it ("I'm", "Hi", "Thanks,", "ich bin", "soy", ...) and it is
  a listed name or the first of two capitalised, non-common words;
- a mention cue precedes it ("ask", "from", "cc") and it is a listed name;
- it is a listed first name followed by a listed last name or another capitalised, non-common word
  ("Priya Raghunathan"), and not both halves are common words ("May Day");
- it is a listed first name on its own that is not also a common word, month, place or product
  ("ask Priya", but not "Grant access", "in June", "Claude said").
A detected name extends over following capitalised tokens and nobiliary particles
("Ludwig van Beethoven").
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Sequence

from gateway.privacy.findings import Finding


def all_person_locales() -> tuple[str, ...]:
    """Every locale faker ships person names for (~86): recall matters more than a few extra
    false positives, and names travel — a Lithuanian customer writes to an English support bot."""
    import pkgutil

    import faker.providers.person as person

    return tuple(sorted(m.name for m in pkgutil.iter_modules(person.__path__)))


DEFAULT_LOCALES: tuple[str, ...] = all_person_locales()

# Listed first names that are also everyday words, months, places, products or models: they count
# only with a cue or a surname. (faker's English lorem list supplies the bulk of common words.)
_AMBIGUOUS = (
    "april", "june", "august", "may", "will", "mark", "grant", "bill", "jack", "frank", "joy", "grace",
    "amber", "crystal", "dawn", "summer", "autumn", "rose", "iris", "lily", "angel", "christian", "max",
    "ray", "guy", "chase", "hunter", "mason", "parker", "taylor", "dean", "don", "bob", "sue", "gene",
    "art", "hope", "faith", "pat", "rob", "florence", "victoria", "georgia", "austin", "sydney",
    "jordan", "paris", "india", "china", "asia", "lincoln", "washington", "houston", "dallas", "claude",
    "julia", "ruby", "java", "mercedes", "nova", "dakota", "sage", "sky", "river", "rain", "storm",
    "star", "king", "prince", "major", "page", "reed", "stone", "hall", "wade", "miles", "lane",
    "cooper", "carter", "sterling", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday",
    "sunday", "january", "february", "march", "july", "september", "october", "november", "december",
    "please", "hi", "hello", "hey", "thanks", "thank", "dear", "version", "order", "ok", "yes", "no",
    "sir", "madam", "i", "me", "my", "we", "our", "you", "your", "he", "she", "they", "it", "this",
    "that", "these", "those", "what", "who", "how", "why", "when", "where", "which", "tell", "give",
    "show", "make", "write", "help", "can", "could", "would", "should", "shall", "must", "is", "are",
    "was", "were", "be", "an", "a", "the", "and", "or", "but", "if", "so", "of", "on", "in", "at", "to",
    "for", "from", "by", "with", "about", "as", "into", "over", "under", "up", "down", "out", "mr",
    "mrs", "ms", "dr", "prof", "miss", "mx", "customer", "customers", "team", "user", "users", "all",
    "everyone", "friend", "friends", "colleague", "colleagues", "support", "manager", "client", "admin",
    "server", "meta", "apple", "amazon", "oracle", "python", "julian", "gregorian", "unicode",
)  # fmt: skip

_COUNTRY_LOCALES = ("en_US", "de_DE", "fr_FR", "es_ES", "it_IT")

_PARTICLES = frozenset(
    ("van", "von", "der", "den", "de", "da", "del", "della", "di", "du", "le", "la", "dos", "das", "bin")
)

# Cues are matched as whole words just before a capitalised token (apostrophes normalised to ').
_STRONG_CUES = frozenset(
    (
        "my name is", "my name's", "call me", "dear", "mr", "mr.", "mrs", "mrs.", "ms", "ms.", "miss",
        "dr", "dr.", "prof", "prof.", "name:", "signed", "signed:", "je m'appelle", "mon nom est",
        "mein name ist", "ich heiße", "ich heisse", "me llamo", "mi nombre es", "mi chiamo",
        "il mio nome è", "meu nome é", "me chamo", "mijn naam is", "ik heet",
    )
)  # fmt: skip
# Self-introductions, greetings and sign-offs: a listed name, or two capitalised words ("I'm
# Fridrich Talpaš"), follows.
_INTRO_CUES = frozenset(
    (
        "i'm", "i am", "this is", "hi", "hi,", "hello", "hello,", "hey", "hey,", "thanks,", "thank you,",
        "regards,", "cheers,", "best,", "je suis", "ich bin", "soy", "sono", "sou", "bonjour", "hallo",
        "hola", "ciao", "olá", "merci,", "danke,", "gracias,",
    )
)  # fmt: skip
# Mentions: only a listed name follows ("from Microsoft Azure" must stay).
_WEAK_CUES = frozenset(("it's", "thanks", "ask", "tell", "from", "with", "cc", "cc:", "named"))
_CUE_LAST_WORDS = frozenset(c.rsplit(" ", 1)[-1] for c in _STRONG_CUES | _INTRO_CUES | _WEAK_CUES)
# Lower-case names ("my name is john smith") are only taken after these.
_LOWERCASE_CUES = (
    "my name is ", "call me ", "je m'appelle ", "mein name ist ", "me llamo ", "mi chiamo ", "me chamo ",
)  # fmt: skip
_WORD = r"[^\W\d_]+(?:['’\-][^\W\d_]+)*"
_NEXT_WORD = re.compile(rf"[ \t]+({_WORD}\.?)")


def _names(provider: object, attr: str) -> Iterable[str]:
    """A faker name list: a tuple, a weighted dict, or (in a few locales) a property we skip."""
    value = getattr(provider, attr, ())
    return [str(v) for v in value] if isinstance(value, list | tuple | dict | set | frozenset) else []


class NameDetector:
    """Finds person names; build once (loading the lists takes ~0.3 s) and reuse."""

    def __init__(
        self,
        locales: Sequence[str] = DEFAULT_LOCALES,
        extra_names: Iterable[str] = (),
        common_words: Iterable[str] = (),
    ) -> None:
        """`locales`: faker locales whose name lists are used; `extra_names`: more first names;
        `common_words`: more words that only count as names with a cue or a surname."""
        first: set[str] = set()
        last: set[str] = set()
        for locale in locales:
            provider = importlib.import_module(f"faker.providers.person.{locale}").Provider
            for attr in ("first_names", "first_names_male", "first_names_female"):
                for name in _names(provider, attr):
                    first.update(part.casefold() for part in name.split())
            for name in _names(provider, "last_names"):
                last.update(part.casefold() for part in name.split())
        first.update(n.casefold() for n in extra_names)
        lorem = importlib.import_module("faker.providers.lorem.en_US").Provider
        common = {w.casefold() for w in lorem.word_list}
        # Country names are first names somewhere ("France", "Georgia"): with every locale's names
        # loaded, they must need a cue or a surname like any other everyday word.
        for locale in _COUNTRY_LOCALES:
            address = importlib.import_module(f"faker.providers.address.{locale}").Provider
            for country in _names(address, "countries"):
                common.update(part.casefold() for part in country.split())
        common.update(_AMBIGUOUS)
        common.update(w.casefold() for w in common_words)
        self._first = frozenset(first)
        self._last = frozenset(last)
        self._common = frozenset(common)
        # `re` has no \p{Lu}: spell out the upper-case letters of the Latin, Greek and Cyrillic blocks.
        # No leading look-behind: it would be tried at every position (~4x slower); checked in Python.
        upper = "".join(chr(c) for c in range(0x41, 0x530) if chr(c).isupper() and chr(c).isalpha())
        cap = f"[{re.escape(upper)}]"
        # A capitalised word, or an initial ("J.", "H.-Dieter").
        self._capword = re.compile(rf"{cap}(?:{_WORD}|\.(?:-{cap}{_WORD})?)")

    def find(self, text: str) -> list[Finding]:
        """Person-name spans in `text` (may overlap each other; the scrubber resolves overlaps)."""
        out: list[Finding] = []
        tokens: list[tuple[int, str]] = []
        for m in self._capword.finditer(text):
            start = m.start()
            if start and _glued(text[start - 1]):
                continue
            tok = m.group()
            tokens.append((start, _base(tok) if "'" in tok or "’" in tok else tok))
        first, last, common = self._first, self._last, self._common
        i = 0
        while i < len(tokens):
            start, tok = tokens[i]
            i += 1
            key = tok.casefold()
            in_first = key in first
            listed = in_first or key in last
            is_common = key in common
            if (is_common and not listed) or tok[1:].isupper():
                continue
            end = start + len(tok)
            nxt = tokens[i] if i < len(tokens) and _only_space(text, end, tokens[i][0]) else None
            if "." in tok:  # an initial: a name only before a listed surname ("J. Smith")
                if nxt is not None and nxt[1].casefold() in last and "." not in nxt[1]:
                    out.append(Finding("PERSON", start, self._extend(text, nxt[0] + len(nxt[1]))))
                    i += 1
                elif self._cue_before(text, start) == "strong" and nxt is not None:
                    out.append(Finding("PERSON", start, self._extend(text, end)))
                continue
            if in_first and nxt is not None and not nxt[1][1:].isupper():
                nkey = nxt[1].casefold()
                in_last, n_common = nkey in last, nkey in common
                if (in_last and not n_common) if is_common else (in_last or not n_common):
                    out.append(Finding("PERSON", start, self._extend(text, nxt[0] + len(nxt[1]))))
                    i += 1
                    continue
            if in_first and (not is_common or self._particle_surname(text, end)):
                out.append(Finding("PERSON", start, self._extend(text, end)))
                continue
            cue = self._cue_before(text, start)  # last: most capitalised words have none
            if cue is None:
                continue
            if (cue == "strong" and (listed or not is_common)) or (listed and not is_common):
                out.append(Finding("PERSON", start, self._extend(text, end)))
            elif cue == "intro" and nxt is not None and not is_common and self._capitalised_word(nxt[1]):
                out.append(Finding("PERSON", start, self._extend(text, nxt[0] + len(nxt[1]))))
                i += 1
        out.extend(self._lowercase_after_cue(text))
        return out

    def _cue_before(self, text: str, start: int) -> str | None:
        """ "strong", "intro", "weak" or None: the cue phrase (if any) ending right before `start`."""
        lo = max(0, start - 32)
        window = text[lo:start]
        if not window or not window[-1].isspace():
            return None
        words = window.replace("’", "'").lower().split()
        if not words or words[-1] not in _CUE_LAST_WORDS:
            return None
        if lo > 0:
            words = words[1:]  # may be a cut word
        for n in (1, 2, 3, 4):
            if n > len(words):
                break
            phrase = " ".join(words[-n:])
            if phrase in _STRONG_CUES:
                return "strong"
            if phrase in _INTRO_CUES:
                return "intro"
            if phrase in _WEAK_CUES:
                return "weak"
        return None

    def _lowercase_after_cue(self, text: str) -> list[Finding]:
        lowered = text.lower()
        if len(lowered) != len(text):  # a few letters change length under lower(): offsets would drift
            return []
        lowered = lowered.replace("’", "'")
        out: list[Finding] = []
        for cue in _LOWERCASE_CUES:
            pos = lowered.find(cue)
            while pos >= 0:
                m = _NEXT_WORD.match(text, pos + len(cue) - 1)
                if m is not None and m.group(1).islower() and (pos == 0 or not _glued(text[pos - 1])):
                    key = _base(m.group(1))
                    if key in self._first or key in self._last:
                        end = m.start(1) + len(key)
                        after = _NEXT_WORD.match(text, end)
                        if after is not None and after.group(1).islower() and after.group(1) in self._last:
                            end = after.end(1)
                        out.append(Finding("PERSON", m.start(1), end))
                pos = lowered.find(cue, pos + 1)
        return out

    def _capitalised_word(self, word: str) -> bool:
        return not word[1:].isupper() and word.casefold() not in self._common

    def _particle_surname(self, text: str, end: int) -> bool:
        """Whether particles and then a capitalised word follow: "Julia van den Heuvel"."""
        m = _NEXT_WORD.match(text, end)
        if m is None or m.group(1).casefold() not in _PARTICLES:
            return False
        return self._extend(text, end) > m.end(1)

    def _extend(self, text: str, end: int) -> int:
        """Grow a name span over following particles and capitalised, non-common words."""
        pos = end
        while True:
            m = _NEXT_WORD.match(text, pos)
            if m is None:
                return end
            word = m.group(1)
            if len(word) == 2 and word[0].isupper() and word[1] == ".":  # a middle initial
                pos = m.end(1)
                continue
            word = _base(word.rstrip("."))
            key = word.casefold()
            if key in _PARTICLES:
                pos = m.start(1) + len(word)
                continue
            if word[:1].isupper() and word[1:] != word[1:].upper() and key not in self._common:
                end = pos = m.start(1) + len(word)
                continue
            return end


def _glued(prev: str) -> bool:
    """Whether a character before a capital makes it part of a larger token (handle, path, email)."""
    return prev.isalnum() or prev in "_'’-@./\\"


def _base(token: str) -> str:
    """Drop a possessive 's so that "Sarah's" finds (and redacts) "Sarah"."""
    if len(token) > 2 and token[-2] in "'’" and token[-1] in "sS":
        return token[:-2]
    return token


def _only_space(text: str, a: int, b: int) -> bool:
    return 0 < b - a <= 2 and text[a:b].strip(" \t") == ""
