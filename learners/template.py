"""The prompt-template learner: instructions and demonstrations, chosen by evaluation.

1. Instructions distilled from clusters of similar corrections: corrections are clustered by the
   embedding of their questions; per cluster of at least `min_cluster`, the topic is the content
   word most of its questions share, and the rule is the phrase most of its corrections add that
   the model's answers lacked: "Answers about refunds must mention: 14-day window".
2. Static demonstrations chosen by evaluation (BootstrapFewShot with random search): a few random
   subsets of the train examples, each scored on held-out calls by replay; the best is kept. The
   first subset is also tried without the distilled rules, so rules that hurt lose to it.
3. Optionally, an optimizer route rewrites the instructions by reflecting on failures (GEPA-style):
   it is shown the current instructions and the held-out cases the best trial still gets wrong
   (question, answer given, expected answer, score, slice), or train corrections when no trial
   was replayed; its proposal is scored like any other trial and passes the same gate.
Label routes (answers of one word: an intent, a class) get no distilled rules: "Answers about X
must mention: 0" only restates a label the demonstrations teach better.
The learner is pure: it reads a dataset and scores through the function it is given.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

import numpy as np

from gateway.serve.templating import Demonstration, Template
from gateway.store.artifacts import Manifest
from learners.dataset import Correction, Dataset
from learners.scoring import ChatFn
from retrieval.embeddings import Embedder

PRODUCER = "template"
CLUSTER_THRESHOLD = 0.5  # cosine between a question and a cluster's centroid to join it (MiniLM, static)
HASHING_CLUSTER_THRESHOLD = 0.25  # hashed n-grams put paraphrases far lower (0.1-0.4) than MiniLM (0.5-0.75)
SUPPORT = 0.6  # share of a cluster's questions/corrections a topic/phrase must appear in
BOILERPLATE_SHARE = 0.9  # a stem in this share of a route's questions is boilerplate, never a topic
MAX_PHRASE = 8
OPTIMIZER_MARKER = "Rewrite the instructions"
LABEL_SHARE = 0.8  # corrections this share of which are one word make a label route (no distilled rules)
MAX_FAILURES = 8  # failures shown to the optimizer

Scorer = Callable[[str, Template], Awaitable[float | None]]  # (trial label, template) -> mean, None: no budget
# all trials at once -> the mean of each still in the running (learners/halving.py drops clear losers early)
Race = Callable[[Sequence[tuple[str, Template]]], Awaitable[dict[str, float]]]

_STOP_WORDS = """
a an the and or but if then so of to in on at by for with from about as into over under within without
is are was were be been being am do does did doing have has had having can could will would shall should
may might must i me my mine you your yours he him his she her it its we us our they them their this that
these those what which who whom whose when where why how there here not no yes please just also very
all any some each every more most much many such than too only own same other up down out off again
further once s t don't can't i'm it's let's get got tell know need want like
"""
STOPWORDS = frozenset(_STOP_WORDS.split())

_WORD = re.compile(r"\w[\w'-]*")


def words(text: str) -> list[str]:
    """Word tokens, keeping hyphenated words ("14-day") whole."""
    return _WORD.findall(text)


def stem(word: str) -> str:
    """A crude plural strip, enough to match "refund" with "refunds"."""
    w = word.lower()
    return w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w


@dataclass(frozen=True, slots=True)
class Instruction:
    topic: str
    must_mention: str
    evidence: tuple[str, ...]  # example ids of the corrections it was distilled from

    def line(self) -> str:
        return f"Answers about {self.topic} must mention: {self.must_mention}"


@dataclass(frozen=True, slots=True)
class Failure:
    """A case a template got wrong, for the optimizer to reflect on."""

    question: str
    answer: str
    expected: str
    score: float | None = None  # the metric's score of `answer` (None: a train correction)
    segment: str | None = None
    call_id: str | None = None  # the logged call it came from (the rewrite's evidence)

    @classmethod
    def of(cls, c: Correction) -> Failure:
        """A train correction as a failure: the model's answer and the fix."""
        return cls(c.example.input, c.answer, c.example.output, call_id=c.example.source_call_id)


@dataclass(frozen=True, slots=True)
class TemplateCandidate:
    template: Template
    manifest: Manifest
    trials: tuple[tuple[str, float], ...]  # (label, held-out mean) of every trial scored
    label: str  # the winning trial
    score: float


def cluster(vectors: np.ndarray, threshold: float = CLUSTER_THRESHOLD) -> list[list[int]]:
    """Greedy single-pass clustering of unit vectors by cosine to each cluster's centroid."""
    clusters: list[list[int]] = []
    sums: list[np.ndarray] = []
    for i, v in enumerate(vectors):
        best, best_sim = -1, threshold
        for c, s in enumerate(sums):
            sim = float(v @ s) / (float(np.linalg.norm(s)) or 1.0)
            if sim >= best_sim:
                best, best_sim = c, sim
        if best < 0:
            clusters.append([i])
            sums.append(v.astype(np.float64).copy())
        else:
            clusters[best].append(i)
            sums[best] += v
    return clusters


def _stems(text: str) -> set[str]:
    return {stem(w) for w in words(text) if w.lower() not in STOPWORDS and not w.isdigit()}


def boilerplate(questions: Sequence[str], *, share: float = BOILERPLATE_SHARE, min_questions: int = 10) -> set[str]:
    """Stems nearly every question of the route carries ("Utterance:", a form's field names):
    they say nothing about what a cluster of corrections is about, so they are never a topic."""
    if len(questions) < min_questions:
        return set()
    df: Counter[str] = Counter()
    for q in questions:
        df.update(_stems(q))
    return {s for s, n in df.items() if n >= share * len(questions)}


def _topic(questions: Sequence[str], exclude: AbstractSet[str] = frozenset()) -> str | None:
    df: Counter[str] = Counter()
    surface: dict[str, Counter[str]] = defaultdict(Counter)
    for q in questions:
        seen = set()
        for w in words(q):
            if w.lower() in STOPWORDS or w.isdigit():
                continue
            s = stem(w)
            if s in exclude:
                continue
            surface[s][w.lower()] += 1
            seen.add(s)
        df.update(seen)
    need = math.ceil(SUPPORT * len(questions))
    ranked = sorted((s for s, n in df.items() if n >= need), key=lambda s: (-df[s], -len(s), s))
    return surface[ranked[0]].most_common(1)[0][0] if ranked else None


def _contains(seq: Sequence[str], sub: Sequence[str]) -> bool:
    n = len(sub)
    return any(tuple(seq[i:i + n]) == tuple(sub) for i in range(len(seq) - n + 1))


def _phrase(fixes: Sequence[Correction]) -> str | None:
    """The phrase most corrections add that their answers lacked (longest, most specific first)."""
    support: Counter[tuple[str, ...]] = Counter()
    surface: dict[tuple[str, ...], str] = {}
    new_words: dict[tuple[str, ...], int] = {}
    for c in fixes:
        spans = [(m.start(), m.end()) for m in _WORD.finditer(c.example.output)]
        toks = [c.example.output[a:b] for a, b in spans]
        low = [t.lower() for t in toks]
        answer = [t.lower() for t in words(c.answer)]
        answer_set, question = set(answer), {t.lower() for t in words(c.example.input)}
        seen: set[tuple[str, ...]] = set()
        for i in range(len(toks)):
            for j in range(i + 1, min(len(toks), i + MAX_PHRASE) + 1):
                gram = tuple(low[i:j])
                if gram[0] in STOPWORDS or gram[-1] in STOPWORDS or gram in seen or _contains(answer, gram):
                    continue
                fresh = sum(1 for t in gram if t not in STOPWORDS and t not in answer_set and t not in question)
                if fresh == 0:
                    continue
                seen.add(gram)
                surface.setdefault(gram, c.example.output[spans[i][0]:spans[j - 1][1]])  # as written
                new_words[gram] = fresh
        support.update(seen)
    need = max(2, math.ceil(SUPPORT * len(fixes)))
    ranked = sorted((g for g, n in support.items() if n >= need),
                    key=lambda g: (-support[g], -new_words[g], len(g), surface[g]))
    return surface[ranked[0]] if ranked else None


def cluster_threshold(embedder: Embedder) -> float:
    """The clustering threshold that suits the embedder's similarity scale."""
    return HASHING_CLUSTER_THRESHOLD if embedder.name.startswith("hashing") else CLUSTER_THRESHOLD


def is_label_task(outputs: Sequence[str]) -> bool:
    """True when nearly every answer is a single word (a label): a must-mention rule would only
    restate the label."""
    return bool(outputs) and sum(len(words(o)) <= 1 for o in outputs) >= LABEL_SHARE * len(outputs)


def distill_instructions(corrections: Sequence[Correction], embedder: Embedder, *, min_cluster: int = 2,
                         threshold: float | None = None, background: Sequence[str] = ()) -> list[Instruction]:
    """One instruction per cluster of >= `min_cluster` similar corrections that agree on a phrase;
    none for a label route."""
    if len(corrections) < min_cluster or is_label_task([c.example.output for c in corrections]):
        return []
    threshold = cluster_threshold(embedder) if threshold is None else threshold
    common = boilerplate(background)  # `background`: the route's questions, corrected or not
    vecs = embedder.embed([c.example.input for c in corrections])
    out: list[Instruction] = []
    for members in cluster(vecs, threshold):
        if len(members) < min_cluster:
            continue
        fixes = [corrections[i] for i in members]
        topic, phrase = _topic([c.example.input for c in fixes], common), _phrase(fixes)
        if topic and phrase:
            out.append(Instruction(topic, phrase, tuple(c.example.id for c in fixes)))
    return sorted(out, key=lambda i: (i.topic, i.must_mention))


def optimizer_prompt(instructions: Sequence[str], failures: Sequence[Correction | Failure]) -> str:
    """What the optimizer route is asked: rewrite the instructions given mistakes and fixes."""
    lines = [f"{OPTIMIZER_MARKER} of an assistant so that it stops making the mistakes below.",
             "Keep what works; say what the answers must do, in general terms, not the answers themselves.",
             "Reply with the new instructions only, one per line.", "", "Current instructions:"]
    lines += [f"- {i}" for i in instructions] or ["(none)"]
    lines += ["", "Mistakes:"]
    for n, f in enumerate(Failure.of(x) if isinstance(x, Correction) else x for x in failures):
        lines += [f"{n + 1}. Question: {f.question}", f"   Answer given: {f.answer}", f"   Expected: {f.expected}"]
        if f.score is not None:
            lines += [f"   Score: {f.score:.2f}" + (f" (slice {f.segment})" if f.segment else "")]
    return "\n".join(lines)


def parse_instructions(reply: str, *, max_lines: int = 20, max_chars: int = 300) -> list[str]:
    """Instruction lines from an optimizer's reply (bullets and numbering stripped)."""
    out: list[str] = []
    for raw in reply.splitlines():
        line = re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", raw).strip()
        if line and len(line) <= max_chars and line not in out:
            out.append(line)
    return out[:max_lines]


async def fit_template(
    current: Template, dataset: Dataset, embedder: Embedder, score: Scorer, *, parent: str | None,
    max_demos: int = 4, trials: int = 4, seed: int = 0, min_cluster: int = 2, optimizer: ChatFn | None = None,
    distilled: Sequence[Instruction] | None = None, race: Race | None = None,
    failures: Callable[[str], Sequence[Failure]] | None = None,
) -> TemplateCandidate | None:
    """Search instructions x demonstrations; the best-scoring template unless it is `current`.

    Trials are scored one by one with `score`, or all together by `race` when given (which may
    leave the clear losers out); the optimizer's rewrite, built from the best trial, by `score`.
    `failures(label)`: the held-out cases a scored trial got wrong (the optimizer reflects on the
    best trial's; with none it is not asked: nothing to learn from)."""
    found = list(distilled) if distilled is not None else distill_instructions(
        dataset.corrections, embedder, min_cluster=min_cluster, background=[e.input for e in dataset.examples])
    instructions = tuple(i.line() for i in found) or current.instructions
    pool: list[tuple[str, Template]] = [("instructions", current.replace(instructions=instructions))]
    rng = random.Random(seed)
    train = sorted(dataset.train, key=lambda e: e.id)
    for t in range(trials if max_demos > 0 else 0):
        if not train:
            break
        subset = rng.sample(train, rng.randint(1, min(max_demos, len(train))))
        demos = tuple(Demonstration(e.input, e.output, e.id) for e in subset)
        pool.append((f"demos#{t + 1}", current.replace(instructions=instructions, demonstrations=demos)))
        if t == 0 and instructions != current.instructions:
            # the same demonstrations without the distilled rules: when the rules hurt, this arm says so
            pool.append(("demos#1 without rules", current.replace(demonstrations=demos)))
    unique: list[tuple[str, Template]] = []
    for label, tpl in pool:
        if tpl != current and all(tpl != u[1] for u in unique):
            unique.append((label, tpl))
    scored: list[tuple[str, Template, float]] = []
    if race is not None:
        means = await race(unique) if unique else {}
        scored = [(label, tpl, means[label]) for label, tpl in unique if label in means]
    for label, tpl in unique if race is None else ():
        mean = await score(label, tpl)
        if mean is not None:
            scored.append((label, tpl, mean))
    shown: list[Failure] = [Failure.of(c) for c in dataset.corrections[:MAX_FAILURES]]
    if scored and failures is not None:
        shown = list(failures(max(scored, key=lambda s: s[2])[0]))[:MAX_FAILURES]
    if optimizer is not None and shown:
        best_demos = max(scored, key=lambda s: s[2])[1].demonstrations if scored else current.demonstrations
        reply = await optimizer(optimizer_prompt(instructions, shown))
        proposed = tuple(parse_instructions(reply))
        tpl = current.replace(instructions=proposed, demonstrations=best_demos)
        if proposed and tpl != current and all(tpl != s[1] for s in scored):
            mean = await score("optimizer", tpl)
            if mean is not None:
                scored.append(("optimizer", tpl, mean))
    if not scored:
        return None
    label, best, mean = max(scored, key=lambda s: s[2])  # first of equals: the simplest trial
    demo_ids = {d.source_id for d in best.demonstrations}
    used = [e for e in dataset.examples if e.id in demo_ids]
    ev_ids = {x for i in found if i.line() in best.instructions for x in i.evidence}
    if label == "optimizer":  # its evidence: the calls behind the failures it was shown
        shown_calls = {f.call_id for f in shown}
        ev_ids |= {e.id for e in dataset.examples if e.source_call_id in shown_calls}
    used += [e for e in dataset.examples if e.id in ev_ids and e.id not in demo_ids]
    calls, feedback = dataset.evidence(used)
    note = (f"{len(best.instructions)} instructions ({len(found)} distilled from "
            f"{len(dataset.corrections)} corrections), {len(best.demonstrations)} demonstrations; "
            f"best of {len(scored)} trials: {label} {mean:.2f}")
    manifest = Manifest(produced_by=f"{PRODUCER}(trials={trials}, max_demos={max_demos}, "
                                    f"optimizer={'yes' if optimizer else 'no'})",
                        parent=parent, data_window=dataset.window, evidence_call_ids=calls,
                        evidence_feedback_ids=feedback, note=note)
    return TemplateCandidate(best, manifest, tuple((s[0], round(s[2], 4)) for s in scored), label, mean)
