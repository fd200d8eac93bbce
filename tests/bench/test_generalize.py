"""bench/generalize: the pure parts (scoring, first-effect figures, the PNG writer, config, AMX check).

No model and no data download here: items are built by hand.
"""

from __future__ import annotations

import json
import sqlite3
import struct
import time
import zlib
from pathlib import Path

from bench.generalize.chart import Canvas, trailing, write_curve
from bench.generalize.cycle_log import merge_loop_cycles, read_cycles
from bench.generalize.effects import effects, rise_call
from bench.generalize.gateway_pass import CallRow, LearnCycle, PassRun, Upstream, write_config
from bench.generalize.oracle import Neighbours, messages
from bench.generalize.resend import stored_messages
from bench.generalize.scoring import best_constant, first_int, first_label, is_right, parse_list
from bench.generalize.tasks import Task
from bench.real.bigbench import Item
from bench.real.no_repack import amx_present
from gateway.config.settings import load_settings


def test_labels_are_read_from_free_text_and_the_longer_label_wins() -> None:
    assert first_label("Topic: Tech support, I think", ["tech", "tech_support", "food"]) == "tech_support"
    assert first_label("It is NEGATIVE.", ["positive", "negative"]) == "negative"
    assert first_label("no idea", ["positive", "negative"]) is None
    item = Item("Word: awful", "negative", ["positive", "negative"])
    assert is_right("label", "negative", item) and not is_right("label", "positive, not negative", item)


def test_list_answers_compare_as_sets_of_normalised_strings() -> None:
    item = Item("Text: …", '["2 kg", "5 km"]', meta={"answers": ["2 kg", "5 km"]})
    assert parse_list('Sure: ["5  KM", "2 kg"] done') == ["5  KM", "2 kg"]
    assert is_right("list", 'Sure: ["5  KM", "2 kg"]', item)
    assert not is_right("list", '["2 kg"]', item)
    assert not is_right("list", "2 kg and 5 km", item)  # not a list answer
    assert parse_list("[not json] then [1, 2]") == ["1", "2"]


def test_short_answers_accept_any_gold_name_and_numbers_need_the_exact_integer() -> None:
    item = Item("Nickname: bill", "william", meta={"answers": ["william", "willard"]})
    assert is_right("short", "Willard.", item) and not is_right("short", "Bill", item)
    assert first_int("I'd say −3 or so") == -3
    num = Item("Word: great", "3")
    assert is_right("number", "+3", num) and not is_right("number", "2 or 3", num)


def test_the_best_constant_is_the_answer_most_often_right() -> None:
    stream = [Item("a", "negative", ["positive", "negative"])] * 3 + [Item("b", "positive", ["positive", "negative"])]
    assert best_constant("label", stream, ["positive", "negative"]) == ("negative", 0.75)


def test_neighbours_exclude_the_query_and_put_the_closest_spelling_first() -> None:
    pool = [Item(f"Word: {w}", "x", meta={"id": w}) for w in ("beauty", "beautiful", "table", "beautifully")]
    got = Neighbours(pool).nearest(pool[1], 2)
    assert [g.meta["id"] for g in got] == ["beautifully", "beauty"]
    task = Task("t", "label", "Say x.\n", tuple(pool), 4, ("x",))
    msgs = messages(task, got, pool[1])
    assert msgs[0]["role"] == "system" and msgs[-1]["content"] == "Word: beautiful"
    assert msgs[-3]["content"] == "Word: beautifully"  # the nearest demonstration sits next to the query


def _row(i: float, right: bool, feedback: str = "up", **kw: object) -> CallRow:
    return CallRow(f"c{i}", 1000.0 + i, 0.1, right, 0.0, "cheap", feedback, **kw)  # type: ignore[arg-type]


def test_first_effect_counts_calls_from_the_first_correction_to_the_first_promotion() -> None:
    rows = [_row(i, False, "correction" if i == 2 else "down") for i in range(10)]
    rows += [_row(10 + i, True, template_version="t1") for i in range(10)]
    for r in rows[:5]:
        r.during_learning = True
        r.latency_s = 0.5
    run = PassRun("r", rows, [LearnCycle(5, 1004.0, 1009.0, {"eval_calls": 12, "eval_cost_usd": 0.001,
                                                             "candidates": [{"kind": "template", "version": "t1",
                                                                             "outcome": "promoted"}]})],
                  [{"at": 1009.5, "kind": "template", "version": "t1", "from_state": "canary",
                    "to_state": "promoted", "reason": ""}])
    fx = effects(run, off_accuracy=0.0, window=5, rise=0.5)
    assert fx.first_correction == 3 and fx.all_users_call == 11 and fx.all_users_after == 8
    assert fx.rise_call == 13  # trailing 5 calls reach 0.6 >= 0.5 at call 13
    assert fx.learned_share == 0.5 and fx.acc_learned == 1.0 and fx.acc_plain == 0.0
    assert fx.eval_calls == 12 and "template: 1 promoted" in fx.outcomes
    assert fx.p50_learning_s == 0.5 and fx.p50_quiet_s == 0.1
    assert rise_call([False] * 10, 0.0, 5, 0.1) is None
    # plain-prompt calls during learning against the learners-off pass on the same items
    off = PassRun("off", [_row(i, False) for i in range(20)])
    for i, r in enumerate(off.rows):
        r.latency_s = 0.4 if i < 5 else 9.0  # the items of calls 1-5 are the ones compared
    assert effects(run, off_accuracy=0.0, off=off).p50_plain_vs_off == (0.5, 0.4)
    assert effects(run, off_accuracy=0.0).p50_plain_vs_off == (None, None)
    assert fx.p50_learned == (None, 0.1)  # 0 learned calls during learning: no p50 (fewer than 10)


def test_learned_prompt_calls_are_paired_with_their_prompts_re_sent_with_learning_idle(tmp_path: Path) -> None:
    rows = [_row(i, True, template_version="t1", retrieved=3) for i in range(12)]
    for r in rows[:6]:
        r.during_learning, r.latency_s = True, 0.9
    run = PassRun("r", rows, resent={0: 0.5, 2: 0.7, 4: 0.6})
    fx = effects(run, off_accuracy=0.0)
    assert fx.p50_learned_vs_idle == (0.9, 0.6)
    assert fx.p50_learned == (None, None)  # 6 calls on each side: too few for a p50
    # the prompt re-sent is the one the gateway stored, long texts read back from `blobs`
    db = tmp_path / "flywheel.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE calls (id TEXT, request TEXT)")
    con.execute("CREATE TABLE blobs (hash TEXT, text TEXT)")
    con.execute("INSERT INTO blobs VALUES ('h1', 'Rate the word.\n\nExamples: ...')")
    con.execute("INSERT INTO calls VALUES ('c0', ?)", (json.dumps({"messages": [
        {"role": "system", "content": {"$blob": "h1"}}, {"role": "user", "content": "Word: calm"}]}),))
    con.commit()
    con.close()
    assert stored_messages(db, ["c0", "missing"]) == {"c0": [
        {"role": "system", "content": "Rate the word.\n\nExamples: ..."}, {"role": "user", "content": "Word: calm"}]}


def test_the_loops_own_cycles_are_read_from_the_log_and_merged_without_the_benchs_own(tmp_path: Path) -> None:
    def stamp(t: float) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + ",000"

    t0 = float(int(time.time()))
    log = tmp_path / "gateway.log"
    log.write_text("\n".join([
        f"{stamp(t0 + 10)} INFO flywheel.learners: route r: cycle 5.0s; evaluation 7 calls, 2 cached, 0 skipped, "
        "0 saved by halving, $0.0010",  # the bench's /admin/learn cycle (ended t0 + 10)
        f"{stamp(t0 + 30)} INFO flywheel.learners: route r: cycle 4.0s; evaluation 9 calls, 1 cached, 0 skipped, "
        "3 saved by halving, $0.0020",  # the loop's own (t0 + 26 .. t0 + 30)
        f"{stamp(t0 + 50)} INFO flywheel.learners: route other: cycle 8.0s; evaluation 4 calls, 0 cached, 0 skipped, "
        "0 saved by halving, $0.0005",  # another route's: only marks latency
        f"{stamp(t0 + 50)} INFO flywheel.http: something else"]))
    cycles = read_cycles(log)
    assert [(c.route, c.eval_calls, c.ended - c.started) for c in cycles] == [("r", 7, 5.0), ("r", 9, 4.0),
                                                                             ("other", 4, 8.0)]
    rows = [CallRow(f"c{i}", t0 + i, 0.5, True, 0.0, "cheap", "up") for i in range(60)]
    run = PassRun("r", rows, [LearnCycle(5, t0 + 5, t0 + 10.4, {"eval_calls": 7})])
    assert merge_loop_cycles(run, cycles) == 1
    assert [c.report.get("source") for c in run.cycles] == [None, "loop"] and run.cycles[1].after == 26
    fx = effects(run, off_accuracy=0.0)
    assert fx.eval_calls == 16 and fx.loop_cycles == 1 and fx.cycles == 2
    marked = {int(r.call_id[1:]) for r in rows if r.during_learning}
    assert marked == set(range(5, 11)) | set(range(26, 31)) | set(range(42, 51))


def test_the_chart_is_a_valid_png_with_the_series_drawn(tmp_path: Path) -> None:
    path = tmp_path / "c.png"
    write_curve(path, 100, {"learners on": trailing([i > 50 for i in range(100)], 10)}, {"best constant": 0.5}, [50])
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    w, h = struct.unpack(">II", data[16:24])
    idat_len = struct.unpack(">I", data[33:37])[0]
    raw = zlib.decompress(data[41:41 + idat_len])
    assert len(raw) == h * (1 + 3 * w)
    assert bytes((31, 119, 180)) in raw  # the learners-on colour is on the canvas
    cv = Canvas(4, 4)
    cv.line(0, 0, 3, 3, (0, 0, 0))
    assert cv.px[(3 * 4 + 3) * 3:(3 * 4 + 3) * 3 + 3] == b"\x00\x00\x00"


def test_the_written_config_loads_with_a_learning_and_a_frozen_route_per_task(tmp_path: Path) -> None:
    task = Task("polarity", "label", "Say positive or negative.\n", (), 4, ())
    path = write_config(tmp_path, 9999, [task], [Upstream("cheap", "smollm2", "http://127.0.0.1:1/v1"),
                                                 Upstream("strong", "qwen", "http://127.0.0.1:2/v1")], "polarity")
    settings = load_settings(path)
    assert set(settings.routes) >= {"polarity", "polarity-static", "polarity-bare", "polarity-routed",
                                    "polarity-strong"}
    bare = settings.routes["polarity-bare"]  # stored prompts re-sent as they were: nothing added
    assert bare.template is None and bare.retrieval is None and bare.learn is False
    assert settings.routes["polarity-static"].learn is False and settings.routes["polarity"].learn is not False
    assert settings.learners.enabled is True  # the documented default: the loop runs beside /admin/learn
    assert load_settings(write_config(tmp_path, 9999, [task], [Upstream("cheap", "smollm2", "http://127.0.0.1:1/v1")],
                                      None, loop=False)).learners.enabled is False
    strong, cheap = settings.models["strong"].price, settings.models["cheap"].price
    assert strong is not None and cheap is not None and strong.input_per_mtok == 10 * cheap.input_per_mtok


def test_amx_is_detected_from_the_cpu_flags(tmp_path: Path) -> None:
    cpu = tmp_path / "cpuinfo"
    cpu.write_text("processor : 0\nflags : fpu sse avx2 amx_bf16 amx_tile\n")
    assert amx_present(cpu)
    cpu.write_text("processor : 0\nflags : fpu sse avx2 avx512f\n")
    assert not amx_present(cpu)
    assert not amx_present(tmp_path / "missing")
