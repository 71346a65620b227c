"""The user guide stays a guide: README.md short, and every relative link of README.md and
docs/*.md points to a file of the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from utils.paths import project_root

DOCS = [
    "README.md",
    *sorted(
        p.relative_to(project_root()).as_posix() for p in (project_root() / "docs").glob("*.md")
    ),
]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", DOCS)
def test_relative_links_resolve(doc: str) -> None:
    path = project_root() / doc
    links = LINK.findall(path.read_text(encoding="utf-8"))
    missing = []
    for target in links:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor in the same page
        file = target.split("#", 1)[0]
        if not (path.parent / file).resolve().is_file():
            missing.append(target)
    assert not missing, f"{doc}: links to missing files {missing}"


def test_readme_is_a_short_guide() -> None:
    text = (project_root() / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    for word in ("DESIGN", "../shared/", "issue"):
        assert word not in text, word
    assert ".venv/bin/jupyter lab" in text and "make demo" in text and "make test" in text
    assert "docs/results.md" in text and "docs/design.md" in text


def test_docs_exist_and_are_linked() -> None:
    assert {"docs/design.md", "docs/results.md"} <= set(DOCS)
    assert Path(project_root() / "docs" / "results.md").read_text().count("| L2 |") >= 3
