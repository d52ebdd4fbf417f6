"""Shared fixtures: the repo root, ../shared (skipped when absent), the bundled Qwen tokenizer, script runners."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import helpers
import pytest
from helpers import REPO as REPO_ROOT
from helpers import SAMPLE_TOKENIZER as QWEN_TOKENIZER_DIR
from helpers import SHARED


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


@pytest.fixture(scope="session")
def run_script() -> Callable[..., subprocess.CompletedProcess]:
    """``run_script("example_arc/prepare_arc_data.py", "--source", d)``: a subprocess (3-5 s of imports each)."""
    return helpers.run_script


@pytest.fixture(scope="session")
def load_script() -> Callable[[str], ModuleType]:
    """``load_script("example_arc/prepare_arc_data.py").main([...])`` runs a script in-process."""
    return helpers.load_script


@pytest.fixture(scope="module")
def step1() -> ModuleType:
    return helpers.load_script("example_arc/prepare_arc_data.py")


@pytest.fixture(scope="module")
def step2() -> ModuleType:
    return helpers.load_script("example_arc/prepare_arc_tokens.py")


@pytest.fixture(scope="module")
def eval_arc() -> ModuleType:
    return helpers.load_script("example_arc/eval_arc.py")
