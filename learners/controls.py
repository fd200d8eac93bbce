"""A person's controls over a route's learning: the learning side of the console and the CLI.

`LearningLoop` (learners/loop.py) delegates the control methods of `LearningControl`
(gateway/learning.py) here. Every action needs who (a key id) and why (a note): a version's state
change carries both in its transition reason (the artifact log), and every action is also a row
in the route's action log (`Store.record_action`), whose latest freeze/pause rows are the route's
flags. A frozen route gets no new candidates; a paused route's canaries keep serving their share
but are neither promoted nor rolled back automatically.

A hand-written template version goes the way a learned one does: a candidate with a manifest
(`produced_by = "person:<key id>"`), guardrails, offline evaluation against the current version
on held-out logged calls (the evaluation gate, a tie allowed: a person's edit need not be a gain
offline), then the canary, or rejection with the reason.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np

from gateway.config.settings import RetrievalSettings
from gateway.learning import LearningHost, RouteFlags, UnknownRoute
from gateway.serve.augment import LoadedTemplate, ServingSet
from gateway.serve.templating import CompiledTemplate, Template, TemplateError
from gateway.store.artifacts import ArtifactRegistry, Manifest, TransitionRefused, kind_of
from gateway.store.console_queries import ActionKind, RouteAction
from learners import guardrails
from learners.cycle import CycleDeps, LearningCycle
from learners.evaluate import Budget, Replayer, gate
from learners.rollout import Rollout, RolloutDecision
from learners.scoring import build_metric
from learners.template import cluster, cluster_threshold

if TYPE_CHECKING:
    from learners.report import LearnReport

PERSON = "person:"  # produced_by prefix of versions a person wrote
MAX_CASES = 100


def reason(action: str, who: str, note: str) -> str:
    """The transition reason of a person's action: what, by whom, why."""
    return f"{action} by {who}: {note}"


class Controls:
    """The control methods of `LearningControl`, over the loop's registry, rollout and route locks."""

    def __init__(self, host: LearningHost, registry: Callable[[], ArtifactRegistry],
                 rollout: Callable[[], Rollout], lock: Callable[[str], asyncio.Lock],
                 deps: Callable[[], CycleDeps]) -> None:
        self.host = host
        self._registry = registry
        self._rollout = rollout
        self._lock = lock
        self._deps = deps

    def _check(self, route: str, note: str, who: str) -> None:
        if route not in self.host.settings.routes:
            raise UnknownRoute(route)
        if not note.strip():
            raise ValueError("a note saying why is required")
        if not who.strip():
            raise ValueError("who acted (a key id) is required")

    async def _log(self, route: str, action: ActionKind, target: str | None, who: str, note: str) -> None:
        await self.host.open_store().record_action(RouteAction(route, action, target, who, note.strip(), time.time()))

    async def promote(self, route: str, version: str, *, who: str, note: str) -> RolloutDecision:
        """Promote a running canary now."""
        self._check(route, note, who)
        kind = kind_of(version)
        why = reason("promoted", who, note)
        async with self._lock(route):
            states = await self._registry().states(route, kind)
            vs = states.versions.get(version)
            if vs is None or vs.state != "canary":
                raise TransitionRefused(f"{version} is {vs.state if vs else 'unknown'}; only a canary can be promoted")
            await self._registry().move(route, kind, version, "promoted", why)
            await self._log(route, "promote", version, who, note)
            await self.host.serving.refresh(route)
        return RolloutDecision(route, kind, version, "promoted", why)

    async def roll_back(self, route: str, version: str | None, *, who: str, note: str) -> RolloutDecision:
        """Roll back a canary or a promoted version (the newest live one when `version` is None)."""
        self._check(route, note, who)
        async with self._lock(route):
            decision = await self._rollout().rollback(route, version, reason("rolled back", who, note))
            await self._log(route, "rollback", decision.version, who, note)
            await self.host.serving.refresh(route)
        return decision

    async def set_paused(self, route: str, paused: bool, *, who: str, note: str) -> None:
        """Pause or resume the route's automatic canary decisions."""
        self._check(route, note, who)
        await self._log(route, "pause" if paused else "resume", None, who, note)

    async def set_frozen(self, route: str, frozen: bool, *, who: str, note: str) -> None:
        """Freeze or unfreeze learning for the route."""
        self._check(route, note, who)
        await self._log(route, "freeze" if frozen else "unfreeze", None, who, note)

    async def route_flags(self, route: str) -> RouteFlags:
        """The route's freeze and pause states: its latest freeze/unfreeze and pause/resume rows."""
        frozen = paused = False
        frozen_by = paused_by = ""
        for a in await self.host.open_store().list_actions(route):
            if a.action in ("freeze", "unfreeze"):
                frozen, frozen_by = a.action == "freeze", f"{a.who}: {a.note}"
            elif a.action in ("pause", "resume"):
                paused, paused_by = a.action == "pause", f"{a.who}: {a.note}"
        return RouteFlags(frozen, paused, frozen_by if frozen else "", paused_by if paused else "")

    async def publish_template(self, route: str, source: str, *, who: str, note: str) -> RolloutDecision:
        """A person's template version: candidate -> guardrails -> evaluation gate -> canary or rejected.

        `source` replaces the current version's hand-written part; its learned instructions and
        demonstrations are kept (they are evidence-backed; roll the version back to drop them).
        """
        self._check(route, note, who)
        rs = self.host.settings.routes[route]
        cfg = self.host.settings.learners
        registry = self._registry()
        async with self._lock(route):
            states = await registry.states(route, "template")
            if states.canary is not None:
                raise TransitionRefused(f"canary {states.canary} is running; promote or roll it back first")
            parent = await registry.current(route, "template")
            base = Template.from_body(parent.body) if parent else Template("")
            tpl = base.replace(source=source)
            manifest = Manifest(produced_by=f"{PERSON}{who}", parent=parent.version if parent else None,
                                data_window=None, note=note.strip())
            problems = guardrails.check_template_candidate(tpl, manifest, route=route,
                                                           max_chars=cfg.max_template_chars,
                                                           scrubber=await self.host.scrubber())
            ev = None
            if not problems:
                deps = self._deps()
                cycle = LearningCycle(deps, cfg, route, rs)
                ds = await cycle.dataset()
                budget = Budget(cfg.max_eval_calls, cfg.max_eval_cost_usd)
                replayer = Replayer(deps.runtime, route, build_metric("exact"), budget,
                                    rs.retrieval or RetrievalSettings(), deps.embed_fn())
                replayer.metric = build_metric(cfg.metric, field=cfg.metric_field, embed=deps.embed_fn())
                cases = ds.heldout[-max(cfg.min_samples, min(MAX_CASES, cfg.max_eval_calls // 2)):]
                current = deps.current(route)
                try:
                    candidate = ServingSet(LoadedTemplate("candidate", CompiledTemplate(tpl)), current.index)
                except TemplateError as exc:
                    raise ValueError(f"the template does not compile: {exc}") from None
                cur_arm = await replayer.run(current, cases, leave_one_out=True)
                cand_arm = await replayer.run(candidate, cases, leave_one_out=True)
                ev = gate(cur_arm, cand_arm, cfg, cfg.metric, budget, require_gain=False)
            evaluation = {"offline": asdict(ev) if ev else None, "guardrails": problems, "authored_by": who}
            rec = await registry.save_candidate(route, "template", tpl.to_body(), manifest, evaluation=evaluation,
                                                reason=reason("written", who, note))
            await self._log(route, "publish", rec.version, who, note)
            if problems or ev is None or not ev.passed:
                why = "guardrails: " + "; ".join(problems) if problems else ev.reason if ev else "not evaluated"
                decision = await self._rollout().reject(route, "template", rec.version, why)
            else:
                decision = await self._rollout().begin(route, "template", rec.version, f"{ev.reason} (by {who})")
            await self.host.serving.refresh(route)
        return decision

    async def cluster_texts(self, route: str, texts: list[str]) -> list[list[int]]:
        """Groups of similar texts, clustered as the template learner clusters corrected questions."""
        if route not in self.host.settings.routes:
            raise UnknownRoute(route)
        if not texts:
            return []
        embedder = await self.host.embedders.get()

        def run() -> list[list[int]]:
            vecs = np.asarray(embedder.embed(texts), dtype=np.float32)
            return cluster(vecs, cluster_threshold(embedder))

        return await asyncio.to_thread(run)

    async def frozen_report(self, route: str) -> LearnReport | None:
        """A report saying the cycle was skipped, when the route's learning is frozen; else None."""
        from learners.report import LearnReport

        flags = await self.route_flags(route)
        if not flags.frozen:
            return None
        report = LearnReport(route, time.time())
        report.skipped.append(f"learning is frozen for this route ({flags.frozen_by})")
        return report
