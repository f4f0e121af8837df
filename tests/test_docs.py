"""The README stays short and every relative link in the user docs resolves inside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")
README_MAX_LINES = 160


def user_docs() -> list[Path]:
    return [ROOT / "README.md", ROOT / "DEVELOPERS.md", ROOT / "benchmarks" / "results" / "README.md",
            *sorted((ROOT / "docs").glob("*.md"))]


def heading_anchors(markdown: Path) -> set[str]:
    """GitHub's anchors for a file's headings: lower case, punctuation dropped, spaces as hyphens."""
    anchors = set()
    for line in markdown.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def broken_links(markdown: Path) -> list[str]:
    broken = []
    for target in LINK.findall(markdown.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue  # a URL, not a path in the repository
        path, _, anchor = target.partition("#")
        resolved = (markdown.parent / path).resolve() if path else markdown
        if not resolved.is_relative_to(ROOT) or not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in heading_anchors(resolved):
            broken.append(target)
    return broken


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"


@pytest.mark.parametrize("markdown", user_docs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves_inside_the_repository(markdown):
    assert broken_links(markdown) == []


def test_a_missing_file_or_heading_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    (tmp_path / "other.md").write_text("# A heading\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#a-heading) [gone](missing.md) [bad](other.md#no-such) "
                    "[outside](../x.md) [web](https://example.org)\n", encoding="utf-8")
    (tmp_path.parent / "x.md").write_text("", encoding="utf-8")
    assert broken_links(page) == ["missing.md", "other.md#no-such", "../x.md"]
