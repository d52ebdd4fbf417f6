"""Categorical evaluation: the logits of the offered letters at the last prompt position, batched.

Both ``example_arc/eval_arc_base.py`` and ``eval_arc.py``, and the validation accuracy reported during
training, go through :func:`score_questions`. Prompts come from the one ChatML renderer, so they are exactly
the prefix of the training ids. Every question is scored or the run fails: nothing is skipped silently.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from slamkit.chatml import encode_prompts, letter_token_ids
from slamkit.data import TokenRow
from slamkit.errors import SlamkitError
from slamkit.jsonl import write_json, write_jsonl

log = logging.getLogger(__name__)

PAD_ID = 0  # right padding is masked and never attended by real tokens under causal attention: any id works


@dataclass(frozen=True)
class Question:
    """One prompt to score: its ids, the candidate ids (one per offered letter) and the gold candidate index."""

    id: str
    prompt_ids: list[int]
    choice_ids: list[int]
    gold: int
    letters: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Prediction:
    id: str
    gold: int
    pred: int
    probs: list[float]  # softmax over the offered letters only

    @property
    def correct(self) -> bool:
        return self.gold == self.pred


def questions_from_conversations(tokenizer, records: Sequence[dict], names: Sequence[str]) -> list[Question]:
    """Questions from step-1 records (``user_text``, ``assistant_text``, ``choice_labels``), checked."""
    prompts = encode_prompts(tokenizer, [r["user_text"] for r in records])
    letter_ids = letter_token_ids(tokenizer, [r["choice_labels"] for r in records], names)
    questions = []
    for record, name, prompt in zip(records, names, prompts, strict=True):
        letters = record["choice_labels"]
        if len(set(letters)) != len(letters):
            raise SlamkitError(f"{name}: repeated letters in choice_labels {letters}")
        if record["assistant_text"] not in letters:
            raise SlamkitError(f"{name}: answer {record['assistant_text']!r} is not among choice_labels {letters}")
        questions.append(
            Question(
                id=str(record.get("id", name)),
                prompt_ids=list(prompt),
                choice_ids=[letter_ids[x] for x in letters],
                gold=letters.index(record["assistant_text"]),
                letters=list(letters),
            )
        )
    return questions


def questions_from_token_rows(rows: Sequence[TokenRow]) -> list[Question]:
    """Questions from step-2 rows that carry ``choice_ids``: the prompt is everything before the first label."""
    questions = []
    for index, row in enumerate(rows):
        if row.choice_ids is None:
            raise ValueError(f"row {index} has no choice_ids")
        cut = row.prompt_length
        questions.append(
            Question(
                id=row.id or f"row {index}",
                prompt_ids=row.input_ids[:cut],
                choice_ids=list(row.choice_ids),
                gold=row.choice_ids.index(row.input_ids[cut]),
            )
        )
    return questions


@torch.no_grad()
def score_questions(
    model,
    questions: Sequence[Question],
    batch_size: int,
    progress: bool = True,
    fast: bool = True,
) -> list[Prediction]:
    """Predict each question's letter: argmax over its candidates of the logits after the last prompt token.

    Fast path (default): prompts are sorted by length and right-padded per batch (little padding), and the
    LM head runs only at the distinct last-prompt positions of a batch (``logits_to_keep``). ``fast=False``
    is the straightforward path (file order, full logits at every position), kept for the benchmark and the
    exactness tests. Results do not depend on ``batch_size`` or the path (up to float rounding of the
    kernels). Returned in input order.
    """
    if batch_size < 1:
        raise SlamkitError(f"batch size must be at least 1, got {batch_size}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = list(range(len(questions)))
    if fast:
        order.sort(key=lambda i: len(questions[i].prompt_ids))
    widest = max((len(q.choice_ids) for q in questions), default=0)
    results: list[Prediction | None] = [None] * len(questions)
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="scoring", unit="batch", disable=not progress):
            batch = [questions[i] for i in order[start : start + batch_size]]
            lengths = [len(q.prompt_ids) for q in batch]
            width = max(lengths)
            input_ids = torch.full((len(batch), width), PAD_ID, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, q in enumerate(batch):
                input_ids[row, : lengths[row]] = torch.tensor(q.prompt_ids)
                attention_mask[row, : lengths[row]] = 1
            keep = sorted({n - 1 for n in lengths}) if fast else list(range(width))
            column = torch.tensor([keep.index(n - 1) for n in lengths])
            # Candidate ids padded to the widest question; padded slots are masked to -inf.
            candidates = torch.zeros((len(batch), widest), dtype=torch.long)
            valid = torch.zeros((len(batch), widest), dtype=torch.bool)
            for row, q in enumerate(batch):
                candidates[row, : len(q.choice_ids)] = torch.tensor(q.choice_ids)
                valid[row, : len(q.choice_ids)] = True
            logits = model(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                logits_to_keep=torch.tensor(keep, device=device) if fast else 0,  # 0 = every position
                use_cache=False,
            ).logits
            last = logits[torch.arange(len(batch), device=device), column.to(device)]  # [B, V]
            chosen = last.gather(1, candidates.to(device)).float().masked_fill(~valid.to(device), -math.inf)
            probs = F.softmax(chosen, dim=-1).cpu()
            preds = chosen.argmax(dim=-1).cpu()
            for row, q in enumerate(batch):
                results[order[start + row]] = Prediction(
                    id=q.id, gold=q.gold, pred=int(preds[row]), probs=probs[row, : len(q.choice_ids)].tolist()
                )
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]


def wilson_interval(correct: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion (sound at small n and near 0 or 1)."""
    if total == 0:
        return (0.0, 1.0)
    p = correct / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def accuracy(predictions: Sequence[Prediction]) -> float:
    return sum(p.correct for p in predictions) / len(predictions) if predictions else float("nan")


@dataclass
class EvalResult:
    """What an evaluation run scored, in file order."""

    records: list[dict]  # the step-1 records asked for (the first max_problems of the file)
    predictions: list[Prediction]
    questions: list[Question]

    @property
    def total(self) -> int:
        return len(self.records)

    @property
    def correct(self) -> int:
        return sum(p.correct for p in self.predictions)

    @property
    def skipped(self) -> int:
        return self.total - len(self.predictions)


def first_problems(records: list[dict], max_problems: int | None) -> list[dict]:
    """The first ``max_problems`` records in file order (all when None)."""
    if max_problems is not None and max_problems < 1:
        raise SlamkitError(f"--max_problems must be at least 1, got {max_problems}")
    return records if max_problems is None else records[:max_problems]


def evaluate_categorical(model, tokenizer, records: list[dict], batch_size: int) -> EvalResult:
    """Score step-1 records (from :func:`slamkit.arc.read_conversations`) categorically."""
    questions = questions_from_conversations(tokenizer, records, [r["_where"] for r in records])
    predictions = score_questions(model, questions, batch_size)
    return EvalResult(records=records, predictions=predictions, questions=questions)


def summary_line(correct: int, total: int, skipped: int, label: str = "Correct") -> str:
    """``Correct: 75/94 = 79.79% (95% CI 70.6–86.7%), skipped: 0`` — the one line every evaluation ends with."""
    low, high = wilson_interval(correct, total)
    share = 100 * correct / total if total else float("nan")
    return f"{label}: {correct}/{total} = {share:.2f}% (95% CI {100 * low:.1f}-{100 * high:.1f}%), skipped: {skipped}"


def results_record(result: EvalResult, settings: dict) -> dict:
    """The ``results.json`` document."""
    low, high = wilson_interval(result.correct, result.total)
    return {
        "accuracy": result.correct / result.total if result.total else None,
        "correct": result.correct,
        "total": result.total,
        "skipped": result.skipped,
        "ci95": [low, high],
        **settings,
    }


def prediction_records(result: EvalResult) -> list[dict]:
    """One ``predictions.jsonl`` line per question: id, gold and predicted letter, probability of each letter."""
    lines = []
    for question, prediction in zip(result.questions, result.predictions, strict=True):
        lines.append(
            {
                "id": question.id,
                "gold": question.letters[prediction.gold],
                "pred": question.letters[prediction.pred],
                "correct": prediction.correct,
                "probs": {letter: round(p, 6) for letter, p in zip(question.letters, prediction.probs, strict=True)},
            }
        )
    return lines


def add_eval_arguments(parser) -> None:
    """The flags both evaluation scripts share (the seed's, plus --dtype and --output_dir)."""
    parser.add_argument("--data_path", default="example_arc/arc_easy_test.jsonl", help="step-1 jsonl to score")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_problems", type=int, default=None, help="score the first N questions (file order)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:1 ...")
    parser.add_argument("--dtype", default="auto", help="auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16")
    parser.add_argument("--output_dir", default=None, help="write results.json, predictions.jsonl, confusion_matrix.png")


def write_eval_outputs(output_dir, result: EvalResult, settings: dict) -> list[str]:
    """Write results.json, predictions.jsonl and confusion_matrix.png (each atomically); return their paths."""
    from slamkit.plots import (
        plot_confusion_matrix,  # matplotlib: imported only when a plot is drawn
    )

    folder = Path(output_dir)
    lines = prediction_records(result)
    write_json(folder / "results.json", results_record(result, settings))
    write_jsonl(folder / "predictions.jsonl", lines)
    letters = sorted({letter for q in result.questions for letter in q.letters})
    plot_confusion_matrix(
        [line["gold"] for line in lines], [line["pred"] for line in lines], letters,
        folder / "confusion_matrix.png", title=str(settings.get("model", "")),
    )
    return [str(folder / name) for name in ("results.json", "predictions.jsonl", "confusion_matrix.png")]


def eval_settings(
    model: str, tokenizer: str, data_path: str, scoring: str, batch_size: int, max_problems: int | None,
    device: torch.device, dtype: torch.dtype,
) -> dict:
    """What ``results.json`` records about how the figure was produced."""
    return {
        "model": model, "tokenizer": tokenizer, "data_path": data_path, "scoring": scoring, "batch_size": batch_size,
        "max_problems": max_problems, "device": str(device), "dtype": str(dtype).removeprefix("torch."),
    }


def run_categorical(
    model, tokenizer, records: list[dict], settings: dict, output_dir: str | None
) -> tuple[EvalResult, list[str]]:
    """Score ``records`` and write the outputs; return the result and the lines a script prints."""
    start = time.perf_counter()
    result = evaluate_categorical(model, tokenizer, records, settings["batch_size"])
    lines = [
        f"{settings['model']} on {settings['data_path']}: {result.total} questions, {settings['device']} "
        f"{settings['dtype']}, {time.perf_counter() - start:.1f} s",
        summary_line(result.correct, result.total, result.skipped),
    ]
    if output_dir:
        lines += [f"wrote {path}" for path in write_eval_outputs(output_dir, result, settings)]
    return result, lines
