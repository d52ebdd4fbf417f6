"""The boundaries every tool crosses, each guarded in one place and tested here against the real fault: the writer
(slamkit.jsonl.output_set: regular files only, never an input, a set as a unit, one line when the disk says no),
the reader (slamkit.jsonl.read_jsonl: JSON beyond Python's limits, a key given twice) and the loader
(slamkit.model.load_causal_lm: a weight that was not loaded is never left random)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
from pathlib import Path

import pytest
from helpers import SAMPLE, SAMPLE_TOKENIZER, build_tiny_qwen3, in_small_tmpfs, run_script
from safetensors.torch import load_file
from test_bad_input import fails

from slamkit.errors import SlamkitError
from slamkit.model import load_causal_lm

SPLITS = ("train", "validation", "test")


def state(paths) -> dict[str, tuple[int, int, str | bytes]]:
    """Each path's file type, device number, and link target or bytes: what a test compares before and after."""
    def entry(path: Path) -> tuple[int, int, str | bytes]:
        kind, device = stat.S_IFMT(os.lstat(path).st_mode), os.lstat(path).st_rdev
        content = os.readlink(path) if kind == stat.S_IFLNK else path.read_bytes() if kind == stat.S_IFREG else b""
        return kind, device, content
    return {str(p): entry(p) for p in sorted(paths)}


@pytest.fixture
def questions(sample_step1, tmp_path) -> Path:
    """A step-1 file of three questions (step 2 tokenizes it in a moment)."""
    lines = (sample_step1 / "arc_easy_test.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:3]
    path = tmp_path / "data" / "questions.jsonl"
    path.parent.mkdir()
    path.write_text("".join(lines), encoding="utf-8")
    return path


def step2_argv(data: Path, out: Path | str) -> list[str]:
    return ["--data_path", str(data), "--out_path", str(out), "--tokenizer", str(SAMPLE_TOKENIZER)]


# ---------------------------------------------------------------- the writer


def device_node(folder: Path) -> Path:
    try:
        os.mknod(folder / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))  # the device /dev/null is
    except PermissionError:
        pytest.skip("making a device node needs root")
    return folder / "null"


def unix_socket(folder: Path) -> Path:
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(folder / "sock"))  # the socket file stays when the socket is closed
    return folder / "sock"


def symlink(folder: Path, target: str | Path) -> Path:
    (folder / "link.jsonl").symlink_to(target)
    return folder / "link.jsonl"


def victim(folder: Path) -> Path:
    (folder / "notes.txt").write_text("my notes\n")
    return folder / "notes.txt"


TARGETS = {
    "a device node": (device_node, "character device"),
    "/dev/null": (lambda folder: Path("/dev/null"), "character device"),
    "a FIFO": (lambda folder: os.mkfifo(folder / "fifo") or folder / "fifo", "FIFO"),
    "a socket": (unix_socket, "socket"),
    "a folder": (lambda folder: (folder / "rows").mkdir() or folder / "rows", "folder"),
    "a symlink to a file": (lambda folder: symlink(folder, victim(folder)), "symbolic link"),
    "a symlink to /dev/stdout": (lambda folder: symlink(folder, "/dev/stdout"), "symbolic link"),
}


@pytest.mark.parametrize("kind", TARGETS)
def test_the_writer_replaces_only_regular_files(kind, step2, questions, tmp_path, capsys):
    """An output path that is a device, a FIFO, a socket, a folder or a symbolic link (to anything) is refused in one
    line naming the path and what it is, and every file of the folder, the target included, stays as it was."""
    make, what = TARGETS[kind]
    (tmp_path / "out").mkdir()
    target = make(tmp_path / "out")

    def watched() -> list[Path]:  # the target's folder, or in /dev the device alone
        return [target] if target.parent == Path("/dev") else list(target.parent.iterdir())

    before = state(watched())
    try:
        line = fails(capsys, lambda: step2.main(step2_argv(questions, target)), after_bar="tokenizing")
    finally:
        if not stat.S_ISCHR(os.lstat("/dev/null").st_mode):  # a broken writer replaced the machine's /dev/null
            os.unlink("/dev/null")
            os.mknod("/dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    assert line.startswith(f"error: {target}: ") and what in line
    assert state(watched()) == before and list(target.parent.glob(f".{target.name}.*")) == []


def test_the_writer_never_replaces_one_of_the_tools_inputs(step1, step2, questions, tmp_path, capsys):
    """An output that is one of the files a step reads, under another spelling or another name (a hard link), is
    refused in one line naming both, and the input keeps its bytes: step 2's --out_path, step 1's --output_dir."""
    before = questions.read_bytes()
    (questions.parent / "also.jsonl").hardlink_to(questions)
    for out in (questions.parent / ".." / "data" / questions.name, questions.parent / "also.jsonl"):
        line = fails(capsys, lambda: step2.main(step2_argv(questions, out)), after_bar="tokenizing")
        assert line.startswith(f"error: {out}: ") and line.count(str(questions)) == 1
    assert questions.read_bytes() == before and sorted(p.name for p in questions.parent.iterdir()) == [
        "also.jsonl", "questions.jsonl"]

    source = tmp_path / "arc"  # a --source folder whose files have the names step 1 writes
    source.mkdir()
    for split in SPLITS:
        shutil.copy(SAMPLE / f"ARC-Easy-{split}.jsonl", source / f"arc_easy_{split}.jsonl")
    before = state(source.iterdir())
    line = fails(capsys, lambda: step1.main(["--source", str(source), "--output_dir", str(source)]))
    assert line.startswith("error: ") and line.count(str(source / "arc_easy_train.jsonl")) == 2  # output and input
    assert state(source.iterdir()) == before


def test_a_set_is_renamed_into_place_whole_or_not_at_all(tmp_path):
    """Step 1 over an earlier set whose validation file cannot be replaced (a file bind-mounted there, as a
    container does; the rename fails after the train file's succeeded): exit 2, one line naming that file, and the
    earlier three files byte for byte, with no temporary or backup file left."""
    new = tmp_path / "new"  # other questions than the earlier set's, so a replaced file would show
    new.mkdir()
    for split in SPLITS:
        lines = (SAMPLE / f"ARC-Easy-{split}.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:4]
        (new / f"ARC-Easy-{split}.jsonl").write_text("".join(lines), encoding="utf-8")
    done = in_small_tmpfs("4m", f"""
        python example_arc/prepare_arc_data.py --source example_arc/sample --output_dir "$FS/out" > /dev/null || exit 1
        echo held > "$FS/held"; mount --bind "$FS/held" "$FS/out/arc_easy_validation.jsonl" || exit 99
        md5sum "$FS"/out/* > "$ERR.before"
        python example_arc/prepare_arc_data.py --source {new} --output_dir "$FS/out" 2> "$ERR" > /dev/null
        echo "exit $?"; cat "$ERR"; md5sum --quiet -c "$ERR.before" && echo SAME; ls -A "$FS/out"
    """)
    lines = done.stdout.splitlines()
    assert lines[0] == "exit 2", done.stdout + done.stderr
    assert lines[1].startswith("error: /") and "/out/arc_easy_validation.jsonl: " in lines[1]
    assert lines[2:] == ["SAME", "arc_easy_test.jsonl", "arc_easy_train.jsonl", "arc_easy_validation.jsonl"]


def test_a_read_only_folder_is_one_line_and_nothing_is_written(questions):
    """Step 2 into a read-only filesystem: exit 2, one line naming the output, and no file there."""
    done = in_small_tmpfs("1m", f"""
        python example_arc/prepare_arc_tokens.py {' '.join(step2_argv(questions, '"$FS/tokens.jsonl"'))} \
            2> "$ERR" > /dev/null
        echo "exit $?"; grep "^error" "$ERR"; ls -A "$FS"
    """, options=",ro")
    lines = done.stdout.splitlines()
    assert lines[0] == "exit 2", done.stdout + done.stderr
    assert len(lines) == 2 and lines[1].startswith("error: /") and "/tokens.jsonl: " in lines[1]


# ---------------------------------------------------------------- the reader


@pytest.mark.parametrize(
    ("line", "named"),
    [("[" * 100_000, ""), ('{"id": 1' + "0" * 5_000 + "}", ""),
     ('{"id": "x", "answerKey": "A", "answerKey": "B"}', "'answerKey'")],
    ids=["nested-100000-deep", "integer-of-5000-digits", "a-key-twice"],
)
def test_json_beyond_pythons_limits_or_with_a_key_twice_is_one_line_naming_file_and_line(line, named, step1, tmp_path,
                                                                                         capsys):
    """A line nested 100,000 deep, an integer of 5,000 digits or an object with a key twice (plain json keeps the
    last) is refused in one line naming the file and line (and the key); no split is written."""
    source = tmp_path / "source"
    source.mkdir()
    for split in SPLITS:
        shutil.copy(SAMPLE / f"ARC-Easy-{split}.jsonl", source)
    path = source / "ARC-Easy-validation.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join([lines[0], line, *lines[2:]]) + "\n", encoding="utf-8")
    error = fails(capsys, lambda: step1.main(["--source", str(source), "--output_dir", str(tmp_path / "out")]))
    assert error.startswith(f"error: {path}:2: ") and named in error
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the loader


def tiny(folder: Path, edit=None, **config) -> Path:
    """A tiny Qwen3 (1,024-row vocabulary) with the bundled tokenizer, its config.json then changed by ``edit``."""
    build_tiny_qwen3(folder, vocab_size=1024, **config)
    if edit is not None:
        settings = json.loads((folder / "config.json").read_text())
        edit(settings)
        (folder / "config.json").write_text(json.dumps(settings))
    return folder


def layers(count: int):
    def edit(settings: dict) -> None:  # layer_types must list one per layer, or the config itself is invalid
        settings.update(num_hidden_layers=count, layer_types=[settings["layer_types"][0]] * count)
    return edit


MISMATCHED = {  # a checkpoint whose config.json does not describe its weights -> the first key named
    "tied-saved-untied-config": (lambda s: s.update(tie_word_embeddings=False), "lm_head.weight"),  # head missing
    "one-layer-more-in-config": (layers(3), "model.layers.2."),  # a missing layer
    "one-layer-fewer-in-config": (layers(1), "model.layers.1."),  # weights nothing takes
    "another-hidden-size": (lambda s: s.update(hidden_size=32), "model.embed_tokens.weight"),  # shapes differ
}


@pytest.mark.parametrize("case", MISMATCHED)
def test_a_checkpoint_whose_config_does_not_describe_its_weights_is_refused(case, tmp_path):
    """Missing weights (an untied head, a layer), weights nothing takes and weights of another shape are refused
    in one line naming the folder and the first key, instead of a model with random weights."""
    edit, key = MISMATCHED[case]
    folder = tiny(tmp_path / "model", edit)
    with pytest.raises(SlamkitError) as caught:
        load_causal_lm(str(folder))
    assert str(caught.value).startswith(f"{folder}: ") and key in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("damage", [lambda data: data[: len(data) // 2], lambda data: b"\x00" * 64],
                         ids=["truncated", "overwritten"])
def test_a_damaged_weights_file_is_refused_naming_the_file(damage, tmp_path):
    """A model.safetensors cut in half or overwritten is named (the file, not only its folder) in one line."""
    weights = tiny(tmp_path / "model") / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(SlamkitError, match=rf"^{weights}: "):
        load_causal_lm(str(tmp_path / "model"))


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_a_checkpoint_that_matches_its_config_loads_every_weight_from_the_file(tied, tmp_path):
    """A tied and an untied tiny Qwen3 load without complaint, every weight equal to the file's (a tied head is
    the embedding table itself)."""
    folder = tiny(tmp_path / "model", tie_word_embeddings=tied)
    model = load_causal_lm(str(folder))
    saved = load_file(folder / "model.safetensors")
    assert ("lm_head.weight" in saved) is not tied
    assert (model.lm_head.weight is model.model.embed_tokens.weight) is tied
    state = model.state_dict()
    assert all(state[key].equal(tensor) for key, tensor in saved.items()) and set(state) >= set(saved)


def test_an_evaluation_of_a_checkpoint_with_a_missing_weight_exits_2_naming_the_folder(sample_step1, tmp_path):
    """eval_arc_base.py on a checkpoint whose LM head is missing (tied weights, untied config) exits 2 with one
    error line naming the folder, no traceback, and writes nothing."""
    folder = tiny(tmp_path / "model", MISMATCHED["tied-saved-untied-config"][0])
    done = run_script("example_arc/eval_arc_base.py", "--model_name", folder, "--data_path",
                      sample_step1 / "arc_easy_test.jsonl", "--device", "cpu", "--output_dir", tmp_path / "eval")
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {folder}: ") and "lm_head.weight" in errors[0]
    assert "Traceback" not in done.stderr and not (tmp_path / "eval").exists()
