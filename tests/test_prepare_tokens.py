"""Step 2, example_arc/prepare_arc_tokens.py: conversations -> ChatML token rows with the real Qwen ids."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from slamkit.chatml import IGNORE_INDEX
from slamkit.errors import SlamkitError

SCRIPT = "example_arc/prepare_arc_tokens.py"
IM_START, IM_END = 151644, 151645
LETTER_IDS = {"A": 32, "B": 33, "C": 34, "D": 35, "E": 36}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def tokenizer_dir(repo_root) -> str:
    return str(repo_root / "example_arc" / "sample" / "qwen_tokenizer")


@pytest.fixture(scope="module")
def train_rows(step2, sample_step1, tokenizer_dir, tmp_path_factory) -> tuple[list[dict], list[dict]]:
    """(conversations, token rows) for the sample's train split, tokenized by step 2 in-process."""
    data = sample_step1 / "arc_easy_train.jsonl"
    out = tmp_path_factory.mktemp("step2") / "train_tokens.jsonl"
    assert step2.main(["--data_path", str(data), "--out_path", str(out), "--tokenizer", tokenizer_dir]) == 0
    return read_jsonl(data), read_jsonl(out)


def check_rows(conversations: list[dict], rows: list[dict]) -> None:
    """The invariants every step-2 row must hold, checked against its step-1 conversation."""
    assert len(rows) == len(conversations)
    for conversation, row in zip(conversations, rows, strict=True):
        assert row["id"] == conversation["id"]
        n = len(row["input_ids"])
        assert len(row["labels"]) == len(row["attention_mask"]) == n
        assert row["attention_mask"] == [1] * n
        supervised = [label for label in row["labels"] if label != IGNORE_INDEX]
        assert supervised == [LETTER_IDS[conversation["assistant_text"]], IM_END]
        assert row["labels"][-2:] == row["input_ids"][-2:] == supervised
        assert row["labels"][:-2] == [IGNORE_INDEX] * (n - 2)
        assert row["input_ids"][0] == IM_START and row["input_ids"][-5:-2] == [IM_START, 77091, 198]
        assert row["choice_ids"] == [LETTER_IDS[letter] for letter in conversation["choice_labels"]]


def test_sample_train_rows(train_rows):
    """Every sample train row has equal-length ids/labels/mask, supervises exactly [letter id, 151645] and lists its letters' ids."""
    conversations, rows = train_rows
    check_rows(conversations, rows)
    assert {len(r["choice_ids"]) for r in rows} == {3, 4, 5}
    assert any(r["choice_ids"][-1] == 36 and r["labels"][-2] == 36 for r in rows)  # an answer "E"


def test_rows_match_in_process_tokenizer(train_rows, qwen_tokenizer):
    """Each row's input_ids are exactly the bundled tokenizer's encoding of the rendered ChatML conversation."""
    from slamkit.chatml import SEED_FORMAT

    conversations, rows = train_rows
    for conversation, row in zip(conversations[:50], rows[:50], strict=True):
        text = SEED_FORMAT.example(conversation["user_text"], conversation["assistant_text"])
        assert row["input_ids"] == qwen_tokenizer.encode(text, add_special_tokens=False)


def test_max_length_drops_and_counts(step2, train_rows, sample_step1, tokenizer_dir, tmp_path, capsys):
    """--max_length keeps exactly the rows of at most that many tokens and prints how many it dropped."""
    _, rows = train_rows
    lengths = sorted(len(r["input_ids"]) for r in rows)
    limit = lengths[len(lengths) // 2]
    expected_dropped = sum(n > limit for n in lengths)
    assert 0 < expected_dropped < len(rows)
    out = tmp_path / "short.jsonl"
    argv = ["--data_path", str(sample_step1 / "arc_easy_train.jsonl"), "--out_path", str(out)]
    assert step2.main(argv + ["--tokenizer", tokenizer_dir, "--max_length", str(limit)]) == 0
    stdout = capsys.readouterr().out
    kept = read_jsonl(out)
    assert len(kept) == len(rows) - expected_dropped
    assert all(len(r["input_ids"]) <= limit for r in kept)
    assert [r["id"] for r in kept] == [r["id"] for r in rows if len(r["input_ids"]) <= limit]
    assert re.search(rf"examples\s+{len(kept):,}\s+\(dropped {expected_dropped:,} longer than {limit} tokens\)", stdout)


def test_validation_and_test_rows(step2, sample_step1, tokenizer_dir, tmp_path, capsys):
    """The sample's validation and test splits (numeric-label questions relabelled in step 1) tokenize with the same invariants."""
    for split in ("validation", "test"):
        data = sample_step1 / f"arc_easy_{split}.jsonl"
        out = tmp_path / f"{split}_tokens.jsonl"
        assert step2.main(["--data_path", str(data), "--out_path", str(out), "--tokenizer", tokenizer_dir]) == 0
        check_rows(read_jsonl(data), read_jsonl(out))
    capsys.readouterr()


def test_full_train_split(step2, load_script, arc_easy_dir, tokenizer_dir, tmp_path, capsys):
    """The full ARC-Easy train split gives 2,251 rows, each supervising exactly [letter id, 151645] (skipped without ../shared)."""
    step1 = load_script("example_arc/prepare_arc_data.py")
    assert step1.main(["--source", str(arc_easy_dir), "--output_dir", str(tmp_path)]) == 0
    data, out = tmp_path / "arc_easy_train.jsonl", tmp_path / "train_tokens.jsonl"
    assert step2.main(["--data_path", str(data), "--out_path", str(out), "--tokenizer", tokenizer_dir]) == 0
    stdout = capsys.readouterr().out
    rows = read_jsonl(out)
    assert len(rows) == 2251
    check_rows(read_jsonl(data), rows)
    assert "examples     2,251" in stdout
    assert f"max {max(len(r['input_ids']) for r in rows)}" in stdout


def test_answer_not_among_choice_labels_exits_2(run_script, tokenizer_dir, tmp_path):
    """A conversation whose answer is not one of its choice_labels gives exit code 2 naming `file:line (id ...)`, and no output."""
    data = tmp_path / "bad.jsonl"
    good = {"id": "ok", "user_text": "Q?", "assistant_text": "A", "choice_labels": ["A", "B"]}
    bad = {**good, "id": "bad_1", "assistant_text": "C"}
    data.write_text("\n".join(json.dumps(r) for r in (good, good | {"id": "ok2"}, bad)) + "\n", encoding="utf-8")
    out = tmp_path / "tokens.jsonl"
    result = run_script(SCRIPT, "--data_path", data, "--out_path", out, "--tokenizer", tokenizer_dir)
    assert result.returncode == 2
    expected = f"error: {data}:3 (id bad_1): answer 'C' is not among choice_labels ['A', 'B']"
    assert result.stderr.splitlines() == [expected]
    assert not out.exists()


def test_tokenizer_without_chatml_tokens_is_an_error(step2, plain_tokenizer, sample_step1, tmp_path):
    """A local tokenizer folder whose vocabulary lacks ChatML tokens raises SlamkitError before any output is written."""
    folder = tmp_path / "plain_tokenizer"
    plain_tokenizer.save_pretrained(folder)
    out = tmp_path / "tokens.jsonl"
    argv = ["--data_path", str(sample_step1 / "arc_easy_validation.jsonl"), "--out_path", str(out)]
    with pytest.raises(SlamkitError, match=r"has no ChatML token <\|im_start\|>"):
        step2.main(argv + ["--tokenizer", str(folder)])
    assert not out.exists()


def test_a_hub_id_without_network_fails_within_seconds_naming_the_bundled_tokenizer(sample_step1, tmp_path):
    """--tokenizer Qwen/Qwen3-0.6B on a machine where the hub does not answer (no HF_HUB_OFFLINE set, empty cache):
    exit 2 in seconds (not the hub client's minute of retries) with one error line naming the offline way,
    example_arc/sample/qwen_tokenizer; nothing is written."""
    import subprocess
    import sys
    import time

    from helpers import REPO, hub_unreachable_env

    env = hub_unreachable_env(tmp_path / "hf_cache")
    out = tmp_path / "out" / "rows.jsonl"
    start = time.monotonic()
    done = subprocess.run([sys.executable, str(REPO / SCRIPT), "--data_path", str(sample_step1 / "arc_easy_test.jsonl"),
                           "--out_path", str(out), "--tokenizer", "Qwen/Qwen3-0.6B"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - start
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 2 and len(errors) == 1, done.stderr[-3000:]
    assert seconds < 20, f"{seconds:.1f} s"
    assert errors[0].startswith("error: Qwen/Qwen3-0.6B: ") and "example_arc/sample/qwen_tokenizer" in errors[0]
    assert "Traceback" not in done.stderr and not out.parent.exists()
