"""One learning cycle for one route: store -> dataset -> learners -> guardrails -> evaluation -> rollout.

The learners (retrieval, template) are pure; this module feeds them, checks what they produce,
replays held-out calls to evaluate it, stores every candidate with its manifest and evaluation,
and hands those that pass to the rollout step. A kind with a canary running gets no new
candidate until the canary is decided. The result is a typed `LearnReport`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from gateway.config.settings import LearnerSettings, RetrievalSettings, RouteSettings
from gateway.serve.augment import EmbedFn, LoadedIndex, LoadedTemplate, ServingSet
from gateway.serve.outcomes import Replay
from gateway.serve.runtime import Runtime
from gateway.serve.templating import CompiledTemplate, Template, TemplateError
from gateway.store.artifacts import ArtifactRegistry, Manifest, version_number
from gateway.store.records import ArtifactKind, ArtifactRecord
from learners import guardrails
from learners.dataset import CurateConfig, Dataset, DatasetStats, EvalCase, curate, load_records
from learners.evaluate import ArmResult, Budget, Evaluation, Replayer, gate
from learners.index import example_ids, fit_index
from learners.rollout import Rollout, RolloutDecision
from learners.routing_replay import replay_variants
from learners.scoring import build_metric
from learners.template import fit_template
from retrieval.embeddings import Embedder, EmbedMany

if TYPE_CHECKING:
    from gateway.privacy.scrubber import Scrubber

Outcome = Literal["canary", "promoted", "rejected"]
MAX_CASES = 100  # held-out calls replayed per arm; the budget may stop earlier


@dataclass(frozen=True, slots=True)
class CandidateReport:
    kind: ArtifactKind
    version: str
    outcome: Outcome
    reason: str
    note: str
    evaluation: Evaluation | None = None


@dataclass(slots=True)
class LearnReport:
    """What one cycle did for one route (the answer of `POST /admin/learn`)."""

    route: str
    started_at: float
    duration_s: float = 0.0
    examples: int = 0
    train: int = 0
    heldout: int = 0
    dataset: DatasetStats = field(default_factory=DatasetStats)
    candidates: list[CandidateReport] = field(default_factory=list)
    rollout: list[RolloutDecision] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    eval_calls: int = 0
    eval_cost_usd: float = 0.0
    policy: Any = None  # learners.routing.LearnResult, for routes whose policy is learned

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class CycleDeps:
    """What a cycle needs from the gateway that runs it."""

    registry: ArtifactRegistry
    rollout: Rollout
    runtime: Callable[[], Runtime]
    embedder: Callable[[], Awaitable[Embedder]]
    embed_fn: Callable[[], EmbedFn | None]
    scrubber: Callable[[], Awaitable[Scrubber | None]]
    current: Callable[[str], ServingSet]  # the route's current serving set (as live traffic sees it)
    blocked: Callable[[str], Awaitable[set[str]]]


class LearningCycle:
    """Runs `learn(route)` once; a new object per cycle keeps per-run state (budget, memo) local."""

    def __init__(self, deps: CycleDeps, cfg: LearnerSettings, route: str, rs: RouteSettings) -> None:
        self.d = deps
        self.cfg = cfg
        self.route = route
        self.rs = rs
        self.budget = Budget(cfg.max_eval_calls, cfg.max_eval_cost_usd)
        self.report = LearnReport(route, time.time())
        self._current_arm: ArmResult | None = None

    async def dataset(self) -> Dataset:
        """Fetch and curate (curation embeds: it runs on a thread)."""
        now = time.time()
        since = now - self.cfg.window_days * 86400 if self.cfg.window_days else None
        calls, feedback = await load_records(self.d.registry.store, self.route, since=since)
        embedder = await self.d.embedder()
        config = CurateConfig(self.cfg.heldout_share, self.cfg.seed, self.cfg.dedupe_threshold, self.cfg.max_examples)
        blocked = await self.d.blocked(self.route)
        scrubber = await self.d.scrubber()
        window = (since if since is not None else min((c.created_at for c in calls), default=now), now)
        return await asyncio.to_thread(curate, self.route, calls, feedback, embedder, scrubber=scrubber,
                                       config=config, blocked=blocked, window=window)

    async def learn(self) -> LearnReport:
        r = self.report
        ds = await self.dataset()
        r.dataset, r.examples, r.train, r.heldout = ds.stats, len(ds.examples), len(ds.train), len(ds.heldout)
        embedder = await self.d.embedder()
        embed = self.d.embed_fn()
        self.replayer = Replayer(self.d.runtime, self.route, build_metric("exact"), self.budget,
                                 self.rs.retrieval or RetrievalSettings(), embed)
        judge_route = self.cfg.judge_route
        self.replayer.metric = build_metric(
            self.cfg.metric, field=self.cfg.metric_field, embed=embed,
            judge=(lambda p: self.replayer.ask(judge_route, p)) if judge_route else None)
        self.heldout = ds.heldout
        self.cases: tuple[EvalCase, ...] = ds.heldout[-self._cases_per_arm():]
        states = await self.d.registry.all_states(self.route)
        kinds: tuple[ArtifactKind, ...] = ("index", "template")
        for kind in kinds:
            ks = states.get(kind)
            if ks is not None and ks.canary is not None:
                r.skipped.append(f"{kind}: canary {ks.canary} is running; no new candidate until it is decided")
            elif kind == "index":
                await self._index(ds, embedder)
            else:
                await self._template(ds, embedder)
        r.eval_calls, r.eval_cost_usd = self.budget.calls, round(self.budget.cost_usd, 6)
        r.duration_s = round(time.time() - r.started_at, 3)
        return r

    async def routing_replays(self, n: int, embed_many: EmbedMany) -> list[Replay]:
        """After `learn`: the newest `n` held-out calls replayed on every variant of the route
        (learners/routing_replay.py), from a budget of their own (n calls per variant, and the
        run's cost limit); their calls and cost are added to the report."""
        variants = [v.name for v in self.rs.variant_list()]
        if n <= 0 or not self.heldout or len(variants) < 2:
            return []
        replayer = self.replayer.spending(Budget(n * len(variants), self.cfg.max_eval_cost_usd))
        replays = await replay_variants(replayer, self.d.current(self.route), self.heldout, variants, embed_many,
                                        n=n)
        self.report.eval_calls += replayer.budget.calls
        self.report.eval_cost_usd = round(self.report.eval_cost_usd + replayer.budget.cost_usd, 6)
        return replays

    def _cases_per_arm(self) -> int:
        """Held-out cases replayed per arm: the newest that let every arm this cycle may replay
        (current, the index candidate, each template trial; a judge doubles the calls) fit in the
        budget. Otherwise the first arms spend it all and no candidate has paired cases left."""
        arms = 3 + self.cfg.demo_trials + (1 if self.cfg.optimizer_route else 0)
        calls_per_case = 2 if self.cfg.metric == "judge" else 1
        return max(self.cfg.min_samples, min(MAX_CASES, self.budget.max_calls // (arms * calls_per_case)))

    async def _arm(self, serving: ServingSet) -> ArmResult:
        return await self.replayer.run(serving, self.cases, leave_one_out=True)

    async def _current(self) -> ArmResult:
        if self._current_arm is None:
            self._current_arm = await self._arm(self.d.current(self.route))
        return self._current_arm

    async def _settle(self, kind: ArtifactKind, body: Any, manifest: Manifest, problems: list[str],
                      arm: ArmResult | None, extra: dict[str, Any], trials: tuple[tuple[str, float], ...] = ()) -> None:
        """Store the candidate with its evaluation, then reject it or start its rollout."""
        ev = gate(await self._current(), arm, self.cfg, self.cfg.metric, self.budget, trials=trials,
                  require_gain=kind == "template") if arm else None
        if kind == "template" and not problems and ev is not None and ev.verdict == "no_gain":
            # Another draw of demonstrations that does no better is not worth a version.
            self.report.skipped.append(f"template: no trial beat the current template ({ev.reason})")
            return
        evaluation = {"offline": asdict(ev) if ev else None, "guardrails": problems, **extra}
        reason = ("guardrails: " + "; ".join(problems) if problems
                  else ev.reason if ev is not None else "not evaluated")
        rec = await self.d.registry.save_candidate(self.route, kind, body, manifest, evaluation=evaluation)
        if problems or ev is None or not ev.passed:
            decision = await self.d.rollout.reject(self.route, kind, rec.version, reason)
        else:
            decision = await self.d.rollout.begin(self.route, kind, rec.version, reason)
        outcome: Outcome = decision.action  # type: ignore[assignment]
        self.report.candidates.append(CandidateReport(kind, rec.version, outcome, decision.reason, manifest.note, ev))

    async def _last_rejected(self, kind: ArtifactKind) -> ArtifactRecord | None:
        """The kind's newest version when it was rejected (so an identical candidate is not retried)."""
        versions = (await self.d.registry.states(self.route, kind)).versions
        newest = max(versions.values(), key=lambda v: version_number(v.version), default=None)
        if newest is None or newest.state != "rejected":
            return None
        return await self.d.registry.get(self.route, kind, newest.version)

    async def _index(self, ds: Dataset, embedder: Embedder) -> None:
        parent = await self.d.registry.current(self.route, "index")
        cand = await asyncio.to_thread(fit_index, ds, embedder, parent=parent.version if parent else None,
                                       parent_body=parent.body if parent else None)
        if cand is None:
            self.report.skipped.append("index: no change in the curated examples")
            return
        last = await self._last_rejected("index")
        if last is not None and sorted(example_ids(last.body)) == sorted(e.id for e in cand.examples):
            self.report.skipped.append(f"index: same examples as {last.version}, rejected: {last.note}")
            return
        problems = guardrails.check_index_candidate(cand.examples, cand.manifest, max_examples=self.cfg.max_examples,
                                                    scrubber=await self.d.scrubber())
        arm = None
        if not problems:
            current = self.d.current(self.route)
            arm = await self._arm(ServingSet(current.template, LoadedIndex("candidate", cand.index)))
        body = await asyncio.to_thread(cand.index.to_body)
        await self._settle("index", body, cand.manifest, problems, arm,
                           {"added": list(cand.added), "removed": list(cand.removed)})

    async def _template(self, ds: Dataset, embedder: Embedder) -> None:
        parent = await self.d.registry.current(self.route, "template")
        current_tpl = Template.from_body(parent.body) if parent else Template("")
        current = self.d.current(self.route)
        arms: dict[str, ArmResult] = {}

        async def score(label: str, tpl: Template) -> float | None:
            try:
                compiled = CompiledTemplate(tpl)
            except TemplateError:
                return None
            arm = await self._arm(ServingSet(LoadedTemplate(label, compiled), current.index))
            if len(arm.results) < min(self.cfg.min_samples, len(self.cases)) or not arm.results:
                return None
            arms[label] = arm
            return arm.mean

        opt_route = self.cfg.optimizer_route
        optimizer = (lambda p: self.replayer.ask(opt_route, p)) if opt_route else None
        cand = await fit_template(current_tpl, ds, embedder, score, parent=parent.version if parent else None,
                                  max_demos=self.cfg.max_demos, trials=self.cfg.demo_trials, seed=self.cfg.seed,
                                  min_cluster=self.cfg.min_cluster, optimizer=optimizer)
        if cand is None:
            self.report.skipped.append("template: no trial differed from the current template or could be scored")
            return
        problems = guardrails.check_template_candidate(cand.template, cand.manifest, route=self.route,
                                                       max_chars=self.cfg.max_template_chars,
                                                       scrubber=await self.d.scrubber())
        old_demos = {d.source_id for d in current_tpl.demonstrations}
        added = [d.source_id for d in cand.template.demonstrations if d.source_id not in old_demos]
        await self._settle("template", cand.template.to_body(), cand.manifest, problems,
                           None if problems else arms.get(cand.label), {"added": added}, cand.trials)
