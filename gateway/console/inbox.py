"""The feedback inbox: recent corrections and down-ratings, grouped as the template learner clusters them.

Questions are grouped by `LearningControl.cluster_texts` (the template learner's clustering,
learners/controls.py), per route, so a team sees the recurring failure; each group shows the
instruction the current template holds about it ("Answers about X must mention: Y" whose X the
group's questions share), if the learner produced one.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from gateway.capture.corrections import response_text
from gateway.console.common import Ctx, page
from gateway.console.render import respond
from gateway.messages import content_text
from gateway.serve.injected import client_messages
from gateway.serve.templating import Template, TemplateError

MAX_ITEMS = 100
_RULE = re.compile(r"Answers about (.+?) must mention:", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class InboxItem:
    call_id: str
    created_at: float
    question: str
    answer: str
    correction: str | None
    rating: int | None
    comment: str | None


@dataclass(frozen=True, slots=True)
class InboxGroup:
    route: str
    size: int
    instruction: str | None  # what the current template learned from this failure, if anything
    items: list[InboxItem]


@dataclass(frozen=True, slots=True)
class InboxPage:
    days: int
    route: str | None
    groups: list[InboxGroup]


def _instruction(instructions: list[str], questions: list[str]) -> str | None:
    for line in instructions:
        m = _RULE.search(line)
        topic = m.group(1).lower().rstrip("s") if m else None
        if topic and sum(topic in q.lower() for q in questions) * 2 >= len(questions):
            return line
    return None


@page()
async def inbox(request: Request, ctx: Ctx) -> Response:
    route = request.query_params.get("route") or None
    if route is not None:
        ctx.route(route)
    days = 7
    pairs = await ctx.store.recent_feedback_calls(since=time.time() - days * 86400, route=route, limit=MAX_ITEMS)
    fbs = {fb.id: fb for fb in await ctx.store.list_feedback(call_ids=list({c for _, c in pairs}))}
    calls = {c.id: c for c in await ctx.store.calls_by_ids(list({c for _, c in pairs}))}
    per_route: dict[str, list[InboxItem]] = defaultdict(list)
    seen: set[str] = set()
    for fb_id, call_id in pairs:
        fb = fbs.get(fb_id)
        call = calls.get(call_id)
        if fb is None or call is None or fb_id in seen:
            continue
        seen.add(fb_id)
        msgs = client_messages(call) or []
        question = next((content_text(m.get("content")) for m in reversed(msgs) if m.get("role") == "user"), "")
        per_route[call.route].append(InboxItem(call_id, fb.created_at, question, response_text(call.response),
                                               fb.correction, fb.rating, fb.comment))
    groups: list[InboxGroup] = []
    for r, items in per_route.items():
        questions = [i.question for i in items]
        clusters = (await ctx.learning.cluster_texts(r, questions) if ctx.learning is not None
                    and r in ctx.gw.settings.routes else [[i] for i in range(len(items))])
        current = await ctx.registry.current(r, "template") if r in ctx.gw.settings.routes else None
        try:
            instructions = list(Template.from_body(current.body).instructions) if current else []
        except TemplateError:
            instructions = []
        for members in clusters:
            group = [items[i] for i in members]
            groups.append(InboxGroup(r, len(group), _instruction(instructions, [g.question for g in group]), group))
    groups.sort(key=lambda g: (-g.size, -max(i.created_at for i in g.items)))
    return respond(request, "inbox.html", InboxPage(days, route, groups), viewer=ctx.viewer,
                   routes=list(ctx.gw.settings.routes))
