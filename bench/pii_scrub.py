"""Precision / recall per PII type of `Scrubber` on tests/fixtures/pii_prompts.jsonl, and its cost.

    python bench/pii_scrub.py [--fixture tests/fixtures/pii_prompts.jsonl] [--repeat 5]

A planted span counts as found when a finding of the same type covers it entirely; a finding counts
as correct when it overlaps a planted span of its type. PERSON is also split by whether a context
cue precedes the name and whether its locale is in the scrubber's name lists. Cost (process CPU
time, best of --repeat) is printed per prompt, per 1 KB of prompt text, per 1 KB of PII-free prose,
and for `scrub_call` on a chat record, with the scrubber's cache of seen texts off: every text is
scrubbed in full, as a new prompt is (with it on, every pass after the first measured lookups).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from gateway.privacy import Scrubber
from gateway.privacy.names import DEFAULT_LOCALES
from gateway.store.records import CallRecord

PROSE = (
    "The quarterly report shows revenue grew 12% to $4.2M while costs stayed flat. Please summarise "
    "the main drivers, list three risks, and suggest next steps for the team. Use bullet points and "
    "keep it under 200 words. Our product runs on Python 3.11.7 with PostgreSQL 16 and Redis; the "
    "deploy on 2024-05-01 at 14:30 moved order #12345 to the new queue. "
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fixture", type=Path, default=Path("tests/fixtures/pii_prompts.jsonl"))
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.fixture.read_text(encoding="utf-8").splitlines() if line]

    t0 = time.perf_counter()
    scrubber = Scrubber(cache_size=0)
    print(f"Scrubber() construction: {(time.perf_counter() - t0) * 1e3:.0f} ms")

    planted: Counter[str] = Counter()
    found: Counter[str] = Counter()
    predicted: Counter[str] = Counter()
    correct: Counter[str] = Counter()
    kept_total = kept_ok = 0
    misses: list[str] = []
    for row in rows:
        findings = scrubber.find(row["text"])
        for span in row["pii"]:
            kinds = [span["type"]]
            if span["type"] == "PERSON":
                cue = "cue" if span["cue"] else "bare"
                listed = "listed-locale" if span["locale"] in DEFAULT_LOCALES else "other-locale"
                kinds.append(f"PERSON/{cue}/{listed}")
            hit = any(
                f.type == span["type"] and f.start <= span["start"] and f.end >= span["end"] for f in findings
            )
            for k in kinds:
                planted[k] += 1
                found[k] += hit
            if not hit and len(misses) < 8:
                misses.append(f"  {span['type']:<6} {span['value']!r} in {row['text'][:90]!r}")
        for f in findings:
            predicted[f.type] += 1
            correct[f.type] += any(
                s["type"] == f.type and f.start < s["end"] and f.end > s["start"] for s in row["pii"]
            )
        scrubbed = scrubber.scrub(row["text"])
        for keep in row["keep"]:
            kept_total += 1
            kept_ok += keep in scrubbed

    print(f"\n{len(rows)} prompts, {sum(len(r['pii']) for r in rows)} planted spans")
    print(f"{'type':<30}{'planted':>8}{'recall':>9}{'predicted':>11}{'precision':>11}")
    for kind in sorted(planted):
        base = kind.split("/")[0]
        prec = f"{correct[base] / predicted[base]:.3f}" if "/" not in kind and predicted[base] else ""
        pred = str(predicted[base]) if "/" not in kind else ""
        print(f"{kind:<30}{planted[kind]:>8}{found[kind] / planted[kind]:>9.3f}{pred:>11}{prec:>11}")
    print(f"non-PII strings kept intact: {kept_ok}/{kept_total}")
    if misses:
        print("first misses:\n" + "\n".join(misses))

    texts = [r["text"] for r in rows]
    nbytes = sum(len(t.encode()) for t in texts)
    best = min(_time(lambda: [scrubber.scrub(t) for t in texts]) for _ in range(args.repeat))
    print(
        f"\nscrub(): {best / len(texts) * 1e6:.0f} µs per prompt (mean {nbytes / len(texts):.0f} B), "
        f"{best / nbytes * 1024 * 1e6:.0f} µs per 1 KB of PII-laden text"
    )
    prose = (PROSE * 4)[:1024]
    n = 200
    best = min(_time(lambda: [scrubber.scrub(prose) for _ in range(n)]) for _ in range(args.repeat))
    print(f"scrub(): {best / n * 1e6:.0f} µs per 1 KB of PII-free prose")
    rec = _chat_record(texts[:4])
    best = min(_time(lambda: [scrubber.scrub_call(rec) for _ in range(50)]) for _ in range(args.repeat))
    print(f"scrub_call(): {best / 50 * 1e6:.0f} µs for a 4-turn chat record with a tool call")


def _time(fn: Any) -> float:
    # CPU time of this process: the machine is shared, and wall time would count other jobs' turns.
    t = time.process_time()
    fn()
    return time.process_time() - t


def _chat_record(texts: list[str]) -> CallRecord:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a support assistant."}]
    for t in texts:
        messages.append({"role": "user", "content": [{"type": "text", "text": t}]})
        messages.append({"role": "assistant", "content": "Noted, I will look into it."})
    tool_call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "lookup", "arguments": json.dumps({"q": texts[0]})},
    }
    response = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "finish_reason": "tool_calls",
                     "message": {"role": "assistant", "content": None, "tool_calls": [tool_call]}}],
    }  # fmt: skip
    return CallRecord(id="chatcmpl-1", route="support-bot", variant="small", model="small",
                      request={"model": "support-bot", "messages": messages}, response=response)  # fmt: skip


if __name__ == "__main__":
    main()
