"""`flywheel demo`: simulated users teach the `intents` route through a real in-process gateway.

The shortened run (150 calls, seed 0, hashing embedder) must end clearly better than it began and
better than the same model asked directly, promote at least one artifact, and leave a store that
`flywheel prompts log intents` explains.
"""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import pytest
from rich.console import Console

from flywheel.cli import main
from flywheel.demo.config import ROUTE, LearningKnobs, write_demo_config
from flywheel.demo.runner import DemoOptions, run_demo
from flywheel.demo.upstream import SimulatedUpstream
from flywheel.demo.users import Judge, intents, load_sample, named_intents, traffic
from flywheel.demo.view import LiveView, PlainView


def test_traffic_asks_every_question_once_before_repeating() -> None:
    sample = load_sample()
    assert len(sample) == 350 and len(intents(sample)) == 7
    reqs = list(traffic(sample, 400, seed=3))
    first_pass = [r.utterance for r in reqs[:350]]
    assert sorted(first_pass, key=lambda u: u.text) == sorted(sample, key=lambda u: u.text)
    assert [r.utterance for r in traffic(sample, 400, seed=3)] == [r.utterance for r in reqs]
    assert [r.utterance for r in traffic(sample, 50, seed=4)] != first_pass[:50]


def test_an_answer_is_right_only_when_it_names_the_gold_intent_alone() -> None:
    labels = intents(load_sample())
    assert named_intents("play_music", labels) == ("play_music",)
    assert named_intents("You said: play music on Spotify", labels) == ()
    assert named_intents("play_music add_to_playlist", labels) == ("play_music", "add_to_playlist")
    judge = Judge(labels, correct_share=1.0, seed=0)
    assert judge.judge("c1", "get_weather", "get_weather").feedback == {"call_id": "c1", "rating": 1}
    assert judge.judge("c2", "play_music add_to_playlist", "add_to_playlist").feedback == {
        "call_id": "c2", "correction": "add_to_playlist"}


@pytest.mark.parametrize("share", [0.0, 0.7])
def test_wrong_answers_get_corrections_on_the_configured_share(share: float) -> None:
    judge = Judge(intents(load_sample()), correct_share=share, seed=1)
    kinds = Counter(next(iter(set(judge.judge(str(i), "no idea", "rate_book").feedback) - {"call_id"}))
                    for i in range(1000))
    assert kinds["correction"] / 1000 == pytest.approx(share, abs=0.05)
    assert kinds["rating"] + kinds["correction"] == 1000


def test_demo_config_parses_and_says_how_to_inspect(tmp_path: Path) -> None:
    labels = intents(load_sample())
    files, settings = write_demo_config(tmp_path / "demo", SimulatedUpstream(), LearningKnobs(), "hashing",
                                        labels, learn_every=25)
    text = files.config.read_text(encoding="utf-8")
    assert f"prompts log {ROUTE}" in text and str(files.config) in text
    assert all(label in files.template.read_text(encoding="utf-8") for label in labels)
    route = settings.routes[ROUTE]
    assert route.retrieval is not None and Path(route.template or "") == files.template
    assert settings.store.url == f"sqlite:///{files.store}"
    assert settings.learners.embedder == "hashing" and not settings.learners.enabled
    assert settings.providers["sim"].kind == "fake" and settings.providers["sim"].replies


def test_a_short_demo_learns_promotes_and_the_log_shows_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    options = DemoOptions(calls=150, window=25, seed=0, directory=tmp_path / "demo", embedder="hashing")
    result = run_demo(options, PlainView(Console(file=out, width=200)))
    assert [w.last for w in result.windows] == [25, 50, 75, 100, 125, 150]
    assert result.last_accuracy >= result.first_accuracy + 0.2, [w.accuracy for w in result.windows]
    assert result.last_accuracy >= result.last_baseline + 0.1, [w.baseline for w in result.windows]
    assert result.windows[-1].cost_per_call_usd > result.windows[0].cost_per_call_usd  # examples lengthen prompts
    assert result.promoted, [e.lines for e in result.events]
    printed = out.getvalue()
    assert "embedder: hashing" in printed and "accuracy: first window" in printed
    config = options.directory.resolve() / "config.toml"
    assert f"flywheel --config {config} prompts log {ROUTE}" in printed

    assert main(["--config", str(config), "prompts", "log", ROUTE, "--width", "300"]) == 0
    log = capsys.readouterr().out
    assert "canary -> promoted" in log
    assert all(version in log for version in result.promoted)


def test_the_cli_runs_live_and_plain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--no-live", "--calls", "12", "--window", "6", "--learn-every", "6",
                 "--embedder", "hashing", "--dir", str(tmp_path / "plain")]) == 0
    plain = capsys.readouterr().out
    assert "calls    7-12" in plain and "prompts diff intents" in plain
    console = Console(file=io.StringIO(), force_terminal=True, width=160)
    with LiveView(console) as view:
        result = run_demo(DemoOptions(calls=8, window=4, learn_every=4, directory=tmp_path / "live",
                                      embedder="hashing"), view)
    assert len(result.windows) == 2
    assert "What was learned" in console.file.getvalue()  # type: ignore[attr-defined]
