"""Clients other than the openai SDK, pointed at the gateway with only a base URL changed:
langchain-openai, llama-index's OpenAILike, pydantic-ai, instructor and the `llm` CLI, each
against a real fake upstream (gateway/providers/fakes/server.py), with their own parsing of
answers, streams, tool calls and structured output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import instructor
import openai
import pytest
from langchain_core.messages import AIMessageChunk
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from llama_index.core.llms import ChatMessage
from llama_index.llms.openai_like import OpenAILike
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from tests.conftest import base_config


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
