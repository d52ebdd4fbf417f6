"""Step 1, example_arc/prepare_arc_data.py: hub-layout ARC -> conversations, nothing dropped, bad input refused."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from slamkit.errors import SlamkitError

SCRIPT = "example_arc/prepare_arc_data.py"
SPLITS = ("train", "validation", "test")
SAMPLE_COUNTS = {"train": 400, "validation": 100, "test": 200}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def is_numeric(record: dict) -> bool:
    return all(label.isdigit() for label in record["choices"]["label"])


def printed_relabelled(stdout: str) -> dict[str, int]:
    """``{split: n}`` from step 1's "  train  2,251 questions  (102 relabelled ..." lines."""
    return {m[1]: int(m[2]) for m in re.finditer(r"^\s+(\w+)\s+[\d,]+ questions\s+\((\d+) relabelled", stdout, re.M)}


@pytest.fixture(scope="module")
def sample_dir(repo_root) -> Path:
    return repo_root / "example_arc" / "sample"


def test_sample_converts_every_record(step1, sample_dir, tmp_path, capsys):
    """On the bundled sample every record is kept in order, every answer is one of its letters, numeric ones are relabelled."""
    assert step1.main(["--source", str(sample_dir), "--output_dir", str(tmp_path)]) == 0
    stdout = capsys.readouterr().out
    relabelled = printed_relabelled(stdout)
    for split in SPLITS:
        source = read_jsonl(sample_dir / f"ARC-Easy-{split}.jsonl")
        out = read_jsonl(tmp_path / f"arc_easy_{split}.jsonl")
        assert len(out) == len(source) == SAMPLE_COUNTS[split]
        assert [r["id"] for r in out] == [r["id"] for r in source]
        for conversation, record in zip(out, source, strict=True):
            assert {"id", "user_text", "assistant_text", "choice_labels"} <= set(conversation)
            assert conversation["assistant_text"] in conversation["choice_labels"]
            assert conversation["choice_labels"] == list("ABCDE"[: len(record["choices"]["label"])])
            assert f"={conversation['assistant_text']}\n" in conversation["user_text"]
        assert relabelled[split] == sum(is_numeric(r) for r in source) > 0


def test_sample_has_every_quirk(sample_dir):
    """Each bundled split has numeric-label and 3-/5-choice questions, and test's first 100 hold exactly 6 numeric ones."""
    for split in SPLITS:
        records = read_jsonl(sample_dir / f"ARC-Easy-{split}.jsonl")
        sizes = {len(r["choices"]["label"]) for r in records}
        assert {3, 4, 5} <= sizes, split
        assert any(is_numeric(r) for r in records), split
    test_records = read_jsonl(sample_dir / "ARC-Easy-test.jsonl")
    assert sum(is_numeric(r) for r in test_records[:100]) == 6


def test_sample_is_reproducible_from_shared(load_script, sample_dir, arc_easy_dir, tmp_path, capsys):
    """make_sample.py regenerates the bundled files byte for byte from the full ARC-Easy (skipped without ../shared)."""
    make_sample = load_script("example_arc/sample/make_sample.py")
    assert make_sample.main(["--source", str(arc_easy_dir), "--output_dir", str(tmp_path)]) == 0
    capsys.readouterr()
    for split in SPLITS:
        name = f"ARC-Easy-{split}.jsonl"
        assert (tmp_path / name).read_bytes() == (sample_dir / name).read_bytes(), name
        source_lines = (arc_easy_dir / name).read_bytes().splitlines()
        assert set((sample_dir / name).read_bytes().splitlines()) <= set(source_lines)
    assert (sample_dir / "ARC-Easy-test.jsonl").read_bytes().splitlines()[:100] == (
        arc_easy_dir / "ARC-Easy-test.jsonl"
    ).read_bytes().splitlines()[:100]


def test_full_arc_easy_counts(step1, arc_easy_dir, tmp_path, capsys):
    """The full ARC-Easy gives exactly 2,251 / 570 / 2,376 conversations with 102 / 21 / 97 relabelled (skipped without ../shared)."""
    assert step1.main(["--source", str(arc_easy_dir), "--output_dir", str(tmp_path)]) == 0
    stdout = capsys.readouterr().out
    counts = {split: len(read_jsonl(tmp_path / f"arc_easy_{split}.jsonl")) for split in SPLITS}
    assert counts == {"train": 2251, "validation": 570, "test": 2376}
    assert printed_relabelled(stdout) == {"train": 102, "validation": 21, "test": 97}
    assert "0 dropped" in stdout


def test_challenge_subset_from_mini_fixture(step1, repo_root, tmp_path, capsys):
    """--subset ARC-Challenge writes arc_challenge_{split}.jsonl with every synthetic record, quirks included."""
    source = repo_root / "tests" / "data" / "arc_challenge_mini"
    assert step1.main(["--subset", "ARC-Challenge", "--source", str(source), "--output_dir", str(tmp_path)]) == 0
    assert "ARC-Challenge from" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"arc_challenge_{s}.jsonl" for s in sorted(SPLITS)]
    for split in SPLITS:
        source_records = read_jsonl(source / f"ARC-Challenge-{split}.jsonl")
        out = read_jsonl(tmp_path / f"arc_challenge_{split}.jsonl")
        assert [r["id"] for r in out] == [r["id"] for r in source_records]
        assert {len(r["choice_labels"]) for r in out} == {3, 4, 5}
        assert all(r["assistant_text"] in r["choice_labels"] for r in out)
        assert all(set(r["choice_labels"]) <= set("ABCDE") for r in out)


def test_duplicate_id_is_an_error(step1, sample_dir, tmp_path):
    """A split with a repeated id raises SlamkitError naming the second occurrence's file:line and the first's."""
    source = tmp_path / "source"
    shutil.copytree(sample_dir, source, ignore=shutil.ignore_patterns("qwen_tokenizer", "*.py", "*.md"))
    path = source / "ARC-Easy-validation.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join(lines + [lines[1]]) + "\n", encoding="utf-8")
    repeated = json.loads(lines[1])["id"]
    with pytest.raises(SlamkitError) as caught:
        step1.main(["--source", str(source), "--output_dir", str(tmp_path / "out")])
    assert str(caught.value) == f"{path}:101: duplicate id {repeated!r} (first at {path}:2)"
    assert not (tmp_path / "out").exists()


def test_malformed_json_line_exits_2_and_writes_nothing(run_script, sample_dir, tmp_path):
    """A malformed line gives exit code 2, one stderr line `error: <file>:<line>: ...`, and no output file at all."""
    source = tmp_path / "source"
    shutil.copytree(sample_dir, source, ignore=shutil.ignore_patterns("qwen_tokenizer", "*.py", "*.md"))
    path = source / "ARC-Easy-test.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[4] = lines[4][:-10]  # truncate line 5
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    result = run_script(SCRIPT, "--source", source, "--output_dir", out)
    assert result.returncode == 2
    assert result.stderr.endswith("\n") and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"error: {path}:5: malformed JSON")
    assert list(out.iterdir()) == []  # not even train, which was valid: every split is checked before writing


def test_missing_split_file_exits_2_naming_it(run_script, sample_dir, tmp_path):
    """A --source folder without a validation file gives exit code 2 and a one-line error naming the split."""
    source = tmp_path / "source"
    source.mkdir()
    for split in ("train", "test"):
        shutil.copy(sample_dir / f"ARC-Easy-{split}.jsonl", source)
    result = run_script(SCRIPT, "--source", source, "--output_dir", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: {source}: no validation file (expected a .jsonl or .parquet file with 'validation' as a word of its name, e.g. ARC-Easy-validation.jsonl)"
    ]
    assert not (tmp_path / "out").exists()


def test_parquet_source_gives_the_same_conversations_as_json_lines(step1, sample_dir, tmp_path, capsys):
    """A --source folder of parquet files (the hub's own storage format) converts to exactly the same output."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet_dir = tmp_path / "parquet"
    parquet_dir.mkdir()
    for split in SPLITS:
        records = read_jsonl(sample_dir / f"ARC-Easy-{split}.jsonl")
        pq.write_table(pa.Table.from_pylist(records), parquet_dir / f"{split}-00000-of-00001.parquet")
    assert step1.main(["--source", str(sample_dir), "--output_dir", str(tmp_path / "from_jsonl")]) == 0
    assert step1.main(["--source", str(parquet_dir), "--output_dir", str(tmp_path / "from_parquet")]) == 0
    for split in SPLITS:
        name = f"arc_easy_{split}.jsonl"
        assert (tmp_path / "from_parquet" / name).read_bytes() == (tmp_path / "from_jsonl" / name).read_bytes()


def test_unwritable_output_path_is_a_one_line_error(step1, sample_dir, tmp_path, capsys):
    """An --output_dir that cannot be created (under a regular file) exits 2 with one line naming the path."""
    from slamkit.errors import run_main

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as caught:
        run_main(lambda: step1.main(["--source", str(sample_dir), "--output_dir", str(blocker / "out")]))
    assert caught.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {blocker / 'out'}/arc_easy_train.jsonl: cannot write output")


def test_the_hub_without_network_fails_within_seconds_naming_the_bundled_sample(tmp_path):
    """Step 1 from the hub (no --source) on a machine where the hub does not answer (no HF_HUB_OFFLINE set, empty
    cache): exit 2 in seconds with one error line naming --source example_arc/sample; nothing is written."""
    import subprocess
    import sys
    import time

    from helpers import REPO, hub_unreachable_env

    env = hub_unreachable_env(tmp_path / "hf_cache")
    out = tmp_path / "out"
    start = time.monotonic()
    done = subprocess.run([sys.executable, str(REPO / SCRIPT), "--output_dir", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    seconds = time.monotonic() - start
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 2 and len(errors) == 1, done.stderr[-3000:]
    assert seconds < 20, f"{seconds:.1f} s"
    assert "--source example_arc/sample" in errors[0] and "Traceback" not in done.stderr
    assert not out.exists()
