"""Offline evaluation: replay held-out logged calls through current vs candidate, then gate.

Replays go through the same `Pipeline` and providers as live traffic (retries, provider calls),
pinned to the variant that answered the logged call (so current and candidate are compared on the
same model, not on whatever a routing policy's exploration picked each time; a variant no longer
configured leaves the choice to the policy), with an augmenter pinned to the artifacts under
test and a sink that counts cost and discards the records, so evaluation calls never pollute the
traffic data the learners read. A candidate
index is scored leave-one-out: a replayed call never sees the example taken from itself.

The gate: the candidate must score at least `margin` above current on at least `min_samples`
paired cases, and no slice (request `metadata.segment`/`label`, else the virtual key) with at
least `min_slice_samples` cases may fall more than `tolerance` below current. Every run spends
from one `Budget` (`max_eval_calls`, `max_eval_cost_usd`); an exhausted budget ends the replay and
the gate judges what was replayed.
"""

from __future__ import annotations

import asyncio
import copy
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

from gateway.capture.corrections import response_text
from gateway.config.settings import LearnerSettings, RetrievalSettings
from gateway.errors import GatewayError
from gateway.providers.base import Body
from gateway.serve.augment import EmbedFn, PinnedAugmenter, ServingSet
from gateway.serve.pipeline import Augmentation, Pipeline, RequestContext
from gateway.serve.runtime import Runtime
from gateway.store.records import CallRecord, new_id
from learners.dataset import EvalCase
from learners.economy import Economy, content_hash
from learners.scoring import Graded, Metric

Verdict = Literal["passed", "regression", "no_gain", "insufficient"]


class BudgetExhausted(Exception):
    """The run's evaluation budget (calls or cost) is spent."""


@dataclass(slots=True)
class Budget:
    """What one learning run may spend on evaluation calls (replays, judge, optimizer)."""

    max_calls: int
    max_cost_usd: float = 0.0  # 0: no cost limit
    calls: int = 0
    cost_usd: float = 0.0

    def reserve(self) -> None:
        """Count one call before it is made; BudgetExhausted when none is left."""
        if self.calls >= self.max_calls or (self.max_cost_usd > 0 and self.cost_usd >= self.max_cost_usd):
            raise BudgetExhausted(f"evaluation budget spent ({self.calls} calls, ${self.cost_usd:.4f})")
        self.calls += 1

    def sink(self, record: CallRecord) -> None:
        """The evaluation pipeline's sink: add the cost, drop the record."""
        self.cost_usd += record.cost_usd or 0.0

    @property
    def exhausted(self) -> bool:
        return self.calls >= self.max_calls or (self.max_cost_usd > 0 and self.cost_usd >= self.max_cost_usd)


@dataclass(frozen=True, slots=True)
class CaseResult:
    call_id: str
    segment: str | None
    score: float
    answer: str
    error: str | None = None
    record: CallRecord | None = field(default=None, repr=False, compare=False)  # the replay's call


@dataclass(frozen=True, slots=True)
class ArmResult:
    """One arm (current or a candidate) replayed over the held-out cases."""

    results: tuple[CaseResult, ...]
    complete: bool  # False when the budget ran out first

    @property
    def mean(self) -> float:
        return sum(r.score for r in self.results) / len(self.results) if self.results else 0.0


@dataclass(frozen=True, slots=True)
class SliceFigure:
    segment: str
    n: int
    current: float
    candidate: float
    delta: float


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The offline verdict on a candidate, with the figures behind it."""

    metric: str
    n: int
    current: float
    candidate: float
    delta: float
    passed: bool
    verdict: Verdict
    reason: str
    slices: tuple[SliceFigure, ...] = ()
    calls: int = 0
    cost_usd: float = 0.0
    trials: tuple[tuple[str, float], ...] = field(default=())  # (trial label, mean) for searches


class Replayer:
    """Replays cases through the gateway pipeline with artifacts pinned; all calls spend `budget`."""

    def __init__(self, runtime: Callable[[], Runtime], route: str, metric: Metric, budget: Budget,
                 retrieval: RetrievalSettings, embed: EmbedFn | None, *, concurrency: int = 4,
                 economy: Economy | None = None) -> None:
        self._runtime = runtime
        self.route = route
        self.metric = metric
        self.budget = budget
        self._retrieval = retrieval
        self._embed = embed
        self._sem = asyncio.Semaphore(concurrency)
        self.economy = economy  # the upstream gate and the answer cache (learners/economy.py)
        self.cached = 0  # cases answered from the cache (no upstream call)

    @asynccontextmanager
    async def _slot(self, upstream: str) -> AsyncIterator[None]:
        if self.economy is None:
            yield
        else:
            async with self.economy.gate.slot(upstream):
                yield

    def spending(self, budget: Budget) -> Replayer:
        """This replayer (same route, metric and concurrency limit) spending `budget` instead."""
        other = copy.copy(self)
        other.budget = budget
        return other

    async def ask(self, route: str, prompt: str) -> str:
        """One user message to any route or model, through the gateway; its answer text."""
        self.budget.reserve()
        rt = self._runtime().resolve(route)
        body = {"model": route, "messages": [{"role": "user", "content": prompt}]}
        async with self._slot(rt.name):
            out, _ = await Pipeline(self.budget.sink).chat(rt, body, RequestContext(call_id=new_id("eval")))
        return response_text(out)

    async def _one(self, serving: ServingSet, case: EvalCase, loo: bool, variant: str | None) -> CaseResult | None:
        async with self._sem:
            augmenter = PinnedAugmenter(serving, self._retrieval, self._embed,
                                        frozenset({case.call_id}) if loo else frozenset())
            body = {**case.params, "model": self.route, "messages": [dict(m) for m in case.messages]}
            ctx = RequestContext(call_id=new_id("eval"), user=case.user)
            route = self._runtime().resolve(self.route)
            pin = variant or case.variant
            upstream = route.name
            if pin is not None and pin in route.targets:
                route, upstream = route.pinned(pin), route.targets[pin].provider.name
            # the prompt this arm sends: an arm whose artifacts leave it unchanged reuses the answer
            aug = await augmenter.augment(self.route, body["messages"], ctx)
            key = content_hash([self.route, pin, aug.messages if aug else body["messages"], case.params])
            hit = self.economy.cache.get(key) if self.economy is not None else None
            if hit is not None:
                self.cached += 1
                answer, record = hit
            else:
                try:
                    self.budget.reserve()
                except BudgetExhausted:
                    return None
                try:
                    async with self._slot(upstream):
                        out, record = await Pipeline(self.budget.sink, _Fixed(aug)).chat(route, body, ctx)
                except GatewayError as exc:  # a failed replay is a failed answer
                    return CaseResult(case.call_id, case.segment, 0.0, "", exc.message)
                answer = response_text(out)
                if self.economy is not None:
                    self.economy.cache.put(key, answer, record)
            try:
                score = await self.metric.score(Graded(case.question, answer, case.reference))
            except BudgetExhausted:
                return None
            except GatewayError as exc:
                return CaseResult(case.call_id, case.segment, 0.0, answer, f"metric: {exc.message}", record)
            return CaseResult(case.call_id, case.segment, score, answer, record=record)

    async def run(self, serving: ServingSet, cases: Sequence[EvalCase], *, leave_one_out: bool = True,
                  variant: str | None = None) -> ArmResult:
        """Replay every case (in order, a few at a time) until done or out of budget, each on the
        variant that answered it, or on `variant` for all."""
        results = await asyncio.gather(*(self._one(serving, c, leave_one_out, variant) for c in cases))
        kept = tuple(r for r in results if r is not None)
        return ArmResult(kept, len(kept) == len(cases))


class _Fixed:
    """An augmenter that returns an augmentation computed beforehand (the one the cache key hashed)."""

    def __init__(self, aug: Augmentation | None) -> None:
        self._aug = aug

    async def augment(self, route: str, messages: list[Body], ctx: RequestContext) -> Augmentation | None:
        return self._aug


def gate(current: ArmResult, candidate: ArmResult, cfg: LearnerSettings, metric: str, budget: Budget,
         *, trials: Sequence[tuple[str, float]] = (), require_gain: bool = False) -> Evaluation:
    """Judge a candidate against current on the cases both arms replayed (see the module docstring).

    `require_gain`: a tie is not enough (templates: another demonstration draw that scores the same
    is churn). An index may tie: the corrections it adds are evidence by themselves, and a lone new
    correction rarely has a held-out twin to show its gain offline; the canary judges it online.
    """
    cur = {r.call_id: r for r in current.results}
    pairs = [(cur[r.call_id], r) for r in candidate.results if r.call_id in cur]
    n = len(pairs)
    c_mean = sum(a.score for a, _ in pairs) / n if n else 0.0
    k_mean = sum(b.score for _, b in pairs) / n if n else 0.0
    delta = k_mean - c_mean
    by_segment: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for a, b in pairs:
        if a.segment:
            by_segment[a.segment].append((a.score, b.score))
    slices = tuple(
        SliceFigure(seg, len(v), sum(x for x, _ in v) / len(v), sum(y for _, y in v) / len(v),
                    sum(y - x for x, y in v) / len(v))
        for seg, v in sorted(by_segment.items()) if len(v) >= cfg.min_slice_samples
    )
    figures = f"{metric} {c_mean:.2f} -> {k_mean:.2f} ({delta:+.2f}) on {n} held-out calls"
    worst = min(slices, key=lambda s: s.delta, default=None)
    verdict: Verdict
    if n < cfg.min_samples:
        spent = " (evaluation budget spent)" if budget.exhausted else ""
        verdict, reason = "insufficient", f"only {n} held-out calls with a reference{spent}, need {cfg.min_samples}"
    elif worst is not None and worst.delta < -cfg.tolerance:
        verdict, reason = "regression", (f"slice {worst.segment} regressed {worst.delta:+.2f} "
                                         f"(tolerance {cfg.tolerance:.2f}); {figures}")
    elif delta < cfg.margin or (require_gain and delta <= 0):
        verdict = "regression" if delta < -cfg.tolerance else "no_gain"
        need = f"> {max(cfg.margin, 0.0):+.2f}" if require_gain and delta >= cfg.margin else f">= {cfg.margin:+.2f}"
        reason = f"offline {figures}; needs {need}"
    else:
        verdict, reason = "passed", f"offline {figures}"
    return Evaluation(metric, n, c_mean, k_mean, delta, verdict == "passed", verdict, reason, slices,
                      budget.calls, round(budget.cost_usd, 6), tuple(trials))
