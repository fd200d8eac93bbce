"""The Augmenter the pipeline calls: a route's template and retrieved examples, current or canary.

Per route the augmenter holds one immutable `RouteServing`: the current (promoted) template and
example index and, when a learner's candidate is in canary, the canary ones with their traffic
share. A new state is a new object swapped in whole (`install`), so a request never sees a
half-loaded index. Canary assignment: a stable hash of (route, user | session) against the
canary's share (recorded by the rollout, which grows it as evidence mounts), so a user or a
conversation stays on one side; a call with neither is assigned on its own, per call. The
virtual key is never used: one app sending no `user` would put all its traffic on one side.

Per request: the template renders as a system message put first; retrieval embeds the last user
message (on the embedder's worker thread, never on the event loop), takes the top-k examples by
the index's tuning (chosen by the learning cycle and stored with the index: dense, BM25 or hybrid
scoring, k, absolute and relative thresholds) or else the route's `retrieval` settings, and
inserts them as user/assistant pairs just before the final user message; how close and how
unanimous they were goes to the router (`Features.memory_*`).
`gateway/serve/injected.py` undoes exactly this.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gateway.config.settings import RetrievalSettings, Settings
from gateway.messages import query_text
from gateway.providers.base import Body
from gateway.serve.pipeline import Augmentation, RequestContext
from gateway.serve.templating import CompiledTemplate, TemplateError, standard_variables
from policies.featurise import Memory, memory_answer
from retrieval.examples import ExampleIndex, with_few_shot
from retrieval.lexical import Tuning, arrange

log = logging.getLogger("flywheel.augment")

EmbedFn = Callable[[str], Awaitable[NDArray[np.float32]]]
DEFAULT_RETRIEVAL = RetrievalSettings()


@dataclass(frozen=True, slots=True)
class LoadedTemplate:
    version: str
    compiled: CompiledTemplate


@dataclass(frozen=True, slots=True)
class LoadedIndex:
    version: str
    index: ExampleIndex


@dataclass(frozen=True, slots=True)
class ServingSet:
    """What one request is served with: a template version and an index version (either may be absent)."""

    template: LoadedTemplate | None = None
    index: LoadedIndex | None = None


@dataclass(frozen=True, slots=True)
class RouteServing:
    """A route's live artifacts: current, plus canary ones with their share of traffic."""

    current: ServingSet = field(default_factory=ServingSet)
    canary_template: LoadedTemplate | None = None
    canary_index: LoadedIndex | None = None
    share: float = 0.0  # the template canary's share of traffic (and the index canary's by default)
    index_share: float | None = None  # the index canary's, when it has its own

    @property
    def has_canary(self) -> bool:
        return self.canary_template is not None or self.canary_index is not None

    def canary_set(self) -> ServingSet:
        """The set a canary request gets: canary artifacts where there are some, current elsewhere."""
        return ServingSet(self.canary_template or self.current.template, self.canary_index or self.current.index)

    def choose(self, position: float) -> tuple[ServingSet, str]:
        """The set for a caller at `position` in [0, 1), and the note saying which canaries serve it.
        Each kind's canary serves the positions below its own share."""
        template, index, notes = self.current.template, self.current.index, []
        if self.canary_template is not None and position < self.share:
            template = self.canary_template
            notes.append(f"canary {template.version} ({self.share:.0%})")
        index_share = self.share if self.index_share is None else self.index_share
        if self.canary_index is not None and position < index_share:
            index = self.canary_index
            notes.append(f"canary {index.version} ({index_share:.0%})")
        if not notes:
            return self.current, ""
        return ServingSet(template, index), "; ".join(notes)


def actor_of(ctx: RequestContext) -> str:
    """Who a request is sticky for: user (as stored: its keyed pseudonym), else session
    (conversation), else the call itself."""
    user = ctx.stored_user or ctx.user
    if user:
        return f"u:{user}"
    if ctx.session_id:
        return f"s:{ctx.session_id}"
    return f"c:{ctx.call_id}"


def bucket(route: str, actor: str) -> float:
    """A stable position in [0, 1) for (route, actor); below the canary share means canary."""
    digest = hashlib.blake2b(f"{route}\x00{actor}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


async def apply(
    route: str, messages: list[Body], serving: ServingSet, retrieval: RetrievalSettings, embed: EmbedFn | None,
    *, reason: str = "", exclude_calls: frozenset[str] = frozenset(), variables: Mapping[str, Any] | None = None,
) -> Augmentation | None:
    """Render `serving`'s template and inject its retrieved examples into a copy of `messages`."""
    if serving.template is None and serving.index is None:
        return None
    out = list(messages)
    notes = [reason] if reason else []
    template_version = index_version = None
    retrieved: tuple[str, ...] = ()
    score = agreement = 0.0
    memory: Memory | None = None
    if serving.template is not None:
        try:
            system = serving.template.compiled.render(variables or standard_variables(route))
            out.insert(0, {"role": "system", "content": system})
            template_version = serving.template.version
        except TemplateError as exc:  # validated before promotion; never fail a request over it
            log.error("route %s: template %s skipped: %s", route, serving.template.version, exc)
            notes.append(f"template {serving.template.version} failed to render")
    tuning = serving.index.index.tuning if serving.index is not None else None
    tuning = tuning or Tuning(retrieval.scoring, retrieval.k, retrieval.min_score, retrieval.relative_min,
                              retrieval.order)
    if serving.index is not None and tuning.k > 0 and embed is not None and len(serving.index.index):
        question = query_text(out)
        if question.strip():
            try:
                vec = await embed(question)
            except Exception as exc:  # busy or broken embedder: serve without retrieval
                notes.append(f"retrieval skipped ({type(exc).__name__})")
            else:
                index = serving.index.index
                hits = index.search(vec, question, tuning, tuning.k + len(exclude_calls))
                hits = [h for h in hits if h[0].source_call_id not in exclude_calls][: tuning.k]
                if hits:  # the memory features read the hits best first, before they are arranged
                    memory = memory_answer(e.output for e, _ in hits)  # one pass for agreement and answer
                    score, agreement = hits[0][1], memory.agreement if memory is not None else 0.0
                hits = arrange(hits, tuning.order, lambda e: e.output)
                out = with_few_shot(out, hits)
                index_version = serving.index.version
                retrieved = tuple(e.id for e, _ in hits)
    return Augmentation(out, template_version, index_version, retrieved, "; ".join(notes),
                        memory_score=score, memory_agreement=agreement, memory=memory)


class Augmenter:
    """The live augmenter: per-route `RouteServing` objects, swapped whole by the loader."""

    def __init__(self, settings: Callable[[], Settings], embed: Callable[[], EmbedFn | None]) -> None:
        self._settings = settings  # getters: a config reload or a late-loading embedder change them
        self._embed = embed
        self._routes: dict[str, RouteServing] = {}

    def install(self, route: str, serving: RouteServing | None) -> None:
        """Swap in a route's new state (None: nothing to augment with)."""
        routes = dict(self._routes)
        if serving is None:
            routes.pop(route, None)
        else:
            routes[route] = serving
        self._routes = routes

    def serving(self, route: str) -> RouteServing | None:
        """The state requests for `route` are served with now."""
        return self._routes.get(route)

    async def augment(self, route: str, messages: list[Body], ctx: RequestContext) -> Augmentation | None:
        """The Augmenter protocol: pick current or canary for this caller, then `apply`."""
        state = self._routes.get(route)
        if state is None:
            return None
        rs = self._settings().routes.get(route)
        retrieval = (rs.retrieval if rs is not None else None) or DEFAULT_RETRIEVAL
        if state.has_canary:
            chosen, reason = state.choose(bucket(route, actor_of(ctx)))
        else:
            chosen, reason = state.current, ""
        return await apply(route, messages, chosen, retrieval, self._embed(), reason=reason)


class PinnedAugmenter:
    """An augmenter fixed to one serving set, for offline evaluation of an artifact under test.

    `exclude_calls` hides examples taken from those calls, so a held-out call is never answered
    from its own correction (leave-one-out).
    """

    def __init__(self, serving: ServingSet, retrieval: RetrievalSettings, embed: EmbedFn | None,
                 exclude_calls: frozenset[str] = frozenset()) -> None:
        self.serving = serving
        self.retrieval = retrieval
        self.embed = embed
        self.exclude_calls = exclude_calls

    async def augment(self, route: str, messages: list[Body], ctx: RequestContext) -> Augmentation | None:
        return await apply(route, messages, self.serving, self.retrieval, self.embed, reason="evaluation",
                           exclude_calls=self.exclude_calls)
