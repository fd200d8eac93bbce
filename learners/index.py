"""The retrieval learner: curated examples -> a candidate example index artifact.

Pure: a dataset and the current index's body in, a candidate (or None when nothing changed) out.
Embedding and the faiss build are CPU-bound; callers run `fit_index` in a thread. `tuning_grid`
is the retrieval settings the cycle tries on held-out calls (learners/cycle.py); the best one is
stored with the index and applied by the request path.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from gateway.config.settings import RetrievalSettings
from gateway.store.artifacts import Manifest
from learners.dataset import Dataset
from learners.economy import content_hash
from retrieval.embeddings import Embedder
from retrieval.examples import Example, ExampleIndex
from retrieval.lexical import Tuning

PRODUCER = "retrieval"


@dataclass(frozen=True, slots=True)
class IndexCandidate:
    """A new example index, with what changed relative to its parent."""

    index: ExampleIndex
    manifest: Manifest
    added: tuple[str, ...]  # example ids not in the parent
    removed: tuple[str, ...]  # parent example ids left out

    @property
    def examples(self) -> tuple[Example, ...]:
        return self.index.examples


def example_ids(body: Any) -> list[str]:
    """The example ids of a stored index body (no vectors are decoded)."""
    if not isinstance(body, dict):
        return []
    return [str(e["id"]) for e in body.get("examples", []) if isinstance(e, dict) and "id" in e]


def index_content(embedder: str, ids: Iterable[str]) -> str:
    """What an index holds, as the evaluation economy remembers judgements by: its embedder and
    example ids (retrieval settings are raced separately)."""
    return content_hash(embedder, sorted(ids))


def grown_from(before: Collection[str], after: Collection[str], replaced: Collection[str]) -> int:
    """How many example ids `after` adds to `before` when it leaves out only `replaced` ones
    (superseded by a newer correction of the same question); 0 otherwise."""
    added = set(after) - set(before)
    return len(added) if added and (set(before) - set(after)).issubset(replaced) else 0


def added_examples(old: Any, new: Any, replaced: Collection[str]) -> frozenset[str] | None:
    """The example ids index body `new` adds to index body `old` when it holds all of them but
    `replaced` ones, built by the same embedder and retrieved the same way; None otherwise (a
    change of retrieval settings changes every call: it is not growth)."""
    if not (isinstance(old, dict) and isinstance(new, dict)) or retrieves_differently(old, new):
        return None
    before, after = example_ids(old), example_ids(new)
    return frozenset(after) - frozenset(before) if grown_from(before, after, replaced) else None


def retrieves_differently(old: Any, new: Any) -> bool:
    """Whether two stored index bodies differ in embedder or retrieval settings."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return False
    return any(old.get(k) != new.get(k) for k in ("embedder", "retrieval"))


def tuning_grid(rs: RetrievalSettings) -> list[Tuning]:
    """The route's settings first (they win ties), then wider dense (nearest closest, or the
    examples that agree closest: retrieval/lexical.py `arrange`), hybrid and BM25 retrieval with
    thresholds relative to the best match: an absolute cosine floor that suits one embedder and
    task filters out most neighbours on another."""
    base = Tuning(rs.scoring, rs.k, rs.min_score, rs.relative_min, rs.order)
    if not rs.tune or rs.k == 0:
        return [base]
    k = max(rs.k, 8)
    grid = [base, Tuning("dense", k, -1.0, 0.0), Tuning("dense", k, -1.0, 0.5, "agreeing"),
            Tuning("hybrid", k, -1.0, 0.6), Tuning("bm25", k, 0.0, 0.5)]
    return list(dict.fromkeys(grid))


def fit_index(dataset: Dataset, embedder: Embedder, *, parent: str | None, parent_body: Any,
              same_too: bool = False) -> IndexCandidate | None:
    """Index every curated example; None when the parent already holds exactly these examples
    (unless `same_too`: its retrieval settings are to be raced again)."""
    examples = list(dataset.examples)
    old = example_ids(parent_body)
    new = [e.id for e in examples]
    same_model = isinstance(parent_body, dict) and parent_body.get("embedder") == embedder.name
    if not examples or (same_model and sorted(old) == sorted(new) and not same_too):
        return None
    added = tuple(i for i in new if i not in set(old))
    removed = tuple(i for i in old if i not in set(new))
    index = ExampleIndex.build(examples, embedder)
    calls, feedback = dataset.evidence(examples)
    n_fix = sum(1 for e in examples if e.source == "correction")
    note = (f"{len(examples)} examples ({n_fix} corrections, {len(examples) - n_fix} rated): "
            f"+{len(added)} -{len(removed)} vs {parent or 'none'}")
    if not same_model and old:
        note += f"; re-embedded with {embedder.name}"
    manifest = Manifest(produced_by=f"{PRODUCER}(embedder={embedder.name})", parent=parent,
                        data_window=dataset.window, evidence_call_ids=calls, evidence_feedback_ids=feedback,
                        note=note)
    return IndexCandidate(index, manifest, added, removed)
