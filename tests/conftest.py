"""The shared fixtures: the full ARC-Easy (skipped when absent), the bundled Qwen tokenizer, the tiny model, the
bundled sample through steps 1 and 2, script runners. Plain helper functions live in helpers.py."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import helpers
import pytest
from helpers import REPO as REPO_ROOT
from helpers import SAMPLE, SHARED, build_tiny_qwen3
from helpers import SAMPLE_TOKENIZER as QWEN_TOKENIZER_DIR


MAX_WORKERS = 4  # pytest-xdist workers for `-n auto` (pyproject): each holds its own torch and fixtures


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: one worker per CPU this process may use, at most MAX_WORKERS; one for `-m slow` (one file, one
    real model at a time: every CPU for it)."""
    marks = config.getoption("markexpr") or ""
    if "slow" in marks and "not slow" not in marks:
        return 1
    return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))


# The files that take longest, first (pyproject: --dist loadfile --no-loadscope-reorder): each goes to one worker
# as a whole, so a long one handed out last would leave the other workers idle while it runs.
LONGEST_FIRST = ("test_run_integrity.py", "test_bench.py", "test_training.py", "test_sweep.py", "test_faults.py",
                 "test_learnability.py", "test_bad_input.py", "test_prompt_format.py")


def pytest_collection_modifyitems(config, items) -> None:
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the order within a file is kept


if os.environ.get("PYTEST_XDIST_WORKER_COUNT") and "OMP_NUM_THREADS" not in os.environ:
    # A worker's share of the CPUs, for torch here and for every process a test starts (set before torch loads):
    # two workers with two threads each on two cores would only get in each other's way.
    _share = len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ["OMP_NUM_THREADS"] = str(max(1, _share))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def arc_easy_dir() -> Path:
    """The full ARC-Easy in the hub's layout (ARC-Easy-{train,validation,test}.jsonl), for the tests that check its
    real counts: $SLAMKIT_ARC_EASY, else the copy the project's machines keep beside the repository. A user's clone
    has neither, and those few tests skip, saying how to run them."""
    path = Path(os.environ["SLAMKIT_ARC_EASY"]) if os.environ.get("SLAMKIT_ARC_EASY") else SHARED / "data" / "arc_easy"
    if not all((path / f"ARC-Easy-{split}.jsonl").is_file() for split in ("train", "validation", "test")):
        pytest.skip("needs the full ARC-Easy (2,251/570/2,376 questions) in the hub's layout: set SLAMKIT_ARC_EASY to "
                    "a folder holding ARC-Easy-{train,validation,test}.jsonl")
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


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random tiny Qwen3 (hidden 64, 2 layers, the real 151,936-row vocabulary, 1,024-token context) with the
    bundled Qwen tokenizer, saved as a plain HF folder: the one model most tests load (never modify it)."""
    return build_tiny_qwen3(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def sample_step1(tmp_path_factory) -> Path:
    """Step-1 output of the bundled sample: arc_easy_{train,validation,test}.jsonl (400 / 100 / 200 questions)."""
    out = tmp_path_factory.mktemp("sample_step1")
    assert helpers.load_script("example_arc/prepare_arc_data.py").main(["--source", str(SAMPLE), "--output_dir", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def sample_tokens(sample_step1, tmp_path_factory) -> dict[str, Path]:
    """Step-2 token rows (with choice_ids) of the first 48 train and 16 validation sample questions, made by the
    real step-2 script: ``{"train": path, "validation": path}``."""
    out = tmp_path_factory.mktemp("sample_tokens")
    step2 = helpers.load_script("example_arc/prepare_arc_tokens.py")
    files = {}
    for split, count in (("train", 48), ("validation", 16)):
        lines = (sample_step1 / f"arc_easy_{split}.jsonl").read_text(encoding="utf-8").splitlines()[:count]
        (out / f"{split}.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        files[split] = out / f"{split}_tokens.jsonl"
        argv = ["--data_path", str(out / f"{split}.jsonl"), "--out_path", str(files[split]), "--tokenizer", str(QWEN_TOKENIZER_DIR)]
        assert step2.main(argv) == 0
    return files
