"""Person names from name lists plus context rules; no NER model (see the package docstring for why).

The lists are the first and last names that `faker` ships per locale (Python tuples inside the
package: nothing is fetched). A capitalised token counts as a name when
- a strong cue precedes it ("my name is", "call me", "Dear", "Mr.", "je m'appelle", "me llamo", ...):
  then any capitalised word does, and a listed name does even in lower case;
- a weak cue precedes it ("I'm", "Hi", "Thanks,", "ich bin", "soy", ...) and it is a listed name;
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

DEFAULT_LOCALES: tuple[str, ...] = (
    "en_US", "en_GB", "en_IE", "en_IN", "en_NG", "de_DE", "fr_FR", "es_ES", "es_MX", "it_IT",
    "pt_BR", "pt_PT", "nl_NL", "pl_PL", "sv_SE", "da_DK", "no_NO", "fi_FI", "cs_CZ", "tr_TR",
    "ro_RO", "hu_HU", "id_ID", "vi_VN", "ru_RU", "uk_UA",
)  # fmt: skip

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
    "mrs", "ms", "dr", "prof", "miss", "mx",
)  # fmt: skip

_PARTICLES = frozenset(
    ("van", "von", "der", "den", "de", "da", "del", "della", "di", "du", "le", "la", "dos", "das", "bin")
)

_STRONG_CUES = (
    r"my name is|my name's|call me|dear|mr\.?|mrs\.?|ms\.?|miss|dr\.?|prof\.?|"
    r"name:|signed:?|je m'appelle|je m’appelle|mon nom est|mein name ist|ich heiße|ich heisse|"
    r"me llamo|mi nombre es|mi chiamo|il mio nome è|meu nome é|me chamo|mijn naam is|ik heet"
)
_WEAK_CUES = (
    r"i'm|i’m|i am|this is|it's|hi|hello|hey|thanks,?|thank you,?|regards,?|cheers,?|best,?|"
    r"ask|tell|from|with|cc|named|je suis|ich bin|soy|sono|sou|bonjour|hallo|hola|ciao|olá|"
    r"merci,?|danke,?|gracias,?"
)


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
                for name in getattr(provider, attr, ()):
                    first.update(part.casefold() for part in name.split())
            for name in getattr(provider, "last_names", ()):
                last.update(part.casefold() for part in name.split())
        first.update(n.casefold() for n in extra_names)
        lorem = importlib.import_module("faker.providers.lorem.en_US").Provider
        common = {w.casefold() for w in lorem.word_list}
        common.update(_AMBIGUOUS)
        common.update(w.casefold() for w in common_words)
        self._first = frozenset(first)
        self._last = frozenset(last)
        self._common = frozenset(common)
        # `re` has no \p{Lu}: spell out the upper-case letters of the Latin, Greek and Cyrillic blocks.
        upper = "".join(chr(c) for c in range(0x41, 0x530) if chr(c).isupper() and chr(c).isalpha())
        word = r"[^\W\d_]+(?:['’\-][^\W\d_]+)*"
        self._capword = re.compile(rf"(?<![\w'’\-@.])[{re.escape(upper)}]{word}")
        self._cue = re.compile(
            rf"(?<![\w])(?:(?P<strong>{_STRONG_CUES})|(?P<weak>{_WEAK_CUES}))[ \t]+(?=(?P<name>{word}))",
            re.IGNORECASE,
        )

    def find(self, text: str) -> list[Finding]:
        """Person-name spans in `text` (may overlap each other; the scrubber resolves overlaps)."""
        out: list[Finding] = []
        for m in self._cue.finditer(text):
            start = m.start("name")
            token = _base(m.group("name"))
            key = token.casefold()
            is_cap = token[:1].isupper() and token[1:] != token[1:].upper()
            if m.group("strong") is not None:
                if not ((is_cap and key not in self._common) or key in self._first or key in self._last):
                    continue
            elif not (is_cap and (key in self._first or key in self._last) and key not in self._common):
                continue
            out.append(Finding("PERSON", start, self._extend(text, start + len(token))))
        out.extend(self._from_lists(text))
        return out

    def _from_lists(self, text: str) -> list[Finding]:
        out: list[Finding] = []
        tokens = [(m.start(), m.end(), _base(m.group())) for m in self._capword.finditer(text)]
        i = 0
        while i < len(tokens):
            start, _, tok = tokens[i]
            key = tok.casefold()
            if key not in self._first or tok[1:] == tok[1:].upper():
                i += 1
                continue
            nxt = tokens[i + 1] if i + 1 < len(tokens) else None
            adjacent = nxt is not None and _only_space(text, start + len(tok), nxt[0])
            if adjacent and nxt is not None:
                nkey = nxt[2].casefold()
                surname = nkey in self._last or (nkey not in self._common and nkey not in self._first)
                if (surname or nkey in self._first) and not (key in self._common and nkey in self._common):
                    out.append(Finding("PERSON", start, self._extend(text, nxt[0] + len(nxt[2]))))
                    i += 2
                    continue
            if key not in self._common:
                out.append(Finding("PERSON", start, self._extend(text, start + len(tok))))
            i += 1
        return out

    def _extend(self, text: str, end: int) -> int:
        """Grow a name span over following surnames, capitalised words and particles."""
        pos = end
        while True:
            m = re.match(r"[ \t]+([^\W\d_]+(?:['’\-][^\W\d_]+)*)", text[pos : pos + 40])
            if m is None:
                return end
            word = _base(m.group(1))
            key = word.casefold()
            if key in _PARTICLES:
                pos += m.end(1)
                continue
            surname = key in self._last or key not in self._first
            if word[:1].isupper() and key not in self._common and surname:
                end = pos = pos + m.start(1) + len(word)
                continue
            return end


def _base(token: str) -> str:
    """Drop a possessive 's so that "Sarah's" finds (and redacts) "Sarah"."""
    if len(token) > 2 and token[-2] in "'’" and token[-1] in "sS":
        return token[:-2]
    return token


def _only_space(text: str, a: int, b: int) -> bool:
    return 0 < b - a <= 2 and text[a:b].strip(" \t") == ""
