"""Rendering for the console: jinja2 templates (package data), a few filters, inline SVG charts.

Every page is built from one data object; `respond` renders it as HTML, or as JSON for the same
path under /console/api, so what a page shows can be scripted. Charts are SVG drawn here on the
server (no chart library, no CDN: the console works offline and behind a proxy).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from typing import Any

import orjson
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

API = "/console/api/"


def is_api(request: Request) -> bool:
    """The request asks for JSON (the path is under /console/api)."""
    return request.url.path.startswith(API)


def money(x: float | None) -> str:
    if x is None:
        return "–"
    return f"${x:.6f}" if x < 0.01 else f"${x:.4f}"


def ms(x: float | None) -> str:
    return "–" if x is None else f"{x:,.0f} ms" if x >= 10 else f"{x:.1f} ms"


def pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.0%}"


def num(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def clock(ts: float | None) -> str:
    return "–" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def pseudonym(user: str | None) -> str:
    """How the console shows an end-user id: a stable pseudonym, never the id."""
    return "–" if user is None else "u-" + hashlib.sha256(user.encode()).hexdigest()[:10]


def sparkline(values: Sequence[float | None], *, width: int = 120, height: int = 28,
              label: str = "") -> Markup:
    """An inline SVG line of `values` (None: a gap), scaled to its own range."""
    pts = [(i, v) for i, v in enumerate(values) if v is not None]
    title = f"<title>{label}</title>" if label else ""
    if not pts:
        return Markup(f'<svg class="spark" width="{width}" height="{height}" role="img">{title}</svg>')
    lo, hi = min(v for _, v in pts), max(v for _, v in pts)
    span = (hi - lo) or 1.0
    step = width / max(1, len(values) - 1)

    def xy(i: int, v: float) -> str:
        return f"{i * step:.1f},{height - 2 - (v - lo) / span * (height - 4):.1f}"

    path = " ".join(xy(i, v) for i, v in pts)
    last = xy(*pts[-1])
    return Markup(f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
                  f'role="img">{title}<polyline fill="none" stroke="currentColor" stroke-width="1.5" '
                  f'points="{path}"/><circle r="2" cx="{last.split(",")[0]}" cy="{last.split(",")[1]}"/></svg>')


def stacked_bars(series: dict[str, Sequence[int]], *, width: int = 600, height: int = 80) -> Markup:
    """An inline SVG of stacked bars: traffic per variant per bucket."""
    names = sorted(series)
    n = max((len(v) for v in series.values()), default=0)
    if not n:
        return Markup("")
    totals = [sum(series[k][i] for k in names) for i in range(n)]
    top = max(totals) or 1
    bw = width / n
    parts = []
    for i in range(n):
        y = float(height)
        for j, k in enumerate(names):
            h = series[k][i] / top * (height - 2)
            if h > 0:
                y -= h
                parts.append(f'<rect class="c{j % 6}" x="{i * bw:.1f}" y="{y:.1f}" width="{max(bw - 1, 1):.1f}" '
                             f'height="{h:.1f}"><title>{k}: {series[k][i]}</title></rect>')
    legend = " ".join(f'<span class="key c{j % 6}">{k}</span>' for j, k in enumerate(names))
    return Markup(f'<svg class="bars" width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
                  f'{"".join(parts)}</svg><div class="legend">{legend}</div>')


_env = Environment(loader=PackageLoader("gateway.console", "templates"), autoescape=select_autoescape(["html"]),
                   trim_blocks=True, lstrip_blocks=True)
_env.filters.update(money=money, ms=ms, pct=pct, num=num, clock=clock, pseudonym=pseudonym)
_env.globals.update(sparkline=sparkline, stacked_bars=stacked_bars)


def jsonable(value: Any) -> Any:
    """Dataclasses (nested) as plain JSON values."""
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    return value


def respond(request: Request, template: str, data: Any, *, status: int = 200, **context: Any) -> Response:
    """`data` as JSON under /console/api, else the page `template` rendered with it."""
    if is_api(request):
        return Response(orjson.dumps(jsonable(data), option=orjson.OPT_NON_STR_KEYS), status_code=status,
                        media_type="application/json")
    return html(request, template, data=data, status=status, **context)


def html(request: Request, template: str, *, status: int = 200, **context: Any) -> HTMLResponse:
    """A rendered page (no caching: it shows live state)."""
    body = _env.get_template(template).render(request=request, path=request.url.path, **context)
    return HTMLResponse(body, status_code=status, headers={"cache-control": "no-store",
                                                           "x-frame-options": "DENY",
                                                           "content-security-policy": CSP})


# Everything the pages load comes from /console/static; inline SVG needs no script.
CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'"
