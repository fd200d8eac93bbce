"""Online routing updates shared by every replica through one Redis stream (`[limits] redis_url`).

A learned policy learns from feedback about the calls it routed (gateway/serve/routing.py); the
Features of a call are remembered only by the replica that served it, and behind a load balancer
its feedback may arrive at any replica. Two kinds of entries go into the stream
`{prefix}:routing:updates`, each stamped with its replica's origin id:

- `u` (update): a policy update one replica made (from feedback, an "unrated counts as ok" call,
  or an evaluation replay) — route, variant, quality, cost and the Features the policy reads. Every
  other replica applies it to its own live policy (and its canary), so all of them learn from the
  feedback any of them receives and decide alike.
- `f` (feedback): feedback about a call this replica does not remember, forwarded so the replica
  that does can turn it into an update. Only what the quality metrics read goes out: rating,
  score, signal and whether there was a correction (never its text).

Why a stream of updates rather than shared counters: the learned policy is a decayed Bayesian
linear regression per variant, not a table of counts, so its state cannot be summed atomically
in Redis; replaying the same updates on every replica gives each the same evidence. What goes
into Redis is features of a request (lengths, flags, the embedding vector), never its text, the
user or the key. Entries are trimmed to the newest `maxlen`; a replica reads only entries written
after it started (its own start-up rebuild from the store covers the past). Redis unreachable:
updates stay local (each replica learns from what it receives), logged once per change of state.
Without Redis there is no sharing: each replica learns online from the feedback it receives for
calls it served, and the routing learner's cycles (from the store, on the leader) bring every
replica the same policy artifact.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from gateway.background import cancel_and_wait
from gateway.store.records import FeedbackRecord
from policies.base import Features

log = logging.getLogger("flywheel.routing")

_BATCH = 256  # entries sent or read per round trip
_OUTBOX = 20_000  # entries waiting to be sent while Redis is slow or away; older ones are dropped (counted)


@dataclass(frozen=True, slots=True)
class Update:
    """One policy update: the request `features` went to `variant`, scored `quality`, cost `cost`."""

    route: str
    variant: str
    quality: float
    cost: float
    features: Features


@dataclass(slots=True)
class ShareStats:
    """Counters for tests, readyz and the benchmark."""

    sent: int = 0
    received_updates: int = 0
    received_feedback: int = 0
    dropped: int = 0  # outbox full while Redis was away: those updates stayed local


def encode_update(u: Update, origin: str) -> dict[str, bytes]:
    """A stream entry for `u` (the embedding as raw float32 bytes)."""
    f = u.features
    meta = [u.route, u.variant, u.quality, u.cost, f.prompt_chars, f.n_messages, f.has_tools,
            f.memory_score, f.memory_agreement]
    entry = {"k": b"u", "o": origin.encode(), "m": orjson.dumps(meta)}
    if f.embedding is not None:
        entry["e"] = np.asarray(f.embedding, dtype=np.float32).reshape(-1).tobytes()
    return entry


def decode_update(fields: dict[bytes, bytes]) -> Update:
    """The update a stream entry holds (ValueError when malformed)."""
    route, variant, quality, cost, chars, n, tools, mscore, magree = orjson.loads(fields[b"m"])
    raw = fields.get(b"e")
    emb = np.frombuffer(raw, dtype=np.float32).astype(np.float64) if raw else None
    f = Features(route, None, None, int(chars), int(n), bool(tools), emb, float(mscore), float(magree))
    return Update(str(route), str(variant), float(quality), float(cost), f)


def encode_feedback(fb: FeedbackRecord, origin: str) -> dict[str, bytes]:
    """A stream entry forwarding what the quality metrics read of `fb` (no correction text, no user)."""
    meta = [fb.call_id, fb.id, fb.rating, fb.score, fb.signal, fb.correction is not None, fb.source, fb.created_at]
    return {"k": b"f", "o": origin.encode(), "m": orjson.dumps(meta)}


def decode_feedback(fields: dict[bytes, bytes]) -> FeedbackRecord:
    """The feedback a stream entry forwards (a correction's text is replaced by a marker)."""
    call_id, fb_id, rating, score, signal, corrected, source, at = orjson.loads(fields[b"m"])
    return FeedbackRecord(call_id=call_id, id=fb_id, rating=rating, score=score, signal=signal,
                          correction="(forwarded)" if corrected else None, source=source, created_at=at)


class RoutingShare:
    """The Redis stream of one deployment's routing updates: an outbox sent in batches, a reader."""

    def __init__(self, url: str, *, prefix: str = "flywheel", maxlen: int = 100_000) -> None:
        self.url = url
        self.stream = f"{prefix}:routing:updates"
        self.origin = uuid.uuid4().hex[:16]
        self.maxlen = maxlen
        self.stats = ShareStats()
        self._outbox: deque[dict[str, bytes]] = deque()
        self._wake = asyncio.Event()
        self._redis: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._down = False
        self.on_update: Callable[[Update], None] = lambda u: None
        self.on_feedback: Callable[[FeedbackRecord], None] = lambda fb: None

    # -- sending (never blocks the caller) ----------------------------------------------------------
    def _queue(self, entry: dict[str, bytes]) -> None:
        if len(self._outbox) >= _OUTBOX:
            self._outbox.popleft()
            self.stats.dropped += 1
        self._outbox.append(entry)
        self._wake.set()

    def publish(self, u: Update) -> None:
        """Send an update this replica made to every other replica."""
        self._queue(encode_update(u, self.origin))

    def forward(self, fb: FeedbackRecord) -> None:
        """Forward feedback about a call this replica does not remember."""
        self._queue(encode_feedback(fb, self.origin))

    # -- service ------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect, note where the stream ends now, and run the sender and the reader."""
        import redis.asyncio as aioredis

        self._redis = aioredis.Redis.from_url(self.url, socket_timeout=5.0, socket_connect_timeout=2.0)
        last = "$"
        try:
            info = await self._redis.xinfo_stream(self.stream)
            last = info["last-generated-id"].decode() if isinstance(info["last-generated-id"], bytes) \
                else str(info["last-generated-id"])
        except Exception as exc:  # no stream yet (fine: "0" reads from its first entry) or Redis away
            last = "0" if "no such key" in str(exc).lower() else "$"
        self._tasks += [asyncio.create_task(self._send_loop(), name="flywheel-routing-send"),
                        asyncio.create_task(self._read_loop(last), name="flywheel-routing-read")]

    async def stop(self) -> None:
        """Send what is queued (briefly), then stop and disconnect."""
        if self._outbox and self._redis is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._send_once(), 2.0)
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()
            self._redis = None

    def _state(self, ok: bool, exc: Exception | None = None) -> None:
        if ok and self._down:
            log.info("routing updates shared through Redis again", extra={"event": "routing_share_up"})
        elif not ok and not self._down:
            log.warning("Redis is not answering: routing updates stay on this replica until it does (%s)", exc,
                        extra={"event": "routing_share_down"})
        self._down = not ok

    async def _send_once(self) -> None:
        batch = [self._outbox.popleft() for _ in range(min(_BATCH, len(self._outbox)))]
        if not batch:
            return
        try:
            pipe = self._redis.pipeline(transaction=False)
            for entry in batch:
                pipe.xadd(self.stream, entry, maxlen=self.maxlen, approximate=True)
            await pipe.execute()
        except Exception:
            self._outbox.extendleft(reversed(batch))  # sent again once Redis answers
            raise
        self.stats.sent += len(batch)

    async def _send_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox:
                try:
                    await self._send_once()
                    self._state(True)
                except Exception as exc:
                    self._state(False, exc)
                    await asyncio.sleep(1.0)

    async def _read_loop(self, last: str) -> None:
        while True:
            try:
                got = await self._redis.xread({self.stream: last}, count=_BATCH, block=1000)
                self._state(True)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._state(False, exc)
                await asyncio.sleep(1.0)
                continue
            for _, entries in got or ():
                for entry_id, fields in entries:
                    last = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                    self._dispatch(fields)

    def _dispatch(self, fields: dict[bytes, bytes]) -> None:
        if fields.get(b"o", b"").decode() == self.origin:
            return  # this replica applied it when it made it
        try:
            if fields.get(b"k") == b"u":
                update = decode_update(fields)
                self.stats.received_updates += 1
                self.on_update(update)
            elif fields.get(b"k") == b"f":
                fb = decode_feedback(fields)
                self.stats.received_feedback += 1
                self.on_feedback(fb)
        except Exception:  # one malformed entry (another version?) must not stop the reader
            log.exception("a routing update from another replica could not be applied; skipped")
