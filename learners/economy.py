"""The evaluation economy: what learning may spend on replays, and what it need not spend twice.

One `Economy` lives as long as the learning loop (across cycles), holding:
- `judged`: candidates already judged, by content hash and the hash of the data they were judged
  on: a candidate equal to one judged on the same held-out data is not evaluated again, and one
  equal to the version serving (current, canary or queued) is not evaluated at all;
- `backoff`: consecutive rejections per (route, kind); after r of them the kind sits out
  min(2^(r−1) − 1, `reject_backoff_max`) cycles, so a learner that keeps proposing what the
  gate refuses stops spending the upstream on it;
- `cache`: replay answers keyed by (route, pinned variant, augmented prompt and params), i.e. per
  (prompt, variant, artifact): an arm whose artifacts leave a case's prompt unchanged is not paid
  for twice (answers are assumed stable for a given prompt, as at temperature 0);
- `gate`: per upstream (provider) at most `eval_concurrency` replays in flight and
  `eval_rate_per_s` started per second, so evaluation never crowds out live requests; on an
  upstream with few slots (a local llama.cpp serves one request at a time) replays also yield to
  live traffic and delay at most `eval_live_delay_share` of live calls (`UpstreamGate`);
- `embedder(e)`: the gateway's embedder with a memory of the texts it embedded (`CachedEmbedder`).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from gateway.config.settings import LearnerSettings
from gateway.learning import UpstreamActivity
from gateway.store.records import ArtifactKind, CallRecord
from retrieval.embeddings import Embedder


def content_hash(*parts: Any) -> str:
    """A stable hash of JSON-able values (keys sorted)."""
    return hashlib.sha256(orjson.dumps(list(parts), option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Judgement:
    version: str
    data: str  # hash of the data it was judged on
    passed: bool


LiveActivity = Callable[[str], UpstreamActivity]
_POLL_S = 0.02  # how often a held-back replay looks at the upstream's live traffic again


class UpstreamGate:
    """Caps evaluation's share of each upstream: concurrency and start rate per provider name and,
    where `live` says the upstream has few slots, yields to live traffic.

    A one-slot upstream (llama.cpp) serves one request at a time: a live call that arrives while a
    replay runs waits for it, and no upstream can be asked to drop a prompt it is reading. So on an
    upstream with `slots`, a replay (a) never starts while live calls fill the slots (replays in
    flight count too), and, while live traffic is present (a live call in flight or ended within
    `eval_live_idle_s`), (b) replays occupy the upstream at most `eval_share` of the time: after
    replays kept it busy for d seconds, the next starts no sooner than d·(1 − share)/share later;
    and (c) the live calls that start while replays hold the upstream (and so wait) stay within
    `eval_live_delay_share` of all live calls: each live call earns that much credit (at most one
    call's worth is kept), each one delayed costs a whole call, and a replay starts only on a credit
    of at least zero.

    (b) alone does not hold the live median: a client that sends its next call as soon as the last
    is answered leaves gaps of milliseconds, so a replay started in one always delays the next live
    call, and at a 25 % time share one live call in three waited a whole replay. The median moves
    with the share of calls delayed, not with the time replays take, which is what (c) bounds; where
    live calls leave gaps longer than a replay, none is delayed and (c) costs evaluation nothing.
    With no live traffic evaluation uses the upstream fully (a live call that then arrives behind
    a replay is charged all the same). An upstream with many slots (a cloud API, `slots` None) only
    gets the concurrency and rate caps: live calls there do not queue behind replays.
    """

    def __init__(self, settings: Callable[[], LearnerSettings], live: LiveActivity | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._settings = settings
        self.live = live
        self._clock = clock
        self._sleep = sleep
        self._sems: dict[str, asyncio.Semaphore] = {}
        self._next: dict[str, float] = {}
        self._busy_since: dict[str, float] = {}  # when replays began to occupy the upstream (open span)
        self._free_at: dict[str, float] = {}  # earliest next start while live traffic is present
        self._credit: dict[str, float] = {}  # (c): live calls' delay credit (see the class docstring)
        self._credited: dict[str, int] = {}  # live calls started (UpstreamActivity.started) already credited
        self._span_live: dict[str, int] = {}  # live calls started when the open replay span began
        self.in_flight: dict[str, int] = {}
        self.delayed: dict[str, int] = {}  # live calls that started while replays held the upstream
        self.peak: dict[str, int] = {}  # most replays in flight at once, per upstream (observability)
        self.yielded_s: dict[str, float] = {}  # seconds replays waited for live traffic (observability)

    @asynccontextmanager
    async def slot(self, upstream: str) -> AsyncIterator[None]:
        """Hold one of `upstream`'s evaluation slots, starting no sooner than its rate allows and
        (on an upstream with few slots) than live traffic lets it."""
        cfg = self._settings()
        if self.live is not None:  # a route's name and its provider's are one upstream, with one budget
            upstream = self.live(upstream).key or upstream
        sem = self._sems.setdefault(upstream, asyncio.Semaphore(cfg.eval_concurrency))
        async with sem:
            if cfg.eval_rate_per_s > 0:
                now = self._clock()
                start = max(now, self._next.get(upstream, now))
                self._next[upstream] = start + 1.0 / cfg.eval_rate_per_s
                if start > now:
                    await self._sleep(start - now)
            await self._yield_to_live(upstream, cfg)
            n = self.in_flight[upstream] = self.in_flight.get(upstream, 0) + 1
            self.peak[upstream] = max(self.peak.get(upstream, 0), n)
            if n == 1:
                self._busy_since[upstream] = self._clock()
                if self.live is not None:
                    self._span_live[upstream] = self.live(upstream).started
            try:
                yield
            finally:
                self._leave(upstream, cfg)

    def _leave(self, upstream: str, cfg: LearnerSettings) -> None:
        n = self.in_flight[upstream] = self.in_flight[upstream] - 1
        if n == 0:  # the upstream is free of replays: the next waits (1 - share) / share of this busy span
            now = self._clock()
            busy = now - self._busy_since.pop(upstream, now)
            self._free_at[upstream] = now + busy * (1.0 - cfg.eval_share) / cfg.eval_share
            before = self._span_live.pop(upstream, None)
            if self.live is not None and before is not None:
                act = self.live(upstream)
                # charged on any upstream with slots; on one with several, a live call that found a
                # slot free did not wait: counting it anyway errs towards live traffic
                if act.slots is not None and act.started > before:
                    self._earn(upstream, act, cfg)
                    self._credit[upstream] -= act.started - before
                    self.delayed[upstream] = self.delayed.get(upstream, 0) + act.started - before

    def _earn(self, upstream: str, act: UpstreamActivity, cfg: LearnerSettings) -> None:
        """Credit the live calls started since the last look, `eval_live_delay_share` each (at most 1 kept)."""
        seen = self._credited.get(upstream, act.started)
        self._credited[upstream] = act.started
        credit = self._credit.get(upstream, 0.0) + (act.started - seen) * cfg.eval_live_delay_share
        self._credit[upstream] = min(credit, 1.0)

    def may_start(self, upstream: str, cfg: LearnerSettings) -> bool:
        """Whether a replay may start on `upstream` now, as far as live traffic is concerned."""
        if self.live is None:
            return True
        act = self.live(upstream)
        if act.slots is None:
            return True
        if act.in_flight + self.in_flight.get(upstream, 0) >= act.slots:
            return False
        self._earn(upstream, act, cfg)
        now = self._clock()
        present = act.in_flight > 0 or (act.last_end is not None and now - act.last_end < cfg.eval_live_idle_s)
        return not present or (now >= self._free_at.get(upstream, now) and self._credit[upstream] >= 0.0)

    async def _yield_to_live(self, upstream: str, cfg: LearnerSettings) -> None:
        if self.may_start(upstream, cfg):
            return
        began = self._clock()
        while not self.may_start(upstream, cfg):
            await self._sleep(_POLL_S)
        self.yielded_s[upstream] = self.yielded_s.get(upstream, 0.0) + self._clock() - began


class ReplayCache:
    """Replay answers by key, least recently used dropped first."""

    def __init__(self, size: int = 5000) -> None:
        self._size = size
        self._items: OrderedDict[str, tuple[str, CallRecord | None]] = OrderedDict()
        self.hits = 0

    def get(self, key: str) -> tuple[str, CallRecord | None] | None:
        """The cached answer and the replay's call record, or None."""
        answer = self._items.get(key)
        if answer is not None:
            self._items.move_to_end(key)
            self.hits += 1
        return answer

    def put(self, key: str, answer: str, record: CallRecord | None) -> None:
        """Keep an answer (only answers, never errors: a failed call is retried next time)."""
        self._items[key] = (answer, record)
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)


@dataclass(slots=True)
class Economy:
    """The learning loop's memory of what evaluation cost and decided (see the module docstring)."""

    settings: Callable[[], LearnerSettings]
    live: LiveActivity | None = None  # serving's live traffic per upstream (LearningHost.live_activity)
    judged: dict[tuple[str, ArtifactKind, str], Judgement] = field(default_factory=dict)
    rejections: dict[tuple[str, ArtifactKind], int] = field(default_factory=dict)
    sitting_out: dict[tuple[str, ArtifactKind], int] = field(default_factory=dict)
    cache: ReplayCache = field(default_factory=ReplayCache)
    gate: UpstreamGate = field(init=False)

    _embedders: dict[str, CachedEmbedder] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.gate = UpstreamGate(self.settings, self.live)

    def embedder(self, inner: Embedder) -> Embedder:
        """`inner` with the vectors of earlier cycles remembered (one cache per embedder model)."""
        cached = self._embedders.get(inner.name)
        if cached is None or cached.inner is not inner:
            cached = self._embedders[inner.name] = CachedEmbedder(inner)
        return cached

    def already_judged(self, route: str, kind: ArtifactKind, content: str, data: str) -> Judgement | None:
        """The earlier judgement of this content on this data, if any."""
        j = self.judged.get((route, kind, content))
        return j if j is not None and j.data == data else None

    def record(self, route: str, kind: ArtifactKind, content: str, data: str, version: str, passed: bool) -> None:
        """Remember a judgement, and count consecutive rejections for the back-off."""
        self.judged[(route, kind, content)] = Judgement(version, data, passed)
        key = (route, kind)
        if passed:
            self.rejections.pop(key, None)
            return
        r = self.rejections[key] = self.rejections.get(key, 0) + 1
        self.sitting_out[key] = min(2 ** (r - 1) - 1, self.settings().reject_backoff_max)

    def sits_out(self, route: str, kind: ArtifactKind) -> int:
        """Cycles this kind still sits out after repeated rejections (0: it may learn); counts one down."""
        key = (route, kind)
        left = self.sitting_out.get(key, 0)
        if left > 0:
            self.sitting_out[key] = left - 1
        return left


class CachedEmbedder:
    """An embedder that remembers the vectors of texts it embedded (bounded, oldest dropped).

    Every cycle curates (dedupes) and indexes the route's whole dataset again; without a cache it
    re-embeds thousands of unchanged texts each time, which made a cycle take tens of seconds on
    MiniLM and delayed every correction and canary decision behind it.
    """

    def __init__(self, inner: Embedder, size: int = 50_000) -> None:
        self.inner = inner
        self.name = inner.name
        self.dim = inner.dim
        self._size = size
        self._vectors: OrderedDict[str, NDArray[np.float32]] = OrderedDict()

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """The inner embedder's vectors, computed only for texts not seen before."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        if missing:
            for text, vec in zip(missing, self.inner.embed(missing), strict=True):
                self._vectors[text] = vec
            while len(self._vectors) > self._size:
                self._vectors.popitem(last=False)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            vec = self._vectors.get(t)
            out[i] = vec if vec is not None else self.inner.embed([t])[0]  # dropped meanwhile: rare
        return out
