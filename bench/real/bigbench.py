"""Public labelled data from BIG-bench 1.0.0, read offline from its PyPI source archive.

`bigbench` does not pip-install (it pins bleurt by file:// URL) and pip >= 26 even refuses to
*download* it for that reason, so the archive is fetched once with a pinned older pip run from its
own wheel (no install), kept in bench/.cache/, and task files are read straight out of the tarball.
The few task files we use are then cached unpacked next to it, because finding a member in a
358 MB gzip stream costs a full decompression pass (~5 s).

Tasks:
- ``intent_recognition``: SNIPS utterances, 7 intents, gold label in ``target``, ``choices`` set.
- ``squad_shifts``: SQuAD v1.1 dev plus the four SQuADShifts test sets (new_wiki, nyt, reddit,
  amazon_reviews); ``target`` is the first gold answer, ``meta["answers"]`` all of them.

``Item.input`` is exactly BIG-bench's model input for the example (without the task prefix);
``Item.meta`` carries the parts (utterance / title, context, question) and ids for grouping.

Usage: python -m bench.real.bigbench   (prints counts)
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = REPO_ROOT / "bench" / ".cache" / "bigbench"
BIGBENCH_VERSION = "1.0.0"
# Last pip line that downloads sdists declaring direct-URL deps (26.x rejects them).
LEGACY_PIP = "pip==25.1.1"
_TASKS_IN_ARCHIVE = f"bigbench-{BIGBENCH_VERSION}/bigbench/benchmark_tasks/"
SQUAD_SUBSETS: tuple[str, ...] = ("squaddev", "new_wiki", "nyt", "reddit", "amazon_reviews")
SUPPORTED_TASKS: tuple[str, ...] = ("intent_recognition", "squad_shifts")


@dataclass
class Item:
    """One labelled example: model input, gold target, optional answer choices, and metadata."""

    input: str
    target: str
    choices: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskInfo:
    """Task-level prompt conventions from a BIG-bench JSON task (empty strings when absent)."""

    name: str
    description: str
    task_prefix: str
    output_prefix: str
    example_separator: str


def archive_path(cache_dir: Path = DEFAULT_CACHE) -> Path:
    """Path of the cached bigbench sdist, downloading it on first use."""
    target = cache_dir / f"bigbench-{BIGBENCH_VERSION}.tar.gz"
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    pip_dir = cache_dir / "pip"
    run = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(pip_dir), LEGACY_PIP]
    subprocess.run(run, check=True)
    pip_wheel = next(pip_dir.glob("pip-*.whl"))
    # A pip wheel is runnable as a zip app: `python pip.whl/pip ...` (documented by pip).
    subprocess.run(
        [
            sys.executable,
            f"{pip_wheel}/pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            "-d",
            str(cache_dir),
            f"bigbench=={BIGBENCH_VERSION}",
        ],
        check=True,
    )
    if not target.is_file():
        raise FileNotFoundError(f"pip download did not produce {target}")
    return target


def _task_dir(task: str, cache_dir: Path) -> Path:
    """Unpacked copy of one task's folder, read out of the archive the first time."""
    out = cache_dir / "tasks" / task
    done = out / ".complete"
    if done.is_file():
        return out
    prefix = f"{_TASKS_IN_ARCHIVE}{task}/"
    out.mkdir(parents=True, exist_ok=True)
    found = 0
    with tarfile.open(archive_path(cache_dir), "r:gz") as tar:
        for member in tar:
            if not member.isfile() or not member.name.startswith(prefix):
                continue
            rel = member.name[len(prefix) :]
            if "/" in rel:  # tasks we read are flat; skip nested subtasks
                continue
            src = tar.extractfile(member)
            if src is not None:
                (out / rel).write_bytes(src.read())
                found += 1
    if found == 0:
        raise KeyError(f"task {task!r} not found in bigbench {BIGBENCH_VERSION}")
    done.write_text("ok\n")
    return out


def _read_json(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data


def load_task_info(name: str, cache_dir: Path = DEFAULT_CACHE) -> TaskInfo:
    """Prompt conventions of a JSON task (task_prefix, output prefix such as "\\nIntent: ")."""
    if name == "squad_shifts":  # programmatic task: its format lives in task.py
        return TaskInfo(name, "Zero-shot reading comprehension (SQuAD + SQuADShifts)", "", "A: ", "\n\n")
    data = _read_json(_task_dir(name, cache_dir) / "task.json")
    return TaskInfo(
        name=name,
        description=str(data.get("description", "")),
        task_prefix=str(data.get("task_prefix", "")),
        output_prefix=str(data.get("example_output_prefix", "")),
        example_separator=str(data.get("few_shot_example_separator", "\n\n")),
    )


def _json_task_items(name: str, cache_dir: Path) -> list[Item]:
    data = _read_json(_task_dir(name, cache_dir) / "task.json")
    items: list[Item] = []
    for idx, ex in enumerate(data["examples"]):
        raw = str(ex["input"])
        if "target_scores" in ex:
            scores: dict[str, float] = ex["target_scores"]
            choices: list[str] | None = list(scores)
            target = max(scores, key=lambda c: scores[c])
        else:
            tgt = ex["target"]
            choices = None
            target = str(tgt[0] if isinstance(tgt, list) else tgt)
        meta: dict[str, Any] = {"id": f"{name}:{idx}", "index": idx}
        if raw.startswith("Utterance: "):
            meta["utterance"] = raw[len("Utterance: ") :]
        items.append(Item(input=raw, target=target, choices=choices, meta=meta))
    return items


def _squad_items(subsets: Sequence[str], cache_dir: Path) -> list[Item]:
    folder = _task_dir("squad_shifts", cache_dir)
    items: list[Item] = []
    for subset in subsets:
        if subset not in SQUAD_SUBSETS:
            raise KeyError(f"unknown squad_shifts subset {subset!r}; choose from {SQUAD_SUBSETS}")
        version = "1.1" if subset == "squaddev" else "1.0"
        data = _read_json(folder / f"{subset}_v{version}.json")
        for a_idx, article in enumerate(data["data"]):
            title = str(article.get("title", "")).strip()
            for p_idx, paragraph in enumerate(article["paragraphs"]):
                context = str(paragraph["context"]).strip()
                # reddit ships all comments as one pseudo-article: each comment is its own document.
                group = f"{subset}:{title}" if subset != "reddit" else f"{subset}:{title}#{p_idx}"
                for qa in paragraph["qas"]:
                    question = str(qa["question"]).strip()
                    answers = [str(ans["text"]).strip() for ans in qa["answers"]]
                    items.append(
                        Item(
                            # Same prompt as bigbench/benchmark_tasks/squad_shifts/task.py.
                            input=f"Title: {title}\nBackground: {context}\nQ: {question}\nA: ",
                            target=answers[0] if answers else "",
                            choices=None,
                            meta={
                                "id": str(qa["id"]),
                                "subset": subset,
                                "title": title,
                                "article": group,
                                "paragraph": f"{subset}:{a_idx}:{p_idx}",
                                "context": context,
                                "question": question,
                                "answers": answers,
                            },
                        )
                    )
    return items


def load_task(name: str, subsets: Sequence[str] | None = None, cache_dir: Path = DEFAULT_CACHE) -> list[Item]:
    """Load all examples of a BIG-bench task as Items.

    ``subsets`` only applies to ``squad_shifts`` (default: all of SQUAD_SUBSETS). Other JSON
    tasks load generically (``target_scores`` -> choices + argmax target, else ``target``).
    """
    if name == "squad_shifts":
        return _squad_items(tuple(subsets) if subsets else SQUAD_SUBSETS, cache_dir)
    return _json_task_items(name, cache_dir)


def split_by_group(
    items: Sequence[Item],
    key: str | Callable[[Item], str],
    test_share: float,
    seed: int,
) -> tuple[list[Item], list[Item]]:
    """Split into (train, test) so that no group (e.g. SQuAD article) lands on both sides.

    ``key`` is a meta key (``"article"``) or a function of the item. Groups are shuffled with
    ``seed`` and moved to test until it holds at least ``test_share`` of the items; input order
    is kept within each side. With two or more groups both sides are non-empty.
    """
    if not 0.0 < test_share < 1.0:
        raise ValueError("test_share must be in (0, 1)")

    def group_of(item: Item) -> str:
        return key(item) if callable(key) else str(item.meta[key])

    groups = sorted({group_of(it) for it in items})
    random.Random(seed).shuffle(groups)
    sizes: dict[str, int] = {}
    for it in items:
        g = group_of(it)
        sizes[g] = sizes.get(g, 0) + 1
    wanted = test_share * len(items)
    test_groups: set[str] = set()
    count = 0
    for g in groups[: max(len(groups) - 1, 1)]:  # keep at least one group for train
        if count >= wanted:
            break
        test_groups.add(g)
        count += sizes[g]
    train = [it for it in items if group_of(it) not in test_groups]
    test = [it for it in items if group_of(it) in test_groups]
    return train, test


def _counts(items: Iterable[Item], meta_key: str | None = None) -> dict[str, int]:
    """Items per meta[meta_key] value, or per target when meta_key is None."""
    out: dict[str, int] = {}
    for it in items:
        k = it.target if meta_key is None else str(it.meta[meta_key])
        out[k] = out.get(k, 0) + 1
    return dict(sorted(out.items()))


def main() -> int:
    """Print per-task counts and a sample split (downloads the archive on first run)."""
    intents = load_task("intent_recognition")
    info = load_task_info("intent_recognition")
    print(f"intent_recognition: {len(intents)} items, {len(intents[0].choices or [])} intents")
    print(f"  labels: {_counts(intents)}")
    print(f"  task_prefix: {info.task_prefix.strip()!r}")
    print(f"  output_prefix: {info.output_prefix!r}; sample input: {intents[0].input!r}")
    squad = load_task("squad_shifts")
    by_subset = _counts(squad, "subset")
    articles = {s: len({it.meta["article"] for it in squad if it.meta["subset"] == s}) for s in by_subset}
    print(f"squad_shifts: {len(squad)} questions; per subset {by_subset}; groups {articles}")
    dev = [it for it in squad if it.meta["subset"] == "squaddev"]
    train, test = split_by_group(dev, "article", test_share=0.2, seed=0)
    overlap = {it.meta["article"] for it in train} & {it.meta["article"] for it in test}
    print(
        f"  squaddev split by article (20%, seed 0): train {len(train)} / test {len(test)} questions, "
        f"{len({it.meta['article'] for it in test})} test articles, shared articles: {len(overlap)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
