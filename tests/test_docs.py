"""The documents a user reads: none points at a folder a user's clone does not have, and every pointer between them
(a link, a link's #section, a ``FILE "Section"`` named in a page, a config or a docstring) resolves."""

from __future__ import annotations

import re
from pathlib import Path

from helpers import REPO

DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md"), REPO / "bench" / "README.md",
               REPO / "container" / "README.md", *(REPO / "example_arc").rglob("README.md")])
SOURCES = sorted([*DOCS, *REPO.glob("slamkit/*.py"), *REPO.glob("cli/*.py"), *REPO.glob("example_arc/*.py"),
                  *REPO.glob("example_arc/*.sh"), *REPO.glob("bench/*.py"), *REPO.glob("bench/*.sh"),
                  *REPO.glob("config/**/*.yaml"), REPO / "container" / "slamkit.def"])
LINK = re.compile(r"\]\(([^)#\s]*)(#[^)\s]*)?\)")
NAMED_SECTION = re.compile(r"((?:[\w./-]+/)?(?:README|[\w-]+\.md))\s\"([^\"]+)\"")  # docs/sweeps.md "Sweeps, ..."


def headings(path: Path) -> list[str]:
    return [m[1].strip() for m in re.finditer(r"^#+\s+(.*)$", path.read_text(encoding="utf-8"), re.M)]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def test_no_document_sends_a_user_to_a_folder_outside_the_repository():
    """'../shared' exists on the project's own machines only: no README or docs page names it."""
    found = [f"{path.relative_to(REPO)}:{n}" for path in DOCS
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if "../shared" in line]
    assert found == []


def test_every_link_between_the_documents_and_its_section_resolve():
    """Each relative link names a file that exists, and its #anchor a heading of that file."""
    broken = []
    for path in DOCS:
        for target, anchor in LINK.findall(path.read_text(encoding="utf-8")):
            dest = path.parent / target if target else path
            if "://" in target:
                continue
            if not dest.exists() or anchor and dest.suffix == ".md" and anchor[1:] not in map(slug, headings(dest)):
                broken.append(f"{path.relative_to(REPO)} -> {target}{anchor}")
    assert broken == []


def test_every_section_named_in_words_exists():
    """A pointer written as FILE "Section" (README "Performance", docs/sweeps.md "...") names a heading of that file."""
    broken = []
    for path in SOURCES:
        for name, section in NAMED_SECTION.findall(path.read_text(encoding="utf-8")):
            target = REPO / (name + ".md" if name.endswith("README") else name)
            target = target if target.exists() else REPO / "docs" / name
            if not target.is_file() or section not in headings(target):
                broken.append(f"{path.relative_to(REPO)}: {name} \"{section}\"")
    assert broken == []
