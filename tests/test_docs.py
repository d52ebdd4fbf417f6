"""The documents a user reads: none points at a folder a user's clone does not have, the README stays a map, and
every link between them resolves."""

from __future__ import annotations

import re

from helpers import REPO

DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md"), REPO / "bench" / "README.md",
               REPO / "container" / "README.md", *(REPO / "example_arc").rglob("README.md")])
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


def test_no_document_sends_a_user_to_a_folder_outside_the_repository():
    """'../shared' exists on the project's own machines only: no README or docs page names it."""
    found = [f"{path.relative_to(REPO)}:{n}" for path in DOCS
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if "../shared" in line]
    assert found == []


def test_the_readme_is_a_map_of_a_few_screens():
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 250


def test_every_relative_link_between_the_documents_resolves():
    broken = []
    for path in DOCS:
        for target, _ in LINK.findall(path.read_text(encoding="utf-8")):
            if "://" not in target and not (path.parent / target).exists():
                broken.append(f"{path.relative_to(REPO)} -> {target}")
    assert broken == []
