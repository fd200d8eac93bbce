"""Prompt templates: the admin's text with named variables, plus what the learners add.

A `Template` is immutable and has three parts:
- `source`: the admin's text (the seed file named by `[routes.X] template`), a jinja2 template whose
  only inputs are the named variables in `VARIABLES` (`{{ route }}`, `{{ today }}`, `{{ now }}`);
- `instructions`: learned rule lines, e.g. "Answers about refunds must mention: the 14-day window";
- `demonstrations`: learned input/output pairs shown as "User: …" / "Assistant: …" lines.

Only `source` goes through jinja2, in a sandbox (`SandboxedEnvironment`, `StrictUndefined`, no
globals, `*`/`**` bounded): a template can read its variables and use filters, but cannot reach
Python objects (`{{ ''.__class__ }}` raises `SecurityError`), run code, or name a variable that does
not exist. Learned text comes from users, so it is appended verbatim after rendering and never
parsed as template code: a correction containing `{{ … }}` stays literal text.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined
from jinja2 import TemplateError as JinjaError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

VARIABLES: tuple[str, ...] = ("route", "today", "now")
INSTRUCTIONS_HEADER = "Rules:"
DEMONSTRATIONS_HEADER = "Examples:"
_MAX_REPEAT = 10_000  # largest sequence a template may build with `*`


class TemplateError(ValueError):
    """A template that cannot be compiled or rendered (syntax, unknown variable, sandbox refusal)."""


@dataclass(frozen=True, slots=True)
class Demonstration:
    """One worked example shown in the system prompt."""

    input: str
    output: str
    source_id: str = ""  # the curated example it came from (provenance)


@dataclass(frozen=True, slots=True)
class Template:
    """A prompt template version's content (see the module docstring)."""

    source: str
    instructions: tuple[str, ...] = ()
    demonstrations: tuple[Demonstration, ...] = ()

    def learned_text(self) -> str:
        """The learned sections as they follow the rendered source ("" when there are none)."""
        parts: list[str] = []
        if self.instructions:
            parts.append("\n".join([INSTRUCTIONS_HEADER, *(f"- {_one_line(i)}" for i in self.instructions)]))
        if self.demonstrations:
            lines = [DEMONSTRATIONS_HEADER]
            for d in self.demonstrations:
                lines += [f"User: {_one_line(d.input)}", f"Assistant: {_one_line(d.output)}"]
            parts.append("\n".join(lines))
        return "\n\n".join(parts)

    def text(self) -> str:
        """The whole template as an admin reads it (source unrendered): what diffs compare."""
        learned = self.learned_text()
        if not learned:
            return self.source
        return f"{self.source.rstrip()}\n\n{learned}" if self.source.strip() else learned

    def replace(self, **changes: Any) -> Template:
        """A copy with some parts changed."""
        return dataclasses.replace(self, **changes)

    def to_body(self) -> dict[str, Any]:
        """JSON-safe form for `ArtifactRecord.body`."""
        return {
            "source": self.source,
            "instructions": list(self.instructions),
            "demonstrations": [{"input": d.input, "output": d.output, "source_id": d.source_id}
                               for d in self.demonstrations],
        }

    @classmethod
    def from_body(cls, body: Any) -> Template:
        """Inverse of `to_body`; a bare string is a template with no learned parts."""
        if isinstance(body, str):
            return cls(body)
        if not isinstance(body, dict) or not isinstance(body.get("source"), str):
            raise TemplateError("template body must be a string or an object with a 'source' string")
        demos = tuple(Demonstration(str(d["input"]), str(d["output"]), str(d.get("source_id", "")))
                      for d in body.get("demonstrations") or [])
        return cls(body["source"], tuple(str(i) for i in body.get("instructions") or []), demos)


def _one_line(text: str) -> str:
    # One line per rule and per demonstration turn keeps the prompt's structure unambiguous.
    return " ".join(text.split())


class _Sandbox(SandboxedEnvironment):
    """The sandbox, with `*` and `**` bounded so a template cannot allocate without limit."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "**":
            raise SecurityError("'**' is not allowed in templates")
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, str | list | tuple) and isinstance(n, int) and len(seq) * n > _MAX_REPEAT:
                raise SecurityError("sequence repetition too large in template")
        return operator.mul(left, right)


def _environment() -> SandboxedEnvironment:
    env = _Sandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
    env.globals.clear()  # no range/cycler/joiner/lipsum/namespace: only the named variables
    return env


class CompiledTemplate:
    """A template ready for the request path: the source is compiled once, rendering is cheap."""

    __slots__ = ("_compiled", "_learned", "template")

    def __init__(self, template: Template) -> None:
        try:
            self._compiled = _environment().from_string(template.source)
        except JinjaError as exc:
            raise TemplateError(f"template does not compile: {exc}") from None
        self.template = template
        self._learned = template.learned_text()

    def render(self, variables: Mapping[str, Any]) -> str:
        """The system prompt; raises TemplateError on an unknown variable or a sandbox refusal."""
        try:
            head = self._compiled.render(**variables)
        except (JinjaError, SecurityError) as exc:
            raise TemplateError(f"template does not render: {type(exc).__name__}: {exc}") from None
        if not self._learned:
            return head
        return f"{head.rstrip()}\n\n{self._learned}" if head.strip() else self._learned


def standard_variables(route: str, now: dt.datetime | None = None) -> dict[str, str]:
    """The variables every template may use."""
    t = now or dt.datetime.now(dt.UTC)
    return {"route": route, "today": t.date().isoformat(), "now": t.strftime("%Y-%m-%dT%H:%MZ")}


def check_template(template: Template, route: str = "route") -> str:
    """Compile and render with the standard variables; returns the rendered text or raises TemplateError."""
    return CompiledTemplate(template).render(standard_variables(route))
