"""container/slamkit.def parses as Apptainer reads it, copies files that exist, installs slamkit on the seed's image.

No apptainer binary is needed: the file is split into header and sections the way Apptainer's parser does
(a section starts at a line whose first word begins with ``%``), and the shell parts are checked with ``sh``.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEF_FILE = ROOT / "container" / "slamkit.def"
INSTALL_DIR = "/opt/slamkit"
# The seed runs `pytorch_2.6.0-cuda12.4-cudnn9-devel.sif`, the name `apptainer pull` gives docker://pytorch/pytorch:<tag>.
SEED_IMAGE = "pytorch_2.6.0-cuda12.4-cudnn9-devel.sif"
# Apptainer's parser: pkg/build/types/parser/deffile.go (validSections, validHeaders).
VALID_SECTIONS = {
    "setup", "files", "environment", "post", "runscript", "startscript", "test", "labels", "help", "arguments", "pre"
}  # fmt: skip
VALID_HEADER_KEYS = {"bootstrap", "from", "stage", "includecmd", "mirrorurl", "updateurl", "osversion", "include"}


def parse_definition(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """Split a definition into ``(header, sections)``; comments and blank lines of the header are skipped.

    >>> parse_definition("Bootstrap: docker\\nFrom: x:1\\n%post\\n    echo hi\\n")
    ({'bootstrap': 'docker', 'from': 'x:1'}, {'post': '    echo hi\\n'})
    """
    header: dict[str, str] = {}
    sections: dict[str, str] = {}
    current: str | None = None
    for line in text.splitlines(keepends=True):
        words = line.split()
        if words and words[0].startswith("%"):
            current = words[0][1:].lower()
            if current in sections:
                raise ValueError(f"section %{current} appears twice")
            sections[current] = ""
        elif current is not None:
            sections[current] += line
        elif words and not words[0].startswith("#"):
            key, sep, value = line.split("#")[0].partition(":")
            if not sep:
                raise ValueError(f"header line without a colon: {line!r}")
            header[key.strip().lower()] = value.strip()
    return header, sections


def files_entries(files_section: str) -> list[tuple[str, str]]:
    """The ``(source, destination)`` pairs of a %files section, skipping blank and comment lines."""
    entries = []
    for line in files_section.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        source, destination = line.split()
        entries.append((source, destination))
    return entries


@pytest.fixture(scope="module")
def definition() -> tuple[dict[str, str], dict[str, str]]:
    return parse_definition(DEF_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_header_bootstraps_from_the_seed_image(definition) -> None:
    """The image starts from docker://pytorch/pytorch with the seed's 2.6.0-cuda12.4-cudnn9-devel tag."""
    header, _ = definition
    assert set(header) <= VALID_HEADER_KEYS
    assert header["bootstrap"] == "docker"
    repository, _, tag = header["from"].partition(":")
    assert repository == "pytorch/pytorch"
    assert tag == "2.6.0-cuda12.4-cudnn9-devel"
    assert f"{repository.split('/')[-1]}_{tag}.sif" == SEED_IMAGE


def test_sections_are_apptainer_sections(definition) -> None:
    """Every section is one Apptainer knows, and the ones the image relies on are present."""
    _, sections = definition
    assert set(sections) <= VALID_SECTIONS
    assert {"files", "post", "environment", "runscript", "test", "labels", "help"} <= set(sections)


def test_files_sources_exist_and_land_in_the_install_dir(definition) -> None:
    """Each %files source (glob patterns included) matches something in the repo; each goes under /opt/slamkit."""
    _, sections = definition
    entries = files_entries(sections["files"])
    assert entries
    for source, destination in entries:
        assert glob.glob(source, root_dir=ROOT), f"%files source {source} matches nothing in the repository"
        assert destination.startswith(INSTALL_DIR + "/"), destination


def test_files_copy_what_pip_needs_to_build_slamkit(definition, pyproject) -> None:
    """pyproject.toml, its readme and its packages are copied, so that `pip install /opt/slamkit` can build."""
    _, sections = definition
    sources = {source for source, _ in files_entries(sections["files"])}
    assert "pyproject.toml" in sources
    assert pyproject["project"]["readme"] in sources
    for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert pattern.rstrip("*") in sources


def test_files_skip_example_outputs(definition) -> None:
    """Only example_arc's scripts are copied, never the data and checkpoints (gigabytes) it collects once run."""
    _, sections = definition
    sources = [source for source, _ in files_entries(sections["files"])]
    assert "example_arc" not in sources and "example_arc/" not in sources
    assert all(not source.startswith("example_arc/") or source.endswith(".py") for source in sources)


def test_post_installs_slamkit_and_keeps_the_image_torch(definition) -> None:
    """%post pip-installs /opt/slamkit with torch pinned to the image's build and never installs torch itself."""
    _, sections = definition
    pip_lines = [line.strip() for line in sections["post"].splitlines() if re.search(r"\bpip install\b", line)]
    assert len(pip_lines) == 1, pip_lines
    words = pip_lines[0].split()
    assert words[-1] == INSTALL_DIR
    assert "--constraint" in words or "-c" in words
    assert not {"-U", "--upgrade", "--force-reinstall", "--ignore-installed"} & set(words)
    assert not any(word.startswith("torch") for word in words)
    assert re.search(r'"torch==" \+ m\.version\("torch"\)', sections["post"])


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")
@pytest.mark.parametrize("section", ["post", "environment", "runscript", "test"])
def test_shell_sections_parse(definition, section: str) -> None:
    """Each shell section is valid POSIX sh (`sh -n`), as Apptainer runs them with /bin/sh."""
    _, sections = definition
    result = subprocess.run(["sh", "-n"], input=sections[section], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")
@pytest.mark.parametrize(("given", "expected"), [(None, "/home/u/.cache/huggingface"), ("/scratch/hf", "/scratch/hf")])
def test_environment_sets_overridable_hf_home(definition, given: str | None, expected: str) -> None:
    """%environment keeps an HF_HOME given by the caller, defaults to ~/.cache/huggingface, and unbuffers Python."""
    _, sections = definition
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/home/u"}
    if given is not None:
        env["HF_HOME"] = given
    script = sections["environment"] + '\nprintf "%s\\n%s\\n" "$HF_HOME" "$PYTHONUNBUFFERED"\n'
    result = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.splitlines() == [expected, "1"]


def test_runscript_runs_python_with_the_arguments(definition) -> None:
    """`singularity run slamkit.sif X.py ARGS` runs `python X.py ARGS`."""
    _, sections = definition
    assert sections["runscript"].strip() == 'exec python "$@"'


def test_labels_carry_the_package_version(definition, pyproject) -> None:
    """The image's version label is the package version in pyproject.toml."""
    _, sections = definition
    labels = dict(line.strip().split(maxsplit=1) for line in sections["labels"].splitlines() if line.strip())
    assert labels["org.opencontainers.image.version"] == pyproject["project"]["version"]


def test_test_section_runs_here(definition) -> None:
    """%test's Python (imports slamkit, torch, transformers, datasets, hydra; prints versions) succeeds here too."""
    _, sections = definition
    match = re.search(r"python - <<'EOF'\n(.*?)\nEOF\n", sections["test"], flags=re.DOTALL)
    assert match, "%test should run a quoted python heredoc"
    result = subprocess.run([sys.executable, "-"], input=match.group(1), capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("slamkit ")
    assert "transformers " in result.stdout and "hydra " in result.stdout
