"""Faults from outside the process: numbers that are not finite (a diverged model), a full disk and a read-only
filesystem (a small tmpfs in a private mount namespace). Each stops with one line, and nothing half-written or
not finite is left looking complete. The runs are tests/test_run_integrity.py's (CPU, float32, the tiny Qwen3).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import in_small_tmpfs, load_script
from safetensors.torch import save_file
from test_run_integrity import cli_fails, overrides, record, weights

from slamkit.errors import run_main


# ---------------------------------------------------------------- numbers that are not finite


@pytest.fixture(scope="module")
def nan_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model with one NaN weight (what a diverged run would have saved)."""
    folder = tmp_path_factory.mktemp("nan") / "model"
    shutil.copytree(tiny_model, folder)
    tensors = weights(folder)
    tensors["model.norm.weight"][0] = float("nan")
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def test_a_nan_training_loss_stops_the_run_with_one_line_and_no_nan_checkpoint(nan_model, sample_tokens, tmp_path):
    """Training from weights that give a NaN loss stops at the first logged step with exit code 2 and one line;
    no checkpoint is written and the run record says failed."""
    out = tmp_path / "run"
    line = cli_fails(*overrides(nan_model, sample_tokens, out))
    assert line == (
        "error: loss is nan at step 1 (training_args.learning_rate=0.001): the run diverged and was stopped; the "
        "checkpoints saved before it are finite. Lower training_args.learning_rate, or check the data and the base model"
    )
    assert list(out.glob("checkpoint-*")) == []
    assert record(out)["status"] == "failed" and record(out)["error"].startswith("loss is nan at step 1")


def test_nan_weights_are_never_saved_even_when_no_loss_is_logged(nan_model, sample_tokens, tmp_path):
    """With logging_steps larger than the run, the weights' own check before the epoch's checkpoint stops it."""
    out = tmp_path / "run"
    line = cli_fails(*overrides(nan_model, sample_tokens, out, "training_args.logging_steps=100"))
    assert line.startswith("error: checkpoint-3: weight ") and "is not finite (nan or inf)" in line
    assert not (out / "checkpoint-3" / "model.safetensors").exists()


def test_evaluation_refuses_to_report_an_accuracy_from_nan_logits(nan_model, sample_step1, tmp_path, capsys):
    """eval_arc.py on a model whose logits are NaN names the first question, writes no results, exits 2."""
    out = tmp_path / "eval"
    argv = ["--model_path", str(nan_model), "--data_path", str(sample_step1 / "arc_easy_test.jsonl"),
            "--max_problems", "20", "--device", "cpu", "--output_dir", str(out)]
    capsys.readouterr()
    with pytest.raises(SystemExit) as caught:
        run_main(lambda: load_script("example_arc/eval_arc.py").main(argv))
    assert caught.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: question ") and "letter logits are not finite (nan or inf), so no accuracy" in err
    assert not out.exists()


# ---------------------------------------------------------------- a full disk


def test_step1_on_a_full_disk_writes_no_split_and_keeps_the_old_ones(tmp_path):
    """Step 1 into a folder that runs out of space half way: one line saying so, the previous three files intact."""
    done = in_small_tmpfs("1m", """
        python example_arc/prepare_arc_data.py --source example_arc/sample --output_dir "$FS/out" > /dev/null || exit 1
        md5sum "$FS"/out/* > "$ERR.before"
        head -c 500k /dev/zero > "$FS/filler"                       # room for part of a second copy, not all of it
        python example_arc/prepare_arc_data.py --source example_arc/sample --output_dir "$FS/out" 2> "$ERR" > /dev/null
        echo "exit $?"; cat "$ERR"; md5sum --quiet -c "$ERR.before" && echo SAME; ls -A "$FS/out"
    """)
    lines = done.stdout.splitlines()
    assert lines[0] == "exit 2", done.stdout + done.stderr
    assert lines[1].startswith("error: ") and lines[1].endswith(": no space left on device while writing; nothing was changed")
    assert lines[2:] == ["SAME", "arc_easy_test.jsonl", "arc_easy_train.jsonl", "arc_easy_validation.jsonl"]


def test_evaluation_on_a_full_disk_leaves_no_partial_set(tiny_model, sample_step1):
    """eval_arc.py whose output folder fills up: one line, and no results.json, predictions or plot at all."""
    data = sample_step1 / "arc_easy_test.jsonl"
    done = in_small_tmpfs("64k", f"""
        head -c 40k /dev/zero > "$FS/filler"
        python example_arc/eval_arc.py --model_path {tiny_model} --data_path {data} --device cpu --output_dir "$FS/eval" \
            2> "$ERR" > /dev/null
        echo "exit $?"; grep "^error" "$ERR"; ls -A "$FS/eval"
    """)
    lines = done.stdout.splitlines()
    assert lines[0] == "exit 2", done.stdout + done.stderr
    assert lines[1].endswith(": no space left on device while writing; nothing was changed")
    assert lines[2:] == []


def test_training_on_a_full_disk_stops_with_one_line_and_keeps_the_complete_checkpoint(tiny_model, sample_tokens):
    """Room for one checkpoint of the tiny model (~31 MB: bfloat16 weights and the tokenizer) but not two: the run
    stops at the second save with one line; checkpoint-3 stays complete and the record says failed."""
    args = " ".join(overrides(tiny_model, sample_tokens, Path("$FS/run"), "training_args.save_only_model=true"))
    done = in_small_tmpfs("45m", f"""
        python cli/train_sft.py {args} > /dev/null 2> "$ERR"
        echo "exit $?"; grep "^error" "$ERR"
        python -c "from slamkit.run_folder import checkpoint_is_complete as c; from pathlib import Path; print(c(Path('$FS/run/checkpoint-3')))"
        grep "^status" "$FS/run/slamkit_run.yaml"
    """)
    lines = done.stdout.splitlines()
    assert lines[0] == "exit 2", done.stdout + done.stderr
    assert lines[1].startswith("error: ") and "no space left on device while saving; the run stopped" in lines[1]
    assert lines[2:] == ["True", "status: failed"]


def test_training_into_a_read_only_filesystem_is_one_line(tiny_model, sample_tokens):
    """An output_dir on a read-only filesystem is refused at once, in one line."""
    args = " ".join(overrides(tiny_model, sample_tokens, Path("$FS/run")))
    done = in_small_tmpfs("1m", f"""
        python cli/train_sft.py {args} > /dev/null 2> "$ERR"; echo "exit $?"; grep "^error" "$ERR"
    """, options=",ro")
    lines = done.stdout.splitlines()
    assert lines[0] == "exit 2", done.stdout + done.stderr
    assert lines[1].endswith("/run: cannot use as training_args.output_dir (Read-only file system)")
