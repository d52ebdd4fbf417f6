"""Step 4: categorical scoring reads the letter logits after the exact training prompt, scores every question."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import build_tiny_qwen3
from test_bad_input import fails
from transformers import AutoModelForCausalLM, AutoTokenizer

from slamkit.arc import read_conversations
from slamkit.chatml import encode_examples, single_token_ids
from slamkit.cloze import cloze_context, score_cloze
from slamkit.errors import SlamkitError
from slamkit.evaluation import (
    questions_from_conversations,
    score_questions,
    summary_line,
    wilson_interval,
)


@pytest.fixture(scope="module")
def sample_test(sample_step1) -> Path:
    """Step-1 output of the bundled sample's 200 test questions (numeric labels, 3 and 5 choices)."""
    return sample_step1 / "arc_easy_test.jsonl"


@pytest.fixture(scope="module")
def tiny(tiny_model) -> Path:
    return tiny_model


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model):
    return AutoModelForCausalLM.from_pretrained(tiny_model).eval(), AutoTokenizer.from_pretrained(tiny_model)


def test_prompt_ids_are_exactly_the_prefix_of_the_training_ids(sample_test, model_and_tokenizer):
    """For every sample question, the scored prompt is the training example minus its supervised tail, and the
    gold candidate id is the first supervised id."""
    _, tokenizer = model_and_tokenizer
    records = read_conversations(sample_test, require_choices=True)
    questions = questions_from_conversations(tokenizer, records, [r["_where"] for r in records])
    examples = encode_examples(tokenizer, [r["user_text"] for r in records], [r["assistant_text"] for r in records])
    for question, example in zip(questions, examples, strict=True):
        n = len(question.prompt_ids)
        assert example.input_ids[:n] == question.prompt_ids and example.prompt_length == n
        assert example.input_ids[n:] == [question.choice_ids[question.gold], 151645]


def test_prediction_is_the_argmax_of_the_offered_letters_at_the_last_prompt_position(sample_test, model_and_tokenizer):
    """The prediction equals the argmax, over the offered letters only, of a plain full forward's last logits."""
    model, tokenizer = model_and_tokenizer
    records = read_conversations(sample_test, require_choices=True)[:12]
    questions = questions_from_conversations(tokenizer, records, [r["_where"] for r in records])
    for question, prediction in zip(questions, score_questions(model, questions, 5, progress=False), strict=True):
        with torch.no_grad():
            last = model(torch.tensor([question.prompt_ids])).logits[0, -1]
        expected = torch.softmax(last[question.choice_ids], dim=-1)
        assert prediction.pred == int(expected.argmax())
        assert prediction.probs == pytest.approx(expected.tolist(), abs=1e-5)


def test_eval_script_scores_every_question_and_writes_results(sample_test, tiny, tmp_path, load_script, capsys):
    """eval_arc.py scores all 200 sample questions (numeric labels, 3 and 5 choices): total 200, skipped 0,
    one predictions line per question with a probability per offered letter, and a summary line."""
    out = tmp_path / "eval"
    code = load_script("example_arc/eval_arc.py").main(
        ["--model_path", str(tiny), "--data_path", str(sample_test), "--batch_size", "16", "--output_dir", str(out)]
    )
    printed = capsys.readouterr().out
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["total"] == 200 and results["skipped"] == 0 and 0 <= results["correct"] <= 200
    assert results["accuracy"] == results["correct"] / 200 and len(results["ci95"]) == 2
    assert f"Correct: {results['correct']}/200 = " in printed and "skipped: 0" in printed
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    records = read_conversations(sample_test)
    assert [x["id"] for x in lines] == [r["id"] for r in records]
    for line, record in zip(lines, records, strict=True):
        assert list(line["probs"]) == record["choice_labels"] and line["gold"] == record["assistant_text"]
        assert math.isclose(sum(line["probs"].values()), 1.0, abs_tol=1e-4)
    assert {len(r["choice_labels"]) for r in records} == {3, 4, 5}
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_seed_smoke_command_scores_the_first_100_in_file_order(sample_test, tiny, tmp_path, load_script, capsys):
    """The seed's `eval_arc_base.py ... --batch_size 16 --max_problems 100` (local model; in-process, as its
    __main__ runs it: bench/gpu_check.py's test runs step 4 as a process) scores exactly the first 100
    questions, 6 of them with numeric labels, and exits 0; results.json counts the float32 ties ("ties", and
    "ties_norm" for cloze scoring) and each predictions line says whether it is one ("tie")."""
    out = tmp_path / "base"
    code = load_script("example_arc/eval_arc_base.py").main(
        ["--model_name", str(tiny), "--data_path", str(sample_test), "--batch_size", "16", "--max_problems", "100",
         "--output_dir", str(out)]
    )
    printed = capsys.readouterr().out
    assert code == 0 and "/100 = " in printed and "skipped: 0" in printed
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines] == [r["id"] for r in read_conversations(sample_test)[:100]]
    # float32 ties are counted, not hidden: results.json's "ties" is the number of lines with "tie": true
    results = json.loads((out / "results.json").read_text())
    assert all(isinstance(line["tie"], bool) for line in lines)
    assert type(results["ties"]) is int and results["ties"] == sum(line["tie"] for line in lines)
    cloze = tmp_path / "cloze"
    assert load_script("example_arc/eval_arc_base.py").main(
        ["--model_name", str(tiny), "--data_path", str(sample_test), "--scoring", "cloze", "--max_problems", "8",
         "--output_dir", str(cloze)]
    ) == 0
    results = json.loads((cloze / "results.json").read_text())
    assert type(results["ties"]) is int and type(results["ties_norm"]) is int and results["total"] == 8


def test_checkpoint_without_tokenizer_falls_back_and_says_so(sample_test, tiny, tmp_path, load_script, capsys):
    """A model folder with no tokenizer files is scored with --tokenizer, and the script says so."""
    bare = tmp_path / "bare"
    AutoModelForCausalLM.from_pretrained(tiny).save_pretrained(bare)
    code = load_script("example_arc/eval_arc.py").main(
        ["--model_path", str(bare), "--tokenizer", str(tiny), "--data_path", str(sample_test), "--max_problems", "5"]
    )
    assert code == 0
    assert f"note: {bare} has no tokenizer; using --tokenizer {tiny}" in capsys.readouterr().out


def test_multi_token_or_unknown_letter_is_an_error(model_and_tokenizer, plain_tokenizer):
    """A choice letter that is several tokens, or absent from the vocabulary, stops scoring with an error."""
    _, tokenizer = model_and_tokenizer
    with pytest.raises(SlamkitError, match=r"'\(A\)' is 2 tokens"):
        single_token_ids(tokenizer, ["B", "(A)"])
    with pytest.raises(SlamkitError, match="'E' is not in the vocabulary"):
        single_token_ids(plain_tokenizer, ["A", "E"])


def test_cloze_loglik_is_the_sum_of_continuation_token_logprobs(sample_test, model_and_tokenizer):
    """Cloze scoring gives each choice the summed log-probability of ' {text}' after 'Question: …\\nAnswer:'."""
    model, tokenizer = model_and_tokenizer
    records = read_conversations(sample_test, require_choices=True)[:4]
    predictions = score_cloze(model, tokenizer, records, batch_size=5, progress=False)
    for record, prediction in zip(records, predictions, strict=True):
        context = tokenizer(cloze_context(record["question"]), add_special_tokens=False)["input_ids"]
        for text, value in zip(record["choice_texts"], prediction.loglik, strict=True):
            continuation = tokenizer(f" {text}", add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logprobs = torch.log_softmax(model(torch.tensor([context + continuation])).logits[0], dim=-1)
            expected = sum(float(logprobs[len(context) + i - 1, t]) for i, t in enumerate(continuation))
            assert value == pytest.approx(expected, abs=1e-4)
        assert prediction.gold == record["choice_labels"].index(record["assistant_text"])


def test_wilson_interval_and_summary_line():
    """The 95% Wilson interval of 75/94 is 70.6-86.7% and the summary line states correct/total and skipped."""
    low, high = wilson_interval(75, 94)
    assert (round(100 * low, 1), round(100 * high, 1)) == (70.6, 86.7)
    assert summary_line(75, 94) == "Correct: 75/94 = 79.79% (95% CI 70.6-86.7%), skipped: 0"
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_acc_norm_divides_by_the_choice_text_without_the_joining_space():
    """lm-evaluation-harness's acc_norm: log-likelihood / len(choice text), the space that joins it to the context not
    counted. A hand-made case where the two conventions pick different choices: -3.0 over "ab" (2 characters) and
    -4.4 over "abc" (3): per character -1.5 vs -1.467, so "abc" wins; counting the space, -1.0 vs -1.1, "ab" would."""
    from slamkit.cloze import ClozePrediction

    prediction = ClozePrediction(id="q", gold=1, loglik=[-3.0, -4.4], lengths=[len("ab"), len("abc")])
    assert prediction.pred_norm == 1
    assert max(range(2), key=lambda i: prediction.loglik[i] / (prediction.lengths[i] + 1)) == 0  # the other convention
    assert prediction.pred == 0  # acc: the larger log-likelihood
    tie = ClozePrediction(id="t", gold=0, loglik=[-2.0, -2.0, -1.0], lengths=[2, 2, 1])
    assert (tie.pred, tie.pred_norm) == (2, 0)  # per character all three are -1.0: a tie goes to the first choice


def test_cloze_pairs_are_split_as_the_harness_splits_them(qwen_tokenizer):
    """encode_pairs encodes context + continuation as one string and takes what follows the context's own encoding;
    a context's trailing spaces move to the continuation first."""
    from slamkit.cloze import encode_pairs

    context, continuation = "Question: What is H2O?\nAnswer:", " water"
    ((head, tail),) = encode_pairs(qwen_tokenizer, [context], [continuation])
    whole = qwen_tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    assert head == qwen_tokenizer(context, add_special_tokens=False)["input_ids"] and head + tail == whole
    ((head, tail),) = encode_pairs(qwen_tokenizer, ["Answer: "], ["water"])
    assert head == qwen_tokenizer("Answer:", add_special_tokens=False)["input_ids"]
    assert tail == qwen_tokenizer("Answer: water", add_special_tokens=False)["input_ids"][len(head):]


def test_a_question_longer_than_the_models_context_is_refused_naming_it(sample_test, load_script, tmp_path, capsys):
    """A model with a 160-token context and a question whose prompt is longer: eval_arc_base.py stops with one line
    naming that question's id and the context (positions it was never trained on would be scored) and writes nothing."""
    context = 160
    model = build_tiny_qwen3(tmp_path / "short_context", max_position_embeddings=context)
    short, long = (json.loads(line) for line in sample_test.read_text().splitlines()[:2])
    long["user_text"] = long["user_text"].replace("\n", " " + "and then some more words " * 30 + "\n", 1)
    data = tmp_path / "questions.jsonl"
    data.write_text(json.dumps(short) + "\n" + json.dumps(long) + "\n")
    tokenizer = AutoTokenizer.from_pretrained(model)
    lengths = [len(tokenizer(record["user_text"])["input_ids"]) for record in (short, long)]
    assert lengths[0] < context - 20 and lengths[1] > context  # the ChatML wrapper adds fewer than 20 tokens
    out = tmp_path / "eval"
    argv = ["--model_name", str(model), "--data_path", str(data), "--device", "cpu", "--dtype", "float32",
            "--output_dir", str(out)]
    line = fails(capsys, lambda: load_script("example_arc/eval_arc_base.py").main(argv), after_bar="Loading weights")
    assert line.startswith(f"error: question {long['id']}: ") and str(context) in line
    assert not out.exists()
