"""Implicit feedback inferred from what the same actor does next: regenerate, rephrase, correct.

Pure logic, no I/O: `SignalDetector.observe(call)` is fed every logged call (the writer does it,
off the request path) and returns the inferred `FeedbackRecord`s, each about the *earlier* call
(`call_id`) and naming the call that revealed it (`related_call_id`).

For a new call by the same actor (user, else session, else virtual key) on the same route within
`window_s` of a remembered call:
- the new call continues the conversation (its messages hold the earlier call's answer) and its
  last user message reads as a correction ("no, I meant…", "that's wrong", "actually…",
  "not X but Y", in a few languages) -> `corrected`, the user's text in `comment`;
- otherwise, its last user message is the same or near-identical (similarity >= `similar`)
  -> `regenerated`; similar but edited (>= `rephrase_min`) -> `rephrased`.
Similarity is the mean Dice coefficient of word and word-bigram counts over normalised tokens:
linear-time (difflib's ratio costs milliseconds on long prompts) and order-aware.
Memory is bounded: an LRU of `max_actors` actors, `per_actor` calls each, texts capped; an actor
whose newest call is older than `window_s` is forgotten (nothing can pair with it any more). Each
actor costs ~0.6 KB (a tuple, not a deque: a deque's first block alone is ~0.6 KB; tokens
interned, so the words every user writes are held once): 10,000 actors held ~16 MB, and a steady
load of new users grew RSS by ~4 MiB a minute until the LRU was full (issue #18, item 12).
"""

from __future__ import annotations

import re
import sys
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from gateway.capture.corrections import response_text
from gateway.messages import content_text
from gateway.store.records import JSON, CallRecord, FeedbackRecord

DEFAULT_CORRECTION_PATTERNS: tuple[str, ...] = (
    # English
    r"^(?:no|nope|nah)\b(?!\s+(?:problem|worries|thanks|thank|need|rush|hurry)\b)",
    r"\bi meant\b",
    r"\bthat(?:'s| is| was) (?:wrong|incorrect|not (?:right|correct|true|what i (?:asked|wanted|meant)))",
    r"\b(?:this|it) is (?:wrong|incorrect)\b",
    r"\byou(?:'re| are) wrong\b",
    r"^(?:actually|wrong|incorrect)\b",
    r"\bnot (?!only\b)\S+(?: \S+){0,4}?,? but\b",
    # German
    r"^nein\b",
    r"\bich meinte\b",
    r"\b(?:das ist|das stimmt) (?:falsch|nicht)\b",
    r"^(?:falsch|eigentlich)\b",
    r"\bnicht \S+(?: \S+){0,4}?,? sondern\b",
    # French
    r"^non\b",
    r"\bje voulais dire\b",
    r"\bc'?est faux\b",
    r"\bce n'?est pas (?:ça|correct|juste)\b",
    r"^en fait\b",
    r"\bpas \S+(?: \S+){0,4}?,? mais\b",
    # Spanish, Portuguese, Italian, Dutch
    r"\bquise decir\b",
    r"\bme refer[ií]a\b",
    r"\beso (?:est[aá] mal|es incorrecto|no es (?:correcto|cierto))\b",
    r"^(?:en realidad|na verdade|in realtà)\b",
    r"\bno \S+(?: \S+){0,4}?,? sino\b",
    r"\beu quis dizer\b",
    r"\best[aá] errado\b",
    r"^não\b",
    r"\bintendevo\b",
    r"\b(?:è|e') sbagliato\b",
    r"^nee\b",
    r"\bik bedoelde\b",
    r"\bdat klopt niet\b",
)

_TOKEN = re.compile(r"\w+")
_SPACES = re.compile(r"\s+")
_MAX_TOKENS = 256
_MAX_ANSWER_CHARS = 4000


@dataclass(frozen=True, slots=True)
class _Seen:
    """What is remembered of one call: just enough to compare the next one with."""

    call_id: str
    route: str
    at: float
    tokens: tuple[str, ...]
    answer: str  # normalised assistant answer ("" when none)


def tokens(text: str, limit: int = _MAX_TOKENS) -> tuple[str, ...]:
    """Case-folded word tokens, punctuation dropped, at most `limit`."""
    return tuple(map(sys.intern, _TOKEN.findall(text.casefold())[:limit]))


def similarity(a: Sequence[str], b: Sequence[str]) -> float:
    """Similarity in [0, 1] of two token sequences: the mean of the Dice coefficients of their word
    multisets and of their word-bigram multisets, so that both wording and order count.

    Linear in the lengths: difflib's ratio was measured here at 0.4-2 ms for 64-256 tokens.
    """
    if tuple(a) == tuple(b):
        return 1.0
    if not a or not b:
        return 0.0
    return _Profile.of(a).similarity(_Profile.of(b))


@dataclass(frozen=True, slots=True)
class _Profile:
    """Word and word-bigram counts of a token sequence (computed once per call)."""

    words: Counter[str]
    bigrams: Counter[tuple[str, str]]
    n_words: int
    n_bigrams: int

    @staticmethod
    def of(toks: Sequence[str]) -> _Profile:
        bigrams = Counter(pairwise(toks))
        return _Profile(Counter(toks), bigrams, len(toks), max(len(toks) - 1, 0))

    def similarity(self, other: _Profile) -> float:
        words = 2 * (self.words & other.words).total() / (self.n_words + other.n_words)
        if self.n_bigrams + other.n_bigrams == 0:
            return words
        pairs = 2 * (self.bigrams & other.bigrams).total() / (self.n_bigrams + other.n_bigrams)
        return (words + pairs) / 2


class SignalDetector:
    """Infers `regenerated`, `rephrased` and `corrected` feedback from consecutive calls."""

    def __init__(
        self,
        window_s: float = 300.0,
        similar: float = 0.9,
        rephrase_min: float = 0.5,
        *,
        max_actors: int = 10_000,
        per_actor: int = 4,
        correction_patterns: Sequence[str] = DEFAULT_CORRECTION_PATTERNS,
    ) -> None:
        """`window_s`: how far back a call can be paired; `similar`: similarity from which a
        repeated message is a regeneration; `rephrase_min`: from which it is a rephrasing;
        `max_actors`/`per_actor`: memory bounds; `correction_patterns`: regexes (matched
        case-insensitively on the trimmed user text) that make a follow-up a correction."""
        if not 0.0 < rephrase_min <= similar <= 1.0:
            raise ValueError("need 0 < rephrase_min <= similar <= 1")
        if window_s <= 0 or max_actors < 1 or per_actor < 1:
            raise ValueError("window_s, max_actors and per_actor must be positive")
        self.window_s = window_s
        self.similar = similar
        self.rephrase_min = rephrase_min
        self._max_actors = max_actors
        self._per_actor = per_actor
        self._correction = re.compile("|".join(f"(?:{p})" for p in correction_patterns), re.IGNORECASE)
        self._recent: OrderedDict[tuple[str, str], tuple[_Seen, ...]] = OrderedDict()  # oldest actor first

    def __len__(self) -> int:
        """Number of actors remembered."""
        return len(self._recent)

    def is_correction(self, text: str) -> bool:
        """Whether a user message reads as correcting the previous answer."""
        head = _SPACES.sub(" ", text[:400].replace("’", "'")).strip()
        return bool(head) and self._correction.search(head) is not None

    def observe(self, rec: CallRecord) -> list[FeedbackRecord]:
        """Remember `rec` and return the feedback it reveals about the actor's previous call."""
        actor = _actor(rec)
        if actor is None or rec.endpoint != "chat" or rec.no_log or not isinstance(rec.request, dict):
            return []
        messages = rec.request.get("messages")
        if not isinstance(messages, list):
            return []
        last_user = _last_user_index(messages)
        if last_user is None:
            return []
        user_text = content_text(messages[last_user].get("content"))
        toks = tokens(user_text)
        out: list[FeedbackRecord] = []
        prev = self._previous(actor, rec)
        if prev is not None:
            signal = self._classify(prev, messages[:last_user], toks, user_text)
            if signal is not None:
                out.append(
                    FeedbackRecord(
                        call_id=prev.call_id,
                        created_at=rec.created_at,
                        signal=signal,
                        source="inferred",
                        related_call_id=rec.id,
                        user=rec.user,
                        comment=user_text if signal == "corrected" else None,
                    )
                )
        if rec.status < 400 and rec.error is None:  # a failed call's retry says nothing about answers
            seen = _Seen(rec.id, rec.route, rec.created_at, toks, _answer_of(rec.response))
            self._remember(actor, seen)
        return out

    def _classify(self, prev: _Seen, history: list[JSON], toks: tuple[str, ...], text: str) -> str | None:
        if prev.answer and any(_assistant_text(m) == prev.answer for m in history):
            return "corrected" if self.is_correction(text) else None
        if not toks:
            return None
        short, long = sorted((len(prev.tokens), len(toks)))
        if 2 * short / (short + long) < self.rephrase_min:  # an upper bound of the similarity
            return None
        sim = similarity(prev.tokens, toks)
        if sim >= self.similar:
            return "regenerated"
        if sim >= self.rephrase_min:
            return "rephrased"
        return None

    def _previous(self, actor: tuple[str, str], rec: CallRecord) -> _Seen | None:
        seen = self._recent.get(actor)
        if seen is None:
            return None
        self._recent.move_to_end(actor)
        for s in reversed(seen):
            if s.route == rec.route and 0.0 <= rec.created_at - s.at <= self.window_s and s.call_id != rec.id:
                return s
        return None

    def _remember(self, actor: tuple[str, str], seen: _Seen) -> None:
        calls = self._recent.get(actor, ())
        self._recent[actor] = (*calls[1 - self._per_actor:], seen) if self._per_actor > 1 else (seen,)
        self._recent.move_to_end(actor)
        while len(self._recent) > self._max_actors:
            self._recent.popitem(last=False)
        # the least recently seen actors first: drop those no new call can pair with any more
        horizon = seen.at - self.window_s
        while self._recent:
            oldest = next(iter(self._recent.values()))
            if oldest[-1].at >= horizon:
                break
            self._recent.popitem(last=False)


def _actor(rec: CallRecord) -> tuple[str, str] | None:
    if rec.user:
        return ("user", rec.user)
    if rec.session_id:
        return ("session", rec.session_id)
    if rec.key_id:
        return ("key", rec.key_id)
    return None


def _last_user_index(messages: list[JSON]) -> int | None:
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if isinstance(m, dict) and m.get("role") == "user":
            return i
    return None


def _normalise(text: str) -> str:
    return _SPACES.sub(" ", text).strip()[:_MAX_ANSWER_CHARS]


def _answer_of(response: JSON) -> str:
    return _normalise(response_text(response))


def _assistant_text(message: JSON) -> str | None:
    """The text of an assistant message, rendered the way `response_text` renders an answer."""
    if not isinstance(message, dict) or message.get("role") != "assistant":
        return None
    return _normalise(response_text({"choices": [{"message": message}]}))
