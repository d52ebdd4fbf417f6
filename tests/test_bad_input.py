"""The bad-input catalogue (docs/troubleshooting.md): each case exits 2 with ONE line `error: <where>: <what>`
naming the file:line, record id or config key, and leaves no output (nor a stray temporary file) behind.

Most cases run in-process (``run_main(lambda: script.main(argv))``, stderr read with ``capsys``): a subprocess
costs seconds of imports. One real subprocess of cli/train_sft.py proves the exit code end to end.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import SAMPLE, SAMPLE_TOKENIZER, run_cli, run_script, sft_config

from slamkit.errors import EXIT_BAD_INPUT, run_main

SPLITS = ("train", "validation", "test")


# ---------------------------------------------------------------- harness










def fails(capsys, main: Callable[[], int | None], after_bar: str | None = None) -> str:
    """Run ``main`` as a script runs it; assert exit code 2 and exactly one stderr line; return that line.

    ``after_bar``: the progress bar of a step that succeeded before the error (e.g. transformers'
    "Loading weights") may precede the line; nothing else may.
    """
    capsys.readouterr()  # drop what earlier steps printed
    with pytest.raises(SystemExit) as caught:
        run_main(main)
    assert caught.value.code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    if after_bar is not None:
        before, marker, rest = err.rpartition("error: ")
        assert all(not part.strip() or part.startswith(after_bar) for part in re.split(r"[\r\n]", before)), err
        err = marker + rest
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), err
    assert lines[0].startswith("error: ")
    return lines[0]


def assert_empty(folder: Path) -> None:
    """No output file and no temporary file: the folder is absent or empty."""
    assert not folder.exists() or sorted(p.name for p in folder.iterdir()) == []


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# ---------------------------------------------------------------- step 1: ARC records -> conversations


@pytest.fixture
def source(tmp_path) -> Path:
    """A --source folder with the first 3 sample records of each split (hub layout)."""
    folder = tmp_path / "source"
    for split in SPLITS:
        lines = (SAMPLE / f"ARC-Easy-{split}.jsonl").read_text(encoding="utf-8").splitlines()[:3]
        write_lines(folder / f"ARC-Easy-{split}.jsonl", lines)
    return folder


def edit_record(source: Path, split: str, line: int, edit: Callable[[dict], None]) -> tuple[Path, str]:
    """Apply ``edit`` to the record on ``line`` (1-based) of ``split``; return the file and the record's id."""
    path = source / f"ARC-Easy-{split}.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[line - 1])
    edit(record)
    lines[line - 1] = json.dumps(record)
    write_lines(path, lines)
    return path, record.get("id", "")


def run_step1(capsys, step1, source: Path, out: Path) -> str:
    out.mkdir(exist_ok=True)  # exists and empty: any file written (or left) in it would show
    return fails(capsys, lambda: step1.main(["--source", str(source), "--output_dir", str(out)]))


def test_malformed_json_line(step1, source, tmp_path, capsys):
    """A truncated JSON line names file:line and column; no split is written, not even the valid ones."""
    path = source / "ARC-Easy-test.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[1] = lines[1][:-10]
    write_lines(path, lines)
    line = run_step1(capsys, step1, source, tmp_path / "out")
    assert line.startswith(f"error: {path}:2: malformed JSON (")
    assert_empty(tmp_path / "out")


def test_missing_field(step1, source, tmp_path, capsys):
    """A record without answerKey names file:line, its id and the field."""
    path, record_id = edit_record(source, "validation", 3, lambda r: r.pop("answerKey"))
    line = run_step1(capsys, step1, source, tmp_path / "out")
    assert line == f"error: {path}:3 (id {record_id}): missing field 'answerKey'"
    assert_empty(tmp_path / "out")


def test_answer_key_not_among_labels(step1, source, tmp_path, capsys):
    """An answerKey that is not one of the record's labels names file:line, id, the key and the labels."""
    path, record_id = edit_record(source, "train", 2, lambda r: r.update(answerKey="F"))
    labels = json.loads(path.read_text(encoding="utf-8").splitlines()[1])["choices"]["label"]
    line = run_step1(capsys, step1, source, tmp_path / "out")
    assert line == f"error: {path}:2 (id {record_id}): answerKey 'F' is not among the labels {labels}"
    assert_empty(tmp_path / "out")


def test_empty_choices(step1, source, tmp_path, capsys):
    """A record with no choices names file:line and id."""
    path, record_id = edit_record(source, "test", 1, lambda r: r.update(choices={"text": [], "label": []}))
    line = run_step1(capsys, step1, source, tmp_path / "out")
    assert line == f"error: {path}:1 (id {record_id}): empty choices"
    assert_empty(tmp_path / "out")


def test_empty_input_file(step1, source, tmp_path, capsys):
    """A split file with no records (blank lines only) is named as empty."""
    path = write_lines(source / "ARC-Easy-validation.jsonl", ["", "  "])
    line = run_step1(capsys, step1, source, tmp_path / "out")
    assert line == f"error: {path}: empty file (no records)"
    assert_empty(tmp_path / "out")


def test_split_missing_from_source(step1, source, tmp_path, capsys):
    """A --source folder without a test file names the folder and the split."""
    (source / "ARC-Easy-test.jsonl").unlink()
    line = run_step1(capsys, step1, source, tmp_path / "out")
    assert line == (
        f"error: {source}: no test file (expected a .jsonl or .parquet file with 'test' as a word of its name, e.g. ARC-Easy-test.jsonl)"
    )
    assert_empty(tmp_path / "out")


def test_a_file_named_contest_is_not_the_test_split(step1, source, tmp_path, capsys):
    """Split files are matched by whole name parts: contest_entries.jsonl is not a test file, so a --source
    folder with it and no real test file is refused as having no test file."""
    (source / "ARC-Easy-test.jsonl").rename(source / "contest_entries.jsonl")
    line = run_step1(capsys, step1, source, tmp_path / "out")
    assert line.startswith(f"error: {source}: no test file (expected")
    assert_empty(tmp_path / "out")


def test_two_files_for_one_split_are_an_error_naming_both(step1, source, tmp_path, capsys):
    """Two candidates for one split (here test.jsonl beside ARC-Easy-test.jsonl) are listed, not guessed between;
    a file naming the other subset (ARC-Challenge-test.jsonl) is not a candidate."""
    shutil.copy(source / "ARC-Easy-test.jsonl", source / "ARC-Challenge-test.jsonl")
    shutil.copy(source / "ARC-Easy-test.jsonl", source / "test.jsonl")
    line = run_step1(capsys, step1, source, tmp_path / "out")
    assert line == f"error: {source}: several files for split test: ARC-Easy-test.jsonl, test.jsonl"
    assert_empty(tmp_path / "out")


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda p: p.write_bytes(gzip.compress(p.read_bytes())), ": gzip-compressed; decompress it first (gunzip)"),
        (lambda p: p.write_text(p.read_text(encoding="utf-8"), encoding="utf-16"), ": UTF-16 text; save it as UTF-8"),
        (lambda p: p.write_bytes(p.read_bytes().replace(b"Which", b"Wh\xefch", 1)),
         ":1: not UTF-8 text (byte 0xef at column "),
        (lambda p: p.write_bytes(p.read_bytes().replace(b"Which", b"Wh\\ud800ch", 1)),
         ":1: text holds an unpaired surrogate '\\ud800' (an escape like \\ud800 that is not valid Unicode)"),
    ],
    ids=["gzip", "utf-16", "not-utf-8", "lone-surrogate"],
)
def test_a_file_that_is_not_utf8_json_lines_is_one_line(step1, source, write, message, tmp_path, capsys):
    """gzip, UTF-16, stray non-UTF-8 bytes and an escaped lone surrogate are each one line naming the file (and
    line), never a traceback; nothing is written."""
    path = source / "ARC-Easy-train.jsonl"
    if b"Which" not in path.read_bytes().splitlines()[0]:
        path.write_bytes(path.read_bytes().replace(b'"question": "', b'"question": "Which ', 1))
    write(path)
    line = run_step1(capsys, step1, source, tmp_path / "out")
    assert line.startswith(f"error: {path}{message}")
    assert_empty(tmp_path / "out")


def test_a_question_with_one_choice_is_refused(step1, source, tmp_path, capsys):
    """A multiple-choice question needs at least two choices: one with a single choice is named."""
    only = {"text": ["water"], "label": ["A"]}
    path, record_id = edit_record(source, "validation", 2, lambda r: r.update(choices=only, answerKey="A"))
    line = run_step1(capsys, step1, source, tmp_path / "out")
    assert line == f"error: {path}:2 (id {record_id}): only one choice ('water'); a multiple-choice question needs at least two"
    assert_empty(tmp_path / "out")


# ---------------------------------------------------------------- step 2: conversations -> token rows


def conversations(path: Path, *records: dict) -> Path:
    return write_lines(path, [json.dumps(r, ensure_ascii=False) for r in records])


GOOD = {"id": "q1", "user_text": "Which is a gas?", "assistant_text": "B", "choice_labels": ["A", "B", "C", "D"]}


def plain_tokenizer_folder(folder: Path) -> Path:
    """A word-level fast tokenizer built in-process, without <|im_start|>/<|im_end|>, saved to ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "[PAD]", "A", "B", "C", "D", "Which", "is", "a", "gas", "?"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(folder)
    return folder


def test_tokenizer_without_chatml_tokens(step2, tmp_path, capsys):
    """A tokenizer that lacks <|im_start|> is named, with what to use instead; no token file appears."""
    data = conversations(tmp_path / "conv.jsonl", GOOD)
    tokenizer = plain_tokenizer_folder(tmp_path / "plain_tokenizer")
    out = tmp_path / "out"
    argv = ["--data_path", str(data), "--out_path", str(out / "tokens.jsonl"), "--tokenizer", str(tokenizer)]
    line = fails(capsys, lambda: step2.main(argv))
    assert line == (
        f"error: tokenizer {tokenizer}: has no ChatML token <|im_start|>; use a tokenizer that defines "
        "<|im_start|> and <|im_end|> (every Qwen tokenizer does)"
    )
    assert_empty(out)


def test_choice_letter_that_is_not_one_token(step2, tmp_path, capsys):
    """A choice label the tokenizer splits into two tokens names file:line, the record and the ids."""
    bad = {**GOOD, "id": "q2", "choice_labels": ["A", "B", "C", "D1"]}
    data = conversations(tmp_path / "conv.jsonl", GOOD, bad)
    out = tmp_path / "out"
    argv = ["--data_path", str(data), "--out_path", str(out / "tokens.jsonl"), "--tokenizer", str(SAMPLE_TOKENIZER)]
    line = fails(capsys, lambda: step2.main(argv))
    assert line == (
        f"error: {data}:2 (id q2): tokenizer {SAMPLE_TOKENIZER}: choice letter 'D1' is 2 tokens [35, 16], not one; "
        "categorical scoring needs every offered letter to be a single token"
    )
    assert_empty(out)


# ---------------------------------------------------------------- step 3: token rows, Hydra keys, precision

ROW = {"input_ids": [5, 6, 7, 8], "labels": [-100, -100, 7, 8], "attention_mask": [1, 1, 1, 1]}


def token_rows(path: Path, *rows: dict) -> Path:
    return write_lines(path, [json.dumps(r) for r in rows])


@pytest.mark.parametrize(
    ("bad", "what"),
    [
        ({**ROW, "labels": [-100, -100, 7]}, "input_ids (4) and labels (3) differ in length"),
        ({**ROW, "labels": [-100] * 4}, "no supervised label (every label is -100): this row would train on nothing"),
    ],
    ids=["unequal-lengths", "no-supervised-label"],
)
def test_bad_token_row(bad, what, tmp_path, capsys):
    """A token row with unequal lengths or nothing to learn is refused, naming file:line."""
    from slamkit.data import load_token_rows

    path = token_rows(tmp_path / "rows.jsonl", ROW, ROW, bad)
    assert fails(capsys, lambda: load_token_rows([path])) == f"error: {path}:3: {what}"


def test_sequence_longer_than_the_model_context(tiny_model, tmp_path, capsys):
    """train() refuses a row longer than the model's max_position_embeddings, naming file:line, before any output."""
    from slamkit.training import train

    long_row = {"input_ids": list(range(1100)), "labels": [-100] * 1099 + [1099]}
    path = token_rows(tmp_path / "rows.jsonl", ROW, long_row)
    out = tmp_path / "run"
    # the rows are checked against the model's config before any weight is loaded
    line = fails(capsys, lambda: train(sft_config(tiny_model, path, out, num_train_epochs=1)))
    assert line == (
        f"error: {path}:2: 1100 tokens, longer than the model's context of 1024 "
        "(drop long examples with prepare_arc_tokens.py --max_length)"
    )
    assert not out.exists()


def train_cli_fails(capsys, monkeypatch, *overrides: str) -> str:
    """cli/train_sft.py with ``overrides``, in-process, as its __main__ runs it: exit code 2 and exactly one
    stderr line (after any progress bar); that line."""
    code, _, err = run_cli(*overrides)
    lines = [line for line in err.splitlines() if line.strip() and "it/s]" not in line]
    assert code == EXIT_BAD_INPUT and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainig_args.x=1", "trainig_args.x is not a config key: did you mean training_args?"),
        ("cont_trainin=true", "cont_trainin is not a config key: did you mean cont_training?"),
        ("model.base_model_nam=x", "model.base_model_nam is not a config key: did you mean model.base_model_name?"),
        ("speed.pack=true", "speed.pack is not a config key: did you mean speed.packing?"),
        (
            "training_args.learning_rat=1e-5",
            "training_args.learning_rat is not a transformers TrainingArguments field: "
            "did you mean training_args.learning_rate?",
        ),
        ("+training_args.max_grad_norm=0.5",
         "training_args.max_grad_norm is already a config key: set it without the + (training_args.max_grad_norm=...)"),
    ],
)
def test_unknown_or_misspelt_hydra_key(override, message, capsys, monkeypatch, tmp_path):
    """A misspelt override is named with the key it probably meant, before anything is created."""
    out = tmp_path / "run"
    assert train_cli_fails(capsys, monkeypatch, override, f"training_args.output_dir={out}") == f"error: {message}"
    assert not out.exists()


@pytest.mark.parametrize("override", ["training_args.warmup_ratio=0.1", "+training_args.warmup_ratio=0.1"])
def test_training_args_key_removed_in_transformers_5(override, capsys, monkeypatch):
    """training_args.warmup_ratio (gone in transformers 5.x), with or without '+', names its replacement."""
    assert train_cli_fails(capsys, monkeypatch, override) == (
        "error: training_args.warmup_ratio was removed in transformers 5.x: write training_args.warmup_steps=0.03 "
        "(a float below 1 is a fraction of the total steps)"
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training_args.num_train_epochs=three",
         "training_args.num_train_epochs: Value 'three' of type 'str' could not be converted to Float"),
        ("speed.packing=maybe", "speed.packing: Value 'maybe' is not a valid bool (type str)"),
        ("cont_training=maybe", "cont_training: Value 'maybe' is not a valid bool (type str)"),
        ("training_args.per_device_train_batch_size=3.5",
         "training_args.per_device_train_batch_size: Value '3.5' of type 'float' could not be converted to Integer"),
        ("data.max_train_examples=0", "data.max_train_examples=0: must be null (all rows) or at least 1"),
        ("training_args.learning_rate=-1", "training_args.learning_rate=-1.0: must be a finite number >= 0"),
        ("training_args.learning_rate=inf", "training_args.learning_rate=inf: must be a finite number >= 0"),
        ("training_args.per_device_train_batch_size=0", "training_args.per_device_train_batch_size=0: must be at least 1"),
        ("training_args.gradient_accumulation_steps=0", "training_args.gradient_accumulation_steps=0: must be at least 1"),
        ("training_args.num_train_epochs=0", "training_args.num_train_epochs=0.0: must be a number above 0"),
        ("model.dtype=float64", "model.dtype='float64': must be one of float32, bfloat16, float16"),
        ("cont_training=true overwrite=true", "cont_training=true and overwrite=true contradict each other: choose one"),
    ],
)
def test_wrong_type_or_range_is_named_before_anything_is_read(override, message, capsys, monkeypatch, tmp_path):
    """A value of the wrong type (refused when Hydra composes the config) or out of range (refused when the typed
    settings are built) is one line naming the key and the value; no data is read and no folder is created."""
    out = tmp_path / "run"
    missing = tmp_path / "no_such_rows.jsonl"  # were anything read, the error would be about this file
    line = train_cli_fails(
        capsys, monkeypatch, *override.split(), f"training_args.output_dir={out}", f"data.train_path={missing}"
    )
    assert line == f"error: {message}"
    assert not out.exists()


@pytest.mark.parametrize(
    ("row", "what"),
    [
        ({**ROW, "input_ids": [5, -6, 7, 8]}, "negative token id -6 in input_ids"),
        ({**ROW, "choice_ids": [7, 200000]}, "choice_ids [7, 200000] reach beyond the model's 151,936-row embedding table"),
        ({**ROW, "choice_ids": [7, -1]}, "negative token id in choice_ids [7, -1]"),
        ({**ROW, "input_ids": [5, 6, 7, 151936], "labels": [-100, -100, 7, 151936]},
         "token id 151936 is outside the model's 151,936-row embedding table: these rows were made with another "
         "model's tokenizer; re-run prepare_arc_tokens.py with --tokenizer set to this model"),
    ],
    ids=["negative-id", "choice-beyond-table", "negative-choice", "id-beyond-table"],
)
def test_token_ids_are_checked_against_the_model_before_training(row, what, tiny_model, tmp_path, capsys):
    """Negative ids and ids (choice_ids included) beyond the model's embedding table are refused with the file and
    line before any weight is loaded or any folder is created: not at the first evaluation, an epoch later."""
    from slamkit.training import train

    path = token_rows(tmp_path / "rows.jsonl", {**ROW, "choice_ids": [7, 9]}, row)
    out = tmp_path / "run"
    assert fails(capsys, lambda: train(sft_config(tiny_model, path, out))) == f"error: {path}:2: {what}"
    assert not out.exists()


def test_rows_made_with_another_tokenizer_are_refused_naming_what_to_rerun(tiny_model, tmp_path, capsys):
    """Rows whose closing <|im_end|> id is not this model's (SmolLM2's is 2, Qwen's 151645) were made with another
    tokenizer: refused, naming the row and the step-2 command to re-run."""
    from slamkit.training import train

    smol = {"input_ids": [1, 4093, 198, 50, 2], "labels": [-100, -100, -100, 50, 2]}  # ChatML rows of a 49,152 vocabulary
    path = token_rows(tmp_path / "rows.jsonl", smol)
    line = fails(capsys, lambda: train(sft_config(tiny_model, path, tmp_path / "run")))
    assert line == (
        f"error: data.train_path row 1: ends with token id 2, but <|im_end|> is 151645 for {tiny_model}: the rows "
        f"were made with another tokenizer; re-run prepare_arc_tokens.py with --tokenizer {tiny_model}"
    )


def test_an_output_dir_that_is_a_file_is_one_line(tiny_model, tmp_path, capsys):
    """training_args.output_dir naming a file is refused in one line at once (a read-only filesystem:
    tests/test_run_integrity.py)."""
    from slamkit.training import train

    out = tmp_path / "run"
    out.write_text("not a folder")
    rows = token_rows(tmp_path / "rows.jsonl", ROW)
    line = fails(capsys, lambda: train(sft_config(tiny_model, rows, out)))
    assert line == f"error: {out}: cannot use as training_args.output_dir (File exists)"


def test_a_failed_start_leaves_no_folder_behind(tiny_model, tmp_path, capsys, monkeypatch):
    """cli/train_sft.py stopped by bad data (an unsupervised row) creates nothing: no run folder, no log, no
    Hydra files."""
    rows = token_rows(tmp_path / "rows.jsonl", ROW, {**ROW, "labels": [-100] * 4})
    out = tmp_path / "new" / "run"
    line = train_cli_fails(capsys, monkeypatch, f"model.base_model_name={tiny_model}", f"data.train_path={rows}",
                           "data.val_path=null", "training_args.eval_strategy=no", f"training_args.output_dir={out}")
    assert line == f"error: {rows}:2: no supervised label (every label is -100): this row would train on nothing"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]


def test_train_cli_exits_2_on_a_misspelt_key(tmp_path):
    """The real command: exit code 2, one stderr line naming the key, and no run folder."""
    out = tmp_path / "run"
    result = run_script("cli/train_sft.py", "trainig_args.x=1", f"training_args.output_dir={out}", timeout=120)
    assert result.returncode == EXIT_BAD_INPUT, result.stderr
    assert result.stderr.splitlines() == ["error: trainig_args.x is not a config key: did you mean training_args?"]
    assert not out.exists()


@pytest.fixture
def cuda_without_bf16(monkeypatch) -> str:
    """Pretend a CUDA GPU without bf16 (a V100) is present."""
    name = "Tesla V100-SXM2-16GB"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: name)
    return name


def test_bf16_training_on_a_gpu_without_bf16(cuda_without_bf16, tmp_path, capsys):
    """training_args.bf16=true on a GPU without bf16 names the key and the device and says what to set."""
    from slamkit.config import SpeedSettings, training_arguments_settings
    from slamkit.training import build_training_arguments

    settings = training_arguments_settings(output_dir=str(tmp_path / "run"), bf16=True)
    line = fails(capsys, lambda: build_training_arguments(settings, SpeedSettings(), has_validation=False))
    assert line == (
        f"error: training_args.bf16=true but {cuda_without_bf16} has no bf16: "
        "set training_args.bf16=false (float32) or training_args.fp16=true"
    )
    assert_empty(tmp_path / "run")


def test_bf16_evaluation_on_a_gpu_without_bf16(cuda_without_bf16, capsys):
    """--dtype bfloat16 for evaluation on a GPU without bf16 names the flag and the device."""
    from slamkit.model import choose_dtype

    line = fails(capsys, lambda: choose_dtype("bfloat16", torch.device("cuda")))
    assert line == f"error: --dtype bfloat16: {cuda_without_bf16} has no bf16 (use float32 or float16)"


# ---------------------------------------------------------------- step 4: checkpoints


@pytest.fixture
def eval_data(tmp_path) -> Path:
    return conversations(tmp_path / "test.jsonl", GOOD, {**GOOD, "id": "q2", "assistant_text": "D"})


def run_eval(capsys, eval_arc, model_path: Path, data: Path, out: Path) -> str:
    argv = ["--model_path", str(model_path), "--data_path", str(data), "--device", "cpu", "--output_dir", str(out)]
    return fails(capsys, lambda: eval_arc.main(argv))


def test_missing_checkpoint_folder(eval_arc, eval_data, tmp_path, capsys):
    """A --model_path that does not exist is named as a missing model folder (no hub lookup); no results written."""
    missing = tmp_path / "arc_model" / "checkpoint-423"
    line = run_eval(capsys, eval_arc, missing, eval_data, tmp_path / "out")
    assert line == f"error: {missing}: no such model folder"
    assert_empty(tmp_path / "out")


def test_missing_checkpoint_that_could_be_a_hub_id(eval_arc, eval_data, tmp_path, capsys, monkeypatch):
    """A missing relative `dir/name` path (shaped like a hub id) says it is no local folder and failed as a hub id."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as tests/helpers.run_script sets it
    monkeypatch.chdir(tmp_path)
    line = run_eval(capsys, eval_arc, Path("arc_model/checkpoint-423"), eval_data, tmp_path / "out")
    assert line.startswith("error: arc_model/checkpoint-423: no such local folder, and as a hub id: cannot load the model (")
    assert_empty(tmp_path / "out")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "model.safetensors").unlink(), ": cannot load the model (Error no file named model.safetensors"),
        (lambda f: (f / "config.json").write_text("{", encoding="utf-8"), ": cannot load the model ("),
        (lambda f: (f / "config.json").unlink(), ": not a model folder (no config.json)"),
    ],
    ids=["no-weights", "corrupt-config", "no-config"],  # a damaged weights file: tests/test_boundary.py
)
def test_corrupt_checkpoint_folder(eval_arc, eval_data, tiny_model, damage, message, tmp_path, capsys):
    """A damaged checkpoint folder is named in one line instead of a traceback; no results written."""
    folder = tmp_path / "checkpoint-1"
    shutil.copytree(tiny_model, folder)
    damage(folder)
    line = run_eval(capsys, eval_arc, folder, eval_data, tmp_path / "out")
    assert line.startswith(f"error: {folder}{message}")
    assert_empty(tmp_path / "out")


def test_a_model_whose_vocabulary_is_smaller_than_the_prompt_ids_is_refused(eval_arc, eval_data, tmp_path, capsys):
    """Scoring with a tokenizer whose ids go beyond the model's embedding table names the question and the
    mismatch instead of an index error."""
    from helpers import build_tiny_qwen3

    small = build_tiny_qwen3(tmp_path / "small", vocab_size=1000)  # the Qwen tokenizer, a 1,000-row table
    argv = ["--model_path", str(small), "--data_path", str(eval_data), "--device", "cpu", "--output_dir", str(tmp_path / "out")]
    line = fails(capsys, lambda: eval_arc.main(argv), after_bar="Loading weights")
    assert line == (
        "error: question q1: token id 151645 is outside the model's 1,000-row embedding table: the tokenizer is "
        "not this model's (score with the model's own tokenizer)"
    )
    assert_empty(tmp_path / "out")


def test_an_eval_output_dir_that_is_a_file_is_refused(eval_arc, eval_data, tiny_model, tmp_path, capsys):
    """--output_dir naming a file is one line, before the model is loaded."""
    out = tmp_path / "results"
    out.write_text("x")
    assert run_eval(capsys, eval_arc, tiny_model, eval_data, out) == f"error: {out}: --output_dir is a file, not a folder"
