"""A fake OpenAI-compatible upstream over real HTTP, for tests and benchmarks.

It answers with the `FakeEngine` and can be scripted per model to misbehave, so fault
handling is tested against real sockets:

    POST /_control/script {"model": "m", "steps": [{"status": 503, "retry_after": "1"}, {}]}

Each request for model `m` consumes the next step (no step: normal answer). A step may hold
`status` (+ `message`, `retry_after`), `delay_s` (before answering), `reset` (drop the
connection before answering), `break_after` (stream: drop the connection after N chunks),
`stall_after` (stream: go silent after N chunks), `reply` (content to answer with), `headers`
(added to the answer or the error; an error also takes `type`, `code` and `param`),
`json` (answer 200 with exactly this JSON value: an array, an error object, any non-chat shape),
`size` (pad the answer to about this many bytes; a stream sends chunks until it has),
`drip_s` (stream: wait this long before each chunk), `ping_after` (stream: after N chunks send only
`: keep-alive` comments, every `ping_s` seconds, for ever).
`GET /_control/requests?model=m` returns the bodies received for `m` (newest last).
`POST /v1/responses` answers the Responses API natively (fakes/responses.py), with the same steps
(`break_after` counts events there).

aiohttp.web rather than an ASGI app: it can abort the transport, which is what a reset is.

    python -m gateway.providers.fakes.server --port 9100 [--delay-ms 50] [--jitter-ms 25]

`--jitter-ms J` spreads each delay uniformly over delay ± J (seeded, so runs repeat): real
upstreams never answer in lock-step, and a fixed delay keeps a closed-loop load arriving in bursts.
"""

from __future__ import annotations

import argparse
import asyncio
import random
from collections import defaultdict, deque
from typing import Any

import orjson
from aiohttp import web

from gateway.providers.fakes import responses as fake_responses
from gateway.providers.fakes.provider import FakeEngine

Step = dict[str, Any]


class FakeUpstream:
    def __init__(self, delay_ms: float = 0.0, chunk_delay_ms: float = 0.0, jitter_ms: float = 0.0,
                 seed: int = 0) -> None:
        self.engine = FakeEngine()
        self.delay_s = delay_ms / 1000
        self.jitter_s = min(jitter_ms, delay_ms) / 1000
        self._random = random.Random(seed)
        self.chunk_delay_s = chunk_delay_ms / 1000
        self.scripts: dict[str, deque[Step]] = defaultdict(deque)
        self.received: dict[str, deque[Any]] = defaultdict(lambda: deque(maxlen=100))

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/responses", self.responses)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/_control/script", self.script)
        app.router.add_get("/_control/requests", self.requests)
        app.router.add_post("/_control/reset", self.reset_all)
        return app

    async def script(self, request: web.Request) -> web.Response:
        data = await request.json(loads=orjson.loads)
        self.scripts[data["model"]].extend(data.get("steps", []))
        return web.json_response({"ok": True})

    async def requests(self, request: web.Request) -> web.Response:
        model = request.query.get("model", "")
        return web.Response(body=orjson.dumps(list(self.received[model])), content_type="application/json")

    async def reset_all(self, request: web.Request) -> web.Response:
        self.scripts.clear()
        self.received.clear()
        return web.json_response({"ok": True})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    async def _step(self, request: web.Request, body: Any) -> tuple[Step, web.StreamResponse | None]:
        model = str(body.get("model", ""))
        self.received[model].append(body)
        queue = self.scripts.get(model)
        step = queue.popleft() if queue else {}
        delay = step["delay_s"] if "delay_s" in step else self._delay()
        if delay:
            await asyncio.sleep(delay)
        if step.get("reset"):
            _abort(request)
            return step, web.Response(status=500)
        if "status" in step:
            headers = {"retry-after": str(step["retry_after"])} if "retry_after" in step else {}
            headers.update(step.get("headers") or {})
            err = {"error": {"message": step.get("message", f"fake upstream error {step['status']}"),
                             "type": step.get("type", "server_error"), "param": step.get("param"),
                             "code": step.get("code")}}
            return step, web.Response(status=step["status"], body=orjson.dumps(err), headers=headers,
                                      content_type="application/json")
        return step, None

    def _delay(self) -> float:
        if not self.jitter_s:
            return self.delay_s
        return self.delay_s + self._random.uniform(-self.jitter_s, self.jitter_s)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        step, early = await self._step(request, body)
        if early is not None:
            return early
        if "json" in step:
            return web.Response(body=orjson.dumps(step["json"]), content_type="application/json")
        engine = FakeEngine(replies={"": step["reply"]}) if "reply" in step else self.engine
        if not body.get("stream"):
            answer = engine.complete(body)
            if "size" in step:
                answer["choices"][0]["message"]["content"] = "x" * int(step["size"])
            return web.Response(body=orjson.dumps(answer), content_type="application/json",
                                headers=step.get("headers"))
        resp = web.StreamResponse(headers={"content-type": "text/event-stream", **(step.get("headers") or {})})
        await resp.prepare(request)
        for i, chunk in enumerate(_padded(list(engine.chunks(body)), step.get("size"))):
            if "ping_after" in step and i >= step["ping_after"]:
                while True:  # alive, never progressing: only a total deadline ends this
                    await resp.write(b": keep-alive\n\n")
                    await asyncio.sleep(float(step.get("ping_s", 0.2)))
            if "drip_s" in step:
                await asyncio.sleep(float(step["drip_s"]))
            if "break_after" in step and i >= step["break_after"]:
                # let the chunks already written reach the peer: a reset discards unread data
                await asyncio.sleep(0.1)
                _abort(request)
                return resp
            if "stall_after" in step and i >= step["stall_after"]:
                await asyncio.sleep(3600)
            if self.chunk_delay_s:
                await asyncio.sleep(self.chunk_delay_s)
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def responses(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        step, early = await self._step(request, body)
        if early is not None:
            return early
        refused = fake_responses.previous_id_error(body)
        if refused is not None:
            return web.Response(status=400, body=orjson.dumps(refused), content_type="application/json")
        engine = FakeEngine(replies={"": step["reply"]}) if "reply" in step else self.engine
        if not body.get("stream"):
            return web.Response(body=orjson.dumps(fake_responses.complete(engine.complete, body)),
                                content_type="application/json", headers=step.get("headers"))
        resp = web.StreamResponse(headers={"content-type": "text/event-stream", **(step.get("headers") or {})})
        await resp.prepare(request)
        for i, event in enumerate(fake_responses.events(engine.complete, body)):
            if "break_after" in step and i >= step["break_after"]:
                await asyncio.sleep(0.1)  # let the events already written reach the peer
                _abort(request)
                return resp
            if self.chunk_delay_s:
                await asyncio.sleep(self.chunk_delay_s)
            await resp.write(b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n")
        await resp.write_eof()
        return resp

    async def embeddings(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        _, early = await self._step(request, body)
        if early is not None:
            assert isinstance(early, web.Response)
            return early
        return web.Response(body=orjson.dumps(self.engine.embed(body)), content_type="application/json")


def _padded(chunks: list[dict[str, Any]], size: Any) -> list[dict[str, Any]]:
    """The stream's chunks, with ~64 KB content chunks inserted after the first until `size` bytes."""
    if not size or len(chunks) < 2:
        return chunks
    filler = {**chunks[1], "choices": [{"index": 0, "delta": {"content": "x" * 65536}, "finish_reason": None}]}
    return [chunks[0], *[filler] * (int(size) // 65536 + 1), *chunks[1:]]


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="spread each delay over delay ± this")
    parser.add_argument("--seed", type=int, default=0, help="for the jitter")
    args = parser.parse_args()
    upstream = FakeUpstream(args.delay_ms, args.chunk_delay_ms, args.jitter_ms, args.seed)
    web.run_app(upstream.app(), host=args.host, port=args.port, print=None, access_log=None, shutdown_timeout=0.5)


if __name__ == "__main__":
    main()
