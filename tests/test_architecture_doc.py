"""docs/architecture.md describes the tree as it is: every path it cites exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"
# a path in backticks: a folder ending in / or a file with a known suffix
_CITED = re.compile(r"`((?:[\w-]+/)+(?:[\w.-]+\.(?:py|md|toml))?)`")
_TREE_ENTRY = re.compile(r"^(\s*)([\w.-]+(?:\.py|/))")


def _tree_paths(text: str) -> set[str]:
    """Paths named in the fenced layout block, joined with their parent folders by indentation."""
    block = text.split("## 2. The tree", 1)[1].split("```", 2)[1]
    out: set[str] = set()
    stack: list[tuple[int, str]] = []
    for line in block.splitlines():
        m = _TREE_ENTRY.match(line)
        if not m:
            continue
        indent, name = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1] if stack else ""
        path = parent + name
        out.add(path)
        # "sql.py, sqlite.py, …" lists siblings on one line; a folder's line may list its files
        for extra in re.findall(r",\s*([\w.-]+\.py)", line):
            out.add((path if name.endswith("/") else parent) + extra)
        if name.endswith("/"):
            stack.append((indent, path))
    return out


def test_every_path_the_architecture_doc_cites_exists() -> None:
    text = DOC.read_text(encoding="utf-8")
    cited = set(_CITED.findall(text)) | _tree_paths(text)
    assert len(cited) > 60, "the parser found too few paths: the doc's format changed"
    missing = sorted(p for p in cited if not (ROOT / p).exists())
    assert not missing, f"docs/architecture.md cites paths that do not exist: {missing}"


def test_every_package_has_its_place_in_the_architecture_doc() -> None:
    text = DOC.read_text(encoding="utf-8")
    cited = set(_CITED.findall(text)) | _tree_paths(text)
    packages = {p.parent.relative_to(ROOT).as_posix() + "/" for top in ("gateway", "learners", "policies",
                                                                      "retrieval", "flywheel")
                for p in (ROOT / top).rglob("__init__.py")}
    assert packages, "no packages found"
    missing = sorted(packages - cited)
    assert not missing, f"packages the architecture doc does not place: {missing}"
