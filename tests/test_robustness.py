"""Unattended runs: no partial outputs, safe defaults, no network for local paths, odd text.

(Resume, determinism and faults injected into training runs: tests/test_run_integrity.py.) Everything runs on CPU
in float32 with the tiny Qwen3 (hidden 64, 2 layers, the real 151,936-row vocabulary, the bundled tokenizer).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
import yaml
from helpers import REPO, SAMPLE, SAMPLE_TOKENIZER
from safetensors.torch import load_file

import slamkit.jsonl
from slamkit.arc import conversation_from_record, read_conversations
from slamkit.chatml import IGNORE_INDEX, encode_examples, encode_prompts, SEED_FORMAT
from slamkit.config import ModelSettings
from slamkit.errors import SlamkitError
from slamkit.jsonl import atomic_output
from slamkit.model import load_causal_lm, load_tokenizer

SPLITS = ("train", "validation", "test")
LETTER_IDS = {"A": 32, "B": 33, "C": 34, "D": 35, "E": 36}
IM_END = 151645





@pytest.fixture(scope="module")
def tokenizer(qwen_tokenizer):
    return qwen_tokenizer


def sample_records(split: str, count: int) -> list[dict]:
    lines = (SAMPLE / f"ARC-Easy-{split}.jsonl").read_text(encoding="utf-8").splitlines()[:count]
    return [json.loads(line) for line in lines]


def write_source(folder: Path, per_split: dict[str, list[dict]]) -> Path:
    """A step-1 --source folder in the hub's layout."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, records in per_split.items():
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        (folder / f"ARC-Easy-{split}.jsonl").write_text(text, encoding="utf-8")
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def no_temporary_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


class JsonThatDies:
    """Stands in for ``json`` inside slamkit.jsonl: ``dumps`` raises KeyboardInterrupt (Ctrl-C) after ``n`` calls."""

    def __init__(self, n: int):
        self.left = n

    def __getattr__(self, name):
        return getattr(json, name)

    def dumps(self, *args, **kwargs):
        self.left -= 1
        if self.left < 0:
            raise KeyboardInterrupt
        return json.dumps(*args, **kwargs)


@pytest.fixture
def renamed_into_place(monkeypatch) -> set[Path]:
    """Every path that ``os.replace`` moved a finished temporary file onto during the test."""
    targets: set[Path] = set()
    replace = os.replace

    def spy(src, dst, *args, **kwargs):
        replace(src, dst, *args, **kwargs)
        targets.add(Path(dst).resolve())

    monkeypatch.setattr(os, "replace", spy)
    return targets


# ---------------------------------------------------------------- 2. no partial outputs


@pytest.mark.parametrize("interruption", [RuntimeError("disk full"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_interrupted_atomic_output_keeps_the_old_file(interruption, tmp_path):
    """An exception or Ctrl-C inside atomic_output leaves the previous file byte for byte and no temporary file."""
    path = tmp_path / "out.jsonl"
    path.write_text('{"old": 1}\n', encoding="utf-8")
    with pytest.raises(type(interruption)):
        with atomic_output(path) as handle:
            handle.write('{"new": 1}\n' * 1000)
            raise interruption
    assert path.read_text(encoding="utf-8") == '{"old": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


@pytest.mark.parametrize("interruption", [RuntimeError("disk full"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_interrupted_atomic_output_leaves_no_file(interruption, tmp_path):
    """Interrupting the first write of a file leaves no file at all (and no temporary file)."""
    with pytest.raises(type(interruption)):
        with atomic_output(tmp_path / "sub" / "out.jsonl") as handle:
            handle.write("partial")
            raise interruption
    assert list((tmp_path / "sub").iterdir()) == []


def test_step1_bad_record_in_the_last_split_writes_no_split(step1, tmp_path):
    """Step 1 checks every split before writing any: a bad last record of the last split leaves earlier outputs as they were."""
    records = {split: sample_records(split, 4) for split in SPLITS}
    out = tmp_path / "out"
    assert step1.main(["--source", str(write_source(tmp_path / "good", records)), "--output_dir", str(out)]) == 0
    before = snapshot(out)
    records = {split: sample_records(split, 6) for split in SPLITS}
    records["test"][-1]["answerKey"] = "Z"
    with pytest.raises(SlamkitError, match=r"ARC-Easy-test.jsonl:6 .*answerKey 'Z'"):
        step1.main(["--source", str(write_source(tmp_path / "bad", records)), "--output_dir", str(out)])
    assert snapshot(out) == before


def test_step1_ctrl_c_while_writing_keeps_the_old_set(step1, tmp_path, monkeypatch, renamed_into_place):
    """Step 1 writes its three files as one set: Ctrl-C while the second split is written leaves all three old
    files byte for byte (never a new train file beside an old test file) and no temporary file."""
    out = tmp_path / "out"
    old = {split: sample_records(split, 4) for split in SPLITS}
    assert step1.main(["--source", str(write_source(tmp_path / "old", old)), "--output_dir", str(out)]) == 0
    assert {p.resolve() for p in out.iterdir()} == renamed_into_place
    before = snapshot(out)
    new = {split: sample_records(split, 8) for split in SPLITS}
    monkeypatch.setattr(slamkit.jsonl, "json", JsonThatDies(len(new["train"]) + 3))  # dies inside validation
    with pytest.raises(KeyboardInterrupt):
        step1.main(["--source", str(write_source(tmp_path / "new", new)), "--output_dir", str(out)])
    assert snapshot(out) == before and no_temporary_files(out)


def test_step2_ctrl_c_while_writing_leaves_no_token_file(step1, step2, tmp_path, monkeypatch, renamed_into_place):
    """Step 2's token file is renamed into place when complete; Ctrl-C halfway leaves none and no temporary file."""
    step1.main(["--source", str(write_source(tmp_path / "src", {s: sample_records(s, 6) for s in SPLITS})),
                "--output_dir", str(tmp_path / "conv")])
    argv = ["--data_path", str(tmp_path / "conv" / "arc_easy_train.jsonl"), "--tokenizer", str(SAMPLE_TOKENIZER)]
    done = tmp_path / "tokens" / "done.jsonl"
    assert step2.main(argv + ["--out_path", str(done)]) == 0
    assert done.resolve() in renamed_into_place
    monkeypatch.setattr(slamkit.jsonl, "json", JsonThatDies(3))
    with pytest.raises(KeyboardInterrupt):
        step2.main(argv + ["--out_path", str(tmp_path / "tokens" / "cut.jsonl")])
    assert [p.name for p in (tmp_path / "tokens").iterdir()] == ["done.jsonl"]


def test_eval_outputs_are_one_set_and_never_mixed(step1, eval_arc, tiny_model, tmp_path, monkeypatch, renamed_into_place, capsys):
    """eval_arc.py's results.json, predictions.jsonl and confusion_matrix.png are renamed into place together; a
    second evaluation into the folder is refused unless --overwrite, and one interrupted half way (Ctrl-C
    inside predictions.jsonl) leaves the first one's three files byte for byte."""
    from slamkit.errors import run_main

    step1.main(["--source", str(write_source(tmp_path / "src", {s: sample_records(s, 5) for s in SPLITS})),
                "--output_dir", str(tmp_path / "conv")])
    out = tmp_path / "eval"
    argv = ["--model_path", str(tiny_model), "--data_path", str(tmp_path / "conv" / "arc_easy_test.jsonl"),
            "--device", "cpu", "--output_dir", str(out)]
    assert eval_arc.main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["confusion_matrix.png", "predictions.jsonl", "results.json"]
    assert {p.resolve() for p in out.iterdir()} <= renamed_into_place
    before = snapshot(out)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        run_main(lambda: eval_arc.main(argv))
    assert capsys.readouterr().err == (
        f"error: {out}: already holds an evaluation (results.json, predictions.jsonl, confusion_matrix.png); "
        "choose another --output_dir, or pass --overwrite to replace it\n"
    )
    monkeypatch.setattr(slamkit.jsonl, "json", JsonThatDies(2))  # dies inside predictions.jsonl
    with pytest.raises(KeyboardInterrupt):
        eval_arc.main([*argv, "--overwrite"])
    assert snapshot(out) == before and no_temporary_files(out)


def test_sigterm_to_an_evaluation_is_one_line_and_leaves_its_folder_as_found(tiny_model, sample_step1, tmp_path):
    """SIGTERM to eval_arc_base.py while it scores (its --output_dir held): exit 143, one line naming SIGTERM, no
    traceback, and the folder it made is gone again: no lock file, no partial output."""
    import signal
    import time

    from helpers import start_script

    lines = (sample_step1 / "arc_easy_test.jsonl").read_text(encoding="utf-8").splitlines()
    many = tmp_path / "many.jsonl"  # 2,000 questions one at a time: seconds of scoring to stop
    many.write_text("".join(json.dumps({**json.loads(line), "id": f"{i}-{n}"}) + "\n"
                            for i in range(10) for n, line in enumerate(lines)), encoding="utf-8")
    out = tmp_path / "eval"
    run = start_script("example_arc/eval_arc_base.py", "--model_name", tiny_model, "--data_path", many,
                       "--batch_size", "1", "--output_dir", out)
    for _ in range(600):
        if (out / ".slamkit.lock").exists() or run.poll() is not None:
            break
        time.sleep(0.1)
    time.sleep(1.0)  # into the scoring
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 143, err[-2000:]
    assert err.strip().splitlines()[-1] == "error: interrupted (SIGTERM); nothing was written"
    assert "Traceback" not in err and not out.exists()


# ---------------------------------------------------------------- 6. safe defaults


def test_shipped_config_and_library_defaults_are_safe():
    """trust_remote_code and allow_pickle are off in config/model/sft_qwen.yaml and in every library default."""
    import inspect

    shipped = yaml.safe_load((REPO / "config" / "model" / "sft_qwen.yaml").read_text(encoding="utf-8"))
    assert shipped["trust_remote_code"] is False and shipped["allow_pickle"] is False
    assert ModelSettings("m", "t").trust_remote_code is False and ModelSettings("m", "t").allow_pickle is False
    for function in (load_causal_lm, load_tokenizer):  # build_model takes ModelSettings, checked above
        parameters = inspect.signature(function).parameters
        assert parameters["trust_remote_code"].default is False
        if "allow_pickle" in parameters:
            assert parameters["allow_pickle"].default is False


def test_pickle_weights_are_refused_unless_allowed(tiny_model, tmp_path):
    """A folder with only pytorch_model.bin is refused with a message naming it; allow_pickle=True loads the same weights."""
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(tiny_model / "config.json", folder)
    torch.save(load_file(tiny_model / "model.safetensors"), folder / "pytorch_model.bin")
    with pytest.raises(SlamkitError) as caught:
        load_causal_lm(str(folder))
    assert str(caught.value) == (
        f"{folder}: only pickle weights (pytorch_model.bin), refused because unpickling can run code: "
        "convert them to safetensors, or opt in with allow_pickle=True (model.allow_pickle=true)"
    )
    expected = load_causal_lm(str(tiny_model)).state_dict()
    loaded = load_causal_lm(str(folder), allow_pickle=True).state_dict()
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)


@pytest.fixture
def network_attempts(monkeypatch) -> list:
    """Block and record every attempt to open a network connection."""
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def test_local_paths_never_touch_the_network(tiny_model, tmp_path, network_attempts, monkeypatch):
    """A local folder loads, and a missing local folder fails as such, without any network attempt (even online)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    load_tokenizer(str(tiny_model))
    load_causal_lm(str(tiny_model))
    missing = tmp_path / "runs" / "checkpoint-9"
    with pytest.raises(SlamkitError, match=f"^{missing}: no such model folder$"):
        load_causal_lm(str(missing))
    with pytest.raises(SlamkitError, match=f"^{missing}: no such tokenizer folder$"):
        load_tokenizer(str(missing))
    assert network_attempts == []


def test_hf_hub_offline_is_respected(network_attempts, monkeypatch):
    """With HF_HUB_OFFLINE a hub id that is not cached fails in one line, without any network attempt."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    message = "^slamkit-test/no-such-model: no such local folder, and as a hub id: cannot load a tokenizer"
    with pytest.raises(SlamkitError, match=message):
        load_tokenizer("slamkit-test/no-such-model")
    assert network_attempts == []


# ---------------------------------------------------------------- 7. long or odd text

ODD = [
    {
        "id": "odd-unicode",
        "question": "Quelle est la température de l'eau bouillante ? 水の沸点は？ 🌡️ Ωμέγα — naïve café",
        "choices": {"text": ["50 °C", "100 °C", "0 °C", "−40 °C"], "label": ["A", "B", "C", "D"]},
        "answerKey": "B",
    },
    {
        "id": "odd-equals",
        "question": "Which line is true? (a=b, x=C)",
        "choices": {"text": ["x=C", "2+2=4 =A", "- y=B", "E=mc^2=D"], "label": ["A", "B", "C", "D"]},
        "answerKey": "B",
    },
    {
        "id": "odd-newlines",
        "question": "Line one\nLine two\n- z=A\n\nRespond with C",
        "choices": {"text": ["first\n- fake=A", "second\r\nline", "third\n\n", "fourth=D\n"], "label": ["1", "2", "3", "4"]},
        "answerKey": "3",
    },
    {
        "id": "odd-long",
        "question": ("A very long question about photosynthesis, " * 70)[:3000],
        "choices": {"text": ["light", "dark", "sound"], "label": ["A", "B", "C"]},
        "answerKey": "A",
    },
]
ODD_ANSWERS = {"odd-unicode": "B", "odd-equals": "B", "odd-newlines": "C", "odd-long": "A"}


def test_odd_text_renders_and_round_trips(tokenizer):
    """Unicode, '=' and '- x=B' in choices, newlines and 3,000 characters: decode(encode) is exact, the answer is the supervised letter."""
    conversations = [conversation_from_record(r, f"odd:{i}") for i, r in enumerate(ODD)]
    assert len(ODD[3]["question"]) == 3000
    assert [c.assistant_text for c in conversations] == list(ODD_ANSWERS.values())
    examples = encode_examples(tokenizer, [c.user_text for c in conversations], [c.assistant_text for c in conversations])
    prompts = encode_prompts(tokenizer, [c.user_text for c in conversations])
    for conversation, example, prompt in zip(conversations, examples, prompts, strict=True):
        assert ODD[conversations.index(conversation)]["question"] in conversation.user_text
        decoded = tokenizer.decode(example.input_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        assert decoded == SEED_FORMAT.example(conversation.user_text, conversation.assistant_text)
        assert example.input_ids[: len(prompt)] == prompt
        assert [x for x in example.labels if x != IGNORE_INDEX] == [LETTER_IDS[conversation.assistant_text], IM_END]


def test_odd_text_through_every_step_is_scored_against_choice_labels(step1, step2, eval_arc, tiny_model, tmp_path):
    """Steps 1, 2 and 4 on odd records: the gold letter always comes from choice_labels, never from the text."""
    source = write_source(tmp_path / "src", {split: ODD for split in SPLITS})
    assert step1.main(["--source", str(source), "--output_dir", str(tmp_path / "conv")]) == 0
    conv = tmp_path / "conv" / "arc_easy_test.jsonl"
    records = read_conversations(conv, require_choices=True)
    assert [(r["id"], r["assistant_text"]) for r in records] == list(ODD_ANSWERS.items())
    assert records[2]["choice_labels"] == ["A", "B", "C", "D"]  # numeric labels relabelled at the source

    tokens = tmp_path / "tokens.jsonl"
    assert step2.main(["--data_path", str(conv), "--out_path", str(tokens), "--tokenizer", str(SAMPLE_TOKENIZER)]) == 0
    rows = [json.loads(line) for line in tokens.read_text(encoding="utf-8").splitlines()]
    for row, letter in zip(rows, ODD_ANSWERS.values(), strict=True):
        assert [x for x in row["labels"] if x != IGNORE_INDEX] == [LETTER_IDS[letter], IM_END]
        assert row["choice_ids"] == [LETTER_IDS[x] for x in "ABCD"[: len(row["choice_ids"])]]

    out = tmp_path / "eval"
    argv = ["--model_path", str(tiny_model), "--data_path", str(conv), "--device", "cpu", "--output_dir", str(out)]
    assert eval_arc.main(argv) == 0
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(p["id"], p["gold"]) for p in predictions] == list(ODD_ANSWERS.items())
    assert [sorted(p["probs"]) for p in predictions] == [["A", "B", "C", "D"]] * 3 + [["A", "B", "C"]]
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert (results["total"], results["skipped"]) == (4, 0)
