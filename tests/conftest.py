"""Shared fixtures: the repo root, ../shared (skipped when absent), the bundled Qwen tokenizer, script runners."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"  # ../shared beside the repo: full data and tokenizers, not in a user's clone
QWEN_TOKENIZER_DIR = REPO_ROOT / "example_arc" / "sample" / "qwen_tokenizer"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the repo; tests that need the full data skip cleanly without it."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not present (full ARC-Easy data lives outside the repo)")
    return SHARED


@pytest.fixture(scope="session")
def arc_easy_dir(shared_dir: Path) -> Path:
    path = shared_dir / "data" / "arc_easy"
    if not path.is_dir():
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture(scope="session")
def qwen_tokenizer():
    """The bundled Qwen tokenizer (always present in the repo; loads offline in about a second)."""
    from slamkit.model import load_tokenizer

    return load_tokenizer(str(QWEN_TOKENIZER_DIR))


def _make_plain_tokenizer(extra_words: tuple[str, ...] = ()):
    """A tiny word-level fast tokenizer built in-process, without ChatML special tokens (no downloads)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "[PAD]", "A", "B", "C", "D", "hello", "world", *extra_words]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")


@pytest.fixture
def plain_tokenizer():
    """A fast tokenizer without ChatML tokens: "A".."D", "hello", "world" and [UNK]."""
    return _make_plain_tokenizer()


@pytest.fixture(scope="session")
def plain_tokenizer_factory() -> Callable:
    """``plain_tokenizer_factory(extra_words=(...))``: the same tiny tokenizer with more (non-special) words."""
    return _make_plain_tokenizer


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONIOENCODING="utf-8")
    return env


def _run_script(script_rel_path: str, *args: str | Path) -> subprocess.CompletedProcess:
    """Run ``python <script> args`` from the repo root, offline; return the CompletedProcess (text, captured)."""
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / script_rel_path), *map(str, args)],
        cwd=REPO_ROOT,
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="session")
def run_script() -> Callable[..., subprocess.CompletedProcess]:
    """``run_script("example_arc/prepare_arc_data.py", "--source", d)``: a subprocess (3-5 s of imports each)."""
    return _run_script


_SCRIPTS: dict[str, ModuleType] = {}


def _load_script(script_rel_path: str) -> ModuleType:
    """Import a standalone script (not a package module) by path, once, to call its ``main(argv)`` in-process."""
    if script_rel_path not in _SCRIPTS:
        path = REPO_ROOT / script_rel_path
        name = "script_" + path.stem
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _SCRIPTS[script_rel_path] = module
    return _SCRIPTS[script_rel_path]


@pytest.fixture(scope="session")
def load_script() -> Callable[[str], ModuleType]:
    """``load_script("example_arc/prepare_arc_data.py").main([...])`` runs a script in-process."""
    return _load_script
