"""A response cache in front of a llama.cpp server, for re-running the real-model benchmarks.

At temperature 0 a model's answer is a function of the request, so a benchmark run that repeats
earlier requests (the cheap-only and strong-only baselines of the same seed, a replay, an evaluation
of a template on calls seen before) need not wait seconds per call for the same tokens again.

    with LlamaServer(...) as srv, ResponseCache(srv.base_url, Path("bench/.cache/responses.sqlite")) as c:
        point the gateway's provider at c.base_url

Keys are the SHA-256 of the canonical JSON body (minus `user`, which does not change the answer)
and the upstream's model alias; only 200 answers to POST …/chat/completions are stored, with the
latency they took. A hit returns at once: latencies a benchmark prints from a cached run are not
the model's (`hits` tells how many calls were served from the cache).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

_SCHEMA = "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, body BLOB NOT NULL, latency_s REAL NOT NULL)"


class ResponseCache:
    """An HTTP pass-through on 127.0.0.1 that answers repeated chat completions from SQLite."""

    def __init__(self, upstream: str, path: Path) -> None:
        """`upstream`: the server's OpenAI base URL (…/v1); `path`: the SQLite file (created)."""
        self.upstream = upstream.rstrip("/")
        self.path = path
        self.hits = 0
        self.misses = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="response-cache", daemon=True)

    @property
    def base_url(self) -> str:
        """The OpenAI base URL to give clients instead of the upstream's."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def key(self, path: str, body: bytes) -> str:
        """The cache key of one request: upstream, path and the body without `user`."""
        doc = json.loads(body)
        doc.pop("user", None)
        canonical = json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(f"{self.upstream}\n{path}\n{canonical}".encode()).hexdigest()

    def lookup(self, key: str) -> bytes | None:
        """The stored answer for `key`, if any."""
        with self._lock:
            row = self._db.execute("SELECT body FROM responses WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def store(self, key: str, body: bytes, latency_s: float) -> None:
        """Keep one upstream answer."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?)", (key, body, latency_s))

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        cache = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass  # the benchmark prints its own progress

            def do_GET(self) -> None:
                self._forward(None)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if not self.path.endswith("/chat/completions"):
                    self._forward(body)
                    return
                key = cache.key(self.path, body)
                hit = cache.lookup(key)
                if hit is not None:
                    cache.hits += 1
                    self._send(200, hit)
                    return
                cache.misses += 1
                started = time.perf_counter()
                status, answer = self._forward(body)
                if status == 200:
                    cache.store(key, answer, time.perf_counter() - started)

            def _forward(self, body: bytes | None) -> tuple[int, bytes]:
                suffix = self.path[len("/v1"):] if self.path.startswith("/v1") else self.path
                req = urllib.request.Request(cache.upstream + suffix, data=body, method=self.command,
                                             headers={"content-type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=900) as resp:
                        status, answer = resp.status, resp.read()
                except urllib.error.HTTPError as err:
                    status, answer = err.code, err.read()
                self._send(status, answer)
                return status, answer

            def _send(self, status: int, answer: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        return Handler

    def __enter__(self) -> ResponseCache:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._db.close()
