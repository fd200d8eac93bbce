"""Clients other than the openai SDK, pointed at the gateway with only a base URL changed:
langchain-openai (chat and Responses API), llama-index's OpenAILike (chat and completion models),
the Agents SDK (Responses API), pydantic-ai, instructor and the `llm` CLI, each against a real fake
upstream (gateway/providers/fakes/server.py), with their own parsing of answers, streams, tool
calls and structured output; and an HTTP/1.0 client reading a stream."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import instructor
import openai
import orjson
import pytest
import uvicorn
from langchain_core.messages import AIMessageChunk
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from llama_index.core.llms import ChatMessage
from llama_index.llms.openai_like import OpenAILike
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from flywheel.app import create_app
from gateway.config.settings import parse_settings
from gateway.http.connections import uvicorn_options
from tests.conftest import base_config, free_port, received


class City(BaseModel):
    name: str
    population: int


@tool
def get_weather(city: str) -> str:
    """Weather for a city."""
    return f"sunny in {city}"


@pytest.fixture
def gw(make_gateway: Any, fake_upstream: str, tmp_path: Path) -> Any:
    return make_gateway(base_config(fake_upstream, tmp_path))


def chat_model(gw: Any, **kw: Any) -> ChatOpenAI:
    return ChatOpenAI(model="bot", base_url=gw.v1, api_key="anything", max_retries=0, **kw)


def test_langchain_invoke_and_stream_with_usage(gw: Any) -> None:
    answer = chat_model(gw).invoke("hello there")
    assert answer.content == "You said: hello there"
    assert answer.response_metadata["model_name"] and answer.id
    chunks = list(chat_model(gw, stream_usage=True).stream("hello there"))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    whole = chunks[0]
    for c in chunks[1:]:
        whole += c
    assert whole.content == "You said: hello there"
    assert whole.usage_metadata is not None and whole.usage_metadata["total_tokens"] > 0


def test_langchain_tool_binding_returns_parsed_tool_calls(gw: Any) -> None:
    answer = chat_model(gw).bind_tools([get_weather]).invoke("What is the weather in Paris?")
    assert [c["name"] for c in answer.tool_calls] == ["get_weather"]
    assert isinstance(answer.tool_calls[0]["args"]["city"], str)


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_langchain_structured_output(gw: Any, method: str) -> None:
    city = chat_model(gw).with_structured_output(City, method=method).invoke("Describe Paris")
    assert isinstance(city, City)


def test_langchain_embeddings(gw: Any) -> None:
    # check_embedding_ctx_length would fetch tiktoken's encoding from the internet to split inputs
    emb = OpenAIEmbeddings(model="embed", base_url=gw.v1, api_key="anything",
                           check_embedding_ctx_length=False, max_retries=0)
    vectors = emb.embed_documents(["first text", "second text"])
    assert len(vectors) == 2 and len(vectors[0]) > 0 and vectors[0] != vectors[1]
    assert emb.embed_query("first text") == pytest.approx(vectors[0])


def test_llama_index_openai_like_chat_complete_and_stream(gw: Any) -> None:
    llm = OpenAILike(model="bot", api_base=gw.v1, api_key="anything", is_chat_model=True, max_retries=0)
    assert llm.complete("hello there").text == "You said: hello there"
    reply = llm.chat([ChatMessage(role="user", content="hello there")])
    assert reply.message.content == "You said: hello there"
    pieces = [r.delta for r in llm.stream_chat([ChatMessage(role="user", content="hello there")])]
    assert "".join(p or "" for p in pieces) == "You said: hello there" and len(pieces) > 1


def pydantic_agent(gw: Any, **kw: Any) -> Agent[None, Any]:
    model = OpenAIChatModel("bot", provider=OpenAIProvider(base_url=gw.v1, api_key="anything"))
    return Agent(model, **kw)


def test_pydantic_ai_text_and_structured_output(gw: Any) -> None:
    result = pydantic_agent(gw).run_sync("hello there")
    assert result.output == "You said: hello there"
    assert result.usage.total_tokens > 0
    city = pydantic_agent(gw, output_type=City).run_sync("Describe Paris").output  # its final_result tool
    assert isinstance(city, City)


async def test_pydantic_ai_streams_text(gw: Any) -> None:
    async with pydantic_agent(gw).run_stream("hello there") as run:
        pieces = [delta async for delta in run.stream_text(delta=True, debounce_by=None)]
    assert "".join(pieces) == "You said: hello there" and len(pieces) > 1


# (not Mode.JSON: it puts the schema in the prompt, which the fake upstream does not read)
@pytest.mark.parametrize("mode", [instructor.Mode.TOOLS, instructor.Mode.JSON_SCHEMA])
def test_instructor_extracts_a_model(gw: Any, mode: instructor.Mode) -> None:
    client = instructor.from_openai(openai.OpenAI(base_url=gw.v1, api_key="anything", max_retries=0), mode=mode)
    city, completion = client.chat.completions.create_with_completion(
        model="bot", response_model=City, max_retries=0, messages=[{"role": "user", "content": "Describe Paris"}])
    assert isinstance(city, City) and completion.id.startswith("chatcmpl-")


def test_llm_cli_through_extra_openai_models(gw: Any, tmp_path: Path) -> None:
    home = tmp_path / "llm-home"
    home.mkdir()
    (home / "extra-openai-models.yaml").write_text(
        f"- model_id: flywheel-bot\n  model_name: bot\n  api_base: \"{gw.v1}\"\n  api_key_name: flywheel\n"
    )
    env = {**os.environ, "LLM_USER_PATH": str(home), "LLM_FLYWHEEL_KEY": "anything"}
    for extra in ([], ["--no-stream"]):
        out = subprocess.run([sys.executable, "-m", "llm", "-m", "flywheel-bot", "--key", "anything", *extra,
                              "hello there"], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "You said: hello there"


def _raw_http10(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):  # the server's close is the body's end
            data += chunk
    return data


def test_streams_to_http10_clients_are_close_delimited(fake_upstream: str, tmp_path: Path) -> None:
    settings = parse_settings(base_config(fake_upstream, tmp_path))
    app = create_app(settings)
    port = free_port()
    # served as `flywheel serve` serves it: with the gateway's own protocol class
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                                           loop="asyncio", **uvicorn_options(settings.server)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.02)
        body = orjson.dumps({"model": "bot", "messages": [{"role": "user", "content": "old client"}], "stream": True})
        head = (f"POST /v1/chat/completions HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        raw = _raw_http10(port, head + body)
        headers, _, payload = raw.partition(b"\r\n\r\n")
        assert b" 200 " in headers.split(b"\r\n")[0]
        assert b"transfer-encoding" not in headers.lower() and b"content-length" not in headers.lower()
        assert payload.startswith(b"data: {") and payload.endswith(b"data: [DONE]\n\n")
        # an HTTP/1.1 client still gets it chunked, on a connection it may keep
        raw11 = _raw_http10(port, head.replace(b"HTTP/1.0", b"HTTP/1.1").replace(
            b"Host: 127.0.0.1\r\n", b"Host: 127.0.0.1\r\nConnection: close\r\n") + body)
        assert b"transfer-encoding: chunked" in raw11.partition(b"\r\n\r\n")[0].lower()
    finally:
        server.should_exit = True
        thread.join(30)


def test_agents_sdk_runs_a_tool_using_agent(gw: Any, fake_upstream: str) -> None:
    from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)  # its tracing exports to api.openai.com
    ran: list[str] = []

    @function_tool
    def lookup_weather(city: str) -> str:
        """Weather for a city."""
        ran.append(city)
        return f"sunny in {city}"

    model = OpenAIResponsesModel(model="bot", openai_client=openai.AsyncOpenAI(base_url=gw.v1, api_key="x",
                                                                               max_retries=0))
    agent = Agent(name="weather", instructions="Answer with the tool.", tools=[lookup_weather], model=model)
    result = Runner.run_sync(agent, "What is the weather in Paris?")
    assert ran == ["example"]  # the fake model calls the tool with arguments from its schema
    assert result.final_output == "The tool returned: sunny in example"
    sent = received(fake_upstream, "a")[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool"]


def test_langchain_with_the_responses_api(gw: Any) -> None:
    llm = chat_model(gw, use_responses_api=True)
    answer = llm.invoke("hello there")
    assert answer.text == "You said: hello there"
    assert answer.usage_metadata is not None and answer.usage_metadata["total_tokens"] > 0
    chunks = list(llm.stream("hello there"))
    whole = chunks[0]
    for c in chunks[1:]:
        whole += c
    assert whole.text == "You said: hello there"
    called = llm.bind_tools([get_weather]).invoke("What is the weather in Paris?")
    assert [c["name"] for c in called.tool_calls] == ["get_weather"]


def test_llama_index_openai_like_completion_model(gw: Any) -> None:
    llm = OpenAILike(model="bot", api_base=gw.v1, api_key="anything", is_chat_model=False, max_retries=0)
    assert llm.complete("hello there").text == "You said: hello there"
    pieces = [r.delta for r in llm.stream_complete("hello there")]
    assert "".join(p or "" for p in pieces) == "You said: hello there" and len(pieces) > 1
