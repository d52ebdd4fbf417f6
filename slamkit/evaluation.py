"""Categorical evaluation: the logits of the offered letters at the last prompt position, batched.

Both ``example_arc/eval_arc_base.py`` and ``eval_arc.py`` go through :func:`score_questions`; the validation
accuracy reported during training reads the same position in the training forward pass
(:func:`slamkit.training.answer_predictions`). Prompts come from the one ChatML renderer, so they are exactly
the prefix of the training ids. Every question is scored or the run fails: nothing is skipped, and no accuracy
is reported from logits that are not finite.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from slamkit.chatml import PROMPT_FORMATS, SEED_FORMAT, PromptFormat, encode_prompts, letter_token_ids
from slamkit.data import right_pad
from slamkit.errors import SlamkitError
from slamkit.jsonl import output_set, refuse_input_as_output, write_json_document, write_jsonl_lines
from slamkit.run_folder import RunFolder

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


def questions_from_conversations(
    tokenizer, records: Sequence[dict], names: Sequence[str], fmt: PromptFormat = SEED_FORMAT
) -> list[Question]:
    """Questions from step-1 records (``user_text``, ``assistant_text``, ``choice_labels``), prompts in ``fmt``; a
    letter that is not one token is an error naming its record (``names``)."""
    prompts = encode_prompts(tokenizer, [r["user_text"] for r in records], fmt)
    letter_ids = letter_token_ids(tokenizer, [r["choice_labels"] for r in records], names)
    questions = []
    for record, name, prompt in zip(records, names, prompts, strict=True):  # checked by arc.read_conversations
        letters = record["choice_labels"]
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
    check_ids_fit(model, questions)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = list(range(len(questions)))
    if fast:
        order.sort(key=lambda i: len(questions[i].prompt_ids))
    results: list[Prediction | None] = [None] * len(questions)
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="scoring", unit="batch", disable=not progress):
            batch = [questions[i] for i in order[start : start + batch_size]]
            lengths = [len(q.prompt_ids) for q in batch]
            input_ids = right_pad([q.prompt_ids for q in batch], PAD_ID)
            attention_mask = right_pad([[1] * n for n in lengths], 0)
            keep = sorted({n - 1 for n in lengths}) if fast else list(range(input_ids.shape[1]))
            column = torch.tensor([keep.index(n - 1) for n in lengths])
            # Candidate ids padded with -1 to the batch's widest question; padded slots are masked to -inf.
            candidates = right_pad([q.choice_ids for q in batch], -1).to(device)
            valid = candidates >= 0
            logits = model(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                logits_to_keep=torch.tensor(keep, device=device) if fast else 0,  # 0 = every position
                use_cache=False,
            ).logits
            last = logits[torch.arange(len(batch), device=device), column.to(device)]  # [B, V]
            chosen = last.gather(1, candidates.clamp(min=0)).float()
            finite = (torch.isfinite(chosen) | ~valid).all(dim=1).cpu()
            if not bool(finite.all()):
                bad = batch[int((~finite).nonzero()[0])]
                raise SlamkitError(
                    f"question {bad.id}: the model's letter logits are not finite (nan or inf), so no accuracy is "
                    "reported; its weights are damaged (e.g. a training run that diverged)"
                )
            chosen = chosen.masked_fill(~valid, -math.inf)
            probs = F.softmax(chosen, dim=-1).cpu()
            preds = chosen.argmax(dim=-1).cpu()
            for row, q in enumerate(batch):
                results[order[start + row]] = Prediction(
                    id=q.id, gold=q.gold, pred=int(preds[row]), probs=probs[row, : len(q.choice_ids)].tolist()
                )
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]


def check_ids_fit(model, questions: Sequence[Question]) -> None:
    """Every prompt and candidate id must be a row of the model's embedding table (else the tokenizer is another
    model's): refused, naming the first question, before anything is computed."""
    rows = model.get_input_embeddings().num_embeddings
    for question in questions:
        top = max(max(question.prompt_ids), max(question.choice_ids))
        if top >= rows:
            raise SlamkitError(
                f"question {question.id}: token id {top} is outside the model's {rows:,}-row embedding table: the "
                "tokenizer is not this model's (score with the model's own tokenizer)"
            )


def wilson_interval(correct: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion (sound at small n and near 0 or 1)."""
    if total == 0:
        return (0.0, 1.0)
    p = correct / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def paired_exact_test(before: Sequence[bool], after: Sequence[bool]) -> tuple[int, int, float]:
    """Two scorings of the same questions: ``(lost, won, p)`` with ``lost`` the questions right before and wrong
    after, ``won`` the reverse, and ``p`` the two-sided exact McNemar test (binomial on the discordant pairs): the
    right test for a before/after gain on identical questions, where two separate intervals are too conservative.

    >>> paired_exact_test([True, False, False, False], [True, True, True, False])
    (0, 2, 0.5)
    """
    if len(before) != len(after):
        raise ValueError("the two scorings cover different numbers of questions")
    lost = sum(b and not a for b, a in zip(before, after, strict=True))
    won = sum(a and not b for b, a in zip(before, after, strict=True))
    discordant = lost + won
    tail = sum(math.comb(discordant, i) for i in range(min(lost, won) + 1)) / 2**discordant
    return lost, won, min(1.0, 2 * tail)


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


def first_problems(records: list[dict], max_problems: int | None) -> list[dict]:
    """The first ``max_problems`` records in file order (all when None); an id that repeats among them is refused
    (it would be scored, and counted, twice)."""
    if max_problems is not None and max_problems < 1:
        raise SlamkitError(f"--max_problems must be at least 1, got {max_problems}")
    chosen = records if max_problems is None else records[:max_problems]
    seen: dict[str, str] = {}
    for record in chosen:
        if "id" in record:
            key = str(record["id"])
            if key in seen:
                raise SlamkitError(f"{record['_where']}: duplicate id {key!r} (first at {seen[key]})")
            seen[key] = record["_where"]
    return chosen


def check_eval_arguments(args) -> None:
    """The flags both evaluation scripts share, checked before anything is read."""
    if args.batch_size < 1:
        raise SlamkitError(f"--batch_size must be at least 1, got {args.batch_size}")


def evaluate_categorical(
    model, tokenizer, records: list[dict], batch_size: int, fmt: PromptFormat = SEED_FORMAT
) -> EvalResult:
    """Score step-1 records (from :func:`slamkit.arc.read_conversations`) categorically, prompts in ``fmt``."""
    questions = questions_from_conversations(tokenizer, records, [r["_where"] for r in records], fmt)
    predictions = score_questions(model, questions, batch_size)
    return EvalResult(records=records, predictions=predictions, questions=questions)


def summary_line(correct: int, total: int, label: str = "Correct") -> str:
    """``Correct: 75/94 = 79.79% (95% CI 70.6-86.7%), skipped: 0``: the one line every evaluation ends with.

    ``skipped`` is always 0 (a question that cannot be scored stops the run) and is printed anyway: the
    reference's "100 problems" silently scored 94.
    """
    low, high = wilson_interval(correct, total)
    share = 100 * correct / total if total else float("nan")
    return f"{label}: {correct}/{total} = {share:.2f}% (95% CI {100 * low:.1f}-{100 * high:.1f}%), skipped: 0"


def results_record(result: EvalResult, settings: dict) -> dict:
    """The ``results.json`` document."""
    low, high = wilson_interval(result.correct, result.total)
    return {
        "accuracy": result.correct / result.total if result.total else None,
        "correct": result.correct,
        "total": result.total,
        "skipped": 0,
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
    """The flags both evaluation scripts share (the seed's, plus --device, --dtype, --output_dir, --overwrite)."""
    parser.add_argument("--data_path", default="example_arc/arc_easy_test.jsonl", help="step-1 jsonl to score")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_problems", type=int, default=None, help="score the first N questions (file order)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:1 ...")
    parser.add_argument("--dtype", default="auto", help="auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16")
    parser.add_argument("--output_dir", default=None, help="write results.json, predictions.jsonl, confusion_matrix.png")
    parser.add_argument("--overwrite", action="store_true", help="replace the evaluation already in --output_dir")
    parser.add_argument(
        "--prompt_format", default=None, choices=PROMPT_FORMATS,
        help="categorical prompts: seed (the reference's ChatML) or chat_template (the tokenizer's own, thinking "
        "off); default: the format a checkpoint was trained in (its slamkit_run.yaml), else seed",
    )


EVAL_FILES = ("results.json", "predictions.jsonl", "confusion_matrix.png")


@contextlib.contextmanager
def held_output_dir(output_dir: str | None, overwrite: bool, inputs: Sequence[str | Path]) -> Iterator[None]:
    """The evaluation's ``--output_dir``, held for the whole evaluation with the lock a run folder has, so that a
    second evaluation into it at the same time stops at once, naming the first, and two output sets never
    interleave. Once it is held, before the model is loaded: an evaluation already there is refused unless
    ``overwrite``, and an output that is one of the ``inputs`` (the questions file) always. The lock file, and the
    folder if this evaluation made it and wrote nothing, go when it ends."""
    if output_dir is None:
        yield
        return
    folder = Path(output_dir)
    if folder.exists() and not folder.is_dir():  # before the lock's mkdir, whose error would say less
        raise SlamkitError(f"{folder}: --output_dir is a file, not a folder")
    with RunFolder(folder, key="--output_dir", holder="evaluation") as held:
        held.hold()
        try:
            for name in EVAL_FILES:
                refuse_input_as_output(folder / name, inputs, "--output_dir")
            found = [name for name in EVAL_FILES if (folder / name).exists()]
            if found and not overwrite:
                raise SlamkitError(
                    f"{folder}: already holds an evaluation ({', '.join(found)}); choose another --output_dir, or "
                    "pass --overwrite to replace it"
                )
            yield
        finally:
            held.leave_as_found()


def write_outputs(
    output_dir: str | Path, results: dict, predictions: list[dict], confusion: tuple[list[str], list[str], list[str]] | None
) -> list[str]:
    """Write ``results.json``, ``predictions.jsonl`` and (given ``(gold, pred, letters)``) ``confusion_matrix.png``
    as one set: all of them or, on any error, none (an earlier evaluation's files are replaced together)."""
    from slamkit.plots import plot_confusion_matrix  # matplotlib: imported only when a plot is drawn

    folder = Path(output_dir)
    written = [folder / "results.json", folder / "predictions.jsonl"]
    with output_set() as outputs:
        with outputs.open(folder / "predictions.jsonl") as handle:
            write_jsonl_lines(handle, predictions)
        if confusion is not None:
            gold, pred, letters = confusion
            written.append(plot_confusion_matrix(gold, pred, letters, folder / "confusion_matrix.png",
                                                 title=str(results.get("model", "")), outputs=outputs))
        with outputs.open(folder / "results.json") as handle:
            write_json_document(handle, results)
    for name in EVAL_FILES:  # --overwrite: a file of the earlier evaluation that this one does not write
        if folder / name not in written and (folder / name).exists():
            (folder / name).unlink()
    return [str(path) for path in written]


def write_eval_outputs(output_dir, result: EvalResult, settings: dict) -> list[str]:
    """The categorical evaluation's files (see :func:`write_outputs`)."""
    lines = prediction_records(result)
    letters = sorted({letter for q in result.questions for letter in q.letters})
    confusion = ([line["gold"] for line in lines], [line["pred"] for line in lines], letters)
    return write_outputs(output_dir, results_record(result, settings), lines, confusion)


def eval_settings(
    model: str, tokenizer: str, data_path: str, scoring: str, batch_size: int, max_problems: int | None,
    device: torch.device, dtype: torch.dtype, fmt: PromptFormat | None = None,
) -> dict:
    """What ``results.json`` records about how the figure was produced (``fmt``: the categorical prompt format)."""
    settings = {
        "model": model, "tokenizer": tokenizer, "data_path": data_path, "scoring": scoring, "batch_size": batch_size,
        "max_problems": max_problems, "device": str(device), "dtype": str(dtype).removeprefix("torch."),
    }
    if fmt is not None:
        settings.update(prompt_format=fmt.name, prompt=fmt.prompt("{user_text}"))
    return settings


def run_categorical(
    model, tokenizer, records: list[dict], settings: dict, output_dir: str | None, fmt: PromptFormat = SEED_FORMAT
) -> tuple[EvalResult, list[str]]:
    """Score ``records`` with prompts in ``fmt`` and write the outputs; return the result and the lines a script
    prints."""
    start = time.perf_counter()
    result = evaluate_categorical(model, tokenizer, records, settings["batch_size"], fmt)
    shown = "" if fmt.name == "seed" else f", prompt format {fmt.name}"
    lines = [
        f"{settings['model']} on {settings['data_path']}: {result.total} questions, {settings['device']} "
        f"{settings['dtype']}{shown}, {time.perf_counter() - start:.1f} s",
        summary_line(result.correct, result.total),
    ]
    if output_dir:
        lines += [f"wrote {path}" for path in write_eval_outputs(output_dir, result, settings)]
    return result, lines
