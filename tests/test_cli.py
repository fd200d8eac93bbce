"""The `flywheel` command line parses as documented."""

from __future__ import annotations

import pytest

from flywheel.cli import parse


def test_diff_versions_may_follow_options() -> None:
    args = parse(["prompts", "diff", "intents", "--kind", "index", "i1", "i3"])
    assert (args.route, args.kind, args.versions) == ("intents", "index", ["i1", "i3"])
    assert parse(["prompts", "diff", "intents", "t1", "t2"]).versions == ["t1", "t2"]


def test_unknown_arguments_are_still_refused() -> None:
    with pytest.raises(SystemExit):
        parse(["prompts", "log", "intents", "extra"])
    with pytest.raises(SystemExit):
        parse(["prompts", "diff", "intents", "--nope"])
