"""Real weights (SmolLM2-135M-Instruct): cloze scores equal lm-evaluation-harness's question by question, and
"use your own model" (re-tokenize, train, score) works on a non-Qwen architecture and ChatML tokenizer.

Marked slow: not in the default suite. Run with ``python -m pytest -m slow`` after building the model
(``python ../shared/tools/real_model.py ~/.cache/slamkit/smollm2-135m-instruct``, or point SLAMKIT_REAL_MODEL at
any folder it wrote). The harness comparison also needs lm-evaluation-harness: ``lm_eval`` importable here, or
SLAMKIT_LM_EVAL naming an ``lm_eval`` executable (e.g. in a separate venv). Each part skips cleanly without them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import OFFLINE_ENV, load_script, run_cli

pytestmark = pytest.mark.slow

QUESTIONS = 100  # the first N test questions, in file order


@pytest.fixture(scope="module")
def real_model() -> Path:
    folder = Path(os.environ.get("SLAMKIT_REAL_MODEL", Path.home() / ".cache" / "slamkit" / "smollm2-135m-instruct"))
    if not (folder / "config.json").is_file():
        pytest.skip(f"no real model at {folder} (build it with ../shared/tools/real_model.py, or set SLAMKIT_REAL_MODEL)")
    return folder


@pytest.fixture(scope="module")
def arc_test(arc_easy_dir, tmp_path_factory) -> Path:
    """Step 1 on the full ARC-Easy: its test split (2,376 questions)."""
    out = tmp_path_factory.mktemp("arc")
    assert load_script("example_arc/prepare_arc_data.py").main(["--source", str(arc_easy_dir), "--output_dir", str(out)]) == 0
    return out


def lm_eval_command() -> list[str]:
    explicit = os.environ.get("SLAMKIT_LM_EVAL")
    if explicit:
        return [explicit]
    if shutil.which("lm_eval"):
        return ["lm_eval"]
    pytest.skip("lm-evaluation-harness not found (pip install lm_eval, or set SLAMKIT_LM_EVAL to its lm_eval)")


def harness_per_question(real_model: Path, arc_easy_dir: Path, out: Path) -> list[dict]:
    """The harness's arc_easy (its prompt, choices and metrics, verbatim) on the local test file, first N questions."""
    tasks = out / "tasks"
    tasks.mkdir(parents=True)
    (tasks / "arc_easy_local.yaml").write_text(f"""task: arc_easy_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {arc_easy_dir / 'ARC-Easy-test.jsonl'}
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{choices.label.index(answerKey)}}}}"
doc_to_choice: "{{{{choices.text}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
""")
    done = subprocess.run(
        [*lm_eval_command(), "run", "--model", "hf", "--model_args", f"pretrained={real_model},dtype=float32",
         "--include_path", str(tasks), "--tasks", "arc_easy_local", "--device", "cpu", "--batch_size", "16",
         "--limit", str(QUESTIONS), "--log_samples", "--output_path", str(out / "results")],
        capture_output=True, text=True, timeout=3600, env={**os.environ, **OFFLINE_ENV},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    samples = next((out / "results").rglob("samples_arc_easy_local_*.jsonl"))
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    return sorted(rows, key=lambda row: row["doc_id"])


def test_cloze_acc_and_acc_norm_equal_the_harness_question_by_question(real_model, arc_easy_dir, arc_test, tmp_path):
    """On the first 100 test questions every question's acc and acc_norm (0 or 1) is the harness's, and every
    choice's log-likelihood agrees within 1e-4 (float32 kernels differ with batch composition)."""
    harness = harness_per_question(real_model, arc_easy_dir, tmp_path / "harness")
    out = tmp_path / "ours"
    assert load_script("example_arc/eval_arc_base.py").main([
        "--model_name", str(real_model), "--data_path", str(arc_test / "arc_easy_test.jsonl"), "--scoring", "cloze",
        "--max_problems", str(QUESTIONS), "--device", "cpu", "--output_dir", str(out),
    ]) == 0
    ours = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(ours) == len(harness) == QUESTIONS
    for mine, theirs in zip(ours, harness, strict=True):
        assert mine["id"] == theirs["doc"]["id"]
        assert (mine["pred"] == mine["gold"]) == bool(theirs["acc"])
        assert (mine["pred_norm"] == mine["gold"]) == bool(theirs["acc_norm"])
        lls = [float(response[0]) for response in theirs["filtered_resps"]]  # (log-likelihood, is greedy)
        assert list(mine["loglik"].values()) == pytest.approx(lls, abs=1e-4)


def test_use_your_own_model_retokenize_train_and_score(real_model, arc_test, tmp_path, capsys):
    """The README's recipe on a non-Qwen model: rows made with the Qwen tokenizer are refused with the line saying
    what to re-run; re-tokenized with the model's own tokenizer they train (2 steps) and the result scores."""
    step2 = load_script("example_arc/prepare_arc_tokens.py")
    few = tmp_path / "train.jsonl"
    few.write_text("".join((arc_test / "arc_easy_train.jsonl").read_text().splitlines(keepends=True)[:32]))
    qwen_rows, own_rows = tmp_path / "qwen_tokens.jsonl", tmp_path / "own_tokens.jsonl"
    qwen = Path(load_script("cli/train_sft.py").__file__).parents[1] / "example_arc" / "sample" / "qwen_tokenizer"
    assert step2.main(["--data_path", str(few), "--out_path", str(qwen_rows), "--tokenizer", str(qwen)]) == 0
    args = [f"model.base_model_name={real_model}", "data.val_path=null", "training_args.eval_strategy=no",
            "training_args.max_steps=2", "training_args.bf16=false", "training_args.save_strategy=no"]
    code, _, err = run_cli(f"data.train_path={qwen_rows}", f"training_args.output_dir={tmp_path / 'refused'}", *args)
    assert code == 2 and err.splitlines()[-1] == (
        f"error: {qwen_rows}:1: token id 151645 is outside the model's 49,152-row embedding table: these rows were "
        "made with another model's tokenizer; re-run prepare_arc_tokens.py with --tokenizer set to this model"
    )
    assert step2.main(["--data_path", str(few), "--out_path", str(own_rows), "--tokenizer", str(real_model)]) == 0
    code, out, err = run_cli(f"data.train_path={own_rows}", f"training_args.output_dir={tmp_path / 'model'}", *args)
    assert code == 0, (out + err)[-3000:]
    capsys.readouterr()
    assert load_script("example_arc/eval_arc.py").main([
        "--model_path", str(tmp_path / "model"), "--data_path", str(arc_test / "arc_easy_test.jsonl"),
        "--max_problems", "16", "--device", "cpu",
    ]) == 0
    assert "Correct: " in capsys.readouterr().out
