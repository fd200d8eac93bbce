"""Templates render their named variables in a sandbox; learned text is appended, never executed."""

from __future__ import annotations

import datetime as dt

import pytest

from gateway.serve.templating import (
    CompiledTemplate,
    Demonstration,
    Template,
    TemplateError,
    check_template,
    standard_variables,
)

NOW = dt.datetime(2025, 3, 4, 5, 6, tzinfo=dt.UTC)


def render(source: str, **extra: str) -> str:
    return CompiledTemplate(Template(source)).render({**standard_variables("bot", NOW), **extra})


def test_named_variables_render() -> None:
    assert render("Route {{ route }} on {{ today }} at {{ now }}.") == "Route bot on 2025-03-04 at 2025-03-04T05:06Z."
    assert render("{{ route | upper }}") == "BOT"


def test_unknown_variable_is_an_error_not_an_empty_string() -> None:
    with pytest.raises(TemplateError, match="customer"):
        render("Hello {{ customer }}")


@pytest.mark.parametrize(
    "escape",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ route.__class__.__base__.__subclasses__() }}",
        "{{ route.format.__globals__ }}",
        "{% for c in ''.__class__.__mro__ %}{{ c }}{% endfor %}",
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
        "{{ lipsum.__globals__ }}",
        "{{ range(10) }}",
        "{{ 'x' * 100000000 }}",
        "{{ 9 ** 9 ** 9 }}",
    ],
)
def test_sandbox_escapes_fail(escape: str) -> None:
    with pytest.raises(TemplateError):
        check_template(Template(escape))


def test_syntax_error_is_a_template_error() -> None:
    with pytest.raises(TemplateError, match="compile"):
        CompiledTemplate(Template("{% if %}"))


def test_learned_text_is_literal_even_when_it_looks_like_template_code() -> None:
    t = Template("Be brief.", instructions=("Answers about {{ route }} must mention: {% raw %}",),
                 demonstrations=(Demonstration("What is {{ 7*7 }}?", "It is {{ ''.__class__ }}", "c1#f1"),))
    out = CompiledTemplate(t).render(standard_variables("bot", NOW))
    assert out == (
        "Be brief.\n\nRules:\n- Answers about {{ route }} must mention: {% raw %}\n\n"
        "Examples:\nUser: What is {{ 7*7 }}?\nAssistant: It is {{ ''.__class__ }}"
    )
    assert t.text() == out  # the display text equals the rendering here: the source has no variables


def test_multiline_learned_text_stays_one_line_per_turn() -> None:
    t = Template("", demonstrations=(Demonstration("a\nb", "c\n\nd"),))
    assert t.learned_text() == "Examples:\nUser: a b\nAssistant: c d"


def test_body_round_trip() -> None:
    t = Template("S {{ route }}", ("rule",), (Demonstration("q", "a", "id1"),))
    assert Template.from_body(t.to_body()) == t
    assert Template.from_body("plain") == Template("plain")
    with pytest.raises(TemplateError):
        Template.from_body({"nope": 1})
