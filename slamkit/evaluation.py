"""Categorical evaluation: the logits of the offered letters at the last prompt position, batched.

Both ``example_arc/eval_arc_base.py`` and ``eval_arc.py`` go through :func:`score_questions`; the validation
accuracy reported during training reads the same position in the training forward pass
(:func:`slamkit.training.answer_predictions`). Prompts come from the one ChatML renderer, so they are exactly
the prefix of the training ids. The letters' logits are float32 whatever dtype the model runs in
(:func:`slamkit.model.head_logits`). Every question is scored or the run fails: nothing is skipped, and no accuracy is reported
from logits that are not finite.
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

from slamkit.arc import read_conversations
from slamkit.chatml import PROMPT_FORMATS, SEED_FORMAT, PromptFormat, encode_prompts, letter_token_ids, prompt_format
from slamkit.cloze import score_cloze
from slamkit.data import right_pad
from slamkit.errors import SlamkitError
from slamkit.jsonl import output_set, refuse_input_as_output, write_json_document, write_jsonl_lines
from slamkit.model import choose_device, choose_dtype, head_logits, load_causal_lm, load_tokenizer
from slamkit.run_folder import RunFolder, check_run_finished, read_record

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
    tie: bool = False  # the best letter logit is shared even in float32 (pred is the first of them)

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


def letter_choice(logits: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(pred, probs, tie)`` from float32 letter logits [N, C] (``valid``: the offered slots): the argmax, the softmax
    over the offered letters, and whether the best value is shared (a tie that float32 cannot break: reported, and
    given to the first of the tied letters)."""
    logits = logits.masked_fill(~valid, -math.inf)
    best = logits.max(dim=1, keepdim=True).values
    return logits.argmax(dim=1), F.softmax(logits, dim=1), (logits == best).sum(dim=1) > 1


@torch.no_grad()
def score_questions(
    model,
    questions: Sequence[Question],
    batch_size: int,
    progress: bool = True,
    fast: bool = True,
) -> list[Prediction]:
    """Predict each question's letter: argmax over its candidates of the float32 logits after the last prompt token.

    The decoder runs in the model's dtype; the offered letters' logits are computed in float32 from its final hidden
    state at the last prompt position (:func:`slamkit.model.head_logits`), so a bfloat16 model picks what float32 picks. Fast path
    (default): prompts sorted by length and right-padded per batch (little padding), the LM head only for the offered
    letters. ``fast=False`` is the straightforward path the benchmark and the exactness tests compare against: file
    order, and the model's own forward with logits at every position (the letters still scored in float32). Results
    do not depend on ``batch_size`` or the path (up to float rounding of the kernels). Returned in input order.
    """
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
            lengths = torch.tensor([len(q.prompt_ids) for q in batch], device=device)
            inputs = {
                "input_ids": right_pad([q.prompt_ids for q in batch], PAD_ID).to(device),
                "attention_mask": right_pad([[1] * len(q.prompt_ids) for q in batch], 0).to(device),
                "use_cache": False,
            }
            if fast:  # the decoder alone: the hidden states the LM head reads
                hidden = model.get_decoder()(**inputs).last_hidden_state
            else:
                hidden = model(**inputs, output_hidden_states=True).hidden_states[-1]
            last = hidden[torch.arange(len(batch), device=device), lengths - 1]  # [B, H]
            # Candidate ids padded with -1 to the batch's widest question; padded slots are masked.
            candidates = right_pad([q.choice_ids for q in batch], -1).to(device)
            valid = candidates >= 0
            chosen = head_logits(model, last, candidates.clamp(min=0))
            finite = (torch.isfinite(chosen) | ~valid).all(dim=1).cpu()
            if not bool(finite.all()):
                bad = batch[int((~finite).nonzero()[0])]
                raise SlamkitError(
                    f"question {bad.id}: the model's letter logits are not finite (nan or inf), so no accuracy is "
                    "reported; its weights are damaged (e.g. a training run that diverged)"
                )
            preds, probs, ties = (t.cpu() for t in letter_choice(chosen, valid))
            for row, q in enumerate(batch):
                results[order[start + row]] = Prediction(
                    id=q.id, gold=q.gold, pred=int(preds[row]), probs=probs[row, : len(q.choice_ids)].tolist(),
                    tie=bool(ties[row]),
                )
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]


def check_ids_fit(model, questions: Sequence[Question]) -> None:
    """Every prompt must fit the model: its ids and the candidates' are rows of the embedding table (else the
    tokenizer is another model's), and it is no longer than the model's context (as training refuses such rows):
    refused, naming the first question, before anything is computed."""
    rows = model.get_input_embeddings().num_embeddings
    context = getattr(model.config, "max_position_embeddings", None)
    for question in questions:
        top = max(max(question.prompt_ids), max(question.choice_ids))
        if top >= rows:
            raise SlamkitError(
                f"question {question.id}: token id {top} is outside the model's {rows:,}-row embedding table: the "
                "tokenizer is not this model's (score with the model's own tokenizer)"
            )
        if context is not None and len(question.prompt_ids) > context:
            raise SlamkitError(
                f"question {question.id}: its prompt is {len(question.prompt_ids):,} tokens, longer than the model's "
                f"context of {context:,}: it cannot be scored (drop it from --data_path)"
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


def summary_line(correct: int, total: int, label: str = "Correct") -> str:
    """``Correct: 75/94 = 79.79% (95% CI 70.6-86.7%), skipped: 0``: the one line every evaluation ends with.

    ``skipped`` is always 0 (a question that cannot be scored stops the run) and is printed anyway: the
    reference's "100 problems" silently scored 94.
    """
    low, high = wilson_interval(correct, total)
    share = 100 * correct / total if total else float("nan")
    return f"{label}: {correct}/{total} = {share:.2f}% (95% CI {100 * low:.1f}-{100 * high:.1f}%), skipped: 0"


def add_eval_arguments(parser) -> None:
    """The flags both evaluation scripts share (the seed's, plus --scoring, --device, --dtype, --output_dir, ...)."""
    parser.add_argument("--data_path", default="example_arc/arc_easy_test.jsonl", help="step-1 jsonl to score")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_problems", type=int, default=None, help="score the first N questions (file order)")
    parser.add_argument(
        "--scoring", default="categorical", choices=["categorical", "cloze"],
        help="categorical: the offered letters' logits after the ChatML prompt; cloze: log-likelihood of each "
        "choice's text after 'Question: ...\\nAnswer:', acc and acc_norm as lm-evaluation-harness's arc_easy",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:1 ...")
    parser.add_argument("--dtype", default="auto", help="auto (= float32: the figures of a float32 scorer), float32, "
                        "bfloat16 (faster on GPUs; the letters are still compared in float32, but bfloat16 hidden "
                        "states can move a near-tie)")
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
    output_dir: str | Path, results: dict, predictions: list[dict], confusion: tuple[list[str], list[str], list[str]]
) -> list[str]:
    """Write ``results.json``, ``predictions.jsonl`` and ``confusion_matrix.png`` (of ``(gold, pred, letters)``) as
    one set: all of them or, on any error, none (an earlier evaluation's files are replaced together)."""
    from slamkit.plots import plot_confusion_matrix  # matplotlib: imported only when a plot is drawn

    folder = Path(output_dir)
    with output_set() as outputs:
        with outputs.open(folder / "predictions.jsonl") as handle:
            write_jsonl_lines(handle, predictions)
        gold, pred, letters = confusion
        plot_confusion_matrix(gold, pred, letters, folder / "confusion_matrix.png", title=str(results.get("model", "")),
                              outputs=outputs)
        with outputs.open(folder / "results.json") as handle:
            write_json_document(handle, results)
    return [str(folder / name) for name in EVAL_FILES]


def categorical(model, tokenizer, records: list[dict], batch_size: int, fmt: PromptFormat) -> tuple[dict, list[dict], list[str]]:
    """Score step-1 records by their letters, prompts in ``fmt``: the figures for results.json, a predictions.jsonl
    line per question (id, gold and predicted letter, tie, each letter's probability) and the lines to print."""
    questions = questions_from_conversations(tokenizer, records, [r["_where"] for r in records], fmt)
    predictions = score_questions(model, questions, batch_size)
    correct, ties = sum(p.correct for p in predictions), sum(p.tie for p in predictions)
    lines = [
        {"id": q.id, "gold": q.letters[p.gold], "pred": q.letters[p.pred], "correct": p.correct, "tie": p.tie,
         "probs": {letter: round(x, 6) for letter, x in zip(q.letters, p.probs, strict=True)}}
        for q, p in zip(questions, predictions, strict=True)
    ]
    # ties: questions whose best letter logit is shared in float32 (each counted as its first tied letter)
    results = {"accuracy": correct / len(records), "correct": correct, "total": len(records), "skipped": 0,
               "ci95": list(wilson_interval(correct, len(records))), "ties": ties}
    shown = [summary_line(correct, len(records))]
    if ties:
        shown.insert(0, f"note: {ties} questions tie in float32 between their best letters; each is counted as its "
                        "first tied letter (predictions.jsonl: tie true)")
    return results, lines, shown


def cloze(model, tokenizer, records: list[dict], batch_size: int) -> tuple[dict, list[dict], list[str]]:
    """Score step-1 records as lm-evaluation-harness's arc_easy does (:mod:`slamkit.cloze`): acc and acc_norm."""
    predictions = score_cloze(model, tokenizer, records, batch_size)
    total = len(records)
    correct = sum(p.pred == p.gold for p in predictions)
    correct_norm = sum(p.pred_norm == p.gold for p in predictions)
    results = {
        "accuracy": correct / total, "accuracy_norm": correct_norm / total, "correct": correct,
        "correct_norm": correct_norm, "total": total, "skipped": 0, "ci95": list(wilson_interval(correct, total)),
        "ci95_norm": list(wilson_interval(correct_norm, total)), "ties": sum(p.tie for p in predictions),
        "ties_norm": sum(p.tie_norm for p in predictions),
    }
    lines = [
        {"id": p.id, "gold": r["choice_labels"][p.gold], "pred": r["choice_labels"][p.pred],
         "pred_norm": r["choice_labels"][p.pred_norm], "loglik": dict(zip(r["choice_labels"], p.loglik, strict=True))}
        for p, r in zip(predictions, records, strict=True)
    ]
    return results, lines, [summary_line(correct, total, label="acc"), summary_line(correct_norm, total, "acc_norm")]


def scoring_format(model_name: str, requested: str | None, tokenizer) -> tuple[PromptFormat, list[str]]:
    """The categorical prompt format: ``requested``, else the one a checkpoint was trained in (its run record), else
    seed; with a note when it is not the trained one. A checkpoint whose tokenizer renders its trained format as
    another prompt than the one it was trained on is refused."""
    record = read_record(Path(model_name)) if Path(model_name).is_dir() else None
    effective = (record or {}).get("effective") or {}
    trained = effective.get("prompt_format")
    fmt = prompt_format(requested or trained or "seed", tokenizer)
    if requested is not None and trained is not None and requested != trained:
        return fmt, [f"note: {model_name} was trained with --prompt_format {trained}; scoring it with {requested} as asked"]
    if trained is not None and effective.get("prompt") not in (None, fmt.prompt("{user_text}")):
        raise SlamkitError(
            f"{model_name}: trained on the prompt {effective['prompt']!r}, but its tokenizer renders "
            f"{fmt.prompt('{user_text}')!r}: score it with the tokenizer it was trained with"
        )
    return fmt, []


def evaluate(args, model_name: str, tokenizer_name: str) -> list[str]:
    """The one evaluation path of ``eval_arc_base.py`` and ``eval_arc.py`` (they differ in what they load): hold
    --output_dir, read the questions, load the model and tokenizer, score every question (categorical or cloze),
    write the outputs as one set; return the lines the script prints."""
    if args.batch_size < 1:
        raise SlamkitError(f"--batch_size must be at least 1, got {args.batch_size}")
    if args.scoring == "cloze" and args.prompt_format is not None:
        raise SlamkitError("--prompt_format applies to categorical scoring; cloze uses the harness's own prompt")
    with held_output_dir(args.output_dir, args.overwrite, inputs=[args.data_path]):
        records = first_problems(read_conversations(args.data_path, require_choices=True), args.max_problems)
        device = choose_device(args.device)
        dtype = choose_dtype(args.dtype, device)
        check_run_finished(Path(model_name))  # a slamkit run folder must be finished; other folders pass
        model = load_causal_lm(model_name, dtype).to(device)  # first: a missing folder is "no such model folder"
        tokenizer = load_tokenizer(tokenizer_name)
        start, notes, fmt = time.perf_counter(), [], None
        if args.scoring == "categorical":
            fmt, notes = scoring_format(model_name, args.prompt_format, tokenizer)
            results, lines, shown = categorical(model, tokenizer, records, args.batch_size, fmt)
        else:
            results, lines, shown = cloze(model, tokenizer, records, args.batch_size)
        results.update(
            model=model_name, tokenizer=tokenizer_name, data_path=args.data_path, scoring=args.scoring,
            batch_size=args.batch_size, max_problems=args.max_problems, device=str(device),
            dtype=str(dtype).removeprefix("torch."),
        )
        if fmt is not None:
            results.update(prompt_format=fmt.name, prompt=fmt.prompt("{user_text}"))
        how = f"{args.scoring}" + (f", prompt format {fmt.name}" if fmt is not None and fmt.name != "seed" else "")
        printed = [*notes, f"{model_name} on {args.data_path}: {len(records)} questions ({how}), {device} "
                   f"{results['dtype']}, {time.perf_counter() - start:.1f} s", *shown]
        if args.output_dir:
            letters = sorted({letter for r in records for letter in r["choice_labels"]})
            confusion = ([line["gold"] for line in lines], [line["pred"] for line in lines], letters)
            printed += [f"wrote {path}" for path in write_outputs(args.output_dir, results, lines, confusion)]
    return printed
