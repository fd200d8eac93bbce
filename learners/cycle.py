"""One learning cycle for one route: store -> dataset -> learners -> guardrails -> evaluation -> rollout.

The learners (retrieval, template) are pure; this module feeds them, checks what they produce,
replays held-out calls to evaluate it, stores every candidate with its manifest and evaluation,
and hands those that pass to the rollout step. A kind with a canary running still gets new
candidates: one that passes queues behind the canary (learners/rollout.py). The result is a
typed `LearnReport`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from gateway.config.settings import LearnerSettings, RetrievalSettings, RouteSettings
from gateway.serve.augment import EmbedFn, LoadedIndex, LoadedTemplate, ServingSet
from gateway.serve.outcomes import Replay
from gateway.serve.runtime import Runtime
from gateway.serve.templating import CompiledTemplate, Template, TemplateError
from gateway.store.artifacts import ArtifactRegistry, Manifest, version_number
from gateway.store.records import ArtifactKind, ArtifactRecord
from learners import guardrails
from learners.dataset import CurateConfig, Dataset, EvalCase, curate, load_records
from learners.economy import Economy, content_hash
from learners.evaluate import ArmResult, Budget, Replayer, gate
from learners.growth import overtaken, serving_index
from learners.halving import Halving, first_slice, successive_halving
from learners.index import IndexCandidate, example_ids, fit_index, index_content, tuning_grid
from learners.report import CandidateReport, LearnReport, Outcome
from learners.rollout import Rollout
from learners.routing_replay import replay_variants
from learners.scoring import build_metric
from learners.template import Failure, fit_template
from retrieval.embeddings import Embedder, EmbedMany
from retrieval.lexical import Tuning

if TYPE_CHECKING:
    from gateway.privacy.scrubber import Scrubber

# "grow": only indices that add to the serving one, judged online (seconds, on every correction);
# "full": also the replayed evaluations (retrieval tuning, templates; minutes on a slow upstream)
Lane = Literal["grow", "full"]
MAX_CASES = 100  # held-out calls replayed per arm; the budget may stop earlier


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
    economy: Economy | None = None  # kept across cycles by the loop: memo, back-off, answer cache, upstream gate
    # serve the route's artifacts anew at once (a canary started mid-cycle must not wait for the cycle's end)
    refresh: Callable[[str], Awaitable[object]] | None = None


class LearningCycle:
    """Runs `learn(route)` once; a new object per cycle keeps per-run state (budget, memo) local.

    The learning loop runs the two lanes side by side (learners/loop.py), so a minutes-long
    evaluation never holds back the next correction's index (learners/growth.py)."""

    def __init__(self, deps: CycleDeps, cfg: LearnerSettings, route: str, rs: RouteSettings,
                 lane: Lane = "full") -> None:
        self.d = deps
        self.lane = lane
        self.cfg = cfg
        self.route = route
        self.rs = rs
        self.budget = Budget(cfg.max_eval_calls, cfg.max_eval_cost_usd)
        self.report = LearnReport(route, time.time())
        self._current_arm: ArmResult | None = None
        self.keep = frozenset((rs.retrieval or RetrievalSettings()).keep_entities)  # PII types examples may keep

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
                                       config=config, blocked=blocked, window=window, keep=self.keep)

    async def learn(self) -> LearnReport:
        r = self.report
        scrubber = await self.d.scrubber()
        if scrubber is not None and scrubber.names is not None:
            # names were stored as consistent fake names (privacy.name_pseudonyms): they may stay
            self.keep = self.keep | {"PERSON"}
        ds = await self.dataset()
        r.dataset, r.examples, r.train, r.heldout = ds.stats, len(ds.examples), len(ds.train), len(ds.heldout)
        embedder = await self.d.embedder()
        embed = self.d.embed_fn()
        self.replayer = Replayer(self.d.runtime, self.route, build_metric("exact"), self.budget,
                                 self.rs.retrieval or RetrievalSettings(), embed, economy=self.d.economy)
        judge_route = self.cfg.judge_route
        self.replayer.metric = build_metric(
            self.cfg.metric, field=self.cfg.metric_field, embed=embed,
            judge=(lambda p: self.replayer.ask(judge_route, p)) if judge_route else None)
        self.heldout = ds.heldout
        newest = ds.heldout[-self._cases_per_arm():]
        # seeded order: every slice successive halving replays first is a fair sample of the cases
        self.cases: tuple[EvalCase, ...] = tuple(random.Random(self.cfg.seed).sample(newest, len(newest)))
        cur = self.d.current(self.route)
        # what a judgement depends on besides the candidate: the cases and what serves now
        self.data = content_hash([[c.call_id, c.reference] for c in self.cases],
                                 cur.template.version if cur.template else None,
                                 cur.index.version if cur.index else None)
        steps: tuple[tuple[ArtifactKind, Callable[[Dataset, Embedder], Awaitable[None]]], ...] = (
            ("index", self._index), ("template", self._template))
        for kind, learn in steps[:1] if self.lane == "grow" else steps:
            # back-off after repeated refusals saves evaluation: the grow lane spends none
            left = self.d.economy.sits_out(self.route, kind) if self.d.economy and self.lane == "full" else 0
            if left:
                r.skipped.append(f"{kind}: sits out this cycle after repeated rejections ({left - 1} more)")
            else:
                await learn(ds, embedder)
        r.eval_calls, r.eval_cost_usd = self.budget.calls, round(self.budget.cost_usd, 6)
        r.eval_cached = self.replayer.cached
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
        # current, the index, the instructions trial, the demonstration trials (one of them also
        # without the distilled rules), the optimizer's
        arms = 4 + self.cfg.demo_trials + (1 if self.cfg.optimizer_route else 0)
        arms += len(tuning_grid(self.rs.retrieval or RetrievalSettings())) - 1
        calls_per_case = 2 if self.cfg.metric == "judge" else 1
        return max(self.cfg.min_samples, min(MAX_CASES, self.budget.max_calls // (arms * calls_per_case)))

    async def _arm(self, serving: ServingSet, cases: tuple[EvalCase, ...] | None = None) -> ArmResult:
        return await self.replayer.run(serving, self.cases if cases is None else cases, leave_one_out=True)

    async def _current(self, arm: ArmResult | None = None) -> ArmResult:
        """Current replayed on the cases `arm` reached (all cases without one); replays are kept."""
        want = {r.call_id for r in arm.results} if arm is not None else {c.call_id for c in self.cases}
        have = {r.call_id for r in self._current_arm.results} if self._current_arm is not None else set()
        missing = tuple(c for c in self.cases if c.call_id in want and c.call_id not in have)
        if missing or self._current_arm is None:
            more = await self._arm(self.d.current(self.route), missing)
            old = self._current_arm
            self._current_arm = more if old is None else ArmResult(old.results + more.results,
                                                                   old.complete and more.complete)
        return self._current_arm

    async def _race(self, kind: ArtifactKind, arms: dict[str, ServingSet]) -> Halving:
        """Successive halving over `arms` on the cycle's cases (learners/halving.py), noted in the report."""
        async def replay(label: str, cases: Sequence[EvalCase]) -> ArmResult:
            return await self._arm(arms[label], tuple(cases))

        h = await successive_halving(list(arms), replay, self.cases,
                                     first=first_slice(len(self.cases), self.cfg.min_samples))
        self.report.eval_saved += h.saved
        if len(arms) > 1:
            self.report.eval_halving.append(f"{kind}: {h.describe()}; {h.saved} case replays saved")
        return h

    async def _judged_before(self, kind: ArtifactKind, content: str) -> bool:
        """True (and noted) when a candidate with this content was judged already: passed and still
        serving (or queued), or refused on the same data. Nothing to spend on it."""
        j = self.d.economy.judged.get((self.route, kind, content)) if self.d.economy else None
        if j is None:
            return False
        if j.passed:
            state = (await self.d.registry.states(self.route, kind)).versions.get(j.version)
            if state is None or state.state not in ("candidate", "canary", "promoted"):
                return False
        elif j.data != self.data:
            return False
        why = "passed already" if j.passed else "rejected on the same held-out data"
        self.report.eval_skipped.append(f"{kind}: same content as {j.version or 'an earlier trial'}, {why}")
        return True

    async def _settle(self, kind: ArtifactKind, body: Any, manifest: Manifest, problems: list[str],
                      arm: ArmResult | None, extra: dict[str, Any], trials: tuple[tuple[str, float], ...] = (),
                      content: str | None = None, online: str | None = None) -> Outcome | None:
        """Store the candidate with its evaluation, then reject it or start its rollout (`online`:
        why it is judged by the canary alone, without an offline evaluation); its outcome (None:
        not stored, a template trial that gained nothing)."""
        content = content or content_hash(body)
        ev = gate(await self._current(arm), arm, self.cfg, self.cfg.metric, self.budget, trials=trials,
                  require_gain=kind == "template") if arm else None
        if kind == "template" and not problems and ev is not None and ev.verdict == "no_gain":
            # Another draw of demonstrations that does no better is not worth a version.
            self.report.skipped.append(f"template: no trial beat the current template ({ev.reason})")
            if self.d.economy is not None:
                self.d.economy.record(self.route, kind, content, self.data, "", False)
            return None
        evaluation = {"offline": asdict(ev) if ev else None, "guardrails": problems, "content_hash": content,
                      **extra}
        reason = ("guardrails: " + "; ".join(problems) if problems
                  else ev.reason if ev is not None else "not evaluated")
        online_only = online is not None and not problems and ev is None
        if online_only:
            reason = evaluation["online_only"] = str(online)
        rec = await self.d.registry.save_candidate(self.route, kind, body, manifest, evaluation=evaluation)
        if not online_only and (problems or ev is None or not ev.passed):
            decision = await self.d.rollout.reject(self.route, kind, rec.version, reason)
        else:
            decision = await self.d.rollout.begin(self.route, kind, rec.version, reason)
            if decision.action in ("canary", "promoted") and self.d.refresh is not None:
                await self.d.refresh(self.route)
        if self.d.economy is not None:
            self.d.economy.record(self.route, kind, content, self.data, rec.version, decision.action != "rejected")
        outcome: Outcome = decision.action  # type: ignore[assignment]
        self.report.candidates.append(CandidateReport(kind, rec.version, outcome, decision.reason, manifest.note, ev))
        return outcome

    async def _last_rejected(self, kind: ArtifactKind) -> ArtifactRecord | None:
        """The kind's newest version when it was rejected or rolled back (so an identical candidate
        is not retried)."""
        versions = (await self.d.registry.states(self.route, kind)).versions
        newest = max(versions.values(), key=lambda v: version_number(v.version), default=None)
        if newest is None or newest.state not in ("rejected", "rolled_back"):
            return None
        return await self.d.registry.get(self.route, kind, newest.version)

    async def _index(self, ds: Dataset, embedder: Embedder) -> None:
        serving = await serving_index(self.d.registry, self.route)
        due = self.lane == "full" and not self._too_few() and (serving is None or serving.tuning_due(len(self.heldout)))
        cand = await self._fit_index(ds, embedder, same_too=due)
        if cand is None:
            self.report.skipped.append("index: no change in the curated examples")
            return
        ids = frozenset(e.id for e in cand.examples)
        grown = serving.grown_by(ids, embedder.name, ds.replaced) if serving is not None else len(ids)
        # examples of current or the serving index a newer correction of the same question replaced:
        # the rollout counts an index that leaves out only these as growth (learners/canary_facts.py)
        replaced = sorted((set(cand.removed) | (serving.ids - ids if serving else set())) & ds.replaced)
        tuning = serving.tuning if serving is not None and serving.tuning else self._route_tuning()
        tuned_on = serving.tuned_on if serving is not None else 0
        online = None
        if self._too_few():
            online = (f"{len(self.cases)} held-out calls with a reference, fewer than min_samples "
                      f"{self.cfg.min_samples}: judged online by the canary alone")
        elif grown and not due:
            swaps = f" ({len(replaced)} replacing older corrections of the same questions)" if replaced else ""
            online = (f"only adds {grown} examples{swaps} to {serving.version if serving else 'nothing'}, "
                      f"with its retrieval {tuning.describe()} (raced on {tuned_on} held-out calls): "
                      "judged online by the canary alone")
        last = await self._last_rejected("index")
        # the same candidate as the newest refused one: the same examples (retrieved the same way,
        # unless a race is to choose how)
        if last is not None and set(example_ids(last.body)) == ids and (
                online is None or not isinstance(last.body, dict) or last.body.get("retrieval") == tuning.to_dict()):
            self.report.skipped.append(f"index: same examples as {last.version}, {last.state}: {last.note}")
            return
        content = index_content(embedder.name, ids)
        # a due race is judged on new data (the held-out set doubled): the same examples race again
        if not due and await self._judged_before("index", content):
            return
        if serving is not None and ids == serving.ids and not due:
            self.report.skipped.append(f"index: the same examples as {serving.version}, which serves")
            return
        if online is None and self.lane == "grow":
            self.report.skipped.append("index: leaves out examples of the serving index: "
                                       "left to the evaluation lane (replayed against current)")
            return
        arm, manifest = None, cand.manifest
        tried: list[tuple[str, float]] = []
        problems = await self._index_problems(cand, manifest)
        if online is None and not problems:
            # replayed on the held-out calls: every retrieval setting when they are due a race (the
            # best kept, learners/growth.py), else the serving ones
            grid = list(dict.fromkeys([tuning, *tuning_grid(self.rs.retrieval or RetrievalSettings())])) \
                if due else [tuning]
            tuning, arm, tried = await self._tune(cand, grid)
            tuned_on = len(self.heldout) if due else tuned_on
            if serving is not None and ids == serving.ids and tuning == serving.tuning:
                await self._raced(tuned_on)  # the serving settings still win: nothing new to serve
                self.report.skipped.append(f"index: retrieval raced on {tuned_on} held-out calls, "
                                           f"{serving.version}'s {tuning.describe()} still best")
                return
            cand = await self._grown_meanwhile(cand, embedder)
            moved = overtaken(serving, await serving_index(self.d.registry, self.route),
                              frozenset(e.id for e in cand.examples), tuning, ds.replaced)
            if moved is not None:
                self.report.skipped.append(f"index: {moved}")
                return
            manifest = replace(cand.manifest, note=f"{cand.manifest.note}; retrieval {tuning.describe()}")
            problems = await self._index_problems(cand, manifest)  # the refit may hold new examples
            content = index_content(embedder.name, (e.id for e in cand.examples))
        index = cand.index.with_tuning(tuning)
        body = await asyncio.to_thread(index.to_body)
        outcome = await self._settle("index", body, manifest, problems, arm,
                                     {"added": list(cand.added), "removed": list(cand.removed),
                                      "replaced": replaced, "retrieval": tuning.to_dict(), "tuned_on": tuned_on},
                                     tuple(tried), content=content, online=online)
        if due and arm is not None and outcome == "rejected":
            await self._raced(tuned_on)  # raced, and refused: what serves keeps its settings until the next race

    async def _raced(self, tuned_on: int) -> None:
        """Record a finished race on the index serving now (the grow lane may have grown it
        meanwhile; those it grows next inherit the figure): no race again before the held-out
        set doubles."""
        now = await serving_index(self.d.registry, self.route)
        if now is not None:
            await self.d.registry.annotate(self.route, "index", now.version, tuned_on=tuned_on)

    async def _index_problems(self, cand: IndexCandidate, manifest: Manifest) -> list[str]:
        return guardrails.check_index_candidate(cand.examples, manifest, max_examples=self.cfg.max_examples,
                                                scrubber=await self.d.scrubber(), keep=self.keep)

    async def _fit_index(self, ds: Dataset, embedder: Embedder, *, same_too: bool = False) -> IndexCandidate | None:
        parent = await self.d.registry.current(self.route, "index")
        return await asyncio.to_thread(fit_index, ds, embedder, parent=parent.version if parent else None,
                                       parent_body=parent.body if parent else None, same_too=same_too)

    async def _tune(self, cand: IndexCandidate, grid: list[Tuning]) -> tuple[Tuning, ArmResult | None,
                                                                             list[tuple[str, float]]]:
        """Each setting of `grid` replayed on the held-out calls (successive halving); the best
        survivor with its replays (the first setting, unreplayed, when none has results)."""
        current = self.d.current(self.route)
        arms = {t.describe(): t for t in grid}
        race = await self._race("index", {label: ServingSet(current.template, LoadedIndex(
            "candidate", cand.index.with_tuning(t))) for label, t in arms.items()})
        tried: list[tuple[str, float]] = []
        best: tuple[Tuning, ArmResult] | None = None
        for label, t in arms.items():
            a = race.results.get(label)
            if a is None:
                continue
            tried.append((label, round(a.mean, 4)))
            if label in race.survivors and a.results and (best is None or a.mean > best[1].mean):
                best = (t, a)
        return (best[0], best[1], tried) if best is not None else (grid[0], None, tried)

    async def _grown_meanwhile(self, cand: IndexCandidate, embedder: Embedder) -> IndexCandidate:
        """The candidate refit on the store as it is now, when corrections arrived during its
        replays and it only gained examples: served at the end of minutes of evaluation, the
        older candidate would leave them out (and could not take a grown canary's place)."""
        # same_too: the grow lane may serve exactly the fresh examples already (fit_index would
        # then return None, and the older, smaller candidate would be settled)
        fresh = await self._fit_index(await self.dataset(), embedder, same_too=True)
        before = {e.id for e in cand.examples}
        if fresh is None or not before < {e.id for e in fresh.examples}:
            return cand
        note = f"{fresh.manifest.note}; {len(fresh.examples) - len(before)} arrived during its evaluation"
        return replace(fresh, manifest=replace(fresh.manifest, note=note))

    def _route_tuning(self) -> Tuning:
        """The route's own retrieval settings (the first of the tuning grid)."""
        return tuning_grid(self.rs.retrieval or RetrievalSettings())[0]

    def _too_few(self) -> bool:
        """Too few held-out cases for the offline gate to decide anything: replaying them is waste."""
        return len(self.cases) < self.cfg.min_samples

    async def _template(self, ds: Dataset, embedder: Embedder) -> None:
        if self._too_few():
            # a template needs an offline gain to be tried at all (learners/evaluate.py `gate`)
            self.report.skipped.append(f"template: {len(self.cases)} held-out calls with a reference, "
                                       f"need {self.cfg.min_samples} to evaluate one")
            return
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

        async def race(pool: Sequence[tuple[str, Template]]) -> dict[str, float]:
            compiled: dict[str, ServingSet] = {}
            for label, tpl in pool:
                try:
                    compiled[label] = ServingSet(LoadedTemplate(label, CompiledTemplate(tpl)), current.index)
                except TemplateError:
                    continue
            h = await self._race("template", compiled)
            need = min(self.cfg.min_samples, len(self.cases))
            arms.update({a: h.results[a] for a in h.survivors if len(h.results[a].results) >= max(1, need)})
            return {a: arms[a].mean for a in h.survivors if a in arms}

        by_id = {c.call_id: c for c in self.cases}

        def failures(label: str) -> list[Failure]:
            """The held-out cases trial `label` got wrong, worst first (what the optimizer reflects on)."""
            wrong = sorted((r for r in arms[label].results if r.score < 1.0 and r.call_id in by_id),
                           key=lambda r: r.score) if label in arms else []
            return [Failure(by_id[r.call_id].question, r.answer, by_id[r.call_id].reference, r.score, r.segment,
                            r.call_id) for r in wrong]

        opt_route = self.cfg.optimizer_route
        optimizer = (lambda p: self.replayer.ask(opt_route, p)) if opt_route else None
        cand = await fit_template(current_tpl, ds, embedder, score, parent=parent.version if parent else None,
                                  max_demos=self.cfg.max_demos, trials=self.cfg.demo_trials, seed=self.cfg.seed,
                                  min_cluster=self.cfg.min_cluster, optimizer=optimizer, race=race,
                                  failures=failures)
        if cand is None:
            self.report.skipped.append("template: no trial differed from the current template or could be scored")
            return
        if await self._judged_before("template", content_hash(cand.template.to_body())):
            return
        problems = guardrails.check_template_candidate(cand.template, cand.manifest, route=self.route,
                                                       max_chars=self.cfg.max_template_chars,
                                                       scrubber=await self.d.scrubber(), keep=self.keep)
        old_demos = {d.source_id for d in current_tpl.demonstrations}
        added = [d.source_id for d in cand.template.demonstrations if d.source_id not in old_demos]
        await self._settle("template", cand.template.to_body(), cand.manifest, problems,
                           None if problems else arms.get(cand.label), {"added": added}, cand.trials)
