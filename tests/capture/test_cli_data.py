"""`flywheel forget --user ID` and `flywheel export --route R --format openai-jsonl`."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from flywheel.cli import data, main
from gateway.store.base import Store
from gateway.store.records import CallRecord
from tests.capture.conftest import REPO, poll_store, with_store, write_config
from tests.conftest import base_config
from tests.store.factories import make_call, make_feedback


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "config.toml", f"sqlite:///{tmp_path}/fw.db", tmp_path / "spill.jsonl",
                        "http://127.0.0.1:9/v1")


def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/fw.db"


# -- forget -----------------------------------------------------------------------------------


async def _two_users(store: Store) -> None:
    await store.insert_calls([make_call(i, user="alice" if i % 2 else "bob") for i in range(40)])
    for i in range(40):
        await store.insert_feedback(make_feedback(f"chatcmpl-{i:06d}", user="bob" if i == 1 else None))
    # feedback alice gave on someone else's call
    await store.insert_feedback(make_feedback("chatcmpl-000000", n=1, user="alice"))


def test_forget_deletes_one_users_calls_and_feedback(config: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    url = store_url(tmp_path)
    with_store(url, _two_users)
    assert main(["--config", str(config), "forget", "--user", "alice"]) == 0
    assert "20 calls and 21 feedback rows deleted" in capsys.readouterr().out
    calls = with_store(url, lambda s: s.list_calls(limit=100))
    assert len(calls) == 20 and {c.user for c in calls} == {"bob"}
    feedback = with_store(url, lambda s: s.list_feedback())
    assert len(feedback) == 20 and all(int(f.call_id[-6:]) % 2 == 0 for f in feedback)
    assert with_store(url, lambda s: s.count_attempts()) == 40
    # nothing left: still a no-op on the store, but said and non-zero (a mistyped id must not look like success)
    assert main(["--config", str(config), "forget", "--user", "alice"]) == 1
    assert "no calls or feedback of user 'alice'" in capsys.readouterr().err


def test_forget_finds_rows_stored_under_the_users_pseudonym(config: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.config.settings import load_settings
    from gateway.privacy.pseudonym import pseudonymizer

    pseudo = pseudonymizer(load_settings(config).privacy)  # the key a gateway on this config uses
    assert pseudo is not None
    stored_as = pseudo.user("carol@example.com")
    with_store(store_url(tmp_path), lambda s: s.insert_calls([make_call(i, user=stored_as) for i in range(3)]))
    assert main(["--config", str(config), "forget", "--user", "carol@example.com"]) == 0
    assert "3 calls" in capsys.readouterr().out
    assert with_store(store_url(tmp_path), lambda s: s.count_calls()) == 0


def test_forget_runs_as_a_command(config: Path, tmp_path: Path) -> None:
    with_store(store_url(tmp_path), _two_users)
    out = subprocess.run([sys.executable, "-m", "flywheel.cli", "--config", str(config), "forget", "--user", "bob"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "20 calls and 22 feedback rows deleted" in out.stdout  # + alice's on his call, his on hers
    assert with_store(store_url(tmp_path), lambda s: s.count_calls()) == 20


# -- export -----------------------------------------------------------------------------------


def _call(i: int, answer: str, **kw: Any) -> CallRecord:
    rec = make_call(i, id=f"c{i}", route=kw.pop("route", "support-bot"))
    rec.response = {"choices": [{"message": {"role": "assistant", "content": answer}}]}
    return dataclasses.replace(rec, **kw)


async def _export_fixture(store: Store) -> None:
    await store.insert_calls([
        _call(1, "good answer"),  # rated 1
        _call(2, "bad answer"),  # rated -1: left out
        _call(3, "wrong answer"),  # rated -1 then corrected twice: the newest correction
        _call(4, "plain answer"),  # unrated
        _call(5, "secret", no_log=True, request=None, response=None),  # metadata only
        _call(6, "", status=502, error="upstream failed", response=None),  # failed
        _call(7, "other route", route="other-bot"),
        _call(8, "was good", ),  # rated 1, later -1: the newest rating wins
        _call(9, "tool", request={"model": "x", "messages": [{"role": "user", "content": "weather?"}],
                                  "tools": [{"type": "function", "function": {"name": "w"}}]}),
    ])
    fb: list[tuple[str, int, dict[str, Any]]] = [("c1", 0, {"rating": 1}), ("c2", 0, {"rating": -1}),
          ("c3", 0, {"rating": -1}), ("c3", 1, {"rating": None, "correction": "first fix"}),
          ("c3", 2, {"rating": None, "correction": "second fix"}),
          ("c8", 0, {"rating": 1}), ("c8", 1, {"rating": -1}), ("c9", 0, {"rating": 1}),
          ("c7", 0, {"rating": 1})]
    for call_id, n, kw in fb:
        await store.insert_feedback(make_feedback(call_id, n, **kw))
    tool_call = [{"id": "t1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]
    await store.insert_calls([_call(10, "", response={"choices": [{"message": {
        "role": "assistant", "content": None, "tool_calls": tool_call}}]})])


def _lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_export_openai_jsonl(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with_store(store_url(tmp_path), _export_fixture)
    out = tmp_path / "train.jsonl"
    assert main(["--config", str(config), "export", "--route", "support-bot", "--format", "openai-jsonl",
                 "--out", str(out)]) == 0
    examples = _lines(out)
    answers = [e["messages"][-1].get("content") for e in examples]
    assert answers == ["good answer", "second fix", "plain answer", "tool", None]
    for e in examples:
        assert set(e) <= {"messages", "tools"}
        assert e["messages"][-1]["role"] == "assistant"
        assert e["messages"][-2]["role"] == "user"
    assert examples[0]["messages"][:-1] == make_call(1).request["messages"]  # the prompt as sent upstream
    assert examples[3]["tools"] == [{"type": "function", "function": {"name": "w"}}]
    assert examples[4]["messages"][-1]["tool_calls"][0]["id"] == "t1"
    err = capsys.readouterr().err
    assert "exported 5 examples from 9 calls" in err and "1 corrected" in err
    assert "2 rejected, 2 failed/no-log/empty" in err


def test_export_min_rating_keeps_rated_and_corrected_only(config: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    with_store(store_url(tmp_path), _export_fixture)
    assert main(["--config", str(config), "export", "--route", "support-bot", "--min-rating", "1"]) == 0
    stdout = capsys.readouterr().out  # no --out: stdout
    answers = [orjson.loads(line)["messages"][-1]["content"] for line in stdout.splitlines()]
    assert answers == ["good answer", "second fix", "tool"]


def test_export_shows_progress_on_stderr_for_long_exports(config: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    with_store(store_url(tmp_path), lambda s: s.insert_calls([make_call(i) for i in range(1200)]))
    monkeypatch.setattr(data, "PROGRESS_MIN", 1000)
    out = tmp_path / "all.jsonl"
    assert main(["--config", str(config), "export", "--route", "support-bot", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert len(_lines(out)) == 1200
    assert "exporting" in captured.err and "1200/1200" in captured.err
    assert captured.out == ""


def test_export_through_the_gateway_uses_the_corrected_answer(make_gateway: Any, fake_upstream: str,
                                                              tmp_path: Path) -> None:
    gw = make_gateway(base_config(fake_upstream, tmp_path))
    ids = []
    for q in ("What is 2+2?", "Capital of Italy?", "Say hello"):
        r = httpx.post(gw.v1 + "/chat/completions", json={"model": "bot", "messages": [
            {"role": "user", "content": q}]})
        ids.append(r.headers["x-flywheel-call-id"])
    assert httpx.post(gw.v1 + "/feedback", json={"call_id": ids[0], "correction": "4"}).status_code == 201
    assert httpx.post(gw.v1 + "/feedback", json={"call_id": ids[1], "rating": -1}).status_code == 201
    url = gw.gateway.settings.store.url
    poll_store(url, lambda s: s.count_feedback(), lambda n: n == 2)
    cfg = write_config(tmp_path / "export.toml", url, tmp_path / "spill.jsonl", gw.v1)
    out = tmp_path / "bot.jsonl"
    assert main(["--config", str(cfg), "export", "--route", "bot", "--out", str(out)]) == 0
    examples = _lines(out)
    assert [e["messages"] for e in examples] == [
        [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}],
        [{"role": "user", "content": "Say hello"}, {"role": "assistant", "content": "You said: Say hello"}],
    ]
